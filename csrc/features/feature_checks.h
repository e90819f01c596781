// Host-side argument checks shared by the CPU kernels and the CUDA twins of the
// feature-processing ops. Offsets are validated on a CPU copy so a bad offsets tensor raises a
// TORCH_CHECK error naming the op and the argument instead of faulting inside a kernel.
#pragma once
#include <ATen/ATen.h>

#include <algorithm>
#include <limits>
#include <numeric>
#include <string>
#include <vector>

#include "common.h"
#include "features/feature_kernels.h"

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

// ------------------------------------------------------------------ fused id/value ops
// "<op>: got <na> <a> and <nb> <b>; they must be equal in number"
inline void check_same_count(const char* op, size_t na, const char* a, size_t nb, const char* b) {
  TORCH_CHECK(na == nb, op, ": got ", na, " ", a, " and ", nb, " ", b, "; they must be equal in number");
}

// fused_uint64_mod: values[k] holds int64 ids and mods[k] > 0.
inline void check_mod_job(const char* op, at::TensorList values, at::IntArrayRef mods, size_t k) {
  TORCH_CHECK(values[k].scalar_type() == at::kLong, op, ": '", nth("values", k),
              "' must be int64 ids, got ", values[k].scalar_type());
  TORCH_CHECK(mods[k] > 0, op, ": '", nth("mods", k), "' must be > 0, got ", mods[k]);
}

// fused_bucketize: boundaries[k] is a 1-D floating tensor.
inline void check_boundaries(const char* op, at::TensorList boundaries, size_t k) {
  TORCH_CHECK(boundaries[k].dim() == 1 && at::isFloatingType(boundaries[k].scalar_type()), op,
              ": '", nth("boundaries", k), "' must be a 1-D floating tensor, got ",
              boundaries[k].scalar_type(), " of shape ", boundaries[k].sizes());
}

// fused_multi_hash: the counts of the parameter lists and primes/buckets > 0; returns
// sum(num_hashes).
inline int64_t check_multi_hash_params(const char* op, at::TensorList inputs, at::IntArrayRef muls,
                                       at::IntArrayRef primes, at::IntArrayRef buckets,
                                       at::IntArrayRef num_hashes) {
  check_same_count(op, inputs.size(), "inputs", num_hashes.size(), "num_hashes");
  const int64_t total_h = std::accumulate(num_hashes.begin(), num_hashes.end(), int64_t{0});
  TORCH_CHECK(static_cast<int64_t>(muls.size()) == total_h &&
                  static_cast<int64_t>(primes.size()) == total_h &&
                  static_cast<int64_t>(buckets.size()) == total_h,
              op, ": muls, primes and buckets must each hold sum(num_hashes) = ", total_h,
              " entries, got ", muls.size(), ", ", primes.size(), ", ", buckets.size());
  for (int64_t j = 0; j < total_h; ++j) {
    TORCH_CHECK(primes[j] > 0, op, ": '", nth("primes", j), "' must be > 0, got ", primes[j]);
    TORCH_CHECK(buckets[j] > 0, op, ": '", nth("buckets", j), "' must be > 0, got ", buckets[j]);
  }
  return total_h;
}

// fused_multi_hash: num_hashes[k] in [1, kMaxMultiHash] and inputs[k] holds int64 ids.
inline void check_multi_hash_input(const char* op, at::TensorList inputs, at::IntArrayRef num_hashes,
                                   size_t k) {
  TORCH_CHECK(num_hashes[k] >= 1 && num_hashes[k] <= kMaxMultiHash, op, ": '",
              nth("num_hashes", k), "' must be in [1, 4] (at most 4 multi-hash buckets), got ",
              num_hashes[k]);
  TORCH_CHECK(inputs[k].scalar_type() == at::kLong, op, ": '", nth("inputs", k),
              "' must be int64 ids, got ", inputs[k].scalar_type());
}

// ------------------------------------------------------------------ feature_cross
constexpr const char* kOpFeatureCross = "recis_compat::feature_cross";

inline void check_cross_side(const at::Tensor& val, const at::Tensor& off, const c10::optional<at::Tensor>& w,
                             const char* side) {
  const char* op = kOpFeatureCross;
  const std::string s(side);
  TORCH_CHECK(val.dim() == 1 && val.scalar_type() == at::kLong, op, ": '", s,
              "_val' must be 1-D int64 ids, got ", val.scalar_type(), " of shape ", val.sizes());
  TORCH_CHECK(off.device() == val.device(), op, ": '", s, "_off' must be on the device of ", s, "_val");
  check_offsets(off, val.numel(), op, s + "_off");
  if (w.has_value()) {
    TORCH_CHECK(w->dim() == 1 && w->numel() == val.numel(), op, ": '", s,
                "_w' must be 1-D with one weight per id (", val.numel(), "), got shape ", w->sizes());
    TORCH_CHECK(at::isFloatingType(w->scalar_type()), op, ": '", s, "_w' must be floating, got ",
                w->scalar_type());
    TORCH_CHECK(w->device() == val.device(), op, ": '", s, "_w' must be on the device of ", s, "_val");
  }
}

inline void check_cross_args(const at::Tensor& x_val, const at::Tensor& x_off, const c10::optional<at::Tensor>& x_w,
                             const at::Tensor& y_val, const at::Tensor& y_off, const c10::optional<at::Tensor>& y_w) {
  const char* op = kOpFeatureCross;
  check_cross_side(x_val, x_off, x_w, "x");
  check_cross_side(y_val, y_off, y_w, "y");
  TORCH_CHECK(x_off.scalar_type() == y_off.scalar_type(), op,
              ": 'x_off' and 'y_off' must share one dtype, got ", x_off.scalar_type(), " and ",
              y_off.scalar_type());
  TORCH_CHECK(x_val.device() == y_val.device(), op, ": x and y must be on one device");
}

// The checked inputs of feature_cross, made contiguous; weights (if any) cast to the promoted
// weight dtype wdt (float32 at least).
struct CrossInputs {
  at::ScalarType wdt = at::kFloat;
  int64_t rows = 0;
  at::Tensor xv, xo, xw, yv, yo, yw;  // xw / yw undefined when the side has no weights
};

inline CrossInputs prepare_cross_inputs(const at::Tensor& x_val, const at::Tensor& x_off,
                                        const c10::optional<at::Tensor>& x_w, const at::Tensor& y_val,
                                        const at::Tensor& y_off, const c10::optional<at::Tensor>& y_w) {
  CrossInputs in;
  if (x_w.has_value()) in.wdt = at::promoteTypes(in.wdt, x_w->scalar_type());
  if (y_w.has_value()) in.wdt = at::promoteTypes(in.wdt, y_w->scalar_type());
  in.rows = std::max<int64_t>(std::min(x_off.numel(), y_off.numel()) - 1, 0);
  in.xv = x_val.contiguous();
  in.yv = y_val.contiguous();
  in.xo = x_off.contiguous();
  in.yo = y_off.contiguous();
  in.xw = x_w.has_value() ? x_w->to(in.wdt).contiguous() : at::Tensor();
  in.yw = y_w.has_value() ? y_w->to(in.wdt).contiguous() : at::Tensor();
  return in;
}

// ------------------------------------------------------------------ ragged ops
// An uninitialised tensor like v with n rows (v's trailing dims; a 0-d v gives shape [n]).
inline at::Tensor empty_rows(const at::Tensor& v, int64_t n) {
  auto sz = v.sizes().vec();
  if (sz.empty()) sz.push_back(0);
  sz[0] = n;
  return at::empty(sz, v.options());
}

// Bytes of one leaf "row" of v: element size * prod(shape[1:]).
inline int64_t row_bytes(const at::Tensor& v) {
  int64_t inner = 1;
  for (int64_t d = 1; d < v.dim(); ++d) inner *= v.size(d);
  return inner * static_cast<int64_t>(v.element_size());
}

inline void check_values(const at::Tensor& v, const char* op, const std::string& name) {
  TORCH_CHECK(v.dim() >= 1, op, ": '", name, "' must have at least one dimension");
}

inline void check_weight(const at::Tensor& w, const at::Tensor& v, const char* op, const std::string& name) {
  TORCH_CHECK(w.dim() == 1 && w.size(0) == v.size(0), op, ": '", name,
              "' must be 1-D with one weight per value (", v.size(0), "), got shape ", w.sizes());
  TORCH_CHECK(w.device() == v.device(), op, ": '", name, "' must be on the device of its values");
}

inline void check_keep_length(const char* op, at::IntArrayRef keep_lengths, size_t k) {
  TORCH_CHECK(keep_lengths[k] > 0, op, ": '", nth("keep_lengths", k),
              "' (seq_len) must be > 0, got ", keep_lengths[k]);
}

inline void check_cutoff_2d_counts(const char* op, size_t n, size_t n_offsets, size_t n_weights,
                                   size_t n_keep, size_t n_drop) {
  TORCH_CHECK(n_offsets == n && n_weights == n && n_keep == n && n_drop == n,
              op, ": values, offsets, weights, keep_lengths and drop_left must have one entry per "
              "feature (got ", n, ", ", n_offsets, ", ", n_weights, ", ", n_keep, ", ", n_drop, ")");
}

inline void check_cutoff_3d_counts(const char* op, size_t n, size_t n_outer, size_t n_inner, size_t n_weights,
                                   size_t n_keep, size_t n_drop, size_t n_pad) {
  TORCH_CHECK(n_outer == n && n_inner == n && n_weights == n && n_keep == n && n_drop == n && n_pad == n,
              op, ": values, outer, inner, weights, keep_lengths, drop_left and pad_left must have "
              "one entry per feature");
}

// ragged_to_dense: [batch, maxlen[0], ..., maxlen[L-1], values.shape[1:]...].
inline std::vector<int64_t> dense_shape(int64_t batch, const std::vector<int64_t>& maxlen, const at::Tensor& values) {
  std::vector<int64_t> shape{batch};
  shape.insert(shape.end(), maxlen.begin(), maxlen.end());
  for (int64_t d = 1; d < values.dim(); ++d) shape.push_back(values.size(d));
  return shape;
}

// ragged_to_dense_backward: checks grad against the dense layout; returns the values' gradient
// shape [num_values, grad.shape[1 + L:]...].
inline std::vector<int64_t> check_dense_grad(const char* op, const at::Tensor& grad, int64_t batch,
                                             const std::vector<int64_t>& maxlen, int64_t num_values) {
  const int64_t nl = static_cast<int64_t>(maxlen.size());
  TORCH_CHECK(grad.dim() >= 1 + nl && grad.size(0) == batch, op, ": 'grad' has shape ", grad.sizes(),
              ", which does not match the offsets");
  for (int64_t k = 0; k < nl; ++k)
    TORCH_CHECK(grad.size(1 + k) == maxlen[k], op, ": 'grad' has shape ", grad.sizes(),
                ", which does not match the offsets");
  std::vector<int64_t> shape{num_values};
  for (int64_t d = 1 + nl; d < grad.dim(); ++d) shape.push_back(grad.size(d));
  return shape;
}

// dense_to_ragged: data is 2-D and its values fit int32 offsets.
inline void check_dense_data(const char* op, const at::Tensor& data) {
  TORCH_CHECK(data.dim() == 2, op, ": 'data' must be 2-D, got shape ", data.sizes());
  TORCH_CHECK(data.size(0) * data.size(1) <= std::numeric_limits<int32_t>::max(), op,
              ": 'data' holds more values than int32 offsets can address");
}

}  // namespace features
}  // namespace recis_compat
