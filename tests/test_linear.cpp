// linear, matmul (and GroupedMatmul, its weight gradient in groups of products), embedding.
#include <array>

#include "gradcheck.hpp"

using namespace datanas;
using namespace datanas::testing;

TEST_SUITE("cpu") {
TEST_CASE("linear forward by hand") {
  VarD x(TensorD::from({2, 3}, {1, 2, 3, -1, 0, 1}));
  VarD w(TensorD::from({2, 3}, {1, 0, 0, 0.5, 0.5, 0.5}));
  VarD b(TensorD::from({2}, {10, 20}));
  auto y = linear(x, w, b).value();
  CHECK(y(0, 0) == 11);
  CHECK(y(0, 1) == 23);
  CHECK(y(1, 0) == 9);
  CHECK(y(1, 1) == 20);
  auto y2 = linear(x, w, VarD()).value();
  CHECK(y2(1, 1) == 0);
}

TEST_CASE("linear, matmul, embedding gradients") {
  for (index_t n : {1, 4})
    check_gradients([](auto& in) { return linear(in[0], in[1], in[2]); },
                    {param({n, 7}, 1), param({5, 7}, 2), param({5}, 3)});
  check_gradients([](auto& in) { return linear(in[0], in[1], VarD()); },
                  {param({3, 6}, 4), param({2, 6}, 5)});
  check_gradients([](auto& in) { return matmul(in[0], in[1]); }, {param({3, 5}, 6), param({5, 2}, 7)});
  auto ids = Tensor<std::int32_t>::from({2, 3}, {0, 4, 4, 2, 0, 1});
  check_gradients([&](auto& in) { return embedding(in[0], ids); }, {param({5, 3}, 8)});
}

TEST_CASE("linear and matmul past a packet and a row block of the small product") {
  // The CPU products run small_gemm from a packet of columns (and, for A B^T, of inner indices)
  // and split rows into blocks of kBlockM: 9 and 11 are two packets of doubles (AVX2) and a
  // partial one, and kBlockM + 3 rows are one block and a partial one.
  const index_t rows = cpu::small_gemm::kBlockM + 3;
  check_gradients([](auto& in) { return linear(in[0], in[1], in[2]); },
                  {param({rows, 9}, 20), param({11, 9}, 21), param({11}, 22)});
  check_gradients([](auto& in) { return matmul(in[0], in[1]); },
                  {param({rows, 9}, 23), param({9, 11}, 24)});
  check_gradients([](auto& in) { return matmul(in[0], in[1]); },
                  {param({11, rows}, 25), param({rows, 9}, 26)});
}

namespace {
/// A recurrence through one weight w [4, 4]: h_{t+1} = tanh(h_t) w from h_0 = a0 [3, 4], six
/// products in groups of `group`; with a side product (of `side`, [2, 4], a batch of another
/// size: a new group) at step 2 whose output gets no gradient when `side_unused`, and is added
/// to the result otherwise; and at step 4 a product of a0 whose output is dropped (its rows of
/// the group's dy must add nothing). Without grad mode every product is a plain matmul.
VarD grouped_recurrence(const VarD& a0, const VarD& w, const VarD& side, int group,
                        bool side_unused) {
  GroupedMatmul<double, Cpu> gm;
  gm.start(w, group);
  VarD h = a0, extra;
  for (int t = 0; t < 6; ++t) {
    h = gm(t == 0 ? h : tanh(h));
    if (t == 2) extra = gm(side);
    if (t == 4) (void)gm(a0);
  }
  gm.finish();
  if (side_unused) return h;
  return add(h, matmul(VarD(TensorD::full({3, 2}, 0.5)), extra));
}
}  // namespace

TEST_CASE("GroupedMatmul: gradients of a recurrence in groups, short last group, unused products") {
  // Groups of 1 (a product each), 2 and 4 (short last groups, and the side product's rows of
  // another size opening a group mid-way), 100 (everything in one group).
  for (int group : {1, 2, 4, 100})
    for (bool unused : {false, true}) {
      CAPTURE(group);
      CAPTURE(unused);
      check_gradients(
          [&](auto& in) { return grouped_recurrence(in[0], in[1], in[2], group, unused); },
          {param({3, 4}, 30), param({4, 4}, 31, -0.8, 0.8), param({2, 4}, 32)});
    }
}

TEST_CASE("GroupedMatmul: the weight gradient of matmul's to rounding, added to an existing one") {
  const TensorD a0 = random_tensor({3, 4}, 33), wv = random_tensor({4, 4}, 34, -0.8, 0.8),
                side = random_tensor({2, 4}, 35);
  auto grads = [&](int group) {  // two backward passes: the second adds to the first
    VarD a(a0.clone(), true), w(wv.clone(), true), sd(side.clone(), true);
    for (int pass = 0; pass < 2; ++pass) backward(sum(grouped_recurrence(a, w, sd, group, false)));
    return std::array<TensorD, 3>{a.grad().clone(), w.grad().clone(), sd.grad().clone()};
  };
  const auto want = grads(1), got = grads(4);
  for (int i = 0; i < 3; ++i)
    for (index_t j = 0; j < want[std::size_t(i)].numel(); ++j)
      CHECK(got[std::size_t(i)][j] == doctest::Approx(want[std::size_t(i)][j]).epsilon(1e-13));
  // Without grad mode: matmul's values, nothing on the tape.
  VarD a(a0.clone()), w(wv.clone(), true), sd(side.clone());
  const TensorD with_grad = grouped_recurrence(a, w, sd, 2, false).value().clone();
  clear_tape<double, Cpu>();
  {
    NoGradGuard no_grad;
    const TensorD plain = grouped_recurrence(a, w, sd, 2, false).value();
    CHECK(tape<double, Cpu>().size() == 0);
    for (index_t j = 0; j < plain.numel(); ++j) CHECK(plain[j] == with_grad[j]);
  }
}

TEST_CASE("GroupedMatmul errors") {
  GroupedMatmul<double, Cpu> gm;
  VarD x(TensorD::zeros({2, 3})), w(TensorD::zeros({4, 5}), true);
  CHECK_THROWS_WITH_AS(gm(x), doctest::Contains("start() before the products"), datanas::error);
  CHECK_THROWS_WITH_AS(gm.start(VarD(TensorD::zeros({4})), 2),
                       doctest::Contains("weight must be [k, m], got [4]"), datanas::error);
  CHECK_THROWS_WITH_AS(gm.start(w, 0), doctest::Contains("at least one product, got 0"),
                       datanas::error);
  gm.start(w, 2);
  CHECK_THROWS_WITH_AS(gm(x), doctest::Contains("cannot multiply [2, 3] by [4, 5]"),
                       datanas::error);
  gm.finish();
  CHECK_FALSE(gm.started());
  clear_tape<double, Cpu>();
}

TEST_CASE("column_sums (linear's bias gradient): every block and partial, both precisions") {
  // Columns in blocks of 1,024 and rows in partial sums of 64: shapes on both sides of each,
  // written and accumulated, against a double sum within float's rounding bound.
  auto check = [](auto zero, index_t rows, index_t cols) {
    using T = decltype(zero);
    CAPTURE(rows);
    CAPTURE(cols);
    PhiloxGenerator g(std::uint64_t(rows * 7919 + cols));
    std::vector<T> x(std::size_t(rows * cols)), out(std::size_t(cols) + 1);
    for (auto& v : x) v = T(2 * g.uniform() - 1);
    for (const bool acc : {false, true}) {
      CAPTURE(acc);
      for (index_t j = 0; j <= cols; ++j) out[std::size_t(j)] = T(0.5);
      cpu::column_sums(x.data(), rows, cols, out.data(), acc);
      for (index_t j = 0; j < cols; ++j) {
        double want = acc ? 0.5 : 0.0, mag = std::abs(want);
        for (index_t i = 0; i < rows; ++i) {
          want += double(x[std::size_t(i * cols + j)]);
          mag += std::abs(double(x[std::size_t(i * cols + j)]));
        }
        const double bound = double(rows + 1) * double(std::numeric_limits<T>::epsilon()) * mag;
        REQUIRE(std::abs(double(out[std::size_t(j)]) - want) <= bound + 1e-300);
      }
      REQUIRE(out[std::size_t(cols)] == T(0.5));  // past the last column: untouched
    }
  };
  for (const index_t rows : {0, 1, 63, 64, 65, 200})
    for (const index_t cols : {1, 7, 1023, 1024, 1025, 2100}) {
      check(float(0), rows, cols);
      check(double(0), rows, cols);
    }
}

TEST_CASE("embedding looks up rows") {
  VarD w(TensorD::from({3, 2}, {0, 1, 10, 11, 20, 21}));
  auto y = embedding(w, Tensor<std::int32_t>::from({2}, {2, 0})).value();
  CHECK(y.shape() == Shape{2, 2});
  CHECK(y(0, 1) == 21);
  CHECK(y(1, 0) == 0);
}

TEST_CASE("linear/matmul/embedding errors") {
  VarD x(TensorD::zeros({2, 3})), w(TensorD::zeros({4, 5}));
  CHECK_THROWS_WITH_AS(linear(x, w, VarD()), doctest::Contains("weight [4, 5] does not fit input [2, 3]"),
                       datanas::error);
  CHECK_THROWS_WITH_AS(matmul(x, x), doctest::Contains("cannot multiply [2, 3] by [2, 3]"),
                       datanas::error);
  CHECK_THROWS_WITH_AS(embedding(w, Tensor<std::int32_t>::from({1}, {4})),
                       doctest::Contains("id 4 at position 0 is outside the vocabulary [0, 4)"),
                       datanas::error);
}
}
