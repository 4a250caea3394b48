// datanas/cuda/recurrent.cuh - the kernels of the DARTS recurrent cell's ops
// (datanas/ops/recurrent.hpp): the fused highway update y = s + sig(c) (f(h) - s) and its mixed
// form, an all-none node's zero state, the time-shared dropout mask, row scaling, column
// concatenation, row slices and the temporal activation penalty, forward and backward.
// Declarations and the parameter structs are in recurrent.hpp; kernels/src/recurrent.cu
// instantiates the launchers for float and double.
//
// Every launch takes its stream; none synchronises. Reductions are deterministic: each block
// sums its share in a fixed tree, and a second kernel adds the block partials in order (no
// atomics), so the same inputs give the same bits run after run.
#pragma once

#include <algorithm>
#include <cstdint>

#include "datanas/core/error.hpp"
#include "datanas/cuda/check.cuh"
#include "datanas/cuda/launch.cuh"
#include "datanas/cuda/map.cuh"
#include "datanas/cuda/recurrent.hpp"
#include "datanas/cuda/reduce.cuh"

namespace datanas::cuda {

inline constexpr int kRecurrentThreads = 256;

namespace recurrent_detail {

static_assert(kRecurrentThreads == kMapThreads, "the highway kernels use map_blocks' block size");
using cuda::launch_map;
using cuda::map_blocks;

/// g = v or g += v (the GradSlot convention).
template <class T>
__device__ inline void put(T* g, std::int64_t i, T v, bool accumulate) {
  g[i] = accumulate ? g[i] + v : v;
}

template <class T>
__device__ inline T sigmoid(T x) {
  return T(1) / (T(1) + exp(-x));
}
/// f(h) for an activation code (none: 0).
template <class T>
__device__ inline T activate(int a, T h) {
  switch (a) {
    case kRecurrentTanh: return tanh(h);
    case kRecurrentRelu: return h > T(0) ? h : T(0);
    case kRecurrentSigmoid: return sigmoid(h);
    case kRecurrentIdentity: return h;
    default: return T(0);
  }
}
/// f'(h) for an activation code; relu' is 0 at exactly 0 (PyTorch's convention, as on the CPU).
template <class T>
__device__ inline T slope(int a, T h) {
  switch (a) {
    case kRecurrentTanh: {
      const T t = tanh(h);
      return T(1) - t * t;
    }
    case kRecurrentRelu: return h > T(0) ? T(1) : T(0);
    case kRecurrentSigmoid: {
      const T s = sigmoid(h);
      return s * (T(1) - s);
    }
    case kRecurrentIdentity: return T(1);
    default: return T(0);
  }
}

/// Term k's weight (1 without weights) and whether it runs (not none; with `sparse`, not 0).
template <class T>
__device__ inline T term_weight(const T* w, std::int64_t offset, int k) {
  return w ? w[offset + k] : T(1);
}
template <class T>
__device__ inline bool term_runs(const HighwayTerms& t, int k, T wk) {
  return t.act[k] != kRecurrentNone && !(t.sparse && wk == T(0));
}

/// One element (r, j) of a highway call: c, h, s and the sums over running terms
/// F = sum w_k f_k(h), W = sum w_k (and F' = sum w_k f_k'(h) when asked).
template <class T, bool kSlope>
struct HighwayPoint {
  T c, h, s, sig, F = 0, Fp = 0, W = 0;
  __device__ HighwayPoint(std::int64_t i, std::int64_t hid, const HighwayTerms& t, const T* w,
                          std::int64_t offset, const T* sp, const T* ch) {
    const std::int64_t r = i / hid, j = i - r * hid;
    const T* row = ch + r * 2 * hid;  // [c | h] of row r
    c = row[j];
    h = row[hid + j];
    s = sp[i];
    // The terms in order, as the CPU op; unrolled so that t.act stays in registers.
#pragma unroll
    for (int k = 0; k < kMaxHighwayTerms; ++k) {
      if (k >= t.count) break;
      const T wk = term_weight(w, offset, k);
      if (!term_runs(t, k, wk)) continue;
      F += wk * activate(t.act[k], h);
      if constexpr (kSlope) Fp += wk * slope(t.act[k], h);
      W += wk;
    }
    sig = sigmoid(c);
  }
};

template <class T>
struct HighwayForwardOp {
  std::int64_t hid;
  HighwayTerms terms;
  const T* w;
  std::int64_t offset;
  const T* s;
  const T* ch;
  T* y;
  __device__ void operator()(std::int64_t i) const {
    const HighwayPoint<T, false> p(i, hid, terms, w, offset, s, ch);
    y[i] = p.W * (T(1) - p.sig) * p.s + p.sig * p.F;
  }
};

/// The highway backward over n = rows * hid elements, grid-stride: writes dL/ds and dL/d[c | h]
/// element by element and, when g.gw is set, partial[k * gridDim.x + block] = this block's
/// share of dL/dw_k (per-thread sums in stride order, then a fixed tree).
template <class T>
__global__ void __launch_bounds__(kRecurrentThreads)
    highway_backward_kernel(std::int64_t rows, std::int64_t hid, HighwayTerms terms, const T* w,
                            std::int64_t offset, const T* s, const T* ch, const T* dy,
                            HighwayGrads<T> g, T* partial) {
  const std::int64_t n = rows * hid;
  T part[kMaxHighwayTerms];
#pragma unroll
  for (int k = 0; k < kMaxHighwayTerms; ++k) part[k] = T(0);
  const std::int64_t stride = std::int64_t(gridDim.x) * blockDim.x;
  for (std::int64_t i = std::int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) {
    const HighwayPoint<T, true> p(i, hid, terms, w, offset, s, ch);
    const T d = dy[i];
    if (g.gs) put(g.gs, i, d * p.W * (T(1) - p.sig), g.acc_s);
    if (g.gch) {
      const std::int64_t r = i / hid, j = i - r * hid;
      put(g.gch, r * 2 * hid + j, d * (p.F - p.W * p.s) * p.sig * (T(1) - p.sig), g.acc_ch);
      put(g.gch, r * 2 * hid + hid + j, d * p.sig * p.Fp, g.acc_ch);
    }
    if (g.gw) {
      // dL/dw_k = sum dy (s + sig (f_k(h) - s)) = sum dy s (1 - sig) + dy sig f_k(h)
      const T base = d * p.s * (T(1) - p.sig), ds = d * p.sig;
#pragma unroll
      for (int k = 0; k < kMaxHighwayTerms; ++k)
        if (k < terms.count) {
          const T wk = term_weight(w, offset, k);
          if (term_runs(terms, k, wk)) part[k] += base + ds * activate(terms.act[k], p.h);
        }
    }
  }
  if (!g.gw) return;  // the same for every thread of the grid
  __shared__ T sums[kRecurrentThreads];
#pragma unroll
  for (int k = 0; k < kMaxHighwayTerms; ++k) {
    if (k >= terms.count) break;  // uniform: every thread leaves at the same k
    // No barrier needed between terms (block_tree_sum: only thread 0 touches sums[0]).
    const T s = block_tree_sum<kRecurrentThreads>(part[k], sums);
    if (threadIdx.x == 0) partial[std::int64_t(k) * gridDim.x + blockIdx.x] = s;
  }
}

/// gw: zeroed over its m elements unless `accumulate` (the CPU op's fill), then
/// gw[offset + k] += the partials of term k added in block order, one thread per term.
template <class T>
__global__ void __launch_bounds__(kRecurrentThreads)
    highway_dw_finish_kernel(int count, int blocks, const T* partial, std::int64_t offset, T* gw,
                             std::int64_t m, bool accumulate) {
  if (!accumulate) {
    for (std::int64_t j = threadIdx.x; j < m; j += blockDim.x) gw[j] = T(0);
    __syncthreads();
  }
  const int k = int(threadIdx.x);
  if (k >= count) return;
  T acc = 0;
  for (int b = 0; b < blocks; ++b) acc += partial[std::int64_t(k) * blocks + b];
  gw[offset + k] += acc;
}

/// zero_if_all_none: x[i], or 0 when every non-none weight of the node's `edges` groups is 0.
template <class T>
struct ZeroIfAllNoneOp {
  HighwayTerms terms;
  std::int64_t edges, offset;
  const T* w;
  const T* x;
  T* y;
  bool store;  // false: y = v; true: y (+)= v with `accumulate`
  bool accumulate;
  __device__ void operator()(std::int64_t i) const {
    bool keep = false;
    for (std::int64_t e = 0; e < edges && !keep; ++e)
      for (int k = 0; k < terms.count; ++k)
        keep = keep || (terms.act[k] != kRecurrentNone && w[offset + e * terms.count + k] != T(0));
    const T v = keep ? x[i] : T(0);
    if (store) put(y, i, v, accumulate); else y[i] = v;
  }
};

template <class T>
struct MulMaskOp {
  std::int64_t p;
  const T* x;
  const T* m;
  T* y;
  bool store;  // false: y = x * m; true: y (+)= x * m with `accumulate`
  bool accumulate;
  __device__ void operator()(std::int64_t i) const {
    const T v = x[i] * m[i % p];
    if (store) put(y, i, v, accumulate); else y[i] = v;
  }
};

template <class T>
struct ScaleRowsOp {
  std::int64_t cols;
  const T* x;
  const T* scale;
  T* y;
  bool store;
  bool accumulate;
  __device__ void operator()(std::int64_t i) const {
    const T v = scale[i / cols] * x[i];
    if (store) put(y, i, v, accumulate); else y[i] = v;
  }
};

template <class T>
struct ConcatColsOp {
  std::int64_t ca, cb;
  const T* a;
  const T* b;
  T* y;
  __device__ void operator()(std::int64_t i) const {
    const std::int64_t c = ca + cb, r = i / c, j = i - r * c;
    y[i] = j < ca ? a[r * ca + j] : b[r * cb + (j - ca)];
  }
};

/// g[r, j] (+)= dy[r, off + j]; g [rows, width], dy [rows, dy_cols].
template <class T>
struct ColumnsGradOp {
  std::int64_t width, dy_cols, off;
  const T* dy;
  T* g;
  bool accumulate;
  __device__ void operator()(std::int64_t i) const {
    const std::int64_t r = i / width, j = i - r * width;
    put(g, i, dy[r * dy_cols + off + j], accumulate);
  }
};

template <class T>
struct StoreOp {
  const T* src;
  T* g;
  bool accumulate;
  __device__ void operator()(std::int64_t i) const { put(g, i, src[i], accumulate); }
};

/// partial[block] = this block's share of sum (x[i + width] - x[i])^2 over i < n, in a fixed tree.
template <class T>
__global__ void __launch_bounds__(kRecurrentThreads)
    penalty_partials_kernel(std::int64_t n, std::int64_t width, const T* x, T* partial) {
  __shared__ T sums[kRecurrentThreads];
  T acc = 0;
  const std::int64_t stride = std::int64_t(gridDim.x) * blockDim.x;
  for (std::int64_t i = std::int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) {
    const T d = x[i + width] - x[i];
    acc += d * d;
  }
  const T s = block_tree_sum<kRecurrentThreads>(acc, sums);
  if (threadIdx.x == 0) partial[blockIdx.x] = s;
}

/// y[0] = (sum of the partials in order) / count, the division in double as on the CPU.
template <class T>
__global__ void penalty_finish_kernel(int blocks, const T* partial, std::int64_t count, T* y) {
  if (threadIdx.x != 0 || blockIdx.x != 0) return;
  T acc = 0;
  for (int b = 0; b < blocks; ++b) acc += partial[b];
  y[0] = T(double(acc) / double(count));
}

template <class T>
struct PenaltyGradOp {
  std::int64_t steps, width;
  const T* x;
  const T* dy;
  T* g;
  bool accumulate;
  __device__ void operator()(std::int64_t i) const {
    const T k = T(2) * dy[0] / T((steps - 1) * width);
    const std::int64_t t = i / width;
    T v = accumulate ? g[i] : T(0);
    if (t > 0) v += k * (x[i] - x[i - width]);
    if (t + 1 < steps) v -= k * (x[i + width] - x[i]);
    g[i] = v;
  }
};

}  // namespace recurrent_detail

// ---- launchers (asynchronous on `stream`) --------------------------------------------------

template <class T>
void highway_forward(std::int64_t rows, std::int64_t hid, const HighwayTerms& terms, const T* w,
                     std::int64_t offset, const T* s, const T* ch, T* y, cudaStream_t stream) {
  check_highway_terms(terms);
  recurrent_detail::launch_map(
      rows * hid, recurrent_detail::HighwayForwardOp<T>{hid, terms, w, offset, s, ch, y}, stream);
}

template <class T>
void highway_backward(std::int64_t rows, std::int64_t hid, const HighwayTerms& terms, const T* w,
                      std::int64_t offset, const T* s, const T* ch, const T* dy,
                      const HighwayGrads<T>& grads, T* workspace, cudaStream_t stream) {
  check_highway_terms(terms);
  const std::int64_t n = rows * hid;
  if (!grads.gw) {
    if (n <= 0 || (!grads.gs && !grads.gch)) return;
    cuda::launch(recurrent_detail::highway_backward_kernel<T>, recurrent_detail::map_blocks(n),
                 kRecurrentThreads, stream, rows, hid, terms, w, offset, s, ch, dy, grads,
                 workspace);
    return;
  }
  // The grid of the dL/dw reduction depends on n only, so the bits do not depend on the device.
  const auto blocks = unsigned(recurrent_reduction_blocks(n));
  cuda::launch(recurrent_detail::highway_backward_kernel<T>, blocks, kRecurrentThreads, stream,
               rows, hid, terms, w, offset, s, ch, dy, grads, workspace);
  cuda::launch(recurrent_detail::highway_dw_finish_kernel<T>, 1, kRecurrentThreads, stream,
               terms.count, int(blocks), workspace, offset, grads.gw, grads.m, grads.acc_w);
}

template <class T>
void zero_if_all_none_forward(std::int64_t n, const HighwayTerms& terms, std::int64_t edges, const T* w,
                              std::int64_t offset, const T* x, T* y, cudaStream_t stream) {
  check_highway_terms(terms);
  recurrent_detail::launch_map(
      n, recurrent_detail::ZeroIfAllNoneOp<T>{terms, edges, offset, w, x, y, false, false}, stream);
}
template <class T>
void zero_if_all_none_backward(std::int64_t n, const HighwayTerms& terms, std::int64_t edges, const T* w,
                               std::int64_t offset, const T* dy, T* g, bool accumulate, cudaStream_t stream) {
  check_highway_terms(terms);
  recurrent_detail::launch_map(
      n, recurrent_detail::ZeroIfAllNoneOp<T>{terms, edges, offset, w, dy, g, true, accumulate}, stream);
}

template <class T>
void mul_mask_forward(std::int64_t n, std::int64_t p, const T* x, const T* m, T* y, cudaStream_t stream) {
  recurrent_detail::launch_map(n, recurrent_detail::MulMaskOp<T>{p, x, m, y, false, false}, stream);
}
template <class T>
void mul_mask_backward(std::int64_t n, std::int64_t p, const T* dy, const T* m, T* g, bool accumulate,
                       cudaStream_t stream) {
  recurrent_detail::launch_map(n, recurrent_detail::MulMaskOp<T>{p, dy, m, g, true, accumulate}, stream);
}

template <class T>
void scale_rows_forward(std::int64_t rows, std::int64_t cols, const T* x, const T* scale, T* y,
                        cudaStream_t stream) {
  recurrent_detail::launch_map(rows * cols, recurrent_detail::ScaleRowsOp<T>{cols, x, scale, y, false, false},
                               stream);
}
template <class T>
void scale_rows_backward(std::int64_t rows, std::int64_t cols, const T* dy, const T* scale, T* g,
                         bool accumulate, cudaStream_t stream) {
  recurrent_detail::launch_map(rows * cols,
                               recurrent_detail::ScaleRowsOp<T>{cols, dy, scale, g, true, accumulate}, stream);
}

template <class T>
void concat_cols_forward(std::int64_t rows, std::int64_t ca, std::int64_t cb, const T* a, const T* b,
                         T* y, cudaStream_t stream) {
  recurrent_detail::launch_map(rows * (ca + cb), recurrent_detail::ConcatColsOp<T>{ca, cb, a, b, y}, stream);
}
template <class T>
void concat_cols_backward(std::int64_t rows, std::int64_t width, std::int64_t dy_cols, std::int64_t off,
                          const T* dy, T* g, bool accumulate, cudaStream_t stream) {
  recurrent_detail::launch_map(
      rows * width, recurrent_detail::ColumnsGradOp<T>{width, dy_cols, off, dy, g, accumulate}, stream);
}

template <class T>
void recurrent_store(std::int64_t n, const T* src, T* g, bool accumulate, cudaStream_t stream) {
  recurrent_detail::launch_map(n, recurrent_detail::StoreOp<T>{src, g, accumulate}, stream);
}

template <class T>
void temporal_penalty_forward(std::int64_t steps, std::int64_t width, const T* x, T* y, T* workspace,
                              cudaStream_t stream) {
  const std::int64_t n = (steps - 1) * width;
  const auto blocks = unsigned(recurrent_reduction_blocks(n));
  cuda::launch(recurrent_detail::penalty_partials_kernel<T>, blocks, kRecurrentThreads, stream, n,
               width, x, workspace);
  cuda::launch(recurrent_detail::penalty_finish_kernel<T>, 1, 32, stream, int(blocks), workspace, n,
               y);
}
template <class T>
void temporal_penalty_backward(std::int64_t steps, std::int64_t width, const T* x, const T* dy, T* g,
                               bool accumulate, cudaStream_t stream) {
  recurrent_detail::launch_map(
      steps * width, recurrent_detail::PenaltyGradOp<T>{steps, width, x, dy, g, accumulate}, stream);
}

}  // namespace datanas::cuda
