// datanas/ops/structure.hpp - ops that move data without arithmetic: channel concatenation
// (cell outputs) and the one-pixel shifted crop of FactorizedReduce.
#pragma once

#include <cstring>
#include <span>
#include <tuple>
#include <type_traits>

#include "datanas/autograd/variable.hpp"
#include "datanas/ops/cpu/common.hpp"

namespace datanas {

namespace cpu {
/// Copies `planes` blocks of `block` elements: dst[i * dst_stride + ...] (+)= src[i * src_stride + ...].
template <class T>
void copy_blocks(const T* src, index_t src_stride, T* dst, index_t dst_stride, index_t planes,
                 index_t block, bool accumulate) {
  parallel_for(planes, block, [&](index_t i) {
    const T* s = src + i * src_stride;
    T* d = dst + i * dst_stride;
    if (accumulate)
      ArrayMap<T>(d, block) += ConstArrayMap<T>(s, block);
    else
      std::memcpy(d, s, sizeof(T) * block);
  });
}
}  // namespace cpu

/// Concatenation along channels: xs[i] [N, C_i, H, W] -> [N, sum C_i, H, W] (the DARTS cell
/// output). Symbolic zeros are materialised as zero channels.
template <class T, class D>
Var<T, D> concat_channels(std::type_identity_t<std::span<const Var<T, D>>> xs) {
  DATANAS_CHECK(!xs.empty(), "concat_channels: no inputs");
  const Shape s0 = xs[0].shape();
  DATANAS_CHECK(s0.rank() == 4, "concat_channels: inputs must be [N, C, H, W], got ", s0.str());
  index_t c_total = 0;
  for (std::size_t i = 0; i < xs.size(); ++i) {
    const Shape& s = xs[i].shape();
    DATANAS_CHECK(s.rank() == 4 && s.n() == s0.n() && s.h() == s0.h() && s.w() == s0.w(),
                  "concat_channels: input ", i, " has shape ", s.str(), ", input 0 has ", s0.str());
    c_total += s.c();
  }
  const index_t n = s0.n(), hw = s0.h() * s0.w();
  Var<T, D> y(Tensor<T, D>::empty({n, c_total, s0.h(), s0.w()}));
  bool any = false;
  if constexpr (!is_cpu<D>) {
    DeviceOps<D>::concat_channels_forward(xs, y.value());
    for (const auto& x : xs) any = any || needs_grad(x);
    if (any) {
      const std::size_t pos = tape<T, D>().stash_refs(xs);
      const std::size_t count = xs.size();
      record(y, [pos, count, y = GradRef(y)] {
        const auto& tp = tape<T, D>();
        DeviceOps<D>::concat_channels_backward(
            count,
            [&](std::size_t i) -> std::tuple<T*, index_t, bool> {
              const GradRef<T, D>& x = tp.stashed_ref(pos + i);
              if (!x.requires_grad()) return {nullptr, x.shape().c(), false};
              auto [g, acc] = x.grad_slot();
              return {g.data(), x.shape().c(), acc};
            },
            y.out_grad());
      });
    }
    return y;
  }
  T* yp = y.value().data();
  index_t c_off = 0;
  for (const auto& x : xs) {
    const index_t block = x.shape().c() * hw;
    if (x.value().defined()) {
      cpu::copy_blocks(x.value().data(), block, yp + c_off * hw, c_total * hw, n, block, false);
    } else {
      for (index_t i = 0; i < n; ++i) std::memset(yp + (i * c_total + c_off) * hw, 0, sizeof(T) * block);
    }
    c_off += x.shape().c();
    any = any || needs_grad(x);
  }
  if (any) {
    const std::size_t pos = tape<T, D>().stash_refs(xs);
    const std::size_t count = xs.size();
    record(y, [pos, count, y = GradRef(y), c_total, hw, n] {
      const auto& tp = tape<T, D>();
      const T* dy = y.out_grad().data();
      index_t off = 0;
      for (std::size_t i = 0; i < count; ++i) {
        const GradRef<T, D>& x = tp.stashed_ref(pos + i);
        const index_t block = x.shape().c() * hw;
        if (x.requires_grad()) {  // symbolic zeros do not require grad
          auto [g, acc] = x.grad_slot();
          cpu::copy_blocks(dy + off * hw, c_total * hw, g.data(), block, n, block, acc);
        }
        off += x.shape().c();
      }
    });
  }
  return y;
}

/// x[:, :, top:, left:] : [N, C, H, W] -> [N, C, H - top, W - left]. With top = left = 1 this
/// is FactorizedReduce's shift (which spaces::FactorizedReduce applies to its padded second
/// convolution's output rather than to that convolution's input: the same values, no copy of x).
template <class T, class D>
Var<T, D> crop(const Var<T, D>& x, int top, int left) {
  const Shape& s = x.shape();
  DATANAS_CHECK(s.rank() == 4, "crop: input must be [N, C, H, W], got ", s.str());
  DATANAS_CHECK(top >= 0 && left >= 0 && top < s.h() && left < s.w(), "crop: offsets (", top,
                ", ", left, ") out of range for ", s.str());
  const index_t h = s.h(), w = s.w(), ho = h - top, wo = w - left, planes = s.n() * s.c();
  Var<T, D> y(Tensor<T, D>::empty({s.n(), s.c(), ho, wo}));
  if constexpr (!is_cpu<D>) {
    DeviceOps<D>::crop_forward(x.value(), top, left, y.value());
    if (needs_grad(x))
      record(y, [x = GradRef(x), y = GradRef(y), top, left] {
        auto [g, acc] = x.grad_slot();
        DeviceOps<D>::crop_backward(y.out_grad(), top, left, g, acc);
      });
    return y;
  }
  const T* xp = x.value().data();
  T* yp = y.value().data();
  cpu::parallel_for(planes, ho * wo, [&](index_t p) {
    for (index_t r = 0; r < ho; ++r)
      std::memcpy(yp + (p * ho + r) * wo, xp + (p * h + r + top) * w + left, sizeof(T) * wo);
  });
  if (needs_grad(x))
    record(y, [x = GradRef(x), y = GradRef(y), top, left, h, w, ho, wo, planes] {
      auto slot = x.grad_slot();  // plain variables, not [g, acc]: see GradSlot
      auto& g = slot.g;
      const bool acc = slot.accumulate;
      const T* dy = y.out_grad().data();
      T* gp = g.data();
      cpu::parallel_for(planes, h * w, [&](index_t p) {
        T* gplane = gp + p * h * w;
        if (!acc) {  // rows and columns cut away get zero gradient
          std::memset(gplane, 0, sizeof(T) * top * w);
          for (index_t r = top; r < h; ++r) std::memset(gplane + r * w, 0, sizeof(T) * left);
        }
        for (index_t r = 0; r < ho; ++r)
          cpu::store(cpu::ArrayMap<T>(gplane + (r + top) * w + left, wo),
                     cpu::ConstArrayMap<T>(dy + (p * ho + r) * wo, wo), acc);
      });
    });
  return y;
}

/// The FactorizedReduce shift: x[:, :, 1:, 1:] (see crop).
template <class T, class D>
Var<T, D> shift_crop(const Var<T, D>& x) {
  return crop(x, 1, 1);
}

}  // namespace datanas
