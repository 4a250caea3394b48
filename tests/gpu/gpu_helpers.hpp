// Declarations of the host-callable GPU test helpers (defined in the .cu files beside this), so
// that the doctest files stay ordinary C++ and nvcc never sees doctest.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "datanas/cuda/estimator_params.hpp"

namespace datanas::gpu_test {
/// Number of usable CUDA devices (0 when there is no driver or device).
int device_count();
/// Fills host_out[0..n) with Philox uniforms (or Gumbel samples) drawn on the GPU.
void philox(bool gumbel, std::uint64_t seed, std::uint64_t base, std::int64_t n, float* host_out);

/// cuda::launch_estimator_forward<float> on device pointers (gpu_estimators.cu).
void estimator_forward(const cuda::EstimatorParams& p, const float* alpha, float* w, float* saved,
                       cudaStream_t stream);
/// cuda::launch_estimator_backward<float> on device pointers (gpu_estimators.cu).
void estimator_backward(const cuda::EstimatorParams& p, const float* alpha, const float* w,
                        const float* saved, const float* gw, float* galpha, bool accumulate,
                        cudaStream_t stream);

// cuda:: elementwise kernels on float device pointers (gpu_elementwise.cu); see elementwise.cuh.
void add(std::int64_t n, const float* a, const float* b, float* y, cudaStream_t stream);
void scale(std::int64_t n, float s, const float* x, float* y, cudaStream_t stream);
void store_grad(std::int64_t n, float s, const float* dy, float* g, bool accumulate, cudaStream_t stream);
void relu_forward(std::int64_t n, const float* x, float* y, cudaStream_t stream);
void relu_backward(std::int64_t n, const float* y, const float* dy, float* g, bool accumulate,
                   cudaStream_t stream);
/// xs[t] (device pointers, nullptr for a symbolic zero) and index[t] (host) for t < count.
void weighted_sum_forward(std::int64_t n, int count, const float* const* xs, const int* index,
                          const float* w, int m, float* y, cudaStream_t stream);
void weighted_sum_backward_x(std::int64_t n, const float* w, int index, const float* dy, float* g,
                             bool accumulate, cudaStream_t stream);
std::int64_t weighted_sum_dw_workspace(std::int64_t n, int count);
void weighted_sum_backward_w(std::int64_t n, int count, const float* const* xs, const int* index,
                             const float* dy, int m, float* gw, bool accumulate, float* workspace,
                             cudaStream_t stream);
}  // namespace datanas::gpu_test
