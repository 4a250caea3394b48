// datanas/ops/linear.hpp - linear (fully connected), matmul and embedding lookup.
#pragma once

#include <algorithm>
#include <cstdint>
#include <string>

#include "datanas/autograd/variable.hpp"
#include "datanas/ops/cpu/common.hpp"
#include "datanas/ops/cpu/conv.hpp"

namespace datanas {

// The CPU products below are the convolutions' (cpu::conv_detail::gemm: small_gemm where it was
// measured faster than Eigen, Eigen otherwise), split over row blocks on the threads. On the
// PTB decoder (2,240 rows x 10,000 words) small_gemm ran 1.25-1.5x Eigen's product, except the
// forward at 850 units (parity) (docs/benchmarks.md, "PTB training: where the time goes").

/// y = x w^T + b. x: [N, in]; w: [out, in] (torch layout); b: [out] or undefined -> [N, out].
template <class T, class D>
Var<T, D> linear(const Var<T, D>& x, const Var<T, D>& w, const Var<T, D>& b) {
  DATANAS_CHECK(x.shape().rank() == 2, "linear: input must be [N, in], got ", x.shape().str());
  DATANAS_CHECK(w.shape().rank() == 2 && w.shape()[1] == x.shape()[1], "linear: weight ",
                w.shape().str(), " does not fit input ", x.shape().str(), " (expected [out, ",
                x.shape()[1], "])");
  const index_t n = x.shape()[0], in = x.shape()[1], out = w.shape()[0];
  DATANAS_CHECK(!b.defined() || b.shape() == Shape{out}, "linear: bias must be [", out,
                "], got ", b.defined() ? b.shape().str() : "");
  Var<T, D> y(Tensor<T, D>::empty({n, out}));
  if constexpr (is_cpu<D>) {
    cpu::conv_detail::gemm_rows_parallel<false, true>(
        n, out, in, x.value().data(), in, w.value().data(), in, y.value().data(), out, false);
    if (b.defined())
      cpu::MatrixMap<T>(y.value().data(), n, out).rowwise() +=
          Eigen::Map<const Eigen::Matrix<T, 1, Eigen::Dynamic>>(b.value().data(), out);
  } else {
    DeviceOps<D>::linear_forward(x.value(), w.value(), b.defined() ? b.value() : Tensor<T, D>(), y.value());
  }
  if (needs_grad(x, w, b))
    record(y, [x, w, b = GradRef(b), y = GradRef(y), n, in, out] {
      if constexpr (!is_cpu<D>) {
        if (x.requires_grad()) {
          auto [g, acc] = x.grad_slot();
          DeviceOps<D>::linear_backward_input(y.out_grad(), w.value(), g, acc);
        }
        if (w.requires_grad()) {
          auto [g, acc] = w.grad_slot();
          DeviceOps<D>::linear_backward_weight(y.out_grad(), x.value(), g, acc);
        }
        if (b.requires_grad()) {
          auto [g, acc] = b.grad_slot();
          DeviceOps<D>::linear_backward_bias(y.out_grad(), g, acc);
        }
        return;
      }
      const T* dy = y.out_grad().data();
      if (x.requires_grad()) {  // dx (+)= dy w
        auto [g, acc] = x.grad_slot();
        cpu::conv_detail::gemm_rows_parallel<false, false>(n, in, out, dy, out, w.value().data(),
                                                           in, g.data(), in, acc);
      }
      if (w.requires_grad()) {  // dw (+)= dy^T x
        auto [g, acc] = w.grad_slot();
        cpu::conv_detail::gemm_rows_parallel<true, false>(out, in, n, dy, out, x.value().data(), in,
                                                          g.data(), in, acc);
      }
      if (b.requires_grad()) {
        auto [g, acc] = b.grad_slot();
        cpu::column_sums(dy, n, out, g.data(), acc);
      }
    });
  return y;
}

namespace detail {
/// y = a b: a [n, k], b [k, m], y [n, m].
template <class T, class D>
void matmul_value(const Tensor<T, D>& a, const Tensor<T, D>& b, const Tensor<T, D>& y) {
  const index_t n = a.dim(0), k = a.dim(1), m = b.dim(1);
  if constexpr (is_cpu<D>)
    cpu::conv_detail::gemm_rows_parallel<false, false>(n, m, k, a.data(), k, b.data(), m, y.data(),
                                                       m, false);
  else
    DeviceOps<D>::matmul_forward(a, b, y);
}
/// da (+)= dy b^T: dy [n, m], b [k, m], da [n, k].
template <class T, class D>
void matmul_grad_a(const Tensor<T, D>& dy, const Tensor<T, D>& b, const GradSlot<T, D>& da) {
  const index_t n = dy.dim(0), m = dy.dim(1), k = b.dim(0);
  if constexpr (is_cpu<D>)
    cpu::conv_detail::gemm_rows_parallel<false, true>(n, k, m, dy.data(), m, b.data(), m,
                                                      da.g.data(), k, da.accumulate);
  else
    DeviceOps<D>::matmul_backward_a(dy, b, da.g, da.accumulate);
}
/// db (+)= a^T dy: a [n, k], dy [n, m], db [k, m].
template <class T, class D>
void matmul_grad_b(const Tensor<T, D>& a, const Tensor<T, D>& dy, const GradSlot<T, D>& db) {
  const index_t n = a.dim(0), k = a.dim(1), m = dy.dim(1);
  if constexpr (is_cpu<D>)
    cpu::conv_detail::gemm_rows_parallel<true, false>(k, m, n, a.data(), k, dy.data(), m,
                                                      db.g.data(), m, db.accumulate);
  else
    DeviceOps<D>::matmul_backward_b(a, dy, db.g, db.accumulate);
}
}  // namespace detail

/// Matrix product: a [n, k] x b [k, m] -> [n, m].
template <class T, class D>
Var<T, D> matmul(const Var<T, D>& a, const Var<T, D>& b) {
  DATANAS_CHECK(a.shape().rank() == 2 && b.shape().rank() == 2 && a.shape()[1] == b.shape()[0],
                "matmul: cannot multiply ", a.shape().str(), " by ", b.shape().str());
  Var<T, D> y(Tensor<T, D>::empty({a.shape()[0], b.shape()[1]}));
  detail::matmul_value(a.value(), b.value(), y.value());
  if (needs_grad(a, b))
    record(y, [a, b, y = GradRef(y)] {
      if (a.requires_grad()) detail::matmul_grad_a(y.out_grad(), b.value(), a.grad_slot());
      if (b.requires_grad()) detail::matmul_grad_b(a.value(), y.out_grad(), b.grad_slot());
    });
  return y;
}

/// Products a_i W of a sequence of inputs a_i [B, k] sharing one weight W [k, m], such as the
/// recurrent cell's W0 and W_i over a BPTT window. Values and input gradients are those of
/// matmul(a_i, W); W's gradient is taken once per group of `group` consecutive products,
///   dW (+)= [a_1; ...; a_G]^T [dy_1; ...; dy_G]   (one product over G*B rows),
/// rather than once per product. Why: a single product's dW (+)= a_i^T dy_i reads and writes
/// all of dW for B rows of work. At the PTB recipe's 850 units (W0 [1700, 1700], 11.6 MB; B = 64)
/// those products ran at 42-54 GFLOP/s, in groups of 8 steps at 60-75 (docs/benchmarks.md, "PTB:
/// the recurrent weight gradients in groups of time steps").
/// How: each product copies its input into the group's [G*B, k] buffer (the product itself keeps
/// no input alive). A node recorded just before the group's first product, so that backward
/// reaches it after every product of the group, receives their dy as the rows of its gradient and
/// runs the one product. Extra memory: one group's dy rows [G*B, m], during backward. A product
/// whose output gets no gradient contributes nothing, as in matmul.
/// Use: start(w, group) before a forward pass, then the products, then finish() (drops this
/// object's handles; the tape keeps what backward needs). Not reentrant. Without grad mode, or
/// when W needs no gradient, the products are plain matmuls.
template <class T, class D>
class GroupedMatmul {
 public:
  /// Begins a sequence of products with w [k, m], in groups of `group` >= 1 products.
  void start(const Var<T, D>& w, int group) {
    DATANAS_CHECK(w.defined() && w.shape().rank() == 2,
                  "GroupedMatmul: the weight must be [k, m], got ",
                  w.defined() ? w.shape().str() : std::string("undefined"));
    DATANAS_CHECK(group >= 1, "GroupedMatmul: a group needs at least one product, got ", group);
    finish();
    w_ = w;
    group_ = group;
  }
  [[nodiscard]] bool started() const { return w_.defined(); }

  /// a [B, k] W [k, m] -> [B, m].
  Var<T, D> operator()(const Var<T, D>& a) {
    DATANAS_CHECK(started(), "GroupedMatmul: start() before the products");
    if (!needs_grad(w_)) return matmul(a, w_);
    DATANAS_CHECK(a.shape().rank() == 2 && a.shape()[1] == w_.shape()[0],
                  "GroupedMatmul: cannot multiply ", a.shape().str(), " by ", w_.shape().str());
    const index_t b = a.shape()[0], k = a.shape()[1], m = w_.shape()[1];
    if (used_ == group_ || b != rows_ || !sink_.defined()) open_group(b);
    Var<T, D> y(Tensor<T, D>::empty({b, m}));
    detail::matmul_value(a.value(), w_.value(), y.value());
    const index_t row = index_t(used_) * b;
    if constexpr (is_cpu<D>)
      std::copy_n(a.value().data(), b * k, inputs_.data() + row * k);
    else
      DeviceOps<D>::stack_rows_forward(a.value(), inputs_, row * k);
    count_[0] = ++used_;
    record(y, [a = GradRef(a), w = w_, y = GradRef(y), sink = GradRef(sink_), off = row * m] {
      const Tensor<T, D>& dy = y.out_grad();
      if (a.requires_grad()) detail::matmul_grad_a(dy, w.value(), a.grad_slot());
      // This product's rows of the group's dy; the first writer zeroes the rest, so that the
      // rows of products whose output got no gradient add nothing.
      auto [g, acc] = sink.grad_slot();
      if (!acc) g.fill(T(0));
      if constexpr (is_cpu<D>)
        std::copy_n(dy.data(), dy.numel(), g.data() + off);
      else
        DeviceOps<D>::slice_rows_backward(dy, off, g);
    });
    return y;
  }

  /// Drops this object's handles (the weight, the open group).
  void finish() {
    w_ = {};
    sink_ = {};
    inputs_ = {};
    count_ = {};
    used_ = 0;
    rows_ = 0;
  }

 private:
  void open_group(index_t b) {
    const index_t k = w_.shape()[0], m = w_.shape()[1];
    rows_ = b;
    used_ = 0;
    inputs_ = Tensor<T, D>::empty({index_t(group_) * b, k});
    count_ = Tensor<std::int32_t>::zeros({1});
    sink_ = Var<T, D>(Tensor<T, D>::unallocated({index_t(group_) * b, m}));
    record(sink_, [w = GradRef(w_), sink = GradRef(sink_), inputs = inputs_, count = count_, b] {
      const index_t n = index_t(count[0]) * b;  // the group's products (the last may be short)
      detail::matmul_grad_b(inputs.leading(n), sink.out_grad().leading(n), w.grad_slot());
    });
  }

  Var<T, D> w_;
  int group_ = 1, used_ = 0;
  index_t rows_ = 0;            // B of the open group
  Tensor<T, D> inputs_;         // [group * B, k]: the open group's inputs
  Tensor<std::int32_t> count_;  // [1]: its products so far, read by its backward
  Var<T, D> sink_;              // its node: the gradient rows of its products
};

/// Row lookup: weight [V, E], ids (int32, any rank <= 3, values in [0, V)) -> ids.shape + [E].
/// The backward scatters rows into dL/dweight (rows not looked up get 0).
template <class T, class D>
Var<T, D> embedding(const Var<T, D>& weight, const Tensor<std::int32_t, D>& ids) {
  DATANAS_CHECK(weight.shape().rank() == 2, "embedding: weight must be [V, E], got ",
                weight.shape().str());
  DATANAS_CHECK(ids.rank() >= 1 && ids.rank() <= 3, "embedding: ids must have rank 1 to 3, got ",
                ids.shape().str());
  const index_t vocab = weight.shape()[0], e = weight.shape()[1], count = ids.numel();
  Shape out;
  switch (ids.rank()) {
    case 1: out = Shape{ids.dim(0), e}; break;
    case 2: out = Shape{ids.dim(0), ids.dim(1), e}; break;
    default: out = Shape{ids.dim(0), ids.dim(1), ids.dim(2), e}; break;
  }
  if constexpr (!is_cpu<D>) {
    Var<T, D> y(Tensor<T, D>::empty(out));
    // The ids are on the device: checking them here would wait for the GPU. The kernels write
    // NaN rows for ids outside [0, V) and skip them in backward; nothing goes out of bounds.
    DeviceOps<D>::embedding_forward(weight.value(), ids, y.value());
    if (needs_grad(weight))
      record(y, [weight = GradRef(weight), ids, y = GradRef(y)] {
        auto [g, acc] = weight.grad_slot();
        DeviceOps<D>::embedding_backward(ids, y.out_grad(), g, acc);
      });
    return y;
  }
  const std::int32_t* ip = ids.data();
  for (index_t i = 0; i < count; ++i)
    DATANAS_CHECK(ip[i] >= 0 && ip[i] < vocab, "embedding: id ", ip[i], " at position ", i,
                  " is outside the vocabulary [0, ", vocab, ")");
  Var<T, D> y(Tensor<T, D>::empty(out));
  const T* wp = weight.value().data();
  T* yp = y.value().data();
  cpu::parallel_for(count, e, [&](index_t i) {
    std::memcpy(yp + i * e, wp + index_t(ip[i]) * e, sizeof(T) * e);
  });
  if (needs_grad(weight))
    record(y, [weight = GradRef(weight), ids, y = GradRef(y), count, e] {
      auto [g, acc] = weight.grad_slot();
      if (!acc) g.fill(T(0));
      const T* dy = y.out_grad().data();
      const std::int32_t* ip = ids.data();
      // Serial: repeated ids would race; the scatter is tiny next to the decoder GEMM.
      for (index_t i = 0; i < count; ++i)
        cpu::ArrayMap<T>(g.data() + index_t(ip[i]) * e, e) += cpu::ConstArrayMap<T>(dy + i * e, e);
    });
  return y;
}

}  // namespace datanas
