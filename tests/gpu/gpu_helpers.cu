// Host-callable helpers for the GPU tests (doctest stays out of nvcc translation units).
#include <cuda_runtime.h>

#include <vector>

#include "datanas/cuda/philox.cuh"
#include "gpu_helpers.hpp"

namespace datanas::gpu_test {

int device_count() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) return 0;
  return n;
}

void philox(bool gumbel, std::uint64_t seed, std::uint64_t base, std::int64_t n, float* host_out) {
  float* d = nullptr;
  DATANAS_CUDA_CHECK(cudaMalloc(&d, sizeof(float) * std::size_t(n)));
  // Poison the output so a kernel that skips elements cannot pass.
  DATANAS_CUDA_CHECK(cudaMemset(d, 0xff, sizeof(float) * std::size_t(n)));
  if (gumbel)
    cuda::launch_philox(cuda::GumbelTransform{}, seed, base, n, d);
  else
    cuda::launch_philox(cuda::UniformTransform{}, seed, base, n, d);
  DATANAS_CUDA_CHECK(cudaMemcpy(host_out, d, sizeof(float) * std::size_t(n), cudaMemcpyDeviceToHost));
  DATANAS_CUDA_CHECK(cudaFree(d));
}

}  // namespace datanas::gpu_test
