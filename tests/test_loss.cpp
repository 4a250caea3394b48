// softmax, log_softmax, cross_entropy; the accuracy count and DATA's code indicator.
#include "gradcheck.hpp"

#include "datanas/ops/tensor_math.hpp"

using namespace datanas;
using namespace datanas::testing;

TEST_SUITE("cpu") {
TEST_CASE("softmax and cross-entropy by hand") {
  VarD x(TensorD::from({2, 3}, {0.0, std::log(2.0), std::log(5.0), 1000.0, 1000.0, 1000.0}));
  auto p = softmax(x).value();
  CHECK(p(0, 0) == doctest::Approx(1.0 / 8));
  CHECK(p(0, 2) == doctest::Approx(5.0 / 8));
  CHECK(p(1, 1) == doctest::Approx(1.0 / 3));  // large logits must not overflow
  auto lp = log_softmax(x).value();
  CHECK(lp(0, 1) == doctest::Approx(std::log(2.0 / 8)));
  auto labels = Tensor<std::int32_t>::from({2}, {2, 0});
  auto ce = cross_entropy(x, labels).value();
  CHECK(ce[0] == doctest::Approx(-(std::log(5.0 / 8) + std::log(1.0 / 3)) / 2));
  VarD v(TensorD::from({2}, {1.0, 1.0}));
  CHECK(softmax(v).value()[0] == doctest::Approx(0.5));
}

TEST_CASE("softmax, log_softmax, cross-entropy gradients") {
  check_gradients([](auto& in) { return softmax(in[0]); }, {param({3, 7}, 1, -2, 2)});
  check_gradients([](auto& in) { return softmax(in[0]); }, {param({8}, 2, -2, 2)});
  check_gradients([](auto& in) { return log_softmax(in[0]); }, {param({4, 5}, 3, -2, 2)});
  auto labels = Tensor<std::int32_t>::from({5}, {0, 3, 3, 9, 1});
  check_gradients([&](auto& in) { return cross_entropy(in[0], labels); }, {param({5, 10}, 4, -3, 3)});
  auto one = Tensor<std::int32_t>::from({1}, {2});
  check_gradients([&](auto& in) { return cross_entropy(in[0], one); }, {param({1, 3}, 5)});
}

TEST_CASE("count_correct by hand: the first maximum wins ties, bad labels count as wrong") {
  const auto logits = TensorD::from({5, 3}, {1, 3, 2,    // argmax 1
                                             4, 4, 0,    // tie: the first, 0
                                             0, 5, 5,    // tie: 1
                                             -1, -2, -3, // 0
                                             7, 7, 7});  // all equal: 0
  CHECK(count_correct(logits, Tensor<std::int32_t>::from({5}, {1, 0, 1, 0, 0}))[0] == 5);
  CHECK(count_correct(logits, Tensor<std::int32_t>::from({5}, {1, 1, 2, 0, 2}))[0] == 2);
  CHECK(count_correct(logits, Tensor<std::int32_t>::from({5}, {-1, 3, 1, 0, 0}))[0] == 3);
  CHECK_THROWS_WITH_AS(count_correct(logits, Tensor<std::int32_t>::from({4}, {0, 0, 0, 0})),
                       doctest::Contains("labels must be [5], got [4]"), datanas::error);
}

TEST_CASE("first_argmax (count_correct's, in packets) is std::max_element's, ties included") {
  // Values from a set of 4, so rows have many ties for the maximum: in one lane, across lanes
  // of one packet and of different packets (a later packet's lower lane against an earlier
  // packet's higher one), and in the tail past the last whole packet. Lengths below two
  // packets (the scalar scan) and past one, with and without a tail.
  PhiloxGenerator g(77);
  auto check = [&](auto zero) {
    using T = decltype(zero);
    for (const index_t k : {1, 2, 7, 8, 9, 15, 16, 17, 31, 32, 33, 40, 100, 1000, 10000})
      for (int rep = 0; rep < 40; ++rep) {
        std::vector<T> x(static_cast<std::size_t>(k));
        for (auto& v : x) v = T(std::floor(4 * g.uniform()));
        if (rep % 2) x[std::size_t(k - 1)] = T(9);  // a maximum alone in the tail or last lane
        CAPTURE(k);
        CAPTURE(rep);
        REQUIRE(cpu::first_argmax(x.data(), k) == std::max_element(x.begin(), x.end()) - x.begin());
      }
    // A tie between index 2 (lane 2 of the first packet) and index V + 1 (lane 1 of the next).
    const index_t v = cpu::kLanes<T>;
    std::vector<T> x(std::size_t(4 * v), T(0));
    x[2] = x[std::size_t(v + 1)] = T(1);
    CHECK(cpu::first_argmax(x.data(), 4 * v) == 2);
  };
  check(float(0));
  check(double(0));
  // count_correct over wide rows: every row's label its argmax, then one past it.
  TensorD logits = TensorD::empty({30, 1000});
  Tensor<std::int32_t> labels = Tensor<std::int32_t>::empty({30}),
                       next = Tensor<std::int32_t>::empty({30});
  for (index_t i = 0; i < logits.numel(); ++i) logits[i] = std::floor(8 * g.uniform());
  for (index_t r = 0; r < 30; ++r) {
    const double* row = logits.data() + r * 1000;
    labels[r] = std::int32_t(std::max_element(row, row + 1000) - row);
    next[r] = labels[r] + 1;
  }
  CHECK(count_correct(logits, labels)[0] == 30);
  CHECK(count_correct(logits, next)[0] == 0);
}

TEST_CASE("indicator_positive by hand: DATA's code w > 0") {
  const auto w = TensorD::from({5}, {0.0, 0.25, -0.5, 1e-300, 0.5});
  TensorD code = TensorD::empty({5});
  indicator_positive(w, code);
  CHECK(code[0] == 0.0);
  CHECK(code[1] == 1.0);
  CHECK(code[2] == 0.0);
  CHECK(code[3] == 1.0);
  CHECK(code[4] == 1.0);
  CHECK_THROWS_WITH_AS(indicator_positive(w, TensorD::empty({4})), doctest::Contains("differ in size"),
                       datanas::error);
}

TEST_CASE("loss errors") {
  VarD x(TensorD::zeros({2, 3}));
  CHECK_THROWS_WITH_AS(cross_entropy(x, Tensor<std::int32_t>::from({2}, {0, 3})),
                       doctest::Contains("label 3 of sample 1 is outside [0, 3)"), datanas::error);
  CHECK_THROWS_WITH_AS(cross_entropy(x, Tensor<std::int32_t>::from({3}, {0, 1, 2})),
                       doctest::Contains("labels must be [2], got [3]"), datanas::error);
  CHECK_THROWS_WITH_AS(softmax(VarD(TensorD::zeros({1, 2, 3}))),
                       doctest::Contains("softmax: input must be [K] or [rows, K]"), datanas::error);
}
}
