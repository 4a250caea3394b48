// The float and double instantiations of the elementwise launchers (datanas/cuda/elementwise.hpp)
// for the datanas_cuda library.
#include "datanas/cuda/elementwise.cuh"
#include "datanas/cuda/launch.cuh"

namespace datanas::cuda {

#define DATANAS_INSTANTIATE_ELEMENTWISE(T)                                                        \
  template void fill<T>(std::int64_t, T, T*, cudaStream_t);                                       \
  template void add<T>(std::int64_t, const T*, const T*, T*, cudaStream_t);                       \
  template void scale<T>(std::int64_t, T, const T*, T*, cudaStream_t);                            \
  template void store_grad<T>(std::int64_t, T, const T*, T*, bool, cudaStream_t);                 \
  template void indicator_positive<T>(std::int64_t, const T*, T*, cudaStream_t);                  \
  template void relu_forward<T>(std::int64_t, const T*, T*, cudaStream_t);                        \
  template void relu_backward<T>(std::int64_t, const T*, const T*, T*, bool, cudaStream_t);       \
  template void activation_forward<T>(int, std::int64_t, const T*, T*, cudaStream_t);             \
  template void activation_backward<T>(int, std::int64_t, const T*, const T*, T*, bool,           \
                                       cudaStream_t);                                             \
  template void sum<T>(std::int64_t, const T*, T, T*, T*, cudaStream_t);                          \
  template void broadcast_grad<T>(std::int64_t, T, const T*, T*, bool, cudaStream_t);             \
  template void check_weighted_terms<T>(const WeightedTerms<T>&, int);                            \
  template void weighted_sum_forward<T>(std::int64_t, const WeightedTerms<T>&, const T*, int, T*, \
                                        cudaStream_t);                                            \
  template void weighted_sum_backward_x<T>(std::int64_t, const WeightedGrads<T>&, const T*, int,  \
                                           const T*, cudaStream_t);                               \
  template void weighted_sum_backward_w<T>(std::int64_t, const WeightedTerms<T>&, const T*, int,  \
                                           T*, bool, T*, cudaStream_t);                           \
  template void weighted_sum_backward<T>(std::int64_t, const WeightedTerms<T>&,                   \
                                         const WeightedGrads<T>&, const T*, int, const T*, T*,    \
                                         bool, T*, cudaStream_t);

DATANAS_INSTANTIATE_ELEMENTWISE(float)
template void fill<std::int32_t>(std::int64_t, std::int32_t, std::int32_t*, cudaStream_t);
DATANAS_INSTANTIATE_ELEMENTWISE(double)

namespace {
/// One launch's share of store_words: the words travel inside the kernel's parameter block.
struct WordChunk {
  static constexpr int kWords = 64;
  std::uint64_t w[kWords];
  int count;
};
__global__ void store_words_kernel(std::uint64_t* dst, WordChunk chunk) {
  if (int(threadIdx.x) < chunk.count) dst[threadIdx.x] = chunk.w[threadIdx.x];
}
}  // namespace

void store_words(std::uint64_t* dst, const std::uint64_t* words, int count, cudaStream_t stream) {
  for (int first = 0; first < count; first += WordChunk::kWords) {
    WordChunk c{};
    c.count = std::min(WordChunk::kWords, count - first);
    for (int i = 0; i < c.count; ++i) c.w[i] = words[first + i];
    cuda::launch(store_words_kernel, 1, WordChunk::kWords, stream, dst + first, c);
  }
}

}  // namespace datanas::cuda
