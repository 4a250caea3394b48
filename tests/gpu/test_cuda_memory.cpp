// The Cuda device's host side: copies round-trip, the stream-ordered caching allocator reuses
// blocks per stream without synchronising, and streams are guarded and retired correctly.
#include <doctest/doctest.h>

#include <random>
#include <string>
#include <vector>

#include "datanas/core/cuda.hpp"
#include "datanas/core/random.hpp"
#include "parity.hpp"
#include "../varying_sizes.hpp"

using namespace datanas;
using gpu_test::same_bits;

namespace {
/// Fresh random values for every run; the seed is reported when a check fails.
Tensor<float> random_tensor(const Shape& s, std::uint64_t seed) {
  PhiloxGenerator gen(seed);
  Tensor<float> t = Tensor<float>::empty(s);
  for (index_t i = 0; i < t.numel(); ++i) t[i] = float(gen.normal());
  return t;
}
AllocatorStats cuda_stats() { return CachingAllocator<Cuda>::instance().stats(); }
}  // namespace

TEST_SUITE("gpu") {
TEST_CASE("host -> device -> device -> host copies return the same bits") {
  const std::uint64_t seed = std::random_device{}();
  INFO("seed " << seed);
  cuda::Stream stream;
  cuda::StreamGuard guard(stream);
  for (const Shape& s : {Shape{1}, Shape{7, 3}, Shape{2, 3, 5, 7}, Shape{1 << 20}}) {
    const Tensor<float> host = random_tensor(s, seed);
    const Tensor<float, Cuda> a = cuda::to_device(host);
    const Tensor<float, Cuda> b = Tensor<float, Cuda>::empty(s);
    cuda::fill_bytes(b, 0xff);  // NaN: a copy that skips elements cannot pass
    cuda::copy(b, a);
    const Tensor<float> back = cuda::to_host(b);
    CHECK(back.shape() == s);
    CHECK(same_bits(back, host));
  }
  // Labels travel too.
  Tensor<std::int32_t> labels = Tensor<std::int32_t>::empty({1000});
  for (index_t i = 0; i < 1000; ++i) labels[i] = std::int32_t((seed + std::uint64_t(i) * 7919) % 1000);
  const Tensor<std::int32_t> labels_back = cuda::to_host(cuda::to_device(labels));
  for (index_t i = 0; i < 1000; ++i) REQUIRE(labels_back[i] == labels[i]);
}

TEST_CASE("copy rejects tensors of different sizes") {
  cuda::Stream stream;
  cuda::StreamGuard guard(stream);
  const auto a = Tensor<float, Cuda>::empty({4});
  const auto b = Tensor<float, Cuda>::empty({5});
  CHECK_THROWS_AS(cuda::copy(b, a), datanas::error);
}

TEST_CASE("a released block is reused on its stream without a system allocation") {
  cuda::Stream stream;
  cuda::StreamGuard guard(stream);
  void* first = nullptr;
  {
    const auto t = Tensor<float, Cuda>::empty({1000});
    first = t.data();
  }
  const AllocatorStats before = cuda_stats();
  const auto again = Tensor<float, Cuda>::empty({10, 100});  // 4000 bytes, rounded up to 4096
  const AllocatorStats after = cuda_stats();
  CHECK(again.data() == first);
  CHECK(after.system_allocations == before.system_allocations);
  CHECK(after.cache_hits == before.cache_hits + 1);
  CHECK(after.bytes_in_use == before.bytes_in_use + 4096);
  CHECK(after.bytes_cached == before.bytes_cached - 4096);
  CHECK(after.peak_bytes_in_use >= after.bytes_in_use);
}

TEST_CASE("streams do not share cached blocks") {
  cuda::Stream s1, s2;
  void* on_s1 = nullptr;
  {
    cuda::StreamGuard guard(s1);
    const auto t = Tensor<float, Cuda>::empty({3000});
    on_s1 = t.data();
  }
  cuda::StreamGuard guard(s2);
  const AllocatorStats before = cuda_stats();
  const auto t = Tensor<float, Cuda>::empty({3000});
  CHECK(t.data() != on_s1);
  CHECK(cuda_stats().system_allocations == before.system_allocations + 1);
}

TEST_CASE("reuse is ordered by the stream: a reused block's pending reads finish first") {
  const std::uint64_t seed = std::random_device{}();
  INFO("seed " << seed);
  cuda::Stream stream;
  cuda::StreamGuard guard(stream);
  const index_t n = 1 << 22;  // 16 MiB: the copies take long enough to overlap if unordered
  const Tensor<float> x = random_tensor({n}, seed);
  const Tensor<float> y = random_tensor({n}, seed + 1);
  const auto dst = Tensor<float, Cuda>::empty({n});
  void* released = nullptr;
  {
    const Tensor<float, Cuda> src = cuda::to_device(x);
    cuda::copy(dst, src);  // still reading src when src's block is released below
    released = src.data();
  }
  // Takes src's block at once and overwrites it; the stream orders this after the copy above.
  const Tensor<float, Cuda> reused = cuda::to_device(y);
  CHECK(reused.data() == released);
  CHECK(same_bits(cuda::to_host(dst), x));
  CHECK(same_bits(cuda::to_host(reused), y));
}

TEST_CASE("StreamGuard sets the thread's current stream and restores the previous one") {
  CHECK(cuda::current_stream().id == 0);
  CHECK(cuda::current_stream().handle == nullptr);
  cuda::Stream outer, inner;
  CHECK(outer.id() != inner.id());
  CHECK(outer.id() != 0);
  {
    cuda::StreamGuard g1(outer);
    CHECK(cuda::current_stream().id == outer.id());
    {
      cuda::StreamGuard g2(inner);
      CHECK(cuda::current_stream().handle == inner.handle());
    }
    CHECK(cuda::current_stream().handle == outer.handle());
  }
  CHECK(cuda::current_stream().id == 0);
}

TEST_CASE("a destroyed stream's blocks go back to the system") {
  Tensor<float, Cuda> survivor;
  AllocatorStats cached_with_stream;
  {
    cuda::Stream stream;
    cuda::StreamGuard guard(stream);
    { const auto t = Tensor<float, Cuda>::empty({5000}); }  // 20000 -> 20224 bytes cached on `stream`
    survivor = Tensor<float, Cuda>::empty({6000});          // 24064 bytes; outlives its stream
    cached_with_stream = cuda_stats();
  }
  const AllocatorStats after_stream = cuda_stats();
  CHECK(after_stream.bytes_cached == cached_with_stream.bytes_cached - 20224);
  survivor = {};  // released after its stream is gone: freed, not cached
  const AllocatorStats after_survivor = cuda_stats();
  CHECK(after_survivor.bytes_cached == after_stream.bytes_cached);
  CHECK(after_survivor.bytes_in_use == after_stream.bytes_in_use - 24064);
}

TEST_CASE("a destroyed stream's split segment goes back to the system when its last piece does") {
  constexpr index_t kFloatsPerMiB = index_t(1) << 18;  // blocks of 1 MiB and more are split and merged
  constexpr std::size_t kMiBBytes = std::size_t(1) << 20;
  Tensor<float, Cuda> survivor;
  AllocatorStats with_stream;
  {
    cuda::Stream stream;
    cuda::StreamGuard guard(stream);
    const float* base = nullptr;
    { base = Tensor<float, Cuda>::empty({6 * kFloatsPerMiB}).data(); }
    survivor = Tensor<float, Cuda>::empty({2 * kFloatsPerMiB});  // cut from the free 6 MiB segment
    CHECK(survivor.data() == base);
    with_stream = cuda_stats();
  }
  // The segment is not whole: its free 4 MiB stays until the survivor is released.
  CHECK(cuda_stats().bytes_cached == with_stream.bytes_cached);
  survivor = {};
  const AllocatorStats after = cuda_stats();
  CHECK(after.bytes_cached == with_stream.bytes_cached - 4 * kMiBBytes);
  CHECK(after.bytes_in_use == with_stream.bytes_in_use - 2 * kMiBBytes);
}

TEST_CASE("small segments: small tensors of varying sizes need no cudaMalloc after the first segment") {
  cuda::Stream stream;  // a stream of its own: an empty pool
  cuda::StreamGuard guard(stream);
  CHECK(!CachingAllocator<Cuda>::instance().small_segments());  // gpu_main's choice
  const auto exact = testing::misses_per_varying_step<Cuda>();
  std::vector<std::size_t> carved;
  {
    cuda::Stream other;  // another empty pool: no block of the first run helps
    cuda::StreamGuard on_other(other);
    const gpu_test::SmallSegments on;
    const AllocatorStats before = cuda_stats();
    carved = testing::misses_per_varying_step<Cuda>();
    const AllocatorStats after = cuda_stats();
    CHECK(after.bytes_in_use == before.bytes_in_use);
    CHECK(after.bytes_cached - before.bytes_cached == detail::BlockCache<detail::CudaMemory>::kSmallSegment);
  }
  CHECK(!CachingAllocator<Cuda>::instance().small_segments());  // restored
  testing::check_segments_against_exact(exact, carved);
}

TEST_CASE("small segments: a destroyed stream's segment goes back to the system when its last piece does") {
  const gpu_test::SmallSegments on;
  Tensor<float, Cuda> survivor;
  AllocatorStats with_stream;
  {
    cuda::Stream stream;
    cuda::StreamGuard guard(stream);
    const float* base = nullptr;
    { base = Tensor<float, Cuda>::empty({5000}).data(); }  // 20224 bytes, cut from a new segment
    survivor = Tensor<float, Cuda>::empty({6000});          // 24064 bytes from its start again
    CHECK(survivor.data() == base);
    with_stream = cuda_stats();
  }
  // The segment is not whole: its free rest stays until the survivor is released.
  CHECK(cuda_stats().bytes_cached == with_stream.bytes_cached);
  survivor = {};
  const AllocatorStats after = cuda_stats();
  constexpr std::size_t segment = detail::BlockCache<detail::CudaMemory>::kSmallSegment;
  CHECK(after.bytes_cached == with_stream.bytes_cached - (segment - 24064));
  CHECK(after.bytes_in_use == with_stream.bytes_in_use - 24064);
}

TEST_CASE("empty_cache frees every cached block; live tensors stay valid") {
  cuda::Stream stream;
  cuda::StreamGuard guard(stream);
  const Tensor<float> host = random_tensor({777}, std::random_device{}());
  const Tensor<float, Cuda> live = cuda::to_device(host);
  { const auto t = Tensor<float, Cuda>::empty({12345}); }
  CHECK(cuda_stats().bytes_cached > 0);
  CachingAllocator<Cuda>::instance().empty_cache();
  CHECK(cuda_stats().bytes_cached == 0);
  CHECK(same_bits(cuda::to_host(live), host));
}

TEST_CASE("an impossible allocation throws a datanas::error naming the size") {
  cuda::Stream stream;
  cuda::StreamGuard guard(stream);
  const index_t huge = index_t(1) << 48;  // 1 PiB of floats
  try {
    (void)Tensor<float, Cuda>::empty({huge});
    FAIL("allocating 1 PiB succeeded");
  } catch (const datanas::error& e) {
    const std::string msg = e.what();
    CHECK(msg.find("cuda allocator: cudaMalloc of") != std::string::npos);
  }
  // The failure is not sticky: the device still works.
  const Tensor<float> host = random_tensor({33}, 1);
  CHECK(same_bits(cuda::to_host(cuda::to_device(host)), host));
}
}
