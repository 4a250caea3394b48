// The GPU draws exactly the CPU's random numbers for the same (seed, counter).
#include <doctest/doctest.h>

#include <cstring>
#include <vector>

#include "datanas/core/random.hpp"
#include "gpu_helpers.hpp"

using namespace datanas;

TEST_SUITE("gpu") {
TEST_CASE("Philox uniforms on the GPU are bit-identical to the CPU's") {
  const std::int64_t n = 100003;  // not a multiple of 4: the tail block is partial
  std::vector<float> on_gpu(static_cast<std::size_t>(n));
  gpu_test::philox(false, 42, 7, n, on_gpu.data());
  PhiloxGenerator cpu(42, 7);
  const auto base = cpu.reserve(std::uint64_t(n));
  for (std::int64_t i = 0; i < n; ++i) {
    const float c = uniform_open01(cpu.bits_at(base, std::uint64_t(i)));
    REQUIRE(std::memcmp(&c, &on_gpu[std::size_t(i)], sizeof(float)) == 0);
  }
}

TEST_CASE("Gumbel samples on the GPU match the CPU's") {
  const std::int64_t n = 4099;
  std::vector<float> on_gpu(static_cast<std::size_t>(n));
  gpu_test::philox(true, 5, 0, n, on_gpu.data());
  PhiloxGenerator cpu(5, 0);
  const auto base = cpu.reserve(std::uint64_t(n));
  // The same floats, not merely close ones: computed in double and rounded once
  // (gumbel_from_bits), the host's and the device's logs agree after rounding except within
  // about 2^-52 of a float rounding boundary, which none of these 4099 draws comes near.
  int differ = 0;
  for (std::int64_t i = 0; i < n; ++i) {
    const float c = gumbel_from_bits(cpu.bits_at(base, std::uint64_t(i)));
    if (on_gpu[std::size_t(i)] != c) {
      if (differ++ < 5) MESSAGE("draw ", i, ": GPU ", on_gpu[std::size_t(i)], ", CPU ", c);
    }
  }
  CHECK(differ == 0);
}
}
