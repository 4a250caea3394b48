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

TEST_CASE("dropout rejects p outside [0, 1)") {
  PhiloxGenerator g(1);
  Var<float> x(Tensor<float>::zeros({2}));
  CHECK_THROWS_WITH_AS(dropout(x, 1.0, true, g), doctest::Contains("dropout: probability must be in [0, 1), got 1"),
                       datanas::error);
  CHECK_THROWS_WITH_AS(drop_path(x, -0.1, true, g), doctest::Contains("drop_path: probability"),
                       datanas::error);
}
}
