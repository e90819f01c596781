// The tile combiner (RecIS combiner="tile"), CPU kernels.
//
//   tile_forward(emb[U, D], index[N] int64, offsets[B+1] int32/int64, tile_len T) -> out[B, T, D]
//     out[b, j] = emb[index[offsets[b] + j]] for j < min(len_b, T) and index >= 0, else 0.
//     (index < 0 marks an id that was not found, e.g. a ReadOnly lookup: it gives zeros.)
//   tile_backward(grad[B, T, D], index, offsets, num_rows U) -> grad_emb[U, D]
//     the transpose: each used position adds its gradient row to its emb row. Rows are summed
//     in position order (deterministic): positions are bucketed by row with a counting sort,
//     then rows are reduced in parallel.
//   pooled_sum_backward(grad[B, D], index, offsets, weight[N]?, num_rows U) -> grad_emb[U, D]
//     gradient of the (weighted) sum pooling of emb[index] per bag, same bucketing.
// FBGEMM's CPU non-pooled TBE backward is 30-80x slower than pooled (single-threaded hash-map
// accumulation), which is why tile is its own op here.
#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <limits>
#include <optional>
#include <vector>

#include "common.h"

namespace recis_compat {
namespace {

constexpr const char* kFwd = "recis_compat::tile_forward";
constexpr const char* kBwd = "recis_compat::tile_backward";

void check_common(const char* op, const at::Tensor& index, const at::Tensor& offsets, int64_t tile_len) {
  TORCH_CHECK(tile_len > 0, op, ": tile_len must be > 0, got ", tile_len);
  TORCH_CHECK(index.dim() == 1 && index.scalar_type() == at::kLong, op,
              ": index must be a 1-D int64 tensor, got ", index.scalar_type(), " of shape ", index.sizes());
  TORCH_CHECK(offsets.dim() == 1 && offsets.numel() >= 1 &&
                  (offsets.scalar_type() == at::kInt || offsets.scalar_type() == at::kLong),
              op, ": offsets must be 1-D int32/int64 with at least one entry, got ",
              offsets.scalar_type(), " of shape ", offsets.sizes());
}

template <typename off_t>
void check_offsets(const char* op, const off_t* off, int64_t n_off, int64_t n_index) {
  TORCH_CHECK(off[0] >= 0 && off[n_off - 1] <= n_index, op, ": offsets run from ", off[0], " to ",
              off[n_off - 1], " but index has ", n_index, " entries");
  for (int64_t i = 1; i < n_off; ++i)
    TORCH_CHECK(off[i] >= off[i - 1], op, ": offsets must be non-decreasing at position ", i);
}

// Positions of every used id bucketed by its row (a counting sort, in position order), so rows
// can then be reduced in parallel and deterministically. `limit` caps the ids used per bag;
// `key(b, j)` is what is stored for the j-th id of bag b.
struct RowBuckets {
  std::vector<int64_t> start, pos;
  explicit RowBuckets(int64_t num_rows) : start(num_rows + 1, 0) {}

  template <typename Key>
  void build(const char* op, const int64_t* idx, const int64_t* off, int64_t B, int64_t limit, Key key) {
    const int64_t num_rows = static_cast<int64_t>(start.size()) - 1;
    for (int64_t b = 0; b < B; ++b) {
      const int64_t n = std::min(off[b + 1] - off[b], limit);
      for (int64_t j = 0; j < n; ++j) {
        const int64_t r = idx[off[b] + j];
        if (r < 0) continue;
        TORCH_CHECK(r < num_rows, op, ": index ", r, " out of range for ", num_rows, " rows");
        ++start[r + 1];
      }
    }
    for (int64_t r = 0; r < num_rows; ++r) start[r + 1] += start[r];
    pos.resize(start[num_rows]);
    std::vector<int64_t> fill(start.begin(), start.end() - 1);
    for (int64_t b = 0; b < B; ++b) {
      const int64_t n = std::min(off[b + 1] - off[b], limit);
      for (int64_t j = 0; j < n; ++j) {
        const int64_t r = idx[off[b] + j];
        if (r >= 0) pos[fill[r]++] = key(b, j);
      }
    }
  }
};

at::Tensor tile_forward_cpu(const at::Tensor& emb_in, const at::Tensor& index_in,
                            const at::Tensor& offsets_in, int64_t tile_len) {
  check_common(kFwd, index_in, offsets_in, tile_len);
  TORCH_CHECK(emb_in.dim() == 2, kFwd, ": emb must be 2-D [rows, dim], got shape ", emb_in.sizes());
  auto emb = emb_in.contiguous();
  auto index = index_in.contiguous();
  auto offsets = offsets_in.to(at::kLong).contiguous();
  const int64_t B = offsets.numel() - 1, D = emb.size(1), U = emb.size(0);
  const int64_t* off = offsets.data_ptr<int64_t>();
  check_offsets(kFwd, off, offsets.numel(), index.numel());
  const int64_t* idx = index.data_ptr<int64_t>();
  TORCH_CHECK(index.numel() == 0 || index.max().item<int64_t>() < U, kFwd,
              ": index holds row ", index.numel() ? index.max().item<int64_t>() : 0,
              " but emb has only ", U, " rows");
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
  TORCH_CHECK(grad_in.dim() == 3, kBwd, ": grad must be [B, tile_len, dim], got ", grad_in.sizes());
  const int64_t tile_len = grad_in.size(1);
  check_common(kBwd, index_in, offsets_in, tile_len);
  TORCH_CHECK(num_rows >= 0, kBwd, ": num_rows must be >= 0");
  auto grad = grad_in.contiguous();
  auto index = index_in.contiguous();
  auto offsets = offsets_in.to(at::kLong).contiguous();
  const int64_t B = offsets.numel() - 1, D = grad.size(2);
  TORCH_CHECK(grad.size(0) == B, kBwd, ": grad has ", grad.size(0), " bags but offsets describe ", B);
  const int64_t* off = offsets.data_ptr<int64_t>();
  check_offsets(kBwd, off, offsets.numel(), index.numel());
  const int64_t* idx = index.data_ptr<int64_t>();
  RowBuckets buckets(num_rows);
  buckets.build(kBwd, idx, off, B, tile_len, [&](int64_t b, int64_t j) { return b * tile_len + j; });
  const std::vector<int64_t>& start = buckets.start;
  const std::vector<int64_t>& pos = buckets.pos;
  auto out = at::zeros({num_rows, D}, grad.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad.scalar_type(), "tile_backward", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* g = grad.data_ptr<scalar_t>();
    scalar_t* dst = out.data_ptr<scalar_t>();
    at::parallel_for(0, num_rows, 256, [&](int64_t r0, int64_t r1) {
      std::vector<acc_t> acc(D);
      for (int64_t r = r0; r < r1; ++r) {
        if (start[r] == start[r + 1]) continue;
        std::fill(acc.begin(), acc.end(), acc_t(0));
        for (int64_t k = start[r]; k < start[r + 1]; ++k) {
          const scalar_t* row = g + pos[k] * D;
          for (int64_t d = 0; d < D; ++d) acc[d] += static_cast<acc_t>(row[d]);
        }
        for (int64_t d = 0; d < D; ++d) dst[r * D + d] = static_cast<scalar_t>(acc[d]);
      }
    });
  });
  return out;
}

constexpr const char* kPool = "recis_compat::pooled_sum_backward";

// Gradient of a weighted sum pooling w.r.t. the pooled rows:
//   grad_emb[r] = sum over ids k of bag b with index[k] == r of  weight[k] * grad[b]
// ATen's embedding_bag backward sorts all N indices first; the reverse index is already small
// (rows of the deduplicated batch), so a counting sort plus a parallel per-row reduction is cheaper.
at::Tensor pooled_sum_backward_cpu(const at::Tensor& grad_in, const at::Tensor& index_in,
                                   const at::Tensor& offsets_in, const std::optional<at::Tensor>& weight_in,
                                   int64_t num_rows) {
  TORCH_CHECK(grad_in.dim() == 2, kPool, ": grad must be [B, dim], got ", grad_in.sizes());
  check_common(kPool, index_in, offsets_in, 1);
  TORCH_CHECK(num_rows >= 0, kPool, ": num_rows must be >= 0");
  auto grad = grad_in.contiguous();
  auto index = index_in.contiguous();
  auto offsets = offsets_in.to(at::kLong).contiguous();
  const int64_t B = offsets.numel() - 1, D = grad.size(1), N = index.numel();
  TORCH_CHECK(grad.size(0) == B, kPool, ": grad has ", grad.size(0), " bags but offsets describe ", B);
  const int64_t* off = offsets.data_ptr<int64_t>();
  check_offsets(kPool, off, offsets.numel(), N);
  at::Tensor weight;
  if (weight_in.has_value() && weight_in->defined()) {
    weight = weight_in->contiguous();
    TORCH_CHECK(weight.dim() == 1 && weight.numel() == N, kPool, ": weight must be [", N, "], got ",
                weight.sizes());
    TORCH_CHECK(weight.scalar_type() == grad.scalar_type(), kPool, ": weight dtype ", weight.scalar_type(),
                " does not match grad dtype ", grad.scalar_type());
  }
  const int64_t* idx = index.data_ptr<int64_t>();
  RowBuckets buckets(num_rows);
  // key: (bag, position in index) packed as bag * (N + 1) + k would overflow for huge inputs;
  // store the position k and look the bag up from a per-position bag table instead
  std::vector<int64_t> bag_of(N);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t k = off[b]; k < off[b + 1]; ++k) bag_of[k] = b;
  buckets.build(kPool, idx, off, B, std::numeric_limits<int64_t>::max(),
                [&](int64_t b, int64_t j) { return off[b] + j; });
  auto out = at::zeros({num_rows, D}, grad.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad.scalar_type(), "pooled_sum_backward", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* g = grad.data_ptr<scalar_t>();
    const scalar_t* w = weight.defined() ? weight.data_ptr<scalar_t>() : nullptr;
    scalar_t* dst = out.data_ptr<scalar_t>();
    const auto& start = buckets.start;
    const auto& pos = buckets.pos;
    at::parallel_for(0, num_rows, 256, [&](int64_t r0, int64_t r1) {
      std::vector<acc_t> acc(D);
      for (int64_t r = r0; r < r1; ++r) {
        if (start[r] == start[r + 1]) continue;
        std::fill(acc.begin(), acc.end(), acc_t(0));
        for (int64_t q = start[r]; q < start[r + 1]; ++q) {
          const int64_t k = pos[q];
          const scalar_t* row = g + bag_of[k] * D;
          const acc_t wk = w ? static_cast<acc_t>(w[k]) : acc_t(1);
          for (int64_t d = 0; d < D; ++d) acc[d] += wk * static_cast<acc_t>(row[d]);
        }
        for (int64_t d = 0; d < D; ++d) dst[r * D + d] = static_cast<scalar_t>(acc[d]);
      }
    });
  });
  return out;
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
