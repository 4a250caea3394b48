// The float and double instantiations of the optimiser launchers (datanas/cuda/optim.hpp) for
// the datanas_cuda library.
#include "datanas/cuda/optim.cuh"

namespace datanas::cuda {

#define DATANAS_INSTANTIATE_OPTIM(T)                                                                \
  template void squared_norm<T>(int, T* const*, const std::int64_t*, double*, const NormOutputs<T>&, \
                                cudaStream_t);                                                      \
  template void scale_by_coef<T>(int, T* const*, const std::int64_t*, const double*, cudaStream_t); \
  template void sgd_chunk<T>(const SgdChunk<T>&, cudaStream_t);                                      \
  template void adam_step<T>(std::int64_t, T*, T*, T*, T*, const AdamScalars<T>&, cudaStream_t);    \
  template void asgd_step<T>(std::int64_t, T*, T*, T*, const AsgdScalars<T>&, cudaStream_t);        \
  template void axpby<T>(std::int64_t, T, const T*, T, const T*, const T*, T*, cudaStream_t);       \
  template void scale_by<T>(std::int64_t, T*, const T*, T, cudaStream_t);                           \
  template void norm_ratio<T>(const T*, double, double, T*, cudaStream_t);                          \
  template void reciprocal<T>(const T*, T*, cudaStream_t);                                          \
  template void l1_distance<T>(std::int64_t, const T*, const T*, T, T*, double*, cudaStream_t);     \
  template void l1_distance_backward<T>(std::int64_t, const T*, const T*, const T*, T, T*, bool,    \
                                        cudaStream_t);

DATANAS_INSTANTIATE_OPTIM(float)
DATANAS_INSTANTIATE_OPTIM(double)

}  // namespace datanas::cuda
