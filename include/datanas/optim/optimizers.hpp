// datanas/optim/optimizers.hpp - SGD with momentum and Adam (torch semantics), gradient-norm
// clipping and the cosine learning-rate schedule.
//
// One place performs every parameter update (step()), so a future data-parallel communicator
// can all-reduce gradients just before it. State buffers are allocated on the first step only.
//
// Devices: on the Cpu the updates are Eigen expressions; on Cuda each update is a fused kernel
// (DeviceOps<Cuda>, ops/cuda/optim.hpp; SGD's covers up to 64 parameters a launch, Adam's one)
// performing the same operations in the same order, queued on the current stream (the host
// never waits). The gradient buffers are modified in place on both devices (weight decay is
// added into them), and the state tensors live on the parameters' device.
#pragma once

#include <cmath>
#include <numbers>
#include <span>
#include <vector>

#include "datanas/autograd/variable.hpp"
#include "datanas/ops/cpu/common.hpp"

namespace datanas::optim {

/// SGD as torch.optim.SGD: g = grad + wd * w; buf = momentum * buf + g (buf = g on the first
/// step); w -= lr * buf. Parameters without a gradient are skipped.
template <class T, class D = Cpu>
class SGD {
 public:
  SGD(std::vector<Var<T, D>> params, double lr, double momentum = 0.0, double weight_decay = 0.0)
      : params_(std::move(params)), lr_(lr), momentum_(momentum), wd_(weight_decay) {
    DATANAS_CHECK(lr >= 0 && momentum >= 0 && weight_decay >= 0,
                  "SGD: lr, momentum and weight decay must be >= 0");
    buf_.resize(params_.size());
  }
  void step() {
    NoGradGuard ng;
    if constexpr (is_cpu<D>) {
      for (std::size_t i = 0; i < params_.size(); ++i) {
        const Var<T, D>& p = params_[i];
        if (!p.has_grad()) continue;
        auto w = p.value().eigen();
        auto g = p.grad().eigen();
        if (wd_ != 0) g += T(wd_) * w;  // the gradient buffer is ours until the next zero_grad
        if (momentum_ != 0) {
          if (!buf_[i].defined()) {
            buf_[i] = p.grad().clone();
          } else {
            buf_[i].eigen() = T(momentum_) * buf_[i].eigen() + g;
          }
          w -= T(lr_) * buf_[i].eigen();
        } else {
          w -= T(lr_) * g;
        }
      }
    } else {
      // The same update per element, many parameters per launch (a supernet has over a
      // thousand weight tensors).
      typename DeviceOps<D>::template SgdBatch<T> batch(T(lr_), T(momentum_), wd_ != 0, T(wd_));
      for (std::size_t i = 0; i < params_.size(); ++i) {
        const Var<T, D>& p = params_[i];
        if (!p.has_grad()) continue;
        const bool first = momentum_ != 0 && !buf_[i].defined();
        if (first) buf_[i] = Tensor<T, D>::empty(p.grad().shape());
        batch.add(p.value(), p.grad(), momentum_ != 0 ? buf_[i] : Tensor<T, D>(), first);
      }
      batch.launch();
    }
  }
  void zero_grad() {
    for (auto& p : params_) p.zero_grad();
  }
  void set_lr(double lr) { lr_ = lr; }
  [[nodiscard]] double lr() const { return lr_; }
  [[nodiscard]] double momentum() const { return momentum_; }
  [[nodiscard]] const std::vector<Var<T, D>>& params() const { return params_; }
  /// Momentum buffers (undefined before the first step), for checkpoints and unrolled steps.
  [[nodiscard]] std::vector<Tensor<T, D>>& momentum_buffers() { return buf_; }

 private:
  std::vector<Var<T, D>> params_;
  std::vector<Tensor<T, D>> buf_;
  double lr_, momentum_, wd_;
};

/// Adam as torch.optim.Adam (L2 weight decay added to the gradient, bias-corrected moments).
template <class T, class D = Cpu>
class Adam {
 public:
  Adam(std::vector<Var<T, D>> params, double lr, double beta1 = 0.9, double beta2 = 0.999,
       double weight_decay = 0.0, double eps = 1e-8)
      : params_(std::move(params)), lr_(lr), b1_(beta1), b2_(beta2), wd_(weight_decay), eps_(eps) {
    DATANAS_CHECK(beta1 >= 0 && beta1 < 1 && beta2 >= 0 && beta2 < 1,
                  "Adam: betas must be in [0, 1), got (", beta1, ", ", beta2, ")");
    m_.resize(params_.size());
    v_.resize(params_.size());
  }
  void step() {
    NoGradGuard ng;
    double c1 = 0, c2 = 0;
    // Device: the step's two scalars {lr / c1, c2}, computed on the host now, or, inside a
    // captured step (StepGraph), before each replay, which is also when t advances then.
    T scalars[2] = {};
    const T* per_step = nullptr;
    if constexpr (is_cpu<D>) {
      ++t_;
      c1 = 1 - std::pow(b1_, double(t_));
      c2 = 1 - std::pow(b2_, double(t_));
    } else {
      per_step = DeviceOps<D>::step_values(scalars, 2, [this](T* s) {
        ++t_;
        const double b1t = 1 - std::pow(b1_, double(t_)), b2t = 1 - std::pow(b2_, double(t_));
        s[0] = T(lr_ / b1t);
        s[1] = T(b2t);
      });
    }
    for (std::size_t i = 0; i < params_.size(); ++i) {
      const Var<T, D>& p = params_[i];
      if (!p.has_grad()) continue;
      if (!m_[i].defined()) {
        m_[i] = Tensor<T, D>::zeros(p.shape());
        v_[i] = Tensor<T, D>::zeros(p.shape());
      }
      if constexpr (is_cpu<D>) {
        auto w = p.value().eigen();
        auto g = p.grad().eigen();
        if (wd_ != 0) g += T(wd_) * w;
        auto m = m_[i].eigen();
        auto v = v_[i].eigen();
        m = T(b1_) * m + T(1 - b1_) * g;
        v = T(b2_) * v + T(1 - b2_) * g.square();
        w -= T(lr_ / c1) * m / ((v / T(c2)).sqrt() + T(eps_));
      } else {
        // The CPU's scalars, rounded to T as there.
        DeviceOps<D>::adam_step(p.value(), p.grad(), m_[i], v_[i],
                                {T(b1_), T(1 - b1_), T(b2_), T(1 - b2_), wd_ != 0, T(wd_), scalars[0],
                                 scalars[1], T(eps_), per_step});
      }
    }
  }
  void zero_grad() {
    for (auto& p : params_) p.zero_grad();
  }
  void set_lr(double lr) { lr_ = lr; }
  [[nodiscard]] double lr() const { return lr_; }
  [[nodiscard]] long step_count() const { return t_; }
  void set_step_count(long t) { t_ = t; }
  [[nodiscard]] const std::vector<Var<T, D>>& params() const { return params_; }
  /// First and second moment estimates (undefined before a parameter's first step).
  [[nodiscard]] std::vector<Tensor<T, D>>& exp_avg() { return m_; }
  [[nodiscard]] std::vector<Tensor<T, D>>& exp_avg_sq() { return v_; }

 private:
  std::vector<Var<T, D>> params_;
  std::vector<Tensor<T, D>> m_, v_;
  double lr_, b1_, b2_, wd_, eps_;
  long t_ = 0;
};

/// Scales all gradients so that their joint L2 norm is at most max_norm (torch's
/// clip_grad_norm_); returns the norm before clipping. Parameters without a gradient are skipped.
/// This is the Cpu overload; the Cuda one below returns the norm as a device tensor.
template <class T, class D>
  requires is_cpu<D>
double clip_grad_norm(std::span<const Var<T, D>> params, double max_norm) {
  double sq = 0;
  for (const auto& p : params)
    if (p.has_grad()) sq += double(p.grad().eigen().square().sum());
  const double norm = std::sqrt(sq);
  const double coef = max_norm / (norm + 1e-6);
  if (coef < 1)
    for (const auto& p : params)
      if (p.has_grad()) p.grad().eigen() *= T(coef);
  return norm;
}

/// clip_grad_norm on a device: the same clipping (coef = max_norm / (norm + 1e-6), gradients
/// scaled by it when it is < 1), computed without synchronising the host: the norm (a
/// deterministic two-pass reduction, squares added in double) and the coefficient stay on the
/// device, and the scaling kernel reads the coefficient from there. Returns the norm before
/// clipping as a tensor [1] on the device; cuda::to_host it only where it is logged (that waits
/// for the stream). A caller generic over D can ignore the result, or write
///   auto norm = optim::clip_grad_norm<T, D>(params, max_norm);  // double on Cpu, Tensor on Cuda
template <class T, class D>
  requires(!is_cpu<D>)
Tensor<T, D> clip_grad_norm(std::span<const Var<T, D>> params, double max_norm) {
  thread_local std::vector<Tensor<T, D>> grads;  // reused: no host allocation per step after the first
  grads.clear();
  for (const auto& p : params)
    if (p.has_grad()) grads.push_back(p.grad());
  Tensor<T, D> norm = DeviceOps<D>::clip_grad_norm(std::span<const Tensor<T, D>>(grads), max_norm);
  grads.clear();  // the handles only; the capacity stays
  return norm;
}

/// Cosine annealing (torch CosineAnnealingLR stepped per epoch):
/// lr_e = lr_min + (lr_max - lr_min) * (1 + cos(pi * e / total)) / 2.
inline double cosine_lr(double lr_max, double lr_min, long epoch, long total) {
  return lr_min + (lr_max - lr_min) * (1 + std::cos(std::numbers::pi * double(epoch) / double(total))) / 2;
}

}  // namespace datanas::optim
