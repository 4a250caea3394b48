// main() of the GPU tests: exits 77 (Meson's "skipped") when no CUDA device is present, so CI
// on machines without a GPU stays green while still compiling and linking all CUDA code.
#define DOCTEST_CONFIG_IMPLEMENT
#include <doctest/doctest.h>

#include <cstdio>

#include "datanas/core/cuda.hpp"
#include "datanas/ops/cuda/dense.hpp"
#include "gpu_helpers.hpp"

int main(int argc, char** argv) {
  if (datanas::gpu_test::device_count() == 0) {
    std::puts("no CUDA device: GPU tests skipped");
    return 77;
  }
  // Every device block starts as NaN: an element an op forgets to write cannot pass a test.
  datanas::CachingAllocator<datanas::Cuda>::instance().set_poison(true);
  // Every small block its own cudaMalloc, reused by exact size: the tests count blocks and bytes
  // that way, and the simulator's guard pages catch a kernel running past a block's end only
  // then. The cases that test small segments (the default) turn them on (parity.hpp).
  datanas::CachingAllocator<datanas::Cuda>::instance().set_small_segments(false);
#if DATANAS_CUDA_SIM
  // The simulated GEMMs use no scratch, but the poisoning above is a memset of every block:
  // with the default workspace (32 MiB, as the simulator reports sm_90) it would take most of
  // the simulated suite's time. 64 KiB here; test_ops_dense.cpp tests the default, and on a GPU
  // every test uses it.
  datanas::cuda::set_cublas_workspace(64 << 10);
#endif
  doctest::Context ctx(argc, argv);
  return ctx.run();
}
