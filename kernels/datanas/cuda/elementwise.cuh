// datanas/cuda/elementwise.cuh - the elementwise kernels behind add, scale, relu and the mixed
// op's weighted sum (datanas/ops/arithmetic.hpp, activation.hpp), forward and backward, on
// contiguous arrays of n elements. Gradients follow the GradSlot convention: `accumulate`
// adds to what the buffer holds, otherwise it is overwritten (never zero-filled first).
//
// Every launch takes its stream; none synchronises. Reductions are deterministic: per-block
// partial sums in a fixed tree, then one thread adds the partials in order (no atomics), so
// the same inputs give the same bits run after run.
#pragma once

#include <algorithm>
#include <cstdint>

#include "datanas/core/error.hpp"
#include "datanas/cuda/check.cuh"
#include "datanas/cuda/elementwise.hpp"
#include "datanas/cuda/launch.cuh"
#include "datanas/cuda/map.cuh"
#include "datanas/cuda/reduce.cuh"

namespace datanas::cuda {

inline constexpr int kElementwiseThreads = 256;

namespace elementwise_detail {

using cuda::launch_map;

template <class T>
struct AddOp {
  const T* a;
  const T* b;
  T* y;
  __device__ void operator()(std::int64_t i) const { y[i] = a[i] + b[i]; }
};
template <class T>
struct ScaleOp {
  T s;
  const T* x;
  T* y;
  __device__ void operator()(std::int64_t i) const { y[i] = s * x[i]; }
};
/// g (+)= s * dy.
template <class T>
struct StoreGradOp {
  T s;
  const T* dy;
  T* g;
  bool accumulate;
  __device__ void operator()(std::int64_t i) const {
    const T v = s * dy[i];
    g[i] = accumulate ? g[i] + v : v;
  }
};
template <class T>
struct IndicatorPositiveOp {
  const T* x;
  T* y;
  __device__ void operator()(std::int64_t i) const { y[i] = x[i] > T(0) ? T(1) : T(0); }
};
template <class T>
struct ReluOp {
  const T* x;
  T* y;
  __device__ void operator()(std::int64_t i) const { y[i] = x[i] > T(0) ? x[i] : T(0); }
};
template <class T>
struct ReluBackwardOp {
  const T* y;
  const T* dy;
  T* g;
  bool accumulate;
  __device__ void operator()(std::int64_t i) const {
    const T v = y[i] > T(0) ? dy[i] : T(0);
    g[i] = accumulate ? g[i] + v : v;
  }
};

}  // namespace elementwise_detail

namespace elementwise_detail {

template <class T>
struct WeightedSumOp {
  WeightedTerms<T> terms;
  const T* w;
  T* y;
  __device__ void operator()(std::int64_t i) const {
    T acc = 0;  // terms in order, as the CPU op
    for (int t = 0; t < terms.count; ++t)
      if (terms.x[t]) acc += w[terms.index[t]] * terms.x[t][i];
    y[i] = acc;
  }
};

/// g[t] (+)= w[index[t]] * dy for every term t with a buffer, dy read once; terms in order, so
/// that a buffer two terms share gets the first's value, then the second added.
template <class T>
struct WeightedGradsOp {
  WeightedGrads<T> grads;
  const T* w;
  const T* dy;
  __device__ void operator()(std::int64_t i) const {
    const T d = dy[i];
    for (int t = 0; t < grads.count; ++t) {
      T* g = grads.g[t];
      if (!g) continue;
      const T v = w[grads.index[t]] * d;
      g[i] = (grads.accumulate >> t) & 1u ? g[i] + v : v;
    }
  }
};

/// partial[t * gridDim.x + block] = this block's share of <x[t], dy>; blockIdx.y is the term.
template <class T>
__global__ void __launch_bounds__(kElementwiseThreads)
    dot_partials_kernel(std::int64_t n, WeightedTerms<T> terms, const T* dy, T* partial) {
  __shared__ T sums[kElementwiseThreads];
  const int t = int(blockIdx.y);
  const T* x = terms.x[t];
  T acc = 0;
  if (x) {
    const std::int64_t stride = std::int64_t(gridDim.x) * blockDim.x;
    for (std::int64_t i = std::int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride)
      acc += x[i] * dy[i];
  }
  const T s = block_tree_sum<kElementwiseThreads>(acc, sums);
  if (threadIdx.x == 0) partial[std::int64_t(t) * gridDim.x + blockIdx.x] = s;
}

/// Both gradients of a weighted sum in one pass that reads dy once: per element,
/// WeightedGradsOp's g[t] (+)= w[index[t]] dy in term order (so terms may share a buffer), and
/// per term this block's share of <x[t], dy> into partial[t * gridDim.x + blockIdx.x]. The
/// grid-stride order and the tree are dot_partials_kernel's for the same gridDim.x, so dL/dw gets
/// the same bits as from the separate launches; dy is read once instead of once per term plus
/// once for the term gradients. The sums live in registers: the term loops run to the
/// compile-time bound with the run-time count as a guard (uniform over the block, so the
/// barriers inside are reached by every thread).
template <class T>
__global__ void __launch_bounds__(kElementwiseThreads)
    weighted_grads_dot_kernel(std::int64_t n, WeightedTerms<T> terms, WeightedGrads<T> grads,
                              const T* w, const T* dy, T* partial) {
  __shared__ T sums[kElementwiseThreads];
  T acc[kMaxWeightedTerms];
#pragma unroll
  for (int t = 0; t < kMaxWeightedTerms; ++t) acc[t] = 0;
  const std::int64_t stride = std::int64_t(gridDim.x) * blockDim.x;
  for (std::int64_t i = std::int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) {
    const T d = dy[i];
#pragma unroll
    for (int t = 0; t < kMaxWeightedTerms; ++t) {
      if (t >= terms.count) break;
      if (const T* x = terms.x[t]) acc[t] += x[i] * d;
      if (T* g = grads.g[t]) {
        const T v = w[grads.index[t]] * d;
        g[i] = (grads.accumulate >> t) & 1u ? g[i] + v : v;
      }
    }
  }
#pragma unroll
  for (int t = 0; t < kMaxWeightedTerms; ++t) {
    if (t >= terms.count) break;
    // No barrier needed between terms (block_tree_sum: only thread 0 touches sums[0]).
    const T s = block_tree_sum<kElementwiseThreads>(acc[t], sums);
    if (threadIdx.x == 0) partial[std::int64_t(t) * gridDim.x + blockIdx.x] = s;
  }
}

/// gw (+)= the per-term dot products, summed from the partials in order on one thread (m
/// weights, at most kMaxWeightedTerms terms: a few hundred additions).
template <class T>
__global__ void dot_finish_kernel(WeightedTerms<T> terms, int blocks, const T* partial, int m,
                                  T* gw, bool accumulate) {
  if (threadIdx.x != 0 || blockIdx.x != 0) return;
  if (!accumulate)
    for (int j = 0; j < m; ++j) gw[j] = 0;
  for (int t = 0; t < terms.count; ++t) {
    if (!terms.x[t]) continue;  // a symbolic zero's weight gets exactly 0
    T s = 0;
    for (int b = 0; b < blocks; ++b) s += partial[std::int64_t(t) * blocks + b];
    gw[terms.index[t]] += s;
  }
}

inline unsigned dot_blocks(std::int64_t n) { return unsigned(reduction_blocks(n)); }

template <class T>
struct FillOp {
  T v;
  T* y;
  __device__ void operator()(std::int64_t i) const { y[i] = v; }
};
/// relu (0), tanh (1), sigmoid (2): cpu::Activation's order.
template <class T>
__device__ T activate(int kind, T x) {
  if (kind == 0) return x > T(0) ? x : T(0);
  if (kind == 1) return tanh(x);
  return T(1) / (T(1) + exp(-x));
}
/// f'(x) written in terms of y = f(x), as on the CPU.
template <class T>
__device__ T activation_slope(int kind, T y) {
  if (kind == 0) return y > T(0) ? T(1) : T(0);
  if (kind == 1) return T(1) - y * y;
  return y * (T(1) - y);
}
template <class T>
struct ActivationOp {
  int kind;
  const T* x;
  T* y;
  __device__ void operator()(std::int64_t i) const { y[i] = activate(kind, x[i]); }
};
template <class T>
struct ActivationBackwardOp {
  int kind;
  const T* y;
  const T* dy;
  T* g;
  bool accumulate;
  __device__ void operator()(std::int64_t i) const {
    // relu selects rather than multiplies, so that an infinite dy stays out of dead units.
    const T v = kind == 0 ? (y[i] > T(0) ? dy[i] : T(0)) : dy[i] * activation_slope(kind, y[i]);
    g[i] = accumulate ? g[i] + v : v;
  }
};
/// g (+)= s * dy[0] everywhere: the backward of sum and mean.
template <class T>
struct BroadcastGradOp {
  T s;
  const T* dy;
  T* g;
  bool accumulate;
  __device__ void operator()(std::int64_t i) const {
    const T v = s * dy[0];
    g[i] = accumulate ? g[i] + v : v;
  }
};

/// partial[block] = this block's share of sum(x), in a fixed tree.
template <class T>
__global__ void __launch_bounds__(kElementwiseThreads)
    sum_partials_kernel(std::int64_t n, const T* x, T* partial) {
  __shared__ T sums[kElementwiseThreads];
  T acc = 0;
  const std::int64_t stride = std::int64_t(gridDim.x) * blockDim.x;
  for (std::int64_t i = std::int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride)
    acc += x[i];
  const T s = block_tree_sum<kElementwiseThreads>(acc, sums);
  if (threadIdx.x == 0) partial[blockIdx.x] = s;
}
template <class T>
__global__ void sum_finish_kernel(int blocks, const T* partial, T s, T* y) {
  if (threadIdx.x != 0 || blockIdx.x != 0) return;
  T acc = 0;
  for (int b = 0; b < blocks; ++b) acc += partial[b];
  y[0] = s * acc;
}

}  // namespace elementwise_detail

// ---- launchers (asynchronous on `stream`) --------------------------------------------------

/// y[i] = v.
template <class T>
void fill(std::int64_t n, T v, T* y, cudaStream_t stream) {
  elementwise_detail::launch_map(n, elementwise_detail::FillOp<T>{v, y}, stream);
}
/// y = f(x) for kind 0 relu, 1 tanh, 2 sigmoid.
template <class T>
void activation_forward(int kind, std::int64_t n, const T* x, T* y, cudaStream_t stream) {
  DATANAS_CHECK(kind >= 0 && kind <= 2, "cuda activation: unknown kind ", kind);
  elementwise_detail::launch_map(n, elementwise_detail::ActivationOp<T>{kind, x, y}, stream);
}
/// g (+)= dy * f'(x), from the forward's output y.
template <class T>
void activation_backward(int kind, std::int64_t n, const T* y, const T* dy, T* g, bool accumulate,
                         cudaStream_t stream) {
  DATANAS_CHECK(kind >= 0 && kind <= 2, "cuda activation: unknown kind ", kind);
  elementwise_detail::launch_map(
      n, elementwise_detail::ActivationBackwardOp<T>{kind, y, dy, g, accumulate}, stream);
}
/// y[0] = s * sum(x), deterministic.
template <class T>
void sum(std::int64_t n, const T* x, T s, T* y, T* workspace, cudaStream_t stream) {
  const unsigned blocks = elementwise_detail::dot_blocks(n);
  cuda::launch(elementwise_detail::sum_partials_kernel<T>, blocks, kElementwiseThreads, stream, n,
               x, workspace);
  cuda::launch(elementwise_detail::sum_finish_kernel<T>, 1, 32, stream, int(blocks), workspace, s,
               y);
}
/// g (+)= s * dy[0] (dy a device scalar).
template <class T>
void broadcast_grad(std::int64_t n, T s, const T* dy, T* g, bool accumulate, cudaStream_t stream) {
  elementwise_detail::launch_map(n, elementwise_detail::BroadcastGradOp<T>{s, dy, g, accumulate},
                                 stream);
}
/// y = a + b.
template <class T>
void add(std::int64_t n, const T* a, const T* b, T* y, cudaStream_t stream) {
  elementwise_detail::launch_map(n, elementwise_detail::AddOp<T>{a, b, y}, stream);
}
/// y = s * x.
template <class T>
void scale(std::int64_t n, T s, const T* x, T* y, cudaStream_t stream) {
  elementwise_detail::launch_map(n, elementwise_detail::ScaleOp<T>{s, x, y}, stream);
}
/// g (+)= s * dy: the backward of add (s = 1) and scale.
template <class T>
void store_grad(std::int64_t n, T s, const T* dy, T* g, bool accumulate, cudaStream_t stream) {
  elementwise_detail::launch_map(n, elementwise_detail::StoreGradOp<T>{s, dy, g, accumulate},
                                 stream);
}
/// y = max(x, 0).
template <class T>
void indicator_positive(std::int64_t n, const T* x, T* y, cudaStream_t stream) {
  elementwise_detail::launch_map(n, elementwise_detail::IndicatorPositiveOp<T>{x, y}, stream);
}
template <class T>
void relu_forward(std::int64_t n, const T* x, T* y, cudaStream_t stream) {
  elementwise_detail::launch_map(n, elementwise_detail::ReluOp<T>{x, y}, stream);
}
/// g (+)= (y > 0) * dy, from the forward's output y.
template <class T>
void relu_backward(std::int64_t n, const T* y, const T* dy, T* g, bool accumulate, cudaStream_t stream) {
  elementwise_detail::launch_map(n, elementwise_detail::ReluBackwardOp<T>{y, dy, g, accumulate}, stream);
}

/// Throws datanas::error unless `terms` is a valid weighted sum over m weights.
template <class T>
void check_weighted_terms(const WeightedTerms<T>& terms, int m) {
  DATANAS_CHECK(terms.count >= 1 && terms.count <= kMaxWeightedTerms, "cuda weighted_sum: ",
                terms.count, " terms, must be in [1, ", kMaxWeightedTerms, "]");
  for (int t = 0; t < terms.count; ++t)
    DATANAS_CHECK(terms.index[t] >= 0 && terms.index[t] < m, "cuda weighted_sum: weight index ",
                  terms.index[t], " of term ", t, " out of range for ", m, " weights");
}

/// The mixed op: y = sum_t w[index[t]] * x[t] over n elements; w has m elements (device).
template <class T>
void weighted_sum_forward(std::int64_t n, const WeightedTerms<T>& terms, const T* w, int m, T* y,
                          cudaStream_t stream) {
  check_weighted_terms(terms, m);
  elementwise_detail::launch_map(n, elementwise_detail::WeightedSumOp<T>{terms, w, y}, stream);
}
namespace elementwise_detail {
/// Throws datanas::error unless `grads` is a valid set of term gradients over m weights.
template <class T>
void check_weighted_grads(const WeightedGrads<T>& grads, int m) {
  DATANAS_CHECK(grads.count >= 1 && grads.count <= kMaxWeightedTerms, "cuda weighted_sum: ", grads.count,
                " term gradients, must be in [1, ", kMaxWeightedTerms, "]");
  for (int t = 0; t < grads.count; ++t)
    DATANAS_CHECK(!grads.g[t] || (grads.index[t] >= 0 && grads.index[t] < m), "cuda weighted_sum: weight index ",
                  grads.index[t], " of term ", t, " out of range for ", m, " weights");
}
}  // namespace elementwise_detail

/// dL/dx[t] (+)= w[index[t]] * dy for every term with a gradient buffer (see WeightedGrads).
template <class T>
void weighted_sum_backward_x(std::int64_t n, const WeightedGrads<T>& grads, const T* w, int m,
                             const T* dy, cudaStream_t stream) {
  elementwise_detail::check_weighted_grads(grads, m);
  elementwise_detail::launch_map(n, elementwise_detail::WeightedGradsOp<T>{grads, w, dy}, stream);
}
/// dL/dw (+)= sum over t of onehot(index[t]) * <x[t], dy>; gw has m elements. Without
/// `accumulate` the weights no term names get 0, as on the CPU. Deterministic (no atomics).
template <class T>
void weighted_sum_backward_w(std::int64_t n, const WeightedTerms<T>& terms, const T* dy, int m, T* gw,
                             bool accumulate, T* workspace, cudaStream_t stream) {
  check_weighted_terms(terms, m);
  const unsigned blocks = elementwise_detail::dot_blocks(n);
  cuda::launch(elementwise_detail::dot_partials_kernel<T>, dim3(blocks, unsigned(terms.count)),
               kElementwiseThreads, stream, n, terms, dy, workspace);
  cuda::launch(elementwise_detail::dot_finish_kernel<T>, 1, 32, stream, terms, int(blocks),
               workspace, m, gw, accumulate);
}
/// weighted_sum_backward_x and weighted_sum_backward_w together, bit for bit, in two launches
/// instead of three (weighted_grads_dot_kernel, then the partials' sum).
template <class T>
void weighted_sum_backward(std::int64_t n, const WeightedTerms<T>& terms,
                           const WeightedGrads<T>& grads, const T* w, int m, const T* dy, T* gw,
                           bool accumulate, T* workspace, cudaStream_t stream) {
  check_weighted_terms(terms, m);
  elementwise_detail::check_weighted_grads(grads, m);
  DATANAS_CHECK(grads.count == terms.count, "cuda weighted_sum: ", terms.count, " terms but ",
                grads.count, " term gradients");
  for (int t = 0; t < terms.count; ++t)
    DATANAS_CHECK(!grads.g[t] || grads.index[t] == terms.index[t], "cuda weighted_sum: term ", t,
                  " has weight index ", terms.index[t], " but its gradient ", grads.index[t]);
  const unsigned blocks = elementwise_detail::dot_blocks(n);
  cuda::launch(elementwise_detail::weighted_grads_dot_kernel<T>, blocks, kElementwiseThreads,
               stream, n, terms, grads, w, dy, workspace);
  cuda::launch(elementwise_detail::dot_finish_kernel<T>, 1, 32, stream, terms, int(blocks),
               workspace, m, gw, accumulate);
}

}  // namespace datanas::cuda
