// datanas/ops/cpu/pool.hpp - CPU kernels of 2d max / average pooling and global average pooling.
//
// Windows are separable, so both pools work in two 1-d passes per (n, c) plane, one loop per
// window offset over an output row, which the compiler vectorises (strided rows of the max pool
// are first split into their stride phases so that every loop reads contiguous memory). Max
// pool goes row first, then column: a row pass that keeps the first maximum of each row segment,
// followed by a column pass that keeps the first row, finds the first maximum in row-major
// window order, torch's tie rule. Border windows are handled by padding a row buffer (-inf for
// max, 0 for the average), so the inner loops have no clipping. The 3x3 pools with padding 1
// (DARTS' and NAS-Bench-201's) work on whole planes as flat arrays instead (detail::Box3Plane,
// detail::Max3Plane): their 8-32-element rows are too short for per-row loops. At stride 2
// they compute the stride-1 result and keep its even rows and columns (the same windows).
// Planes are spread over the OpenMP threads; each thread gets its slice of one scratch block
// taken before the region (parallel_range_scratch).
#pragma once

#include <algorithm>
#include <bit>
#include <cstdint>
#include <limits>
#include <type_traits>

#include "datanas/ops/cpu/common.hpp"

namespace datanas::cpu {

/// Sizes of a 2d pooling: input plane h x w, output plane ho x wo, window k, stride s, padding p.
struct PoolGeometry {
  index_t h, w, ho, wo;
  int k, s, p;

  /// Output size of one dimension, floor((in + 2p - k) / s) + 1; 0 when the window does not fit.
  static index_t out_size(index_t in, int k, int s, int p) {
    return in + 2 * p < k ? 0 : (in + 2 * p - k) / s + 1;
  }
  /// First valid input row (or column) of output row (column) o, and one past the last.
  [[nodiscard]] index_t lo(index_t o) const { return std::max<index_t>(0, o * s - p); }
  [[nodiscard]] index_t hi(index_t o, index_t in) const {
    return std::min<index_t>(in, o * s - p + k);
  }
  /// Length of a padded row: it covers every window of the output row and the copied input.
  [[nodiscard]] index_t padded_w() const { return std::max<index_t>((wo - 1) * s + k, p + w); }
  /// Input rows that some window reads (with floor mode, the bottom rows may be unused).
  [[nodiscard]] index_t used_h() const { return std::min<index_t>(h, (ho - 1) * s - p + k); }
};

namespace detail {

/// Calls f(std::integral_constant<int, S>) with S = stride for the specialised strides 1 and 2,
/// else S = 0 (the kernel then reads the runtime stride). A compile-time stride lets the
/// compiler vectorise the loops over output columns (contiguous or 2-interleaved loads).
template <class F>
void dispatch_stride(int stride, F&& f) {
  switch (stride) {
    case 1:
      f(std::integral_constant<int, 1>{});
      break;
    case 2:
      f(std::integral_constant<int, 2>{});
      break;
    default:
      f(std::integral_constant<int, 0>{});
      break;
  }
}

/// True when v beats the current maximum m: greater, or NaN (torch propagates NaN). Bitwise |
/// keeps the loops branch-free so that they vectorise.
template <class T>
inline bool beats(T v, T m) {
  return (v > m) | (v != v);
}

// The inner loops live in functions with __restrict parameters: all their buffers come from one
// scratch block, and without the promise GCC guards the vector loop with an overlap check that
// fails and falls back to scalar code.

// With -ftrapping-math (the default) GCC will not if-convert a select whose value needs
// floating-point arithmetic, so the loops below only select between loaded values: column
// numbers come from a precomputed array, and row offsets are added after the selection.

/// One window offset of the row pass: m[o], c[o] take src[o] and its column col[o] when it
/// beats m[o].
template <bool kIdx, class T>
inline void row_max_step(const T* __restrict src, const T* __restrict col, index_t wo,
                         T* __restrict m, T* __restrict c) {
  for (index_t o = 0; o < wo; ++o) {
    const T v = src[o], mo = m[o];
    const bool t = beats(v, mo);
    m[o] = t ? v : mo;
    if constexpr (kIdx) {
      const T co = c[o], cn = col[o];
      c[o] = t ? cn : co;
    }
  }
}

/// One row of the column pass: y[o], i[o] take m[o] and its index c[o] when m[o] beats y[o].
template <bool kIdx, class T>
inline void col_max_step(const T* __restrict m, const T* __restrict c, index_t wo, T* __restrict y,
                         T* __restrict i) {
  for (index_t o = 0; o < wo; ++o) {
    const T mo = m[o], yo = y[o];
    const bool t = beats(mo, yo);
    y[o] = t ? mo : yo;
    if constexpr (kIdx) {
      const T io = i[o], in = c[o];
      i[o] = t ? in : io;
    }
  }
}

/// dst[o] += src[o * s] (gather, average forward) for o < n.
template <int S, class T>
inline void strided_gather_add(const T* __restrict src, index_t s, index_t n, T* __restrict dst) {
  if (S) s = S;
  for (index_t o = 0; o < n; ++o) dst[o] += src[o * s];
}

/// dst[o * s] += src[o] (scatter, average backward) for o < n.
template <int S, class T>
inline void strided_scatter_add(const T* __restrict src, index_t s, index_t n, T* __restrict dst) {
  if (S) s = S;
  for (index_t o = 0; o < n; ++o) dst[o * s] += src[o];
}

/// Splits a padded row into its s phases, ph[f * lp + q] = row[q * s + f] (`fill` past the
/// end), so that window offset j of output o reads ph[(j % s) * lp + j / s + o]: contiguous.
template <class T>
inline void deinterleave(const T* row, index_t lw, index_t s, index_t lp, T fill, T* ph) {
  for (index_t f = 0; f < s; ++f)
    for (index_t q = 0; q < lp; ++q) ph[f * lp + q] = q * s + f < lw ? row[q * s + f] : fill;
}

/// Max pool of planes [b, e). See max_pool_forward.
/// Scratch elements of max_pool_planes: a padded row and its phases; the row maxima hm
/// [uh, wo]; with indices also the plane index of each row maximum hc [uh, wo], the column
/// number of every padded position (and its phases) and the first real column of each output
/// column.
inline index_t max_pool_scratch(const PoolGeometry& g, bool with_idx) {
  const index_t wo = g.wo, lw = g.padded_w(), uh = g.used_h(), s = g.s, lp = (lw + s - 1) / s;
  const index_t phase_len = s > 1 ? s * lp : 0;
  const index_t idx_len = with_idx ? uh * wo + lw + phase_len + wo : 0;
  return lw + phase_len + uh * wo + idx_len;
}

template <bool kIdx, class T>
void max_pool_planes(const T* xp, T* yp, T* ip, const PoolGeometry& g, index_t b, index_t e, T* scratch) {
  const index_t h = g.h, w = g.w, ho = g.ho, wo = g.wo, lw = g.padded_w(), uh = g.used_h();
  const index_t s = g.s, lp = (lw + s - 1) / s;
  const int k = g.k, p = g.p;
  const index_t phase_len = s > 1 ? s * lp : 0;
  T* row = scratch;
  T* row_ph = s > 1 ? row + lw : row;
  T* hm = row + lw + phase_len;
  T* hc = hm + uh * wo;
  T* col = hc + uh * wo;
  T* col_ph = s > 1 ? col + lw : col;
  T* first = col + lw + phase_len;
  const T lowest = -std::numeric_limits<T>::infinity();
  std::fill_n(row, lw, lowest);  // padding never wins
  if constexpr (kIdx) {
    for (index_t q = 0; q < lw; ++q) col[q] = T(q - p);
    if (s > 1) deinterleave(col, lw, s, lp, T(0), col_ph);
    for (index_t ow = 0; ow < wo; ++ow) first[ow] = T(std::max<index_t>(0, ow * s - p));
  }
  for (index_t plane = b; plane < e; ++plane) {
    const T* xpl = xp + plane * h * w;
    // Row pass: the first maximum of each window's row segment. A window whose real pixels are
    // all -inf keeps its first real column, as torch does.
    for (index_t r = 0; r < uh; ++r) {
      std::copy_n(xpl + r * w, w, row + p);
      if (s > 1) deinterleave(row, lw, s, lp, lowest, row_ph);
      T* mr = hm + r * wo;
      T* cr = hc + r * wo;
      std::fill_n(mr, wo, lowest);
      if constexpr (kIdx) std::copy_n(first, wo, cr);
      for (int j = 0; j < k; ++j) {
        const index_t off = (j % s) * lp + j / s;
        row_max_step<kIdx>(row_ph + off, col_ph + off, wo, mr, cr);
      }
      if constexpr (kIdx) {
        const T base = T(r * w);  // column -> plane index
        for (index_t ow = 0; ow < wo; ++ow) cr[ow] += base;
      }
    }
    // Column pass: the first row wins ties, completing row-major order.
    T* ypl = yp + plane * ho * wo;
    T* ipl = kIdx ? ip + plane * ho * wo : nullptr;
    for (index_t oh = 0; oh < ho; ++oh) {
      const index_t r0 = g.lo(oh), r1 = g.hi(oh, h);
      T* yr = ypl + oh * wo;
      T* ir = kIdx ? ipl + oh * wo : nullptr;
      std::copy_n(hm + r0 * wo, wo, yr);
      if constexpr (kIdx) std::copy_n(hc + r0 * wo, wo, ir);
      for (index_t r = r0 + 1; r < r1; ++r)
        col_max_step<kIdx>(hm + r * wo, hc + r * wo, wo, yr, ir);
    }
  }
}

/// left[q] / right[q] = 1 where position q of an h x w plane (flat) has a left / right neighbour
/// in its own row, else 0: the masks of the whole-plane 3x3 kernels below.
template <class T>
void row_neighbour_masks(index_t n, index_t w, T* left, T* right) {
  for (index_t q = 0; q < n; ++q) {
    left[q] = T(q % w > 0);
    right[q] = T(q % w + 1 < w);
  }
}

/// dst[oh][ow] = full[2 oh][2 ow] for an ho x wo dst: a stride-2 3x3 pool (padding 1) from the
/// stride-1 result on the w-wide plane `full`, whose window (2 oh, 2 ow) is the same.
template <class T>
void keep_even_positions(const T* full, index_t w, index_t ho, index_t wo, T* dst) {
  for (index_t oh = 0; oh < ho; ++oh)
    for (index_t ow = 0; ow < wo; ++ow) dst[oh * wo + ow] = full[2 * oh * w + 2 * ow];
}

/// The 3x3, stride 1, padding 1 average pool (DARTS' and NAS-Bench-201's avg_pool_3x3), whose
/// output plane has the input's size (stride 2: its even rows and columns, keep_even_positions),
/// runs on whole planes as flat arrays: planes of 8x8 to 32x32 have 8-32-element rows, on which
/// per-row loops cost more in loop overhead and scalar remainders than in arithmetic. Forward:
/// v = the sum of the valid rows r - 1, r, r + 1 of each column, then y = (v[q - 1] + v[q] +
/// v[q + 1]) * scale[q], a neighbour in another row masked out, scale[q] = 1 / (real rows * real
/// columns) of q's window. Backward: the same box sum of g = dy * scale, columns first, then
/// rows. Each output sums the same terms in the same order as the general kernels below (an
/// accumulated gradient adds its plane's sum at once).
struct Box3Plane {
  index_t h, w;
  [[nodiscard]] index_t n() const { return h * w; }
  /// Scratch elements: two planes with a zero on each side, the two column masks, the scale.
  [[nodiscard]] index_t scratch() const { return 2 * (n() + 2) + 3 * n(); }

  /// Carves the scratch block: a and b (planes whose elements -1 and n() are zero), the masks
  /// (1 where the left / right neighbour is in the same row) and the scale.
  template <class T>
  void setup(T* scratch, T*& a, T*& b, T*& left, T*& right, T*& scale) const {
    a = scratch + 1;
    b = a + n() + 2;
    left = b + n() + 1;
    right = left + n();
    scale = right + n();
    a[-1] = a[n()] = b[-1] = b[n()] = T(0);
    row_neighbour_masks(n(), w, left, right);
    for (index_t r = 0; r < h; ++r)
      for (index_t c = 0; c < w; ++c) {
        const index_t q = r * w + c;
        const index_t rows = std::min(h, r + 2) - std::max<index_t>(0, r - 1);
        const index_t cols = std::min(w, c + 2) - std::max<index_t>(0, c - 1);
        scale[q] = (T(1) / T(rows)) * (T(1) / T(cols));  // the general kernels' inv_r * inv_c
      }
  }
};

/// v (+)= the sum of rows r - 1, r, r + 1 of x's columns (those inside the plane), in row order.
template <bool Acc, class T>
inline void box3_rows(const T* __restrict x, index_t h, index_t w, T* __restrict v) {
  const index_t n = h * w;
  auto put = [v](index_t q, T s) {
    if constexpr (Acc)
      v[q] += s;
    else
      v[q] = s;
  };
  if (h == 1) {
    for (index_t q = 0; q < n; ++q) put(q, x[q]);
    return;
  }
  for (index_t q = 0; q < w; ++q) put(q, x[q] + x[q + w]);
  for (index_t q = w; q < n - w; ++q) put(q, x[q - w] + x[q] + x[q + w]);
  for (index_t q = n - w; q < n; ++q) put(q, x[q - w] + x[q]);
}

/// y[q] = (f(v[q - 1]) + v[q] + f(v[q + 1])) * scale[q] (Fwd) or u[q] = f(v[q + 1]) + v[q] +
/// f(v[q - 1]) (the backward's order: the window to the right first), f masking a neighbour in
/// another row to 0; v[-1] and v[n] must be readable. Selecting between loaded values keeps the
/// loop vectorised.
template <bool Fwd, class T>
inline void box3_cols(const T* __restrict v, const T* __restrict left, const T* __restrict right,
                      const T* __restrict scale, index_t n, T* __restrict y) {
  for (index_t q = 0; q < n; ++q) {
    const T vl = v[q - 1], vr = v[q + 1], zero = T(0);
    const T l = left[q] != zero ? vl : zero, r = right[q] != zero ? vr : zero;
    if constexpr (Fwd)
      y[q] = (l + v[q] + r) * scale[q];
    else
      y[q] = r + v[q] + l;
  }
}

/// The 3x3, stride 1, padding 1 max pool (DARTS' max_pool_3x3; stride 2 as for Box3Plane) on
/// whole planes as flat arrays, for the reason of Box3Plane. Forward: a row pass keeps, at each
/// position q, the first maximum of x[q - 1], x[q], x[q + 1] (a neighbour in another row masked
/// to -inf) and its plane index; a column pass then keeps the first maximum of rows r - 1, r,
/// r + 1: torch's row-major tie rule, and the same selections as the general kernel, so the same
/// values and indices.
/// Backward: each input pixel q gathers the dy of the nine windows around it whose index names q,
/// in the general kernel's order.
struct Max3Plane {
  index_t h, w;
  [[nodiscard]] index_t n() const { return h * w; }
  /// Scratch elements of the forward: the plane padded by one -inf on each side, the row
  /// maxima and their indices, two masks and three index tables.
  [[nodiscard]] index_t forward_scratch() const { return n() + 2 + 7 * n(); }
  /// Scratch elements of the backward: indices and dy padded by w + 1 on each side, the masks
  /// and the index table.
  [[nodiscard]] index_t backward_scratch() const { return 2 * (n() + 2 * (w + 1)) + 3 * n(); }

  /// left/right: 1 where the neighbour is in the same row; at: T(q); first: the index of q's
  /// window's first real column, T(q - 1) or T(q); right_at: T(q + 1).
  template <class T>
  void tables(T* left, T* right, T* at, T* first, T* right_at) const {
    row_neighbour_masks(n(), w, left, right);
    for (index_t q = 0; q < n(); ++q) {
      const index_t c = q % w;
      at[q] = T(q);
      if (first) first[q] = T(c > 0 ? q - 1 : q);
      if (right_at) right_at[q] = T(q + 1);
    }
  }
};

/// The row pass: m[q] = the first maximum of xb[q - 1], xb[q], xb[q + 1] (masked neighbours
/// are -inf and never win), i[q] its plane index (the window's first real column when every
/// real value is -inf, as the general kernel's).
template <bool kIdx, class T>
inline void max3_row_pass(const T* __restrict xb, const T* __restrict left,
                          const T* __restrict right, const T* __restrict at,
                          const T* __restrict first, const T* __restrict right_at, index_t n,
                          T* __restrict m, T* __restrict i) {
  const T lowest = -std::numeric_limits<T>::infinity(), zero = T(0);
  for (index_t q = 0; q < n; ++q) {
    const T vl = xb[q - 1], vr = xb[q + 1], vc = xb[q];
    T mq = left[q] != zero ? vl : lowest;
    const bool tc = beats(vc, mq);
    mq = tc ? vc : mq;
    // The right mask joins the predicate: a second masked select stops GCC's if-conversion.
    const bool tr = (right[q] != zero) & beats(vr, mq);
    m[q] = tr ? vr : mq;
    if constexpr (kIdx) {
      const T f = first[q], a = at[q], ra = right_at[q];
      const T iq = tc ? a : f;
      i[q] = tr ? ra : iq;
    }
  }
}

/// The column pass over rows [r0, r1) of the plane: y, i = the first maximum of the row maxima
/// m at offsets `up` (row r - 1, or none: 0), 0 and `down` (row r + 1, or none: 0).
template <bool kIdx, class T>
inline void max3_col_pass(const T* __restrict m, const T* __restrict mi, index_t q0, index_t q1,
                          index_t up, index_t down, T* __restrict y, T* __restrict i) {
  for (index_t q = q0; q < q1; ++q) {
    T best = m[q - up], bi = kIdx ? mi[q - up] : T(0);
    if (up) {
      const T v = m[q];
      const bool t = beats(v, best);
      best = t ? v : best;
      if constexpr (kIdx) {
        const T vi = mi[q];
        bi = t ? vi : bi;
      }
    }
    if (down) {
      const T v = m[q + down];
      const bool t = beats(v, best);
      best = t ? v : best;
      if constexpr (kIdx) {
        const T vi = mi[q + down];
        bi = t ? vi : bi;
      }
    }
    y[q] = best;
    if constexpr (kIdx) i[q] = bi;
  }
}

/// One plane of the 3x3 stride-1 max pool: x -> y (and the indices, with kIdx); scratch as
/// Max3Plane::forward_scratch, tables written.
template <bool kIdx, class T>
void max3_plane(const Max3Plane& b, const T* x, T* xb, const T* left, const T* right,
                const T* at, const T* first, const T* right_at, T* m, T* mi, T* y, T* i) {
  const index_t n = b.n(), w = b.w;
  std::copy_n(x, n, xb);
  max3_row_pass<kIdx>(xb, left, right, at, first, right_at, n, m, mi);
  if (b.h == 1) {
    max3_col_pass<kIdx>(m, mi, 0, n, 0, 0, y, i);
    return;
  }
  max3_col_pass<kIdx>(m, mi, 0, w, 0, w, y, i);          // first row: rows 0, 1
  max3_col_pass<kIdx>(m, mi, w, n - w, w, w, y, i);      // rows r - 1, r, r + 1
  max3_col_pass<kIdx>(m, mi, n - w, n, w, 0, y, i);      // last row: rows h - 2, h - 1
}

/// dx[q] (+)= the sum of dy over the windows around q whose index is q, in the order windows
/// (r + 1, c + 1), (r + 1, c), (r + 1, c - 1), (r, c + 1), ..., (r - 1, c - 1) (the general
/// kernel's). pid/pdy: the plane's indices and dy with w + 1 elements of -1 and 0 on each side.
/// v when c, else +0 (the select `c ? v : T(0)`, bit for bit), on the bits: a select whose result
/// is added is otherwise turned into a conditional add, which GCC may not run speculatively
/// (an FP add can trap), so the loop around it stays scalar and branches on the data.
template <class T>
inline T keep_if(bool c, T v) {
  using U = std::conditional_t<sizeof(T) == 4, std::uint32_t, std::uint64_t>;
  static_assert(sizeof(T) == sizeof(U));
  return std::bit_cast<T>(std::bit_cast<U>(v) & (U(0) - U(c)));
}

template <class T>
inline void max3_backward_plane(const T* __restrict pid, const T* __restrict pdy,
                                const T* __restrict left, const T* __restrict right,
                                const T* __restrict at, index_t n, index_t w, T* __restrict dx,
                                bool accumulate) {
  // A neighbour in another row compares against `none`, an index no window holds (the
  // padding's is -1), rather than being masked by a bool joined to the compare. With the bool
  // masks and `s += t ? g : 0` this loop was scalar on AVX2 (AVX-512's mask registers hid it):
  // 10x slower on an AMD host, the largest item of its dense search step.
  const T zero = T(0), none = T(-2);
  const auto gather = [&](index_t q) {
    const T target = at[q];
    const T tl = left[q] != zero ? target : none, tr = right[q] != zero ? target : none;
    T s = zero;
    for (int di = 1; di >= -1; --di) {
      const index_t o = q + di * w;
      const T ir = pid[o + 1], ic = pid[o], il = pid[o - 1];
      const T gr = pdy[o + 1], gc = pdy[o], gl = pdy[o - 1];
      s += keep_if(ir == tr, gr);
      s += keep_if(ic == target, gc);
      s += keep_if(il == tl, gl);
    }
    return s;
  };
  if (accumulate)
    for (index_t q = 0; q < n; ++q) dx[q] += gather(q);
  else
    for (index_t q = 0; q < n; ++q) dx[q] = gather(q);
}

}  // namespace detail

/// Max pool of x [N, C, H, W] into y [N, C, Ho, Wo]; when idx is not null it receives, for every
/// output, the plane-local index h * W + w of the first maximum of its window in row-major
/// order (as a T; exact below 2^digits, which the caller checks).
template <class T>
void max_pool_forward(const Tensor<T, Cpu>& x, const PoolGeometry& g, const Tensor<T, Cpu>& y,
                      T* idx) {
  const index_t planes = x.dim(0) * x.dim(1);
  const T* xp = x.data();
  T* yp = y.data();
  if (g.k == 3 && g.p == 1 && (g.s == 1 || g.s == 2)) {  // whole planes (detail::Max3Plane)
    // Stride 2: window (oh, ow) is the stride-1 window (2 oh, 2 ow), so the stride-1 result at
    // even rows and columns, the same values and indices.
    const detail::Max3Plane b{g.h, g.w};
    const index_t n = b.n(), on = g.ho * g.wo, full = g.s == 2 ? 2 * n : 0;
    parallel_range_scratch<T>(planes, n * 3, b.forward_scratch() + full, [&](index_t p0, index_t p1, T* scratch) {
      T* xb = scratch + 1;
      T *m = xb + n + 1, *mi = m + n, *left = mi + n, *right = left + n, *at = right + n;
      T *first = at + n, *right_at = first + n;
      T *ys = g.s == 2 ? right_at + n : nullptr, *is = g.s == 2 ? ys + n : nullptr;
      xb[-1] = xb[n] = -std::numeric_limits<T>::infinity();
      b.tables(left, right, at, first, right_at);
      for (index_t plane = p0; plane < p1; ++plane) {
        T* y1 = g.s == 2 ? ys : yp + plane * on;
        T* i1 = g.s == 2 ? is : (idx ? idx + plane * on : nullptr);
        if (idx)
          detail::max3_plane<true>(b, xp + plane * n, xb, left, right, at, first, right_at, m, mi,
                                   y1, i1);
        else
          detail::max3_plane<false>(b, xp + plane * n, xb, left, right, at, first, right_at, m,
                                    mi, y1, static_cast<T*>(nullptr));
        if (g.s == 2) {
          detail::keep_even_positions(ys, g.w, g.ho, g.wo, yp + plane * on);
          if (idx) detail::keep_even_positions(is, g.w, g.ho, g.wo, idx + plane * on);
        }
      }
    });
    return;
  }
  parallel_range_scratch<T>(planes, g.h * g.w * g.k, detail::max_pool_scratch(g, idx != nullptr),
                            [&](index_t b, index_t e, T* scratch) {
    if (idx)
      detail::max_pool_planes<true>(xp, yp, idx, g, b, e, scratch);
    else
      detail::max_pool_planes<false>(xp, yp, idx, g, b, e, scratch);
  });
}

namespace detail {
/// acc[o] += g[o] where ids[o] == target[o] (the stride-1 max-pool backward).
template <class T>
inline void add_where_equal(const T* __restrict ids, const T* __restrict g,
                            const T* __restrict target, index_t n, T* __restrict acc) {
  for (index_t o = 0; o < n; ++o) acc[o] += keep_if(ids[o] == target[o], g[o]);  // see keep_if
}
}  // namespace detail

/// dx (+)= dy [N, C, Ho, Wo] routed to the arg-max positions idx of max_pool_forward.
/// At stride 1, where up to k * k windows share a maximum, a scatter d[idx] += dy chains each
/// add on the previous store to the same address; there every input pixel instead gathers the
/// dy of the k * k windows that can contain it and keeps those whose index names it, which
/// vectorises. Other strides scatter.
template <class T>
void max_pool_backward(const Tensor<T, Cpu>& dy, const T* idx, const PoolGeometry& g, T* dx,
                       bool accumulate) {
  const index_t planes = dy.dim(0) * dy.dim(1), h = g.h, w = g.w, ho = g.ho, wo = g.wo;
  const index_t hw = h * w, ohw = ho * wo;
  const int k = g.k, p = g.p;
  const T* gp = dy.data();
  if (g.s != 1) {
    parallel_range(planes, hw + ohw, [&](index_t b, index_t e) {
      for (index_t plane = b; plane < e; ++plane) {
        T* d = dx + plane * hw;
        if (!accumulate) std::fill_n(d, hw, T(0));
        const T* gpl = gp + plane * ohw;
        const T* ipl = idx + plane * ohw;
        for (index_t o = 0; o < ohw; ++o) d[index_t(ipl[o])] += gpl[o];
      }
    });
    return;
  }
  if (k == 3 && p == 1) {  // whole planes (detail::Max3Plane)
    const detail::Max3Plane b{h, w};
    const index_t n = b.n(), margin = w + 1, padded = n + 2 * margin;
    parallel_range_scratch<T>(planes, n * 9, b.backward_scratch(), [&](index_t p0, index_t p1, T* scratch) {
      T* pid = scratch;
      T* pdy = pid + padded;
      T *left = pdy + padded, *right = left + n, *at = right + n;
      std::fill_n(pid, padded, T(-1));
      std::fill_n(pdy, padded, T(0));
      b.tables(left, right, at, static_cast<T*>(nullptr), static_cast<T*>(nullptr));
      for (index_t plane = p0; plane < p1; ++plane) {
        std::copy_n(idx + plane * n, n, pid + margin);
        std::copy_n(gp + plane * n, n, pdy + margin);
        detail::max3_backward_plane(pid + margin, pdy + margin, left, right, at, n, w,
                                    dx + plane * n, accumulate);
      }
    });
    return;
  }
  // Output columns padded by k - 1 on both sides (index -1 matches no pixel), so that input
  // column w reads output column w + p - j at padded position w + p - j + k - 1 >= 0.
  const index_t lq = wo + 2 * (k - 1);
  parallel_range_scratch<T>(planes, hw * k, 2 * ho * lq + 2 * w, [&](index_t b, index_t e, T* scratch) {
    T* pidx = scratch;
    T* pdy = pidx + ho * lq;
    T* iota = pdy + ho * lq;
    T* target = iota + w;
    std::fill_n(pidx, ho * lq, T(-1));
    std::fill_n(pdy, ho * lq, T(0));
    for (index_t c = 0; c < w; ++c) iota[c] = T(c);
    for (index_t plane = b; plane < e; ++plane) {
      const T* gpl = gp + plane * ohw;
      const T* ipl = idx + plane * ohw;
      for (index_t oh = 0; oh < ho; ++oh) {
        std::copy_n(ipl + oh * wo, wo, pidx + oh * lq + k - 1);
        std::copy_n(gpl + oh * wo, wo, pdy + oh * lq + k - 1);
      }
      T* d = dx + plane * hw;
      for (index_t r = 0; r < h; ++r) {
        T* dr = d + r * w;
        if (!accumulate) std::fill_n(dr, w, T(0));
        const T base = T(r * w);
        for (index_t c = 0; c < w; ++c) target[c] = base + iota[c];
        for (int i = 0; i < k; ++i) {
          const index_t oh = r + p - i;
          if (oh < 0 || oh >= ho) continue;
          for (int j = 0; j < k; ++j) {
            const index_t q0 = oh * lq + p - j + k - 1;
            detail::add_where_equal(pidx + q0, pdy + q0, target, w, dr);
          }
        }
      }
    }
  });
}

/// Average pool with count_include_pad = false of x [N, C, H, W] into y [N, C, Ho, Wo]: each
/// output is the sum of its window's real pixels divided by their number,
/// (hi_r - lo_r) * (hi_c - lo_c).
template <class T>
void avg_pool_forward(const Tensor<T, Cpu>& x, const PoolGeometry& g, const Tensor<T, Cpu>& y) {
  const index_t planes = x.dim(0) * x.dim(1), h = g.h, w = g.w, ho = g.ho, wo = g.wo;
  const index_t lw = g.padded_w();
  const int k = g.k, p = g.p;
  const T* xp = x.data();
  T* yp = y.data();
  if (g.k == 3 && g.p == 1 && (g.s == 1 || g.s == 2)) {  // whole planes (detail::Box3Plane)
    // Stride 2: window (oh, ow) is the stride-1 window (2 oh, 2 ow), with the same divisor.
    const detail::Box3Plane b{h, w};
    parallel_range_scratch<T>(planes, h * w * k, b.scratch(), [&](index_t p0, index_t p1, T* scratch) {
      T *v, *full, *left, *right, *scale;
      b.setup(scratch, v, full, left, right, scale);
      for (index_t plane = p0; plane < p1; ++plane) {
        detail::box3_rows<false>(xp + plane * b.n(), h, w, v);
        if (g.s == 1) {
          detail::box3_cols<true>(v, left, right, scale, b.n(), yp + plane * b.n());
          continue;
        }
        detail::box3_cols<true>(v, left, right, scale, b.n(), full);
        detail::keep_even_positions(full, w, ho, wo, yp + plane * ho * wo);
      }
    });
    return;
  }
  detail::dispatch_stride(g.s, [&](auto sc) {
    constexpr int S = decltype(sc)::value;
    const index_t s = S ? S : g.s;
    // Scratch: the zero-padded column-sum row, then 1 / (real columns) of every output column.
    parallel_range_scratch<T>(planes, h * w * k, lw + wo, [&](index_t b, index_t e, T* scratch) {
      T* row = scratch;
      T* inv_c = row + lw;
      std::fill_n(row, lw, T(0));
      for (index_t ow = 0; ow < wo; ++ow) inv_c[ow] = T(1) / T(g.hi(ow, w) - g.lo(ow));
      ArrayMap<T> sums(row + p, w);
      for (index_t plane = b; plane < e; ++plane) {
        const T* xpl = xp + plane * h * w;
        T* ypl = yp + plane * ho * wo;
        for (index_t oh = 0; oh < ho; ++oh) {
          const index_t r0 = g.lo(oh), r1 = g.hi(oh, h);
          sums = ConstArrayMap<T>(xpl + r0 * w, w);
          for (index_t r = r0 + 1; r < r1; ++r) sums += ConstArrayMap<T>(xpl + r * w, w);
          const T inv_r = T(1) / T(r1 - r0);
          T* yr = ypl + oh * wo;
          std::fill_n(yr, wo, T(0));
          for (int j = 0; j < k; ++j) detail::strided_gather_add<S>(row + j, s, wo, yr);
          for (index_t ow = 0; ow < wo; ++ow) yr[ow] *= inv_r * inv_c[ow];
        }
      }
    });
  });
}

/// dx (+)= the gradient of avg_pool_forward: every dy spread evenly over its window's real
/// pixels.
template <class T>
void avg_pool_backward(const Tensor<T, Cpu>& dy, const PoolGeometry& g, T* dx, bool accumulate) {
  const index_t planes = dy.dim(0) * dy.dim(1), h = g.h, w = g.w, ho = g.ho, wo = g.wo;
  const index_t lw = g.padded_w();
  const int k = g.k, p = g.p;
  const T* gp = dy.data();
  if (g.k == 3 && g.p == 1 && (g.s == 1 || g.s == 2)) {  // whole planes (detail::Box3Plane)
    // Stride 2: dy * scale at the even rows and columns of a zero plane (the stride-1 windows
    // that exist), then the stride-1 backward; the added zeros change no value.
    const detail::Box3Plane b{h, w};
    parallel_range_scratch<T>(planes, h * w * k, b.scratch(), [&](index_t p0, index_t p1, T* scratch) {
      T *gs, *u, *left, *right, *scale;
      b.setup(scratch, gs, u, left, right, scale);
      if (g.s == 2) std::fill_n(gs, b.n(), T(0));
      for (index_t plane = p0; plane < p1; ++plane) {
        if (g.s == 1) {
          const T* gpl = gp + plane * b.n();
          for (index_t q = 0; q < b.n(); ++q) gs[q] = gpl[q] * scale[q];
        } else {
          const T* gpl = gp + plane * ho * wo;
          for (index_t oh = 0; oh < ho; ++oh)
            for (index_t ow = 0; ow < wo; ++ow) {
              const index_t q = 2 * oh * w + 2 * ow;
              gs[q] = gpl[oh * wo + ow] * scale[q];
            }
        }
        detail::box3_cols<false>(gs, left, right, scale, b.n(), u);
        if (accumulate)
          detail::box3_rows<true>(u, h, w, dx + plane * b.n());
        else
          detail::box3_rows<false>(u, h, w, dx + plane * b.n());
      }
    });
    return;
  }
  detail::dispatch_stride(g.s, [&](auto sc) {
    constexpr int S = decltype(sc)::value;
    const index_t s = S ? S : g.s;
    // Scratch: the padded row of spread gradients, one scaled dy row, 1 / (real columns).
    parallel_range_scratch<T>(planes, h * w * k, lw + 2 * wo, [&](index_t b, index_t e, T* scratch) {
      T* row = scratch;
      T* gs = row + lw;
      T* inv_c = gs + wo;
      for (index_t ow = 0; ow < wo; ++ow) inv_c[ow] = T(1) / T(g.hi(ow, w) - g.lo(ow));
      const ConstArrayMap<T> spread(row + p, w);
      for (index_t plane = b; plane < e; ++plane) {
        T* d = dx + plane * h * w;
        if (!accumulate) std::fill_n(d, h * w, T(0));
        const T* gpl = gp + plane * ho * wo;
        for (index_t oh = 0; oh < ho; ++oh) {
          const index_t r0 = g.lo(oh), r1 = g.hi(oh, h);
          const T inv_r = T(1) / T(r1 - r0);
          const T* gr = gpl + oh * wo;
          for (index_t ow = 0; ow < wo; ++ow) gs[ow] = gr[ow] * (inv_r * inv_c[ow]);
          std::fill_n(row, lw, T(0));
          // One pass per window offset j: within a pass the targets ow * s + j are distinct, so
          // the loop over ow has no dependence and vectorises.
          for (int j = 0; j < k; ++j) detail::strided_scatter_add<S>(gs, s, wo, row + j);
          for (index_t r = r0; r < r1; ++r) ArrayMap<T>(d + r * w, w) += spread;
        }
      }
    });
  });
}

/// y[n, c] = mean of the plane x[n, c, :, :].
template <class T>
void global_avg_pool_forward(const Tensor<T, Cpu>& x, const Tensor<T, Cpu>& y) {
  const index_t planes = x.dim(0) * x.dim(1), hw = x.dim(2) * x.dim(3);
  const T* xp = x.data();
  T* yp = y.data();
  const T inv = T(1) / T(hw);
  parallel_for(planes, hw,
               [&](index_t i) { yp[i] = ConstArrayMap<T>(xp + i * hw, hw).sum() * inv; });
}

/// dx[n, c, :, :] (+)= dy[n, c] / (H * W).
template <class T>
void global_avg_pool_backward(const Tensor<T, Cpu>& dy, index_t hw, T* dx, bool accumulate) {
  const index_t planes = dy.numel();
  const T* gp = dy.data();
  const T inv = T(1) / T(hw);
  parallel_for(planes, hw, [&](index_t i) {
    ArrayMap<T> d(dx + i * hw, hw);
    if (accumulate)
      d += gp[i] * inv;
    else
      d.setConstant(gp[i] * inv);
  });
}

}  // namespace datanas::cpu
