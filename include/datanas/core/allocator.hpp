// datanas/core/allocator.hpp - the caching allocator behind every tensor.
//
// Why: a search step creates and drops thousands of same-shaped temporaries. Returning their
// blocks to the allocator's free lists instead of the system means that, once the first step has
// run, a training step makes no fresh heap allocation at all (tests/test_allocation.cpp proves
// it). Small blocks are cached by exact size rounded up to 64 bytes (steps repeat their shapes,
// so exact reuse hits every time, without the 2x waste of power-of-two classes); large ones
// (1 MiB and up) are split and merged, so that steps of varying shapes (PTB's window lengths)
// share them (detail::BlockCache, core/block_cache.hpp). Cutting small blocks from 2 MiB
// segments as well (set_small_segments, the Cuda allocator's default) is an option here: a
// host malloc is cheap, and separate blocks let AddressSanitizer check each one to its end.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <mutex>
#include <new>

#include "datanas/core/block_cache.hpp"
#include "datanas/core/device.hpp"
#include "datanas/core/error.hpp"
#include "datanas/detail/sanitizer.hpp"

namespace datanas {

/// Counters of one device's allocator, in bytes and calls.
struct AllocatorStats {
  std::size_t bytes_in_use = 0;      ///< held by live tensors
  std::size_t peak_bytes_in_use = 0; ///< high-water mark of bytes_in_use since reset_peak()
  std::size_t bytes_cached = 0;      ///< free blocks kept for reuse
  std::size_t system_allocations = 0;///< cache misses that went to the system
  std::size_t cache_hits = 0;
  std::size_t bookkeeping_allocations = 0;  ///< host heap allocations for the allocator's own records
  std::size_t graph_pool_bytes = 0;  ///< Cuda: blocks owned by live CUDA graph pools, held or idle
  std::size_t peak_graph_pool_bytes = 0;  ///< Cuda: high-water mark of graph_pool_bytes since reset_peak()
};

namespace detail {

/// Raw memory of a device. (The Cuda device has its own CachingAllocator specialisation, with
/// per-stream free lists, in datanas/core/cuda.hpp.)
template <class D>
struct RawMemory;

template <>
struct RawMemory<Cpu> {
  static constexpr std::size_t kAlignment = 64;  // a cache line; also AVX-512 aligned
  static void* allocate(std::size_t bytes) {
    void* p = std::aligned_alloc(kAlignment, bytes);
    if (!p) throw error(concat("cpu allocator: out of memory allocating ", bytes, " bytes"));
    return p;
  }
  static void deallocate(void* p) { std::free(p); }
  // Under AddressSanitizer a cached free block is poisoned: a raw pointer used after its tensor
  // released the block is reported, although the memory stays allocated.
  static void poison(void* p, std::size_t n) { DATANAS_ASAN_POISON(p, n); }
  static void unpoison(void* p, std::size_t n) { DATANAS_ASAN_UNPOISON(p, n); }
};

/// What the Cpu and the Cuda caching allocators share: their free blocks (BlockCache) and
/// counters behind one mutex.
template <class System>
class GuardedCache {
 public:
  /// Whether small requests (< 1 MiB) are cut from 2 MiB segments (true) or are one system
  /// allocation each, reused by exact size (false). Each allocator's comment gives its default
  /// and why; core/block_cache.hpp compares the two.
  void set_small_segments(bool on) {
    std::lock_guard lock(mutex_);
    cache_.set_carve_small(on);
  }
  [[nodiscard]] bool small_segments() const {
    std::lock_guard lock(mutex_);
    return cache_.carves_small();
  }

  [[nodiscard]] AllocatorStats stats() const {
    std::lock_guard lock(mutex_);
    AllocatorStats s = stats_;
    s.bytes_cached = cache_.cached_bytes();
    s.bookkeeping_allocations = cache_.bookkeeping_allocations();
    return s;
  }

 protected:
  GuardedCache() = default;
  ~GuardedCache() = default;

  mutable std::mutex mutex_;
  AllocatorStats stats_;
  BlockCache<System> cache_;  // destroyed at exit: gives its free blocks back
};

}  // namespace detail

/// Per-device caching allocator (a process-wide singleton per device, thread-safe). Small blocks
/// by exact size by default (set_small_segments): a host malloc is cheap, and AddressSanitizer
/// checks separate blocks to their ends.
template <class D>
class CachingAllocator : public detail::GuardedCache<detail::RawMemory<D>> {
  static_assert(std::same_as<D, Cpu>,
                "CachingAllocator<Cuda> (and so Tensor<T, Cuda>) is defined by the CUDA backend: "
                "include <datanas/cuda.hpp> and use the datanas-cuda dependency");
  using Base = detail::GuardedCache<detail::RawMemory<D>>;
  using Base::cache_;
  using Base::mutex_;
  using Base::stats_;

 public:
  static CachingAllocator& instance() {
    static CachingAllocator a;  // destroyed at exit after all static tensors
    return a;
  }

  /// Returns a block of at least `bytes` bytes with refs == 1.
  detail::Storage* acquire(std::size_t bytes) {
    bytes = round_up(bytes);
    std::lock_guard lock(mutex_);
    detail::Block* b = cache_.take(0, bytes);
    if (b) {
      ++stats_.cache_hits;
    } else {
      if (bytes >= detail::BlockCache<detail::RawMemory<D>>::kLargeBlock && over_headroom(bytes))
        cache_.discard_smaller(0, bytes);
      b = cache_.adopt(detail::RawMemory<D>::allocate(cache_.system_bytes(bytes)), bytes, 0, 0);
      ++stats_.system_allocations;
    }
    b->refs = 1;
    b->next_free = nullptr;
    stats_.bytes_in_use += b->bytes;
    if (stats_.bytes_in_use > stats_.peak_bytes_in_use) stats_.peak_bytes_in_use = stats_.bytes_in_use;
    high_water_ = std::max(high_water_, stats_.bytes_in_use);
    return b;
  }

  /// Returns a block to the cache (merged with its free neighbours if it is large).
  void release(detail::Storage* s) {
    std::lock_guard lock(mutex_);
    stats_.bytes_in_use -= s->bytes;
    cache_.put(static_cast<detail::Block*>(s));
  }

  /// Gives every cached block back to the system (live tensors, and the segments they are cut
  /// from, are untouched).
  void empty_cache() {
    std::lock_guard lock(mutex_);
    cache_.discard_whole([](std::uint64_t) { return true; });
  }

  void reset_peak() {
    std::lock_guard lock(mutex_);
    stats_.peak_bytes_in_use = stats_.bytes_in_use;
  }

 private:
  CachingAllocator() = default;
  static std::size_t round_up(std::size_t b) { return b == 0 ? 64 : (b + 63) / 64 * 64; }

  // Caller holds mutex_. Whether a system allocation of `bytes` would take the memory held (in use
  // plus cached) beyond 1.25x the most ever in use at once. Then the large request that found no
  // block first gives back the whole free segments smaller than itself: they could not serve it,
  // and a longer PTB window would otherwise leave the shorter windows' segments behind for good
  // (measured: 1.9 GB resident against 0.65 GB; docs/benchmarks.md). Below the headroom nothing
  // is given back, so steps of fixed shapes, whose misses come from fragmentation, never churn
  // (giving back at every miss cost the DARTS search step ~300 system allocations a step).
  // A free() costs the host nothing, unlike cudaFree, which is why only the Cpu does this.
  [[nodiscard]] bool over_headroom(std::size_t bytes) const {
    return stats_.bytes_in_use + cache_.cached_bytes() + bytes > high_water_ + high_water_ / 4;
  }

  std::size_t high_water_ = 0;  // most bytes ever in use at once (reset_peak does not touch it)
};

}  // namespace datanas
