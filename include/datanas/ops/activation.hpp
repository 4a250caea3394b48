// datanas/ops/activation.hpp - relu, tanh, sigmoid, identity (pointwise, any shape).
#pragma once

#include <cmath>

#include "datanas/autograd/variable.hpp"
#include "datanas/ops/cpu/common.hpp"

namespace datanas {

namespace cpu {
/// The pointwise activations; the values are also the device kernels' kind codes.
enum class Activation { kRelu = 0, kTanh = 1, kSigmoid = 2 };

template <class T>
void activation_forward(Activation a, const Tensor<T, Cpu>& x, const Tensor<T, Cpu>& y) {
  const T* xp = x.data();
  T* yp = y.data();
  elementwise(x.numel(), [&](index_t b, index_t e) {
    ConstArrayMap<T> xv(xp + b, e - b);
    ArrayMap<T> yv(yp + b, e - b);
    switch (a) {
      case Activation::kRelu: yv = xv.max(T(0)); break;
      case Activation::kTanh: yv = xv.tanh(); break;
      case Activation::kSigmoid: yv = T(1) / (T(1) + (-xv).exp()); break;
    }
  });
}

/// dx (+)= dy * f'(x), with f' written in terms of the output y (no need to keep x).
template <class T>
void activation_backward(Activation a, const Tensor<T, Cpu>& y, const Tensor<T, Cpu>& dy,
                         const Tensor<T, Cpu>& dx, bool accumulate) {
  const T *yp = y.data(), *gp = dy.data();
  T* dp = dx.data();
  elementwise(y.numel(), [&](index_t b, index_t e) {
    ConstArrayMap<T> yv(yp + b, e - b), gv(gp + b, e - b);
    ArrayMap<T> dv(dp + b, e - b);
    switch (a) {
      case Activation::kRelu: store(dv, (yv > T(0)).select(gv, T(0)), accumulate); break;
      case Activation::kTanh: store(dv, gv * (T(1) - yv.square()), accumulate); break;
      case Activation::kSigmoid: store(dv, gv * yv * (T(1) - yv), accumulate); break;
    }
  });
}
}  // namespace cpu

namespace detail {
template <class T, class D>
Var<T, D> activation(cpu::Activation a, const Var<T, D>& x) {
  Var<T, D> y(Tensor<T, D>::empty(x.shape()));
  if constexpr (is_cpu<D>)
    cpu::activation_forward(a, x.value(), y.value());
  else
    DeviceOps<D>::activation_forward(int(a), x.value(), y.value());
  if (needs_grad(x))
    record(y, [a, x = GradRef(x), y] {  // f' from y: x's value is not kept
      auto [g, acc] = x.grad_slot();
      if constexpr (is_cpu<D>)
        cpu::activation_backward(a, y.value(), y.out_grad(), g, acc);
      else
        DeviceOps<D>::activation_backward(int(a), y.value(), y.out_grad(), g, acc);
    });
  return y;
}
}  // namespace detail

/// max(x, 0). The gradient at exactly 0 is 0 (PyTorch's convention).
template <class T, class D>
Var<T, D> relu(const Var<T, D>& x) { return detail::activation(cpu::Activation::kRelu, x); }
template <class T, class D>
Var<T, D> tanh(const Var<T, D>& x) { return detail::activation(cpu::Activation::kTanh, x); }
/// 1 / (1 + exp(-x)).
template <class T, class D>
Var<T, D> sigmoid(const Var<T, D>& x) { return detail::activation(cpu::Activation::kSigmoid, x); }
/// x itself: the same node, no copy and no tape entry.
template <class T, class D>
Var<T, D> identity(const Var<T, D>& x) { return x; }

}  // namespace datanas
