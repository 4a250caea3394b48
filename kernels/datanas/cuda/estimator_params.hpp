// datanas/cuda/estimator_params.hpp - what one launch of the fused estimator kernels
// (estimators.cuh) computes: the cell type's group layout, the estimator, and where its Gumbel
// noise comes from.
//
// Plain C++ with host/device members (no device code), so that host code compiled by the C++
// compiler can build and check the parameters and nvcc kernels can read them by value. It mirrors
// estimators::GroupLayout and estimators::mixing_weights (datanas/estimators/estimators.hpp),
// which cannot be included in nvcc translation units because they pull in Eigen.
#pragma once

#include <cstdint>

#include "datanas/core/random.hpp"

namespace datanas::cuda {

/// The estimator of ALGORITHMS.md §2; same order and values as estimators::Kind.
enum class EstimatorKind : int { kSoftmax = 0, kSoftGumbel = 1, kHardGumbel = 2, kEgs = 3 };

/// The groups of a cell type's alpha [E, K] are contiguous ranges of its flat index f = e * K + k:
/// per edge, group e is row e; per node, group i is node i's first_inputs + i rows (edges in node
/// order). Stochastic kinds draw the Gumbel noise of draw m for coordinate f from word
/// (m * E * K + f) of the Philox range that starts at counter `base` under key `seed`: exactly
/// the CPU's layout, so both backends sample the same architectures.
struct EstimatorParams {
  EstimatorKind kind = EstimatorKind::kSoftmax;
  int draws = 0;          ///< number of Gumbel draws: 0 (Softmax), 1 (Soft/HardGumbel), M (EGS)
  int nodes = 4;          ///< intermediate nodes of the cell
  int ops = 8;            ///< K, candidate ops per edge
  int first_inputs = 2;   ///< edges of node 0 (2 in the DARTS CNN cell, 1 in the recurrent cell)
  bool per_edge = false;  ///< Granularity::kEdge (else kNode)
  bool relu = false;      ///< Normalize::kRelu (else kSoftmax)
  double tau = 1.0;       ///< Gumbel-softmax temperature
  std::uint64_t seed = 0; ///< Philox key
  std::uint64_t base = 0; ///< first Philox counter of this call's range
  /// In a captured step (StepGraph), the device word holding `base`, written before each replay
  /// so that every replay draws fresh noise; nullptr when the launch runs eagerly.
  const std::uint64_t* base_device = nullptr;

  /// E = sum over i < nodes of (first_inputs + i).
  [[nodiscard]] DATANAS_HD int edges() const { return nodes * first_inputs + nodes * (nodes - 1) / 2; }
  /// Number of groups, one thread block each.
  [[nodiscard]] DATANAS_HD int groups() const { return per_edge ? edges() : nodes; }
  /// E * K, the length of alpha and of the mixing weights w.
  [[nodiscard]] DATANAS_HD std::int64_t total() const { return std::int64_t(edges()) * ops; }
  /// First flat index and length of group g (estimators::GroupLayout::group).
  DATANAS_HD void group(int g, std::int64_t& first, std::int64_t& length) const {
    if (per_edge) {
      first = std::int64_t(g) * ops;
      length = ops;
      return;
    }
    const std::int64_t first_edge = std::int64_t(g) * first_inputs + std::int64_t(g) * (g - 1) / 2;
    first = first_edge * ops;
    length = std::int64_t(first_inputs + g) * ops;
  }
  /// The longest group (the last node's, or one edge).
  [[nodiscard]] DATANAS_HD std::int64_t max_group() const {
    return per_edge ? ops : std::int64_t(first_inputs + nodes - 1) * ops;
  }
  /// Length of the buffer the forward saves for the backward, the CPU's layout:
  /// log p [total] | soft samples y_m [draws * total] | route [total] | sum(b) [groups].
  [[nodiscard]] DATANAS_HD std::int64_t saved_size() const {
    return total() * (draws + 2) + groups();
  }

#if defined(__CUDACC__) || DATANAS_CUDA_SIM  // device code: nvcc, or the host CUDA simulator
  /// This launch's first Philox counter: the kernel argument, or the per-replay device word.
  [[nodiscard]] __device__ std::uint64_t counter_base() const { return base_device ? *base_device : base; }
#endif

  /// Takes this call's noise from `gen` as estimators::mixing_weights does: one range of
  /// draws * E * K numbers, none for Softmax. Host only; advances gen.
  void reserve_noise(PhiloxGenerator& gen) {
    seed = gen.seed();
    base = draws ? gen.reserve(std::uint64_t(draws) * std::uint64_t(total())) : 0;
  }
};

}  // namespace datanas::cuda
