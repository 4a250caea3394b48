// Synthetic data shared by the search, training and GPU step tests: a 3-class task a tiny network
// learns in a few steps, no files needed.
#pragma once

#include "datanas/core/random.hpp"
#include "datanas/data/idx.hpp"

namespace datanas::testing {

/// n 1 x 8 x 8 images; image i has class i % 3, which brightens one vertical third of it.
inline data::LabelledImages synthetic_thirds(index_t n, std::uint64_t seed) {
  PhiloxGenerator g(seed);
  auto x = Tensor<float>::empty({n, 1, 8, 8});
  auto y = Tensor<std::int32_t>::empty({n});
  for (index_t i = 0; i < n; ++i) {
    const int c = int(i % 3);
    y[i] = c;
    for (int r = 0; r < 8; ++r)
      for (int q = 0; q < 8; ++q) x(i, 0, r, q) = 0.3f * g.uniform() + ((q * 3 / 8) == c ? 0.6f : 0.0f);
  }
  return {x, y};
}
/// Per-channel normalisation of synthetic_thirds images.
inline constexpr float kThirdsMean[] = {0.45f}, kThirdsStd[] = {0.3f};

}  // namespace datanas::testing
