// The tile combiner (RecIS combiner="tile"), CPU kernels.
//
//   tile_forward(emb[U, D], index[N] int64, offsets[B+1] int32/int64, tile_len T) -> out[B, T, D]
//     out[b, j] = emb[index[offsets[b] + j]] for j < min(len_b, T) and index >= 0, else 0.
//     (index < 0 marks an id that was not found, e.g. a ReadOnly lookup: it gives zeros.)
//   tile_backward(grad[B, T, D], index, offsets, num_rows U) -> grad_emb[U, D]
//     the transpose: each used position adds its gradient row to its emb row.
//   pooled_sum_backward(grad[B, D], index, offsets, weight[N]?, num_rows U) -> grad_emb[U, D]
//     gradient of the (weighted) sum pooling of emb[index] per bag.
// Both backward kernels scatter-add with row ownership: thread t owns the rows of one
// contiguous range and scans every position, adding only into its own rows. No atomics, no
// sort, and every row is summed in position order whatever the thread count (deterministic).
// (A counting sort by row first was 5-10x slower on 2 cores: its two serial passes dominated.)
// FBGEMM's CPU non-pooled TBE backward is 30-80x slower than pooled (single-threaded hash-map
// accumulation), which is why tile is its own op here.
#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <optional>
#include <type_traits>

#include "common.h"
#include "embedding/tile_checks.h"

namespace recis_compat {
namespace {

constexpr const char* kFwd = "recis_compat::tile_forward";
constexpr const char* kBwd = "recis_compat::tile_backward";

// out[r, :] += w * src[:] for r's of one owner; acc_t is float for half/bfloat16 gradients.
template <typename acc_t, typename scalar_t>
inline void add_row(acc_t* __restrict__ out, const scalar_t* __restrict__ src, acc_t w, int64_t D) {
  for (int64_t d = 0; d < D; ++d) out[d] += w * static_cast<acc_t>(src[d]);
}

// The scatter of positions [b0, b1) of bags (each position p of bag b uses grad row
// row_of(b, j) with weight weight_of(k)) into the rows [r_lo, r_hi) owned by one thread.
template <typename acc_t, typename scalar_t, typename RowOf, typename WeightOf>
inline void scatter_owned(acc_t* out, const scalar_t* g, const int64_t* idx, const int64_t* off, int64_t B,
                          int64_t limit, int64_t D, int64_t r_lo, int64_t r_hi, RowOf row_of, WeightOf weight_of) {
  for (int64_t b = 0; b < B; ++b) {
    const int64_t n = std::min(off[b + 1] - off[b], limit);
    for (int64_t j = 0; j < n; ++j) {
      const int64_t k = off[b] + j;
      const int64_t r = idx[k];
      if (r < r_lo || r >= r_hi) continue;
      add_row<acc_t, scalar_t>(out + r * D, g + row_of(b, j) * D, weight_of(k), D);
    }
  }
}

// Runs `body(r_lo, r_hi)` on one contiguous row range per thread (one range when small).
template <typename Body>
void for_each_row_owner(int64_t num_rows, int64_t work, Body body) {
  const int64_t threads = work < 32768 ? 1 : std::min<int64_t>(at::get_num_threads(), std::max<int64_t>(num_rows, 1));
  if (threads <= 1) {
    body(0, num_rows);
    return;
  }
  at::parallel_for(0, threads, 1, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) body(num_rows * t / threads, num_rows * (t + 1) / threads);
  });
}

// The scatter into a zeroed [num_rows, D] output of grad's dtype (float32 accumulator first for
// half / bfloat16).
template <typename Scatter>
at::Tensor owned_scatter(const at::Tensor& grad, int64_t num_rows, int64_t D, int64_t work, Scatter scatter) {
  const bool reduced = grad.scalar_type() == at::kHalf || grad.scalar_type() == at::kBFloat16;
  auto out = at::zeros({num_rows, D}, grad.options().dtype(reduced ? at::kFloat : grad.scalar_type()));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad.scalar_type(), "owned_scatter", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    acc_t* o = out.data_ptr<acc_t>();
    const scalar_t* g = grad.data_ptr<scalar_t>();
    for_each_row_owner(num_rows, work, [&](int64_t r_lo, int64_t r_hi) { scatter(o, g, r_lo, r_hi); });
  });
  return reduced ? out.to(grad.scalar_type()) : out;
}

at::Tensor tile_forward_cpu(const at::Tensor& emb_in, const at::Tensor& index_in,
                            const at::Tensor& offsets_in, int64_t tile_len) {
  tile_checks::check_tile_forward(kFwd, emb_in, index_in, offsets_in, tile_len);
  auto emb = emb_in.contiguous();
  auto index = index_in.contiguous();
  auto offsets = offsets_in.to(at::kLong).contiguous();
  const int64_t B = offsets.numel() - 1, D = emb.size(1);
  const int64_t* off = offsets.data_ptr<int64_t>();
  const int64_t* idx = index.data_ptr<int64_t>();
  // every element is written once: copied rows, zeros for missing ids and for the padding
  auto out = at::empty({B, tile_len, D}, emb.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, emb.scalar_type(), "tile_forward", [&] {
    const scalar_t* src = emb.data_ptr<scalar_t>();
    scalar_t* dst = out.data_ptr<scalar_t>();
    at::parallel_for(0, B, 64, [&](int64_t b0, int64_t b1) {
      for (int64_t b = b0; b < b1; ++b) {
        const int64_t n = std::min(off[b + 1] - off[b], tile_len);
        scalar_t* bag = dst + b * tile_len * D;
        for (int64_t j = 0; j < n; ++j) {
          const int64_t r = idx[off[b] + j];
          if (r < 0) {
            std::fill(bag + j * D, bag + (j + 1) * D, scalar_t(0));
          } else {
            std::copy(src + r * D, src + (r + 1) * D, bag + j * D);
          }
        }
        std::fill(bag + n * D, bag + tile_len * D, scalar_t(0));
      }
    });
  });
  return out;
}

at::Tensor tile_backward_cpu(const at::Tensor& grad_in, const at::Tensor& index_in,
                             const at::Tensor& offsets_in, int64_t num_rows) {
  tile_checks::check_tile_backward(kBwd, grad_in, index_in, offsets_in, num_rows);
  const int64_t tile_len = grad_in.size(1);
  auto grad = grad_in.contiguous();
  auto index = index_in.contiguous();
  auto offsets = offsets_in.to(at::kLong).contiguous();
  const int64_t B = offsets.numel() - 1, D = grad.size(2);
  const int64_t* off = offsets.data_ptr<int64_t>();
  const int64_t* idx = index.data_ptr<int64_t>();
  return owned_scatter(grad, num_rows, D, index.numel() * D, [&](auto* o, const auto* g, int64_t r_lo, int64_t r_hi) {
    using acc_t = std::remove_pointer_t<decltype(o)>;
    scatter_owned(o, g, idx, off, B, tile_len, D, r_lo, r_hi,
                  [&](int64_t b, int64_t j) { return b * tile_len + j; }, [](int64_t) { return acc_t(1); });
  });
}

constexpr const char* kPool = "recis_compat::pooled_sum_backward";

// Gradient of a weighted sum pooling w.r.t. the pooled rows:
//   grad_emb[r] = sum over ids k of bag b with index[k] == r of  weight[k] * grad[b]
// ATen's embedding_bag backward sorts all N indices first; the reverse index is already small
// (rows of the deduplicated batch), so a counting sort plus a parallel per-row reduction is cheaper.
at::Tensor pooled_sum_backward_cpu(const at::Tensor& grad_in, const at::Tensor& index_in,
                                   const at::Tensor& offsets_in, const std::optional<at::Tensor>& weight_in,
                                   int64_t num_rows) {
  tile_checks::check_pooled_sum_backward(kPool, grad_in, index_in, offsets_in, weight_in, num_rows);
  auto grad = grad_in.contiguous();
  auto index = index_in.contiguous();
  auto offsets = offsets_in.to(at::kLong).contiguous();
  const int64_t B = offsets.numel() - 1, D = grad.size(1), N = index.numel();
  const int64_t* off = offsets.data_ptr<int64_t>();
  at::Tensor weight;
  if (weight_in.has_value() && weight_in->defined()) weight = weight_in->contiguous();
  const int64_t* idx = index.data_ptr<int64_t>();
  return owned_scatter(grad, num_rows, D, N * D, [&](auto* o, const auto* g, int64_t r_lo, int64_t r_hi) {
    using acc_t = std::remove_pointer_t<decltype(o)>;
    using scalar_t = std::remove_const_t<std::remove_pointer_t<decltype(g)>>;
    const scalar_t* w = weight.defined() ? weight.data_ptr<scalar_t>() : nullptr;
    const auto row_of = [](int64_t b, int64_t) { return b; };
    if (w) {
      scatter_owned(o, g, idx, off, B, N, D, r_lo, r_hi, row_of, [&](int64_t k) { return static_cast<acc_t>(w[k]); });
    } else {
      scatter_owned(o, g, idx, off, B, N, D, r_lo, r_hi, row_of, [](int64_t) { return acc_t(1); });
    }
  });
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(recis_compat, m) {
  m.def("tile_forward(Tensor emb, Tensor index, Tensor offsets, int tile_len) -> Tensor");
  m.def("tile_backward(Tensor grad, Tensor index, Tensor offsets, int num_rows) -> Tensor");
  m.def("pooled_sum_backward(Tensor grad, Tensor index, Tensor offsets, Tensor? weight, int num_rows) -> Tensor");
}

TORCH_LIBRARY_IMPL(recis_compat, CPU, m) {
  m.impl("tile_forward", &tile_forward_cpu);
  m.impl("tile_backward", &tile_backward_cpu);
  m.impl("pooled_sum_backward", &pooled_sum_backward_cpu);
}

}  // namespace recis_compat
