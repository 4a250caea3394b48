// datanas/data/batch.hpp - batches from an in-memory split: shuffled index order and a gather
// into preallocated tensors (so a training step allocates nothing for its input).
#pragma once

#include <algorithm>
#include <cstring>
#include <numeric>
#include <span>
#include <vector>

#include "datanas/core/random.hpp"
#include "datanas/data/idx.hpp"

namespace datanas::data {

/// The first n samples of a split (a copy; n larger than the split keeps everything).
inline LabelledImages head(const LabelledImages& src, index_t n) {
  if (n <= 0 || n >= src.size()) return src;
  const Shape& s = src.images.shape();
  LabelledImages out{Tensor<float>::empty({n, s.c(), s.h(), s.w()}), Tensor<std::int32_t>::empty({n})};
  std::copy_n(src.images.data(), out.images.numel(), out.images.data());
  std::copy_n(src.labels.data(), n, out.labels.data());
  return out;
}

/// A random permutation of [0, n) drawn from `gen` (Fisher-Yates).
inline std::vector<index_t> shuffled_indices(index_t n, PhiloxGenerator& gen) {
  std::vector<index_t> idx(static_cast<std::size_t>(n));
  std::iota(idx.begin(), idx.end(), index_t(0));
  for (index_t i = n - 1; i > 0; --i) {
    const auto b = gen.next_block();
    const std::uint64_t r = (std::uint64_t(b.v[0]) << 32) | b.v[1];
    std::swap(idx[std::size_t(i)], idx[std::size_t(r % std::uint64_t(i + 1))]);
  }
  return idx;
}

/// Copies samples `rows` of `src` into x [B, C, H, W] (normalised: (v - mean) / std) and y [B].
/// x and y must have batch dimension rows.size().
template <class T>
void gather_batch(const LabelledImages& src, std::span<const index_t> rows, float mean, float std_dev,
                  const Tensor<T>& x, const Tensor<std::int32_t>& y) {
  const index_t per = src.images.numel() / src.images.dim(0);
  DATANAS_CHECK(x.dim(0) == index_t(rows.size()) && x.numel() == per * index_t(rows.size()) &&
                    y.numel() == index_t(rows.size()),
                "gather_batch: batch tensors ", x.shape().str(), " / ", y.shape().str(), " do not fit ",
                rows.size(), " samples of ", per, " values");
  const float inv = 1.0f / std_dev;
  for (std::size_t b = 0; b < rows.size(); ++b) {
    const index_t r = rows[b];
    DATANAS_CHECK(r >= 0 && r < src.size(), "gather_batch: sample ", r, " out of range");
    const float* s = src.images.data() + r * per;
    T* d = x.data() + index_t(b) * per;
    for (index_t i = 0; i < per; ++i) d[i] = T((s[i] - mean) * inv);
    y.data()[b] = src.labels.data()[r];
  }
}

}  // namespace datanas::data
