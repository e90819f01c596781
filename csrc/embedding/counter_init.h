// Counter-based uniforms for per-id initial rows, shared by counter_init.cpp (CPU) and
// counter_init.cu (CUDA).
//
//   u(seed, id, j) = ((mix(key + j * kColumnStep) >> 11) + 0.5) * 2^-53,
//   key = mix(mix(id) ^ seed),   mix = SplitMix64 (increment, then the finalizer)
// A pure function of (seed, id, column j) in the open interval (0, 1): the initial value of a
// row must not depend on when or on which rank the row was created (resume, resharding).
// recis_compat/nn/initializers.py holds the same function in torch ops (the reference).
#pragma once
#include <cstdint>

#include "common.h"

namespace recis_compat {
namespace counter_init {

constexpr uint64_t kGolden = 0x9E3779B97F4A7C15ULL;
constexpr uint64_t kColumnStep = 0xD1B54A32D192ED03ULL;

RECIS_HD uint64_t splitmix(uint64_t x) {
  x += kGolden;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ULL;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBULL;
  return x ^ (x >> 31);
}

RECIS_HD uint64_t row_key(int64_t id, int64_t seed) {
  return splitmix(splitmix(static_cast<uint64_t>(id)) ^ static_cast<uint64_t>(seed));
}

RECIS_HD double uniform(uint64_t key, int64_t column) {
  const uint64_t bits = splitmix(key + static_cast<uint64_t>(column) * kColumnStep);
  return (static_cast<double>(bits >> 11) + 0.5) * (1.0 / 9007199254740992.0);  // 2^53
}

}  // namespace counter_init
}  // namespace recis_compat
