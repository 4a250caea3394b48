// datanas/ops/dropout.hpp - dropout and drop path, driven by the counter-based generator.
//
// Neither op stores its mask: the mask is a pure function of (seed, counter), so backward
// draws the same bits again instead of keeping an N*C*H*W byte mask alive.
#pragma once

#include "datanas/autograd/variable.hpp"
#include "datanas/core/random.hpp"
#include "datanas/ops/arithmetic.hpp"
#include "datanas/ops/cpu/common.hpp"

namespace datanas {

/// Element-wise dropout: each element kept with probability 1 - p and scaled by 1 / (1 - p).
/// Identity (the same node) when !training or p == 0. Consumes ceil(numel / 4) counters of gen.
template <class T, class D>
Var<T, D> dropout(const Var<T, D>& x, double p, bool training, PhiloxGenerator& gen) {
  DATANAS_CHECK(p >= 0.0 && p < 1.0, "dropout: probability must be in [0, 1), got ", p);
  if (!training || p == 0.0) return x;
  const float keep = float(1.0 - p);
  const T inv_keep = T(1) / T(keep);
  if constexpr (!is_cpu<D>) {  // the same mask, element i from word i % 4 of counter base + i / 4
    // The CPU's counters, reserved now, or before each replay of a captured step (StepGraph).
    std::uint64_t base = 0;
    const std::uint64_t n = std::uint64_t(x.value().numel());
    const std::uint64_t* base_dev =
        DeviceOps<D>::step_values(&base, 1, [&gen, n](std::uint64_t* b) { *b = gen.reserve(n); });
    const std::uint64_t seed = gen.seed();
    Var<T, D> y(Tensor<T, D>::empty(x.shape()));
    DeviceOps<D>::dropout_apply(seed, base, base_dev, keep, inv_keep, x.value(), y.value(), false);
    if (needs_grad(x))
      record(y, [x = GradRef(x), y = GradRef(y), seed, base, base_dev, keep, inv_keep] {
        auto [g, acc] = x.grad_slot();
        DeviceOps<D>::dropout_apply(seed, base, base_dev, keep, inv_keep, y.out_grad(), g, acc);
      });
    return y;
  }
  const std::uint64_t base = gen.reserve(std::uint64_t(x.value().numel()));
  const std::uint64_t seed = gen.seed();
  auto mask_scale = [=](index_t i) {
    return uniform_open01(philox4x32(base + std::uint64_t(i) / 4, 0, seed).v[i % 4]) < keep ? inv_keep : T(0);
  };
  Var<T, D> y(Tensor<T, D>::empty(x.shape()));
  const T* xp = x.value().data();
  T* yp = y.value().data();
  cpu::parallel_range(x.value().numel(), 8, [&](index_t b, index_t e) {
    for (index_t i = b; i < e; ++i) yp[i] = xp[i] * mask_scale(i);
  });
  if (needs_grad(x))
    record(y, [x = GradRef(x), y = GradRef(y), mask_scale] {
      auto slot = x.grad_slot();  // plain variables, not [g, acc]: see GradSlot
      auto& g = slot.g;
      const bool acc = slot.accumulate;
      const T* dy = y.out_grad().data();
      T* gp = g.data();
      cpu::parallel_range(g.numel(), 8, [&](index_t b, index_t e) {
        for (index_t i = b; i < e; ++i) gp[i] = (acc ? gp[i] : T(0)) + dy[i] * mask_scale(i);
      });
    });
  return y;
}

namespace detail {
/// Drop path's mask for one call on a batch of n samples: sample s kept and scaled by 1 / keep,
/// or zeroed, decided by word s % 4 of Philox counter base + s / 4, counters reserved from the
/// generator at construction (on a GPU, before each replay of a captured step: StepGraph). The
/// same words, so the same mask, on every device; nothing is stored, backward draws it again.
template <class T, class D>
class DropPathMask {
 public:
  DropPathMask(index_t n, double p, PhiloxGenerator& gen) : keep_(float(1.0 - p)), inv_keep_(T(1) / T(keep_)) {
    if constexpr (is_cpu<D>)
      base_ = gen.reserve(std::uint64_t(n));
    else
      base_dev_ = DeviceOps<D>::step_values(&base_, 1, [&gen, n](std::uint64_t* b) { *b = gen.reserve(std::uint64_t(n)); });
    seed_ = gen.seed();
  }
  /// dst (+)= mask * src, src and dst [n, ...].
  void apply(const Tensor<T, D>& src, const Tensor<T, D>& dst, bool accumulate) const {
    if constexpr (is_cpu<D>) {
      const index_t n = src.dim(0);
      if (n == 0) return;  // an empty batch: nothing to mask
      const index_t per = src.numel() / n;
      const T* sp = src.data();
      T* dp = dst.data();
      cpu::parallel_for(n, per, [&](index_t s) {
        cpu::store(cpu::ArrayMap<T>(dp + s * per, per), scale(s) * cpu::ConstArrayMap<T>(sp + s * per, per),
                   accumulate);
      });
    } else {
      DeviceOps<D>::drop_path_apply(seed_, base_, base_dev_, keep_, inv_keep_, src, dst, accumulate);
    }
  }
  /// dst = a + mask * x: one pass on the CPU; on a GPU a copy of a, then the masked x added.
  void add_apply(const Tensor<T, D>& a, const Tensor<T, D>& x, const Tensor<T, D>& dst) const {
    if constexpr (is_cpu<D>) {
      const index_t n = x.dim(0);
      if (n == 0) return;
      const index_t per = x.numel() / n;
      const T *ap = a.data(), *xp = x.data();
      T* dp = dst.data();
      cpu::parallel_for(n, per, [&](index_t s) {
        cpu::ArrayMap<T>(dp + s * per, per) =
            cpu::ConstArrayMap<T>(ap + s * per, per) + scale(s) * cpu::ConstArrayMap<T>(xp + s * per, per);
      });
    } else {
      dst.copy_from(a);
      apply(x, dst, true);
    }
  }

 private:
  [[nodiscard]] T scale(index_t s) const {
    return uniform_open01(philox4x32(base_ + std::uint64_t(s) / 4, 0, seed_).v[s % 4]) < keep_ ? inv_keep_ : T(0);
  }

  float keep_;
  T inv_keep_;
  std::uint64_t seed_ = 0, base_ = 0;
  const std::uint64_t* base_dev_ = nullptr;  // a GPU's device copy of base_ (StepGraph), or null
};

inline void check_drop_path(double p, const Shape& s) {
  DATANAS_CHECK(p >= 0.0 && p < 1.0, "drop_path: probability must be in [0, 1), got ", p);
  DATANAS_CHECK(s.rank() >= 1, "drop_path: input needs a batch dimension");
}
}  // namespace detail

/// Drop path (DARTS): each sample n of x [N, ...] is zeroed with probability p, otherwise
/// scaled by 1 / (1 - p). Identity when !training or p == 0, and for a symbolic zero (which
/// stays zero, drawing nothing). Consumes ceil(N / 4) counters.
template <class T, class D>
Var<T, D> drop_path(const Var<T, D>& x, double p, bool training, PhiloxGenerator& gen) {
  detail::check_drop_path(p, x.shape());
  if (!training || p == 0.0 || is_zero(x)) return x;
  const detail::DropPathMask<T, D> mask(x.shape()[0], p, gen);
  Var<T, D> y(Tensor<T, D>::empty(x.shape()));
  mask.apply(x.value(), y.value(), false);
  if (needs_grad(x))
    record(y, [x = GradRef(x), y = GradRef(y), mask] {
      auto [g, acc] = x.grad_slot();
      mask.apply(y.out_grad(), g, acc);
    });
  return y;
}

/// a + drop_path(x, p, training, gen): the same values and the same counters drawn, without
/// drop_path's output tensor (a DARTS evaluation cell adds each dropped op output to its node).
/// Either may be a symbolic zero.
template <class T, class D>
Var<T, D> add_drop_path(const Var<T, D>& a, const Var<T, D>& x, double p, bool training, PhiloxGenerator& gen) {
  detail::check_drop_path(p, x.shape());
  DATANAS_CHECK(a.shape() == x.shape(), "add_drop_path: shapes differ, ", a.shape().str(), " vs ",
                x.shape().str());
  if (!training || p == 0.0 || is_zero(x) || is_zero(a)) return add(a, drop_path(x, p, training, gen));
  const detail::DropPathMask<T, D> mask(x.shape()[0], p, gen);
  Var<T, D> y(Tensor<T, D>::empty(x.shape()));
  mask.add_apply(a.value(), x.value(), y.value());
  if (needs_grad(a, x))
    record(y, [a = GradRef(a), x = GradRef(x), y = GradRef(y), mask] {
      if (x.requires_grad()) {
        auto [g, acc] = x.grad_slot();
        mask.apply(y.out_grad(), g, acc);
      }
      if (a.requires_grad() && !a.adopt_grad(y)) {  // dL/da = dy: a takes dy's buffer when it can
        auto [g, acc] = a.grad_slot();
        detail::store_scaled(T(1), y.out_grad(), g, acc);
      }
    });
  return y;
}

}  // namespace datanas
