// The float and double instantiations of the recurrent-cell launchers
// (datanas/cuda/recurrent.hpp) for the datanas_cuda library, and their host-side check.
#include "datanas/cuda/recurrent.cuh"

namespace datanas::cuda {

void check_highway_terms(const HighwayTerms& terms) {
  DATANAS_CHECK(terms.count >= 1 && terms.count <= kMaxHighwayTerms, "cuda highway: ", terms.count,
                " activations, must be in [1, ", kMaxHighwayTerms, "]");
  for (int k = 0; k < terms.count; ++k)
    DATANAS_CHECK(terms.act[k] >= kRecurrentNone && terms.act[k] <= kRecurrentIdentity,
                  "cuda highway: unknown activation code ", terms.act[k], " for term ", k);
}

#define DATANAS_INSTANTIATE_RECURRENT(T)                                                            \
  template void highway_forward<T>(std::int64_t, std::int64_t, const HighwayTerms&, const T*,        \
                                   std::int64_t, const T*, const T*, T*, cudaStream_t);              \
  template void highway_backward<T>(std::int64_t, std::int64_t, const HighwayTerms&, const T*,       \
                                    std::int64_t, const T*, const T*, const T*,                      \
                                    const HighwayGrads<T>&, T*, cudaStream_t);                       \
  template void zero_if_all_none_forward<T>(std::int64_t, const HighwayTerms&, std::int64_t,         \
                                            const T*, std::int64_t, const T*, T*, cudaStream_t);    \
  template void zero_if_all_none_backward<T>(std::int64_t, const HighwayTerms&, std::int64_t,        \
                                             const T*, std::int64_t, const T*, T*, bool,            \
                                             cudaStream_t);                                         \
  template void mul_mask_forward<T>(std::int64_t, std::int64_t, const T*, const T*, T*, cudaStream_t); \
  template void mul_mask_backward<T>(std::int64_t, std::int64_t, const T*, const T*, T*, bool,       \
                                     cudaStream_t);                                                 \
  template void scale_rows_forward<T>(std::int64_t, std::int64_t, const T*, const T*, T*,           \
                                      cudaStream_t);                                                \
  template void scale_rows_backward<T>(std::int64_t, std::int64_t, const T*, const T*, T*, bool,     \
                                       cudaStream_t);                                               \
  template void concat_cols_forward<T>(std::int64_t, std::int64_t, std::int64_t, const T*, const T*, \
                                       T*, cudaStream_t);                                           \
  template void concat_cols_backward<T>(std::int64_t, std::int64_t, std::int64_t, std::int64_t,      \
                                        const T*, T*, bool, cudaStream_t);                          \
  template void recurrent_store<T>(std::int64_t, const T*, T*, bool, cudaStream_t);                 \
  template void temporal_penalty_forward<T>(std::int64_t, std::int64_t, const T*, T*, T*,           \
                                            cudaStream_t);                                          \
  template void temporal_penalty_backward<T>(std::int64_t, std::int64_t, const T*, const T*, T*,    \
                                             bool, cudaStream_t);

DATANAS_INSTANTIATE_RECURRENT(float)
DATANAS_INSTANTIATE_RECURRENT(double)

}  // namespace datanas::cuda
