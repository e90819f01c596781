// counter_uniform: per-id counter-based uniforms (formula in counter_init.h), CPU kernel.
//
//   counter_uniform(ids[N] int64, seed int, width int) -> float64 [N, width]
// Replaces ~20 int64 torch ops over [N, width] (the torch reference in nn/initializers.py): new
// ids' initial rows are drawn in every training step.
//
//   counter_uniform_rows_multi_(tables!: Tensor[] ([R_t, D_t] float32 / float64, contiguous),
//                               rows: Tensor[] (int64 [K_t]), ids: Tensor[] (int64 [K_t]),
//                               seeds: int[], lows: float[], highs: float[]) -> ()
//   tables[t][rows[t][i], j] = dtype(float32(lows[t] + (highs[t] - lows[t]) * u(seeds[t], ids[t][i], j)))
// the initial rows of new ids of several tables with U(low, high) per-id initializers, written in
// place: bit for bit what nn/initializers.py's UniformInitializer.sample_for_ids computes in torch
// ops (float64 uniforms, ``low + (high - low) * u`` in float64 without FMA contraction: setup.py
// builds with -ffp-contract=off; then float32, then the table dtype) followed by an index_copy_
// of the rows (backend/table_impl.py ``find_or_insert_rows_many``, one call for every table of an
// EmbeddingEngine's run instead of ~6 ops per table). Every argument is checked before any table
// is written. CUDA: the same values from counter_uniform's CUDA kernel and ATen ops, per table.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>

#include <string>
#include <vector>

#include "counter_init.h"

namespace recis_compat {
namespace {

constexpr const char* kOp = "recis_compat::counter_uniform";

at::Tensor counter_uniform_cpu(const at::Tensor& ids_in, int64_t seed, int64_t width) {
  TORCH_CHECK(ids_in.scalar_type() == at::kLong && ids_in.dim() == 1, kOp,
              ": ids must be a 1-D int64 tensor, got ", ids_in.scalar_type(), " of shape ", ids_in.sizes());
  TORCH_CHECK(width >= 1, kOp, ": width must be >= 1, got ", width);
  auto ids = ids_in.contiguous();
  const int64_t n = ids.numel();
  auto out = at::empty({n, width}, ids.options().dtype(at::kDouble));
  const int64_t* id = ids.data_ptr<int64_t>();
  double* u = out.data_ptr<double>();
  at::parallel_for(0, n, 2048, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) {
      const uint64_t key = counter_init::row_key(id[i], seed);
      for (int64_t j = 0; j < width; ++j) u[i * width + j] = counter_init::uniform(key, j);
    }
  });
  return out;
}


constexpr const char* kOpRows = "recis_compat::counter_uniform_rows_multi_";

void check_rows_multi(at::TensorList tables, at::TensorList rows, at::TensorList ids, at::IntArrayRef seeds,
                      at::ArrayRef<double> lows, at::ArrayRef<double> highs) {
  const size_t T = tables.size();
  TORCH_CHECK(rows.size() == T && ids.size() == T && seeds.size() == T && lows.size() == T && highs.size() == T,
              kOpRows, ": got ", T, " tables, ", rows.size(), " row lists, ", ids.size(), " id lists, ", seeds.size(),
              " seeds, ", lows.size(), " lows and ", highs.size(), " highs (one each per table)");
  for (size_t t = 0; t < T; ++t) {
    const auto& tab = tables[t];
    TORCH_CHECK(tab.dim() == 2 && (tab.scalar_type() == at::kFloat || tab.scalar_type() == at::kDouble), kOpRows,
                ": tables[", t, "] must be a 2-D float32 or float64 tensor, got ", tab.scalar_type(), " of shape ",
                tab.sizes());
    TORCH_CHECK(tab.is_contiguous(), kOpRows, ": tables[", t, "] must be contiguous");
    TORCH_CHECK(rows[t].dim() == 1 && rows[t].scalar_type() == at::kLong && ids[t].dim() == 1 &&
                    ids[t].scalar_type() == at::kLong && rows[t].numel() == ids[t].numel(),
                kOpRows, ": rows[", t, "] and ids[", t, "] must be 1-D int64 of one length, got ", rows[t].scalar_type(),
                " ", rows[t].sizes(), " and ", ids[t].scalar_type(), " ", ids[t].sizes());
    TORCH_CHECK(rows[t].device() == tab.device() && ids[t].device() == tab.device() &&
                    tab.device() == tables[0].device(),
                kOpRows, ": tables[", t, "], rows[", t, "] and ids[", t, "] must be on tables[0]'s device (",
                tables[0].device(), "), got ", tab.device(), ", ", rows[t].device(), ", ", ids[t].device());
    TORCH_CHECK(lows[t] <= highs[t], kOpRows, ": table ", t, " needs low <= high, got low=", lows[t], ", high=",
                highs[t]);
    for (size_t j = 0; j < t; ++j)
      TORCH_CHECK(!tables[j].is_same(tables[t]), kOpRows, ": tables ", j, " and ", t, " are the same tensor");
    if (tab.device().is_cpu() && rows[t].numel()) {
      const auto r = rows[t].contiguous();
      const int64_t* rp = r.data_ptr<int64_t>();
      const int64_t R = tab.size(0);
      for (int64_t i = 0; i < r.numel(); ++i)
        TORCH_CHECK(rp[i] >= 0 && rp[i] < R, kOpRows, ": rows[", t, "] holds row ", rp[i], " but tables[", t,
                    "] has rows 0..", R - 1);
    }
  }
}

template <typename T>
void write_uniform_rows(T* out, int64_t dim, const int64_t* rows, const int64_t* ids, int64_t k, int64_t seed,
                        double low, double high) {
  const double scale = high - low;
  for (int64_t i = 0; i < k; ++i) {
    const uint64_t key = counter_init::row_key(ids[i], seed);
    T* row = out + rows[i] * dim;
    for (int64_t j = 0; j < dim; ++j) {
      const double scaled = scale * counter_init::uniform(key, j);  // one rounding, as torch's mul
      row[j] = static_cast<T>(static_cast<float>(low + scaled));   // then add, then float32, then T
    }
  }
}

void counter_uniform_rows_multi_cpu(at::TensorList tables, at::TensorList rows_in, at::TensorList ids_in,
                                    at::IntArrayRef seeds, at::ArrayRef<double> lows, at::ArrayRef<double> highs) {
  check_rows_multi(tables, rows_in, ids_in, seeds, lows, highs);
  const int64_t T = static_cast<int64_t>(tables.size());
  std::vector<at::Tensor> rows(T), ids(T);
  std::vector<int64_t> start(T + 1, 0);
  for (int64_t t = 0; t < T; ++t) {
    rows[t] = rows_in[t].contiguous();
    ids[t] = ids_in[t].contiguous();
    start[t + 1] = start[t] + rows[t].numel() * tables[t].size(1);
  }
  // one task = a range of (table, row) pairs; the rows of one call are distinct in every table
  // (new rows of one insert), so no two tasks write one element
  auto run_table = [&](int64_t t, int64_t i0, int64_t i1) {
    const int64_t dim = tables[t].size(1);
    const int64_t* rp = rows[t].data_ptr<int64_t>() + i0;
    const int64_t* ip = ids[t].data_ptr<int64_t>() + i0;
    if (tables[t].scalar_type() == at::kFloat)
      write_uniform_rows(tables[t].data_ptr<float>(), dim, rp, ip, i1 - i0, seeds[t], lows[t], highs[t]);
    else
      write_uniform_rows(tables[t].data_ptr<double>(), dim, rp, ip, i1 - i0, seeds[t], lows[t], highs[t]);
  };
  const int64_t total = start[T];
  if (total < 16384 || at::get_num_threads() <= 1) {
    for (int64_t t = 0; t < T; ++t) run_table(t, 0, rows[t].numel());
    return;
  }
  for (int64_t t = 0; t < T; ++t) {
    const int64_t dim = std::max<int64_t>(1, tables[t].size(1));
    at::parallel_for(0, rows[t].numel(), std::max<int64_t>(1, 4096 / dim),
                     [&](int64_t i0, int64_t i1) { run_table(t, i0, i1); });
  }
}

void counter_uniform_rows_multi_composite(at::TensorList tables, at::TensorList rows, at::TensorList ids,
                                          at::IntArrayRef seeds, at::ArrayRef<double> lows,
                                          at::ArrayRef<double> highs) {
  check_rows_multi(tables, rows, ids, seeds, lows, highs);
  static const auto uniform = c10::Dispatcher::singleton()
                                  .findSchemaOrThrow("recis_compat::counter_uniform", "")
                                  .typed<at::Tensor(const at::Tensor&, int64_t, int64_t)>();
  for (size_t t = 0; t < tables.size(); ++t) {
    if (rows[t].numel() == 0) continue;
    auto u = uniform.call(ids[t], seeds[t], tables[t].size(1));
    auto vals = u.mul(highs[t] - lows[t]).add(lows[t]).to(at::kFloat).to(tables[t].scalar_type());
    at::Tensor tab = tables[t];
    tab.index_copy_(0, rows[t], vals);
  }
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(recis_compat, m) {
  m.def("counter_uniform(Tensor ids, int seed, int width) -> Tensor");
  m.def("counter_uniform_rows_multi_(Tensor(a!)[] tables, Tensor[] rows, Tensor[] ids, int[] seeds, float[] lows, "
        "float[] highs) -> ()");
}

TORCH_LIBRARY_IMPL(recis_compat, CPU, m) {
  m.impl("counter_uniform", &counter_uniform_cpu);
  m.impl("counter_uniform_rows_multi_", &counter_uniform_rows_multi_cpu);
}
TORCH_LIBRARY_IMPL(recis_compat, CUDA, m) { m.impl("counter_uniform_rows_multi_", &counter_uniform_rows_multi_composite); }

}  // namespace recis_compat
