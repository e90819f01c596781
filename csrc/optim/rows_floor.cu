// sparse_rows_rotate_ (rows_floor.cpp), CUDA twin: (a, b, c)[r] <- (b, c, a)[r] for the listed rows,
// one thread per element, grid-stride as sparse_adam.cu.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "common.h"
#include "optim/sparse_adam_checks.h"

namespace recis_compat {
namespace {

constexpr const char* kOp = "recis_compat::sparse_rows_rotate_";

template <typename T>
__global__ void rotate_rows_kernel(T* __restrict__ a, T* __restrict__ b, T* __restrict__ c,
                                   const int64_t* __restrict__ rows, int64_t R, int64_t D) {
  const int64_t total = R * D;
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < total;
       i += (int64_t)gridDim.x * blockDim.x) {
    const int64_t at = rows[i / D] * D + i % D;
    const T ak = a[at];
    a[at] = b[at];
    b[at] = c[at];
    c[at] = ak;
  }
}

void sparse_rows_rotate_cuda(const at::Tensor& a, const at::Tensor& b, const at::Tensor& c, const at::Tensor& rows_in,
                             const at::Tensor& grad) {
  check_sparse_adam_args(kOp, a, b, c, rows_in, grad, 0.0, 0.0, 0.0, 0.0);
  const c10::cuda::CUDAGuard guard(a.device());
  auto rows = rows_in.contiguous();
  const int64_t R = rows.numel(), D = a.size(1);
  if (R * D == 0) return;
  const int blocks = static_cast<int>(std::min<int64_t>((R * D + 255) / 256, 65535));
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, a.scalar_type(), "sparse_rows_rotate_cuda", [&] {
    rotate_rows_kernel<scalar_t><<<blocks, 256, 0, stream>>>(a.data_ptr<scalar_t>(), b.data_ptr<scalar_t>(),
                                                             c.data_ptr<scalar_t>(), rows.data_ptr<int64_t>(), R, D);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

}  // namespace

TORCH_LIBRARY_IMPL(recis_compat, CUDA, m) { m.impl("sparse_rows_rotate_", &sparse_rows_rotate_cuda); }

}  // namespace recis_compat
