// datanas/cuda/estimators.cuh - the fused estimator op on the GPU: alpha [E, K] -> mixing
// weights w [E * K] for Softmax, SoftGumbel, HardGumbel and EGS<M> (ALGORITHMS.md §2), and its
// backward. The CPU op (estimators::mixing_weights) is the specification; these kernels follow it
// statement by statement, in the same summation order, so that for the same (seed, base) they
// select the same ops and their values agree to rounding. Every exp and log is exp_once /
// log_once (core/random.hpp: in double, rounded once), so the argmax's inputs, log p and the
// Gumbel samples, are the same floats on both devices, where expf/logf could differ by an ulp
// and flip a near tie; only a multiply-add that nvcc contracts (the backward's) may round
// differently.
//
// One launch covers every group of a cell type: one thread block per group. Within a block the
// reductions over a group (log-sum-exp, sum(b), the gradient dot products) run on one thread in
// the CPU's order; the M Gumbel draws of EGS run on M threads, and elementwise work is spread
// over all threads. Groups are short (at most 5 edges x 8 ops in the DARTS cell), so a launch
// costs about its latency.
//
// With p = normalise(alpha) per group (softmax, or relu(a) / sum relu(a)) and, for draw m,
// y_m = softmax((log p + g_m) / tau) with g_m Gumbel noise:
//   Softmax     w = p
//   SoftGumbel  w = y_0
//   HardGumbel  w = onehot(argmax y_0), gradient straight through y_0
//   EGS<M>      b = OR_m onehot(argmax y_m), w = b / sum(b); coordinate k's gradient goes through
//               the first draw that selected k (draw 0 when none did), sum(b) stays in the graph.
#pragma once

#include <cmath>
#include <cstdint>

#include "datanas/core/error.hpp"
#include "datanas/core/random.hpp"
#include "datanas/cuda/check.cuh"
#include "datanas/cuda/estimator_params.hpp"
#include "datanas/cuda/estimators.hpp"
#include "datanas/cuda/launch.cuh"

namespace datanas::cuda {


namespace estimator_detail {

/// log p of one group of n logits (estimators::detail::log_probs): -inf where relu gives p = 0,
/// uniform when no logit of the group is positive.
template <class T>
__device__ void log_probs(const T* a, std::int64_t n, bool relu, T* lp) {
  if (!relu) {
    T m = a[0];
    for (std::int64_t k = 1; k < n; ++k) m = m < a[k] ? a[k] : m;  // std::max(m, a[k])
    T s = 0;
    for (std::int64_t k = 0; k < n; ++k) s += exp_once(a[k] - m);
    const T lse = m + log_once(s);
    for (std::int64_t k = 0; k < n; ++k) lp[k] = a[k] - lse;
    return;
  }
  T r = 0;
  for (std::int64_t k = 0; k < n; ++k) r += a[k] < T(0) ? T(0) : a[k];  // std::max(a[k], 0)
  for (std::int64_t k = 0; k < n; ++k)
    lp[k] = r > 0 ? (a[k] > 0 ? log_once(a[k] / r) : -T(INFINITY)) : -log_once(T(n));
}

/// y = softmax((lp + g) / tau) for one draw whose noise starts at word `first` of the call's
/// range (estimators::detail::gumbel_softmax); returns the argmax, the first one on ties.
template <class T>
__device__ std::int64_t gumbel_softmax(const T* lp, std::int64_t n, double tau, std::uint64_t seed,
                                       std::uint64_t base, std::uint64_t first, T* y) {
  std::int64_t best = 0;
  T mx = -T(INFINITY);
  for (std::int64_t k = 0; k < n; ++k) {
    const std::uint64_t i = first + std::uint64_t(k);  // PhiloxGenerator::bits_at(base, i)
    const float g = gumbel_from_bits(philox4x32(base + i / 4, 0, seed).v[i % 4]);
    const T s = (lp[k] + T(g)) / T(tau);
    y[k] = s;
    if (s > mx) {
      mx = s;
      best = k;
    }
  }
  T sum = 0;
  for (std::int64_t k = 0; k < n; ++k) sum += (y[k] = exp_once(y[k] - mx));
  for (std::int64_t k = 0; k < n; ++k) y[k] /= sum;
  return best;
}

}  // namespace estimator_detail

/// Forward of estimator K for every group of the cell type: block g handles group g.
/// alpha, w: [E * K]; saved: [p.saved_size()] in the layout EstimatorParams::saved_size names.
template <class T, EstimatorKind K>
__global__ void __launch_bounds__(kEstimatorThreads)
    estimator_forward_kernel(EstimatorParams p, const T* __restrict__ alpha, T* __restrict__ w,
                             T* __restrict__ saved) {
  namespace ed = estimator_detail;
  const int g = int(blockIdx.x);
  const int tid = int(threadIdx.x);
  std::int64_t o = 0, n = 0;
  p.group(g, o, n);
  const std::int64_t total = p.total();
  T* lp = saved;
  T* ys = lp + total;
  T* route = ys + total * p.draws;
  T* sums = route + total;
  __shared__ std::int64_t selected[kEstimatorThreads];  // argmax of each draw

  if (tid == 0) ed::log_probs(alpha + o, n, p.relu, lp + o);
  __syncthreads();  // log p of the group is read by every thread below

  if constexpr (K == EstimatorKind::kSoftmax) {
    for (std::int64_t k = tid; k < n; k += blockDim.x) w[o + k] = exp_once(lp[o + k]);
  } else {
    if (tid < p.draws)
      selected[tid] = ed::gumbel_softmax(lp + o, n, p.tau, p.seed, p.counter_base(),
                                         std::uint64_t(tid) * std::uint64_t(total) + std::uint64_t(o),
                                         ys + std::int64_t(tid) * total + o);
    __syncthreads();  // every draw's y and argmax are done
    if constexpr (K == EstimatorKind::kSoftGumbel) {
      for (std::int64_t k = tid; k < n; k += blockDim.x) w[o + k] = ys[o + k];
    } else if (tid == 0) {
      // Draws in order, so the first draw to select a coordinate owns its gradient (as the CPU).
      for (std::int64_t k = 0; k < n; ++k) {
        w[o + k] = 0;
        route[o + k] = 0;
      }
      for (int m = 0; m < p.draws; ++m) {
        const std::int64_t h = selected[m];
        if (w[o + h] == 0) {
          w[o + h] = 1;
          route[o + h] = T(m);
        }
      }
      T s = 0;
      for (std::int64_t k = 0; k < n; ++k) s += w[o + k];
      sums[g] = s;
      for (std::int64_t k = 0; k < n; ++k) w[o + k] /= s;
    }
  }
}

/// Backward of estimator K: dL/dalpha from dL/dw (gw), written into galpha (added to it when
/// `accumulate`: the GradSlot convention). alpha, w and saved are the forward's.
template <class T, EstimatorKind K>
__global__ void __launch_bounds__(kEstimatorThreads)
    estimator_backward_kernel(EstimatorParams p, const T* __restrict__ alpha, const T* __restrict__ w,
                              const T* __restrict__ saved, const T* __restrict__ gw,
                              T* __restrict__ galpha, bool accumulate) {
  namespace ed = estimator_detail;
  const int g = int(blockIdx.x);
  const int tid = int(threadIdx.x);
  std::int64_t o = 0, n = 0;
  p.group(g, o, n);
  const std::int64_t total = p.total();
  const T* lp = saved;
  const T* ys = lp + total;
  const T* route = ys + total * p.draws;
  const T* sums = route + total;
  const T tau = T(p.tau);
  __shared__ T gl[kEstimatorMaxGroup];    // dL/dlog p of the group
  __shared__ T dots[kEstimatorThreads];   // per draw, <dL/dy_m, y_m>
  __shared__ T upstream_dot;              // <gw, y> (Soft/HardGumbel) or <gw, b> (EGS)
  __shared__ T norm_r, norm_sg;           // sum of positive logits, sum of their dL/dlog p

  if constexpr (K == EstimatorKind::kSoftmax) {
    for (std::int64_t k = tid; k < n; k += blockDim.x) gl[k] = gw[o + k] * exp_once(lp[o + k]);
  } else if constexpr (K == EstimatorKind::kSoftGumbel || K == EstimatorKind::kHardGumbel) {
    // Straight through for HardGumbel: dL/dy = dL/dw.
    if (tid == 0) {
      T dot = 0;
      for (std::int64_t k = 0; k < n; ++k) dot += gw[o + k] * ys[o + k];
      upstream_dot = dot;
    }
    __syncthreads();
    for (std::int64_t k = tid; k < n; k += blockDim.x)
      gl[k] = ys[o + k] * (gw[o + k] - upstream_dot) / tau;
  } else {
    // w = b / S: dL/db_k = gw_k / S - <gw, b> / S^2 (b_k = w_k * S), routed to one draw per k.
    const T s = sums[g];
    if (tid == 0) {
      T gb_dot = 0;
      for (std::int64_t k = 0; k < n; ++k) gb_dot += gw[o + k] * w[o + k] * s;
      upstream_dot = gb_dot;
    }
    __syncthreads();
    const T gb_dot = upstream_dot;
    auto dy = [&](int m, std::int64_t k) -> T {
      return route[o + k] == T(m) ? gw[o + k] / s - gb_dot / (s * s) : T(0);
    };
    if (tid < p.draws) {
      const T* y = ys + std::int64_t(tid) * total + o;
      T dot = 0;
      for (std::int64_t k = 0; k < n; ++k) dot += dy(tid, k) * y[k];
      dots[tid] = dot;
    }
    __syncthreads();
    for (std::int64_t k = tid; k < n; k += blockDim.x) {
      T acc = 0;  // draws in order, as the CPU accumulates
      for (int m = 0; m < p.draws; ++m) {
        const T yk = ys[std::int64_t(m) * total + o + k];
        acc += yk * (dy(m, k) - dots[m]) / tau;
      }
      gl[k] = acc;
    }
  }
  __syncthreads();  // gl complete

  // dL/dlog p -> dL/dalpha through the normalisation.
  const T* a = alpha + o;
  if (tid == 0) {
    T r = 0, sg = 0;
    for (std::int64_t k = 0; k < n; ++k) {
      if (!p.relu) {
        sg += gl[k];
      } else if (a[k] > 0) {
        r += a[k];
        sg += gl[k];
      }
    }
    norm_r = r;
    norm_sg = sg;
  }
  __syncthreads();
  for (std::int64_t k = tid; k < n; k += blockDim.x) {
    T d;
    if (!p.relu)
      d = gl[k] - exp_once(lp[o + k]) * norm_sg;
    else
      d = (norm_r > 0 && a[k] > 0) ? gl[k] / a[k] - norm_sg / norm_r : T(0);
    galpha[o + k] = accumulate ? galpha[o + k] + d : d;
  }
}

/// Launches the forward for all groups of a cell type on `stream` (asynchronous).
template <class T>
void launch_estimator_forward(const EstimatorParams& p, const T* alpha, T* w, T* saved,
                              cudaStream_t stream) {
  check_estimator_params(p);
  const unsigned blocks = unsigned(p.groups());
  switch (p.kind) {
    case EstimatorKind::kSoftmax:
      cuda::launch(estimator_forward_kernel<T, EstimatorKind::kSoftmax>, blocks, kEstimatorThreads,
                   stream, p, alpha, w, saved);
      break;
    case EstimatorKind::kSoftGumbel:
      cuda::launch(estimator_forward_kernel<T, EstimatorKind::kSoftGumbel>, blocks,
                   kEstimatorThreads, stream, p, alpha, w, saved);
      break;
    case EstimatorKind::kHardGumbel:
      cuda::launch(estimator_forward_kernel<T, EstimatorKind::kHardGumbel>, blocks,
                   kEstimatorThreads, stream, p, alpha, w, saved);
      break;
    case EstimatorKind::kEgs:
      cuda::launch(estimator_forward_kernel<T, EstimatorKind::kEgs>, blocks, kEstimatorThreads,
                   stream, p, alpha, w, saved);
      break;
  }
}

/// Launches the backward for all groups of a cell type on `stream` (asynchronous).
template <class T>
void launch_estimator_backward(const EstimatorParams& p, const T* alpha, const T* w, const T* saved,
                               const T* gw, T* galpha, bool accumulate, cudaStream_t stream) {
  check_estimator_params(p);
  const unsigned blocks = unsigned(p.groups());
  switch (p.kind) {
    case EstimatorKind::kSoftmax:
      cuda::launch(estimator_backward_kernel<T, EstimatorKind::kSoftmax>, blocks, kEstimatorThreads,
                   stream, p, alpha, w, saved, gw, galpha, accumulate);
      break;
    case EstimatorKind::kSoftGumbel:
      cuda::launch(estimator_backward_kernel<T, EstimatorKind::kSoftGumbel>, blocks,
                   kEstimatorThreads, stream, p, alpha, w, saved, gw, galpha, accumulate);
      break;
    case EstimatorKind::kHardGumbel:
      cuda::launch(estimator_backward_kernel<T, EstimatorKind::kHardGumbel>, blocks,
                   kEstimatorThreads, stream, p, alpha, w, saved, gw, galpha, accumulate);
      break;
    case EstimatorKind::kEgs:
      cuda::launch(estimator_backward_kernel<T, EstimatorKind::kEgs>, blocks, kEstimatorThreads,
                   stream, p, alpha, w, saved, gw, galpha, accumulate);
      break;
  }
}

}  // namespace datanas::cuda
