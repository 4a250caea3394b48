// datanas/cuda/map.cuh - the grid-stride elementwise launch every kernel family uses: f(i) for
// i in [0, n) on `stream`, with just enough blocks to fill the GPU.
#pragma once

#include <algorithm>
#include <cstdint>

#include "datanas/cuda/check.cuh"
#include "datanas/cuda/launch.cuh"

namespace datanas::cuda {

inline constexpr int kMapThreads = 256;

/// Blocks for a grid-stride loop over n items (at least 1, at most `cap`).
inline unsigned map_blocks(std::int64_t n, std::int64_t cap = 4096) {
  return unsigned(std::clamp<std::int64_t>((n + kMapThreads - 1) / kMapThreads, 1, cap));
}

template <class F>
__global__ void __launch_bounds__(kMapThreads) map_kernel(std::int64_t n, F f) {
  const std::int64_t stride = std::int64_t(gridDim.x) * blockDim.x;
  for (std::int64_t i = std::int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) f(i);
}

/// Queues f(i), i < n, on `stream` (nothing for n <= 0). F is a device functor taken by value.
template <class F>
void launch_map(std::int64_t n, F f, cudaStream_t stream) {
  if (n <= 0) return;
  cuda::launch(map_kernel<F>, map_blocks(n), kMapThreads, stream, n, f);
}

}  // namespace datanas::cuda
