// datanas/ops/batchnorm.hpp - 2d batch normalisation (Ioffe & Szegedy 2015), affine or not.
#pragma once

#include <type_traits>

#include "datanas/autograd/variable.hpp"
#include "datanas/ops/cpu/batchnorm.hpp"

namespace datanas {

/// Batch normalisation over (N, H, W) per channel, as torch.nn.functional.batch_norm.
/// x: [N, C, H, W]. gamma, beta: [C], or both undefined Vars (non-affine BN, as in DARTS search
/// cells). running_mean, running_var: [C], updated in place in training mode; both may be
/// undefined tensors in training mode (no running statistics are tracked then).
///   y = gamma * (x - mean) / sqrt(var + eps) + beta
/// Training: mean and the biased variance of the batch; the running statistics become
///   running = (1 - momentum) * running + momentum * batch,
/// where the running variance takes the unbiased batch variance var * M / (M - 1),
/// M = N * H * W (exactly torch.nn.BatchNorm2d). Needs M > 1. The update happens under
/// NoGradGuard too, as in torch.
/// Evaluation: mean = running_mean, var = running_var, no update; y is affine in x.
/// Backward: the full gradient through the batch statistics in training, the affine map in
/// evaluation; gamma and beta get sum(dy * xhat) and sum(dy) when they require grad. Memory: a
/// non-affine BN keeps its output (which is xhat) for backward, an affine one its input.
template <class T, class D>
Var<T, D> batch_norm2d(const Var<T, D>& x, const Var<T, D>& gamma, const Var<T, D>& beta,
                       const Tensor<T, D>& running_mean, const Tensor<T, D>& running_var,
                       bool training, std::type_identity_t<T> momentum = T(0.1),
                       std::type_identity_t<T> eps = T(1e-5)) {
  DATANAS_CHECK(x.defined() && x.value().defined(),
                "batch_norm2d: x is undefined or a symbolic zero");
  const Shape& s = x.shape();
  DATANAS_CHECK(s.rank() == 4, "batch_norm2d: x must be [N, C, H, W], got ", s.str());
  const index_t c = s.c();
  DATANAS_CHECK(gamma.defined() == beta.defined(),
                "batch_norm2d: give both gamma and beta or neither, got gamma ",
                gamma.defined() ? gamma.shape().str() : "undefined", " and beta ",
                beta.defined() ? beta.shape().str() : "undefined");
  if (gamma.defined()) {
    DATANAS_CHECK(gamma.shape() == Shape{c} && beta.shape() == Shape{c},
                  "batch_norm2d: gamma and beta must be [", c, "] for x ", s.str(), ", got ",
                  gamma.shape().str(), " and ", beta.shape().str());
    DATANAS_CHECK(gamma.value().defined() && beta.value().defined(),
                  "batch_norm2d: gamma and beta must have storage");
  }
  const bool track = running_mean.defined() || running_var.defined();
  DATANAS_CHECK(track || training,
                "batch_norm2d: evaluation mode needs running_mean and running_var [", c, "] for x ",
                s.str());
  if (track)
    DATANAS_CHECK(running_mean.shape() == Shape{c} && running_var.shape() == Shape{c} &&
                      running_mean.defined() && running_var.defined(),
                  "batch_norm2d: running_mean and running_var must be [", c, "] for x ", s.str(),
                  ", got ", running_mean.shape().str(), " and ", running_var.shape().str());
  DATANAS_CHECK(!training || s.n() * s.h() * s.w() > 1,
                "batch_norm2d: training needs more than one value per channel, got x ", s.str());

  Var<T, D> y(Tensor<T, D>::empty(s));
  Tensor<T, D> saved = Tensor<T, D>::empty({2, c});  // per channel: mean, 1 / sqrt(var + eps)
  const T* gp = gamma.defined() ? gamma.value().data() : nullptr;
  const T* bp = beta.defined() ? beta.value().data() : nullptr;
  T* rm = track ? running_mean.data() : nullptr;
  T* rv = track ? running_var.data() : nullptr;
  if constexpr (is_cpu<D>)
    cpu::batchnorm_forward(x.value(), gp, bp, rm, rv, training, momentum, eps, y.value(), saved);
  else
    DeviceOps<D>::batchnorm_forward(x.value(), gp, bp, rm, rv, training, T(momentum), T(eps),
                                    y.value(), saved);
  if (needs_grad(x, gamma, beta)) {
    // Non-affine, y is xhat itself: backward reads y and x's value is freed when the forward
    // drops it (in a DARTS search cell x is a convolution or pooling output that no other
    // backward reads, so each such BN holds one tensor instead of two). Affine: it reads x.
    const bool from_output = !gamma.defined();
    record(y, [x = GradRef(x), gamma, beta, y = GradRef(y), src = from_output ? y : x, saved,
               training, from_output] {
      T *dx = nullptr, *dg = nullptr, *db = nullptr;
      bool dx_acc = false, dg_acc = false, db_acc = false;
      // Slots are taken before the kernel: grad_slot may allocate, the kernel must not.
      Tensor<T, D> gx, gg, gb;
      if (x.requires_grad()) {
        auto slot = x.grad_slot();
        gx = slot.g, dx = gx.data(), dx_acc = slot.accumulate;
      }
      if (gamma.requires_grad()) {
        auto slot = gamma.grad_slot();
        gg = slot.g, dg = gg.data(), dg_acc = slot.accumulate;
      }
      if (beta.requires_grad()) {
        auto slot = beta.grad_slot();
        gb = slot.g, db = gb.data(), db_acc = slot.accumulate;
      }
      const T* g = gamma.defined() ? gamma.value().data() : nullptr;
      if constexpr (is_cpu<D>)
        cpu::batchnorm_backward(src.value(), from_output, g, saved, y.out_grad(), training, dx,
                                dx_acc, dg, dg_acc, db, db_acc);
      else
        DeviceOps<D>::batchnorm_backward(src.value(), from_output, g, saved, y.out_grad(),
                                         training, dx, dx_acc, dg, dg_acc, db, db_acc);
    });
  }
  return y;
}

}  // namespace datanas
