// CPU kernels: FarmHash Fingerprint64 / MurmurHash64A over ragged byte strings.
//
//   hash_bytes(data, offsets, hash_type, bucket=-1) -> int64[len(offsets)-1]
//     data    : 1-D uint8 or int8, the concatenated bytes (e.g. an Arrow string column's data
//               buffer, or the values of a trans_int8 RaggedTensor)
//     offsets : 1-D int32/int64, string k is data[offsets[k] : offsets[k+1]]
//     bucket  : -1 raw hash bits as int64 (the Hash op); 0 -> h & INT64_MAX; >0 -> uint64 h % bucket
//   fused_hash_bytes(data[], offsets[], hash_type, buckets[]) -> int64[] (one call for many columns)
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "hash/hash_checks.h"

namespace recis_compat {
namespace {

using hashing::HashKind;

using hashing::check_inputs;
using hashing::check_offsets_range;
using hashing::parse_kind;

struct Job {
  const uint8_t* bytes;
  const void* offsets;
  bool off64;
  int64_t bucket;
  int64_t* out;
  int64_t n;  // number of strings
};

template <typename off_t>
inline void run_range(const Job& j, HashKind kind, int64_t b, int64_t e) {
  const off_t* off = static_cast<const off_t*>(j.offsets);
  for (int64_t i = b; i < e; ++i) {
    const int64_t s = off[i], t = off[i + 1];
    j.out[i] = hashing::apply_bucket(hashing::hash_bytes(kind, j.bytes + s, t - s), j.bucket);
  }
}

std::vector<at::Tensor> fused_hash_cpu(at::TensorList data, at::TensorList offsets,
                                       c10::string_view hash_type, at::IntArrayRef buckets) {
  const char* op = "recis_compat::fused_hash_bytes";
  TORCH_CHECK(data.size() == offsets.size() && data.size() == buckets.size(), op,
              ": got ", data.size(), " data, ", offsets.size(), " offsets and ", buckets.size(),
              " buckets; they must be equal in number");
  const HashKind kind = parse_kind(hash_type, op);
  std::vector<at::Tensor> outs;
  std::vector<Job> jobs;
  std::vector<int64_t> starts{0};
  std::vector<at::Tensor> keep;
  for (size_t k = 0; k < data.size(); ++k) {
    check_inputs(data[k], offsets[k], op);
    auto d = data[k].contiguous();
    auto o = offsets[k].contiguous();
    keep.push_back(d);
    keep.push_back(o);
    const int64_t n = o.numel() - 1;
    if (o.scalar_type() == at::kLong)
      check_offsets_range(o.data_ptr<int64_t>(), o.numel(), d.numel(), op);
    else
      check_offsets_range(o.data_ptr<int32_t>(), o.numel(), d.numel(), op);
    auto out = at::empty({n}, o.options().dtype(at::kLong));
    outs.push_back(out);
    jobs.push_back(Job{static_cast<const uint8_t*>(d.data_ptr()), o.data_ptr(),
                       o.scalar_type() == at::kLong, buckets[k], out.data_ptr<int64_t>(), n});
    starts.push_back(starts.back() + n);
  }
  const int64_t total = starts.back();
  at::parallel_for(0, total, 2048, [&](int64_t begin, int64_t end) {
    // locate the job holding `begin`, then walk forward across jobs
    size_t k = std::upper_bound(starts.begin(), starts.end(), begin) - starts.begin() - 1;
    int64_t pos = begin;
    while (pos < end) {
      while (k + 1 < starts.size() && pos >= starts[k + 1]) ++k;
      const int64_t local_b = pos - starts[k];
      const int64_t local_e = std::min(end, starts[k + 1]) - starts[k];
      if (jobs[k].off64)
        run_range<int64_t>(jobs[k], kind, local_b, local_e);
      else
        run_range<int32_t>(jobs[k], kind, local_b, local_e);
      pos = starts[k] + local_e;
    }
  });
  return outs;
}

at::Tensor hash_cpu(const at::Tensor& data, const at::Tensor& offsets, c10::string_view hash_type,
                    int64_t bucket) {
  return fused_hash_cpu({data}, {offsets}, hash_type, {bucket})[0];
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(recis_compat, m) {
  m.def("hash_bytes(Tensor data, Tensor offsets, str hash_type, int bucket=-1) -> Tensor");
  m.def("fused_hash_bytes(Tensor[] data, Tensor[] offsets, str hash_type, int[] buckets) -> Tensor[]");
}

TORCH_LIBRARY_IMPL(recis_compat, CPU, m) {
  m.impl("hash_bytes", &hash_cpu);
  m.impl("fused_hash_bytes", &fused_hash_cpu);
}

}  // namespace recis_compat
