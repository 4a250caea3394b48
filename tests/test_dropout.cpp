// dropout and drop path: statistics, scaling, evaluation mode, gradients.
#include "gradcheck.hpp"

using namespace datanas;
using namespace datanas::testing;

TEST_SUITE("cpu") {
TEST_CASE("dropout keeps 1 - p of the elements, scaled by 1 / (1 - p)") {
  PhiloxGenerator gen(5);
  Var<float> x(Tensor<float>::full({4, 8, 32, 32}, 1.0f));
  auto y = dropout(x, 0.3, true, gen).value();
  index_t kept = 0;
  for (index_t i = 0; i < y.numel(); ++i) {
    if (y[i] != 0.0f) {
      CHECK(y[i] == doctest::Approx(1 / 0.7));
      ++kept;
    }
  }
  const double n = double(y.numel()), frac = kept / n;
  CHECK(std::abs(frac - 0.7) < 4 * std::sqrt(0.21 / n));
  CHECK(same_node(dropout(x, 0.3, false, gen), x));
}

TEST_CASE("drop_path zeroes whole samples with probability p") {
  PhiloxGenerator gen(9);
  const index_t n = 4000;
  Var<float> x(Tensor<float>::full({n, 2, 3, 3}, 2.0f));
  auto y = drop_path(x, 0.2, true, gen).value();
  index_t dropped = 0;
  for (index_t s = 0; s < n; ++s) {
    const float first = y[s * 18];
    for (int i = 0; i < 18; ++i) CHECK(y[s * 18 + i] == first);  // one decision per sample
    if (first == 0.0f)
      ++dropped;
    else
      CHECK(first == doctest::Approx(2.0 / 0.8));
  }
  CHECK(std::abs(dropped / double(n) - 0.2) < 4 * std::sqrt(0.16 / n));
  CHECK(same_node(drop_path(x, 0.2, false, gen), x));
}

TEST_CASE("dropout and drop_path gradients (same mask in every evaluation)") {
  check_gradients(
      [](auto& in) {
        PhiloxGenerator g(3);
        return dropout(in[0], 0.4, true, g);
      },
      {param({2, 3, 5, 7}, 1)});
  check_gradients(
      [](auto& in) {
        PhiloxGenerator g(4);
        return drop_path(in[0], 0.5, true, g);
      },
      {param({6, 2, 3, 3}, 2)});
}

TEST_CASE("add_drop_path is add(a, drop_path(x)) in one pass, with the same draws") {
  const Shape s{9, 2, 3, 5};
  const VarD a = param(s, 11), x = param(s, 12);
  PhiloxGenerator g1(21), g2(21);
  const TensorD fused = add_drop_path(a, x, 0.4, true, g1).value();
  const TensorD ref = add(a, drop_path(x, 0.4, true, g2)).value();
  index_t dropped = 0;
  for (index_t i = 0; i < ref.numel(); ++i) {
    CHECK(fused[i] == doctest::Approx(ref[i]).epsilon(1e-14));
    dropped += fused[i] == a.value()[i];
  }
  CHECK(dropped > 0);                 // some samples dropped
  CHECK(dropped < ref.numel());       // and some kept
  CHECK(g1.uniform() == g2.uniform());  // the same counters consumed
  clear_tape<double>();
  // Gradients, with a and x op outputs (a takes dy's buffer) and a and x the same Var.
  check_gradients(
      [](auto& in) {
        PhiloxGenerator g(4);
        const VarD t = tanh(in[0]);
        return add_drop_path(t, sigmoid(in[1]), 0.5, true, g);
      },
      {param(s, 13), param(s, 14)});
  check_gradients(
      [](auto& in) {
        PhiloxGenerator g(5);
        return add_drop_path(in[0], in[0], 0.5, true, g);
      },
      {param(s, 15)});
  // Not training, or p = 0: add; a symbolic zero a: drop_path.
  PhiloxGenerator g(6);
  const TensorD sum_eval = add_drop_path(a, x, 0.4, false, g).value();
  for (index_t i = 0; i < sum_eval.numel(); ++i) CHECK(sum_eval[i] == a.value()[i] + x.value()[i]);
  PhiloxGenerator h1(7), h2(7);
  const TensorD from_zero = add_drop_path(zeros<double>(s), x, 0.4, true, h1).value();
  const TensorD dropped_only = drop_path(x, 0.4, true, h2).value();
  for (index_t i = 0; i < from_zero.numel(); ++i) CHECK(from_zero[i] == dropped_only[i]);
  // A symbolic zero x: drop path keeps it zero and draws nothing, so the sum is a itself.
  PhiloxGenerator z1(8), z2(8);
  CHECK(is_zero(drop_path(zeros<double>(s), 0.4, true, z1)));
  CHECK(same_node(add_drop_path(a, zeros<double>(s), 0.4, true, z1), a));
  CHECK(z1.uniform() == z2.uniform());
  CHECK_THROWS_WITH_AS(add_drop_path(a, param({9, 2, 3, 4}, 1), 0.4, true, g),
                       doctest::Contains("add_drop_path: shapes differ"), datanas::error);
  clear_tape<double>();
}

TEST_CASE("drop path of an empty batch is empty") {
  PhiloxGenerator g(2);
  const VarD x(TensorD::empty({0, 3}), true), a(TensorD::empty({0, 3}), true);
  CHECK(drop_path(x, 0.5, true, g).shape() == Shape{0, 3});
  const VarD y = add_drop_path(a, x, 0.5, true, g);
  CHECK(y.shape() == Shape{0, 3});
  backward(y, TensorD::empty({0, 3}));
  CHECK(x.grad().numel() == 0);
}

TEST_CASE("dropout rejects p outside [0, 1)") {
  PhiloxGenerator g(1);
  Var<float> x(Tensor<float>::zeros({2}));
  CHECK_THROWS_WITH_AS(dropout(x, 1.0, true, g), doctest::Contains("dropout: probability must be in [0, 1), got 1"),
                       datanas::error);
  CHECK_THROWS_WITH_AS(drop_path(x, -0.1, true, g), doctest::Contains("drop_path: probability"),
                       datanas::error);
}
}
