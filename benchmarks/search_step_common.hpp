// benchmarks/search_step_common.hpp - what the CPU and GPU search-step benchmarks share: the DARTS
// search space, the sizes (C = 16, 8 cells, batch 64, CIFAR-10 images) and the synthetic data.
#pragma once

#include <algorithm>
#include <cstdint>

#include "datanas/core/random.hpp"
#include "datanas/data/idx.hpp"
#include "datanas/spaces/supernet.hpp"

namespace datanas::bench {

inline constexpr index_t kBatch = 64;
inline constexpr index_t kImages = 4 * kBatch;  // two batches per half
inline constexpr index_t kDartsParams = 1930618;
inline constexpr float kMean[] = {0.5f, 0.5f, 0.5f}, kStd[] = {0.29f, 0.29f, 0.29f};

template <class E, search::Granularity G>
using DartsSpace = spaces::SearchSpace<spaces::DartsOps, 4, 4, E, G>;

/// Uniform random images [images, 3, side, side] in [0, 1) and labels in [0, 10), fixed seed
/// (the defaults: the benchmark's CIFAR-10 sizes).
inline data::LabelledImages synthetic_cifar(index_t images = kImages, index_t side = 32) {
  PhiloxGenerator g(20261128);
  auto x = Tensor<float>::empty({images, 3, side, side});
  auto y = Tensor<std::int32_t>::empty({images});
  for (index_t i = 0; i < x.numel(); ++i) x[i] = float(g.uniform());
  for (index_t i = 0; i < images; ++i) y[i] = std::int32_t(std::min(9.0, g.uniform() * 10.0));
  return {x, y};
}

}  // namespace datanas::bench
