// datanas/ops/conv.hpp - conv2d with autograd (torch.nn.functional.conv2d semantics, NCHW).
#pragma once

#include "datanas/autograd/variable.hpp"
#include "datanas/ops/activation.hpp"
#include "datanas/ops/cpu/conv.hpp"

namespace datanas {

namespace detail {
/// [N, Cout, Ho, Wo] of a convolution geometry.
inline Shape conv_output_shape(const cpu::ConvGeom& g) { return Shape{g.n, g.cout, g.ho, g.wo}; }

/// One convolution on the device's kernels (out is written, not accumulated; bias may be null).
template <class T, class D>
void conv_forward(const cpu::ConvGeom& g, cpu::ConvPath path, const Tensor<T, D>& x, const Tensor<T, D>& w,
                  const T* bias, const Tensor<T, D>& out) {
  if constexpr (is_cpu<D>)
    cpu::conv2d_forward(g, path, x, w, bias, out);
  else
    DeviceOps<D>::conv2d_forward(g, x, w, bias, out);
}

/// Its backward: dx, dw and db where defined (written, or added to when acc_*).
template <class T, class D>
void conv_backward(const cpu::ConvGeom& g, cpu::ConvPath path, const Tensor<T, D>& x, const Tensor<T, D>& w,
                   const Tensor<T, D>& dy, const Tensor<T, D>& dx, bool acc_x, const Tensor<T, D>& dw, bool acc_w,
                   const Tensor<T, D>& db = Tensor<T, D>(), bool acc_b = false) {
  if constexpr (is_cpu<D>)
    cpu::conv2d_backward(g, path, x, w, dy, dx, acc_x, dw, acc_w, db, acc_b);
  else
    DeviceOps<D>::conv2d_backward(g, x, w, dy, dx, acc_x, dw, acc_w, db, acc_b);
}

/// Whether D's kernels read relu(x) from x for the convolution g on `path` (ConvGeom::relu_input).
template <class D>
bool fuses_input_relu(const cpu::ConvGeom& g, cpu::ConvPath path) {
  if constexpr (is_cpu<D>)
    return path != cpu::ConvPath::kShifted;
  else
    return DeviceOps<D>::conv_fuses_input_relu(g);
}

/// relu(x) into a new tensor: a convolution's input where its kernels cannot fuse the ReLU.
template <class T, class D>
Tensor<T, D> relu_tensor(const Tensor<T, D>& x) {
  Tensor<T, D> r = Tensor<T, D>::empty(x.shape());
  if constexpr (is_cpu<D>)
    cpu::activation_forward(cpu::Activation::kRelu, x, r);
  else
    DeviceOps<D>::activation_forward(int(cpu::Activation::kRelu), x, r);
  return r;
}

/// With a ReLU in front of a convolution (relu_x): sets g.relu_input where D's kernels read
/// relu(x) straight from x, and g.relu_masks_dx where they also mask the data gradient (the CPU);
/// returns whether the convolution needs a temporary relu(x) instead.
template <class D>
bool plan_input_relu(bool relu_x, cpu::ConvGeom& g, cpu::ConvPath path) {
  g.relu_input = relu_x && fuses_input_relu<D>(g, path);
  g.relu_masks_dx = g.relu_input && is_cpu<D>;
  return relu_x && !g.relu_input;
}

/// relu's backward for a convolution that took relu(x) from x: x's gradient slot (+)= dr where
/// x > 0 (the same units as relu(x) > 0), dr being the gradient with respect to relu(x).
template <class T, class D>
void mask_relu_gradient(const Tensor<T, D>& x, const Tensor<T, D>& dr, const GradSlot<T, D>& slot) {
  if constexpr (is_cpu<D>)
    cpu::activation_backward(cpu::Activation::kRelu, x, dr, slot.g, slot.accumulate);
  else
    DeviceOps<D>::activation_backward(int(cpu::Activation::kRelu), x, dr, slot.g, slot.accumulate);
}

/// conv2d with a choice of kernel family (tests force cpu::ConvAlgo::kGeneral to compare), of x
/// or, with relu_x, of relu(x) (relu_conv2d).
template <class T, class D>
Var<T, D> conv2d(const Var<T, D>& x, const Var<T, D>& w, const Var<T, D>& bias, Conv2dParams p,
                 cpu::ConvAlgo algo, bool relu_x = false) {
  const char* op = relu_x ? "relu_conv2d" : "conv2d";
  DATANAS_CHECK(x.defined() && w.defined(), op, ": input and weight must be defined");
  cpu::ConvGeom g = cpu::conv_geometry(x.shape(), w.shape(), bias.defined() ? &bias.shape() : nullptr, p);
  DATANAS_CHECK(x.value().defined() && w.value().defined(), op,
                ": input or weight has no storage (a symbolic zero), input ", x.shape().str(),
                ", weight ", w.shape().str());
  const cpu::ConvPath path = cpu::conv_path(g, algo);
  const bool relu_copy = plan_input_relu<D>(relu_x, g, path);
  Var<T, D> y(Tensor<T, D>::empty({g.n, g.cout, g.ho, g.wo}));
  const T* bias_ptr = bias.defined() ? bias.value().data() : static_cast<const T*>(nullptr);
  conv_forward(g, path, relu_copy ? relu_tensor(x.value()) : x.value(), w.value(), bias_ptr, y.value());
  if (needs_grad(x, w, bias))
    // x's value is read for dw, and with a ReLU for the mask of dx; w's only for dx; bias's never.
    record(y, [x = GradRef(x), xv = w.requires_grad() || (relu_x && x.requires_grad()) ? x : Var<T, D>(),
               w = GradRef(w), wv = x.requires_grad() ? w : Var<T, D>(), bias = GradRef(bias), y = GradRef(y), g,
               path, relu_copy] {
      Tensor<T, D> dx, dw, db, dr;
      bool acc_x = false, acc_w = false, acc_b = false;
      // Unless the kernels mask it (g.relu_masks_dx), the data gradient of a convolution of
      // relu(x) goes through relu's backward.
      const bool mask_after = x.requires_grad() && (relu_copy || (g.relu_input && !g.relu_masks_dx));
      if (mask_after) {
        dx = dr = Tensor<T, D>::empty(x.shape());
      } else if (x.requires_grad()) {
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
      // The convolution's input: x (read for dw, and for the mask by kernels that apply it), or
      // for dw a temporary relu(x) again.
      Tensor<T, D> in;
      if (!relu_copy && xv.defined())
        in = xv.value();
      else if (relu_copy && w.requires_grad())
        in = relu_tensor(xv.value());
      conv_backward(g, path, in, wv.defined() ? wv.value() : Tensor<T, D>(), y.out_grad(), dx, acc_x, dw, acc_w,
                    db, acc_b);
      if (mask_after) mask_relu_gradient(xv.value(), dr, x.grad_slot());
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

/// conv2d(relu(x), w, {}, p) without relu(x) ever being kept (ReLUConvBN's ReLU and 1x1
/// convolution: the preprocessing of every DARTS cell). The CPU kernels read relu(x) from x, one
/// sample at a time (the 1x1 path into a cache-resident copy, im2col as it gathers), and mask the
/// data gradient by x > 0 as they write it; the stride-1 shifted-taps path (3x3 and larger,
/// stride 1) and cuDNN get a temporary relu(x), made again in backward for the weight gradient,
/// and relu's backward as a pass of its own. Values and gradients are those of relu followed by
/// conv2d, bit for bit. Why: the preprocessing reads a cell output with 4C channels, the largest
/// tensors of a cell, twice (cells k + 1 and k + 2 each take it); kept, each relu(x) is one more
/// such tensor, while x is kept once for both.
template <class T, class D>
Var<T, D> relu_conv2d(const Var<T, D>& x, const Var<T, D>& w, Conv2dParams p = {}) {
  return detail::conv2d(x, w, Var<T, D>(), p, cpu::ConvAlgo::kAuto, true);
}

namespace detail {
/// conv2d_pair and relu_conv2d_pair: y = conv(conv(relu_x ? relu(x) : x, w1, p1), w2, p2).
template <class T, class D>
Var<T, D> conv_pair(const char* op, bool relu_x, const Var<T, D>& x, const Var<T, D>& w1,
                    Conv2dParams p1, const Var<T, D>& w2, Conv2dParams p2) {
  DATANAS_CHECK(x.defined() && w1.defined() && w2.defined(), op, ": input and weights must be defined");
  DATANAS_CHECK(x.value().defined(), op, ": the input has no storage (a symbolic zero), shape ",
                x.shape().str());
  cpu::ConvGeom g1 = cpu::conv_geometry(x.shape(), w1.shape(), nullptr, p1);
  const cpu::ConvGeom g2 = cpu::conv_geometry(conv_output_shape(g1), w2.shape(), nullptr, p2);
  const cpu::ConvPath path1 = cpu::conv_path(g1, cpu::ConvAlgo::kAuto);
  const cpu::ConvPath path2 = cpu::conv_path(g2, cpu::ConvAlgo::kAuto);
  // With relu_x the first convolution reads relu(x) straight from x where its kernels can
  // (CPU and our GPU depthwise kernels), else from a temporary relu(x); never kept either way.
  // The CPU's kernels also apply relu's mask to the data gradient, while that plane is in cache
  // (ConvGeom::relu_masks_dx); elsewhere relu's backward is a pass of its own.
  const bool relu_copy = plan_input_relu<D>(relu_x, g1, path1);
  Var<T, D> y(Tensor<T, D>::empty(conv_output_shape(g2)));
  {
    const Tensor<T, D> in = relu_copy ? relu_tensor(x.value()) : x.value();
    const Tensor<T, D> t = Tensor<T, D>::empty(conv_output_shape(g1));  // released here
    conv_forward(g1, path1, in, w1.value(), static_cast<const T*>(nullptr), t);
    conv_forward(g2, path2, t, w2.value(), static_cast<const T*>(nullptr), y.value());
  }
  if (needs_grad(x, w1, w2))
    // g2 is recomputed in backward (cheap) to keep the closure within the tape's inline size.
    record(y, [x, w1, w2, y = GradRef(y), g1, p2, path1, path2, relu_x, relu_copy] {
      const cpu::ConvGeom g2 = cpu::conv_geometry(conv_output_shape(g1), w2.shape(), nullptr, p2);
      const Tensor<T, D> in = relu_copy ? relu_tensor(x.value()) : x.value();
      const Tensor<T, D> t = Tensor<T, D>::empty(conv_output_shape(g1));
      conv_forward(g1, path1, in, w1.value(), static_cast<const T*>(nullptr), t);
      const bool first = x.requires_grad() || w1.requires_grad();
      const Tensor<T, D> dt = first ? Tensor<T, D>::empty(t.shape()) : Tensor<T, D>();
      GradSlot<T, D> dw2{Tensor<T, D>(), false}, dx{Tensor<T, D>(), false}, dw1{Tensor<T, D>(), false};
      if (w2.requires_grad()) dw2 = w2.grad_slot();
      conv_backward(g2, path2, t, w2.value(), y.out_grad(), dt, false, dw2.g, dw2.accumulate);
      if (!first) return;
      // With relu_x (and unless the kernel masks it itself) the first convolution gives the
      // gradient with respect to relu(x); relu's backward then masks it by x > 0 (the same units
      // as relu(x) > 0).
      const bool mask_after = relu_x && !g1.relu_masks_dx && x.requires_grad();
      const Tensor<T, D> dr = mask_after ? Tensor<T, D>::empty(x.shape()) : Tensor<T, D>();
      if (x.requires_grad()) dx = mask_after ? GradSlot<T, D>{dr, false} : x.grad_slot();
      if (w1.requires_grad()) dw1 = w1.grad_slot();
      conv_backward(g1, path1, in, w1.value(), dt, dx.g, dx.accumulate, dw1.g, dw1.accumulate);
      if (mask_after) mask_relu_gradient(x.value(), dr, x.grad_slot());
    });
  return y;
}
}  // namespace detail

/// conv2d(conv2d(x, w1, {}, p1), w2, {}, p2): two bias-free convolutions in a row whose middle
/// tensor is not kept for backward but recomputed there from x. x: [N, C, H, W]; w1, p1 and w2, p2
/// as conv2d's w and p; returns the second convolution's output. Values and gradients are those
/// of the two conv2d calls bit for bit (the same kernels, run once more for the middle tensor).
/// Why: in DARTS' sep_conv and dil_conv the middle tensor is a depthwise convolution's output at
/// full resolution, one per op per edge of the supernet, held from forward to backward only so
/// that the pointwise convolution can form its weight gradient; recomputing it costs one more
/// depthwise convolution (k^2 multiply-adds per element, against C for the pointwise one) and
/// frees that tensor.
template <class T, class D>
Var<T, D> conv2d_pair(const Var<T, D>& x, const Var<T, D>& w1, Conv2dParams p1, const Var<T, D>& w2,
                      Conv2dParams p2 = {}) {
  return detail::conv_pair("conv2d_pair", false, x, w1, p1, w2, p2);
}

/// conv2d_pair(relu(x), w1, p1, w2, p2) without relu(x) ever being kept: the pair reads it
/// from x in forward and again in backward (the depthwise kernels, CPU and GPU, apply the ReLU
/// as they load x; other convolutions get a temporary), and masks the gradient by x > 0 (the
/// CPU depthwise backward as it writes the gradient, elsewhere a pass of its own). Values and
/// gradients are those of relu followed by conv2d_pair, bit for bit. Why: the ReLUs of DARTS'
/// sep_conv and dil_conv have outputs that only their depthwise convolution reads; kept, each
/// is one more full-resolution tensor, and on the CPU relu's forward and backward passes
/// disappear too. (On the GPU a supernet edge still shares one relu(x) among its four conv
/// ops: fused into each, the mask would be four passes where one ReLU backward does.)
template <class T, class D>
Var<T, D> relu_conv2d_pair(const Var<T, D>& x, const Var<T, D>& w1, Conv2dParams p1,
                           const Var<T, D>& w2, Conv2dParams p2 = {}) {
  return detail::conv_pair("relu_conv2d_pair", true, x, w1, p1, w2, p2);
}

}  // namespace datanas
