// main() of the GPU tests: exits 77 (Meson's "skipped") when no CUDA device is present, so CI
// on machines without a GPU stays green while still compiling and linking all CUDA code.
#define DOCTEST_CONFIG_IMPLEMENT
#include <doctest/doctest.h>

#include <cstdio>

#include "datanas/core/cuda.hpp"
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
  doctest::Context ctx(argc, argv);
  return ctx.run();
}
