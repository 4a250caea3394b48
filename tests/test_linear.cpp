// linear, matmul, embedding.
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
