// Core layer: Shape, Tensor, the caching allocator and the Philox generator.
#include <doctest/doctest.h>

#include "datanas/datanas.hpp"

using namespace datanas;

TEST_SUITE("cpu") {
TEST_CASE("Shape basics and errors") {
  Shape s{2, 3, 4, 5};
  CHECK(s.rank() == 4);
  CHECK(s.numel() == 120);
  CHECK(s.str() == "[2, 3, 4, 5]");
  CHECK(s == Shape{2, 3, 4, 5});
  CHECK_FALSE(s == Shape{2, 3, 4});
  CHECK_THROWS_WITH_AS(Shape({1, 2, 3, 4, 5}), doctest::Contains("rank 5"), datanas::error);
  CHECK_THROWS_WITH_AS(Shape({1, -2}), doctest::Contains("negative dimension -2"), datanas::error);
}

TEST_CASE("Tensor handles share storage; reshape is a view; from() checks its count") {
  auto a = Tensor<float>::from({2, 2}, {1, 2, 3, 4});
  auto b = a;
  b[0] = 10;
  CHECK(a[0] == 10);
  auto c = a.reshape({4});
  CHECK(c.same_storage(a));
  CHECK(c[3] == 4);
  auto d = a.clone();
  d[1] = -1;
  CHECK(a[1] == 2);
  CHECK(a(1, 0) == 3);
  CHECK_THROWS_WITH_AS(a.reshape({3}), doctest::Contains("cannot view [2, 2] as [3]"), datanas::error);
  CHECK_THROWS_WITH_AS(Tensor<float>::from({3}, {1, 2}), doctest::Contains("needs 3 values, got 2"),
                       datanas::error);
}

TEST_CASE("caching allocator reuses freed blocks of the same size") {
  auto& alloc = CachingAllocator<Cpu>::instance();
  { auto t = Tensor<float>::empty({1000}); }
  const auto before = alloc.stats();
  const void* p1;
  {
    auto t = Tensor<float>::empty({1000});
    p1 = t.data();
    CHECK(reinterpret_cast<std::uintptr_t>(p1) % 64 == 0);
  }
  {
    auto t = Tensor<float>::empty({1000});
    CHECK(t.data() == p1);
  }
  const auto after = alloc.stats();
  CHECK(after.system_allocations == before.system_allocations);
  CHECK(after.cache_hits == before.cache_hits + 2);
  CHECK(after.bytes_in_use == before.bytes_in_use);
}

TEST_CASE("Philox4x32-10 matches the Random123 known-answer vectors") {
  // Salmon et al., Random123 kat_vectors: counter words c0..c3, key words k0, k1.
  auto r = philox4x32(0, 0, 0);
  CHECK(r.v[0] == 0x6627e8d5u);
  CHECK(r.v[1] == 0xe169c58du);
  CHECK(r.v[2] == 0xbc57ac4cu);
  CHECK(r.v[3] == 0x9b00dbd8u);
  r = philox4x32(~0ull, ~0ull, ~0ull);
  CHECK(r.v[0] == 0x408f276du);
  CHECK(r.v[1] == 0x41c83b0eu);
  CHECK(r.v[2] == 0xa20bc7c6u);
  CHECK(r.v[3] == 0x6d5451fdu);
  r = philox4x32(0x85a308d3243f6a88ull, 0x0370734413198a2eull, 0x299f31d0a4093822ull);
  CHECK(r.v[0] == 0xd16cfe09u);
  CHECK(r.v[1] == 0x94fdccebu);
  CHECK(r.v[2] == 0x5001e420u);
  CHECK(r.v[3] == 0x24126ea1u);
}

TEST_CASE("uniform and Gumbel draws have the right moments") {
  PhiloxGenerator g(1234);
  const int n = 200000;
  double su = 0, sg = 0, sg2 = 0, umin = 1, umax = 0;
  for (int i = 0; i < n; ++i) {
    const auto b = g.next_block();
    const double u = uniform_open01(b.v[0]);
    const double x = gumbel_from_bits(b.v[1]);
    su += u;
    umin = std::min(umin, u);
    umax = std::max(umax, u);
    sg += x;
    sg2 += x * x;
  }
  CHECK(umin > 0.0);
  CHECK(umax < 1.0);
  CHECK(su / n == doctest::Approx(0.5).epsilon(0.005));
  // Gumbel(0,1): mean = Euler-Mascheroni 0.5772, variance = pi^2 / 6 = 1.6449.
  const double mean = sg / n, var = sg2 / n - mean * mean;
  CHECK(std::abs(mean - 0.5772157) < 4 * std::sqrt(1.6449 / n) + 1e-3);
  CHECK(var == doctest::Approx(1.6449341).epsilon(0.02));
}

TEST_CASE("generator state round-trips: same (seed, offset), same numbers") {
  PhiloxGenerator a(7);
  a.next_block();
  PhiloxGenerator b(a.seed(), a.offset());
  CHECK(a.next_block().v[2] == b.next_block().v[2]);
  const auto base = a.reserve(10);
  CHECK(a.offset() == base + 3);
  CHECK(a.bits_at(base, 5) == philox4x32(base + 1, 0, 7).v[1]);
}
}
