// The real Fashion-MNIST files of Debian's dataset-fashion-mnist (exits 77, skipped, when the
// package is not installed, as on a user's machine without it).
#define DOCTEST_CONFIG_IMPLEMENT
#include <doctest/doctest.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>

#include "datanas/data/idx.hpp"

using namespace datanas;

static std::string data_dir() {
  const char* env = std::getenv("DATANAS_FASHION_MNIST_DIR");
  return env ? env : data::FashionMnist::kDefaultDir;
}

TEST_CASE("Fashion-MNIST loads with the published sizes and class balance") {
  auto ds = data::FashionMnist::load(data_dir());
  CHECK(ds.train.images.shape() == Shape{60000, 1, 28, 28});
  CHECK(ds.test.images.shape() == Shape{10000, 1, 28, 28});
  long counts[10] = {};
  for (index_t i = 0; i < ds.train.size(); ++i) ++counts[ds.train.labels[i]];
  for (long c : counts) CHECK(c == 6000);  // the training split is exactly balanced
  double mean = 0;
  for (index_t i = 0; i < ds.train.images.numel(); ++i) mean += ds.train.images[i];
  CHECK(mean / double(ds.train.images.numel()) == doctest::Approx(data::FashionMnist::kMean).epsilon(0.002));
}

int main(int argc, char** argv) {
  if (!std::filesystem::is_directory(data_dir())) {
    std::printf("%s not found: skipped\n", data_dir().c_str());
    return 77;
  }
  doctest::Context ctx(argc, argv);
  return ctx.run();
}
