// counter_uniform, CUDA twin of counter_init.cpp (same schema, bit-identical values: integer
// mixing plus an exact int -> double conversion).
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "counter_init.h"

namespace recis_compat {
namespace {

constexpr const char* kOp = "recis_compat::counter_uniform";

__global__ void counter_uniform_kernel(const int64_t* __restrict__ ids, double* __restrict__ out, int64_t n,
                                       int64_t width, int64_t seed) {
  const int64_t total = n * width;
  for (int64_t k = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; k < total;
       k += (int64_t)gridDim.x * blockDim.x) {
    const int64_t i = k / width, j = k % width;
    out[k] = counter_init::uniform(counter_init::row_key(ids[i], seed), j);
  }
}

at::Tensor counter_uniform_cuda(const at::Tensor& ids_in, int64_t seed, int64_t width) {
  TORCH_CHECK(ids_in.scalar_type() == at::kLong && ids_in.dim() == 1, kOp,
              ": ids must be a 1-D int64 tensor, got ", ids_in.scalar_type(), " of shape ", ids_in.sizes());
  TORCH_CHECK(width >= 1, kOp, ": width must be >= 1, got ", width);
  c10::cuda::CUDAGuard guard(ids_in.device());
  auto ids = ids_in.contiguous();
  const int64_t n = ids.numel();
  auto out = at::empty({n, width}, ids.options().dtype(at::kDouble));
  if (n == 0) return out;
  const int threads = 256;
  const int64_t blocks = std::min<int64_t>((n * width + threads - 1) / threads, 65535);
  counter_uniform_kernel<<<blocks, threads, 0, c10::cuda::getCurrentCUDAStream()>>>(
      ids.data_ptr<int64_t>(), out.data_ptr<double>(), n, width, seed);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(recis_compat, CUDA, m) { m.impl("counter_uniform", &counter_uniform_cuda); }

}  // namespace recis_compat
