// The dynamic id -> row map, CUDA twin of id_map.cpp (same schemas, state layout and row rules;
// see id_map.h). Slots are claimed with atomicCAS on the state word; the deterministic row
// assignment is an at::cumsum over the first-occurrence mask. The state (meta) is read on the
// host once per call to validate it, as the CPU kernels do.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <tuple>

#include "embedding/id_map.h"

namespace recis_compat {
namespace idmap {
namespace {

using ull = unsigned long long;
constexpr int kThreads = 256;

int blocks_for(int64_t n) {
  const int64_t b = (n + kThreads - 1) / kThreads;
  return static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(b, 65535 * 8)));
}

#define GRID_STRIDE(i, n) \
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < (n); i += (int64_t)gridDim.x * blockDim.x)

__device__ __forceinline__ int32_t load_state(const int32_t* e, int64_t j) {
  return *reinterpret_cast<const volatile int32_t*>(e + state_word(j));
}
// the key as two 32-bit words (slots are 12 bytes: an 8-byte load would be misaligned)
__device__ __forceinline__ int64_t load_key(const int32_t* e, int64_t j) {
  const volatile int32_t* k = reinterpret_cast<const volatile int32_t*>(e + key_word(j));
  const uint64_t lo = static_cast<uint32_t>(k[0]), hi = static_cast<uint32_t>(k[1]);
  return static_cast<int64_t>((hi << 32) | lo);
}
__device__ __forceinline__ void store_key(int32_t* e, int64_t j, int64_t key) {
  volatile int32_t* k = reinterpret_cast<volatile int32_t*>(e + key_word(j));
  const uint64_t u = static_cast<uint64_t>(key);
  k[0] = static_cast<int32_t>(static_cast<uint32_t>(u));
  k[1] = static_cast<int32_t>(static_cast<uint32_t>(u >> 32));
}
__device__ __forceinline__ int32_t cas_state(int32_t* e, int64_t j, int32_t expect, int32_t desired) {
  return atomicCAS(reinterpret_cast<int*>(e + state_word(j)), expect, desired);
}

__device__ __forceinline__ int64_t probe(const int32_t* e, int64_t cap, int64_t key) {
  int64_t j = home_slot(key, cap);
  for (int64_t step = 0; step < cap; ++step) {
    const int32_t s = e[state_word(j)];
    if (s == kEmpty) return -1;
    if (s >= 0 && key_at(e, j) == key) return j;
    j = next_slot(j, cap);
  }
  return -1;
}

__global__ void find_kernel(const int32_t* __restrict__ e, int64_t cap, const int64_t* __restrict__ ids,
                            int64_t* __restrict__ out, int64_t n) {
  GRID_STRIDE(i, n) {
    const int64_t j = probe(e, cap, ids[i]);
    out[i] = j < 0 ? -1 : e[state_word(j)];
  }
}

// Phase A of find_or_insert: see claim_range in id_map.cpp.
__global__ void claim_kernel(int32_t* e, int64_t cap, const int64_t* __restrict__ ids, int64_t* rows,
                             int64_t* slot_of, int64_t n) {
  GRID_STRIDE(i, n) {
    const int64_t key = ids[i];
    int64_t j = home_slot(key, cap);
    for (;;) {
      int32_t s = load_state(e, j);
      if (s == kEmpty) {
        if (cas_state(e, j, kEmpty, kLocked) == kEmpty) {
          store_key(e, j, key);
          __threadfence();
          atomicExch(reinterpret_cast<int*>(e + state_word(j)), encode_pending(i));
          rows[i] = -1;
          slot_of[i] = j;
          break;
        }
        continue;  // lost the race: look at the slot again
      }
      if (s == kLocked) continue;  // the key is being written (independent thread scheduling)
      __threadfence();
      if (s != kTombstone && load_key(e, j) == key) {
        if (s >= 0) {
          rows[i] = s;
          slot_of[i] = -1;
        } else {  // pending: keep the smallest batch position
          while (is_pending(s) && decode_pending(s) > i) {
            const int32_t old = cas_state(e, j, s, encode_pending(i));
            if (old == s) break;
            s = old;
          }
          rows[i] = -1;
          slot_of[i] = j;
        }
        break;
      }
      j = next_slot(j, cap);
    }
  }
}

__global__ void first_mask_kernel(const int32_t* e, const int64_t* rows, const int64_t* slot_of,
                                  int64_t* mask_out, bool* is_new, int64_t n) {
  GRID_STRIDE(i, n) {
    const bool f = rows[i] < 0 && e[state_word(slot_of[i])] == encode_pending(i);
    mask_out[i] = f;
    is_new[i] = f;
  }
}

__global__ void assign_kernel(int32_t* e, const bool* is_new, const int64_t* incl, const int64_t* slot_of,
                              const int64_t* free_rows, const int64_t* meta, int64_t* rows, int64_t n) {
  const int64_t fc = meta[kFreeCount], next_row = meta[kNextRow];
  GRID_STRIDE(i, n) {
    if (!is_new[i]) continue;
    const int64_t r = row_for_new(incl[i] - 1, free_rows, fc, next_row);
    e[state_word(slot_of[i])] = static_cast<int32_t>(r);
    rows[i] = r;
  }
}

__global__ void gather_dup_kernel(const int32_t* e, const int64_t* slot_of, int64_t* rows, int64_t n) {
  GRID_STRIDE(i, n) {
    if (rows[i] < 0) rows[i] = e[state_word(slot_of[i])];
  }
}

__global__ void meta_insert_kernel(int64_t* meta, const int64_t* incl, int64_t n) {
  const int64_t k = incl[n - 1], fc = meta[kFreeCount];
  meta[kSize] += k;
  meta[kNextRow] += k > fc ? k - fc : 0;
  meta[kFreeCount] = fc > k ? fc - k : 0;
}

__global__ void locate_kernel(const int32_t* e, int64_t cap, const int64_t* ids, int64_t* slot_of,
                              int64_t* found, int64_t n) {
  GRID_STRIDE(i, n) {
    const int64_t j = probe(e, cap, ids[i]);
    slot_of[i] = j;
    found[i] = j < 0 ? -1 : e[state_word(j)];
  }
}

__global__ void delete_claim_kernel(int32_t* e, const int64_t* slot_of, int64_t n) {
  GRID_STRIDE(i, n) {
    const int64_t j = slot_of[i];
    if (j < 0) continue;
    int32_t s = load_state(e, j);
    while (s >= 0 || (is_pending(s) && decode_pending(s) > i)) {
      const int32_t old = cas_state(e, j, s, encode_pending(i));
      if (old == s) break;
      s = old;
    }
  }
}

__global__ void delete_first_kernel(const int32_t* e, const int64_t* slot_of, int64_t* first, int64_t n) {
  GRID_STRIDE(i, n) { first[i] = slot_of[i] >= 0 && e[state_word(slot_of[i])] == encode_pending(i); }
}

__global__ void delete_emit_kernel(int32_t* e, const int64_t* first, const int64_t* incl, const int64_t* slot_of,
                                   const int64_t* found, int64_t* freed, int64_t* free_rows, int64_t fc,
                                   int64_t n) {
  GRID_STRIDE(i, n) {
    if (!first[i]) continue;
    const int64_t p = incl[i] - 1;
    freed[p] = found[i];
    free_rows[fc + p] = found[i];
    e[state_word(slot_of[i])] = kTombstone;
  }
}

__global__ void meta_delete_kernel(int64_t* meta, int64_t k) {
  meta[kSize] -= k;
  meta[kTombstones] += k;
  meta[kFreeCount] += k;
}

__global__ void init_table_kernel(int32_t* e, int64_t cap) {
  GRID_STRIDE(j, cap) {
    e[key_word(j)] = 0;
    e[key_word(j) + 1] = 0;
    e[state_word(j)] = kEmpty;
  }
}

// counters[0] = live slots, counters[1] = slots in a transient state
__global__ void rehash_kernel(const int32_t* e, int64_t old_cap, int32_t* ne, int64_t ncap,
                              unsigned long long* counters) {
  GRID_STRIDE(j, old_cap) {
    const int32_t s = e[state_word(j)];
    const int64_t key = key_at(e, j);
    if (s < 0) {
      if (s < kTombstone) atomicAdd(counters + 1, 1ULL);
      continue;
    }
    atomicAdd(counters, 1ULL);
    int64_t t = home_slot(key, ncap);
    for (int64_t step = 0; step < ncap; ++step, t = next_slot(t, ncap)) {
      if (ne[state_word(t)] == kEmpty && cas_state(ne, t, kEmpty, s) == kEmpty) {
        set_key(ne, t, key);  // nobody reads keys during a rehash: all keys are distinct
        break;
      }
    }
  }
}

// counters[0] = live slots, counters[1] = slots with rows >= next_row
__global__ void export_scatter_kernel(const int32_t* e, int64_t cap, int64_t next_row, int64_t* key_by_row,
                                      int64_t* present, unsigned long long* counters) {
  GRID_STRIDE(j, cap) {
    const int64_t s = e[state_word(j)];
    if (s < 0) continue;
    if (s >= next_row) {
      atomicAdd(counters + 1, 1ULL);
      continue;
    }
    atomicAdd(counters, 1ULL);
    key_by_row[s] = key_at(e, j);
    present[s] = 1;
  }
}

__global__ void export_compact_kernel(const int64_t* key_by_row, const int64_t* present, const int64_t* incl,
                                      int64_t* ids, int64_t* rows, int64_t next_row, int64_t size) {
  GRID_STRIDE(r, next_row) {
    if (!present[r]) continue;
    const int64_t p = incl[r] - 1;
    if (p < size) {
      ids[p] = key_by_row[r];
      rows[p] = r;
    }
  }
}

at::Tensor host_meta(const char* op, const at::Tensor& table, const at::Tensor& meta, int64_t free_len) {
  auto mh = meta.to(at::kCPU);
  check_meta_values(op, mh.data_ptr<int64_t>(), table.size(0), free_len);
  return mh;
}

// ------------------------------------------------------------------------------------ ops
at::Tensor find_cuda(const at::Tensor& table, const at::Tensor& ids_in) {
  check_table(kOpFind, table);
  check_ids(kOpFind, ids_in, table);
  const c10::cuda::CUDAGuard guard(table.device());
  auto ids = ids_in.contiguous();
  const int64_t n = ids.numel();
  auto rows = at::empty({n}, ids.options());
  if (n == 0) return rows;
  auto stream = c10::cuda::getCurrentCUDAStream();
  find_kernel<<<blocks_for(n), kThreads, 0, stream>>>(table.data_ptr<int32_t>(), table.size(0),
                                                       ids.data_ptr<int64_t>(), rows.data_ptr<int64_t>(), n);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return rows;
}

std::tuple<at::Tensor, at::Tensor> find_or_insert_cuda(at::Tensor& table, at::Tensor& meta,
                                                       const at::Tensor& free_rows, const at::Tensor& ids_in) {
  const char* op = kOpFindOrInsert;
  check_ids(op, ids_in, table);
  check_state_shapes(op, table, meta, free_rows);
  const c10::cuda::CUDAGuard guard(table.device());
  const int64_t cap = table.size(0), n = ids_in.numel();
  auto mh = host_meta(op, table, meta, free_rows.numel());
  const int64_t* m = mh.data_ptr<int64_t>();
  check_batch_fits(op, m, n, cap);
  auto ids = ids_in.contiguous();
  auto rows = at::empty({n}, ids.options());
  auto is_new = at::zeros({n}, ids.options().dtype(at::kBool));
  if (n == 0) return {rows, is_new};
  auto slot_of = at::empty({n}, ids.options());
  auto first = at::empty({n}, ids.options());
  auto stream = c10::cuda::getCurrentCUDAStream();
  int32_t* e = table.data_ptr<int32_t>();
  const int blocks = blocks_for(n);
  claim_kernel<<<blocks, kThreads, 0, stream>>>(e, cap, ids.data_ptr<int64_t>(), rows.data_ptr<int64_t>(),
                                                slot_of.data_ptr<int64_t>(), n);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  first_mask_kernel<<<blocks, kThreads, 0, stream>>>(e, rows.data_ptr<int64_t>(), slot_of.data_ptr<int64_t>(),
                                                     first.data_ptr<int64_t>(), is_new.data_ptr<bool>(), n);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  auto incl = at::cumsum(first, 0);
  assign_kernel<<<blocks, kThreads, 0, stream>>>(e, is_new.data_ptr<bool>(), incl.data_ptr<int64_t>(),
                                                 slot_of.data_ptr<int64_t>(), free_rows.data_ptr<int64_t>(),
                                                 meta.data_ptr<int64_t>(), rows.data_ptr<int64_t>(), n);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  gather_dup_kernel<<<blocks, kThreads, 0, stream>>>(e, slot_of.data_ptr<int64_t>(), rows.data_ptr<int64_t>(), n);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  meta_insert_kernel<<<1, 1, 0, stream>>>(meta.data_ptr<int64_t>(), incl.data_ptr<int64_t>(), n);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {rows, is_new};
}

at::Tensor delete_cuda(at::Tensor& table, at::Tensor& meta, at::Tensor& free_rows, const at::Tensor& ids_in) {
  const char* op = kOpDelete;
  check_ids(op, ids_in, table);
  check_state_shapes(op, table, meta, free_rows);
  const c10::cuda::CUDAGuard guard(table.device());
  const int64_t n = ids_in.numel();
  auto mh = host_meta(op, table, meta, free_rows.numel());
  const int64_t* m = mh.data_ptr<int64_t>();
  const int64_t fc = m[kFreeCount];
  check_free_rows_room(op, m, free_rows.numel(), n);
  auto ids = ids_in.contiguous();
  if (n == 0) return at::empty({0}, ids.options());
  auto slot_of = at::empty({n}, ids.options());
  auto found = at::empty({n}, ids.options());
  auto first = at::empty({n}, ids.options());
  auto stream = c10::cuda::getCurrentCUDAStream();
  int32_t* e = table.data_ptr<int32_t>();
  const int blocks = blocks_for(n);
  locate_kernel<<<blocks, kThreads, 0, stream>>>(e, table.size(0), ids.data_ptr<int64_t>(),
                                                 slot_of.data_ptr<int64_t>(), found.data_ptr<int64_t>(), n);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  delete_claim_kernel<<<blocks, kThreads, 0, stream>>>(e, slot_of.data_ptr<int64_t>(), n);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  delete_first_kernel<<<blocks, kThreads, 0, stream>>>(e, slot_of.data_ptr<int64_t>(), first.data_ptr<int64_t>(), n);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  auto incl = at::cumsum(first, 0);
  const int64_t k = incl[n - 1].item<int64_t>();
  auto freed = at::empty({k}, ids.options());
  delete_emit_kernel<<<blocks, kThreads, 0, stream>>>(e, first.data_ptr<int64_t>(), incl.data_ptr<int64_t>(),
                                                      slot_of.data_ptr<int64_t>(), found.data_ptr<int64_t>(),
                                                      freed.data_ptr<int64_t>(), free_rows.data_ptr<int64_t>(),
                                                      fc, n);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  meta_delete_kernel<<<1, 1, 0, stream>>>(meta.data_ptr<int64_t>(), k);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return freed;
}

std::tuple<at::Tensor, at::Tensor> rehash_cuda(const at::Tensor& table, const at::Tensor& meta,
                                               int64_t new_capacity) {
  const char* op = kOpRehash;
  check_table_meta(op, table, meta);
  const c10::cuda::CUDAGuard guard(table.device());
  auto mh = meta.to(at::kCPU);
  const int64_t* m = mh.data_ptr<int64_t>();
  check_meta_values(op, m, table.size(0), m[kFreeCount]);
  check_new_capacity(op, new_capacity, m);
  auto stream = c10::cuda::getCurrentCUDAStream();
  auto out = at::empty({new_capacity, kSlotWords}, table.options());
  init_table_kernel<<<blocks_for(new_capacity), kThreads, 0, stream>>>(out.data_ptr<int32_t>(), new_capacity);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  auto counters = at::zeros({2}, meta.options());
  rehash_kernel<<<blocks_for(table.size(0)), kThreads, 0, stream>>>(
      table.data_ptr<int32_t>(), table.size(0), out.data_ptr<int32_t>(), new_capacity,
      reinterpret_cast<unsigned long long*>(counters.data_ptr<int64_t>()));
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  auto ch = counters.to(at::kCPU);
  const int64_t live = ch.data_ptr<int64_t>()[0], bad = ch.data_ptr<int64_t>()[1];
  check_rehash_counts(op, bad, live, m[kSize]);
  auto new_meta = meta.clone();
  new_meta.select(0, kTombstones).zero_();
  return {out, new_meta};
}

std::tuple<at::Tensor, at::Tensor> export_cuda(const at::Tensor& table, const at::Tensor& meta) {
  const char* op = kOpExport;
  check_table_meta(op, table, meta);
  const c10::cuda::CUDAGuard guard(table.device());
  auto mh = meta.to(at::kCPU);
  const int64_t* m = mh.data_ptr<int64_t>();
  check_meta_values(op, m, table.size(0), m[kFreeCount]);
  const int64_t cap = table.size(0), next_row = m[kNextRow], size = m[kSize];
  auto ids = at::empty({size}, meta.options());
  auto rows = at::empty({size}, meta.options());
  if (next_row == 0) return {ids, rows};
  auto stream = c10::cuda::getCurrentCUDAStream();
  auto key_by_row = at::empty({next_row}, meta.options());
  auto present = at::zeros({next_row}, meta.options());
  auto counters = at::zeros({2}, meta.options());
  export_scatter_kernel<<<blocks_for(cap), kThreads, 0, stream>>>(
      table.data_ptr<int32_t>(), cap, next_row, key_by_row.data_ptr<int64_t>(), present.data_ptr<int64_t>(),
      reinterpret_cast<unsigned long long*>(counters.data_ptr<int64_t>()));
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  auto incl = at::cumsum(present, 0);
  auto ch = at::cat({counters, incl.slice(0, next_row - 1)}).to(at::kCPU);
  const int64_t live = ch.data_ptr<int64_t>()[0], bad = ch.data_ptr<int64_t>()[1];
  const int64_t distinct = ch.data_ptr<int64_t>()[2];
  check_export_counts(op, bad, live, next_row, size);
  TORCH_CHECK(distinct == size, op, ": inconsistent state: ", size - distinct,
              " rows are held by more than one slot");
  export_compact_kernel<<<blocks_for(next_row), kThreads, 0, stream>>>(
      key_by_row.data_ptr<int64_t>(), present.data_ptr<int64_t>(), incl.data_ptr<int64_t>(),
      ids.data_ptr<int64_t>(), rows.data_ptr<int64_t>(), next_row, size);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {ids, rows};
}

// (unique [U], inverse [N]) in first-occurrence order: the ids go into a fresh map, whose
// rows number new ids by first occurrence (same result as the CPU kernel).
std::tuple<at::Tensor, at::Tensor> unique_inverse_cuda(const at::Tensor& ids_in) {
  TORCH_CHECK(ids_in.scalar_type() == at::kLong && ids_in.dim() == 1, kOpUnique,
              ": ids must be a 1-D int64 tensor, got ", ids_in.scalar_type(), " of shape ", ids_in.sizes());
  const c10::cuda::CUDAGuard guard(ids_in.device());
  const int64_t n = ids_in.numel();
  int64_t cap = 16;
  while (cap < 2 * n) cap <<= 1;
  auto table = at::full({cap, kSlotWords}, kEmpty, ids_in.options().dtype(at::kInt));
  auto meta = at::zeros({kMetaLen}, ids_in.options());
  auto free_rows = at::empty({0}, ids_in.options());
  auto [inverse, is_new] = find_or_insert_cuda(table, meta, free_rows, ids_in);
  return {ids_in.contiguous().masked_select(is_new), inverse};
}

__global__ void owner_kernel(const int64_t* ids, int64_t* owner, int64_t n, int64_t world) {
  GRID_STRIDE(i, n) { owner[i] = owner_rank(ids[i], world); }
}

// ids_partition: the CUDA twin of the CPU kernel (same result): dedupe (first-occurrence order),
// owner of every distinct id, a stable sort by owner, the inverse remapped through the new
// positions.
std::tuple<at::Tensor, at::Tensor, at::Tensor> ids_partition_cuda(const at::Tensor& ids_in, int64_t world) {
  check_partition_args(kOpPartition, ids_in, world);
  const c10::cuda::CUDAGuard guard(ids_in.device());
  auto [uniq, inverse] = unique_inverse_cuda(ids_in);
  const int64_t u_count = uniq.numel();
  if (world == 1) return {uniq, inverse, at::full({1}, u_count, ids_in.options())};
  auto owner = at::empty({u_count}, ids_in.options());
  if (u_count > 0) {
    owner_kernel<<<blocks_for(u_count), kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
        uniq.data_ptr<int64_t>(), owner.data_ptr<int64_t>(), u_count, world);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  auto sorted = at::sort(owner, /*stable=*/true, /*dim=*/0, /*descending=*/false);
  const at::Tensor& order = std::get<1>(sorted);
  auto position = at::empty_like(order);
  position.index_put_({order}, at::arange(u_count, order.options()));
  return {uniq.index_select(0, order), position.index_select(0, inverse), at::bincount(owner, {}, world)};
}

}  // namespace
}  // namespace idmap

TORCH_LIBRARY_IMPL(recis_compat, CUDA, m) {
  m.impl("id_map_find", &idmap::find_cuda);
  m.impl("id_map_find_or_insert", &idmap::find_or_insert_cuda);
  m.impl("id_map_delete", &idmap::delete_cuda);
  m.impl("id_map_rehash", &idmap::rehash_cuda);
  m.impl("id_map_export", &idmap::export_cuda);
  m.impl("unique_inverse", &idmap::unique_inverse_cuda);
  m.impl("ids_partition", &idmap::ids_partition_cuda);
}

}  // namespace recis_compat
