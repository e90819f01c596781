// Argument checks shared by the CPU (tile.cpp) and CUDA (tile.cu) kernels of tile_forward,
// tile_backward and pooled_sum_backward, so both devices reject the same inputs with the same
// errors. Offsets are validated on the host (copied there from a GPU): a bad offset must give an
// error, not an out-of-bounds read; row indices are validated once, so the kernels run unchecked.
#pragma once
#include <ATen/ATen.h>

#include <optional>

namespace recis_compat {
namespace tile_checks {

inline void check_common(const char* op, const at::Tensor& t, const at::Tensor& index, const at::Tensor& offsets,
                         int64_t tile_len) {
  TORCH_CHECK(tile_len > 0, op, ": tile_len must be > 0, got ", tile_len);
  TORCH_CHECK(index.dim() == 1 && index.scalar_type() == at::kLong, op,
              ": index must be a 1-D int64 tensor, got ", index.scalar_type(), " of shape ", index.sizes());
  TORCH_CHECK(offsets.dim() == 1 && offsets.numel() >= 1 &&
                  (offsets.scalar_type() == at::kInt || offsets.scalar_type() == at::kLong),
              op, ": offsets must be 1-D int32/int64 with at least one entry, got ",
              offsets.scalar_type(), " of shape ", offsets.sizes());
  TORCH_CHECK(t.device() == index.device() && t.device() == offsets.device(), op,
              ": all tensors must be on one device, got ", t.device(), ", ", index.device(), " (index) and ",
              offsets.device(), " (offsets)");
}

// Offsets must run from >= 0 to <= n_index and never decrease (checked on a host copy).
inline void check_offsets(const char* op, const at::Tensor& offsets, int64_t n_index) {
  const auto host = offsets.to(at::kCPU, at::kLong).contiguous();
  const int64_t* off = host.data_ptr<int64_t>();
  const int64_t n_off = host.numel();
  TORCH_CHECK(off[0] >= 0 && off[n_off - 1] <= n_index, op, ": offsets run from ", off[0], " to ",
              off[n_off - 1], " but index has ", n_index, " entries");
  for (int64_t i = 1; i < n_off; ++i)
    TORCH_CHECK(off[i] >= off[i - 1], op, ": offsets must be non-decreasing at position ", i);
}

// Every row index < num_rows (negative = missing id, skipped by the kernels); ``what`` names the
// rows' owner in the error.
inline void check_rows(const char* op, const at::Tensor& index, int64_t num_rows, const char* what) {
  if (index.numel() == 0) return;
  const int64_t hi = index.max().item<int64_t>();
  TORCH_CHECK(hi < num_rows, op, ": index ", hi, " out of range: ", what, " has only ", num_rows, " rows");
}

// tile_forward(emb [U, D], index [N], offsets [B+1], tile_len)
inline void check_tile_forward(const char* op, const at::Tensor& emb, const at::Tensor& index,
                               const at::Tensor& offsets, int64_t tile_len) {
  check_common(op, emb, index, offsets, tile_len);
  TORCH_CHECK(emb.dim() == 2, op, ": emb must be 2-D [rows, dim], got shape ", emb.sizes());
  check_offsets(op, offsets, index.numel());
  check_rows(op, index, emb.size(0), "emb");
}

// tile_backward(grad [B, tile_len, D], index [N], offsets [B+1], num_rows)
inline void check_tile_backward(const char* op, const at::Tensor& grad, const at::Tensor& index,
                                const at::Tensor& offsets, int64_t num_rows) {
  TORCH_CHECK(grad.dim() == 3, op, ": grad must be [B, tile_len, dim], got ", grad.sizes());
  check_common(op, grad, index, offsets, grad.size(1));
  TORCH_CHECK(num_rows >= 0, op, ": num_rows must be >= 0");
  TORCH_CHECK(grad.size(0) == offsets.numel() - 1, op, ": grad has ", grad.size(0), " bags but offsets describe ",
              offsets.numel() - 1);
  check_offsets(op, offsets, index.numel());
  check_rows(op, index, num_rows, "the gradient (num_rows)");
}

// pooled_sum_backward(grad [B, D], index [N], offsets [B+1], weight [N]?, num_rows)
inline void check_pooled_sum_backward(const char* op, const at::Tensor& grad, const at::Tensor& index,
                                      const at::Tensor& offsets, const std::optional<at::Tensor>& weight,
                                      int64_t num_rows) {
  TORCH_CHECK(grad.dim() == 2, op, ": grad must be [B, dim], got ", grad.sizes());
  check_common(op, grad, index, offsets, 1);
  TORCH_CHECK(num_rows >= 0, op, ": num_rows must be >= 0");
  TORCH_CHECK(grad.size(0) == offsets.numel() - 1, op, ": grad has ", grad.size(0), " bags but offsets describe ",
              offsets.numel() - 1);
  check_offsets(op, offsets, index.numel());
  if (weight.has_value() && weight->defined()) {
    TORCH_CHECK(weight->dim() == 1 && weight->numel() == index.numel(), op, ": weight must be [", index.numel(),
                "], got ", weight->sizes());
    TORCH_CHECK(weight->scalar_type() == grad.scalar_type(), op, ": weight dtype ", weight->scalar_type(),
                " does not match grad dtype ", grad.scalar_type());
    TORCH_CHECK(weight->device() == grad.device(), op, ": weight is on ", weight->device(), ", grad on ",
                grad.device());
  }
  check_rows(op, index, num_rows, "the gradient (num_rows)");
}

}  // namespace tile_checks
}  // namespace recis_compat
