// datanas/cuda/philox.cuh - device-side counter-based random numbers.
//
// The same functions as the CPU (datanas/core/random.hpp is host/device under nvcc), so for a
// given (seed, counter) the GPU draws bit-identical 32-bit numbers; the Gumbel and EGS kernels
// of the CUDA backend build on these.
#pragma once

#include <cstdint>

#include "datanas/core/random.hpp"
#include "datanas/cuda/check.cuh"
#include "datanas/cuda/launch.cuh"

namespace datanas::cuda {

/// out[i] = f(word i of the stream starting at counter `base`), i < n; one thread per counter
/// (four words), exactly as the CPU's PhiloxGenerator::bits_at numbers them.
template <class F>
__global__ void philox_kernel(std::uint64_t seed, std::uint64_t base, std::int64_t n, float* out, F f) {
  const std::int64_t block = std::int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (block * 4 >= n) return;
  const Philox4x32 r = philox4x32(base + std::uint64_t(block), 0, seed);
  for (int j = 0; j < 4 && block * 4 + j < n; ++j) out[block * 4 + j] = f(r.v[j]);
}

/// Uniforms in (0, 1) (uniform_open01).
struct UniformTransform {
  __device__ float operator()(std::uint32_t bits) const { return uniform_open01(bits); }
};
/// Gumbel(0, 1) samples (gumbel_from_bits).
struct GumbelTransform {
  __device__ float operator()(std::uint32_t bits) const { return gumbel_from_bits(bits); }
};

/// Launches philox_kernel for n numbers on `stream`.
template <class F>
void launch_philox(F f, std::uint64_t seed, std::uint64_t base, std::int64_t n, float* out,
                   cudaStream_t stream = nullptr) {
  if (n <= 0) return;  // an empty grid is an invalid launch
  const std::int64_t blocks = (n + 3) / 4;
  constexpr int kThreads = 256;
  cuda::launch(philox_kernel<F>, unsigned((blocks + kThreads - 1) / kThreads), kThreads, stream,
               seed, base, n, out, f);
}

}  // namespace datanas::cuda
