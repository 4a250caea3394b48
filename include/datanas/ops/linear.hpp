// datanas/ops/linear.hpp - linear (fully connected), matmul and embedding lookup.
#pragma once

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

/// Matrix product: a [n, k] x b [k, m] -> [n, m].
template <class T, class D>
Var<T, D> matmul(const Var<T, D>& a, const Var<T, D>& b) {
  DATANAS_CHECK(a.shape().rank() == 2 && b.shape().rank() == 2 && a.shape()[1] == b.shape()[0],
                "matmul: cannot multiply ", a.shape().str(), " by ", b.shape().str());
  const index_t n = a.shape()[0], k = a.shape()[1], m = b.shape()[1];
  Var<T, D> y(Tensor<T, D>::empty({n, m}));
  if constexpr (is_cpu<D>)
    cpu::conv_detail::gemm_rows_parallel<false, false>(
        n, m, k, a.value().data(), k, b.value().data(), m, y.value().data(), m, false);
  else
    DeviceOps<D>::matmul_forward(a.value(), b.value(), y.value());
  if (needs_grad(a, b))
    record(y, [a, b, y = GradRef(y), n, k, m] {
      if constexpr (!is_cpu<D>) {
        if (a.requires_grad()) {
          auto [g, acc] = a.grad_slot();
          DeviceOps<D>::matmul_backward_a(y.out_grad(), b.value(), g, acc);
        }
        if (b.requires_grad()) {
          auto [g, acc] = b.grad_slot();
          DeviceOps<D>::matmul_backward_b(a.value(), y.out_grad(), g, acc);
        }
        return;
      }
      const T* dy = y.out_grad().data();
      if (a.requires_grad()) {  // da (+)= dy b^T
        auto [g, acc] = a.grad_slot();
        cpu::conv_detail::gemm_rows_parallel<false, true>(n, k, m, dy, m, b.value().data(), m,
                                                          g.data(), k, acc);
      }
      if (b.requires_grad()) {  // db (+)= a^T dy
        auto [g, acc] = b.grad_slot();
        cpu::conv_detail::gemm_rows_parallel<true, false>(k, m, n, a.value().data(), k, dy, m,
                                                          g.data(), m, acc);
      }
    });
  return y;
}

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
