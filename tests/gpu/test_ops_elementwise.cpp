// Elementwise ops on the GPU against the CPU (tests/gpu/parity.hpp): activations, add, scale,
// the mixed op's weighted sum, sum and mean; forward, and gradients written then accumulated.
#include "parity.hpp"

#include "datanas/ops/activation.hpp"
#include "datanas/ops/arithmetic.hpp"

using namespace datanas;
using gpu_test::check_parity;
using gpu_test::Input;

namespace {
const Shape kShapes[] = {Shape{1}, Shape{2, 3, 5, 7}, Shape{3, 16, 32, 32}, Shape{(index_t(1) << 20) + 3}};
}

TEST_CASE("activations on the GPU match the CPU") {
  PhiloxGenerator gen(11);
  for (const Shape& s : kShapes) {
    CAPTURE(s.str());
    Tensor<float> x = gpu_test::random_normal(s, gen, 3.0f);
    x[0] = 0.0f;  // relu's kink: gradient 0 on both devices
    check_parity("relu", {{x}}, [](auto xs, auto&) { return relu(xs[0]); });
    check_parity("tanh", {{x}}, [](auto xs, auto&) { return datanas::tanh(xs[0]); });
    check_parity("sigmoid", {{x}}, [](auto xs, auto&) { return sigmoid(xs[0]); });
  }
}

TEST_CASE("add, scale, sum and mean on the GPU match the CPU") {
  PhiloxGenerator gen(12);
  for (const Shape& s : kShapes) {
    CAPTURE(s.str());
    Tensor<float> a = gpu_test::random_normal(s, gen), b = gpu_test::random_normal(s, gen);
    check_parity("add", {{a}, {b}}, [](auto xs, auto&) { return add(xs[0], xs[1]); });
    check_parity("add, b constant", {{a}, {b, false}}, [](auto xs, auto&) { return add(xs[0], xs[1]); });
    check_parity("add to itself", {{a}}, [](auto xs, auto&) { return add(xs[0], xs[0]); });
    check_parity("scale", {{a}}, [](auto xs, auto&) { return scale(xs[0], -0.75f); });
    check_parity("sum", {{a}}, [](auto xs, auto&) { return sum(xs[0]); });
    check_parity("mean", {{a}}, [](auto xs, auto&) { return mean(xs[0]); });
  }
}

TEST_CASE("the mixed op's weighted sum on the GPU matches the CPU") {
  PhiloxGenerator gen(13);
  for (const Shape& s : kShapes) {
    CAPTURE(s.str());
    std::vector<Input> in;
    for (int i = 0; i < 5; ++i) in.push_back({gpu_test::random_normal(s, gen)});
    in.push_back({gpu_test::random_normal({9}, gen)});  // weights: 9, one unused, one shared
    check_parity("weighted_sum", in, [&](auto xs, auto&) {
      using V = std::remove_cvref_t<decltype(xs[0])>;
      using D = typename V::device_type;
      // terms: x0, x1, none, x2, x3 (shares weight 1 with x1), x4 frozen below, x0 again
      // (weight 6: one gradient buffer for two terms), weight 8 unused
      const V terms[] = {xs[0], xs[1], zeros<float, D>(s), xs[2], xs[3], xs[4].detach(), xs[0]};
      const int index[] = {0, 1, 2, 3, 1, 7, 6};
      return weighted_sum<float, D>(std::span<const V>(terms), xs[5], std::span<const int>(index));
    });
  }
}

TEST_CASE("a mixed op of one term of weight 1 passes it through on the GPU as on the CPU") {
  // A sparse edge that selected one op: the GPU learns the weight from the host copy (the CPU
  // reads w itself); the term (an op output) takes the gradient buffer passed to it.
  PhiloxGenerator gen(14);
  for (const Shape& s : kShapes) {
    CAPTURE(s.str());
    Tensor<float> w = gpu_test::random_normal({5}, gen);
    w[3] = 1.0f;
    check_parity("weighted_sum, one unit term", {{gpu_test::random_normal(s, gen)}, {w}}, [&](auto xs, auto&) {
      using V = std::remove_cvref_t<decltype(xs[0])>;
      using D = typename V::device_type;
      const V terms[] = {zeros<float, D>(s), tanh(xs[0]), zeros<float, D>(s)};
      const int index[] = {0, 3, 4};
      return weighted_sum<float, D>(std::span<const V>(terms), xs[1], std::span<const int>(index), w.data());
    });
  }
}
