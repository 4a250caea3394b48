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

TEST_CASE("weighted_sum over several blocks: values, gradients, accumulation, any thread count") {
  // 23,001 elements: 11 whole blocks of the blocked CPU kernels and a tail. Eight terms with a
  // symbolic zero, one Var used twice and two terms sharing a weight (index map).
  using VarF = Var<float, Cpu>;
  const Shape s{3, 7, 33, 33};
  const index_t n = s.numel();
  REQUIRE(n % cpu::weighted_sum::kBlock != 0);
  REQUIRE(n > 10 * cpu::weighted_sum::kBlock);
  auto leaf = [&](std::uint64_t seed) {
    const TensorD r = random_tensor(s, seed);
    Tensor<float, Cpu> t = Tensor<float, Cpu>::empty(s);
    for (index_t i = 0; i < n; ++i) t.data()[i] = float(r[i]);
    VarF v(t);
    v.set_requires_grad(true);
    return v;
  };
  std::vector<VarF> leaves;
  for (int i = 0; i < 6; ++i) leaves.push_back(leaf(40 + i));
  VarF w(Tensor<float, Cpu>::from({6}, {0.3f, -0.7f, 1.1f, 0.05f, -0.2f, 0.9f}));
  w.set_requires_grad(true);
  const VarF terms[] = {leaves[0], zeros<float>(s), leaves[1], leaves[2], leaves[0],
                        leaves[3], leaves[4], leaves[5]};
  const int idx[] = {0, 1, 2, 3, 4, 5, 5, 2};
  const Tensor<float, Cpu> dy = Tensor<float, Cpu>::empty(s);
  {
    const TensorD r = random_tensor(s, 50);
    for (index_t i = 0; i < n; ++i) dy.data()[i] = float(r[i]);
  }
  // The reference, in double from the same float inputs.
  std::vector<double> y_ref(n, 0.0), wg_ref(6, 0.0);
  std::vector<std::vector<double>> xg_ref(6, std::vector<double>(n, 0.0));
  const int leaf_of[] = {0, -1, 1, 2, 0, 3, 4, 5};
  for (int t = 0; t < 8; ++t) {
    if (leaf_of[t] < 0) continue;
    const float* x = leaves[leaf_of[t]].value().data();
    const double wt = w.value().data()[idx[t]];
    for (index_t i = 0; i < n; ++i) {
      y_ref[i] += wt * x[i];
      wg_ref[idx[t]] += double(x[i]) * double(dy.data()[i]);
      xg_ref[leaf_of[t]][i] += wt * double(dy.data()[i]);
    }
  }
  auto run = [&] {
    clear_tape<float>();
    for (auto& l : leaves) l.zero_grad();
    w.zero_grad();
    VarF y = weighted_sum(terms, w, idx);
    backward(y, dy);
    return y;
  };
  const VarF y = run();
  for (index_t i = 0; i < n; ++i)
    REQUIRE(y.value().data()[i] == doctest::Approx(y_ref[i]).epsilon(1e-5));
  for (int l = 0; l < 6; ++l)
    for (index_t i = 0; i < n; i += 97)
      REQUIRE(leaves[l].grad().data()[i] == doctest::Approx(xg_ref[l][i]).epsilon(1e-5));
  for (int j = 0; j < 6; ++j) CHECK(w.grad().data()[j] == doctest::Approx(wg_ref[j]).epsilon(1e-4));
  // A second backward without zero_grad accumulates.
  const float g0 = leaves[0].grad().data()[123], w5 = w.grad().data()[5];
  VarF y2 = weighted_sum(terms, w, idx);
  backward(y2, dy);
  CHECK(leaves[0].grad().data()[123] == doctest::Approx(2.0 * g0));
  CHECK(w.grad().data()[5] == doctest::Approx(2.0 * w5));
#if defined(_OPENMP)
  // The dot products are summed per block, then over blocks in order: the same bits on one
  // thread as on several.
  const int threads = omp_get_max_threads();
  omp_set_num_threads(1);
  run();
  const std::vector<float> one(w.grad().data(), w.grad().data() + 6);
  omp_set_num_threads(std::max(2, threads));
  run();
  omp_set_num_threads(threads);
  for (int j = 0; j < 6; ++j) CHECK(w.grad().data()[j] == one[j]);
#endif
}

TEST_CASE("weighted_sum of one term of weight exactly 1 passes the term through uncopied") {
  // A hard estimator's sparse edge: symbolic zeros and one selected op of weight 1.
  const Shape s{2, 3, 4, 5};
  const VarD z = zeros<double>(s);
  const int idx[] = {0, 2, 3};  // the live term's weight is w[3]
  VarD a = param(s, 21);
  VarD w(TensorD::from({5}, {0.3, -0.2, 0.0, 1.0, 0.7}), true);
  {
    const VarD terms[] = {z, z, a};
    const VarD y = weighted_sum(terms, w, idx);
    CHECK(y.value().data() == a.value().data());  // the same storage
    CHECK_FALSE(same_node(y, a));                  // its own node: w's gradient goes through it
    const VarD fixed(w.value());                   // a weight without gradient: the term itself
    CHECK(same_node(weighted_sum(terms, fixed, idx), a));
    clear_tape<double>();
  }
  // Gradients (the finite differences move w[3] off 1, where the sum is computed): the term an
  // op output that takes dy's buffer, then receives a second gradient from an earlier use (added
  // into the taken buffer); and a leaf term (which never takes a buffer).
  check_gradients(
      [&](auto& in) {
        const VarD t = tanh(in[0]);
        const VarD early = scale(t, 2.0);
        const VarD terms[] = {z, z, t};
        return add(early, weighted_sum(terms, in[1], idx));
      },
      {a, w});
  check_gradients(
      [&](auto& in) {
        const VarD terms[] = {z, in[0], z};
        const int at[] = {1, 3, 4};
        return weighted_sum(terms, in[1], at);
      },
      {a, w});
  // A weight of 1 beside another live term is an ordinary sum.
  const VarD b = param(s, 22);
  const VarD two[] = {a, b};
  const int at[] = {3, 0};
  const VarD y = weighted_sum(two, w, at);
  CHECK(y.value().data() != a.value().data());
  CHECK(y.value()[7] == doctest::Approx(a.value()[7] + 0.3 * b.value()[7]));
  clear_tape<double>();
}

TEST_CASE("add, scale, sum, mean gradients and values") {
  const Shape s{1, 2, 3, 5};
  check_gradients([](auto& in) { return add(in[0], in[1]); }, {param(s, 4), param(s, 5)});
  // Op outputs as inputs, so that dy's buffer is passed on (adopt_grad): the same Var twice,
  // and a passed buffer that later uses add into.
  check_gradients(
      [](auto& in) {
        const VarD a = tanh(in[0]), b = sigmoid(in[1]);
        const VarD early = scale(a, 3.0);
        const VarD twice = add(a, a);
        return add(add(twice, b), add(early, scale(b, -0.5)));
      },
      {param(s, 4), param(s, 5)});
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
