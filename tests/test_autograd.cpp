// Autograd mechanics: accumulation, zero_grad, no-grad mode, tape misuse errors.
#include <doctest/doctest.h>

#include "datanas/datanas.hpp"

using namespace datanas;
using V = Var<double>;
using Td = Tensor<double>;

TEST_SUITE("cpu") {
TEST_CASE("leaf gradients accumulate across backward calls until zero_grad") {
  V x(Td::from({3}, {-1.0, 0.5, 2.0}), true);
  for (int rep = 0; rep < 2; ++rep) {
    V y = sum(relu(x));
    backward(y);
  }
  CHECK(x.grad()[0] == 0.0);
  CHECK(x.grad()[1] == 2.0);
  CHECK(x.grad()[2] == 2.0);
  x.zero_grad();
  CHECK_FALSE(x.has_grad());
  backward(sum(relu(x)));
  CHECK(x.grad()[1] == 1.0);
}

TEST_CASE("a Var used twice receives the sum of both paths") {
  V x(Td::from({2}, {0.3, -0.4}), true);
  V y = sum(add(tanh(x), sigmoid(x)));
  backward(y);
  for (int i = 0; i < 2; ++i) {
    const double v = x.value()[i], t = std::tanh(v), s = 1 / (1 + std::exp(-v));
    CHECK(x.grad()[i] == doctest::Approx((1 - t * t) + s * (1 - s)).epsilon(1e-12));
  }
}

TEST_CASE("NoGradGuard records nothing and outputs do not require grad") {
  V x(Td::from({2}, {1.0, 2.0}), true);
  clear_tape<double>();
  {
    NoGradGuard ng;
    V y = relu(x);
    CHECK_FALSE(y.requires_grad());
    CHECK(tape<double, Cpu>().size() == 0);
  }
  V y = relu(x);
  CHECK(y.requires_grad());
  CHECK(tape<double, Cpu>().size() == 1);
  clear_tape<double>();
}

TEST_CASE("temporary gradients are released after backward, retained ones kept") {
  V x(Td::from({2}, {1.0, -2.0}), true);
  V h = tanh(x);
  V k = tanh(x);
  k.retain_grad();
  backward(sum(add(h, k)));
  CHECK_FALSE(h.has_grad());
  CHECK(k.has_grad());
  CHECK(tape<double, Cpu>().size() == 0);
}

TEST_CASE("backward rejects non-scalar losses and losses without a graph") {
  V x(Td::from({2}, {1.0, 2.0}), true);
  CHECK_THROWS_WITH_AS(backward(relu(x)), doctest::Contains("single element, got shape [2]"),
                       datanas::error);
  clear_tape<double>();
  V c(Td::from({1}, {1.0}), false);
  CHECK_THROWS_WITH_AS(backward(c), doctest::Contains("does not depend"), datanas::error);
}
}
