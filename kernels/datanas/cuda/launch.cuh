// datanas/cuda/launch.cuh - the one way the kernels are launched.
//
// launch(kernel, grid, block, stream, args...) queues kernel<<<grid, block, 0, stream>>>(args...)
// and checks the launch. Every launch goes through here so that the same kernel sources also
// build with a host compiler against tests/cudasim (the CUDA simulator the CPU-only CI runs the
// GPU tests on), which cannot parse the triple-chevron syntax.
#pragma once

#include <utility>

#include "datanas/cuda/check.cuh"

namespace datanas::cuda {

/// Queues `kernel` on `stream` with arguments converted to its parameter types, then throws
/// (DATANAS_CUDA_CHECK) if the launch was refused (bad configuration, no device).
template <class... P, class... A>
void launch(void (*kernel)(P...), dim3 grid, dim3 block, cudaStream_t stream, A&&... args) {
  static_assert(sizeof...(P) == sizeof...(A), "launch: wrong number of kernel arguments");
#if DATANAS_CUDA_SIM
  ::cudasim::launch(kernel, grid, block, stream, P(std::forward<A>(args))...);
#else
  kernel<<<grid, block, 0, stream>>>(P(std::forward<A>(args))...);
#endif
  DATANAS_CUDA_CHECK(cudaGetLastError());
}

}  // namespace datanas::cuda
