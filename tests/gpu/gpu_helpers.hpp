// Declarations of the host-callable GPU test helpers (defined in gpu_helpers.cu).
#pragma once

#include <cstdint>

namespace datanas::gpu_test {
/// Number of usable CUDA devices (0 when there is no driver or device).
int device_count();
/// Fills host_out[0..n) with Philox uniforms (or Gumbel samples) drawn on the GPU.
void philox(bool gumbel, std::uint64_t seed, std::uint64_t base, std::int64_t n, float* host_out);
}  // namespace datanas::gpu_test
