// Shared helpers for recis-compat kernels: host/device qualifiers and argument checks that
// produce errors naming the op and the argument (never a crash deep inside a kernel).
#pragma once
#include <ATen/ATen.h>

#if defined(__CUDACC__)
#define RECIS_HD __host__ __device__ __forceinline__
#else
#define RECIS_HD inline
#endif

#define RECIS_CHECK_1D(op, name, t) \
  TORCH_CHECK((t).dim() == 1, op ": '" name "' must be 1-D, got shape ", (t).sizes())

#define RECIS_CHECK_DTYPE(op, name, t, dt) \
  TORCH_CHECK((t).scalar_type() == (dt), op ": '" name "' must be ", dt, ", got ", (t).scalar_type())

#define RECIS_CHECK_OFFSETS(op, name, t)                                                   \
  TORCH_CHECK((t).dim() == 1 && ((t).scalar_type() == at::kInt || (t).scalar_type() == at::kLong), \
              op ": '" name "' must be a 1-D int32 or int64 offsets tensor, got ", (t).scalar_type(), \
              " of shape ", (t).sizes())
