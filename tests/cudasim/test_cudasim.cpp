// The CUDA simulator's own tests: the semantics the GPU tests rely on when they run on it
// (barriers, warp shuffles, launch limits, stream capture), and its ability to expose a race.
#include <cublas_v2.h>
#include <cuda_runtime.h>
#include <doctest/doctest.h>
#include <fcntl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <csignal>
#include <cstdint>
#include <cstring>
#include <numeric>
#include <string>
#include <vector>

#include "datanas/core/error.hpp"
#include "datanas/cuda/launch.cuh"

namespace {

constexpr int kMaxThreads = 1024;

/// out[block] = sum of in[block * blockDim.x + t]: a shared-memory tree, one barrier per level.
__global__ void tree_sum(const int* in, int* out) {
  __shared__ int s[kMaxThreads];
  const unsigned t = threadIdx.x;
  s[t] = in[blockIdx.x * blockDim.x + t];
  __syncthreads();
  for (unsigned half = 1; half < blockDim.x; half *= 2) {
    const int v = (t % (2 * half) == 0 && t + half < blockDim.x) ? s[t + half] : 0;
    __syncthreads();  // everyone has read before anyone writes
    s[t] += v;
    __syncthreads();
  }
  if (t == 0) out[blockIdx.x] = s[0];
}

/// Every lane of each warp gets the warp's sum (butterfly of shuffles).
__global__ void warp_sum(const double* in, double* out) {
  double v = in[threadIdx.x];
  for (int off = 16; off > 0; off /= 2) v += __shfl_xor_sync(0xffffffffu, v, off);
  out[threadIdx.x] = v;
}

/// Reads a neighbour's shared slot without the barrier that would order it: a race.
__global__ void racy_rotate(int* out) {
  __shared__ int s[32];
  const unsigned t = threadIdx.x;
  s[t] = int(t) + 1;
  // (missing __syncthreads)
  out[t] = s[(t + 1) % blockDim.x];
}

/// Half a warp waits at a shuffle for the other half, which waits at __syncthreads for the
/// first: neither can ever complete.
__global__ void divergent_barrier(int* out) {
  if (threadIdx.x < 16) {
    out[0] = __shfl_xor_sync(0xffffffffu, 1, 1);
  } else {
    __syncthreads();
  }
}

__global__ void add_value(int* p, int v) { p[threadIdx.x] += v; }

__global__ void count_odd(const int* in, int* count) {
  if (in[blockIdx.x * blockDim.x + threadIdx.x] % 2) atomicAdd(count, 1);
}

__global__ void write_at(float* p, int i) { p[i] = 1.0f; }

/// Runs `touch` in a child process (output discarded, default SIGSEGV action) and returns the
/// signal that ended it, or 0 when it exited normally.
template <class F>
int signal_of(F&& touch) {
  const pid_t pid = fork();
  REQUIRE(pid >= 0);
  if (pid == 0) {
    const int null = open("/dev/null", O_WRONLY);
    dup2(null, 1);
    dup2(null, 2);
    std::signal(SIGSEGV, SIG_DFL);
    touch();
    _exit(0);
  }
  int status = 0;
  REQUIRE(waitpid(pid, &status, 0) == pid);
  return WIFSIGNALED(status) ? WTERMSIG(status) : 0;
}

/// A device buffer of n values, freed at scope exit. The test reads and writes it as the
/// simulator does (SimScope): host code elsewhere may not touch device memory, as on a GPU.
template <class T = int>
struct Buffer {
  T* p = nullptr;
  explicit Buffer(std::size_t n) { REQUIRE(cudaMalloc(&p, n * sizeof(T)) == cudaSuccess); }
  ~Buffer() { (void)cudaFree(p); }
  [[nodiscard]] T get(std::size_t i) const {
    const cudasim::SimScope device;
    return p[i];
  }
  [[nodiscard]] std::vector<T> get_all(std::size_t n) const {
    const cudasim::SimScope device;
    return std::vector<T>(p, p + n);
  }
  void set(std::size_t i, T v) const {
    const cudasim::SimScope device;
    p[i] = v;
  }
  void set_all(const std::vector<T>& v) const {
    const cudasim::SimScope device;
    std::copy(v.begin(), v.end(), p);
  }
};

std::vector<int> run_racy(cudasim::Schedule order) {
  cudasim::set_schedule(order);
  Buffer out(32);
  datanas::cuda::launch(racy_rotate, 1, 32, nullptr, out.p);
  cudasim::set_schedule(cudasim::Schedule::kForward);
  return out.get_all(32);
}

}  // namespace

TEST_CASE("block barriers order shared memory for every block shape, in both schedules") {
  for (cudasim::Schedule order : {cudasim::Schedule::kForward, cudasim::Schedule::kReverse}) {
    cudasim::set_schedule(order);
    for (unsigned threads : {1u, 31u, 32u, 33u, 100u, 256u, 1024u}) {
      const unsigned blocks = 3;
      std::vector<int> in(blocks * threads);
      std::iota(in.begin(), in.end(), 1);
      Buffer d_in(in.size()), d_out(blocks);
      d_in.set_all(in);
      datanas::cuda::launch(tree_sum, blocks, threads, nullptr, d_in.p, d_out.p);
      for (unsigned b = 0; b < blocks; ++b) {
        const long first = long(b) * threads + 1, last = first + threads - 1;
        CHECK(d_out.get(b) == (first + last) * long(threads) / 2);
      }
    }
  }
  cudasim::set_schedule(cudasim::Schedule::kForward);
}

TEST_CASE("warp shuffles exchange values between the lanes of each warp only") {
  std::vector<double> in(64);
  std::iota(in.begin(), in.end(), 0.0);
  Buffer<double> d_in(64), d_out(64);
  d_in.set_all(in);
  datanas::cuda::launch(warp_sum, 1, 64, nullptr, d_in.p, d_out.p);
  for (std::size_t i = 0; i < 64; ++i) CHECK(d_out.get(i) == (i < 32 ? 496.0 : 1520.0));
}

TEST_CASE("a missing barrier shows up as a difference between the two schedules") {
  const std::vector<int> forward = run_racy(cudasim::Schedule::kForward);
  const std::vector<int> reverse = run_racy(cudasim::Schedule::kReverse);
  CHECK(forward != reverse);
}

TEST_CASE("a barrier that live threads never reach fails the launch with a named error") {
  Buffer out(1);
  CHECK_THROWS_WITH_AS(datanas::cuda::launch(divergent_barrier, 1, 32, nullptr, out.p),
                       doctest::Contains("unspecified launch failure"), datanas::error);
  CHECK(cudaGetLastError() == cudaSuccess);  // reading the error cleared it
}

TEST_CASE("launch limits are those of a real GPU") {
  Buffer p(1);
  CHECK_THROWS_WITH_AS(datanas::cuda::launch(add_value, 1, 1025, nullptr, p.p, 1),
                       doctest::Contains("invalid configuration"), datanas::error);
  CHECK_THROWS_AS(datanas::cuda::launch(add_value, dim3(1, 65536), 1, nullptr, p.p, 1),
                  datanas::error);
  CHECK_THROWS_AS(datanas::cuda::launch(add_value, 0, 1, nullptr, p.p, 1), datanas::error);
  CHECK_THROWS_AS(datanas::cuda::launch(add_value, 1, dim3(1, 1, 65), nullptr, p.p, 1),
                  datanas::error);
}

TEST_CASE("host code cannot touch device memory, as on a GPU; a kernel past its block's end faults") {
#if CUDASIM_PAGED_DEVICE_MEMORY
  Buffer<float> b(100);  // 400 bytes; the caching allocator's rounding (256) makes it 512
  b.set_all(std::vector<float>(100, 3.0f));
  // The simulator's own accesses: a copy, a kernel, a test's peek (SimScope).
  CHECK(signal_of([&] {
          float h[100];
          if (cudaMemcpy(h, b.p, sizeof h, cudaMemcpyDeviceToHost) != cudaSuccess || h[99] != 3.0f)
            _exit(1);
          datanas::cuda::launch(write_at, 1, 1, nullptr, b.p, 127);  // inside the rounded span
          if (b.get(99) != 3.0f) _exit(1);
        }) == 0);
  CHECK(signal_of([&] { datanas::cuda::launch(write_at, 1, 1, nullptr, b.p, 128); }) == SIGSEGV);
  if (!cudasim::device_memory_protected()) {
    MESSAGE("no memory protection keys on this machine: host access to device memory not checked");
    return;
  }
  CHECK(signal_of([&] { (void)static_cast<volatile float*>(b.p)[0]; }) == SIGSEGV);
  CHECK(signal_of([&] { static_cast<volatile float*>(b.p)[3] = 2.0f; }) == SIGSEGV);
#else
  MESSAGE("device memory is heap memory in this build (AddressSanitizer checks its bounds)");
#endif
}

TEST_CASE("atomicAdd counts every hit") {
  std::vector<int> in(10 * 64);
  std::iota(in.begin(), in.end(), 0);
  Buffer d_in(in.size()), count(1);
  d_in.set_all(in);
  count.set(0, 0);
  datanas::cuda::launch(count_odd, 10, 64, nullptr, d_in.p, count.p);
  CHECK(count.get(0) == 320);
}

TEST_CASE("stream capture records work with its arguments and replays it") {
  cudaStream_t s = nullptr;
  REQUIRE(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking) == cudaSuccess);
  Buffer p(4);
  p.set_all({0, 0, 0, 0});
  int v = 5;
  REQUIRE(cudaStreamBeginCapture(s, cudaStreamCaptureModeRelaxed) == cudaSuccess);
  REQUIRE(cudaMemsetAsync(p.p, 0, 4 * sizeof(int), s) == cudaSuccess);
  datanas::cuda::launch(add_value, 1, 4, s, p.p, v);
  v = 100;  // the kernel argument was copied at capture
  datanas::cuda::launch(add_value, 1, 4, s, p.p, 1);
  CHECK(p.get(0) == 0);  // nothing ran while capturing
  cudaGraph_t g = nullptr;
  REQUIRE(cudaStreamEndCapture(s, &g) == cudaSuccess);
  std::size_t nodes = 0;
  REQUIRE(cudaGraphGetNodes(g, nullptr, &nodes) == cudaSuccess);
  CHECK(nodes == 3);
  cudaGraphExec_t exec = nullptr;
  REQUIRE(cudaGraphInstantiate(&exec, g, 0) == cudaSuccess);
  REQUIRE(cudaGraphDestroy(g) == cudaSuccess);
  for (int replay = 0; replay < 3; ++replay) {
    p.set(1, 1000);  // the memset node clears it again
    REQUIRE(cudaGraphLaunch(exec, s) == cudaSuccess);
    CHECK(p.get(0) == 6);
    CHECK(p.get(1) == 6);
  }
  REQUIRE(cudaGraphExecDestroy(exec) == cudaSuccess);
  REQUIRE(cudaStreamDestroy(s) == cudaSuccess);
}

TEST_CASE("events time the work between them on the host, captured ones at each replay") {
  cudaStream_t s = nullptr;
  REQUIRE(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking) == cudaSuccess);
  cudaEvent_t e0 = nullptr, e1 = nullptr;
  REQUIRE(cudaEventCreate(&e0) == cudaSuccess);
  REQUIRE(cudaEventCreate(&e1) == cudaSuccess);
  float ms = -1;
  // Never recorded: an invalid handle, as the runtime says.
  CHECK(cudaEventElapsedTime(&ms, e0, e1) == cudaErrorInvalidResourceHandle);
  CHECK(cudaGetLastError() == cudaErrorInvalidResourceHandle);
  Buffer p(4);
  p.set_all({0, 0, 0, 0});
  REQUIRE(cudaEventRecord(e0, s) == cudaSuccess);
  const auto t0 = std::chrono::steady_clock::now();
  while (std::chrono::steady_clock::now() - t0 < std::chrono::milliseconds(20)) {
  }
  datanas::cuda::launch(add_value, 1, 4, s, p.p, 1);
  REQUIRE(cudaEventRecord(e1, s) == cudaSuccess);
  REQUIRE(cudaEventSynchronize(e1) == cudaSuccess);
  REQUIRE(cudaEventElapsedTime(&ms, e0, e1) == cudaSuccess);
  CHECK(ms >= 20.0f);
  CHECK(ms < 10000.0f);
  // Recorded inside a capture, the stamp happens at each replay.
  REQUIRE(cudaStreamBeginCapture(s, cudaStreamCaptureModeRelaxed) == cudaSuccess);
  REQUIRE(cudaEventRecord(e1, s) == cudaSuccess);
  cudaGraph_t g = nullptr;
  REQUIRE(cudaStreamEndCapture(s, &g) == cudaSuccess);
  cudaGraphExec_t exec = nullptr;
  REQUIRE(cudaGraphInstantiate(&exec, g, 0) == cudaSuccess);
  REQUIRE(cudaGraphDestroy(g) == cudaSuccess);
  REQUIRE(cudaEventRecord(e0, s) == cudaSuccess);
  REQUIRE(cudaGraphLaunch(exec, s) == cudaSuccess);
  REQUIRE(cudaEventElapsedTime(&ms, e0, e1) == cudaSuccess);
  CHECK(ms >= 0.0f);
  CHECK(ms < 20.0f);  // stamped at the replay, not at the capture before e0
  REQUIRE(cudaGraphExecDestroy(exec) == cudaSuccess);
  REQUIRE(cudaEventDestroy(e0) == cudaSuccess);
  REQUIRE(cudaEventDestroy(e1) == cudaSuccess);
  REQUIRE(cudaStreamDestroy(s) == cudaSuccess);
  cudaDeviceProp prop{};
  REQUIRE(cudaGetDeviceProperties(&prop, 0) == cudaSuccess);
  CHECK(std::string(prop.name).find("cudasim") != std::string::npos);
  CHECK(cudaGetDeviceProperties(&prop, 1) == cudaErrorInvalidValue);
  (void)cudaGetLastError();
}

TEST_CASE("what a real capture refuses invalidates the simulated one") {
  cudaStream_t s = nullptr;
  REQUIRE(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking) == cudaSuccess);
  Buffer p(4);
  int host[4] = {1, 2, 3, 4};
  // The legacy default stream cannot be captured at all.
  CHECK(cudaStreamBeginCapture(nullptr, cudaStreamCaptureModeRelaxed) ==
        cudaErrorStreamCaptureUnsupported);
  (void)cudaGetLastError();
  const auto refused = [&](auto&& call) {
    REQUIRE(cudaStreamBeginCapture(s, cudaStreamCaptureModeRelaxed) == cudaSuccess);
    CHECK(call() == cudaErrorStreamCaptureUnsupported);
    cudaGraph_t g = nullptr;
    CHECK(cudaStreamEndCapture(s, &g) == cudaErrorStreamCaptureInvalidated);
    CHECK(g == nullptr);
    (void)cudaGetLastError();
  };
  refused([&] { return cudaMemcpyAsync(p.p, host, sizeof(host), cudaMemcpyHostToDevice, s); });
  refused([&] { return cudaMemcpyAsync(host, p.p, sizeof(host), cudaMemcpyDeviceToHost, s); });
  refused([&] { return cudaStreamSynchronize(s); });
  int* q = nullptr;
  refused([&] {
    REQUIRE(cudaMalloc(&q, 16) == cudaSuccess);  // allowed in relaxed mode
    return cudaFree(q);                          // waits for the device: not allowed
  });
  CHECK(cudaFree(q) == cudaSuccess);  // allowed again after the capture
  REQUIRE(cudaStreamDestroy(s) == cudaSuccess);
}

TEST_CASE("errors are remembered until read, as the runtime does") {
  CHECK(cudaGetLastError() == cudaSuccess);
  CHECK(cudaFree(reinterpret_cast<void*>(std::uintptr_t(16))) == cudaErrorInvalidDevicePointer);
  CHECK(cudaPeekAtLastError() == cudaErrorInvalidDevicePointer);
  CHECK(cudaGetLastError() == cudaErrorInvalidDevicePointer);
  CHECK(cudaGetLastError() == cudaSuccess);
  CHECK(std::string(cudaGetErrorString(cudaErrorNoDevice)).find("no CUDA-capable device") !=
        std::string::npos);
}

TEST_CASE(
    "the counters see allocations, waits for the device, reads and uploads (step tests rely on "
    "them)") {
  cudasim::counters() = {};
  float* d = nullptr;
  REQUIRE(cudaMalloc(&d, 64 * sizeof(float)) == cudaSuccess);
  cudaStream_t s = nullptr;
  REQUIRE(cudaStreamCreate(&s) == cudaSuccess);
  std::vector<float> h(64, 1.0f);
  REQUIRE(cudaMemcpyAsync(d, h.data(), 64 * sizeof(float), cudaMemcpyHostToDevice, s) ==
          cudaSuccess);
  REQUIRE(cudaMemsetAsync(d, 0, 8 * sizeof(float), s) == cudaSuccess);
  CHECK(cudasim::counters().mallocs == 1);
  CHECK(cudasim::counters().host_waits == 0);  // queued work makes the host wait for nothing
  CHECK(cudasim::counters().reads == 0);
  CHECK(cudasim::counters().uploads == 1);
  REQUIRE(cudaMemcpyAsync(h.data(), d, 4 * sizeof(float), cudaMemcpyDeviceToHost, s) ==
          cudaSuccess);
  REQUIRE(cudaStreamSynchronize(s) == cudaSuccess);
  REQUIRE(cudaMemcpy(h.data(), d, 64 * sizeof(float), cudaMemcpyDeviceToHost) == cudaSuccess);
  CHECK(h[0] == 0.0f);
  CHECK(h[8] == 1.0f);
  REQUIRE(cudaDeviceSynchronize() == cudaSuccess);
  REQUIRE(cudaFree(d) == cudaSuccess);
  REQUIRE(cudaStreamDestroy(s) == cudaSuccess);
  const cudasim::Counters c = cudasim::counters();
  CHECK(c.mallocs == 1);
  CHECK(c.host_waits == 4);  // stream sync, synchronous copy, device sync, free
  CHECK(c.reads == 2);
  CHECK(c.read_bytes == 68 * sizeof(float));
  CHECK(c.largest_read == 64 * sizeof(float));
  CHECK(c.uploads == 1);
}

TEST_CASE("the cuBLAS stand-in keeps a user workspace until the stream is set again, and uses it") {
  // C [2, 2] = A [2, 3] B [3, 2], column-major.
  const std::vector<float> a{1, 2, 3, 4, 5, 6}, b{1, 0, -1, 2, 1, 0};
  float *da = nullptr, *db = nullptr, *dc = nullptr;
  char* ws = nullptr;
  REQUIRE(cudaMalloc(&da, 6 * sizeof(float)) == cudaSuccess);
  REQUIRE(cudaMalloc(&db, 6 * sizeof(float)) == cudaSuccess);
  REQUIRE(cudaMalloc(&dc, 4 * sizeof(float)) == cudaSuccess);
  REQUIRE(cudaMalloc(reinterpret_cast<void**>(&ws), 8192) == cudaSuccess);
  REQUIRE(cudaMemcpy(da, a.data(), 6 * sizeof(float), cudaMemcpyHostToDevice) == cudaSuccess);
  REQUIRE(cudaMemcpy(db, b.data(), 6 * sizeof(float), cudaMemcpyHostToDevice) == cudaSuccess);
  cudaStream_t s = nullptr;
  REQUIRE(cudaStreamCreate(&s) == cudaSuccess);
  cublasHandle_t h = nullptr;
  REQUIRE(cublasCreate(&h) == CUBLAS_STATUS_SUCCESS);
  REQUIRE(cublasSetStream(h, s) == CUBLAS_STATUS_SUCCESS);
  const float one = 1, zero = 0;
  const auto gemm = [&](float* c) {
    return cublasSgemm(h, CUBLAS_OP_N, CUBLAS_OP_N, 2, 2, 3, &one, da, 2, db, 3, &zero, c, 2);
  };
  const std::uint64_t own = cudasim::counters().cublas_own_workspace;
  CHECK(gemm(dc) == CUBLAS_STATUS_SUCCESS);
  CHECK(cudasim::counters().cublas_own_workspace == own + 1);  // cuBLAS's own pool

  CHECK(cublasSetWorkspace(h, ws + 16, 1024) == CUBLAS_STATUS_INVALID_VALUE);  // not 256-aligned
  CHECK(cublasSetWorkspace(h, nullptr, 1024) == CUBLAS_STATUS_INVALID_VALUE);
  REQUIRE(cublasSetWorkspace(h, ws, 8192) == CUBLAS_STATUS_SUCCESS);
  REQUIRE(cudaMemset(dc, 0xff, 4 * sizeof(float)) == cudaSuccess);
  CHECK(gemm(dc) == CUBLAS_STATUS_SUCCESS);
  CHECK(cudasim::counters().cublas_own_workspace == own + 1);
  std::vector<float> c(4);
  REQUIRE(cudaMemcpy(c.data(), dc, 4 * sizeof(float), cudaMemcpyDeviceToHost) == cudaSuccess);
  CHECK(c == std::vector<float>{-4, -4, 5, 8});
  unsigned char first = 0, last = 0;
  REQUIRE(cudaMemcpy(&first, ws, 1, cudaMemcpyDeviceToHost) == cudaSuccess);
  REQUIRE(cudaMemcpy(&last, ws + 8191, 1, cudaMemcpyDeviceToHost) == cudaSuccess);
  CHECK(first == 0x5a);  // the GEMM wrote its scratch at both ends
  CHECK(last == 0x5a);
  // An operand inside the workspace would be overwritten on a GPU: refused here.
  CHECK(cublasSgemm(h, CUBLAS_OP_N, CUBLAS_OP_N, 2, 2, 3, &one, da, 2, db, 3, &zero,
                    reinterpret_cast<float*>(ws + 4096), 2) == CUBLAS_STATUS_INVALID_VALUE);

  REQUIRE(cublasSetStream(h, s) == CUBLAS_STATUS_SUCCESS);  // back on cuBLAS's own pool
  CHECK(gemm(dc) == CUBLAS_STATUS_SUCCESS);
  CHECK(cudasim::counters().cublas_own_workspace == own + 2);

  REQUIRE(cublasDestroy(h) == CUBLAS_STATUS_SUCCESS);
  REQUIRE(cudaStreamDestroy(s) == cudaSuccess);
  for (void* p : {static_cast<void*>(da), static_cast<void*>(db), static_cast<void*>(dc),
                  static_cast<void*>(ws)})
    REQUIRE(cudaFree(p) == cudaSuccess);
}
