// datanas/cuda/dnn.hpp - declarations of the batch-norm and pooling launchers (dnn.cuh) and of
// our own depthwise convolution (depthwise.cuh), for host code compiled by the C++ compiler (see
// elementwise.hpp for why declarations and definitions are split). Other convolutions call
// cuDNN from the host (datanas/ops/cuda/dnn.hpp), which also chooses between cuDNN and these
// kernels for depthwise ones.
//
// Tensors are NCHW and contiguous; pointers are device pointers. Every launcher queues its work
// on `stream` and returns without synchronising. Gradients follow the GradSlot convention:
// `accumulate` adds to the buffer, otherwise it is overwritten. All reductions are
// deterministic (fixed trees, partials added in order, no atomics): the same inputs give the
// same bits on every run.
#pragma once

#include <cuda_runtime_api.h>

#include <algorithm>
#include <cstdint>

namespace datanas::cuda {

// ---- batch norm -------------------------------------------------------------------------------

/// Thread blocks per channel of the batch-norm reductions over m values per channel (4096
/// values a block, at most 128 blocks): a function of the shape only, so the order of the
/// partial sums, and therefore the result, never changes between runs.
inline int bn_chunks(std::int64_t m) {
  return int(std::clamp<std::int64_t>((m + 4095) / 4096, 1, 128));
}
/// Doubles of workspace that batchnorm_forward / batchnorm_backward need for c channels of m
/// values: per channel 2 partial sums per chunk.
inline std::int64_t bn_workspace(std::int64_t c, std::int64_t m) {
  return c * 2 * std::int64_t(bn_chunks(m));
}

/// The shape of a batch norm: x [n, c, hw] (hw = H * W).
struct BnShape {
  std::int64_t n, c, hw;
};

/// Forward of batch norm (the device twin of cpu::batchnorm_forward, same semantics):
/// training: mean_c and biased var_c over (n, hw), accumulated in double with a per-channel
///   shift; running_mean / running_var (both null, or both [c]) become
///   (1 - momentum) running + momentum batch, the variance unbiased (var * m / (m - 1));
/// eval: mean_c = running_mean[c], var_c = running_var[c].
/// y = (x - mean_c) * (gamma_c / sqrt(var_c + eps)) + beta_c; null gamma / beta mean 1 / 0.
/// saved [2, c] receives (mean_c, 1 / sqrt(var_c + eps)). work: bn_workspace(c, n * hw) doubles.
template <class T>
void batchnorm_forward(const BnShape& s, const T* x, const T* gamma, const T* beta, T* running_mean,
                       T* running_var, bool training, double momentum, double eps, T* y, T* saved,
                       double* work, cudaStream_t stream);

/// Backward of batchnorm_forward given x, saved and dy (cpu::batchnorm_backward): with
/// xhat = (x - mean) invstd, dbeta = sum(dy), dgamma = sum(dy xhat) over (n, hw);
/// training: dx = gamma invstd (dy - dbeta / m - xhat dgamma / m); eval: dx = gamma invstd dy.
/// x_is_xhat: x holds xhat itself (a non-affine forward's output) rather than the input.
/// dx, dgamma, dbeta may each be null (not wanted). work: bn_workspace(c, n * hw) doubles.
template <class T>
void batchnorm_backward(const BnShape& s, const T* x, bool x_is_xhat, const T* gamma, const T* saved, const T* dy,
                        bool training, T* dx, bool dx_acc, T* dgamma, bool dgamma_acc, T* dbeta,
                        bool dbeta_acc, double* work, cudaStream_t stream);

// ---- pooling ----------------------------------------------------------------------------------

/// A 2-d pooling over `planes` = N * C planes of h x w, output ho x wo, square window k,
/// stride s, padding p (cpu::PoolGeometry; the generic op has validated it).
struct PoolShape {
  std::int64_t planes, h, w, ho, wo;
  int k, s, p;
};

/// Max pool; padding never wins; the first maximum of the window in row-major order wins, a NaN
/// beats everything (so the last NaN wins), as cpu::max_pool_forward. When idx is not null it
/// receives the plane-local index h * W + w of the winner as a T.
template <class T>
void max_pool_forward(const PoolShape& g, const T* x, T* y, T* idx, cudaStream_t stream);
/// dx (+)= dy routed to the indices of max_pool_forward: every input pixel gathers the dy of
/// the windows that chose it (no atomics).
template <class T>
void max_pool_backward(const PoolShape& g, const T* dy, const T* idx, T* dx, bool accumulate,
                       cudaStream_t stream);
/// Average pool with count_include_pad = false: the mean of the window's real pixels.
template <class T>
void avg_pool_forward(const PoolShape& g, const T* x, T* y, cudaStream_t stream);
/// dx (+)= the gradient of avg_pool_forward: every pixel gathers dy / count of its windows.
template <class T>
void avg_pool_backward(const PoolShape& g, const T* dy, T* dx, bool accumulate,
                       cudaStream_t stream);
/// y[i] = mean of plane i of x (planes of hw values).
template <class T>
void global_avg_pool_forward(std::int64_t planes, std::int64_t hw, const T* x, T* y,
                             cudaStream_t stream);
/// dx[i, :] (+)= dy[i] / hw.
template <class T>
void global_avg_pool_backward(std::int64_t planes, std::int64_t hw, const T* dy, T* dx,
                              bool accumulate, cudaStream_t stream);

// ---- depthwise convolution --------------------------------------------------------------------

/// A depthwise convolution: x [n, c, h, w], one kh x kw filter per channel (weight [c, 1, kh,
/// kw]), y [n, c, ho, wo]; stride, padding and dilation as torch's conv2d with groups = c
/// (cpu::ConvGeom with groups == cin == cout). Every tensor must have fewer than 2^31 elements.
struct DwShape {
  std::int64_t n, c, h, w, ho, wo;
  int kh, kw, stride, pad, dil;
  /// Read x as max(x, 0) in the forward and the filter gradient (cpu::ConvGeom::relu_input).
  bool relu_input = false;
};

/// Blocks per channel of the filter-gradient reduction (2048 output positions a block, at most
/// 64): a function of the shape only, so the summation order never changes between runs.
inline int depthwise_filter_chunks(const DwShape& g) {
  return int(std::clamp<std::int64_t>((g.n * g.ho * g.wo + 2047) / 2048, 1, 64));
}
/// Doubles of workspace depthwise_backward_filter needs: c * chunks * (kh kw + 1).
inline std::int64_t depthwise_filter_workspace(const DwShape& g) {
  return g.c * depthwise_filter_chunks(g) * (std::int64_t(g.kh) * g.kw + 1);
}

/// y = the depthwise convolution of x with w (+ bias[c] when bias is not null).
template <class T>
void depthwise_forward(const DwShape& g, const T* x, const T* w, const T* bias, T* y,
                       cudaStream_t stream);
/// dx (+)= the gradient of depthwise_forward with respect to x given dy.
template <class T>
void depthwise_backward_data(const DwShape& g, const T* w, const T* dy, T* dx, bool accumulate,
                             cudaStream_t stream);
/// dw [c, kh kw] (+)= sum over (n, oy, ox) of dy x(tap), db [c] (+)= sum of dy; either may be
/// null, and x may be null when dw is. work: depthwise_filter_workspace(g) doubles.
template <class T>
void depthwise_backward_filter(const DwShape& g, const T* x, const T* dy, T* dw, bool dw_acc,
                               T* db, bool db_acc, double* work, cudaStream_t stream);

}  // namespace datanas::cuda
