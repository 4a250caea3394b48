// datanas/core/random.hpp - counter-based random numbers (Philox4x32-10, Salmon et al. SC'11).
//
// Why counter-based: every random number is a pure function of (seed, counter), so a run is
// reproducible from two integers, a checkpoint stores the generator in 16 bytes, parallel
// kernels draw element i without sharing state, and the CUDA backend draws exactly the same
// numbers as the CPU (these functions are host/device when compiled by nvcc).
#pragma once

#include <cmath>
#include <cstdint>

#if defined(__CUDACC__)
#define DATANAS_HD __host__ __device__ __forceinline__
#else
#define DATANAS_HD inline
#endif

namespace datanas {

struct Philox4x32 {
  std::uint32_t v[4];
};

/// Philox4x32 with 10 rounds: four 32-bit outputs for a 128-bit counter and a 64-bit key.
DATANAS_HD Philox4x32 philox4x32(std::uint64_t counter_lo, std::uint64_t counter_hi,
                                std::uint64_t key) {
  std::uint32_t c0 = std::uint32_t(counter_lo), c1 = std::uint32_t(counter_lo >> 32);
  std::uint32_t c2 = std::uint32_t(counter_hi), c3 = std::uint32_t(counter_hi >> 32);
  std::uint32_t k0 = std::uint32_t(key), k1 = std::uint32_t(key >> 32);
  constexpr std::uint32_t kM0 = 0xD2511F53u, kM1 = 0xCD9E8D57u;
  constexpr std::uint32_t kW0 = 0x9E3779B9u, kW1 = 0xBB67AE85u;
  for (int r = 0; r < 10; ++r) {
    const std::uint64_t p0 = std::uint64_t(kM0) * c0, p1 = std::uint64_t(kM1) * c2;
    const std::uint32_t hi0 = std::uint32_t(p0 >> 32), lo0 = std::uint32_t(p0);
    const std::uint32_t hi1 = std::uint32_t(p1 >> 32), lo1 = std::uint32_t(p1);
    c0 = hi1 ^ c1 ^ k0;
    c1 = lo1;
    c2 = hi0 ^ c3 ^ k1;
    c3 = lo0;
    k0 += kW0;
    k1 += kW1;
  }
  return {{c0, c1, c2, c3}};
}

/// Uniform in the open interval (0, 1) from 24 random bits: never 0 or 1, so log(u) and
/// log(-log(u)) are finite in float as in double.
DATANAS_HD float uniform_open01(std::uint32_t bits) {
  return (float(bits >> 8) + 0.5f) * (1.0f / 16777216.0f);
}

// exp and log where a CPU result and a GPU result must be the same float. The host's expf/logf
// (glibc) and the device's (CUDA, up to 2 ulp) may differ by an ulp for the same argument, and
// an ulp in a Gumbel sample or a log-probability is enough to flip the argmax of a near tie, so
// that a hard estimator would pick another op on the GPU than on the CPU. In double, both
// libraries are within an ulp of the exact value; rounded once to float, they agree unless the
// exact value lies within about 2^-52 (relative) of a float rounding boundary, a chance of
// about 2^-28 per call. The double overloads are the plain functions.
DATANAS_HD float exp_once(float x) { return float(exp(double(x))); }
DATANAS_HD double exp_once(double x) { return exp(x); }
DATANAS_HD float log_once(float x) { return float(log(double(x))); }
DATANAS_HD double log_once(double x) { return log(x); }

/// Standard Gumbel(0, 1) sample g = -log(-log u), in double and rounded once (see exp_once):
/// the same float on the CPU and the GPU.
DATANAS_HD float gumbel_from_bits(std::uint32_t bits) {
  return float(-log(-log(double(uniform_open01(bits)))));
}

/// A stream of Philox numbers: (seed, offset) is its whole state. Each call of next_block()
/// consumes one counter value (four 32-bit numbers). Kernels that draw n numbers in parallel
/// reserve(n) counters and compute element i from block (base + i / 4), word i % 4.
class PhiloxGenerator {
 public:
  explicit PhiloxGenerator(std::uint64_t seed = 0, std::uint64_t offset = 0)
      : seed_(seed), offset_(offset) {}

  /// Reserves enough counters for n numbers and returns the first counter.
  std::uint64_t reserve(std::uint64_t n) {
    const std::uint64_t base = offset_;
    offset_ += (n + 3) / 4;
    return base;
  }
  /// The i-th 32-bit number of a range starting at counter `base`.
  [[nodiscard]] std::uint32_t bits_at(std::uint64_t base, std::uint64_t i) const {
    return philox4x32(base + i / 4, 0, seed_).v[i % 4];
  }
  Philox4x32 next_block() { return philox4x32(offset_++, 0, seed_); }
  float uniform() { return uniform_open01(next_block().v[0]); }
  /// Standard normal by Box-Muller (one block per number; speed is not needed where used).
  double normal() {
    const Philox4x32 b = next_block();
    const double u1 = (double(b.v[0]) + 0.5) / 4294967296.0, u2 = (double(b.v[1]) + 0.5) / 4294967296.0;
    return std::sqrt(-2.0 * std::log(u1)) * std::cos(6.283185307179586 * u2);
  }

  [[nodiscard]] std::uint64_t seed() const { return seed_; }
  [[nodiscard]] std::uint64_t offset() const { return offset_; }
  void set_state(std::uint64_t seed, std::uint64_t offset) {
    seed_ = seed;
    offset_ = offset;
  }

 private:
  std::uint64_t seed_;
  std::uint64_t offset_;
};

}  // namespace datanas
