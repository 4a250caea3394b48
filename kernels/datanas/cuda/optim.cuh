// datanas/cuda/optim.cuh - the optimiser kernels (declared in optim.hpp): fused updates of SGD
// (a chunk of parameters per launch), Adam and ASGD (one parameter per launch) that follow the
// CPU steps in optim/optimizers.hpp and optim/asgd.hpp operation by operation, the
// deterministic multi-tensor squared norm behind clip_grad_norm and squared_norm, and the small
// scalar/vector kernels of ops/tensor_math.hpp.
//
// Rounding: every update writes the same sequence of roundings as the CPU's Eigen expression
// (products, then sums, in its order); nvcc may still contract a product and a sum into an FMA,
// as the host compiler may, so the devices agree to an ulp or so per step, not bit for bit.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>

#include "datanas/core/error.hpp"
#include "datanas/cuda/check.cuh"
#include "datanas/cuda/launch.cuh"
#include "datanas/cuda/map.cuh"
#include "datanas/cuda/optim.hpp"
#include "datanas/cuda/reduce.cuh"

namespace datanas::cuda {

namespace optim_detail {

__device__ __forceinline__ float dsqrt(float x) { return sqrtf(x); }
__device__ __forceinline__ double dsqrt(double x) { return sqrt(x); }

static_assert(kOptimThreads == kMapThreads, "the scale kernels use map_blocks' block size");
using cuda::launch_map;
using cuda::map_blocks;
/// One thread: scalar work whose inputs are device values (no host round trip).
template <class F>
__global__ void scalar_kernel(F f) {
  if (threadIdx.x == 0 && blockIdx.x == 0) f();
}
template <class F>
void launch_scalar(F f, cudaStream_t stream) {
  cuda::launch(scalar_kernel<F>, 1, 32, stream, f);
}

/// Up to kTensorChunk tensors of one multi-tensor launch, passed by value.
template <class T>
struct TensorChunk {
  T* x[kTensorChunk] = {};
  std::int64_t n[kTensorChunk] = {};
  int count = 0;
};

/// partial[t * gridDim.x + blockIdx.x] = this block's share of sum(x_t^2) in double; blockIdx.y
/// is the tensor t of the chunk.
template <class T>
__global__ void __launch_bounds__(kOptimThreads)
    square_partials_kernel(TensorChunk<T> chunk, double* partial) {
  __shared__ double sh[kOptimThreads];
  const int t = int(blockIdx.y);
  const T* x = chunk.x[t];
  const std::int64_t n = chunk.n[t];
  double acc = 0;
  const std::int64_t stride = std::int64_t(gridDim.x) * blockDim.x;
  for (std::int64_t i = std::int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) {
    const double v = double(x[i]);
    acc += v * v;
  }
  const double s = block_tree_sum<kOptimThreads>(acc, sh);
  if (threadIdx.x == 0) partial[std::int64_t(t) * gridDim.x + blockIdx.x] = s;
}

/// One block: sq = the partials added in a fixed order (thread j takes partials j, j + 256, ...,
/// then a fixed tree), then the requested outputs.
template <class T>
__global__ void __launch_bounds__(kOptimThreads)
    norm_finish_kernel(std::int64_t count, const double* partial, NormOutputs<T> out) {
  __shared__ double sh[kOptimThreads];
  double acc = 0;
  for (std::int64_t i = threadIdx.x; i < count; i += kOptimThreads) acc += partial[i];
  const double sq = block_tree_sum<kOptimThreads>(acc, sh);
  if (threadIdx.x != 0) return;
  if (out.sq_value) out.sq_value[0] = T(sq);
  const double norm = sqrt(sq);
  if (out.norm) out.norm[0] = T(norm);
  if (out.clip_coef) out.clip_coef[0] = out.max_norm / (norm + 1e-6);
}

/// x_t *= T(coef) for the chunk's tensors when coef < 1 (NaN: untouched, like the CPU's `if`).
template <class T>
__global__ void __launch_bounds__(kOptimThreads) scale_chunk_kernel(TensorChunk<T> chunk, const double* coef) {
  const double c = coef[0];
  if (!(c < 1)) return;
  const T s = T(c);
  const int t = int(blockIdx.y);
  T* x = chunk.x[t];
  const std::int64_t n = chunk.n[t];
  const std::int64_t stride = std::int64_t(gridDim.x) * blockDim.x;
  for (std::int64_t i = std::int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride)
    x[i] = x[i] * s;
}

/// The chunk of tensors [first, first + kTensorChunk) and its largest size.
template <class T>
TensorChunk<T> chunk_at(int count, T* const* x, const std::int64_t* n, int first, std::int64_t& largest) {
  TensorChunk<T> c;
  c.count = std::min(kTensorChunk, count - first);
  largest = 0;
  for (int t = 0; t < c.count; ++t) {
    DATANAS_CHECK(n[first + t] == 0 || x[first + t] != nullptr, "cuda squared_norm: tensor ",
                  first + t, " of ", n[first + t], " elements has no storage");
    c.x[t] = x[first + t];
    c.n[t] = n[first + t];
    largest = std::max(largest, c.n[t]);
  }
  return c;
}

template <class T>
struct SgdOp {
  T* w;
  T* g;
  T* buf;
  T lr, momentum, wd;
  bool decay, first;
  __device__ void operator()(std::int64_t i) const {
    T gi = g[i];
    if (decay) {  // the CPU adds the decay into the gradient buffer, which is ours until zero_grad
      gi = gi + wd * w[i];
      g[i] = gi;
    }
    if (buf) {
      const T b = first ? gi : momentum * buf[i] + gi;
      buf[i] = b;
      w[i] = w[i] - lr * b;
    } else {
      w[i] = w[i] - lr * gi;
    }
  }
};

/// SGD on parameter blockIdx.y of the chunk, SgdOp's arithmetic on each element.
template <class T>
__global__ void __launch_bounds__(kOptimThreads) sgd_chunk_kernel(SgdChunk<T> chunk) {
  const SgdParam<T>& p = chunk.p[blockIdx.y];
  const SgdOp<T> op{p.w, p.g, p.buf, chunk.lr, chunk.momentum, chunk.wd, chunk.decay, p.first};
  const std::int64_t stride = std::int64_t(gridDim.x) * blockDim.x;
  for (std::int64_t i = std::int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < p.n; i += stride) op(i);
}

template <class T>
struct AdamOp {
  T* w;
  T* g;
  T* m;
  T* v;
  AdamScalars<T> s;
  __device__ void operator()(std::int64_t i) const {
    T gi = g[i];
    if (s.decay) {
      gi = gi + s.wd * w[i];
      g[i] = gi;
    }
    const T mi = s.beta1 * m[i] + s.one_minus_beta1 * gi;
    const T vi = s.beta2 * v[i] + s.one_minus_beta2 * (gi * gi);
    m[i] = mi;
    v[i] = vi;
    // The CPU's order: (step_size * m) / (sqrt(v / c2) + eps).
    const T step_size = s.per_step ? s.per_step[0] : s.step_size;
    const T c2 = s.per_step ? s.per_step[1] : s.c2;
    w[i] = w[i] - (step_size * mi) / (dsqrt(vi / c2) + s.eps);
  }
};

template <class T>
struct AsgdOp {
  T* w;
  T* g;
  T* ax;
  AsgdScalars<T> s;
  __device__ void operator()(std::int64_t i) const {
    T gi = g[i];
    if (s.decay) {
      gi = gi + s.wd * w[i];
      g[i] = gi;
    }
    const T* p = s.per_step;
    T wi = w[i];
    if (s.shrink) wi = wi * (p ? p[0] : s.shrink_factor);
    wi = wi - (p ? p[1] : s.eta) * gi;
    w[i] = wi;
    const bool average = p ? p[3] != T(0) : s.average;
    ax[i] = average ? ax[i] + (p ? p[2] : s.mu) * (wi - ax[i]) : wi;
  }
};

/// out = a x + c y with c = b or b s[0]. Each thread reads x[i] and y[i] before writing out[i],
/// so out may be x or y.
template <class T>
struct AxpbyOp {
  T a;
  const T* x;
  T b;
  const T* s;
  const T* y;
  T* out;
  __device__ void operator()(std::int64_t i) const {
    const T c = s ? b * s[0] : b;
    out[i] = a * x[i] + c * y[i];
  }
};

template <class T>
struct ScaleByOp {
  T* x;
  const T* s;
  T factor;
  __device__ void operator()(std::int64_t i) const {
    const T c = s ? factor * s[0] : factor;
    x[i] = x[i] * c;
  }
};

template <class T>
struct NormRatioOp {
  const T* sq;
  double num, floor;
  T* out;
  __device__ void operator()() const {
    const double r = sqrt(double(sq[0]));
    out[0] = T(num / (r < floor ? floor : r));  // std::max(r, floor), NaN included
  }
};

template <class T>
struct ReciprocalOp {
  const T* s;
  T* out;
  __device__ void operator()() const { out[0] = T(1) / s[0]; }
};

/// partial[blockIdx.x] = this block's share of sum |p - code| in double.
template <class T>
__global__ void __launch_bounds__(kOptimThreads)
    l1_partials_kernel(std::int64_t n, const T* p, const T* code, double* partial) {
  __shared__ double sh[kOptimThreads];
  double acc = 0;
  const std::int64_t stride = std::int64_t(gridDim.x) * blockDim.x;
  for (std::int64_t i = std::int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) {
    const T d = p[i] - code[i];
    acc += double(d < T(0) ? -d : d);
  }
  const double s = block_tree_sum<kOptimThreads>(acc, sh);
  if (threadIdx.x == 0) partial[blockIdx.x] = s;
}
template <class T>
__global__ void l1_finish_kernel(int blocks, const double* partial, T coeff, T* y) {
  if (threadIdx.x != 0 || blockIdx.x != 0) return;
  double acc = 0;
  for (int b = 0; b < blocks; ++b) acc += partial[b];
  y[0] = coeff * T(acc);
}

template <class T>
struct L1BackwardOp {
  const T* p;
  const T* code;
  const T* dy;
  T coeff;
  T* g;
  bool accumulate;
  __device__ void operator()(std::int64_t i) const {
    const T d = dy[0] * coeff;
    const T diff = p[i] - code[i];
    const T v = d * (T(diff > T(0)) - T(diff < T(0)));  // the CPU's expression, 0 * inf included
    g[i] = accumulate ? g[i] + v : v;
  }
};

}  // namespace optim_detail

// ---- launchers (asynchronous on `stream`) --------------------------------------------------

template <class T>
void squared_norm(int count, T* const* x, const std::int64_t* n, double* workspace,
                  const NormOutputs<T>& out, cudaStream_t stream) {
  namespace od = optim_detail;
  DATANAS_CHECK(count >= 0, "cuda squared_norm: negative tensor count ", count);
  std::int64_t offset = 0;  // the layout of squared_norm_workspace
  for (int first = 0; first < count; first += kTensorChunk) {
    std::int64_t largest = 0;
    const od::TensorChunk<T> chunk = od::chunk_at(count, x, n, first, largest);
    const unsigned blocks = unsigned(norm_blocks(largest));
    cuda::launch(od::square_partials_kernel<T>, dim3(blocks, unsigned(chunk.count)), kOptimThreads,
                 stream, chunk, workspace + offset);
    offset += std::int64_t(blocks) * chunk.count;
  }
  cuda::launch(od::norm_finish_kernel<T>, 1, kOptimThreads, stream, offset, workspace, out);
}

template <class T>
void scale_by_coef(int count, T* const* x, const std::int64_t* n, const double* coef,
                   cudaStream_t stream) {
  namespace od = optim_detail;
  for (int first = 0; first < count; first += kTensorChunk) {
    std::int64_t largest = 0;
    const od::TensorChunk<T> chunk = od::chunk_at(count, x, n, first, largest);
    if (largest == 0) continue;
    cuda::launch(od::scale_chunk_kernel<T>,
                 dim3(od::map_blocks(largest, 1024), unsigned(chunk.count)), kOptimThreads, stream,
                 chunk, coef);
  }
}

template <class T>
void sgd_chunk(const SgdChunk<T>& chunk, cudaStream_t stream) {
  namespace od = optim_detail;
  DATANAS_CHECK(chunk.count >= 0 && chunk.count <= kSgdChunk, "cuda sgd_chunk: ", chunk.count,
                " parameters (at most ", kSgdChunk, ")");
  std::int64_t largest = 0;
  for (int t = 0; t < chunk.count; ++t) largest = std::max(largest, chunk.p[t].n);
  if (largest == 0) return;
  cuda::launch(od::sgd_chunk_kernel<T>, dim3(od::map_blocks(largest, 1024), unsigned(chunk.count)),
               kOptimThreads, stream, chunk);
}

template <class T>
void adam_step(std::int64_t n, T* w, T* g, T* m, T* v, const AdamScalars<T>& s, cudaStream_t stream) {
  optim_detail::launch_map(n, optim_detail::AdamOp<T>{w, g, m, v, s}, stream);
}

template <class T>
void asgd_step(std::int64_t n, T* w, T* g, T* ax, const AsgdScalars<T>& s, cudaStream_t stream) {
  optim_detail::launch_map(n, optim_detail::AsgdOp<T>{w, g, ax, s}, stream);
}

template <class T>
void axpby(std::int64_t n, T a, const T* x, T b, const T* s, const T* y, T* out, cudaStream_t stream) {
  optim_detail::launch_map(n, optim_detail::AxpbyOp<T>{a, x, b, s, y, out}, stream);
}

template <class T>
void scale_by(std::int64_t n, T* x, const T* s, T factor, cudaStream_t stream) {
  optim_detail::launch_map(n, optim_detail::ScaleByOp<T>{x, s, factor}, stream);
}

template <class T>
void norm_ratio(const T* sq, double num, double floor, T* out, cudaStream_t stream) {
  optim_detail::launch_scalar(optim_detail::NormRatioOp<T>{sq, num, floor, out}, stream);
}

template <class T>
void reciprocal(const T* s, T* out, cudaStream_t stream) {
  optim_detail::launch_scalar(optim_detail::ReciprocalOp<T>{s, out}, stream);
}

template <class T>
void l1_distance(std::int64_t n, const T* p, const T* code, T coeff, T* y, double* workspace,
                 cudaStream_t stream) {
  const unsigned blocks = unsigned(l1_distance_workspace(n));
  cuda::launch(optim_detail::l1_partials_kernel<T>, blocks, kOptimThreads, stream, n, p, code,
               workspace);
  cuda::launch(optim_detail::l1_finish_kernel<T>, 1, 32, stream, int(blocks), workspace, coeff, y);
}

template <class T>
void l1_distance_backward(std::int64_t n, const T* p, const T* code, const T* dy, T coeff, T* g,
                          bool accumulate, cudaStream_t stream) {
  optim_detail::launch_map(n, optim_detail::L1BackwardOp<T>{p, code, dy, coeff, g, accumulate}, stream);
}

}  // namespace datanas::cuda
