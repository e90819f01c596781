// multi_table_gather: the rows of several tables gathered into one tensor (one call for every
// table an EmbeddingEngine looks up in this process).
//
//   multi_table_gather(tables: Tensor[] ([R_t, D], one dtype, one D), rows: Tensor[] (1-D int64
//                      [U_t])) -> out [sum_t U_t, D]
//   out[base_t + i] = tables[t][rows[t][i]]  (rows[t][i] >= 0), zeros where rows[t][i] < 0
//   (an id a read-only lookup did not find), base_t = U_0 + ... + U_{t-1}.
// Replaces a gather per table, its missing-row check and the concatenation the merged pooling
// did after them (backend/dynamic_table.py ``lookup_tables_with_grad``; with DLRM's 19 tables
// those small ops and their dispatch were ~1 ms of a ~36 ms step).
// The copy is dtype-agnostic (whole rows of bytes; zero bytes are 0 in every float and integer
// dtype), so every table dtype is accepted and the result is bit for bit the per-table gather.
// A row index >= R_t is an error naming the table position, raised before anything is returned.
// CPU: the kernel below. CUDA: the same result from ATen ops (index_select, masked_fill, cat),
// as coalesce.cpp does for its CUDA twin. Meta / fake tensors: backend/dynamic_table.py.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cstring>
#include <vector>

namespace recis_compat {
namespace {

constexpr const char* kOp = "recis_compat::multi_table_gather";
constexpr int64_t kPrefetch = 16;   // rows ahead

inline void prefetch_row(const char* row, int64_t bytes) {
  for (int64_t b = 0; b < bytes; b += 64) __builtin_prefetch(row + b, 0, 1);
}

void check(at::TensorList tables, at::TensorList rows) {
  TORCH_CHECK(!tables.empty(), kOp, ": needs at least one table");
  TORCH_CHECK(tables.size() == rows.size(), kOp, ": got ", tables.size(), " tables and ", rows.size(),
              " row lists");
  const auto& t0 = tables[0];
  TORCH_CHECK(t0.dim() == 2, kOp, ": tables[0] must be 2-D [rows, dim], got shape ", t0.sizes());
  for (size_t t = 0; t < tables.size(); ++t) {
    TORCH_CHECK(tables[t].dim() == 2 && tables[t].size(1) == t0.size(1), kOp, ": tables[", t,
                "] must be 2-D [rows, ", t0.size(1), "] like tables[0], got shape ", tables[t].sizes());
    TORCH_CHECK(tables[t].scalar_type() == t0.scalar_type(), kOp, ": tables[", t, "] is ",
                tables[t].scalar_type(), " but tables[0] is ", t0.scalar_type(), " (one dtype for all)");
    TORCH_CHECK(rows[t].dim() == 1 && rows[t].scalar_type() == at::kLong, kOp, ": rows[", t,
                "] must be 1-D int64, got ", rows[t].scalar_type(), " of shape ", rows[t].sizes());
    TORCH_CHECK(tables[t].device() == t0.device() && rows[t].device() == t0.device(), kOp,
                ": all tensors must be on one device (tables[0] is on ", t0.device(), ", tables[", t, "] on ",
                tables[t].device(), ", rows[", t, "] on ", rows[t].device(), ")");
  }
}

at::Tensor multi_table_gather_cpu(at::TensorList tables_in, at::TensorList rows_in) {
  check(tables_in, rows_in);
  const int64_t T = static_cast<int64_t>(tables_in.size());
  std::vector<at::Tensor> tables, rows;
  tables.reserve(T);
  rows.reserve(T);
  std::vector<int64_t> base(T + 1, 0);
  for (int64_t t = 0; t < T; ++t) {
    tables.push_back(tables_in[t].contiguous());
    rows.push_back(rows_in[t].contiguous());
    base[t + 1] = base[t] + rows[t].numel();
  }
  const int64_t D = tables[0].size(1), total = base[T];
  auto out = at::empty({total, D}, tables[0].options());
  const int64_t row_bytes = D * static_cast<int64_t>(tables[0].element_size());
  if (total == 0 || row_bytes == 0) return out;
  char* dst = static_cast<char*>(out.data_ptr());
  std::vector<const char*> src(T);
  std::vector<const int64_t*> idx(T);
  std::vector<int64_t> nrows(T);
  for (int64_t t = 0; t < T; ++t) {
    src[t] = static_cast<const char*>(tables[t].data_ptr());
    idx[t] = rows[t].data_ptr<int64_t>();
    nrows[t] = tables[t].size(0);
  }
  // positions [lo, hi) of the output; the table of a position is found once per chunk. The rows
  // are random reads (mostly cache misses): the row kPrefetch positions ahead (same table) is
  // prefetched, as FBGEMM's CPU kernels do.
  at::parallel_for(0, total, 4096, [&](int64_t lo, int64_t hi) {
    int64_t t = static_cast<int64_t>(std::upper_bound(base.begin(), base.end(), lo) - base.begin()) - 1;
    for (int64_t p = lo; p < hi; ++p) {
      while (p >= base[t + 1]) ++t;
      if (p + kPrefetch < base[t + 1]) {
        const int64_t ahead = idx[t][p + kPrefetch - base[t]];
        if (ahead >= 0 && ahead < nrows[t]) prefetch_row(src[t] + ahead * row_bytes, row_bytes);
      }
      const int64_t r = idx[t][p - base[t]];
      char* o = dst + p * row_bytes;
      if (r < 0) {
        std::memset(o, 0, row_bytes);
        continue;
      }
      TORCH_CHECK(r < nrows[t], kOp, ": rows[", t, "] holds row ", r, " but tables[", t, "] has only ", nrows[t],
                  " rows");
      std::memcpy(o, src[t] + r * row_bytes, row_bytes);
    }
  });
  return out;
}

at::Tensor multi_table_gather_aten(at::TensorList tables, at::TensorList rows) {
  check(tables, rows);
  std::vector<at::Tensor> parts;
  parts.reserve(tables.size());
  for (size_t t = 0; t < tables.size(); ++t) {
    const auto& r = rows[t];
    if (r.numel()) {
      const int64_t hi = r.max().item<int64_t>();
      TORCH_CHECK(hi < tables[t].size(0), kOp, ": rows[", t, "] holds row ", hi, " but tables[", t,
                  "] has only ", tables[t].size(0), " rows");
    }
    const auto missing = r.lt(0);
    auto got = tables[t].size(0) ? tables[t].index_select(0, r.clamp_min(0))
                                 : at::zeros({r.numel(), tables[t].size(1)}, tables[t].options());
    parts.push_back(got.masked_fill_(missing.unsqueeze(1), 0));
  }
  return at::cat(parts);
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(recis_compat, m) {
  m.def("multi_table_gather(Tensor[] tables, Tensor[] rows) -> Tensor");
}

TORCH_LIBRARY_IMPL(recis_compat, CPU, m) { m.impl("multi_table_gather", &multi_table_gather_cpu); }
TORCH_LIBRARY_IMPL(recis_compat, CUDA, m) { m.impl("multi_table_gather", &multi_table_gather_aten); }

}  // namespace recis_compat
