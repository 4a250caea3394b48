// The float and double instantiations of the fused estimator launchers
// (datanas/cuda/estimators.hpp) for the datanas_cuda library.
#include "datanas/cuda/estimators.cuh"

namespace datanas::cuda {

#define DATANAS_INSTANTIATE_ESTIMATORS(T)                                                         \
  template void launch_estimator_forward<T>(const EstimatorParams&, const T*, T*, T*, cudaStream_t); \
  template void launch_estimator_backward<T>(const EstimatorParams&, const T*, const T*, const T*, \
                                             const T*, T*, bool, cudaStream_t);

DATANAS_INSTANTIATE_ESTIMATORS(float)
DATANAS_INSTANTIATE_ESTIMATORS(double)

}  // namespace datanas::cuda
