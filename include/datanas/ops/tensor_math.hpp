// datanas/ops/tensor_math.hpp - device-generic vector algebra on tensors, outside autograd: what
// DARTS' second-order architecture step (search/searcher.hpp) does to the weights, written once
// for every device. Cpu: Eigen; Cuda: DeviceOps<Cuda> (ops/cuda/optim.hpp), asynchronous on the
// current stream.
//
// Tensors are flat here: only element counts must agree, shapes may differ (a reshape is the
// same storage). Tensors never overlap partially (a tensor is a whole storage block), so the only
// aliasing is full: an output may be the same tensor as an input where a function says so.
//
// Scalars that come out of device work (a norm, a step size) are tensors of one element on the
// tensor's device, so that a Cuda computation never waits for the GPU; read one on the host
// (cuda::to_host) only where it is logged.
//
// Rounding: each function performs the same products and sums in the same order on both devices
// (in T, except where double is said), so results agree to an ulp or so per element (the
// compilers may contract a product and a sum into an FMA); reductions are deterministic.
#pragma once

#include <algorithm>
#include <cmath>
#include <span>
#include <type_traits>

#include "datanas/core/tensor.hpp"

namespace datanas {

namespace detail {
template <class T, class D>
void check_same_size(const Tensor<T, D>& a, const Tensor<T, D>& b, const char* what) {
  DATANAS_CHECK(a.defined() && b.defined(), what, ": undefined tensor");
  DATANAS_CHECK(a.numel() == b.numel(), what, ": ", a.shape().str(), " and ", b.shape().str(),
                " differ in size");
}
template <class T, class D>
void check_scalar(const Tensor<T, D>& s, const char* what) {
  DATANAS_CHECK(s.defined() && s.numel() == 1, what, ": the scalar must have one element, got ",
                s.defined() ? s.shape().str() : std::string("<undefined>"));
}
}  // namespace detail

/// out = a x + b y, elementwise (x, y, out: the same number of elements). out may be x or y.
template <class T, class D>
void axpby(std::type_identity_t<T> a, const Tensor<T, D>& x, std::type_identity_t<T> b,
           const Tensor<T, D>& y, const Tensor<T, D>& out) {
  detail::check_same_size(x, y, "axpby");
  detail::check_same_size(x, out, "axpby");
  if constexpr (is_cpu<D>)
    out.eigen() = a * x.eigen() + b * y.eigen();
  else
    DeviceOps<D>::axpby(a, x, b, y, out);
}

/// out = a x + (b s[0]) y, with s a scalar tensor [1] on the same device (e.g. a step size computed
/// on the device: no host round trip). out may be x or y (or s, when all have one element).
template <class T, class D>
void axpby(std::type_identity_t<T> a, const Tensor<T, D>& x, std::type_identity_t<T> b,
           const Tensor<T, D>& s, const Tensor<T, D>& y, const Tensor<T, D>& out) {
  detail::check_same_size(x, y, "axpby");
  detail::check_same_size(x, out, "axpby");
  detail::check_scalar(s, "axpby");
  if constexpr (is_cpu<D>) {
    const T c = b * s[0];
    out.eigen() = a * x.eigen() + c * y.eigen();
  } else {
    DeviceOps<D>::axpby_scaled(a, x, b, s, y, out);
  }
}

/// out = (x > 0) ? 1 : 0 elementwise: DATA's binary code of a sampled architecture from its
/// mixing weights (w > 0). out may be x.
template <class T, class D>
void indicator_positive(const Tensor<T, D>& x, const Tensor<T, D>& out) {
  detail::check_same_size(x, out, "indicator_positive");
  if constexpr (is_cpu<D>)
    out.eigen() = (x.eigen() > T(0)).template cast<T>();
  else
    DeviceOps<D>::indicator_positive(x, out);
}

/// The sum of squares of every element of every defined tensor of xs (undefined tensors, the
/// symbolic zeros, count 0), as a tensor [1] on the device. Deterministic. On the Cpu each tensor's
/// sum is taken in T by Eigen and the tensors' sums are added in double (as searcher.hpp did); on
/// Cuda every square is added in double. The result is rounded to T.
template <class T, class D>
Tensor<T, D> squared_norm(std::span<const Tensor<T, D>> xs) {
  Tensor<T, D> out = Tensor<T, D>::empty({1});
  if constexpr (is_cpu<D>) {
    double sq = 0;
    for (const auto& x : xs)
      if (x.defined() && x.numel()) sq += double(x.eigen().square().sum());
    out[0] = T(sq);
  } else {
    DeviceOps<D>::squared_norm(xs, out);
  }
  return out;
}

/// x *= factor s[0], with s a scalar tensor [1] on x's device (s may be x only when x has one
/// element: x = x (factor x)).
template <class T, class D>
void scale_by(const Tensor<T, D>& x, const Tensor<T, D>& s, std::type_identity_t<T> factor) {
  DATANAS_CHECK(x.defined(), "scale_by: undefined tensor");
  detail::check_scalar(s, "scale_by");
  if constexpr (is_cpu<D>) {
    const T c = factor * s[0];
    x.eigen() *= c;
  } else {
    DeviceOps<D>::scale_by(x, s, factor);
  }
}
/// x *= factor s[0] for a device tensor x and a host scalar tensor s [1] (read now, on the host).
template <class T, class D>
  requires(!is_cpu<D>)
void scale_by(const Tensor<T, D>& x, const Tensor<T, Cpu>& s, std::type_identity_t<T> factor) {
  DATANAS_CHECK(x.defined(), "scale_by: undefined tensor");
  detail::check_scalar(s, "scale_by");
  const T c = factor * s[0];
  DeviceOps<D>::scale_by_value(x, c);
}

/// num / max(sqrt(sq[0]), floor) as a tensor [1] on sq's device, computed in double and rounded to
/// T: DARTS' finite-difference step eps = 0.01 / max(||v||, 1e-12) from sq = squared_norm(v).
template <class T, class D>
Tensor<T, D> norm_ratio(const Tensor<T, D>& sq, double num, double floor) {
  detail::check_scalar(sq, "norm_ratio");
  Tensor<T, D> out = Tensor<T, D>::empty({1});
  if constexpr (is_cpu<D>)
    out[0] = T(num / std::max(std::sqrt(double(sq[0])), floor));
  else
    DeviceOps<D>::norm_ratio(sq, num, floor, out);
  return out;
}

/// 1 / s[0] as a tensor [1] on s's device (in T).
template <class T, class D>
Tensor<T, D> reciprocal(const Tensor<T, D>& s) {
  detail::check_scalar(s, "reciprocal");
  Tensor<T, D> out = Tensor<T, D>::empty({1});
  if constexpr (is_cpu<D>)
    out[0] = T(1) / s[0];
  else
    DeviceOps<D>::reciprocal(s, out);
  return out;
}

}  // namespace datanas
