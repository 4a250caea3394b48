// datanas/ops/cpu/weighted_sum.hpp - CPU kernels of the mixed op y = sum_k w_k x_k.
//
// A DARTS edge mixes 8 terms of N*C*H*W elements each (1M floats, 4 MB, at C = 16, 32x32,
// batch 64), more than L2. Looping term by term over the whole tensor would read and write y
// once per term in forward, and read dy once per term in backward. Both kernels instead walk
// blocks of kBlock elements (8 KB of floats, resident in L1) and, in each block, visit every
// term: y (forward) or dy (backward) then crosses the memory hierarchy once.
//
// The per-term dot products of the backward are summed per block in T, then over blocks in
// block order in double: the result does not depend on the number of threads.
#pragma once

#include <algorithm>

#include "datanas/ops/cpu/common.hpp"

namespace datanas::cpu::weighted_sum {

/// Elements per block: small enough that a block of y or dy stays in L1 while the terms stream
/// past it, large enough that the per-block overhead is negligible.
inline constexpr index_t kBlock = 2048;

[[nodiscard]] inline index_t blocks(index_t n) { return (n + kBlock - 1) / kBlock; }

/// y = sum_i w[i] * x[i] over n elements, terms in order i = 0, 1, ...; a null x[i] is a
/// symbolic zero and is skipped; y = 0 when every term is null.
template <class T>
void forward(int k, const T* const* x, const T* w, index_t n, T* y) {
  parallel_range(blocks(n), kBlock * (k + 1), [&](index_t b, index_t e) {
    for (index_t blk = b; blk < e; ++blk) {
      const index_t lo = blk * kBlock, len = std::min(kBlock, n - lo);
      ArrayMap<T> yv(y + lo, len);
      bool first = true;
      for (int i = 0; i < k; ++i) {
        if (!x[i]) continue;
        const auto term = w[i] * ConstArrayMap<T>(x[i] + lo, len);
        if (first)
          yv = term;
        else
          yv += term;
        first = false;
      }
      if (first) yv.setZero();
    }
  });
}

/// The backward of forward, given dy [n]:
///   dx[i] (+)= w[i] * dy for each i with dx[i] not null (added when acc[i]);
///   dot[i] = sum(x[i] * dy) for each i with x[i] not null when dot is not null (else
///   untouched).
template <class T>
void backward(int k, const T* const* x, const T* w, const T* dy, index_t n, T* const* dx,
              const bool* acc, double* dot) {
  const index_t nb = blocks(n);
  // Per-block partial dot products [nb, k]; rows of terms without x stay unread.
  Tensor<T, Cpu> partial = dot ? Tensor<T, Cpu>::empty({nb * k}) : Tensor<T, Cpu>();
  T* pp = dot ? partial.data() : nullptr;
  parallel_range(nb, kBlock * (2 * k + 1), [&](index_t b, index_t e) {
    for (index_t blk = b; blk < e; ++blk) {
      const index_t lo = blk * kBlock, len = std::min(kBlock, n - lo);
      const ConstArrayMap<T> g(dy + lo, len);
      for (int i = 0; i < k; ++i) {
        if (pp && x[i]) pp[blk * k + i] = (ConstArrayMap<T>(x[i] + lo, len) * g).sum();
        if (dx[i]) store(ArrayMap<T>(dx[i] + lo, len), w[i] * g, acc[i]);
      }
    }
  });
  if (!dot) return;
  for (int i = 0; i < k; ++i) {
    if (!x[i]) continue;
    double s = 0;
    for (index_t blk = 0; blk < nb; ++blk) s += double(pp[blk * k + i]);
    dot[i] = s;
  }
}

}  // namespace datanas::cpu::weighted_sum
