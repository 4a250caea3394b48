// datanas/ops/cpu/conv.hpp - CPU kernels of conv2d (NCHW), forward and backward.
//
// Four paths, chosen from the shapes (conv_path):
//   - depthwise: groups == Cin == Cout, square kernel 3 or 5, stride 1 or 2, dilation 1 or 2,
//     padding <= (k - 1) * dilation. Direct loops over one (sample, channel) plane at a time: the
//     plane is first copied into a zero-padded buffer split into `stride` column phases, so that
//     every tap reads a contiguous row and the inner loop over output columns vectorises with no
//     bounds checks (the buffer's zeros are written once per call, PadLayout). These are the
//     sep_conv / dil_conv convolutions of a DARTS cell.
//   - direct GEMM: 1x1 kernel, stride 1, no padding (any groups): Y_n = W * X_n per sample.
//   - shifted taps: any other stride-1 convolution with padding <= (k - 1) * dilation (a stem,
//     NAS-Bench-201's nor_conv_3x3; not a large weight over few outputs, see conv_path): one
//     zero-padded copy per sample, whose shifted rows small_gemm reads in place as the rows of
//     the im2col matrix.
//   - general: im2col + GEMM per sample and group (any stride, padding, dilation, groups).
// The products (gemm below) run small_gemm::nn for inner dimensions up to kMaxInner (10000) and
// at least a packet of columns, the weight gradients small_gemm::nt from a packet of columns and
// of inner indices, Eigen otherwise; the shifted path always runs small_gemm::product.
// All paths parallelise over samples (or planes) with OpenMP; each thread runs single-threaded
// products on its own workspace slice, and weight gradients are summed from per-thread
// partials, so no two threads ever write the same element. When the batch is too small to
// split, each GEMM is split over row blocks instead (Eigen's own threading would allocate).
// Workspaces are Tensors (caching allocator); Eigen's GEMM packing buffers stay on its stack
// because products are cut into panels below EIGEN_STACK_ALLOCATION_LIMIT (see gemm below).
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>

#include "datanas/core/tensor.hpp"
#include "datanas/detail/eigen.hpp"
#include "datanas/ops/cpu/common.hpp"
#include "datanas/ops/cpu/small_gemm.hpp"

#if defined(_OPENMP)
#define DATANAS_CONV_SIMD _Pragma("omp simd")
#else
#define DATANAS_CONV_SIMD
#endif

namespace datanas {

/// Hyper-parameters of conv2d, with torch.nn.functional.conv2d's meaning (same on both axes).
struct Conv2dParams {
  int stride = 1;
  int padding = 0;
  int dilation = 1;
  int groups = 1;
};

namespace cpu {

/// Every size of one conv2d call, validated (conv_geometry).
struct ConvGeom {
  index_t n, cin, h, w;  // input [n, cin, h, w]
  index_t cout, kh, kw;  // weight [cout, cin / groups, kh, kw]
  index_t ho, wo;        // output [n, cout, ho, wo]
  int stride, pad, dil, groups;
  /// The convolution reads max(x, 0) for its input x (the forward and the weight gradient), so
  /// that relu(x) need not exist as a tensor; the data gradient it gives is then the one with
  /// respect to relu(x). Every path but kShifted supports it (relu_conv2d_pair and relu_conv2d
  /// set it).
  bool relu_input = false;
  /// With relu_input: the data gradient is also masked by x > 0, so it is the gradient with
  /// respect to x itself and relu's backward needs no pass of its own (the mask is applied while
  /// the plane's gradient is in cache). CPU only, on the paths of relu_input.
  bool relu_masks_dx = false;
};

enum class ConvPath { kGeneral, kDirectGemm, kDepthwise, kShifted };
/// kAuto picks the fastest applicable path; kGeneral forces im2col + GEMM (tests compare them).
enum class ConvAlgo { kAuto, kGeneral };

/// Checks the shapes of x [N, Cin, H, W], w [Cout, Cin/groups, kh, kw] and (when `bias` is not
/// null) bias [Cout] against `p`; throws datanas::error naming the problem otherwise.
inline ConvGeom conv_geometry(const Shape& x, const Shape& w, const Shape* bias,
                              const Conv2dParams& p) {
  DATANAS_CHECK(x.rank() == 4, "conv2d: input must be rank 4 [N, C, H, W], got ", x.str());
  DATANAS_CHECK(w.rank() == 4, "conv2d: weight must be rank 4 [Cout, Cin/groups, kh, kw], got ",
                w.str());
  DATANAS_CHECK(p.groups >= 1, "conv2d: groups must be positive, got ", p.groups);
  DATANAS_CHECK(p.stride >= 1, "conv2d: stride must be positive, got ", p.stride);
  DATANAS_CHECK(p.dilation >= 1, "conv2d: dilation must be positive, got ", p.dilation);
  DATANAS_CHECK(p.padding >= 0, "conv2d: padding must be non-negative, got ", p.padding);
  DATANAS_CHECK(x[1] % p.groups == 0, "conv2d: input channels ", x[1],
                " are not divisible by groups ", p.groups, " (input ", x.str(), ")");
  DATANAS_CHECK(w[0] % p.groups == 0, "conv2d: output channels ", w[0],
                " are not divisible by groups ", p.groups, " (weight ", w.str(), ")");
  DATANAS_CHECK(x[1] == w[1] * p.groups, "conv2d: input has ", x[1],
                " channels but weight expects ", w[1] * p.groups, " (groups ", p.groups,
                "); input ", x.str(), ", weight ", w.str());
  DATANAS_CHECK(w[2] >= 1 && w[3] >= 1, "conv2d: empty kernel in weight ", w.str());
  if (bias)
    DATANAS_CHECK(bias->rank() == 1 && (*bias)[0] == w[0], "conv2d: bias has shape ", bias->str(),
                  " but weight ", w.str(), " has ", w[0], " output channels");
  ConvGeom g{x[0], x[1], x[2],     x[3],      w[0],       w[2],    w[3],
             0,    0,    p.stride, p.padding, p.dilation, p.groups};
  g.ho = (g.h + 2 * g.pad - g.dil * (g.kh - 1) - 1) / g.stride + 1;
  g.wo = (g.w + 2 * g.pad - g.dil * (g.kw - 1) - 1) / g.stride + 1;
  // C++ division truncates toward zero; the numerator test is the exact "floor < 0" test.
  const bool ok = g.h + 2 * g.pad - g.dil * (g.kh - 1) - 1 >= 0 &&
                  g.w + 2 * g.pad - g.dil * (g.kw - 1) - 1 >= 0;
  DATANAS_CHECK(ok, "conv2d: output size is not positive for input ", x.str(), ", kernel ", g.kh,
                "x", g.kw, ", stride ", g.stride, ", padding ", g.pad, ", dilation ", g.dil);
  return g;
}

/// The kernel family that runs `g` (ConvAlgo::kGeneral forces the im2col path).
inline ConvPath conv_path(const ConvGeom& g, ConvAlgo algo = ConvAlgo::kAuto) {
  if (algo == ConvAlgo::kGeneral) return ConvPath::kGeneral;
  if (g.groups == g.cin && g.cout == g.cin && g.kh == g.kw && (g.kh == 3 || g.kh == 5) &&
      g.stride <= 2 && g.dil <= 2 && g.pad <= (g.kh - 1) * g.dil)
    return ConvPath::kDepthwise;
  if (g.kh == 1 && g.kw == 1 && g.stride == 1 && g.pad == 0) return ConvPath::kDirectGemm;
  // Stride 1 with a padding the flipped kernel of the data gradient can undo (conv_detail's
  // shifted-taps path needs dy padded by (k - 1) * dilation - padding >= 0).
  // Its row offsets are 32-bit: both padded operands must hold fewer than 2^31 elements. Its
  // per-call cost (the weight gradient's transposed partial sums) grows with the weight, so a
  // large weight (>= 2^18 elements) over few output positions (< 256 in the batch) stays with
  // im2col: measured, one thread, forward + backward of a 512-channel 3x3 convolution on 7x7,
  // 1.3x slower than im2col at batch 2 and 4, even at batch 8, faster at 256 channels on 14x14
  // (1.2x) and at DARTS sizes (1.6x at 16 channels on 32x32).
  if (g.stride == 1 && g.kh * g.kw > 1 && g.pad <= (g.kh - 1) * g.dil &&
      g.pad <= (g.kw - 1) * g.dil) {
    const index_t x_padded = g.cin * (g.h + 2 * g.pad) * (g.w + 2 * g.pad);
    const index_t dy_padded = g.cout * (g.h + (g.kh - 1) * g.dil) * (g.w + (g.kw - 1) * g.dil);
    const index_t weight = g.cout * (g.cin / g.groups) * g.kh * g.kw;  // read at 32-bit offsets
    const bool fits = std::max({x_padded, dy_padded, weight}) < (index_t(1) << 31);
    if (fits && (weight < (index_t(1) << 18) || g.n * g.ho * g.wo >= 256))
      return ConvPath::kShifted;
  }
  return ConvPath::kGeneral;
}

namespace conv_detail {

inline index_t floor_div(index_t a, index_t b) { return a >= 0 ? a / b : -((-a + b - 1) / b); }
inline index_t ceil_div(index_t a, index_t b) { return -floor_div(-a, b); }
inline index_t round_up(index_t a, index_t b) { return (a + b - 1) / b * b; }

/// Threads to use for `items` work items of `cost` elements each: 1 unless worth a fork.
inline int threads_for(index_t items, index_t cost) {
#if defined(_OPENMP)
  if (items > 1 && items * cost >= kParallelGrain && !omp_in_parallel())
    return int(std::min<index_t>(num_threads(), items));
#endif
  (void)items, (void)cost;
  return 1;
}

/// f(thread, begin, end) over [0, items) in contiguous chunks on `nt` threads; `thread` is below
/// nt, so it indexes per-thread workspace slices sized for nt.
template <class F>
void run_chunks(int nt, index_t items, F&& f) {
#if defined(_OPENMP)
  if (nt > 1) {
#pragma omp parallel num_threads(nt)
    {
      const index_t team = omp_get_num_threads(), t = omp_get_thread_num();
      const index_t chunk = (items + team - 1) / team;
      const index_t b = std::min(items, t * chunk), e = std::min(items, b + chunk);
      if (b < e) f(int(t), b, e);
    }
    return;
  }
#endif
  (void)nt;
  f(0, index_t(0), items);
}

/// dst (+)= sum of the `parts` slices of length n in `partial` (per-thread partial sums).
template <class T>
void reduce_partials(const T* partial, int parts, index_t n, T* dst, bool accumulate) {
  ArrayMap<T> d(dst, n);
  if (!accumulate) d = ConstArrayMap<T>(partial, n);
  for (int t = accumulate ? 0 : 1; t < parts; ++t) d += ConstArrayMap<T>(partial + t * n, n);
}

// ---- GEMM -----------------------------------------------------------------------------------

/// C[m x n] (+)= op(A) op(B) by Eigen's product, row-major with leading dimensions; op(A) is
/// m x k (A stored k x m when TA), op(B) is k x n (B stored n x k when TB). Eigen packs panels of
/// kc x mc and kc x nc elements and takes them from the heap once they exceed
/// EIGEN_STACK_ALLOCATION_LIMIT, so the product is cut into blocks whose panels are below it: no
/// allocation in the hot loop. gemm below chooses between this and small_gemm.
template <bool TA, bool TB, class T>
void eigen_gemm(index_t m, index_t n, index_t k, const T* a, index_t lda, const T* b, index_t ldb,
                T* c, index_t ldc, bool accumulate) {
  if (k == 0) {  // an empty sum (the blocking below would divide by k)
    if (!accumulate)
      for (index_t i = 0; i < m; ++i) std::fill_n(c + i * ldc, n, T(0));
    return;
  }
  using Mat = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
  using CMap = Eigen::Map<const Mat, 0, Eigen::OuterStride<>>;
  using MMap = Eigen::Map<Mat, 0, Eigen::OuterStride<>>;
  constexpr index_t kPanel = std::max<index_t>(EIGEN_STACK_ALLOCATION_LIMIT / sizeof(T), 4096);
  const index_t kt = std::min<index_t>(k, 1024 / sizeof(T));
  const index_t mt = std::max<index_t>(kPanel / kt, 16), nt = mt;
  for (index_t m0 = 0; m0 < m; m0 += mt) {
    const index_t mb = std::min(mt, m - m0);
    for (index_t n0 = 0; n0 < n; n0 += nt) {
      const index_t nb = std::min(nt, n - n0);
      MMap cm(c + m0 * ldc + n0, mb, nb, Eigen::OuterStride<>(ldc));
      for (index_t k0 = 0; k0 < k; k0 += kt) {
        const index_t kb = std::min(kt, k - k0);
        const bool acc = accumulate || k0 > 0;
        auto run = [&](const auto& am, const auto& bm) {
          if (acc)
            cm.noalias() += am * bm;
          else
            cm.noalias() = am * bm;
        };
        auto with_a = [&](const auto& bm) {
          if constexpr (TA)
            run(CMap(a + k0 * lda + m0, kb, mb, Eigen::OuterStride<>(lda)).transpose(), bm);
          else
            run(CMap(a + m0 * lda + k0, mb, kb, Eigen::OuterStride<>(lda)), bm);
        };
        if constexpr (TB)
          with_a(CMap(b + n0 * ldb + k0, nb, kb, Eigen::OuterStride<>(ldb)).transpose());
        else
          with_a(CMap(b + k0 * ldb + n0, kb, nb, Eigen::OuterStride<>(ldb)));
      }
    }
  }
}

/// C[m x n] (+)= op(A) op(B) as eigen_gemm, or by small_gemm where it was measured faster
/// (benchmarks/bench_gemm.cpp, one thread):
///   - B stored k x n (nn, tn), at least one packet of columns and k <= small_gemm::kMaxInner:
///     small_gemm::nn, faster on every such shape of the DARTS networks. With fewer columns than
///     a packet (the auxiliary head's 2x2 convolution on 2x2, by im2col, has one), its tiles
///     would leave most lanes empty, while Eigen's matrix-vector kernel runs along k: 4x faster
///     at 768 x 1 x 512, 1.1x at n = 4.
///   - A B^T (nt, a weight gradient dY X^T), at least one packet of columns and of inner indices:
///     small_gemm::nt, 1.4-1.8x faster than Eigen on the DARTS networks' shapes (form nt); in a
///     throwaway timing 1.1x at k = 8 (H*W) and 1.5-1.7x at k = 3,136 and 12,544. With fewer
///     inner indices than a packet (the auxiliary head's 2x2 convolution again: k = 1) Eigen's
///     outer product is faster (1.5x at k = 4, 2.7x at k = 1).
template <bool TA, bool TB, class T>
void gemm(index_t m, index_t n, index_t k, const T* a, index_t lda, const T* b, index_t ldb, T* c,
          index_t ldc, bool accumulate) {
  if constexpr (!TB) {
    if (k <= small_gemm::kMaxInner && n >= kLanes<T>) {
      small_gemm::nn<TA>(m, n, k, a, lda, b, ldb, c, ldc, accumulate);
      return;
    }
  } else if constexpr (!TA) {
    if (k >= kLanes<T> && n >= kLanes<T>) {
      small_gemm::nt(m, n, k, a, lda, b, ldb, c, ldc, accumulate);
      return;
    }
  }
  eigen_gemm<TA, TB>(m, n, k, a, lda, b, ldb, c, ldc, accumulate);
}

/// gemm, split over row blocks of C on the threads when not already inside a parallel region
/// (a batch too small to parallelise over). Left to itself, Eigen would parallelise a large
/// product with its own OpenMP code, which allocates its packing buffers on the heap.
template <bool TA, bool TB, class T>
void gemm_rows_parallel(index_t m, index_t n, index_t k, const T* a, index_t lda, const T* b,
                        index_t ldb, T* c, index_t ldc, bool accumulate) {
  run_chunks(threads_for(m, n * k), m, [&](int, index_t r0, index_t r1) {
    gemm<TA, TB>(r1 - r0, n, k, TA ? a + r0 : a + r0 * lda, lda, b, ldb, c + r0 * ldc, ldc,
                 accumulate);
  });
}

// ---- im2col path ----------------------------------------------------------------------------

/// Output columns [lo, hi) whose tap at kernel column j falls inside the input row.
inline void valid_cols(const ConvGeom& g, index_t j, index_t& lo, index_t& hi) {
  const index_t off = j * g.dil - g.pad;  // input column = wo * stride + off
  lo = std::clamp<index_t>(ceil_div(-off, g.stride), 0, g.wo);
  hi = std::clamp<index_t>(floor_div(g.w - 1 - off, g.stride) + 1, lo, g.wo);
}

/// col[(c * kh + i) * kw + j][ho * wo + wo'] = op(x[c][ho * s - p + i * d][wo' * s - p + j * d])
/// (0 outside) for the `cg` channels at x (one sample, one group); op takes packets and scalars.
template <class T, class Op>
void im2col_with(const ConvGeom& g, index_t cg, const T* __restrict x, T* __restrict col, Op op) {
  const index_t p = g.ho * g.wo, s = g.stride;
  for (index_t c = 0; c < cg; ++c)
    for (index_t i = 0; i < g.kh; ++i)
      for (index_t j = 0; j < g.kw; ++j) {
        T* row = col + ((c * g.kh + i) * g.kw + j) * p;
        index_t lo, hi;
        valid_cols(g, j, lo, hi);
        const index_t off = j * g.dil - g.pad;
        for (index_t oh = 0; oh < g.ho; ++oh) {
          T* r = row + oh * g.wo;
          const index_t ih = oh * s - g.pad + i * g.dil;
          if (ih < 0 || ih >= g.h) {
            std::fill_n(r, g.wo, T(0));
            continue;
          }
          const T* xr = x + (c * g.h + ih) * g.w;
          std::fill(r, r + lo, T(0));
          if (s == 1)
            map_row(xr + lo + off, hi - lo, r + lo, op);
          else if (s == 2)  // a constant stride: vectorised (even-lane permutes)
            for (index_t ow = lo; ow < hi; ++ow) r[ow] = op(xr[ow * 2 + off]);
          else
            for (index_t ow = lo; ow < hi; ++ow) r[ow] = op(xr[ow * s + off]);
          std::fill(r + hi, r + g.wo, T(0));
        }
      }
}

/// im2col of x, or of relu(x) with g.relu_input (relu's bits: ReluOp).
template <class T>
void im2col(const ConvGeom& g, index_t cg, const T* __restrict x, T* __restrict col) {
  if (g.relu_input)
    im2col_with(g, cg, x, col, ReluOp{});
  else
    im2col_with(g, cg, x, col, [](const auto& v) { return v; });
}

/// The adjoint of im2col: dx[c][...] += every col entry that im2col copied from there.
template <class T>
void col2im(const ConvGeom& g, index_t cg, const T* __restrict col, T* __restrict dx) {
  const index_t p = g.ho * g.wo, s = g.stride;
  for (index_t c = 0; c < cg; ++c)
    for (index_t i = 0; i < g.kh; ++i)
      for (index_t j = 0; j < g.kw; ++j) {
        const T* row = col + ((c * g.kh + i) * g.kw + j) * p;
        index_t lo, hi;
        valid_cols(g, j, lo, hi);
        const index_t off = j * g.dil - g.pad;
        for (index_t oh = 0; oh < g.ho; ++oh) {
          const index_t ih = oh * s - g.pad + i * g.dil;
          if (ih < 0 || ih >= g.h) continue;
          const T* r = row + oh * g.wo;
          T* xr = dx + (c * g.h + ih) * g.w;
          if (s == 1) {
            DATANAS_CONV_SIMD
            for (index_t ow = lo; ow < hi; ++ow) xr[ow + off] += r[ow];
          } else if (s == 2) {
            for (index_t ow = lo; ow < hi; ++ow) xr[ow * 2 + off] += r[ow];
          } else {
            for (index_t ow = lo; ow < hi; ++ow) xr[ow * s + off] += r[ow];
          }
        }
      }
}

/// The product's right operand for one sample and group of the gemm paths: im2col's matrix (of
/// relu(x) with ConvGeom::relu_input), or on the 1x1 path the input itself, or relu of it copied
/// into `col`, where it stays in cache for the product instead of being a tensor of its own.
template <class T>
const T* gemm_operand(const ConvGeom& g, bool direct, index_t cg, const T* xs, T* col) {
  if (!direct)
    im2col(g, cg, xs, col);
  else if (g.relu_input)
    map_row(xs, cg * g.h * g.w, col, ReluOp{});
  else
    return xs;
  return col;
}

template <class T>
void gemm_forward(const ConvGeom& g, ConvPath path, const T* x, const T* w, const T* bias, T* y) {
  const bool direct = path == ConvPath::kDirectGemm;
  const index_t p = g.ho * g.wo, cg = g.cin / g.groups, og = g.cout / g.groups;
  const index_t kg = cg * g.kh * g.kw;
  const int nt = threads_for(g.n, g.cout * kg * p);
  Tensor<T, Cpu> ws;
  if (!direct || g.relu_input) ws = Tensor<T, Cpu>::empty({nt, kg * p});
  run_chunks(nt, g.n, [&](int t, index_t b, index_t e) {
    T* col = ws.defined() ? ws.data() + t * kg * p : nullptr;
    for (index_t n = b; n < e; ++n)
      for (index_t gi = 0; gi < g.groups; ++gi) {
        const T* xs = x + (n * g.cin + gi * cg) * g.h * g.w;
        const T* in = gemm_operand(g, direct, cg, xs, col);
        T* ys = y + (n * g.cout + gi * og) * p;
        gemm_rows_parallel<false, false>(og, p, kg, w + gi * og * kg, kg, in, p, ys, p, false);
        if (bias)
          for (index_t o = 0; o < og; ++o) ArrayMap<T>(ys + o * p, p) += bias[gi * og + o];
      }
  });
}

/// dx, dw: null when not wanted. The GradSlot convention: overwrite unless acc_*.
template <class T>
void gemm_backward(const ConvGeom& g, ConvPath path, const T* x, const T* w, const T* dy, T* dx,
                   bool acc_x, T* dw, bool acc_w) {
  const bool direct = path == ConvPath::kDirectGemm;
  const index_t p = g.ho * g.wo, cg = g.cin / g.groups, og = g.cout / g.groups;
  const index_t kg = cg * g.kh * g.kw, wsize = g.cout * kg;
  const int nt = threads_for(g.n, g.cout * kg * p * (int(dx != nullptr) + int(dw != nullptr)));
  const index_t plane = cg * g.h * g.w;  // one sample's input channels of a group
  // im2col's data gradient masked by x > 0 is summed in a plane of its own first.
  const bool masked_col2im = dx && !direct && g.relu_masks_dx;
  Tensor<T, Cpu> cols, parts, dplanes;
  if (!direct || g.relu_input) cols = Tensor<T, Cpu>::empty({nt, kg * p});
  if (masked_col2im) dplanes = Tensor<T, Cpu>::empty({nt, plane});
  if (dw) {
    parts = Tensor<T, Cpu>::empty({nt, wsize});
    parts.fill(T(0));
  }
  run_chunks(nt, g.n, [&](int t, index_t b, index_t e) {
    T* col = cols.defined() ? cols.data() + t * kg * p : nullptr;
    T* dplane = masked_col2im ? dplanes.data() + t * plane : nullptr;
    T* part = dw ? parts.data() + t * wsize : nullptr;
    // dxs (+)= d where x > 0: relu's backward (the same select, so the same bits), applied
    // while the sample's gradient is in cache.
    auto store_masked = [&](const T* xs, const T* d, T* dxs) {
      store(ArrayMap<T>(dxs, plane), (ConstArrayMap<T>(xs, plane) > T(0)).select(ConstArrayMap<T>(d, plane), T(0)),
            acc_x);
    };
    for (index_t n = b; n < e; ++n)
      for (index_t gi = 0; gi < g.groups; ++gi) {
        // x is null when only dx is wanted, w when only dw is (no offset from a null pointer).
        const T* xs = x ? x + (n * g.cin + gi * cg) * g.h * g.w : nullptr;
        const T* dys = dy + (n * g.cout + gi * og) * p;
        const T* wg = w ? w + gi * og * kg : nullptr;
        if (dw)
          gemm_rows_parallel<false, true>(og, kg, p, dys, p, gemm_operand(g, direct, cg, xs, col), p,
                                          part + gi * og * kg, kg, true);
        if (dx) {  // (col is free again: the weight gradient's product is done with it)
          T* dxs = dx + (n * g.cin + gi * cg) * g.h * g.w;
          if (direct && g.relu_masks_dx) {  // the gradient with respect to relu(x), then masked
            gemm_rows_parallel<true, false>(kg, p, og, wg, kg, dys, p, col, p, false);
            store_masked(xs, col, dxs);
          } else if (direct) {
            gemm_rows_parallel<true, false>(kg, p, og, wg, kg, dys, p, dxs, p, acc_x);
          } else {
            gemm_rows_parallel<true, false>(kg, p, og, wg, kg, dys, p, col, p, false);
            T* sum = masked_col2im ? dplane : dxs;
            if (masked_col2im || !acc_x) std::fill_n(sum, plane, T(0));
            col2im(g, cg, col, sum);
            if (masked_col2im) store_masked(xs, dplane, dxs);
          }
        }
      }
  });
  if (dw) reduce_partials(parts.data(), nt, wsize, dw, acc_w);
}

// ---- shifted-taps path (stride 1) ---------------------------------------------------------

/// At stride 1, the im2col row of tap (c, i, j) is the channel's zero-padded plane read from
/// offset i * d * Wp + j * d, if outputs are laid out with the padded row length Wp: output
/// (oh, ow) sits at q = oh * Wp + ow, and the Wp - wo columns past each output row are junk
/// that is computed and dropped. So the product reads its operand rows in place from one padded
/// copy (small_gemm::OffsetRows) instead of a K*K times larger im2col matrix:
///   forward      Yw[o, q]  = sum_{c,i,j} W[o, c, i, j] Xp[c, q + i d Wp + j d]
///   data grad    dXw[c, q] = sum_{o,i,j} W[o, c, i, j] dYp[o, q + (kh-1-i) d Wq + (kw-1-j) d]
///                (dy padded by (k - 1) d - p: the full correlation with the flipped kernel)
///   weight grad  dW^T[(c,i,j), o] = sum_q Xp[c, q + i d Wp + j d] dYT[q, o]
///                (dy transposed, with zero rows at the junk positions)
/// A row's right padding is the next row's left padding: Wp = w + p, not w + 2p (the padding
/// is the same on both sides, and never wider than the kernel's reach, (k - 1) d). A read
/// past the end of a row, at column w + p + t with t < p, lands on column t of the next row,
/// which is padding too. So each output row has p junk columns instead of 2p: at 7x7 and 8x8
/// the products cover 56 and 72 positions per plane instead of 64 and 80. The last row's reads
/// end p elements past the plane's rows (ShiftPlane::size() counts them).

/// One padded plane: the source plane of h x w copied at (top, left) of a rows x cols plane of
/// zeros (cols = w + left: the right padding is the next row's left), with `left` more zeros
/// after it for the last row's reads; a product then covers n() = (out_h - 1) * cols + out_w
/// positions.
struct ShiftPlane {
  index_t rows, cols, top, left;
  index_t out_h, out_w;
  [[nodiscard]] index_t size() const { return rows * cols + left; }
  [[nodiscard]] index_t n() const { return (out_h - 1) * cols + out_w; }
};

/// The padded input of the forward and weight-gradient products, and their output positions.
inline ShiftPlane shift_x_plane(const ConvGeom& g) {
  return {g.h + 2 * g.pad, g.w + g.pad, g.pad, g.pad, g.ho, g.wo};
}
/// The padded dy of the data-gradient product, and its output positions (dx's plane).
inline ShiftPlane shift_dy_plane(const ConvGeom& g) {
  const index_t ph = (g.kh - 1) * g.dil - g.pad, pw = (g.kw - 1) * g.dil - g.pad;
  return {g.ho + 2 * ph, g.wo + pw, ph, pw, g.h, g.w};
}

/// Copies `channels` planes of h x w from src (plane stride h * w) into their padded planes at
/// dst, whose zeros were written before (only the interior is written).
template <class T>
void shift_fill(const ShiftPlane& pl, index_t channels, index_t h, index_t w, const T* src,
                T* dst) {
  for (index_t c = 0; c < channels; ++c)
    for (index_t r = 0; r < h; ++r)
      copy_row(src + (c * h + r) * w, w, dst + c * pl.size() + (pl.top + r) * pl.cols + pl.left);
}

/// dst[c] (+)= the out_h x out_w outputs of a product's rows laid out with the padded row
/// length (columns past out_w dropped).
template <class T>
void shift_store(const ShiftPlane& pl, index_t channels, const T* src, index_t lds, T* dst,
                 bool acc) {
  const index_t hw = pl.out_h * pl.out_w;
  for (index_t c = 0; c < channels; ++c)
    for (index_t r = 0; r < pl.out_h; ++r) {
      const T* s = src + c * lds + r * pl.cols;
      T* d = dst + c * hw + r * pl.out_w;
      if (acc)
        ArrayMap<T>(d, pl.out_w) += ConstArrayMap<T>(s, pl.out_w);
      else
        copy_row(s, pl.out_w, d);  // short rows, as shift_fill's
    }
}

/// off[(c * kh + i) * kw + j] = c * plane + tap (i, j)'s offset; flipped taps for the data
/// gradient.
inline void shift_offsets(const ConvGeom& g, const ShiftPlane& pl, index_t channels, bool flip,
                          std::int32_t* off) {
  for (index_t c = 0; c < channels; ++c)
    for (index_t i = 0; i < g.kh; ++i)
      for (index_t j = 0; j < g.kw; ++j) {
        const index_t ti = flip ? g.kh - 1 - i : i, tj = flip ? g.kw - 1 - j : j;
        off[(c * g.kh + i) * g.kw + j] = std::int32_t(c * pl.size() + (ti * pl.cols + tj) * g.dil);
      }
}

/// C[m x n] (+)= A B of small_gemm::product, split over row blocks of C on the threads when not
/// already inside a parallel region (a batch too small to split).
template <class T, class AR, class AC, class BR>
void product_rows_parallel(index_t m, index_t n, index_t k, AR arows, AC acols, BR brows, T* c,
                           index_t ldc, bool accumulate) {
  run_chunks(threads_for(m, n * k), m, [&](int, index_t r0, index_t r1) {
    small_gemm::product(r1 - r0, n, k, arows.from(r0), acols, brows, c + r0 * ldc, ldc, accumulate);
  });
}

template <class T>
void shift_forward(const ConvGeom& g, const T* x, const T* w, const T* bias, T* y) {
  using small_gemm::OffsetRows, small_gemm::StridedCols, small_gemm::StridedRows;
  const ShiftPlane pl = shift_x_plane(g);
  const index_t cg = g.cin / g.groups, og = g.cout / g.groups, kg = cg * g.kh * g.kw;
  // Whole packets of columns (a scalar tail would cost more than the junk); the padded planes
  // get as many zeros after their end as the extra columns read.
  const index_t n = round_up(pl.n(), kLanes<T>), p = g.ho * g.wo;
  const index_t xsize = cg * pl.size() + n - pl.n();
  Tensor<std::int32_t, Cpu> offs = Tensor<std::int32_t, Cpu>::empty({kg});
  shift_offsets(g, pl, cg, false, offs.data());
  const int nt = threads_for(g.n, g.cout * kg * p);
  Tensor<T, Cpu> ws = Tensor<T, Cpu>::empty({nt, xsize + og * n});
  run_chunks(nt, g.n, [&](int t, index_t b, index_t e) {
    T* xp = ws.data() + t * (xsize + og * n);
    T* yw = xp + xsize;
    std::fill_n(xp, xsize, T(0));
    for (index_t s = b; s < e; ++s)
      for (index_t gi = 0; gi < g.groups; ++gi) {
        shift_fill(pl, cg, g.h, g.w, x + (s * g.cin + gi * cg) * g.h * g.w, xp);
        product_rows_parallel(og, n, kg, StridedRows<T>{w + gi * og * kg, kg}, StridedCols{1},
                              OffsetRows<T>{xp, offs.data()}, yw, n, false);
        T* ys = y + (s * g.cout + gi * og) * p;
        shift_store(pl, og, yw, n, ys, false);
        if (bias)
          for (index_t o = 0; o < og; ++o) ArrayMap<T>(ys + o * p, p) += bias[gi * og + o];
      }
  });
}

/// dx, dw: null when not wanted. The GradSlot convention: overwrite unless acc_*.
template <class T>
void shift_backward(const ConvGeom& g, const T* x, const T* w, const T* dy, T* dx, bool acc_x,
                    T* dw, bool acc_w) {
  using small_gemm::OffsetCols, small_gemm::OffsetRows, small_gemm::StridedCols;
  using small_gemm::StridedRows;
  const ShiftPlane xpl = shift_x_plane(g), dpl = shift_dy_plane(g);
  const index_t cg = g.cin / g.groups, og = g.cout / g.groups, kk = g.kh * g.kw, kg = cg * kk;
  const index_t p = g.ho * g.wo, hw = g.h * g.w;
  // Whole packets of columns, as in shift_forward: dx's product rows (dn), dW^T's output
  // channels (ogr: dy's transpose gets zero columns).
  const index_t xn = xpl.n(), dn = round_up(dpl.n(), kLanes<T>), ogr = round_up(og, kLanes<T>);
  const index_t xsize = cg * xpl.size(), dsize = og * dpl.size() + dn - dpl.n();
  // Per thread: [dw] the padded x and the transposed dy; [dx] the padded dy and dx's product rows.
  const index_t wpart = dw ? xsize + xn * ogr : 0;
  const index_t xpart = dx ? dsize + cg * dn : 0;
  // Row offsets into the padded x and dy; the data gradient's A(c, (o, t)) = w[o][c][t] is read
  // at w + c * kk + wcol[(o, t)], wcol[(o, t)] = o * cg * kk + t (no transposed copy).
  Tensor<std::int32_t, Cpu> offs = Tensor<std::int32_t, Cpu>::empty({kg + 2 * og * kk});
  std::int32_t* xoff = offs.data();
  std::int32_t* doff = xoff + kg;
  std::int32_t* wcol = doff + og * kk;
  if (dw) shift_offsets(g, xpl, cg, false, xoff);
  if (dx) {
    shift_offsets(g, dpl, og, true, doff);
    for (index_t o = 0; o < og; ++o)
      for (index_t t = 0; t < kk; ++t) wcol[o * kk + t] = std::int32_t(o * kg + t);
  }
  const int nt = threads_for(g.n, g.cout * kg * p * (int(dx != nullptr) + int(dw != nullptr)));
  Tensor<T, Cpu> ws = Tensor<T, Cpu>::empty({nt, wpart + xpart});
  // Per-thread partial dW^T [groups][kg][ogr], summed and transposed at the end. A thread's
  // first sample writes its slice (no zero fill: for a 512-channel 3x3 convolution on a batch of
  // 2 the fill and the reduction cost as much as the products); `wrote` marks the slices written
  // (a thread may get no sample, or OpenMP fewer threads than asked).
  const index_t psize = g.groups * kg * ogr;
  Tensor<T, Cpu> parts;
  Tensor<std::int32_t, Cpu> wrote;
  if (dw) {
    parts = Tensor<T, Cpu>::empty({nt, psize});
    wrote = Tensor<std::int32_t, Cpu>::empty({nt});
    std::fill_n(wrote.data(), nt, 0);
  }
  run_chunks(nt, g.n, [&](int t, index_t b, index_t e) {
    T* base = ws.data() + t * (wpart + xpart);
    T* xp = dw ? base : nullptr;           // [cg][padded x plane]
    T* dyt = dw ? xp + xsize : nullptr;    // [xn][ogr]
    T* dyp = dx ? base + wpart : nullptr;  // [og][padded dy plane], tail
    T* dxw = dx ? dyp + dsize : nullptr;   // [cg][dn]
    // The padding, dyt's junk rows and extra columns: written once here, they stay zero.
    std::fill_n(base, wpart + (dx ? dsize : 0), T(0));
    for (index_t s = b; s < e; ++s)
      for (index_t gi = 0; gi < g.groups; ++gi) {
        const T* dys = dy + (s * g.cout + gi * og) * p;
        if (dw) {
          shift_fill(xpl, cg, g.h, g.w, x + (s * g.cin + gi * cg) * hw, xp);
          // Row by row of dyt (contiguous stores), gathering from the og planes of dy.
          for (index_t oh = 0; oh < g.ho; ++oh)
            for (index_t ow = 0; ow < g.wo; ++ow) {
              T* row = dyt + (oh * xpl.cols + ow) * ogr;
              const T* src = dys + oh * g.wo + ow;
              for (index_t o = 0; o < og; ++o) row[o] = src[o * p];
            }
          product_rows_parallel(kg, ogr, xn, OffsetRows<T>{xp, xoff}, StridedCols{1},
                                StridedRows<T>{dyt, ogr}, parts.data() + t * psize + gi * kg * ogr,
                                ogr, s > b);
          wrote.data()[t] = 1;
        }
        if (dx) {
          shift_fill(dpl, og, g.ho, g.wo, dys, dyp);
          product_rows_parallel(cg, dn, og * kk, StridedRows<T>{w + gi * og * kg, kk},
                                OffsetCols{wcol}, OffsetRows<T>{dyp, doff}, dxw, dn, false);
          shift_store(dpl, cg, dxw, dn, dx + (s * g.cin + gi * cg) * hw, acc_x);
        }
      }
  });
  if (!dw) return;
  // dw[gi][o][r] (+)= sum over the written slices of parts[t][gi][r][o], in 32 x 32 tiles so
  // that both the strided reads and the writes stay in L1.
  constexpr index_t kTile = 32;
  for (index_t gi = 0; gi < g.groups; ++gi)
    for (index_t o0 = 0; o0 < og; o0 += kTile)
      for (index_t r0 = 0; r0 < kg; r0 += kTile)
        for (index_t o = o0; o < std::min(og, o0 + kTile); ++o)
          for (index_t r = r0; r < std::min(kg, r0 + kTile); ++r) {
            T sum = T(0);
            for (int t = 0; t < nt; ++t)
              if (wrote.data()[t]) sum += parts.data()[t * psize + (gi * kg + r) * ogr + o];
            T& d = dw[(gi * og + o) * kg + r];
            d = acc_w ? d + sum : sum;
          }
}

// ---- depthwise path -------------------------------------------------------------------------


/// Buffer sizes of the depthwise path for one plane.
struct DwGeom {
  index_t hn;        // padded input rows read: (ho - 1) * s + (k - 1) * d + 1
  index_t wb;        // row stride of a padded phase plane: covers the padded row, every tap and the
                     // lane tail of the weight-gradient loop
  index_t wv;        // output columns rounded up to kLanes (the weight-gradient loop reads dy
                     // rows in whole packets, zero-padded)
  index_t hn2, wb2;  // stride 1: the dy plane padded for the input-gradient correlation
  index_t xbuf, dybuf, dxbuf, rowbuf;  // elements of each per-thread buffer (rowbuf: the scatter's
                                       // unpadding row)
  index_t dyrow;     // stride > 1: the scatter's dy row with its zero margins
  index_t dplane;  // stride 1 with relu_masks_dx: the unmasked data gradient of one plane
  index_t per_thread;
};

/// Columns of zeros on each side of the scatter's dy row (dw_input_grad_scatter): the largest
/// column offset of a tap within its phase, (k - 1) d / s.
inline index_t scatter_margin(const ConvGeom& g) { return (g.kh - 1) * g.dil / g.stride; }

template <class T>
DwGeom dw_geom(const ConvGeom& g) {
  const index_t k = g.kh, s = g.stride, d = g.dil, span = (k - 1) * d;
  DwGeom b{};
  b.hn = (g.ho - 1) * s + span + 1;
  b.wv = round_up(g.wo, kLanes<T>);
  b.wb = std::max(ceil_div(g.w + 2 * g.pad, s), b.wv + span / s);
  b.hn2 = g.h + span;
  b.wb2 = g.w + span;
  b.xbuf = round_up(s * b.hn * b.wb, 16);
  b.dybuf = round_up(g.ho * b.wv, 16);
  b.dxbuf = round_up(s == 1 ? b.hn2 * b.wb2 : s * b.hn * b.wb, 16);
  b.dplane = g.relu_masks_dx && s == 1 ? round_up(g.h * g.w, 16) : 0;
  b.rowbuf = round_up(s * b.wb, 16);
  b.dyrow = s > 1 ? round_up(g.wo + 2 * scatter_margin(g), 16) : 0;
  b.per_thread = b.xbuf + b.dybuf + b.dxbuf + b.rowbuf + b.dplane + b.dyrow;
  return b;
}

/// The padded layout of one plane: S phase planes of [hn][wb] with
///   dst[ph][r][q] = src[r - top][q * S + ph - left]   (src is [h][w]), 0 outside src.
/// With the phases, a stride-S tap reads consecutive elements. Every plane a kernel pads has the
/// same geometry, so the zeros (the padding) sit at the same places each time: a buffer is zeroed
/// once (zero()) and fill() then writes only the elements that come from src. Re-zeroing the
/// border for every plane cost more than the 3x3 correlation itself at 8x8 to 32x32 (short rows,
/// a memset call per border run).
struct PadLayout {
  index_t h, w, top, left, hn, wb;
  int s;
  index_t r0, r1;  // dst rows that come from src: [max(top, 0), min(top + h, hn))
  index_t q0[4], q1[4];  // per phase, dst columns that come from src

  PadLayout(int stride, index_t h_, index_t w_, index_t top_, index_t left_, index_t hn_, index_t wb_)
      : h(h_), w(w_), top(top_), left(left_), hn(hn_), wb(wb_), s(stride) {
    DATANAS_ASSERT(s >= 1 && s <= 4);
    r0 = std::clamp<index_t>(top, 0, hn);
    r1 = std::clamp<index_t>(top + h, r0, hn);
    for (int ph = 0; ph < s; ++ph) {  // 0 <= q * s + ph - left < w and 0 <= q < wb
      q0[ph] = std::clamp<index_t>(ceil_div(left - ph, s), 0, wb);
      q1[ph] = std::clamp<index_t>(ceil_div(w + left - ph, s), q0[ph], wb);
    }
  }
  [[nodiscard]] index_t size() const { return index_t(s) * hn * wb; }
  template <class T>
  void zero(T* dst) const {
    std::fill_n(dst, size(), T(0));
  }
  /// Writes the elements of dst that come from src (max(src, 0) with `relu`: the same operation
  /// as relu's forward, so the values are relu's bit for bit); dst's other elements are
  /// untouched.
  template <class T>
  void fill(const T* __restrict src, T* __restrict dst, bool relu = false) const {
    if (relu)
      fill_with(src, dst, ReluOp{});
    else
      fill_with(src, dst, [](const auto& v) { return v; });
  }

 private:
  /// fill with dst = op(src), op taking packets and scalars (map_row).
  template <class T, class Op>
  void fill_with(const T* __restrict src, T* __restrict dst, Op op) const {
    if (s == 1) {  // one contiguous run per row
      for (index_t r = r0; r < r1; ++r)
        map_row(src + (r - top) * w + (q0[0] - left), q1[0] - q0[0], dst + r * wb + q0[0], op);
      return;
    }
    if (s == 2 && left >= 0 && ceil_div(w + left, index_t(2)) <= wb) {
      // Every source column has its place: column c goes to phase (c + left) % 2, column
      // (c + left) / 2, so the even columns form one phase's run and the odd ones the other's.
      // One loop over the pairs, which the compiler vectorises with two-source permutes (a
      // strided loop per phase became one insert per element).
      const int pe = int(left % 2);
      const index_t pairs = w / 2;
      for (index_t r = r0; r < r1; ++r) {
        const T* __restrict sr = src + (r - top) * w;
        T* __restrict even = dst + (pe * hn + r) * wb + left / 2;
        T* __restrict odd = dst + ((1 - pe) * hn + r) * wb + (left + 1) / 2;
        for (index_t m = 0; m < pairs; ++m) {
          even[m] = op(sr[2 * m]);
          odd[m] = op(sr[2 * m + 1]);
        }
        if (w % 2) even[pairs] = op(sr[w - 1]);
      }
      return;
    }
    for (index_t r = r0; r < r1; ++r) {  // any stride and placement: one gather per phase
      const T* sr = src + (r - top) * w;
      for (int ph = 0; ph < s; ++ph) {
        T* o = dst + (ph * hn + r) * wb + q0[ph];
        const T* g = sr + (q0[ph] * s + ph - left);
        for (index_t q = 0, n = q1[ph] - q0[ph]; q < n; ++q) o[q] = op(g[q * s]);
      }
    }
  }
};

// Eigen's packet types carry vector attributes that GCC drops (and warns about) when they are
// template arguments, as the packet type of dw_correlate_rows is; Eigen silences the same warning
// in its own headers.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wignored-attributes"
/// R output rows from `oh`, columns [ow0, ow1) in whole packets P: the packet form of
/// dw_correlate's loop, with the R rows' sums as independent accumulators, so that each chain of
/// K * K dependent multiply-adds overlaps R - 1 others (one chain at a time waited on the FMA
/// latency: about a quarter of the machine's peak). Same operations in the same order per
/// element as the scalar loop.
template <int K, int S, int D, int R, bool Acc, class P, class T>
inline void dw_correlate_rows(const T* __restrict buf, index_t plane, index_t wb, const P* wv,
                              const P& bv, T* __restrict out, index_t oh, index_t ow_n,
                              index_t ow0, index_t ow1) {
  namespace ei = Eigen::internal;
  for (index_t ow = ow0; ow < ow1; ow += ei::unpacket_traits<P>::size) {
    P acc[R];
    for (int r = 0; r < R; ++r) acc[r] = bv;
    for (int i = 0; i < K; ++i)
      for (int j = 0; j < K; ++j) {
        const T* tap = buf + ((j * D) % S) * plane + i * D * wb + (j * D) / S + ow;
        for (int r = 0; r < R; ++r)
          acc[r] = ei::pmadd(wv[i * K + j], ei::ploadu<P>(tap + (oh + r) * S * wb), acc[r]);
      }
    for (int r = 0; r < R; ++r) {
      T* o = out + (oh + r) * ow_n + ow;
      ei::pstoreu(o, Acc ? ei::padd(ei::ploadu<P>(o), acc[r]) : acc[r]);
    }
  }
}

/// out[oh][ow] (+)= bias + sum_ij wk[i][j] * buf[(j d) % S][oh S + i d][ow + (j d) / S]: a K x K
/// correlation over a buffer laid out by PadLayout. Output columns go through dw_correlate_rows
/// in whole packets, four rows at a time, then in half packets where a half packet still fits
/// (an 8 x 8 plane with 16-lane packets); the columns past those through the scalar loop.
template <int K, int S, int D, bool Acc, class T>
void dw_correlate(const T* __restrict buf, index_t hn, index_t wb, const T* wk, T bias,
                  T* __restrict out, index_t oh_n, index_t ow_n) {
  namespace ei = Eigen::internal;
  T wr[K * K];
  std::copy_n(wk, K * K, wr);
  const index_t plane = hn * wb;
  // All rows, columns [ow0, ow1) in packets P.
  auto packets = [&]<class P>(index_t ow0, index_t ow1) {
    P wv[K * K];
    for (int t = 0; t < K * K; ++t) wv[t] = ei::pset1<P>(wr[t]);
    const P bv = ei::pset1<P>(bias);
    constexpr int R = 4;
    index_t oh = 0;
    for (; oh + R <= oh_n; oh += R)
      dw_correlate_rows<K, S, D, R, Acc>(buf, plane, wb, wv, bv, out, oh, ow_n, ow0, ow1);
    for (; oh < oh_n; ++oh) dw_correlate_rows<K, S, D, 1, Acc>(buf, plane, wb, wv, bv, out, oh, ow_n, ow0, ow1);
  };
  using Full = Packet<T>;
  using Half = typename ei::unpacket_traits<Full>::half;
  constexpr index_t VF = ei::unpacket_traits<Full>::size, VH = ei::unpacket_traits<Half>::size;
  index_t owv = ow_n / VF * VF;
  if (owv > 0) packets.template operator()<Full>(0, owv);
  if constexpr (VH < VF) {
    if (owv + VH <= ow_n) {
      packets.template operator()<Half>(owv, owv + VH);
      owv += VH;
    }
  }
  if (owv == ow_n) return;
  for (index_t oh = 0; oh < oh_n; ++oh) {
    const T* base = buf + oh * S * wb;
    T* o = out + oh * ow_n;
    DATANAS_CONV_SIMD
    for (index_t ow = owv; ow < ow_n; ++ow) {
      T a = bias;
#pragma GCC unroll 5
      for (int i = 0; i < K; ++i)
#pragma GCC unroll 5
        for (int j = 0; j < K; ++j)
          a += wr[i * K + j] * base[((j * D) % S) * plane + i * D * wb + (j * D) / S + ow];
      if constexpr (Acc)
        o[ow] += a;
      else
        o[ow] = a;
    }
  }
}
#pragma GCC diagnostic pop

/// dwk[i][j] += sum_{oh, ow} dyb[oh][ow] * xb[(j d) % S][oh S + i d][ow + (j d) / S], with dyb
/// [oh_n][wv] zero beyond the real columns. One SIMD accumulator per tap of a kernel row, so the
/// sum stays in registers (compilers do not vectorise a float reduction on their own).
template <int K, int S, int D, class T>
void dw_weight_grad(const T* __restrict xb, index_t hn, index_t wb, const T* __restrict dyb,
                    index_t oh_n, index_t wv, T* __restrict dwk) {
  namespace ei = Eigen::internal;
  using P = Packet<T>;
  constexpr int V = kLanes<T>;
  const index_t plane = hn * wb;
  for (int i = 0; i < K; ++i) {
    P acc[K];
    for (int j = 0; j < K; ++j) acc[j] = ei::pset1<P>(T(0));
    for (index_t oh = 0; oh < oh_n; ++oh) {
      const T* dr = dyb + oh * wv;
      const T* xr = xb + (oh * S + i * D) * wb;
      for (index_t c0 = 0; c0 < wv; c0 += V) {
        const P dv = ei::ploadu<P>(dr + c0);
#pragma GCC unroll 5
        for (int j = 0; j < K; ++j)
          acc[j] = ei::pmadd(dv, ei::ploadu<P>(xr + ((j * D) % S) * plane + (j * D) / S + c0),
                             acc[j]);
      }
    }
    for (int j = 0; j < K; ++j) dwk[i * K + j] += ei::predux(acc[j]);
  }
}

/// o (+)= v where x > 0, else (+)= 0: relu's backward (activation_backward's expression, so the
/// values are bit for bit those of the unfused relu) applied to one plane's data gradient v.
template <class T>
void store_relu_masked(const T* __restrict x, const T* __restrict v, index_t n, T* __restrict o, bool acc) {
  store(ArrayMap<T>(o, n), (ConstArrayMap<T>(x, n) > T(0)).select(ConstArrayMap<T>(v, n), T(0)), acc);
}

// Eigen's packet types as template arguments: see dw_correlate_rows.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wignored-attributes"
/// The stride-S input gradient of one plane by scatter: dxb (S phase planes like PadLayout's,
/// zeroed here) receives w[i][j] * dy at every tap, then is unpadded into dx. dyrow: the
/// scatter_margin zeros, wo elements, the margin again; its margins must be zero.
/// Per output row, kernel row and phase, each destination packet takes all of that phase's
/// taps in registers, reading dy shifted by the tap's column offset: adding one tap at a time
/// to the row in memory made each tap's load wait on the previous tap's store to the same
/// (misaligned) place, a failed store-to-load forwarding per tap. Each element still sums its
/// taps in the same order.
template <int K, int S, int D, class T>
void dw_input_grad_scatter(const ConvGeom& g, const DwGeom& b, const T* __restrict dy, const T* wk,
                           T* __restrict dxb, T* __restrict row, T* __restrict dyrow,
                           T* __restrict dx, bool acc, const T* __restrict mask_x = nullptr) {
  namespace ei = Eigen::internal;
  constexpr index_t kMargin = (K - 1) * D / S;
  const index_t plane = b.hn * b.wb, span = g.wo + kMargin;  // destination columns [0, span)
  std::fill_n(dxb, S * plane, T(0));
  T* dr = dyrow + kMargin;
  // Destination columns [t0, t1) of row o (phase ph, kernel row i) in packets P.
  auto taps = [&]<class P>(T* __restrict o, int i, int ph, index_t t0, index_t t1) {
    for (index_t t = t0; t < t1; t += ei::unpacket_traits<P>::size) {
      P a = ei::ploadu<P>(o + t);
#pragma GCC unroll 5
      for (int j = 0; j < K; ++j)
        if ((j * D) % S == ph)
          a = ei::pmadd(ei::pset1<P>(wk[i * K + j]), ei::ploadu<P>(dr + t - (j * D) / S), a);
      ei::pstoreu(o + t, a);
    }
  };
  using Full = Packet<T>;
  using Half = typename ei::unpacket_traits<Full>::half;
  using Quarter = typename ei::unpacket_traits<Half>::half;
  constexpr index_t VF = kLanes<T>, VH = ei::unpacket_traits<Half>::size,
                    VQ = ei::unpacket_traits<Quarter>::size;
  const index_t full = span / VF * VF;
  const index_t half = VH < VF && full + VH <= span ? full + VH : full;
  const index_t quarter = VQ < VH && half + VQ <= span ? half + VQ : half;
  for (index_t oh = 0; oh < g.ho; ++oh) {
    copy_row(dy + oh * g.wo, g.wo, dr);
    for (int i = 0; i < K; ++i)
      for (int ph = 0; ph < S; ++ph) {
        T* o = dxb + ph * plane + (oh * S + i * D) * b.wb;
        taps.template operator()<Full>(o, i, ph, 0, full);
        if (half > full) taps.template operator()<Half>(o, i, ph, full, half);
        if (quarter > half) taps.template operator()<Quarter>(o, i, ph, half, quarter);
        for (index_t t = quarter; t < span; ++t) {
          T a = o[t];
          for (int j = 0; j < K; ++j)
            if ((j * D) % S == ph) a += wk[i * K + j] * dr[t - (j * D) / S];
          o[t] = a;
        }
      }
  }
  // dxb is zero wherever no tap wrote, so the padded row can be read up to its full width.
  for (index_t ih = 0; ih < g.h; ++ih) {
    T* o = dx + ih * g.w;
    const index_t r = ih + g.pad;
    if (r >= b.hn) {  // no tap reached this row: a zero gradient, masked or not
      if (!acc) std::fill_n(o, g.w, T(0));
      continue;
    }
    if constexpr (S == 2) {  // one interleaving loop, vectorised with permutes
      const T* __restrict even = dxb + r * b.wb;
      const T* __restrict odd = even + plane;
      for (index_t q = 0; q < b.wb; ++q) {
        row[2 * q] = even[q];
        row[2 * q + 1] = odd[q];
      }
    } else {
      for (int ph = 0; ph < S; ++ph) {
        const T* src = dxb + ph * plane + r * b.wb;
        for (index_t q = 0; q < b.wb; ++q) row[q * S + ph] = src[q];
      }
    }
    const T* rp = row + g.pad;
    if (mask_x)
      store_relu_masked(mask_x + ih * g.w, rp, g.w, o, acc);
    else if (acc)
      ArrayMap<T>(o, g.w) += ConstArrayMap<T>(rp, g.w);
    else
      copy_row(rp, g.w, o);
  }
}
#pragma GCC diagnostic pop

template <int K, int S, int D, class T>
void dw_forward(const ConvGeom& g, const T* x, const T* w, const T* bias, T* y) {
  const DwGeom b = dw_geom<T>(g);
  const index_t planes = g.n * g.cin;
  const int nt = threads_for(planes, g.ho * g.wo * K * K);
  Tensor<T, Cpu> ws = Tensor<T, Cpu>::empty({nt, b.xbuf});
  const PadLayout xl(S, g.h, g.w, g.pad, g.pad, b.hn, b.wb);
  run_chunks(nt, planes, [&](int t, index_t q0, index_t q1) {
    T* xb = ws.data() + t * b.xbuf;
    xl.zero(xb);
    for (index_t q = q0; q < q1; ++q) {
      const index_t c = q % g.cin;
      xl.fill(x + q * g.h * g.w, xb, g.relu_input);
      dw_correlate<K, S, D, false>(xb, b.hn, b.wb, w + c * K * K, bias ? bias[c] : T(0),
                                   y + q * g.ho * g.wo, g.ho, g.wo);
    }
  });
}

template <int K, int S, int D, class T>
void dw_backward(const ConvGeom& g, const T* x, const T* w, const T* dy, T* dx, bool acc_x, T* dw,
                 bool acc_w) {
  const DwGeom b = dw_geom<T>(g);
  const index_t planes = g.n * g.cin, wsize = g.cin * K * K;
  const int nt = threads_for(planes, 2 * g.ho * g.wo * K * K);
  Tensor<T, Cpu> ws = Tensor<T, Cpu>::empty({nt, b.per_thread});
  Tensor<T, Cpu> parts;
  if (dw) {
    parts = Tensor<T, Cpu>::empty({nt, wsize});
    parts.fill(T(0));
  }
  // Zero-padded buffers: x for the weight gradient, dy rows to whole packets for it, and (stride 1)
  // dy padded for the input gradient's correlation.
  const PadLayout xl(S, g.h, g.w, g.pad, g.pad, b.hn, b.wb), dyl(1, g.ho, g.wo, 0, 0, g.ho, b.wv);
  const index_t p0 = (K - 1) * D - g.pad;
  const PadLayout dxl(1, g.ho, g.wo, p0, p0, b.hn2, b.wb2);
  run_chunks(nt, planes, [&](int t, index_t q0, index_t q1) {
    T* xb = ws.data() + t * b.per_thread;
    T* dyb = xb + b.xbuf;
    T* dxb = dyb + b.dybuf;
    T* row = dxb + b.dxbuf;
    T* dplane = row + b.rowbuf;
    T* dyrow = dplane + b.dplane;
    if (dw) {
      xl.zero(xb);
      dyl.zero(dyb);
    }
    if (dx && S == 1) dxl.zero(dxb);
    if (dx && S > 1) std::fill_n(dyrow, b.dyrow, T(0));  // the scatter's margins
    for (index_t q = q0; q < q1; ++q) {
      const index_t c = q % g.cin;
      const T* dyq = dy + q * g.ho * g.wo;
      if (dw) {
        xl.fill(x + q * g.h * g.w, xb, g.relu_input);
        dyl.fill(dyq, dyb);
        dw_weight_grad<K, S, D>(xb, b.hn, b.wb, dyb, g.ho, b.wv,
                                parts.data() + t * wsize + c * K * K);
      }
      if (!dx) continue;
      const T* wk = w + c * K * K;  // here, not above: w is null when only dw is wanted
      T* dxq = dx + q * g.h * g.w;
      const T* mask_x = g.relu_masks_dx ? x + q * g.h * g.w : nullptr;
      if constexpr (S == 1) {
        // dx[h][w] = sum_ij w[i][j] dy[h + p - i d][w + p - j d]: the forward correlation of dy
        // padded by (k - 1) d - p with the flipped kernel, no scatter.
        T wf[K * K];
        for (int i = 0; i < K * K; ++i) wf[i] = wk[K * K - 1 - i];
        dxl.fill(dyq, dxb);
        if (mask_x) {
          dw_correlate<K, 1, D, false>(dxb, b.hn2, b.wb2, wf, T(0), dplane, g.h, g.w);
          store_relu_masked(mask_x, dplane, g.h * g.w, dxq, acc_x);
        } else if (acc_x) {
          dw_correlate<K, 1, D, true>(dxb, b.hn2, b.wb2, wf, T(0), dxq, g.h, g.w);
        } else {
          dw_correlate<K, 1, D, false>(dxb, b.hn2, b.wb2, wf, T(0), dxq, g.h, g.w);
        }
      } else {
        dw_input_grad_scatter<K, S, D>(g, b, dyq, wk, dxb, row, dyrow, dxq, acc_x, mask_x);
      }
    }
  });
  if (dw) reduce_partials(parts.data(), nt, wsize, dw, acc_w);
}

/// f.template operator()<K, S, D>() for the runtime kernel size, stride and dilation of a
/// depthwise conv (conv_path has checked they are supported).
template <class F>
void dw_dispatch(const ConvGeom& g, F&& f) {
  auto with_kd = [&]<int K, int D>() {
    if (g.stride == 1)
      f.template operator()<K, 1, D>();
    else
      f.template operator()<K, 2, D>();
  };
  auto with_k = [&]<int K>() {
    if (g.dil == 1)
      with_kd.template operator()<K, 1>();
    else
      with_kd.template operator()<K, 2>();
  };
  if (g.kh == 3)
    with_k.template operator()<3>();
  else
    with_k.template operator()<5>();
}

}  // namespace conv_detail

/// y [N, Cout, Ho, Wo] = conv(x, w) + bias; bias may be null.
template <class T>
void conv2d_forward(const ConvGeom& g, ConvPath path, const Tensor<T, Cpu>& x,
                    const Tensor<T, Cpu>& w, const T* bias, const Tensor<T, Cpu>& y) {
  DATANAS_ASSERT(!g.relu_input || path != ConvPath::kShifted);
  if (g.n == 0) return;
  if (path == ConvPath::kDepthwise) {
    conv_detail::dw_dispatch(g, [&]<int K, int S, int D>() {
      conv_detail::dw_forward<K, S, D>(g, x.data(), w.data(), bias, y.data());
    });
  } else if (path == ConvPath::kShifted) {
    conv_detail::shift_forward(g, x.data(), w.data(), bias, y.data());
  } else {
    conv_detail::gemm_forward(g, path, x.data(), w.data(), bias, y.data());
  }
}

/// Gradients of conv2d given dy: into dx, dw, db when those tensors are defined (overwriting
/// unless acc_*, the GradSlot convention). Needs x only for dw and w only for dx.
template <class T>
void conv2d_backward(const ConvGeom& g, ConvPath path, const Tensor<T, Cpu>& x,
                     const Tensor<T, Cpu>& w, const Tensor<T, Cpu>& dy, const Tensor<T, Cpu>& dx,
                     bool acc_x, const Tensor<T, Cpu>& dw, bool acc_w, const Tensor<T, Cpu>& db,
                     bool acc_b) {
  DATANAS_ASSERT(!g.relu_input || path != ConvPath::kShifted);
  DATANAS_ASSERT(!g.relu_masks_dx || g.relu_input);
  const index_t p = g.ho * g.wo;
  if (db.defined()) {
    T* o = db.data();
    for (index_t c = 0; c < g.cout; ++c) {
      T s = 0;
      for (index_t n = 0; n < g.n; ++n)
        s += ConstArrayMap<T>(dy.data() + (n * g.cout + c) * p, p).sum();
      o[c] = acc_b ? o[c] + s : s;
    }
  }
  if (!dx.defined() && !dw.defined()) return;
  if (g.n == 0) {  // empty batch: the weight gradient is an empty sum
    if (dw.defined() && !acc_w) dw.fill(T(0));
    return;
  }
  T* dxp = dx.defined() ? dx.data() : nullptr;
  T* dwp = dw.defined() ? dw.data() : nullptr;
  if (path == ConvPath::kDepthwise) {
    conv_detail::dw_dispatch(g, [&]<int K, int S, int D>() {
      conv_detail::dw_backward<K, S, D>(g, x.data(), w.data(), dy.data(), dxp, acc_x, dwp, acc_w);
    });
  } else if (path == ConvPath::kShifted) {
    conv_detail::shift_backward(g, x.data(), w.data(), dy.data(), dxp, acc_x, dwp, acc_w);
  } else {
    conv_detail::gemm_backward(g, path, x.data(), w.data(), dy.data(), dxp, acc_x, dwp, acc_w);
  }
}

}  // namespace cpu
}  // namespace datanas
