// datanas/cuda/philox.cuh - device-side counter-based random numbers.
//
// The same functions as the CPU (datanas/core/random.hpp is host/device under nvcc), so for a
// given (seed, counter) the GPU draws bit-identical 32-bit numbers; the Gumbel and EGS kernels
// of the CUDA backend build on these.
#pragma once

#include <cstdint>

#include "datanas/core/random.hpp"
#include "datanas/cuda/check.cuh"

namespace datanas::cuda {

/// out[i] = uniform_open01(word i of the stream starting at counter `base`), i < n.
__global__ void philox_uniform_kernel(std::uint64_t seed, std::uint64_t base, std::int64_t n,
                                      float* out) {
  const std::int64_t block = std::int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (block * 4 >= n) return;
  const Philox4x32 r = philox4x32(base + std::uint64_t(block), 0, seed);
  for (int j = 0; j < 4 && block * 4 + j < n; ++j) out[block * 4 + j] = uniform_open01(r.v[j]);
}

/// out[i] = Gumbel(0, 1) sample from word i of the stream starting at counter `base`.
__global__ void philox_gumbel_kernel(std::uint64_t seed, std::uint64_t base, std::int64_t n,
                                     float* out) {
  const std::int64_t block = std::int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (block * 4 >= n) return;
  const Philox4x32 r = philox4x32(base + std::uint64_t(block), 0, seed);
  for (int j = 0; j < 4 && block * 4 + j < n; ++j) out[block * 4 + j] = gumbel_from_bits(r.v[j]);
}

/// Launches one of the kernels above for n numbers on `stream`.
template <class Kernel>
void launch_philox(Kernel k, std::uint64_t seed, std::uint64_t base, std::int64_t n, float* out,
                   cudaStream_t stream = nullptr) {
  const std::int64_t blocks = (n + 3) / 4;
  constexpr int kThreads = 256;
  k<<<unsigned((blocks + kThreads - 1) / kThreads), kThreads, 0, stream>>>(seed, base, n, out);
  DATANAS_CUDA_CHECK(cudaGetLastError());
}

}  // namespace datanas::cuda
