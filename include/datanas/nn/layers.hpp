// datanas/nn/layers.hpp - Conv2d, BatchNorm2d and Linear modules over the functional ops.
#pragma once

#include <cmath>

#include "datanas/nn/module.hpp"
#include "datanas/ops/batchnorm.hpp"
#include "datanas/ops/conv.hpp"
#include "datanas/ops/linear.hpp"

namespace datanas::nn {

/// 2-d convolution, weight [Cout, Cin/groups, k, k]; torch's default init (kaiming-uniform
/// with a = sqrt(5), i.e. U(+-1/sqrt(fan_in)), for weight and bias).
template <class T, class D = Cpu>
class Conv2d : public Module<T, D> {
 public:
  Conv2d(index_t cin, index_t cout, int kernel, Conv2dParams p, bool bias, PhiloxGenerator& gen)
      : params_(p) {
    DATANAS_CHECK(p.groups >= 1 && cin % p.groups == 0 && cout % p.groups == 0, "Conv2d: ", cin,
                  " -> ", cout, " channels cannot be split into ", p.groups, " groups");
    const double bound = 1.0 / std::sqrt(double(cin / p.groups * kernel * kernel));
    weight_ = uniform_parameter<T, D>({cout, cin / p.groups, kernel, kernel}, bound, gen);
    this->register_parameter("weight", weight_);
    if (bias) {
      bias_ = uniform_parameter<T, D>({cout}, bound, gen);
      this->register_parameter("bias", bias_);
    }
  }
  Var<T, D> operator()(const Var<T, D>& x) const { return conv2d(x, weight_, bias_, params_); }
  [[nodiscard]] const Var<T, D>& weight() const { return weight_; }
  [[nodiscard]] const Var<T, D>& bias() const { return bias_; }  ///< undefined without bias
  [[nodiscard]] const Conv2dParams& params() const { return params_; }

 private:
  Conv2dParams params_;
  Var<T, D> weight_, bias_;
};

/// second(first(x)) for two bias-free Conv2d layers, first's output recomputed in backward
/// instead of kept until then (conv2d_pair: the same values and gradients, one tensor less held
/// between forward and backward).
template <class T, class D>
Var<T, D> conv_pair(const Conv2d<T, D>& first, const Conv2d<T, D>& second, const Var<T, D>& x) {
  DATANAS_CHECK(!first.bias().defined() && !second.bias().defined(), "conv_pair: both convolutions must be bias-free");
  return conv2d_pair(x, first.weight(), first.params(), second.weight(), second.params());
}
/// second(first(relu(x))) without keeping relu(x) either (relu_conv2d_pair).
template <class T, class D>
Var<T, D> relu_conv_pair(const Conv2d<T, D>& first, const Conv2d<T, D>& second, const Var<T, D>& x) {
  DATANAS_CHECK(!first.bias().defined() && !second.bias().defined(),
                "relu_conv_pair: both convolutions must be bias-free");
  return relu_conv2d_pair(x, first.weight(), first.params(), second.weight(), second.params());
}

/// conv(relu(x)) for a bias-free Conv2d layer without keeping relu(x) (relu_conv2d).
template <class T, class D>
Var<T, D> relu_conv(const Conv2d<T, D>& conv, const Var<T, D>& x) {
  DATANAS_CHECK(!conv.bias().defined(), "relu_conv: the convolution must be bias-free");
  return relu_conv2d(x, conv.weight(), conv.params());
}

/// Batch norm over [N, C, H, W]: affine (gamma = 1, beta = 0 at init) or not; running
/// statistics (mean 0, var 1 at init) updated in training mode with momentum 0.1, eps 1e-5.
template <class T, class D = Cpu>
class BatchNorm2d : public Module<T, D> {
 public:
  explicit BatchNorm2d(index_t c, bool affine = true, T momentum = T(0.1), T eps = T(1e-5))
      : momentum_(momentum), eps_(eps) {
    if (affine) {
      gamma_ = Var<T, D>(Tensor<T, D>::full({c}, T(1)), true);
      beta_ = Var<T, D>(Tensor<T, D>::zeros({c}), true);
      this->register_parameter("weight", gamma_);
      this->register_parameter("bias", beta_);
    }
    running_mean_ = Tensor<T, D>::zeros({c});
    running_var_ = Tensor<T, D>::full({c}, T(1));
    this->register_buffer("running_mean", running_mean_);
    this->register_buffer("running_var", running_var_);
  }
  /// Forgets the running statistics (mean 0, var 1), e.g. before recomputing them for a child
  /// network that inherited weights from a supernet.
  void reset_running_stats() {
    running_mean_.fill(T(0));
    running_var_.fill(T(1));
  }
  /// Running-average momentum; 1 / k for the k-th batch gives a cumulative average.
  void set_momentum(T m) { momentum_ = m; }
  [[nodiscard]] T momentum() const { return momentum_; }

  Var<T, D> operator()(const Var<T, D>& x) const {
    return batch_norm2d(x, gamma_, beta_, running_mean_, running_var_, this->training(), momentum_, eps_);
  }

 private:
  T momentum_, eps_;
  Var<T, D> gamma_, beta_;
  Tensor<T, D> running_mean_, running_var_;
};

/// Fully connected layer y = x W^T + b, W [out, in]; torch's default init.
template <class T, class D = Cpu>
class Linear : public Module<T, D> {
 public:
  Linear(index_t in, index_t out, bool bias, PhiloxGenerator& gen) {
    const double bound = 1.0 / std::sqrt(double(in));
    weight_ = uniform_parameter<T, D>({out, in}, bound, gen);
    this->register_parameter("weight", weight_);
    if (bias) {
      bias_ = uniform_parameter<T, D>({out}, bound, gen);
      this->register_parameter("bias", bias_);
    }
  }
  Var<T, D> operator()(const Var<T, D>& x) const { return linear(x, weight_, bias_); }

 private:
  Var<T, D> weight_, bias_;
};

}  // namespace datanas::nn
