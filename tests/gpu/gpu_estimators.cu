// Host-callable wrappers of the estimator kernels for tests/gpu/test_estimators_gpu.cpp: the only
// place the float instantiations are compiled (doctest stays out of nvcc translation units).
#include "datanas/cuda/estimators.cuh"
#include "gpu_helpers.hpp"

namespace datanas::gpu_test {

void estimator_forward(const cuda::EstimatorParams& p, const float* alpha, float* w, float* saved,
                       cudaStream_t stream) {
  cuda::launch_estimator_forward(p, alpha, w, saved, stream);
}

void estimator_backward(const cuda::EstimatorParams& p, const float* alpha, const float* w,
                        const float* saved, const float* gw, float* galpha, bool accumulate,
                        cudaStream_t stream) {
  cuda::launch_estimator_backward(p, alpha, w, saved, gw, galpha, accumulate, stream);
}

}  // namespace datanas::gpu_test
