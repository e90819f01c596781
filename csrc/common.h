// Shared helpers for recis-compat kernels: host/device qualifiers and argument checks that
// produce errors naming the op and the argument (never a crash deep inside a kernel).
#pragma once
#include <ATen/ATen.h>

#if defined(__CUDACC__)
#define RECIS_HD __host__ __device__ __forceinline__
#else
#define RECIS_HD inline
#endif

// Hot CPU loops that GCC can vectorise are compiled twice, for x86-64-v3 (AVX2 + FMA) and for
// the baseline, and the loader picks one per machine (function multiversioning; the wheel stays
// portable). Results are bit-identical between the two clones: setup.py builds with
// -ffp-contract=off (no FMA contraction) and -fno-math-errno (sqrt vectorises; no value changes).
#if !defined(__CUDACC__) && defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define RECIS_CPU_CLONES __attribute__((target_clones("arch=x86-64-v3", "default")))
#else
#define RECIS_CPU_CLONES
#endif

#define RECIS_CHECK_1D(op, name, t) \
  TORCH_CHECK((t).dim() == 1, op ": '" name "' must be 1-D, got shape ", (t).sizes())

#define RECIS_CHECK_DTYPE(op, name, t, dt) \
  TORCH_CHECK((t).scalar_type() == (dt), op ": '" name "' must be ", dt, ", got ", (t).scalar_type())

#define RECIS_CHECK_OFFSETS(op, name, t)                                                   \
  TORCH_CHECK((t).dim() == 1 && ((t).scalar_type() == at::kInt || (t).scalar_type() == at::kLong), \
              op ": '" name "' must be a 1-D int32 or int64 offsets tensor, got ", (t).scalar_type(), \
              " of shape ", (t).sizes())
