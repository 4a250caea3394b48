// cudasim/runtime.hpp - a host simulator of the CUDA runtime subset datanas uses.
//
// Why: CI machines (and most contributors' machines) have no GPU, yet the CUDA backend is half
// of the library. With these headers first on the include path and DATANAS_CUDA_SIM=1, the same
// host code, the same kernel sources (kernels/datanas/cuda/*.cuh) and the same GPU tests compile
// with g++ and run on the CPU. What runs is our code, unchanged: index arithmetic, block and warp
// reductions, launch configurations, stream and graph-capture logic, per-replay values. What is
// NOT simulated: timing, memory coherence between concurrently running blocks, the real cuBLAS
// and cuDNN (cublas_v2.h and cudnn.h here are naive reference implementations), float rounding
// of device math functions, and anything about a real GPU's limits beyond launch configuration.
//
// Execution model:
//   - Device memory is host memory, but host code cannot touch it, as on a GPU: each cudaMalloc
//     block gets pages of its own, tagged with a memory protection key (Linux pkeys) whose access
//     is open only while this thread runs simulator code (a kernel, a copy, a memset, a library
//     stand-in; SimScope). Host code that reads or writes device memory directly, which a real GPU
//     would fault on, dies here with SIGSEGV (si_code SEGV_PKUERR). Each block ends 256-aligned
//     against a guard page, so a kernel that runs past its block's 256-byte-rounded end faults
//     too. Without pkeys (an older CPU or kernel) the guard pages remain; under AddressSanitizer
//     blocks are exact-size heap allocations instead, which it checks to the byte.
//   - Streams execute eagerly, in issue order: work queued on a stream runs before the call that
//     queued it returns. Stream order is respected trivially; missing host synchronisation is not
//     detected (a real GPU may show a race the simulator cannot).
//   - A kernel launch runs its blocks one after another. Inside a block every CUDA thread is a
//     coroutine with its own stack, so __syncthreads and warp shuffles are real
//     rendezvous: a thread waits until every live thread of its block (warp) has arrived. Threads
//     between two barriers run one at a time, in thread order, or in reverse order when
//     CUDASIM_SCHEDULE=reverse: running a test under both orders exposes a missing barrier (a
//     race) as a difference. A barrier some live threads never reach is reported as a deadlock.
//   - __shared__ variables are function-local statics: one copy per kernel, shared by the block
//     (blocks run one at a time, so that is one copy per block in effect).
//   - Stream capture records each operation (kernel with its arguments copied, memset,
//     device-to-device copy) into a graph; a replay runs the records in order. As on a GPU,
//     synchronising a capturing stream, host<->device copies of pageable memory and cudaFree
//     during a capture are errors that invalidate the capture.
//   - Errors are returned and remembered as the last error, as the runtime does;
//     cudaGetLastError reads and clears it.
//   - CUDASIM_DEVICES=0 makes cudaGetDeviceCount report no device (tests the skip path).
#pragma once

#include <ucontext.h>

#include "datanas/detail/sanitizer.hpp"  // DATANAS_ASAN, for g++ and clang
#if defined(DATANAS_ASAN)
#include <sanitizer/common_interface_defs.h>
#define CUDASIM_PAGED_DEVICE_MEMORY 0
#elif defined(__linux__)
#include <sys/mman.h>
#include <unistd.h>
#define CUDASIM_PAGED_DEVICE_MEMORY 1
#else
#define CUDASIM_PAGED_DEVICE_MEMORY 0
#endif
// As under nvcc, device code's unqualified exp(float), log(float), ... are the float overloads:
// libstdc++'s <math.h> brings std's overloads into the global namespace.
#include <math.h>

#include <algorithm>
#include <array>
#include <bit>
#include <chrono>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <memory>
#include <stdexcept>
#include <string>
#include <tuple>
#include <type_traits>
#include <unordered_map>
#include <unordered_set>
#include <utility>
#include <vector>

#ifndef DATANAS_CUDA_SIM
#define DATANAS_CUDA_SIM 1
#endif

// ---- CUDA C++ keywords: device code is ordinary host code here ----------------------------------
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
// One copy per kernel function; blocks run one at a time, so in effect one per block.
#define __shared__ static

// ---- types --------------------------------------------------------------------------------------
struct dim3 {
  unsigned x = 1, y = 1, z = 1;
  constexpr dim3(unsigned vx = 1, unsigned vy = 1, unsigned vz = 1) : x(vx), y(vy), z(vz) {}
};
using uint3 = dim3;

enum cudaError_t {
  cudaSuccess = 0,
  cudaErrorInvalidValue = 1,
  cudaErrorMemoryAllocation = 2,
  cudaErrorInvalidConfiguration = 9,
  cudaErrorInvalidDevicePointer = 17,
  cudaErrorInvalidMemcpyDirection = 21,
  cudaErrorInsufficientDriver = 35,
  cudaErrorNoDevice = 100,
  cudaErrorInvalidResourceHandle = 400,
  cudaErrorIllegalState = 401,
  cudaErrorLaunchFailure = 719,
  cudaErrorStreamCaptureUnsupported = 900,
  cudaErrorStreamCaptureInvalidated = 901,
  cudaErrorStreamCaptureWrongThread = 908,
};

enum cudaMemcpyKind {
  cudaMemcpyHostToHost = 0,
  cudaMemcpyHostToDevice = 1,
  cudaMemcpyDeviceToHost = 2,
  cudaMemcpyDeviceToDevice = 3,
  cudaMemcpyDefault = 4,
};

enum cudaStreamCaptureMode {
  cudaStreamCaptureModeGlobal = 0,
  cudaStreamCaptureModeThreadLocal = 1,
  cudaStreamCaptureModeRelaxed = 2,
};

inline constexpr unsigned cudaStreamDefault = 0x00;
inline constexpr unsigned cudaStreamNonBlocking = 0x01;

namespace cudasim {
struct Graph;
struct Stream;
struct Event;
}  // namespace cudasim
using cudaStream_t = cudasim::Stream*;
using cudaEvent_t = cudasim::Event*;
using cudaGraph_t = cudasim::Graph*;
using cudaGraphExec_t = cudasim::Graph*;
using cudaGraphNode_t = void*;

// The built-in index variables, set by the block scheduler before it resumes a thread.
inline dim3 threadIdx, blockIdx, blockDim, gridDim;
inline constexpr int warpSize = 32;

namespace cudasim {

/// The runtime's state: one simulated device, used from one host thread at a time.
struct Graph {
  std::vector<std::function<void()>> nodes;
};
/// An event: the host time at which its stream reached it (the work queued before it has run by
/// then, since streams run eagerly). Timings are the host's: they order, they do not predict a GPU.
struct Event {
  bool recorded = false;
  std::chrono::steady_clock::time_point at{};
};
struct Stream {
  bool capturing = false;
  bool invalidated = false;  // an illegal call during the capture: EndCapture fails
  Graph* graph = nullptr;
};

/// What the host asked of the device since the last reset (`cudasim::counters() = {}`), for
/// tests of a step's discipline: no allocation, and no wait for the device but to read a value.
struct Counters {
  std::uint64_t mallocs = 0;     // cudaMalloc calls
  std::uint64_t host_waits = 0;  // calls that block the host until the device has finished:
                                 // cudaStreamSynchronize, cudaDeviceSynchronize, cudaMemcpy,
                                 // cudaFree, cudaEventSynchronize
  std::uint64_t reads = 0;       // device-to-host copies
  std::uint64_t read_bytes = 0;  // their bytes, and the largest
  std::uint64_t largest_read = 0;
  std::uint64_t uploads = 0;     // host-to-device copies (from pageable memory a GPU's runtime
                                 // stages them on the host, and may block it)
  std::uint64_t kernels = 0;     // kernel launches (cudasim::launch)
  std::uint64_t library_calls = 0;  // computations queued by cuBLAS and cuDNN (each is one or
                                    // more kernels on a GPU)
  std::uint64_t device_copies = 0;  // cudaMemcpyAsync device-to-device and cudaMemsetAsync
  std::uint64_t cublas_own_workspace = 0;  // GEMMs queued on cuBLAS's own workspace pool (no
                                           // cublasSetWorkspace since the last cublasSetStream)
};

/// A cudaMalloc block's mapping: the pages it was given (its own pages and the guard page after
/// them), or none when it is a heap allocation (AddressSanitizer builds).
struct Mapping {
  void* base = nullptr;
  std::size_t length = 0;
};

struct State {
  Counters counters;
  cudaError_t last = cudaSuccess;
  std::unordered_map<void*, Mapping> allocations;
  std::unordered_set<Stream*> streams;
  int capturing = 0;  // streams now capturing
};
inline State& state() {
  static State s;
  return s;
}

inline Counters& counters() { return state().counters; }

/// Records `e` as the last error (cudaSuccess leaves it alone) and returns it.
inline cudaError_t fail(cudaError_t e) {
  if (e != cudaSuccess) state().last = e;
  return e;
}

/// Marks a capture invalid (as the runtime does after an illegal call) and returns the error.
inline cudaError_t invalidate(Stream* s) {
  if (s && s->capturing) s->invalidated = true;
  return fail(cudaErrorStreamCaptureUnsupported);
}

inline bool known_stream(Stream* s) { return s == nullptr || state().streams.count(s) != 0; }

/// How deep this thread is in simulator code that runs device work or queues it: host heap
/// allocations made meanwhile are the simulator's (kernels run on the host, queued work is held
/// in std::function), not the library's, which a GPU would not make. Tests that count the
/// library's host allocations on the device path skip them (tests/gpu/test_host_allocation_gpu.cpp).
/// Device memory is closed to host code outside it (file comment).
inline thread_local int sim_depth = 0;

/// The protection key of device memory's pages, or -1 without pkeys. Every thread starts with
/// access to it denied: the kernel's initial PKRU denies all keys but 0, new threads inherit
/// their creator's, and pkey_alloc denies it to the calling thread.
inline int device_key() {
#if CUDASIM_PAGED_DEVICE_MEMORY
  static const int key = pkey_alloc(0, PKEY_DISABLE_ACCESS);
  return key;
#else
  return -1;
#endif
}
/// Whether host code outside the simulator faults on device memory here.
inline bool device_memory_protected() { return device_key() >= 0; }

/// Opens device memory to this thread while simulator code runs (a user-space register write).
inline void open_device_memory(bool open) {
#if CUDASIM_PAGED_DEVICE_MEMORY
  if (const int key = device_key(); key >= 0) pkey_set(key, open ? 0 : PKEY_DISABLE_ACCESS);
#else
  (void)open;
#endif
}

struct SimScope {
  SimScope() {
    if (sim_depth++ == 0) open_device_memory(true);
  }
  ~SimScope() {
    if (--sim_depth == 0) open_device_memory(false);
  }
  SimScope(const SimScope&) = delete;
  SimScope& operator=(const SimScope&) = delete;
};
inline bool in_simulator() { return sim_depth > 0; }

/// A device block of `bytes` (> 0) bytes, 256-aligned; nullptr when out of memory.
inline void* allocate_device(std::size_t bytes, Mapping& m) {
#if CUDASIM_PAGED_DEVICE_MEMORY
  const std::size_t page = std::size_t(sysconf(_SC_PAGESIZE));
  if (bytes > (std::size_t(1) << 48)) return nullptr;  // no such device; avoids overflow below
  const std::size_t span = (bytes + 255) / 256 * 256;
  const std::size_t open = (span + page - 1) / page * page;
  void* base = mmap(nullptr, open + page, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (base == MAP_FAILED) return nullptr;
  const int key = device_key();
  const int rc = key >= 0 ? pkey_mprotect(base, open, PROT_READ | PROT_WRITE, key)
                          : mprotect(base, open, PROT_READ | PROT_WRITE);
  if (rc != 0) {
    munmap(base, open + page);
    return nullptr;
  }
  m = {base, open + page};
  return static_cast<char*>(base) + (open - span);  // ends against the guard page
#else
  // 256-aligned as cudaMalloc, and exactly `bytes` long, so that AddressSanitizer sees an
  // access past the end of the block (aligned_alloc would want a multiple of the alignment).
  void* q = nullptr;
  m = {};
  return posix_memalign(&q, 256, bytes) == 0 ? q : nullptr;
#endif
}
inline void free_device(void* p, const Mapping& m) {
#if CUDASIM_PAGED_DEVICE_MEMORY
  (void)p;
  munmap(m.base, m.length);
#else
  (void)m;
  std::free(p);
#endif
}

/// Runs `work` in stream order: now, or recorded into the graph `stream` is capturing.
template <class F>
cudaError_t enqueue(cudaStream_t stream, F&& f) {
  const SimScope scope;
  std::function<void()> work(std::forward<F>(f));
  if (!known_stream(stream)) return fail(cudaErrorInvalidResourceHandle);
  if (stream && stream->capturing) {
    if (stream->invalidated) return fail(cudaErrorStreamCaptureInvalidated);
    stream->graph->nodes.push_back(std::move(work));
    return cudaSuccess;
  }
  work();
  return cudaSuccess;
}

// ---- the block scheduler ------------------------------------------------------------------------

/// Thrown (and reported by the launch) when a block cannot make progress.
struct Deadlock : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// ---- coroutines ---------------------------------------------------------------------------------
// A CUDA thread runs on its own stack and gives control back to the block scheduler at each
// barrier. On x86-64 the switch saves the callee-saved registers and swaps the stack pointer;
// elsewhere it is ucontext's swapcontext, which also saves the signal mask with a system call on
// every switch (correct, but slow). Unlike Boost.Context it does not carry the FP control words
// (MXCSR, x87 CW): nothing in a kernel changes rounding or exception modes, and loading them
// serialises the pipeline at every switch.
#if defined(__x86_64__)
extern "C" __attribute__((naked, noinline)) inline void cudasim_switch(void** /*save*/,
                                                                       void* /*load*/) {
  asm volatile(
      "pushq %rbp\n\tpushq %rbx\n\tpushq %r12\n\tpushq %r13\n\tpushq %r14\n\tpushq %r15\n\t"
      "movq %rsp, (%rdi)\n\tmovq %rsi, %rsp\n\t"
      "popq %r15\n\tpopq %r14\n\tpopq %r13\n\tpopq %r12\n\tpopq %rbx\n\tpopq %rbp\n\tret\n\t");
}
#endif

struct Context {
#if defined(__x86_64__)
  void* sp = nullptr;
#else
  ucontext_t uc{};
#endif
};

/// Saves the running context in `from` and resumes `to`.
inline void switch_context(Context& from, Context& to) {
#if defined(__x86_64__)
  cudasim_switch(&from.sp, to.sp);
#else
  swapcontext(&from.uc, &to.uc);
#endif
}

/// Prepares `c` to start `entry` (which must never return) on the given stack.
inline void make_context(Context& c, char* stack, std::size_t bytes, void (*entry)()) {
#if defined(__x86_64__)
  // The frame cudasim_switch pops: r15 r14 r13 r12 rbx rbp, return address; `entry` then
  // starts with rsp = 8 (mod 16), as after a call.
  auto top = (reinterpret_cast<std::uintptr_t>(stack) + bytes) & ~std::uintptr_t(15);
  auto* frame = reinterpret_cast<std::uint64_t*>(top - 64);
  for (int r = 0; r < 6; ++r) frame[r] = 0;
  frame[6] = reinterpret_cast<std::uint64_t>(entry);
  frame[7] = 0;  // entry's own return address: never used
  c.sp = frame;
#else
  getcontext(&c.uc);
  c.uc.uc_stack.ss_sp = stack;
  c.uc.uc_stack.ss_size = bytes;
  c.uc.uc_link = nullptr;
  makecontext(&c.uc, entry, 0);
#endif
}

enum class Wait { kStart, kBlock, kWarp, kRunning };

/// A thread's stack: `bytes` usable from `base`.
struct Stack {
  char* base = nullptr;
  std::size_t bytes = 0;
};

struct SimThread {
  Context context;
  Stack stack;  // lent by the block from when the thread starts until it is done
  void* asan_fake_stack = nullptr;  // AddressSanitizer's bookkeeping while suspended
  dim3 index;
  unsigned block_arrivals = 0;  // __syncthreads reached so far
  unsigned warp_arrivals = 0;   // warp rendezvous reached so far
  Wait wait = Wait::kStart;
  bool done = false;
};

struct Block {
  static constexpr std::size_t kStackBytes = 256 * 1024;
  // Stable addresses: a ucontext_t points into itself (its saved FP state), so never moves.
  std::vector<std::unique_ptr<SimThread>> threads;
  Context scheduler;
  void* asan_fake_stack = nullptr;  // the scheduler's, while a thread runs
  const void* scheduler_stack = nullptr;
  std::size_t scheduler_stack_bytes = 0;
  const std::function<void()>* body = nullptr;
  int current = -1;
  int live = 0;
  std::vector<std::array<std::uint64_t, 32>> lanes;  // shuffle exchange, one row per warp
  std::vector<unsigned> warp_min;                    // per warp: lowest shuffle arrival count
  // Stacks are lent to threads when they start and returned when they finish, last returned
  // first lent: a kernel without barriers runs all its threads on one stack that stays in cache.
  // Each stack's top is shifted by a different multiple of 9 cache lines: page-aligned tops all
  // fall into the same cache sets, so the switches between the 256 threads of a block at each
  // barrier evicted each other's frames (simulated ops_dnn tests: 13.9 s unshifted, 11.2 s).
  std::vector<std::unique_ptr<char[]>> memory;  // every stack, not zeroed
  std::vector<Stack> free_stacks;
  /// Stack i of `memory`, its top shifted by its colour.
  Stack stack(std::size_t i) const {
    return {memory[i].get(), kStackBytes - ((i + 1) % 128) * 9 * 64};
  }
  /// Every stack free again (a new block; a failed launch may have left threads suspended).
  void free_all_stacks() {
    free_stacks.clear();
    for (std::size_t i = 0; i < memory.size(); ++i) free_stacks.push_back(stack(i));
  }
  Stack lend_stack() {
    if (free_stacks.empty()) {
      memory.push_back(std::unique_ptr<char[]>(new char[kStackBytes]));
      return stack(memory.size() - 1);
    }
    const Stack s = free_stacks.back();
    free_stacks.pop_back();
    return s;
  }
};
inline Block& block() {
  static Block b;
  return b;
}

/// The order in which threads run between barriers (CUDASIM_SCHEDULE=reverse starts reversed).
enum class Schedule { kForward, kReverse };
inline Schedule& schedule() {
  static Schedule s = [] {
    const char* env = std::getenv("CUDASIM_SCHEDULE");
    return env && std::string(env) == "reverse" ? Schedule::kReverse : Schedule::kForward;
  }();
  return s;
}
inline void set_schedule(Schedule s) { schedule() = s; }

// AddressSanitizer (the simulator built with -fsanitize=address, device memory being host
// memory, shows a kernel's out-of-bounds access) must be told of every switch between stacks,
// or it mistakes the frames of one for the other's; these three are the only switches.

/// Scheduler -> thread t, until t suspends or finishes.
inline void resume(Block& b, SimThread& t) {
#if defined(DATANAS_ASAN)
  __sanitizer_start_switch_fiber(&b.asan_fake_stack, t.stack.base, t.stack.bytes);
#endif
  switch_context(b.scheduler, t.context);
#if defined(DATANAS_ASAN)
  __sanitizer_finish_switch_fiber(b.asan_fake_stack, nullptr, nullptr);
#endif
}

/// Thread t -> scheduler; returns when the scheduler resumes t (never if `finished`).
inline void suspend(Block& b, SimThread& t, bool finished) {
#if defined(DATANAS_ASAN)
  __sanitizer_start_switch_fiber(finished ? nullptr : &t.asan_fake_stack, b.scheduler_stack,
                                 b.scheduler_stack_bytes);
#endif
  switch_context(t.context, b.scheduler);
#if defined(DATANAS_ASAN)
  __sanitizer_finish_switch_fiber(t.asan_fake_stack, nullptr, nullptr);
#else
  (void)b;
  (void)finished;
#endif
}

inline void thread_entry() {
  Block& b = block();
#if defined(DATANAS_ASAN)
  __sanitizer_finish_switch_fiber(nullptr, &b.scheduler_stack, &b.scheduler_stack_bytes);
#endif
  SimThread& t = *b.threads[std::size_t(b.current)];
  (*b.body)();
  t.done = true;
  suspend(b, t, true);  // never resumed
}

/// Suspends the calling CUDA thread at a barrier of the given kind.
inline void arrive(Wait kind) {
  Block& b = block();
  if (b.current < 0) {
    std::fputs("cudasim: a barrier or shuffle outside a kernel\n", stderr);
    std::abort();
  }
  SimThread& t = *b.threads[std::size_t(b.current)];
  if (kind == Wait::kBlock)
    ++t.block_arrivals;
  else
    ++t.warp_arrivals;
  t.wait = kind;
  suspend(b, t, false);
}

/// Runs one block of `count` threads to completion.
inline void run_block(dim3 dims, const std::function<void()>& body) {
  Block& b = block();
  const int count = int(dims.x * dims.y * dims.z);
  while (b.threads.size() < std::size_t(count)) b.threads.push_back(std::make_unique<SimThread>());
  b.lanes.assign(std::size_t((count + 31) / 32), {});
  b.body = &body;
  b.free_all_stacks();
  for (int i = 0; i < count; ++i) {
    SimThread& t = *b.threads[std::size_t(i)];
    t.stack = {};
    t.index = dim3(unsigned(i) % dims.x, (unsigned(i) / dims.x) % dims.y,
                   unsigned(i) / (dims.x * dims.y));
    t.block_arrivals = t.warp_arrivals = 0;
    t.wait = Wait::kStart;
    t.done = false;
  }
  b.live = count;
  std::vector<unsigned>& warp_min = b.warp_min;
  warp_min.resize(std::size_t((count + 31) / 32));
  while (b.live > 0) {
    // Lowest arrival counts over live threads, taken once per pass: a thread waiting at its
    // k-th barrier may go on once every live thread has reached its k-th (counts only grow, so
    // a stale minimum can only hold a thread back, never release it early).
    unsigned block_min = ~0u;
    std::fill(warp_min.begin(), warp_min.end(), ~0u);
    for (int i = 0; i < count; ++i) {
      const SimThread& t = *b.threads[std::size_t(i)];
      if (t.done) continue;
      block_min = std::min(block_min, t.block_arrivals);
      warp_min[std::size_t(i / 32)] = std::min(warp_min[std::size_t(i / 32)], t.warp_arrivals);
    }
    bool progress = false;
    for (int k = 0; k < count; ++k) {
      const int i = schedule() == Schedule::kReverse ? count - 1 - k : k;
      SimThread& t = *b.threads[std::size_t(i)];
      if (t.done) continue;
      if (t.wait == Wait::kBlock && t.block_arrivals > block_min) continue;
      if (t.wait == Wait::kWarp && t.warp_arrivals > warp_min[std::size_t(i / 32)]) continue;
      if (t.wait == Wait::kStart) {
        t.stack = b.lend_stack();
        make_context(t.context, t.stack.base, t.stack.bytes, thread_entry);
      }
      t.wait = Wait::kRunning;
      b.current = i;
      threadIdx = t.index;
      resume(b, t);
      progress = true;
      if (t.done) {
        --b.live;
        b.free_stacks.push_back(t.stack);
        t.stack = {};
      }
    }
    if (!progress) {
      b.current = -1;
      throw Deadlock(
          "cudasim: deadlock: some threads of a block wait at __syncthreads or a warp "
          "shuffle that other live threads of the block never reach");
    }
  }
  b.current = -1;
}

/// Runs a whole grid: blocks in x-fastest order, each with its threads as above.
inline void run_grid(dim3 grid, dim3 block_dims, const std::function<void()>& body) {
  gridDim = grid;
  blockDim = block_dims;
  for (unsigned z = 0; z < grid.z; ++z)
    for (unsigned y = 0; y < grid.y; ++y)
      for (unsigned x = 0; x < grid.x; ++x) {
        blockIdx = dim3(x, y, z);
        run_block(block_dims, body);
      }
}

/// The launch limits of every GPU datanas targets (sm_70 and later).
inline bool valid_configuration(dim3 grid, dim3 block_dims) {
  const std::uint64_t threads = std::uint64_t(block_dims.x) * block_dims.y * block_dims.z;
  return threads >= 1 && threads <= 1024 && block_dims.x <= 1024 && block_dims.y <= 1024 &&
         block_dims.z <= 64 && grid.x >= 1 && grid.y >= 1 && grid.z >= 1 && grid.x <= 2147483647u &&
         grid.y <= 65535 && grid.z <= 65535;
}

/// kernel<<<grid, block, 0, stream>>>(params...): the parameters are copied now (as the
/// runtime copies them at launch or capture), each thread gets its own copy of them.
template <class... P>
void launch(void (*kernel)(P...), dim3 grid, dim3 block_dims, cudaStream_t stream, P... params) {
  const SimScope scope;
  if (!valid_configuration(grid, block_dims)) {
    fail(cudaErrorInvalidConfiguration);
    return;
  }
  std::tuple<P...> args(std::move(params)...);
  ++state().counters.kernels;
  fail(enqueue(stream, [kernel, grid, block_dims, args] {
    const std::function<void()> body = [&] { std::apply(kernel, args); };
    try {
      run_grid(grid, block_dims, body);
    } catch (const Deadlock& e) {
      // A real GPU would hang; a launch failure that names the cause is the useful equivalent.
      std::fprintf(stderr, "%s\n", e.what());
      fail(cudaErrorLaunchFailure);
    }
  }));
}

/// A warp rendezvous: every live lane publishes `v`, then reads lane `source(lane)`'s value.
template <class T, class F>
T exchange(T v, F source) {
  static_assert(sizeof(T) <= 8 && std::is_trivially_copyable_v<T>);
  Block& b = block();
  const int i = b.current;
  std::array<std::uint64_t, 32>& row = b.lanes[std::size_t(i / 32)];
  std::uint64_t bits = 0;
  std::memcpy(&bits, &v, sizeof(T));
  row[std::size_t(i % 32)] = bits;
  arrive(Wait::kWarp);
  const int lane = i % 32;
  const int from = source(lane);
  T r = v;
  const int count = int(blockDim.x * blockDim.y * blockDim.z);
  if (from >= 0 && from < 32 && (i / 32) * 32 + from < count)
    std::memcpy(&r, &row[std::size_t(from)], sizeof(T));
  arrive(Wait::kWarp);  // nobody overwrites the row before every lane has read it
  return r;
}

}  // namespace cudasim

// ---- device intrinsics --------------------------------------------------------------------------
inline void __syncthreads() { cudasim::arrive(cudasim::Wait::kBlock); }
inline void __syncwarp(unsigned = 0xffffffffu) { cudasim::arrive(cudasim::Wait::kWarp); }

template <class T>
T __shfl_xor_sync(unsigned, T v, int lane_mask, int width = 32) {
  return cudasim::exchange(v, [lane_mask, width](int lane) {
    const int base = lane & ~(width - 1);
    const int to = lane ^ lane_mask;
    return to < base + width ? to : lane;
  });
}
template <class T>
T __shfl_down_sync(unsigned, T v, unsigned delta, int width = 32) {
  return cudasim::exchange(v, [delta, width](int lane) {
    const int base = lane & ~(width - 1);
    const int to = lane + int(delta);
    return to < base + width ? to : lane;
  });
}
template <class T>
T __shfl_sync(unsigned, T v, int src, int width = 32) {
  return cudasim::exchange(v,
                           [src, width](int lane) { return (lane & ~(width - 1)) + src % width; });
}

// One host thread runs all CUDA threads, so plain read-modify-writes are atomic.
template <class T>
T atomicAdd(T* address, T v) {
  const T old = *address;
  *address = old + v;
  return old;
}

inline float __int_as_float(int v) { return std::bit_cast<float>(v); }
inline int __float_as_int(float v) { return std::bit_cast<int>(v); }
inline double __longlong_as_double(long long v) { return std::bit_cast<double>(v); }
inline long long __double_as_longlong(double v) { return std::bit_cast<long long>(v); }

// ---- runtime API --------------------------------------------------------------------------------
inline const char* cudaGetErrorString(cudaError_t e) {
  switch (e) {
    case cudaSuccess:
      return "no error";
    case cudaErrorInvalidValue:
      return "invalid argument";
    case cudaErrorMemoryAllocation:
      return "out of memory";
    case cudaErrorInvalidConfiguration:
      return "invalid configuration argument";
    case cudaErrorInvalidDevicePointer:
      return "invalid device pointer";
    case cudaErrorInvalidMemcpyDirection:
      return "invalid copy direction for memcpy";
    case cudaErrorInsufficientDriver:
      return "CUDA driver version is insufficient for CUDA runtime version";
    case cudaErrorNoDevice:
      return "no CUDA-capable device is detected";
    case cudaErrorInvalidResourceHandle:
      return "invalid resource handle";
    case cudaErrorIllegalState:
      return "the operation cannot be performed in the present state";
    case cudaErrorLaunchFailure:
      return "unspecified launch failure";
    case cudaErrorStreamCaptureUnsupported:
      return "operation not permitted when stream is capturing";
    case cudaErrorStreamCaptureInvalidated:
      return "operation failed due to a previous error during capture";
    case cudaErrorStreamCaptureWrongThread:
      return "attempt to terminate a thread-local capture sequence from another thread";
  }
  return "unrecognized error code";
}
inline const char* cudaGetErrorName(cudaError_t e) { return cudaGetErrorString(e); }

inline cudaError_t cudaGetLastError() { return std::exchange(cudasim::state().last, cudaSuccess); }
inline cudaError_t cudaPeekAtLastError() { return cudasim::state().last; }

inline cudaError_t cudaGetDeviceCount(int* count) {
  const char* env = std::getenv("CUDASIM_DEVICES");
  if (env && std::string(env) == "0") {
    *count = 0;
    return cudasim::fail(cudaErrorNoDevice);
  }
  *count = 1;
  return cudaSuccess;
}
/// The simulator stands in for the CUDA 13.0 runtime.
#define CUDART_VERSION 13000
inline cudaError_t cudaRuntimeGetVersion(int* version) {
  *version = CUDART_VERSION;
  return cudaSuccess;
}
/// The fields of cudaDeviceProp that datanas reads, describing the simulator itself.
struct cudaDeviceProp {
  char name[256];
  int major;
  int minor;
  std::size_t totalGlobalMem;
  int multiProcessorCount;
  int warpSize;
};
inline cudaError_t cudaGetDeviceProperties(cudaDeviceProp* prop, int device) {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) return cudaErrorNoDevice;
  if (!prop || device < 0 || device >= n) return cudasim::fail(cudaErrorInvalidValue);
  *prop = {};
  std::snprintf(prop->name, sizeof(prop->name), "%s", "cudasim (host CUDA simulator)");
  prop->major = 9;  // what the kernels are compiled for by default (sm_90)
  prop->minor = 0;
  prop->totalGlobalMem = std::size_t(1) << 34;
  prop->multiProcessorCount = 1;
  prop->warpSize = 32;
  return cudaSuccess;
}
inline cudaError_t cudaGetDevice(int* device) {
  *device = 0;
  return cudaSuccess;
}
/// The attributes datanas asks for, with the runtime's values.
enum cudaDeviceAttr {
  cudaDevAttrComputeCapabilityMajor = 75,
  cudaDevAttrComputeCapabilityMinor = 76,
};
inline cudaError_t cudaDeviceGetAttribute(int* value, cudaDeviceAttr attr, int device) {
  cudaDeviceProp prop;
  if (const cudaError_t e = cudaGetDeviceProperties(&prop, device); e != cudaSuccess) return e;
  if (!value) return cudasim::fail(cudaErrorInvalidValue);
  switch (attr) {
    case cudaDevAttrComputeCapabilityMajor:
      *value = prop.major;
      return cudaSuccess;
    case cudaDevAttrComputeCapabilityMinor:
      *value = prop.minor;
      return cudaSuccess;
  }
  return cudasim::fail(cudaErrorInvalidValue);
}
inline cudaError_t cudaSetDevice(int device) {
  return device == 0 ? cudaSuccess : cudasim::fail(cudaErrorInvalidValue);
}

inline cudaError_t cudaMalloc(void** p, std::size_t bytes) {
  const cudasim::SimScope scope;  // device memory is host memory here: not the library's
  if (!p) return cudasim::fail(cudaErrorInvalidValue);
  *p = nullptr;
  ++cudasim::counters().mallocs;
  if (bytes == 0) return cudaSuccess;
  cudasim::Mapping m;
  void* q = cudasim::allocate_device(bytes, m);
  if (!q) return cudasim::fail(cudaErrorMemoryAllocation);
  cudasim::state().allocations.emplace(q, m);
  *p = q;
  return cudaSuccess;
}
template <class T>
cudaError_t cudaMalloc(T** p, std::size_t bytes) {
  return cudaMalloc(reinterpret_cast<void**>(p), bytes);
}

inline cudaError_t cudaFree(void* p) {
  const cudasim::SimScope scope;
  // cudaFree waits for the device: illegal while a stream captures.
  if (cudasim::state().capturing) {
    for (cudasim::Stream* s : cudasim::state().streams) cudasim::invalidate(s);
    return cudasim::fail(cudaErrorStreamCaptureUnsupported);
  }
  if (!p) return cudaSuccess;
  ++cudasim::counters().host_waits;
  const auto it = cudasim::state().allocations.find(p);
  if (it == cudasim::state().allocations.end()) return cudasim::fail(cudaErrorInvalidDevicePointer);
  cudasim::free_device(p, it->second);
  cudasim::state().allocations.erase(it);
  return cudaSuccess;
}

inline cudaError_t cudaStreamCreateWithFlags(cudaStream_t* s, unsigned) {
  *s = new cudasim::Stream;
  cudasim::state().streams.insert(*s);
  return cudaSuccess;
}
inline cudaError_t cudaStreamCreate(cudaStream_t* s) { return cudaStreamCreateWithFlags(s, 0); }
inline cudaError_t cudaStreamDestroy(cudaStream_t s) {
  if (!s || !cudasim::state().streams.count(s))
    return cudasim::fail(cudaErrorInvalidResourceHandle);
  if (s->capturing) return cudasim::invalidate(s);
  cudasim::state().streams.erase(s);
  delete s;
  return cudaSuccess;
}
inline cudaError_t cudaStreamSynchronize(cudaStream_t s) {
  if (!cudasim::known_stream(s)) return cudasim::fail(cudaErrorInvalidResourceHandle);
  if (s && s->capturing) return cudasim::invalidate(s);
  ++cudasim::counters().host_waits;
  return cudaSuccess;  // work ran when it was queued
}
inline cudaError_t cudaDeviceSynchronize() {
  if (cudasim::state().capturing) {
    for (cudasim::Stream* s : cudasim::state().streams) cudasim::invalidate(s);
    return cudasim::fail(cudaErrorStreamCaptureUnsupported);
  }
  ++cudasim::counters().host_waits;
  return cudaSuccess;
}

/// Host<->device copies of pageable memory cannot be captured (the runtime stages them
/// synchronously); device-to-device copies are captured as graph nodes.
inline cudaError_t cudaMemcpyAsync(void* dst, const void* src, std::size_t bytes,
                                   cudaMemcpyKind kind, cudaStream_t s = nullptr) {
  if (!cudasim::known_stream(s)) return cudasim::fail(cudaErrorInvalidResourceHandle);
  if (bytes == 0) return cudaSuccess;
  if (!dst || !src) return cudasim::fail(cudaErrorInvalidValue);
  if (kind < cudaMemcpyHostToHost || kind > cudaMemcpyDefault)
    return cudasim::fail(cudaErrorInvalidMemcpyDirection);
  if (kind != cudaMemcpyDeviceToDevice && s && s->capturing) return cudasim::invalidate(s);
  if (kind == cudaMemcpyDeviceToHost) {
    cudasim::Counters& c = cudasim::counters();
    ++c.reads;
    c.read_bytes += bytes;
    c.largest_read = std::max<std::uint64_t>(c.largest_read, bytes);
  }
  if (kind == cudaMemcpyHostToDevice) ++cudasim::counters().uploads;
  if (kind == cudaMemcpyDeviceToDevice) ++cudasim::counters().device_copies;
  return cudasim::fail(cudasim::enqueue(s, [dst, src, bytes] { std::memmove(dst, src, bytes); }));
}
inline cudaError_t cudaMemcpy(void* dst, const void* src, std::size_t bytes, cudaMemcpyKind kind) {
  ++cudasim::counters().host_waits;
  return cudaMemcpyAsync(dst, src, bytes, kind, nullptr);
}
inline cudaError_t cudaMemsetAsync(void* dst, int value, std::size_t bytes,
                                   cudaStream_t s = nullptr) {
  if (!cudasim::known_stream(s)) return cudasim::fail(cudaErrorInvalidResourceHandle);
  if (bytes == 0) return cudaSuccess;
  if (!dst) return cudasim::fail(cudaErrorInvalidValue);
  ++cudasim::counters().device_copies;
  return cudasim::fail(
      cudasim::enqueue(s, [dst, value, bytes] { std::memset(dst, value, bytes); }));
}
inline cudaError_t cudaMemset(void* dst, int value, std::size_t bytes) {
  return cudaMemsetAsync(dst, value, bytes, nullptr);
}

// ---- events -------------------------------------------------------------------------------------
inline cudaError_t cudaEventCreate(cudaEvent_t* e) {
  if (!e) return cudasim::fail(cudaErrorInvalidValue);
  *e = new cudasim::Event;
  return cudaSuccess;
}
inline cudaError_t cudaEventDestroy(cudaEvent_t e) {
  if (!e) return cudasim::fail(cudaErrorInvalidResourceHandle);
  delete e;
  return cudaSuccess;
}
/// Captured, it becomes a node that stamps the event at each replay, as on a GPU.
inline cudaError_t cudaEventRecord(cudaEvent_t e, cudaStream_t s = nullptr) {
  if (!e) return cudasim::fail(cudaErrorInvalidResourceHandle);
  return cudasim::fail(cudasim::enqueue(s, [e] {
    e->recorded = true;
    e->at = std::chrono::steady_clock::now();
  }));
}
inline cudaError_t cudaEventSynchronize(cudaEvent_t e) {
  if (!e) return cudasim::fail(cudaErrorInvalidResourceHandle);
  ++cudasim::counters().host_waits;
  return cudaSuccess;  // its work ran when it was queued
}
/// Milliseconds between two recorded events; an event never recorded is an invalid handle, as
/// the runtime reports it.
inline cudaError_t cudaEventElapsedTime(float* ms, cudaEvent_t start, cudaEvent_t end) {
  if (!ms) return cudasim::fail(cudaErrorInvalidValue);
  if (!start || !end || !start->recorded || !end->recorded)
    return cudasim::fail(cudaErrorInvalidResourceHandle);
  *ms = std::chrono::duration<float, std::milli>(end->at - start->at).count();
  return cudaSuccess;
}

// ---- graphs -------------------------------------------------------------------------------------
inline cudaError_t cudaStreamBeginCapture(cudaStream_t s, cudaStreamCaptureMode) {
  if (!s) return cudasim::fail(cudaErrorStreamCaptureUnsupported);  // the legacy stream
  if (!cudasim::known_stream(s)) return cudasim::fail(cudaErrorInvalidResourceHandle);
  if (s->capturing) return cudasim::fail(cudaErrorIllegalState);
  s->capturing = true;
  s->invalidated = false;
  s->graph = new cudasim::Graph;
  ++cudasim::state().capturing;
  return cudaSuccess;
}
inline cudaError_t cudaStreamEndCapture(cudaStream_t s, cudaGraph_t* graph) {
  if (!s || !cudasim::known_stream(s)) return cudasim::fail(cudaErrorInvalidResourceHandle);
  if (!s->capturing) return cudasim::fail(cudaErrorIllegalState);
  s->capturing = false;
  --cudasim::state().capturing;
  cudasim::Graph* g = std::exchange(s->graph, nullptr);
  if (s->invalidated) {
    delete g;
    *graph = nullptr;
    return cudasim::fail(cudaErrorStreamCaptureInvalidated);
  }
  *graph = g;
  return cudaSuccess;
}
inline cudaError_t cudaGraphGetNodes(cudaGraph_t g, cudaGraphNode_t* nodes, std::size_t* count) {
  if (!g || !count) return cudasim::fail(cudaErrorInvalidValue);
  if (nodes) {
    for (std::size_t i = 0; i < std::min(*count, g->nodes.size()); ++i) nodes[i] = &g->nodes[i];
  }
  *count = g->nodes.size();
  return cudaSuccess;
}
/// The graphs recorded here never hold allocation nodes (the stand-in libraries allocate
/// nothing), so the flag changes nothing; other flags are not simulated.
enum cudaGraphInstantiateFlags { cudaGraphInstantiateFlagAutoFreeOnLaunch = 1 };
inline cudaError_t cudaGraphInstantiate(cudaGraphExec_t* exec, cudaGraph_t g,
                                        unsigned long long flags = 0) {
  if (!exec || !g || (flags & ~1ull)) return cudasim::fail(cudaErrorInvalidValue);
  *exec = new cudasim::Graph(*g);
  return cudaSuccess;
}
inline cudaError_t cudaGraphLaunch(cudaGraphExec_t exec, cudaStream_t s) {
  if (!exec) return cudasim::fail(cudaErrorInvalidValue);
  if (!cudasim::known_stream(s)) return cudasim::fail(cudaErrorInvalidResourceHandle);
  if (s && s->capturing) return cudasim::invalidate(s);
  const cudasim::SimScope scope;
  const cudaError_t before = std::exchange(cudasim::state().last, cudaSuccess);
  for (const auto& node : exec->nodes) node();
  const cudaError_t during = cudasim::state().last;
  cudasim::state().last = during != cudaSuccess ? during : before;
  return during;
}
inline cudaError_t cudaGraphDestroy(cudaGraph_t g) {
  delete g;
  return cudaSuccess;
}
inline cudaError_t cudaGraphExecDestroy(cudaGraphExec_t exec) {
  delete exec;
  return cudaSuccess;
}
