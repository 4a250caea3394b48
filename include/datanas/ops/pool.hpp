// datanas/ops/pool.hpp - 2d max pooling, average pooling, global average pooling.
#pragma once

#include <limits>

#include "datanas/autograd/variable.hpp"
#include "datanas/ops/cpu/pool.hpp"

namespace datanas {

namespace detail {
/// Validates a pooling call and returns its geometry; `op` names the op in messages.
template <class T, class D>
cpu::PoolGeometry pool_geometry(const char* op, const Var<T, D>& x, int kernel, int stride,
                                int padding) {
  DATANAS_CHECK(x.defined() && x.value().defined(), op, ": x is undefined or a symbolic zero");
  const Shape& s = x.shape();
  DATANAS_CHECK(s.rank() == 4, op, ": x must be [N, C, H, W], got ", s.str());
  DATANAS_CHECK(kernel >= 1 && stride >= 1, op, ": kernel and stride must be >= 1, got kernel ",
                kernel, ", stride ", stride, " for x ", s.str());
  DATANAS_CHECK(padding >= 0 && padding <= kernel / 2, op, ": padding must be in [0, kernel / 2]",
                ", got padding ", padding, " with kernel ", kernel, " for x ", s.str());
  const index_t ho = cpu::PoolGeometry::out_size(s.h(), kernel, stride, padding);
  const index_t wo = cpu::PoolGeometry::out_size(s.w(), kernel, stride, padding);
  DATANAS_CHECK(ho > 0 && wo > 0, op, ": output size ", ho, " x ", wo, " <= 0 for x ", s.str(),
                ", kernel ", kernel, ", stride ", stride, ", padding ", padding);
  return {s.h(), s.w(), ho, wo, kernel, stride, padding};
}
}  // namespace detail

/// Max pooling of x [N, C, H, W] -> [N, C, Ho, Wo] with a kernel x kernel window, stride
/// `stride`, padding `padding` (0 <= padding <= kernel / 2); Ho = floor((H + 2p - k) / s) + 1,
/// likewise Wo. Padded positions never win the max (torch.nn.MaxPool2d); NaN propagates.
/// Backward routes each output gradient to the first maximum of its window in row-major order
/// (torch's tie rule); the arg-max indices are saved only when a gradient is needed.
template <class T, class D>
Var<T, D> max_pool2d(const Var<T, D>& x, int kernel, int stride, int padding) {
  const cpu::PoolGeometry g = detail::pool_geometry("max_pool2d", x, kernel, stride, padding);
  const Shape out{x.shape().n(), x.shape().c(), g.ho, g.wo};
  Var<T, D> y(Tensor<T, D>::empty(out));
  if (!needs_grad(x)) {
    if constexpr (is_cpu<D>)
      cpu::max_pool_forward(x.value(), g, y.value(), static_cast<T*>(nullptr));
    else
      DeviceOps<D>::max_pool_forward(x.value(), g, y.value(), static_cast<T*>(nullptr));
    return y;
  }
  // Indices are plane-local (h * W + w) and stored as T, exact up to 2^digits.
  DATANAS_CHECK(g.h * g.w <= (index_t(1) << std::numeric_limits<T>::digits),
                "max_pool2d: planes of ", g.h, " x ", g.w, " are too large for T indices");
  Tensor<T, D> idx = Tensor<T, D>::empty(out);
  if constexpr (is_cpu<D>)
    cpu::max_pool_forward(x.value(), g, y.value(), idx.data());
  else
    DeviceOps<D>::max_pool_forward(x.value(), g, y.value(), idx.data());
  record(y, [x = GradRef(x), y = GradRef(y), idx, g] {
    auto [gx, acc] = x.grad_slot();
    if constexpr (is_cpu<D>)
      cpu::max_pool_backward(y.out_grad(), idx.data(), g, gx.data(), acc);
    else
      DeviceOps<D>::max_pool_backward(y.out_grad(), idx.data(), g, gx.data(), acc);
  });
  return y;
}

/// Average pooling of x [N, C, H, W] -> [N, C, Ho, Wo] (sizes as max_pool2d) with
/// count_include_pad = false: each output is the mean of the real (non-padding) pixels of its
/// window, e.g. a corner 3x3 window with padding 1 divides by 4 (torch.nn.AvgPool2d with
/// count_include_pad=False).
template <class T, class D>
Var<T, D> avg_pool2d(const Var<T, D>& x, int kernel, int stride, int padding) {
  const cpu::PoolGeometry g = detail::pool_geometry("avg_pool2d", x, kernel, stride, padding);
  Var<T, D> y(Tensor<T, D>::empty({x.shape().n(), x.shape().c(), g.ho, g.wo}));
  if constexpr (is_cpu<D>)
    cpu::avg_pool_forward(x.value(), g, y.value());
  else
    DeviceOps<D>::avg_pool_forward(x.value(), g, y.value());
  if (needs_grad(x))
    record(y, [x = GradRef(x), y = GradRef(y), g] {
      auto [gx, acc] = x.grad_slot();
      if constexpr (is_cpu<D>)
        cpu::avg_pool_backward(y.out_grad(), g, gx.data(), acc);
      else
        DeviceOps<D>::avg_pool_backward(y.out_grad(), g, gx.data(), acc);
    });
  return y;
}

/// Global average pooling: [N, C, H, W] -> [N, C], y[n, c] = mean over (h, w) of x[n, c, h, w].
template <class T, class D>
Var<T, D> global_avg_pool(const Var<T, D>& x) {
  DATANAS_CHECK(x.defined() && x.value().defined(),
                "global_avg_pool: x is undefined or a symbolic zero");
  const Shape& s = x.shape();
  DATANAS_CHECK(s.rank() == 4 && s.h() * s.w() > 0,
                "global_avg_pool: x must be [N, C, H, W] with H, W > 0, got ", s.str());
  Var<T, D> y(Tensor<T, D>::empty({s.n(), s.c()}));
  if constexpr (is_cpu<D>)
    cpu::global_avg_pool_forward(x.value(), y.value());
  else
    DeviceOps<D>::global_avg_pool_forward(x.value(), y.value());
  if (needs_grad(x))
    record(y, [x = GradRef(x), y = GradRef(y)] {
      auto [gx, acc] = x.grad_slot();
      const index_t hw = x.shape().h() * x.shape().w();
      if constexpr (is_cpu<D>)
        cpu::global_avg_pool_backward(y.out_grad(), hw, gx.data(), acc);
      else
        DeviceOps<D>::global_avg_pool_backward(y.out_grad(), hw, gx.data(), acc);
    });
  return y;
}

}  // namespace datanas
