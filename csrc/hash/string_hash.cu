// CUDA kernels: the twins of string_hash.cpp (FarmHash Fingerprint64 / MurmurHash64A over ragged
// byte strings), same schema and results; the hash functions are the shared host/device ones in
// hash_functions.h.
//
//   hash_bytes(data, offsets, hash_type, bucket=-1) -> int64[len(offsets)-1]
//   fused_hash_bytes(data[], offsets[], hash_type, buckets[]) -> int64[]
//
// One thread per string. The fused op hashes every input in ONE kernel launch: a small table of
// per-input descriptors (device pointers, counts, bucket) is copied to the device and each thread
// finds its input by binary search over the inputs' start positions.
//
// Offsets are validated on the device while hashing (a string whose bounds are out of range or
// decreasing is never read; its input is flagged), and the flags are read back once per call, so
// bad offsets raise the same error as on CPU. That read-back makes the call synchronize with its
// stream once.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <string>
#include <vector>

#include "hash/hash_checks.h"

namespace recis_compat {
namespace {

using hashing::HashKind;

void check_inputs_cuda(const at::Tensor& data, const at::Tensor& offsets, const char* op) {
  hashing::check_inputs(data, offsets, op);
  TORCH_CHECK(data.is_cuda(), op, ": the CUDA kernel needs CUDA tensors, got data on ", data.device());
}

// Host-side re-check of one input's offsets, run only after the device flagged it, so the error
// text is the CPU kernel's.
template <typename off_t>
void report_offsets(const off_t* off, int64_t n, int64_t nbytes, const char* op) {
  hashing::check_offsets_range(off, n, nbytes, op);
  TORCH_CHECK(false, op, ": offsets failed validation on the device");  // not reached
}

// One input as the kernel sees it; all fields 8 bytes so the table is an int64 tensor.
struct DeviceJob {
  const uint8_t* bytes;
  const void* offsets;
  int64_t* out;
  int64_t n;       // strings (offsets.numel() - 1)
  int64_t nbytes;  // data.numel()
  int64_t bucket;
  int64_t off64;   // 1: offsets are int64, 0: int32
};
static_assert(sizeof(DeviceJob) == 7 * sizeof(int64_t), "DeviceJob must pack into int64 words");
constexpr int64_t kJobWords = 7;

__device__ __forceinline__ int64_t load_offset(const DeviceJob& j, int64_t i) {
  return j.off64 ? static_cast<const int64_t*>(j.offsets)[i]
                 : static_cast<int64_t>(static_cast<const int32_t*>(j.offsets)[i]);
}

// Thread slots: input k owns slots starts[k] .. starts[k+1]-1, n_k + 1 of them, one per offset.
// Slot i checks offsets[i] in [0, nbytes] and offsets[i-1] <= offsets[i] (together exactly the CPU
// rule), and for i > 0 hashes string i-1 = data[offsets[i-1] : offsets[i]].
__global__ void fused_hash_kernel(const DeviceJob* __restrict__ jobs, const int64_t* __restrict__ starts,
                                  int64_t njobs, int64_t slots, int kind, int32_t* __restrict__ bad) {
  const int64_t stride = static_cast<int64_t>(blockDim.x) * gridDim.x;
  for (int64_t g = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; g < slots; g += stride) {
    // largest k with starts[k] <= g (inputs own at least one slot, so starts is increasing)
    int64_t lo = 0, hi = njobs - 1;
    while (lo < hi) {
      const int64_t mid = (lo + hi + 1) >> 1;
      if (starts[mid] <= g)
        lo = mid;
      else
        hi = mid - 1;
    }
    const DeviceJob j = jobs[lo];
    const int64_t i = g - starts[lo];
    const int64_t t = load_offset(j, i);
    bool ok = t >= 0 && t <= j.nbytes;
    if (i == 0) {
      if (!ok) atomicOr(&bad[lo], 1);
      continue;
    }
    const int64_t s = load_offset(j, i - 1);
    ok = ok && s >= 0 && s <= t;
    if (!ok) {
      atomicOr(&bad[lo], 1);
      j.out[i - 1] = 0;
      continue;
    }
    const uint64_t h = hashing::hash_bytes(static_cast<HashKind>(kind), j.bytes + s, t - s);
    j.out[i - 1] = hashing::apply_bucket(h, j.bucket);
  }
}

std::vector<at::Tensor> fused_hash_cuda(at::TensorList data, at::TensorList offsets,
                                        c10::string_view hash_type, at::IntArrayRef buckets) {
  const char* op = "recis_compat::fused_hash_bytes";
  TORCH_CHECK(data.size() == offsets.size() && data.size() == buckets.size(), op,
              ": got ", data.size(), " data, ", offsets.size(), " offsets and ", buckets.size(),
              " buckets; they must be equal in number");
  const HashKind kind = hashing::parse_kind(hash_type, op);
  const int64_t njobs = static_cast<int64_t>(data.size());
  std::vector<at::Tensor> outs;
  if (njobs == 0) return outs;

  for (int64_t k = 0; k < njobs; ++k) {
    check_inputs_cuda(data[k], offsets[k], op);
    TORCH_CHECK(data[k].device() == data[0].device(), op,
                ": all inputs must be on one CUDA device, got data[0] on ", data[0].device(),
                " and data[", k, "] on ", data[k].device());
  }
  const at::Device device = data[0].device();
  c10::cuda::CUDAGuard guard(device);

  // descriptor table (pinned host memory): njobs DeviceJobs, then njobs + 1 slot starts
  at::Tensor table = at::empty({njobs * kJobWords + njobs + 1},
                               at::TensorOptions().dtype(at::kLong).pinned_memory(true));
  auto* host_jobs = reinterpret_cast<DeviceJob*>(table.data_ptr<int64_t>());
  int64_t* host_starts = table.data_ptr<int64_t>() + njobs * kJobWords;
  std::vector<at::Tensor> keep;  // contiguous copies stay alive until the launch is enqueued
  keep.reserve(2 * njobs);
  outs.reserve(njobs);
  host_starts[0] = 0;
  for (int64_t k = 0; k < njobs; ++k) {
    at::Tensor d = data[k].contiguous();
    at::Tensor o = offsets[k].contiguous();
    const int64_t n = o.numel() - 1;
    at::Tensor out = at::empty({n}, o.options().dtype(at::kLong));
    host_jobs[k] = DeviceJob{static_cast<const uint8_t*>(d.data_ptr()), o.data_ptr(),
                             out.data_ptr<int64_t>(), n, d.numel(), buckets[k],
                             o.scalar_type() == at::kLong ? 1 : 0};
    host_starts[k + 1] = host_starts[k] + n + 1;
    keep.push_back(std::move(d));
    keep.push_back(std::move(o));
    outs.push_back(std::move(out));
  }
  const int64_t slots = host_starts[njobs];

  at::Tensor dev_table = table.to(device, /*non_blocking=*/true);
  at::Tensor bad = at::zeros({njobs}, at::TensorOptions().dtype(at::kInt).device(device));
  const auto* dev_jobs = reinterpret_cast<const DeviceJob*>(dev_table.data_ptr<int64_t>());
  const int64_t* dev_starts = dev_table.data_ptr<int64_t>() + njobs * kJobWords;

  constexpr int kThreads = 256;
  const int64_t blocks = std::min<int64_t>((slots + kThreads - 1) / kThreads, 65535);
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  fused_hash_kernel<<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(
      dev_jobs, dev_starts, njobs, slots, static_cast<int>(kind), bad.data_ptr<int32_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();

  const at::Tensor bad_host = bad.cpu();  // the one synchronization of the call
  const int32_t* flags = bad_host.data_ptr<int32_t>();
  for (int64_t k = 0; k < njobs; ++k) {
    if (flags[k] == 0) continue;
    const at::Tensor o = offsets[k].cpu();
    if (o.scalar_type() == at::kLong)
      report_offsets(o.data_ptr<int64_t>(), o.numel(), data[k].numel(), op);
    else
      report_offsets(o.data_ptr<int32_t>(), o.numel(), data[k].numel(), op);
  }
  return outs;
}

at::Tensor hash_cuda(const at::Tensor& data, const at::Tensor& offsets, c10::string_view hash_type,
                     int64_t bucket) {
  return fused_hash_cuda({data}, {offsets}, hash_type, {bucket})[0];
}

}  // namespace

TORCH_LIBRARY_IMPL(recis_compat, CUDA, m) {
  m.impl("hash_bytes", &hash_cuda);
  m.impl("fused_hash_bytes", &fused_hash_cuda);
}

}  // namespace recis_compat
