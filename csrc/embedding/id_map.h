// The dynamic id -> row map shared by id_map.cpp (CPU) and id_map.cu (CUDA).
//
// An open-addressing hash table (linear probing over 64-byte buckets) whose whole state lives in
// three tensors, so it can be saved, moved between devices and later sharded:
//
//   table     int64 [num_buckets, 8]   one 64-byte bucket (one cache line) per row, 5 slots each:
//               words 0..4   the int64 keys of lanes 0..4
//               words 5..7   read as int32 [6]: the states of lanes 0..4, then one unused word
//             slot j = lane j % 5 of bucket j / 5; capacity = 5 * num_buckets slots (12.8 bytes
//             per slot). A slot's state:
//               state >= 0   occupied, the key's row (rows < 2^31 - 1 per table / shard)
//               state == -1  empty (the key word is meaningless)
//               state == -2  tombstone (deleted; probing continues past it)
//             A key's home bucket is the high word of mix64(key) * num_buckets (multiply-shift:
//             any bucket count, so the map can grow x1.5); its probe sequence is lanes 0..4 of the
//             home bucket, then of the next bucket, ... wrapping around: linear probing over
//             slots whose home slot is lane 0 of the home bucket. A hit is found in the home
//             bucket most of the time, so one cache line and five compares (no branch per slot).
//             No key value is reserved: every int64 id (INT64_MIN, -1, ...) is a valid key.
//             Keys are only ever accessed as int64 and states as int32 (never the same bytes as
//             both); the tensor's data must be 8-byte aligned (checked).
//   meta      int64 [4]   = (size, next_row, tombstones, free_count)
//               size        live ids;           next_row  rows ever handed out (high-water mark)
//               tombstones  deleted slots;      free_count rows on the free stack
//             invariant: next_row == size + free_count; size + tombstones < capacity
//   free_rows int64 [>= free_count]   stack of freed rows, free_rows[free_count - 1] is the top
//
// Two transient states exist only inside one find_or_insert / delete call:
//   -3          locked: a thread claimed the empty slot and is writing the key
//   <= -4       pending: encodes the smallest batch position p (= -4 - state) that claimed it,
//               so one call takes at most kMaxBatch ids
//
// Earlier layouts: int64 [capacity, 2] (key, state) with a power-of-two capacity (16 bytes per
// slot), then int32 [capacity, 3] (key_lo, key_hi, state) with any capacity (12 bytes per slot,
// a key straddling cache lines); recis_compat/backend/id_map.py converts both on load.
#pragma once
#include <algorithm>
#include <cstdint>

#include "common.h"

#if defined(__SSE2__) && !defined(__CUDA_ARCH__)
#include <emmintrin.h>
#endif

namespace recis_compat {
namespace idmap {

constexpr int32_t kEmpty = -1;
constexpr int32_t kTombstone = -2;
constexpr int32_t kLocked = -3;
constexpr int32_t kPendingBase = -4;
constexpr int64_t kLanes = 5;                          // slots per bucket
constexpr int64_t kBucketWords = 8;                    // int64 words per bucket (64 bytes)
constexpr int64_t kBucketStateWords = 2 * kBucketWords;  // the bucket as int32 words
constexpr int64_t kStateOffset = 2 * kLanes;           // int32 word of lane 0's state in a bucket
constexpr int64_t kMaxRows = INT32_MAX;                // rows are < kMaxRows
constexpr int64_t kMaxBatch = int64_t(INT32_MAX) + kPendingBase;  // ids per call (pending codes)

enum MetaField : int64_t { kSize = 0, kNextRow = 1, kTombstones = 2, kFreeCount = 3, kMetaLen = 4 };

RECIS_HD int32_t encode_pending(int64_t pos) { return static_cast<int32_t>(kPendingBase - pos); }
RECIS_HD int64_t decode_pending(int32_t state) { return int64_t(kPendingBase) - state; }
RECIS_HD bool is_pending(int32_t state) { return state <= kPendingBase; }

// splitmix64's finalizer: a bijective 64-bit mixer with full avalanche, so sequential ids and ids
// that differ only in their top bits (the 12-bit child tag) land on unrelated slots.
RECIS_HD uint64_t mix64(uint64_t x) {
  x ^= x >> 30;
  x *= 0xbf58476d1ce4e5b9ULL;
  x ^= x >> 27;
  x *= 0x94d049bb133111ebULL;
  x ^= x >> 31;
  return x;
}

// hash_range(key, n) in [0, n): the high 64 bits of mix64(key) * n (multiply-shift range reduction;
// monotone in mix64(key) for every n).
RECIS_HD int64_t hash_range(int64_t key, int64_t n) {
  const uint64_t h = mix64(static_cast<uint64_t>(key));
#if defined(__CUDA_ARCH__)
  return static_cast<int64_t>(__umul64hi(h, static_cast<uint64_t>(n)));
#else
  return static_cast<int64_t>((static_cast<unsigned __int128>(h) * static_cast<uint64_t>(n)) >> 64);
#endif
}

RECIS_HD int64_t home_bucket(int64_t key, int64_t num_buckets) { return hash_range(key, num_buckets); }
RECIS_HD int64_t next_bucket(int64_t b, int64_t num_buckets) { return b + 1 == num_buckets ? 0 : b + 1; }

// Bucket b's words: keys (int64 [5]) and states (int32 [5]).
RECIS_HD int64_t* bucket_keys(int64_t* t, int64_t b) { return t + kBucketWords * b; }
RECIS_HD const int64_t* bucket_keys(const int64_t* t, int64_t b) { return t + kBucketWords * b; }
RECIS_HD int32_t* bucket_states(int64_t* t, int64_t b) {
  return reinterpret_cast<int32_t*>(t + kBucketWords * b) + kStateOffset;
}
RECIS_HD const int32_t* bucket_states(const int64_t* t, int64_t b) {
  return reinterpret_cast<const int32_t*>(t + kBucketWords * b) + kStateOffset;
}

// A slot "handle": the index of its state among the table's int32 words (what find_or_insert
// and delete remember per id between passes, so no division by 5 is needed to reach the state).
RECIS_HD int64_t state_handle(int64_t b, int64_t lane) { return kBucketStateWords * b + kStateOffset + lane; }
RECIS_HD int32_t* state_words(int64_t* t) { return reinterpret_cast<int32_t*>(t); }
RECIS_HD const int32_t* state_words(const int64_t* t) { return reinterpret_cast<const int32_t*>(t); }

// Lane scan of one bucket for `key` (all five lanes compared, no branch per lane):
//   0..4        the lane holding key as a live slot (state >= 0)
//   kLaneAbsent no such lane and the bucket has an empty slot: key is not in the map
//   kLaneNext   neither: the probe continues in the next bucket
// and, when live_lanes is given, the mask of the bucket's live lanes (bit l: lane l's state >= 0).
constexpr int kLaneAbsent = -1;
constexpr int kLaneNext = static_cast<int>(kLanes);

RECIS_HD int lowest_bit(unsigned x) {
#if defined(__CUDA_ARCH__)
  return __ffs(static_cast<int>(x)) - 1;
#else
  return __builtin_ctz(x);
#endif
}

// A key is live in at most one slot (an insert claims the first empty slot of its probe path only
// after finding no live copy on it; delete tombstones the live one), so a live lane holding the
// key is the answer wherever it sits in the bucket.
RECIS_HD int scan_result(unsigned match, unsigned empty) {
  if (match) return lowest_bit(match);
  return empty ? kLaneAbsent : kLaneNext;
}

#if defined(__SSE2__) && !defined(__CUDA_ARCH__)
// x86-64 (SSE2 is its baseline): the four first lanes compared in two vectors. Measured: the
// scalar form below costs ~85 instructions per bucket and made an L2-resident find
// instruction-bound (14 ns per id); this one ~30.
//
// key_lanes: mask of the lanes whose key equals `key`, states not looked at (a hit's lane is then
// checked live by the caller: the common case of a lookup costs the key compares and one state
// load). scan_bucket: the same compares, masked by the live lanes, plus the empty lanes.
inline unsigned key_lanes(const int64_t* keys, int64_t key) {
  const __m128i k = _mm_set1_epi64x(key);
  const __m128 c01 = _mm_castsi128_ps(_mm_cmpeq_epi32(_mm_load_si128(reinterpret_cast<const __m128i*>(keys)), k));
  const __m128 c23 =
      _mm_castsi128_ps(_mm_cmpeq_epi32(_mm_load_si128(reinterpret_cast<const __m128i*>(keys + 2)), k));
  const __m128 eq = _mm_and_ps(_mm_shuffle_ps(c01, c23, _MM_SHUFFLE(2, 0, 2, 0)),
                               _mm_shuffle_ps(c01, c23, _MM_SHUFFLE(3, 1, 3, 1)));
  return static_cast<unsigned>(_mm_movemask_ps(eq)) | (static_cast<unsigned>(keys[4] == key) << 4);
}
inline int scan_bucket(const int64_t* keys, const int32_t* states, int64_t key, unsigned* live_lanes = nullptr) {
  const __m128i st = _mm_loadu_si128(reinterpret_cast<const __m128i*>(states));
  const int32_t s4 = states[4];
  const unsigned live = ~(static_cast<unsigned>(_mm_movemask_ps(_mm_castsi128_ps(st))) |
                          (static_cast<unsigned>(s4 < 0) << 4));
  if (live_lanes) *live_lanes = live & 0x1fu;
  const unsigned match = key_lanes(keys, key) & live;
  const unsigned empty =
      static_cast<unsigned>(_mm_movemask_ps(_mm_castsi128_ps(_mm_cmpeq_epi32(st, _mm_set1_epi32(kEmpty))))) |
      (static_cast<unsigned>(s4 == kEmpty) << 4);
  return scan_result(match, empty);
}
#else
RECIS_HD unsigned key_lanes(const int64_t* keys, int64_t key) {
  unsigned m = 0;
  for (int l = 0; l < static_cast<int>(kLanes); ++l) m |= static_cast<unsigned>(keys[l] == key) << l;
  return m;
}

RECIS_HD int scan_bucket(const int64_t* keys, const int32_t* states, int64_t key, unsigned* live_lanes = nullptr) {
  unsigned match = 0, empty = 0, live = 0;
#if defined(__CUDA_ARCH__)
#pragma unroll
#endif
  for (int l = 0; l < static_cast<int>(kLanes); ++l) {
    match |= static_cast<unsigned>((keys[l] == key) & (states[l] >= 0)) << l;
    empty |= static_cast<unsigned>(states[l] == kEmpty) << l;
    live |= static_cast<unsigned>(states[l] >= 0) << l;
  }
  if (live_lanes) *live_lanes = live;
  return scan_result(match, empty);
}
#endif

// Row handed to the k-th new id of a batch (k = 0, 1, ...): free-stack rows first, top first,
// then fresh rows from next_row.
RECIS_HD int64_t row_for_new(int64_t k, const int64_t* free_rows, int64_t free_count, int64_t next_row) {
  return k < free_count ? free_rows[free_count - 1 - k] : next_row + (k - free_count);
}

constexpr const char* kOpFind = "recis_compat::id_map_find";
constexpr const char* kOpFindOrInsert = "recis_compat::id_map_find_or_insert";
constexpr const char* kOpDelete = "recis_compat::id_map_delete";
constexpr const char* kOpRehash = "recis_compat::id_map_rehash";
constexpr const char* kOpExport = "recis_compat::id_map_export";
constexpr const char* kOpUnique = "recis_compat::unique_inverse";
constexpr const char* kOpPartition = "recis_compat::ids_partition";

// RecIS's row partition rule (recis_compat/backend/slices.py): the id space is cut into 65536
// slices by id & 0xFFFF; rank r of `world` owns a contiguous slice range, the first
// 65536 % world ranges holding one extra slice. Requires 1 <= world <= 65536.
constexpr int64_t kSliceCount = 65536;
RECIS_HD int64_t owner_rank(int64_t id, int64_t world) {
  const int64_t s = id & (kSliceCount - 1);
  const int64_t per = kSliceCount / world, extra = kSliceCount % world;
  const int64_t big = extra * (per + 1);  // slices held by the ranks with one extra
  return s < big ? s / (per + 1) : extra + (s - big) / per;
}

inline void check_partition_args(const char* op, const at::Tensor& ids, int64_t world) {
  TORCH_CHECK(ids.scalar_type() == at::kLong && ids.dim() == 1, op, ": ids must be a 1-D int64 tensor, got ",
              ids.scalar_type(), " of shape ", ids.sizes());
  TORCH_CHECK(world >= 1 && world <= kSliceCount, op, ": world_size must be in [1, ", kSliceCount, "], got ",
              world);
}

// Shape / dtype / device checks of the state tensors (no data reads: safe on every device).
inline void check_table(const char* op, const at::Tensor& table) {
  TORCH_CHECK(table.scalar_type() == at::kLong && table.dim() == 2 && table.size(1) == kBucketWords, op,
              ": 'table' must be int64 [num_buckets, 8] (64-byte buckets of 5 keys and 5 int32 "
              "states), got ", table.scalar_type(), " of shape ", table.sizes(),
              " (int64 [capacity, 2] and int32 [capacity, 3] are earlier layouts: "
              "IdMap.load_state_dict converts them)");
  TORCH_CHECK(table.size(0) >= 1, op, ": 'table' must have at least one bucket, got shape ", table.sizes());
  TORCH_CHECK(table.is_contiguous(), op, ": 'table' must be contiguous");
  TORCH_CHECK(reinterpret_cast<uintptr_t>(table.data_ptr()) % sizeof(int64_t) == 0, op,
              ": 'table' data must be 8-byte aligned");
}

inline void check_meta(const char* op, const at::Tensor& meta, const at::Tensor& table) {
  TORCH_CHECK(meta.scalar_type() == at::kLong && meta.dim() == 1 && meta.numel() == kMetaLen, op,
              ": 'meta' must be int64 [4] (size, next_row, tombstones, free_count), got ",
              meta.scalar_type(), " of shape ", meta.sizes());
  TORCH_CHECK(meta.is_contiguous(), op, ": 'meta' must be contiguous");
  TORCH_CHECK(meta.device() == table.device(), op, ": 'meta' is on ", meta.device(),
              " but 'table' is on ", table.device());
}

inline void check_free_rows(const char* op, const at::Tensor& free_rows, const at::Tensor& table) {
  TORCH_CHECK(free_rows.scalar_type() == at::kLong && free_rows.dim() == 1, op,
              ": 'free_rows' must be a 1-D int64 tensor, got ", free_rows.scalar_type(), " of shape ",
              free_rows.sizes());
  TORCH_CHECK(free_rows.is_contiguous(), op, ": 'free_rows' must be contiguous");
  TORCH_CHECK(free_rows.device() == table.device(), op, ": 'free_rows' is on ", free_rows.device(),
              " but 'table' is on ", table.device());
}

inline void check_ids(const char* op, const at::Tensor& ids, const at::Tensor& table) {
  TORCH_CHECK(ids.scalar_type() == at::kLong, op, ": 'ids' must be an int64 tensor of ids, got ",
              ids.scalar_type());
  TORCH_CHECK(ids.dim() == 1, op, ": 'ids' must be 1-D, got shape ", ids.sizes());
  TORCH_CHECK(ids.device() == table.device(), op, ": 'ids' is on ", ids.device(),
              " but the table is on ", table.device());
}

// Value checks of meta (read on the host).
inline void check_meta_values(const char* op, const int64_t* m, int64_t capacity, int64_t free_len) {
  TORCH_CHECK(m[kSize] >= 0 && m[kNextRow] >= 0 && m[kTombstones] >= 0 && m[kFreeCount] >= 0, op,
              ": inconsistent state: negative meta (size=", m[kSize], ", next_row=", m[kNextRow],
              ", tombstones=", m[kTombstones], ", free_count=", m[kFreeCount], ")");
  TORCH_CHECK(m[kNextRow] == m[kSize] + m[kFreeCount], op,
              ": inconsistent state: next_row (", m[kNextRow], ") != size (", m[kSize],
              ") + free_count (", m[kFreeCount], ")");
  TORCH_CHECK(m[kSize] + m[kTombstones] < capacity, op, ": inconsistent state: size (", m[kSize],
              ") + tombstones (", m[kTombstones], ") must be below the capacity (", capacity, ")");
  TORCH_CHECK(free_len >= m[kFreeCount], op, ": inconsistent state: free_count (", m[kFreeCount],
              ") exceeds free_rows' length (", free_len, ")");
}


// check_table + check_meta (+ check_free_rows): the shape checks of the whole state.
inline void check_table_meta(const char* op, const at::Tensor& table, const at::Tensor& meta) {
  check_table(op, table);
  check_meta(op, meta, table);
}

inline void check_state_shapes(const char* op, const at::Tensor& table, const at::Tensor& meta,
                               const at::Tensor& free_rows) {
  check_table_meta(op, table, meta);
  check_free_rows(op, free_rows, table);
}

// find_or_insert: a batch of n ids must fit below the capacity, whatever its new ids.
inline void check_batch_fits(const char* op, const int64_t* m, int64_t n, int64_t cap) {
  TORCH_CHECK(n <= kMaxBatch, op, ": a batch holds at most ", kMaxBatch, " ids, got ", n,
              "; split it");
  TORCH_CHECK(m[kNextRow] + std::max<int64_t>(0, n - m[kFreeCount]) <= kMaxRows, op, ": rows are int32: next_row (", m[kNextRow], ") + the batch (", n,
              ") may pass 2^31 - 1 rows in one table or shard; shard the table over more ranks");
  TORCH_CHECK(m[kSize] + m[kTombstones] + n < cap, op, ": a batch of ", n,
              " ids may not fit: size (", m[kSize], ") + tombstones (", m[kTombstones],
              ") + batch must stay below the capacity (", cap, "); grow the table with "
              "id_map_rehash first (IdMap does this automatically)");
}

// delete: free_rows must have room for every row the batch may free.
inline void check_free_rows_room(const char* op, const int64_t* m, int64_t free_len, int64_t n) {
  const int64_t fc = m[kFreeCount];
  TORCH_CHECK(free_len >= std::min(m[kNextRow], fc + n), op, ": 'free_rows' (length ",
              free_len, ") must hold min(next_row, free_count + len(ids)) = ",
              std::min(m[kNextRow], fc + n), " rows; grow it first (IdMap does this automatically)");
}

// Slots of a table (5 per bucket), and the buckets that hold at least `capacity` slots.
inline int64_t table_capacity(const at::Tensor& table) { return kLanes * table.size(0); }
inline int64_t buckets_for(int64_t capacity) { return (capacity + kLanes - 1) / kLanes; }

inline void check_new_capacity(const char* op, int64_t new_capacity, const int64_t* m) {
  TORCH_CHECK(new_capacity >= 2, op, ": new_capacity must be >= 2, got ", new_capacity);
  TORCH_CHECK(new_capacity > m[kSize], op, ": new_capacity (", new_capacity,
              ") must exceed the number of ids (", m[kSize], ")");
}

// rehash: counts of the slots seen in the old table (transient states, live ids).
inline void check_rehash_counts(const char* op, int64_t bad, int64_t live, int64_t size) {
  TORCH_CHECK(bad == 0, op, ": inconsistent state: ", bad, " slots hold a transient (locked/pending) state");
  TORCH_CHECK(live == size, op, ": inconsistent state: the table holds ", live, " ids but meta says size=", size);
}

// export: counts of the slots seen (rows >= next_row, live ids).
inline void check_export_counts(const char* op, int64_t bad, int64_t live, int64_t next_row, int64_t size) {
  TORCH_CHECK(bad == 0, op, ": inconsistent state: ", bad, " slots hold rows >= next_row (", next_row, ")");
  TORCH_CHECK(live == size, op, ": inconsistent state: the table holds ", live, " ids but meta says size=", size);
}

}  // namespace idmap
}  // namespace recis_compat
