// datanas/core/block_cache.hpp - the free blocks of a caching allocator, shared by the Cpu one
// (core/allocator.hpp) and the Cuda one (core/cuda.hpp).
//
// Two regimes, split at 1 MiB as PyTorch's CUDA caching allocator splits them:
//   - Small blocks (< kLargeBlock) are either one system allocation each, cached by exact
//     (rounded) size, or, when the owner turns carving on (set_carve_small), cut from small
//     segments of kSmallSegment bytes by best fit and merged back when freed.
//     Exact sizes: a step that repeats its shapes hits every time, and each block stays a
//     separate allocation that AddressSanitizer and the CUDA simulator's guard pages check to
//     its end (the Cpu allocator's way, and the simulator's tests').
//     Carving: a step whose shapes vary (EGS's sparse mode runs other ops, and so makes other
//     temporaries, at every step) needs only as much small memory as it uses at once, not a
//     block of every size it ever used; with exact sizes, each size's free list filled only as
//     samples recurred, and every miss was a cudaMalloc, which may synchronise the device, in
//     the middle of a step (the Cuda allocator's way on a GPU; docs/cuda.md, "Memory").
//   - Large blocks are carved out of segments (system allocations) and given back to them. A
//     request takes the smallest free large block of its pool that holds it (best fit); when at
//     least kLargeBlock would be left over, the rest stays free as a block of its own. A released
//     block merges with its free neighbours of the same segment and pool. Why: the PTB loops draw
//     a new window length for every step (N(bptt, 5)), so exact-size reuse kept a set of
//     logits-sized blocks per length: 7.1 GB cached after 125 windows at vocab 10000, batch 64,
//     against a 434 MB peak in use (docs/design.md, "Memory"). Splitting serves a short window
//     from the blocks of a long one.
// Small and large requests never share a segment (a long-lived small block would pin a large
// segment). A segment goes back to the system only whole (every block of it free and merged); an
// overrun into a neighbour of the same segment is not seen by the simulator's guard pages, which
// is why the simulator's tests keep small blocks separate.
//
// Pools: every block belongs to one pool (an id); blocks of different pools never meet in one
// free block. The Cpu allocator has one pool, the Cuda allocator one per stream plus one per
// CUDA graph pool. The cache never synchronises and never calls the system except to give whole
// free segments back when told to (discard, discard_whole); its owner holds a mutex around
// every call.
//
// No heap allocation in steady state: headers come 64 at a time and are recycled (spare list),
// the index of free carved blocks and the exact-size free lists take their nodes from a pool
// resource that keeps the nodes it got back, and the free lists keep their entries once created.
// The cache counts the heap allocations it makes for all this (bookkeeping_allocations), so that
// tests can tell them from anyone else's.
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

/// How a block came from the system (see the file comment).
enum class BlockKind : std::uint8_t {
  kExact,  ///< a small block that is a whole system allocation, reused by exact size
  kSmall,  ///< cut from a small segment (kSmallSegment bytes), for requests below kLargeBlock
  kLarge,  ///< cut from a large segment, for requests of kLargeBlock and more
};

/// A cached block: the Storage a Tensor holds, plus the cache's bookkeeping.
struct Block : Storage {
  std::uint64_t stream = 0;    // Cuda: StreamRef::id of the stream that allocated it; Cpu: 0
  std::uint64_t pool = 0;      // the free lists it returns to
  Block* seg_prev = nullptr;   // neighbours in the same segment (kSmall and kLarge only)
  Block* seg_next = nullptr;
  BlockKind kind = BlockKind::kExact;
  bool is_free = false;
};

/// System: static void deallocate(void*) (gives a segment or small block back), and static
/// void poison(void*, std::size_t) / unpoison(void*, std::size_t) (mark memory free / in use
/// for a sanitizer; no-ops where memory is not host memory).
template <class System>
class BlockCache {
 public:
  static constexpr std::size_t kLargeBlock = std::size_t(1) << 20;
  /// A small segment: what one system allocation for small requests holds when they are carved
  /// (PyTorch's CUDA caching allocator uses the same 2 MiB for requests up to 1 MiB).
  static constexpr std::size_t kSmallSegment = std::size_t(2) << 20;

  BlockCache() = default;
  BlockCache(const BlockCache&) = delete;
  BlockCache& operator=(const BlockCache&) = delete;
  ~BlockCache() {
    discard_whole([](std::uint64_t) { return true; });
    while (slabs_) {
      HeaderSlab* next = slabs_->next;
      delete slabs_;
      slabs_ = next;
    }
  }

  /// Whether small requests from now on are cut from small segments (true) or served by exact
  /// size (false, the default). Blocks keep the kind they were made with.
  void set_carve_small(bool on) { carve_small_ = on; }
  [[nodiscard]] bool carves_small() const { return carve_small_; }

  /// A free block of `pool` holding `bytes` (already rounded to the allocator's alignment), now
  /// in use; nullptr when none fits. A large one may be bigger than asked by less than
  /// kLargeBlock (the tail that would be too small to stand alone); any other is exactly `bytes`.
  Block* take(std::uint64_t pool, std::size_t bytes) {
    Block* b = bytes >= kLargeBlock ? take_carved(BlockKind::kLarge, pool, bytes)
               : carve_small_       ? take_carved(BlockKind::kSmall, pool, bytes)
                                    : take_exact(pool, bytes);
    if (!b) return nullptr;
    b->is_free = false;
    cached_ -= b->bytes;
    System::unpoison(b->data, b->bytes);
    return b;
  }

  /// How many bytes to ask the system for when take(pool, bytes) found nothing: a small segment
  /// when small requests are carved, else the request itself.
  [[nodiscard]] std::size_t system_bytes(std::size_t bytes) const {
    return bytes < kLargeBlock && carve_small_ ? kSmallSegment : bytes;
  }

  /// The block, in use, for a request of `bytes` that take() could not serve, given the
  /// system_bytes(bytes) bytes the caller just got from the system at `data`. A small segment's
  /// rest stays free in `pool`.
  Block* adopt(void* data, std::size_t bytes, std::uint64_t pool, std::uint64_t stream) {
    const std::size_t got = system_bytes(bytes);
    Block* b = new_header();
    b->data = data;
    b->bytes = got;
    b->pool = pool;
    b->stream = stream;
    b->kind = bytes >= kLargeBlock ? BlockKind::kLarge : got != bytes ? BlockKind::kSmall : BlockKind::kExact;
    if (b->kind != BlockKind::kSmall) return b;
    put(b);  // the whole segment, free; the request is cut from it
    return take(pool, bytes);
  }

  /// Makes an in-use block free in its pool (b->pool), merged with its free neighbours of the
  /// same pool; returns the free block that now contains it (b's header may have been recycled).
  Block* put(Block* b) {
    System::poison(b->data, b->bytes);
    cached_ += b->bytes;
    b->is_free = true;
    if (b->kind == BlockKind::kExact) {
      Storage*& head = exact_[Key{b->pool, b->bytes}];
      b->next_free = head;
      head = b;
      return b;
    }
    if (Block* p = b->seg_prev; p && p->is_free && p->pool == b->pool) {
      carved_.erase(p);
      absorb(p, b);
      b = p;
    }
    if (Block* n = b->seg_next; n && n->is_free && n->pool == b->pool) {
      carved_.erase(n);
      absorb(b, n);
    }
    carved_.insert(b);
    return b;
  }

  /// Whether a free block is a whole system allocation (an exact-size block, or a segment
  /// merged back into one block), so that it can go back to the system.
  [[nodiscard]] static bool whole(const Block* b) {
    return b->kind == BlockKind::kExact || (!b->seg_prev && !b->seg_next);
  }

  /// Gives a free, whole block (put's result with whole() true) back to the system.
  void discard(Block* b) {
    if (b->kind != BlockKind::kExact) {
      carved_.erase(b);
    } else {
      Storage*& head = exact_[Key{b->pool, b->bytes}];
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
    for (auto& [key, head] : exact_) {
      if (!of_pool(key.pool)) continue;
      while (head) {
        Block* b = static_cast<Block*>(head);
        head = b->next_free;
        cached_ -= b->bytes;
        release_to_system(b);
      }
    }
    for (auto it = carved_.begin(); it != carved_.end();) {
      Block* b = *it;
      if (!of_pool(b->pool) || !whole(b)) {
        ++it;
        continue;
      }
      it = carved_.erase(it);
      cached_ -= b->bytes;
      release_to_system(b);
    }
  }

  /// Gives the free whole large segments of `pool` smaller than `bytes` back to the system:
  /// called when a large request of `bytes` found no block, they could not have served it.
  /// Returns the bytes given back.
  std::size_t discard_smaller(std::uint64_t pool, std::size_t bytes) {
    std::size_t freed = 0;
    Block probe;
    probe.kind = BlockKind::kLarge;
    probe.pool = pool;
    for (auto it = carved_.lower_bound(&probe);
         it != carved_.end() && (*it)->kind == BlockKind::kLarge && (*it)->pool == pool && (*it)->bytes < bytes;) {
      Block* b = *it;
      if (!whole(b)) {
        ++it;
        continue;
      }
      it = carved_.erase(it);
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
    for (auto& [key, head] : exact_) {
      if (key.pool != pool) continue;
      for (; head; head = head->next_free) out.push_back(static_cast<Block*>(head));
    }
    for (auto it = carved_.begin(); it != carved_.end();) {
      if ((*it)->pool != pool) {
        ++it;
        continue;
      }
      out.push_back(*it);
      it = carved_.erase(it);
    }
    for (Block* b : out) {
      cached_ -= b->bytes;
      b->is_free = false;
    }
    return out;
  }

  /// Bytes in free blocks (all pools).
  [[nodiscard]] std::size_t cached_bytes() const { return cached_; }

  /// Heap allocations the cache made for its own bookkeeping so far: slabs of block headers and
  /// the free lists' and index's nodes.
  [[nodiscard]] std::size_t bookkeeping_allocations() const { return heap_.allocations + header_slabs_; }

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
  /// Free carved blocks ordered by kind, pool, size, then address: lower_bound of (kind, pool,
  /// bytes) is the best fit.
  struct BySize {
    bool operator()(const Block* a, const Block* b) const {
      if (a->kind != b->kind) return a->kind < b->kind;
      if (a->pool != b->pool) return a->pool < b->pool;
      if (a->bytes != b->bytes) return a->bytes < b->bytes;
      return std::less<const void*>()(a->data, b->data);  // a total order on unrelated pointers
    }
  };

  Block* take_exact(std::uint64_t pool, std::size_t bytes) {
    auto it = exact_.find(Key{pool, bytes});
    if (it == exact_.end() || !it->second) return nullptr;
    Block* b = static_cast<Block*>(it->second);
    it->second = b->next_free;
    b->next_free = nullptr;
    return b;
  }

  /// Best fit among the free blocks of `kind` and `pool`, split when the rest can stand alone: a
  /// large rest of at least kLargeBlock, any small rest (sizes are multiples of the owner's
  /// alignment, so a small rest is at least one aligned unit).
  Block* take_carved(BlockKind kind, std::uint64_t pool, std::size_t bytes) {
    Block probe;
    probe.kind = kind;
    probe.pool = pool;
    probe.bytes = bytes;
    auto it = carved_.lower_bound(&probe);
    if (it == carved_.end() || (*it)->kind != kind || (*it)->pool != pool) return nullptr;
    Block* b = *it;
    carved_.erase(it);
    const std::size_t min_rest = kind == BlockKind::kLarge ? kLargeBlock : 1;
    if (b->bytes - bytes >= min_rest) {  // split: the tail stays free
      Block* rest = new_header();
      rest->data = static_cast<char*>(b->data) + bytes;
      rest->bytes = b->bytes - bytes;
      rest->pool = b->pool;
      rest->stream = b->stream;
      rest->kind = kind;
      rest->is_free = true;
      rest->seg_prev = b;
      rest->seg_next = b->seg_next;
      if (b->seg_next) b->seg_next->seg_prev = rest;
      b->seg_next = rest;
      b->bytes = bytes;
      carved_.insert(rest);
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
    if (!spare_) {  // a slab of headers, all spare: fewer heap allocations than one per header
      auto* slab = new HeaderSlab{slabs_, {}};
      slabs_ = slab;
      ++header_slabs_;
      for (Block& h : slab->headers) recycle(&h);
    }
    Block* h = spare_;
    spare_ = static_cast<Block*>(h->next_free);
    *h = Block{};
    return h;
  }
  void recycle(Block* h) {
    h->next_free = spare_;
    spare_ = h;
  }

  /// The heap behind the node pool, counting what it hands out.
  struct CountingHeap : std::pmr::memory_resource {
    std::size_t allocations = 0;
    void* do_allocate(std::size_t bytes, std::size_t align) override {
      ++allocations;
      return std::pmr::new_delete_resource()->allocate(bytes, align);
    }
    void do_deallocate(void* p, std::size_t bytes, std::size_t align) override {
      std::pmr::new_delete_resource()->deallocate(p, bytes, align);
    }
    bool do_is_equal(const std::pmr::memory_resource& o) const noexcept override { return this == &o; }
  };
  static constexpr int kSlabHeaders = 64;
  struct HeaderSlab {
    HeaderSlab* next;
    Block headers[kSlabHeaders];
  };

  CountingHeap heap_;
  std::pmr::unsynchronized_pool_resource nodes_{&heap_};  // keeps the nodes it got back for reuse
  std::pmr::unordered_map<Key, Storage*, KeyHash> exact_{&nodes_};
  std::set<Block*, BySize, std::pmr::polymorphic_allocator<Block*>> carved_{&nodes_};
  HeaderSlab* slabs_ = nullptr;
  std::size_t header_slabs_ = 0;
  Block* spare_ = nullptr;
  std::size_t cached_ = 0;
  bool carve_small_ = false;
};

}  // namespace datanas::detail
