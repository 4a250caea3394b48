// datanas/ops/cpu/batchnorm.hpp - CPU kernels of 2d batch normalisation (NCHW, per channel).
//
// One parallel loop over channels does everything for a channel while its N planes are still in
// cache: the statistics, the running-average update and the output. Statistics use one pass with
// a shift (the mean of the channel's first plane), which keeps the E[d^2] - E[d]^2 form from
// cancelling; plane sums run vectorised in T and are accumulated across planes in double.
#pragma once

#include <algorithm>
#include <cmath>

#include "datanas/ops/cpu/common.hpp"

namespace datanas::cpu {

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
  parallel_for(c, m, [&](index_t ch) {
    const T* xc = xp + ch * hw;
    T* yc = yp + ch * hw;
    double mean, var;
    if (training) {
      const T shift = ConstArrayMap<T>(xc, hw).mean();
      double s1 = 0, s2 = 0;
      for (index_t i = 0; i < n; ++i) {
        const auto d = ConstArrayMap<T>(xc + i * plane_stride, hw) - shift;
        s1 += double(d.sum());
        s2 += double(d.square().sum());
      }
      const double md = s1 / double(m);
      mean = double(shift) + md;
      var = std::max(0.0, s2 / double(m) - md * md);
      if (running_mean) {
        running_mean[ch] = T((1 - double(momentum)) * running_mean[ch] + double(momentum) * mean);
        running_var[ch] = T((1 - double(momentum)) * running_var[ch] +
                            double(momentum) * var * double(m) / double(m - 1));
      }
    } else {
      mean = double(running_mean[ch]);
      var = double(running_var[ch]);
    }
    const double invstd = 1.0 / std::sqrt(var + double(eps));
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
