// datanas/cuda/depthwise.cuh - our own depthwise convolution (groups == Cin == Cout, one filter
// per channel), forward, backward data and backward filter: the convolutions of DARTS'
// sep_conv and dil_conv, six per mixed edge. Declarations and contracts: dnn.hpp.
//
// Why: the issue names depthwise convolution as the known case where cuDNN is slow (PyTorch
// does not use cuDNN for float depthwise convolutions either, but its own kernels). These run
// only when chosen (cuda::set_depthwise_conv, datanas/ops/cuda/dnn.hpp) or when datanas is built
// without cuDNN; benchmarks/gpu/bench_gpu_step times both on the same card.
//
// Layout: NCHW, contiguous; every tensor has fewer than 2^31 elements (the caller checks), so
// indices are 32-bit (64-bit division is emulated on the GPU and would dominate these kernels).
//   forward:         one thread per output element, the kh x kw taps unrolled when the kernel
//                    is 3 x 3 or 5 x 5;
//   backward data:   one thread per input element gathering the outputs that read it (no
//                    atomics, so dx is deterministic);
//   backward filter: dw[c, ky, kx] = sum over (n, oy, ox) of dy * x at the tap, and db[c] =
//                    sum of dy. Blocks (channel, chunk) sum a fixed share of the positions, every
//                    tap at once for 3 x 3 and 5 x 5 (one tap per block otherwise), reduce in a
//                    fixed tree and write a partial per tap; a second kernel adds the partials in
//                    chunk order in double. The chunk count depends on the shape only, so the
//                    same inputs give the same bits on every run.
#pragma once

#include <algorithm>
#include <cstdint>
#include <type_traits>

#include "datanas/cuda/check.cuh"
#include "datanas/cuda/dnn.hpp"
#include "datanas/cuda/launch.cuh"

namespace datanas::cuda {
namespace dw_detail {

inline constexpr int kThreads = 256;
inline constexpr int kWarps = kThreads / 32;

inline unsigned blocks_for(std::int64_t n) {
  return unsigned(std::clamp<std::int64_t>((n + kThreads - 1) / kThreads, 1, 8192));
}

/// Calls f(std::integral_constant<int, K>) with K = 3 or 5 for those square kernels (unrolled
/// instantiations) and K = 0 (sizes read from the shape) otherwise.
template <class F>
void with_kernel_size(const DwShape& g, F&& f) {
  if (g.kh == 3 && g.kw == 3)
    f(std::integral_constant<int, 3>{});
  else if (g.kh == 5 && g.kw == 5)
    f(std::integral_constant<int, 5>{});
  else
    f(std::integral_constant<int, 0>{});
}

/// max(x, 0) when g.relu_input, written as the relu kernel writes it (elementwise.cuh, activate).
template <class T>
__device__ inline T input_at(const DwShape& g, T v) {
  return g.relu_input ? (v > T(0) ? v : T(0)) : v;
}

/// y[n, c, oy, ox] = sum over the taps inside the image of x[n, c, iy, ix] w[c, ky, kx]
/// (+ bias[c]), iy = oy stride - pad + ky dil, ix likewise (cross-correlation, as torch); x read
/// through input_at.
template <class T, int K>
__global__ void __launch_bounds__(kThreads)
    forward_kernel(DwShape g, const T* __restrict__ x, const T* __restrict__ w,
                   const T* __restrict__ bias, T* __restrict__ y) {
  const int kh = K > 0 ? K : g.kh, kw = K > 0 ? K : g.kw;
  const int h = int(g.h), wd = int(g.w), ho = int(g.ho), wo = int(g.wo), c = int(g.c);
  const int total = int(g.n) * c * ho * wo;
  // Unsigned: total < 2^31 and the step < 2^22, so i never wraps; an int i would, near 2^31.
  for (unsigned u = blockIdx.x * blockDim.x + threadIdx.x; u < unsigned(total);
       u += gridDim.x * blockDim.x) {
    const int i = int(u);
    const int ox = i % wo, t = i / wo, oy = t % ho, plane = t / ho, ch = plane % c;
    const T* xp = x + std::int64_t(plane) * h * wd;
    const T* wp = w + ch * kh * kw;
    const int iy0 = oy * g.stride - g.pad, ix0 = ox * g.stride - g.pad;
    T acc = 0;
#pragma unroll
    for (int ky = 0; ky < kh; ++ky) {
      const int iy = iy0 + ky * g.dil;
      if (iy < 0 || iy >= h) continue;
#pragma unroll
      for (int kx = 0; kx < kw; ++kx) {
        const int ix = ix0 + kx * g.dil;
        if (ix >= 0 && ix < wd) acc += input_at(g, xp[iy * wd + ix]) * wp[ky * kw + kx];
      }
    }
    if (bias) acc += bias[ch];
    y[i] = acc;
  }
}

/// dx[n, c, iy, ix] (+)= sum of dy[n, c, oy, ox] w[c, ky, kx] over the taps (ky, kx) whose
/// output (oy, ox) reads this pixel: iy + pad - ky dil = oy stride with 0 <= oy < ho (and the
/// same for x).
template <class T, int K>
__global__ void __launch_bounds__(kThreads)
    backward_data_kernel(DwShape g, const T* __restrict__ w, const T* __restrict__ dy, T* dx,
                         bool accumulate) {
  const int kh = K > 0 ? K : g.kh, kw = K > 0 ? K : g.kw;
  const int h = int(g.h), wd = int(g.w), ho = int(g.ho), wo = int(g.wo), c = int(g.c);
  const int total = int(g.n) * c * h * wd;
  for (unsigned u = blockIdx.x * blockDim.x + threadIdx.x; u < unsigned(total);
       u += gridDim.x * blockDim.x) {
    const int i = int(u);  // as in forward_kernel
    const int ix = i % wd, t = i / wd, iy = t % h, plane = t / h, ch = plane % c;
    const T* dyp = dy + std::int64_t(plane) * ho * wo;
    const T* wp = w + ch * kh * kw;
    T acc = 0;
#pragma unroll
    for (int ky = 0; ky < kh; ++ky) {
      const int ty = iy + g.pad - ky * g.dil;
      if (ty < 0 || ty % g.stride != 0 || ty / g.stride >= ho) continue;
      const int oy = ty / g.stride;
#pragma unroll
      for (int kx = 0; kx < kw; ++kx) {
        const int tx = ix + g.pad - kx * g.dil;
        if (tx < 0 || tx % g.stride != 0 || tx / g.stride >= wo) continue;
        acc += dyp[oy * wo + tx / g.stride] * wp[ky * kw + kx];
      }
    }
    dx[i] = accumulate ? dx[i] + acc : acc;
  }
}

/// Block (channel, chunk) = (blockIdx.x / chunks, blockIdx.x % chunks), taps [blockIdx.y NT,
/// blockIdx.y NT + NT) of the kh kw + 1 taps (tap kh kw is the bias: dy alone). The block sums
/// dy * x(tap) over its share [m chunk / chunks, m (chunk + 1) / chunks) of the m = n ho wo
/// output positions of the channel, then reduces each tap over the block (xor butterfly inside
/// each warp, warps added in order) into partial[(block x) * taps + tap], in double. A null x
/// (the weight needs no gradient, so its input was not kept) leaves the weight taps at 0.
/// K > 0 (a K x K kernel): NT = K K + 1, one block row, every index known at compile time.
template <class T, int K, int NT>
__global__ void __launch_bounds__(kThreads)
    filter_partials_kernel(DwShape g, int chunks, const T* __restrict__ x,
                           const T* __restrict__ dy, double* __restrict__ partial) {
  __shared__ T red[NT][kWarps];
  const int kw = K > 0 ? K : g.kw, kk = K > 0 ? K * K : g.kh * g.kw, taps = kk + 1;
  const int h = int(g.h), wd = int(g.w), ho = int(g.ho), wo = int(g.wo), c = int(g.c);
  const int ch = int(blockIdx.x) / chunks, chunk = int(blockIdx.x) % chunks;
  const int t0 = K > 0 ? 0 : int(blockIdx.y) * NT;
  const int hw_out = ho * wo, m = int(g.n) * hw_out;
  const int begin = int(std::int64_t(m) * chunk / chunks);
  const int end = int(std::int64_t(m) * (chunk + 1) / chunks);
  T acc[NT];
#pragma unroll
  for (int j = 0; j < NT; ++j) acc[j] = 0;
  // Unsigned, as in forward_kernel: no wrap near 2^31.
  for (unsigned u = unsigned(begin) + threadIdx.x; u < unsigned(end); u += kThreads) {
    const int p = int(u);
    const int img = p / hw_out, r = p - img * hw_out, oy = r / wo, ox = r - oy * wo;
    const std::int64_t plane = std::int64_t(img) * c + ch;
    const T d = dy[plane * hw_out + r];
    const T* xp = x ? x + plane * h * wd : nullptr;  // null: db only, x was not kept
    const int iy0 = oy * g.stride - g.pad, ix0 = ox * g.stride - g.pad;
#pragma unroll
    for (int j = 0; j < NT; ++j) {
      const int tap = t0 + j;
      if (tap >= taps) break;
      if (tap == kk) {
        acc[j] += d;
        continue;
      }
      if (!xp) continue;
      const int ky = tap / kw, kx = tap - ky * kw;
      const int iy = iy0 + ky * g.dil, ix = ix0 + kx * g.dil;
      if (iy >= 0 && iy < h && ix >= 0 && ix < wd) acc[j] += d * input_at(g, xp[iy * wd + ix]);
    }
  }
  const int lane = int(threadIdx.x) % 32, warp = int(threadIdx.x) / 32;
#pragma unroll
  for (int j = 0; j < NT; ++j) {
    T v = acc[j];
    for (int off = 16; off > 0; off /= 2) v += __shfl_xor_sync(0xffffffffu, v, off);
    if (lane == 0) red[j][warp] = v;
  }
  __syncthreads();
  const int j = int(threadIdx.x);
  if (j < NT && t0 + j < taps) {
    double s = 0;
    for (int q = 0; q < kWarps; ++q) s += double(red[j][q]);
    partial[std::int64_t(blockIdx.x) * taps + t0 + j] = s;
  }
}

/// One thread per (channel, tap): the chunk partials added in order; dw[c, tap] for tap < kh kw
/// (when dw is not null), db[c] for the bias tap (when db is not null).
template <class T>
__global__ void filter_finish_kernel(DwShape g, int chunks, const double* __restrict__ partial,
                                     T* dw, bool dw_acc, T* db, bool db_acc) {
  const int kk = g.kh * g.kw, taps = kk + 1;
  const int i = int(blockIdx.x * blockDim.x + threadIdx.x);
  if (i >= int(g.c) * taps) return;
  const int ch = i / taps, tap = i % taps;
  double s = 0;
  for (int q = 0; q < chunks; ++q) s += partial[(std::int64_t(ch) * chunks + q) * taps + tap];
  T* out = tap < kk ? (dw ? dw + ch * kk + tap : nullptr) : (db ? db + ch : nullptr);
  if (!out) return;
  const bool acc = tap < kk ? dw_acc : db_acc;
  *out = acc ? *out + T(s) : T(s);
}

}  // namespace dw_detail

template <class T>
void depthwise_forward(const DwShape& g, const T* x, const T* w, const T* bias, T* y,
                       cudaStream_t stream) {
  const std::int64_t total = g.n * g.c * g.ho * g.wo;
  if (total <= 0) return;
  dw_detail::with_kernel_size(g, [&](auto k) {
    cuda::launch(dw_detail::forward_kernel<T, decltype(k)::value>, dw_detail::blocks_for(total),
                 dw_detail::kThreads, stream, g, x, w, bias, y);
  });
}

template <class T>
void depthwise_backward_data(const DwShape& g, const T* w, const T* dy, T* dx, bool accumulate,
                             cudaStream_t stream) {
  const std::int64_t total = g.n * g.c * g.h * g.w;
  if (total <= 0) return;
  dw_detail::with_kernel_size(g, [&](auto k) {
    cuda::launch(dw_detail::backward_data_kernel<T, decltype(k)::value>,
                 dw_detail::blocks_for(total), dw_detail::kThreads, stream, g, w, dy, dx,
                 accumulate);
  });
}

template <class T>
void depthwise_backward_filter(const DwShape& g, const T* x, const T* dy, T* dw, bool dw_acc,
                               T* db, bool db_acc, double* work, cudaStream_t stream) {
  if ((!dw && !db) || g.c <= 0) return;
  const int chunks = depthwise_filter_chunks(g), taps = g.kh * g.kw + 1;
  const unsigned blocks = unsigned(g.c * chunks);
  dw_detail::with_kernel_size(g, [&](auto k) {
    constexpr int K = decltype(k)::value;
    if constexpr (K > 0) {
      cuda::launch(dw_detail::filter_partials_kernel<T, K, K * K + 1>, dim3(blocks, 1),
                   dw_detail::kThreads, stream, g, chunks, x, dy, work);
    } else {
      cuda::launch(dw_detail::filter_partials_kernel<T, 0, 1>, dim3(blocks, unsigned(taps)),
                   dw_detail::kThreads, stream, g, chunks, x, dy, work);
    }
  });
  const int outputs = int(g.c) * taps;
  cuda::launch(dw_detail::filter_finish_kernel<T>, unsigned((outputs + 127) / 128), 128, stream, g,
               chunks, work, dw, dw_acc, db, db_acc);
}

}  // namespace datanas::cuda
