// counter_uniform: per-id counter-based uniforms (formula in counter_init.h), CPU kernel.
//
//   counter_uniform(ids[N] int64, seed int, width int) -> float64 [N, width]
// Replaces ~20 int64 torch ops over [N, width] (the torch reference in nn/initializers.py): new
// ids' initial rows are drawn in every training step.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

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

}  // namespace

TORCH_LIBRARY_FRAGMENT(recis_compat, m) {
  m.def("counter_uniform(Tensor ids, int seed, int width) -> Tensor");
}

TORCH_LIBRARY_IMPL(recis_compat, CPU, m) { m.impl("counter_uniform", &counter_uniform_cpu); }

}  // namespace recis_compat
