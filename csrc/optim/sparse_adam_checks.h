// Argument checks shared by the CPU (sparse_adam.cpp) and CUDA (sparse_adam.cu) kernels of
// sparse_adam_rows_, so both devices reject the same inputs with the same errors. The row range is
// validated once here, so the kernels index the table unchecked.
#pragma once
#include <ATen/ATen.h>

#include <tuple>

namespace recis_compat {

// Whether every r[i] (i < R) is in [0, n): one vectorised pass over host rows (sparse_adam.cpp, a
// multiversioned function); aminmax's dispatch, reduction and two .item() calls took ~3x longer.
bool rows_in_range_host(const int64_t* r, int64_t R, int64_t n);

inline void check_sparse_adam_args(const char* op, const at::Tensor& param, const at::Tensor& m, const at::Tensor& v,
                                   const at::Tensor& rows,
                                   const at::Tensor& grad, double beta1, double beta2, double eps, double b1p) {
  TORCH_CHECK(param.dim() == 2, op, ": param must be 2-D [rows, dim], got ", param.sizes());
  TORCH_CHECK(m.device() == param.device() && v.device() == param.device() && rows.device() == param.device() &&
                  grad.device() == param.device(),
              op, ": param, exp_avg, exp_avg_sq, rows and grad must be on one device (param is on ", param.device(),
              ")");
  TORCH_CHECK(param.is_floating_point(), op, ": param must be floating point, got ", param.scalar_type());
  TORCH_CHECK(m.sizes() == param.sizes() && v.sizes() == param.sizes(), op,
              ": exp_avg and exp_avg_sq must have param's shape ", param.sizes());
  TORCH_CHECK(m.scalar_type() == param.scalar_type() && v.scalar_type() == param.scalar_type(), op,
              ": exp_avg and exp_avg_sq must have param's dtype ", param.scalar_type());
  TORCH_CHECK(param.is_contiguous() && m.is_contiguous() && v.is_contiguous(), op,
              ": param and slots must be contiguous");
  TORCH_CHECK(rows.dim() == 1 && rows.scalar_type() == at::kLong, op, ": rows must be 1-D int64, got ",
              rows.scalar_type(), " of shape ", rows.sizes());
  TORCH_CHECK(grad.dim() == 2 && grad.size(0) == rows.numel() && grad.size(1) == param.size(1), op,
              ": grad must be [", rows.numel(), ", ", param.size(1), "], got ", grad.sizes());
  TORCH_CHECK(grad.scalar_type() == param.scalar_type(), op, ": grad dtype ", grad.scalar_type(),
              " does not match param dtype ", param.scalar_type());
  TORCH_CHECK(beta1 >= 0 && beta1 < 1 && beta2 >= 0 && beta2 < 1, op, ": betas must be in [0, 1)");
  TORCH_CHECK(eps >= 0, op, ": eps must be >= 0");
  TORCH_CHECK(b1p < 1, op, ": beta1_power must be < 1 (advance it before the update)");
  if (rows.numel() && rows.device().is_cpu() && rows.is_contiguous() &&
      rows_in_range_host(rows.data_ptr<int64_t>(), rows.numel(), param.size(0))) {
    return;   // the range is named (aminmax below) only when a row is outside it
  }
  if (rows.numel()) {
    auto mm = at::aminmax(rows);
    const int64_t lo = std::get<0>(mm).item<int64_t>(), hi = std::get<1>(mm).item<int64_t>();
    TORCH_CHECK(lo >= 0 && hi < param.size(0), op, ": rows must be in [0, ", param.size(0),
                "), got [", lo, ", ", hi, "]");
  }
}

}  // namespace recis_compat
