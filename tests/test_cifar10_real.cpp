// The real CIFAR-10 binary files (exits 77, skipped, when the directory is absent). The
// directory is $DATANAS_CIFAR10_DIR, else ../shared/data/cifar10 beside the source tree.
#define DOCTEST_CONFIG_IMPLEMENT
#include <doctest/doctest.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <string>

#include "datanas/data/cifar10.hpp"

using namespace datanas;

#ifndef DATANAS_SOURCE_DIR
#define DATANAS_SOURCE_DIR "."
#endif

static std::string data_dir() {
  const char* env = std::getenv("DATANAS_CIFAR10_DIR");
  return env ? env : std::string(DATANAS_SOURCE_DIR) + "/../shared/data/cifar10";
}

TEST_CASE("CIFAR-10 loads with the official sizes, first labels and batch class counts") {
  const auto ds = data::Cifar10::load(data_dir());
  CHECK(ds.train.images.shape() == Shape{50000, 3, 32, 32});
  CHECK(ds.train.labels.shape() == Shape{50000});
  CHECK(ds.test.images.shape() == Shape{10000, 3, 32, 32});
  const int train_first[] = {6, 9, 9, 4, 1, 1, 2, 7, 8, 3};
  const int test_first[] = {3, 8, 8, 0, 6, 6, 1, 6, 3, 1};
  for (int i = 0; i < 10; ++i) {
    CHECK(ds.train.labels[i] == train_first[i]);
    CHECK(ds.test.labels[i] == test_first[i]);
  }
  const long batch1[] = {1005, 974, 1032, 1016, 999, 937, 1030, 1001, 1025, 981};
  long counts[10] = {}, total[10] = {};
  for (index_t i = 0; i < 10000; ++i) ++counts[ds.train.labels[i]];
  for (index_t i = 0; i < 50000; ++i) ++total[ds.train.labels[i]];
  for (int c = 0; c < 10; ++c) {
    CHECK(counts[c] == batch1[c]);
    CHECK(total[c] == 5000);
  }
  // Channel means of this (JPEG-derived) copy: 0.4913, 0.4821, 0.4465 (see the data README).
  const index_t plane = 32 * 32;
  for (int c = 0; c < 3; ++c) {
    double sum = 0;
    for (index_t n = 0; n < 50000; ++n) {
      const float* p = ds.train.images.data() + (n * 3 + c) * plane;
      for (index_t i = 0; i < plane; ++i) sum += p[i];
    }
    CHECK(sum / (50000.0 * plane) ==
          doctest::Approx(data::Cifar10::kMean[std::size_t(c)]).epsilon(0.002));
  }

  // A subset reads the same leading records.
  data::Cifar10::Options opt;
  opt.train_limit = 12345;
  opt.test_limit = 10;
  const auto sub = data::Cifar10::load(data_dir(), opt);
  CHECK(sub.train.size() == 12345);
  CHECK(sub.test.size() == 10);
  CHECK(std::memcmp(sub.train.images.data(), ds.train.images.data(),
                    sizeof(float) * std::size_t(sub.train.images.numel())) == 0);
  CHECK(std::memcmp(sub.train.labels.data(), ds.train.labels.data(),
                    sizeof(std::int32_t) * 12345) == 0);
}

int main(int argc, char** argv) {
  if (!std::filesystem::is_directory(data_dir())) {
    std::printf("%s not found: skipped\n", data_dir().c_str());
    return 77;
  }
  doctest::Context ctx(argc, argv);
  return ctx.run();
}
