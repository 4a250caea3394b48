// IDX reader: real round trips through gzip and every kind of broken file.
#include <doctest/doctest.h>
#include <zlib.h>

#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "datanas/data/batch.hpp"
#include "datanas/data/idx.hpp"

using namespace datanas;
namespace fs = std::filesystem;

namespace {
std::vector<unsigned char> be32(std::uint32_t v) {
  return {static_cast<unsigned char>(v >> 24), static_cast<unsigned char>(v >> 16),
          static_cast<unsigned char>(v >> 8), static_cast<unsigned char>(v)};
}
std::string tmp_path(const std::string& name) {
  const fs::path dir = fs::temp_directory_path() / ("datanas_test_data_" + std::to_string(::getpid()));
  fs::create_directories(dir);
  return (dir / name).string();
}
void write_gz(const std::string& path, const std::vector<unsigned char>& bytes) {
  gzFile f = gzopen(path.c_str(), "wb");
  REQUIRE(f != nullptr);
  REQUIRE(gzwrite(f, bytes.data(), unsigned(bytes.size())) == int(bytes.size()));
  gzclose(f);
}
void write_raw(const std::string& path, const std::vector<unsigned char>& bytes) {
  std::ofstream(path, std::ios::binary).write(reinterpret_cast<const char*>(bytes.data()), std::streamsize(bytes.size()));
}
std::vector<unsigned char> image_file(std::uint32_t n, std::uint32_t r, std::uint32_t c, std::size_t pixels) {
  std::vector<unsigned char> b;
  for (auto v : {0x803u, n, r, c}) {
    auto x = be32(v);
    b.insert(b.end(), x.begin(), x.end());
  }
  for (std::size_t i = 0; i < pixels; ++i) b.push_back(static_cast<unsigned char>(i * 37 % 256));
  return b;
}
}  // namespace

TEST_SUITE("cpu") {
TEST_CASE("IDX images and labels round-trip through gzip and plain files") {
  const auto img = image_file(2, 3, 2, 12);
  write_gz(tmp_path("img.gz"), img);
  auto t = data::read_idx_images(tmp_path("img.gz"));
  CHECK(t.shape() == Shape{2, 1, 3, 2});
  for (int i = 0; i < 12; ++i) CHECK(t[i] == doctest::Approx((i * 37 % 256) / 255.0f));
  write_raw(tmp_path("img.raw"), img);  // gzread reads uncompressed files transparently
  CHECK(data::read_idx_images(tmp_path("img.raw"))[11] == t[11]);

  std::vector<unsigned char> lab = be32(0x801);
  auto n = be32(4);
  lab.insert(lab.end(), n.begin(), n.end());
  for (unsigned char v : {3, 0, 9, 3}) lab.push_back(v);
  write_gz(tmp_path("lab.gz"), lab);
  auto l = data::read_idx_labels(tmp_path("lab.gz"));
  CHECK(l.shape() == Shape{4});
  CHECK(l[2] == 9);
}

TEST_CASE("broken IDX files get errors naming the file and the problem") {
  CHECK_THROWS_WITH_AS(data::read_idx_images(tmp_path("missing.gz")),
                       doctest::Contains("missing.gz': no such file"), datanas::error);
  auto bad_magic = image_file(1, 2, 2, 4);
  bad_magic[3] = 0x01;
  write_gz(tmp_path("magic.gz"), bad_magic);
  CHECK_THROWS_WITH_AS(data::read_idx_images(tmp_path("magic.gz")),
                       doctest::Contains("not an IDX image file (magic 0x801"), datanas::error);
  write_gz(tmp_path("short.gz"), image_file(3, 2, 2, 10));
  CHECK_THROWS_WITH_AS(data::read_idx_images(tmp_path("short.gz")),
                       doctest::Contains("truncated: expected 12 bytes of pixels"), datanas::error);
  write_gz(tmp_path("long.gz"), image_file(1, 2, 2, 5));
  CHECK_THROWS_WITH_AS(data::read_idx_images(tmp_path("long.gz")),
                       doctest::Contains("unexpected data after 1 images"), datanas::error);
  write_raw(tmp_path("tiny.gz"), {0x00, 0x00});
  CHECK_THROWS_WITH_AS(data::read_idx_images(tmp_path("tiny.gz")),
                       doctest::Contains("truncated: expected 4 bytes of the magic number"), datanas::error);
  // A gzip stream whose body is damaged.
  write_gz(tmp_path("corrupt.gz"), image_file(4, 8, 8, 256));
  {
    std::fstream f(tmp_path("corrupt.gz"), std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(20);
    const char junk[16] = {'\x7f', '\x13', '\x55', '\x00', '\x01', '\x02', '\x03', '\x04',
                           '\x05', '\x06', '\x07', '\x08', '\x09', '\x0a', '\x0b', '\x0c'};
    f.write(junk, sizeof junk);
  }
  CHECK_THROWS_AS(data::read_idx_images(tmp_path("corrupt.gz")), datanas::error);
  std::vector<unsigned char> lab = be32(0x801);
  auto n = be32(2);
  lab.insert(lab.end(), n.begin(), n.end());
  lab.push_back(1);
  lab.push_back(12);
  write_gz(tmp_path("badlabel.gz"), lab);
  CHECK_THROWS_WITH_AS(data::read_idx_labels(tmp_path("badlabel.gz")),
                       doctest::Contains("label 12 of item 1 is not a class in [0, 10)"), datanas::error);
  // Headers announcing far more than the file holds are refused before anything is allocated
  // (found by fuzzing: 17 bytes claiming 2^32 - 1 images of 4096 x 4096 asked for terabytes).
  write_raw(tmp_path("huge.raw"), image_file(0xffffffffu, 4096, 4096, 1));
  CHECK_THROWS_WITH_AS(
      data::read_idx_images(tmp_path("huge.raw")),
      doctest::Contains("the header announces 72057594021150720 bytes of pixels but the "
                        "file (17 bytes) cannot hold them"),
      datanas::error);
  write_gz(tmp_path("huge.gz"), image_file(1u << 20, 64, 64, 1));
  CHECK_THROWS_WITH_AS(data::read_idx_images(tmp_path("huge.gz")),
                       doctest::Contains("bytes of pixels but the gzip file"), datanas::error);
  write_raw(tmp_path("short.raw"), image_file(3, 2, 2, 11));  // a plain file one byte short
  CHECK_THROWS_WITH_AS(
      data::read_idx_images(tmp_path("short.raw")),
      doctest::Contains("the header announces 12 bytes of pixels but the file (27 bytes)"),
      datanas::error);
  std::vector<unsigned char> many = be32(0x801);
  const auto big = be32((1u << 28) - 1);
  many.insert(many.end(), big.begin(), big.end());
  many.push_back(1);
  write_raw(tmp_path("many.raw"), many);
  CHECK_THROWS_WITH_AS(data::read_idx_labels(tmp_path("many.raw")),
                       doctest::Contains("the header announces 268435455 bytes of labels"),
                       datanas::error);
  CHECK_THROWS_WITH_AS(data::FashionMnist::load(tmp_path("no-such-dir")),
                       doctest::Contains("does not exist"), datanas::error);
}

TEST_CASE("shuffled_indices is a reproducible permutation; gather_batch normalises") {
  PhiloxGenerator g1(4), g2(4);
  auto a = data::shuffled_indices(100, g1), b = data::shuffled_indices(100, g2);
  CHECK(a == b);
  auto sorted = a;
  std::sort(sorted.begin(), sorted.end());
  for (index_t i = 0; i < 100; ++i) CHECK(sorted[std::size_t(i)] == i);
  CHECK(a != sorted);

  data::LabelledImages src{Tensor<float>::from({2, 1, 1, 2}, {0.0f, 1.0f, 0.5f, 0.25f}),
                           Tensor<std::int32_t>::from({2}, {7, 2})};
  auto x = Tensor<float>::empty({1, 1, 1, 2});
  auto y = Tensor<std::int32_t>::empty({1});
  const index_t rows[] = {1};
  data::gather_batch<float>(src, rows, 0.5f, 0.25f, x, y);
  CHECK(x[0] == doctest::Approx(0.0f));
  CHECK(x[1] == doctest::Approx(-1.0f));
  CHECK(y[0] == 2);
}
}
