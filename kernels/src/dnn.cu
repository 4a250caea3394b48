// The float and double instantiations of the batch-norm, pooling and depthwise-convolution
// launchers (datanas/cuda/dnn.hpp) for the datanas_cuda library.
#include "datanas/cuda/depthwise.cuh"
#include "datanas/cuda/dnn.cuh"

namespace datanas::cuda {

#define DATANAS_INSTANTIATE_DNN(T)                                                                 \
  template void batchnorm_forward<T>(const BnShape&, const T*, const T*, const T*, T*, T*, bool,   \
                                     double, double, T*, T*, double*, cudaStream_t);               \
  template void batchnorm_backward<T>(const BnShape&, const T*, bool, const T*, const T*,          \
                                      const T*, bool, T*, bool, T*, bool, T*, bool, double*,       \
                                      cudaStream_t);                                               \
  template void max_pool_forward<T>(const PoolShape&, const T*, T*, T*, cudaStream_t);             \
  template void max_pool_backward<T>(const PoolShape&, const T*, const T*, T*, bool,               \
                                     cudaStream_t);                                                \
  template void avg_pool_forward<T>(const PoolShape&, const T*, T*, cudaStream_t);                 \
  template void avg_pool_backward<T>(const PoolShape&, const T*, T*, bool, cudaStream_t);          \
  template void global_avg_pool_forward<T>(std::int64_t, std::int64_t, const T*, T*,               \
                                           cudaStream_t);                                          \
  template void global_avg_pool_backward<T>(std::int64_t, std::int64_t, const T*, T*, bool,        \
                                            cudaStream_t);                                          \
  template void depthwise_forward<T>(const DwShape&, const T*, const T*, const T*, T*,             \
                                     cudaStream_t);                                                \
  template void depthwise_backward_data<T>(const DwShape&, const T*, const T*, T*, bool,           \
                                           cudaStream_t);                                          \
  template void depthwise_backward_filter<T>(const DwShape&, const T*, const T*, T*, bool, T*,     \
                                             bool, double*, cudaStream_t);

DATANAS_INSTANTIATE_DNN(float)
DATANAS_INSTANTIATE_DNN(double)

}  // namespace datanas::cuda
