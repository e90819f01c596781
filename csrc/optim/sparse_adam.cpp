// Row-sparse Adam-family update with RecIS's exact math (recis-api.md §1.6.2), CPU kernel.
//
//   sparse_adam_rows_(param[R_total, D], exp_avg, exp_avg_sq, rows[R] int64 (unique),
//                     grad[R, D], lr, beta1, beta2, eps, decay, beta1_power, beta2_power)
// For every listed row r with gradient g (beta powers already advanced for this step):
//   alpha = -lr * sqrt(1 - beta2_power) / (1 - beta1_power)
//   theta *= decay                      (SparseAdamW: 1 - lr*wd; SparseAdamWTF: 1 - wd; SparseAdam: 1)
//   m = beta1 m + (1 - beta1) g ;  v = beta2 v + (1 - beta2) g^2
//   theta += alpha * m / (sqrt(v) + eps)      (the "TF epsilon" form)
// Rows not listed are untouched (lazy update). Rows must be unique (the caller coalesces).
#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cmath>

#include "common.h"
#include "optim/sparse_adam_checks.h"

namespace recis_compat {

RECIS_CPU_CLONES bool rows_in_range_host(const int64_t* r, int64_t R, int64_t n) {
  int64_t bad = 0;
  for (int64_t i = 0; i < R; ++i) bad |= static_cast<int64_t>(r[i] < 0) | static_cast<int64_t>(r[i] >= n);
  return bad == 0;
}

namespace {

constexpr const char* kOp = "recis_compat::sparse_adam_rows_";

// The update of rows r[i0..i1). The rows are scattered over the table: the loop waits on memory,
// so the three state rows are fetched 16 rows ahead (~2.5x on 100k random rows of a 1M x 16 table
// over no prefetching; with the compile-time widths below, 16 rows ahead measured as fast as 8 for
// this kernel and ~10% faster for the floor kernel, rows_floor.cpp, which shares the distance). Half / bfloat16 state stays in the table dtype, the math runs in float (opmath).
// ``W`` > 0 is the row width known at compile time (``D`` is then ignored): the element loop has
// a constant trip count and no aliasing question (ivdep: the rows of p, m, v and g never overlap),
// so a 16-wide float32 row is two unrolled AVX2 vectors with no per-row loop set-up or alias
// checks (GCC versions the runtime-width loop against aliasing and a scalar tail per row). The
// arithmetic and its order are the same for every width (tests/ops/test_sparse_adam_exact.py).
template <typename T, int64_t W>
__attribute__((always_inline)) inline void adam_rows(T* p, T* m, T* v, const int64_t* r, const T* g, int64_t i0, int64_t i1, int64_t D,
                      at::opmath_type<T> alpha, at::opmath_type<T> b1, at::opmath_type<T> b2,
                      at::opmath_type<T> e, at::opmath_type<T> d) {
  using A = at::opmath_type<T>;
  constexpr int64_t kAhead = 16;  // rows ahead; as rotate_rows in rows_floor.cpp
  const int64_t n = W > 0 ? W : D;
  const A one = A(1), c1 = one - b1, c2 = one - b2;
  for (int64_t i = i0; i < i1; ++i) {
    if (i + kAhead < i1) {
      const int64_t ahead = r[i + kAhead] * n;
      __builtin_prefetch(p + ahead, 1);
      __builtin_prefetch(m + ahead, 1);
      __builtin_prefetch(v + ahead, 1);
    }
    T* __restrict__ pr = p + r[i] * n;
    T* __restrict__ mr = m + r[i] * n;
    T* __restrict__ vr = v + r[i] * n;
    const T* __restrict__ gr = g + i * n;
#pragma GCC ivdep
    for (int64_t k = 0; k < n; ++k) {
      const A gk = static_cast<A>(gr[k]);
      const A mk = b1 * static_cast<A>(mr[k]) + c1 * gk;
      const A vk = b2 * static_cast<A>(vr[k]) + c2 * gk * gk;
      mr[k] = static_cast<T>(mk);
      vr[k] = static_cast<T>(vk);
      pr[k] = static_cast<T>(static_cast<A>(pr[k]) * d + alpha * mk / (std::sqrt(vk) + e));
    }
  }
}

// The common widths at compile time, any other at run time.
template <typename T>
__attribute__((always_inline)) inline void adam_rows_width(T* p, T* m, T* v, const int64_t* r, const T* g, int64_t i0, int64_t i1, int64_t D,
                            at::opmath_type<T> alpha, at::opmath_type<T> b1, at::opmath_type<T> b2,
                            at::opmath_type<T> e, at::opmath_type<T> d) {
  switch (D) {
    case 8: return adam_rows<T, 8>(p, m, v, r, g, i0, i1, D, alpha, b1, b2, e, d);
    case 16: return adam_rows<T, 16>(p, m, v, r, g, i0, i1, D, alpha, b1, b2, e, d);
    case 32: return adam_rows<T, 32>(p, m, v, r, g, i0, i1, D, alpha, b1, b2, e, d);
    case 64: return adam_rows<T, 64>(p, m, v, r, g, i0, i1, D, alpha, b1, b2, e, d);
    default: return adam_rows<T, 0>(p, m, v, r, g, i0, i1, D, alpha, b1, b2, e, d);
  }
}

// float32, the common case: the same loop in a multiversioned function so that the inner loop
// runs 8 lanes wide on AVX2 machines (sqrt and division dominate: the kernel was compute-bound
// at ~2.7 ns per element with SSE2 scalar code).
RECIS_CPU_CLONES void adam_rows_f32(float* p, float* m, float* v, const int64_t* r, const float* g, int64_t i0,
                                    int64_t i1, int64_t D, float alpha, float b1, float b2, float e, float d) {
  adam_rows_width<float>(p, m, v, r, g, i0, i1, D, alpha, b1, b2, e, d);
}

template <typename T, typename A>
inline void adam_rows_any(T* p, T* m, T* v, const int64_t* r, const T* g, int64_t i0, int64_t i1, int64_t D,
                          A alpha, A b1, A b2, A e, A d) {
  adam_rows_width<T>(p, m, v, r, g, i0, i1, D, alpha, b1, b2, e, d);
}
inline void adam_rows_any(float* p, float* m, float* v, const int64_t* r, const float* g, int64_t i0,
                          int64_t i1, int64_t D, float alpha, float b1, float b2, float e, float d) {
  adam_rows_f32(p, m, v, r, g, i0, i1, D, alpha, b1, b2, e, d);
}

void sparse_adam_rows_cpu(const at::Tensor& param, const at::Tensor& exp_avg, const at::Tensor& exp_avg_sq,
                          const at::Tensor& rows_in, const at::Tensor& grad_in, double lr, double beta1,
                          double beta2, double eps, double decay, double beta1_power, double beta2_power) {
  check_sparse_adam_args(kOp, param, exp_avg, exp_avg_sq, rows_in, grad_in, beta1, beta2, eps, beta1_power);
  auto rows = rows_in.contiguous();
  auto grad = grad_in.contiguous();
  const int64_t R = rows.numel(), D = param.size(1);
  const int64_t* r = rows.data_ptr<int64_t>();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, param.scalar_type(), "sparse_adam_rows_", [&] {
    using T = scalar_t;
    using A = at::opmath_type<T>;
    const A alpha = static_cast<A>(-lr * std::sqrt(1.0 - beta2_power) / (1.0 - beta1_power));
    const A b1 = static_cast<A>(beta1), b2 = static_cast<A>(beta2), e = static_cast<A>(eps);
    const A d = static_cast<A>(decay);
    T* p = param.data_ptr<T>();
    T* m = exp_avg.data_ptr<T>();
    T* v = exp_avg_sq.data_ptr<T>();
    const T* g = grad.data_ptr<T>();
    at::parallel_for(0, R, 64, [&](int64_t i0, int64_t i1) {
      adam_rows_any(p, m, v, r, g, i0, i1, D, alpha, b1, b2, e, d);
    });
  });
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(recis_compat, m) {
  m.def("sparse_adam_rows_(Tensor(a!) param, Tensor(b!) exp_avg, Tensor(c!) exp_avg_sq, Tensor rows, "
        "Tensor grad, float lr, float beta1, float beta2, float eps, float decay, float beta1_power, "
        "float beta2_power) -> ()");
}

TORCH_LIBRARY_IMPL(recis_compat, CPU, m) { m.impl("sparse_adam_rows_", &sparse_adam_rows_cpu); }

}  // namespace recis_compat
