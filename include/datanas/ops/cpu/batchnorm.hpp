// datanas/ops/cpu/batchnorm.hpp - CPU kernels of 2d batch normalisation (NCHW, per channel).
//
// One parallel loop over channels does everything for a channel while its N planes are still in
// cache: the statistics, the running-average update and the output. Statistics use one pass with
// a shift (the mean of the channel's first plane), which keeps the E[d^2] - E[d]^2 form from
// cancelling; plane sums run vectorised in T and are accumulated across planes in double.
//
// Planes of one element (x [N, C, 1, 1]: BatchNorm1d's [N, C], the RNN search cell's states)
// take a path of their own, bn_rows: there a channel's N values lie C apart, and the plane loop
// read them one Eigen map of one element at a time (7.6% of a PTB search step at 300 units, batch
// 256, in a profile). bn_rows reads whole rows over a block of channels, vectorised across the
// channels, with the same arithmetic per element (differences in T, sums in double).
#pragma once

#include <algorithm>
#include <cmath>
#include <utility>

#include "datanas/ops/cpu/common.hpp"

namespace datanas::cpu {

namespace bn_detail {

/// A channel's mean and 1 / sqrt(var + eps). Training: from the sums s1 = sum(x - shift) and s2 =
/// sum((x - shift)^2) over its m values, updating the running statistics when given (momentum;
/// the unbiased variance, torch.nn.BatchNorm2d). Evaluation: from the running statistics.
template <class T>
std::pair<double, double> channel_stats(bool training, double shift, double s1, double s2, double m,
                                        T* running_mean, T* running_var, index_t ch, T momentum,
                                        T eps) {
  double mean, var;
  if (training) {
    const double md = s1 / m;
    mean = shift + md;
    var = std::max(0.0, s2 / m - md * md);
    if (running_mean) {
      running_mean[ch] = T((1 - double(momentum)) * running_mean[ch] + double(momentum) * mean);
      running_var[ch] =
          T((1 - double(momentum)) * running_var[ch] + double(momentum) * var * m / (m - 1));
    }
  } else {
    mean = double(running_mean[ch]);
    var = double(running_var[ch]);
  }
  return {mean, 1.0 / std::sqrt(var + double(eps))};
}

}  // namespace bn_detail

namespace bn_rows {

/// Channels per block: the block's sums (2 x 256 doubles) and constants stay in L1 while the
/// rows stream past.
inline constexpr index_t kBlock = 256;

/// Splits C channels into blocks of at most kBlock, a multiple of 16 (whole cache lines of
/// floats), and into at least one block per thread where C allows, so that both threads of a
/// 300-channel state get work. f(c0, c1) per block, in parallel when worth it (cost: n per
/// channel).
template <class F>
void for_blocks(index_t c, index_t n, F&& f) {
  if (c == 0) return;
  index_t blocks = (c + kBlock - 1) / kBlock;
  blocks = std::max(blocks, std::min<index_t>(num_threads(), (c + 15) / 16));
  const index_t width = ((c + blocks - 1) / blocks + 15) / 16 * 16;
  parallel_for((c + width - 1) / width, width * n,
               [&](index_t b) { f(b * width, std::min(c, (b + 1) * width)); });
}

/// batchnorm_forward for x [N, C] (row-major; planes of one element).
template <class T>
void forward(const T* xp, index_t n, index_t c, const T* gamma, const T* beta, T* running_mean,
             T* running_var, bool training, T momentum, T eps, T* yp, T* mean_out, T* invstd_out) {
  for_blocks(c, n, [&](index_t c0, index_t c1) {
    const index_t w = c1 - c0;
    double s1[kBlock], s2[kBlock];
    T av[kBlock], mv[kBlock], bv[kBlock];
    std::fill_n(s1, w, 0.0);
    std::fill_n(s2, w, 0.0);
    if (training) {
      // The shift is each channel's first value (the plane loop's mean of the first plane).
      const T* shift = xp + c0;
      for (index_t i = 0; i < n; ++i) {
        const T* xr = xp + i * c + c0;
        for (index_t j = 0; j < w; ++j) {
          const T d = xr[j] - shift[j];
          s1[j] += double(d);
          s2[j] += double(d * d);
        }
      }
    }
    for (index_t j = 0; j < w; ++j) {
      const index_t ch = c0 + j;
      const auto [mean, invstd] =
          bn_detail::channel_stats(training, training ? double(xp[ch]) : 0.0, s1[j], s2[j],
                                   double(n), running_mean, running_var, ch, momentum, eps);
      mean_out[ch] = T(mean);
      invstd_out[ch] = T(invstd);
      av[j] = T((gamma ? double(gamma[ch]) : 1.0) * invstd);
      mv[j] = T(mean);
      bv[j] = beta ? beta[ch] : T(0);
    }
    for (index_t i = n; i-- > 0;) {  // last rows first: the statistics pass left them in cache
      const T* xr = xp + i * c + c0;
      T* yr = yp + i * c + c0;
      for (index_t j = 0; j < w; ++j) yr[j] = (xr[j] - mv[j]) * av[j] + bv[j];
    }
  });
}

/// batchnorm_backward for x, dy [N, C] (planes of one element); the same formulas and flags.
template <class T>
void backward(const T* xp, index_t n, index_t c, bool x_is_xhat, const T* gamma, const T* mean_in,
              const T* invstd_in, const T* gp, bool training, T* dx, bool dx_acc, T* dgamma,
              bool dgamma_acc, T* dbeta, bool dbeta_acc) {
  const bool need_sums = training || dgamma || dbeta;
  for_blocks(c, n, [&](index_t c0, index_t c1) {
    const index_t w = c1 - c0;
    double sum_dy[kBlock], sum_dy_xc[kBlock];  // sum(dy), sum(dy * (x - mean))
    T mean[kBlock], av[kBlock], bv[kBlock], cv[kBlock];
    for (index_t j = 0; j < w; ++j) mean[j] = x_is_xhat ? T(0) : mean_in[c0 + j];
    std::fill_n(sum_dy, w, 0.0);
    std::fill_n(sum_dy_xc, w, 0.0);
    if (need_sums)
      for (index_t i = 0; i < n; ++i) {
        const T* xr = xp + i * c + c0;
        const T* gr = gp + i * c + c0;
        for (index_t j = 0; j < w; ++j) {
          sum_dy[j] += double(gr[j]);
          sum_dy_xc[j] += double(gr[j] * (xr[j] - mean[j]));
        }
      }
    const double m = double(n);
    for (index_t j = 0; j < w; ++j) {
      const index_t ch = c0 + j;
      const double invstd = double(invstd_in[ch]);
      const double to_xhat = x_is_xhat ? 1.0 : invstd;
      if (dgamma) dgamma[ch] = T((dgamma_acc ? double(dgamma[ch]) : 0.0) + sum_dy_xc[j] * to_xhat);
      if (dbeta) dbeta[ch] = T((dbeta_acc ? double(dbeta[ch]) : 0.0) + sum_dy[j]);
      const double a = (gamma ? double(gamma[ch]) : 1.0) * invstd;
      av[j] = T(a);
      bv[j] = T(-a * to_xhat * to_xhat * sum_dy_xc[j] / m);
      cv[j] = T(-a * sum_dy[j] / m);
    }
    if (!dx) return;
    for (index_t i = n; i-- > 0;) {  // last rows first, as in the forward
      const T* xr = xp + i * c + c0;
      const T* gr = gp + i * c + c0;
      T* dr = dx + i * c + c0;
      if (training) {
        if (dx_acc)
          for (index_t j = 0; j < w; ++j)
            dr[j] += av[j] * gr[j] + bv[j] * (xr[j] - mean[j]) + cv[j];
        else
          for (index_t j = 0; j < w; ++j) dr[j] = av[j] * gr[j] + bv[j] * (xr[j] - mean[j]) + cv[j];
      } else {
        if (dx_acc)
          for (index_t j = 0; j < w; ++j) dr[j] += av[j] * gr[j];
        else
          for (index_t j = 0; j < w; ++j) dr[j] = av[j] * gr[j];
      }
    }
  });
}

}  // namespace bn_rows

/// Forward of batch norm on x [N, C, H, W] into y (same shape).
/// training: mean_c and biased var_c over (N, H, W); when running_mean/running_var are not null
///   they become (1 - momentum) * running + momentum * batch, with the unbiased variance
///   var_c * M / (M - 1), M = N * H * W (torch.nn.BatchNorm2d).
/// eval: mean_c = running_mean[c], var_c = running_var[c]; nothing is updated.
/// y = gamma_c * (x - mean_c) / sqrt(var_c + eps) + beta_c; null gamma / beta mean 1 / 0.
/// saved [2, C] receives (mean_c, 1 / sqrt(var_c + eps)) for the backward pass.
template <class T>
void batchnorm_forward(const Tensor<T, Cpu>& x, const T* gamma, const T* beta, T* running_mean,
                       T* running_var, bool training, T momentum, T eps, const Tensor<T, Cpu>& y,
                       const Tensor<T, Cpu>& saved) {
  const index_t n = x.dim(0), c = x.dim(1), hw = x.dim(2) * x.dim(3), m = n * hw;
  const index_t plane_stride = c * hw;
  const T* xp = x.data();
  T* yp = y.data();
  T* mean_out = saved.data();
  T* invstd_out = saved.data() + c;
  if (hw == 1)
    return bn_rows::forward(xp, n, c, gamma, beta, running_mean, running_var, training, momentum,
                            eps, yp, mean_out, invstd_out);
  parallel_for(c, m, [&](index_t ch) {
    const T* xc = xp + ch * hw;
    T* yc = yp + ch * hw;
    double shift = 0, s1 = 0, s2 = 0;
    if (training) {
      const T sh = ConstArrayMap<T>(xc, hw).mean();
      shift = double(sh);
      for (index_t i = 0; i < n; ++i) {
        const auto d = ConstArrayMap<T>(xc + i * plane_stride, hw) - sh;
        s1 += double(d.sum());
        s2 += double(d.square().sum());
      }
    }
    const auto [mean, invstd] = bn_detail::channel_stats(
        training, shift, s1, s2, double(m), running_mean, running_var, ch, momentum, eps);
    mean_out[ch] = T(mean);
    invstd_out[ch] = T(invstd);
    // (x - mean) * a + beta rather than torch's x * a + (beta - mean * a): the same speed (the
    // loop is memory bound) without cancellation in T when |mean| >> std.
    const T av = T((gamma ? double(gamma[ch]) : 1.0) * invstd), mv = T(mean);
    const T bv = beta ? beta[ch] : T(0);
    for (index_t i = n; i-- > 0;)  // last planes first: the statistics pass left them in cache
      ArrayMap<T>(yc + i * plane_stride, hw) =
          (ConstArrayMap<T>(xc + i * plane_stride, hw) - mv) * av + bv;
  });
}

/// Backward of batchnorm_forward, given its input x, saved (mean, invstd) and dy; or, with
/// x_is_xhat, given xhat itself in x (the output of a non-affine forward).
/// With xhat = (x - mean) * invstd, per channel over the M = N * H * W elements:
///   dbeta = sum(dy), dgamma = sum(dy * xhat),
///   training: dx = gamma * invstd * (dy - dbeta / M - xhat * dgamma / M)
///   eval:     dx = gamma * invstd * dy.
/// Each of dx, dgamma, dbeta is skipped when its pointer is null; written or added to
/// according to its accumulate flag (the GradSlot convention).
template <class T>
void batchnorm_backward(const Tensor<T, Cpu>& x, bool x_is_xhat, const T* gamma, const Tensor<T, Cpu>& saved,
                        const Tensor<T, Cpu>& dy, bool training, T* dx, bool dx_acc, T* dgamma,
                        bool dgamma_acc, T* dbeta, bool dbeta_acc) {
  const index_t n = x.dim(0), c = x.dim(1), hw = x.dim(2) * x.dim(3), m = n * hw;
  const index_t plane_stride = c * hw;
  const T* xp = x.data();
  const T* gp = dy.data();
  const T* mean_in = saved.data();
  const T* invstd_in = saved.data() + c;
  if (hw == 1)
    return bn_rows::backward(xp, n, c, x_is_xhat, gamma, mean_in, invstd_in, gp, training, dx,
                             dx_acc, dgamma, dgamma_acc, dbeta, dbeta_acc);
  const bool need_sums = training || dgamma || dbeta;
  parallel_for(c, m, [&](index_t ch) {
    const T* xc = xp + ch * hw;
    const T* gc = gp + ch * hw;
    const T mean = x_is_xhat ? T(0) : mean_in[ch];
    const double invstd = double(invstd_in[ch]);
    const double to_xhat = x_is_xhat ? 1.0 : invstd;  // xhat = (x - mean) * to_xhat
    double sum_dy = 0, sum_dy_xc = 0;  // sum(dy), sum(dy * (x - mean))
    if (need_sums) {
      for (index_t i = 0; i < n; ++i) {
        const ConstArrayMap<T> g(gc + i * plane_stride, hw), xv(xc + i * plane_stride, hw);
        sum_dy += double(g.sum());
        sum_dy_xc += double((g * (xv - mean)).sum());
      }
      if (dgamma) dgamma[ch] = T((dgamma_acc ? double(dgamma[ch]) : 0.0) + sum_dy_xc * to_xhat);
      if (dbeta) dbeta[ch] = T((dbeta_acc ? double(dbeta[ch]) : 0.0) + sum_dy);
    }
    if (!dx) return;
    // Training: dx = a * dy + b * (x - mean) + c0, with the per-channel constants folded.
    const double a = (gamma ? double(gamma[ch]) : 1.0) * invstd;
    const double b = -a * to_xhat * to_xhat * sum_dy_xc / double(m);
    const double c0 = -a * sum_dy / double(m);
    const T av = T(a), bv = T(b), cv = T(c0);
    T* dc = dx + ch * hw;
    for (index_t i = n; i-- > 0;) {  // last planes first, as in the forward
      const ConstArrayMap<T> g(gc + i * plane_stride, hw), xv(xc + i * plane_stride, hw);
      ArrayMap<T> d(dc + i * plane_stride, hw);
      if (training)
        store(d, av * g + bv * (xv - mean) + cv, dx_acc);
      else
        store(d, av * g, dx_acc);
    }
  });
}

}  // namespace datanas::cpu
