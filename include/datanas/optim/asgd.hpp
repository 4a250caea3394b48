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
// operations; eta and mu stay host scalars (they depend on the step count and the lr only),
// computed before each replay when the step is captured (StepGraph), as Adam's corrections.
#pragma once

#include <algorithm>
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
  /// One step. The averages are created by the first step: run it eagerly before capturing one.
  void step() {
    NoGradGuard ng;
    // This step's {1 - lambd eta, eta, mu, mu != 1}: on the host now, or on a device inside a
    // captured step, before each replay (the step count advances then).
    T s[4] = {};
    const T* per_step = nullptr;
    if constexpr (is_cpu<D>)
      advance(s);
    else
      per_step = DeviceOps<D>::step_values(s, 4, [this](T* out) { advance(out); });
    for (std::size_t i = 0; i < params_.size(); ++i) {
      const Var<T, D>& p = params_[i];
      if (!ax_[i].defined()) ax_[i] = p.value().clone();
      if (!p.has_grad()) continue;  // torch skips the whole update, average included
      if constexpr (is_cpu<D>) {
        auto w = p.value().eigen();
        auto g = p.grad().eigen();
        if (wd_ != 0) g += T(wd_) * w;
        if (lambd_ != 0) w *= s[0];
        w -= s[1] * g;
        if (s[3] != T(0))
          ax_[i].eigen() += s[2] * (w - ax_[i].eigen());
        else
          ax_[i].copy_from(p.value());
      } else {
        // One fused kernel, the same operations (and the CPU's scalars rounded to T).
        DeviceOps<D>::asgd_step(p.value(), p.grad(), ax_[i],
                                {wd_ != 0, T(wd_), lambd_ != 0, s[0], s[1], s[3] != T(0), s[2], per_step});
      }
    }
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
  /// Counts the step and writes its scalars {1 - lambd eta, eta, mu, mu != 1 ? 1 : 0} rounded to
  /// T; then computes the next step's eta and mu (from this step's lr: torch's lag).
  void advance(T* s) {
    if (step_ == 0) eta_ = lr_;
    ++step_;
    s[0] = T(1 - lambd_ * eta_);
    s[1] = T(eta_);
    s[2] = T(mu_);
    s[3] = mu_ != 1 ? T(1) : T(0);
    eta_ = lr_ / std::pow(1 + lambd_ * lr_ * double(step_), alpha_);
    mu_ = 1 / std::max(1.0, double(step_) - t0_);
  }

  std::vector<Var<T, D>> params_;
  std::vector<Tensor<T, D>> ax_;
  double lr_, lambd_, alpha_, t0_, wd_;
  long step_ = 0;
  double eta_ = 0, mu_ = 1;
};

}  // namespace datanas::optim
