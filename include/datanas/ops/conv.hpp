// datanas/ops/conv.hpp - conv2d with autograd (torch.nn.functional.conv2d semantics, NCHW).
#pragma once

#include "datanas/autograd/variable.hpp"
#include "datanas/ops/cpu/conv.hpp"

namespace datanas {

namespace detail {
/// conv2d with a choice of kernel family (tests force cpu::ConvAlgo::kGeneral to compare).
template <class T, class D>
Var<T, D> conv2d(const Var<T, D>& x, const Var<T, D>& w, const Var<T, D>& bias, Conv2dParams p,
                 cpu::ConvAlgo algo) {
  DATANAS_CHECK(x.defined() && w.defined(), "conv2d: input and weight must be defined");
  const cpu::ConvGeom g =
      cpu::conv_geometry(x.shape(), w.shape(), bias.defined() ? &bias.shape() : nullptr, p);
  DATANAS_CHECK(x.value().defined() && w.value().defined(),
                "conv2d: input or weight has no storage (a symbolic zero), input ", x.shape().str(),
                ", weight ", w.shape().str());
  const cpu::ConvPath path = cpu::conv_path(g, algo);
  Var<T, D> y(Tensor<T, D>::empty({g.n, g.cout, g.ho, g.wo}));
  const T* bias_ptr = bias.defined() ? bias.value().data() : static_cast<const T*>(nullptr);
  if constexpr (is_cpu<D>)
    cpu::conv2d_forward(g, path, x.value(), w.value(), bias_ptr, y.value());
  else
    DeviceOps<D>::conv2d_forward(g, x.value(), w.value(), bias_ptr, y.value());
  if (needs_grad(x, w, bias))
    record(y, [x, w, bias, y, g, path] {
      Tensor<T, D> dx, dw, db;
      bool acc_x = false, acc_w = false, acc_b = false;
      if (x.requires_grad()) {
        auto [gx, acc] = x.grad_slot();
        dx = gx, acc_x = acc;
      }
      if (w.requires_grad()) {
        auto [gw, acc] = w.grad_slot();
        dw = gw, acc_w = acc;
      }
      if (bias.requires_grad()) {
        auto [gb, acc] = bias.grad_slot();
        db = gb, acc_b = acc;
      }
      if constexpr (is_cpu<D>)
        cpu::conv2d_backward(g, path, x.value(), w.value(), y.out_grad(), dx, acc_x, dw, acc_w, db,
                             acc_b);
      else
        DeviceOps<D>::conv2d_backward(g, x.value(), w.value(), y.out_grad(), dx, acc_x, dw, acc_w,
                                      db, acc_b);
    });
  return y;
}
}  // namespace detail

/// 2-D cross-correlation, as torch.nn.functional.conv2d.
/// x: [N, Cin, H, W]; w: [Cout, Cin / groups, kh, kw]; bias: [Cout], or an undefined Var for no
/// bias. Returns [N, Cout, Ho, Wo] with Ho = floor((H + 2 padding - dilation (kh - 1) - 1) /
/// stride) + 1, and the same for Wo. Gradients flow to x, w and bias, each only if it requires
/// grad. Depthwise (groups == Cin == Cout, 3x3 or 5x5, stride <= 2, dilation <= 2) and 1x1
/// convolutions run on dedicated fast kernels; everything else on im2col + GEMM.
template <class T, class D>
Var<T, D> conv2d(const Var<T, D>& x, const Var<T, D>& w, const Var<T, D>& bias,
                 Conv2dParams p = {}) {
  return detail::conv2d(x, w, bias, p, cpu::ConvAlgo::kAuto);
}

}  // namespace datanas
