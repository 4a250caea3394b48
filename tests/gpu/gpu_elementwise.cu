// Host-callable wrappers of the elementwise kernels for tests/gpu/test_elementwise_gpu.cpp (the
// float instantiations; doctest stays out of nvcc translation units).
#include "datanas/cuda/elementwise.cuh"
#include "gpu_helpers.hpp"

namespace datanas::gpu_test {

namespace {
cuda::WeightedTerms<float> terms_of(int count, const float* const* xs, const int* index) {
  DATANAS_CHECK(count >= 0 && count <= cuda::kMaxWeightedTerms, "weighted_sum helper: ", count, " terms");
  cuda::WeightedTerms<float> t;
  t.count = count;
  for (int i = 0; i < count; ++i) {
    t.x[i] = xs[i];
    t.index[i] = index[i];
  }
  return t;
}
}  // namespace

void add(std::int64_t n, const float* a, const float* b, float* y, cudaStream_t s) { cuda::add(n, a, b, y, s); }
void scale(std::int64_t n, float k, const float* x, float* y, cudaStream_t s) { cuda::scale(n, k, x, y, s); }
void store_grad(std::int64_t n, float k, const float* dy, float* g, bool accumulate, cudaStream_t s) {
  cuda::store_grad(n, k, dy, g, accumulate, s);
}
void relu_forward(std::int64_t n, const float* x, float* y, cudaStream_t s) { cuda::relu_forward(n, x, y, s); }
void relu_backward(std::int64_t n, const float* y, const float* dy, float* g, bool accumulate, cudaStream_t s) {
  cuda::relu_backward(n, y, dy, g, accumulate, s);
}
void weighted_sum_forward(std::int64_t n, int count, const float* const* xs, const int* index, const float* w,
                          int m, float* y, cudaStream_t s) {
  cuda::weighted_sum_forward(n, terms_of(count, xs, index), w, m, y, s);
}
void weighted_sum_backward_x(std::int64_t n, const float* w, int index, const float* dy, float* g,
                             bool accumulate, cudaStream_t s) {
  cuda::weighted_sum_backward_x(n, w, index, dy, g, accumulate, s);
}
std::int64_t weighted_sum_dw_workspace(std::int64_t n, int count) {
  return cuda::weighted_sum_dw_workspace(n, count);
}
void weighted_sum_backward_w(std::int64_t n, int count, const float* const* xs, const int* index,
                             const float* dy, int m, float* gw, bool accumulate, float* workspace,
                             cudaStream_t s) {
  cuda::weighted_sum_backward_w(n, terms_of(count, xs, index), dy, m, gw, accumulate, workspace, s);
}

}  // namespace datanas::gpu_test
