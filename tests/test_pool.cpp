// max_pool2d, avg_pool2d, global_avg_pool: forward values by hand (borders, ties),
// finite-difference gradients on awkward sizes, argument errors.
#include <limits>

#include "gradcheck.hpp"

using namespace datanas;
using namespace datanas::testing;

namespace {
void check_values(const TensorD& t, std::initializer_list<double> expected) {
  REQUIRE(t.numel() == index_t(expected.size()));
  index_t i = 0;
  for (double e : expected) {
    CHECK_MESSAGE(t[i] == doctest::Approx(e).epsilon(1e-12), "element ", i);
    ++i;
  }
}

// A 4x4 plane with ties: the window of output (2, 0) at stride 1 holds two 9s, at (1, 1) and
// (3, 0); row-major order must pick (1, 1), column-major would pick (3, 0).
TensorD tie_plane() {
  return TensorD::from({1, 1, 4, 4}, {3, 1, 4, 1, 5, 9, 2, 6, 5, 3, 5, 8, 9, 7, 9, 3});
}
}  // namespace

TEST_SUITE("cpu") {
  TEST_CASE("max_pool2d forward values and arg-max routing, 3x3 padding 1") {
    VarD x(tie_plane(), true);
    {
      VarD y = max_pool2d(x, 3, 1, 1);
      CHECK(y.shape() == Shape{1, 1, 4, 4});
      check_values(y.value(), {9, 9, 9, 6, 9, 9, 9, 8, 9, 9, 9, 9, 9, 9, 9, 9});
      // d(sum y)/dx counts how often each pixel is its window's first maximum (torch's indices).
      backward(sum(y));
      check_values(x.grad(), {0, 0, 0, 0, 0, 9, 0, 1, 0, 0, 0, 1, 2, 0, 3, 0});
    }
    {
      x.zero_grad();
      VarD y = max_pool2d(x, 3, 2, 1);
      CHECK(y.shape() == Shape{1, 1, 2, 2});
      check_values(y.value(), {9, 9, 9, 9});
      backward(sum(y));
      check_values(x.grad(), {0, 0, 0, 0, 0, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0});
    }
    {
      // Without grad no indices are kept; the values are the same.
      NoGradGuard ng;
      check_values(max_pool2d(x, 3, 1, 1).value(),
                   {9, 9, 9, 6, 9, 9, 9, 8, 9, 9, 9, 9, 9, 9, 9, 9});
    }
  }

  TEST_CASE("max_pool2d: padding never wins, even against negative inputs") {
    VarD x(TensorD::from({1, 1, 2, 3}, {-5, -4, -3, -2, -7, -1}));
    check_values(max_pool2d(x, 3, 1, 1).value(), {-2, -1, -1, -2, -1, -1});
    check_values(max_pool2d(x, 2, 2, 1).value(), {-5, -3, -2, -1});
  }

  TEST_CASE("max_pool2d: NaN propagates; an all -inf window routes to its first real pixel") {
    const double nan = std::numeric_limits<double>::quiet_NaN();
    const double inf = std::numeric_limits<double>::infinity();
    TensorD y = max_pool2d(VarD(TensorD::from({1, 1, 1, 3}, {1.0, nan, 2.0})), 3, 1, 1).value();
    for (index_t i = 0; i < 3; ++i) CHECK(std::isnan(y[i]));
    VarD x(TensorD::from({1, 1, 1, 2}, {-inf, -inf}), true);
    // 2 x 3 windows; each row of them covers columns {pad, 0}, {0, 1}, {1, pad}.
    VarD z = max_pool2d(x, 2, 1, 1);
    CHECK(z.shape() == Shape{1, 1, 2, 3});
    CHECK(z.value()[1] == -inf);
    backward(sum(z));
    check_values(x.grad(), {4, 2});
    // The 3x3 stride-1 kernel (Max3Plane): every window of a 2x2 plane starts at pixel 0.
    VarD x2(TensorD::from({1, 1, 2, 2}, {-inf, -inf, -inf, -inf}), true);
    backward(sum(max_pool2d(x2, 3, 1, 1)));
    check_values(x2.grad(), {4, 0, 0, 0});
  }

  TEST_CASE("avg_pool2d forward values divide by the real pixel count") {
    VarD x(tie_plane());
    // Stride 1, padding 1: corners cover 4 pixels, edges 6, the interior 9.
    TensorD y = avg_pool2d(x, 3, 1, 1).value();
    check_values(y, {162.0 / 36, 144.0 / 36, 138.0 / 36, 117.0 / 36, 156.0 / 36, 148.0 / 36,
                     156.0 / 36, 156.0 / 36, 228.0 / 36, 216.0 / 36, 208.0 / 36, 198.0 / 36,
                     216.0 / 36, 228.0 / 36, 210.0 / 36, 225.0 / 36});
    CHECK(y[0] == doctest::Approx((3 + 1 + 5 + 9) / 4.0));
    CHECK(y[5] == doctest::Approx((3 + 1 + 4 + 5 + 9 + 2 + 5 + 3 + 5) / 9.0));
    check_values(avg_pool2d(x, 3, 2, 1).value(), {162.0 / 36, 138.0 / 36, 228.0 / 36, 208.0 / 36});
    // Non-square, odd width, stride 2: the window of output (0, 1) covers rows 0-1, columns 1-3.
    VarD x35(TensorD::from({1, 1, 3, 5}, {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14}));
    check_values(avg_pool2d(x35, 3, 2, 1).value(), {3.0, 4.5, 6.0, 8.0, 9.5, 11.0});
    // The auxiliary head's pool: 8x8, 5x5 stride 3, no padding -> 2x2.
    TensorD x8 = TensorD::empty({1, 1, 8, 8});
    for (index_t i = 0; i < 64; ++i) x8[i] = double(i);
    TensorD y8 = avg_pool2d(VarD(x8), 5, 3, 0).value();
    CHECK(y8.shape() == Shape{1, 1, 2, 2});
    check_values(y8, {18, 21, 42, 45});
  }

  TEST_CASE("avg_pool2d backward spreads over the real pixels") {
    VarD x(TensorD::full({1, 1, 3, 3}, 1.0), true);
    backward(
        sum(avg_pool2d(x, 3, 2, 1)));  // 2x2 windows of 4 pixels each, overlapping in the middle
    check_values(x.grad(), {0.25, 0.5, 0.25, 0.5, 1.0, 0.5, 0.25, 0.5, 0.25});
  }

  TEST_CASE("global_avg_pool forward and backward") {
    VarD x(TensorD::from({2, 2, 1, 3}, {1, 2, 3, -3, 0, 6, 4, 4, 4, 0, 0, 9}), true);
    VarD y = global_avg_pool(x);
    CHECK(y.shape() == Shape{2, 2});
    check_values(y.value(), {2, 1, 4, 3});
    backward(sum(y));
    for (index_t i = 0; i < 12; ++i) CHECK(x.grad()[i] == doctest::Approx(1.0 / 3));
  }

  TEST_CASE("pool gradients (awkward shapes, batch 1 and 2)") {
    // Distinct values, at least 1e-3 apart after a random permutation: no near-ties for max.
    auto distinct = [](const Shape& s, std::uint64_t seed) {
      TensorD t = random_tensor(s, seed);
      PhiloxGenerator g(seed + 1);
      const index_t n = t.numel();
      for (index_t i = 0; i < n; ++i) t[i] = double(i) / double(n) - 0.5;
      for (index_t i = n - 1; i > 0; --i)
        std::swap(t[i], t[index_t(g.uniform() * double(i + 1)) % (i + 1)]);
      return VarD(t, true);
    };
    for (Shape s : {Shape{1, 3, 7, 5}, Shape{2, 5, 6, 9}}) {
      CAPTURE(s.str());
      for (int stride : {1, 2}) {
        CAPTURE(stride);
        check_gradients([=](auto& in) { return max_pool2d(in[0], 3, stride, 1); },
                        {distinct(s, 21)});
        check_gradients([=](auto& in) { return avg_pool2d(in[0], 3, stride, 1); }, {param(s, 22)});
        // Two ops on one input: the second backward accumulates into x's gradient, in both orders.
        check_gradients(
            [=](auto& in) {
              return add(max_pool2d(in[0], 3, stride, 1), avg_pool2d(in[0], 3, stride, 1));
            },
            {distinct(s, 23)});
        check_gradients(
            [=](auto& in) {
              return add(avg_pool2d(in[0], 3, stride, 1), max_pool2d(in[0], 3, stride, 1));
            },
            {distinct(s, 24)});
      }
      check_gradients([](auto& in) { return global_avg_pool(in[0]); }, {param(s, 25)});
      check_gradients([](auto& in) { return add(global_avg_pool(in[0]), global_avg_pool(in[0])); },
                      {param(s, 26)});
    }
    // Auxiliary head pool on an 8x8 input, and generic windows (k = 4 and 2, stride 3).
    check_gradients([](auto& in) { return avg_pool2d(in[0], 5, 3, 0); }, {param({2, 3, 8, 8}, 27)});
    check_gradients([](auto& in) { return avg_pool2d(in[0], 4, 3, 2); }, {param({1, 2, 7, 6}, 28)});
    check_gradients([](auto& in) { return max_pool2d(in[0], 4, 3, 2); },
                    {distinct({1, 2, 7, 6}, 29)});
    check_gradients([](auto& in) { return max_pool2d(in[0], 2, 2, 0); },
                    {distinct({2, 3, 5, 7}, 30)});
    // Stride 1 with other windows (the gathering backward): k = 5 padding 2, k = 2 padding 1.
    check_gradients([](auto& in) { return max_pool2d(in[0], 5, 1, 2); },
                    {distinct({2, 2, 6, 7}, 32)});
    check_gradients([](auto& in) { return max_pool2d(in[0], 2, 1, 1); },
                    {distinct({1, 3, 5, 4}, 33)});
    check_gradients([](auto& in) { return max_pool2d(in[0], 4, 1, 0); },
                    {distinct({1, 2, 6, 5}, 34)});
    check_gradients([](auto& in) { return avg_pool2d(in[0], 2, 1, 1); }, {param({1, 3, 5, 4}, 35)});
  }

  struct PoolCase {
    int k, st, p;
  };

  /// max_pool2d and avg_pool2d of a random x [s] and their gradients for a random dy, against
  /// a naive loop over every window in double (errors below 1e-12).
  void check_pools_against_naive(const Shape& s, PoolCase c, std::uint64_t seed) {
    const TensorD xv = random_tensor(s, seed);
    {
      CAPTURE(s.str());
      CAPTURE(c.k);
      CAPTURE(c.st);
      CAPTURE(c.p);
      const index_t ho = (s.h() + 2 * c.p - c.k) / c.st + 1,
                    wo = (s.w() + 2 * c.p - c.k) / c.st + 1;
      const TensorD dy = random_tensor({s.n(), s.c(), ho, wo}, seed + 1);
      TensorD ref_max = TensorD::empty(dy.shape()), ref_avg = TensorD::empty(dy.shape());
      TensorD ref_dmax = TensorD::zeros(s), ref_davg = TensorD::zeros(s);
      for (index_t n = 0; n < s.n(); ++n)
        for (index_t ch = 0; ch < s.c(); ++ch)
          for (index_t oh = 0; oh < ho; ++oh)
            for (index_t ow = 0; ow < wo; ++ow) {
              double m = -std::numeric_limits<double>::infinity(), sum = 0;
              index_t mh = -1, mw = -1, count = 0;
              for (index_t i = oh * c.st - c.p; i < oh * c.st - c.p + c.k; ++i)
                for (index_t j = ow * c.st - c.p; j < ow * c.st - c.p + c.k; ++j) {
                  if (i < 0 || j < 0 || i >= s.h() || j >= s.w()) continue;
                  const double v = xv(n, ch, i, j);
                  if (v > m) m = v, mh = i, mw = j;
                  sum += v, ++count;
                }
              ref_max(n, ch, oh, ow) = m;
              ref_avg(n, ch, oh, ow) = sum / double(count);
              ref_dmax(n, ch, mh, mw) += dy(n, ch, oh, ow);
              for (index_t i = oh * c.st - c.p; i < oh * c.st - c.p + c.k; ++i)
                for (index_t j = ow * c.st - c.p; j < ow * c.st - c.p + c.k; ++j)
                  if (i >= 0 && j >= 0 && i < s.h() && j < s.w())
                    ref_davg(n, ch, i, j) += dy(n, ch, oh, ow) / double(count);
            }
      for (bool is_max : {true, false}) {
        CAPTURE(is_max);
        VarD x(xv, true);
        VarD y = is_max ? max_pool2d(x, c.k, c.st, c.p) : avg_pool2d(x, c.k, c.st, c.p);
        const TensorD& ry = is_max ? ref_max : ref_avg;
        const TensorD& rdx = is_max ? ref_dmax : ref_davg;
        REQUIRE(y.shape() == ry.shape());
        double err = 0;
        for (index_t i = 0; i < ry.numel(); ++i)
          err = std::max(err, std::abs(y.value()[i] - ry[i]));
        CHECK(err < 1e-12);
        y.grad_slot().g.copy_from(dy);
        tape<double, Cpu>().run_backward();
        err = 0;
        for (index_t i = 0; i < rdx.numel(); ++i)
          err = std::max(err, std::abs(x.grad()[i] - rdx[i]));
        CHECK(err < 1e-12);
      }
    }
  }

  TEST_CASE("pools match a naive reference on a larger input (the parallel path)") {
    for (PoolCase c : {PoolCase{3, 1, 1}, PoolCase{3, 2, 1}, PoolCase{5, 3, 0}, PoolCase{2, 2, 0},
                       PoolCase{5, 1, 2}})
      check_pools_against_naive({3, 7, 35, 33}, c, 70);
  }

  TEST_CASE("3x3 pools on tiny planes (rows of one and two elements, one pixel)") {
    // The whole-plane kernels (Box3Plane, Max3Plane; stride 2 as stride 1 at even positions)
    // mask neighbours across row ends and treat a one-row plane apart.
    std::uint64_t seed = 90;
    for (const Shape s : {Shape{1, 2, 1, 1}, Shape{2, 2, 1, 5}, Shape{1, 3, 4, 1}, Shape{2, 2, 2, 2},
                          Shape{1, 2, 3, 2}, Shape{2, 1, 2, 17}})
      for (const int stride : {1, 2}) check_pools_against_naive(s, {3, stride, 1}, seed += 2);
  }

  TEST_CASE("pool float kernels agree with double") {
    const TensorD xd = random_tensor({3, 5, 11, 9}, 31);
    Tensor<float, Cpu> xf = Tensor<float, Cpu>::empty(xd.shape());
    for (index_t i = 0; i < xd.numel(); ++i) xf[i] = float(xd[i]);
    for (int k : {3, 5}) {
      for (int s : {1, 2, 3}) {
        const int p = k / 2;
        TensorD md = max_pool2d(VarD(xd), k, s, p).value(),
                ad = avg_pool2d(VarD(xd), k, s, p).value();
        Tensor<float, Cpu> mf = max_pool2d(Var<float, Cpu>(xf), k, s, p).value();
        Tensor<float, Cpu> af = avg_pool2d(Var<float, Cpu>(xf), k, s, p).value();
        for (index_t i = 0; i < md.numel(); ++i) {
          CHECK(double(mf[i]) == doctest::Approx(md[i]).epsilon(1e-6));
          CHECK(double(af[i]) == doctest::Approx(ad[i]).epsilon(1e-5));
        }
      }
    }
  }

  TEST_CASE("pool argument errors") {
    VarD x(random_tensor({2, 3, 6, 6}, 40));
    VarD x3(random_tensor({3, 6, 6}, 41));
    CHECK_THROWS_WITH_AS(max_pool2d(x3, 3, 1, 1),
                         doctest::Contains("max_pool2d: x must be [N, C, H, W], got [3, 6, 6]"),
                         datanas::error);
    CHECK_THROWS_WITH_AS(avg_pool2d(x3, 3, 1, 1),
                         doctest::Contains("avg_pool2d: x must be [N, C, H, W]"), datanas::error);
    CHECK_THROWS_WITH_AS(global_avg_pool(x3),
                         doctest::Contains("global_avg_pool: x must be [N, C, H, W]"),
                         datanas::error);
    CHECK_THROWS_WITH_AS(max_pool2d(x, 0, 1, 0),
                         doctest::Contains("kernel and stride must be >= 1"), datanas::error);
    CHECK_THROWS_WITH_AS(avg_pool2d(x, 3, 0, 1),
                         doctest::Contains("avg_pool2d: kernel and stride must be >= 1"),
                         datanas::error);
    CHECK_THROWS_WITH_AS(max_pool2d(x, 3, 1, 2),
                         doctest::Contains("padding must be in [0, kernel / 2]"), datanas::error);
    CHECK_THROWS_WITH_AS(avg_pool2d(x, 3, 1, -1),
                         doctest::Contains("padding must be in [0, kernel / 2]"), datanas::error);
    CHECK_THROWS_WITH_AS(avg_pool2d(x, 7, 1, 0),
                         doctest::Contains("output size 0 x 0 <= 0 for x [2, 3, 6, 6]"),
                         datanas::error);
    VarD wide(random_tensor({1, 1, 2, 9}, 42));
    CHECK_THROWS_WITH_AS(max_pool2d(wide, 5, 1, 1), doctest::Contains("output size 0 x 7"),
                         datanas::error);
  }
}
