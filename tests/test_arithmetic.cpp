// add, scale, weighted_sum (the mixed op), sum, mean, and the symbolic zero op.
#include "gradcheck.hpp"

using namespace datanas;
using namespace datanas::testing;

TEST_SUITE("cpu") {
TEST_CASE("weighted_sum forward by hand, with a symbolic zero term") {
  VarD a(TensorD::from({1, 1, 1, 2}, {1.0, 2.0}));
  VarD b(TensorD::from({1, 1, 1, 2}, {10.0, -4.0}));
  VarD z = zeros<double>({1, 1, 1, 2});
  VarD w(TensorD::from({3}, {0.5, 0.25, 0.25}));
  VarD terms[] = {z, a, b};
  auto y = weighted_sum(terms, w).value();
  CHECK(y[0] == doctest::Approx(0.25 * 1 + 0.25 * 10));
  CHECK(y[1] == doctest::Approx(0.25 * 2 - 0.25 * 4));
  CHECK(is_zero(z));
  CHECK(same_node(add(z, a), a));
}

TEST_CASE("weighted_sum gradients reach terms and weights; the zero term's weight gets 0") {
  const Shape s{2, 3, 5, 3};
  auto a = param(s, 1), b = param(s, 2), w = param({4}, 3);
  check_gradients(
      [&](auto& in) {
        VarD terms[] = {in[0], zeros<double>(s), in[1]};
        return weighted_sum(terms, in[2]);
      },
      {a, b, w});
  // With an index map: two terms share weight 3, weight 0 unused.
  check_gradients(
      [&](auto& in) {
        VarD terms[] = {in[0], in[1]};
        const int idx[] = {3, 3};
        return weighted_sum(terms, in[2], idx);
      },
      {a, b, w});
  clear_tape<double>();
  w.zero_grad();
  VarD terms[] = {zeros<double>(s), a};
  backward(sum(weighted_sum(terms, w)));
  CHECK(w.grad()[0] == 0.0);
  CHECK(w.grad()[1] != 0.0);
}

TEST_CASE("add, scale, sum, mean gradients and values") {
  const Shape s{1, 2, 3, 5};
  check_gradients([](auto& in) { return add(in[0], in[1]); }, {param(s, 4), param(s, 5)});
  check_gradients([](auto& in) { return scale(in[0], -2.5); }, {param(s, 6)});
  check_gradients([](auto& in) { return mean(in[0]); }, {param(s, 7)});
  check_gradients([](auto& in) { return sum(in[0]); }, {param({3}, 8)});
  VarD x(TensorD::from({4}, {1, 2, 3, 6}));
  CHECK(mean(x).value()[0] == doctest::Approx(3.0));
  CHECK(sum(x).value()[0] == doctest::Approx(12.0));
}

TEST_CASE("arithmetic errors name the problem") {
  VarD a(TensorD::zeros({2, 3})), b(TensorD::zeros({3, 2})), w(TensorD::zeros({2}));
  CHECK_THROWS_WITH_AS(add(a, b), doctest::Contains("add: shapes differ, [2, 3] vs [3, 2]"),
                       datanas::error);
  VarD terms[] = {a, b};
  CHECK_THROWS_WITH_AS(weighted_sum(terms, w), doctest::Contains("term 1 has shape [3, 2]"),
                       datanas::error);
  VarD same[] = {a, a};
  const int bad[] = {0, 5};
  CHECK_THROWS_WITH_AS(weighted_sum(same, w, bad),
                       doctest::Contains("weight index 5 out of range"), datanas::error);
}
}
