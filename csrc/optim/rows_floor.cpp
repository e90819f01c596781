// Row memory kernels without arithmetic, CPU only.
//
// 1. The physical floor of a row-sparse optimizer step (bench optim, issue 14 item 4).
//
//   sparse_rows_rotate_(a[R_total, D]!, b!, c!, rows[R] int64 (unique), grad[R, D])
// For every listed row r, element-wise with no arithmetic: (a, b, c)[r] <- (b, c, a)[r]: the three
// slot rows are each read and written once, as sparse_adam_rows_ reads and writes the parameter
// and its two moments. It runs the same loop as sparse_adam.cpp (prefetch distance, at::parallel_for
// grain, multiversioned float32 clone), so the difference between the two is the arithmetic.
// The gradient is validated but not read (a contiguous stream): the floor moves fewer bytes than
// the Adam step, so "Adam rows/s / floor rows/s" is, if anything, understated.
//
// 2. rows_touch_for_write_(slots[]!, rows[R] int64): for every listed row and every slot, one atomic
// "or 0" on the row's first byte: a write access that changes nothing. The cached_ssd row store
// (recis_compat/backend/row_store.py, docs/stores.md) maps slot files MAP_SHARED; a first *read* of
// a page there makes the kernel map up to 16 neighbouring page-cache pages with it ("fault-around"),
// so scattered small rows would bring ~16x their pages into the process and past its RAM budget. A
// write fault maps exactly one page. Touching a looked-up row's pages for write first keeps the
// resident set to the rows' own pages (it also marks them dirty: they are written by the optimizer
// step anyway). Host memory only: device tensors have no page faults (the op has no CUDA kernel and
// says so). Rows < 0 are skipped; rows >= a slot's length are an error.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "common.h"
#include "optim/sparse_adam_checks.h"

namespace recis_compat {
namespace {

constexpr const char* kOp = "recis_compat::sparse_rows_rotate_";

template <typename T>
inline void rotate_rows(T* a, T* b, T* c, const int64_t* r, int64_t i0, int64_t i1, int64_t D) {
  constexpr int64_t kAhead = 8;  // as adam_rows in sparse_adam.cpp
  for (int64_t i = i0; i < i1; ++i) {
    if (i + kAhead < i1) {
      const int64_t ahead = r[i + kAhead] * D;
      __builtin_prefetch(a + ahead, 1);
      __builtin_prefetch(b + ahead, 1);
      __builtin_prefetch(c + ahead, 1);
    }
    T* __restrict__ ar = a + r[i] * D;
    T* __restrict__ br = b + r[i] * D;
    T* __restrict__ cr = c + r[i] * D;
    for (int64_t k = 0; k < D; ++k) {
      const T ak = ar[k];
      ar[k] = br[k];
      br[k] = cr[k];
      cr[k] = ak;
    }
  }
}

RECIS_CPU_CLONES void rotate_rows_f32(float* a, float* b, float* c, const int64_t* r, int64_t i0, int64_t i1,
                                      int64_t D) {
  rotate_rows<float>(a, b, c, r, i0, i1, D);
}

template <typename T>
inline void rotate_rows_any(T* a, T* b, T* c, const int64_t* r, int64_t i0, int64_t i1, int64_t D) {
  rotate_rows<T>(a, b, c, r, i0, i1, D);
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

constexpr const char* kTouchOp = "recis_compat::rows_touch_for_write_";

void rows_touch_for_write_cpu(at::TensorList slots, const at::Tensor& rows_in) {
  TORCH_CHECK(rows_in.scalar_type() == at::kLong && rows_in.dim() == 1, kTouchOp,
              ": rows must be a 1-D int64 tensor, got ", rows_in.scalar_type(), " of shape ", rows_in.sizes());
  TORCH_CHECK(rows_in.device().is_cpu(), kTouchOp, ": rows must be on the CPU, got ", rows_in.device());
  auto rows = rows_in.contiguous();
  const int64_t R = rows.numel();
  const int64_t* r = rows.data_ptr<int64_t>();
  for (size_t k = 0; k < slots.size(); ++k) {
    const at::Tensor& t = slots[k];
    TORCH_CHECK(t.device().is_cpu(), kTouchOp, ": slot ", k, " is on ", t.device(), "; the op touches host memory");
    TORCH_CHECK(t.dim() >= 1 && t.is_contiguous(), kTouchOp, ": slot ", k,
                " must be a contiguous tensor of rows, got shape ", t.sizes());
    const int64_t n = t.size(0);
    if (n == 0 || R == 0) continue;
    const int64_t row_bytes = t.numel() / n * t.element_size();
    auto* base = static_cast<unsigned char*>(t.data_ptr());
    int64_t bad = -1;
    for (int64_t i = 0; i < R; ++i) {
      if (r[i] >= n) { bad = r[i]; break; }
    }
    TORCH_CHECK(bad < 0, kTouchOp, ": row ", bad, " is out of range for slot ", k, " of ", n, " rows");
    at::parallel_for(0, R, 4096, [&](int64_t i0, int64_t i1) {
      for (int64_t i = i0; i < i1; ++i) {
        if (r[i] < 0) continue;
        __atomic_fetch_or(base + r[i] * row_bytes, static_cast<unsigned char>(0), __ATOMIC_RELAXED);
      }
    });
  }
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(recis_compat, m) {
  m.def("sparse_rows_rotate_(Tensor(a!) a, Tensor(b!) b, Tensor(c!) c, Tensor rows, Tensor grad) -> ()");
  m.def("rows_touch_for_write_(Tensor(a!)[] slots, Tensor rows) -> ()");
}

TORCH_LIBRARY_IMPL(recis_compat, CPU, m) {
  m.impl("sparse_rows_rotate_", &sparse_rows_rotate_cpu);
  m.impl("rows_touch_for_write_", &rows_touch_for_write_cpu);
}

}  // namespace recis_compat
