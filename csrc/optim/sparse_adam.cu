// Row-sparse Adam-family update, CUDA twin of sparse_adam.cpp (same schema and math).
#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "common.h"
#include "optim/sparse_adam_checks.h"

namespace recis_compat {
namespace {

constexpr const char* kOp = "recis_compat::sparse_adam_rows_";

template <typename T, typename A>
__global__ void adam_rows_kernel(T* __restrict__ p, T* __restrict__ m, T* __restrict__ v,
                                 const int64_t* __restrict__ rows, const T* __restrict__ g, int64_t R,
                                 int64_t D, A alpha, A b1, A b2, A eps, A decay) {
  const int64_t total = R * D;
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < total;
       i += (int64_t)gridDim.x * blockDim.x) {
    const int64_t row = rows[i / D], k = i % D, at = row * D + k;
    const A gk = static_cast<A>(g[i]);
    const A mk = b1 * static_cast<A>(m[at]) + (A(1) - b1) * gk;
    const A vk = b2 * static_cast<A>(v[at]) + (A(1) - b2) * gk * gk;
    m[at] = static_cast<T>(mk);
    v[at] = static_cast<T>(vk);
    p[at] = static_cast<T>(static_cast<A>(p[at]) * decay + alpha * mk / (sqrt(vk) + eps));
  }
}

void sparse_adam_rows_cuda(const at::Tensor& param, const at::Tensor& exp_avg, const at::Tensor& exp_avg_sq,
                           const at::Tensor& rows_in, const at::Tensor& grad_in, double lr, double beta1,
                           double beta2, double eps, double decay, double beta1_power, double beta2_power) {
  check_sparse_adam_args(kOp, param, exp_avg, exp_avg_sq, rows_in, grad_in, beta1, beta2, eps, beta1_power);
  const c10::cuda::CUDAGuard guard(param.device());
  auto rows = rows_in.contiguous();
  auto grad = grad_in.contiguous();
  const int64_t R = rows.numel(), D = param.size(1);
  if (R * D == 0) return;
  const int blocks = static_cast<int>(std::min<int64_t>((R * D + 255) / 256, 65535));
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, param.scalar_type(), "sparse_adam_rows_cuda", [&] {
    using T = scalar_t;
    using A = at::opmath_type<T>;
    const A alpha = static_cast<A>(-lr * std::sqrt(1.0 - beta2_power) / (1.0 - beta1_power));
    adam_rows_kernel<T, A><<<blocks, 256, 0, stream>>>(
        param.data_ptr<T>(), exp_avg.data_ptr<T>(), exp_avg_sq.data_ptr<T>(), rows.data_ptr<int64_t>(),
        grad.data_ptr<T>(), R, D, alpha, static_cast<A>(beta1), static_cast<A>(beta2), static_cast<A>(eps),
        static_cast<A>(decay));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

}  // namespace

TORCH_LIBRARY_IMPL(recis_compat, CUDA, m) { m.impl("sparse_adam_rows_", &sparse_adam_rows_cuda); }

}  // namespace recis_compat
