// Shared per-element rules of the feature-processing ops (contract recis-api.md §1.3.5-§1.3.10,
// §1.5), host/device so the CPU kernels (features/*.cpp) and the CUDA twins (features/*.cu)
// compute bit-identical results.
#pragma once
#include <cstdint>

#include "common.h"

namespace recis_compat {
namespace features {

constexpr int kMaxMultiHash = 4;

// uint64(x) % mod; mod > 0 is checked on the host.
RECIS_HD int64_t uint64_mod(int64_t x, int64_t mod) {
  return static_cast<int64_t>(static_cast<uint64_t>(x) % static_cast<uint64_t>(mod));
}

// Number of boundaries <= v (torch.bucketize(right=True)); NaN -> n (the last bucket).
RECIS_HD int64_t bucket_of(double v, const double* b, int64_t n) {
  if (v != v) return n;
  int64_t lo = 0, hi = n;  // first index with b[i] > v
  while (lo < hi) {
    const int64_t mid = lo + (hi - lo) / 2;
    if (b[mid] <= v)
      lo = mid + 1;
    else
      hi = mid;
  }
  return lo;
}

// IDMultiHash: (((x*mul) % p + p) % p) % bucket with C int64 semantics (wrapping multiply,
// truncating %). p, bucket > 0 are checked on the host.
RECIS_HD int64_t multi_hash_one(int64_t x, int64_t mul, int64_t p, int64_t bucket) {
  const int64_t prod = static_cast<int64_t>(static_cast<uint64_t>(x) * static_cast<uint64_t>(mul));
  int64_t h = prod % p;
  h = static_cast<int64_t>(static_cast<uint64_t>(h) + static_cast<uint64_t>(p)) % p;
  return h % bucket;
}

// Row of position j under non-decreasing offsets off[0..n] (n rows): the last r with
// off[r] <= j, or -1 when j lies outside [off[0], off[n]).
template <typename off_t>
RECIS_HD int64_t row_of(const off_t* off, int64_t n, int64_t j) {
  if (n <= 0 || j < static_cast<int64_t>(off[0]) || j >= static_cast<int64_t>(off[n])) return -1;
  int64_t lo = 0, hi = n;  // first index in [0, n] with off[i] > j
  while (lo < hi) {
    const int64_t mid = lo + (hi - lo) / 2;
    if (static_cast<int64_t>(off[mid]) <= j)
      lo = mid + 1;
    else
      hi = mid;
  }
  return lo - 1;
}

}  // namespace features
}  // namespace recis_compat
