// CUDA twins of the ragged feature ops (schemas and CPU kernels: ragged_ops.cpp):
//   fused_ragged_cutoff_2d / _3d -- per-row bookkeeping with ATen ops on the device, then one
//     fused gather launch moving the values (and weights) of every feature;
//   ragged_to_dense (+ backward) -- one thread per leaf value walks the offsets levels up;
//   dense_to_ragged -- ATen row lengths, then the gather kernel.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <limits>
#include <vector>

#include "common.h"
#include "features/cuda_util.cuh"
#include "features/feature_checks.h"
#include "features/feature_kernels.h"

namespace recis_compat {
namespace {

using features::nth;
using namespace features::cuda;

// Last entries of several int64 offsets tensors, with one device->host copy.
std::vector<int64_t> totals_of(const std::vector<at::Tensor>& offs) {
  std::vector<int64_t> out;
  if (offs.empty()) return out;
  std::vector<at::Tensor> last;
  for (const auto& o : offs) last.push_back(o.narrow(0, o.numel() - 1, 1));
  auto host = at::cat(last).cpu();
  const int64_t* p = host.data_ptr<int64_t>();
  return std::vector<int64_t>(p, p + host.numel());
}

at::Tensor to_offsets_dtype(const at::Tensor& off64, int64_t total, const at::Tensor& like, const char* op) {
  if (like.scalar_type() == at::kInt)
    TORCH_CHECK(total <= std::numeric_limits<int32_t>::max(), op, ": output offsets overflow int32");
  return off64.to(like.scalar_type());
}

// Allocates the cut values (and weights; an empty float32 tensor without) of one feature,
// appends them to vs / ws and queues their copies on gather.
void add_cut_feature(Gather& gather, const at::Tensor& values, const c10::optional<at::Tensor>& w,
                     const at::Tensor& src, const at::Tensor& noff, int64_t total, std::vector<at::Tensor>& vs,
                     std::vector<at::Tensor>& ws) {
  auto v = values.contiguous();
  vs.push_back(features::empty_rows(v, total));
  gather.add(v, vs.back(), src, noff);
  if (w.has_value()) {
    auto wc = w->contiguous();
    ws.push_back(features::empty_rows(wc, total));
    gather.add(wc, ws.back(), src, noff);
  } else {
    ws.push_back(at::empty({0}, v.options().dtype(at::kFloat)));
  }
}

// ------------------------------------------------------------------ fused_ragged_cutoff_2d
std::tuple<std::vector<at::Tensor>, std::vector<at::Tensor>, std::vector<at::Tensor>,
           std::vector<at::Tensor>, std::vector<at::Tensor>>
cutoff_2d_cuda(at::TensorList values, at::TensorList offsets,
               const c10::List<c10::optional<at::Tensor>>& weights, at::IntArrayRef keep_lengths,
               c10::List<bool> drop_left) {
  const char* op = "recis_compat::fused_ragged_cutoff_2d";
  const size_t n = values.size();
  features::check_cutoff_2d_counts(op, n, offsets.size(), weights.size(), keep_lengths.size(), drop_left.size());
  std::vector<at::Tensor> vs, os, ws, ds, ps, srcs, noffs;
  if (n == 0) return {vs, os, ws, ds, ps};
  const c10::cuda::CUDAGuard guard(values[0].device());
  for (size_t k = 0; k < n; ++k) {
    features::check_values(values[k], op, nth("values", k));
    TORCH_CHECK(offsets[k].device() == values[k].device(), op, ": '", nth("offsets", k),
                "' must be on the device of its values");
    features::check_offsets(offsets[k], values[k].size(0), op, nth("offsets", k));
    features::check_keep_length(op, keep_lengths, k);
    const c10::optional<at::Tensor> w = weights.get(k);
    if (w.has_value()) features::check_weight(*w, values[k], op, nth("weights", k));
    const int64_t keep = keep_lengths[k];
    auto off = offsets[k].to(at::kLong);
    const int64_t rows = off.numel() - 1;
    auto lens = off.narrow(0, 1, rows) - off.narrow(0, 0, rows);
    auto kept = at::clamp_max(lens, keep);
    auto src = drop_left.get(k) ? off.narrow(0, 0, rows) + (lens - kept) : off.narrow(0, 0, rows).clone();
    srcs.push_back(src);
    noffs.push_back(offsets_from_lengths(kept));
    ds.push_back(at::clamp_min(lens - keep, 0).to(at::kInt));
    ps.push_back(at::clamp_min(keep - lens, 0).to(at::kInt));
  }
  const auto totals = totals_of(noffs);
  Gather gather;
  for (size_t k = 0; k < n; ++k) {
    os.push_back(to_offsets_dtype(noffs[k], totals[k], offsets[k], op));
    add_cut_feature(gather, values[k], weights.get(k), srcs[k], noffs[k], totals[k], vs, ws);
  }
  gather.run(values[0].device());
  return {vs, os, ws, ds, ps};
}

// ------------------------------------------------------------------ fused_ragged_cutoff_3d
std::tuple<std::vector<at::Tensor>, std::vector<at::Tensor>, std::vector<at::Tensor>, std::vector<at::Tensor>>
cutoff_3d_cuda(at::TensorList values, at::TensorList outer, at::TensorList inner,
               const c10::List<c10::optional<at::Tensor>>& weights, at::IntArrayRef keep_lengths,
               c10::List<bool> drop_left, c10::List<bool> pad_left) {
  const char* op = "recis_compat::fused_ragged_cutoff_3d";
  const size_t n = values.size();
  features::check_cutoff_3d_counts(op, n, outer.size(), inner.size(), weights.size(), keep_lengths.size(),
                                   drop_left.size(), pad_left.size());
  std::vector<at::Tensor> vs, os, is, ws, srcs, noffs;
  if (n == 0) return {vs, os, is, ws};
  const c10::cuda::CUDAGuard guard(values[0].device());
  for (size_t k = 0; k < n; ++k) {
    features::check_values(values[k], op, nth("values", k));
    TORCH_CHECK(outer[k].device() == values[k].device() && inner[k].device() == values[k].device(), op,
                ": '", nth("outer", k), "' and '", nth("inner", k), "' must be on the device of the values");
    features::check_offsets(inner[k], values[k].size(0), op, nth("inner", k));
    features::check_offsets(outer[k], inner[k].numel() - 1, op, nth("outer", k));
    features::check_keep_length(op, keep_lengths, k);
    const int64_t keep = keep_lengths[k];
    const c10::optional<at::Tensor> w = weights.get(k);
    if (w.has_value()) features::check_weight(*w, values[k], op, nth("weights", k));
    auto o = outer[k].to(at::kLong);
    auto in = inner[k].to(at::kLong);
    const int64_t rows = o.numel() - 1;
    auto nsub = o.narrow(0, 1, rows) - o.narrow(0, 0, rows);
    auto kept = at::clamp_max(nsub, keep);
    auto first = drop_left.get(k) ? o.narrow(0, 0, rows) + (nsub - kept) : o.narrow(0, 0, rows);
    auto slot = at::arange(keep, o.options()).unsqueeze(0);  // [1, keep]
    auto local = pad_left.get(k) ? slot - (keep - kept).unsqueeze(1) : slot.expand({rows, keep});
    auto valid = at::logical_and(local >= 0, local < kept.unsqueeze(1)).reshape({-1});
    auto sub = at::where(valid, (first.unsqueeze(1) + local).reshape({-1}), at::zeros_like(valid, o.options()));
    auto sub1 = at::clamp_max(sub + 1, in.numel() - 1);
    auto start = in.index_select(0, sub);
    auto lens = at::where(valid, in.index_select(0, sub1) - start, at::zeros_like(start));
    srcs.push_back(start);
    noffs.push_back(offsets_from_lengths(lens));
    os.push_back(at::arange(0, (rows + 1) * keep, keep, outer[k].options()));
  }
  const auto totals = totals_of(noffs);
  Gather gather;
  for (size_t k = 0; k < n; ++k) {
    is.push_back(to_offsets_dtype(noffs[k], totals[k], inner[k], op));
    add_cut_feature(gather, values[k], weights.get(k), srcs[k], noffs[k], totals[k], vs, ws);
  }
  gather.run(values[0].device());
  return {vs, os, is, ws};
}

// ------------------------------------------------------------------ ragged_to_dense
constexpr int kMaxLevels = 8;

template <typename off_t>
struct DenseParams {
  const off_t* off[kMaxLevels];
  int64_t nrows[kMaxLevels];   // rows of each level (numel - 1)
  int64_t stride[kMaxLevels];  // dense stride, in leaf rows, of the dim each level indexes
  int64_t row_stride;          // leaf rows per batch row
  int levels;
  int64_t row_bytes;
};

// to_dense: dense[pos(j)] = values[j]; otherwise values[j] = dense[pos(j)].
template <typename off_t, bool kToDense>
__global__ void ragged_dense_kernel(DenseParams<off_t> p, const char* src, char* dst, int64_t nvalues) {
  for (int64_t j = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; j < nvalues;
       j += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    int64_t pos = j, d = 0;
    bool covered = true;
    for (int k = p.levels - 1; k >= 0; --k) {
      const int64_t r = features::row_of(p.off[k], p.nrows[k], pos);
      if (r < 0) {
        covered = false;
        break;
      }
      d += (pos - static_cast<int64_t>(p.off[k][r])) * p.stride[k];
      pos = r;
    }
    if (!covered) continue;
    d += pos * p.row_stride;
    if (kToDense)
      copy_row(dst + d * p.row_bytes, src + j * p.row_bytes, p.row_bytes);
    else
      copy_row(dst + j * p.row_bytes, src + d * p.row_bytes, p.row_bytes);
  }
}

struct DenseLayout {
  std::vector<at::Tensor> off;  // contiguous, caller's dtype
  std::vector<int64_t> maxlen;
  std::vector<int64_t> stride;
  int64_t row_stride = 0;
  int64_t batch = 0;
};

DenseLayout dense_layout(at::TensorList offsets, int64_t num_values, const at::Device& dev, const char* op) {
  TORCH_CHECK(!offsets.empty(), op, ": 'offsets' must hold at least one level");
  TORCH_CHECK(offsets.size() <= static_cast<size_t>(kMaxLevels), op, ": at most ", kMaxLevels,
              " offsets levels are supported on CUDA, got ", offsets.size());
  const auto dt = offsets[0].scalar_type();
  const size_t nl = offsets.size();
  DenseLayout L;
  std::vector<at::Tensor> maxes;
  for (size_t k = 0; k < nl; ++k) {
    TORCH_CHECK(offsets[k].scalar_type() == dt, op, ": all offsets must share one dtype ('",
                nth("offsets", k), "' is ", offsets[k].scalar_type(), ", offsets[0] is ", dt, ")");
    TORCH_CHECK(offsets[k].device() == dev, op, ": '", nth("offsets", k), "' must be on the device of 'values'");
    TORCH_CHECK(k + 1 == nl || offsets[k + 1].numel() >= 1, op, ": '", nth("offsets", k + 1),
                "' must have at least one entry");
    const int64_t limit = k + 1 < nl ? offsets[k + 1].numel() - 1 : num_values;
    features::check_offsets(offsets[k], limit, op, nth("offsets", k));
    L.off.push_back(offsets[k].contiguous());
    const int64_t rows = offsets[k].numel() - 1;
    auto o = L.off.back().to(at::kLong);
    maxes.push_back(rows > 0 ? (o.narrow(0, 1, rows) - o.narrow(0, 0, rows)).max().reshape({1})
                             : at::zeros({1}, o.options()));
  }
  auto host = at::cat(maxes).cpu();
  L.maxlen.assign(host.data_ptr<int64_t>(), host.data_ptr<int64_t>() + nl);
  L.batch = offsets[0].numel() - 1;
  L.stride.assign(nl, 1);
  for (int64_t k = static_cast<int64_t>(nl) - 2; k >= 0; --k) L.stride[k] = L.stride[k + 1] * L.maxlen[k + 1];
  L.row_stride = L.stride[0] * L.maxlen[0];
  return L;
}

template <typename off_t, bool kToDense>
void launch_dense(const DenseLayout& L, const char* src, char* dst, int64_t nvalues, int64_t row_bytes) {
  DenseParams<off_t> p{};
  p.levels = static_cast<int>(L.off.size());
  for (int k = 0; k < p.levels; ++k) {
    p.off[k] = static_cast<const off_t*>(L.off[k].data_ptr());
    p.nrows[k] = L.off[k].numel() - 1;
    p.stride[k] = L.stride[k];
  }
  p.row_stride = L.row_stride;
  p.row_bytes = row_bytes;
  ragged_dense_kernel<off_t, kToDense><<<blocks_for(nvalues), kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
      p, src, dst, nvalues);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

at::Tensor ragged_to_dense_cuda(const at::Tensor& values, at::TensorList offsets, const at::Scalar& default_value) {
  const char* op = "recis_compat::ragged_to_dense";
  features::check_values(values, op, "values");
  const c10::cuda::CUDAGuard guard(values.device());
  const DenseLayout L = dense_layout(offsets, values.size(0), values.device(), op);
  auto out = at::full(features::dense_shape(L.batch, L.maxlen, values), default_value, values.options());
  const int64_t rb = features::row_bytes(values);
  if (out.numel() == 0 || rb == 0 || values.size(0) == 0) return out;
  auto v = values.contiguous();
  if (L.off[0].scalar_type() == at::kLong)
    launch_dense<int64_t, true>(L, static_cast<const char*>(v.data_ptr()), static_cast<char*>(out.data_ptr()),
                                v.size(0), rb);
  else
    launch_dense<int32_t, true>(L, static_cast<const char*>(v.data_ptr()), static_cast<char*>(out.data_ptr()),
                                v.size(0), rb);
  return out;
}

at::Tensor ragged_to_dense_backward_cuda(const at::Tensor& grad, at::TensorList offsets, int64_t num_values) {
  const char* op = "recis_compat::ragged_to_dense_backward";
  const c10::cuda::CUDAGuard guard(grad.device());
  const DenseLayout L = dense_layout(offsets, num_values, grad.device(), op);
  auto out = at::zeros(features::check_dense_grad(op, grad, L.batch, L.maxlen, num_values), grad.options());
  const int64_t rb = features::row_bytes(out);
  if (grad.numel() == 0 || rb == 0 || num_values == 0) return out;
  auto g = grad.contiguous();
  if (L.off[0].scalar_type() == at::kLong)
    launch_dense<int64_t, false>(L, static_cast<const char*>(g.data_ptr()), static_cast<char*>(out.data_ptr()),
                                 num_values, rb);
  else
    launch_dense<int32_t, false>(L, static_cast<const char*>(g.data_ptr()), static_cast<char*>(out.data_ptr()),
                                 num_values, rb);
  return out;
}

// ------------------------------------------------------------------ dense_to_ragged
std::tuple<at::Tensor, at::Tensor> dense_to_ragged_cuda(const at::Tensor& data, bool check_invalid,
                                                        const at::Scalar& invalid_value) {
  const char* op = "recis_compat::dense_to_ragged";
  features::check_dense_data(op, data);
  const int64_t B = data.size(0), W = data.size(1);
  const c10::cuda::CUDAGuard guard(data.device());
  auto x = data.contiguous();
  auto lopt = x.options().dtype(at::kLong);
  at::Tensor lens;
  if (check_invalid && W > 0) {
    auto valid = at::ne(x, invalid_value);
    auto col = at::arange(1, W + 1, lopt).unsqueeze(0);
    lens = at::where(valid, col, at::zeros_like(col)).amax(1);
  } else {
    lens = at::full({B}, check_invalid ? 0 : W, lopt);
  }
  auto off = offsets_from_lengths(lens);
  const int64_t total = off[B].item<int64_t>();
  auto values = at::empty({total}, x.options());
  Gather gather;
  gather.add(x.reshape({B * W}), values, at::arange(B, lopt) * W, off);
  gather.run(x.device());
  return {values, off.to(at::kInt)};
}

}  // namespace

TORCH_LIBRARY_IMPL(recis_compat, CUDA, m) {
  m.impl("fused_ragged_cutoff_2d", &cutoff_2d_cuda);
  m.impl("fused_ragged_cutoff_3d", &cutoff_3d_cuda);
  m.impl("ragged_to_dense", &ragged_to_dense_cuda);
  m.impl("ragged_to_dense_backward", &ragged_to_dense_backward_cuda);
  m.impl("dense_to_ragged", &dense_to_ragged_cuda);
}

}  // namespace recis_compat
