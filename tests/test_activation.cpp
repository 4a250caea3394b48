// relu, tanh, sigmoid, identity: forward values by hand and finite-difference gradients.
#include "gradcheck.hpp"

using namespace datanas;
using namespace datanas::testing;

TEST_SUITE("cpu") {
TEST_CASE("activation forward values") {
  VarD x(TensorD::from({1, 1, 1, 4}, {-2.0, -0.0, 0.5, 3.0}));
  auto r = relu(x).value();
  CHECK(r[0] == 0.0);
  CHECK(r[2] == 0.5);
  CHECK(r[3] == 3.0);
  auto t = tanh(x).value();
  CHECK(t[0] == doctest::Approx(std::tanh(-2.0)));
  auto s = sigmoid(x).value();
  CHECK(s[1] == doctest::Approx(0.5));
  CHECK(s[3] == doctest::Approx(1 / (1 + std::exp(-3.0))));
  CHECK(same_node(identity(x), x));
}

TEST_CASE("activation gradients (awkward shapes, batch 1 and 3)") {
  for (Shape s : {Shape{1, 5, 3, 7}, Shape{3, 2, 5, 1}}) {
    // Both signs; the chance of an input within h = 1e-6 of relu's kink is negligible.
    check_gradients([](auto& in) { return relu(in[0]); }, {param(s, 13)});
    check_gradients([](auto& in) { return tanh(in[0]); }, {param(s, 14)});
    check_gradients([](auto& in) { return sigmoid(in[0]); }, {param(s, 15, -3, 3)});
    check_gradients([](auto& in) { return tanh(identity(in[0])); }, {param(s, 16)});
  }
}
}
