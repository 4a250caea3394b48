// datanas/core/cuda.hpp - the Cuda device on the host side: streams, the stream-ordered caching
// allocator behind Tensor<T, Cuda>, and host <-> device copies.
//
// Host C++ only (no device code, no Eigen needed beyond tensor.hpp): it compiles with the host
// compiler against the CUDA runtime, so ordinary .cpp files can own device tensors; kernels live
// in kernels/datanas/cuda/*.cuh and are launched from nvcc translation units.
//
// Ordering model (docs/cuda.md):
//   - Every piece of device work runs on a stream. A thread has a current stream, set by
//     StreamGuard; without a guard it is the legacy default stream (id 0). A network owns one
//     Stream and runs its steps under a StreamGuard, so by default each network has its own.
//   - A device block remembers the stream it was allocated on. When its last tensor drops, it
//     returns to that stream's free list at once, without waiting for the kernels that still use
//     it: a later allocation on the same stream is ordered after them by the stream itself. That
//     is why no allocation or release ever synchronises the host.
//   - Using a tensor on a stream other than the one that allocated it is the caller's business
//     (order the streams with an event, as with PyTorch's record_stream); nothing here does it.
//   - The only host synchronisation points are to_host(), Stream::synchronize(), a Stream's
//     destruction, and empty_cache() (cudaFree waits for the device).
#pragma once

#include <cuda_runtime.h>

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <mutex>
#include <unordered_map>
#include <unordered_set>

#include "datanas/core/allocator.hpp"
#include "datanas/core/device.hpp"
#include "datanas/core/error.hpp"
#include "datanas/core/tensor.hpp"
#include "datanas/cuda/check.cuh"

namespace datanas::cuda {

/// Number of usable CUDA devices; 0 when there is no device or no driver (never throws).
inline int device_count() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    (void)cudaGetLastError();  // clear the error so later calls do not report it
    return 0;
  }
  return n;
}

/// Throws datanas::error saying that `what` needs a GPU when none is usable.
inline void require_device(const char* what) {
  int n = 0;
  const cudaError_t e = cudaGetDeviceCount(&n);
  if (e != cudaSuccess || n == 0) {
    (void)cudaGetLastError();
    throw error(::datanas::detail::concat(what, ": no CUDA device (",
                               e != cudaSuccess ? cudaGetErrorString(e) : "no GPU is visible",
                               "); use the Cpu device, or run on a machine with an NVIDIA GPU"));
  }
}

/// A stream as kernels and the allocator see it: the CUDA handle and a process-unique id (0 is
/// the legacy default stream, whose handle is nullptr). Ids are never reused, so a destroyed
/// stream's blocks can never be mistaken for a new stream's that got the same handle.
struct StreamRef {
  cudaStream_t handle = nullptr;
  std::uint64_t id = 0;
};

namespace detail {
inline std::uint64_t next_stream_id() {
  static std::atomic<std::uint64_t> next{1};
  return next.fetch_add(1, std::memory_order_relaxed);
}
inline StreamRef& current_stream_slot() {
  thread_local StreamRef current;
  return current;
}
}  // namespace detail

/// This thread's current stream: where new device tensors are allocated and kernels launched.
inline StreamRef current_stream() { return detail::current_stream_slot(); }

class Stream;

}  // namespace datanas::cuda

namespace datanas {

/// The Cuda caching allocator: exact-size free lists (sizes rounded up to 256 bytes, the
/// alignment cudaMalloc gives) kept per stream, so that reuse is ordered by the stream and never
/// waits for the device (see the file comment). Process-wide singleton, thread-safe.
template <>
class CachingAllocator<Cuda> {
 public:
  static CachingAllocator& instance() {
    static CachingAllocator a;
    return a;
  }

  /// A block of at least `bytes` bytes with refs == 1, ordered on the current stream.
  detail::Storage* acquire(std::size_t bytes) { return acquire(bytes, cuda::current_stream()); }

  /// A block of at least `bytes` bytes with refs == 1, ordered on `stream`.
  detail::Storage* acquire(std::size_t bytes, cuda::StreamRef stream) {
    bytes = round_up(bytes);
    std::lock_guard lock(mutex_);
    Block* b = nullptr;
    if (auto it = free_.find(Key{stream.id, bytes}); it != free_.end() && it->second) {
      b = static_cast<Block*>(it->second);
      it->second = b->next_free;
      stats_.bytes_cached -= bytes;
      ++stats_.cache_hits;
    } else {
      b = new Block;
      try {
        b->data = system_allocate(bytes);
      } catch (...) {
        delete b;
        throw;
      }
      b->bytes = bytes;
      ++stats_.system_allocations;
    }
    b->stream = stream.id;
    b->refs = 1;
    b->next_free = nullptr;
    stats_.bytes_in_use += bytes;
    if (stats_.bytes_in_use > stats_.peak_bytes_in_use) stats_.peak_bytes_in_use = stats_.bytes_in_use;
    if (poison_) DATANAS_CUDA_CHECK(cudaMemsetAsync(b->data, 0xff, bytes, stream.handle));
    return b;
  }

  /// Test mode: every block handed out is first filled with 0xff bytes (NaN as float and
  /// double), queued on its stream. An op that forgets to write an element of its output, or a
  /// backward that adds to a gradient it should have overwritten, then shows NaN.
  void set_poison(bool on) {
    std::lock_guard lock(mutex_);
    poison_ = on;
  }

  /// Returns a block to the free list of the stream it was allocated on (no synchronisation);
  /// a block of a destroyed stream goes back to the system.
  void release(detail::Storage* s) {
    Block* b = static_cast<Block*>(s);
    std::lock_guard lock(mutex_);
    stats_.bytes_in_use -= b->bytes;
    if (b->stream != 0 && !live_streams_.contains(b->stream)) {
      // Its stream was synchronised when it was destroyed, and no other stream may use the block
      // without ordering itself (file comment), so the memory is idle.
      free_quietly(b);
      return;
    }
    stats_.bytes_cached += b->bytes;
    detail::Storage*& head = free_[Key{b->stream, b->bytes}];
    b->next_free = head;
    head = b;
  }

  /// Gives every cached block back to the system (live tensors are untouched). cudaFree waits
  /// for the device, so this synchronises: call it outside training steps.
  void empty_cache() {
    std::lock_guard lock(mutex_);
    drop_free_lists([](std::uint64_t) { return true; });
  }

  [[nodiscard]] AllocatorStats stats() const {
    std::lock_guard lock(mutex_);
    return stats_;
  }
  void reset_peak() {
    std::lock_guard lock(mutex_);
    stats_.peak_bytes_in_use = stats_.bytes_in_use;
  }

  ~CachingAllocator() {
    // At exit the CUDA runtime may already be unloading; cudaFree then fails harmlessly.
    drop_free_lists([](std::uint64_t) { return true; });
  }

 private:
  friend class cuda::Stream;

  struct Block : detail::Storage {
    std::uint64_t stream = 0;  // StreamRef::id of the stream that allocated it
  };
  struct Key {
    std::uint64_t stream;
    std::size_t bytes;
    bool operator==(const Key&) const = default;
  };
  struct KeyHash {
    std::size_t operator()(const Key& k) const {
      return std::hash<std::uint64_t>()(k.stream * 0x9E3779B97F4A7C15ull ^ std::uint64_t(k.bytes));
    }
  };

  CachingAllocator() = default;
  static std::size_t round_up(std::size_t b) { return b == 0 ? 256 : (b + 255) / 256 * 256; }

  void register_stream(std::uint64_t id) {
    std::lock_guard lock(mutex_);
    live_streams_.insert(id);
  }
  /// Called by ~Stream after it synchronised the stream: its cached blocks go back to the system
  /// and blocks of it still held by tensors will when they are released.
  void retire_stream(std::uint64_t id) {
    std::lock_guard lock(mutex_);
    live_streams_.erase(id);
    drop_free_lists([id](std::uint64_t s) { return s == id; });
  }

  // Caller holds mutex_ (or is the destructor).
  template <class Pred>
  void drop_free_lists(Pred of_stream) {
    for (auto& [key, head] : free_) {
      if (!of_stream(key.stream)) continue;
      while (head) {
        detail::Storage* next = head->next_free;
        stats_.bytes_cached -= head->bytes;
        free_quietly(static_cast<Block*>(head));
        head = next;
      }
    }
  }
  static void free_quietly(Block* b) {
    if (cudaFree(b->data) != cudaSuccess) (void)cudaGetLastError();
    delete b;
  }

  // Caller holds mutex_. On out-of-memory, frees this allocator's cache and tries once more.
  void* system_allocate(std::size_t bytes) {
    void* p = nullptr;
    cudaError_t e = cudaMalloc(&p, bytes);
    if (e == cudaErrorMemoryAllocation && stats_.bytes_cached > 0) {
      (void)cudaGetLastError();
      drop_free_lists([](std::uint64_t) { return true; });
      e = cudaMalloc(&p, bytes);
    }
    if (e == cudaSuccess) return p;
    (void)cudaGetLastError();
    if (e == cudaErrorNoDevice || e == cudaErrorInsufficientDriver)
      cuda::require_device("cuda allocator");  // throws the "no CUDA device" message
    throw error(datanas::detail::concat("cuda allocator: cudaMalloc of ", bytes, " bytes failed: ",
                                        cudaGetErrorString(e), " (", stats_.bytes_in_use,
                                        " bytes held by tensors, ", stats_.bytes_cached, " cached)"));
  }

  mutable std::mutex mutex_;
  bool poison_ = false;
  std::unordered_map<Key, detail::Storage*, KeyHash> free_;
  std::unordered_set<std::uint64_t> live_streams_;
  AllocatorStats stats_;
};

}  // namespace datanas

namespace datanas::cuda {

/// An owned, non-blocking CUDA stream (it does not wait for the legacy default stream). A network
/// holds one and runs under StreamGuard(stream), so its kernels and allocations are ordered among
/// themselves and independent of other networks'. Not copyable; destruction waits for its work.
class Stream {
 public:
  Stream() : id_(detail::next_stream_id()) {
    require_device("cuda::Stream");
    DATANAS_CUDA_CHECK(cudaStreamCreateWithFlags(&handle_, cudaStreamNonBlocking));
    CachingAllocator<Cuda>::instance().register_stream(id_);
  }
  Stream(const Stream&) = delete;
  Stream& operator=(const Stream&) = delete;
  ~Stream() {
    // Its blocks may be reused by nobody until the work that last touched them is done.
    if (cudaStreamSynchronize(handle_) != cudaSuccess) (void)cudaGetLastError();
    CachingAllocator<Cuda>::instance().retire_stream(id_);
    if (cudaStreamDestroy(handle_) != cudaSuccess) (void)cudaGetLastError();
  }

  [[nodiscard]] StreamRef ref() const { return {handle_, id_}; }
  [[nodiscard]] cudaStream_t handle() const { return handle_; }
  [[nodiscard]] std::uint64_t id() const { return id_; }
  /// Blocks the host until all work queued on this stream has finished.
  void synchronize() const { DATANAS_CUDA_CHECK(cudaStreamSynchronize(handle_)); }

 private:
  cudaStream_t handle_ = nullptr;
  std::uint64_t id_;
};

/// Makes `stream` this thread's current stream for the guard's lifetime (guards nest).
class StreamGuard {
 public:
  explicit StreamGuard(const Stream& stream) : previous_(detail::current_stream_slot()) {
    detail::current_stream_slot() = stream.ref();
  }
  StreamGuard(const StreamGuard&) = delete;
  StreamGuard& operator=(const StreamGuard&) = delete;
  ~StreamGuard() { detail::current_stream_slot() = previous_; }

 private:
  StreamRef previous_;
};

// ---- copies -----------------------------------------------------------------------------------

/// A device copy of a host tensor, queued on the current stream. The host data has been read
/// when this returns (the runtime stages pageable memory), so `host` may change afterwards.
template <Element T>
Tensor<T, Cuda> to_device(const Tensor<T, Cpu>& host) {
  Tensor<T, Cuda> d = Tensor<T, Cuda>::empty(host.shape());
  if (host.numel())
    DATANAS_CUDA_CHECK(cudaMemcpyAsync(d.data(), host.data(), sizeof(T) * std::size_t(host.numel()),
                                       cudaMemcpyHostToDevice, current_stream().handle));
  return d;
}

/// A host copy of a device tensor: waits for the current stream (the one synchronisation point
/// of a training step, used where a value is logged). Use it on the stream that wrote `dev`.
template <Element T>
Tensor<T, Cpu> to_host(const Tensor<T, Cuda>& dev) {
  Tensor<T, Cpu> h = Tensor<T, Cpu>::empty(dev.shape());
  if (dev.numel()) {
    const cudaStream_t s = current_stream().handle;
    DATANAS_CUDA_CHECK(cudaMemcpyAsync(h.data(), dev.data(), sizeof(T) * std::size_t(dev.numel()),
                                       cudaMemcpyDeviceToHost, s));
    DATANAS_CUDA_CHECK(cudaStreamSynchronize(s));
  }
  return h;
}

/// dst = src on the device, queued on the current stream; sizes must match.
template <Element T>
void copy(const Tensor<T, Cuda>& dst, const Tensor<T, Cuda>& src) {
  DATANAS_CHECK(dst.numel() == src.numel(), "cuda::copy: size mismatch ", src.shape().str(), " -> ",
                dst.shape().str());
  if (src.numel())
    DATANAS_CUDA_CHECK(cudaMemcpyAsync(dst.data(), src.data(), sizeof(T) * std::size_t(src.numel()),
                                       cudaMemcpyDeviceToDevice, current_stream().handle));
}

/// Sets every byte of `t` to `byte`, queued on the current stream (0xff makes floats NaN: tests
/// poison outputs with it so that an element a kernel forgot to write cannot pass).
template <Element T>
void fill_bytes(const Tensor<T, Cuda>& t, unsigned char byte) {
  if (t.numel())
    DATANAS_CUDA_CHECK(cudaMemsetAsync(t.data(), byte, sizeof(T) * std::size_t(t.numel()),
                                       current_stream().handle));
}

}  // namespace datanas::cuda
