// Argument checks shared by the CPU and CUDA string-hash kernels, so both raise the same errors.
#pragma once
#include <ATen/ATen.h>

#include <string>

#include "hash/hash_functions.h"

namespace recis_compat {
namespace hashing {

inline HashKind parse_kind(c10::string_view hash_type, const char* op) {
  if (hash_type == "farm") return HashKind::kFarm;
  if (hash_type == "murmur") return HashKind::kMurmur;
  TORCH_CHECK(false, op, ": hash_type must be 'farm' or 'murmur', got '", std::string(hash_type), "'");
}

inline void check_inputs(const at::Tensor& data, const at::Tensor& offsets, const char* op) {
  TORCH_CHECK(data.dim() == 1, op, ": data must be 1-D bytes, got shape ", data.sizes());
  TORCH_CHECK(data.scalar_type() == at::kByte || data.scalar_type() == at::kChar, op,
              ": data must be uint8 or int8 bytes, got ", data.scalar_type());
  TORCH_CHECK(offsets.dim() == 1 && offsets.numel() >= 1, op,
              ": offsets must be 1-D with at least one entry, got shape ", offsets.sizes());
  TORCH_CHECK(offsets.scalar_type() == at::kInt || offsets.scalar_type() == at::kLong, op,
              ": offsets must be int32 or int64, got ", offsets.scalar_type());
  TORCH_CHECK(data.device() == offsets.device(), op, ": data and offsets must be on one device, got ",
              data.device(), " and ", offsets.device());
}

// Offsets must lie inside the data and never decrease (host pointer).
template <typename off_t>
void check_offsets_range(const off_t* off, int64_t n, int64_t nbytes, const char* op) {
  TORCH_CHECK(off[0] >= 0 && off[n - 1] <= nbytes, op, ": offsets run from ", off[0], " to ",
              off[n - 1], " but data holds ", nbytes, " bytes");
  for (int64_t i = 1; i < n; ++i)
    TORCH_CHECK(off[i] >= off[i - 1], op, ": offsets must be non-decreasing (offsets[", i,
                "]=", off[i], " < offsets[", i - 1, "]=", off[i - 1], ")");
}

}  // namespace hashing
}  // namespace recis_compat
