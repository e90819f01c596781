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
//   id_map_insert_new(table!, meta!, free_rows, ids) -> (rows, ok)   (CPU only)
//       find_or_insert of a batch expected to hold new, distinct ids only: done when it does (ok),
//       else the table and meta are left as they were (see the op below).
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
#include <memory>
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
constexpr int kPrefetch = 12;       // buckets fetched ahead (the table is usually far beyond cache)
constexpr int kRing = 16;           // home buckets computed once, kPrefetch ids ahead (> kPrefetch)

using AtomicI32 = std::atomic_ref<int32_t>;
using AtomicI64 = std::atomic_ref<int64_t>;

inline void prefetch_bucket(const int64_t* t, int64_t b) {
  __builtin_prefetch(t + kBucketWords * b, 1, 3);  // one 64-byte line; write intent (claims, inserts)
}
inline void prefetch_bucket_read(const int64_t* t, int64_t b) { __builtin_prefetch(t + kBucketWords * b, 0, 3); }

// Home buckets of ids[b, end), each id hashed once (mix64 and a 128-bit multiply): the buckets of
// the next kPrefetch ids are computed and prefetched ahead and kept in a ring until their id is
// reached (advance(i) returns id i's bucket and starts on id i + kPrefetch's).
template <bool kWrite>
struct HomeRing {
  const int64_t* t;
  const int64_t* id;
  int64_t nb, end;
  int64_t buf[kRing];
  HomeRing(const int64_t* t_, const int64_t* id_, int64_t nb_, int64_t b, int64_t end_)
      : t(t_), id(id_), nb(nb_), end(end_) {
    for (int64_t i = b; i < std::min(end, b + kPrefetch); ++i) fetch(i);
  }
  void fetch(int64_t i) {
    const int64_t h = home_bucket(id[i], nb);
    buf[static_cast<uint64_t>(i) % kRing] = h;
    if (kWrite)
      prefetch_bucket(t, h);
    else
      prefetch_bucket_read(t, h);
  }
  // id i's home bucket (fetched already)
  int64_t at(int64_t i) const { return buf[static_cast<uint64_t>(i) % kRing]; }
  // id i's home bucket; starts fetching id i + kPrefetch's
  int64_t advance(int64_t i) {
    const int64_t h = at(i);
    if (i + kPrefetch < end) fetch(i + kPrefetch);
    return h;
  }
};

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

// State handle (id_map.h) of `key`'s slot starting at its home bucket hb, or -1 when absent;
// bounded by the bucket count so a corrupt table cannot hang.
inline int64_t probe(const int64_t* t, int64_t nb, int64_t key, int64_t hb) {
  int64_t b = hb;
  for (int64_t step = 0; step < nb; ++step) {
    const int lane = scan_bucket(bucket_keys(t, b), bucket_states(t, b), key);
    if (lane >= 0 && lane < kLaneNext) return state_handle(b, lane);
    if (lane == kLaneAbsent) return -1;
    b = next_bucket(b, nb);
  }
  return -1;
}

void check_state_cpu(const char* op, const at::Tensor& table, const at::Tensor& meta,
                     const at::Tensor& free_rows) {
  check_state_shapes(op, table, meta, free_rows);
  check_meta_values(op, meta.data_ptr<int64_t>(), table_capacity(table), free_rows.numel());
}

// ------------------------------------------------------------------------------------ find
// Row of `key` (home bucket hb), or -1. The home bucket decides almost every lookup: it is scanned
// inline, the probe loop only follows an overflow chain.
inline int64_t lookup(const int64_t* t, int64_t nb, int64_t key, int64_t hb) {
  const int lane = scan_bucket(bucket_keys(t, hb), bucket_states(t, hb), key);
  if (lane >= 0 && lane < kLaneNext) return bucket_states(t, hb)[lane];
  if (lane == kLaneAbsent) return -1;
  const int64_t h = probe(t, nb, key, next_bucket(hb, nb));
  return h < 0 ? -1 : state_words(t)[h];
}

// rows of ids[b, end), home buckets fetched kPrefetch ids ahead. Compiled for x86-64-v3 too, as
// claim_range (measured, 100k ids in the table, 1 thread: 0.49 -> 0.30 ms per 64k ids; the VEX
// forms of the lane scan need fewer register copies).
RECIS_CPU_CLONES void find_range(const int64_t* t, int64_t nb, const int64_t* id, int64_t* out, int64_t b,
                                 int64_t end) {
  HomeRing<false> ring(t, id, nb, b, end);
  for (int64_t i = b; i < end; ++i) {
    const int64_t hb = ring.advance(i);
    const int64_t key = id[i];
    // fast path: the first lane holding the key is live (a key is live in at most one slot)
    const unsigned m = key_lanes(bucket_keys(t, hb), key);
    if (m) {
      const int32_t s = bucket_states(t, hb)[lowest_bit(m)];
      if (s >= 0) {
        out[i] = s;
        continue;
      }
    }
    out[i] = lookup(t, nb, key, hb);
  }
}

at::Tensor find_cpu(const at::Tensor& table, const at::Tensor& ids_in) {
  check_table(kOpFind, table);
  check_ids(kOpFind, ids_in, table);
  auto ids = ids_in.contiguous();
  const int64_t n = ids.numel();
  auto rows = at::empty({n}, ids.options());
  const int64_t* t = table.data_ptr<int64_t>();
  const int64_t nb = table.size(0);
  const int64_t* id = ids.data_ptr<int64_t>();
  int64_t* out = rows.data_ptr<int64_t>();
  // prefetching pays even for a table in L2 (measured: 10k ids, 1 thread, 0.46 -> 0.32 ms)
  at::parallel_for(0, n, kGrain, [&](int64_t b, int64_t end) { find_range(t, nb, id, out, b, end); });
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

// Returns how many positions of the range were left pending (rows[i] = -1: new ids and their
// repeats), so the caller skips the row-assignment passes when there are none.
RECIS_CPU_CLONES int64_t claim_range(int64_t* t, int64_t nb, const int64_t* id, int64_t* rows, int64_t* slot_of,
                                     bool* is_new, int64_t b, int64_t end) {
  HomeRing<true> ring(t, id, nb, b, end);
  int64_t pending = 0;
  for (int64_t i = b; i < end; ++i) {
    const int64_t hb = ring.advance(i);
    const int64_t key = id[i];
    // Fast path: the key is live from an earlier call. The home bucket is read with plain (vector)
    // loads while other threads may be claiming its empty lanes; only a lane whose state is live
    // (>= 0) is trusted, and live states and their keys do not change during this pass (rows are
    // written after it; the fork of parallel_for orders this call after the earlier ones). A
    // stale view of the other lanes only sends the id to the atomic path below, which starts at
    // the first lane not seen live (live lanes stay live and hold other keys).
    const unsigned m = key_lanes(bucket_keys(t, hb), key);
    if (m) {  // the first lane holding the key is live: the common case of a known id
      const int32_t s = bucket_states(t, hb)[lowest_bit(m)];
      if (s >= 0) {
        rows[i] = s;
        slot_of[i] = -1;
        continue;
      }
    }
    unsigned live = 0;
    {
      const int lane = scan_bucket(bucket_keys(t, hb), bucket_states(t, hb), key, &live);
      if (lane >= 0 && lane < kLaneNext) {
        rows[i] = bucket_states(t, hb)[lane];
        slot_of[i] = -1;
        continue;
      }
    }
    constexpr unsigned kAllLanes = (1u << kLanes) - 1;
    int64_t bk = live == kAllLanes ? next_bucket(hb, nb) : hb;
    int lane = live == kAllLanes ? 0 : lowest_bit(~live & kAllLanes);
    for (;;) {
      AtomicI32 st(bucket_states(t, bk)[lane]);
      AtomicI64 kw(bucket_keys(t, bk)[lane]);
      int32_t s = st.load(std::memory_order_acquire);
      if (s == kEmpty) {
        if (st.compare_exchange_strong(s, kLocked, std::memory_order_acq_rel, std::memory_order_acquire)) {
          kw.store(key, std::memory_order_relaxed);
          set_flag(is_new, i, true);
          st.store(encode_pending(i), std::memory_order_release);
          rows[i] = -1;
          slot_of[i] = state_handle(bk, lane);
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
      if (s != kTombstone && kw.load(std::memory_order_relaxed) == key) {  // published before s (acquire)
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
          slot_of[i] = state_handle(bk, lane);
        } else {  // a smaller position holds the slot
          rows[i] = -1;
          slot_of[i] = state_handle(bk, lane);
        }
        break;
      }
      if (++lane == static_cast<int>(kLanes)) {
        lane = 0;
        bk = next_bucket(bk, nb);
      }
    }
    pending += rows[i] < 0;
  }
  return pending;
}

// The checks every insert op (find_or_insert, insert_new) starts with; returns the ids contiguous.
at::Tensor checked_insert_ids(const char* op, const at::Tensor& table, const at::Tensor& meta,
                              const at::Tensor& free_rows, const at::Tensor& ids_in) {
  check_ids(op, ids_in, table);
  check_state_cpu(op, table, meta, free_rows);
  auto ids = ids_in.contiguous();
  check_batch_fits(op, meta.data_ptr<int64_t>(), ids.numel(), table_capacity(table));
  return ids;
}

std::tuple<at::Tensor, at::Tensor> find_or_insert_cpu(at::Tensor& table, at::Tensor& meta,
                                                      const at::Tensor& free_rows, const at::Tensor& ids_in) {
  const auto ids = checked_insert_ids(kOpFindOrInsert, table, meta, free_rows, ids_in);
  const int64_t n = ids.numel();
  const int64_t nb = table.size(0);
  int64_t* m = meta.data_ptr<int64_t>();
  auto rows_t = at::empty({n}, ids.options());
  auto is_new_t = at::zeros({n}, ids.options().dtype(at::kBool));
  if (n == 0) return {rows_t, is_new_t};
  auto slot_t = at::empty({n}, ids.options());
  int64_t* t = table.data_ptr<int64_t>();
  int32_t* sw = state_words(t);
  const int64_t* id = ids.data_ptr<int64_t>();
  int64_t* rows = rows_t.data_ptr<int64_t>();
  int64_t* slot_of = slot_t.data_ptr<int64_t>();
  bool* is_new = is_new_t.data_ptr<bool>();

  std::atomic<int64_t> pending{0};
  at::parallel_for(0, n, kGrain, [&](int64_t b, int64_t end) {
    pending.fetch_add(claim_range(t, nb, id, rows, slot_of, is_new, b, end), std::memory_order_relaxed);
  });
  // Every id known (the common case of a trained table): nothing to number. Measured: the scan
  // and duplicate passes below were ~1/4 of a find_or_insert of 64k known ids.
  if (pending.load() == 0) return {rows_t, is_new_t};

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
          if (i + kPrefetch < end && is_new[i + kPrefetch]) __builtin_prefetch(sw + slot_of[i + kPrefetch], 1, 3);
          if (!is_new[i]) continue;
          const int64_t r = row_for_new(base++, fr, fc, next_row);
          sw[slot_of[i]] = static_cast<int32_t>(r);
          rows[i] = r;
        }
      });
  if (k < pending.load()) {  // repeats of new ids take the row of their first occurrence
    at::parallel_for(0, n, kGrain, [&](int64_t b, int64_t end) {
      for (int64_t i = b; i < end; ++i)
        if (rows[i] < 0) rows[i] = sw[slot_of[i]];
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
//
// The scratch slots are 16 bytes (key, index, generation: one cache line per probe, where two
// arrays of keys and indices took two) in a per-thread table kept between calls: a slot is
// empty unless it carries the current call's generation, so nothing is cleared or allocated per
// call (a fresh 6 MiB table for 262k ids was zero-filled and page-faulted on every call), and
// the home slot of the id kUniqueAhead places ahead is prefetched. Tables beyond
// kUniqueKeepSlots slots are freed after the call (at most 32 MiB is kept per thread).
constexpr int64_t kSerialUniqueMax = int64_t(1) << 22;
constexpr int64_t kUniqueKeepSlots = int64_t(1) << 21;
constexpr int64_t kUniqueAhead = 16;

struct UniqueSlot {
  int64_t key;
  int32_t index;
  uint32_t generation;
};
static_assert(sizeof(UniqueSlot) == 16, "UniqueSlot: 4 per cache line");

struct UniqueScratch {
  std::unique_ptr<UniqueSlot[]> slots;
  int64_t cap = 0;
  uint32_t generation = 0;

  // at least `want` slots, every one empty for the returned generation
  uint32_t prepare(int64_t want) {
    if (want > cap) {
      slots.reset(new UniqueSlot[want]);
      cap = want;
      generation = 0;
      for (int64_t j = 0; j < cap; ++j) slots[j].generation = 0;
    }
    if (++generation == 0) {  // wrapped: generation 0 marks empty again
      for (int64_t j = 0; j < cap; ++j) slots[j].generation = 0;
      generation = 1;
    }
    return generation;
  }

  void release_if_large() {
    if (cap > kUniqueKeepSlots) {
      slots.reset();
      cap = 0;
      generation = 0;
    }
  }
};

std::tuple<at::Tensor, at::Tensor> unique_inverse_cpu(const at::Tensor& ids_in) {
  TORCH_CHECK(ids_in.scalar_type() == at::kLong && ids_in.dim() == 1, kOpUnique,
              ": ids must be a 1-D int64 tensor, got ", ids_in.scalar_type(), " of shape ", ids_in.sizes());
  auto ids = ids_in.contiguous();
  const int64_t n = ids.numel();
  int64_t cap = 16;
  while (cap < 2 * n) cap <<= 1;
  if (n > kSerialUniqueMax) {  // every word -1: each int32 state is kEmpty
    auto table = at::full({buckets_for(cap), kBucketWords}, -1, ids.options());
    auto meta = at::zeros({kMetaLen}, ids.options());
    auto free_rows = at::empty({0}, ids.options());
    auto [inverse, is_new] = find_or_insert_cpu(table, meta, free_rows, ids);
    return {ids.masked_select(is_new), inverse};
  }
  thread_local UniqueScratch scratch;
  const uint32_t gen = scratch.prepare(cap);
  UniqueSlot* slots = scratch.slots.get();
  const int64_t mask = cap - 1;  // the first cap slots (a small batch stays in cache)
  auto uniq = at::empty({n}, ids.options());
  auto inverse = at::empty({n}, ids.options());
  const int64_t* id = ids.data_ptr<int64_t>();
  int64_t* u = uniq.data_ptr<int64_t>();
  int64_t* inv = inverse.data_ptr<int64_t>();
  int32_t count = 0;
  for (int64_t i = 0; i < n; ++i) {
    if (i + kUniqueAhead < n) __builtin_prefetch(slots + hash_range(id[i + kUniqueAhead], cap), 1, 3);
    const int64_t key = id[i];
    int64_t j = hash_range(key, cap);
    while (true) {
      UniqueSlot& sl = slots[j];
      if (sl.generation != gen) {
        sl.key = key;
        sl.index = count;
        sl.generation = gen;
        u[count] = key;
        inv[i] = count++;
        break;
      }
      if (sl.key == key) {
        inv[i] = sl.index;
        break;
      }
      j = (j + 1) & mask;
    }
  }
  scratch.release_if_large();
  return {uniq.narrow(0, 0, count), inverse};
}

// ---------------------------------------------------------------------------------- ids_partition
// RecIS's ids_partition: (unique [U], inverse [N], rank_counts [world]) with the distinct ids
// grouped by owner rank (rank 0's first), first-occurrence order inside each rank's group, and
// unique[inverse] == ids.
//
// world == 1 (and batches beyond kSerialUniqueMax) : unique_inverse, then a counting sort by owner
// and a remap of the inverse (group_by_owner). world > 1: one fused serial pass over a scratch
// table of 16-byte slots (key, owner << 40 | index inside the owner's group), so a probe touches
// one cache line (unique_inverse keeps keys and indices in two arrays: two lines) and slots are
// prefetched kPartitionAhead ids ahead; then the first-seen distinct ids are scattered to their
// group and the inverse rebased by its group's offset, both sequential passes. Measured on this
// 2-core VM, one thread, the 106k ids (54k distinct) of one rank of `bench lookup --world-size 2`:
// 1.97-2.25 ms with unique_inverse + grouping (unique_inverse alone 1.67), 1.64-1.65 ms fused.
namespace {

void group_by_owner(const at::Tensor& uniq, at::Tensor& inverse, at::Tensor& grouped, int64_t* c, int64_t world) {
  const int64_t u_count = uniq.numel();
  const int64_t* u = uniq.data_ptr<int64_t>();
  std::vector<int64_t> owner(u_count);
  for (int64_t i = 0; i < u_count; ++i) {
    owner[i] = owner_rank(u[i], world);
    ++c[owner[i]];
  }
  std::vector<int64_t> next(world, 0);
  for (int64_t r = 1; r < world; ++r) next[r] = next[r - 1] + c[r - 1];
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
}

struct PartitionSlot {
  int64_t key;
  int64_t val;  // -1: empty; else owner << kOwnerShift | index inside the owner's group
};
constexpr int kOwnerShift = 40;  // indices < 2^22 (kSerialUniqueMax), owners < 2^17
constexpr int kPartitionAhead = 8;

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor> ids_partition_cpu(const at::Tensor& ids_in, int64_t world) {
  check_partition_args(kOpPartition, ids_in, world);
  auto counts = at::zeros({world}, ids_in.options());
  int64_t* c = counts.data_ptr<int64_t>();
  if (world == 1 || ids_in.numel() > kSerialUniqueMax) {
    auto [uniq, inverse] = unique_inverse_cpu(ids_in);
    if (world == 1) {
      c[0] = uniq.numel();
      return {uniq, inverse, counts};
    }
    auto grouped = at::empty({uniq.numel()}, ids_in.options());
    group_by_owner(uniq, inverse, grouped, c, world);
    return {grouped, inverse, counts};
  }
  auto ids = ids_in.contiguous();
  const int64_t n = ids.numel();
  auto inverse = at::empty({n}, ids.options());
  if (n == 0) return {at::empty({0}, ids.options()), inverse, counts};
  // any size works with hash_range (multiply-shift): 1.5x the ids keeps the load <= 2/3 when
  // every id is distinct, and the scratch table small (16 B a slot, written once before use)
  const int64_t cap = n + n / 2 + 16;
  // first slice of every rank (bounds[world] = kSliceCount): owner = number of bounds[1..] <= slice
  std::vector<int64_t> bounds(world + 1);
  {
    const int64_t per = kSliceCount / world, extra = kSliceCount % world;
    for (int64_t r = 0; r <= world; ++r) bounds[r] = r * per + std::min(r, extra);
  }
  auto owner_of = [&](int64_t key) -> int64_t {
    const int64_t slice = key & (kSliceCount - 1);
    return std::upper_bound(bounds.begin() + 1, bounds.end(), slice) - (bounds.begin() + 1);
  };
  std::vector<PartitionSlot> table(cap, PartitionSlot{0, -1});
  const int64_t* id = ids.data_ptr<int64_t>();
  int64_t* inv = inverse.data_ptr<int64_t>();
  std::unique_ptr<int64_t[]> first(new int64_t[n]);        // distinct ids, first-seen order
  std::unique_ptr<int32_t[]> first_owner(new int32_t[n]);  // ... and their owners
  int64_t count = 0;
  int64_t home[kPartitionAhead];
  for (int64_t i = 0; i < std::min<int64_t>(n, kPartitionAhead); ++i) {
    home[i] = hash_range(id[i], cap);
    __builtin_prefetch(&table[home[i]], 1, 3);
  }
  const int64_t mask = (int64_t(1) << kOwnerShift) - 1;
  for (int64_t i = 0; i < n; ++i) {
    const int64_t key = id[i];
    int64_t j = home[i % kPartitionAhead];
    if (i + kPartitionAhead < n) {
      const int64_t h = hash_range(id[i + kPartitionAhead], cap);
      home[(i + kPartitionAhead) % kPartitionAhead] = h;
      __builtin_prefetch(&table[h], 1, 3);
    }
    while (true) {
      PartitionSlot& slot = table[j];
      if (slot.val < 0) {
        const int64_t r = owner_of(key);
        const int64_t local = c[r]++;
        slot.key = key;
        slot.val = (r << kOwnerShift) | local;
        first[count] = key;
        first_owner[count++] = static_cast<int32_t>(r);
        inv[i] = slot.val;
        break;
      }
      if (slot.key == key) {
        inv[i] = slot.val;
        break;
      }
      j = j + 1 == cap ? 0 : j + 1;
    }
  }
  std::vector<int64_t> offset(world, 0);
  for (int64_t r = 1; r < world; ++r) offset[r] = offset[r - 1] + c[r - 1];
  auto grouped = at::empty({count}, ids.options());
  int64_t* g = grouped.data_ptr<int64_t>();
  {
    std::vector<int64_t> next(offset);
    for (int64_t k = 0; k < count; ++k) g[next[first_owner[k]]++] = first[k];
  }
  for (int64_t i = 0; i < n; ++i) inv[i] = offset[inv[i] >> kOwnerShift] + (inv[i] & mask);
  return {grouped, inverse, counts};
}

// ---------------------------------------------------------------------------------- delete
at::Tensor delete_cpu(at::Tensor& table, at::Tensor& meta, at::Tensor& free_rows, const at::Tensor& ids_in) {
  const char* op = kOpDelete;
  check_ids(op, ids_in, table);
  check_state_cpu(op, table, meta, free_rows);
  auto ids = ids_in.contiguous();
  const int64_t n = ids.numel();
  const int64_t nb = table.size(0);
  int64_t* m = meta.data_ptr<int64_t>();
  const int64_t fc = m[kFreeCount];
  check_free_rows_room(op, m, free_rows.numel(), n);
  if (n == 0) return at::empty({0}, ids.options());
  int64_t* t = table.data_ptr<int64_t>();
  int32_t* sw = state_words(t);
  const int64_t* id = ids.data_ptr<int64_t>();
  auto found_t = at::empty({n}, ids.options());
  auto slot_t = at::empty({n}, ids.options());
  int64_t* found = found_t.data_ptr<int64_t>();
  int64_t* slot_of = slot_t.data_ptr<int64_t>();
  // 1: locate (read only)
  at::parallel_for(0, n, kGrain, [&](int64_t b, int64_t end) {
    HomeRing<true> ring(t, id, nb, b, end);
    for (int64_t i = b; i < end; ++i) {
      const int64_t h = probe(t, nb, id[i], ring.advance(i));
      slot_of[i] = h;
      found[i] = h < 0 ? -1 : sw[h];
    }
  });
  // 2: each found slot keeps the smallest batch position that names it
  at::parallel_for(0, n, kGrain, [&](int64_t b, int64_t end) {
    for (int64_t i = b; i < end; ++i) {
      if (slot_of[i] < 0) continue;
      AtomicI32 st(sw[slot_of[i]]);
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
          if (slot_of[i] >= 0 && sw[slot_of[i]] == encode_pending(i)) first[i] = 1, ++c;
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
          sw[slot_of[i]] = kTombstone;
          ++base;
        }
      });
  m[kSize] -= k;
  m[kTombstones] += k;
  m[kFreeCount] += k;
  return freed_t;
}

// ---------------------------------------------------------------------------------- rehash
constexpr int64_t kBucketGrain = kGrain / kLanes;  // buckets per at::parallel_for task
constexpr int64_t kFillStep = 64;                  // new buckets (4 KiB) emptied at a time

// A key whose probe path in the new table left its piece's region (placed after the pieces).
struct Deferred {
  int64_t key;
  int32_t state;
};

// Masks of a bucket's lanes (bit l: lane l) whose state equals v / is below v, without a branch
// per lane: a rehash walks every bucket of both tables, and the lane loops with a branch on each
// state (live or not, empty or not: unpredictable) were most of its work (perf, 2 threads).
#if defined(__SSE2__)
inline unsigned lane_mask_eq(const int32_t* st, int32_t v) {
  const __m128i x = _mm_loadu_si128(reinterpret_cast<const __m128i*>(st));
  return static_cast<unsigned>(_mm_movemask_ps(_mm_castsi128_ps(_mm_cmpeq_epi32(x, _mm_set1_epi32(v))))) |
         (static_cast<unsigned>(st[4] == v) << 4);
}
inline unsigned lane_mask_lt(const int32_t* st, int32_t v) {
  const __m128i x = _mm_loadu_si128(reinterpret_cast<const __m128i*>(st));
  return static_cast<unsigned>(_mm_movemask_ps(_mm_castsi128_ps(_mm_cmplt_epi32(x, _mm_set1_epi32(v))))) |
         (static_cast<unsigned>(st[4] < v) << 4);
}
#else
inline unsigned lane_mask_eq(const int32_t* st, int32_t v) {
  unsigned m = 0;
  for (int l = 0; l < static_cast<int>(kLanes); ++l) m |= static_cast<unsigned>(st[l] == v) << l;
  return m;
}
inline unsigned lane_mask_lt(const int32_t* st, int32_t v) {
  unsigned m = 0;
  for (int l = 0; l < static_cast<int>(kLanes); ++l) m |= static_cast<unsigned>(st[l] < v) << l;
  return m;
}
#endif

// One piece of a rehash: the new buckets [lo, hi) it owns, emptied (every word -1: each int32
// state kEmpty) just ahead of its first use, so the table is written once while in cache.
struct RehashRegion {
  int64_t* nt;
  int64_t lo, hi, filled;  // buckets [lo, filled) are emptied
  RehashRegion(int64_t* nt_, int64_t lo_, int64_t hi_) : nt(nt_), lo(lo_), hi(hi_), filled(lo_) {}
  void reach(int64_t b) {  // bucket b (lo <= b < hi) is emptied
    if (b < filled) return;
    const int64_t to = std::min(hi, std::max(b + 1, filled + kFillStep));
    std::fill(nt + kBucketWords * filled, nt + kBucketWords * to, int64_t(-1));
    filled = to;
  }
  void finish() { reach(hi - 1); }
  // (key, s) in the first empty lane from bucket tb (lo <= tb) on, probing [tb, hi) only; false
  // when the path leaves the region (the caller defers the key)
  bool place(int64_t key, int32_t s, int64_t tb) {
    for (; tb < hi; ++tb) {
      reach(tb);
      int32_t* ts = bucket_states(nt, tb);
      const unsigned empty = lane_mask_eq(ts, kEmpty);
      if (empty) {
        const int l = lowest_bit(empty);
        ts[l] = s;
        bucket_keys(nt, tb)[l] = key;
        return true;
      }
    }
    return false;
  }
};

// Home buckets are the high word of mix64(key) * buckets, monotone in mix64(key) at every bucket
// count, so the old buckets [ob_p, ob_p+1) of piece p hold (up to the few displaced across its
// ends) the keys whose new home lies in the region [ob_p * nnb / old_nb, ob_p+1 * nnb / old_nb) of
// the new table, and reading them in order writes the region nearly in order. Each piece owns its
// region: it empties it progressively just ahead of its writes (the new table is not filled with
// -1 in a pass of its own) and reads or writes no bucket outside it, so pieces share no slot
// and need no atomics; a key whose probe path starts or ends outside its piece's region
// (displaced across a piece's end, or at the table's wrap-around) is kept aside and placed by
// one thread after the pieces, probing the whole table. Every key sits on its own probe path
// with no empty slot before it (slots only fill), the map a serial insert gives.
// Measured against the earlier rehash (a compare-and-swap per key, the new table filled with -1
// first, a branch per lane), 2 threads, same process: 1M ids 9.6 -> 7.0 ms, 3M ids 47.6 -> 36.8 ms
// (medians of 8; most of the rest is the page faults of the new table).
std::tuple<at::Tensor, at::Tensor> rehash_cpu(const at::Tensor& table, const at::Tensor& meta,
                                              int64_t new_capacity) {
  const char* op = kOpRehash;
  check_table_meta(op, table, meta);
  const int64_t* m = meta.data_ptr<int64_t>();
  check_meta_values(op, m, table_capacity(table), m[kFreeCount]);
  check_new_capacity(op, new_capacity, m);
  const int64_t old_nb = table.size(0), nnb = buckets_for(new_capacity);
  auto out = at::empty({nnb, kBucketWords}, table.options());  // emptied piece by piece
  int64_t* nt = out.data_ptr<int64_t>();
  const int64_t* t = table.data_ptr<int64_t>();
  const int64_t pieces =
      std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), old_nb / kBucketGrain));
  auto old_begin = [&](int64_t p) { return old_nb * p / pieces; };
  auto region_begin = [&](int64_t p) {
    return p == pieces ? nnb
                       : static_cast<int64_t>(static_cast<unsigned __int128>(old_begin(p)) * nnb / old_nb);
  };
  std::vector<std::vector<Deferred>> deferred(pieces);
  std::vector<int64_t> live_of(pieces, 0), bad_of(pieces, 0);
  at::parallel_for(0, pieces, 1, [&](int64_t pb, int64_t pe) {
    for (int64_t p = pb; p < pe; ++p) {
      RehashRegion region(nt, region_begin(p), region_begin(p + 1));
      std::vector<Deferred>& aside = deferred[p];
      int64_t cnt = 0, nbad = 0;
      for (int64_t ob = old_begin(p); ob < old_begin(p + 1); ++ob) {
        const int32_t* st = bucket_states(t, ob);
        const int64_t* ks = bucket_keys(t, ob);
        constexpr unsigned kAll = (1u << kLanes) - 1;
        unsigned live = ~lane_mask_lt(st, 0) & kAll;
        nbad += __builtin_popcount(lane_mask_lt(st, kTombstone));
        cnt += __builtin_popcount(live);
        for (; live; live &= live - 1) {
          const int l = lowest_bit(live);
          const int64_t key = ks[l];
          const int64_t h = home_bucket(key, nnb);
          if (h < region.lo || !region.place(key, st[l], h)) aside.push_back(Deferred{key, st[l]});
        }
      }
      region.finish();
      live_of[p] = cnt;
      bad_of[p] = nbad;
    }
  });
  int64_t live = 0, bad = 0;
  for (int64_t p = 0; p < pieces; ++p) live += live_of[p], bad += bad_of[p];
  check_rehash_counts(op, bad, live, m[kSize]);
  // the keys kept aside, by one thread (every region emptied by now): from the home bucket on,
  // wrapping around
  RehashRegion whole(nt, 0, nnb);
  whole.filled = nnb;
  for (const auto& aside : deferred) {
    for (const Deferred& d : aside) {
      const int64_t h = home_bucket(d.key, nnb);
      TORCH_CHECK(whole.place(d.key, d.state, h) || whole.place(d.key, d.state, 0), op,
                  ": inconsistent state: no empty slot left for ", live, " ids in ", table_capacity(out),
                  " slots");
    }
  }
  auto new_meta = meta.clone();
  new_meta.data_ptr<int64_t>()[kTombstones] = 0;
  return {out, new_meta};
}

// ---------------------------------------------------------------------------------- insert_new
// id_map_insert_new(table!, meta!, free_rows, ids) -> (rows, ok): find_or_insert of a batch the
// caller expects to hold only new, distinct ids (a growing table's batch, IdMap expect_new).
// When it does, the map and rows end as find_or_insert leaves them (the k-th id gets
// row_for_new(k): every id is a first occurrence) and ok is true; when some id is already stored
// or repeats, every slot this call claimed is emptied again -- the table is bit for bit as
// before, meta untouched -- and ok is false (the caller then runs find_or_insert).
//
// Why: find_or_insert claims a slot per id by compare-and-swap with a pending state, then numbers
// the new ids in batch order and writes each row into its slot (a second random access per new
// id). Here each thread owns a contiguous range of buckets and inserts the ids whose home bucket
// lies in it (ids sorted by owner with a counting sort): plain stores, the row written with the
// key, and a repeat or a stored id is seen on its own probe path (both copies of an id share
// their home bucket, so their owner). Ids whose probe path leaves the owner's range are placed by
// one thread after the ranges, with the same checks.
constexpr const char* kOpInsertNew = "recis_compat::id_map_insert_new";

namespace {
// Place key (row r) in the first empty lane from bucket b on, probing [b, hi) without wrapping:
// 1 placed (*handle set), 0 the path left [b, hi), -1 the key is live on the path.
inline int place_new(int64_t* t, int64_t key, int32_t r, int64_t b, int64_t hi, int64_t* handle) {
  constexpr unsigned kAll = (1u << kLanes) - 1;
  for (; b < hi; ++b) {
    int64_t* ks = bucket_keys(t, b);
    int32_t* st = bucket_states(t, b);
    if (key_lanes(ks, key) & ~lane_mask_lt(st, 0) & kAll) return -1;
    const unsigned empty = lane_mask_eq(st, kEmpty);
    if (empty) {
      const int l = lowest_bit(empty);
      ks[l] = key;
      st[l] = r;
      *handle = state_handle(b, l);
      return 1;
    }
  }
  return 0;
}
}  // namespace

std::tuple<at::Tensor, at::Tensor> insert_new_cpu(at::Tensor& table, at::Tensor& meta, const at::Tensor& free_rows,
                                                  const at::Tensor& ids_in) {
  const char* op = kOpInsertNew;
  const auto ids = checked_insert_ids(op, table, meta, free_rows, ids_in);
  const int64_t n = ids.numel();
  const int64_t nb = table.size(0);
  int64_t* m = meta.data_ptr<int64_t>();
  auto rows_t = at::empty({n}, ids.options());
  auto ok_t = at::ones({}, ids.options().dtype(at::kBool));
  if (n == 0) return {rows_t, ok_t};
  int64_t* t = table.data_ptr<int64_t>();
  int32_t* sw = state_words(t);
  const int64_t* id = ids.data_ptr<int64_t>();
  int64_t* rows = rows_t.data_ptr<int64_t>();
  const int64_t fc = m[kFreeCount], next_row = m[kNextRow];
  const int64_t* fr = free_rows.data_ptr<int64_t>();
  const int64_t pieces = std::max<int64_t>(
      1, std::min<int64_t>(at::get_num_threads(), std::min<int64_t>(nb / kBucketGrain, n / kGrain)));
  std::vector<int64_t> bounds(pieces + 1);  // piece p owns buckets [bounds[p], bounds[p + 1])
  for (int64_t p = 0; p <= pieces; ++p)
    bounds[p] = static_cast<int64_t>(static_cast<unsigned __int128>(nb) * p / pieces);
  // 1: each piece walks the whole batch, keeps the ids whose home bucket is in its range (batch
  // order) and inserts them there. Walking the batch in every piece costs a hash per id and
  // piece, less than sorting the ids by owner through arrays the threads share (measured).
  // claimed[p]: the state handles piece p claimed; aside[p]: positions of its ids whose probe path
  // left the range (placed in 2)
  std::atomic<bool> failed{false};
  std::vector<std::vector<int64_t>> claimed(pieces), aside(pieces);
  at::parallel_for(0, pieces, 1, [&](int64_t pb, int64_t pe) {
    for (int64_t p = pb; p < pe; ++p) {
      const int64_t lo = bounds[p], hi = bounds[p + 1];
      std::vector<int64_t> pos, hb, handles, late;  // this thread's own (no shared cache lines)
      // kept without a branch on the owner (taken for half the ids at random with 2 pieces: a
      // misprediction per other id); the room check is a branch always taken the same way
      int64_t cap = n / pieces + n / (4 * pieces) + 64, cnt = 0;
      pos.resize(cap);
      hb.resize(cap);
      for (int64_t i = 0; i < n; ++i) {
        const int64_t h = home_bucket(id[i], nb);
        pos[cnt] = i;
        hb[cnt] = h;
        cnt += static_cast<int64_t>((h >= lo) & (h < hi));
        if (cnt == cap) {
          cap *= 2;
          pos.resize(cap);
          hb.resize(cap);
        }
      }
      handles.reserve(cnt);
      for (int64_t j = 0; j < cnt; ++j) {
        if (failed.load(std::memory_order_relaxed)) break;  // another piece saw a stored or repeated id
        if (j + kPrefetch < cnt) prefetch_bucket(t, hb[j + kPrefetch]);
        const int64_t i = pos[j];
        int64_t handle = -1;
        const int got = place_new(t, id[i], static_cast<int32_t>(row_for_new(i, fr, fc, next_row)), hb[j], hi,
                                  &handle);
        if (got < 0) {
          failed.store(true, std::memory_order_relaxed);
          break;
        }
        if (got == 0)
          late.push_back(i);
        else
          handles.push_back(handle);
      }
      claimed[p] = std::move(handles);
      aside[p] = std::move(late);
    }
  });
  // 2: the ids whose path left their owner's range, by one thread, wrapping around
  std::vector<int64_t> placed_late;
  if (!failed.load()) {
    for (const auto& late : aside) {
      for (const int64_t i : late) {
        const int32_t r = static_cast<int32_t>(row_for_new(i, fr, fc, next_row));
        const int64_t h = home_bucket(id[i], nb);
        int64_t handle = -1;
        int got = place_new(t, id[i], r, h, nb, &handle);
        if (got == 0) got = place_new(t, id[i], r, 0, h, &handle);
        TORCH_CHECK(got != 0, op, ": inconsistent state: no empty slot on the probe path of id ", id[i]);
        if (got < 0) {
          failed.store(true);
          break;
        }
        placed_late.push_back(handle);
      }
      if (failed.load()) break;
    }
  }
  if (failed.load()) {  // a stored or repeated id: every claimed slot empty again, key word too
    // (an empty slot's key is -1, as the rehash and a new table leave it: the table is then
    // bit for bit what it was)
    const auto empty_again = [&](int64_t h) {
      const int64_t b = h / kBucketStateWords;
      sw[h] = kEmpty;
      bucket_keys(t, b)[h - kBucketStateWords * b - kStateOffset] = -1;
    };
    at::parallel_for(0, pieces, 1, [&](int64_t pb, int64_t pe) {
      for (int64_t p = pb; p < pe; ++p)
        for (const int64_t h : claimed[p]) empty_again(h);
    });
    for (const int64_t h : placed_late) empty_again(h);
    ok_t.fill_(false);
    return {rows_t, ok_t};
  }
  // every id new: the k-th gets row_for_new(k), written in batch order (not from the pieces:
  // threads writing the scattered positions of one array shared its cache lines)
  at::parallel_for(0, n, kGrain, [&](int64_t b, int64_t end) {
    for (int64_t i = b; i < end; ++i) rows[i] = row_for_new(i, fr, fc, next_row);
  });
  m[kSize] += n;
  m[kNextRow] += std::max<int64_t>(0, n - fc);
  m[kFreeCount] = std::max<int64_t>(0, fc - n);
  return {rows_t, ok_t};
}

// ---------------------------------------------------------------------------------- export
std::tuple<at::Tensor, at::Tensor> export_cpu(const at::Tensor& table, const at::Tensor& meta) {
  const char* op = kOpExport;
  check_table_meta(op, table, meta);
  const int64_t* m = meta.data_ptr<int64_t>();
  check_meta_values(op, m, table_capacity(table), m[kFreeCount]);
  const int64_t nb = table.size(0), next_row = m[kNextRow], size = m[kSize];
  const int64_t* t = table.data_ptr<int64_t>();
  std::vector<int64_t> key_by_row(next_row);
  std::vector<uint8_t> present(next_row, 0);
  std::atomic<int64_t> live{0}, bad{0};
  at::parallel_for(0, nb, kBucketGrain, [&](int64_t b, int64_t end) {
    int64_t cnt = 0, nbad = 0;
    for (int64_t bk = b; bk < end; ++bk) {
      const int32_t* st = bucket_states(t, bk);
      for (int l = 0; l < static_cast<int>(kLanes); ++l) {
        const int64_t s = st[l];
        if (s < 0) continue;
        if (s >= next_row) {
          ++nbad;
          continue;
        }
        key_by_row[s] = bucket_keys(t, bk)[l];
        present[s] = 1;  // a row held twice is caught by the count below
        ++cnt;
      }
    }
    live += cnt;
    bad += nbad;
  });
  check_export_counts(op, bad.load(), live.load(), next_row, size);
  auto ids = at::empty({size}, table.options());
  auto rows = at::empty({size}, table.options());
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
  m.def("id_map_insert_new(Tensor(a!) table, Tensor(b!) meta, Tensor free_rows, Tensor ids) -> (Tensor, Tensor)");
  m.def("id_map_export(Tensor table, Tensor meta) -> (Tensor, Tensor)");
  m.def("unique_inverse(Tensor ids) -> (Tensor, Tensor)");
  m.def("ids_partition(Tensor ids, int world_size) -> (Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(recis_compat, CPU, m) {
  m.impl("id_map_find", &idmap::find_cpu);
  m.impl("id_map_find_or_insert", &idmap::find_or_insert_cpu);
  m.impl("id_map_delete", &idmap::delete_cpu);
  m.impl("id_map_rehash", &idmap::rehash_cpu);
  m.impl("id_map_insert_new", &idmap::insert_new_cpu);
  m.impl("id_map_export", &idmap::export_cpu);
  m.impl("unique_inverse", &idmap::unique_inverse_cpu);
  m.impl("ids_partition", &idmap::ids_partition_cpu);
}

}  // namespace recis_compat
