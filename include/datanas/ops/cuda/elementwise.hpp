// datanas/ops/cuda/elementwise.hpp - the Cuda side of fill/copy, add, scale, activations, the
// mixed op's weighted sum and sum: host code that checks nothing the generic op has not checked
// already, takes device pointers from the tensors and queues the launchers of
// kernels/datanas/cuda/elementwise.hpp on the current stream.
//
// Part of DeviceOps<Cuda> (datanas/cuda.hpp). Signatures mirror the CPU kernels in ops/cpu and
// the generic ops in ops/*.hpp; every function is asynchronous.
#pragma once

#include <cstdint>

#include "datanas/core/cuda.hpp"
#include "datanas/cuda/elementwise.hpp"

namespace datanas::cuda {

struct ElementwiseOps {
  template <class T>
  using DTensor = Tensor<T, Cuda>;

  static cudaStream_t stream() { return current_stream().handle; }

  /// t[i] = v (float, double or int32).
  template <class T>
  static void fill(const DTensor<T>& t, T v) {
    if (t.numel() == 0) return;
    if (v == T(0)) {  // all-zero bytes: a memset, no kernel
      DATANAS_CUDA_CHECK(cudaMemsetAsync(t.data(), 0, sizeof(T) * std::size_t(t.numel()), stream()));
      return;
    }
    cuda::fill<T>(t.numel(), v, t.data(), stream());
  }
  template <class T>
  static void copy(const DTensor<T>& dst, const DTensor<T>& src) {
    cuda::copy(dst, src);
  }
  /// Host -> device (datanas::to_device_of) and device -> host (datanas::to_cpu; synchronises).
  template <class T>
  static DTensor<T> upload(const Tensor<T, Cpu>& host) {
    return cuda::to_device(host);
  }
  template <class T>
  static void upload_into(const Tensor<T, Cpu>& host, const DTensor<T>& dst) {
    cuda::copy_from_host(dst, host);
  }
  template <class T>
  static Tensor<T, Cpu> download(const DTensor<T>& dev) {
    return cuda::to_host(dev);
  }
  /// y = (x > 0) ? 1 : 0.
  template <class T>
  static void indicator_positive(const DTensor<T>& x, const DTensor<T>& y) {
    cuda::indicator_positive<T>(y.numel(), x.data(), y.data(), stream());
  }
  /// y = a + b.
  template <class T>
  static void add(const DTensor<T>& a, const DTensor<T>& b, const DTensor<T>& y) {
    cuda::add<T>(y.numel(), a.data(), b.data(), y.data(), stream());
  }
  /// y = s x.
  template <class T>
  static void scale(const DTensor<T>& x, T s, const DTensor<T>& y) {
    cuda::scale<T>(y.numel(), s, x.data(), y.data(), stream());
  }
  /// g (+)= s dy.
  template <class T>
  static void store_grad(T s, const DTensor<T>& dy, const DTensor<T>& g, bool accumulate) {
    cuda::store_grad<T>(g.numel(), s, dy.data(), g.data(), accumulate, stream());
  }
  /// y = f(x); kind is cpu::Activation's value (relu 0, tanh 1, sigmoid 2).
  template <class T>
  static void activation_forward(int kind, const DTensor<T>& x, const DTensor<T>& y) {
    cuda::activation_forward<T>(kind, y.numel(), x.data(), y.data(), stream());
  }
  /// g (+)= dy f'(x), from the output y.
  template <class T>
  static void activation_backward(int kind, const DTensor<T>& y, const DTensor<T>& dy,
                                  const DTensor<T>& g, bool accumulate) {
    cuda::activation_backward<T>(kind, y.numel(), y.data(), dy.data(), g.data(), accumulate, stream());
  }
  /// y[0] = s * sum(x), deterministic (two passes, no atomics).
  template <class T>
  static void sum(const DTensor<T>& x, T s, const DTensor<T>& y) {
    DTensor<T> work = DTensor<T>::empty({index_t(sum_workspace(x.numel()))});
    cuda::sum<T>(x.numel(), x.data(), s, y.data(), work.data(), stream());
  }
  /// g (+)= s * dy[0].
  template <class T>
  static void broadcast_grad(T s, const DTensor<T>& dy, const DTensor<T>& g, bool accumulate) {
    cuda::broadcast_grad<T>(g.numel(), s, dy.data(), g.data(), accumulate, stream());
  }

  /// The terms of a weighted sum: xs[i] (nullptr for a symbolic zero) with weight index ids[i].
  template <class T>
  static WeightedTerms<T> terms(int k, const T* const* xs, const int* ids) {
    WeightedTerms<T> t;
    t.count = k;
    for (int i = 0; i < k; ++i) {
      t.x[i] = xs[i];
      t.index[i] = ids[i];
    }
    return t;
  }
  /// y = sum_i w[ids[i]] xs[i].
  template <class T>
  static void weighted_sum_forward(int k, const T* const* xs, const int* ids, const DTensor<T>& w,
                                   const DTensor<T>& y) {
    cuda::weighted_sum_forward<T>(y.numel(), terms(k, xs, ids), w.data(), int(w.numel()), y.data(),
                                  stream());
  }
  /// dL/dw (+)= onehot(ids[i]) <xs[i], dy> summed over terms.
  template <class T>
  static void weighted_sum_backward_w(int k, const T* const* xs, const int* ids, const DTensor<T>& dy,
                                      const DTensor<T>& gw, bool accumulate) {
    DTensor<T> work = DTensor<T>::empty({index_t(weighted_sum_dw_workspace(dy.numel(), k))});
    cuda::weighted_sum_backward_w<T>(dy.numel(), terms(k, xs, ids), dy.data(), int(gw.numel()),
                                     gw.data(), accumulate, work.data(), stream());
  }
  /// The term gradients gs[i] (nullptr: none) with weight index ids[i], added to when acc[i].
  template <class T>
  static WeightedGrads<T> grads(int k, T* const* gs, const int* ids, const bool* acc) {
    WeightedGrads<T> g;
    g.count = k;
    for (int i = 0; i < k; ++i) {
      g.g[i] = gs[i];
      g.index[i] = ids[i];
      if (acc[i]) g.accumulate |= std::uint32_t(1) << i;
    }
    return g;
  }
  /// dL/dxs[i] (+)= w[ids[i]] dy for each i with gs[i] set (added when acc[i]), in one launch.
  template <class T>
  static void weighted_sum_backward_x(int k, T* const* gs, const int* ids, const bool* acc, const DTensor<T>& w,
                                      const DTensor<T>& dy) {
    cuda::weighted_sum_backward_x<T>(dy.numel(), grads(k, gs, ids, acc), w.data(), int(w.numel()),
                                     dy.data(), stream());
  }
  /// weighted_sum_backward_w and weighted_sum_backward_x at once, in one pass over dy.
  template <class T>
  static void weighted_sum_backward(int k, const T* const* xs, T* const* gs, const int* ids,
                                    const bool* acc, const DTensor<T>& w, const DTensor<T>& dy,
                                    const DTensor<T>& gw, bool accumulate) {
    DTensor<T> work = DTensor<T>::empty({index_t(weighted_sum_dw_workspace(dy.numel(), k))});
    cuda::weighted_sum_backward<T>(dy.numel(), terms(k, xs, ids), grads(k, gs, ids, acc), w.data(),
                                   int(w.numel()), dy.data(), gw.data(), accumulate, work.data(),
                                   stream());
  }
};

}  // namespace datanas::cuda
