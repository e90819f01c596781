// Row memory kernels without arithmetic, CPU only.
//
// 1. The physical floor of a row-sparse optimizer step (bench optim, issue 14 item 4).
//
//   sparse_rows_rotate_(a[R_total, D]!, b!, c!, rows[R] int64 (unique), grad[R, D])
// For every listed row r, element-wise with no arithmetic: (a, b, c)[r] <- (b, c, a)[r]: the three
// slot rows are each read and written once, as sparse_adam_rows_ reads and writes the parameter
// and its two moments. It runs the same loop as sparse_adam.cpp (prefetch distance, at::parallel_for
// grain, compile-time widths, multiversioned float32 clone), so the difference between the two is the
// arithmetic; at the common widths a row moves as whole 32-byte vectors (the fastest way to read and
// write it), so the floor is not slowed by an element loop the Adam kernel does not have.
// The gradient is validated but not read (a contiguous stream): the floor moves fewer bytes than
// the Adam step, so "Adam rows/s / floor rows/s" is, if anything, understated.
//
// 2. rows_pread_(fd, rows[R] int64, out[R, ...]!) / rows_pwrite(fd, rows[R] int64, values[R, ...]): the
// cached_ssd row cache's file side (recis_compat/backend/row_cache.py). A row file holds row r (a record of every
// slot of the row, recis_compat/backend/row_store.py) at byte
// r * row_bytes (row_bytes = bytes of one row of out / values). Each run of consecutive rows is one
// pread / pwrite of the whole run (rows are passed sorted, so runs of new or neighbouring rows coalesce),
// runs are spread over the intra-op threads (pread/pwrite take their offset: no shared file position).
// A short read (past the end of the file) or a failed write is an error naming the row and the errno
// text; EINTR is retried (a signal interrupting the call, not a failure). Host tensors only: the op has
// no CUDA kernel (cached_ssd tables live on the CPU, docs/stores.md) and says so for other devices.
//
// 3. The row cache's bookkeeping (recis_compat/backend/row_cache.py), work proportional to the access:
//   row_cache_translate_(row_slot[T] int32, rows[N] int64, last[S]! int32, dirty[S]! bool, clock, mark, write)
//     -> slots[N] int64
// slots[i] = row_slot[rows[i]] (-1: the row is not cached); for every cached row, last[slot] = clock when
// ``mark`` and dirty[slot] = true when ``write``: the translation and the recency / change marks of an
// access in one pass over its rows (several index_select / index_fill_ passes before). A row outside
// [0, T) is an error naming it (the marks of other rows may then have been set).
//   row_cache_mark_(slots[N] int64, last[S]! int32, dirty[S]! bool, clock, mark, write)
// The marks alone for slots already known (-1 skipped): what an access that reuses the last
// translation (the optimizer's rows after the lookup's, row_cache.py) still has to set.
//   row_cache_sweep_(last[S]! int32, hand, used, k, clock) -> victims[<= k] int64
// The clock hand's second-chance sweep over slots [0, used) from ``hand``, at most two turns: a slot with
// last == 0 (not used since the hand last passed it) is a victim (last <- clock: pinned for the running
// access); a slot with 0 < last < clock loses its second chance (last <- 0); slots of the running access
// (last == clock) are kept. Stops after ``k`` victims. Work: the slots passed (about k when most rows are
// cold), never all slots.
//
// 4. rows_move_(dst[T, ...]!, dst_rows[N] int64, src[S, ...], src_rows[N] int64): dst[dst_rows[i]] <- src[src_rows[i]]
// as bytes, one memcpy per row, spread over the intra-op threads with the rows a few ahead prefetched.
// A row is the trailing dims of a tensor, which must be contiguous (the leading stride is free: a
// column of a wider record, such as one slot's bytes in a row file's mapping, is a valid dst or src);
// dst and src rows must hold the same number of bytes (dtypes may differ: rows move bit for bit).
// The row cache's moves between its slabs, the records read from a row file and the file's
// mapping (recis_compat/backend/row_cache.py, row_store.py): index_copy_ / index_select of such
// rows measured 0.2-0.3 us a row on one thread (an element loop with index arithmetic per element).
// Rows out of range are an error naming the row and position; dst rows should be distinct (a repeated
// dst row gets one of its sources).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstdint>
#include <cstring>
#include <unistd.h>

#include <vector>

#include "common.h"
#include "optim/sparse_adam_checks.h"

namespace recis_compat {
namespace {

constexpr const char* kOp = "recis_compat::sparse_rows_rotate_";

// 32 bytes moved as one value (one AVX2 register in the x86-64-v3 clone, two SSE ones otherwise).
typedef char Bytes32 __attribute__((vector_size(32)));

// As adam_rows / adam_rows_width in sparse_adam.cpp: W > 0 is the row width at compile time.
template <typename T, int64_t W>
__attribute__((always_inline)) inline void rotate_rows(T* a, T* b, T* c, const int64_t* r, int64_t i0, int64_t i1,
                                                       int64_t D) {
  constexpr int64_t kAhead = 16;  // as adam_rows in sparse_adam.cpp
  const int64_t n = W > 0 ? W : D;
  for (int64_t i = i0; i < i1; ++i) {
    if (i + kAhead < i1) {
      const int64_t ahead = r[i + kAhead] * n;
      __builtin_prefetch(a + ahead, 1);
      __builtin_prefetch(b + ahead, 1);
      __builtin_prefetch(c + ahead, 1);
    }
    T* __restrict__ ar = a + r[i] * n;
    T* __restrict__ br = b + r[i] * n;
    T* __restrict__ cr = c + r[i] * n;
    if constexpr (W > 0 && (W * sizeof(T)) % 32 == 0) {
      // whole rows through registers, 32 bytes at a time: the three rows' loads, then their
      // stores (a 16-wide float32 row is two AVX2 vectors per slot). An element loop fully
      // unrolled at a compile-time width is not vectorised by GCC (scalar moves), and a memcpy
      // through local arrays goes through the stack: either made the floor slower than the Adam
      // kernel's vectorised loop.
      constexpr int64_t kV = W * sizeof(T) / 32;
      Bytes32 va[kV], vb[kV], vc[kV];
#pragma GCC unroll 8
      for (int64_t j = 0; j < kV; ++j) {
        __builtin_memcpy(&va[j], reinterpret_cast<const char*>(ar) + 32 * j, 32);
        __builtin_memcpy(&vb[j], reinterpret_cast<const char*>(br) + 32 * j, 32);
        __builtin_memcpy(&vc[j], reinterpret_cast<const char*>(cr) + 32 * j, 32);
      }
#pragma GCC unroll 8
      for (int64_t j = 0; j < kV; ++j) {
        __builtin_memcpy(reinterpret_cast<char*>(ar) + 32 * j, &vb[j], 32);
        __builtin_memcpy(reinterpret_cast<char*>(br) + 32 * j, &vc[j], 32);
        __builtin_memcpy(reinterpret_cast<char*>(cr) + 32 * j, &va[j], 32);
      }
    } else {
#pragma GCC ivdep
      for (int64_t k = 0; k < n; ++k) {
        const T ak = ar[k];
        ar[k] = br[k];
        br[k] = cr[k];
        cr[k] = ak;
      }
    }
  }
}

template <typename T>
__attribute__((always_inline)) inline void rotate_rows_width(T* a, T* b, T* c, const int64_t* r, int64_t i0,
                                                             int64_t i1, int64_t D) {
  switch (D) {
    case 8: return rotate_rows<T, 8>(a, b, c, r, i0, i1, D);
    case 16: return rotate_rows<T, 16>(a, b, c, r, i0, i1, D);
    case 32: return rotate_rows<T, 32>(a, b, c, r, i0, i1, D);
    case 64: return rotate_rows<T, 64>(a, b, c, r, i0, i1, D);
    default: return rotate_rows<T, 0>(a, b, c, r, i0, i1, D);
  }
}

RECIS_CPU_CLONES void rotate_rows_f32(float* a, float* b, float* c, const int64_t* r, int64_t i0, int64_t i1,
                                      int64_t D) {
  rotate_rows_width<float>(a, b, c, r, i0, i1, D);
}

template <typename T>
inline void rotate_rows_any(T* a, T* b, T* c, const int64_t* r, int64_t i0, int64_t i1, int64_t D) {
  rotate_rows_width<T>(a, b, c, r, i0, i1, D);
}
inline void rotate_rows_any(float* a, float* b, float* c, const int64_t* r, int64_t i0, int64_t i1, int64_t D) {
  rotate_rows_f32(a, b, c, r, i0, i1, D);
}

void sparse_rows_rotate_cpu(const at::Tensor& a, const at::Tensor& b, const at::Tensor& c, const at::Tensor& rows_in,
                            const at::Tensor& grad) {
  check_sparse_adam_args(kOp, a, b, c, rows_in, grad, 0.0, 0.0, 0.0, 0.0);
  auto rows = rows_in.contiguous();
  const int64_t R = rows.numel(), D = a.size(1);
  const int64_t* r = rows.data_ptr<int64_t>();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, a.scalar_type(), "sparse_rows_rotate_", [&] {
    using T = scalar_t;
    T* pa = a.data_ptr<T>();
    T* pb = b.data_ptr<T>();
    T* pc = c.data_ptr<T>();
    at::parallel_for(0, R, 64, [&](int64_t i0, int64_t i1) { rotate_rows_any(pa, pb, pc, r, i0, i1, D); });
  });
}

constexpr const char* kPreadOp = "recis_compat::rows_pread_";
constexpr const char* kPwriteOp = "recis_compat::rows_pwrite";

// Checks shared by rows_pread_ and rows_pwrite; returns the bytes of one row of ``t``.
int64_t check_file_rows(const char* op, int64_t fd, const at::Tensor& rows, const at::Tensor& t, const char* what) {
  TORCH_CHECK(fd >= 0, op, ": fd must be an open file descriptor, got ", fd);
  TORCH_CHECK(rows.scalar_type() == at::kLong && rows.dim() == 1, op, ": rows must be a 1-D int64 tensor, got ",
              rows.scalar_type(), " of shape ", rows.sizes());
  TORCH_CHECK(rows.device().is_cpu() && t.device().is_cpu(), op, ": rows and ", what,
              " must be host (CPU) tensors (a file is read into host memory), got ", rows.device(), " and ",
              t.device());
  TORCH_CHECK(t.dim() >= 1 && t.size(0) == rows.numel(), op, ": ", what, " must be [len(rows)=", rows.numel(),
              ", ...], got shape ", t.sizes());
  TORCH_CHECK(t.is_contiguous(), op, ": ", what, " must be contiguous");
  const int64_t R = rows.numel();
  return R == 0 ? 0 : t.numel() / R * t.element_size();
}

// Runs of consecutive rows: run k covers positions [starts[k], starts[k + 1]).
std::vector<int64_t> row_runs(const char* op, const int64_t* r, int64_t R) {
  std::vector<int64_t> starts;
  starts.reserve(R / 4 + 2);
  for (int64_t i = 0; i < R; ++i) {
    TORCH_CHECK(r[i] >= 0, op, ": row ", r[i], " at position ", i, " is negative");
    if (i == 0 || r[i] != r[i - 1] + 1) starts.push_back(i);
  }
  starts.push_back(R);
  return starts;
}

// (WRITE_SPAN in backend/row_store.py, which bounds what a write fault on such a folio maps)
constexpr int64_t kWriteSpan = 64 << 10;

template <bool kWrite>
void file_rows_io(const char* op, int64_t fd, const int64_t* r, int64_t R, unsigned char* data, int64_t row_bytes) {
  const std::vector<int64_t> starts = row_runs(op, r, R);
  const int64_t runs = static_cast<int64_t>(starts.size()) - 1;
  at::parallel_for(0, runs, 256, [&](int64_t k0, int64_t k1) {
    for (int64_t k = k0; k < k1; ++k) {
      const int64_t i = starts[k];
      unsigned char* p = data + i * row_bytes;
      int64_t left = (starts[k + 1] - i) * row_bytes;
      off_t off = static_cast<off_t>(r[i]) * row_bytes;
      while (left > 0) {
        // a write ends at the next kWriteSpan boundary of the file: the page cache then builds
        // folios of at most that size (measured on this project's VM, kernel 6.18: 64-256 KiB
        // writes 0.6-0.8 us a page, 4 KiB writes 2 us, 2 MiB writes up to 20 us a page while
        // the kernel finds free 2 MiB blocks; docs/stores.md), and a write fault through the
        // table's mapping maps at most that much
        const int64_t span = kWrite ? std::min<int64_t>(left, kWriteSpan - off % kWriteSpan) : left;
        const ssize_t n = kWrite ? ::pwrite(static_cast<int>(fd), p, static_cast<size_t>(span), off)
                                 : ::pread(static_cast<int>(fd), p, static_cast<size_t>(left), off);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) {
          const int err = n < 0 ? errno : 0;
          TORCH_CHECK(false, op, ": ", kWrite ? "writing" : "reading", " row ", r[i], " (", left,
                      " bytes at offset ", static_cast<int64_t>(off), ") of fd ", fd, " failed: ",
                      err ? std::strerror(err) : "the file ends before the row");
        }
        p += n;
        off += n;
        left -= n;
      }
    }
  });
}

void rows_pread_cpu(int64_t fd, const at::Tensor& rows_in, const at::Tensor& out) {
  const int64_t row_bytes = check_file_rows(kPreadOp, fd, rows_in, out, "out");
  auto rows = rows_in.contiguous();
  if (rows.numel() == 0) return;
  file_rows_io<false>(kPreadOp, fd, rows.data_ptr<int64_t>(), rows.numel(),
                      static_cast<unsigned char*>(out.data_ptr()), row_bytes);
}

void rows_pwrite_cpu(int64_t fd, const at::Tensor& rows_in, const at::Tensor& values) {
  const int64_t row_bytes = check_file_rows(kPwriteOp, fd, rows_in, values, "values");
  auto rows = rows_in.contiguous();
  if (rows.numel() == 0) return;
  file_rows_io<true>(kPwriteOp, fd, rows.data_ptr<int64_t>(), rows.numel(),
                     static_cast<unsigned char*>(values.data_ptr()), row_bytes);
}

constexpr const char* kMoveOp = "recis_compat::rows_move_";

// Bytes of one row of ``t`` (its trailing dims), checking they are contiguous.
int64_t check_move_rows(const at::Tensor& t, const char* what) {
  TORCH_CHECK(t.device().is_cpu(), kMoveOp, ": ", what, " must be a host (CPU) tensor, got ", t.device());
  TORCH_CHECK(t.dim() >= 1, kMoveOp, ": ", what, " must have a row dimension, got a 0-d tensor");
  int64_t expect = 1;
  for (int64_t d = t.dim() - 1; d >= 1; --d) {
    TORCH_CHECK(t.size(d) == 1 || t.stride(d) == expect, kMoveOp, ": the rows of ", what,
                " (its trailing dims) must be contiguous, got strides ", t.strides(), " for shape ", t.sizes());
    expect *= t.size(d);
  }
  return expect * static_cast<int64_t>(t.element_size());
}

void check_move_index(const at::Tensor& idx, const char* what, int64_t N) {
  TORCH_CHECK(idx.device().is_cpu() && idx.scalar_type() == at::kLong && idx.dim() == 1, kMoveOp, ": ", what,
              " must be a 1-D int64 host tensor, got ", idx.scalar_type(), " of shape ", idx.sizes(), " on ",
              idx.device());
  TORCH_CHECK(idx.numel() == N, kMoveOp, ": dst_rows and src_rows must have the same length, got ", N, " and ",
              idx.numel());
}

void rows_move_cpu(const at::Tensor& dst, const at::Tensor& dst_rows_in, const at::Tensor& src,
                   const at::Tensor& src_rows_in) {
  const int64_t db = check_move_rows(dst, "dst"), sb = check_move_rows(src, "src");
  TORCH_CHECK(db == sb, kMoveOp, ": dst and src rows must hold the same bytes, got ", db, " (dst shape ", dst.sizes(),
              ", ", dst.scalar_type(), ") and ", sb, " (src shape ", src.sizes(), ", ", src.scalar_type(), ")");
  const int64_t N = dst_rows_in.numel();
  check_move_index(dst_rows_in, "dst_rows", N);
  check_move_index(src_rows_in, "src_rows", N);
  if (N == 0 || db == 0) return;
  auto dr = dst_rows_in.contiguous();
  auto sr = src_rows_in.contiguous();
  const int64_t* d = dr.data_ptr<int64_t>();
  const int64_t* s = sr.data_ptr<int64_t>();
  const int64_t T = dst.size(0), S = src.size(0);
  for (int64_t i = 0; i < N; ++i) {
    TORCH_CHECK(d[i] >= 0 && d[i] < T, kMoveOp, ": dst row ", d[i], " at position ", i, " is outside [0, ", T, ")");
    TORCH_CHECK(s[i] >= 0 && s[i] < S, kMoveOp, ": src row ", s[i], " at position ", i, " is outside [0, ", S, ")");
  }
  const int64_t ds = dst.stride(0) * static_cast<int64_t>(dst.element_size());
  const int64_t ss = src.stride(0) * static_cast<int64_t>(src.element_size());
  unsigned char* dp = static_cast<unsigned char*>(dst.data_ptr());
  const unsigned char* sp = static_cast<const unsigned char*>(src.data_ptr());
  constexpr int64_t kAhead = 8;
  at::parallel_for(0, N, 4096, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) {
      if (i + kAhead < i1) {
        __builtin_prefetch(sp + s[i + kAhead] * ss, 0, 0);
        __builtin_prefetch(dp + d[i + kAhead] * ds, 1, 0);
      }
      std::memcpy(dp + d[i] * ds, sp + s[i] * ss, static_cast<size_t>(db));
    }
  });
}

constexpr const char* kTranslateOp = "recis_compat::row_cache_translate_";
constexpr const char* kSweepOp = "recis_compat::row_cache_sweep_";
constexpr const char* kMarkOp = "recis_compat::row_cache_mark_";

void check_cache_state(const char* op, const at::Tensor& last) {
  TORCH_CHECK(last.device().is_cpu() && last.scalar_type() == at::kInt && last.dim() == 1 && last.is_contiguous(), op,
              ": last must be a contiguous 1-D int32 host tensor, got ", last.scalar_type(), " of shape ",
              last.sizes(), " on ", last.device());
}

// The recency / changed marks and the clock an access writes them with.
void check_mark_state(const char* op, const at::Tensor& last, const at::Tensor& dirty, int64_t clock) {
  check_cache_state(op, last);
  TORCH_CHECK(dirty.device().is_cpu() && dirty.scalar_type() == at::kBool && dirty.dim() == 1 &&
                  dirty.is_contiguous() && dirty.numel() == last.numel(),
              op, ": dirty must be a contiguous 1-D bool host tensor as long as last (", last.numel(), "), got ",
              dirty.scalar_type(), " of shape ", dirty.sizes());
  TORCH_CHECK(clock > 0 && clock <= INT32_MAX, op, ": clock must be in [1, 2^31), got ", clock);
}

at::Tensor row_cache_translate_cpu(const at::Tensor& row_slot, const at::Tensor& rows_in, const at::Tensor& last,
                                   const at::Tensor& dirty, int64_t clock, bool mark, bool write) {
  const char* op = kTranslateOp;
  TORCH_CHECK(row_slot.device().is_cpu() && row_slot.scalar_type() == at::kInt && row_slot.dim() == 1 &&
                  row_slot.is_contiguous(),
              op, ": row_slot must be a contiguous 1-D int32 host tensor, got ", row_slot.scalar_type(), " of shape ",
              row_slot.sizes(), " on ", row_slot.device());
  TORCH_CHECK(rows_in.device().is_cpu() && rows_in.scalar_type() == at::kLong && rows_in.dim() == 1, op,
              ": rows must be a 1-D int64 host tensor, got ", rows_in.scalar_type(), " of shape ", rows_in.sizes(),
              " on ", rows_in.device());
  check_mark_state(op, last, dirty, clock);
  auto rows = rows_in.contiguous();
  const int64_t N = rows.numel(), T = row_slot.numel(), S = last.numel();
  at::Tensor out = at::empty({N}, rows.options());
  const int64_t* r = rows.data_ptr<int64_t>();
  const int32_t* rs = row_slot.data_ptr<int32_t>();
  int32_t* ls = last.data_ptr<int32_t>();
  bool* ds = dirty.data_ptr<bool>();
  int64_t* o = out.data_ptr<int64_t>();
  const int32_t c = static_cast<int32_t>(clock);
  constexpr int64_t kAhead = 16;  // rows whose index entry (then slot marks) are prefetched ahead
  std::atomic<bool> bad{false};   // a row outside the index or a slot outside the cache: reported below
  at::parallel_for(0, N, 16384, [&](int64_t i0, int64_t i1) {
    bool ok = true;
    for (int64_t i = i0; i < i1; ++i) {
      if (i + kAhead < i1) {
        const int64_t a = r[i + kAhead];
        if (a >= 0 && a < T) __builtin_prefetch(rs + a, 0);
      }
      const int64_t row = r[i];
      if (row < 0 || row >= T) {
        ok = false;
        o[i] = -1;
        continue;
      }
      const int64_t sl = rs[row];
      ok &= sl < S;
      o[i] = sl;
    }
    if (!ok) {
      bad.store(true, std::memory_order_relaxed);
      return;
    }
    if (!mark && !write) return;
    for (int64_t i = i0; i < i1; ++i) {
      if (i + kAhead < i1) {
        const int64_t a = o[i + kAhead];
        if (a >= 0) {
          if (mark) __builtin_prefetch(ls + a, 0);
          if (write) __builtin_prefetch(ds + a, 0);
        }
      }
      const int64_t sl = o[i];
      if (sl < 0) continue;
      // stored only when it changes: hot rows repeat within an access, and a store would take the cache
      // line from the other threads each time; several threads may store the same value to one slot (a
      // row in two chunks): relaxed atomic loads and stores
      if (mark && __atomic_load_n(ls + sl, __ATOMIC_RELAXED) != c) __atomic_store_n(ls + sl, c, __ATOMIC_RELAXED);
      if (write && !__atomic_load_n(ds + sl, __ATOMIC_RELAXED)) __atomic_store_n(ds + sl, true, __ATOMIC_RELAXED);
    }
  });
  if (bad.load()) {  // an internal error (the cache's callers pass rows of its index): name the first offender
    for (int64_t i = 0; i < N; ++i) {
      TORCH_CHECK(r[i] >= 0 && r[i] < T, op, ": row ", r[i], " at position ", i,
                  " is outside the cache's index [0, ", T, ")");
      TORCH_CHECK(rs[r[i]] < S, op, ": row ", r[i], " maps to cache slot ", rs[r[i]], " of ", S,
                  " (a corrupt index)");
    }
  }
  return out;
}

// row_cache_mark_'s loop over slots[i0..i1), the marks known at compile time (the loop is bound by its
// instructions: ~2x faster than testing ``mark`` / ``write`` and reloading the captured state per slot).
// Returns false when a slot is >= S (reported by the caller). The prefetch needs no bounds check (a
// prefetch never faults).
template <bool kMark, bool kWrite>
bool mark_slots(const int64_t* __restrict__ sp, int64_t i0, int64_t i1, int32_t* ls, bool* ds, int64_t S,
                int32_t c) {
  constexpr int64_t kAhead = 16;
  bool ok = true;
  for (int64_t i = i0; i < i1; ++i) {
    if (i + kAhead < i1) {
      const int64_t a = sp[i + kAhead];
      if (kMark) __builtin_prefetch(ls + a, 0);
      if (kWrite) __builtin_prefetch(ds + a, 0);
    }
    const int64_t sl = sp[i];
    if (static_cast<uint64_t>(sl) >= static_cast<uint64_t>(S)) {  // -1 (not cached) or out of range
      ok &= sl < 0;
      continue;
    }
    // several threads may store the same value to one slot (a slot listed twice): relaxed atomics
    if (kMark && __atomic_load_n(ls + sl, __ATOMIC_RELAXED) != c) __atomic_store_n(ls + sl, c, __ATOMIC_RELAXED);
    if (kWrite && !__atomic_load_n(ds + sl, __ATOMIC_RELAXED)) __atomic_store_n(ds + sl, true, __ATOMIC_RELAXED);
  }
  return ok;
}

// The marks of row_cache_translate_ without the translation, for an access whose slots are known
// (the optimizer's rows after the lookup translated them): last[s] = clock when ``mark``, dirty[s] =
// true when ``write``, for every slot s >= 0 of ``slots`` (-1, a row not cached, is skipped). Stores
// only what changes (hot rows repeat; a store takes the cache line from the other threads).
void row_cache_mark_cpu(const at::Tensor& slots_in, const at::Tensor& last, const at::Tensor& dirty, int64_t clock,
                        bool mark, bool write) {
  const char* op = kMarkOp;
  TORCH_CHECK(slots_in.device().is_cpu() && slots_in.scalar_type() == at::kLong && slots_in.dim() == 1, op,
              ": slots must be a 1-D int64 host tensor, got ", slots_in.scalar_type(), " of shape ",
              slots_in.sizes(), " on ", slots_in.device());
  check_mark_state(op, last, dirty, clock);
  if (!mark && !write) return;
  auto slots = slots_in.contiguous();
  const int64_t N = slots.numel(), S = last.numel();
  const int64_t* sp = slots.data_ptr<int64_t>();
  int32_t* ls = last.data_ptr<int32_t>();
  bool* ds = dirty.data_ptr<bool>();
  const int32_t c = static_cast<int32_t>(clock);
  std::atomic<bool> bad{false};
  at::parallel_for(0, N, 16384, [&](int64_t i0, int64_t i1) {
    bool ok;
    if (mark && write) ok = mark_slots<true, true>(sp, i0, i1, ls, ds, S, c);
    else if (mark) ok = mark_slots<true, false>(sp, i0, i1, ls, ds, S, c);
    else ok = mark_slots<false, true>(sp, i0, i1, ls, ds, S, c);
    if (!ok) bad.store(true, std::memory_order_relaxed);
  });
  if (bad.load()) {
    for (int64_t i = 0; i < N; ++i) {
      TORCH_CHECK(sp[i] < S, op, ": slot ", sp[i], " at position ", i, " is outside the cache's ", S, " slots");
    }
  }
}

at::Tensor row_cache_sweep_cpu(const at::Tensor& last, int64_t hand, int64_t used, int64_t k, int64_t clock) {
  const char* op = kSweepOp;
  check_cache_state(op, last);
  TORCH_CHECK(used >= 0 && used <= last.numel(), op, ": used must be in [0, ", last.numel(), "], got ", used);
  TORCH_CHECK(k >= 0, op, ": k must be >= 0, got ", k);
  TORCH_CHECK(used == 0 || (hand >= 0 && hand < used), op, ": hand must be in [0, used=", used, "), got ", hand);
  TORCH_CHECK(clock > 0 && clock <= INT32_MAX, op, ": clock must be in [1, 2^31), got ", clock);
  std::vector<int64_t> got;
  got.reserve(static_cast<size_t>(std::min(k, used)));
  int32_t* ls = last.data_ptr<int32_t>();
  const int32_t c = static_cast<int32_t>(clock);
  int64_t h = hand;
  for (int64_t passed = 0; passed < 2 * used && static_cast<int64_t>(got.size()) < k; ++passed) {
    const int32_t v = ls[h];
    if (v == 0) {
      ls[h] = c;
      got.push_back(h);
    } else if (v != c) {
      ls[h] = 0;
    }
    if (++h == used) h = 0;
  }
  at::Tensor out = at::empty({static_cast<int64_t>(got.size())}, last.options().dtype(at::kLong));
  if (!got.empty()) std::memcpy(out.data_ptr<int64_t>(), got.data(), got.size() * sizeof(int64_t));
  return out;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(recis_compat, m) {
  m.def("sparse_rows_rotate_(Tensor(a!) a, Tensor(b!) b, Tensor(c!) c, Tensor rows, Tensor grad) -> ()");
  m.def("rows_pread_(int fd, Tensor rows, Tensor(a!) out) -> ()");
  m.def("rows_pwrite(int fd, Tensor rows, Tensor values) -> ()");
  m.def("row_cache_translate_(Tensor row_slot, Tensor rows, Tensor(a!) last, Tensor(b!) dirty, int clock, bool mark, "
        "bool write) -> Tensor");
  m.def("row_cache_sweep_(Tensor(a!) last, int hand, int used, int k, int clock) -> Tensor");
  m.def("row_cache_mark_(Tensor slots, Tensor(a!) last, Tensor(b!) dirty, int clock, bool mark, bool write) -> ()");
  m.def("rows_move_(Tensor(a!) dst, Tensor dst_rows, Tensor src, Tensor src_rows) -> ()");
}

TORCH_LIBRARY_IMPL(recis_compat, CPU, m) {
  m.impl("sparse_rows_rotate_", &sparse_rows_rotate_cpu);
  m.impl("rows_pread_", &rows_pread_cpu);
  m.impl("rows_pwrite", &rows_pwrite_cpu);
  m.impl("row_cache_translate_", &row_cache_translate_cpu);
  m.impl("row_cache_sweep_", &row_cache_sweep_cpu);
  m.impl("row_cache_mark_", &row_cache_mark_cpu);
  m.impl("rows_move_", &rows_move_cpu);
}

}  // namespace recis_compat
