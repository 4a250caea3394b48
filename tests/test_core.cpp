// Core layer: Shape, Tensor, the caching allocator and the Philox generator.
#include <doctest/doctest.h>

#include <algorithm>
#include <vector>

#include "datanas/datanas.hpp"
#include "varying_sizes.hpp"

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
  CHECK(s.with_dim(1, 7) == Shape{2, 7, 4, 5});
  CHECK(s == Shape{2, 3, 4, 5});  // a copy changed, not s
  CHECK_THROWS_WITH_AS((void)s.with_dim(4, 1),
                       doctest::Contains("cannot set dimension 4 of [2, 3, 4, 5]"), datanas::error);
  CHECK_THROWS_WITH_AS((void)s.with_dim(0, -1), doctest::Contains("to -1"), datanas::error);
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
  // leading(n): the first n rows, same storage from the same start.
  auto rows = Tensor<float>::from({3, 2}, {1, 2, 3, 4, 5, 6});
  auto first = rows.leading(2);
  CHECK(first.shape() == Shape{2, 2});
  CHECK(first.same_storage(rows));
  CHECK(first(1, 1) == 4);
  CHECK(rows.leading(0).numel() == 0);
  CHECK_THROWS_WITH_AS((void)rows.leading(4),
                       doctest::Contains("cannot take 4 entries of dimension 0 of [3, 2]"),
                       datanas::error);
  CHECK_THROWS_WITH_AS((void)Tensor<float>::empty({}).leading(0),
                       doctest::Contains("leading: cannot take 0"), datanas::error);
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

namespace {
/// The system behind a BlockCache under test: records what is given back and poisoned.
struct FakeSystem {
  static inline std::vector<void*> given_back;
  static inline std::size_t poisoned = 0;
  static void deallocate(void* p) { given_back.push_back(p); }
  static void poison(void*, std::size_t n) { poisoned += n; }
  static void unpoison(void*, std::size_t n) { poisoned -= std::min(poisoned, n); }
};
constexpr std::size_t kMiB = std::size_t(1) << 20;
}  // namespace

TEST_CASE("BlockCache: large blocks are split by best fit and merged back; small ones are exact") {
  FakeSystem::given_back.clear();
  std::vector<char> seg(8 * kMiB), seg2(2 * kMiB), seg3(4 * kMiB), small(4096);
  char* const base = seg.data();
  detail::BlockCache<FakeSystem> cache;
  cache.put(cache.adopt(base, 8 * kMiB, 1, 0));
  CHECK(cache.cached_bytes() == 8 * kMiB);
  CHECK(cache.take(2, kMiB) == nullptr);  // another pool's memory is not used

  detail::Block* a = cache.take(1, 3 * kMiB);  // split: 3 taken, 5 left free
  REQUIRE(a);
  CHECK(a->data == base);
  CHECK(a->bytes == 3 * kMiB);
  CHECK(cache.cached_bytes() == 5 * kMiB);
  detail::Block* b = cache.take(1, 2 * kMiB);
  REQUIRE(b);
  CHECK(b->data == base + 3 * kMiB);
  detail::Block* c = cache.take(1, 3 * kMiB - kMiB / 2);  // 0.5 MiB would be left: not split
  REQUIRE(c);
  CHECK(c->data == base + 5 * kMiB);
  CHECK(c->bytes == 3 * kMiB);
  CHECK(cache.cached_bytes() == 0);
  CHECK(cache.take(1, kMiB) == nullptr);

  CHECK(!detail::BlockCache<FakeSystem>::whole(cache.put(a)));
  CHECK(!detail::BlockCache<FakeSystem>::whole(cache.put(c)));  // its neighbour b is in use
  detail::Block* merged = cache.put(b);                          // a + b + c: the segment again
  CHECK(merged->data == base);
  CHECK(merged->bytes == 8 * kMiB);
  CHECK(detail::BlockCache<FakeSystem>::whole(merged));
  CHECK(cache.cached_bytes() == 8 * kMiB);
  CHECK(FakeSystem::poisoned == 8 * kMiB);  // free memory is marked for the sanitizer

  // Best fit: the smallest free block that holds the request.
  cache.put(cache.adopt(seg3.data(), 4 * kMiB, 1, 0));
  cache.put(cache.adopt(seg2.data(), 2 * kMiB, 1, 0));
  detail::Block* d = cache.take(1, kMiB + kMiB / 2);
  REQUIRE(d);
  CHECK(d->data == seg2.data());
  CHECK(d->bytes == 2 * kMiB);

  // Small blocks: exact sizes only, and each one whole.
  cache.put(cache.adopt(small.data(), 4096, 1, 0));
  CHECK(cache.take(1, 4160) == nullptr);
  CHECK(cache.take(1, 2048) == nullptr);
  detail::Block* s = cache.take(1, 4096);
  REQUIRE(s);
  CHECK(s->data == small.data());
  CHECK(detail::BlockCache<FakeSystem>::whole(cache.put(s)));

  // A request that missed gives back only the whole free segments smaller than itself.
  CHECK(cache.discard_smaller(1, 6 * kMiB) == 4 * kMiB);  // seg3 (4 MiB), not seg (8 MiB)
  REQUIRE(FakeSystem::given_back.size() == 1);
  CHECK(FakeSystem::given_back[0] == seg3.data());
  CHECK(cache.cached_bytes() == 8 * kMiB + 4096);

  // A segment with a block in use stays; the rest goes back.
  detail::Block* e = cache.take(1, 2 * kMiB);
  REQUIRE(e);
  cache.discard_whole([](std::uint64_t) { return true; });
  CHECK(FakeSystem::given_back.size() == 2);  // the small block; seg is split
  CHECK(cache.cached_bytes() == 6 * kMiB);
  CHECK(detail::BlockCache<FakeSystem>::whole(cache.put(e)));
  cache.put(d);
  cache.discard_whole([](std::uint64_t pool) { return pool == 1; });
  CHECK(cache.cached_bytes() == 0);
  CHECK(FakeSystem::given_back.size() == 4);
}

TEST_CASE("BlockCache: carved small blocks are cut from small segments by best fit and merged back") {
  FakeSystem::given_back.clear();
  constexpr std::size_t seg_bytes = detail::BlockCache<FakeSystem>::kSmallSegment;
  std::vector<char> seg(seg_bytes), seg2(seg_bytes), exact(4096);
  detail::BlockCache<FakeSystem> cache;
  CHECK(cache.system_bytes(4096) == 4096);  // exact sizes by default
  cache.put(cache.adopt(exact.data(), 4096, 1, 0));  // an exact block from before carving
  cache.set_carve_small(true);
  CHECK(cache.system_bytes(4096) == seg_bytes);
  CHECK(cache.system_bytes(kMiB) == kMiB);  // large requests are their own segments
  CHECK(cache.take(1, 4096) == nullptr);     // carving looks only at small segments

  detail::Block* a = cache.adopt(seg.data(), 4096, 1, 3);  // the first request cuts the segment
  REQUIRE(a);
  CHECK(a->data == seg.data());
  CHECK(a->bytes == 4096);
  CHECK(a->stream == 3);
  CHECK(cache.cached_bytes() == 4096 + seg_bytes - 4096);
  detail::Block* b = cache.take(1, 768);  // any rest is split off: sizes are exact
  REQUIRE(b);
  CHECK(b->data == seg.data() + 4096);
  CHECK(b->bytes == 768);
  CHECK(b->stream == 3);
  detail::Block* c = cache.take(1, 256);
  REQUIRE(c);
  CHECK(c->data == seg.data() + 4096 + 768);
  CHECK(cache.take(2, 256) == nullptr);  // another pool's segment is not used
  CHECK(cache.take(1, kMiB) == nullptr);  // nor is a small segment for a large request

  cache.put(a);
  detail::Block* d = cache.take(1, 1024);  // best fit: a's 4096, not the segment's big tail
  REQUIRE(d);
  CHECK(d->data == seg.data());
  // Sizes need not recur: what a step frees serves other sizes.
  detail::Block* e = cache.take(1, 3072);
  REQUIRE(e);
  CHECK(e->data == seg.data() + 1024);

  // A second segment only when the first is full (its 2 MiB - 5 KiB tail takes two small
  // requests: one of 1 MiB or more would be a large one).
  const std::size_t tail = seg_bytes - 4096 - 768 - 256;
  detail::Block* big = cache.take(1, kMiB - 256);
  REQUIRE(big);
  CHECK(big->data == seg.data() + 4096 + 768 + 256);
  detail::Block* rest = cache.take(1, tail - (kMiB - 256));
  REQUIRE(rest);
  CHECK(cache.cached_bytes() == 4096);  // the exact block only
  CHECK(cache.take(1, 256) == nullptr);
  CHECK(cache.system_bytes(256) == seg_bytes);
  detail::Block* f = cache.adopt(seg2.data(), 256, 1, 3);
  CHECK(f->data == seg2.data());

  // Freed blocks merge back into the whole segment, which can go back to the system.
  for (detail::Block* x : {b, d, e, big, rest}) CHECK(!detail::BlockCache<FakeSystem>::whole(cache.put(x)));
  detail::Block* merged = cache.put(c);
  CHECK(merged->data == seg.data());
  CHECK(merged->bytes == seg_bytes);
  CHECK(detail::BlockCache<FakeSystem>::whole(merged));
  CHECK(cache.discard_smaller(1, 64 * kMiB) == 0);  // only large segments go back on a large miss
  cache.discard_whole([](std::uint64_t) { return true; });  // seg and the exact block; seg2 is in use
  CHECK(FakeSystem::given_back.size() == 2);
  CHECK(cache.cached_bytes() == seg_bytes - 256);
  CHECK(detail::BlockCache<FakeSystem>::whole(cache.put(f)));
  cache.discard_whole([](std::uint64_t) { return true; });
  CHECK(FakeSystem::given_back.size() == 3);
  CHECK(cache.cached_bytes() == 0);
}

TEST_CASE("BlockCache: pools never share a free block; take_all hands a pool's blocks over") {
  FakeSystem::given_back.clear();
  std::vector<char> seg(6 * kMiB);
  detail::BlockCache<FakeSystem> cache;
  cache.put(cache.adopt(seg.data(), 6 * kMiB, 1, 7));
  detail::Block* g = cache.take(1, 2 * kMiB);  // e.g. a CUDA graph's pool takes it from stream 1
  REQUIRE(g);
  CHECK(g->stream == 7);
  g->pool = 9;
  detail::Block* rest = cache.put(g);  // free in pool 9, beside pool 1's free 4 MiB: not merged
  CHECK(rest == g);
  CHECK(!detail::BlockCache<FakeSystem>::whole(rest));
  CHECK(cache.take(1, 5 * kMiB) == nullptr);
  CHECK(cache.take(9, 3 * kMiB) == nullptr);
  const std::vector<detail::Block*> moved = cache.take_all(9);  // pool 9 retires
  REQUIRE(moved.size() == 1);
  CHECK(cache.cached_bytes() == 4 * kMiB);
  moved[0]->pool = 1;
  detail::Block* whole = cache.put(moved[0]);
  CHECK(whole->data == seg.data());
  CHECK(whole->bytes == 6 * kMiB);
  cache.discard(whole);
  CHECK(FakeSystem::given_back.size() == 1);
  CHECK(cache.cached_bytes() == 0);
}

TEST_CASE("varying step sizes reuse large blocks: memory held stays near the largest step") {
  // A PTB-like loop: every "step" holds three tensors whose size follows its window length, as
  // the logits and their gradients do. Exact-size caching kept one set of blocks per length
  // (here 11.6x the largest step, 429 MB for 37 MB); split-and-merge blocks plus giving back segments that a
  // longer window outgrew keep what is held near one step of the longest window seen.
  auto& alloc = CachingAllocator<Cpu>::instance();
  const auto before = alloc.stats();
  const index_t lengths[] = {35, 31, 38, 22, 41, 35, 29, 44, 17, 36, 40, 33, 47, 30, 35, 38, 25, 45, 35, 32};
  std::size_t largest_step = 0, held = 0;
  const index_t per_token = 64 * 1024;  // floats: 256 KiB a token
  for (const index_t len : lengths) {
    alloc.reset_peak();
    const std::size_t base = alloc.stats().bytes_in_use;
    {
      auto logits = Tensor<float>::empty({len, per_token});
      auto probs = Tensor<float>::empty({len, per_token});
      auto grad = Tensor<float>::empty({len, per_token});
      logits.fill(1.0f);  // touched, as a step would
      probs.fill(2.0f);
      grad.fill(3.0f);
      CHECK(logits[0] + probs[per_token * len - 1] + grad[7] == 6.0f);
    }
    largest_step = std::max(largest_step, alloc.stats().peak_bytes_in_use - base);
    const auto now = alloc.stats();
    held = std::max(held, now.bytes_in_use + now.bytes_cached - before.bytes_in_use - before.bytes_cached);
  }
  CHECK(largest_step == 3 * 47 * std::size_t(per_token) * sizeof(float));
  CHECK(double(held) <= 1.5 * double(largest_step));
  MESSAGE("memory held ", held, " B for a largest step of ", largest_step, " B");
}

TEST_CASE("Cpu allocator: a large miss gives back smaller free segments only beyond 1.25x the high-water mark") {
  // Sizes far above anything else in this binary, so that the all-time high-water mark is the
  // one set here (plus the few bytes other tests keep alive, `s` below).
  auto& alloc = CachingAllocator<Cpu>::instance();
  constexpr std::size_t MiB = std::size_t(1) << 20;
  auto floats = [](std::size_t bytes) { return Shape{index_t(bytes / sizeof(float))}; };
  alloc.empty_cache();
  const auto start = alloc.stats();
  REQUIRE(start.bytes_in_use < 4 * MiB);  // s
  auto c = Tensor<float>::empty(floats(256 * MiB));
  auto d = Tensor<float>::empty(floats(64 * MiB));  // high water: 320 MiB + s
  d = Tensor<float>();                               // its segment is cached
  CHECK(alloc.stats().bytes_cached - start.bytes_cached == 64 * MiB);
  // A miss within the headroom: 256 in use + 64 cached + 72 new = 392 <= 1.25 x 320 = 400 MiB.
  // The smaller free segment stays (a shorter step may want it again).
  const std::size_t misses = alloc.stats().system_allocations;
  auto e = Tensor<float>::empty(floats(72 * MiB));
  CHECK(alloc.stats().system_allocations == misses + 1);
  CHECK(alloc.stats().bytes_cached - start.bytes_cached == 64 * MiB);
  // Beyond it: with c and e released, 392 MiB cached + 300 new > 400 MiB, so the request first
  // gives back every whole free segment smaller than itself (256, 72 and 64 MiB), none of which
  // could serve it.
  c = Tensor<float>();
  e = Tensor<float>();
  CHECK(alloc.stats().bytes_cached - start.bytes_cached == 392 * MiB);
  auto f = Tensor<float>::empty(floats(300 * MiB));
  CHECK(alloc.stats().bytes_cached == start.bytes_cached);
  CHECK(alloc.stats().bytes_in_use - start.bytes_in_use == 300 * MiB);
  f = Tensor<float>();
  alloc.empty_cache();
}

TEST_CASE("Cpu allocator with small segments: sizes that vary from step to step need no new memory") {
  auto& alloc = CachingAllocator<Cpu>::instance();
  const auto before = alloc.stats();
  REQUIRE(!alloc.small_segments());
  alloc.empty_cache();
  const auto exact = testing::misses_per_varying_step<Cpu>();
  alloc.set_small_segments(true);
  alloc.empty_cache();
  const auto carved = testing::misses_per_varying_step<Cpu>();
  alloc.set_small_segments(false);
  alloc.empty_cache();
  CHECK(alloc.stats().bytes_in_use == before.bytes_in_use);
  testing::check_segments_against_exact(exact, carved);
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

TEST_CASE("Gumbel samples, exp_once and log_once are the correctly rounded floats") {
  // What makes the CPU's and the GPU's draws the same floats: each is the exact value rounded
  // once, whatever libm computed it (core/random.hpp). The reference is long double (64-bit
  // mantissa on x86), rounded once to float; the draws include the extreme uniforms.
  PhiloxGenerator g(99);
  int differ = 0;
  auto check = [&](float got, long double exact, const char* what, double arg) {
    if (got != float(exact) && differ++ < 5)
      MESSAGE(what, "(", arg, "): ", got, " vs ", float(exact));
  };
  std::vector<std::uint32_t> bits = {0u, 0xffu, 0x100u, 0xffffffffu, 0x80000000u, 0x7fffff00u};
  for (int i = 0; i < 100000; ++i) bits.push_back(g.next_block().v[0]);
  for (std::uint32_t b : bits) {
    const long double u = uniform_open01(b);
    check(gumbel_from_bits(b), -std::log(-std::log(u)), "gumbel", double(u));
  }
  for (int i = 0; i < 100000; ++i) {
    const float x = float(g.normal()) * 20.0f;
    check(exp_once(x), std::exp((long double)x), "exp_once", x);
    const float y = std::abs(x) + 1e-3f;
    check(log_once(y), std::log((long double)y), "log_once", y);
  }
  CHECK(differ == 0);
  // Double arguments take the plain functions.
  CHECK(exp_once(0.5) == std::exp(0.5));
  CHECK(log_once(3.0) == std::log(3.0));
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
