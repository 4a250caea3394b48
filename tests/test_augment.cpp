// Batch augmentation: hand-checked crops and flips, draw ranges and statistics, cutout's
// clipped square, the evaluation gather, and reproducibility from the generator state.
#include <doctest/doctest.h>

#include <array>
#include <cmath>
#include <cstring>
#include <vector>

#include "datanas/data/augment.hpp"
#include "datanas/data/cifar10.hpp"

using namespace datanas;
using data::ChannelNorm;
using data::CropDraw;
using data::CutoutDraw;

namespace {
const std::array<float, 1> kZero = {0.0f}, kOne = {1.0f};
const ChannelNorm kIdentity{kZero, kOne};
const ChannelNorm kCifarNorm{data::Cifar10::kMean, data::Cifar10::kStd};

/// One 1x4x4 image holding 1..16 row-major, label 3.
data::LabelledImages four_by_four() {
  std::vector<float> v(16);
  for (int i = 0; i < 16; ++i) v[std::size_t(i)] = float(i + 1);
  return {Tensor<float>::from({1, 1, 4, 4}, std::span<const float>(v)),
          Tensor<std::int32_t>::from({1}, {3})};
}

/// `n` images [n, c, h, w] of distinct pseudo-random values in [0, 1], labels i % 10.
data::LabelledImages random_images(index_t n, index_t c, index_t h, index_t w) {
  data::LabelledImages s{Tensor<float>::empty({n, c, h, w}), Tensor<std::int32_t>::empty({n})};
  PhiloxGenerator g(99);
  for (index_t i = 0; i < s.images.numel(); ++i) s.images[i] = g.uniform();
  for (index_t i = 0; i < n; ++i) s.labels[i] = std::int32_t(i % 10);
  return s;
}

/// Finds a generator offset whose first draw for a 1-image batch is `want` (pad 1).
PhiloxGenerator generator_drawing(const CropDraw& want) {
  const auto src = four_by_four();
  auto x = Tensor<float>::empty({1, 1, 4, 4});
  auto y = Tensor<std::int32_t>::empty({1});
  const index_t rows[] = {0};
  for (std::uint64_t off = 0; off < 100000; ++off) {
    PhiloxGenerator g(5, off);
    CropDraw d;
    data::random_crop_flip<float>(src, rows, 1, kIdentity, g, x, y, std::span<CropDraw>(&d, 1));
    if (d.dy == want.dy && d.dx == want.dx && d.flip == want.flip) return PhiloxGenerator(5, off);
  }
  FAIL("no generator offset draws the wanted crop");
  return PhiloxGenerator();
}
}  // namespace

TEST_SUITE("cpu") {
  TEST_CASE("random_crop_flip: hand-checked crops of a 4x4 image padded by 1") {
    const auto src = four_by_four();
    auto x = Tensor<float>::empty({1, 1, 4, 4});
    auto y = Tensor<std::int32_t>::empty({1});
    const index_t rows[] = {0};

    // Corner (0, 2) of the 6x6 padded image: the top row and the right column are padding.
    PhiloxGenerator g = generator_drawing({0, 2, false});
    data::random_crop_flip<float>(src, rows, 1, kIdentity, g, x, y);
    const float a[16] = {0, 0, 0, 0, 2, 3, 4, 0, 6, 7, 8, 0, 10, 11, 12, 0};
    for (int i = 0; i < 16; ++i) CHECK(x[i] == a[i]);
    CHECK(y[0] == 3);

    // Corner (2, 0), mirrored: rows 1..3 and padding below, column -1 ends up on the right.
    g = generator_drawing({2, 0, true});
    data::random_crop_flip<float>(src, rows, 1, kIdentity, g, x, y);
    const float b[16] = {7, 6, 5, 0, 11, 10, 9, 0, 15, 14, 13, 0, 0, 0, 0, 0};
    for (int i = 0; i < 16; ++i) CHECK(x[i] == b[i]);

    // The centre crop without flip is the image itself; normalisation maps padding to -mean/std.
    g = generator_drawing({1, 1, false});
    data::random_crop_flip<float>(src, rows, 1, kIdentity, g, x, y);
    for (int i = 0; i < 16; ++i) CHECK(x[i] == float(i + 1));
    const std::array<float, 1> mean = {2.0f}, sd = {4.0f};
    g = generator_drawing({0, 0, false});
    data::random_crop_flip<float>(src, rows, 1, ChannelNorm{mean, sd}, g, x, y);
    CHECK(x[0] == -0.5f);                   // padding: (0 - 2) / 4
    CHECK(x[5] == (1.0f - 2.0f) / 4.0f);    // output (1, 1) = image (0, 0)
    CHECK(x[15] == (11.0f - 2.0f) / 4.0f);  // output (3, 3) = image (2, 2)
  }

  TEST_CASE("random_crop_flip matches a padded-image reference on CIFAR-shaped batches") {
    const auto src = random_images(20, 3, 32, 32);
    const std::vector<index_t> rows = {4, 0, 19, 7, 7, 12, 3, 15};
    const index_t B = index_t(rows.size());
    auto x = Tensor<float>::empty({B, 3, 32, 32});
    auto y = Tensor<std::int32_t>::empty({B});
    std::vector<CropDraw> draws(rows.size());
    PhiloxGenerator g(17);
    data::random_crop_flip<float>(src, rows, 4, kCifarNorm, g, x, y, draws);
    for (index_t b = 0; b < B; ++b) {
      const CropDraw d = draws[std::size_t(b)];
      CHECK(y[b] == src.labels[rows[std::size_t(b)]]);
      for (index_t c = 0; c < 3; ++c)
        for (index_t h = 0; h < 32; ++h)
          for (index_t w = 0; w < 32; ++w) {
            // torchvision: pad, crop at (dy, dx), then mirror the crop.
            const index_t cw = d.flip ? 31 - w : w;
            const index_t ph = h + d.dy, pw = cw + d.dx;  // in the 40x40 padded image
            const index_t sh = ph - 4, sw = pw - 4;
            const float v = (sh >= 0 && sh < 32 && sw >= 0 && sw < 32)
                                ? src.images(rows[std::size_t(b)], c, sh, sw)
                                : 0.0f;
            const float want =
                (v - data::Cifar10::kMean[std::size_t(c)]) / data::Cifar10::kStd[std::size_t(c)];
            REQUIRE(x(b, c, h, w) == doctest::Approx(want).epsilon(1e-6));
          }
    }
  }

  TEST_CASE(
      "crop offsets stay inside the padded image, are uniform, and flips happen half the time") {
    const auto src = random_images(1, 1, 2, 2);
    const index_t B = 1000;
    const std::vector<index_t> rows(std::size_t(B), 0);
    auto x = Tensor<float>::empty({B, 1, 2, 2});
    auto y = Tensor<std::int32_t>::empty({B});
    std::vector<CropDraw> draws(static_cast<std::size_t>(B));
    PhiloxGenerator g(2024);
    long flips = 0, total = 0, dy_hist[9] = {}, dx_hist[9] = {};
    for (int batch = 0; batch < 20; ++batch) {
      data::random_crop_flip<float>(src, rows, 4, kIdentity, g, x, y, draws);
      for (const CropDraw& d : draws) {
        REQUIRE(d.dy >= 0);
        REQUIRE(d.dy <= 8);
        REQUIRE(d.dx >= 0);
        REQUIRE(d.dx <= 8);
        ++dy_hist[d.dy];
        ++dx_hist[d.dx];
        flips += d.flip;
        ++total;
      }
    }
    // Binomial(20000, 1/2): sd 0.0035; 0.02 is over 5 sd.
    CHECK(std::abs(double(flips) / double(total) - 0.5) < 0.02);
    // Each offset has probability 1/9: expected 2222, sd about 44.
    for (int k = 0; k < 9; ++k) {
      CHECK(std::abs(dy_hist[k] - 2222) < 250);
      CHECK(std::abs(dx_hist[k] - 2222) < 250);
    }
    CHECK(g.offset() == 20 * B);  // one counter block per image
  }

  TEST_CASE("cutout zeroes exactly the clipped square on every channel") {
    const index_t N = 400, C = 2, H = 6, W = 6;
    auto x = Tensor<float>::full({N, C, H, W}, 1.0f);
    std::vector<CutoutDraw> draws(static_cast<std::size_t>(N));
    PhiloxGenerator g(3);
    data::cutout(x, 4, g, std::span<CutoutDraw>(draws));
    bool saw_corner = false;
    for (index_t n = 0; n < N; ++n) {
      const CutoutDraw d = draws[std::size_t(n)];
      REQUIRE(d.cy >= 0);
      REQUIRE(d.cy < H);
      REQUIRE(d.cx >= 0);
      REQUIRE(d.cx < W);
      if (d.cy == 0 && d.cx == 5) {
        // Hand-checked: rows [0 - 2, 0 + 2) -> [0, 2), columns [3, 7) -> [3, 6).
        saw_corner = true;
        for (index_t c = 0; c < C; ++c)
          for (index_t h = 0; h < H; ++h)
            for (index_t w = 0; w < W; ++w)
              CHECK(x(n, c, h, w) == ((h < 2 && w >= 3) ? 0.0f : 1.0f));
      }
      for (index_t c = 0; c < C; ++c)
        for (index_t h = 0; h < H; ++h)
          for (index_t w = 0; w < W; ++w) {
            const bool in = h >= d.cy - 2 && h < d.cy + 2 && w >= d.cx - 2 && w < d.cx + 2;
            REQUIRE(x(n, c, h, w) == (in ? 0.0f : 1.0f));
          }
    }
    CHECK(saw_corner);  // 400 draws over 36 centres: missing one has probability ~1e-16

    // An odd length uses length / 2 on each side, as DARTS: length 3 zeroes a 2x2 square.
    auto one = Tensor<float>::full({1, 1, 8, 8}, 1.0f);
    CutoutDraw d;
    PhiloxGenerator g2(11);
    data::cutout(one, 3, g2, std::span<CutoutDraw>(&d, 1));
    int zeros = 0;
    for (index_t i = 0; i < 64; ++i) zeros += one[i] == 0.0f;
    const int rows = int(std::min(d.cy + 1, 8) - std::max(d.cy - 1, 0));
    const int cols = int(std::min(d.cx + 1, 8) - std::max(d.cx - 1, 0));
    CHECK(zeros == rows * cols);
  }

  TEST_CASE("augmentation is reproducible from the generator state and resumable mid-run") {
    const auto src = random_images(64, 3, 32, 32);
    std::vector<index_t> rows(64);
    for (index_t i = 0; i < 64; ++i) rows[std::size_t(i)] = (i * 37) % 64;
    auto run = [&](PhiloxGenerator& g) {
      auto x = Tensor<float>::empty({64, 3, 32, 32});
      auto y = Tensor<std::int32_t>::empty({64});
      data::random_crop_flip<float>(src, rows, 4, kCifarNorm, g, x, y);
      data::cutout(x, 16, g);
      return x;
    };
    PhiloxGenerator a(7), b(7);
    const auto a1 = run(a), a2 = run(a);
    // b resumes from a checkpointed state: (seed, offset) after the first batch.
    b.set_state(7, 0);
    const auto b1 = run(b);
    PhiloxGenerator resumed(b.seed(), b.offset());
    const auto b2 = run(resumed);
    CHECK(std::memcmp(a1.data(), b1.data(), sizeof(float) * std::size_t(a1.numel())) == 0);
    CHECK(std::memcmp(a2.data(), b2.data(), sizeof(float) * std::size_t(a2.numel())) == 0);
    CHECK(std::memcmp(a1.data(), a2.data(), sizeof(float) * std::size_t(a1.numel())) != 0);
    PhiloxGenerator other(8);
    const auto c1 = run(other);
    CHECK(std::memcmp(a1.data(), c1.data(), sizeof(float) * std::size_t(a1.numel())) != 0);
  }

  TEST_CASE("gather_normalized normalises per channel; shapes are checked") {
    const auto src = random_images(5, 3, 2, 2);
    const index_t rows[] = {4, 1};
    auto x = Tensor<double>::empty({2, 3, 2, 2});
    auto y = Tensor<std::int32_t>::empty({2});
    data::gather_normalized<double>(src, rows, kCifarNorm, x, y);
    for (index_t b = 0; b < 2; ++b) {
      CHECK(y[b] == src.labels[rows[b]]);
      for (index_t c = 0; c < 3; ++c)
        for (index_t i = 0; i < 4; ++i)
          CHECK(x(b, c, i / 2, i % 2) == doctest::Approx((src.images(rows[b], c, i / 2, i % 2) -
                                                          data::Cifar10::kMean[std::size_t(c)]) /
                                                         data::Cifar10::kStd[std::size_t(c)]));
    }
    auto wrong = Tensor<double>::empty({2, 3, 4, 1});
    CHECK_THROWS_WITH_AS(
        data::gather_normalized<double>(src, rows, kCifarNorm, wrong, y),
        doctest::Contains("do not fit 2 samples of [5, 3, 2, 2] (expected [2, 3, 2, 2])"),
        datanas::error);
    CHECK_THROWS_WITH_AS(data::gather_normalized<double>(src, rows, kIdentity, x, y),
                         doctest::Contains("1 means and 1 standard deviations for 3 channels"),
                         datanas::error);
    const index_t bad_rows[] = {4, 5};
    CHECK_THROWS_WITH_AS(data::gather_normalized<double>(src, bad_rows, kCifarNorm, x, y),
                         doctest::Contains("sample 5 out of range [0, 5)"), datanas::error);
    PhiloxGenerator g(1);
    auto xf = Tensor<float>::empty({2, 3, 2, 2});
    CHECK_THROWS_WITH_AS(data::random_crop_flip<float>(src, rows, -1, kCifarNorm, g, xf, y),
                         doctest::Contains("padding must be >= 0"), datanas::error);
  }
}
