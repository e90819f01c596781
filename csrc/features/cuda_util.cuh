// Small helpers shared by the CUDA twins in csrc/features/*.cu: job tables copied to the
// device once per call (so a fused op is one launch), launch geometry and a fused
// "segment gather" that moves whole value rows for the ragged ops.
#pragma once
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <cstring>
#include <vector>

#include "common.h"
#include "features/feature_kernels.h"

namespace recis_compat {
namespace features {
namespace cuda {

constexpr int kThreads = 256;

inline int blocks_for(int64_t n) {
  const int64_t b = (n + kThreads - 1) / kThreads;
  return static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(b, 65535 * 8)));
}

// Copies a vector of POD job descriptors to the device; the returned tensor owns the memory.
template <typename T>
at::Tensor device_table(const std::vector<T>& v, const at::Device& dev) {
  auto host = at::empty({static_cast<int64_t>(std::max<size_t>(v.size(), 1) * sizeof(T))}, at::kByte);
  if (!v.empty()) std::memcpy(host.data_ptr(), v.data(), v.size() * sizeof(T));
  return host.to(dev);
}

template <typename T>
const T* table_ptr(const at::Tensor& t) {
  return reinterpret_cast<const T*>(t.data_ptr());
}

// Job index holding global element i: jobs sorted by `start` (the first element of each).
template <typename Job>
__device__ __forceinline__ int find_job(const Job* jobs, int n, int64_t i) {
  int lo = 0, hi = n;  // last job with start <= i
  while (hi - lo > 1) {
    const int mid = (lo + hi) / 2;
    if (jobs[mid].start <= i)
      lo = mid;
    else
      hi = mid;
  }
  return lo;
}

// One gather job: output rows [start, start + dst_off[nseg]) of `dst` are filled segment by
// segment; segment k copies dst_off[k+1]-dst_off[k] rows of `row_bytes` bytes from source row
// src_start[k] on.
struct GatherJob {
  const char* src;
  char* dst;
  const int64_t* src_start;
  const int64_t* dst_off;  // nseg + 1 entries, dst_off[0] == 0
  int64_t nseg;
  int64_t row_bytes;
  int64_t start;
};

__device__ __forceinline__ void copy_row(char* d, const char* s, int64_t nbytes) {
  if ((nbytes & 7) == 0 && (reinterpret_cast<uintptr_t>(d) & 7) == 0 && (reinterpret_cast<uintptr_t>(s) & 7) == 0) {
    for (int64_t b = 0; b < nbytes; b += 8) *reinterpret_cast<uint64_t*>(d + b) = *reinterpret_cast<const uint64_t*>(s + b);
  } else if ((nbytes & 3) == 0 && (reinterpret_cast<uintptr_t>(d) & 3) == 0 && (reinterpret_cast<uintptr_t>(s) & 3) == 0) {
    for (int64_t b = 0; b < nbytes; b += 4) *reinterpret_cast<uint32_t*>(d + b) = *reinterpret_cast<const uint32_t*>(s + b);
  } else {
    for (int64_t b = 0; b < nbytes; ++b) d[b] = s[b];
  }
}

static __global__ void gather_rows_kernel(const GatherJob* jobs, int njobs, int64_t total) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const GatherJob& j = jobs[find_job(jobs, njobs, i)];
    const int64_t local = i - j.start;
    const int64_t seg = row_of(j.dst_off, j.nseg, local);
    if (seg < 0) continue;
    const int64_t src_row = j.src_start[seg] + (local - j.dst_off[seg]);
    copy_row(j.dst + local * j.row_bytes, j.src + src_row * j.row_bytes, j.row_bytes);
  }
}

// Host side: collects gather jobs and runs them in one launch.
struct Gather {
  std::vector<GatherJob> jobs;
  std::vector<at::Tensor> keep;  // tensors the jobs point into
  int64_t total = 0;

  // src/dst contiguous with rows along dim 0; src_start/dst_off int64 on the device.
  void add(const at::Tensor& src, at::Tensor& dst, const at::Tensor& src_start, const at::Tensor& dst_off) {
    const int64_t rows = dst.dim() == 0 ? 0 : dst.size(0);
    int64_t rb = static_cast<int64_t>(dst.element_size());
    for (int64_t d = 1; d < dst.dim(); ++d) rb *= dst.size(d);
    if (rows == 0 || rb == 0) return;
    keep.push_back(src);
    keep.push_back(src_start);
    keep.push_back(dst_off);
    jobs.push_back(GatherJob{static_cast<const char*>(src.data_ptr()), static_cast<char*>(dst.data_ptr()),
                             src_start.data_ptr<int64_t>(), dst_off.data_ptr<int64_t>(),
                             src_start.numel(), rb, total});
    total += rows;
  }

  void run(const at::Device& dev) {
    if (jobs.empty() || total == 0) return;
    auto table = device_table(jobs, dev);
    auto stream = c10::cuda::getCurrentCUDAStream();
    gather_rows_kernel<<<blocks_for(total), kThreads, 0, stream>>>(table_ptr<GatherJob>(table),
                                                                   static_cast<int>(jobs.size()), total);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    keep.push_back(table);
  }
};

// [0, cumsum(lens)] as int64 on lens' device.
inline at::Tensor offsets_from_lengths(const at::Tensor& lens) {
  auto out = at::zeros({lens.numel() + 1}, lens.options().dtype(at::kLong));
  if (lens.numel() > 0) out.narrow(0, 1, lens.numel()).copy_(at::cumsum(lens.to(at::kLong), 0));
  return out;
}

}  // namespace cuda
}  // namespace features
}  // namespace recis_compat
