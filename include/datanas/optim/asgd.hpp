// datanas/optim/asgd.hpp - averaged SGD exactly as torch.optim.ASGD, which the DARTS / AWD-LSTM
// training switches to (t0 = 0, lambd = 0) when the validation loss stops improving.
//
// Per parameter, step n (1-based):
//   g = grad + wd * w
//   w = w * (1 - lambd * eta) - eta * g
//   ax = w if mu == 1 else ax + mu * (w - ax)
//   eta = lr / (1 + lambd * lr * n)^alpha,  mu = 1 / max(1, n - t0)
// where eta and mu start at the learning rate of the first step and 1. Note two torch quirks
// kept on purpose: the eta of a step is computed from the lr of the previous step (DARTS rescales
// the lr per window by seq_len / bptt, so the scale lags one window), and with t0 = 0 the
// average starts at the second iterate (mu is still 1 at step 2). Evaluation uses ax.
//
// On Cuda each parameter's update is one fused kernel (ops/cuda/optim.hpp) with the same
// operations; eta and mu stay host scalars (they depend on the step count only).
#pragma once

#include <cmath>
#include <vector>

#include "datanas/autograd/variable.hpp"

namespace datanas::optim {

template <class T, class D = Cpu>
class ASGD {
 public:
  ASGD(std::vector<Var<T, D>> params, double lr, double lambd = 1e-4, double alpha = 0.75, double t0 = 1e6,
       double weight_decay = 0.0)
      : params_(std::move(params)), lr_(lr), lambd_(lambd), alpha_(alpha), t0_(t0), wd_(weight_decay) {
    DATANAS_CHECK(lr >= 0 && lambd >= 0 && weight_decay >= 0, "ASGD: lr, lambd and weight decay must be >= 0");
    ax_.resize(params_.size());
  }
  void step() {
    NoGradGuard ng;
    if (step_ == 0) eta_ = lr_;
    ++step_;
    for (std::size_t i = 0; i < params_.size(); ++i) {
      const Var<T, D>& p = params_[i];
      if (!ax_[i].defined()) ax_[i] = p.value().clone();
      if (!p.has_grad()) continue;  // torch skips the whole update, average included
      if constexpr (is_cpu<D>) {
        auto w = p.value().eigen();
        auto g = p.grad().eigen();
        if (wd_ != 0) g += T(wd_) * w;
        if (lambd_ != 0) w *= T(1 - lambd_ * eta_);
        w -= T(eta_) * g;
        if (mu_ != 1)
          ax_[i].eigen() += T(mu_) * (w - ax_[i].eigen());
        else
          ax_[i].copy_from(p.value());
      } else {
        // One fused kernel, the same operations (and the CPU's scalars rounded to T).
        DeviceOps<D>::asgd_step(p.value(), p.grad(), ax_[i],
                                {wd_ != 0, T(wd_), lambd_ != 0, T(1 - lambd_ * eta_), T(eta_), mu_ != 1,
                                 T(mu_)});
      }
    }
    eta_ = lr_ / std::pow(1 + lambd_ * lr_ * double(step_), alpha_);
    mu_ = 1 / std::max(1.0, double(step_) - t0_);
  }
  void zero_grad() {
    for (auto& p : params_) p.zero_grad();
  }
  void set_lr(double lr) { lr_ = lr; }
  [[nodiscard]] double lr() const { return lr_; }
  [[nodiscard]] const std::vector<Var<T, D>>& params() const { return params_; }
  /// The averaged parameters (undefined before the first step).
  [[nodiscard]] std::vector<Tensor<T, D>>& averages() { return ax_; }
  [[nodiscard]] long step_count() const { return step_; }
  [[nodiscard]] double eta() const { return eta_; }
  [[nodiscard]] double mu() const { return mu_; }
  /// For checkpoints: the scalar state.
  void set_state(long step, double eta, double mu) {
    step_ = step;
    eta_ = eta;
    mu_ = mu;
  }

 private:
  std::vector<Var<T, D>> params_;
  std::vector<Tensor<T, D>> ax_;
  double lr_, lambd_, alpha_, t0_, wd_;
  long step_ = 0;
  double eta_ = 0, mu_ = 1;
};

}  // namespace datanas::optim
