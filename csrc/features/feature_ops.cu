// CUDA twins of the id/value feature ops (schemas and CPU kernels: feature_ops.cpp):
//   fused_uint64_mod, fused_bucketize, fused_multi_hash -- one launch per fused call;
//   feature_cross -- per-row dedupe kernel (x and y in one launch), ATen cumsum, per-pair kernel.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <numeric>
#include <vector>

#include "common.h"
#include "features/cuda_util.cuh"
#include "features/feature_checks.h"
#include "features/feature_kernels.h"
#include "hash/hash_functions.h"

namespace recis_compat {
namespace {

using features::nth;
using namespace features::cuda;

// ------------------------------------------------------------------ fused_uint64_mod
struct ModJob {
  const int64_t* in;
  int64_t* out;
  int64_t mod;
  int64_t start;
};

__global__ void mod_kernel(const ModJob* jobs, int njobs, int64_t total) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const ModJob& j = jobs[find_job(jobs, njobs, i)];
    const int64_t k = i - j.start;
    j.out[k] = features::uint64_mod(j.in[k], j.mod);
  }
}

std::vector<at::Tensor> fused_uint64_mod_cuda(at::TensorList values, at::IntArrayRef mods) {
  const char* op = "recis_compat::fused_uint64_mod";
  features::check_same_count(op, values.size(), "values", mods.size(), "mods");
  std::vector<at::Tensor> ins, outs;
  std::vector<ModJob> jobs;
  int64_t total = 0;
  for (size_t k = 0; k < values.size(); ++k) {
    features::check_mod_job(op, values, mods, k);
    TORCH_CHECK(values[k].device() == values[0].device(), op, ": all values must be on one device");
    ins.push_back(values[k].contiguous());
    outs.push_back(at::empty_like(ins.back(), at::MemoryFormat::Contiguous));
    if (ins.back().numel() == 0) continue;
    jobs.push_back(ModJob{ins.back().data_ptr<int64_t>(), outs.back().data_ptr<int64_t>(), mods[k], total});
    total += ins.back().numel();
  }
  if (total > 0) {
    const c10::cuda::CUDAGuard guard(values[0].device());
    auto table = device_table(jobs, values[0].device());
    mod_kernel<<<blocks_for(total), kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
        table_ptr<ModJob>(table), static_cast<int>(jobs.size()), total);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  return outs;
}

// ------------------------------------------------------------------ fused_bucketize
enum class FKind : int { kFloat = 0, kDouble = 1, kHalf = 2, kBFloat16 = 3 };

struct BucketJob {
  const void* in;
  const double* bnd;
  int64_t nb;
  int64_t* out;
  int kind;
  int64_t start;
};

__device__ __forceinline__ double load_as_double(const void* p, int kind, int64_t i) {
  switch (static_cast<FKind>(kind)) {
    case FKind::kFloat: return static_cast<double>(static_cast<const float*>(p)[i]);
    case FKind::kDouble: return static_cast<const double*>(p)[i];
    case FKind::kHalf: return static_cast<double>(static_cast<float>(static_cast<const c10::Half*>(p)[i]));
    default: return static_cast<double>(static_cast<float>(static_cast<const c10::BFloat16*>(p)[i]));
  }
}

__global__ void bucket_kernel(const BucketJob* jobs, int njobs, int64_t total) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const BucketJob& j = jobs[find_job(jobs, njobs, i)];
    const int64_t k = i - j.start;
    j.out[k] = features::bucket_of(load_as_double(j.in, j.kind, k), j.bnd, j.nb);
  }
}

FKind fkind(at::ScalarType t) {
  switch (t) {
    case at::kFloat: return FKind::kFloat;
    case at::kDouble: return FKind::kDouble;
    case at::kHalf: return FKind::kHalf;
    default: return FKind::kBFloat16;
  }
}

std::vector<at::Tensor> fused_bucketize_cuda(at::TensorList values, at::TensorList boundaries) {
  const char* op = "recis_compat::fused_bucketize";
  features::check_same_count(op, values.size(), "values", boundaries.size(), "boundaries");
  std::vector<at::Tensor> keep, outs;
  std::vector<BucketJob> jobs;
  int64_t total = 0;
  for (size_t k = 0; k < values.size(); ++k) {
    const auto st = values[k].scalar_type();
    TORCH_CHECK(st == at::kFloat || st == at::kDouble || st == at::kHalf || st == at::kBFloat16, op,
                ": '", nth("values", k), "' must be floating point, got ", st);
    features::check_boundaries(op, boundaries, k);
    TORCH_CHECK(boundaries[k].device() == values[k].device() && values[k].device() == values[0].device(),
                op, ": '", nth("boundaries", k), "' and all values must be on one device");
    auto v = values[k].contiguous();
    auto b = boundaries[k].to(at::kDouble).contiguous();
    outs.push_back(at::empty(v.sizes(), v.options().dtype(at::kLong)));
    keep.push_back(v);
    keep.push_back(b);
    if (v.numel() == 0) continue;
    jobs.push_back(BucketJob{v.data_ptr(), b.data_ptr<double>(), b.numel(), outs.back().data_ptr<int64_t>(),
                             static_cast<int>(fkind(st)), total});
    total += v.numel();
  }
  if (total > 0) {
    const c10::cuda::CUDAGuard guard(values[0].device());
    auto table = device_table(jobs, values[0].device());
    bucket_kernel<<<blocks_for(total), kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
        table_ptr<BucketJob>(table), static_cast<int>(jobs.size()), total);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  return outs;
}

// ------------------------------------------------------------------ fused_multi_hash
struct MultiHashJob {
  const int64_t* in;
  int64_t* out[features::kMaxMultiHash];
  int64_t mul[features::kMaxMultiHash];
  int64_t prime[features::kMaxMultiHash];
  int64_t bucket[features::kMaxMultiHash];
  int nh;
  int64_t start;
};

__global__ void multi_hash_kernel(const MultiHashJob* jobs, int njobs, int64_t total) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const MultiHashJob& j = jobs[find_job(jobs, njobs, i)];
    const int64_t k = i - j.start;
    const int64_t x = j.in[k];
    for (int h = 0; h < j.nh; ++h) j.out[h][k] = features::multi_hash_one(x, j.mul[h], j.prime[h], j.bucket[h]);
  }
}

std::vector<at::Tensor> fused_multi_hash_cuda(at::TensorList inputs, at::IntArrayRef muls,
                                              at::IntArrayRef primes, at::IntArrayRef buckets,
                                              at::IntArrayRef num_hashes) {
  const char* op = "recis_compat::fused_multi_hash";
  features::check_multi_hash_params(op, inputs, muls, primes, buckets, num_hashes);
  std::vector<at::Tensor> keep, outs;
  std::vector<MultiHashJob> jobs;
  int64_t total = 0, h = 0;
  for (size_t k = 0; k < inputs.size(); ++k) {
    features::check_multi_hash_input(op, inputs, num_hashes, k);
    TORCH_CHECK(inputs[k].device() == inputs[0].device(), op, ": all inputs must be on one device");
    auto x = inputs[k].contiguous();
    keep.push_back(x);
    MultiHashJob job{};
    job.in = x.data_ptr<int64_t>();
    job.nh = static_cast<int>(num_hashes[k]);
    job.start = total;
    for (int64_t j = 0; j < num_hashes[k]; ++j, ++h) {
      outs.push_back(at::empty_like(x, at::MemoryFormat::Contiguous));
      job.out[j] = outs.back().data_ptr<int64_t>();
      job.mul[j] = muls[h];
      job.prime[j] = primes[h];
      job.bucket[j] = buckets[h];
    }
    if (x.numel() == 0) continue;
    jobs.push_back(job);
    total += x.numel();
  }
  if (total > 0) {
    const c10::cuda::CUDAGuard guard(inputs[0].device());
    auto table = device_table(jobs, inputs[0].device());
    multi_hash_kernel<<<blocks_for(total), kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
        table_ptr<MultiHashJob>(table), static_cast<int>(jobs.size()), total);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  return outs;
}

// ------------------------------------------------------------------ feature_cross
// Dedupe: one thread per (side, row). The row's ids and weights are copied to the scratch
// buffers at the row's own positions, insertion-sorted by id (stable, so the first occurrence
// of a duplicate comes first) and compacted; cnt[side*rows + r] gets the unique count.
template <typename off_t, typename w_t>
struct DedupeSide {
  const int64_t* val;
  const off_t* off;
  const w_t* w;  // may be null
  int64_t* uid;
  w_t* uw;
};

template <typename off_t, typename w_t>
__global__ void cross_dedupe_kernel(DedupeSide<off_t, w_t> x, DedupeSide<off_t, w_t> y, int64_t rows,
                                    int64_t* cnt) {
  for (int64_t t = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; t < 2 * rows;
       t += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const DedupeSide<off_t, w_t>& s = t < rows ? x : y;
    const int64_t r = t < rows ? t : t - rows;
    const int64_t base = s.off[0];
    const int64_t b = static_cast<int64_t>(s.off[r]) - base, e = static_cast<int64_t>(s.off[r + 1]) - base;
    for (int64_t i = b; i < e; ++i) {
      const int64_t id = s.val[i + base];
      const w_t wt = s.w ? s.w[i + base] : w_t(1);
      int64_t k = i;
      while (k > b && s.uid[k - 1] > id) {
        s.uid[k] = s.uid[k - 1];
        s.uw[k] = s.uw[k - 1];
        --k;
      }
      s.uid[k] = id;
      s.uw[k] = wt;
    }
    int64_t c = 0;
    for (int64_t i = b; i < e; ++i) {
      if (i > b && s.uid[i] == s.uid[i - 1]) continue;
      s.uid[b + c] = s.uid[i];
      s.uw[b + c] = s.uw[i];
      ++c;
    }
    cnt[t] = c;
  }
}

template <typename off_t, typename w_t>
__global__ void cross_write_kernel(const int64_t* out_off, int64_t rows, const int64_t* cnt,
                                   const off_t* xoff, const off_t* yoff, const int64_t* xid, const w_t* xw,
                                   const int64_t* yid, const w_t* yw, int64_t* ov, w_t* ow, int64_t total) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t r = features::row_of(out_off, rows, i);
    if (r < 0) continue;
    const int64_t local = i - out_off[r];
    const int64_t ny = cnt[rows + r];
    const int64_t xi = static_cast<int64_t>(xoff[r]) - xoff[0] + local / ny;
    const int64_t yi = static_cast<int64_t>(yoff[r]) - yoff[0] + local % ny;
    ov[i] = static_cast<int64_t>(hashing::murmur64a_pair(xid[xi], yid[yi]));
    ow[i] = xw[xi] * yw[yi];
  }
}

template <typename off_t, typename w_t>
void cross_cuda_impl(const at::Tensor& xv, const at::Tensor& xo, const at::Tensor& xw_in, const at::Tensor& yv,
                     const at::Tensor& yo, const at::Tensor& yw_in, int64_t rows, at::Tensor& out_v,
                     at::Tensor& out_o, at::Tensor& out_w) {
  auto stream = c10::cuda::getCurrentCUDAStream();
  const auto wdt = c10::CppTypeToScalarType<w_t>::value;
  auto xid = at::empty({xv.numel()}, xv.options());
  auto yid = at::empty({yv.numel()}, yv.options());
  auto xw = at::empty({xv.numel()}, xv.options().dtype(wdt));
  auto yw = at::empty({yv.numel()}, yv.options().dtype(wdt));
  auto cnt = at::zeros({2 * rows}, xv.options());
  if (rows > 0) {
    DedupeSide<off_t, w_t> xs{xv.data_ptr<int64_t>(), static_cast<off_t*>(xo.data_ptr()),
                              xw_in.defined() ? static_cast<w_t*>(xw_in.data_ptr()) : nullptr, xid.data_ptr<int64_t>(),
                              static_cast<w_t*>(xw.data_ptr())};
    DedupeSide<off_t, w_t> ys{yv.data_ptr<int64_t>(), static_cast<off_t*>(yo.data_ptr()),
                              yw_in.defined() ? static_cast<w_t*>(yw_in.data_ptr()) : nullptr, yid.data_ptr<int64_t>(),
                              static_cast<w_t*>(yw.data_ptr())};
    cross_dedupe_kernel<off_t, w_t><<<blocks_for(2 * rows), kThreads, 0, stream>>>(xs, ys, rows,
                                                                                  cnt.data_ptr<int64_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  auto lens = cnt.narrow(0, 0, rows) * cnt.narrow(0, rows, rows);
  auto off64 = offsets_from_lengths(lens);
  const int64_t total = off64[rows].item<int64_t>();
  TORCH_CHECK(total <= std::numeric_limits<off_t>::max(), "recis_compat::feature_cross: ", total,
              " crossed ids overflow the offsets dtype");
  out_o = off64.to(xo.scalar_type());
  out_v = at::empty({total}, xv.options());
  out_w = at::empty({total}, xv.options().dtype(wdt));
  if (total > 0) {
    cross_write_kernel<off_t, w_t><<<blocks_for(total), kThreads, 0, stream>>>(
        off64.data_ptr<int64_t>(), rows, cnt.data_ptr<int64_t>(), static_cast<off_t*>(xo.data_ptr()), static_cast<off_t*>(yo.data_ptr()),
        xid.data_ptr<int64_t>(), static_cast<w_t*>(xw.data_ptr()), yid.data_ptr<int64_t>(), static_cast<w_t*>(yw.data_ptr()),
        out_v.data_ptr<int64_t>(), static_cast<w_t*>(out_w.data_ptr()), total);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> feature_cross_cuda(
    const at::Tensor& x_val, const at::Tensor& x_off, const c10::optional<at::Tensor>& x_w,
    const at::Tensor& y_val, const at::Tensor& y_off, const c10::optional<at::Tensor>& y_w) {
  features::check_cross_args(x_val, x_off, x_w, y_val, y_off, y_w);
  const c10::cuda::CUDAGuard guard(x_val.device());
  const features::CrossInputs in = features::prepare_cross_inputs(x_val, x_off, x_w, y_val, y_off, y_w);
  at::Tensor ov, oo, ow;
  AT_DISPATCH_FLOATING_TYPES(in.wdt, "feature_cross_cuda", [&] {
    if (in.xo.scalar_type() == at::kLong)
      cross_cuda_impl<int64_t, scalar_t>(in.xv, in.xo, in.xw, in.yv, in.yo, in.yw, in.rows, ov, oo, ow);
    else
      cross_cuda_impl<int32_t, scalar_t>(in.xv, in.xo, in.xw, in.yv, in.yo, in.yw, in.rows, ov, oo, ow);
  });
  return {ov, oo, ow};
}

}  // namespace

TORCH_LIBRARY_IMPL(recis_compat, CUDA, m) {
  m.impl("fused_uint64_mod", &fused_uint64_mod_cuda);
  m.impl("fused_bucketize", &fused_bucketize_cuda);
  m.impl("fused_multi_hash", &fused_multi_hash_cuda);
  m.impl("feature_cross", &feature_cross_cuda);
}

}  // namespace recis_compat
