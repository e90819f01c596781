// CPU kernels (and the op schemas) of the ragged feature ops:
//   fused_ragged_cutoff_2d, fused_ragged_cutoff_3d, ragged_to_dense (+ backward), dense_to_ragged.
// Semantics: recis-api.md §1.2, §1.3.8, §1.5; Python face: recis_compat/ops/features.py.
// Value copies are dtype-agnostic (bytes of one leaf "row" = element size * prod(shape[1:])).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cstring>
#include <limits>
#include <vector>

#include "common.h"
#include "features/feature_checks.h"

namespace recis_compat {
namespace {

using features::nth;

std::vector<int64_t> as_i64(const at::Tensor& off) {
  auto o = off.to(at::kLong).contiguous();
  return std::vector<int64_t>(o.data_ptr<int64_t>(), o.data_ptr<int64_t>() + o.numel());
}

at::Tensor from_i64(const std::vector<int64_t>& v, const at::Tensor& like) {
  auto t = at::empty({static_cast<int64_t>(v.size())}, like.options().dtype(at::kLong));
  if (!v.empty()) std::memcpy(t.data_ptr<int64_t>(), v.data(), v.size() * sizeof(int64_t));
  if (like.scalar_type() == at::kInt) {
    TORCH_CHECK(v.empty() || v.back() <= std::numeric_limits<int32_t>::max(),
                "recis_compat: output offsets overflow int32");
    return t.to(at::kInt);
  }
  return t;
}

// Copies ranges [src_start[k], +len[k]) of src rows into dst rows from dst_start[k] (parallel).
void copy_ranges(const at::Tensor& src, at::Tensor& dst, const std::vector<int64_t>& src_start,
                 const std::vector<int64_t>& len, const std::vector<int64_t>& dst_start) {
  const int64_t rb = features::row_bytes(src);
  if (rb == 0) return;
  const char* s = static_cast<const char*>(src.data_ptr());
  char* d = static_cast<char*>(dst.data_ptr());
  at::parallel_for(0, static_cast<int64_t>(len.size()), 256, [&](int64_t b, int64_t e) {
    for (int64_t k = b; k < e; ++k)
      if (len[k] > 0) std::memcpy(d + dst_start[k] * rb, s + src_start[k] * rb, len[k] * rb);
  });
}

// ------------------------------------------------------------------ fused_ragged_cutoff_2d
std::tuple<std::vector<at::Tensor>, std::vector<at::Tensor>, std::vector<at::Tensor>,
           std::vector<at::Tensor>, std::vector<at::Tensor>>
cutoff_2d_cpu(at::TensorList values, at::TensorList offsets,
              const c10::List<c10::optional<at::Tensor>>& weights, at::IntArrayRef keep_lengths,
              c10::List<bool> drop_left) {
  const char* op = "recis_compat::fused_ragged_cutoff_2d";
  const size_t n = values.size();
  features::check_cutoff_2d_counts(op, n, offsets.size(), weights.size(), keep_lengths.size(), drop_left.size());
  std::vector<at::Tensor> vs, os, ws, ds, ps;
  for (size_t k = 0; k < n; ++k) {
    features::check_values(values[k], op, nth("values", k));
    features::check_offsets(offsets[k], values[k].size(0), op, nth("offsets", k));
    features::check_keep_length(op, keep_lengths, k);
    const c10::optional<at::Tensor> w = weights.get(k);
    if (w.has_value()) features::check_weight(*w, values[k], op, nth("weights", k));
    const int64_t keep = keep_lengths[k];
    const bool left = drop_left.get(k);
    const auto off = as_i64(offsets[k]);
    const int64_t rows = static_cast<int64_t>(off.size()) - 1;
    std::vector<int64_t> src(rows), len(rows), dst(rows), noff(rows + 1, 0);
    auto drop = at::empty({rows}, offsets[k].options().dtype(at::kInt));
    auto pad = at::empty({rows}, offsets[k].options().dtype(at::kInt));
    int32_t* dp = drop.data_ptr<int32_t>();
    int32_t* pp = pad.data_ptr<int32_t>();
    for (int64_t r = 0; r < rows; ++r) {
      const int64_t l = off[r + 1] - off[r];
      const int64_t kept = std::min(l, keep);
      src[r] = off[r] + (left ? l - kept : 0);
      len[r] = kept;
      dst[r] = noff[r];
      noff[r + 1] = noff[r] + kept;
      dp[r] = static_cast<int32_t>(std::max<int64_t>(l - keep, 0));
      pp[r] = static_cast<int32_t>(std::max<int64_t>(keep - l, 0));
    }
    auto v = values[k].contiguous();
    auto out = features::empty_rows(v, noff[rows]);
    copy_ranges(v, out, src, len, dst);
    vs.push_back(out);
    os.push_back(from_i64(noff, offsets[k]));
    if (w.has_value()) {
      auto wc = w->contiguous();
      auto wo = features::empty_rows(wc, noff[rows]);
      copy_ranges(wc, wo, src, len, dst);
      ws.push_back(wo);
    } else {
      ws.push_back(at::empty({0}, v.options().dtype(at::kFloat)));
    }
    ds.push_back(drop);
    ps.push_back(pad);
  }
  return {vs, os, ws, ds, ps};
}

// ------------------------------------------------------------------ fused_ragged_cutoff_3d
std::tuple<std::vector<at::Tensor>, std::vector<at::Tensor>, std::vector<at::Tensor>, std::vector<at::Tensor>>
cutoff_3d_cpu(at::TensorList values, at::TensorList outer, at::TensorList inner,
              const c10::List<c10::optional<at::Tensor>>& weights, at::IntArrayRef keep_lengths,
              c10::List<bool> drop_left, c10::List<bool> pad_left) {
  const char* op = "recis_compat::fused_ragged_cutoff_3d";
  const size_t n = values.size();
  features::check_cutoff_3d_counts(op, n, outer.size(), inner.size(), weights.size(), keep_lengths.size(),
                                   drop_left.size(), pad_left.size());
  std::vector<at::Tensor> vs, os, is, ws;
  for (size_t k = 0; k < n; ++k) {
    features::check_values(values[k], op, nth("values", k));
    features::check_offsets(inner[k], values[k].size(0), op, nth("inner", k));
    features::check_offsets(outer[k], inner[k].numel() - 1, op, nth("outer", k));
    features::check_keep_length(op, keep_lengths, k);
    const int64_t keep = keep_lengths[k];
    const c10::optional<at::Tensor> w = weights.get(k);
    if (w.has_value()) features::check_weight(*w, values[k], op, nth("weights", k));
    const bool dl = drop_left.get(k), pl = pad_left.get(k);
    const auto o = as_i64(outer[k]);
    const auto in = as_i64(inner[k]);
    const int64_t rows = static_cast<int64_t>(o.size()) - 1;
    const int64_t slots = rows * keep;
    std::vector<int64_t> src(slots), len(slots), dst(slots), noff(slots + 1, 0);
    for (int64_t r = 0; r < rows; ++r) {
      const int64_t nsub = o[r + 1] - o[r];
      const int64_t kept = std::min(nsub, keep);
      const int64_t first = o[r] + (dl ? nsub - kept : 0);
      const int64_t pad = keep - kept;
      for (int64_t s = 0; s < keep; ++s) {
        const int64_t q = r * keep + s;
        const int64_t local = pl ? s - pad : s;
        if (local >= 0 && local < kept) {
          const int64_t sub = first + local;
          src[q] = in[sub];
          len[q] = in[sub + 1] - in[sub];
        } else {
          src[q] = 0;
          len[q] = 0;
        }
        dst[q] = noff[q];
        noff[q + 1] = noff[q] + len[q];
      }
    }
    auto v = values[k].contiguous();
    auto out = features::empty_rows(v, noff[slots]);
    copy_ranges(v, out, src, len, dst);
    vs.push_back(out);
    std::vector<int64_t> oo(rows + 1);
    for (int64_t r = 0; r <= rows; ++r) oo[r] = r * keep;
    os.push_back(from_i64(oo, outer[k]));
    is.push_back(from_i64(noff, inner[k]));
    if (w.has_value()) {
      auto wc = w->contiguous();
      auto wo = features::empty_rows(wc, noff[slots]);
      copy_ranges(wc, wo, src, len, dst);
      ws.push_back(wo);
    } else {
      ws.push_back(at::empty({0}, v.options().dtype(at::kFloat)));
    }
  }
  return {vs, os, is, ws};
}

// ------------------------------------------------------------------ ragged_to_dense
struct DenseLayout {
  std::vector<std::vector<int64_t>> off;  // per level, int64
  std::vector<int64_t> maxlen;             // per level
  std::vector<int64_t> stride;             // dense stride (in leaf rows) of the dim each level indexes
  int64_t row_stride = 0;                  // leaf rows per batch row
  int64_t batch = 0;
};

DenseLayout dense_layout(at::TensorList offsets, int64_t num_values, const char* op) {
  TORCH_CHECK(!offsets.empty(), op, ": 'offsets' must hold at least one level");
  const auto dt = offsets[0].scalar_type();
  DenseLayout L;
  const size_t nl = offsets.size();
  for (size_t k = 0; k < nl; ++k) {
    TORCH_CHECK(offsets[k].scalar_type() == dt, op, ": all offsets must share one dtype ('",
                nth("offsets", k), "' is ", offsets[k].scalar_type(), ", offsets[0] is ", dt, ")");
    const int64_t limit = k + 1 < nl ? offsets[k + 1].numel() - 1 : num_values;
    TORCH_CHECK(k + 1 == nl || offsets[k + 1].numel() >= 1, op, ": '", nth("offsets", k + 1),
                "' must have at least one entry");
    features::check_offsets(offsets[k], limit, op, nth("offsets", k));
    L.off.push_back(as_i64(offsets[k]));
    int64_t m = 0;
    const auto& o = L.off.back();
    for (size_t i = 0; i + 1 < o.size(); ++i) m = std::max(m, o[i + 1] - o[i]);
    L.maxlen.push_back(m);
  }
  L.batch = static_cast<int64_t>(L.off[0].size()) - 1;
  L.stride.assign(nl, 1);
  for (int64_t k = static_cast<int64_t>(nl) - 2; k >= 0; --k) L.stride[k] = L.stride[k + 1] * L.maxlen[k + 1];
  L.row_stride = L.stride[0] * L.maxlen[0];
  return L;
}

// Visits every leaf value j under batch row b with its dense leaf-row index.
template <typename F>
void visit(const DenseLayout& L, size_t level, int64_t row, int64_t base, const F& fn) {
  const auto& o = L.off[level];
  for (int64_t j = o[row]; j < o[row + 1]; ++j) {
    const int64_t dst = base + (j - o[row]) * L.stride[level];
    if (level + 1 == L.off.size())
      fn(j, dst);
    else
      visit(L, level + 1, j, dst, fn);
  }
}

at::Tensor ragged_to_dense_cpu(const at::Tensor& values, at::TensorList offsets, const at::Scalar& default_value) {
  const char* op = "recis_compat::ragged_to_dense";
  features::check_values(values, op, "values");
  for (size_t k = 0; k < offsets.size(); ++k)
    TORCH_CHECK(offsets[k].device() == values.device(), op, ": '", nth("offsets", k),
                "' must be on the device of 'values'");
  const DenseLayout L = dense_layout(offsets, values.size(0), op);
  auto out = at::full(features::dense_shape(L.batch, L.maxlen, values), default_value, values.options());
  const int64_t rb = features::row_bytes(values);
  if (out.numel() == 0 || rb == 0) return out;
  auto v = values.contiguous();
  const char* s = static_cast<const char*>(v.data_ptr());
  char* d = static_cast<char*>(out.data_ptr());
  at::parallel_for(0, L.batch, 64, [&](int64_t b, int64_t e) {
    for (int64_t r = b; r < e; ++r)
      visit(L, 0, r, r * L.row_stride, [&](int64_t j, int64_t dst) { std::memcpy(d + dst * rb, s + j * rb, rb); });
  });
  return out;
}

at::Tensor ragged_to_dense_backward_cpu(const at::Tensor& grad, at::TensorList offsets, int64_t num_values) {
  const char* op = "recis_compat::ragged_to_dense_backward";
  const DenseLayout L = dense_layout(offsets, num_values, op);
  auto out = at::zeros(features::check_dense_grad(op, grad, L.batch, L.maxlen, num_values), grad.options());
  const int64_t rb = features::row_bytes(out);
  if (grad.numel() == 0 || rb == 0) return out;
  auto g = grad.contiguous();
  const char* s = static_cast<const char*>(g.data_ptr());
  char* d = static_cast<char*>(out.data_ptr());
  at::parallel_for(0, L.batch, 64, [&](int64_t b, int64_t e) {
    for (int64_t r = b; r < e; ++r)
      visit(L, 0, r, r * L.row_stride, [&](int64_t j, int64_t src) { std::memcpy(d + j * rb, s + src * rb, rb); });
  });
  return out;
}

// ------------------------------------------------------------------ dense_to_ragged
std::tuple<at::Tensor, at::Tensor> dense_to_ragged_cpu(const at::Tensor& data, bool check_invalid,
                                                       const at::Scalar& invalid_value) {
  const char* op = "recis_compat::dense_to_ragged";
  features::check_dense_data(op, data);
  const int64_t B = data.size(0), W = data.size(1);
  auto x = data.contiguous();
  std::vector<int64_t> len(B, W);
  if (check_invalid && W > 0) {
    AT_DISPATCH_ALL_TYPES_AND3(at::kHalf, at::kBFloat16, at::kBool, x.scalar_type(), "dense_to_ragged", [&] {
      const scalar_t inv = invalid_value.to<scalar_t>();
      const scalar_t* p = x.data_ptr<scalar_t>();
      at::parallel_for(0, B, 1024, [&](int64_t b, int64_t e) {
        for (int64_t r = b; r < e; ++r) {
          int64_t l = W;
          while (l > 0 && p[r * W + l - 1] == inv) --l;
          len[r] = l;
        }
      });
    });
  }
  std::vector<int64_t> src(B), dst(B), off(B + 1, 0);
  for (int64_t r = 0; r < B; ++r) {
    src[r] = r * W;
    dst[r] = off[r];
    off[r + 1] = off[r] + len[r];
  }
  auto values = at::empty({off[B]}, x.options());
  auto flat = x.reshape({B * W});
  copy_ranges(flat, values, src, len, dst);
  auto offsets = at::empty({B + 1}, x.options().dtype(at::kInt));
  int32_t* op32 = offsets.data_ptr<int32_t>();
  for (int64_t r = 0; r <= B; ++r) op32[r] = static_cast<int32_t>(off[r]);
  return {values, offsets};
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(recis_compat, m) {
  m.def("fused_ragged_cutoff_2d(Tensor[] values, Tensor[] offsets, Tensor?[] weights, int[] keep_lengths, bool[] drop_left) -> (Tensor[], Tensor[], Tensor[], Tensor[], Tensor[])");
  m.def("fused_ragged_cutoff_3d(Tensor[] values, Tensor[] outer, Tensor[] inner, Tensor?[] weights, int[] keep_lengths, bool[] drop_left, bool[] pad_left) -> (Tensor[], Tensor[], Tensor[], Tensor[])");
  m.def("ragged_to_dense(Tensor values, Tensor[] offsets, Scalar default_value) -> Tensor");
  m.def("ragged_to_dense_backward(Tensor grad, Tensor[] offsets, int num_values) -> Tensor");
  m.def("dense_to_ragged(Tensor data, bool check_invalid=True, Scalar invalid_value=0) -> (Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(recis_compat, CPU, m) {
  m.impl("fused_ragged_cutoff_2d", &cutoff_2d_cpu);
  m.impl("fused_ragged_cutoff_3d", &cutoff_3d_cpu);
  m.impl("ragged_to_dense", &ragged_to_dense_cpu);
  m.impl("ragged_to_dense_backward", &ragged_to_dense_backward_cpu);
  m.impl("dense_to_ragged", &dense_to_ragged_cpu);
}

}  // namespace recis_compat
