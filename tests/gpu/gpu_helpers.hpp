// The GPU tests' access to device code, so that the doctest files stay ordinary C++ and nvcc
// never sees doctest: the philox helper is compiled by nvcc in gpu_helpers.cu; the estimator and
// elementwise wrappers forward to the launchers of the datanas_cuda library (float).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "datanas/core/error.hpp"
#include "datanas/cuda/elementwise.hpp"
#include "datanas/cuda/estimator_params.hpp"
#include "datanas/cuda/estimators.hpp"

namespace datanas::gpu_test {
/// Number of usable CUDA devices (0 when there is no driver or device).
int device_count();
/// Fills host_out[0..n) with Philox uniforms (or Gumbel samples) drawn on the GPU.
void philox(bool gumbel, std::uint64_t seed, std::uint64_t base, std::int64_t n, float* host_out);

inline void estimator_forward(const cuda::EstimatorParams& p, const float* alpha, float* w, float* saved,
                              cudaStream_t stream) {
  cuda::launch_estimator_forward(p, alpha, w, saved, stream);
}
inline void estimator_backward(const cuda::EstimatorParams& p, const float* alpha, const float* w,
                               const float* saved, const float* gw, float* galpha, bool accumulate,
                               cudaStream_t stream) {
  cuda::launch_estimator_backward(p, alpha, w, saved, gw, galpha, accumulate, stream);
}

// The elementwise launchers on float device pointers; see datanas/cuda/elementwise.hpp.
using cuda::add;
using cuda::relu_backward;
using cuda::relu_forward;
using cuda::scale;
using cuda::store_grad;
using cuda::weighted_sum_backward_x;
using cuda::weighted_sum_dw_workspace;

/// xs[t] (device pointers, nullptr for a symbolic zero) and index[t] (host) for t < count.
inline cuda::WeightedTerms<float> terms_of(int count, const float* const* xs, const int* index) {
  DATANAS_CHECK(count >= 0 && count <= cuda::kMaxWeightedTerms, "weighted_sum helper: ", count, " terms");
  cuda::WeightedTerms<float> t;
  t.count = count;
  for (int i = 0; i < count; ++i) {
    t.x[i] = xs[i];
    t.index[i] = index[i];
  }
  return t;
}
inline void weighted_sum_forward(std::int64_t n, int count, const float* const* xs, const int* index,
                                 const float* w, int m, float* y, cudaStream_t stream) {
  cuda::weighted_sum_forward(n, terms_of(count, xs, index), w, m, y, stream);
}
inline void weighted_sum_backward_w(std::int64_t n, int count, const float* const* xs, const int* index,
                                    const float* dy, int m, float* gw, bool accumulate, float* workspace,
                                    cudaStream_t stream) {
  cuda::weighted_sum_backward_w(n, terms_of(count, xs, index), dy, m, gw, accumulate, workspace, stream);
}
inline void weighted_sum_backward(std::int64_t n, int count, const float* const* xs,
                                  const int* index, const cuda::WeightedGrads<float>& grads,
                                  const float* w, int m, const float* dy, float* gw,
                                  bool accumulate, float* workspace, cudaStream_t stream) {
  cuda::weighted_sum_backward(n, terms_of(count, xs, index), grads, w, m, dy, gw, accumulate,
                              workspace, stream);
}
}  // namespace datanas::gpu_test
