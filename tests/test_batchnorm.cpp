// batch_norm2d: forward values and running statistics by hand (values from
// torch.nn.functional.batch_norm in float64), finite-difference gradients, argument errors.
#include "gradcheck.hpp"

using namespace datanas;
using namespace datanas::testing;

namespace {
void check_values(const TensorD& t, std::initializer_list<double> expected, double eps = 1e-12) {
  REQUIRE(t.numel() == index_t(expected.size()));
  index_t i = 0;
  for (double e : expected) {
    CHECK_MESSAGE(t[i] == doctest::Approx(e).epsilon(eps), "element ", i);
    ++i;
  }
}

// x [2, 2, 1, 2]: channel 0 holds {1, 2, 3, 6} (mean 3, biased var 3.5, unbiased 14/3),
// channel 1 holds {0, 0, 4, -4} (mean 0, biased var 8, unbiased 32/3).
TensorD tiny_x() { return TensorD::from({2, 2, 1, 2}, {1, 2, 0, 0, 3, 6, 4, -4}); }
}  // namespace

TEST_SUITE("cpu") {
  TEST_CASE("batch_norm2d training: values and one running-statistics step") {
    VarD x(tiny_x());
    VarD gamma(TensorD::from({2}, {2.0, 0.5}), true), beta(TensorD::from({2}, {1.0, -1.0}), true);
    TensorD rm = TensorD::zeros({2}), rv = TensorD::full({2}, 1.0);
    VarD y = batch_norm2d(x, gamma, beta, rm, rv, true);
    check_values(y.value(),
                 {-1.1380868808917473, -0.06904344044587374, -1.0, -1.0, 0.9999999999999998,
                  4.207130321337621, -0.2928936607547764, -1.7071063392452235});
    CHECK(y.value()[0] == doctest::Approx(2 * (1 - 3) / std::sqrt(3.5 + 1e-5) + 1));
    // running = 0.9 * running + 0.1 * batch, with the unbiased variance.
    check_values(rm, {0.3, 0.0});
    check_values(rv, {0.9 + 0.1 * 14.0 / 3, 0.9 + 0.1 * 32.0 / 3});
    check_values(rv, {1.3666666666666667, 1.9666666666666668});
    // A second step with another momentum keeps averaging.
    batch_norm2d(x, gamma, beta, rm, rv, true, 0.5);
    check_values(rm, {0.5 * 0.3 + 0.5 * 3, 0.0});
    check_values(
        rv, {0.5 * 1.3666666666666667 + 0.5 * 14.0 / 3, 0.5 * 1.9666666666666668 + 0.5 * 32.0 / 3});
    clear_tape<double, Cpu>();

    // Non-affine: plain standardisation; no running statistics tracked (undefined tensors).
    TensorD yn = batch_norm2d(x, VarD(), VarD(), TensorD(), TensorD(), true).value();
    check_values(
        yn, {(1 - 3) / std::sqrt(3.5 + 1e-5), (2 - 3) / std::sqrt(3.5 + 1e-5), 0, 0, 0,
             (6 - 3) / std::sqrt(3.5 + 1e-5), 4 / std::sqrt(8 + 1e-5), -4 / std::sqrt(8 + 1e-5)});
    clear_tape<double, Cpu>();
  }

  TEST_CASE("batch_norm2d evaluation uses the running statistics and leaves them alone") {
    VarD x(tiny_x());
    VarD gamma(TensorD::from({2}, {2.0, 0.5})), beta(TensorD::from({2}, {1.0, -1.0}));
    TensorD rm = TensorD::from({2}, {1.0, -2.0}), rv = TensorD::from({2}, {4.0, 0.25});
    TensorD y = batch_norm2d(x, gamma, beta, rm, rv, false).value();
    check_values(y, {1.0, 1.9999987500023437, 0.9999600011999599, 0.9999600011999599,
                     2.9999975000046875, 5.999993750011718, 4.99988000359988, -2.99996000119996});
    check_values(rm, {1.0, -2.0});
    check_values(rv, {4.0, 0.25});
    // Evaluation is fine with one value per channel.
    TensorD y1 =
        batch_norm2d(VarD(TensorD::from({1, 2, 1, 1}, {3.0, -2.0})), VarD(), VarD(), rm, rv, false)
            .value();
    check_values(y1, {2 / std::sqrt(4 + 1e-5), 0.0});
  }

  TEST_CASE("batch_norm2d float matches double") {
    // A large mean next to a small spread: the one-pass statistics must not cancel in float.
    // [60, 3, 1, 1]: the same through the row path.
    for (const Shape s : {Shape{4, 3, 5, 7}, Shape{60, 3, 1, 1}}) {
      CAPTURE(s.str());
      const TensorD xd = random_tensor(s, 50, 99.0, 101.0);
      Tensor<float, Cpu> xf = Tensor<float, Cpu>::empty(xd.shape());
      for (index_t i = 0; i < xd.numel(); ++i) xf[i] = float(xd[i]);
      TensorD rmd = TensorD::zeros({3}), rvd = TensorD::full({3}, 1.0);
      auto rmf = Tensor<float, Cpu>::zeros({3}), rvf = Tensor<float, Cpu>::full({3}, 1.0f);
      TensorD yd = batch_norm2d(VarD(xd), VarD(), VarD(), rmd, rvd, true).value();
      Tensor<float, Cpu> yf =
          batch_norm2d(Var<float, Cpu>(xf), Var<float, Cpu>(), Var<float, Cpu>(), rmf, rvf, true)
              .value();
      for (index_t i = 0; i < yd.numel(); ++i)
        CHECK(double(yf[i]) == doctest::Approx(yd[i]).epsilon(1e-3).scale(1));
      for (index_t c = 0; c < 3; ++c) {
        CHECK(double(rmf[c]) == doctest::Approx(rmd[c]).epsilon(1e-6));
        CHECK(double(rvf[c]) == doctest::Approx(rvd[c]).epsilon(1e-4));
      }
    }
  }

  TEST_CASE("batch_norm2d gradients (awkward shapes, batch 1 and 3)") {
    // Planes of one element (the last three) take the row path (cpu::bn_rows).
    for (Shape s : {Shape{1, 3, 5, 7}, Shape{3, 5, 2, 3}, Shape{2, 1, 1, 1}, Shape{5, 7, 1, 1},
                    Shape{3, 21, 1, 1}}) {
      CAPTURE(s.str());
      const index_t c = s.c();
      TensorD rm = TensorD::zeros({c}), rv = TensorD::full({c}, 1.0);
      // Training, affine: x, gamma, beta.
      check_gradients([&](auto& in) { return batch_norm2d(in[0], in[1], in[2], rm, rv, true); },
                      {param(s, 1, -2, 2), param({c}, 2, 0.5, 1.5), param({c}, 3)});
      // Training, non-affine.
      check_gradients([&](auto& in) { return batch_norm2d(in[0], VarD(), VarD(), rm, rv, true); },
                      {param(s, 4, -2, 2)});
      // Only gamma and beta need a gradient; and only x while gamma, beta are constants.
      check_gradients([&](auto& in) { return batch_norm2d(in[0], in[1], in[2], rm, rv, true); },
                      {VarD(random_tensor(s, 5)), param({c}, 6), param({c}, 7)});
      check_gradients([&](auto& in) { return batch_norm2d(in[0], in[1], in[2], rm, rv, true); },
                      {param(s, 8), VarD(random_tensor({c}, 9)), VarD(random_tensor({c}, 10))});
      // Evaluation: affine in x.
      TensorD erm = random_tensor({c}, 11), erv = random_tensor({c}, 12, 0.5, 2.0);
      check_gradients([&](auto& in) { return batch_norm2d(in[0], in[1], in[2], erm, erv, false); },
                      {param(s, 13), param({c}, 14), param({c}, 15)});
      check_gradients(
          [&](auto& in) { return batch_norm2d(in[0], VarD(), VarD(), erm, erv, false); },
          {param(s, 16)});
      // Accumulation: x feeds the BN and the sum, gamma and beta feed two BNs.
      check_gradients(
          [&](auto& in) {
            return add(batch_norm2d(in[0], in[1], in[2], rm, rv, true),
                       add(in[0], batch_norm2d(in[0], in[1], in[2], erm, erv, false)));
          },
          {param(s, 17), param({c}, 18), param({c}, 19)});
    }
  }

  TEST_CASE("batch_norm2d matches a naive reference on a larger input (the parallel path)") {
    // [300, 530, 1, 1]: the row path in three blocks of channels (192, 192, 146), a state of the
    // RNN search cell with more channels than one block.
    for (const Shape s : {Shape{8, 6, 33, 31}, Shape{300, 530, 1, 1}}) {
      CAPTURE(s.str());
      const index_t c = s.c(), m = s.n() * s.h() * s.w(), hw = s.h() * s.w();
      const TensorD xv = random_tensor(s, 80, -3, 5), dy = random_tensor(s, 81);
      VarD x(xv, true), gamma = param({c}, 82), beta = param({c}, 83);
      TensorD rm = TensorD::zeros({c}), rv = TensorD::full({c}, 1.0);
      VarD y = batch_norm2d(x, gamma, beta, rm, rv, true);
      y.grad_slot().g.copy_from(dy);
      tape<double, Cpu>().run_backward();
      for (index_t ch = 0; ch < c; ++ch) {
        CAPTURE(ch);
        double mean = 0, var = 0;
        for (index_t n = 0; n < s.n(); ++n)
          for (index_t i = 0; i < hw; ++i) mean += xv[(n * c + ch) * hw + i];
        mean /= double(m);
        for (index_t n = 0; n < s.n(); ++n)
          for (index_t i = 0; i < hw; ++i) var += std::pow(xv[(n * c + ch) * hw + i] - mean, 2);
        var /= double(m);
        const double invstd = 1 / std::sqrt(var + 1e-5), g = gamma.value()[ch];
        double sdy = 0, sdyx = 0;
        for (index_t n = 0; n < s.n(); ++n)
          for (index_t i = 0; i < hw; ++i) {
            const index_t at = (n * c + ch) * hw + i;
            sdy += dy[at];
            sdyx += dy[at] * (xv[at] - mean) * invstd;
          }
        CHECK(rm[ch] == doctest::Approx(0.1 * mean).epsilon(1e-12));
        CHECK(rv[ch] ==
              doctest::Approx(0.9 + 0.1 * var * double(m) / double(m - 1)).epsilon(1e-12));
        CHECK(gamma.grad()[ch] == doctest::Approx(sdyx).epsilon(1e-10));
        CHECK(beta.grad()[ch] == doctest::Approx(sdy).epsilon(1e-10));
        double ey = 0, edx = 0;
        for (index_t n = 0; n < s.n(); ++n)
          for (index_t i = 0; i < hw; ++i) {
            const index_t at = (n * c + ch) * hw + i;
            const double xhat = (xv[at] - mean) * invstd;
            ey = std::max(ey, std::abs(y.value()[at] - (g * xhat + beta.value()[ch])));
            const double dx = g * invstd * (dy[at] - sdy / double(m) - xhat * sdyx / double(m));
            edx = std::max(edx, std::abs(x.grad()[at] - dx));
          }
        CHECK(ey < 1e-12);
        CHECK(edx < 1e-12);
      }
      clear_tape<double, Cpu>();
    }
  }

  TEST_CASE("non-affine batch_norm2d keeps its output for backward, an affine one its input") {
    // Non-affine, y is xhat itself, from which backward computes dx; so a BN's input (in a DARTS
    // search cell a convolution's or a pool's output) is freed with its last Var. The
    // gradients are those of the affine BN with gamma = 1, beta = 0, which reads x.
    auto& alloc = CachingAllocator<Cpu>::instance();
    const Shape s{3, 4, 5, 6};
    const index_t c = s.c();
    auto bytes_of = [&](const Shape& shape) {
      const std::size_t b0 = alloc.stats().bytes_in_use;
      const TensorD t = TensorD::empty(shape);
      return alloc.stats().bytes_in_use - b0;
    };
    const std::size_t unit = bytes_of(s), stats = bytes_of({2, c});
    const TensorD xv = random_tensor(s, 70, -2, 3), r = random_tensor(s, 71);
    for (bool training : {true, false}) {
      CAPTURE(training);
      TensorD dx[2];
      for (int affine = 0; affine < 2; ++affine) {
        CAPTURE(affine);
        TensorD rm = random_tensor({c}, 72), rv = random_tensor({c}, 73, 0.5, 2.0);
        VarD x0(xv.clone(), true);
        VarD g = affine ? VarD(TensorD::full({c}, 1.0), true) : VarD();
        VarD b = affine ? VarD(TensorD::zeros({c}), true) : VarD();
        const std::size_t before = alloc.stats().bytes_in_use;
        VarD y;
        {
          VarD x = scale(x0, 1.0);
          y = batch_norm2d(x, g, b, rm, rv, training);
        }
        CHECK(alloc.stats().bytes_in_use - before == (affine ? 2 : 1) * unit + stats);
        backward(y, r);
        dx[affine] = x0.grad().clone();
      }
      for (index_t i = 0; i < s.numel(); ++i)
        CHECK_MESSAGE(dx[0][i] == doctest::Approx(dx[1][i]).epsilon(1e-12), "element ", i);
    }
  }

  TEST_CASE("batch_norm2d argument errors") {
    VarD x(random_tensor({2, 3, 4, 4}, 60));
    VarD g3(random_tensor({3}, 61)), b3(random_tensor({3}, 62)), g4(random_tensor({4}, 63));
    TensorD rm = TensorD::zeros({3}), rv = TensorD::full({3}, 1.0), r4 = TensorD::zeros({4});
    CHECK_THROWS_WITH_AS(batch_norm2d(VarD(random_tensor({2, 3, 4}, 64)), g3, b3, rm, rv, true),
                         doctest::Contains("batch_norm2d: x must be [N, C, H, W], got [2, 3, 4]"),
                         datanas::error);
    CHECK_THROWS_WITH_AS(
        batch_norm2d(x, g4, b3, rm, rv, true),
        doctest::Contains("gamma and beta must be [3] for x [2, 3, 4, 4], got [4] and [3]"),
        datanas::error);
    CHECK_THROWS_WITH_AS(batch_norm2d(x, g3, VarD(), rm, rv, true),
                         doctest::Contains("give both gamma and beta or neither"), datanas::error);
    CHECK_THROWS_WITH_AS(batch_norm2d(x, VarD(), b3, rm, rv, true),
                         doctest::Contains("give both gamma and beta or neither"), datanas::error);
    CHECK_THROWS_WITH_AS(
        batch_norm2d(x, g3, b3, r4, rv, true),
        doctest::Contains(
            "running_mean and running_var must be [3] for x [2, 3, 4, 4], got [4] and [3]"),
        datanas::error);
    CHECK_THROWS_WITH_AS(batch_norm2d(x, g3, b3, rm, TensorD(), true),
                         doctest::Contains("running_mean and running_var must be [3]"),
                         datanas::error);
    CHECK_THROWS_WITH_AS(batch_norm2d(x, g3, b3, TensorD(), TensorD(), false),
                         doctest::Contains("evaluation mode needs running_mean and running_var"),
                         datanas::error);
    CHECK_THROWS_WITH_AS(
        batch_norm2d(VarD(random_tensor({1, 3, 1, 1}, 65)), g3, b3, rm, rv, true),
        doctest::Contains("training needs more than one value per channel, got x [1, 3, 1, 1]"),
        datanas::error);
  }
}
