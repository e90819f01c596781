// sgd_rows_multi_: the row-sparse SGD update of several tables in one call (examples/dlrm's
// SparseSGD steps DLRM's 19 tables; an index_select + add + index_copy per table and their
// dispatch were ~1 ms of a ~36 ms step).
//
//   sgd_rows_multi_(tables: Tensor(a!)[] (2-D [R_t, D_t] float32/float64, contiguous),
//                   rows: Tensor[] (1-D int64 [U_t], distinct, 0 <= row < R_t),
//                   grads: Tensor[] ([U_t, D_t], the table's dtype), lr: float) -> ()
//   tables[t][rows[t][i]] = fma(-lr, grads[t][i], tables[t][rows[t][i]])
// The arithmetic is ATen's ``row.add_(grad, alpha=-lr)`` (its CPU kernel is a fused multiply-add
// with alpha rounded to the table dtype), so the result is bit for bit
// ``t.index_copy_(0, rows, t.index_select(0, rows).add_(grad, alpha=-lr))`` per table, the
// update it replaces. Rows must be distinct (the tables' summed gradients are: grad_rows).
// CPU: the kernel below (parallel over the rows of all tables). CUDA: the ATen ops above per
// table. Meta / fake tensors: optim/sparse_optim.py.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "common.h"

namespace recis_compat {
namespace {

constexpr const char* kOp = "recis_compat::sgd_rows_multi_";

void check(at::TensorList tables, at::TensorList rows, at::TensorList grads) {
  TORCH_CHECK(tables.size() == rows.size() && tables.size() == grads.size(), kOp, ": got ", tables.size(),
              " tables, ", rows.size(), " row lists and ", grads.size(), " gradients");
  for (size_t t = 0; t < tables.size(); ++t) {
    const auto& w = tables[t];
    TORCH_CHECK(w.dim() == 2, kOp, ": tables[", t, "] must be 2-D [rows, dim], got shape ", w.sizes());
    TORCH_CHECK(w.scalar_type() == at::kFloat || w.scalar_type() == at::kDouble, kOp, ": tables[", t,
                "] must be float32 or float64, got ", w.scalar_type());
    TORCH_CHECK(w.is_contiguous(), kOp, ": tables[", t, "] must be contiguous (it is updated in place)");
    TORCH_CHECK(rows[t].dim() == 1 && rows[t].scalar_type() == at::kLong, kOp, ": rows[", t,
                "] must be 1-D int64, got ", rows[t].scalar_type(), " of shape ", rows[t].sizes());
    TORCH_CHECK(grads[t].dim() == 2 && grads[t].size(0) == rows[t].numel() && grads[t].size(1) == w.size(1), kOp,
                ": grads[", t, "] must be [", rows[t].numel(), ", ", w.size(1), "], got shape ", grads[t].sizes());
    TORCH_CHECK(grads[t].scalar_type() == w.scalar_type(), kOp, ": grads[", t, "] is ", grads[t].scalar_type(),
                " but tables[", t, "] is ", w.scalar_type());
    TORCH_CHECK(rows[t].device() == w.device() && grads[t].device() == w.device(), kOp, ": tables[", t,
                "], rows[", t, "] and grads[", t, "] must be on one device");
  }
}

// w[r[i]][d] = fma(alpha, g[i][d], w[r[i]][d]) for i0 <= i < i1, d < D (the x86-64-v3 clone's
// vectorised loop is vfmadd, the default clone's std::fma: the same single rounding)
// (the rows are random: the one kPrefetch ahead is prefetched for writing)
constexpr int64_t kPrefetch = 16;

template <typename T>
inline void axpy_rows_t(T* __restrict__ w, const T* __restrict__ g, const int64_t* r, int64_t i0, int64_t i1,
                        int64_t D, T alpha) {
  constexpr int64_t kLine = 64 / static_cast<int64_t>(sizeof(T));  // values per cache line
  for (int64_t i = i0; i < i1; ++i) {
    if (i + kPrefetch < i1) {
      for (int64_t d = 0; d < D; d += kLine) __builtin_prefetch(w + r[i + kPrefetch] * D + d, 1, 1);
    }
    T* row = w + r[i] * D;
    const T* gi = g + i * D;
    for (int64_t d = 0; d < D; ++d) row[d] = std::fma(alpha, gi[d], row[d]);
  }
}

// the loop above in multiversioned functions (target clones are not made of templates), as
// sparse_adam.cpp does for its float loop
RECIS_CPU_CLONES void axpy_rows(float* w, const float* g, const int64_t* r, int64_t i0, int64_t i1, int64_t D,
                                float alpha) {
  axpy_rows_t<float>(w, g, r, i0, i1, D, alpha);
}

RECIS_CPU_CLONES void axpy_rows(double* w, const double* g, const int64_t* r, int64_t i0, int64_t i1, int64_t D,
                                double alpha) {
  axpy_rows_t<double>(w, g, r, i0, i1, D, alpha);
}

void sgd_rows_multi_cpu(at::TensorList tables, at::TensorList rows_in, at::TensorList grads_in, double lr) {
  check(tables, rows_in, grads_in);
  const int64_t T = static_cast<int64_t>(tables.size());
  std::vector<at::Tensor> rows, grads;
  rows.reserve(T);
  grads.reserve(T);
  std::vector<int64_t> base(T + 1, 0);
  std::vector<const int64_t*> idx(T);
  for (int64_t t = 0; t < T; ++t) {
    rows.push_back(rows_in[t].contiguous());
    grads.push_back(grads_in[t].contiguous());
    base[t + 1] = base[t] + rows[t].numel();
    idx[t] = rows[t].data_ptr<int64_t>();
    // every row in range before anything is written: a bad row changes nothing
    const int64_t R = tables[t].size(0);
    for (int64_t i = 0, n = rows[t].numel(); i < n; ++i) {
      TORCH_CHECK(idx[t][i] >= 0 && idx[t][i] < R, kOp, ": rows[", t, "] holds row ", idx[t][i], " but tables[", t,
                  "] has rows 0..", R - 1);
    }
  }
  const int64_t total = base[T];
  if (total == 0) return;
  auto run = [&](auto zero) {
    using scalar_t = decltype(zero);
    std::vector<scalar_t*> w(T);
    std::vector<const scalar_t*> g(T);
    std::vector<int64_t> D(T);
    for (int64_t t = 0; t < T; ++t) {
      const bool mine = tables[t].scalar_type() == c10::CppTypeToScalarType<scalar_t>::value;
      w[t] = mine ? tables[t].data_ptr<scalar_t>() : nullptr;
      g[t] = mine ? grads[t].data_ptr<scalar_t>() : nullptr;
      D[t] = tables[t].size(1);
    }
    const scalar_t alpha = static_cast<scalar_t>(-lr);   // ATen rounds alpha to the dtype
    at::parallel_for(0, total, 2048, [&](int64_t lo, int64_t hi) {
      int64_t t = static_cast<int64_t>(std::upper_bound(base.begin(), base.end(), lo) - base.begin()) - 1;
      for (int64_t p = lo; p < hi; t++) {         // the part of table t's rows in [lo, hi)
        const int64_t end = std::min(hi, base[t + 1]);
        if (w[t] != nullptr && end > p) {         // (nullptr: a table of the other dtype)
          axpy_rows(w[t], g[t], idx[t], p - base[t], end - base[t], D[t], alpha);
        }
        p = std::max(p, end);
      }
    });
  };
  bool any_float = false, any_double = false;
  for (int64_t t = 0; t < T; ++t) (tables[t].scalar_type() == at::kFloat ? any_float : any_double) = true;
  if (any_float) run(float(0));
  if (any_double) run(double(0));
}

void sgd_rows_multi_aten(at::TensorList tables, at::TensorList rows, at::TensorList grads, double lr) {
  check(tables, rows, grads);
  for (size_t t = 0; t < tables.size(); ++t) {
    auto w = tables[t];
    w.index_copy_(0, rows[t], w.index_select(0, rows[t]).add_(grads[t], -lr));
  }
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(recis_compat, m) {
  m.def("sgd_rows_multi_(Tensor(a!)[] tables, Tensor[] rows, Tensor[] grads, float lr) -> ()");
}

TORCH_LIBRARY_IMPL(recis_compat, CPU, m) { m.impl("sgd_rows_multi_", &sgd_rows_multi_cpu); }
TORCH_LIBRARY_IMPL(recis_compat, CUDA, m) { m.impl("sgd_rows_multi_", &sgd_rows_multi_aten); }

}  // namespace recis_compat
