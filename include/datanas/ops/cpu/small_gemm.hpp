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
//   Columns past the last whole packet (n = 49, 196: the 7x7 and 14x14 planes of Fashion-MNIST
//   and ImageNet networks) are one more tile, through zero-padded copies.
// It serves the forward (W X) and data-gradient (W^T dY) products of the 1x1 and im2col
// convolutions (conv.hpp's gemm). product() is the same kernel with operand rows (and A's
// columns) addressed through offset tables: conv.hpp's shifted-taps path reads the rows of an
// implicit im2col matrix from one padded plane. The weight gradient of the 1x1 and im2col paths,
// dY X^T (nt()), is the same kernel again, with B's panels transposed while they are copied
// (V x V blocks in registers): 1.4-1.8x Eigen's speed (bench_gemm, form nt). As dot products
// along H*W instead (tiles of 2-4 x 2-4 packet accumulators, a horizontal sum per element of C),
// a throwaway prototype ran at 0.37-1.7x Eigen's, slowest on 8x8 and 7x7 planes, where the
// horizontal sums weigh most. The shifted path computes the transpose, X_taps dY^T, which is an
// ordinary product.
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

/// Largest inner dimension k that conv.hpp's gemm gives to nn() rather than Eigen: the largest
/// measured (benchmarks/bench_gemm.cpp, one thread, float). Zen 3 (AVX2): nn() 1.2-1.6x faster
/// at k = 16..1152 on the 1x1 shapes of the DARTS networks (m = 16..144, n = 49..1024), 1.4x at
/// 256 x 196 x 2304 and 1.15-1.25x at 512 x 49 x 4608 (3x3 convolutions of 256 and 512
/// channels); with rows in blocks of kBlockM, 1.45x at 2240 x 128 x 10000 and 2240 x 850 x 10000
/// (the data gradient of the PTB decoder, a linear layer onto 10,000 words). Zen 5 (AVX-512,
/// 2026-12-02): 1.02-1.75x on every 1x1 shape above and 1.05-1.63x on the decoder's; slower only
/// at 512 x 49 x 4608 as A B (0.73x: 49 columns fill 4 packets of 16, where Eigen vectorises
/// the 512 rows), still 1.4x torch.mm there.
inline constexpr index_t kMaxInner = 10000;

/// Where the rows of an operand start: row p at base + p * ld (an ordinary row-major matrix, or
/// with ld = 1 a transposed one read down its columns)...
template <class T>
struct StridedRows {
  const T* base;
  index_t ld;
  const T* operator()(index_t p) const { return base + p * ld; }
  /// The same matrix from row r on.
  [[nodiscard]] StridedRows from(index_t r) const { return {base + r * ld, ld}; }
  /// The same matrix from column j on.
  [[nodiscard]] StridedRows columns_from(index_t j) const { return {base + j, ld}; }
};
/// ... or at base + off[p]: the shifted rows of a padded plane that stand for the taps of a
/// convolution (conv.hpp's shifted path), which need no im2col copy.
template <class T>
struct OffsetRows {
  const T* base;
  const std::int32_t* off;
  const T* operator()(index_t p) const { return base + off[p]; }
  [[nodiscard]] OffsetRows from(index_t r) const { return {base, off + r}; }
  [[nodiscard]] OffsetRows columns_from(index_t j) const { return {base + j, off}; }
};
/// ... or a copy of rows [k0, k0 + kBlockK) of a panel of W columns, row p at base + (p - k0) W.
template <class T, int W>
struct PanelRows {
  const T* base;
  index_t k0;
  const T* operator()(index_t p) const { return base + (p - k0) * W; }
};
/// ... or B stored transposed, n x k with row j at base + j * ld: B(p, j) = base[j * ld + p]. The
/// operand X^T of a weight gradient dY X^T, read only through transposed copies of its panels
/// (pack_panel), so a row pointer never exists.
template <class T>
struct TransposedRows {
  const T* base;
  index_t ld;
  [[nodiscard]] TransposedRows columns_from(index_t j) const { return {base + j * ld, ld}; }
};
template <class BR>
inline constexpr bool kTransposed = false;
template <class T>
inline constexpr bool kTransposed<TransposedRows<T>> = true;
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
/// [j, j + NV * V) of B: A(i, p) = arows(i)[acols(p)], B(p, j) = brows(p)[j]. With kTail (one
/// packet, NV = 1) only the first `cols` < V columns of C exist: C goes through a packet on the
/// stack (B then comes from a zero-padded copy, product()).
template <int MR, int NV, bool kTail = false, class T, class AR, class AC, class BR>
inline void tile(index_t k0, index_t k1, AR arows, AC acols, BR brows, index_t j, T* __restrict c,
                 index_t ldc, bool accumulate, [[maybe_unused]] index_t cols = 0) {
  constexpr int V = kLanes<T>;
  using P = Packet<T>;
  static_assert(!kTail || NV == 1, "a tail is one partial packet");
  const T* ar[MR];
  for (int r = 0; r < MR; ++r) ar[r] = arows(r);
  P acc[MR][NV];
  for (int r = 0; r < MR; ++r)
    for (int v = 0; v < NV; ++v) {
      if constexpr (kTail) {
        alignas(64) T part[V] = {};  // lanes past `cols` stay 0 and are never stored
        if (accumulate) std::copy_n(c + r * ldc, cols, part);
        acc[r][v] = accumulate ? ei::pload<P>(part) : ei::pset1<P>(T(0));
      } else {
        acc[r][v] = accumulate ? ei::ploadu<P>(c + r * ldc + v * V) : ei::pset1<P>(T(0));
      }
    }
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
    for (int v = 0; v < NV; ++v) {
      if constexpr (kTail) {
        alignas(64) T part[V];
        ei::pstore(part, acc[r][v]);
        std::copy_n(part, cols, c + r * ldc);
      } else {
        ei::pstoreu(c + r * ldc + v * V, acc[r][v]);
      }
    }
}

/// All m rows of C at columns [j, j + NV * V): whole kRows tiles, then one tile of the rest.
/// kTail, cols: as tile's.
template <int NV, bool kTail = false, class T, class AR, class AC, class BR>
inline void column_panel(index_t m, index_t k0, index_t k1, AR arows, AC acols, BR brows, index_t j,
                         T* c, index_t ldc, bool accumulate, index_t cols = 0) {
  constexpr int MR = kRows;
  index_t i = 0;
  for (; i + MR <= m; i += MR)
    tile<MR, NV, kTail>(k0, k1, arows.from(i), acols, brows, j, c + i * ldc, ldc, accumulate, cols);
  // The last m - i < MR rows: one tile of exactly that many (R + 1 for R in [0, MR - 1)).
  const auto rest = [&]<int R>() {
    tile<R, NV, kTail>(k0, k1, arows.from(i), acols, brows, j, c + i * ldc, ldc, accumulate, cols);
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

/// dst[(p - k0) * Wd + q] = B(p, j + q) for p in [k0, k1) and q < cols, 0 for q in [cols, Wd):
/// a panel of B in the layout that tile() reads through PanelRows<T, Wd>. cols > Wd - V (a
/// panel is whole packets but for the last). B stored transposed goes through V x V blocks
/// transposed in registers: V rows of B^T read along V inner indices, stored as V packets.
template <int Wd, class T, class BR>
inline void pack_panel(index_t k0, index_t k1, BR brows, index_t j, index_t cols,
                       T* __restrict dst) {
  constexpr int V = kLanes<T>;
  using P = Packet<T>;
  if constexpr (kTransposed<BR>) {
    for (index_t q0 = 0; q0 < cols; q0 += V) {
      const index_t nq = std::min<index_t>(V, cols - q0);  // rows of B^T in this block
      const T* src = brows.base + (j + q0) * brows.ld;
      const index_t ld = brows.ld;
      index_t p = k0;
      for (; p + V <= k1; p += V) {
// PacketBlock's argument is a packet type, whose vector attributes GCC drops and warns about (as
// conv.hpp's dw_correlate_rows; Eigen silences the same warning in its own headers).
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wignored-attributes"
        ei::PacketBlock<P, V> blk;
#pragma GCC diagnostic pop
        for (int r = 0; r < V; ++r)
          blk.packet[r] = r < nq ? ei::ploadu<P>(src + r * ld + p) : ei::pset1<P>(T(0));
        ei::ptranspose(blk);
        for (int r = 0; r < V; ++r) ei::pstore(dst + (p - k0 + r) * Wd + q0, blk.packet[r]);
      }
      for (; p < k1; ++p)  // the last k mod V inner indices (a 7x7 or 14x14 plane's)
        for (int r = 0; r < V; ++r) dst[(p - k0) * Wd + q0 + r] = r < nq ? src[r * ld + p] : T(0);
    }
  } else {
    for (index_t p = k0; p < k1; ++p) {
      const T* src = brows(p) + j;
      T* d = dst + (p - k0) * Wd;
      if (cols == Wd)
        for (int v = 0; v < Wd / V; ++v) ei::pstore(d + v * V, ei::ploadu<P>(src + v * V));
      else
        std::fill(std::copy_n(src, cols, d), d + Wd, T(0));
    }
  }
}

/// Rows of C per pass of product() (a multiple of kRows): the kBlockK inner indices of that many
/// rows of A (120 KB of floats) stay in L2 while every column panel reads them. Without it, a
/// product with thousands of rows (the PTB decoder behind linear: 2,240 x 10,000 x 128) read A
/// from L3 once per panel and ran no faster than Eigen; blocked, 1.25-1.5x Eigen (measured with
/// 96 to 480 rows alike, docs/benchmarks.md "Linear layers on the small product"). Splitting rows
/// changes no element's sum.
inline constexpr index_t kBlockM = 40 * kRows;

/// Columns of C per pass of product() when a block of kBlockM rows of C exceeds kChunkBytes and
/// the inner dimension takes more than one kBlockK pass: each pass reads and writes that block,
/// so it had better stay in L2 (240 x 256 floats: 240 KB) from one pass to the next. Without
/// it, the PTB decoder's forward x W^T at the recipe's 850 units (2,240 x 10,000 x 850, nt; a
/// 9.6 MB block of C, seven passes) ran at 54 GFLOP/s, against 80 in chunks of 256 columns
/// (Zen 3, one thread; 128 columns 75, 512 columns 79). Smaller blocks stay in cache between
/// passes anyway: every convolution's (at most 240 x about 1,100 floats), and the decoder's
/// data and weight gradients at 850 units (240 x 850), which ran 0-7% slower chunked (their A
/// block is read once per chunk then). Chunking changes no element's sum.
inline constexpr index_t kBlockN = 256;
inline constexpr index_t kChunkBytes = index_t(2) << 20;

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
  if (m > kBlockM) {
    for (index_t i = 0; i < m; i += kBlockM)
      product(std::min(kBlockM, m - i), n, k, arows.from(i), acols, brows, c + i * ldc, ldc,
              accumulate);
    return;
  }
  static_assert(kBlockN % W == 0, "a chunk is whole panels");
  if (k > kb && m * n * index_t(sizeof(T)) > kChunkBytes) {  // one level: a chunk is below it
    for (index_t j = 0; j < n; j += kBlockN)
      product(m, std::min(kBlockN, n - j), k, arows, acols, brows.columns_from(j), c + j, ldc,
              accumulate);
    return;
  }
  constexpr bool kTr = kTransposed<BR>;  // read only through packed panels
  const bool pack = kTr || m > kRows;
  alignas(64) T panel[kb * W];
  for (index_t k0 = 0; k0 < k; k0 += kb) {
    const index_t k1 = std::min(k, k0 + kb);
    const bool acc = accumulate || k0 > 0;
    index_t j = 0;
    for (; j + W <= n; j += W) {
      if constexpr (!kTr) {
        if (!pack) {
          column_panel<kNV>(m, k0, k1, arows, acols, brows, j, c + j, ldc, acc);
          continue;
        }
      }
      pack_panel<W>(k0, k1, brows, j, W, panel);
      column_panel<kNV>(m, k0, k1, arows, acols, PanelRows<T, W>{panel, k0}, 0, c + j, ldc, acc);
    }
    // The whole packets left, fewer than kNV (AVX-512: 1 to 3), as one panel of that many
    // rather than panels of one packet: with one packet a tile, each broadcast of A feeds a
    // single multiply-add. On Zen 5 (one thread, bench_gemm, paired with the one-packet
    // panels): 64 x 49 x 64 0.84-0.86 of the time, tn 512 x 49 x 4608 0.66-0.72. Read in place
    // like the one-packet panels before (a packed copy measured 1.0-1.2x slower here). AVX2's
    // kNV = 2 leaves at most one packet, as before.
    const auto packets = [&]<int NV>() {
      constexpr int Wd = NV * V;
      if constexpr (kTr) {
        pack_panel<Wd>(k0, k1, brows, j, Wd, panel);
        column_panel<NV>(m, k0, k1, arows, acols, PanelRows<T, Wd>{panel, k0}, 0, c + j, ldc, acc);
      } else {
        column_panel<NV>(m, k0, k1, arows, acols, brows, j, c + j, ldc, acc);
      }
      j += Wd;
    };
    const auto by_count = [&]<int... R>(std::integer_sequence<int, R...>, index_t nv) {
      ((nv == R + 1 ? packets.template operator()<R + 1>() : void()), ...);
    };
    by_count(std::make_integer_sequence<int, kNV - 1>{}, (n - j) / V);
    if (j == n) continue;
    // The last n - j < V columns (7x7 and 14x14 planes leave 1 and 4): a zero-padded copy of
    // them, one packet a row, and tiles that write only those columns of C. One column at a
    // time instead, each element's sum is one chain of dependent multiply-adds: at 7x7 that
    // column alone took longer than the other 48 (bench_gemm, n = 49 and 196).
    const index_t cols = n - j;
    pack_panel<V>(k0, k1, brows, j, cols, panel);
    column_panel<1, true>(m, k0, k1, arows, acols, PanelRows<T, V>{panel, k0}, 0, c + j, ldc, acc,
                          cols);
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

/// C[m x n] (+)= A B^T: A row-major m x k (lda), B row-major n x k (ldb), C row-major (ldc). The
/// weight gradient dY X^T of the 1x1 and im2col convolutions (one image: A = dY [Cout x H*W],
/// B = X [Cin x H*W]), through panels of B transposed into the layout nn() reads.
template <class T>
void nt(index_t m, index_t n, index_t k, const T* a, index_t lda, const T* b, index_t ldb, T* c,
        index_t ldc, bool accumulate) {
  product(m, n, k, StridedRows<T>{a, lda}, StridedCols{1}, TransposedRows<T>{b, ldb}, c, ldc,
          accumulate);
}

}  // namespace datanas::cpu::small_gemm
