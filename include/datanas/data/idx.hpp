// datanas/data/idx.hpp - the MNIST IDX format (gzip-compressed or plain), as shipped for
// Fashion-MNIST by Debian's dataset-fashion-mnist in /usr/share/datasets/fashion-mnist.
//
// Every failure names the file and what is wrong: missing, not gzip/IDX, wrong magic,
// truncated, or images and labels that disagree.
#pragma once

#include <zlib.h>

#include <array>
#include <cstdint>
#include <filesystem>
#include <string>

#include "datanas/core/tensor.hpp"

namespace datanas::data {

namespace detail {
/// Reads exactly n bytes or throws, naming the file and the offset.
class GzFile {
 public:
  explicit GzFile(const std::string& path) : path_(path) {
    DATANAS_CHECK(std::filesystem::exists(path), "cannot open '", path, "': no such file");
    f_ = gzopen(path.c_str(), "rb");
    DATANAS_CHECK(f_ != nullptr, "cannot open '", path, "'");
    std::error_code ec;
    file_bytes_ = std::filesystem::file_size(path, ec);
    if (ec) file_bytes_ = kUnknownSize;  // not a regular file (a pipe): no bound
  }
  GzFile(const GzFile&) = delete;
  GzFile& operator=(const GzFile&) = delete;
  ~GzFile() {
    if (f_) gzclose(f_);
  }
  void read(void* dst, std::size_t n, const char* what) {
    auto* p = static_cast<unsigned char*>(dst);
    std::size_t done = 0;
    while (done < n) {
      const unsigned chunk = unsigned(std::min<std::size_t>(n - done, 1u << 30));
      const int got = gzread(f_, p + done, chunk);
      if (got < 0) {
        int errnum = 0;
        const char* msg = gzerror(f_, &errnum);
        throw error(datanas::detail::concat("'", path_, "': corrupt gzip data while reading ", what,
                                            " at byte ", offset_ + done, ": ", msg));
      }
      DATANAS_CHECK(got > 0, "'", path_, "': truncated: expected ", n, " bytes of ", what,
                    " at byte ", offset_, ", file ends after ", done);
      done += std::size_t(got);
    }
    offset_ += n;
  }
  std::uint32_t read_be32(const char* what) {
    unsigned char b[4];
    read(b, 4, what);
    return (std::uint32_t(b[0]) << 24) | (std::uint32_t(b[1]) << 16) | (std::uint32_t(b[2]) << 8) | b[3];
  }
  /// Throws unless `n` more bytes of `what` can come from this file: a header's counts are
  /// checked against the file before they size an allocation (a 17-byte file claiming 2^32
  /// images would otherwise ask for terabytes). A plain file holds exactly what is left of it;
  /// deflate expands at most 1032 to 1 (zlib's technical notes), so a gzip file of S bytes
  /// holds at most 1032 S. Call after the header (gzdirect is known then).
  void check_room(std::uintmax_t n, const char* what) {
    if (file_bytes_ == kUnknownSize) return;
    const bool plain = gzdirect(f_) == 1;
    const std::uintmax_t room =
        plain ? (file_bytes_ > offset_ ? file_bytes_ - offset_ : 0) : file_bytes_ * 1032u;
    DATANAS_CHECK(n <= room, "'", path_, "': the header announces ", n, " bytes of ", what,
                  " but the ", plain ? "file" : "gzip file", " (", file_bytes_,
                  " bytes) cannot hold them: truncated or not this file");
  }
  /// True when nothing follows (trailing garbage means a wrong or damaged file).
  bool at_end() {
    unsigned char c;
    return gzread(f_, &c, 1) == 0;
  }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
  gzFile f_ = nullptr;
  std::size_t offset_ = 0;
  static constexpr std::uintmax_t kUnknownSize = ~std::uintmax_t(0);
  std::uintmax_t file_bytes_ = kUnknownSize;
};
}  // namespace detail

/// Images of an IDX3 file (magic 0x00000803) as [N, 1, rows, cols] floats in [0, 1].
inline Tensor<float> read_idx_images(const std::string& path) {
  detail::GzFile f(path);
  const std::uint32_t magic = f.read_be32("the magic number");
  DATANAS_CHECK(magic == 0x00000803u, "'", path, "': not an IDX image file (magic 0x", std::hex,
                magic, ", expected 0x803)");
  const std::uint32_t n = f.read_be32("the image count"), rows = f.read_be32("the row count"),
                      cols = f.read_be32("the column count");
  DATANAS_CHECK(n > 0 && rows > 0 && cols > 0 && rows <= 4096 && cols <= 4096, "'", path,
                "': implausible header: ", n, " images of ", rows, "x", cols);
  const std::size_t count = std::size_t(n) * rows * cols;
  f.check_room(count, "pixels");
  Tensor<float> out = Tensor<float>::empty({index_t(n), 1, index_t(rows), index_t(cols)});
  // Read the bytes into the tail of the float buffer, then widen front to back in place.
  auto* bytes = reinterpret_cast<unsigned char*>(out.data()) + 3 * count;
  f.read(bytes, count, "pixels");
  DATANAS_CHECK(f.at_end(), "'", path, "': unexpected data after ", n, " images");
  float* dst = out.data();
  for (std::size_t i = 0; i < count; ++i) dst[i] = float(bytes[i]) * (1.0f / 255.0f);
  return out;
}

/// Labels of an IDX1 file (magic 0x00000801) as int32 [N]; every label must be < num_classes.
inline Tensor<std::int32_t> read_idx_labels(const std::string& path, int num_classes = 10) {
  detail::GzFile f(path);
  const std::uint32_t magic = f.read_be32("the magic number");
  DATANAS_CHECK(magic == 0x00000801u, "'", path, "': not an IDX label file (magic 0x", std::hex,
                magic, ", expected 0x801)");
  const std::uint32_t n = f.read_be32("the label count");
  DATANAS_CHECK(n > 0 && n < (1u << 28), "'", path, "': implausible label count ", n);
  f.check_room(n, "labels");
  Tensor<std::int32_t> out = Tensor<std::int32_t>::empty({index_t(n)});
  auto* bytes = reinterpret_cast<unsigned char*>(out.data()) + 3 * std::size_t(n);
  f.read(bytes, n, "labels");
  DATANAS_CHECK(f.at_end(), "'", path, "': unexpected data after ", n, " labels");
  for (std::uint32_t i = 0; i < n; ++i) {
    DATANAS_CHECK(bytes[i] < num_classes, "'", path, "': label ", int(bytes[i]), " of item ", i,
                  " is not a class in [0, ", num_classes, ")");
    out.data()[i] = bytes[i];
  }
  return out;
}

/// An image classification split: images [N, C, H, W] and labels [N].
struct LabelledImages {
  Tensor<float> images;
  Tensor<std::int32_t> labels;
  [[nodiscard]] index_t size() const { return labels.numel(); }
};

/// Fashion-MNIST's train and test splits from `dir` (the four *-ubyte.gz files).
struct FashionMnist {
  LabelledImages train, test;
  static constexpr const char* kDefaultDir = "/usr/share/datasets/fashion-mnist";
  static constexpr std::array<const char*, 10> kClassNames = {
      "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
      "Sandal",      "Shirt",   "Sneaker",  "Bag",   "Ankle boot"};
  // Per-pixel statistics of the training images, for normalisation.
  static constexpr float kMean = 0.2860f, kStd = 0.3530f;

  static FashionMnist load(const std::string& dir = kDefaultDir) {
    DATANAS_CHECK(std::filesystem::is_directory(dir), "Fashion-MNIST directory '", dir,
                  "' does not exist (install Debian's dataset-fashion-mnist or pass --data-dir)");
    auto split = [&](const char* prefix) {
      const std::string base = dir + "/" + prefix;
      LabelledImages s{read_idx_images(base + "-images-idx3-ubyte.gz"),
                       read_idx_labels(base + "-labels-idx1-ubyte.gz")};
      DATANAS_CHECK(s.images.dim(0) == s.labels.numel(), "'", base, "-*': ", s.images.dim(0),
                    " images but ", s.labels.numel(), " labels");
      return s;
    };
    return {split("train"), split("t10k")};
  }
};

}  // namespace datanas::data
