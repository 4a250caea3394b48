// datanas/ops/loss.hpp - softmax, log-softmax (over the last dimension) and cross-entropy.
#pragma once

#include <algorithm>
#include <cmath>

#include "datanas/autograd/variable.hpp"
#include "datanas/ops/cpu/common.hpp"

namespace datanas {

namespace detail {
/// Rows of a [K] (one row) or [rows, K] input. Plain index_t results rather than a pair: the
/// backward lambdas capture rows and K, and clang < 16 cannot capture structured bindings.
inline index_t rows_of(const Shape& s, const char* op) {
  DATANAS_CHECK(s.rank() == 1 || s.rank() == 2, op, ": input must be [K] or [rows, K], got ",
                s.str());
  return s.rank() == 1 ? index_t(1) : s[0];
}

/// Row-wise log-softmax of x into y (max-shifted, so large logits do not overflow).
template <class T>
void log_softmax_rows(const T* x, T* y, index_t rows, index_t k) {
  cpu::parallel_for(rows, k, [&](index_t r) {
    cpu::ConstArrayMap<T> xv(x + r * k, k);
    const T m = xv.maxCoeff();
    const T lse = m + std::log((xv - m).exp().sum());
    cpu::ArrayMap<T>(y + r * k, k) = xv - lse;
  });
}
}  // namespace detail

/// softmax(x)_i = exp(x_i) / sum_j exp(x_j) over the last dimension. x: [K] or [rows, K].
template <class T, class D>
Var<T, D> softmax(const Var<T, D>& x) {
  const index_t rows = detail::rows_of(x.shape(), "softmax"), k = x.shape()[x.shape().rank() - 1];
  Var<T, D> y(Tensor<T, D>::empty(x.shape()));
  if constexpr (is_cpu<D>) {
    detail::log_softmax_rows(x.value().data(), y.value().data(), rows, k);
    y.value().eigen() = y.value().eigen().exp();
  } else {
    DeviceOps<D>::log_softmax_forward(x.value(), rows, k, true, y.value());
  }
  if (needs_grad(x))
    record(y, [x = GradRef(x), y, rows, k] {  // reads y, not x
      auto slot = x.grad_slot();              // plain variables, not [g, acc]: see GradSlot
      auto& g = slot.g;
      const bool acc = slot.accumulate;
      if constexpr (!is_cpu<D>) {
        DeviceOps<D>::softmax_backward(y.value(), y.out_grad(), rows, k, g, acc);
        return;
      }
      const T *yp = y.value().data(), *dy = y.out_grad().data();
      cpu::parallel_for(rows, k, [&](index_t r) {
        cpu::ConstArrayMap<T> yv(yp + r * k, k), gv(dy + r * k, k);
        const T dot = (yv * gv).sum();  // dx = y * (dy - <dy, y>)
        cpu::store(cpu::ArrayMap<T>(g.data() + r * k, k), yv * (gv - dot), acc);
      });
    });
  return y;
}

/// log softmax(x) over the last dimension. x: [K] or [rows, K].
template <class T, class D>
Var<T, D> log_softmax(const Var<T, D>& x) {
  const index_t rows = detail::rows_of(x.shape(), "log_softmax"),
                k = x.shape()[x.shape().rank() - 1];
  Var<T, D> y(Tensor<T, D>::empty(x.shape()));
  if constexpr (is_cpu<D>)
    detail::log_softmax_rows(x.value().data(), y.value().data(), rows, k);
  else
    DeviceOps<D>::log_softmax_forward(x.value(), rows, k, false, y.value());
  if (needs_grad(x))
    record(y, [x = GradRef(x), y, rows, k] {  // reads y, not x
      auto slot = x.grad_slot();              // plain variables, not [g, acc]: see GradSlot
      auto& g = slot.g;
      const bool acc = slot.accumulate;
      if constexpr (!is_cpu<D>) {
        DeviceOps<D>::log_softmax_backward(y.value(), y.out_grad(), rows, k, g, acc);
        return;
      }
      const T *yp = y.value().data(), *dy = y.out_grad().data();
      cpu::parallel_for(rows, k, [&](index_t r) {
        cpu::ConstArrayMap<T> yv(yp + r * k, k), gv(dy + r * k, k);
        const T s = gv.sum();  // dx = dy - softmax * sum(dy)
        cpu::store(cpu::ArrayMap<T>(g.data() + r * k, k), gv - yv.exp() * s, acc);
      });
    });
  return y;
}

/// Mean cross-entropy -1/N sum_n log softmax(logits_n)[labels_n]. logits: [N, K];
/// labels: int32 [N] with values in [0, K). Returns shape [1].
/// On the Cpu a label outside [0, K) throws. On a device the labels are device memory, which
/// the host cannot read without waiting for the GPU: there a bad label makes the loss (and its
/// row of the gradient) NaN instead, and nothing is read or written out of bounds.
template <class T, class D>
Var<T, D> cross_entropy(const Var<T, D>& logits, const Tensor<std::int32_t, D>& labels) {
  DATANAS_CHECK(logits.shape().rank() == 2, "cross_entropy: logits must be [N, K], got ",
                logits.shape().str());
  const index_t n = logits.shape()[0], k = logits.shape()[1];
  DATANAS_CHECK(labels.shape() == Shape{n}, "cross_entropy: labels must be [", n, "], got ",
                labels.shape().str());
  if constexpr (!is_cpu<D>) {
    // Keep each row's log-sum-exp for backward ([N], not the CPU's [N, K] log-probabilities):
    // dL/dlogits = (exp(logits - lse) - onehot) / N.
    Tensor<T, D> lse = Tensor<T, D>::empty({n});
    Var<T, D> y(Tensor<T, D>::empty({1}));
    DeviceOps<D>::cross_entropy_forward(logits.value(), labels, lse, y.value());
    if (needs_grad(logits))
      record(y, [logits, labels, lse, y = GradRef(y)] {
        auto [g, acc] = logits.grad_slot();
        DeviceOps<D>::cross_entropy_backward(logits.value(), labels, lse, y.out_grad(), g, acc);
      });
    return y;
  }
  const std::int32_t* lp = labels.data();
  for (index_t i = 0; i < n; ++i)
    DATANAS_CHECK(lp[i] >= 0 && lp[i] < k, "cross_entropy: label ", lp[i], " of sample ", i,
                  " is outside [0, ", k, ")");
  // Keep the log-probabilities for backward: dL/dlogits = (softmax - onehot) / N.
  Tensor<T, D> logp = Tensor<T, D>::empty(logits.shape());
  detail::log_softmax_rows(logits.value().data(), logp.data(), n, k);
  T loss = 0;
  for (index_t i = 0; i < n; ++i) loss -= logp.data()[i * k + lp[i]];
  Var<T, D> y(Tensor<T, D>::empty({1}));
  y.value().data()[0] = loss / T(n);
  if (needs_grad(logits))
    record(y, [logits = GradRef(logits), labels, logp, y = GradRef(y), n, k] {  // reads logp
      auto slot = logits.grad_slot();  // plain variables, not [g, acc]: see GradSlot
      auto& g = slot.g;
      const bool acc = slot.accumulate;
      const T scale = y.out_grad().data()[0] / T(n);
      const std::int32_t* lp = labels.data();
      cpu::parallel_for(n, k, [&](index_t i) {
        cpu::ArrayMap<T> gv(g.data() + i * k, k);
        cpu::ConstArrayMap<T> pv(logp.data() + i * k, k);
        cpu::store(gv, pv.exp() * scale, acc);
        gv[lp[i]] -= scale;
      });
    });
  return y;
}

/// The number of rows of logits [N, K] whose first maximum (std::max_element's) is at labels[i],
/// as an int32 tensor [1] on D: an accuracy count that reads 4 bytes from a device instead of
/// the N x K logits. Outside autograd. A label outside [0, K) counts as wrong on every device.
template <class T, class D>
Tensor<std::int32_t, D> count_correct(const Tensor<T, D>& logits, const Tensor<std::int32_t, D>& labels) {
  DATANAS_CHECK(logits.shape().rank() == 2, "count_correct: logits must be [N, K], got ", logits.shape().str());
  const index_t n = logits.shape()[0], k = logits.shape()[1];
  DATANAS_CHECK(labels.shape() == Shape{n}, "count_correct: labels must be [", n, "], got ",
                labels.shape().str());
  Tensor<std::int32_t, D> count = Tensor<std::int32_t, D>::empty({1});
  if constexpr (!is_cpu<D>) {
    DeviceOps<D>::count_correct(logits, labels, count);
  } else {
    std::int32_t c = 0;
    for (index_t i = 0; i < n; ++i) {
      const T* row = logits.data() + i * k;
      c += k > 0 && cpu::first_argmax(row, k) == labels.data()[i];
    }
    count.data()[0] = c;
  }
  return count;
}

}  // namespace datanas
