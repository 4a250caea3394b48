// datanas/ops/cpu/small_gemm.hpp - a register-tiled product for the small inner dimensions of
// pointwise convolutions.
//
// A DARTS cell's 1x1 convolutions multiply a [Cout x Cin] weight by a [Cin x H*W] plane with
// Cin, Cout = 16..64 (C = 16 networks) and H*W = 64..1024. For such shapes Eigen's general
// product spends a large share of its time packing both operands into its panel layout, and an
// assignment `C = A * B` first zeroes C. nn() reads A in place and B in place or, where several
// row tiles share them, through a small copy of a column panel (product()):
//   C[m x n] (+)= op(A) B, B [k x n] row-major, op(A) = A [m x k] or A^T (A stored k x m): MR rows
//   x NV packets of C in registers; per step of k, NV packet loads of B's row and MR broadcasts
//   of A, MR * NV fused multiply-adds; C is loaded (accumulate) or not, never zeroed first.
//   Columns past the last whole packet are done one by one.
// It serves the forward (W X) and data-gradient (W^T dY) products of the 1x1 and im2col
// convolutions (conv.hpp's gemm). product() is the same kernel with operand rows (and A's
// columns) addressed through offset tables: conv.hpp's shifted-taps path reads the rows of an
// implicit im2col matrix from one padded plane. The im2col path's weight gradient (dY X^T: a
// dot product along H*W per element of C) stays with Eigen: a register-tiled version was slower
// at these sizes (its horizontal sums dominate); the shifted path computes the transpose,
// X_taps dY^T, which is an ordinary product.
// Results equal Eigen's to rounding (the summation order differs), not bit for bit.
// No allocation, no threading: callers split the work (conv.hpp's gemm_rows_parallel).
#pragma once

#include <algorithm>
#include <cstdint>
#include <utility>

#include "datanas/detail/eigen.hpp"
#include "datanas/ops/cpu/common.hpp"

namespace datanas::cpu::small_gemm {

namespace ei = Eigen::internal;
/// Packets of C per tile row: 4 with the 32 registers of AVX-512, 2 with 16 (SSE, AVX2).
template <class T>
inline constexpr int kWide = kLanes<T> >= 16 ? 4 : 2;

/// Largest inner dimension k for which nn() beats Eigen's product (conv_detail::gemm's), one
/// thread, float, min of several runs. Zen 3 (AVX2), with the panel copy: 1.2-1.55x faster at
/// k = 144..576 for the 1x1 shapes of the DARTS networks (m = 32..144, n = 64..1024); Eigen
/// 1.07x faster at 512 x 49 x 4608 (a 3x3 convolution of 512 channels on 7x7). On AVX-512 only
/// the earlier kernel (rows read in place) was measured, with the limit at 128: 1.3-1.8x faster
/// at k = 16..64, 1.0-1.4x at 128..256, 0.95-1.0x at 144 x 1024 x 144.
inline constexpr index_t kMaxInner = 576;

/// Where the rows of an operand start: row p at base + p * ld (an ordinary row-major matrix, or
/// with ld = 1 a transposed one read down its columns)...
template <class T>
struct StridedRows {
  const T* base;
  index_t ld;
  const T* operator()(index_t p) const { return base + p * ld; }
  /// The same matrix from row r on.
  [[nodiscard]] StridedRows from(index_t r) const { return {base + r * ld, ld}; }
};
/// ... or at base + off[p]: the shifted rows of a padded plane that stand for the taps of a
/// convolution (conv.hpp's shifted path), which need no im2col copy.
template <class T>
struct OffsetRows {
  const T* base;
  const std::int32_t* off;
  const T* operator()(index_t p) const { return base + off[p]; }
  [[nodiscard]] OffsetRows from(index_t r) const { return {base, off + r}; }
};
/// ... or a copy of rows [k0, k0 + kBlockK) of a panel of W columns, row p at base + (p - k0) W.
template <class T, int W>
struct PanelRows {
  const T* base;
  index_t k0;
  const T* operator()(index_t p) const { return base + (p - k0) * W; }
};
/// Where element p of a row of A lies from the row's start: p * stride...
struct StridedCols {
  index_t stride;
  index_t operator()(index_t p) const { return p * stride; }
};
/// ... or off[p]: a weight read in the order (output channel, tap) for the data gradient of the
/// shifted path, without a transposed copy.
struct OffsetCols {
  const std::int32_t* off;
  index_t operator()(index_t p) const { return off[p]; }
};

/// Rows of C per tile: MR x kWide packets of accumulators, kWide packets of B's row and one
/// broadcast of A fit the registers (AVX-512: 24 + 4 + 1 of 32; SSE and AVX2: 12 + 2 + 1 of 16).
/// Measured on AVX2 (Zen 3, one thread, float, the DARTS 1x1 shapes m = k = 16..64, n = 64..1024):
/// 6 rows ran 1.1-1.5x faster than 4 (the most where B is in cache), whose 8 accumulators just
/// cover the fused multiply-adds' latency times their throughput and so stall at every hiccup.
inline constexpr int kRows = 6;

/// One MR x (NV packets) tile of C (+)= A B at c over the inner indices [k0, k1), columns
/// [j, j + NV * V) of B: A(i, p) = arows(i)[acols(p)], B(p, j) = brows(p)[j].
template <int MR, int NV, class T, class AR, class AC, class BR>
inline void tile(index_t k0, index_t k1, AR arows, AC acols, BR brows, index_t j, T* __restrict c,
                 index_t ldc, bool accumulate) {
  constexpr int V = kLanes<T>;
  using P = Packet<T>;
  const T* ar[MR];
  for (int r = 0; r < MR; ++r) ar[r] = arows(r);
  P acc[MR][NV];
  for (int r = 0; r < MR; ++r)
    for (int v = 0; v < NV; ++v)
      acc[r][v] = accumulate ? ei::ploadu<P>(c + r * ldc + v * V) : ei::pset1<P>(T(0));
  for (index_t p = k0; p < k1; ++p) {
    const T* bp = brows(p) + j;
    P bv[NV];
    for (int v = 0; v < NV; ++v) bv[v] = ei::ploadu<P>(bp + v * V);
    const index_t ap = acols(p);
    for (int r = 0; r < MR; ++r) {
      const P a = ei::pset1<P>(ar[r][ap]);
      for (int v = 0; v < NV; ++v) acc[r][v] = ei::pmadd(a, bv[v], acc[r][v]);
    }
  }
  for (int r = 0; r < MR; ++r)
    for (int v = 0; v < NV; ++v) ei::pstoreu(c + r * ldc + v * V, acc[r][v]);
}

/// All m rows of C at columns [j, j + NV * V): whole kRows tiles, then one tile of the rest.
template <int NV, class T, class AR, class AC, class BR>
inline void column_panel(index_t m, index_t k0, index_t k1, AR arows, AC acols, BR brows, index_t j,
                         T* c, index_t ldc, bool accumulate) {
  constexpr int MR = kRows;
  index_t i = 0;
  for (; i + MR <= m; i += MR)
    tile<MR, NV>(k0, k1, arows.from(i), acols, brows, j, c + i * ldc, ldc, accumulate);
  // The last m - i < MR rows: one tile of exactly that many (R + 1 for R in [0, MR - 1)).
  const auto rest = [&]<int R>() {
    tile<R, NV>(k0, k1, arows.from(i), acols, brows, j, c + i * ldc, ldc, accumulate);
  };
  const auto last = [&]<int... R>(std::integer_sequence<int, R...>) {
    ((m - i == R + 1 ? rest.template operator()<R + 1>() : void()), ...);
  };
  last(std::make_integer_sequence<int, MR - 1>{});
}

/// Inner indices per pass of product(): its copy of B's panel (kBlockK rows of kWide packets:
/// 8 KB of floats with AVX2, 16 KB with AVX-512) stays in L1 while every row tile of C reads it.
/// Without it, a long inner dimension with few columns (a 3x3 convolution of 512 channels on
/// 7x7: k = 4608) streams B from L2 once per row tile. Each element still sums its products in
/// order, so blocking changes no bit.
template <class T>
inline constexpr index_t kBlockK =
    std::min<index_t>(128, 16384 / index_t(kWide<T> * kLanes<T> * sizeof(T)));

/// C[m x n] (+)= A B with A(i, p) = arows(i)[acols(p)] (m x k) and B(p, j) = brows(p)[j]
/// (k x n), C row-major with leading dimension ldc.
///
/// Column panels of kWide packets are the outer loop, and when more than one row tile reads a
/// panel, the panel is first copied into a contiguous block on the stack. Why: B's rows are
/// H*W elements apart, and at 32x32 that is exactly 4 KB, so the k rows of a panel fall into one
/// set of an 8-way L1 cache and evict each other; each row tile then read the panel from L2 (on
/// Zen 3, one thread, 16 channels at 32x32: 20 GFLOP/s in place, 35 packed). The copy is one
/// load and one store per packet, against a load per row tile that reads it.
template <class T, class AR, class AC, class BR>
void product(index_t m, index_t n, index_t k, AR arows, AC acols, BR brows, T* c, index_t ldc,
             bool accumulate) {
  constexpr int V = kLanes<T>, kNV = kWide<T>, W = kNV * V;
  constexpr index_t kb = kBlockK<T>;
  if (k == 0) {  // an empty sum
    if (!accumulate)
      for (index_t i = 0; i < m; ++i) std::fill_n(c + i * ldc, n, T(0));
    return;
  }
  const bool pack = m > kRows;
  alignas(64) T panel[kb * W];
  for (index_t k0 = 0; k0 < k; k0 += kb) {
    const index_t k1 = std::min(k, k0 + kb);
    const bool acc = accumulate || k0 > 0;
    index_t j = 0;
    for (; j + W <= n; j += W) {
      if (!pack) {
        column_panel<kNV>(m, k0, k1, arows, acols, brows, j, c + j, ldc, acc);
        continue;
      }
      for (index_t p = k0; p < k1; ++p) {
        const T* src = brows(p) + j;
        T* dst = panel + (p - k0) * W;
        for (int v = 0; v < kNV; ++v) ei::pstore(dst + v * V, ei::ploadu<Packet<T>>(src + v * V));
      }
      column_panel<kNV>(m, k0, k1, arows, acols, PanelRows<T, W>{panel, k0}, 0, c + j, ldc, acc);
    }
    for (; j + V <= n; j += V) column_panel<1>(m, k0, k1, arows, acols, brows, j, c + j, ldc, acc);
    for (; j < n; ++j)
      for (index_t i = 0; i < m; ++i) {
        const T* a = arows(i);
        T s = acc ? c[i * ldc + j] : T(0);
        for (index_t p = k0; p < k1; ++p) s += a[acols(p)] * brows(p)[j];
        c[i * ldc + j] = s;
      }
  }
}

/// C[m x n] (+)= op(A) B: op(A) = A (row-major m x k, leading dimension lda) or, with TA, the
/// transpose of A stored k x m; B row-major k x n (ldb); C row-major (ldc).
template <bool TA, class T>
void nn(index_t m, index_t n, index_t k, const T* a, index_t lda, const T* b, index_t ldb, T* c,
        index_t ldc, bool accumulate) {
  product(m, n, k, StridedRows<T>{a, TA ? 1 : lda}, StridedCols{TA ? lda : 1},
          StridedRows<T>{b, ldb}, c, ldc, accumulate);
}

}  // namespace datanas::cpu::small_gemm
