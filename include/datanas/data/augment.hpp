// datanas/data/augment.hpp - batch augmentation into preallocated tensors: DARTS' CIFAR
// training transform (RandomCrop(32, padding=4), RandomHorizontalFlip, Normalize, Cutout) and
// the evaluation gather (Normalize only).
//
// All randomness comes from a PhiloxGenerator: each call reserves one counter block per image
// and image b draws from block (base + b) only, so a batch is a pure function of the generator
// state (seed, offset) whatever the thread count, and a resumed run draws the same numbers.
// Nothing here allocates.
#pragma once

#include <algorithm>
#include <cstdint>
#include <span>

#include "datanas/core/random.hpp"
#include "datanas/core/tensor.hpp"
#include "datanas/data/idx.hpp"
#include "datanas/ops/cpu/common.hpp"

namespace datanas::data {

/// Per-channel normalisation v -> (v - mean[c]) / std[c]; both spans have one value per channel
/// (e.g. Cifar10::kMean / Cifar10::kStd).
struct ChannelNorm {
  std::span<const float> mean;
  std::span<const float> std;
};

/// The random choices for one image of random_crop_flip: the crop's top-left corner (dy, dx)
/// in the padded image, each in [0, 2 * pad], and whether the crop is mirrored.
struct CropDraw {
  int dy = 0, dx = 0;
  bool flip = false;
};

/// The random choices for one image of cutout: the square's centre (cy, cx) in [0, H) x [0, W).
struct CutoutDraw {
  int cy = 0, cx = 0;
};

namespace augment_detail {
/// Uniform integer in [0, n) from 32 random bits by multiply-shift (bias below n / 2^32).
inline int uniform_below(std::uint32_t bits, int n) {
  return int((std::uint64_t(bits) * std::uint64_t(n)) >> 32);
}

template <class T>
void check_batch(const char* what, const LabelledImages& src, std::span<const index_t> rows,
                 const ChannelNorm& norm, const Tensor<T>& x, const Tensor<std::int32_t>& y) {
  const Shape& s = src.images.shape();
  DATANAS_CHECK(s.rank() == 4, what, ": source images must be [N, C, H, W], got ", s.str());
  const Shape want{index_t(rows.size()), s.c(), s.h(), s.w()};
  DATANAS_CHECK(x.shape() == want && y.numel() == index_t(rows.size()), what, ": batch tensors ",
                x.shape().str(), " / ", y.shape().str(), " do not fit ", rows.size(),
                " samples of ", s.str(), " (expected ", want.str(), ")");
  DATANAS_CHECK(index_t(norm.mean.size()) == s.c() && index_t(norm.std.size()) == s.c(), what, ": ",
                norm.mean.size(), " means and ", norm.std.size(), " standard deviations for ",
                s.c(), " channels");
  for (index_t r : rows)
    DATANAS_CHECK(r >= 0 && r < src.size(), what, ": sample ", r, " out of range [0, ", src.size(),
                  ")");
}
}  // namespace augment_detail

/// Evaluation gather: x[b] = normalise(src.images[rows[b]]), y[b] = src.labels[rows[b]].
/// x is [B, C, H, W] with B = rows.size() and C, H, W those of the source; y is [B].
/// The per-channel generalisation of gather_batch (batch.hpp); no randomness.
template <class T>
void gather_normalized(const LabelledImages& src, std::span<const index_t> rows,
                       const ChannelNorm& norm, const Tensor<T>& x, const Tensor<std::int32_t>& y) {
  augment_detail::check_batch("gather_normalized", src, rows, norm, x, y);
  const index_t C = src.images.dim(1), plane = src.images.dim(2) * src.images.dim(3);
  cpu::parallel_for(index_t(rows.size()), C * plane, [&](index_t b) {
    const index_t r = rows[std::size_t(b)];
    for (index_t c = 0; c < C; ++c) {
      const float m = norm.mean[std::size_t(c)], inv = 1.0f / norm.std[std::size_t(c)];
      const float* s = src.images.data() + (r * C + c) * plane;
      T* d = x.data() + (b * C + c) * plane;
      for (index_t i = 0; i < plane; ++i) d[i] = T((s[i] - m) * inv);
    }
    y.data()[b] = src.labels.data()[r];
  });
}

/// Training gather with torchvision's RandomCrop(H, padding=pad) + RandomHorizontalFlip(0.5),
/// then per-channel normalisation:
///   padded = src zero-padded by `pad` on every side, (H + 2 pad) x (W + 2 pad);
///   crop[h][w] = padded[dy + h][dx + w], dy, dx uniform in [0, 2 pad];
///   out[h][w] = crop[h][W - 1 - w] when flipped (probability 1/2), else crop[h][w];
///   x[b][c] = (out - mean[c]) / std[c]   (padding zeros become -mean/std, as in torchvision).
/// x [B, C, H, W], y [B] as for gather_normalized. Consumes B counter blocks of `gen`.
/// If `draws` is not empty (size B), the choices made are written there (tests, logging).
template <class T>
void random_crop_flip(const LabelledImages& src, std::span<const index_t> rows, int pad,
                      const ChannelNorm& norm, PhiloxGenerator& gen, const Tensor<T>& x,
                      const Tensor<std::int32_t>& y, std::span<CropDraw> draws = {}) {
  augment_detail::check_batch("random_crop_flip", src, rows, norm, x, y);
  DATANAS_CHECK(pad >= 0, "random_crop_flip: padding must be >= 0, got ", pad);
  DATANAS_CHECK(draws.empty() || draws.size() == rows.size(), "random_crop_flip: ", draws.size(),
                " draw slots for ", rows.size(), " samples");
  const index_t B = index_t(rows.size()), C = src.images.dim(1), H = src.images.dim(2),
                W = src.images.dim(3);
  const std::uint64_t base = gen.reserve(4 * std::uint64_t(B));
  cpu::parallel_for(B, C * H * W, [&](index_t b) {
    const Philox4x32 bits = philox4x32(base + std::uint64_t(b), 0, gen.seed());
    CropDraw d;
    d.dy = augment_detail::uniform_below(bits.v[0], 2 * pad + 1);
    d.dx = augment_detail::uniform_below(bits.v[1], 2 * pad + 1);
    d.flip = (bits.v[2] >> 31) != 0;
    if (!draws.empty()) draws[std::size_t(b)] = d;
    // Source row/column of output (h, w) before the flip: h + dy - pad, w + dx - pad.
    const index_t oy = d.dy - pad, ox = d.dx - pad;
    const index_t r = rows[std::size_t(b)];
    for (index_t c = 0; c < C; ++c) {
      const float m = norm.mean[std::size_t(c)], inv = 1.0f / norm.std[std::size_t(c)];
      const T fill = T((0.0f - m) * inv);
      const float* s = src.images.data() + (r * C + c) * H * W;
      T* dst = x.data() + (b * C + c) * H * W;
      for (index_t h = 0; h < H; ++h) {
        T* out = dst + h * W;
        const index_t sh = h + oy;
        if (sh < 0 || sh >= H) {
          std::fill_n(out, W, fill);
          continue;
        }
        const float* in = s + sh * W;
        // Columns w with 0 <= w + ox < W come from the image, the rest from the padding.
        const index_t w0 = std::max<index_t>(0, -ox), w1 = std::min<index_t>(W, W - ox);
        for (index_t w = 0; w < W; ++w) {
          const index_t ow = d.flip ? W - 1 - w : w;  // crop column shown at output column w
          out[w] = (ow >= w0 && ow < w1) ? T((in[ow + ox] - m) * inv) : fill;
        }
      }
    }
    y.data()[b] = src.labels.data()[r];
  });
}

/// DARTS' Cutout on a normalised batch x [N, C, H, W], in place: for each image, a centre
/// (cy, cx) uniform over the pixels and the square [cy - length/2, cy + length/2) x
/// [cx - length/2, cx + length/2) (integer division, as DARTS' np.clip code), clipped at the
/// borders, is set to 0 on every channel. Applied after normalisation, so 0 is the mean colour.
/// Consumes N counter blocks of `gen`; `draws` (empty or size N) receives the centres.
template <class T>
void cutout(const Tensor<T>& x, int length, PhiloxGenerator& gen,
            std::span<CutoutDraw> draws = {}) {
  DATANAS_CHECK(x.rank() == 4, "cutout: expected [N, C, H, W], got ", x.shape().str());
  DATANAS_CHECK(length >= 0, "cutout: length must be >= 0, got ", length);
  const index_t N = x.dim(0), C = x.dim(1), H = x.dim(2), W = x.dim(3);
  DATANAS_CHECK(draws.empty() || index_t(draws.size()) == N, "cutout: ", draws.size(),
                " draw slots for ", N, " images");
  const std::uint64_t base = gen.reserve(4 * std::uint64_t(N));
  const index_t half = length / 2;
  cpu::parallel_for(N, C * half * half * 4 + 1, [&](index_t n) {
    const Philox4x32 bits = philox4x32(base + std::uint64_t(n), 0, gen.seed());
    CutoutDraw d;
    d.cy = augment_detail::uniform_below(bits.v[0], int(H));
    d.cx = augment_detail::uniform_below(bits.v[1], int(W));
    if (!draws.empty()) draws[std::size_t(n)] = d;
    const index_t y0 = std::clamp<index_t>(d.cy - half, 0, H),
                  y1 = std::clamp<index_t>(d.cy + half, 0, H);
    const index_t x0 = std::clamp<index_t>(d.cx - half, 0, W),
                  x1 = std::clamp<index_t>(d.cx + half, 0, W);
    for (index_t c = 0; c < C; ++c)
      for (index_t h = y0; h < y1; ++h)
        std::fill_n(x.data() + ((n * C + c) * H + h) * W + x0, x1 - x0, T(0));
  });
}

}  // namespace datanas::data
