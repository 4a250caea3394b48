// datanas/cuda/estimators.hpp - declarations of the fused estimator launchers (estimators.cuh)
// for host code compiled by the C++ compiler; the datanas_cuda library instantiates them for
// float and double (kernels/src/estimators.cu). See elementwise.hpp for why the split.
#pragma once

#include <cuda_runtime_api.h>

#include "datanas/core/error.hpp"
#include "datanas/cuda/estimator_params.hpp"

namespace datanas::cuda {

/// Threads per block: one per EGS draw (M <= 64), the rest of the time they share elementwise work.
inline constexpr int kEstimatorThreads = 64;
/// Longest group a block handles (the backward keeps dL/dlog p of a group in shared memory).
inline constexpr int kEstimatorMaxGroup = 512;

/// Throws datanas::error when the kernels cannot run `p` (the CPU op's checks, plus the block limits).
inline void check_estimator_params(const EstimatorParams& p) {
  DATANAS_CHECK(p.nodes >= 1 && p.ops >= 1 && p.first_inputs >= 1, "cuda estimator: bad cell layout (",
                p.nodes, " nodes, ", p.ops, " ops, ", p.first_inputs, " first inputs)");
  DATANAS_CHECK(p.tau > 0, "cuda estimator: temperature must be > 0, got ", p.tau);
  const int want = p.kind == EstimatorKind::kSoftmax ? 0 : p.kind == EstimatorKind::kEgs ? p.draws : 1;
  DATANAS_CHECK(p.draws == want, "cuda estimator: ", p.draws, " draws for estimator kind ",
                int(p.kind), " (Softmax 0, Soft/HardGumbel 1, EGS M)");
  DATANAS_CHECK(p.kind != EstimatorKind::kEgs || (p.draws >= 1 && p.draws <= kEstimatorThreads),
                "EGS: M must be in [1, ", kEstimatorThreads, "], got ", p.draws);
  DATANAS_CHECK(p.max_group() <= kEstimatorMaxGroup, "cuda estimator: group of ", p.max_group(),
                " logits exceeds ", kEstimatorMaxGroup);
}

/// Launches the forward for all groups of a cell type on `stream` (asynchronous): alpha [E K] ->
/// w [E K], and the buffer the backward reads (saved_size() elements).
template <class T>
void launch_estimator_forward(const EstimatorParams& p, const T* alpha, T* w, T* saved,
                              cudaStream_t stream);
/// Launches the backward on `stream`: dL/dw -> dL/dalpha (written, or added with `accumulate`).
template <class T>
void launch_estimator_backward(const EstimatorParams& p, const T* alpha, const T* w, const T* saved,
                               const T* gw, T* galpha, bool accumulate, cudaStream_t stream);

}  // namespace datanas::cuda
