// concat_channels and the FactorizedReduce crop.
#include "gradcheck.hpp"

using namespace datanas;
using namespace datanas::testing;

TEST_SUITE("cpu") {
TEST_CASE("concat_channels forward by hand") {
  VarD a(TensorD::from({2, 1, 1, 2}, {1, 2, 3, 4}));
  VarD b(TensorD::from({2, 2, 1, 2}, {5, 6, 7, 8, 9, 10, 11, 12}));
  VarD parts[] = {a, b, zeros<double>({2, 1, 1, 2})};
  auto y = concat_channels<double, Cpu>(parts).value();
  CHECK(y.shape() == Shape{2, 4, 1, 2});
  const double expect[] = {1, 2, 5, 6, 7, 8, 0, 0, 3, 4, 9, 10, 11, 12, 0, 0};
  for (int i = 0; i < 16; ++i) CHECK(y[i] == expect[i]);
}

TEST_CASE("concat_channels gradients (3 parts, batch 1 and 3)") {
  for (index_t n : {1, 3}) {
    check_gradients(
        [](auto& in) {
          VarD parts[] = {in[0], in[1], in[2]};
          return concat_channels<double, Cpu>(parts);
        },
        {param({n, 3, 4, 5}, 1), param({n, 1, 4, 5}, 2), param({n, 5, 4, 5}, 3)});
  }
  // The same Var twice: its gradient is the sum of both slices.
  check_gradients(
      [](auto& in) {
        VarD parts[] = {in[0], in[0]};
        return concat_channels<double, Cpu>(parts);
      },
      {param({2, 2, 3, 3}, 4)});
}

TEST_CASE("crop / shift_crop forward and gradients") {
  VarD x(TensorD::from({1, 1, 3, 3}, {1, 2, 3, 4, 5, 6, 7, 8, 9}));
  auto y = shift_crop(x).value();
  CHECK(y.shape() == Shape{1, 1, 2, 2});
  CHECK(y[0] == 5);
  CHECK(y[1] == 6);
  CHECK(y[2] == 8);
  CHECK(y[3] == 9);
  check_gradients([](auto& in) { return shift_crop(in[0]); }, {param({2, 3, 7, 5}, 5)});
  check_gradients([](auto& in) { return crop(in[0], 2, 0); }, {param({1, 2, 5, 4}, 6)});
}

TEST_CASE("structure errors") {
  VarD a(TensorD::zeros({1, 2, 4, 4})), b(TensorD::zeros({1, 2, 3, 4}));
  VarD parts[] = {a, b};
  CHECK_THROWS_WITH_AS((concat_channels<double, Cpu>(parts)),
                       doctest::Contains("input 1 has shape [1, 2, 3, 4]"), datanas::error);
  CHECK_THROWS_WITH_AS(crop(a, 4, 0), doctest::Contains("offsets (4, 0) out of range"),
                       datanas::error);
}
}
