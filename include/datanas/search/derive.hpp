// datanas/search/derive.hpp - deriving the discrete cell from architecture logits alone
// (ALGORITHMS.md §2.2): the DARTS top-2 rule, the GDAS / NAS-Bench-201 argmax rule and the DATA
// most-probable-EGS-code rule, plus the alpha.json file format.
//
// Alpha of one cell type is a row-major (edges x ops) matrix of raw logits. Edges are in node
// order: node i has 2 + i incoming edges, from states 0 .. i + 1, so node i's edges are rows
// edge_offset(i) .. edge_offset(i) + i + 1 and edge j of node i comes from state j. A cell with n
// nodes has n (n + 3) / 2 edges (4 nodes: 14). Columns follow the op-set order (kDartsOps).
#pragma once

#include <algorithm>
#include <cmath>
#include <fstream>
#include <numeric>
#include <span>
#include <sstream>
#include <string>
#include <string_view>
#include <tuple>
#include <vector>

#include "datanas/core/error.hpp"
#include "datanas/io/json.hpp"
#include "datanas/search/common.hpp"
#include "datanas/search/genotype.hpp"

namespace datanas::search {

// Normalize and Granularity are shared with the estimators: datanas/search/common.hpp.
/// Derivation rules of ALGORITHMS.md §2.2.
enum class DeriveRule { kDarts, kArgmax, kData };

/// Raw logits of one cell type, row-major: logits[e * cols + k] is edge e, op k.
struct AlphaMatrix {
  int rows = 0, cols = 0;
  std::vector<double> logits;
  [[nodiscard]] double operator()(int edge, int op) const {
    return logits[std::size_t(edge) * std::size_t(cols) + std::size_t(op)];
  }
  friend bool operator==(const AlphaMatrix&, const AlphaMatrix&) = default;
};

/// Number of edges of a cell with `nodes` intermediate nodes: 2 + 3 + ... + (nodes + 1).
[[nodiscard]] constexpr int edges_for_nodes(int nodes) { return nodes * (nodes + 3) / 2; }
/// Row of node `node`'s first incoming edge: sum over j < node of (2 + j).
[[nodiscard]] constexpr int edge_offset(int node) { return 2 * node + node * (node - 1) / 2; }
/// Inverse of edges_for_nodes; -1 when `edges` is not 2 + 3 + ... + (n + 1) for any n >= 1.
[[nodiscard]] constexpr int nodes_for_edges(int edges) {
  for (int n = 1; edges_for_nodes(n) <= edges; ++n)
    if (edges_for_nodes(n) == edges) return n;
  return -1;
}

namespace detail {

inline int find_op(std::span<const std::string_view> op_names, std::string_view name) {
  const auto it = std::find(op_names.begin(), op_names.end(), name);
  return it == op_names.end() ? -1 : int(it - op_names.begin());
}

inline std::string op_list(std::span<const std::string_view> op_names) {
  std::string s;
  for (const auto& o : op_names) s += (s.empty() ? "" : ", ") + std::string(o);
  return s;
}

// Shape and value checks shared by every rule; returns the node count (inferred when nodes <= 0).
inline int check_alpha(const AlphaMatrix& a, std::span<const std::string_view> op_names,
                       int nodes) {
  DATANAS_CHECK(
      a.rows >= 0 && a.cols >= 0 && a.logits.size() == std::size_t(a.rows) * std::size_t(a.cols),
      "alpha: ", a.logits.size(), " logits for a ", a.rows, " x ", a.cols, " matrix");
  DATANAS_CHECK(a.cols == int(op_names.size()), "alpha has ", a.cols,
                " columns but the op set has ", op_names.size(), " ops (", op_list(op_names), ")");
  DATANAS_CHECK(a.cols >= 1, "alpha: the op set is empty");
  if (nodes <= 0) {
    nodes = nodes_for_edges(a.rows);
    DATANAS_CHECK(nodes >= 1, "alpha has ", a.rows,
                  " edges, which is not 2 + 3 + ... + (n + 1) for any node count n "
                  "(2 nodes: 5 edges, 3: 9, 4: 14, 5: 20)");
  }
  DATANAS_CHECK(a.rows == edges_for_nodes(nodes), "alpha has ", a.rows, " edges but ", nodes,
                " nodes need ", edges_for_nodes(nodes));
  for (int e = 0; e < a.rows; ++e)
    for (int k = 0; k < a.cols; ++k)
      DATANAS_CHECK(std::isfinite(a(e, k)), "alpha edge ", e, ", op ", k, " (",
                    op_names[std::size_t(k)], "): logit ", a(e, k), " is not finite");
  return nodes;
}

// softmax or relu-normalisation of `n` logits into `out`.
inline void normalise(const double* x, int n, Normalize how, double* out) {
  if (how == Normalize::kSoftmax) {
    const double mx = *std::max_element(x, x + n);  // shift: exp never overflows
    double sum = 0;
    for (int k = 0; k < n; ++k) sum += out[k] = std::exp(x[k] - mx);
    for (int k = 0; k < n; ++k) out[k] /= sum;
  } else {
    double sum = 0;
    for (int k = 0; k < n; ++k) sum += out[k] = std::max(x[k], 0.0);
    for (int k = 0; k < n; ++k) out[k] = sum > 0 ? out[k] / sum : 1.0 / n;
  }
}

}  // namespace detail

/// Per-edge softmax of one row of alpha (over all K ops, none included).
[[nodiscard]] inline std::vector<double> edge_softmax(const AlphaMatrix& a, int edge) {
  DATANAS_CHECK(edge >= 0 && edge < a.rows, "edge ", edge, " outside [0, ", a.rows, ")");
  std::vector<double> p(std::size_t(a.cols));
  detail::normalise(&a.logits[std::size_t(edge) * std::size_t(a.cols)], a.cols, Normalize::kSoftmax,
                    p.data());
  return p;
}

/// The probabilities of all (edge, op) pairs of node `node`, summing to 1 over the node, in
/// (edge-major, op) order: index e * K + k is edge e of the node (input state e), op k.
///  - kNode: one distribution over the node's (2 + node) K logits (softmax, or relu / node sum);
///  - kEdge: each edge's own distribution (softmax, or relu / edge sum) divided by the number of
///    edges 2 + node, so that every edge carries the same mass, as the per-edge EGS groups do.
/// relu normalisation falls back to uniform over the group when every logit is <= 0.
[[nodiscard]] inline std::vector<double> node_probabilities(const AlphaMatrix& a, int node,
                                                            Normalize normalize,
                                                            Granularity granularity) {
  DATANAS_CHECK(node >= 0 && edge_offset(node) + node + 2 <= a.rows, "node ", node,
                " needs edges up to ", edge_offset(node) + node + 1, " but alpha has ", a.rows);
  const int edges = node + 2, k = a.cols;
  const double* x = &a.logits[std::size_t(edge_offset(node)) * std::size_t(k)];
  for (int i = 0; i < edges * k; ++i)
    DATANAS_CHECK(std::isfinite(x[i]), "alpha edge ", edge_offset(node) + i / k, ", op ", i % k,
                  ": logit ", x[i], " is not finite");
  std::vector<double> p(std::size_t(edges * k));
  if (granularity == Granularity::kNode) {
    detail::normalise(x, edges * k, normalize, p.data());
  } else {
    for (int e = 0; e < edges; ++e) {
      detail::normalise(x + e * k, k, normalize, p.data() + e * k);
      for (int j = 0; j < k; ++j) p[std::size_t(e * k + j)] /= edges;
    }
  }
  return p;
}

/// P(the set of distinct categories hit by M i.i.d. draws is exactly S), where p_in_set holds
/// the probabilities p_j of S's members (ALGORITHMS.md §2.1):
///   P_M(S) = sum over counts c_j >= 1, sum_j c_j = M, of M! / prod_j c_j! * prod_j p_j^c_j
///          = sum over T subset of S of (-1)^{|S| - |T|} (sum_{j in T} p_j)^M.
/// Computed exactly by the recursion g_k(m) = sum_{c=1..m} C(m, c) p_k^c g_{k-1}(m - c) (sequences
/// of m draws covering the first k members), whose terms are all positive: no cancellation,
/// unlike inclusion-exclusion. 0 when |S| > M; 1 when S is empty and M = 0.
[[nodiscard]] inline double prob_exact_set(std::span<const double> p_in_set, int M) {
  DATANAS_CHECK(M >= 0, "prob_exact_set: M must be >= 0, got ", M);
  for (const double p : p_in_set)
    DATANAS_CHECK(std::isfinite(p) && p >= 0 && p <= 1 + 1e-9, "prob_exact_set: probability ", p,
                  " outside [0, 1]");
  const std::size_t s = p_in_set.size();
  if (s > std::size_t(M)) return 0;
  // binom[m][c] for m <= M
  std::vector<std::vector<double>> binom(std::size_t(M) + 1);
  for (int m = 0; m <= M; ++m) {
    binom[std::size_t(m)].assign(std::size_t(m) + 1, 1.0);
    for (int c = 1; c < m; ++c)
      binom[std::size_t(m)][std::size_t(c)] =
          binom[std::size_t(m - 1)][std::size_t(c - 1)] + binom[std::size_t(m - 1)][std::size_t(c)];
  }
  std::vector<double> g(std::size_t(M) + 1, 0.0), next(std::size_t(M) + 1);
  g[0] = 1;
  for (const double p : p_in_set) {
    std::vector<double> pw(std::size_t(M) + 1, 1.0);
    for (int c = 1; c <= M; ++c) pw[std::size_t(c)] = pw[std::size_t(c - 1)] * p;
    for (int m = 0; m <= M; ++m) {
      double acc = 0;
      for (int c = 1; c <= m; ++c)
        acc += binom[std::size_t(m)][std::size_t(c)] * pw[std::size_t(c)] * g[std::size_t(m - c)];
      next[std::size_t(m)] = acc;
    }
    g.swap(next);
  }
  return g[std::size_t(M)];
}

/// DARTS rule for one cell: for node i, edge j's score is the largest non-none probability of
/// the per-edge softmax over all K ops; keep the 2 best edges (ties: lower edge first; a node with
/// one edge keeps 1), each with its argmax non-none op (ties: lower op index), best edge first.
/// nodes <= 0: inferred from the number of rows.
[[nodiscard]] inline CellGenotype derive_darts(const AlphaMatrix& a,
                                               std::span<const std::string_view> op_names,
                                               int nodes = 0) {
  nodes = detail::check_alpha(a, op_names, nodes);
  const int none = detail::find_op(op_names, "none");
  DATANAS_CHECK(a.cols > (none >= 0 ? 1 : 0), "derive_darts: the op set has no op besides none");
  CellGenotype cell;
  for (int i = 0; i < nodes; ++i) {
    struct Scored {
      int edge, op;
      double score;
    };
    std::vector<Scored> edges;
    for (int e = 0; e < i + 2; ++e) {
      const auto p = edge_softmax(a, edge_offset(i) + e);
      int best = -1;
      for (int k = 0; k < a.cols; ++k)
        if (k != none && (best < 0 || p[std::size_t(k)] > p[std::size_t(best)])) best = k;
      edges.push_back({e, best, p[std::size_t(best)]});
    }
    // Stable: equal scores keep the lower edge first.
    std::stable_sort(edges.begin(), edges.end(),
                     [](const Scored& x, const Scored& y) { return x.score > y.score; });
    std::vector<OpInput> node;
    for (std::size_t r = 0; r < std::min<std::size_t>(2, edges.size()); ++r)
      node.push_back({std::string(op_names[std::size_t(edges[r].op)]), edges[r].edge});
    cell.nodes.push_back(std::move(node));
  }
  cell.concat = default_concat(nodes);
  return cell;
}

/// GDAS / NAS-Bench-201 rule for one cell: every edge kept with its argmax op (none allowed:
/// a ('none', j) term stays in the genotype); ties: lower op index. Pairs in edge order.
[[nodiscard]] inline CellGenotype derive_argmax(const AlphaMatrix& a,
                                                std::span<const std::string_view> op_names,
                                                int nodes = 0) {
  nodes = detail::check_alpha(a, op_names, nodes);
  CellGenotype cell;
  for (int i = 0; i < nodes; ++i) {
    std::vector<OpInput> node;
    for (int e = 0; e < i + 2; ++e) {
      const auto p = edge_softmax(a, edge_offset(i) + e);
      const int best = int(std::max_element(p.begin(), p.end()) - p.begin());  // first max
      node.push_back({std::string(op_names[std::size_t(best)]), e});
    }
    cell.nodes.push_back(std::move(node));
  }
  cell.concat = default_concat(nodes);
  return cell;
}

/// Everything the DATA rule decides for one node (exposed for logs and tests).
struct DataNodeDecision {
  struct Category {
    int edge = -1;  // input state; -1 for the merged none category
    int op = -1;    // column; the none column for the merged none category
    double p = 0;
    [[nodiscard]] bool is_none() const { return edge < 0; }
  };
  std::vector<Category> ranked;  // descending p; ties: non-none first, then lower (edge, op)
  std::vector<double> p_top;     // p_top[i - 1] = P_M(top-i set), i = 1 .. min(M, ranked.size())
  int best = 0;                  // i* = argmax_i p_top (smallest i on ties)
  std::vector<Category> kept;    // the node's pairs, descending p
  bool fallback = false;         // none won alone: kept = the most probable non-none pair
};

/// The DATA decision on one node's probabilities p [inputs * K] (row j = input state j, column
/// k = op k; `none` = the none column or -1): all none entries merged into one category,
/// categories sorted descending, P_M(top-i) = prob_exact_set(top i, M) for i = 1..min(M,
/// #categories), keep the top i* (i* = argmax, smallest i on ties) minus none; if that is empty
/// keep the most probable non-none pair. This is the mode of the EGS code. Shared by the CNN
/// and the recurrent cells, which differ only in how a node's probabilities are laid out.
[[nodiscard]] inline DataNodeDecision data_decision(std::span<const double> p, int inputs, int K, int none,
                                                    int M) {
  DATANAS_CHECK(M >= 1, "DATA rule: M must be >= 1, got ", M);
  DATANAS_ASSERT(p.size() == std::size_t(inputs) * std::size_t(K));
  using Category = DataNodeDecision::Category;
  DataNodeDecision d;
  Category merged_none{-1, none, 0.0};
  for (int e = 0; e < inputs; ++e)
    for (int k = 0; k < K; ++k) {
      const double pk = p[std::size_t(e * K + k)];
      if (k == none)
        merged_none.p += pk;
      else
        d.ranked.push_back({e, k, pk});
    }
  if (none >= 0) d.ranked.push_back(merged_none);  // after the pairs: loses ties to them
  std::stable_sort(d.ranked.begin(), d.ranked.end(),
                   [](const Category& x, const Category& y) { return x.p > y.p; });

  const int top = std::min<int>(M, int(d.ranked.size()));
  std::vector<double> set;
  double best_p = -1;
  for (int i = 1; i <= top; ++i) {
    set.push_back(d.ranked[std::size_t(i - 1)].p);
    const double pi = prob_exact_set(set, M);
    d.p_top.push_back(pi);
    // A relative margin so that rounding noise cannot turn a tie into a larger set.
    if (pi > best_p * (1 + 1e-12)) {
      best_p = pi;
      d.best = i;
    }
  }
  for (int r = 0; r < d.best; ++r)
    if (!d.ranked[std::size_t(r)].is_none()) d.kept.push_back(d.ranked[std::size_t(r)]);
  if (d.kept.empty()) {  // none won alone; the reference code would crash here
    d.fallback = true;
    for (const auto& c : d.ranked)
      if (!c.is_none()) {
        d.kept.push_back(c);
        break;
      }
  }
  return d;
}

/// The DATA rule for node `node` of a CNN cell (ALGORITHMS.md §2.2): data_decision on
/// node_probabilities (node i has 2 + i inputs).
[[nodiscard]] inline DataNodeDecision data_node_decision(const AlphaMatrix& a,
                                                         std::span<const std::string_view> op_names,
                                                         int node, int M, Normalize normalize,
                                                         Granularity granularity) {
  DATANAS_CHECK(M >= 1, "DATA rule: M must be >= 1, got ", M);
  DATANAS_CHECK(a.cols == int(op_names.size()), "alpha has ", a.cols,
                " columns but the op set has ", op_names.size(), " ops");
  const int none = detail::find_op(op_names, "none");
  DATANAS_CHECK(a.cols > (none >= 0 ? 1 : 0), "DATA rule: the op set has no op besides none");
  const auto p = node_probabilities(a, node, normalize, granularity);
  return data_decision(p, node + 2, a.cols, none, M);
}

/// DATA rule for one cell: data_node_decision for every node; each node's pairs in decreasing
/// probability. nodes <= 0: inferred from the number of rows.
[[nodiscard]] inline CellGenotype derive_data(const AlphaMatrix& a,
                                              std::span<const std::string_view> op_names, int nodes,
                                              int M, Normalize normalize = Normalize::kSoftmax,
                                              Granularity granularity = Granularity::kNode) {
  nodes = detail::check_alpha(a, op_names, nodes);
  CellGenotype cell;
  for (int i = 0; i < nodes; ++i) {
    const auto d = data_node_decision(a, op_names, i, M, normalize, granularity);
    std::vector<OpInput> node;
    for (const auto& c : d.kept) node.push_back({std::string(op_names[std::size_t(c.op)]), c.edge});
    cell.nodes.push_back(std::move(node));
  }
  cell.concat = default_concat(nodes);
  return cell;
}

// ---- alpha files -------------------------------------------------------------------------------

/// The logits of both cell types, and optionally the op names they were searched with.
struct AlphaPair {
  AlphaMatrix normal, reduce;
  std::vector<std::string> ops;  // empty: not recorded (the DARTS ops are assumed)
  friend bool operator==(const AlphaPair&, const AlphaPair&) = default;
};

namespace detail {

inline AlphaMatrix alpha_cell_from_json(const io::Json& root, std::string_view cell,
                                        std::string_view source, int nodes) {
  const io::Json* rows = root.find(cell);
  DATANAS_CHECK(rows != nullptr, source, ": missing \"", cell,
                "\" (expected {\"normal\": [[K logits] per edge], \"reduce\": [...]})");
  DATANAS_CHECK(rows->is_array(), source, ": \"", cell, "\": expected an array of edges, found ",
                rows->describe());
  AlphaMatrix a;
  a.rows = int(rows->size());
  DATANAS_CHECK(a.rows >= 1, source, ": \"", cell, "\" has no edges");
  for (int e = 0; e < a.rows; ++e) {
    const io::Json& row = rows->as_array()[std::size_t(e)];
    DATANAS_CHECK(row.is_array(), source, ": ", cell, " edge ", e,
                  ": expected an array of logits, found ", row.describe());
    if (e == 0) {
      a.cols = int(row.size());
      DATANAS_CHECK(a.cols >= 1, source, ": ", cell, " edge 0: no logits");
    }
    DATANAS_CHECK(int(row.size()) == a.cols, source, ": ", cell, " edge ", e, ": ", row.size(),
                  " logits, but edge 0 has ", a.cols, " (ragged rows)");
    for (int k = 0; k < a.cols; ++k) {
      const io::Json& v = row.as_array()[std::size_t(k)];
      DATANAS_CHECK(v.is_number(), source, ": ", cell, " edge ", e, ", op ", k,
                    ": expected a number, found ", v.describe());
      a.logits.push_back(v.as_number());
    }
  }
  if (nodes > 0) {
    DATANAS_CHECK(a.rows == edges_for_nodes(nodes), source, ": ", cell, " has ", a.rows,
                  " edges, but ", nodes, " nodes need ", edges_for_nodes(nodes));
  } else {
    DATANAS_CHECK(nodes_for_edges(a.rows) >= 1, source, ": ", cell, " has ", a.rows,
                  " edges, which is not 2 + 3 + ... + (n + 1) for any node count n "
                  "(2 nodes: 5 edges, 3: 9, 4: 14, 5: 20)");
  }
  return a;
}

}  // namespace detail

/// Reads {"normal": [[K logits] per edge], "reduce": [...]} (raw logits, edges in node order),
/// optionally with "ops": [K op names]; other keys are ignored (metadata). Both cells must have
/// the same shape, the edge count must be 2 + 3 + ... + (n + 1) (exactly that of `nodes` when
/// nodes > 0). Errors name `source`, the cell, the edge and what is wrong.
[[nodiscard]] inline AlphaPair alpha_from_json(std::string_view text,
                                               std::string_view source = "alpha JSON",
                                               int nodes = 0) {
  const io::Json root = io::parse_json(text, source);
  DATANAS_CHECK(root.is_object(), source,
                ": expected an object {\"normal\": [...], \"reduce\": [...]}, found ",
                root.describe());
  AlphaPair out;
  out.normal = detail::alpha_cell_from_json(root, "normal", source, nodes);
  out.reduce = detail::alpha_cell_from_json(root, "reduce", source, nodes);
  DATANAS_CHECK(out.normal.rows == out.reduce.rows && out.normal.cols == out.reduce.cols, source,
                ": normal is ", out.normal.rows, " x ", out.normal.cols, " but reduce is ",
                out.reduce.rows, " x ", out.reduce.cols, " (edges x ops)");
  if (const io::Json* ops = root.find("ops")) {
    DATANAS_CHECK(ops->is_array() && int(ops->size()) == out.normal.cols, source,
                  ": \"ops\": expected an array of ", out.normal.cols,
                  " op names (one per column)");
    for (std::size_t k = 0; k < ops->size(); ++k) {
      const io::Json& v = ops->as_array()[k];
      DATANAS_CHECK(v.is_string() && !v.as_string().empty(), source, ": ops[", k,
                    "]: expected an op name, found ", v.describe());
      DATANAS_CHECK(std::find(out.ops.begin(), out.ops.end(), v.as_string()) == out.ops.end(),
                    source, ": ops[", k, "]: '", v.as_string(), "' appears twice");
      out.ops.push_back(v.as_string());
    }
  }
  return out;
}

/// Reads an alpha file (see alpha_from_json); a missing or unreadable file is an error naming it.
[[nodiscard]] inline AlphaPair read_alpha_json(const std::string& path, int nodes = 0) {
  std::ifstream in(path, std::ios::binary);
  DATANAS_CHECK(in.good(), "cannot open alpha file '", path, "'");
  std::ostringstream ss;
  ss << in.rdbuf();
  DATANAS_CHECK(!in.bad(), "error reading alpha file '", path, "'");
  return alpha_from_json(ss.str(), path, nodes);
}

/// Writes the alpha format, one edge per line; numbers in shortest round-trip form, so
/// alpha_from_json(alpha_to_json(a)) == a exactly.
[[nodiscard]] inline std::string alpha_to_json(const AlphaPair& a) {
  io::Json root = io::Json::object();
  if (!a.ops.empty()) {
    io::Json ops = io::Json::array();
    for (const auto& o : a.ops) ops.push_back(o);
    root.set("ops", std::move(ops));
  }
  auto cell = [](const AlphaMatrix& m) {
    DATANAS_CHECK(m.logits.size() == std::size_t(m.rows) * std::size_t(m.cols),
                  "alpha: ", m.logits.size(), " logits for a ", m.rows, " x ", m.cols, " matrix");
    io::Json rows = io::Json::array();
    for (int e = 0; e < m.rows; ++e) {
      io::Json row = io::Json::array();
      for (int k = 0; k < m.cols; ++k) row.push_back(m(e, k));
      rows.push_back(std::move(row));
    }
    return rows;
  };
  root.set("normal", cell(a.normal));
  root.set("reduce", cell(a.reduce));
  return io::dump_json(root, 2) + "\n";
}

// ---- both cells --------------------------------------------------------------------------------

struct DeriveOptions {
  DeriveRule rule = DeriveRule::kData;
  int M = 4;  // DATA rule: ensemble size
  Normalize normalize = Normalize::kSoftmax;
  Granularity granularity = Granularity::kNode;
  int nodes = 0;  // 0: inferred from the edge count
};

/// One cell by the chosen rule.
[[nodiscard]] inline CellGenotype derive_cell(const AlphaMatrix& a,
                                              std::span<const std::string_view> op_names,
                                              const DeriveOptions& o = {}) {
  switch (o.rule) {
    case DeriveRule::kDarts:
      return derive_darts(a, op_names, o.nodes);
    case DeriveRule::kArgmax:
      return derive_argmax(a, op_names, o.nodes);
    case DeriveRule::kData:
      break;
  }
  return derive_data(a, op_names, o.nodes, o.M, o.normalize, o.granularity);
}

/// Both cells by the chosen rule, concat = [2, ..., nodes + 1]. Errors are prefixed with the cell.
[[nodiscard]] inline Genotype derive(const AlphaPair& a, std::span<const std::string_view> op_names,
                                     const DeriveOptions& o = {}) {
  Genotype g;
  for (auto [cell, out, name] :
       {std::tuple{&a.normal, &g.normal, "normal"}, std::tuple{&a.reduce, &g.reduce, "reduce"}}) {
    try {
      *out = derive_cell(*cell, op_names, o);
    } catch (const error& e) {
      throw error(datanas::detail::concat(name, " cell: ", e.what()));
    }
  }
  return g;
}

/// Both cells with the op names recorded in the file (a.ops), or kDartsOps when there are none.
[[nodiscard]] inline Genotype derive(const AlphaPair& a, const DeriveOptions& o = {}) {
  if (a.ops.empty()) return derive(a, kDartsOps, o);
  const std::vector<std::string_view> names(a.ops.begin(), a.ops.end());
  return derive(a, names, o);
}

}  // namespace datanas::search
