// Small tensors whose sizes change from step to step, as a sparse EGS step's temporaries change
// with the ops it sampled: the workload that tells the caching allocator's two ways of serving
// small blocks apart (exact sizes, small segments; core/block_cache.hpp). Shared by the Cpu
// allocator's test (test_core.cpp) and the Cuda one's (gpu/test_cuda_memory.cpp).
#pragma once

#include <doctest/doctest.h>

#include <cstddef>
#include <vector>

#include "datanas/core/tensor.hpp"

namespace datanas::testing {

/// The allocator's system allocations in each of six "steps" that each hold 40 tensors of 64 to
/// 416 floats at once, their sizes shifting with the step (on the current stream, for Cuda).
template <class D>
std::vector<std::size_t> misses_per_varying_step() {
  auto& alloc = CachingAllocator<D>::instance();
  std::vector<std::size_t> misses;
  for (index_t step = 0; step < 6; ++step) {
    const std::size_t at = alloc.stats().system_allocations;
    std::vector<Tensor<float, D>> held;
    for (index_t i = 0; i < 40; ++i)
      held.push_back(Tensor<float, D>::empty({64 + 16 * ((i * 7 + step * 5) % 23)}));
    misses.push_back(alloc.stats().system_allocations - at);
  }
  return misses;
}

/// Exact sizes (starting from an empty cache) miss for every tensor of the first step and again
/// whenever a step brings sizes no earlier one held as often; small segments take one segment
/// at the first step and nothing after.
inline void check_segments_against_exact(const std::vector<std::size_t>& exact,
                                         const std::vector<std::size_t>& carved) {
  CHECK(carved[0] == 1);  // one 2 MiB segment holds them all
  for (std::size_t s = 1; s < carved.size(); ++s) CHECK(carved[s] == 0);
  CHECK(exact[0] == 40);  // one block per tensor held
  std::size_t later = 0;
  for (std::size_t s = 1; s < exact.size(); ++s) later += exact[s];
  CHECK(later > 0);
  MESSAGE("new system blocks per step, exact sizes: ", exact[1], " ", exact[2], " ", exact[3], " ...");
}

}  // namespace datanas::testing
