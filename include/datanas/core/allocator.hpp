// datanas/core/allocator.hpp - the caching allocator behind every tensor.
//
// Why: a search step creates and drops thousands of same-shaped temporaries. Returning their
// blocks to a per-size free list instead of the system means that, once the first step has run,
// a training step makes no fresh heap allocation at all (tests/test_allocation.cpp proves it).
// Blocks are cached by exact byte size rounded up to 64 bytes; training steps repeat the same
// shapes, so exact-size reuse hits every time without the 2x waste of power-of-two classes.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <mutex>
#include <new>
#include <unordered_map>

#include "datanas/core/device.hpp"
#include "datanas/core/error.hpp"

namespace datanas {

/// Counters of one device's allocator, in bytes and calls.
struct AllocatorStats {
  std::size_t bytes_in_use = 0;      ///< held by live tensors
  std::size_t peak_bytes_in_use = 0; ///< high-water mark of bytes_in_use since reset_peak()
  std::size_t bytes_cached = 0;      ///< free blocks kept for reuse
  std::size_t system_allocations = 0;///< cache misses that went to the system
  std::size_t cache_hits = 0;
  std::size_t graph_pool_bytes = 0;  ///< Cuda: blocks owned by live CUDA graph pools, held or idle
  std::size_t peak_graph_pool_bytes = 0;  ///< Cuda: high-water mark of graph_pool_bytes since reset_peak()
};

namespace detail {

/// Header of one memory block. Intrusively reference counted by Tensor handles; headers are
/// recycled with their blocks so that reuse costs no allocation either.
struct Storage {
  void* data = nullptr;
  std::size_t bytes = 0;
  int refs = 0;  // not atomic: tensor handles are owned by one thread (see docs/design.md)
  Storage* next_free = nullptr;
};

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
};

}  // namespace detail

/// Per-device caching allocator (a process-wide singleton per device, thread-safe).
template <class D>
class CachingAllocator {
  static_assert(std::same_as<D, Cpu>,
                "CachingAllocator<Cuda> (and so Tensor<T, Cuda>) is defined by the CUDA backend: "
                "include <datanas/cuda.hpp> and use the datanas-cuda dependency");

 public:
  static CachingAllocator& instance() {
    static CachingAllocator a;  // destroyed at exit after all static tensors
    return a;
  }

  /// Returns a block of at least `bytes` bytes with refs == 1.
  detail::Storage* acquire(std::size_t bytes) {
    bytes = round_up(bytes);
    std::lock_guard lock(mutex_);
    detail::Storage* s = nullptr;
    if (auto it = free_.find(bytes); it != free_.end() && it->second) {
      s = it->second;
      it->second = s->next_free;
      stats_.bytes_cached -= bytes;
      ++stats_.cache_hits;
    } else {
      s = new detail::Storage;
      s->data = detail::RawMemory<D>::allocate(bytes);
      s->bytes = bytes;
      ++stats_.system_allocations;
    }
    s->refs = 1;
    s->next_free = nullptr;
    stats_.bytes_in_use += bytes;
    if (stats_.bytes_in_use > stats_.peak_bytes_in_use)
      stats_.peak_bytes_in_use = stats_.bytes_in_use;
    return s;
  }

  /// Returns a block to its size's free list.
  void release(detail::Storage* s) {
    std::lock_guard lock(mutex_);
    stats_.bytes_in_use -= s->bytes;
    stats_.bytes_cached += s->bytes;
    detail::Storage*& head = free_[s->bytes];
    s->next_free = head;
    head = s;
  }

  /// Gives every cached block back to the system (live tensors are untouched).
  void empty_cache() {
    std::lock_guard lock(mutex_);
    for (auto& [bytes, head] : free_) {
      while (head) {
        detail::Storage* next = head->next_free;
        detail::RawMemory<D>::deallocate(head->data);
        delete head;
        head = next;
      }
    }
    stats_.bytes_cached = 0;
  }

  [[nodiscard]] AllocatorStats stats() const {
    std::lock_guard lock(mutex_);
    return stats_;
  }
  void reset_peak() {
    std::lock_guard lock(mutex_);
    stats_.peak_bytes_in_use = stats_.bytes_in_use;
  }

  ~CachingAllocator() { empty_cache(); }

 private:
  CachingAllocator() = default;
  static std::size_t round_up(std::size_t b) { return b == 0 ? 64 : (b + 63) / 64 * 64; }

  mutable std::mutex mutex_;
  std::unordered_map<std::size_t, detail::Storage*> free_;
  AllocatorStats stats_;
};

}  // namespace datanas
