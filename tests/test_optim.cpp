// SGD and Adam against hand-computed torch semantics; clipping; cosine schedule; modules.
#include "gradcheck.hpp"
#include "datanas/nn/layers.hpp"
#include "datanas/optim/optimizers.hpp"

using namespace datanas;
using namespace datanas::testing;

TEST_SUITE("cpu") {
TEST_CASE("SGD with momentum and weight decay follows torch.optim.SGD") {
  VarD w(TensorD::from({1}, {1.0}), true);
  optim::SGD<double> sgd({w}, 0.1, 0.9, 0.01);
  // loss = 2w -> grad 2 each step.
  backward(scale(sum(w), 2.0));
  sgd.step();  // g = 2 + 0.01*1 = 2.01; buf = 2.01; w = 1 - 0.201 = 0.799
  CHECK(w.value()[0] == doctest::Approx(0.799));
  sgd.zero_grad();
  backward(scale(sum(w), 2.0));
  sgd.step();  // g = 2 + 0.00799 = 2.00799; buf = 0.9*2.01 + 2.00799 = 3.81699; w = 0.799 - 0.381699
  CHECK(w.value()[0] == doctest::Approx(0.417301));
  VarD unused(TensorD::from({1}, {5.0}), true);
  optim::SGD<double> sgd2({unused}, 0.1);
  sgd2.step();  // no gradient: untouched
  CHECK(unused.value()[0] == 5.0);
}

TEST_CASE("Adam follows torch.optim.Adam (bias-corrected)") {
  VarD w(TensorD::from({1}, {1.0}), true);
  optim::Adam<double> adam({w}, 0.01, 0.5, 0.999, 0.0);
  backward(scale(sum(w), 3.0));
  adam.step();  // first step moves by lr * sign(g) (up to eps)
  CHECK(w.value()[0] == doctest::Approx(0.99).epsilon(1e-9));
  adam.zero_grad();
  backward(scale(sum(w), -1.0));
  adam.step();
  // m = 0.5*1.5 - 0.5 = 0.25 -> mhat = 0.25/0.75; v = 0.999*0.009 + 0.001 -> vhat = v/(1-0.999^2)
  const double m = 0.25 / 0.75, v = (0.999 * 0.009 + 0.001) / (1 - 0.999 * 0.999);
  CHECK(w.value()[0] == doctest::Approx(0.99 - 0.01 * m / (std::sqrt(v) + 1e-8)).epsilon(1e-9));
}

TEST_CASE("clip_grad_norm scales to the max norm; cosine_lr endpoints") {
  VarD a(TensorD::from({2}, {0.0, 0.0}), true), b(TensorD::from({1}, {0.0}), true);
  backward(add(scale(sum(a), 3.0), scale(sum(VarD(TensorD::from({2}, {0.0, 0.0})).detach()), 1.0)));
  backward(scale(sum(b), 4.0));
  // grads: a = (3, 3), b = 4 -> norm sqrt(34)
  std::vector<VarD> ps{a, b};
  const double norm = optim::clip_grad_norm<double, Cpu>(ps, 1.0);
  CHECK(norm == doctest::Approx(std::sqrt(34.0)));
  CHECK(b.grad()[0] == doctest::Approx(4.0 / std::sqrt(34.0)).epsilon(1e-5));
  CHECK(optim::cosine_lr(0.025, 0.001, 0, 50) == doctest::Approx(0.025));
  CHECK(optim::cosine_lr(0.025, 0.001, 50, 50) == doctest::Approx(0.001));
  CHECK(optim::cosine_lr(0.1, 0.0, 25, 50) == doctest::Approx(0.05));
}

TEST_CASE("modules register named parameters and buffers and switch train/eval") {
  PhiloxGenerator g(1);
  nn::Conv2d<double> conv(3, 4, 3, {.padding = 1}, true, g);
  nn::BatchNorm2d<double> bn(4), bn_plain(4, false);
  nn::Linear<double> fc(4, 2, false, g);
  CHECK(conv.parameter_count() == 4 * 3 * 9 + 4);
  CHECK(bn.parameter_count() == 8);
  CHECK(bn_plain.parameter_count() == 0);
  CHECK(fc.parameter_count() == 8);
  std::vector<std::string> names;
  bn.visit_buffers([&](const std::string& n, const TensorD&) { names.push_back(n); });
  CHECK(names == std::vector<std::string>{"running_mean", "running_var"});
  // torch's default init bound 1/sqrt(fan_in) = 1/sqrt(27).
  const auto& w = conv.weight().value();
  double mx = 0;
  for (index_t i = 0; i < w.numel(); ++i) mx = std::max(mx, std::abs(w[i]));
  CHECK(mx <= 1.0 / std::sqrt(27.0));
  CHECK(mx > 0.5 / std::sqrt(27.0));
  bn.eval();
  CHECK_FALSE(bn.training());
}
}
