// Autograd mechanics: accumulation, zero_grad, no-grad mode, tape misuse errors.
#include <cmath>

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

TEST_CASE("add hands its output's gradient buffer to one input, never a retained one's") {
  auto& alloc = CachingAllocator<Cpu>::instance();
  const auto allocations = [&] {
    const AllocatorStats st = alloc.stats();
    return st.system_allocations + st.cache_hits;
  };
  // dx/dx of L = sum(2 y + 3 a), y = a + b, a = tanh(x), b = sigmoid(x). `early` uses a before y
  // does, so its gradient (3) is added into a's gradient after y's closure ran: into y's
  // buffer when a took it.
  const auto run = [&](bool retain_y) {
    V x(Td::from({3}, {0.4, -1.2, 2.0}), true);
    V a = tanh(x), b = sigmoid(x);
    a.retain_grad();
    V early = scale(a, 3.0);
    V y = add(a, b);
    if (retain_y) y.retain_grad();
    V loss = sum(add(scale(y, 2.0), early));
    const std::size_t before = allocations();
    backward(loss);
    const std::size_t made = allocations() - before;
    for (index_t i = 0; i < 3; ++i) {
      const double t = std::tanh(x.value()[i]), sg = 1.0 / (1.0 + std::exp(-x.value()[i]));
      CHECK(a.grad()[i] == doctest::Approx(5.0));
      CHECK(x.grad()[i] == doctest::Approx(5.0 * (1 - t * t) + 2.0 * sg * (1 - sg)));
      if (retain_y) CHECK(y.grad()[i] == doctest::Approx(2.0));  // not a's 5
    }
    return made;
  };
  const std::size_t retained = run(true), passed = run(false);
  CHECK(passed == retained - 1);  // a took y's buffer instead of a new one
}

namespace {
/// Bytes the Cpu allocator counts in use for one tensor of shape s (its block rounding included).
std::size_t bytes_of(const Shape& s) {
  auto& alloc = CachingAllocator<Cpu>::instance();
  const std::size_t before = alloc.stats().bytes_in_use;
  const Td t = Td::empty(s);
  return alloc.stats().bytes_in_use - before;
}
}  // namespace

TEST_CASE("an op output that no backward reads is freed when the forward drops it") {
  // scale() routes its gradient without reading values, so the tape keeps neither its input's
  // value nor its output's: y between two scales goes with its last Var (torch frees it
  // likewise). A Var the caller keeps keeps its value; the gradient is the same either way.
  auto& alloc = CachingAllocator<Cpu>::instance();
  const Shape s{1000};
  const std::size_t unit = bytes_of(s);
  V x(Td::full(s, 1.0), true);
  const std::size_t before = alloc.stats().bytes_in_use;
  V z;
  {
    V y = scale(x, 2.0);
    z = scale(y, 3.0);
    CHECK(alloc.stats().bytes_in_use - before == 2 * unit);
  }
  CHECK(alloc.stats().bytes_in_use - before == unit);  // z only
  V kept = scale(x, 2.0);
  V z2 = scale(kept, 3.0);
  CHECK(alloc.stats().bytes_in_use - before == 3 * unit);  // z, kept, z2
  backward(sum(add(z, z2)));
  for (index_t i = 0; i < s.numel(); i += 111) CHECK(x.grad()[i] == 12.0);
  CHECK(kept.value()[5] == 2.0);
}

TEST_CASE("GradRef keeps a node's shape and gradient, not its value") {
  auto& alloc = CachingAllocator<Cpu>::instance();
  const Shape s{500};
  const std::size_t unit = bytes_of(s);
  const std::size_t before = alloc.stats().bytes_in_use;
  GradRef<double> r;
  {
    V v(Td::full(s, 1.0), true);
    r = GradRef(v);
    CHECK(alloc.stats().bytes_in_use - before == unit);
  }
  CHECK(alloc.stats().bytes_in_use == before);  // the value went with the last Var
  REQUIRE(r.defined());
  CHECK(r.shape() == s);
  CHECK(r.requires_grad());
  CHECK_FALSE(r.has_grad());
  const auto slot = r.grad_slot();  // a gradient can still be routed to the node
  CHECK(slot.g.shape() == s);
  CHECK_FALSE(slot.accumulate);
  CHECK(r.has_grad());
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
