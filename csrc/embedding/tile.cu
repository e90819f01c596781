// The tile combiner, CUDA twin of tile.cpp (same schemas and semantics).
// Forward: one thread per (bag, position, column). Backward: atomic adds into a float32 (or
// float64) accumulator, then a cast to the gradient dtype.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <optional>

#include "common.h"
#include "embedding/tile_checks.h"

namespace recis_compat {
namespace {

constexpr const char* kFwd = "recis_compat::tile_forward";
constexpr const char* kBwd = "recis_compat::tile_backward";

template <typename scalar_t>
__global__ void tile_forward_kernel(const scalar_t* __restrict__ emb, const int64_t* __restrict__ index,
                                    const int64_t* __restrict__ off, scalar_t* __restrict__ out,
                                    int64_t B, int64_t T, int64_t D) {
  const int64_t total = B * T * D;
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < total;
       i += (int64_t)gridDim.x * blockDim.x) {
    const int64_t d = i % D, bj = i / D, j = bj % T, b = bj / T;
    const int64_t len = off[b + 1] - off[b];
    scalar_t v = scalar_t(0);
    if (j < len) {
      const int64_t r = index[off[b] + j];
      if (r >= 0) v = emb[r * D + d];
    }
    out[i] = v;
  }
}

template <typename scalar_t, typename acc_t>
__global__ void tile_backward_kernel(const scalar_t* __restrict__ grad, const int64_t* __restrict__ index,
                                     const int64_t* __restrict__ off, acc_t* __restrict__ acc,
                                     int64_t B, int64_t T, int64_t D) {
  const int64_t total = B * T * D;
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < total;
       i += (int64_t)gridDim.x * blockDim.x) {
    const int64_t d = i % D, bj = i / D, j = bj % T, b = bj / T;
    if (j >= off[b + 1] - off[b]) continue;
    const int64_t r = index[off[b] + j];
    if (r >= 0) atomicAdd(acc + r * D + d, static_cast<acc_t>(grad[i]));
  }
}

// one thread per (id position, dim): the bag of position k is found by binary search in offsets
template <typename scalar_t, typename acc_t>
__global__ void pooled_sum_backward_kernel(const scalar_t* __restrict__ grad, const int64_t* __restrict__ index,
                                           const int64_t* __restrict__ off, const scalar_t* __restrict__ weight,
                                           acc_t* __restrict__ acc, int64_t B, int64_t N, int64_t D) {
  const int64_t total = N * D;
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < total;
       i += (int64_t)gridDim.x * blockDim.x) {
    const int64_t k = i / D, d = i % D;
    const int64_t r = index[k];
    if (r < 0 || k < off[0] || k >= off[B]) continue;
    int64_t lo = 0, hi = B;  // last bag b with off[b] <= k
    while (hi - lo > 1) {
      const int64_t mid = (lo + hi) / 2;
      if (off[mid] <= k) lo = mid; else hi = mid;
    }
    const acc_t w = weight ? static_cast<acc_t>(weight[k]) : acc_t(1);
    atomicAdd(acc + r * D + d, w * static_cast<acc_t>(grad[lo * D + d]));
  }
}

int blocks_for(int64_t n) {
  const int64_t b = (n + 255) / 256;
  return static_cast<int>(std::min<int64_t>(std::max<int64_t>(b, 1), 65535));
}

at::Tensor tile_forward_cuda(const at::Tensor& emb_in, const at::Tensor& index_in,
                             const at::Tensor& offsets_in, int64_t tile_len) {
  tile_checks::check_tile_forward(kFwd, emb_in, index_in, offsets_in, tile_len);
  const c10::cuda::CUDAGuard guard(emb_in.device());
  auto emb = emb_in.contiguous();
  auto index = index_in.contiguous();
  auto off = offsets_in.to(at::kLong).contiguous();
  const int64_t B = off.numel() - 1, D = emb.size(1);
  auto out = at::empty({B, tile_len, D}, emb.options());
  if (out.numel() == 0) return out;
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, emb.scalar_type(), "tile_forward_cuda", [&] {
    tile_forward_kernel<scalar_t><<<blocks_for(out.numel()), 256, 0, stream>>>(
        emb.data_ptr<scalar_t>(), index.data_ptr<int64_t>(), off.data_ptr<int64_t>(),
        out.data_ptr<scalar_t>(), B, tile_len, D);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

at::Tensor tile_backward_cuda(const at::Tensor& grad_in, const at::Tensor& index_in,
                              const at::Tensor& offsets_in, int64_t num_rows) {
  tile_checks::check_tile_backward(kBwd, grad_in, index_in, offsets_in, num_rows);
  const c10::cuda::CUDAGuard guard(grad_in.device());
  auto grad = grad_in.contiguous();
  auto index = index_in.contiguous();
  auto off = offsets_in.to(at::kLong).contiguous();
  const int64_t B = off.numel() - 1, T = grad.size(1), D = grad.size(2);
  const bool dbl = grad.scalar_type() == at::kDouble;
  auto acc = at::zeros({num_rows, D}, grad.options().dtype(dbl ? at::kDouble : at::kFloat));
  if (grad.numel() == 0 || num_rows == 0) return acc.to(grad.scalar_type());
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad.scalar_type(), "tile_backward_cuda", [&] {
    if (dbl) {
      tile_backward_kernel<scalar_t, double><<<blocks_for(grad.numel()), 256, 0, stream>>>(
          grad.data_ptr<scalar_t>(), index.data_ptr<int64_t>(), off.data_ptr<int64_t>(),
          acc.data_ptr<double>(), B, T, D);
    } else {
      tile_backward_kernel<scalar_t, float><<<blocks_for(grad.numel()), 256, 0, stream>>>(
          grad.data_ptr<scalar_t>(), index.data_ptr<int64_t>(), off.data_ptr<int64_t>(),
          acc.data_ptr<float>(), B, T, D);
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return acc.to(grad.scalar_type());
}

constexpr const char* kPool = "recis_compat::pooled_sum_backward";

at::Tensor pooled_sum_backward_cuda(const at::Tensor& grad_in, const at::Tensor& index_in,
                                    const at::Tensor& offsets_in, const std::optional<at::Tensor>& weight_in,
                                    int64_t num_rows) {
  tile_checks::check_pooled_sum_backward(kPool, grad_in, index_in, offsets_in, weight_in, num_rows);
  const c10::cuda::CUDAGuard guard(grad_in.device());
  auto grad = grad_in.contiguous();
  auto index = index_in.contiguous();
  auto off = offsets_in.to(at::kLong).contiguous();
  const int64_t B = off.numel() - 1, D = grad.size(1), N = index.numel();
  at::Tensor weight;
  if (weight_in.has_value() && weight_in->defined()) weight = weight_in->contiguous();
  const bool dbl = grad.scalar_type() == at::kDouble;
  auto acc = at::zeros({num_rows, D}, grad.options().dtype(dbl ? at::kDouble : at::kFloat));
  if (N == 0 || D == 0 || num_rows == 0 || B == 0) return acc.to(grad.scalar_type());
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad.scalar_type(), "pooled_sum_backward_cuda", [&] {
    const scalar_t* w = weight.defined() ? weight.data_ptr<scalar_t>() : nullptr;
    if (dbl) {
      pooled_sum_backward_kernel<scalar_t, double><<<blocks_for(N * D), 256, 0, stream>>>(
          grad.data_ptr<scalar_t>(), index.data_ptr<int64_t>(), off.data_ptr<int64_t>(), w,
          acc.data_ptr<double>(), B, N, D);
    } else {
      pooled_sum_backward_kernel<scalar_t, float><<<blocks_for(N * D), 256, 0, stream>>>(
          grad.data_ptr<scalar_t>(), index.data_ptr<int64_t>(), off.data_ptr<int64_t>(), w,
          acc.data_ptr<float>(), B, N, D);
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return acc.to(grad.scalar_type());
}

}  // namespace

TORCH_LIBRARY_IMPL(recis_compat, CUDA, m) {
  m.impl("tile_forward", &tile_forward_cuda);
  m.impl("tile_backward", &tile_backward_cuda);
  m.impl("pooled_sum_backward", &pooled_sum_backward_cuda);
}

}  // namespace recis_compat
