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
//   - A captured step (StepGraph, below) allocates from a graph pool: its blocks are the
//     graph's until it is destroyed, since every replay writes them again. By default each
//     graph has its own pool; graphs replayed one at a time can share one (GraphPool).
#pragma once

#include <cuda_runtime.h>

#include <algorithm>
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <functional>
#include <memory>
#include <mutex>
#include <type_traits>
#include <unordered_set>
#include <vector>

#include "datanas/core/allocator.hpp"
#include "datanas/core/device.hpp"
#include "datanas/core/error.hpp"
#include "datanas/core/tensor.hpp"
#include "datanas/cuda/check.cuh"
#include "datanas/cuda/elementwise.hpp"

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
  /// The free lists new blocks come from: 0 = the stream's own (keyed by id); a StepGraph's
  /// private pool while it captures.
  std::uint64_t pool = 0;
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
/// The StepGraph this thread is capturing into, or nullptr.
inline StepGraph<Cuda>*& capturing_slot() {
  thread_local StepGraph<Cuda>* graph = nullptr;
  return graph;
}
}  // namespace detail

/// The graph this thread is capturing a step into, or nullptr when work runs eagerly.
inline StepGraph<Cuda>* capturing_graph() { return detail::capturing_slot(); }

/// This thread's current stream: where new device tensors are allocated and kernels launched.
inline StreamRef current_stream() { return detail::current_stream_slot(); }

class Stream;

}  // namespace datanas::cuda

namespace datanas {

namespace detail {
/// Device memory as the Cuda allocator's BlockCache sees it.
struct CudaMemory {
  static void deallocate(void* p) {
    // At exit the CUDA runtime may already be unloading; cudaFree then fails harmlessly.
    if (cudaFree(p) != cudaSuccess) (void)cudaGetLastError();
  }
  static void poison(void*, std::size_t) {}  // device memory: no host sanitizer sees it
  static void unpoison(void*, std::size_t) {}
};
}  // namespace detail

/// The Cuda caching allocator: free blocks kept per stream (detail::BlockCache: sizes rounded up
/// to 256 bytes, the alignment cudaMalloc gives; small blocks cut from 2 MiB segments, large ones
/// from segments of their own size, both split and merged), so that reuse is ordered by the
/// stream and never waits for the device (see the file comment). A StepGraph's pool is one more
/// set of free blocks on its stream: while it captures, blocks come from the pool, else from the
/// stream's idle blocks (same stream, so already ordered), else cudaMalloc; they stay in the pool
/// until the graph is destroyed, since each replay writes them again. Whole free segments go back
/// to the system only in empty_cache(), when a stream is destroyed, and when cudaMalloc runs out
/// of memory (cudaFree waits for the device, so a step never calls it). Process-wide singleton,
/// thread-safe.
template <>
class CachingAllocator<Cuda> : public detail::GuardedCache<detail::CudaMemory> {
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
    const std::uint64_t pool = stream.pool ? stream.pool : stream.id;
    std::lock_guard lock(mutex_);
    Block* b = cache_.take(pool, bytes);
    const bool joins_graph = !b && pool != stream.id;  // from outside into a graph's pool
    if (joins_graph) b = cache_.take(stream.id, bytes);  // idle on the same stream
    if (b) {
      ++stats_.cache_hits;
    } else {
      b = cache_.adopt(system_allocate(cache_.system_bytes(bytes)), bytes, pool, stream.id);
      ++stats_.system_allocations;
    }
    if (joins_graph) {
      stats_.graph_pool_bytes += b->bytes;
      stats_.peak_graph_pool_bytes = std::max(stats_.peak_graph_pool_bytes, stats_.graph_pool_bytes);
    }
    b->pool = pool;
    b->refs = 1;
    b->next_free = nullptr;
    stats_.bytes_in_use += b->bytes;
    if (stats_.bytes_in_use > stats_.peak_bytes_in_use) stats_.peak_bytes_in_use = stats_.bytes_in_use;
    if (poison_) DATANAS_CUDA_CHECK(cudaMemsetAsync(b->data, 0xff, b->bytes, stream.handle));
    return b;
  }

  /// Test mode: every block handed out is first filled with 0xff bytes (NaN as float and
  /// double), queued on its stream. An op that forgets to write an element of its output, or a
  /// backward that adds to a gradient it should have overwritten, then shows NaN.
  void set_poison(bool on) {
    std::lock_guard lock(mutex_);
    poison_ = on;
  }

  /// Returns a block to the free blocks of its pool (no synchronisation): its graph's pool while
  /// that graph lives, else its stream's; memory of a destroyed stream goes back to the system
  /// once its segment is whole again.
  void release(detail::Storage* s) {
    Block* b = static_cast<Block*>(s);
    std::lock_guard lock(mutex_);
    stats_.bytes_in_use -= b->bytes;
    if (b->pool != b->stream && !graph_pools_.contains(b->pool)) {  // its graph is gone
      b->pool = b->stream;
      stats_.graph_pool_bytes -= b->bytes;
    }
    give_back(b);
  }

  /// Gives every cached whole block back to the system (live tensors, the segments they are cut
  /// from, and the pools of live graphs are untouched). cudaFree waits for the device, so this
  /// synchronises: call it outside steps, and never while a StepGraph captures (on any thread:
  /// the wait would end that capture), which throws.
  void empty_cache() {
    std::lock_guard lock(mutex_);
    DATANAS_CHECK(
        captures_ == 0,
        "cuda allocator: empty_cache() while a CUDA graph is being captured "
        "(cudaFree would wait for the device and end the capture); call it after the capture");
    cache_.discard_whole([this](std::uint64_t pool) { return !graph_pools_.contains(pool); });
  }

  /// Restarts both high-water marks (bytes in use, graph pool bytes) at their current values.
  void reset_peak() {
    std::lock_guard lock(mutex_);
    stats_.peak_bytes_in_use = stats_.bytes_in_use;
    stats_.peak_graph_pool_bytes = stats_.graph_pool_bytes;
  }

 private:
  friend class cuda::Stream;
  friend class GraphPool;
  friend class StepGraph<Cuda>;
  using Block = detail::Block;

  // Small segments by default (set_small_segments): they serve steps whose tensors vary (EGS's
  // sparse mode) without a cudaMalloc inside the step. Separate blocks are what the CUDA
  // simulator's guard pages check to their ends, so the GPU tests turn segments off.
  CachingAllocator() { cache_.set_carve_small(true); }
  static std::size_t round_up(std::size_t b) { return b == 0 ? 256 : (b + 255) / 256 * 256; }

  // Caller holds mutex_. A freed block of a destroyed stream leaves for the system as soon as
  // its segment is whole: that stream was synchronised when it was destroyed, and no other
  // stream may use the block without ordering itself (file comment), so the memory is idle.
  // While a graph captures (on any thread) it stays cached instead, until end_capture().
  void give_back(Block* b) {
    Block* merged = cache_.put(b);
    if (captures_ == 0 && merged->stream != 0 && !live_streams_.contains(merged->stream) &&
        cache_.whole(merged))
      cache_.discard(merged);
  }

  /// Called by StepGraph::capture around a capture. cudaFree waits for the whole device, which
  /// a capturing stream cannot do: the capture would be invalidated. So while any capture is
  /// under way nothing goes back to the system (a destroyed stream's memory, the out-of-memory
  /// retry); when the last one ends, the destroyed streams' whole segments leave as they would
  /// have.
  void begin_capture() {
    std::lock_guard lock(mutex_);
    ++captures_;
  }
  void end_capture() {
    std::lock_guard lock(mutex_);
    if (--captures_ > 0) return;
    cache_.discard_whole([this](std::uint64_t pool) {
      return pool != 0 && !live_streams_.contains(pool) && !graph_pools_.contains(pool);
    });
  }

  /// A graph pool (GraphPool): free blocks of its own on the stream of its graphs.
  void register_graph_pool(std::uint64_t pool) {
    std::lock_guard lock(mutex_);
    graph_pools_.insert(pool);
  }
  /// Called when a pool and every graph captured into it are gone (each graph waited for its
  /// last replay): the pool's idle blocks return to the stream's free blocks (or the system, if
  /// the stream is gone); its blocks still held by tensors follow when they are released.
  void retire_graph_pool(std::uint64_t pool) {
    std::lock_guard lock(mutex_);
    graph_pools_.erase(pool);
    for (Block* b : cache_.take_all(pool)) {
      stats_.graph_pool_bytes -= b->bytes;
      b->pool = b->stream;
      give_back(b);
    }
  }

  void register_stream(std::uint64_t id) {
    std::lock_guard lock(mutex_);
    live_streams_.insert(id);
  }
  /// Called by ~Stream after it synchronised the stream: its cached whole blocks go back to the
  /// system, and the rest of its memory will when it is released and whole again.
  void retire_stream(std::uint64_t id) {
    std::lock_guard lock(mutex_);
    live_streams_.erase(id);
    if (captures_ == 0) cache_.discard_whole([id](std::uint64_t pool) { return pool == id; });
  }

  // Caller holds mutex_. On out-of-memory, frees this allocator's cache and tries once more.
  void* system_allocate(std::size_t bytes) {
    void* p = nullptr;
    cudaError_t e = cudaMalloc(&p, bytes);
    if (e == cudaErrorMemoryAllocation && cache_.cached_bytes() > 0 && captures_ == 0) {
      (void)cudaGetLastError();
      cache_.discard_whole([this](std::uint64_t pool) { return !graph_pools_.contains(pool); });
      e = cudaMalloc(&p, bytes);
    }
    if (e == cudaSuccess) return p;
    (void)cudaGetLastError();
    if (e == cudaErrorNoDevice || e == cudaErrorInsufficientDriver)
      cuda::require_device("cuda allocator");  // throws the "no CUDA device" message
    throw error(datanas::detail::concat(
        "cuda allocator: cudaMalloc of ", bytes, " bytes failed: ", cudaGetErrorString(e), " (",
        stats_.bytes_in_use, " bytes held by tensors, ", cache_.cached_bytes(), " cached",
        captures_ > 0 ? "; the cache is not freed while a CUDA graph captures" : "", ")"));
  }

  // mutex_, stats_ and cache_ are GuardedCache's (the cache, destroyed after these, needs none
  // of them).
  bool poison_ = false;
  int captures_ = 0;  // StepGraph captures under way, on all threads
  std::unordered_set<std::uint64_t> live_streams_;
  std::unordered_set<std::uint64_t> graph_pools_;
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

namespace detail {
/// A captured copy from host memory would read that memory again at every replay, long after
/// the host buffer was reused: refused with the reason.
inline void check_no_host_copy_in_capture(const char* what) {
  DATANAS_CHECK(!capturing_graph(), what, ": a step being captured into a CUDA graph copies host data "
                "to the device (a replay would read the host buffer again, after it changed): copy "
                "inputs into device buffers before replay()");
}
}  // namespace detail

/// A device copy of a host tensor, queued on the current stream. The host data has been read
/// when this returns (the runtime stages pageable memory), so `host` may change afterwards.
template <Element T>
Tensor<T, Cuda> to_device(const Tensor<T, Cpu>& host) {
  detail::check_no_host_copy_in_capture("cuda::to_device");
  Tensor<T, Cuda> d = Tensor<T, Cuda>::empty(host.shape());
  if (host.numel())
    DATANAS_CUDA_CHECK(cudaMemcpyAsync(d.data(), host.data(), sizeof(T) * std::size_t(host.numel()),
                                       cudaMemcpyHostToDevice, current_stream().handle));
  return d;
}

/// dst = host into dst's storage, queued on the current stream; sizes must match. As to_device,
/// the host data has been read when this returns.
template <Element T>
void copy_from_host(const Tensor<T, Cuda>& dst, const Tensor<T, Cpu>& host) {
  detail::check_no_host_copy_in_capture("cuda::copy_from_host");
  DATANAS_CHECK(dst.numel() == host.numel(), "cuda::copy_from_host: size mismatch ", host.shape().str(),
                " -> ", dst.shape().str());
  if (host.numel())
    DATANAS_CUDA_CHECK(cudaMemcpyAsync(dst.data(), host.data(), sizeof(T) * std::size_t(host.numel()),
                                       cudaMemcpyHostToDevice, current_stream().handle));
}

/// A host copy of a device tensor: waits for the current stream (the one synchronisation point
/// of a training step, used where a value is logged). Use it on the stream that wrote `dev`.
template <Element T>
Tensor<T, Cpu> to_host(const Tensor<T, Cuda>& dev) {
  DATANAS_CHECK(!capturing_graph(), "cuda::to_host: the step being captured into a CUDA graph reads a "
                "device value on the host (a captured step cannot wait for the GPU): read it after the "
                "replay, or run this step without graph capture");
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

namespace datanas {

/// The memory that StepGraphs capture into (PyTorch's graph pool handle). A graph holds every
/// block its captured step allocates for as long as it lives, since each replay writes them
/// again; by default each capture gets a pool of its own. Graphs that replay one at a time on one
/// stream can share a pool instead: a block the first capture allocated and freed (a temporary
/// of its step) then serves the later captures too, so a set of graphs holds about the memory of
/// its largest step, not the sum of all of them.
///
/// The price, and the rule that makes sharing safe: a graph's replay writes all its temporaries,
/// and another graph's outputs (the tensors its capture returned) may now occupy some of them.
/// Read or copy out a graph's outputs before another graph of the pool replays. Tensors made
/// before the captures (parameters, and the gradients and optimiser state of the eager first
/// step) are in no pool, so steps may keep state in them.
///
///   GraphPool pool;
///   Out a = ga.capture([&] { return step_a(); }, pool);
///   Out b = gb.capture([&] { return step_b(); }, pool);  // reuses a's temporaries
///   ga.replay(); read(a); gb.replay(); read(b);
///
/// A pool belongs to the stream of its first capture (later captures on another stream are
/// refused); its blocks return to that stream's cache when the pool and all its graphs are gone.
class GraphPool {
 public:
  GraphPool() : state_(std::make_shared<State>()) {}

 private:
  friend class StepGraph<Cuda>;
  struct State {
    std::uint64_t id = cuda::detail::next_stream_id();  // a pool id is never a stream's
    std::uint64_t stream = 0;                           // stream id of its first capture
    State() { GraphPool::open(id); }
    State(const State&) = delete;
    State& operator=(const State&) = delete;
    ~State() { GraphPool::close(id); }
  };
  static void open(std::uint64_t id) { CachingAllocator<Cuda>::instance().register_graph_pool(id); }
  static void close(std::uint64_t id) { CachingAllocator<Cuda>::instance().retire_graph_pool(id); }

  std::shared_ptr<State> state_;
};

/// A training step captured once as a CUDA graph and replayed as one launch per step (the issue's
/// "whole step on the GPU without per-kernel launch cost"; ALGORITHMS.md does not change).
///
///   StepGraph<Cuda> g;
///   Outputs out = g.capture([&] { return queue_step(); });  // records; runs nothing
///   for (...) { upload_batch(); g.replay(); read(out); }      // each replay = one step
///
/// What a captured step may do (docs/cuda.md, "CUDA graphs"):
///   - run on one cuda::Stream (StreamGuard), never the legacy default stream;
///   - read its inputs from tensors that outlive the graph at fixed addresses (copy each batch
///     into the same device buffer), and never read the host (cuda::to_host throws);
///   - take every value that changes from step to step through per_replay(): the Philox base of
///     each estimator launch and Adam's bias corrections are registered there by the library, and
///     their host code (gen.reserve, ++t) runs before each replay, in capture order, so replays
///     draw exactly the noise, and leave exactly the generator and optimiser state, of eager steps;
///   - have run once eagerly first (cuDNN plans, cuBLAS and CUB state, lazily created optimiser
///     buffers and gradients exist then, and the capture does no first-use work).
/// Values fixed at capture (learning rate, temperature) need a new capture when they change:
/// reset() and capture again (the searcher does this once per epoch).
template <>
class StepGraph<Cuda> {
 public:
  /// Per-replay words available to one graph (Philox bases, optimiser scalars).
  static constexpr int kMaxWords = 1024;

  StepGraph() = default;
  StepGraph(const StepGraph&) = delete;
  StepGraph& operator=(const StepGraph&) = delete;
  ~StepGraph() { reset(); }

  /// Records f() on the current stream into a graph, without running it, and returns what f
  /// returns: tensors allocated during the capture live in the graph's pool, a new one of its
  /// own, and every replay rewrites them. If f throws, the capture is abandoned and the
  /// exception propagates.
  template <class F>
  auto capture(F&& f) -> std::invoke_result_t<F&> {
    return capture(std::forward<F>(f), GraphPool());
  }

  /// As capture(f), into `pool`, which other graphs of this stream may share (GraphPool: read
  /// this graph's outputs after its replay, before another graph of the pool replays).
  template <class F>
  auto capture(F&& f, const GraphPool& pool) -> std::invoke_result_t<F&> {
    DATANAS_CHECK(!exec_, "StepGraph::capture: a graph is already captured (reset() first)");
    DATANAS_CHECK(!cuda::capturing_graph(), "StepGraph::capture: captures do not nest");
    const cuda::StreamRef s = cuda::current_stream();
    DATANAS_CHECK(s.handle != nullptr, "StepGraph::capture: needs a cuda::Stream made current with "
                  "cuda::StreamGuard (the legacy default stream cannot be captured)");
    GraphPool::State& p = *pool.state_;
    DATANAS_CHECK(p.stream == 0 || p.stream == s.id, "StepGraph::capture: the GraphPool's graphs were "
                  "captured on another stream (a pool's graphs must replay one at a time, on one stream)");
    p.stream = s.id;
    stream_ = s;
    words_ = Tensor<std::int32_t, Cuda>::empty({2 * index_t(kMaxWords)});  // before: not in the pool
    pool_ = pool.state_;
    fills_.clear();
    used_ = 0;
    Capturing scope(*this);
    // Relaxed: the allocator may call cudaMalloc while capturing (its blocks then belong to the
    // pool for the graph's life, which is what capture needs).
    DATANAS_CUDA_CHECK(cudaStreamBeginCapture(s.handle, cudaStreamCaptureModeRelaxed));
    try {
      if constexpr (std::is_void_v<std::invoke_result_t<F&>>) {
        f();
        finish_capture();
      } else {
        auto result = f();
        finish_capture();
        return result;
      }
    } catch (...) {
      cudaGraph_t g = nullptr;
      if (cudaStreamEndCapture(s.handle, &g) == cudaSuccess && g) (void)cudaGraphDestroy(g);
      (void)cudaGetLastError();
      scope.end();
      reset();
      throw;
    }
  }

  /// Runs the captured step once on the stream it was captured on: first every registered
  /// per_replay fill (host code, in capture order), whose values go to the device as kernel
  /// arguments, then the graph. Does not wait for the GPU.
  void replay() {
    DATANAS_CHECK(exec_, "StepGraph::replay: nothing was captured");
    host_words_.assign(std::size_t(used_), 0);
    for (const Fill& f : fills_) f.fill(host_words_.data() + f.offset);
    if (used_) cuda::store_words(words(), host_words_.data(), used_, stream_.handle);
    DATANAS_CUDA_CHECK(cudaGraphLaunch(exec_, stream_.handle));
  }

  /// Drops the graph (waiting for its last replay) and its share of the pool: the pool's blocks
  /// return to the stream when no other graph or GraphPool handle holds it.
  void reset() {
    if (!pool_) return;
    if (stream_.handle && cudaStreamSynchronize(stream_.handle) != cudaSuccess) (void)cudaGetLastError();
    if (exec_ && cudaGraphExecDestroy(exec_) != cudaSuccess) (void)cudaGetLastError();
    exec_ = nullptr;
    words_ = {};
    fills_.clear();
    used_ = 0;
    nodes_ = 0;
    pool_.reset();
  }

  [[nodiscard]] bool ready() const { return exec_ != nullptr; }
  /// Kernel, copy and memset nodes of the captured graph.
  [[nodiscard]] std::size_t nodes() const { return nodes_; }

  /// While this graph captures: room for n values of T that the captured kernels read from the
  /// returned device pointer, and `fill(T* out)`, which computes them on the host before every
  /// replay. Library code reaches it through DeviceOps<Cuda>::step_values.
  template <class T, class F>
  const T* per_replay(int n, F&& fill) {
    static_assert(std::is_trivially_copyable_v<T> && alignof(T) <= 8);
    DATANAS_CHECK(n >= 1 && n <= 8, "StepGraph::per_replay: ", n, " values (1 to 8)");
    const int count = int((std::size_t(n) * sizeof(T) + 7) / 8);
    DATANAS_CHECK(used_ + count <= kMaxWords, "StepGraph: the captured step needs more than ", kMaxWords,
                  " per-replay words");
    fills_.push_back(Fill{used_, [n, fill = std::forward<F>(fill)](std::uint64_t* dst) mutable {
                            T v[8] = {};
                            fill(v);
                            std::memcpy(dst, v, std::size_t(n) * sizeof(T));
                          }});
    const T* p = reinterpret_cast<const T*>(words() + used_);
    used_ += count;
    return p;
  }

 private:
  struct Fill {
    int offset;
    std::function<void(std::uint64_t*)> fill;
  };
  /// Makes this graph (and its pool) current on this thread for the capture.
  class Capturing {
   public:
    explicit Capturing(StepGraph& g) : previous_(cuda::detail::current_stream_slot()) {
      CachingAllocator<Cuda>::instance().begin_capture();
      cuda::detail::current_stream_slot().pool = g.pool_->id;
      cuda::detail::capturing_slot() = &g;
    }
    ~Capturing() { end(); }
    /// After cudaStreamEndCapture (the allocator may then free memory again).
    void end() {
      if (done_) return;
      done_ = true;
      cuda::detail::current_stream_slot() = previous_;
      cuda::detail::capturing_slot() = nullptr;
      CachingAllocator<Cuda>::instance().end_capture();
    }

   private:
    cuda::StreamRef previous_;
    bool done_ = false;
  };

  std::uint64_t* words() const { return reinterpret_cast<std::uint64_t*>(words_.data()); }

  void finish_capture() {
    cudaGraph_t g = nullptr;
    DATANAS_CUDA_CHECK(cudaStreamEndCapture(stream_.handle, &g));
    DATANAS_CHECK(g != nullptr, "StepGraph::capture: the capture produced no graph");
    std::size_t n = 0;
    (void)cudaGraphGetNodes(g, nullptr, &n);
    nodes_ = n;
    // Into a local: what a failed instantiation leaves in its output is not documented.
    // AutoFreeOnLaunch (as PyTorch's graphs): a library may allocate inside the capture
    // (cuBLAS takes its workspace with cudaMallocAsync since CUDA 12.2 when it has none of ours,
    // which ops/cuda/dense.hpp now always gives it) and keep it; without the flag, a graph
    // holding an unfreed allocation fails its next launch (cudaGraphLaunch).
    cudaGraphExec_t exec = nullptr;
    const cudaError_t e = cudaGraphInstantiate(&exec, g, cudaGraphInstantiateFlagAutoFreeOnLaunch);
    (void)cudaGraphDestroy(g);
    DATANAS_CUDA_CHECK(e);
    exec_ = exec;
  }

  cuda::StreamRef stream_;
  std::shared_ptr<GraphPool::State> pool_;
  Tensor<std::int32_t, Cuda> words_;
  std::vector<Fill> fills_;
  std::vector<std::uint64_t> host_words_;
  int used_ = 0;
  cudaGraphExec_t exec_ = nullptr;
  std::size_t nodes_ = 0;
};

}  // namespace datanas
