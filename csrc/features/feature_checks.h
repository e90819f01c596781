// Host-side argument checks shared by the CPU kernels and the CUDA twins of the
// feature-processing ops. Offsets are validated on a CPU copy so a bad offsets tensor raises a
// TORCH_CHECK error naming the op and the argument instead of faulting inside a kernel.
#pragma once
#include <ATen/ATen.h>

#include <string>

#include "common.h"

namespace recis_compat {
namespace features {

// offsets: 1-D int32/int64, >= 1 entry, off[0] >= 0, non-decreasing, off[last] <= limit.
inline void check_offsets(const at::Tensor& off, int64_t limit, const char* op, const std::string& name) {
  TORCH_CHECK(off.dim() == 1 && (off.scalar_type() == at::kInt || off.scalar_type() == at::kLong), op,
              ": '", name, "' must be a 1-D int32 or int64 offsets tensor, got ", off.scalar_type(),
              " of shape ", off.sizes());
  TORCH_CHECK(off.numel() >= 1, op, ": '", name, "' must have at least one entry");
  const at::Tensor o = off.to(at::kCPU, at::kLong).contiguous();
  const int64_t* p = o.data_ptr<int64_t>();
  const int64_t n = o.numel();
  TORCH_CHECK(p[0] >= 0 && p[n - 1] <= limit, op, ": '", name, "' runs from ", p[0], " to ",
              p[n - 1], ", out of range [0, ", limit, "]");
  for (int64_t i = 1; i < n; ++i)
    TORCH_CHECK(p[i] >= p[i - 1], op, ": '", name, "' must be non-decreasing (entry ", i, " = ",
                p[i], " < ", p[i - 1], ")");
}

inline std::string nth(const char* name, size_t i) { return std::string(name) + "[" + std::to_string(i) + "]"; }

}  // namespace features
}  // namespace recis_compat
