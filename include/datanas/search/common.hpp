// datanas/search/common.hpp - vocabulary shared by estimators, derivation and search.
#pragma once

namespace datanas::search {

/// How alpha becomes probabilities p (ALGORITHMS.md §2.1 step 1): softmax(alpha) (default), or
/// relu(alpha) / sum(relu(alpha)) as the DATA authors' code does.
enum class Normalize { kSoftmax, kRelu };

/// The categorical groups the estimators sample from: one per edge over its K ops, or one per
/// intermediate node over all (incoming edge, op) pairs of the node (DATA's default).
enum class Granularity { kEdge, kNode };

}  // namespace datanas::search
