// datanas/cuda/recurrent.hpp - declarations of the recurrent-cell launchers (recurrent.cuh), for
// host code compiled by the C++ compiler: the fused highway update and its mixed form, the
// all-none node's zero state, the time-shared mask, row scaling, column concatenation, row slices (stack_rows, view) and the
// temporal activation penalty (datanas/ops/recurrent.hpp is the specification).
//
// As for every family: the launchers are templates defined in recurrent.cuh, instantiated for
// float and double in kernels/src/recurrent.cu. Pointers are device pointers; matrices are
// row-major and contiguous. Every launcher queues its work on `stream` and returns without
// synchronising. Gradients follow the GradSlot convention: `accumulate` adds to the buffer,
// otherwise it is overwritten. The reductions (highway dL/dw, temporal penalty) are
// deterministic: per-block partial sums in a fixed tree, then one thread adds the partials in
// order; no atomics.
#pragma once

#include <cuda_runtime_api.h>

#include <algorithm>
#include <cstdint>

namespace datanas::cuda {

/// The activation codes of the recurrent op set: the values of datanas::RecurrentActivation
/// (kNone 0, kTanh 1, kRelu 2, kSigmoid 3, kIdentity 4; tests/gpu/test_ops_recurrent.cpp checks
/// that they agree). kNone's term contributes nothing (DARTS skips the zero op).
inline constexpr int kRecurrentNone = 0;
inline constexpr int kRecurrentTanh = 1;
inline constexpr int kRecurrentRelu = 2;
inline constexpr int kRecurrentSigmoid = 3;
inline constexpr int kRecurrentIdentity = 4;

/// Most activations of one highway call; the CPU op's HighwayTerms::kMax.
inline constexpr int kMaxHighwayTerms = 16;

/// The terms of one highway call, passed to kernels by value. Term k has activation act[k] and
/// weight w[offset + k] (1 when there are no weights). It runs unless act[k] is none or, with
/// `sparse`, its weight is exactly 0 (the CPU's skip_zero_weights); the kernels decide that on
/// the device, since the weights live there.
struct HighwayTerms {
  int act[kMaxHighwayTerms] = {};
  int count = 0;
  bool sparse = false;
};

/// Thread blocks of the recurrent family's two-pass reductions over n elements: at most 256, so
/// that the second pass (one thread adding the partials in order) stays short.
inline std::int64_t recurrent_reduction_blocks(std::int64_t n) {
  return std::clamp<std::int64_t>((n + 255) / 256, 1, 256);
}
/// Elements of T that highway_backward needs as workspace when it computes dL/dw, for n = B * H
/// elements and `count` terms.
inline std::int64_t highway_dw_workspace(std::int64_t n, int count) {
  return recurrent_reduction_blocks(n) * count;
}
/// Elements of T that temporal_penalty_forward needs as workspace for x of n elements.
inline std::int64_t temporal_penalty_workspace(std::int64_t n) { return recurrent_reduction_blocks(n); }

/// Throws datanas::error unless `terms` holds 1 to kMaxHighwayTerms known activations (host).
void check_highway_terms(const HighwayTerms& terms);

/// y = W (1 - sig(c)) s + sig(c) sum_k w_k f_k(h) over the running terms k, W = sum of their
/// weights; s, y [rows, hid], ch = [c | h] [rows, 2 hid]. w: the weight vector (nullptr: all 1),
/// read at [offset, offset + terms.count).
template <class T>
void highway_forward(std::int64_t rows, std::int64_t hid, const HighwayTerms& terms, const T* w,
                     std::int64_t offset, const T* s, const T* ch, T* y, cudaStream_t stream);

/// Where highway_backward writes: each pointer may be nullptr (that input gets no gradient).
/// gs [rows, hid], gch [rows, 2 hid]; gw the whole weight gradient of m elements: without
/// acc_w it is first set to 0 everywhere (as the CPU op does), then dL/dw_k is added at
/// offset + k (0 for terms that do not run).
template <class T>
struct HighwayGrads {
  T* gs = nullptr;
  bool acc_s = false;
  T* gch = nullptr;
  bool acc_ch = false;
  T* gw = nullptr;
  std::int64_t m = 0;
  bool acc_w = false;
};

/// The backward of highway_forward for the output gradient dy [rows, hid]:
///   dL/ds = dy W (1 - sig), dL/dc = dy (F - W s) sig (1 - sig), dL/dh = dy sig F',
///   dL/dw_k = sum dy (s (1 - sig) + sig f_k(h)),
/// F = sum_k w_k f_k(h), F' = sum_k w_k f_k'(h). workspace: highway_dw_workspace(rows * hid,
/// terms.count) elements when grads.gw is set (unused otherwise).
template <class T>
void highway_backward(std::int64_t rows, std::int64_t hid, const HighwayTerms& terms, const T* w,
                      std::int64_t offset, const T* s, const T* ch, const T* dy,
                      const HighwayGrads<T>& grads, T* workspace, cudaStream_t stream);

/// y[i] = x[i] over n elements, or 0 when the node is all-none: w[offset + e terms.count + k] == 0
/// for every e < edges and every k whose act[k] is not none. Each thread reads the node's
/// weights itself (at most 16 x 16 values, cached), so nothing is read on the host.
template <class T>
void zero_if_all_none_forward(std::int64_t n, const HighwayTerms& terms, std::int64_t edges, const T* w,
                              std::int64_t offset, const T* x, T* y, cudaStream_t stream);
/// g[i] (+)= dy[i], or (+)= 0 for an all-none node.
template <class T>
void zero_if_all_none_backward(std::int64_t n, const HighwayTerms& terms, std::int64_t edges, const T* w,
                               std::int64_t offset, const T* dy, T* g, bool accumulate, cudaStream_t stream);

/// y[i] = x[i] * m[i mod p] over n elements (p divides n): the time-shared mask.
template <class T>
void mul_mask_forward(std::int64_t n, std::int64_t p, const T* x, const T* m, T* y, cudaStream_t stream);
/// g[i] (+)= dy[i] * m[i mod p].
template <class T>
void mul_mask_backward(std::int64_t n, std::int64_t p, const T* dy, const T* m, T* g, bool accumulate,
                       cudaStream_t stream);

/// y[r, j] = scale[r] * x[r, j] for x, y [rows, cols].
template <class T>
void scale_rows_forward(std::int64_t rows, std::int64_t cols, const T* x, const T* scale, T* y,
                        cudaStream_t stream);
/// g[r, j] (+)= scale[r] * dy[r, j].
template <class T>
void scale_rows_backward(std::int64_t rows, std::int64_t cols, const T* dy, const T* scale, T* g,
                         bool accumulate, cudaStream_t stream);

/// y = [a | b] column-wise: a [rows, ca], b [rows, cb], y [rows, ca + cb].
template <class T>
void concat_cols_forward(std::int64_t rows, std::int64_t ca, std::int64_t cb, const T* a, const T* b,
                         T* y, cudaStream_t stream);
/// g[r, j] (+)= dy[r, off + j] for g [rows, width] and dy [rows, dy_cols]: the gradient of one
/// side of a concat_cols (off 0 for a, ca for b).
template <class T>
void concat_cols_backward(std::int64_t rows, std::int64_t width, std::int64_t dy_cols, std::int64_t off,
                          const T* dy, T* g, bool accumulate, cudaStream_t stream);

/// g[i] (+)= src[i] over n elements: the backward of stack_rows (src = dy + the input's offset)
/// and of view.
template <class T>
void recurrent_store(std::int64_t n, const T* src, T* g, bool accumulate, cudaStream_t stream);

/// y[0] = sum over t < steps - 1 and i < width of (x[(t+1) width + i] - x[t width + i])^2 / count,
/// count = (steps - 1) width; x [steps * width]. workspace: temporal_penalty_workspace((steps -
/// 1) * width) elements.
template <class T>
void temporal_penalty_forward(std::int64_t steps, std::int64_t width, const T* x, T* y, T* workspace,
                              cudaStream_t stream);
/// g[t] (+)= k (x[t] - x[t-1]) [t > 0] - k (x[t+1] - x[t]) [t < steps - 1], rows of `width`
/// elements, k = 2 dy[0] / count read on the device (dy a device scalar).
template <class T>
void temporal_penalty_backward(std::int64_t steps, std::int64_t width, const T* x, const T* dy, T* g,
                               bool accumulate, cudaStream_t stream);

}  // namespace datanas::cuda
