// datanas/ops/cuda/recurrent.hpp - the Cuda side of the recurrent cell's ops (ops/recurrent.hpp):
// highway and highway_mix, zero_if_all_none, mul_mask, scale_rows, concat_cols, stack_rows,
// slice_rows, view, temporal_penalty and the locked-dropout masks (bernoulli_mask). Host code
// that checks nothing the generic op has not checked already, takes device pointers from the
// tensors and queues the launchers of kernels/datanas/cuda/recurrent.hpp on the current stream.
//
// Part of DeviceOps<Cuda> (datanas/cuda.hpp). Every function is asynchronous: nothing here
// reads a device value on the host (highway's weights, temporal_penalty's sum and its output
// gradient stay on the device). Names carry the op's name, so that they cannot collide with
// other families' in DeviceOps<Cuda>.
#pragma once

#include <span>

#include "datanas/core/cuda.hpp"
#include "datanas/cuda/dense.hpp"
#include "datanas/cuda/recurrent.hpp"

namespace datanas {
/// Declared in ops/recurrent.hpp (values: the kernels' kRecurrent* codes).
enum class RecurrentActivation;
}  // namespace datanas

namespace datanas::cuda {

struct RecurrentOps {
  /// The kernels' description of a highway call's terms (at most kMaxHighwayTerms; the generic
  /// op has checked the count).
  static HighwayTerms highway_terms(std::span<const RecurrentActivation> acts, bool sparse) {
    HighwayTerms t;
    t.count = int(acts.size());
    t.sparse = sparse;
    for (std::size_t k = 0; k < acts.size() && k < std::size_t(kMaxHighwayTerms); ++k) t.act[k] = int(acts[k]);
    return t;
  }

  /// y = sum_k w_k [s + sig(c) (f_k(h) - s)] over the running terms; s, y [B, H], ch [B, 2H];
  /// w rank 1 read at [offset, offset + acts.size()), undefined for all-ones weights.
  template <class T>
  static void highway_forward(std::span<const RecurrentActivation> acts, bool sparse,
                              const Tensor<T, Cuda>& s, const Tensor<T, Cuda>& ch,
                              const Tensor<T, Cuda>& w, index_t offset, const Tensor<T, Cuda>& y) {
    cuda::highway_forward<T>(s.shape()[0], s.shape()[1], highway_terms(acts, sparse),
                             w.defined() ? w.data() : nullptr, offset, s.data(), ch.data(), y.data(),
                             current_stream().handle);
  }

  /// The highway backward for dy [B, H]. An undefined gs, gch or gw gets nothing; gw is the
  /// whole weight gradient (zeroed first unless acc_w, as on the CPU).
  template <class T>
  static void highway_backward(std::span<const RecurrentActivation> acts, bool sparse,
                               const Tensor<T, Cuda>& s, const Tensor<T, Cuda>& ch,
                               const Tensor<T, Cuda>& w, index_t offset, const Tensor<T, Cuda>& dy,
                               const Tensor<T, Cuda>& gs, bool acc_s, const Tensor<T, Cuda>& gch,
                               bool acc_ch, const Tensor<T, Cuda>& gw, bool acc_w) {
    const HighwayTerms t = highway_terms(acts, sparse);
    const index_t rows = s.shape()[0], hid = s.shape()[1];
    HighwayGrads<T> g;
    g.gs = gs.defined() ? gs.data() : nullptr;
    g.acc_s = acc_s;
    g.gch = gch.defined() ? gch.data() : nullptr;
    g.acc_ch = acc_ch;
    g.gw = gw.defined() ? gw.data() : nullptr;
    g.m = gw.defined() ? gw.numel() : 0;
    g.acc_w = acc_w;
    Tensor<T, Cuda> work;
    if (g.gw) work = Tensor<T, Cuda>::empty({index_t(highway_dw_workspace(rows * hid, t.count))});
    cuda::highway_backward<T>(rows, hid, t, w.defined() ? w.data() : nullptr, offset, s.data(), ch.data(),
                              dy.data(), g, g.gw ? work.data() : nullptr, current_stream().handle);
  }

  /// y = x, or 0 when every non-none weight of the node's `edges` groups of acts.size()
  /// weights from `offset` is 0 (decided by the kernel: the host does not read w).
  template <class T>
  static void zero_if_all_none_forward(std::span<const RecurrentActivation> acts, index_t edges,
                                       const Tensor<T, Cuda>& w, index_t offset, const Tensor<T, Cuda>& x,
                                       const Tensor<T, Cuda>& y) {
    cuda::zero_if_all_none_forward<T>(x.numel(), highway_terms(acts, false), edges, w.data(), offset, x.data(),
                                      y.data(), current_stream().handle);
  }
  /// g (+)= dy, or 0 for an all-none node (g is then left alone when accumulating).
  template <class T>
  static void zero_if_all_none_backward(std::span<const RecurrentActivation> acts, index_t edges,
                                        const Tensor<T, Cuda>& w, index_t offset, const Tensor<T, Cuda>& dy,
                                        const Tensor<T, Cuda>& g, bool accumulate) {
    cuda::zero_if_all_none_backward<T>(g.numel(), highway_terms(acts, false), edges, w.data(), offset, dy.data(),
                                       g.data(), accumulate, current_stream().handle);
  }

  /// y[i] = x[i] m[i mod m.numel()].
  template <class T>
  static void mul_mask_forward(const Tensor<T, Cuda>& x, const Tensor<T, Cuda>& m, const Tensor<T, Cuda>& y) {
    cuda::mul_mask_forward<T>(x.numel(), m.numel(), x.data(), m.data(), y.data(), current_stream().handle);
  }
  /// g[i] (+)= dy[i] m[i mod m.numel()].
  template <class T>
  static void mul_mask_backward(const Tensor<T, Cuda>& dy, const Tensor<T, Cuda>& m,
                                const Tensor<T, Cuda>& g, bool accumulate) {
    cuda::mul_mask_backward<T>(g.numel(), m.numel(), dy.data(), m.data(), g.data(), accumulate,
                               current_stream().handle);
  }

  /// y[r, :] = scale[r] x[r, :] for x [R, C].
  template <class T>
  static void scale_rows_forward(const Tensor<T, Cuda>& x, const Tensor<T, Cuda>& scale,
                                 const Tensor<T, Cuda>& y) {
    cuda::scale_rows_forward<T>(x.shape()[0], x.shape()[1], x.data(), scale.data(), y.data(),
                                current_stream().handle);
  }
  /// g[r, :] (+)= scale[r] dy[r, :].
  template <class T>
  static void scale_rows_backward(const Tensor<T, Cuda>& dy, const Tensor<T, Cuda>& scale,
                                  const Tensor<T, Cuda>& g, bool accumulate) {
    cuda::scale_rows_backward<T>(g.shape()[0], g.shape()[1], dy.data(), scale.data(), g.data(), accumulate,
                                 current_stream().handle);
  }

  /// y = [a | b]: a [N, A], b [N, B], y [N, A + B].
  template <class T>
  static void concat_cols_forward(const Tensor<T, Cuda>& a, const Tensor<T, Cuda>& b, const Tensor<T, Cuda>& y) {
    cuda::concat_cols_forward<T>(a.shape()[0], a.shape()[1], b.shape()[1], a.data(), b.data(), y.data(),
                                 current_stream().handle);
  }
  /// g [N, W] (+)= columns [off, off + W) of dy [N, C].
  template <class T>
  static void concat_cols_backward(const Tensor<T, Cuda>& dy, index_t off, const Tensor<T, Cuda>& g,
                                   bool accumulate) {
    cuda::concat_cols_backward<T>(g.shape()[0], g.shape()[1], dy.shape()[1], off, dy.data(), g.data(),
                                  accumulate, current_stream().handle);
  }

  /// dst[off, off + x.numel()) = x (flat elements): one input of stack_rows.
  template <class T>
  static void stack_rows_forward(const Tensor<T, Cuda>& x, const Tensor<T, Cuda>& dst, index_t off) {
    if (x.numel() == 0) return;
    DATANAS_CUDA_CHECK(cudaMemcpyAsync(dst.data() + off, x.data(), sizeof(T) * std::size_t(x.numel()),
                                       cudaMemcpyDeviceToDevice, current_stream().handle));
  }
  /// g (+)= dy[off, off + g.numel()) (flat elements): stack_rows' backward for one input.
  template <class T>
  static void stack_rows_backward(const Tensor<T, Cuda>& dy, index_t off, const Tensor<T, Cuda>& g,
                                  bool accumulate) {
    cuda::recurrent_store<T>(g.numel(), dy.data() + off, g.data(), accumulate, current_stream().handle);
  }
  /// y = x[off, off + y.numel()) (flat elements): slice_rows.
  template <class T>
  static void slice_rows_forward(const Tensor<T, Cuda>& x, index_t off, const Tensor<T, Cuda>& y) {
    DATANAS_CUDA_CHECK(cudaMemcpyAsync(y.data(), x.data() + off, sizeof(T) * std::size_t(y.numel()),
                                       cudaMemcpyDeviceToDevice, current_stream().handle));
  }
  /// g[off, off + dy.numel()) += dy (flat elements): slice_rows' backward, after the generic op
  /// has zeroed g if it is the first writer.
  template <class T>
  static void slice_rows_backward(const Tensor<T, Cuda>& dy, index_t off, const Tensor<T, Cuda>& g) {
    cuda::recurrent_store<T>(dy.numel(), dy.data(), g.data() + off, true, current_stream().handle);
  }
  /// g (+)= dy, element by element (view's backward; the shapes differ, the sizes do not).
  template <class T>
  static void view_backward(const Tensor<T, Cuda>& dy, const Tensor<T, Cuda>& g, bool accumulate) {
    cuda::recurrent_store<T>(g.numel(), dy.data(), g.data(), accumulate, current_stream().handle);
  }

  /// y[0] = mean over t < T-1 of (x[t+1] - x[t])^2 for x of T rows of `width` elements, reduced
  /// on the device in a fixed order (deterministic).
  template <class T>
  static void temporal_penalty_forward(const Tensor<T, Cuda>& x, index_t steps, index_t width,
                                       const Tensor<T, Cuda>& y) {
    Tensor<T, Cuda> work = Tensor<T, Cuda>::empty({index_t(temporal_penalty_workspace((steps - 1) * width))});
    cuda::temporal_penalty_forward<T>(steps, width, x.data(), y.data(), work.data(), current_stream().handle);
  }
  /// g (+)= d penalty / dx times dy[0] (dy a device scalar, read on the device).
  template <class T>
  static void temporal_penalty_backward(const Tensor<T, Cuda>& x, index_t steps, index_t width,
                                        const Tensor<T, Cuda>& dy, const Tensor<T, Cuda>& g, bool accumulate) {
    cuda::temporal_penalty_backward<T>(steps, width, x.data(), dy.data(), g.data(), accumulate,
                                       current_stream().handle);
  }

  /// dst[i] = value when uniform_open01(word i of the counters from base) < keep, else 0: the
  /// CPU's bernoulli_mask, drawn on the device from the same Philox words (base_device: the
  /// per-replay base of a captured step, DeviceOps<Cuda>::step_values).
  template <class T>
  static void bernoulli_mask(std::uint64_t seed, std::uint64_t base, const std::uint64_t* base_device,
                             float keep, T value, const Tensor<T, Cuda>& dst) {
    cuda::dropout_apply<T>(dst.numel(), seed, base, base_device, keep, value, nullptr, dst.data(), false,
                           current_stream().handle);
  }
};

}  // namespace datanas::cuda
