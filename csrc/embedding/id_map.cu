// The dynamic id -> row map, CUDA twin of id_map.cpp (same schemas, state layout -- 64-byte
// buckets of 5 slots -- and row rules; see id_map.h). Slots are claimed with atomicCAS on the
// state word; the deterministic row
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

// State handles (id_map.h state_handle) index the table's int32 words; keys are 8-byte aligned
// int64 words (check_table), so they are read and written whole.
__device__ __forceinline__ int32_t load_state(const int32_t* sw, int64_t h) {
  return *reinterpret_cast<const volatile int32_t*>(sw + h);
}
__device__ __forceinline__ int64_t load_key(const int64_t* t, int64_t b, int lane) {
  return *reinterpret_cast<const volatile int64_t*>(bucket_keys(t, b) + lane);
}
__device__ __forceinline__ void store_key(int64_t* t, int64_t b, int lane, int64_t key) {
  *reinterpret_cast<volatile int64_t*>(bucket_keys(t, b) + lane) = key;
}
__device__ __forceinline__ int32_t cas_state(int32_t* sw, int64_t h, int32_t expect, int32_t desired) {
  return atomicCAS(reinterpret_cast<int*>(sw + h), expect, desired);
}

// State handle of `key`'s slot, or -1 when absent; bounded by the bucket count.
__device__ __forceinline__ int64_t probe(const int64_t* t, int64_t nb, int64_t key) {
  int64_t b = home_bucket(key, nb);
  for (int64_t step = 0; step < nb; ++step) {
    const int lane = scan_bucket(bucket_keys(t, b), bucket_states(t, b), key);
    if (lane >= 0 && lane < kLaneNext) return state_handle(b, lane);
    if (lane == kLaneAbsent) return -1;
    b = next_bucket(b, nb);
  }
  return -1;
}

__global__ void find_kernel(const int64_t* __restrict__ t, int64_t nb, const int64_t* __restrict__ ids,
                            int64_t* __restrict__ out, int64_t n) {
  const int32_t* sw = state_words(t);
  GRID_STRIDE(i, n) {
    const int64_t h = probe(t, nb, ids[i]);
    out[i] = h < 0 ? -1 : sw[h];
  }
}

// Phase A of find_or_insert: see claim_range in id_map.cpp (the same slot order: lanes 0..4 of
// the home bucket, then of the next bucket, ...).
__global__ void claim_kernel(int64_t* t, int64_t nb, const int64_t* __restrict__ ids, int64_t* rows,
                             int64_t* slot_of, int64_t n) {
  int32_t* sw = state_words(t);
  GRID_STRIDE(i, n) {
    const int64_t key = ids[i];
    int64_t b = home_bucket(key, nb);
    int lane = 0;
    for (;;) {
      const int64_t h = state_handle(b, lane);
      int32_t s = load_state(sw, h);
      if (s == kEmpty) {
        if (cas_state(sw, h, kEmpty, kLocked) == kEmpty) {
          store_key(t, b, lane, key);
          __threadfence();
          atomicExch(reinterpret_cast<int*>(sw + h), encode_pending(i));
          rows[i] = -1;
          slot_of[i] = h;
          break;
        }
        continue;  // lost the race: look at the slot again
      }
      if (s == kLocked) continue;  // the key is being written (independent thread scheduling)
      __threadfence();
      if (s != kTombstone && load_key(t, b, lane) == key) {
        if (s >= 0) {
          rows[i] = s;
          slot_of[i] = -1;
        } else {  // pending: keep the smallest batch position
          while (is_pending(s) && decode_pending(s) > i) {
            const int32_t old = cas_state(sw, h, s, encode_pending(i));
            if (old == s) break;
            s = old;
          }
          rows[i] = -1;
          slot_of[i] = h;
        }
        break;
      }
      if (++lane == static_cast<int>(kLanes)) {
        lane = 0;
        b = next_bucket(b, nb);
      }
    }
  }
}

__global__ void first_mask_kernel(const int32_t* sw, const int64_t* rows, const int64_t* slot_of,
                                  int64_t* mask_out, bool* is_new, int64_t n) {
  GRID_STRIDE(i, n) {
    const bool f = rows[i] < 0 && sw[slot_of[i]] == encode_pending(i);
    mask_out[i] = f;
    is_new[i] = f;
  }
}

__global__ void assign_kernel(int32_t* sw, const bool* is_new, const int64_t* incl, const int64_t* slot_of,
                              const int64_t* free_rows, const int64_t* meta, int64_t* rows, int64_t n) {
  const int64_t fc = meta[kFreeCount], next_row = meta[kNextRow];
  GRID_STRIDE(i, n) {
    if (!is_new[i]) continue;
    const int64_t r = row_for_new(incl[i] - 1, free_rows, fc, next_row);
    sw[slot_of[i]] = static_cast<int32_t>(r);
    rows[i] = r;
  }
}

__global__ void gather_dup_kernel(const int32_t* sw, const int64_t* slot_of, int64_t* rows, int64_t n) {
  GRID_STRIDE(i, n) {
    if (rows[i] < 0) rows[i] = sw[slot_of[i]];
  }
}

__global__ void meta_insert_kernel(int64_t* meta, const int64_t* incl, int64_t n) {
  const int64_t k = incl[n - 1], fc = meta[kFreeCount];
  meta[kSize] += k;
  meta[kNextRow] += k > fc ? k - fc : 0;
  meta[kFreeCount] = fc > k ? fc - k : 0;
}

__global__ void locate_kernel(const int64_t* t, int64_t nb, const int64_t* ids, int64_t* slot_of,
                              int64_t* found, int64_t n) {
  const int32_t* sw = state_words(t);
  GRID_STRIDE(i, n) {
    const int64_t h = probe(t, nb, ids[i]);
    slot_of[i] = h;
    found[i] = h < 0 ? -1 : sw[h];
  }
}

__global__ void delete_claim_kernel(int32_t* sw, const int64_t* slot_of, int64_t n) {
  GRID_STRIDE(i, n) {
    const int64_t h = slot_of[i];
    if (h < 0) continue;
    int32_t s = load_state(sw, h);
    while (s >= 0 || (is_pending(s) && decode_pending(s) > i)) {
      const int32_t old = cas_state(sw, h, s, encode_pending(i));
      if (old == s) break;
      s = old;
    }
  }
}

__global__ void delete_first_kernel(const int32_t* sw, const int64_t* slot_of, int64_t* first, int64_t n) {
  GRID_STRIDE(i, n) { first[i] = slot_of[i] >= 0 && sw[slot_of[i]] == encode_pending(i); }
}

__global__ void delete_emit_kernel(int32_t* sw, const int64_t* first, const int64_t* incl, const int64_t* slot_of,
                                   const int64_t* found, int64_t* freed, int64_t* free_rows, int64_t fc,
                                   int64_t n) {
  GRID_STRIDE(i, n) {
    if (!first[i]) continue;
    const int64_t p = incl[i] - 1;
    freed[p] = found[i];
    free_rows[fc + p] = found[i];
    sw[slot_of[i]] = kTombstone;
  }
}

__global__ void meta_delete_kernel(int64_t* meta, int64_t k) {
  meta[kSize] -= k;
  meta[kTombstones] += k;
  meta[kFreeCount] += k;
}

// counters[0] = live slots, counters[1] = slots in a transient state; one thread per old slot
__global__ void rehash_kernel(const int64_t* t, int64_t old_nb, int64_t* nt, int64_t nnb,
                              unsigned long long* counters) {
  const int32_t* sw = state_words(t);
  int32_t* nsw = state_words(nt);
  GRID_STRIDE(j, old_nb * kLanes) {
    const int64_t ob = j / kLanes;
    const int ol = static_cast<int>(j % kLanes);
    const int32_t s = sw[state_handle(ob, ol)];
    if (s < 0) {
      if (s < kTombstone) atomicAdd(counters + 1, 1ULL);
      continue;
    }
    atomicAdd(counters, 1ULL);
    const int64_t key = bucket_keys(t, ob)[ol];
    int64_t b = home_bucket(key, nnb);
    bool placed = false;
    for (int64_t step = 0; step < nnb && !placed; ++step, b = next_bucket(b, nnb)) {
      for (int lane = 0; lane < static_cast<int>(kLanes); ++lane) {
        const int64_t h = state_handle(b, lane);
        if (nsw[h] == kEmpty && cas_state(nsw, h, kEmpty, s) == kEmpty) {
          bucket_keys(nt, b)[lane] = key;  // nobody reads keys during a rehash: all keys are distinct
          placed = true;
          break;
        }
      }
    }
  }
}

// counters[0] = live slots, counters[1] = slots with rows >= next_row; one thread per slot
__global__ void export_scatter_kernel(const int64_t* t, int64_t nb, int64_t next_row, int64_t* key_by_row,
                                      int64_t* present, unsigned long long* counters) {
  const int32_t* sw = state_words(t);
  GRID_STRIDE(j, nb * kLanes) {
    const int64_t b = j / kLanes;
    const int lane = static_cast<int>(j % kLanes);
    const int64_t s = sw[state_handle(b, lane)];
    if (s < 0) continue;
    if (s >= next_row) {
      atomicAdd(counters + 1, 1ULL);
      continue;
    }
    atomicAdd(counters, 1ULL);
    key_by_row[s] = bucket_keys(t, b)[lane];
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
  check_meta_values(op, mh.data_ptr<int64_t>(), table_capacity(table), free_len);
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
  find_kernel<<<blocks_for(n), kThreads, 0, stream>>>(table.data_ptr<int64_t>(), table.size(0),
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
  const int64_t nb = table.size(0), n = ids_in.numel();
  auto mh = host_meta(op, table, meta, free_rows.numel());
  const int64_t* m = mh.data_ptr<int64_t>();
  check_batch_fits(op, m, n, table_capacity(table));
  auto ids = ids_in.contiguous();
  auto rows = at::empty({n}, ids.options());
  auto is_new = at::zeros({n}, ids.options().dtype(at::kBool));
  if (n == 0) return {rows, is_new};
  auto slot_of = at::empty({n}, ids.options());
  auto first = at::empty({n}, ids.options());
  auto stream = c10::cuda::getCurrentCUDAStream();
  int64_t* t = table.data_ptr<int64_t>();
  int32_t* e = state_words(t);
  const int blocks = blocks_for(n);
  claim_kernel<<<blocks, kThreads, 0, stream>>>(t, nb, ids.data_ptr<int64_t>(), rows.data_ptr<int64_t>(),
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
  int64_t* t = table.data_ptr<int64_t>();
  int32_t* e = state_words(t);
  const int blocks = blocks_for(n);
  locate_kernel<<<blocks, kThreads, 0, stream>>>(t, table.size(0), ids.data_ptr<int64_t>(),
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
  check_meta_values(op, m, table_capacity(table), m[kFreeCount]);
  check_new_capacity(op, new_capacity, m);
  auto stream = c10::cuda::getCurrentCUDAStream();
  const int64_t nnb = buckets_for(new_capacity);
  auto out = at::full({nnb, kBucketWords}, -1, table.options());  // every int32 state kEmpty
  auto counters = at::zeros({2}, meta.options());
  rehash_kernel<<<blocks_for(table_capacity(table)), kThreads, 0, stream>>>(
      table.data_ptr<int64_t>(), table.size(0), out.data_ptr<int64_t>(), nnb,
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
  check_meta_values(op, m, table_capacity(table), m[kFreeCount]);
  const int64_t nb = table.size(0), next_row = m[kNextRow], size = m[kSize];
  auto ids = at::empty({size}, meta.options());
  auto rows = at::empty({size}, meta.options());
  if (next_row == 0) return {ids, rows};
  auto stream = c10::cuda::getCurrentCUDAStream();
  auto key_by_row = at::empty({next_row}, meta.options());
  auto present = at::zeros({next_row}, meta.options());
  auto counters = at::zeros({2}, meta.options());
  export_scatter_kernel<<<blocks_for(table_capacity(table)), kThreads, 0, stream>>>(
      table.data_ptr<int64_t>(), nb, next_row, key_by_row.data_ptr<int64_t>(), present.data_ptr<int64_t>(),
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
  auto table = at::full({buckets_for(cap), kBucketWords}, -1, ids_in.options());  // all states kEmpty
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
