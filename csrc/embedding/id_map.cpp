// The dynamic id -> row map: CPU kernels and the op schemas (state layout in id_map.h).
//
//   id_map_find(table, ids) -> rows                      rows[i] = row of ids[i], -1 when absent
//   id_map_find_or_insert(table!, meta!, free_rows, ids) -> (rows, is_new)
//       absent ids are inserted; the new ids get rows in the order of their first occurrence in
//       the batch: rows popped from the free stack first (top first), then next_row, next_row+1..
//       is_new[i] is true at the first occurrence of each inserted id (so rows[is_new] lists each
//       new row once, in assignment order). Precondition: size + tombstones + len(ids) < capacity.
//   id_map_delete(table!, meta!, free_rows!, ids) -> freed_rows
//       present ids are removed (slots tombstoned); their rows are pushed on the free stack in
//       first-occurrence order and returned in that order. Absent ids and duplicates are ignored.
//       Precondition: len(free_rows) >= min(next_row, free_count + len(ids)).
//   id_map_rehash(table, meta, new_capacity) -> (new_table, new_meta)
//       the same map in a table of new_capacity slots (any integer > size, >= 2), without tombstones.
//   id_map_export(table, meta) -> (ids, rows)            every live pair, ordered by row.
//
// Parallel with at::parallel_for. Concurrent inserts claim empty slots by CAS on the state word
// (std::atomic_ref); duplicates of one id inside a batch meet on the same slot and keep the
// smallest batch position, so which occurrence is "first" and therefore every row assignment
// (an exclusive prefix sum over first occurrences) is independent of the thread count. Slot
// positions may differ between thread counts (linear-probing order); the map itself does not.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <thread>
#include <tuple>
#include <vector>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define RECIS_CPU_PAUSE() _mm_pause()
#else
#define RECIS_CPU_PAUSE() ((void)0)
#endif

#include "embedding/id_map.h"

namespace recis_compat {
namespace idmap {
namespace {

constexpr int64_t kGrain = 4096;    // ids per at::parallel_for task
constexpr int64_t kChunk = 16384;   // fixed chunk of the deterministic prefix sums
constexpr int kPrefetch = 12;       // probes issued ahead (the table is usually far beyond cache)

using AtomicI32 = std::atomic_ref<int32_t>;

inline void prefetch_slot(const int32_t* e, int64_t key, int64_t cap, bool write) {
  const int32_t* p = e + key_word(home_slot(key, cap));
  if (write)
    __builtin_prefetch(p, 1, 1);
  else
    __builtin_prefetch(p, 0, 1);
}

// Deterministic exclusive prefix sum over chunks of [0, n): count(c_begin, c_end) -> int64 per
// chunk, then emit(c_begin, c_end, base) with base = number counted before the chunk. Returns the
// total. The chunking is fixed (kChunk), so the result never depends on the thread count.
template <typename Count, typename Emit>
int64_t chunked_scan(int64_t n, Count count, Emit emit) {
  const int64_t nchunks = (n + kChunk - 1) / kChunk;
  std::vector<int64_t> base(nchunks + 1, 0);
  at::parallel_for(0, nchunks, 1, [&](int64_t cb, int64_t ce) {
    for (int64_t c = cb; c < ce; ++c) base[c + 1] = count(c * kChunk, std::min(n, (c + 1) * kChunk));
  });
  for (int64_t c = 0; c < nchunks; ++c) base[c + 1] += base[c];
  at::parallel_for(0, nchunks, 1, [&](int64_t cb, int64_t ce) {
    for (int64_t c = cb; c < ce; ++c) emit(c * kChunk, std::min(n, (c + 1) * kChunk), base[c]);
  });
  return base[nchunks];
}

// Slot of `key`, or -1 when absent; bounded by the capacity so a corrupt table cannot hang.
inline int64_t probe(const int32_t* e, int64_t cap, int64_t key) {
  int64_t j = home_slot(key, cap);
  for (int64_t step = 0; step < cap; ++step) {
    const int32_t s = e[state_word(j)];
    if (s == kEmpty) return -1;
    if (s >= 0 && key_at(e, j) == key) return j;
    j = next_slot(j, cap);
  }
  return -1;
}

void check_state_cpu(const char* op, const at::Tensor& table, const at::Tensor& meta,
                     const at::Tensor& free_rows) {
  check_state_shapes(op, table, meta, free_rows);
  check_meta_values(op, meta.data_ptr<int64_t>(), table.size(0), free_rows.numel());
}

// ------------------------------------------------------------------------------------ find
at::Tensor find_cpu(const at::Tensor& table, const at::Tensor& ids_in) {
  check_table(kOpFind, table);
  check_ids(kOpFind, ids_in, table);
  auto ids = ids_in.contiguous();
  const int64_t n = ids.numel();
  auto rows = at::empty({n}, ids.options());
  const int32_t* e = table.data_ptr<int32_t>();
  const int64_t cap = table.size(0);
  const int64_t* id = ids.data_ptr<int64_t>();
  int64_t* out = rows.data_ptr<int64_t>();
  at::parallel_for(0, n, kGrain, [&](int64_t b, int64_t end) {
    for (int64_t i = b; i < std::min(end, b + kPrefetch); ++i) prefetch_slot(e, id[i], cap, false);
    for (int64_t i = b; i < end; ++i) {
      if (i + kPrefetch < end) prefetch_slot(e, id[i + kPrefetch], cap, false);
      const int64_t j = probe(e, cap, id[i]);
      out[i] = j < 0 ? -1 : e[state_word(j)];
    }
  });
  return rows;
}

// --------------------------------------------------------------------------- find_or_insert
// Phase A for ids[b, end): existing ids get their row; absent ids claim (or join) a pending slot.
// is_new[i] ends true exactly at the batch position each pending slot keeps (its id's first
// occurrence): a position sets its own flag before publishing itself in a slot (release), and the
// smaller position that displaces it clears it after (acquire). So the row-assignment scan reads
// the flags in order instead of every claimed slot again (one random access less per new id).
inline void set_flag(bool* is_new, int64_t i, bool v) {
  std::atomic_ref<bool>(is_new[i]).store(v, std::memory_order_relaxed);
}

void claim_range(int32_t* e, int64_t cap, const int64_t* id, int64_t* rows, int64_t* slot_of, bool* is_new,
                 int64_t b, int64_t end) {
  for (int64_t i = b; i < std::min(end, b + kPrefetch); ++i) prefetch_slot(e, id[i], cap, true);
  for (int64_t i = b; i < end; ++i) {
    if (i + kPrefetch < end) prefetch_slot(e, id[i + kPrefetch], cap, true);
    const int64_t key = id[i];
    int64_t j = home_slot(key, cap);
    for (;;) {
      AtomicI32 st(e[state_word(j)]);
      int32_t s = st.load(std::memory_order_acquire);
      if (s == kEmpty) {
        if (st.compare_exchange_strong(s, kLocked, std::memory_order_acq_rel, std::memory_order_acquire)) {
          set_key(e, j, key);
          set_flag(is_new, i, true);
          st.store(encode_pending(i), std::memory_order_release);
          rows[i] = -1;
          slot_of[i] = j;
          break;
        }
        continue;  // lost the race for this slot: look at it again
      }
      if (s == kLocked) {  // another thread is writing this slot's key; it takes a few cycles
        for (int spins = 0; st.load(std::memory_order_acquire) == kLocked; ++spins) {
          if (spins < 4096)
            RECIS_CPU_PAUSE();
          else
            std::this_thread::yield();  // the writer was preempted between its CAS and store
        }
        continue;
      }
      if (s != kTombstone && key_at(e, j) == key) {  // the key was published before s (acquire)
        if (s >= 0) {
          rows[i] = s;
          slot_of[i] = -1;
        } else if (decode_pending(s) > i) {  // pending: keep the smallest batch position
          set_flag(is_new, i, true);
          int64_t displaced = -1;
          while (is_pending(s) && decode_pending(s) > i) {
            const int32_t seen = s;
            if (st.compare_exchange_weak(s, encode_pending(i), std::memory_order_acq_rel,
                                         std::memory_order_acquire)) {
              displaced = decode_pending(seen);
              break;
            }
          }
          set_flag(is_new, displaced >= 0 ? displaced : i, false);
          rows[i] = -1;
          slot_of[i] = j;
        } else {  // a smaller position holds the slot
          rows[i] = -1;
          slot_of[i] = j;
        }
        break;
      }
      j = next_slot(j, cap);
    }
  }
}

std::tuple<at::Tensor, at::Tensor> find_or_insert_cpu(at::Tensor& table, at::Tensor& meta,
                                                      const at::Tensor& free_rows, const at::Tensor& ids_in) {
  const char* op = kOpFindOrInsert;
  check_ids(op, ids_in, table);
  check_state_cpu(op, table, meta, free_rows);
  auto ids = ids_in.contiguous();
  const int64_t n = ids.numel();
  const int64_t cap = table.size(0);
  int64_t* m = meta.data_ptr<int64_t>();
  check_batch_fits(op, m, n, cap);
  auto rows_t = at::empty({n}, ids.options());
  auto is_new_t = at::zeros({n}, ids.options().dtype(at::kBool));
  if (n == 0) return {rows_t, is_new_t};
  auto slot_t = at::empty({n}, ids.options());
  int32_t* e = table.data_ptr<int32_t>();
  const int64_t* id = ids.data_ptr<int64_t>();
  int64_t* rows = rows_t.data_ptr<int64_t>();
  int64_t* slot_of = slot_t.data_ptr<int64_t>();
  bool* is_new = is_new_t.data_ptr<bool>();

  at::parallel_for(0, n, kGrain, [&](int64_t b, int64_t end) { claim_range(e, cap, id, rows, slot_of, is_new, b, end); });

  const int64_t fc = m[kFreeCount], next_row = m[kNextRow];
  const int64_t* fr = free_rows.data_ptr<int64_t>();
  const int64_t k = chunked_scan(
      n,
      [&](int64_t b, int64_t end) {
        int64_t c = 0;
        for (int64_t i = b; i < end; ++i) c += is_new[i];
        return c;
      },
      [&](int64_t b, int64_t end, int64_t base) {
        for (int64_t i = b; i < end; ++i) {
          if (i + kPrefetch < end && is_new[i + kPrefetch])
            __builtin_prefetch(e + state_word(slot_of[i + kPrefetch]), 1, 1);
          if (!is_new[i]) continue;
          const int64_t r = row_for_new(base++, fr, fc, next_row);
          e[state_word(slot_of[i])] = static_cast<int32_t>(r);
          rows[i] = r;
        }
      });
  if (k < n) {  // duplicates of new ids take the row of their first occurrence
    at::parallel_for(0, n, kGrain, [&](int64_t b, int64_t end) {
      for (int64_t i = b; i < end; ++i)
        if (rows[i] < 0) rows[i] = e[state_word(slot_of[i])];
    });
  }
  m[kSize] += k;
  m[kNextRow] += std::max<int64_t>(0, k - fc);
  m[kFreeCount] = std::max<int64_t>(0, fc - k);
  return {rows_t, is_new_t};
}

// ---------------------------------------------------------------------------------- unique_inverse
// (unique [U], inverse [N]) of ids, unique in first-occurrence order. A serial pass over a
// scratch open-addressing table (measured on 2 cores: 0.065 ms for 25k ids, 4x less than the
// concurrent find_or_insert on a fresh map and 16x less than torch.unique; still ahead at 2M ids).
// Batches beyond 4M ids take the concurrent path on a fresh map, which gives the same result
// (the map numbers new ids by first occurrence).
constexpr int64_t kSerialUniqueMax = int64_t(1) << 22;

std::tuple<at::Tensor, at::Tensor> unique_inverse_cpu(const at::Tensor& ids_in) {
  TORCH_CHECK(ids_in.scalar_type() == at::kLong && ids_in.dim() == 1, kOpUnique,
              ": ids must be a 1-D int64 tensor, got ", ids_in.scalar_type(), " of shape ", ids_in.sizes());
  auto ids = ids_in.contiguous();
  const int64_t n = ids.numel();
  int64_t cap = 16;
  while (cap < 2 * n) cap <<= 1;
  if (n > kSerialUniqueMax) {
    auto table = at::full({cap, kSlotWords}, kEmpty, ids.options().dtype(at::kInt));
    auto meta = at::zeros({kMetaLen}, ids.options());
    auto free_rows = at::empty({0}, ids.options());
    auto [inverse, is_new] = find_or_insert_cpu(table, meta, free_rows, ids);
    return {ids.masked_select(is_new), inverse};
  }
  std::vector<int64_t> keys(cap);
  std::vector<int32_t> slot_index(cap, -1);
  auto uniq = at::empty({n}, ids.options());
  auto inverse = at::empty({n}, ids.options());
  const int64_t* id = ids.data_ptr<int64_t>();
  int64_t* u = uniq.data_ptr<int64_t>();
  int64_t* inv = inverse.data_ptr<int64_t>();
  int32_t count = 0;
  for (int64_t i = 0; i < n; ++i) {
    const int64_t key = id[i];
    int64_t j = home_slot(key, cap);
    while (true) {
      const int32_t at_slot = slot_index[j];
      if (at_slot < 0) {
        keys[j] = key;
        slot_index[j] = count;
        u[count] = key;
        inv[i] = count++;
        break;
      }
      if (keys[j] == key) {
        inv[i] = at_slot;
        break;
      }
      j = next_slot(j, cap);
    }
  }
  return {uniq.narrow(0, 0, count), inverse};
}

// ---------------------------------------------------------------------------------- ids_partition
// RecIS's ids_partition: (unique [U], inverse [N], rank_counts [world]) with the distinct ids
// grouped by owner rank (rank 0's first), first-occurrence order inside each rank's group, and
// unique[inverse] == ids. One dedupe pass, then a counting sort by owner (stable) and a remap of
// the inverse: what a sharded lookup sends, in O(N + U) instead of a dedupe, an argsort by owner
// and two permutations of the looked-up rows (forward and backward).
std::tuple<at::Tensor, at::Tensor, at::Tensor> ids_partition_cpu(const at::Tensor& ids_in, int64_t world) {
  check_partition_args(kOpPartition, ids_in, world);
  auto [uniq, inverse] = unique_inverse_cpu(ids_in);
  const int64_t u_count = uniq.numel();
  auto counts = at::zeros({world}, ids_in.options());
  int64_t* c = counts.data_ptr<int64_t>();
  if (world == 1) {
    c[0] = u_count;
    return {uniq, inverse, counts};
  }
  const int64_t* u = uniq.data_ptr<int64_t>();
  std::vector<int64_t> owner(u_count);
  for (int64_t i = 0; i < u_count; ++i) {
    owner[i] = owner_rank(u[i], world);
    ++c[owner[i]];
  }
  std::vector<int64_t> next(world, 0);
  for (int64_t r = 1; r < world; ++r) next[r] = next[r - 1] + c[r - 1];
  auto grouped = at::empty({u_count}, ids_in.options());
  int64_t* g = grouped.data_ptr<int64_t>();
  std::vector<int64_t> position(u_count);
  for (int64_t i = 0; i < u_count; ++i) {
    const int64_t p = next[owner[i]]++;
    g[p] = u[i];
    position[i] = p;
  }
  int64_t* inv = inverse.data_ptr<int64_t>();
  const int64_t n = inverse.numel();
  for (int64_t j = 0; j < n; ++j) inv[j] = position[inv[j]];
  return {grouped, inverse, counts};
}

// ---------------------------------------------------------------------------------- delete
at::Tensor delete_cpu(at::Tensor& table, at::Tensor& meta, at::Tensor& free_rows, const at::Tensor& ids_in) {
  const char* op = kOpDelete;
  check_ids(op, ids_in, table);
  check_state_cpu(op, table, meta, free_rows);
  auto ids = ids_in.contiguous();
  const int64_t n = ids.numel();
  const int64_t cap = table.size(0);
  int64_t* m = meta.data_ptr<int64_t>();
  const int64_t fc = m[kFreeCount];
  check_free_rows_room(op, m, free_rows.numel(), n);
  if (n == 0) return at::empty({0}, ids.options());
  int32_t* e = table.data_ptr<int32_t>();
  const int64_t* id = ids.data_ptr<int64_t>();
  auto found_t = at::empty({n}, ids.options());
  auto slot_t = at::empty({n}, ids.options());
  int64_t* found = found_t.data_ptr<int64_t>();
  int64_t* slot_of = slot_t.data_ptr<int64_t>();
  // 1: locate (read only)
  at::parallel_for(0, n, kGrain, [&](int64_t b, int64_t end) {
    for (int64_t i = b; i < end; ++i) {
      const int64_t j = probe(e, cap, id[i]);
      slot_of[i] = j;
      found[i] = j < 0 ? -1 : e[state_word(j)];
    }
  });
  // 2: each found slot keeps the smallest batch position that names it
  at::parallel_for(0, n, kGrain, [&](int64_t b, int64_t end) {
    for (int64_t i = b; i < end; ++i) {
      if (slot_of[i] < 0) continue;
      AtomicI32 st(e[state_word(slot_of[i])]);
      int32_t s = st.load(std::memory_order_relaxed);
      while ((s >= 0 || (is_pending(s) && decode_pending(s) > i)) &&
             !st.compare_exchange_weak(s, encode_pending(i), std::memory_order_relaxed)) {
      }
    }
  });
  // 3: first occurrences free their rows, in batch order
  std::vector<uint8_t> first(n, 0);
  int64_t* fr = free_rows.data_ptr<int64_t>();
  const int64_t k = chunked_scan(
      n,
      [&](int64_t b, int64_t end) {
        int64_t c = 0;
        for (int64_t i = b; i < end; ++i)
          if (slot_of[i] >= 0 && e[state_word(slot_of[i])] == encode_pending(i)) first[i] = 1, ++c;
        return c;
      },
      [&](int64_t, int64_t, int64_t) {});
  auto freed_t = at::empty({k}, ids.options());
  int64_t* freed = freed_t.data_ptr<int64_t>();
  chunked_scan(
      n,
      [&](int64_t b, int64_t end) {
        int64_t c = 0;
        for (int64_t i = b; i < end; ++i) c += first[i];
        return c;
      },
      [&](int64_t b, int64_t end, int64_t base) {
        for (int64_t i = b; i < end; ++i) {
          if (!first[i]) continue;
          freed[base] = found[i];
          fr[fc + base] = found[i];
          e[state_word(slot_of[i])] = kTombstone;
          ++base;
        }
      });
  m[kSize] -= k;
  m[kTombstones] += k;
  m[kFreeCount] += k;
  return freed_t;
}

// ---------------------------------------------------------------------------------- rehash
std::tuple<at::Tensor, at::Tensor> rehash_cpu(const at::Tensor& table, const at::Tensor& meta,
                                              int64_t new_capacity) {
  const char* op = kOpRehash;
  check_table_meta(op, table, meta);
  const int64_t* m = meta.data_ptr<int64_t>();
  check_meta_values(op, m, table.size(0), m[kFreeCount]);
  check_new_capacity(op, new_capacity, m);
  const int64_t old_cap = table.size(0), ncap = new_capacity;
  auto out = at::empty({new_capacity, kSlotWords}, table.options());
  int32_t* ne = out.data_ptr<int32_t>();
  at::parallel_for(0, new_capacity, 1 << 16, [&](int64_t b, int64_t end) {
    for (int64_t j = b; j < end; ++j) ne[key_word(j)] = 0, ne[key_word(j) + 1] = 0, ne[state_word(j)] = kEmpty;
  });
  const int32_t* e = table.data_ptr<int32_t>();
  std::atomic<int64_t> live{0}, bad{0};
  // Home slots are the high word of mix64(key) * capacity, monotone in mix64(key) at every
  // capacity, so reading the old table in order writes the new one nearly in order; the target
  // slots are still fetched a few keys ahead (measured: 386 -> 325 ms for 8M ids on one
  // thread). On one thread the slots are claimed with plain stores; threads claim them by CAS
  // (the ends of their ranges may meet).
  const bool serial = at::get_num_threads() == 1 || old_cap <= kGrain;
  at::parallel_for(0, old_cap, kGrain, [&](int64_t b, int64_t end) {
    int64_t cnt = 0, nbad = 0;
    for (int64_t j = b; j < end; ++j) {
      if (j + kPrefetch < end && e[state_word(j + kPrefetch)] >= 0)
        prefetch_slot(ne, key_at(e, j + kPrefetch), ncap, true);
      const int32_t s = e[state_word(j)];
      if (s < 0) {
        nbad += s < kTombstone;
        continue;
      }
      ++cnt;
      const int64_t key = key_at(e, j);
      int64_t t = home_slot(key, ncap);
      for (int64_t step = 0; step < ncap; ++step, t = next_slot(t, ncap)) {
        if (serial) {
          if (ne[state_word(t)] != kEmpty) continue;
          ne[state_word(t)] = s;
          set_key(ne, t, key);
          break;
        }
        AtomicI32 st(ne[state_word(t)]);
        int32_t expect = kEmpty;
        if (st.load(std::memory_order_relaxed) == kEmpty &&
            st.compare_exchange_strong(expect, s, std::memory_order_relaxed)) {
          set_key(ne, t, key);  // nobody reads keys during a rehash: all keys are distinct
          break;
        }
      }
    }
    live += cnt;
    bad += nbad;
  });
  check_rehash_counts(op, bad.load(), live.load(), m[kSize]);
  auto new_meta = meta.clone();
  new_meta.data_ptr<int64_t>()[kTombstones] = 0;
  return {out, new_meta};
}

// ---------------------------------------------------------------------------------- export
std::tuple<at::Tensor, at::Tensor> export_cpu(const at::Tensor& table, const at::Tensor& meta) {
  const char* op = kOpExport;
  check_table_meta(op, table, meta);
  const int64_t* m = meta.data_ptr<int64_t>();
  check_meta_values(op, m, table.size(0), m[kFreeCount]);
  const int64_t cap = table.size(0), next_row = m[kNextRow], size = m[kSize];
  const int32_t* e = table.data_ptr<int32_t>();
  std::vector<int64_t> key_by_row(next_row);
  std::vector<uint8_t> present(next_row, 0);
  std::atomic<int64_t> live{0}, bad{0};
  at::parallel_for(0, cap, kGrain, [&](int64_t b, int64_t end) {
    int64_t cnt = 0, nbad = 0;
    for (int64_t j = b; j < end; ++j) {
      const int64_t s = e[state_word(j)];
      if (s < 0) continue;
      if (s >= next_row) {
        ++nbad;
        continue;
      }
      key_by_row[s] = key_at(e, j);
      present[s] = 1;  // a row held twice is caught by the count below
      ++cnt;
    }
    live += cnt;
    bad += nbad;
  });
  check_export_counts(op, bad.load(), live.load(), next_row, size);
  auto ids = at::empty({size}, table.options().dtype(at::kLong));
  auto rows = at::empty({size}, table.options().dtype(at::kLong));
  int64_t* oi = ids.data_ptr<int64_t>();
  int64_t* orow = rows.data_ptr<int64_t>();
  int64_t k = 0;
  for (int64_t r = 0; r < next_row; ++r) {
    if (!present[r]) continue;
    TORCH_CHECK(k < size, op, ": inconsistent state: more live rows than size=", size);
    oi[k] = key_by_row[r];
    orow[k] = r;
    ++k;
  }
  TORCH_CHECK(k == size, op, ": inconsistent state: ", size - k, " rows are held by more than one slot");
  return {ids, rows};
}

}  // namespace
}  // namespace idmap

TORCH_LIBRARY_FRAGMENT(recis_compat, m) {
  m.def("id_map_find(Tensor table, Tensor ids) -> Tensor");
  m.def("id_map_find_or_insert(Tensor(a!) table, Tensor(b!) meta, Tensor free_rows, Tensor ids) "
        "-> (Tensor, Tensor)");
  m.def("id_map_delete(Tensor(a!) table, Tensor(b!) meta, Tensor(c!) free_rows, Tensor ids) -> Tensor");
  m.def("id_map_rehash(Tensor table, Tensor meta, int new_capacity) -> (Tensor, Tensor)");
  m.def("id_map_export(Tensor table, Tensor meta) -> (Tensor, Tensor)");
  m.def("unique_inverse(Tensor ids) -> (Tensor, Tensor)");
  m.def("ids_partition(Tensor ids, int world_size) -> (Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(recis_compat, CPU, m) {
  m.impl("id_map_find", &idmap::find_cpu);
  m.impl("id_map_find_or_insert", &idmap::find_or_insert_cpu);
  m.impl("id_map_delete", &idmap::delete_cpu);
  m.impl("id_map_rehash", &idmap::rehash_cpu);
  m.impl("id_map_export", &idmap::export_cpu);
  m.impl("unique_inverse", &idmap::unique_inverse_cpu);
  m.impl("ids_partition", &idmap::ids_partition_cpu);
}

}  // namespace recis_compat
