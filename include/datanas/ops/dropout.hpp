// datanas/ops/dropout.hpp - dropout and drop path, driven by the counter-based generator.
//
// Neither op stores its mask: the mask is a pure function of (seed, counter), so backward
// draws the same bits again instead of keeping an N*C*H*W byte mask alive.
#pragma once

#include "datanas/autograd/variable.hpp"
#include "datanas/core/random.hpp"
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
      auto [g, acc] = x.grad_slot();
      const T* dy = y.out_grad().data();
      T* gp = g.data();
      cpu::parallel_range(g.numel(), 8, [&](index_t b, index_t e) {
        for (index_t i = b; i < e; ++i) gp[i] = (acc ? gp[i] : T(0)) + dy[i] * mask_scale(i);
      });
    });
  return y;
}

/// Drop path (DARTS): each sample n of x [N, ...] is zeroed with probability p, otherwise
/// scaled by 1 / (1 - p). Identity when !training or p == 0. Consumes ceil(N / 4) counters.
template <class T, class D>
Var<T, D> drop_path(const Var<T, D>& x, double p, bool training, PhiloxGenerator& gen) {
  DATANAS_CHECK(p >= 0.0 && p < 1.0, "drop_path: probability must be in [0, 1), got ", p);
  DATANAS_CHECK(x.shape().rank() >= 1, "drop_path: input needs a batch dimension");
  if (!training || p == 0.0) return x;
  const index_t n = x.shape()[0], per = x.value().numel() / n;
  const float keep = float(1.0 - p);
  const T inv_keep = T(1) / T(keep);
  if constexpr (!is_cpu<D>) {  // the same mask, sample s from word s % 4 of counter base + s / 4
    // The CPU's counters, reserved now, or before each replay of a captured step (StepGraph).
    std::uint64_t base = 0;
    const std::uint64_t* base_dev = DeviceOps<D>::step_values(
        &base, 1, [&gen, n](std::uint64_t* b) { *b = gen.reserve(std::uint64_t(n)); });
    const std::uint64_t seed = gen.seed();
    Var<T, D> y(Tensor<T, D>::empty(x.shape()));
    DeviceOps<D>::drop_path_apply(seed, base, base_dev, keep, inv_keep, x.value(), y.value(), false);
    if (needs_grad(x))
      record(y, [x = GradRef(x), y = GradRef(y), seed, base, base_dev, keep, inv_keep] {
        auto [g, acc] = x.grad_slot();
        DeviceOps<D>::drop_path_apply(seed, base, base_dev, keep, inv_keep, y.out_grad(), g, acc);
      });
    return y;
  }
  const std::uint64_t base = gen.reserve(std::uint64_t(n));
  const std::uint64_t seed = gen.seed();
  auto sample_scale = [=](index_t s) {
    return uniform_open01(philox4x32(base + std::uint64_t(s) / 4, 0, seed).v[s % 4]) < keep ? inv_keep : T(0);
  };
  Var<T, D> y(Tensor<T, D>::empty(x.shape()));
  const T* xp = x.value().data();
  T* yp = y.value().data();
  cpu::parallel_for(n, per, [&](index_t s) {
    cpu::ArrayMap<T>(yp + s * per, per) = sample_scale(s) * cpu::ConstArrayMap<T>(xp + s * per, per);
  });
  if (needs_grad(x))
    record(y, [x = GradRef(x), y = GradRef(y), sample_scale, n, per] {
      auto [g, acc] = x.grad_slot();
      const T* dy = y.out_grad().data();
      T* gp = g.data();
      cpu::parallel_for(n, per, [&](index_t s) {
        cpu::store(cpu::ArrayMap<T>(gp + s * per, per),
                   sample_scale(s) * cpu::ConstArrayMap<T>(dy + s * per, per), acc);
      });
    });
  return y;
}

}  // namespace datanas
