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
//
// id_map_find_or_insert_multi: id_map_find_or_insert (csrc/embedding/id_map.cpp) of several id
// maps in one call, with IdMap.find_or_insert's load-limit decision (backend/id_map.py) taken on
// the exact counts (an EmbeddingEngine's training lookup inserts into every table of a run: 19
// with DLRM's per-field initializers, where the per-table call with the Python around it, the
// new-row extraction and the meta reads were ~1.4 ms of a ~36 ms step on 2 cores).
//
//   id_map_find_or_insert_multi(tables!: Tensor[], metas!: Tensor[], free_rows: Tensor[],
//                               ids: Tensor[] (1-D int64 [N_k], distinct), limits: int[])
//     -> (rows: Tensor[] ([N_k] or [0]), new_ids: Tensor[] ([K_k]), new_rows: Tensor[] ([K_k]),
//         counts: Tensor (int64 [T, 4]))
// Per map, with used = size + tombstones and limit = limits[k] (IdMap: int(max_load * capacity)):
//   used + N <= limit                  -> (rows, is_new) = id_map_find_or_insert(...), done;
//   else rows = id_map_find(table, ids); no id absent -> those rows, nothing inserted, done;
//   else A = absent ids; used + A <= limit and N < capacity - used -> insert as above, done;
//   else not done: the map is untouched, rows[k] is empty, and the caller inserts with
//   IdMap.find_or_insert, which grows the map or inserts in chunks.
// These are IdMap.find_or_insert(ids, distinct=True)'s cases that end in one kernel call, decided
// as it decides them, so the maps end as it leaves them. new_ids[k] = ids[k][is_new],
// new_rows[k] = rows[k][is_new] (assignment order; empty when nothing was inserted);
// counts[k] = (done, next_row, size + tombstones, A) afterwards (A = 0 when no find was needed;
// for a map left alone, what IdMap.find_or_insert would grow it for).
// Each map is searched and updated by the registered id_map_find / id_map_find_or_insert kernels
// themselves (through the dispatcher), so rows, is_new and the maps' states are those ops'
// whatever the thread count; the maps are independent, so the threads own contiguous runs of maps
// of about equal id counts (as unique_inverse_multi). Every map's arguments are checked before
// any map changes, so a bad argument changes nothing. CUDA: the same per map, in order, with ATen
// ops for the new ids and rows.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>

#include <algorithm>
#include <tuple>
#include <vector>

#include "embedding/id_map.h"

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


// ------------------------------------------------------------------ id_map_find_or_insert_multi
constexpr const char* kOpInsert = "recis_compat::id_map_find_or_insert_multi";

using InsertOp = std::tuple<at::Tensor, at::Tensor>(at::Tensor&, at::Tensor&, const at::Tensor&, const at::Tensor&);
using FindOp = at::Tensor(const at::Tensor&, const at::Tensor&);

const c10::TypedOperatorHandle<InsertOp>& insert_op() {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("recis_compat::id_map_find_or_insert", "")
                             .typed<InsertOp>();
  return op;
}

const c10::TypedOperatorHandle<FindOp>& find_op() {
  static const auto op =
      c10::Dispatcher::singleton().findSchemaOrThrow("recis_compat::id_map_find", "").typed<FindOp>();
  return op;
}

// Every map's arguments, checked before any map changes (the per-map ops check them again).
void check_insert(at::TensorList tables, at::TensorList metas, at::TensorList free_rows, at::TensorList ids,
                  at::IntArrayRef limits) {
  const size_t T = tables.size();
  TORCH_CHECK(metas.size() == T && free_rows.size() == T && ids.size() == T && limits.size() == T, kOpInsert,
              ": got ", T, " tables, ", metas.size(), " metas, ", free_rows.size(), " free_rows, ", ids.size(),
              " id lists and ", limits.size(), " limits (one each per map)");
  for (size_t k = 0; k < T; ++k) {
    const std::string what = std::string(kOpInsert) + " (map " + std::to_string(k) + ")";
    idmap::check_ids(what.c_str(), ids[k], tables[k]);
    idmap::check_state_shapes(what.c_str(), tables[k], metas[k], free_rows[k]);
    TORCH_CHECK(tables[k].device() == tables[0].device(), kOpInsert, ": all maps must be on one device (map 0 is on ",
                tables[0].device(), ", map ", k, " on ", tables[k].device(), ")");
    TORCH_CHECK(limits[k] >= 0 && limits[k] < idmap::table_capacity(tables[k]), kOpInsert, ": limits[", k,
                "] must be in [0, capacity = ", idmap::table_capacity(tables[k]), "), got ", limits[k]);
    for (size_t j = 0; j < k; ++j)
      TORCH_CHECK(!tables[j].is_same(tables[k]) && !metas[j].is_same(metas[k]), kOpInsert, ": maps ", j, " and ", k,
                  " are the same map (each map at most once per call)");
    if (tables[k].device().is_cpu())
      idmap::check_meta_values(what.c_str(), metas[k].data_ptr<int64_t>(), idmap::table_capacity(tables[k]),
                               free_rows[k].numel());
  }
}

// The decision of the header comment for one map: 1 insert now, 0 leave to IdMap; `rows` gets
// the find's rows when it was needed (-1 where absent), `all_found` whether none was absent.
int decide(const at::Tensor& table, const int64_t* m, const at::Tensor& ids, int64_t limit, at::Tensor& rows,
           bool& all_found, int64_t& absent) {
  const int64_t n = ids.numel(), used = m[idmap::kSize] + m[idmap::kTombstones];
  all_found = false;
  absent = 0;
  if (used + n <= limit) return 1;
  rows = find_op().call(table, ids);
  const int64_t* r = rows.data_ptr<int64_t>();
  for (int64_t i = 0; i < n; ++i) absent += r[i] < 0;
  if (absent == 0) {
    all_found = true;
    return 0;
  }
  return used + absent <= limit && n < idmap::table_capacity(table) - used ? 1 : 0;
}

using InsertResult = std::tuple<std::vector<at::Tensor>, std::vector<at::Tensor>, std::vector<at::Tensor>, at::Tensor>;

InsertResult find_or_insert_multi_cpu(at::TensorList tables, at::TensorList metas, at::TensorList free_rows,
                                      at::TensorList ids, at::IntArrayRef limits) {
  check_insert(tables, metas, free_rows, ids, limits);
  const int64_t T = static_cast<int64_t>(tables.size());
  std::vector<at::Tensor> rows(T), new_ids(T), new_rows(T);
  auto counts = at::zeros({T, 4}, at::TensorOptions().dtype(at::kLong));
  int64_t* cnt = counts.data_ptr<int64_t>();
  std::vector<int64_t> start(T + 1, 0);
  for (int64_t k = 0; k < T; ++k) start[k + 1] = start[k] + ids[k].numel();
  const auto& op = insert_op();
  auto run = [&](int64_t k0, int64_t k1) {
    for (int64_t k = k0; k < k1; ++k) {
      at::Tensor table = tables[k], meta = metas[k];
      const at::Tensor id = ids[k].contiguous();
      int64_t* m = meta.data_ptr<int64_t>();
      at::Tensor found;
      bool all_found = false;
      int64_t absent = 0;
      const int insert = decide(table, m, id, limits[k], found, all_found, absent);
      auto none = at::empty({0}, id.options());
      if (!insert) {
        rows[k] = all_found ? found : none;
        new_ids[k] = new_rows[k] = none;
        cnt[4 * k] = all_found;
      } else {
        auto [r, is_new] = op.call(table, meta, free_rows[k], id);
        const int64_t n = id.numel();
        const bool* flag = is_new.data_ptr<bool>();
        int64_t count = 0;
        for (int64_t i = 0; i < n; ++i) count += flag[i];
        auto nid = at::empty({count}, id.options()), nrow = at::empty({count}, id.options());
        const int64_t* idp = id.data_ptr<int64_t>();
        const int64_t* rp = r.data_ptr<int64_t>();
        int64_t* nidp = nid.data_ptr<int64_t>();
        int64_t* nrp = nrow.data_ptr<int64_t>();
        for (int64_t i = 0, j = 0; i < n; ++i) {
          if (!flag[i]) continue;
          nidp[j] = idp[i];
          nrp[j++] = rp[i];
        }
        rows[k] = r;
        new_ids[k] = nid;
        new_rows[k] = nrow;
        cnt[4 * k] = 1;
      }
      cnt[4 * k + 1] = m[idmap::kNextRow];
      cnt[4 * k + 2] = m[idmap::kSize] + m[idmap::kTombstones];
      cnt[4 * k + 3] = absent;
    }
  };
  const int64_t total = start[T];
  const int64_t threads = total < kParallelMinIds ? 1 : std::min<int64_t>(at::get_num_threads(), T);
  if (threads <= 1) {
    run(0, T);
  } else {
    at::parallel_for(0, threads, 1, [&](int64_t t0, int64_t t1) {
      for (int64_t t = t0; t < t1; ++t) {
        const int64_t lo = total * t / threads, hi = total * (t + 1) / threads;
        const int64_t k0 = std::lower_bound(start.begin(), start.end() - 1, lo) - start.begin();
        const int64_t k1 = t + 1 == threads ? T : std::lower_bound(start.begin(), start.end() - 1, hi) - start.begin();
        run(k0, k1);
      }
    });
  }
  return {rows, new_ids, new_rows, counts};
}

InsertResult find_or_insert_multi_serial(at::TensorList tables, at::TensorList metas, at::TensorList free_rows,
                                         at::TensorList ids, at::IntArrayRef limits) {
  check_insert(tables, metas, free_rows, ids, limits);
  const int64_t T = static_cast<int64_t>(tables.size());
  std::vector<at::Tensor> rows, new_ids, new_rows;
  auto counts = at::zeros({T, 4}, at::TensorOptions().dtype(at::kLong));
  int64_t* cnt = counts.data_ptr<int64_t>();
  const auto& op = insert_op();
  for (int64_t k = 0; k < T; ++k) {
    at::Tensor table = tables[k], meta = metas[k];
    const auto host_meta = meta.cpu();
    at::Tensor found;
    bool all_found = false;
    int insert = 0;
    int64_t absent = 0;
    {
      // the decision on host copies (find's rows are read back once per map)
      const int64_t* m = host_meta.data_ptr<int64_t>();
      const int64_t n = ids[k].numel(), used = m[idmap::kSize] + m[idmap::kTombstones];
      if (used + n <= limits[k]) {
        insert = 1;
      } else {
        found = find_op().call(table, ids[k]);
        absent = found.lt(0).sum().item<int64_t>();
        all_found = absent == 0;
        insert = !all_found && used + absent <= limits[k] && n < idmap::table_capacity(table) - used;
      }
    }
    auto none = at::empty({0}, ids[k].options());
    if (insert) {
      auto [r, is_new] = op.call(table, meta, free_rows[k], ids[k]);
      new_ids.push_back(ids[k].masked_select(is_new));
      new_rows.push_back(r.masked_select(is_new));
      rows.push_back(r);
    } else {
      rows.push_back(all_found ? found : none);
      new_ids.push_back(none);
      new_rows.push_back(none);
    }
    const auto after = meta.cpu();
    const int64_t* m = after.data_ptr<int64_t>();
    cnt[4 * k] = insert || all_found;
    cnt[4 * k + 1] = m[idmap::kNextRow];
    cnt[4 * k + 2] = m[idmap::kSize] + m[idmap::kTombstones];
    cnt[4 * k + 3] = absent;
  }
  return {rows, new_ids, new_rows, counts};
}
}  // namespace

TORCH_LIBRARY_FRAGMENT(recis_compat, m) {
  m.def("unique_inverse_multi(Tensor[] ids) -> (Tensor[], Tensor[])");
  m.def("id_map_find_or_insert_multi(Tensor(a!)[] tables, Tensor(b!)[] metas, Tensor[] free_rows, Tensor[] ids, "
        "int[] limits) -> (Tensor[], Tensor[], Tensor[], Tensor)");
}

TORCH_LIBRARY_IMPL(recis_compat, CPU, m) {
  m.impl("unique_inverse_multi", &unique_inverse_multi_cpu);
  m.impl("id_map_find_or_insert_multi", &find_or_insert_multi_cpu);
}
TORCH_LIBRARY_IMPL(recis_compat, CUDA, m) {
  m.impl("unique_inverse_multi", &unique_inverse_multi_serial);
  m.impl("id_map_find_or_insert_multi", &find_or_insert_multi_serial);
}

}  // namespace recis_compat
