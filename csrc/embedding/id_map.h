// The dynamic id -> row map shared by id_map.cpp (CPU) and id_map.cu (CUDA).
//
// An open-addressing hash table (linear probing) whose whole state lives in three tensors, so it
// can be saved, moved between devices and later sharded:
//
//   table     int32 [capacity, 3]   slot j = (key_lo, key_hi, state): 12 bytes per slot
//               key         the int64 id, split in its low and high 32-bit words (so slots
//                           pack at 12 bytes; read as two 32-bit words on CUDA, which faults on
//                           misaligned 8-byte loads)
//               state >= 0   occupied, the key's row (rows < 2^31 - 1 per table / shard)
//               state == -1  empty (the key words are meaningless)
//               state == -2  tombstone (deleted; probing continues past it)
//             capacity is any integer >= 2: an id's home slot is the high word of
//             mix64(id) * capacity (a multiply-shift range reduction), so the map can grow x1.5.
//             Key and state sit side by side so a probe touches one cache line (most of the time).
//             No key value is reserved: every int64 id (INT64_MIN, -1, ...) is a valid key.
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
// Earlier versions used int64 [capacity, 2] (key, state) with a power-of-two capacity (16 bytes
// per slot); recis_compat/backend/id_map.py converts such a state on load.
#pragma once
#include <algorithm>
#include <cstdint>

#include "common.h"

namespace recis_compat {
namespace idmap {

constexpr int32_t kEmpty = -1;
constexpr int32_t kTombstone = -2;
constexpr int32_t kLocked = -3;
constexpr int32_t kPendingBase = -4;
constexpr int64_t kSlotWords = 3;                      // int32 words per slot
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

// Home slot in [0, capacity): the high 64 bits of mix64(key) * capacity.
RECIS_HD int64_t home_slot(int64_t key, int64_t capacity) {
  const uint64_t h = mix64(static_cast<uint64_t>(key));
#if defined(__CUDA_ARCH__)
  return static_cast<int64_t>(__umul64hi(h, static_cast<uint64_t>(capacity)));
#else
  return static_cast<int64_t>((static_cast<unsigned __int128>(h) * static_cast<uint64_t>(capacity)) >> 64);
#endif
}

RECIS_HD int64_t next_slot(int64_t j, int64_t capacity) { return j + 1 == capacity ? 0 : j + 1; }

// Word offsets of slot j's parts.
RECIS_HD int64_t key_word(int64_t j) { return kSlotWords * j; }
RECIS_HD int64_t state_word(int64_t j) { return kSlotWords * j + 2; }

RECIS_HD int64_t key_at(const int32_t* e, int64_t j) {
  const uint64_t lo = static_cast<uint32_t>(e[kSlotWords * j]);
  const uint64_t hi = static_cast<uint32_t>(e[kSlotWords * j + 1]);
  return static_cast<int64_t>((hi << 32) | lo);
}

RECIS_HD void set_key(int32_t* e, int64_t j, int64_t key) {
  const uint64_t k = static_cast<uint64_t>(key);
  e[kSlotWords * j] = static_cast<int32_t>(static_cast<uint32_t>(k));
  e[kSlotWords * j + 1] = static_cast<int32_t>(static_cast<uint32_t>(k >> 32));
}

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
  TORCH_CHECK(table.scalar_type() == at::kInt, op, ": 'table' must be int32 [capacity, 3] "
              "(key_lo, key_hi, state), got ", table.scalar_type(),
              " (an int64 [capacity, 2] table is the old layout: IdMap.load_state_dict converts it)");
  TORCH_CHECK(table.dim() == 2 && table.size(1) == kSlotWords, op,
              ": 'table' must have shape [capacity, 3] (key_lo, key_hi, state), got ", table.sizes());
  TORCH_CHECK(table.size(0) >= 2, op, ": 'table' capacity must be >= 2, got ", table.size(0));
  TORCH_CHECK(table.is_contiguous(), op, ": 'table' must be contiguous");
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
