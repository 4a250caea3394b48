// datanas/ops/arithmetic.hpp - add, scale, the mixed-op weighted sum, sum/mean reductions, and
// the zero op.
//
// The zero op (DARTS "none") is symbolic: zeros(shape) is a Var with no storage. Everything
// that sums tensors (add, weighted_sum) skips it, so "none" costs nothing in forward or
// backward, yet in a mixed op its weight still receives its gradient (which is exactly 0).
#pragma once

#include <algorithm>
#include <span>
#include <type_traits>

#include "datanas/autograd/variable.hpp"
#include "datanas/ops/cpu/common.hpp"
#include "datanas/ops/cpu/weighted_sum.hpp"

namespace datanas {

/// The symbolic zero tensor of `shape` (no storage; `is_zero(v)` is true).
template <class T, class D = Cpu>
Var<T, D> zeros(const Shape& shape) {
  return Var<T, D>(Tensor<T, D>::unallocated(shape));
}
template <class T, class D>
[[nodiscard]] bool is_zero(const Var<T, D>& v) {
  return v.defined() && !v.value().defined();
}

namespace detail {
/// g (+)= s dy: the backward of add and scale.
template <class T, class D>
void store_scaled(T s, const Tensor<T, D>& dy, const Tensor<T, D>& g, bool accumulate) {
  if constexpr (is_cpu<D>) {
    const T* dp = dy.data();
    T* gp = g.data();
    cpu::elementwise(g.numel(), [&](index_t b, index_t e) {
      if (s == T(1))
        cpu::store(cpu::ArrayMap<T>(gp + b, e - b), cpu::ConstArrayMap<T>(dp + b, e - b), accumulate);
      else
        cpu::store(cpu::ArrayMap<T>(gp + b, e - b), s * cpu::ConstArrayMap<T>(dp + b, e - b), accumulate);
    });
  } else {
    DeviceOps<D>::store_grad(s, dy, g, accumulate);
  }
}
}  // namespace detail

/// a + b (same shape). A symbolic zero operand returns the other one unchanged.
template <class T, class D>
Var<T, D> add(const Var<T, D>& a, const Var<T, D>& b) {
  DATANAS_CHECK(a.shape() == b.shape(), "add: shapes differ, ", a.shape().str(), " vs ",
                b.shape().str());
  if (is_zero(a)) return b;
  if (is_zero(b)) return a;
  Var<T, D> y(Tensor<T, D>::empty(a.shape()));
  if constexpr (is_cpu<D>) {
    const T *ap = a.value().data(), *bp = b.value().data();
    T* yp = y.value().data();
    cpu::elementwise(a.value().numel(), [&](index_t s, index_t e) {
      cpu::ArrayMap<T>(yp + s, e - s) = cpu::ConstArrayMap<T>(ap + s, e - s) + cpu::ConstArrayMap<T>(bp + s, e - s);
    });
  } else {
    DeviceOps<D>::add(a.value(), b.value(), y.value());
  }
  if (needs_grad(a, b))
    record(y, [a = GradRef(a), b = GradRef(b), y = GradRef(y)] {
      // dy passes to both inputs unchanged: the first that can takes dy's buffer itself
      // (adopt_grad), so a chain of adds (a cell's node sums) copies dy once per add, not twice.
      bool adopted = false;
      for (const GradRef<T, D>* in : {&a, &b}) {
        if (!in->requires_grad()) continue;
        if (!adopted && in->adopt_grad(y)) {
          adopted = true;
          continue;
        }
        auto [g, acc] = in->grad_slot();
        detail::store_scaled(T(1), y.out_grad(), g, acc);
      }
    });
  return y;
}

/// s * x for a constant s.
template <class T, class D>
Var<T, D> scale(const Var<T, D>& x, T s) {
  if (is_zero(x)) return x;
  Var<T, D> y(Tensor<T, D>::empty(x.shape()));
  if constexpr (is_cpu<D>) {
    const T* xp = x.value().data();
    T* yp = y.value().data();
    cpu::elementwise(x.value().numel(), [&](index_t b, index_t e) {
      cpu::ArrayMap<T>(yp + b, e - b) = s * cpu::ConstArrayMap<T>(xp + b, e - b);
    });
  } else {
    DeviceOps<D>::scale(x.value(), s, y.value());
  }
  if (needs_grad(x))
    record(y, [x = GradRef(x), y = GradRef(y), s] {
      auto [g, acc] = x.grad_slot();
      detail::store_scaled(s, y.out_grad(), g, acc);
    });
  return y;
}

namespace detail {
/// weighted_sum's single term x of weight w[i] == 1: y = x without a copy (see weighted_sum).
template <class T, class D>
Var<T, D> unit_term(const Var<T, D>& x, const Var<T, D>& w, int i) {
  if (!needs_grad(w)) return x;
  Var<T, D> y(x.value());  // shares x's storage: no op writes into its inputs or outputs later
  record(y, [x, w, i, y = GradRef(y)] {
    const Tensor<T, D>& dy = y.out_grad();
    if (w.requires_grad()) {
      auto [gw, acc] = w.grad_slot();
      if constexpr (is_cpu<D>) {
        const T* xp = x.value().data();
        T* no_dx = nullptr;
        const T one = T(1);
        const bool no_acc = false;
        double dot = 0;
        cpu::weighted_sum::backward(1, &xp, &one, dy.data(), dy.numel(), &no_dx, &no_acc, &dot);
        if (!acc) gw.fill(T(0));
        gw.data()[i] += T(dot);
      } else {
        const T* xp = x.value().data();
        DeviceOps<D>::weighted_sum_backward_w(1, &xp, &i, dy, gw, acc);
      }
    }
    if (x.requires_grad() && !x.adopt_grad(y)) {
      auto [g, acc] = x.grad_slot();
      store_scaled(T(1), dy, g, acc);
    }
  });
  return y;
}
}  // namespace detail

/// The mixed op: y = sum_k w[index[k]] * xs[k] (w: a rank-1 Var of mixing weights, e.g. the
/// estimator's output for one edge; index maps each term to its weight, default k -> k).
/// dL/dxs[k] = w * dy; dL/dw = <dy, xs[k]>. Symbolic zeros are skipped: their weight gets 0.
/// `xs` and `index` are read during the call only; the tape keeps its own references. Up to
/// kMaxMixedTerms terms: a DARTS edge has 8; a search cell sums a node's terms over all its
/// edges up to 16 at a time and adds the partial sums.
///
/// One term of weight exactly 1 and symbolic zeros for the rest (an edge of a hard estimator's
/// sparse sample) is not copied: y shares that term's value, and the term takes dy's buffer
/// as its gradient when it can (adopt_grad); only dL/dw = <dy, x> is computed. When w needs no
/// gradient, y is the term itself. The weight's value is read from w on the CPU and from
/// `host_w`, a host copy of w, on other devices (without it the sum is computed).
inline constexpr int kMaxMixedTerms = 16;
template <class T, class D>
Var<T, D> weighted_sum(std::type_identity_t<std::span<const Var<T, D>>> xs, const Var<T, D>& w,
                       std::span<const int> index = {}, const T* host_w = nullptr) {
  const int k = int(xs.size());
  DATANAS_CHECK(k >= 1, "weighted_sum: no terms");
  DATANAS_CHECK(k <= kMaxMixedTerms, "weighted_sum: ", k, " terms exceed kMaxMixedTerms = ",
                kMaxMixedTerms, "; sum groups of terms with add()");
  DATANAS_CHECK(w.value().rank() == 1, "weighted_sum: weights must be rank 1, got ",
                w.shape().str());
  DATANAS_CHECK(index.empty() || int(index.size()) == k, "weighted_sum: ", k, " terms but ",
                index.size(), " indices");
  const Shape shape = xs[0].shape();
  int idx[kMaxMixedTerms];
  for (int i = 0; i < k; ++i) {
    DATANAS_CHECK(xs[i].shape() == shape, "weighted_sum: term ", i, " has shape ",
                  xs[i].shape().str(), ", term 0 has ", shape.str());
    idx[i] = index.empty() ? i : index[i];
    DATANAS_CHECK(idx[i] >= 0 && idx[i] < w.value().numel(), "weighted_sum: weight index ",
                  idx[i], " out of range for ", w.value().numel(), " weights");
  }
  int live = 0, only = -1;
  for (int i = 0; i < k; ++i)
    if (!is_zero(xs[i])) ++live, only = i;
  if constexpr (is_cpu<D>) host_w = w.value().data();
  if (live == 1 && host_w && host_w[idx[only]] == T(1))
    return detail::unit_term(xs[std::size_t(only)], w, idx[only]);
  Var<T, D> y(Tensor<T, D>::empty(shape));
  {
    const T* ptrs[kMaxMixedTerms];
    for (int i = 0; i < k; ++i) ptrs[i] = is_zero(xs[i]) ? nullptr : xs[i].value().data();
    if constexpr (is_cpu<D>) {
      T wk[kMaxMixedTerms];
      for (int i = 0; i < k; ++i) wk[i] = w.value().data()[idx[i]];
      cpu::weighted_sum::forward(k, ptrs, wk, shape.numel(), y.value().data());
    } else {
      DeviceOps<D>::weighted_sum_forward(k, ptrs, idx, w.value(), y.value());
    }
  }
  bool any = needs_grad(w);
  for (int i = 0; i < k; ++i) any = any || needs_grad(xs[i]);
  if (any) {
    struct Indices {
      int v[kMaxMixedTerms];
    } ids;
    std::copy_n(idx, k, ids.v);
    const std::size_t pos = tape<T, D>().stash(xs);
    record(y, [pos, k, ids, w, y = GradRef(y)] {
      const auto& tp = tape<T, D>();
      if constexpr (!is_cpu<D>) {
        const T* ptrs[kMaxMixedTerms];
        for (int i = 0; i < k; ++i) {
          const Var<T, D>& x = tp.stashed(pos + i);
          ptrs[i] = is_zero(x) ? nullptr : x.value().data();
        }
        GradSlot<T, D> gw{Tensor<T, D>(), false};
        if (w.requires_grad()) gw = w.grad_slot();
        // grad_slot() in term order: a Var that is two terms gets its buffer overwritten by the
        // first, added to by the second.
        T* gp[kMaxMixedTerms];
        bool acc[kMaxMixedTerms];
        bool any_x = false;
        for (int i = 0; i < k; ++i) {
          const Var<T, D>& x = tp.stashed(pos + i);
          gp[i] = nullptr;
          acc[i] = false;
          if (!x.requires_grad() || is_zero(x)) continue;
          auto [g, a] = x.grad_slot();
          gp[i] = g.data();
          acc[i] = a;
          any_x = true;
        }
        // Both gradients in one pass over dy when both are wanted, else the one that is.
        if (any_x && gw.g.defined())
          DeviceOps<D>::weighted_sum_backward(k, ptrs, gp, ids.v, acc, w.value(), y.out_grad(),
                                              gw.g, gw.accumulate);
        else if (gw.g.defined())
          DeviceOps<D>::weighted_sum_backward_w(k, ptrs, ids.v, y.out_grad(), gw.g, gw.accumulate);
        else if (any_x)
          DeviceOps<D>::weighted_sum_backward_x(k, gp, ids.v, acc, w.value(), y.out_grad());
        return;
      }
      // One blocked pass (ops/cpu/weighted_sum.hpp) for dL/dw and every term's gradient.
      const T* xp[kMaxMixedTerms];
      T* gp[kMaxMixedTerms];
      bool acc[kMaxMixedTerms];
      T wk[kMaxMixedTerms];
      for (int i = 0; i < k; ++i) {
        const Var<T, D>& x = tp.stashed(pos + i);
        xp[i] = is_zero(x) ? nullptr : x.value().data();
        wk[i] = w.value().data()[ids.v[i]];
        gp[i] = nullptr;
        acc[i] = false;
        if (xp[i] && x.requires_grad()) {
          auto [g, a] = x.grad_slot();
          gp[i] = g.data();
          acc[i] = a;
        }
      }
      double dot[kMaxMixedTerms];
      cpu::weighted_sum::backward(k, xp, wk, y.out_grad().data(), y.shape().numel(), gp, acc,
                                  w.requires_grad() ? dot : nullptr);
      if (w.requires_grad()) {
        auto [gw, a] = w.grad_slot();
        if (!a) gw.fill(T(0));
        for (int i = 0; i < k; ++i)
          if (xp[i]) gw.data()[ids.v[i]] += T(dot[i]);
      }
    });
  }
  return y;
}

/// Sum of all elements, shape [1].
template <class T, class D>
Var<T, D> sum(const Var<T, D>& x) {
  Var<T, D> y(Tensor<T, D>::empty({1}));
  if constexpr (is_cpu<D>)
    y.value().data()[0] = x.value().eigen().sum();
  else
    DeviceOps<D>::sum(x.value(), T(1), y.value());
  if (needs_grad(x))
    record(y, [x = GradRef(x), y = GradRef(y)] {
      auto [g, acc] = x.grad_slot();
      if constexpr (is_cpu<D>) {
        const T d = y.out_grad().data()[0];
        if (acc) g.eigen() += d; else g.fill(d);
      } else {
        DeviceOps<D>::broadcast_grad(T(1), y.out_grad(), g, acc);
      }
    });
  return y;
}

/// Mean of all elements, shape [1].
template <class T, class D>
Var<T, D> mean(const Var<T, D>& x) {
  return scale(sum(x), T(1) / T(x.value().numel()));
}

}  // namespace datanas
