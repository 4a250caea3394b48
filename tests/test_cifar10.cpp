// CIFAR-10 binary reader on small fake files written here (the real data is not needed):
// layout, subsets that read only what they need, and every kind of broken file.
#include <doctest/doctest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "datanas/data/cifar10.hpp"

using namespace datanas;
namespace fs = std::filesystem;

namespace {
constexpr int kRec = 3073;

/// A fresh, empty directory under the system temp dir.
std::string fresh_dir(const std::string& name) {
  const fs::path dir =
      fs::temp_directory_path() / ("datanas_test_cifar10_" + std::to_string(::getpid())) / name;
  fs::remove_all(dir);
  fs::create_directories(dir);
  return dir.string();
}
unsigned char pixel(int file, int record, int i) {
  return static_cast<unsigned char>((file * 31 + record * 7 + i) % 256);
}
int label_of(int file, int record) { return (file * 3 + record) % 10; }

/// `records` records of file number `file` (0..4 train, 5 test).
std::vector<unsigned char> fake_records(int file, int records) {
  std::vector<unsigned char> b;
  for (int r = 0; r < records; ++r) {
    b.push_back(static_cast<unsigned char>(label_of(file, r)));
    for (int i = 0; i < 3072; ++i) b.push_back(pixel(file, r, i));
  }
  return b;
}
void write(const std::string& path, const std::vector<unsigned char>& bytes) {
  std::ofstream(path, std::ios::binary)
      .write(reinterpret_cast<const char*>(bytes.data()), std::streamsize(bytes.size()));
}
std::string file_name(int file) {
  return file < 5 ? "data_batch_" + std::to_string(file + 1) + ".bin" : "test_batch.bin";
}
/// A complete fake data set with `per` records per file.
std::string fake_dataset(const std::string& name, int per) {
  const std::string dir = fresh_dir(name);
  for (int f = 0; f < 6; ++f) write(dir + "/" + file_name(f), fake_records(f, per));
  return dir;
}
data::Cifar10::Options small(int per) {
  data::Cifar10::Options o;
  o.records_per_file = per;
  return o;
}
}  // namespace

TEST_SUITE("cpu") {
  TEST_CASE("CIFAR-10 records become [N, 3, 32, 32] planes in [0, 1] and int32 labels") {
    const std::string dir = fake_dataset("full", 3);
    const auto ds = data::Cifar10::load(dir, small(3));
    CHECK(ds.train.images.shape() == Shape{15, 3, 32, 32});
    CHECK(ds.train.labels.shape() == Shape{15});
    CHECK(ds.test.images.shape() == Shape{3, 3, 32, 32});
    CHECK(ds.test.size() == 3);
    for (int f = 0; f < 5; ++f)
      for (int r = 0; r < 3; ++r) CHECK(ds.train.labels[f * 3 + r] == label_of(f, r));
    for (int r = 0; r < 3; ++r) CHECK(ds.test.labels[r] == label_of(5, r));
    // Byte 1 + c * 1024 + h * 32 + w of a record is channel c (R, G, B), row h, column w.
    const int n = 7, f = 2, r = 1;  // train row 7 = data_batch_3, record 1
    for (int c = 0; c < 3; ++c)
      for (int h : {0, 5, 31})
        for (int w : {0, 17, 31})
          CHECK(ds.train.images(n, c, h, w) == float(pixel(f, r, c * 1024 + h * 32 + w)) / 255.0f);
    CHECK(ds.test.images(2, 1, 3, 4) == float(pixel(5, 2, 1024 + 3 * 32 + 4)) / 255.0f);
    float lo = 1, hi = 0;
    for (index_t i = 0; i < ds.train.images.numel(); ++i) {
      lo = std::min(lo, ds.train.images[i]);
      hi = std::max(hi, ds.train.images[i]);
    }
    CHECK(lo == 0.0f);
    CHECK(hi == 1.0f);
    CHECK(std::string(data::Cifar10::kClassNames[3]) == "cat");
    CHECK(data::Cifar10::kMean[0] == doctest::Approx(0.4914f));
    CHECK(data::Cifar10::kStd[2] == doctest::Approx(0.2616f));
  }

  TEST_CASE("a training subset reads only the records it needs") {
    // Only data_batch_1, data_batch_2 and test_batch exist, and data_batch_2's record 2 has a
    // bad label: a subset of 4 records must not notice either.
    const std::string dir = fresh_dir("subset");
    write(dir + "/data_batch_1.bin", fake_records(0, 3));
    auto second = fake_records(1, 3);
    second[2 * kRec] = 200;
    write(dir + "/data_batch_2.bin", second);
    write(dir + "/test_batch.bin", fake_records(5, 3));
    auto opt = small(3);
    opt.train_limit = 4;
    const auto ds = data::Cifar10::load(dir, opt);
    CHECK(ds.train.images.shape() == Shape{4, 3, 32, 32});
    CHECK(ds.train.labels[3] == label_of(1, 0));
    CHECK(ds.train.images(3, 2, 31, 31) == float(pixel(1, 0, 3071)) / 255.0f);
    CHECK(ds.test.size() == 3);
    opt.train_limit = 2;
    opt.test_limit = 1;
    const auto tiny = data::Cifar10::load(dir, opt);
    CHECK(tiny.train.size() == 2);
    CHECK(tiny.test.size() == 1);
    CHECK(tiny.test.labels[0] == label_of(5, 0));
    opt.train_limit = 7;  // needs data_batch_3
    CHECK_THROWS_WITH_AS(
        data::Cifar10::load(dir, opt),
        doctest::Contains("data_batch_2.bin': label 200 of record 2 is not a class"),
        datanas::error);
    opt.train_limit = 16;
    CHECK_THROWS_WITH_AS(
        data::Cifar10::load(dir, opt),
        doctest::Contains("asked for 16 training records, the training split has 15"),
        datanas::error);
  }

  TEST_CASE("broken CIFAR-10 directories and files get errors naming the file and the problem") {
    CHECK_THROWS_WITH_AS(data::Cifar10::load(fresh_dir("x") + "/no-such-dir"),
                         doctest::Contains("no-such-dir' does not exist"), datanas::error);
    CHECK_THROWS_WITH_AS(data::Cifar10::load(fresh_dir("x2") + "/no-such-dir"),
                         doctest::Contains("--data-dir"), datanas::error);

    std::string dir = fake_dataset("missing", 3);
    fs::remove(dir + "/data_batch_4.bin");
    CHECK_THROWS_WITH_AS(data::Cifar10::load(dir, small(3)),
                         doctest::Contains("data_batch_4.bin' does not exist"), datanas::error);

    dir = fake_dataset("odd-size", 3);
    auto odd = fake_records(5, 3);
    odd.push_back(0);
    write(dir + "/test_batch.bin", odd);
    CHECK_THROWS_WITH_AS(
        data::Cifar10::load(dir, small(3)),
        doctest::Contains("test_batch.bin' has 9220 bytes, not a multiple of the 3073-byte record "
                          "(expected 9219 bytes = 3 records)"),
        datanas::error);

    dir = fake_dataset("short", 3);
    write(dir + "/data_batch_2.bin", fake_records(1, 2));
    CHECK_THROWS_WITH_AS(
        data::Cifar10::load(dir, small(3)),
        doctest::Contains(
            "data_batch_2.bin' holds 2 records (6146 bytes), expected 3 (9219 bytes)"),
        datanas::error);
    // The real files hold 10000 records: small files are rejected by default.
    CHECK_THROWS_WITH_AS(
        data::Cifar10::load(fake_dataset("default", 3)),
        doctest::Contains("holds 3 records (9219 bytes), expected 10000 (30730000 bytes)"),
        datanas::error);

    dir = fake_dataset("label", 3);
    auto bad = fake_records(0, 3);
    bad[1 * kRec] = 10;
    write(dir + "/data_batch_1.bin", bad);
    CHECK_THROWS_WITH_AS(
        data::Cifar10::load(dir, small(3)),
        doctest::Contains("data_batch_1.bin': label 10 of record 1 is not a class in [0, 10)"),
        datanas::error);
    fs::remove_all(fs::temp_directory_path() /
                   ("datanas_test_cifar10_" + std::to_string(::getpid())));
  }
}
