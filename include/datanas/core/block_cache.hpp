// datanas/core/block_cache.hpp - the free blocks of a caching allocator, shared by the Cpu one
// (core/allocator.hpp) and the Cuda one (core/cuda.hpp).
//
// Two regimes, split at 1 MiB as PyTorch's CUDA caching allocator splits them:
//   - Small blocks (< kLargeBlock) are one system allocation each, cached by exact (rounded)
//     size. A step repeats its shapes, so exact reuse hits every time, and each small block stays
//     a separate allocation that AddressSanitizer and the CUDA simulator's guard pages check to
//     its end.
//   - Large blocks are carved out of segments (system allocations) and given back to them. A
//     request takes the smallest free large block of its pool that holds it (best fit); when at
//     least kLargeBlock would be left over, the rest stays free as a block of its own. A released
//     block merges with its free neighbours of the same segment and pool. Why: the PTB loops draw
//     a new window length for every step (N(bptt, 5)), so exact-size reuse kept a set of
//     logits-sized blocks per length: 7.1 GB cached after 125 windows at vocab 10000, batch 64,
//     against a 434 MB peak in use (docs/design.md, "Memory"). Splitting serves a short window
//     from the blocks of a long one.
// A segment goes back to the system only whole (every block of it free and merged); a large
// block's overrun into its neighbour is not seen by the simulator's guard pages, which is why
// small blocks, which most tests use, stay separate.
//
// Pools: every block belongs to one pool (an id); blocks of different pools never meet in one
// free block. The Cpu allocator has one pool, the Cuda allocator one per stream plus one per
// CUDA graph pool. The cache never synchronises and never calls the system except to give whole
// free segments back when told to (discard, discard_whole); its owner holds a mutex around
// every call.
//
// No heap allocation in steady state: headers split off a block are recycled (spare list), the
// index of free large blocks takes its nodes from a pool resource that keeps the nodes it got
// back, and the small free lists keep their entries once created.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory_resource>
#include <set>
#include <unordered_map>
#include <vector>

namespace datanas::detail {

/// Header of one memory block. Intrusively reference counted by Tensor handles; headers are
/// recycled with their blocks so that reuse costs no allocation either.
struct Storage {
  void* data = nullptr;
  std::size_t bytes = 0;
  int refs = 0;  // not atomic: tensor handles are owned by one thread (see docs/design.md)
  Storage* next_free = nullptr;
};

/// A cached block: the Storage a Tensor holds, plus the cache's bookkeeping.
struct Block : Storage {
  std::uint64_t stream = 0;    // Cuda: StreamRef::id of the stream that allocated it; Cpu: 0
  std::uint64_t pool = 0;      // the free lists it returns to
  Block* seg_prev = nullptr;   // neighbours in the same segment (large blocks only)
  Block* seg_next = nullptr;
  bool large = false;
  bool is_free = false;
};

/// System: static void deallocate(void*) (gives a segment or small block back), and static
/// void poison(void*, std::size_t) / unpoison(void*, std::size_t) (mark memory free / in use
/// for a sanitizer; no-ops where memory is not host memory).
template <class System>
class BlockCache {
 public:
  static constexpr std::size_t kLargeBlock = std::size_t(1) << 20;

  BlockCache() = default;
  BlockCache(const BlockCache&) = delete;
  BlockCache& operator=(const BlockCache&) = delete;
  ~BlockCache() { discard_whole([](std::uint64_t) { return true; }); }

  /// A free block of `pool` holding `bytes` (already rounded to the allocator's alignment), now
  /// in use; nullptr when none fits. A large one may be bigger than asked by less than
  /// kLargeBlock (the tail that would be too small to stand alone).
  Block* take(std::uint64_t pool, std::size_t bytes) {
    Block* b = bytes < kLargeBlock ? take_small(pool, bytes) : take_large(pool, bytes);
    if (!b) return nullptr;
    b->is_free = false;
    cached_ -= b->bytes;
    System::unpoison(b->data, b->bytes);
    return b;
  }

  /// A header, in use, for `bytes` bytes the caller just got from the system at `data`.
  Block* adopt(void* data, std::size_t bytes, std::uint64_t pool, std::uint64_t stream) {
    Block* b = new_header();
    b->data = data;
    b->bytes = bytes;
    b->pool = pool;
    b->stream = stream;
    b->large = bytes >= kLargeBlock;
    return b;
  }

  /// Makes an in-use block free in its pool (b->pool), merged with its free neighbours of the
  /// same pool; returns the free block that now contains it (b's header may have been recycled).
  Block* put(Block* b) {
    System::poison(b->data, b->bytes);
    cached_ += b->bytes;
    b->is_free = true;
    if (!b->large) {
      Storage*& head = small_[Key{b->pool, b->bytes}];
      b->next_free = head;
      head = b;
      return b;
    }
    if (Block* p = b->seg_prev; p && p->is_free && p->pool == b->pool) {
      large_.erase(p);
      absorb(p, b);
      b = p;
    }
    if (Block* n = b->seg_next; n && n->is_free && n->pool == b->pool) {
      large_.erase(n);
      absorb(b, n);
    }
    large_.insert(b);
    return b;
  }

  /// Whether a free block is a whole system allocation (a small block, or a segment merged back
  /// into one block), so that it can go back to the system.
  [[nodiscard]] static bool whole(const Block* b) { return !b->large || (!b->seg_prev && !b->seg_next); }

  /// Gives a free, whole block (put's result with whole() true) back to the system.
  void discard(Block* b) {
    if (b->large) {
      large_.erase(b);
    } else {
      Storage*& head = small_[Key{b->pool, b->bytes}];
      for (Storage** link = &head; *link; link = &(*link)->next_free)
        if (*link == b) {
          *link = b->next_free;
          break;
        }
    }
    cached_ -= b->bytes;
    release_to_system(b);
  }

  /// Gives every free whole block of the pools `of_pool` accepts back to the system. Segments
  /// with a block in use stay (they go back when they are whole again and this is called).
  template <class Pred>
  void discard_whole(Pred of_pool) {
    for (auto& [key, head] : small_) {
      if (!of_pool(key.pool)) continue;
      while (head) {
        Block* b = static_cast<Block*>(head);
        head = b->next_free;
        cached_ -= b->bytes;
        release_to_system(b);
      }
    }
    for (auto it = large_.begin(); it != large_.end();) {
      Block* b = *it;
      if (!of_pool(b->pool) || !whole(b)) {
        ++it;
        continue;
      }
      it = large_.erase(it);
      cached_ -= b->bytes;
      release_to_system(b);
    }
    while (spare_) {
      Block* h = spare_;
      spare_ = static_cast<Block*>(h->next_free);
      delete h;
    }
  }

  /// Gives the free whole segments of `pool` smaller than `bytes` back to the system: called
  /// when a large request of `bytes` found no block, they could not have served it. Returns the
  /// bytes given back.
  std::size_t discard_smaller(std::uint64_t pool, std::size_t bytes) {
    std::size_t freed = 0;
    Block probe;
    probe.pool = pool;
    for (auto it = large_.lower_bound(&probe); it != large_.end() && (*it)->pool == pool && (*it)->bytes < bytes;) {
      Block* b = *it;
      if (!whole(b)) {
        ++it;
        continue;
      }
      it = large_.erase(it);
      cached_ -= b->bytes;
      freed += b->bytes;
      release_to_system(b);
    }
    return freed;
  }

  /// Removes every free block of `pool` from the cache and returns them (free, unmerged, not
  /// counted as cached): the caller re-pools them and put()s them back, or discards them.
  std::vector<Block*> take_all(std::uint64_t pool) {
    std::vector<Block*> out;
    for (auto& [key, head] : small_) {
      if (key.pool != pool) continue;
      for (; head; head = head->next_free) out.push_back(static_cast<Block*>(head));
    }
    for (auto it = large_.begin(); it != large_.end();) {
      if ((*it)->pool != pool) {
        ++it;
        continue;
      }
      out.push_back(*it);
      it = large_.erase(it);
    }
    for (Block* b : out) {
      cached_ -= b->bytes;
      b->is_free = false;
    }
    return out;
  }

  /// Bytes in free blocks (all pools).
  [[nodiscard]] std::size_t cached_bytes() const { return cached_; }

 private:
  struct Key {
    std::uint64_t pool;
    std::size_t bytes;
    bool operator==(const Key&) const = default;
  };
  struct KeyHash {
    std::size_t operator()(const Key& k) const {
      return std::hash<std::uint64_t>()(k.pool * 0x9E3779B97F4A7C15ull ^ std::uint64_t(k.bytes));
    }
  };
  /// Free large blocks ordered by pool, then size, then address: lower_bound of (pool, bytes)
  /// is the best fit.
  struct BySize {
    bool operator()(const Block* a, const Block* b) const {
      if (a->pool != b->pool) return a->pool < b->pool;
      if (a->bytes != b->bytes) return a->bytes < b->bytes;
      return std::less<const void*>()(a->data, b->data);  // a total order on unrelated pointers
    }
  };

  Block* take_small(std::uint64_t pool, std::size_t bytes) {
    auto it = small_.find(Key{pool, bytes});
    if (it == small_.end() || !it->second) return nullptr;
    Block* b = static_cast<Block*>(it->second);
    it->second = b->next_free;
    b->next_free = nullptr;
    return b;
  }

  Block* take_large(std::uint64_t pool, std::size_t bytes) {
    Block probe;
    probe.pool = pool;
    probe.bytes = bytes;
    probe.data = nullptr;
    auto it = large_.lower_bound(&probe);
    if (it == large_.end() || (*it)->pool != pool) return nullptr;
    Block* b = *it;
    large_.erase(it);
    if (b->bytes - bytes >= kLargeBlock) {  // split: the tail stays free
      Block* rest = new_header();
      rest->data = static_cast<char*>(b->data) + bytes;
      rest->bytes = b->bytes - bytes;
      rest->pool = b->pool;
      rest->stream = b->stream;
      rest->large = true;
      rest->is_free = true;
      rest->seg_prev = b;
      rest->seg_next = b->seg_next;
      if (b->seg_next) b->seg_next->seg_prev = rest;
      b->seg_next = rest;
      b->bytes = bytes;
      large_.insert(rest);
    }
    return b;
  }

  /// `left` swallows its right neighbour `right` (both out of the index); right's header is spare.
  void absorb(Block* left, Block* right) {
    left->bytes += right->bytes;
    left->seg_next = right->seg_next;
    if (right->seg_next) right->seg_next->seg_prev = left;
    recycle(right);
  }

  void release_to_system(Block* b) {
    System::unpoison(b->data, b->bytes);  // the system's own allocator may check it
    System::deallocate(b->data);
    recycle(b);
  }

  Block* new_header() {
    if (!spare_) return new Block;
    Block* h = spare_;
    spare_ = static_cast<Block*>(h->next_free);
    *h = Block{};
    return h;
  }
  void recycle(Block* h) {
    h->next_free = spare_;
    spare_ = h;
  }

  std::unordered_map<Key, Storage*, KeyHash> small_;
  std::pmr::unsynchronized_pool_resource nodes_;  // keeps the index's nodes for reuse
  std::set<Block*, BySize, std::pmr::polymorphic_allocator<Block*>> large_{&nodes_};
  Block* spare_ = nullptr;
  std::size_t cached_ = 0;
};

}  // namespace datanas::detail
