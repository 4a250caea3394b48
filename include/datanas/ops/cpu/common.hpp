// datanas/ops/cpu/common.hpp - shared helpers of the CPU kernels (Eigen + OpenMP).
#pragma once

#include <algorithm>
#include <limits>

#include "datanas/core/tensor.hpp"
#include "datanas/detail/eigen.hpp"

#if defined(_OPENMP)
#include <omp.h>
#endif

/// Makes the compiler forget what it knows about the integer variable v (an empty asm statement
/// that claims to change it); no instruction is emitted.
#if defined(__GNUC__) || defined(__clang__)
#define DATANAS_OPAQUE(v) asm("" : "+r"(v))
#else
#define DATANAS_OPAQUE(v) ((void)0)
#endif

namespace datanas::cpu {

/// Eigen's SIMD register type for T and its number of lanes (16 floats with AVX-512), for the
/// kernels written with Eigen's packet functions (conv.hpp's depthwise loops, small_gemm.hpp).
template <class T>
using Packet = typename Eigen::internal::packet_traits<T>::type;
template <class T>
inline constexpr int kLanes = Eigen::internal::packet_traits<T>::size;

template <class T>
using ArrayMap = Eigen::Map<Eigen::Array<T, Eigen::Dynamic, 1>>;
template <class T>
using ConstArrayMap = Eigen::Map<const Eigen::Array<T, Eigen::Dynamic, 1>>;
template <class T>
using MatrixMap = Eigen::Map<Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>>;
template <class T>
using ConstMatrixMap =
    Eigen::Map<const Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>>;

/// Elements below which a kernel runs on one thread: forking costs ~1-2 us, more than the work.
inline constexpr index_t kParallelGrain = 32768;

/// Number of threads the kernels use (OpenMP's, or 1 without OpenMP).
inline int num_threads() {
#if defined(_OPENMP)
  return omp_get_max_threads();
#else
  return 1;
#endif
}

/// f(begin, end) over [0, n) split into one contiguous chunk per thread when `n * cost` is
/// large enough to pay for the fork. `cost` is a rough per-item weight in elements.
template <class F>
void parallel_range(index_t n, index_t cost, F&& f) {
#if defined(_OPENMP)
  // One thread: no region at all. libgomp builds (mallocs) a fresh team for every one-thread
  // region instead of reusing its pool, which would break the no-allocation guarantee.
  if (n > 1 && n * cost >= kParallelGrain && !omp_in_parallel() && omp_get_max_threads() > 1) {
#pragma omp parallel
    {
      const index_t nt = omp_get_num_threads(), t = omp_get_thread_num();
      const index_t chunk = (n + nt - 1) / nt;
      const index_t b = std::min(n, t * chunk), e = std::min(n, b + chunk);
      if (b < e) f(b, e);
    }
    return;
  }
#endif
  (void)cost;
  f(index_t(0), n);
}

/// parallel_range whose body also gets `per_thread` elements of scratch of its own:
/// f(begin, end, scratch). The scratch of every thread is one block taken before the region.
/// Why not one block per thread inside the region: whether two threads' blocks are alive at
/// the same time depends on how the threads interleave, so the allocator's cache would need a
/// second block of that size only on some steps, a system allocation after warm-up.
template <class T, class F>
void parallel_range_scratch(index_t n, index_t cost, index_t per_thread, F&& f) {
  Tensor<T, Cpu> scratch = Tensor<T, Cpu>::empty({index_t(num_threads()) * per_thread});
  T* base = scratch.data();
  parallel_range(n, cost, [&](index_t b, index_t e) {
#if defined(_OPENMP)
    const index_t t = omp_get_thread_num();  // < num_threads(): a team is never larger
#else
    const index_t t = 0;
#endif
    f(b, e, base + t * per_thread);
  });
}

/// f(i) for i in [0, n), in parallel when worth it.
template <class F>
void parallel_for(index_t n, index_t cost, F&& f) {
  parallel_range(n, cost, [&](index_t b, index_t e) {
    for (index_t i = b; i < e; ++i) f(i);
  });
}

/// dst[0, n) = op(src[0, n)) for the short rows of the convolution kernels (8-32 elements):
/// whole unaligned packets, then a half and a quarter packet where they fit (an 8-wide row is
/// one half packet of AVX-512 floats), then the rest one by one. `op` is called on packets of
/// those three sizes and on scalars (Eigen's packet functions, e.g. pmax, take both).
/// std::copy_n calls memmove, whose call and size dispatch cost more than such a row; an Eigen
/// map assignment first peels scalars up to dst's alignment, as many as 15 for a row written
/// one element past a packet boundary (a padded plane's rows).
// Eigen's packet types carry vector attributes that GCC drops (and warns about) when they are
// template arguments; Eigen silences the same warning in its own headers.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wignored-attributes"
template <class T, class Op>
inline void map_row(const T* __restrict src, index_t n, T* __restrict dst, Op op) {
  namespace ei = Eigen::internal;
  using Full = Packet<T>;
  using Half = typename ei::unpacket_traits<Full>::half;
  using Quarter = typename ei::unpacket_traits<Half>::half;
  constexpr index_t L = kLanes<T>, LH = ei::unpacket_traits<Half>::size,
                    LQ = ei::unpacket_traits<Quarter>::size;
  // DATANAS_OPAQUE hides the index from the compiler's idiom recognition, which otherwise turns
  // an identity map_row (copy_row) back into memmove calls for the packets and the tail.
  index_t i = 0;
  for (; i + L <= n; i += L) {
    ei::pstoreu(dst + i, op(ei::ploadu<Full>(src + i)));
    DATANAS_OPAQUE(i);
  }
  if constexpr (LH < L) {
    if (i + LH <= n) {
      ei::pstoreu(dst + i, op(ei::ploadu<Half>(src + i)));
      i += LH;
    }
  }
  if constexpr (LQ < LH) {
    if (i + LQ <= n) {
      ei::pstoreu(dst + i, op(ei::ploadu<Quarter>(src + i)));
      i += LQ;
    }
  }
  for (; i < n; ++i) {
    dst[i] = op(src[i]);
    DATANAS_OPAQUE(i);
  }
}
#pragma GCC diagnostic pop

/// dst[0, n) = src[0, n) (map_row's row shape).
template <class T>
inline void copy_row(const T* __restrict src, index_t n, T* __restrict dst) {
  map_row(src, n, dst, [](const auto& v) { return v; });
}

/// max(v, 0) for a packet or a scalar: the operation and argument order of Eigen's
/// `array.max(T(0))` (relu's forward), so the bits agree with it, -0 and NaN included.
struct ReluOp {
  template <class V>
  V operator()(const V& v) const {
    using Scalar = typename Eigen::internal::unpacket_traits<V>::type;
    return Eigen::internal::pmax(v, Eigen::internal::pset1<V>(Scalar(0)));
  }
};

/// dst = expr, or dst += expr when accumulating (the GradSlot convention).
template <class Dst, class Expr>
void store(Dst&& dst, const Expr& expr, bool accumulate) {
  if (accumulate)
    dst += expr;
  else
    dst = expr;
}

/// Elementwise kernel over contiguous tensors: f(begin, end) on chunks, in parallel.
template <class F>
void elementwise(index_t n, F&& f) {
  parallel_range(n, 1, std::forward<F>(f));
}

/// out[j] (+)= sum_i x[i * cols + j] for x [rows, cols] row-major (a linear layer's bias
/// gradient). Whole rows of a block of columns are added into a partial sum in L1, 64 rows at a
/// time, and the partials into the total: the rounding grows with 64 + rows / 64 additions
/// rather than with rows. Why not Eigen's colwise().sum() on a row-major map: it walks down the
/// columns, 27 ms against 8 for the PTB decoder's 2,240 x 10,000 (one thread, AMD host).
/// Threads take blocks of columns, so the sums do not depend on their number.
template <class T>
void column_sums(const T* x, index_t rows, index_t cols, T* out, bool accumulate) {
  constexpr index_t kCols = 1024, kRows = 64;
  parallel_range((cols + kCols - 1) / kCols, rows * kCols, [&](index_t b, index_t e) {
    alignas(64) T total_buf[kCols], part_buf[kCols];
    for (index_t blk = b; blk < e; ++blk) {
      const index_t j0 = blk * kCols, w = std::min(kCols, cols - j0);
      ArrayMap<T> total(total_buf, w), part(part_buf, w);
      total.setZero();
      for (index_t i0 = 0; i0 < rows; i0 += kRows) {
        const index_t i1 = std::min(rows, i0 + kRows);
        part = ConstArrayMap<T>(x + i0 * cols + j0, w);
        for (index_t i = i0 + 1; i < i1; ++i) part += ConstArrayMap<T>(x + i * cols + j0, w);
        total += part;
      }
      store(ArrayMap<T>(out + j0, w), total, accumulate);
    }
  });
}

/// The index of the first largest of x[0, k) (std::max_element's), k >= 1; for rows without
/// NaN (with NaN: some index). Packets keep each lane's largest and where it was (an index
/// held in T, exact below 2^digits), then the lanes are compared and the tail scanned. Why:
/// the PTB loop's accuracy count scans 2,240 rows of 10,000 logits a step, 3.6% of the step
/// one element at a time.
template <class T>
index_t first_argmax(const T* x, index_t k) {
  namespace ei = Eigen::internal;
  constexpr int V = kLanes<T>;
  using P = Packet<T>;
  if (k < 2 * V || k >= (index_t(1) << std::numeric_limits<T>::digits))
    return index_t(std::max_element(x, x + k) - x);
  P best = ei::ploadu<P>(x), at = ei::plset<P>(T(0)), idx = at;
  const P step = ei::pset1<P>(T(V));
  index_t i = V;
  for (; i + V <= k; i += V) {
    idx = ei::padd(idx, step);
    const P v = ei::ploadu<P>(x + i);
    const P larger = ei::pcmp_lt(best, v);  // strictly: a lane keeps its first maximum
    best = ei::pselect(larger, v, best);
    at = ei::pselect(larger, idx, at);
  }
  alignas(64) T bv[V], av[V];
  ei::pstore(bv, best);
  ei::pstore(av, at);
  T b = bv[0];
  index_t bi = index_t(av[0]);
  for (int j = 1; j < V; ++j)
    if (bv[j] > b || (bv[j] == b && index_t(av[j]) < bi)) b = bv[j], bi = index_t(av[j]);
  for (; i < k; ++i)  // past every lane's indices: only a larger value wins
    if (x[i] > b) b = x[i], bi = i;
  return bi;
}

}  // namespace datanas::cpu
