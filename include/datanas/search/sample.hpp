// datanas/search/sample.hpp - architectures drawn from an estimator's distribution over alpha,
// so users can look at the spread of what a search learned (datanas-derive --sample).
#pragma once

#include <span>
#include <string_view>

#include "datanas/estimators/estimators.hpp"
#include "datanas/search/derive.hpp"

namespace datanas::search {

/// One cell drawn by a hard estimator (HardGumbel: one pair per group; EGS<M>: the OR of M
/// draws): every (edge, op) whose mixing weight is non-zero becomes an (op, input) pair of its
/// node, in edge then op order; none is left out (a node may come out empty). Uses exactly the
/// estimator kernel of the search, so the same (seed, counter) gives the same architecture.
inline CellGenotype sample_cell(const AlphaMatrix& alpha, std::span<const std::string_view> op_names,
                                int nodes, estimators::Kind kind, int M, Normalize normalize,
                                Granularity granularity, PhiloxGenerator& gen) {
  DATANAS_CHECK(kind == estimators::Kind::kHardGumbel || kind == estimators::Kind::kEgs,
                "sample_cell: only hard estimators (gdas, egs) draw discrete architectures");
  const estimators::GroupLayout layout{nodes, alpha.cols, granularity};
  DATANAS_CHECK(alpha.rows == layout.edges() && alpha.cols == int(op_names.size()), "sample_cell: alpha is ",
                alpha.rows, " x ", alpha.cols, ", a cell of ", nodes, " nodes over ", op_names.size(),
                " ops needs ", layout.edges(), " x ", op_names.size());
  NoGradGuard ng;
  Var<double> a(Tensor<double>::from({alpha.rows, alpha.cols}, alpha.logits));
  const auto w = estimators::mixing_weights(kind, M, a, layout, {1.0, normalize}, gen).value();
  CellGenotype cell;
  cell.nodes.resize(std::size_t(nodes));
  for (int i = 0; i < nodes; ++i) {
    for (int j = 0; j < 2 + i; ++j)
      for (int k = 0; k < alpha.cols; ++k)
        if (w[index_t(edge_offset(i) + j) * alpha.cols + k] > 0 && op_names[std::size_t(k)] != "none")
          cell.nodes[std::size_t(i)].push_back({std::string(op_names[std::size_t(k)]), j});
    cell.concat.push_back(i + 2);
  }
  return cell;
}

}  // namespace datanas::search
