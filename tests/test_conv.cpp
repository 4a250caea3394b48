// conv2d: forward values by hand, finite-difference gradients on every kernel path, fast paths
// against the im2col path, and the error messages.
#include <array>
#include <cmath>
#include <cstring>
#include <limits>

#include "gradcheck.hpp"
#include "datanas/nn/layers.hpp"

using namespace datanas;
using namespace datanas::testing;

namespace {

VarD no_bias() { return VarD(); }

/// y = conv2d(x, w, b) with x, w (and b when given) as check_gradients inputs.
void check_conv(const Shape& xs, const Shape& ws, Conv2dParams p, bool bias, std::uint64_t seed) {
  CAPTURE(xs.str());
  CAPTURE(ws.str());
  CAPTURE(p.stride);
  CAPTURE(p.padding);
  CAPTURE(p.dilation);
  CAPTURE(p.groups);
  CAPTURE(bias);
  std::vector<VarD> in{param(xs, seed), param(ws, seed + 1)};
  if (bias) in.push_back(param({ws[0]}, seed + 2));
  check_gradients(
      [p](const std::vector<VarD>& v) {
        return conv2d(v[0], v[1], v.size() > 2 ? v[2] : no_bias(), p);
      },
      in);
}

/// The tape's output gradient r pushed through y (as in check_gradients), in float.
template <class T>
void backward_with(const Var<T, Cpu>& y, const Tensor<T, Cpu>& r) {
  auto [g, acc] = y.grad_slot();
  (void)acc;
  g.copy_from(r);
  tape<T, Cpu>().run_backward();
}

Tensor<float, Cpu> random_float(const Shape& s, std::uint64_t seed) {
  PhiloxGenerator g(seed);
  auto t = Tensor<float, Cpu>::empty(s);
  for (index_t i = 0; i < t.numel(); ++i) t[i] = 2 * float(g.uniform()) - 1;
  return t;
}

/// y = f(x, w...) computed two ways (`fused`, and `chain` as its definition; both take x and the
/// weights' Vars): checks that y and the gradients of x and every weight (dL/dy = r) agree bit
/// for bit, and returns the bytes each way held from its forward to its backward.
template <class Fused, class Chain>
std::array<std::size_t, 2> fused_vs_chain(Fused fused, Chain chain, const Tensor<float, Cpu>& xv,
                                          const std::vector<Tensor<float, Cpu>>& wv, const Tensor<float, Cpu>& r) {
  using VarF = Var<float, Cpu>;
  auto& alloc = CachingAllocator<Cpu>::instance();
  std::vector<Tensor<float, Cpu>> out[2];
  std::array<std::size_t, 2> held{};
  for (int k = 0; k < 2; ++k) {
    VarF x(xv.clone(), true);
    std::vector<VarF> w;
    for (const auto& t : wv) w.emplace_back(t.clone(), true);
    const std::size_t before = alloc.stats().bytes_in_use;
    VarF y = k == 0 ? fused(x, w) : chain(x, w);
    held[std::size_t(k)] = alloc.stats().bytes_in_use - before;
    backward_with(y, r);
    out[k] = {y.value(), x.grad()};
    for (const VarF& wi : w) out[k].push_back(wi.grad());
  }
  for (std::size_t i = 0; i < out[0].size(); ++i) {
    CAPTURE(i);  // y, dx, then the weights' gradients
    REQUIRE(out[0][i].shape() == out[1][i].shape());
    CHECK(std::memcmp(out[0][i].data(), out[1][i].data(), std::size_t(out[0][i].numel()) * sizeof(float)) == 0);
  }
  return held;
}

/// fused_vs_chain for y = f(x, w1, w2) (the convolution pairs).
template <class Pair, class Chain>
std::array<std::size_t, 2> pair_vs_chain(Pair pair, Chain chain, const Tensor<float, Cpu>& xv,
                                         const Tensor<float, Cpu>& w1v, const Tensor<float, Cpu>& w2v,
                                         const Tensor<float, Cpu>& r) {
  using VarF = Var<float, Cpu>;
  return fused_vs_chain([&](const VarF& x, const std::vector<VarF>& w) { return pair(x, w[0], w[1]); },
                        [&](const VarF& x, const std::vector<VarF>& w) { return chain(x, w[0], w[1]); }, xv,
                        {w1v, w2v}, r);
}

/// Largest |a - ref| over the elements.
double max_error(const Tensor<float, Cpu>& a, const TensorD& ref) {
  REQUIRE(a.shape() == ref.shape());
  double worst = 0;
  for (index_t i = 0; i < a.numel(); ++i) worst = std::max(worst, std::abs(double(a[i]) - ref[i]));
  return worst;
}

/// Runs the chosen path and the forced im2col path on the same float inputs, and the im2col
/// path on the same inputs in double; y, dx, dw and db of the chosen path must be as close to
/// double's as the im2col path's are (both round differently: a weight gradient sums hundreds
/// of products, so neither is within 1e-5 of the other everywhere), and both close to it.
void check_fast_vs_general(const Shape& xs, const Shape& ws, Conv2dParams p, cpu::ConvPath expected,
                           std::uint64_t seed) {
  using VarF = Var<float, Cpu>;
  CAPTURE(xs.str());
  CAPTURE(ws.str());
  CAPTURE(p.stride);
  CAPTURE(p.padding);
  CAPTURE(p.dilation);
  CAPTURE(p.groups);
  const Shape bs{ws[0]};
  REQUIRE(cpu::conv_path(cpu::conv_geometry(xs, ws, &bs, p)) == expected);
  const auto xv = random_float(xs, seed), wv = random_float(ws, seed + 1);
  const auto bv = random_float(bs, seed + 2);
  const Shape ys = conv2d(VarD(TensorD::zeros(xs)), VarD(TensorD::zeros(ws)), no_bias(), p).shape();
  clear_tape<double, Cpu>();
  const auto rv = random_float(ys, seed + 3);
  auto to_double = [](const Tensor<float, Cpu>& t) {
    TensorD d = TensorD::empty(t.shape());
    for (index_t i = 0; i < t.numel(); ++i) d[i] = double(t[i]);
    return d;
  };
  TensorD ref[4];
  {
    VarD x(to_double(xv), true), w(to_double(wv), true), b(to_double(bv), true);
    VarD y = detail::conv2d(x, w, b, p, cpu::ConvAlgo::kGeneral);
    backward_with(y, to_double(rv));
    ref[0] = y.value(), ref[1] = x.grad(), ref[2] = w.grad(), ref[3] = b.grad();
  }
  Tensor<float, Cpu> out[2][4];
  for (int k = 0; k < 2; ++k) {
    VarF x(xv.clone(), true), w(wv.clone(), true), b(bv.clone(), true);
    VarF y = detail::conv2d(x, w, b, p, k == 0 ? cpu::ConvAlgo::kAuto : cpu::ConvAlgo::kGeneral);
    backward_with(y, rv);
    out[k][0] = y.value();
    out[k][1] = x.grad();
    out[k][2] = w.grad();
    out[k][3] = b.grad();
  }
  const char* names[] = {"y", "dx", "dw", "db"};
  for (int i = 0; i < 4; ++i) {
    const std::string name = names[i];
    CAPTURE(name);
    double scale = 1;
    for (index_t j = 0; j < ref[i].numel(); ++j) scale = std::max(scale, std::abs(ref[i][j]));
    const double fast = max_error(out[0][i], ref[i]), general = max_error(out[1][i], ref[i]);
    CHECK(fast <= 2 * general + 1e-6 * scale);
    CHECK(fast <= 1e-5 * scale);
  }
}

/// conv_detail::gemm<TA, TB> (or, with kSmall, small_gemm::nn<TA> or small_gemm::nt whatever the
/// shape) against a
/// double-precision triple loop, on a C with a wider leading dimension (columns past n must stay
/// untouched) and with and without accumulation.
template <bool TA, bool TB, class T, bool kSmall = false>
void check_gemm(index_t m, index_t n, index_t k, std::uint64_t seed) {
  CAPTURE(m);
  CAPTURE(n);
  CAPTURE(k);
  CAPTURE(TA);
  CAPTURE(TB);
  const index_t lda = (TA ? m : k) + 3, ldb = (TB ? k : n) + 2, ldc = n + 5;
  PhiloxGenerator g(seed);
  auto fill = [&](std::vector<T>& v) {
    for (auto& e : v) e = T(2 * g.uniform() - 1);
  };
  std::vector<T> a(std::size_t((TA ? k : m) * lda)), b(std::size_t((TB ? n : k) * ldb)),
      c0(std::size_t(m * ldc));
  fill(a), fill(b), fill(c0);
  for (const bool acc : {false, true}) {
    CAPTURE(acc);
    std::vector<T> c = c0;
    if constexpr (kSmall && TB)
      cpu::small_gemm::nt(m, n, k, a.data(), lda, b.data(), ldb, c.data(), ldc, acc);
    else if constexpr (kSmall)
      cpu::small_gemm::nn<TA>(m, n, k, a.data(), lda, b.data(), ldb, c.data(), ldc, acc);
    else
      cpu::conv_detail::gemm<TA, TB>(m, n, k, a.data(), lda, b.data(), ldb, c.data(), ldc, acc);
    double worst = 0;
    for (index_t i = 0; i < m; ++i)
      for (index_t j = 0; j < ldc; ++j) {
        const T got = c[std::size_t(i * ldc + j)], before = c0[std::size_t(i * ldc + j)];
        if (j >= n) {
          REQUIRE(got == before);  // outside C's columns
          continue;
        }
        double want = acc ? double(before) : 0.0, mag = std::abs(want);
        for (index_t p = 0; p < k; ++p) {
          const double t = double(TA ? a[std::size_t(p * lda + i)] : a[std::size_t(i * lda + p)]) *
                           double(TB ? b[std::size_t(j * ldb + p)] : b[std::size_t(p * ldb + j)]);
          want += t;
          mag += std::abs(t);
        }
        // A sum of k + 1 terms in T, in any order, is within (k + 1) eps sum|term| of the exact
        // one; a wrong or missing term is off by about one term (~0.3 here), far above it.
        const double bound =
            double(k + 1) * double(std::numeric_limits<T>::epsilon()) * mag + 1e-30;
        worst = std::max(worst, std::abs(double(got) - want) / bound);
      }
    CHECK(worst < 1.0);
  }
}

}  // namespace

TEST_SUITE("cpu") {
  TEST_CASE("the convolutions' GEMM: small register-tiled and Eigen products, every tail") {
    // Rows: whole 6-row tiles and every remainder, alone (B read in place) and after whole tiles
    // (B's panels copied first); columns: whole panels, every count of packets short of a panel
    // (1 to 3 with AVX-512's 4-packet panels: 33, 49, 112 floats) and a partial packet after
    // them (for 8- and 16-lane floats, 4- and 8-lane doubles), and fewer columns than a
    // packet (Eigen's path in gemm; small_gemm::nn is checked on them directly); k = 0 and on
    // both sides of the panel copy's block (kBlockK: 64 or 128); and, for a few shapes (the
    // reference costs m n k each), on both sides of small_gemm::kMaxInner (Eigen above it).
    // A B^T (small_gemm::nt from a packet of columns and of inner indices, its panels
    // transposed in V x V blocks): k below, at and past whole blocks (1, 7, 9, 16, kBlockK + 1,
    // ...), and small_gemm::nt directly where gemm gives the shape to Eigen.
    const index_t kb = cpu::small_gemm::kBlockK<float>, kmax = cpu::small_gemm::kMaxInner;
    std::uint64_t seed = 900;
    auto check_all = [&](index_t m, index_t n, index_t k) {
      check_gemm<false, false, float>(m, n, k, ++seed);
      check_gemm<true, false, float>(m, n, k, ++seed);
      check_gemm<false, true, float>(m, n, k, ++seed);
      check_gemm<false, false, double>(m, n, k, ++seed);
      check_gemm<true, false, double>(m, n, k, ++seed);
      check_gemm<false, true, double>(m, n, k, ++seed);
      if (n < 16) {
        check_gemm<false, false, float, true>(m, n, k, ++seed);
        check_gemm<true, false, float, true>(m, n, k, ++seed);
        check_gemm<false, false, double, true>(m, n, k, ++seed);
      }
      if (n < 16 || k < 16) {
        check_gemm<false, true, float, true>(m, n, k, ++seed);
        check_gemm<false, true, double, true>(m, n, k, ++seed);
      }
    };
    for (const index_t m : {1, 3, 4, 5, 6, 7, 9, 11, 14, 16})
      for (const index_t n : {1, 3, 7, 16, 27, 33, 47, 49, 64, 70, 112, 131})
        for (const index_t k :
             {index_t(0), index_t(1), index_t(7), index_t(9), index_t(16), kb + 1, 2 * kb + 3})
          check_all(m, n, k);
    for (const index_t m : {5, 14})
      for (const index_t n : {3, 47, 131})
        for (const index_t k : {kmax, kmax + 1}) check_all(m, n, k);
    // Rows past one and two blocks of kBlockM (the PTB decoder's products behind linear).
    const index_t kbm = cpu::small_gemm::kBlockM;
    for (const index_t m : {kbm + 1, 2 * kbm + 7})
      for (const index_t n : {16, 47})
        for (const index_t k : {index_t(9), kb + 1}) check_all(m, n, k);
    // A row block of C beyond kChunkBytes with more than one inner block (the PTB decoder's
    // forward at 850 units): columns in chunks of kBlockN, the last one a single column.
    // (2,305 columns with kBlockM = 240, kBlockN = 256, 2 MiB.)
    const index_t kbn = cpu::small_gemm::kBlockN;
    const index_t chunks = cpu::small_gemm::kChunkBytes / (kbm * index_t(sizeof(float))) / kbn + 1;
    check_all(kbm + 5, chunks * kbn + 1, kb + 1);
  }

  TEST_CASE("conv2d forward values by hand") {
    SUBCASE("2x2 kernel, padding 1, stride 2, bias") {
      VarD x(TensorD::from({1, 1, 3, 3}, {1, 2, 3, 4, 5, 6, 7, 8, 9}));
      VarD w(TensorD::from({1, 1, 2, 2}, {1, 2, 3, 4}));
      VarD b(TensorD::from({1}, {0.5}));
      auto y = conv2d(x, w, b, {.stride = 2, .padding = 1}).value();
      REQUIRE(y.shape() == Shape{1, 1, 2, 2});
      // Windows of the zero-padded 5x5 input: [0 0; 0 1], [0 0; 2 3], [0 4; 0 7], [5 6; 8 9].
      CHECK(y[0] == 4.5);
      CHECK(y[1] == 18.5);
      CHECK(y[2] == 36.5);
      CHECK(y[3] == 77.5);
    }
    SUBCASE("depthwise 3x3, padding 1, stride 1 and 2") {
      VarD x(TensorD::from({1, 2, 3, 3}, {1, 2, 3, 4, 5, 6, 7, 8, 9,  //
                                          9, 8, 7, 6, 5, 4, 3, 2, 1}));
      VarD w(TensorD::from({2, 1, 3, 3}, {1, 1, 1, 1, 1, 1, 1, 1, 1,  //
                                          0, 0, 0, 0, 0, 2, 0, 0, 0}));
      auto y = conv2d(x, w, no_bias(), {.padding = 1, .groups = 2}).value();
      REQUIRE(y.shape() == Shape{1, 2, 3, 3});
      // Channel 0: sums of 3x3 neighbourhoods; channel 1: twice the right neighbour.
      const double expected[18] = {12, 21, 16, 27, 45, 33, 24, 39, 28,  //
                                   16, 14, 0,  10, 8,  0,  4,  2,  0};
      for (int i = 0; i < 18; ++i) CHECK(y[i] == expected[i]);
      auto y2 = conv2d(x, w, no_bias(), {.stride = 2, .padding = 1, .groups = 2}).value();
      REQUIRE(y2.shape() == Shape{1, 2, 2, 2});
      const double expected2[8] = {12, 16, 24, 28, 16, 0, 4, 0};
      for (int i = 0; i < 8; ++i) CHECK(y2[i] == expected2[i]);
    }
    SUBCASE("1x1, stride 1 and 2") {
      VarD x(TensorD::from({1, 2, 2, 3}, {1, 2, 3, 4, 5, 6,  //
                                          10, 20, 30, 40, 50, 60}));
      VarD w(TensorD::from({1, 2, 1, 1}, {2, -1}));
      auto y = conv2d(x, w, no_bias()).value();
      const double expected[6] = {-8, -16, -24, -32, -40, -48};
      for (int i = 0; i < 6; ++i) CHECK(y[i] == expected[i]);
      auto y2 = conv2d(x, w, no_bias(), {.stride = 2}).value();
      REQUIRE(y2.shape() == Shape{1, 1, 1, 2});
      CHECK(y2[0] == -8);
      CHECK(y2[1] == -24);
    }
  }

  TEST_CASE("conv2d gradients: general path") {
    check_conv({1, 4, 7, 5}, {6, 2, 3, 3}, {.stride = 2, .padding = 1, .dilation = 2, .groups = 2},
               true, 1);
    check_conv({3, 3, 7, 5}, {5, 3, 3, 2}, {.stride = 2}, false, 2);
    check_conv({2, 3, 5, 6}, {4, 3, 3, 3}, {.padding = 2}, true, 3);
    check_conv({3, 6, 5, 4}, {6, 2, 2, 3}, {.stride = 1, .padding = 1, .groups = 3}, false, 4);
    // Depthwise shapes the fast path refuses (padding too large, stride 3, 2x2 kernel).
    check_conv({1, 5, 6, 5}, {5, 1, 3, 3}, {.padding = 3, .groups = 5}, false, 5);
    check_conv({2, 3, 7, 7}, {3, 1, 3, 3}, {.stride = 3, .padding = 1, .groups = 3}, true, 6);
  }

  TEST_CASE("conv2d gradients: depthwise path") {
    struct Case {
      int k, s, d;
    };
    for (Case c : {Case{3, 1, 1}, Case{5, 1, 1}, Case{3, 2, 1}, Case{5, 2, 1}, Case{3, 1, 2},
                   Case{5, 1, 2}, Case{3, 2, 2}, Case{5, 2, 2}}) {
      const Conv2dParams p{
          .stride = c.s, .padding = (c.k - 1) * c.d / 2, .dilation = c.d, .groups = 5};
      const Shape ws{5, 1, c.k, c.k};
      REQUIRE(cpu::conv_path(cpu::conv_geometry({1, 5, 7, 5}, ws, nullptr, p)) ==
              cpu::ConvPath::kDepthwise);
      check_conv({1, 5, 7, 5}, ws, p, false, 10 + c.k);
      check_conv({3, 5, 6, 9}, ws, p, c.s == 1, 20 + c.k);
    }
    // No padding and the largest padding the fast path takes.
    check_conv({2, 3, 7, 6}, {3, 1, 3, 3}, {.groups = 3}, true, 30);
    check_conv({2, 3, 5, 6}, {3, 1, 3, 3}, {.stride = 2, .padding = 4, .dilation = 2, .groups = 3},
               false, 31);
    check_conv({1, 3, 5, 5}, {3, 1, 5, 5}, {.padding = 4, .groups = 3}, false, 32);
  }

  TEST_CASE("conv2d gradients: shifted-taps path (stride 1)") {
    // Dense, grouped, rectangular and dilated kernels; no padding up to (k - 1) * dilation.
    check_conv({2, 3, 6, 5}, {4, 3, 3, 3}, {.padding = 1}, true, 44);
    check_conv({1, 2, 7, 6}, {3, 2, 3, 3}, {}, false, 45);
    check_conv({2, 4, 5, 7}, {4, 2, 2, 3}, {.padding = 1, .groups = 2}, true, 46);
    check_conv({1, 3, 9, 8}, {2, 3, 3, 3}, {.padding = 3, .dilation = 2}, false, 47);
    check_conv({2, 2, 6, 6}, {3, 2, 5, 5}, {.padding = 2}, true, 48);
    check_conv({1, 3, 4, 7}, {2, 3, 1, 3}, {}, false, 49);
    REQUIRE(cpu::conv_path(cpu::conv_geometry({1, 3, 4, 7}, {2, 3, 1, 3}, nullptr, {})) ==
            cpu::ConvPath::kShifted);
  }

  TEST_CASE("shifted path: weight gradients from any number of threads, even idle ones") {
    // Batch 5 on 4 threads: chunks of 2, so the last thread gets no sample and its partial
    // slice is never written (and must not be summed). Against one thread.
    const Shape xs{5, 6, 9, 8}, ws{7, 6, 3, 3};
    const Conv2dParams p{.padding = 1};
    REQUIRE(cpu::conv_path(cpu::conv_geometry(xs, ws, nullptr, p)) == cpu::ConvPath::kShifted);
    const auto xv = random_float(xs, 300), wv = random_float(ws, 301);
    auto dw_with = [&](int threads) {
#if defined(_OPENMP)
      const int before = omp_get_max_threads();
      omp_set_num_threads(threads);
#endif
      Var<float, Cpu> x(xv.clone(), true), w(wv.clone(), true);
      Var<float, Cpu> y = conv2d(x, w, Var<float, Cpu>(), p);
      backward_with(y, Tensor<float, Cpu>::full(y.shape(), 0.25f));
#if defined(_OPENMP)
      omp_set_num_threads(before);
#endif
      return w.grad().clone();
    };
    const auto one = dw_with(1);
    {
      // Leave NaN in the cached block that the 4 per-thread partial slices will get (4 x kg x
      // output channels rounded to a packet), so that summing the idle thread's slice shows.
      const index_t slices = 4 * (6 * 3 * 3) * cpu::conv_detail::round_up(7, cpu::kLanes<float>);
      Tensor<float, Cpu>::full({slices}, std::numeric_limits<float>::quiet_NaN());
    }
    const auto four = dw_with(4);
    for (index_t i = 0; i < one.numel(); ++i)
      REQUIRE(four[i] == doctest::Approx(one[i]).epsilon(1e-5));
    // The choice: a large weight over few output positions stays with im2col.
    CHECK(cpu::conv_path(cpu::conv_geometry({2, 512, 7, 7}, {512, 512, 3, 3}, nullptr, p)) ==
          cpu::ConvPath::kGeneral);
    CHECK(cpu::conv_path(cpu::conv_geometry({8, 512, 7, 7}, {512, 512, 3, 3}, nullptr, p)) ==
          cpu::ConvPath::kShifted);
  }

  TEST_CASE("conv2d gradients: 1x1") {
    check_conv({3, 5, 4, 3}, {6, 5, 1, 1}, {}, true, 40);
    check_conv({1, 6, 5, 7}, {4, 3, 1, 1}, {.groups = 2}, false, 41);
    check_conv({3, 6, 7, 5}, {3, 6, 1, 1}, {.stride = 2}, false, 42);
    check_conv({2, 4, 6, 6}, {2, 4, 1, 1}, {.stride = 2}, true, 43);
  }

  TEST_CASE("conv2d gradients accumulate over uses") {
    // Two convs of the same x and w: the second backward adds into the first one's gradients.
    for (Conv2dParams p : {Conv2dParams{.padding = 1, .groups = 3},
                           Conv2dParams{.stride = 2, .padding = 1, .groups = 3},
                           Conv2dParams{.padding = 1, .dilation = 2}}) {
      const Shape ws = p.groups == 3 ? Shape{3, 1, 3, 3} : Shape{3, 3, 3, 3};
      check_gradients(
          [p](const std::vector<VarD>& v) {
            return add(conv2d(v[0], v[1], v[2], p), conv2d(v[0], v[1], v[2], p));
          },
          {param({2, 3, 6, 5}, 50), param(ws, 51), param({3}, 52)});
    }
    check_gradients(
        [](const std::vector<VarD>& v) {
          return add(conv2d(v[0], v[1], no_bias()), conv2d(v[0], v[1], no_bias()));
        },
        {param({2, 3, 4, 5}, 53), param({3, 3, 1, 1}, 54)});
  }

  TEST_CASE("conv2d gradient only to the inputs that require it") {
    VarD x(random_tensor({2, 3, 5, 5}, 60), false);
    VarD w = param({3, 1, 3, 3}, 61);
    check_gradients(
        [](const std::vector<VarD>& v) {
          return conv2d(v[0], v[1], no_bias(), {.padding = 1, .groups = 3});
        },
        {x, w});
    CHECK_FALSE(x.has_grad());
    VarD w2(random_tensor({4, 3, 3, 3}, 62), false);
    check_gradients(
        [](const std::vector<VarD>& v) { return conv2d(v[0], v[1], no_bias(), {.stride = 2}); },
        {param({2, 3, 7, 7}, 63), w2});
    CHECK_FALSE(w2.has_grad());
    // The shifted-taps path (stride 1, dense): data gradient alone, weight gradient alone.
    VarD x3(random_tensor({2, 3, 6, 5}, 64), false);
    check_gradients(
        [](const std::vector<VarD>& v) { return conv2d(v[0], v[1], v[2], {.padding = 1}); },
        {x3, param({4, 3, 3, 3}, 65), param({4}, 66)});
    CHECK_FALSE(x3.has_grad());
    VarD w3(random_tensor({4, 3, 3, 3}, 67), false);
    check_gradients(
        [](const std::vector<VarD>& v) {
          return conv2d(v[0], v[1], no_bias(), {.padding = 2, .dilation = 2});
        },
        {param({2, 3, 6, 5}, 68), w3});
    CHECK_FALSE(w3.has_grad());
  }

  TEST_CASE("conv2d_pair and relu_conv2d_pair: gradients, accumulation, only where required") {
    // conv2d_pair without and with the ReLU in front. With it, x spreads over [-2, 2], so about
    // half its units are cut; a depthwise first convolution reads relu(x) straight from x
    // (ConvGeom::relu_input), a general one gets a temporary relu(x).
    auto pair = [](bool with_relu, const VarD& x, const VarD& w1, Conv2dParams p1, const VarD& w2,
                   Conv2dParams p2 = {}) {
      return with_relu ? relu_conv2d_pair(x, w1, p1, w2, p2) : conv2d_pair(x, w1, p1, w2, p2);
    };
    for (const bool with_relu : {false, true}) {
      CAPTURE(with_relu);
      const double lo = with_relu ? -2.0 : -1.0, hi = -lo;
      // The pairs of sep_conv (depthwise, stride 1 or 2, then 1x1) and dil_conv (dilation 2).
      const Conv2dParams dw3{.stride = 2, .padding = 1, .groups = 4}, dil5{.padding = 4, .dilation = 2, .groups = 4};
      std::uint64_t seed = with_relu ? 170 : 70;
      for (const Conv2dParams& p1 : {dw3, dil5}) {
        CAPTURE(p1.stride);
        const Shape w1s{4, 1, p1.dilation == 2 ? 5 : 3, p1.dilation == 2 ? 5 : 3};
        check_gradients([&](const std::vector<VarD>& v) { return pair(with_relu, v[0], v[1], p1, v[2]); },
                        {param({2, 4, 7, 6}, seed, lo, hi), param(w1s, seed + 1), param({3, 4, 1, 1}, seed + 2)});
        // x feeds two pairs: the gradients add up.
        check_gradients(
            [&](const std::vector<VarD>& v) {
              return add(pair(with_relu, v[0], v[1], p1, v[2]), pair(with_relu, v[0], v[1], p1, v[2]));
            },
            {param({1, 4, 6, 6}, seed + 3, lo, hi), param(w1s, seed + 4), param({4, 4, 1, 1}, seed + 5)});
        seed += 10;
      }
      // A general first convolution.
      check_gradients(
          [&](const std::vector<VarD>& v) { return pair(with_relu, v[0], v[1], {.padding = 1}, v[2], {.stride = 2}); },
          {param({2, 3, 6, 5}, seed, lo, hi), param({5, 3, 3, 3}, seed + 1), param({2, 5, 1, 1}, seed + 2)});
      // x constant: only the weights; frozen weights (DARTS' architecture step): only x.
      const Conv2dParams dw{.padding = 1, .groups = 4};
      VarD x(random_tensor({2, 4, 5, 5}, seed + 3, lo, hi), false), w2(random_tensor({3, 4, 1, 1}, seed + 4), false);
      check_gradients([&](const std::vector<VarD>& v) { return pair(with_relu, v[0], v[1], dw, v[2]); },
                      {x, param({4, 1, 3, 3}, seed + 5), w2});
      CHECK_FALSE(x.has_grad());
      CHECK_FALSE(w2.has_grad());
      VarD w1(random_tensor({4, 1, 3, 3}, seed + 6), false);
      check_gradients([&](const std::vector<VarD>& v) { return pair(with_relu, v[0], v[1], dw, v[2]); },
                      {x, w1, param({3, 4, 1, 1}, seed + 7)});
      CHECK_FALSE(w1.has_grad());
      check_gradients([&](const std::vector<VarD>& v) { return pair(with_relu, v[0], v[1], dw, v[2]); },
                      {param({2, 4, 5, 5}, seed + 8, lo, hi), w1, w2});
    }
  }

  TEST_CASE("relu_conv2d_pair computes relu then conv2d_pair's bits and holds only its output") {
    using VarF = Var<float, Cpu>;
    // Depthwise first convolutions read relu(x) from x while padding it (PadLayout::fill), at
    // stride 1 (rows of whole, half, quarter packets and single elements: widths 8 and 13) and
    // stride 2 (even and odd columns, both paddings' parities); a general one gets a temporary
    // relu(x).
    const Conv2dParams dw5{.stride = 1, .padding = 2, .groups = 8}, dw3s2{.stride = 2, .padding = 1, .groups = 8},
        dw5s2{.stride = 2, .padding = 2, .groups = 8}, general{.padding = 1};
    std::uint64_t seed = 130;
    for (const Conv2dParams& p1 : {dw5, dw3s2, dw5s2, general})
      for (const Shape xs : {Shape{2, 8, 8, 8}, Shape{2, 8, 7, 13}}) {
        CAPTURE(p1.groups);
        CAPTURE(p1.stride);
        CAPTURE(xs.str());
        const index_t k = p1.groups == 8 && p1.padding == 2 ? 5 : 3;
        const Shape w1s = p1.groups == 8 ? Shape{8, 1, k, k} : Shape{8, 8, 3, 3};
        const index_t ho = (xs[2] + 2 * p1.padding - k) / p1.stride + 1, wo = (xs[3] + 2 * p1.padding - k) / p1.stride + 1;
        const auto held = pair_vs_chain(
            [p1](const VarF& x, const VarF& w1, const VarF& w2) { return relu_conv2d_pair(x, w1, p1, w2); },
            [p1](const VarF& x, const VarF& w1, const VarF& w2) { return conv2d_pair(relu(x), w1, p1, w2); },
            random_float(xs, seed), random_float(w1s, seed + 1), random_float({8, 8, 1, 1}, seed + 2),
            random_float({2, 8, ho, wo}, seed + 3));
        seed += 4;
        const std::size_t x_bytes = std::size_t(xs.numel()) * sizeof(float), y_bytes = std::size_t(2 * 8 * ho * wo) * sizeof(float);
        CHECK(held[0] == y_bytes);            // y
        CHECK(held[1] == x_bytes + y_bytes);  // relu(x) and y
      }
  }

  TEST_CASE("relu_conv2d: gradients, accumulation, only where required") {
    // x spreads over [-2, 2], so about half its units are cut. The 1x1 path (one group or two)
    // and im2col (1x1 at stride 2, 3x3 at strides 2 and 3) read relu(x) from x and mask the
    // data gradient in their kernels; the shifted path (3x3, stride 1) gets a temporary relu(x).
    const Conv2dParams groups2{.groups = 2}, stride2{.stride = 2}, pad1{.padding = 1},
        pad1s2{.stride = 2, .padding = 1}, pad1s3{.stride = 3, .padding = 1};
    std::uint64_t seed = 200;
    for (const Conv2dParams& p : {Conv2dParams{}, groups2, stride2, pad1, pad1s2, pad1s3}) {
      CAPTURE(p.groups);
      CAPTURE(p.stride);
      CAPTURE(p.padding);
      const index_t k = p.padding == 1 ? 3 : 1;
      const Shape ws{6, 4 / p.groups, k, k};
      check_gradients([p](const std::vector<VarD>& v) { return relu_conv2d(v[0], v[1], p); },
                      {param({2, 4, 5, 6}, seed, -2.0, 2.0), param(ws, seed + 1)});
      // x feeds two convolutions: the masked gradients add up.
      check_gradients(
          [p](const std::vector<VarD>& v) { return add(relu_conv2d(v[0], v[1], p), relu_conv2d(v[0], v[2], p)); },
          {param({1, 4, 6, 6}, seed + 2, -2.0, 2.0), param(ws, seed + 3), param(ws, seed + 4)});
      // A frozen weight (DARTS' architecture step): only x; a constant x: only the weight.
      VarD w(random_tensor(ws, seed + 5), false), x(random_tensor({2, 4, 5, 5}, seed + 6, -2.0, 2.0), false);
      check_gradients([p](const std::vector<VarD>& v) { return relu_conv2d(v[0], v[1], p); },
                      {param({2, 4, 5, 5}, seed + 7, -2.0, 2.0), w});
      check_gradients([p](const std::vector<VarD>& v) { return relu_conv2d(v[0], v[1], p); }, {x, param(ws, seed + 8)});
      CHECK_FALSE(w.has_grad());
      CHECK_FALSE(x.has_grad());
      seed += 10;
    }
  }

  TEST_CASE("relu_conv2d computes relu then conv2d's bits and holds only its output") {
    using VarF = Var<float, Cpu>;
    const Conv2dParams one{}, groups2{.groups = 2}, stride2{.stride = 2}, pad1{.padding = 1},
        pad1s2{.stride = 2, .padding = 1}, pad1s3{.stride = 3, .padding = 1};
    std::uint64_t seed = 300;
    // Planes of 64 and of 7 x 13 = 91 elements (map_row's packets and its scalar tail), more
    // input channels than the small product's limit (kMaxInner: Eigen's path), also per group
    // of two; the 1x1 path, im2col at strides 2 and 3, and the shifted path, which takes a
    // temporary relu(x).
    const index_t many = 2 * cpu::small_gemm::kMaxInner + 8;
    for (const Conv2dParams& p : {one, groups2, stride2, pad1, pad1s2, pad1s3})
      for (const Shape xs : {Shape{2, 8, 8, 8}, Shape{2, 8, 7, 13}, Shape{1, many, 3, 5}}) {
        CAPTURE(p.groups);
        CAPTURE(p.stride);
        CAPTURE(p.padding);
        CAPTURE(xs.str());
        const index_t k = p.padding == 1 ? 3 : 1, cout = 6;
        const index_t ho = (xs[2] + 2 * p.padding - k) / p.stride + 1, wo = (xs[3] + 2 * p.padding - k) / p.stride + 1;
        const Shape ys{xs[0], cout, ho, wo};
        const auto wv = random_float({cout, xs[1] / p.groups, k, k}, seed + 1);
        const auto held = fused_vs_chain(
            [p](const VarF& x, const std::vector<VarF>& w) { return relu_conv2d(x, w[0], p); },
            [p](const VarF& x, const std::vector<VarF>& w) { return conv2d(relu(x), w[0], VarF(), p); },
            random_float(xs, seed), {wv}, random_float(ys, seed + 2));
        // Blocks as the allocator holds them: whole cache lines.
        auto bytes = [](const Shape& s) { return (std::size_t(s.numel()) * sizeof(float) + 63) / 64 * 64; };
        const std::size_t x_bytes = bytes(xs), y_bytes = bytes(ys);
        CHECK(held[0] == y_bytes);            // y (x is the caller's)
        CHECK(held[1] == x_bytes + y_bytes);  // relu(x) and y
        // x read by two convolutions, its gradient accumulated: the same bits as two ReLUs.
        fused_vs_chain(
            [p](const VarF& x, const std::vector<VarF>& w) { return add(relu_conv2d(x, w[0], p), relu_conv2d(x, w[1], p)); },
            [p](const VarF& x, const std::vector<VarF>& w) {
              return add(conv2d(relu(x), w[0], VarF(), p), conv2d(relu(x), w[1], VarF(), p));
            },
            random_float(xs, seed + 3), {wv, random_float(wv.shape(), seed + 4)}, random_float(ys, seed + 5));
        seed += 10;
      }
  }

  TEST_CASE("conv2d_pair computes two conv2d calls' bits and holds only its output until backward") {
    using VarF = Var<float, Cpu>;
    const Conv2dParams p1{.stride = 1, .padding = 2, .groups = 8};
    const auto held = pair_vs_chain(
        [p1](const VarF& x, const VarF& w1, const VarF& w2) { return conv2d_pair(x, w1, p1, w2); },
        [p1](const VarF& x, const VarF& w1, const VarF& w2) {
          return conv2d(conv2d(x, w1, VarF(), p1), w2, VarF());
        },
        random_float({2, 8, 8, 8}, 110), random_float({8, 1, 5, 5}, 111), random_float({8, 8, 1, 1}, 112),
        random_float({2, 8, 8, 8}, 113));
    const std::size_t tensor_bytes = 2 * 8 * 8 * 8 * sizeof(float);  // the middle tensor and y alike
    CHECK(held[0] == tensor_bytes);      // y
    CHECK(held[1] == 2 * tensor_bytes);  // the middle tensor and y
  }

  TEST_CASE("conv2d keeps its input's value for backward only when the weight needs a gradient") {
    // dw reads x, dx reads only w: in DARTS' architecture step (weights frozen) a convolution's
    // input is not held for it. x here is a scale() output, which nothing else keeps.
    using VarF = Var<float, Cpu>;
    auto& alloc = CachingAllocator<Cpu>::instance();
    const Shape xs{2, 4, 6, 6}, ws{5, 4, 3, 3};
    const auto x0v = random_float(xs, 120), wv = random_float(ws, 121);
    const auto r = random_float({2, 5, 6, 6}, 122);
    std::size_t unit = 0;
    {
      const std::size_t b0 = alloc.stats().bytes_in_use;
      const Tensor<float, Cpu> t = Tensor<float, Cpu>::empty(xs);
      unit = alloc.stats().bytes_in_use - b0;  // x's block; y [2, 5, 6, 6] is bigger
    }
    std::size_t held[2] = {}, y_bytes = 0;
    Tensor<float, Cpu> dx[2];
    for (int wgrad = 0; wgrad < 2; ++wgrad) {
      CAPTURE(wgrad);
      VarF x0(x0v.clone(), true), w(wv.clone(), wgrad == 1);
      const std::size_t before = alloc.stats().bytes_in_use;
      VarF y;
      {
        VarF x = scale(x0, 1.0f);
        y = conv2d(x, w, VarF(), {.padding = 1});
      }
      held[wgrad] = alloc.stats().bytes_in_use - before;
      if (wgrad == 0) y_bytes = held[0];
      backward_with(y, r);
      dx[wgrad] = x0.grad().clone();
      if (wgrad == 1) {  // the weight gradient is the one conv2d computes from a kept x
        VarF xr(x0v.clone()), wr(wv.clone(), true);
        backward_with(conv2d(xr, wr, VarF(), {.padding = 1}), r);
        CHECK(std::memcmp(w.grad().data(), wr.grad().data(), sizeof(float) * std::size_t(ws.numel())) == 0);
      }
    }
    CHECK(held[1] == y_bytes + unit);  // y and x
    CHECK(std::memcmp(dx[0].data(), dx[1].data(), sizeof(float) * std::size_t(xs.numel())) == 0);
  }

  TEST_CASE("conv2d fast paths agree with im2col + GEMM (float)") {
    std::uint64_t seed = 100;
    for (int k : {3, 5})
      for (int s : {1, 2})
        for (int d : {1, 2})
          for (int pad : {0, (k - 1) * d / 2, (k - 1) * d}) {
            const Conv2dParams p{.stride = s, .padding = pad, .dilation = d, .groups = 6};
            for (Shape xs : {Shape{3, 6, 9, 7}, Shape{2, 6, 8, 8}, Shape{1, 6, 12, 11}}) {
              if (xs[2] + 2 * pad < (k - 1) * d + 1 || xs[3] + 2 * pad < (k - 1) * d + 1) continue;
              check_fast_vs_general(xs, {6, 1, k, k}, p, cpu::ConvPath::kDepthwise, seed++);
            }
          }
    check_fast_vs_general({3, 5, 9, 7}, {6, 5, 1, 1}, {}, cpu::ConvPath::kDirectGemm, seed++);
    check_fast_vs_general({2, 16, 32, 32}, {16, 16, 1, 1}, {}, cpu::ConvPath::kDirectGemm, seed++);
    check_fast_vs_general({2, 16, 32, 32}, {16, 1, 3, 3}, {.padding = 1, .groups = 16},
                          cpu::ConvPath::kDepthwise, seed++);
    check_fast_vs_general({2, 8, 16, 16}, {8, 1, 5, 5},
                          {.stride = 2, .padding = 4, .dilation = 2, .groups = 8},
                          cpu::ConvPath::kDepthwise, seed++);
    // Stride 1, not depthwise: the shifted-taps path. Output channels on both sides of the
    // 6-row tile, output rows shorter and longer than a 4-packet tile, rectangular kernels,
    // groups, every padding it takes.
    struct Dense {
      Shape ws;
      int groups;
    };
    for (const Dense c : {Dense{{6, 5, 3, 3}, 1}, Dense{{16, 16, 3, 3}, 1}, Dense{{7, 5, 5, 5}, 1},
                          Dense{{4, 5, 2, 3}, 1}, Dense{{5, 5, 1, 3}, 1}, Dense{{6, 2, 3, 3}, 3},
                          Dense{{8, 1, 3, 3}, 4}})
      for (const int d : {1, 2}) {
        const int most = int(std::min(c.ws[2], c.ws[3]) - 1) * d;
        for (const int pad : {0, most / 2, most}) {
          const Conv2dParams p{.padding = pad, .dilation = d, .groups = c.groups};
          const index_t cin = c.ws[1] * c.groups;
          const Shape& ws = c.ws;
          for (const Shape xs : {Shape{2, cin, 9, 7}, Shape{1, cin, 12, 37}, Shape{3, cin, 8, 8}}) {
            if (xs[2] + 2 * pad <= (ws[2] - 1) * d || xs[3] + 2 * pad <= (ws[3] - 1) * d) continue;
            check_fast_vs_general(xs, ws, p, cpu::ConvPath::kShifted, seed++);
          }
        }
      }
  }

  TEST_CASE("shifted path: a block of C past small_gemm::kChunkBytes is read in column chunks") {
    // One thread, so the forward product gets all 241 output channels: a block of 240 rows x
    // 2,352 padded positions (2.3 MB of floats) with k = 144 > kBlockK, taken in chunks of
    // kBlockN columns of the shifted rows. Against a double-precision im2col forward, within
    // the rounding bound (k + 1) eps sum |w x| of each output (conv2d of |w| and |x|).
    const Shape xs{1, 16, 48, 48}, ws{241, 16, 3, 3};
    const Conv2dParams p{.padding = 1};
    REQUIRE(cpu::conv_path(cpu::conv_geometry(xs, ws, nullptr, p)) == cpu::ConvPath::kShifted);
    const cpu::ConvGeom geom = cpu::conv_geometry(xs, ws, nullptr, p);
    REQUIRE(240 *
                cpu::conv_detail::round_up(cpu::conv_detail::shift_x_plane(geom).n(),
                                           cpu::kLanes<float>) *
                index_t(sizeof(float)) >
            cpu::small_gemm::kChunkBytes);
    const auto xv = random_float(xs, 310), wv = random_float(ws, 311);
#if defined(_OPENMP)
    const int before = omp_get_max_threads();
    omp_set_num_threads(1);
#endif
    const Tensor<float, Cpu> y =
        conv2d(Var<float, Cpu>(xv), Var<float, Cpu>(wv), Var<float, Cpu>(), p).value();
#if defined(_OPENMP)
    omp_set_num_threads(before);
#endif
    TensorD xd = TensorD::empty(xs), wd = TensorD::empty(ws), xa = TensorD::empty(xs),
            wa = TensorD::empty(ws);
    for (index_t i = 0; i < xv.numel(); ++i) xd[i] = xv[i], xa[i] = std::abs(double(xv[i]));
    for (index_t i = 0; i < wv.numel(); ++i) wd[i] = wv[i], wa[i] = std::abs(double(wv[i]));
    const TensorD want =
        detail::conv2d(VarD(xd), VarD(wd), no_bias(), p, cpu::ConvAlgo::kGeneral).value();
    const TensorD mag =
        detail::conv2d(VarD(xa), VarD(wa), no_bias(), p, cpu::ConvAlgo::kGeneral).value();
    const double eps = double(std::numeric_limits<float>::epsilon());
    double worst = 0;
    for (index_t i = 0; i < y.numel(); ++i)
      worst = std::max(worst, std::abs(double(y[i]) - want[i]) / (145 * eps * mag[i] + 1e-30));
    CHECK(worst < 1.0);
  }

  TEST_CASE("conv2d on one large sample (GEMMs split over rows) equals it inside a batch") {
    // Batch 1 runs each GEMM split across the threads; batch 2 runs one sample per thread. With the
    // second sample zero, y, dx of the first sample and dw must agree.
    for (Shape ws : {Shape{24, 16, 3, 3}, Shape{24, 16, 1, 1}}) {
      const Conv2dParams p{.padding = int(ws[2] / 2)};
      const TensorD x1 = random_tensor({1, 16, 16, 16}, 80), w0 = random_tensor(ws, 81);
      TensorD x2 = TensorD::zeros({2, 16, 16, 16});
      std::copy_n(x1.data(), x1.numel(), x2.data());
      TensorD out[2][3];
      for (int k = 0; k < 2; ++k) {
        VarD x(k == 0 ? x1.clone() : x2, true), w(w0.clone(), true);
        VarD y = conv2d(x, w, no_bias(), p);
        backward_with(y, TensorD::full(y.shape(), 0.5));
        out[k][0] = y.value(), out[k][1] = x.grad(), out[k][2] = w.grad();
      }
      for (int j = 0; j < 3; ++j)
        for (index_t i = 0; i < out[0][j].numel(); ++i)
          REQUIRE(out[0][j][i] == doctest::Approx(out[1][j][i]).epsilon(1e-12));
    }
  }

  TEST_CASE("conv2d on an empty batch") {
    VarD x(TensorD::empty({0, 3, 5, 5}), true), w = param({4, 3, 3, 3}, 70);
    VarD y = conv2d(x, w, no_bias(), {.padding = 1});
    CHECK(y.shape() == Shape{0, 4, 5, 5});
    clear_tape<double, Cpu>();
  }

  TEST_CASE("conv2d rejects bad input") {
    auto t = [](const Shape& s) { return VarD(TensorD::zeros(s)); };
    // conv2d_pair checks both convolutions: the second sees the first's output.
    CHECK_THROWS_WITH_AS(conv2d_pair(t({1, 4, 6, 6}), t({4, 1, 3, 3}), {.padding = 1, .groups = 4}, t({3, 5, 1, 1})),
                         doctest::Contains("conv2d: input has 4 channels but weight expects 5 (groups 1)"),
                         datanas::error);
    CHECK_THROWS_WITH_AS(conv2d_pair(t({1, 4, 6}), t({4, 1, 3, 3}), {.groups = 4}, t({3, 4, 1, 1})),
                         doctest::Contains("conv2d: input must be rank 4"), datanas::error);
    CHECK_THROWS_WITH_AS(conv2d_pair(t({1, 4, 6, 6}), VarD(), {}, t({3, 4, 1, 1})),
                         doctest::Contains("conv2d_pair: input and weights must be defined"), datanas::error);
    CHECK_THROWS_WITH_AS(relu_conv2d_pair(t({1, 4, 6, 6}), VarD(), {}, t({3, 4, 1, 1})),
                         doctest::Contains("relu_conv2d_pair: input and weights must be defined"), datanas::error);
    CHECK_THROWS_WITH_AS(relu_conv2d(t({1, 4, 6, 6}), VarD()),
                         doctest::Contains("relu_conv2d: input and weight must be defined"), datanas::error);
    CHECK_THROWS_WITH_AS(relu_conv2d(t({1, 4, 6, 6}), t({3, 5, 1, 1})),
                         doctest::Contains("conv2d: input has 4 channels but weight expects 5"), datanas::error);
    // The layer helpers that pair or fuse convolutions take bias-free layers only.
    PhiloxGenerator g(5);
    const nn::Conv2d<double> biased(4, 4, 1, {}, true, g), depthwise(4, 4, 3, {.padding = 1, .groups = 4}, false, g);
    CHECK_THROWS_WITH_AS(nn::relu_conv(biased, t({1, 4, 6, 6})),
                         doctest::Contains("relu_conv: the convolution must be bias-free"), datanas::error);
    CHECK_THROWS_WITH_AS(nn::conv_pair(depthwise, biased, t({1, 4, 6, 6})),
                         doctest::Contains("conv_pair: both convolutions must be bias-free"), datanas::error);
    CHECK_THROWS_WITH_AS(nn::relu_conv_pair(depthwise, biased, t({1, 4, 6, 6})),
                         doctest::Contains("relu_conv_pair: both convolutions must be bias-free"), datanas::error);
    CHECK_THROWS_WITH_AS(relu_conv2d_pair(t({1, 4, 6, 6}), t({4, 1, 3, 3}), {.padding = 1, .groups = 4}, t({3, 5, 1, 1})),
                         doctest::Contains("conv2d: input has 4 channels but weight expects 5"), datanas::error);
    CHECK_THROWS_WITH_AS(conv2d(t({1, 3, 4}), t({4, 3, 3, 3}), no_bias()),
                         doctest::Contains("conv2d: input must be rank 4"), datanas::error);
    CHECK_THROWS_WITH_AS(conv2d(t({1, 3, 4, 4}), t({4, 3, 3}), no_bias()),
                         doctest::Contains("conv2d: weight must be rank 4"), datanas::error);
    CHECK_THROWS_WITH_AS(
        conv2d(t({1, 5, 4, 4}), t({4, 6, 3, 3}), no_bias()),
        doctest::Contains("conv2d: input has 5 channels but weight expects 6 (groups 1)"),
        datanas::error);
    CHECK_THROWS_WITH_AS(conv2d(t({1, 6, 4, 4}), t({4, 2, 3, 3}), no_bias(), {.groups = 4}),
                         doctest::Contains("input channels 6 are not divisible by groups 4"),
                         datanas::error);
    CHECK_THROWS_WITH_AS(conv2d(t({1, 6, 4, 4}), t({5, 3, 3, 3}), no_bias(), {.groups = 2}),
                         doctest::Contains("output channels 5 are not divisible by groups 2"),
                         datanas::error);
    CHECK_THROWS_WITH_AS(conv2d(t({1, 3, 4, 4}), t({4, 3, 3, 3}), t({5})),
                         doctest::Contains("conv2d: bias has shape [5]"), datanas::error);
    CHECK_THROWS_WITH_AS(conv2d(t({1, 3, 4, 4}), t({4, 3, 3, 3}), no_bias(), {.stride = 0}),
                         doctest::Contains("conv2d: stride must be positive"), datanas::error);
    CHECK_THROWS_WITH_AS(conv2d(t({1, 3, 4, 4}), t({4, 3, 3, 3}), no_bias(), {.dilation = 0}),
                         doctest::Contains("conv2d: dilation must be positive"), datanas::error);
    CHECK_THROWS_WITH_AS(conv2d(t({1, 3, 4, 4}), t({4, 3, 3, 3}), no_bias(), {.padding = -1}),
                         doctest::Contains("conv2d: padding must be non-negative"), datanas::error);
    CHECK_THROWS_WITH_AS(conv2d(t({1, 3, 4, 4}), t({4, 3, 3, 3}), no_bias(), {.groups = 0}),
                         doctest::Contains("conv2d: groups must be positive"), datanas::error);
    CHECK_THROWS_WITH_AS(
        conv2d(t({1, 3, 2, 2}), t({4, 3, 3, 3}), no_bias()),
        doctest::Contains("conv2d: output size is not positive for input [1, 3, 2, 2]"),
        datanas::error);
    CHECK_THROWS_WITH_AS(conv2d(t({1, 3, 5, 5}), t({4, 3, 3, 3}), no_bias(), {.dilation = 3}),
                         doctest::Contains("conv2d: output size is not positive"), datanas::error);
  }
}
