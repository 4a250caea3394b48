// datanas/data/cifar10.hpp - the CIFAR-10 binary version (cifar-10-batches-bin layout):
// data_batch_1.bin ... data_batch_5.bin (training) and test_batch.bin, 10000 records each.
//
// A record is 3073 bytes: one label byte (0..9), then the 1024 red, 1024 green and 1024 blue
// bytes of a 32x32 image, each plane row-major (the first 32 bytes are the top row).
// Every failure names the file and what is wrong: missing directory or file, a size that is not
// a whole number of records or not the expected count, a label outside [0, 10), truncation.
#pragma once

#include <array>
#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <memory>
#include <string>
#include <system_error>
#include <vector>

#include "datanas/core/tensor.hpp"
#include "datanas/data/idx.hpp"

namespace datanas::data {

namespace cifar_detail {
struct FileCloser {
  void operator()(std::FILE* f) const { std::fclose(f); }
};
}  // namespace cifar_detail

/// Reads the first `count` records of the CIFAR-10 binary file `path` into rows
/// [first, first + count) of images [N, 3, 32, 32] (floats in [0, 1]) and labels [N].
///
/// The file must hold exactly `expected_records` records (3073 bytes each); only the first
/// `count` of them are read, so a subset costs only its own I/O.
inline void read_cifar10_records(const std::string& path, index_t expected_records, index_t count,
                                 const Tensor<float>& images, const Tensor<std::int32_t>& labels,
                                 index_t first) {
  constexpr index_t kRecord = 3073, kPlane = 1024;
  DATANAS_ASSERT(count >= 0 && count <= expected_records);
  DATANAS_ASSERT(first + count <= labels.numel());
  std::error_code ec;
  const bool exists = std::filesystem::is_regular_file(path, ec);
  DATANAS_CHECK(exists, "CIFAR-10 file '", path, "' does not exist");
  const auto bytes = std::filesystem::file_size(path, ec);
  DATANAS_CHECK(!ec, "cannot read the size of CIFAR-10 file '", path, "': ", ec.message());
  const auto expected_bytes = std::uintmax_t(expected_records * kRecord);
  DATANAS_CHECK(bytes % kRecord == 0, "CIFAR-10 file '", path, "' has ", bytes,
                " bytes, not a multiple of the 3073-byte record (expected ", expected_bytes,
                " bytes = ", expected_records, " records); is it the binary version?");
  DATANAS_CHECK(bytes == expected_bytes, "CIFAR-10 file '", path, "' holds ", bytes / kRecord,
                " records (", bytes, " bytes), expected ", expected_records, " (", expected_bytes,
                " bytes)");
  if (count == 0) return;

  std::unique_ptr<std::FILE, cifar_detail::FileCloser> f(std::fopen(path.c_str(), "rb"));
  DATANAS_CHECK(f != nullptr, "cannot open CIFAR-10 file '", path, "': ", std::strerror(errno));
  // Chunks of records keep the staging buffer small (about 3 MB) however large `count` is.
  constexpr index_t kChunk = 1000;
  std::vector<unsigned char> buf(std::size_t(std::min(count, kChunk) * kRecord));
  for (index_t r0 = 0; r0 < count; r0 += kChunk) {
    const index_t n = std::min(kChunk, count - r0);
    const std::size_t want = std::size_t(n * kRecord);
    const std::size_t got = std::fread(buf.data(), 1, want, f.get());
    DATANAS_CHECK(got == want, "CIFAR-10 file '", path, "': truncated while reading records ", r0,
                  "..", r0 + n - 1, " (", got, " of ", want, " bytes at byte ", r0 * kRecord, ")");
    for (index_t r = 0; r < n; ++r) {
      const unsigned char* rec = buf.data() + r * kRecord;
      DATANAS_CHECK(rec[0] <= 9, "CIFAR-10 file '", path, "': label ", int(rec[0]), " of record ",
                    r0 + r, " is not a class in [0, 10)");
      const index_t row = first + r0 + r;
      labels.data()[row] = rec[0];
      float* dst = images.data() + row * 3 * kPlane;
      // A true division, as torchvision's ToTensor (x / 255), so that pixels are bit-identical
      // to PyTorch's (multiplying by 1/255 differs in the last bit for some values).
      for (index_t i = 0; i < 3 * kPlane; ++i) dst[i] = float(rec[1 + i]) / 255.0f;
    }
  }
}

/// CIFAR-10 train (50000) and test (10000) splits: images [N, 3, 32, 32] float in [0, 1]
/// (channels R, G, B), labels int32 [N] in [0, 10).
struct Cifar10 {
  LabelledImages train, test;

  static constexpr index_t kRecordBytes = 3073;
  static constexpr index_t kRecordsPerFile = 10000;
  static constexpr int kTrainFiles = 5;
  static constexpr index_t kChannels = 3, kHeight = 32, kWidth = 32;
  static constexpr std::array<const char*, 10> kClassNames = {
      "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"};
  /// Per-channel (R, G, B) mean and standard deviation of the training images, as used by
  /// DARTS and most CIFAR-10 code (the standard deviation is the per-pixel one, 0.2470..., not
  /// the 0.2023 that some code copies).
  static constexpr std::array<float, 3> kMean = {0.4914f, 0.4822f, 0.4465f};
  static constexpr std::array<float, 3> kStd = {0.2470f, 0.2435f, 0.2616f};

  struct Options {
    /// Load only the first `train_limit` training records (in file order: data_batch_1 first);
    /// < 0 loads all 50000. Files past the last needed one are not opened.
    index_t train_limit = -1;
    /// Same for the test split; < 0 loads all 10000.
    index_t test_limit = -1;
    /// Records each file must hold (10000 in the real data; tests write smaller files).
    index_t records_per_file = kRecordsPerFile;
  };

  /// Both splits from `dir` (data_batch_1..5.bin, test_batch.bin).
  static Cifar10 load(const std::string& dir) { return load(dir, Options{}); }

  static Cifar10 load(const std::string& dir, const Options& opt) {
    DATANAS_CHECK(std::filesystem::is_directory(dir), "CIFAR-10 directory '", dir,
                  "' does not exist (pass the folder holding data_batch_1.bin ... test_batch.bin "
                  "with --data-dir)");
    DATANAS_CHECK(opt.records_per_file > 0, "Cifar10::load: records_per_file must be > 0, got ",
                  opt.records_per_file);
    const index_t per = opt.records_per_file;
    const index_t train_all = kTrainFiles * per;
    const index_t n_train = opt.train_limit < 0 ? train_all : opt.train_limit;
    const index_t n_test = opt.test_limit < 0 ? per : opt.test_limit;
    DATANAS_CHECK(n_train <= train_all, "Cifar10::load: asked for ", n_train,
                  " training records, the training split has ", train_all);
    DATANAS_CHECK(n_test <= per, "Cifar10::load: asked for ", n_test,
                  " test records, the test split has ", per);

    Cifar10 ds;
    ds.train = make_split(n_train);
    ds.test = make_split(n_test);
    for (int b = 0; b < kTrainFiles; ++b) {
      const index_t first = b * per;
      if (first >= n_train && n_train > 0) break;
      // With n_train == 0 the first file is still checked, so a wrong directory fails early.
      read_cifar10_records(dir + "/data_batch_" + std::to_string(b + 1) + ".bin", per,
                           std::max<index_t>(0, std::min(per, n_train - first)), ds.train.images,
                           ds.train.labels, first);
      if (n_train == 0) break;
    }
    read_cifar10_records(dir + "/test_batch.bin", per, n_test, ds.test.images, ds.test.labels, 0);
    return ds;
  }

 private:
  static LabelledImages make_split(index_t n) {
    return {Tensor<float>::empty({n, kChannels, kHeight, kWidth}),
            Tensor<std::int32_t>::empty({n})};
  }
};

}  // namespace datanas::data
