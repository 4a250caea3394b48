// The float and double instantiations of the dense-family launchers (datanas/cuda/dense.hpp)
// for the datanas_cuda library.
#include "datanas/cuda/dense.cuh"

namespace datanas::cuda {

std::int64_t embedding_backward_workspace(std::int64_t count) {
  DATANAS_CHECK(count >= 0 && count < (std::int64_t(1) << 31), "cuda embedding: ", count,
                " ids, at most 2^31 - 1 are supported");
  using dense_detail::aligned_words;
  const std::int64_t temp = std::int64_t((dense_detail::sort_temp_bytes(int(count)) + 3) / 4);
  return aligned_words(temp) + 3 * aligned_words(count);
}

#define DATANAS_INSTANTIATE_DENSE(T)                                                                \
  template void bias_rows<T>(std::int64_t, std::int64_t, const T*, T*, cudaStream_t);               \
  template void column_sums<T>(std::int64_t, std::int64_t, const T*, T*, bool, cudaStream_t);       \
  template void embedding_forward<T>(std::int64_t, std::int64_t, std::int64_t, const std::int32_t*, \
                                     const T*, T*, cudaStream_t);                                   \
  template void embedding_backward<T>(std::int64_t, std::int64_t, std::int64_t,                     \
                                      const std::int32_t*, const T*, T*, bool, std::int32_t*,       \
                                      cudaStream_t);                                                \
  template void log_softmax_forward<T>(std::int64_t, std::int64_t, const T*, T*, bool,              \
                                       cudaStream_t);                                               \
  template void softmax_backward<T>(std::int64_t, std::int64_t, const T*, const T*, T*, bool,       \
                                    cudaStream_t);                                                  \
  template void log_softmax_backward<T>(std::int64_t, std::int64_t, const T*, const T*, T*, bool,   \
                                        cudaStream_t);                                              \
  template void cross_entropy_forward<T>(std::int64_t, std::int64_t, const T*, const std::int32_t*, \
                                         T*, T*, T*, cudaStream_t);                                 \
  template void cross_entropy_backward<T>(std::int64_t, std::int64_t, const T*,                     \
                                          const std::int32_t*, const T*, const T*, T*, bool,        \
                                          cudaStream_t);                                            \
  template void concat_channels_forward<T>(std::int64_t, std::int64_t, std::int64_t,                \
                                           const ChannelParts<const T*>&, T*, cudaStream_t);        \
  template void concat_channels_backward<T>(std::int64_t, std::int64_t, std::int64_t, const T*,     \
                                            const ChannelParts<T*>&, cudaStream_t);                 \
  template void crop_forward<T>(std::int64_t, std::int64_t, std::int64_t, int, int, const T*, T*,   \
                                cudaStream_t);                                                      \
  template void crop_backward<T>(std::int64_t, std::int64_t, std::int64_t, int, int, const T*, T*,  \
                                 bool, cudaStream_t);                                               \
  template void count_correct<T>(std::int64_t, std::int64_t, const T*, const std::int32_t*,          \
                                 std::int32_t*, cudaStream_t);                                      \
  template void dropout_apply<T>(std::int64_t, std::uint64_t, std::uint64_t, const std::uint64_t*,  \
                                 float, T, const T*, T*, bool, cudaStream_t);                       \
  template void drop_path_apply<T>(std::int64_t, std::int64_t, std::uint64_t, std::uint64_t,        \
                                   const std::uint64_t*, float, T, const T*, T*, bool, cudaStream_t);

DATANAS_INSTANTIATE_DENSE(float)
DATANAS_INSTANTIATE_DENSE(double)

}  // namespace datanas::cuda
