// unique_inverse_multi: unique_inverse (csrc/embedding/id_map.cpp) of several id lists in one
// call, the lists spread over the threads (an EmbeddingEngine dedupes every group of the tables
// it looks up in this process: DLRM's 19 groups; one call per group and the serial pass of each
// were ~0.9 ms of a ~36 ms step on 2 cores).
//
//   unique_inverse_multi(ids: Tensor[] (1-D int64 [N_k])) -> (unique: Tensor[] ([U_k]),
//                                                            inverse: Tensor[] ([N_k]))
//   (unique[k], inverse[k]) = unique_inverse(ids[k]): unique[k] in first-occurrence order,
//   unique[k][inverse[k]] == ids[k].
// Each list is deduped by the registered unique_inverse kernel itself (called through the
// dispatcher), so the results are that op's whatever the thread count; the threads own
// contiguous runs of lists of about equal id counts. CUDA: the op per list, in order.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>

#include <tuple>
#include <vector>

namespace recis_compat {
namespace {

constexpr const char* kOp = "recis_compat::unique_inverse_multi";
// below this many ids in all the lists, one thread does them (thread start-up costs more)
constexpr int64_t kParallelMinIds = 8192;

using UniqueOp = std::tuple<at::Tensor, at::Tensor>(const at::Tensor&);

const c10::TypedOperatorHandle<UniqueOp>& unique_op() {
  static const auto op =
      c10::Dispatcher::singleton().findSchemaOrThrow("recis_compat::unique_inverse", "").typed<UniqueOp>();
  return op;
}

void check(at::TensorList ids) {
  for (size_t k = 0; k < ids.size(); ++k) {
    TORCH_CHECK(ids[k].dim() == 1 && ids[k].scalar_type() == at::kLong, kOp, ": ids[", k,
                "] must be a 1-D int64 tensor, got ", ids[k].scalar_type(), " of shape ", ids[k].sizes());
    TORCH_CHECK(ids[k].device() == ids[0].device(), kOp, ": all lists must be on one device (ids[0] is on ",
                ids[0].device(), ", ids[", k, "] on ", ids[k].device(), ")");
  }
}

std::tuple<std::vector<at::Tensor>, std::vector<at::Tensor>> unique_inverse_multi_cpu(at::TensorList ids) {
  check(ids);
  const int64_t K = static_cast<int64_t>(ids.size());
  std::vector<at::Tensor> uniq(K), inverse(K);
  std::vector<int64_t> start(K + 1, 0);
  for (int64_t k = 0; k < K; ++k) start[k + 1] = start[k] + ids[k].numel();
  const auto& op = unique_op();
  auto run = [&](int64_t k0, int64_t k1) {
    for (int64_t k = k0; k < k1; ++k) std::tie(uniq[k], inverse[k]) = op.call(ids[k]);
  };
  const int64_t total = start[K];
  const int64_t threads = total < kParallelMinIds ? 1 : std::min<int64_t>(at::get_num_threads(), K);
  if (threads <= 1) {
    run(0, K);
  } else {
    // thread t takes the lists whose first id falls in [total * t / threads, total * (t+1) / threads)
    at::parallel_for(0, threads, 1, [&](int64_t t0, int64_t t1) {
      for (int64_t t = t0; t < t1; ++t) {
        const int64_t lo = total * t / threads, hi = total * (t + 1) / threads;
        const int64_t k0 = std::lower_bound(start.begin(), start.end() - 1, lo) - start.begin();
        const int64_t k1 = t + 1 == threads ? K : std::lower_bound(start.begin(), start.end() - 1, hi) - start.begin();
        run(k0, k1);
      }
    });
  }
  return {uniq, inverse};
}

std::tuple<std::vector<at::Tensor>, std::vector<at::Tensor>> unique_inverse_multi_serial(at::TensorList ids) {
  check(ids);
  std::vector<at::Tensor> uniq, inverse;
  const auto& op = unique_op();
  for (const auto& t : ids) {
    auto [u, inv] = op.call(t);
    uniq.push_back(u);
    inverse.push_back(inv);
  }
  return {uniq, inverse};
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(recis_compat, m) {
  m.def("unique_inverse_multi(Tensor[] ids) -> (Tensor[], Tensor[])");
}

TORCH_LIBRARY_IMPL(recis_compat, CPU, m) { m.impl("unique_inverse_multi", &unique_inverse_multi_cpu); }
TORCH_LIBRARY_IMPL(recis_compat, CUDA, m) { m.impl("unique_inverse_multi", &unique_inverse_multi_serial); }

}  // namespace recis_compat
