// datanas/cuda/elementwise.hpp - declarations of the elementwise launchers (elementwise.cuh),
// for host code compiled by the C++ compiler.
//
// Why a separate header: the launchers are templates defined in elementwise.cuh, which only nvcc
// can compile. The datanas_cuda library (kernels/src/elementwise.cu) instantiates them for float
// and double; host code includes these declarations and links the instantiations, so it never
// needs nvcc and nvcc never needs Eigen. Pointers are device pointers of n elements; every
// launcher queues its work on `stream` and returns without synchronising. Gradients follow the
// GradSlot convention: `accumulate` adds to the buffer, otherwise it is overwritten.
#pragma once

#include <cuda_runtime_api.h>

#include <algorithm>
#include <cstdint>

namespace datanas::cuda {

/// Most terms of one weighted sum; the same limit as the CPU op (kMaxMixedTerms).
inline constexpr int kMaxWeightedTerms = 16;

/// The terms of a weighted sum y = sum_t w[index[t]] * x[t]; x[t] == nullptr is a symbolic zero
/// (DARTS' none), skipped in forward and backward. Passed to kernels by value.
template <class T>
struct WeightedTerms {
  const T* x[kMaxWeightedTerms] = {};
  int index[kMaxWeightedTerms] = {};
  int count = 0;
};

/// The gradients of a weighted sum's terms, g[t] (+)= w[index[t]] * dy: g[t] == nullptr for a
/// term that needs none; bit t of `accumulate` adds to g[t] instead of overwriting it. Two terms
/// may share a buffer (the same input twice): they are applied in term order, element by
/// element. Passed to kernels by value.
template <class T>
struct WeightedGrads {
  static_assert(kMaxWeightedTerms <= 32, "WeightedGrads: one accumulate bit per term");
  T* g[kMaxWeightedTerms] = {};
  int index[kMaxWeightedTerms] = {};
  std::uint32_t accumulate = 0;
  int count = 0;
};

/// Thread blocks of the two-pass reductions over n elements (at most 256, so that the second
/// pass, one thread adding the partials in order, stays short). Deterministic by construction.
inline std::int64_t reduction_blocks(std::int64_t n) {
  return std::clamp<std::int64_t>((n + 255) / 256, 1, 256);
}
/// Elements of T that sum() needs as workspace for n elements.
inline std::int64_t sum_workspace(std::int64_t n) { return reduction_blocks(n); }
/// Elements of T the weighted sum's dL/dw reduction needs for n elements and `count` terms.
inline std::int64_t weighted_sum_dw_workspace(std::int64_t n, int count) {
  return reduction_blocks(n) * count;
}

/// y[i] = v.
template <class T>
void fill(std::int64_t n, T v, T* y, cudaStream_t stream);
/// y = a + b.
template <class T>
void add(std::int64_t n, const T* a, const T* b, T* y, cudaStream_t stream);
/// y = s * x.
template <class T>
void scale(std::int64_t n, T s, const T* x, T* y, cudaStream_t stream);
/// g (+)= s * dy: the backward of add (s = 1) and scale.
template <class T>
void store_grad(std::int64_t n, T s, const T* dy, T* g, bool accumulate, cudaStream_t stream);
/// y = max(x, 0).
template <class T>
void relu_forward(std::int64_t n, const T* x, T* y, cudaStream_t stream);
/// g (+)= (y > 0) * dy, from the forward's output y.
template <class T>
void relu_backward(std::int64_t n, const T* y, const T* dy, T* g, bool accumulate, cudaStream_t stream);
/// y = f(x), kind 0 relu, 1 tanh, 2 sigmoid (cpu::Activation's order).
template <class T>
void activation_forward(int kind, std::int64_t n, const T* x, T* y, cudaStream_t stream);
/// g (+)= dy * f'(x), f' written in terms of the forward's output y.
template <class T>
void activation_backward(int kind, std::int64_t n, const T* y, const T* dy, T* g, bool accumulate,
                         cudaStream_t stream);
/// y[0] = s * sum(x); workspace has sum_workspace(n) elements.
template <class T>
void sum(std::int64_t n, const T* x, T s, T* y, T* workspace, cudaStream_t stream);
/// g (+)= s * dy[0], dy a device scalar: the backward of sum and mean.
template <class T>
void broadcast_grad(std::int64_t n, T s, const T* dy, T* g, bool accumulate, cudaStream_t stream);
/// Throws datanas::error unless `terms` is a valid weighted sum over m weights (host check).
template <class T>
void check_weighted_terms(const WeightedTerms<T>& terms, int m);
/// The mixed op: y = sum_t w[index[t]] * x[t]; w has m elements.
template <class T>
void weighted_sum_forward(std::int64_t n, const WeightedTerms<T>& terms, const T* w, int m, T* y,
                          cudaStream_t stream);
/// dL/dx[t] (+)= w[index[t]] * dy for every term with a gradient, in one pass that reads dy once;
/// w has m elements.
template <class T>
void weighted_sum_backward_x(std::int64_t n, const WeightedGrads<T>& grads, const T* w, int m, const T* dy,
                             cudaStream_t stream);
/// dL/dw (+)= sum_t onehot(index[t]) <x[t], dy>; without `accumulate`, weights no term names get
/// 0 (as on the CPU). workspace: weighted_sum_dw_workspace(n, terms.count) elements.
template <class T>
void weighted_sum_backward_w(std::int64_t n, const WeightedTerms<T>& terms, const T* dy, int m, T* gw,
                             bool accumulate, T* workspace, cudaStream_t stream);
/// Both of the above in one pass that reads dy once (and the partials' sum): the same bits.
/// terms and grads describe the same terms (equal counts; equal indices where grads.g[t] is set).
/// workspace: weighted_sum_dw_workspace(n, terms.count) elements.
template <class T>
void weighted_sum_backward(std::int64_t n, const WeightedTerms<T>& terms,
                           const WeightedGrads<T>& grads, const T* w, int m, const T* dy, T* gw,
                           bool accumulate, T* workspace, cudaStream_t stream);

/// y = (x > 0) ? 1 : 0: DATA's binary code of a sampled architecture (w > 0).
template <class T>
void indicator_positive(std::int64_t n, const T* x, T* y, cudaStream_t stream);

/// Words a captured step reads per replay (StepGraph): dst[0 .. count) = words, queued on
/// `stream` as kernel arguments (never a copy from host memory, which a later replay's values
/// could overwrite before the copy ran). count may be any size; launches carry 64 words each.
void store_words(std::uint64_t* dst, const std::uint64_t* words, int count, cudaStream_t stream);

}  // namespace datanas::cuda
