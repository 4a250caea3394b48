// datanas/ops/cpu/small_gemm.hpp - a register-tiled product for the small inner dimensions of
// pointwise convolutions.
//
// A DARTS cell's 1x1 convolutions multiply a [Cout x Cin] weight by a [Cin x H*W] plane with
// Cin, Cout = 16..64 (C = 16 networks) and H*W = 64..1024. For such shapes Eigen's general
// product spends a large share of its time packing both operands into its panel layout, and an
// assignment `C = A * B` first zeroes C. nn() reads the operands in place instead:
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

#include "datanas/detail/eigen.hpp"
#include "datanas/ops/cpu/common.hpp"

namespace datanas::cpu::small_gemm {

namespace ei = Eigen::internal;
/// Tile shape: 6 rows x 4 packets of accumulators plus the operands fit the 32 registers of
/// AVX-512; with 16 registers (SSE, AVX2), 4 x 2 do.
template <class T>
inline constexpr int kWide = kLanes<T> >= 16 ? 4 : 2;

/// Largest inner dimension k for which nn() beats Eigen's product. Measured (one thread, AVX-512,
/// float, against conv_detail::gemm's Eigen product, min of several runs): 1.3-1.8x faster at
/// k = 16..64 for m = 16..64, n = 64..1024; 1.0-1.4x at k = 128..256; 0.95-1.0x at 144 x 1024 x
/// 144. Above it Eigen's cache blocking wins.
inline constexpr index_t kMaxInner = 128;

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

/// Rows [0, MR) of C = A B over all n columns: tiles of kNV packets, then single packets, then
/// the columns past the last whole packet one at a time.
template <int MR, class T, class AR, class AC, class BR>
inline void rows(index_t n, index_t k0, index_t k1, AR arows, AC acols, BR brows, T* c, index_t ldc,
                 bool accumulate) {
  constexpr int V = kLanes<T>, kNV = kWide<T>;
  index_t j = 0;
  for (; j + kNV * V <= n; j += kNV * V)
    tile<MR, kNV>(k0, k1, arows, acols, brows, j, c + j, ldc, accumulate);
  for (; j + V <= n; j += V) tile<MR, 1>(k0, k1, arows, acols, brows, j, c + j, ldc, accumulate);
  for (; j < n; ++j)
    for (int r = 0; r < MR; ++r) {
      const T* a = arows(r);
      T s = accumulate ? c[r * ldc + j] : T(0);
      for (index_t p = k0; p < k1; ++p) s += a[acols(p)] * brows(p)[j];
      c[r * ldc + j] = s;
    }
}

/// Inner indices per pass of product(): a tile's panel of B (kBlockK rows of 4 packets, 32 KB
/// of floats) stays in L1 while every row tile of C uses it. Without it, a long inner dimension
/// with few columns (a 3x3 convolution of 512 channels on 7x7: k = 4608) streams B from L2 once
/// per row tile. Each element still sums its products in order, so blocking changes no bit.
inline constexpr index_t kBlockK = 128;

/// C[m x n] (+)= A B with A(i, p) = arows(i)[acols(p)] (m x k) and B(p, j) = brows(p)[j]
/// (k x n), C row-major with leading dimension ldc.
template <class T, class AR, class AC, class BR>
void product(index_t m, index_t n, index_t k, AR arows, AC acols, BR brows, T* c, index_t ldc,
             bool accumulate) {
  constexpr int MR = kLanes<T> >= 16 ? 6 : 4;
  if (k == 0) {  // an empty sum
    if (!accumulate)
      for (index_t i = 0; i < m; ++i) std::fill_n(c + i * ldc, n, T(0));
    return;
  }
  for (index_t k0 = 0; k0 < k; k0 += kBlockK) {
    const index_t k1 = std::min(k, k0 + kBlockK);
    const bool acc = accumulate || k0 > 0;
    index_t i = 0;
    for (; i + MR <= m; i += MR)
      rows<MR>(n, k0, k1, arows.from(i), acols, brows, c + i * ldc, ldc, acc);
    if (m - i >= 4) {
      rows<4>(n, k0, k1, arows.from(i), acols, brows, c + i * ldc, ldc, acc);
      i += 4;
    }
    switch (m - i) {
      case 3: rows<3>(n, k0, k1, arows.from(i), acols, brows, c + i * ldc, ldc, acc); break;
      case 2: rows<2>(n, k0, k1, arows.from(i), acols, brows, c + i * ldc, ldc, acc); break;
      case 1: rows<1>(n, k0, k1, arows.from(i), acols, brows, c + i * ldc, ldc, acc); break;
      default: break;
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
