// String and id hash functions RecIS uses, written from the published algorithms
// (recis-api.md Appendix A): MurmurHash64A (seed 0) and FarmHash Fingerprint64 (farmhashna
// Hash64). Header-only and host/device so the CPU kernels and the CUDA twins share one
// definition. All arithmetic is modulo 2^64; inputs are read little-endian.
#pragma once
#include <cstdint>
#include <cstring>

#include "common.h"

namespace recis_compat {
namespace hashing {

RECIS_HD uint64_t load64(const uint8_t* p) {
  uint64_t v;
  memcpy(&v, p, 8);
  return v;
}
RECIS_HD uint32_t load32(const uint8_t* p) {
  uint32_t v;
  memcpy(&v, p, 4);
  return v;
}

// ---------------------------------------------------------------- MurmurHash64A
RECIS_HD uint64_t murmur64a(const uint8_t* data, int64_t len, uint64_t seed = 0) {
  const uint64_t m = 0xc6a4a7935bd1e995ULL;
  const int r = 47;
  uint64_t h = seed ^ (static_cast<uint64_t>(len) * m);
  const int64_t words = len / 8;
  for (int64_t i = 0; i < words; ++i) {
    uint64_t k = load64(data + 8 * i);
    k *= m;
    k ^= k >> r;
    k *= m;
    h ^= k;
    h *= m;
  }
  const uint8_t* tail = data + 8 * words;
  const int rest = static_cast<int>(len & 7);
  if (rest) {
    for (int i = rest - 1; i >= 0; --i) h ^= static_cast<uint64_t>(tail[i]) << (8 * i);
    h *= m;
  }
  h ^= h >> r;
  h *= m;
  h ^= h >> r;
  return h;
}

// Hash of the 16 bytes int64_le(x) || int64_le(y): FeatureCross's id.
RECIS_HD uint64_t murmur64a_pair(int64_t x, int64_t y) {
  uint8_t buf[16];
  memcpy(buf, &x, 8);
  memcpy(buf + 8, &y, 8);
  return murmur64a(buf, 16, 0);
}

// ---------------------------------------------------------------- FarmHash Fingerprint64
constexpr uint64_t k0 = 0xc3a5c85c97cb3127ULL;
constexpr uint64_t k1 = 0xb492b66fbe98f273ULL;
constexpr uint64_t k2 = 0x9ae16a3b2f90404fULL;

RECIS_HD uint64_t rot(uint64_t v, int s) { return s == 0 ? v : (v >> s) | (v << (64 - s)); }
RECIS_HD uint64_t shift_mix(uint64_t v) { return v ^ (v >> 47); }

RECIS_HD uint64_t hash_len16(uint64_t u, uint64_t v, uint64_t mul) {
  uint64_t a = (u ^ v) * mul;
  a ^= a >> 47;
  uint64_t b = (v ^ a) * mul;
  b ^= b >> 47;
  return b * mul;
}

RECIS_HD uint64_t farm_len0to16(const uint8_t* s, uint64_t len) {
  if (len >= 8) {
    const uint64_t mul = k2 + len * 2;
    const uint64_t a = load64(s) + k2;
    const uint64_t b = load64(s + len - 8);
    const uint64_t c = rot(b, 37) * mul + a;
    const uint64_t d = (rot(a, 25) + b) * mul;
    return hash_len16(c, d, mul);
  }
  if (len >= 4) {
    const uint64_t mul = k2 + len * 2;
    const uint64_t a = load32(s);
    return hash_len16(len + (a << 3), load32(s + len - 4), mul);
  }
  if (len > 0) {
    const uint8_t a = s[0], b = s[len >> 1], c = s[len - 1];
    const uint32_t y = static_cast<uint32_t>(a) + (static_cast<uint32_t>(b) << 8);
    const uint32_t z = static_cast<uint32_t>(len) + (static_cast<uint32_t>(c) << 2);
    return shift_mix(y * k2 ^ z * k0) * k2;
  }
  return k2;
}

RECIS_HD uint64_t farm_len17to32(const uint8_t* s, uint64_t len) {
  const uint64_t mul = k2 + len * 2;
  const uint64_t a = load64(s) * k1;
  const uint64_t b = load64(s + 8);
  const uint64_t c = load64(s + len - 8) * mul;
  const uint64_t d = load64(s + len - 16) * k2;
  return hash_len16(rot(a + b, 43) + rot(c, 30) + d, a + rot(b + k2, 18) + c, mul);
}

RECIS_HD uint64_t farm_len33to64(const uint8_t* s, uint64_t len) {
  const uint64_t mul = k2 + len * 2;
  const uint64_t a = load64(s) * k2;
  const uint64_t b = load64(s + 8);
  const uint64_t c = load64(s + len - 8) * mul;
  const uint64_t d = load64(s + len - 16) * k2;
  const uint64_t y = rot(a + b, 43) + rot(c, 30) + d;
  const uint64_t z = hash_len16(y, a + rot(b + k2, 18) + c, mul);
  const uint64_t e = load64(s + 16) * mul;
  const uint64_t f = load64(s + 24);
  const uint64_t g = (y + load64(s + len - 32)) * mul;
  const uint64_t h = (z + load64(s + len - 24)) * mul;
  return hash_len16(rot(e + f, 43) + rot(g, 30) + h, e + rot(f + a, 18) + g, mul);
}

struct U128 {
  uint64_t first, second;
};

RECIS_HD U128 weak_len32_seeds(const uint8_t* s, uint64_t a, uint64_t b) {
  const uint64_t w = load64(s), x = load64(s + 8), y = load64(s + 16), z = load64(s + 24);
  a += w;
  b = rot(b + a + z, 21);
  const uint64_t c = a;
  a += x;
  a += y;
  b += rot(a, 44);
  return U128{a + z, b + c};
}

RECIS_HD uint64_t fingerprint64(const uint8_t* s, uint64_t len) {
  if (len <= 16) return farm_len0to16(s, len);
  if (len <= 32) return farm_len17to32(s, len);
  if (len <= 64) return farm_len33to64(s, len);
  const uint64_t seed = 81;
  uint64_t x = seed;
  uint64_t y = seed * k1 + 113;
  uint64_t z = shift_mix(y * k2 + 113) * k2;
  U128 v{0, 0}, w{0, 0};
  x = x * k2 + load64(s);
  const uint8_t* end = s + ((len - 1) / 64) * 64;
  const uint8_t* last64 = end + ((len - 1) & 63) - 63;
  do {
    x = rot(x + y + v.first + load64(s + 8), 37) * k1;
    y = rot(y + v.second + load64(s + 48), 42) * k1;
    x ^= w.second;
    y += v.first + load64(s + 40);
    z = rot(z + w.first, 33) * k1;
    v = weak_len32_seeds(s, v.second * k1, x + w.first);
    w = weak_len32_seeds(s + 32, z + w.second, y + load64(s + 16));
    const uint64_t t = z;
    z = x;
    x = t;
    s += 64;
  } while (s != end);
  const uint64_t mul = k1 + ((z & 0xff) << 1);
  s = last64;
  w.first += ((len - 1) & 63);
  v.first += w.first;
  w.first += v.first;
  x = rot(x + y + v.first + load64(s + 8), 37) * mul;
  y = rot(y + v.second + load64(s + 48), 42) * mul;
  x ^= w.second * 9;
  y += v.first * 9 + load64(s + 40);
  z = rot(z + w.first, 33) * mul;
  v = weak_len32_seeds(s, v.second * mul, x + w.first);
  w = weak_len32_seeds(s + 32, z + w.second, y + load64(s + 16));
  const uint64_t t = z;
  z = x;
  x = t;
  return hash_len16(hash_len16(v.first, w.first, mul) + shift_mix(y) * k0 + z,
                    hash_len16(v.second, w.second, mul) + x, mul);
}

// Hash kinds as passed across the op boundary.
enum class HashKind : int { kFarm = 0, kMurmur = 1 };

RECIS_HD uint64_t hash_bytes(HashKind kind, const uint8_t* s, int64_t len) {
  return kind == HashKind::kFarm ? fingerprint64(s, static_cast<uint64_t>(len))
                                 : murmur64a(s, len, 0);
}

// column_io's bucket rule: bucket < 0 -> raw bits; 0 -> h & INT64_MAX; > 0 -> h mod bucket.
RECIS_HD int64_t apply_bucket(uint64_t h, int64_t bucket) {
  if (bucket < 0) return static_cast<int64_t>(h);
  if (bucket == 0) return static_cast<int64_t>(h & 0x7fffffffffffffffULL);
  return static_cast<int64_t>(h % static_cast<uint64_t>(bucket));
}

}  // namespace hashing
}  // namespace recis_compat
