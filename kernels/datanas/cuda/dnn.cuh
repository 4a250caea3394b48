// datanas/cuda/dnn.cuh - the batch-norm and pooling kernels behind batch_norm2d, max_pool2d,
// avg_pool2d and global_avg_pool (datanas/ops/batchnorm.hpp, pool.hpp), forward and backward.
// Declarations and their contracts: dnn.hpp. The CPU kernels (ops/cpu/batchnorm.hpp, pool.hpp)
// are the specification; each kernel below names what it mirrors.
//
// Why our own kernels rather than cuDNN's batch norm and pooling:
//   - cuDNN's max-pool backward is non-deterministic and recomputes the arg-max from (x, y), so
//     its tie rule is not torch's "first maximum in row-major order"; the CPU op's tie and NaN
//     rules are reproduced exactly here from saved indices;
//   - batch norm needs an evaluation-mode backward, non-affine and frozen-parameter variants and
//     the CPU's double-precision statistics, which cuDNN's (deprecated in cuDNN 9) batch-norm
//     calls give only with scratch tensors and extra passes;
//   - so they also run when the backend is built without cuDNN.
// Every reduction is deterministic: fixed trees and in-order sums of per-block partials.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>

#include "datanas/cuda/check.cuh"
#include "datanas/cuda/dnn.hpp"
#include "datanas/cuda/launch.cuh"

namespace datanas::cuda {

inline constexpr int kDnnThreads = 256;

namespace dnn_detail {

/// Blocks of a grid-stride loop over n items: enough to fill the GPU, no more.
inline unsigned grid_for(std::int64_t n, std::int64_t cap = 8192) {
  return unsigned(std::clamp<std::int64_t>((n + kDnnThreads - 1) / kDnnThreads, 1, cap));
}

__device__ inline std::int64_t global_thread() {
  return std::int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
}
__device__ inline std::int64_t grid_threads() { return std::int64_t(gridDim.x) * blockDim.x; }

// ---- batch norm -------------------------------------------------------------------------------

/// One block per (channel, chunk), blockIdx.x = channel * chunks + chunk. The block sums over
/// the chunk's share [m chunk / chunks, m (chunk + 1) / chunks) of the channel's m = n * hw
/// values (value i is x[i / hw, channel, i % hw]), in double, then reduces in a fixed tree:
///   forward:  partial = (sum d, sum d^2) with d = x - x[0, channel, 0] (a shift against
///             cancellation in E[d^2] - E[d]^2; the CPU shifts by the first plane's mean);
///   backward: partial = (sum dy, sum dy (x - mean)), mean = mean_c[channel] (in T, as the
///             CPU), 0 when mean_c is null (x holds xhat).
template <class T, bool kBackward>
__global__ void __launch_bounds__(kDnnThreads)
    bn_partials_kernel(BnShape s, int chunks, const T* x, const T* dy, const T* mean_c,
                       double* partial) {
  __shared__ double sa[kDnnThreads], sb[kDnnThreads];
  const std::int64_t ch = std::int64_t(blockIdx.x) / chunks;
  const std::int64_t chunk = std::int64_t(blockIdx.x) % chunks;
  const std::int64_t m = s.n * s.hw, plane_stride = s.c * s.hw;
  const std::int64_t begin = m * chunk / chunks, end = m * (chunk + 1) / chunks;
  const T* xc = x + ch * s.hw;
  const T* gc = kBackward ? dy + ch * s.hw : nullptr;
  const double ref = kBackward ? (mean_c ? double(mean_c[ch]) : 0.0) : double(xc[0]);
  double a = 0, b = 0;
  for (std::int64_t i = begin + threadIdx.x; i < end; i += kDnnThreads) {
    const std::int64_t n = i / s.hw;
    const std::int64_t off = n * plane_stride + (i - n * s.hw);
    const double d = double(xc[off]) - ref;
    if constexpr (kBackward) {
      const double g = double(gc[off]);
      a += g;
      b += g * d;
    } else {
      a += d;
      b += d * d;
    }
  }
  sa[threadIdx.x] = a;
  sb[threadIdx.x] = b;
  __syncthreads();
  for (int half = kDnnThreads / 2; half > 0; half /= 2) {
    if (int(threadIdx.x) < half) {
      sa[threadIdx.x] += sa[threadIdx.x + half];
      sb[threadIdx.x] += sb[threadIdx.x + half];
    }
    __syncthreads();
  }
  if (threadIdx.x == 0) {
    partial[2 * std::int64_t(blockIdx.x)] = sa[0];
    partial[2 * std::int64_t(blockIdx.x) + 1] = sb[0];
  }
}

/// A channel's two sums from its partials, added in chunk order (null partial: (0, 0)). Every
/// thread of the per-element kernels computes them itself: the same bits in every block of the
/// channel without a barrier, at the cost of 2 chunks loads that a warp reads as broadcasts.
__device__ inline void bn_channel_sums(const double* partial, std::int64_t ch, int chunks, double& a,
                                       double& b) {
  a = 0;
  b = 0;
  if (!partial) return;
  for (int q = 0; q < chunks; ++q) {
    a += partial[2 * (ch * chunks + q)];
    b += partial[2 * (ch * chunks + q) + 1];
  }
}

/// Blocks per channel of the per-element batch-norm kernels: enough to fill the GPU over all
/// channels (about the element count / kDnnThreads in all, at most 8192), at least one.
inline unsigned bn_blocks_per_channel(std::int64_t c, std::int64_t m) {
  const std::int64_t per = std::max<std::int64_t>(1, 8192 / std::max<std::int64_t>(c, 1));
  return unsigned(std::clamp<std::int64_t>((m + kDnnThreads - 1) / kDnnThreads, 1, per));
}
/// Channels one launch covers in y (at most 4096, well under the grid's 65535: with one block
/// per channel that already fills any GPU); the kernels loop over the rest.
inline constexpr std::int64_t kBnChannelGrid = 4096;
inline unsigned bn_channel_grid(std::int64_t c) { return unsigned(std::min(c, kBnChannelGrid)); }

/// The forward after the partials, one launch: channels ch = blockIdx.y, + gridDim.y, ...; in
/// each, every thread computes the statistics (training: from the partials; eval: the running
/// ones), thread 0 of block x == 0 updates the running averages and writes
/// saved = (mean, invstd), and the block writes its share of
///   y = (x - mean_c) a_c + beta_c,  in T as the CPU (mean_c = T(mean), a_c = T(gamma invstd)).
/// So the statistics need no launch of their own between the partials and the output. Mirrors
/// cpu::batchnorm_forward.
template <class T>
__global__ void __launch_bounds__(kDnnThreads)
    bn_apply_kernel(BnShape s, int chunks, const double* partial, const T* x, const T* gamma,
                    const T* beta, T* running_mean, T* running_var, bool training, double momentum,
                    double eps, T* saved, T* y) {
  const std::int64_t m = s.n * s.hw, plane_stride = s.c * s.hw;
  const double md = double(m);
  for (std::int64_t ch = blockIdx.y; ch < s.c; ch += gridDim.y) {
    double mean, var;
    if (training) {
      double s1, s2;
      bn_channel_sums(partial, ch, chunks, s1, s2);
      const double shift = s1 / md;
      mean = double(x[ch * s.hw]) + shift;
      var = fmax(0.0, s2 / md - shift * shift);
    } else {
      mean = double(running_mean[ch]);
      var = double(running_var[ch]);
    }
    const double invstd = 1.0 / sqrt(var + eps);
    if (blockIdx.x == 0 && threadIdx.x == 0) {
      if (training && running_mean) {
        running_mean[ch] = T((1 - momentum) * double(running_mean[ch]) + momentum * mean);
        running_var[ch] = T((1 - momentum) * double(running_var[ch]) + momentum * var * md / (md - 1));
      }
      saved[ch] = T(mean);
      saved[s.c + ch] = T(invstd);
    }
    const T mean_c = T(mean), a_c = T((gamma ? double(gamma[ch]) : 1.0) * invstd);
    const T beta_c = beta ? beta[ch] : T(0);
    const T* xc = x + ch * s.hw;
    T* yc = y + ch * s.hw;
    for (std::int64_t i = std::int64_t(blockIdx.x) * kDnnThreads + threadIdx.x; i < m;
         i += std::int64_t(gridDim.x) * kDnnThreads) {
      const std::int64_t n = i / s.hw;
      const std::int64_t off = n * plane_stride + (i - n * s.hw);
      yc[off] = (xc[off] - mean_c) * a_c + beta_c;
    }
  }
}

/// The backward after the partials, one launch: channels as bn_apply_kernel; in each, every
/// thread computes sum(dy) and sum(dy (x - mean)) from the partials (null: no sums needed, they
/// count as 0), thread 0 of block x == 0 writes dgamma, dbeta, and the block its share of
///   dx = a dy + b (x - mean) + c0,  a = gamma invstd, b = -a invstd^2 sum(dy (x - mean)) / m,
///   c0 = -a sum(dy) / m   (training; b = c0 = 0 in evaluation), as cpu::batchnorm_backward.
/// x_is_xhat: x is xhat, mean 0, and the invstd that turns x - mean into xhat is 1. dx null:
/// only the parameter gradients.
template <class T>
__global__ void __launch_bounds__(kDnnThreads)
    bn_dx_kernel(BnShape s, int chunks, const double* partial, const T* x, bool x_is_xhat,
                 const T* gamma, const T* saved, const T* dy, bool training, T* dx, bool dx_acc,
                 T* dgamma, bool dgamma_acc, T* dbeta, bool dbeta_acc) {
  const std::int64_t m = s.n * s.hw, plane_stride = s.c * s.hw;
  for (std::int64_t ch = blockIdx.y; ch < s.c; ch += gridDim.y) {
    double sum_dy, sum_dy_xc;
    bn_channel_sums(partial, ch, chunks, sum_dy, sum_dy_xc);
    const double invstd = double(saved[s.c + ch]);
    const double to_xhat = x_is_xhat ? 1.0 : invstd;
    if (blockIdx.x == 0 && threadIdx.x == 0) {
      if (dgamma) dgamma[ch] = T((dgamma_acc ? double(dgamma[ch]) : 0.0) + sum_dy_xc * to_xhat);
      if (dbeta) dbeta[ch] = T((dbeta_acc ? double(dbeta[ch]) : 0.0) + sum_dy);
    }
    if (!dx) continue;
    const double ad = (gamma ? double(gamma[ch]) : 1.0) * invstd;
    const T a = T(ad);
    const T b = T(training ? -ad * to_xhat * to_xhat * sum_dy_xc / double(m) : 0.0);
    const T c0 = T(training ? -ad * sum_dy / double(m) : 0.0);
    const T mean_c = x_is_xhat ? T(0) : saved[ch];
    const std::int64_t base = ch * s.hw;
    for (std::int64_t i = std::int64_t(blockIdx.x) * kDnnThreads + threadIdx.x; i < m;
         i += std::int64_t(gridDim.x) * kDnnThreads) {
      const std::int64_t n = i / s.hw;
      const std::int64_t off = base + n * plane_stride + (i - n * s.hw);
      const T v = training ? a * dy[off] + b * (x_is_xhat ? x[off] : x[off] - mean_c) + c0 : a * dy[off];
      dx[off] = dx_acc ? dx[off] + v : v;
    }
  }
}

// ---- pooling ----------------------------------------------------------------------------------

/// Real rows [lo, hi) of window o (PoolGeometry::lo / hi): o s - p + [0, k) clipped to [0, in).
__device__ inline std::int64_t win_lo(std::int64_t o, int s, int p) {
  const std::int64_t v = o * s - p;
  return v > 0 ? v : 0;
}
__device__ inline std::int64_t win_hi(std::int64_t o, int s, int p, int k, std::int64_t in) {
  const std::int64_t v = o * s - p + k;
  return v < in ? v : in;
}
/// The windows that contain input row r: o s - p <= r <= o s - p + k - 1, i.e.
/// o in [ceil((r + p - k + 1) / s), floor((r + p) / s)], clipped to [0, out). Empty (first >
/// last) for rows that no window reads.
__device__ inline std::int64_t first_window(std::int64_t r, int s, int p, int k) {
  const std::int64_t a = r + p - k + 1;
  return a <= 0 ? 0 : (a + s - 1) / s;
}
__device__ inline std::int64_t last_window(std::int64_t r, int s, int p, std::int64_t out) {
  const std::int64_t b = (r + p) / s;  // r + p >= 0
  return b < out - 1 ? b : out - 1;
}

/// One thread per output. A sequential scan of the window's real pixels in row-major order with
/// the CPU's rule "v replaces the maximum when v > max or v is NaN" gives exactly its result:
/// the first maximum in row-major order, the last NaN, and for a window of -inf only, -inf at
/// its first real pixel.
template <class T>
__global__ void __launch_bounds__(kDnnThreads)
    max_pool_kernel(PoolShape g, const T* x, T* y, T* idx) {
  const std::int64_t total = g.planes * g.ho * g.wo;
  for (std::int64_t i = global_thread(); i < total; i += grid_threads()) {
    const std::int64_t ow = i % g.wo, t = i / g.wo, oh = t % g.ho, plane = t / g.ho;
    const std::int64_t r0 = win_lo(oh, g.s, g.p), r1 = win_hi(oh, g.s, g.p, g.k, g.h);
    const std::int64_t c0 = win_lo(ow, g.s, g.p), c1 = win_hi(ow, g.s, g.p, g.k, g.w);
    const T* xp = x + plane * g.h * g.w;
    T best = -T(INFINITY);
    std::int64_t at = r0 * g.w + c0;
    for (std::int64_t r = r0; r < r1; ++r)
      for (std::int64_t c = c0; c < c1; ++c) {
        const T v = xp[r * g.w + c];
        if (v > best || v != v) {
          best = v;
          at = r * g.w + c;
        }
      }
    y[i] = best;
    if (idx) idx[i] = T(at);
  }
}

/// One thread per input pixel: the sum of dy over the windows containing it whose saved index
/// names it.
template <class T>
__global__ void __launch_bounds__(kDnnThreads)
    max_pool_backward_kernel(PoolShape g, const T* dy, const T* idx, T* dx, bool accumulate) {
  const std::int64_t total = g.planes * g.h * g.w;
  for (std::int64_t i = global_thread(); i < total; i += grid_threads()) {
    const std::int64_t c = i % g.w, t = i / g.w, r = t % g.h, plane = t / g.h;
    const std::int64_t oh0 = first_window(r, g.s, g.p, g.k), oh1 = last_window(r, g.s, g.p, g.ho);
    const std::int64_t ow0 = first_window(c, g.s, g.p, g.k), ow1 = last_window(c, g.s, g.p, g.wo);
    const std::int64_t me = r * g.w + c, base = plane * g.ho * g.wo;
    T sum = 0;
    for (std::int64_t oh = oh0; oh <= oh1; ++oh)
      for (std::int64_t ow = ow0; ow <= ow1; ++ow) {
        const std::int64_t o = base + oh * g.wo + ow;
        if (std::int64_t(idx[o]) == me) sum += dy[o];
      }
    dx[i] = accumulate ? dx[i] + sum : sum;
  }
}

/// One thread per output: the window's real pixels summed, times 1 / rows * 1 / columns (the
/// CPU's factors).
template <class T>
__global__ void __launch_bounds__(kDnnThreads) avg_pool_kernel(PoolShape g, const T* x, T* y) {
  const std::int64_t total = g.planes * g.ho * g.wo;
  for (std::int64_t i = global_thread(); i < total; i += grid_threads()) {
    const std::int64_t ow = i % g.wo, t = i / g.wo, oh = t % g.ho, plane = t / g.ho;
    const std::int64_t r0 = win_lo(oh, g.s, g.p), r1 = win_hi(oh, g.s, g.p, g.k, g.h);
    const std::int64_t c0 = win_lo(ow, g.s, g.p), c1 = win_hi(ow, g.s, g.p, g.k, g.w);
    const T* xp = x + plane * g.h * g.w;
    T sum = 0;
    for (std::int64_t r = r0; r < r1; ++r)
      for (std::int64_t c = c0; c < c1; ++c) sum += xp[r * g.w + c];
    y[i] = sum * ((T(1) / T(r1 - r0)) * (T(1) / T(c1 - c0)));
  }
}

/// One thread per input pixel: the sum over its windows of dy / (the window's real pixels).
template <class T>
__global__ void __launch_bounds__(kDnnThreads)
    avg_pool_backward_kernel(PoolShape g, const T* dy, T* dx, bool accumulate) {
  const std::int64_t total = g.planes * g.h * g.w;
  for (std::int64_t i = global_thread(); i < total; i += grid_threads()) {
    const std::int64_t c = i % g.w, t = i / g.w, r = t % g.h, plane = t / g.h;
    const std::int64_t oh0 = first_window(r, g.s, g.p, g.k), oh1 = last_window(r, g.s, g.p, g.ho);
    const std::int64_t ow0 = first_window(c, g.s, g.p, g.k), ow1 = last_window(c, g.s, g.p, g.wo);
    const T* gp = dy + plane * g.ho * g.wo;
    T sum = 0;
    for (std::int64_t oh = oh0; oh <= oh1; ++oh) {
      const T inv_r = T(1) / T(win_hi(oh, g.s, g.p, g.k, g.h) - win_lo(oh, g.s, g.p));
      for (std::int64_t ow = ow0; ow <= ow1; ++ow) {
        const T inv_c = T(1) / T(win_hi(ow, g.s, g.p, g.k, g.w) - win_lo(ow, g.s, g.p));
        sum += gp[oh * g.wo + ow] * (inv_r * inv_c);
      }
    }
    dx[i] = accumulate ? dx[i] + sum : sum;
  }
}

/// One warp per plane: lanes sum strided values in double, then a fixed xor butterfly.
template <class T>
__global__ void __launch_bounds__(kDnnThreads)
    global_avg_pool_kernel(std::int64_t planes, std::int64_t hw, const T* x, T* y) {
  const int lane = int(threadIdx.x % 32);
  const std::int64_t warps = grid_threads() / 32;
  for (std::int64_t pl = global_thread() / 32; pl < planes; pl += warps) {
    const T* xp = x + pl * hw;
    double acc = 0;
    for (std::int64_t j = lane; j < hw; j += 32) acc += double(xp[j]);
    for (int off = 16; off > 0; off /= 2) acc += __shfl_xor_sync(0xffffffffu, acc, off);
    if (lane == 0) y[pl] = T(acc) * (T(1) / T(hw));
  }
}

template <class T>
__global__ void __launch_bounds__(kDnnThreads)
    global_avg_pool_backward_kernel(std::int64_t planes, std::int64_t hw, const T* dy, T* dx,
                                    bool accumulate) {
  const std::int64_t total = planes * hw;
  const T inv = T(1) / T(hw);
  for (std::int64_t i = global_thread(); i < total; i += grid_threads()) {
    const T v = dy[i / hw] * inv;
    dx[i] = accumulate ? dx[i] + v : v;
  }
}

}  // namespace dnn_detail

// ---- launchers --------------------------------------------------------------------------------

template <class T>
void batchnorm_forward(const BnShape& s, const T* x, const T* gamma, const T* beta, T* running_mean,
                       T* running_var, bool training, double momentum, double eps, T* y, T* saved,
                       double* work, cudaStream_t stream) {
  using namespace dnn_detail;
  if (s.c <= 0) return;
  const std::int64_t m = s.n * s.hw;
  const int chunks = bn_chunks(m);
  if (training) {
    cuda::launch(bn_partials_kernel<T, false>, unsigned(s.c * chunks), kDnnThreads, stream, s,
                 chunks, x, nullptr, nullptr, work);
  }
  cuda::launch(bn_apply_kernel<T>, dim3(bn_blocks_per_channel(s.c, m), bn_channel_grid(s.c)), kDnnThreads,
               stream, s, chunks, training ? work : nullptr, x, gamma, beta, running_mean, running_var,
               training, momentum, eps, saved, y);
}

template <class T>
void batchnorm_backward(const BnShape& s, const T* x, bool x_is_xhat, const T* gamma, const T* saved,
                        const T* dy, bool training, T* dx, bool dx_acc, T* dgamma, bool dgamma_acc, T* dbeta,
                        bool dbeta_acc, double* work, cudaStream_t stream) {
  using namespace dnn_detail;
  if (s.c <= 0) return;
  const std::int64_t m = s.n * s.hw;
  const int chunks = bn_chunks(m);
  const bool need_sums = ((training && dx) || dgamma || dbeta) && m > 0;
  const T* mean_c = x_is_xhat ? nullptr : saved;  // saved[0, c) is the mean
  if (need_sums) {
    cuda::launch(bn_partials_kernel<T, true>, unsigned(s.c * chunks), kDnnThreads, stream, s,
                 chunks, x, dy, mean_c, work);
  }
  // Without dx, one block per channel writes the parameter gradients.
  const unsigned per_channel = dx ? bn_blocks_per_channel(s.c, m) : 1u;
  cuda::launch(bn_dx_kernel<T>, dim3(per_channel, bn_channel_grid(s.c)), kDnnThreads, stream, s, chunks,
               need_sums ? work : nullptr, x, x_is_xhat, gamma, saved, dy, training, dx, dx_acc, dgamma,
               dgamma_acc, dbeta, dbeta_acc);
}

template <class T>
void max_pool_forward(const PoolShape& g, const T* x, T* y, T* idx, cudaStream_t stream) {
  const std::int64_t total = g.planes * g.ho * g.wo;
  if (total <= 0) return;
  cuda::launch(dnn_detail::max_pool_kernel<T>, dnn_detail::grid_for(total), kDnnThreads, stream, g,
               x, y, idx);
}

template <class T>
void max_pool_backward(const PoolShape& g, const T* dy, const T* idx, T* dx, bool accumulate,
                       cudaStream_t stream) {
  const std::int64_t total = g.planes * g.h * g.w;
  if (total <= 0) return;
  cuda::launch(dnn_detail::max_pool_backward_kernel<T>, dnn_detail::grid_for(total), kDnnThreads,
               stream, g, dy, idx, dx, accumulate);
}

template <class T>
void avg_pool_forward(const PoolShape& g, const T* x, T* y, cudaStream_t stream) {
  const std::int64_t total = g.planes * g.ho * g.wo;
  if (total <= 0) return;
  cuda::launch(dnn_detail::avg_pool_kernel<T>, dnn_detail::grid_for(total), kDnnThreads, stream, g,
               x, y);
}

template <class T>
void avg_pool_backward(const PoolShape& g, const T* dy, T* dx, bool accumulate,
                       cudaStream_t stream) {
  const std::int64_t total = g.planes * g.h * g.w;
  if (total <= 0) return;
  cuda::launch(dnn_detail::avg_pool_backward_kernel<T>, dnn_detail::grid_for(total), kDnnThreads,
               stream, g, dy, dx, accumulate);
}

template <class T>
void global_avg_pool_forward(std::int64_t planes, std::int64_t hw, const T* x, T* y,
                             cudaStream_t stream) {
  if (planes <= 0 || hw <= 0) return;
  constexpr int kWarps = kDnnThreads / 32;
  const unsigned blocks =
      unsigned(std::clamp<std::int64_t>((planes + kWarps - 1) / kWarps, 1, 8192));
  cuda::launch(dnn_detail::global_avg_pool_kernel<T>, blocks, kDnnThreads, stream, planes, hw, x,
               y);
}

template <class T>
void global_avg_pool_backward(std::int64_t planes, std::int64_t hw, const T* dy, T* dx,
                              bool accumulate, cudaStream_t stream) {
  const std::int64_t total = planes * hw;
  if (total <= 0) return;
  cuda::launch(dnn_detail::global_avg_pool_backward_kernel<T>, dnn_detail::grid_for(total),
               kDnnThreads, stream, planes, hw, dy, dx, accumulate);
}

}  // namespace datanas::cuda
