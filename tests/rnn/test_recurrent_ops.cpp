// The ops of the recurrent cell: forward values by hand and finite-difference gradients (double)
// for highway, highway_mix (dense and sparse), zero_if_all_none, mul_mask, scale_rows,
// concat_cols, stack_rows, slice_rows, view and temporal_penalty; bernoulli_mask statistics.
#include "../gradcheck.hpp"
#include "datanas/ops/arithmetic.hpp"
#include "datanas/ops/recurrent.hpp"

using namespace datanas;
using namespace datanas::testing;

namespace {
constexpr std::array<RecurrentActivation, 5> kActs = {
    RecurrentActivation::kNone, RecurrentActivation::kTanh, RecurrentActivation::kRelu,
    RecurrentActivation::kSigmoid, RecurrentActivation::kIdentity};
double sigm(double x) { return 1 / (1 + std::exp(-x)); }
}  // namespace

TEST_SUITE("cpu") {
TEST_CASE("highway: y = s + sigmoid(c) (f(h) - s), by hand") {
  VarD s(TensorD::from({1, 2}, {0.5, -1.0}));
  VarD ch(TensorD::from({1, 4}, {0.3, -0.7, 2.0, -0.4}));  // c = (0.3, -0.7), h = (2, -0.4)
  const auto y = highway(s, ch, RecurrentActivation::kTanh).value();
  CHECK(y[0] == doctest::Approx(0.5 + sigm(0.3) * (std::tanh(2.0) - 0.5)));
  CHECK(y[1] == doctest::Approx(-1.0 + sigm(-0.7) * (std::tanh(-0.4) + 1.0)));
  const auto r = highway(s, ch, RecurrentActivation::kRelu).value();
  CHECK(r[1] == doctest::Approx(-1.0 + sigm(-0.7) * (0.0 + 1.0)));
  CHECK(highway(s, ch, RecurrentActivation::kNone).value()[0] == 0.0);
  CHECK_THROWS_WITH_AS(highway(s, VarD(TensorD::zeros({1, 3})), RecurrentActivation::kTanh),
                       doctest::Contains("gates must be [1, 4]"), error);
}

TEST_CASE("highway gradients for every activation") {
  for (auto a : kActs) {
    CAPTURE(int(a));
    check_gradients([a](auto& in) { return highway(in[0], in[1], a); },
                    {param({3, 5}, 11), param({3, 10}, 12, -2, 2)});
  }
}

TEST_CASE("highway_mix equals the weighted sum of single highways, none excluded") {
  VarD s = param({2, 3}, 21), ch = param({2, 6}, 22, -2, 2);
  VarD w(TensorD::from({7}, {9.0, 0.1, 0.2, 0.3, 0.15, 0.25, 9.0}));  // offset 1: 0.1 is "none"
  const auto mix = highway_mix(s, ch, w, 1, kActs).value();
  for (index_t i = 0; i < 6; ++i) {
    double expect = 0;
    for (int k = 1; k < 5; ++k)
      expect += w.value()[1 + k] * highway(s, ch, kActs[std::size_t(k)]).value()[i];
    CHECK(mix[i] == doctest::Approx(expect));
  }
}

TEST_CASE("highway_mix gradients to state, gates and weights (dense and sparse)") {
  // A zero weight (index 3): dense differentiates it, sparse skips the term (so it is not
  // differentiable in that weight: finite differences would switch the term on).
  const TensorD wt = TensorD::from({6}, {0.4, 0.3, 0.2, 0.0, 0.5, 0.1});
  VarD w(wt.clone(), true);
  check_gradients([](auto& in) { return highway_mix(in[0], in[1], in[2], 1, kActs, false); },
                  {param({4, 3}, 31), param({4, 6}, 32, -2, 2), w});
  check_gradients([&](auto& in) { return highway_mix(in[0], in[1], VarD(wt), 1, kActs, true); },
                  {param({4, 3}, 31), param({4, 6}, 32, -2, 2)});
  TensorD dense_grad;
  for (bool sparse : {false, true}) {
    CAPTURE(sparse);
    clear_tape<double>();
    w.zero_grad();
    VarD s = param({4, 3}, 31), ch = param({4, 6}, 32, -2, 2);
    backward(sum(highway_mix(s, ch, w, 1, kActs, sparse)));
    CHECK(w.grad()[0] == 0.0);  // outside [offset, offset + 5)
    CHECK(w.grad()[1] == 0.0);  // none
    if (!sparse) {
      CHECK(w.grad()[3] != 0.0);
      dense_grad = w.grad().clone();
    } else {
      CHECK(w.grad()[3] == 0.0);
      for (int k : {2, 4, 5}) CHECK(w.grad()[k] == doctest::Approx(dense_grad[k]));
    }
  }
}

TEST_CASE("zero_if_all_none: the state while a non-none weight of the node is non-zero, else 0") {
  // A node of 2 predecessors read from offset 2: entries [2, 12), none at 2 and 7. Non-zero
  // entries outside the node (0, 12) and in its none columns must not keep it.
  TensorD w = TensorD::zeros({13});
  w[0] = w[12] = 1.0;
  w[2] = 0.9, w[7] = 0.4;
  w[9] = -0.0;  // a negative zero is a zero
  const VarD x = param({3, 4}, 33);
  VarD y = zero_if_all_none(x, w, 2, 2, kActs);
  backward(sum(y));
  for (index_t i = 0; i < x.value().numel(); ++i) {
    CHECK(y.value()[i] == 0.0);
    CHECK(x.grad()[i] == 0.0);
  }
  check_gradients([&](auto& in) { return zero_if_all_none(in[0], w, 2, 2, kActs); }, {param({3, 4}, 34)});
  // One tiny weight at the node's last entry keeps it: y is x, bit for bit, and so is dL/dx.
  for (index_t last : {index_t(3), index_t(11)}) {
    CAPTURE(last);
    TensorD wk = w.clone();
    wk[last] = 1e-30;
    clear_tape<double>();
    const VarD xk = param({3, 4}, 35);
    VarD yk = zero_if_all_none(xk, wk, 2, 2, kActs);
    backward(sum(yk));
    for (index_t i = 0; i < xk.value().numel(); ++i) {
      CHECK(yk.value()[i] == xk.value()[i]);
      CHECK(xk.grad()[i] == 1.0);
    }
    check_gradients([&](auto& in) { return zero_if_all_none(in[0], wk, 2, 2, kActs); }, {param({3, 4}, 36)});
  }
  CHECK_THROWS_WITH_AS(zero_if_all_none(x, w, 4, 2, kActs), doctest::Contains("have no entries [4, 14)"), error);
  CHECK_THROWS_WITH_AS(zero_if_all_none(x, w, 2, 0, kActs), doctest::Contains("for 0 predecessors"), error);
  CHECK_THROWS_WITH_AS(zero_if_all_none(x, TensorD::zeros({2, 5}), 0, 1, kActs),
                       doctest::Contains("weights must be rank 1, got [2, 5]"), error);
}

TEST_CASE("mul_mask tiles the mask over leading rows (locked dropout)") {
  TensorD m = TensorD::from({2, 2}, {1.0, 0.0, 2.0, 3.0});
  VarD x(TensorD::from({4, 2}, {1, 2, 3, 4, 5, 6, 7, 8}));
  const auto y = mul_mask(x, m).value();
  const double expect[] = {1, 0, 6, 12, 5, 0, 14, 24};
  for (int i = 0; i < 8; ++i) CHECK(y[i] == expect[i]);
  check_gradients([&](auto& in) { return mul_mask(in[0], m); }, {param({6, 2}, 41)});
  CHECK_THROWS_WITH_AS(mul_mask(VarD(TensorD::zeros({3, 2})), m), doctest::Contains("does not tile"), error);
}

TEST_CASE("scale_rows, concat_cols, stack_rows, view: values and gradients") {
  TensorD sc = TensorD::from({3}, {0.0, 2.0, -1.5});
  CHECK(scale_rows(VarD(TensorD::full({3, 2}, 1.0)), sc).value()[3] == 2.0);
  check_gradients([&](auto& in) { return scale_rows(in[0], sc); }, {param({3, 4}, 51)});

  VarD a(TensorD::from({2, 1}, {1, 2})), b(TensorD::from({2, 2}, {3, 4, 5, 6}));
  const auto c = concat_cols(a, b).value();
  CHECK(c.shape() == Shape{2, 3});
  CHECK(c[3] == 2.0);
  CHECK(c[5] == 6.0);
  check_gradients([](auto& in) { return concat_cols(in[0], in[1]); }, {param({3, 2}, 52), param({3, 4}, 53)});
  // The same Var on both sides accumulates both halves.
  check_gradients([](auto& in) { return concat_cols(in[0], in[0]); }, {param({3, 2}, 54)});
}

TEST_CASE("stack_rows and view gradients") {
  check_gradients(
      [](auto& in) {
        const VarD xs[] = {in[0], in[1], in[0]};
        return stack_rows<double>(xs);
      },
      {param({2, 3}, 61), param({1, 3}, 62)});
  CHECK_THROWS_WITH_AS(stack_rows<double>(std::vector<VarD>{param({2, 3}, 1), param({2, 4}, 2)}),
                       doctest::Contains("input 1 has shape [2, 4]"), error);
  check_gradients([](auto& in) { return tanh(view(in[0], Shape{3, 2, 1, 1})); }, {param({3, 2}, 63)});
}

TEST_CASE("slice_rows: rows of x, by hand and by finite differences; stack_rows undoes it") {
  VarD x(TensorD::from({3, 2}, {1, 2, 3, 4, 5, 6}));
  const auto y = slice_rows(x, 1, 2).value();
  CHECK(y.shape() == Shape{2, 2});
  CHECK(y[0] == 3.0);
  CHECK(y[3] == 6.0);
  // A window cut into its time steps and stacked again (each later slice adds to the gradient
  // the first one zeroed), overlapping slices, and one slice alone (other rows get 0).
  check_gradients(
      [](auto& in) {
        const VarD steps[] = {slice_rows(in[0], 0, 2), slice_rows(in[0], 2, 2), slice_rows(in[0], 4, 2)};
        return stack_rows<double>(steps);
      },
      {param({6, 3}, 64)});
  check_gradients([](auto& in) { return add(slice_rows(in[0], 1, 3), slice_rows(in[0], 0, 3)); }, {param({5, 2}, 65)});
  check_gradients([](auto& in) { return slice_rows(in[0], 2, 1); }, {param({4, 3}, 66)});
  CHECK_THROWS_WITH_AS(slice_rows(x, 2, 2), doctest::Contains("rows [2, 4) are outside x [3, 2]"), error);
  CHECK_THROWS_WITH_AS(slice_rows(x, 0, 0), doctest::Contains("rows [0, 0) are outside"), error);
  CHECK_THROWS_WITH_AS(slice_rows(VarD(TensorD::zeros({6})), 0, 1), doctest::Contains("must be [rows, C]"), error);
}

TEST_CASE("temporal_penalty: mean squared step, by hand and by finite differences") {
  // T = 3, B = 1, H = 2: steps (1,1) -> (2,3) -> (2,0): squares 1+4, 0+9 over 4 values.
  VarD x(TensorD::from({3, 2}, {1, 1, 2, 3, 2, 0}));
  CHECK(temporal_penalty(x, 1).value()[0] == doctest::Approx(14.0 / 4));
  check_gradients([](auto& in) { return temporal_penalty(in[0], 2); }, {param({8, 3}, 71)});
  CHECK_THROWS_WITH_AS(temporal_penalty(x, 3), doctest::Contains("needs at least 2 time steps"), error);
}

TEST_CASE("bernoulli_mask: values 0 or 1/keep, mean about 1") {
  PhiloxGenerator gen(5);
  TensorD m = TensorD::empty({200, 50});
  bernoulli_mask(m, 0.25, gen);
  double sum = 0;
  for (index_t i = 0; i < m.numel(); ++i) {
    CHECK((m[i] == 0.0 || m[i] == 4.0));
    sum += m[i];
  }
  CHECK(sum / double(m.numel()) == doctest::Approx(1.0).epsilon(0.05));
  bernoulli_mask(m, 1.0, gen);
  CHECK(m[17] == 1.0);
}
}
