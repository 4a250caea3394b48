// datanas/spaces/supernet.hpp - the DARTS search network (ALGORITHMS.md §1.2), specialised at
// compile time over a search space (op set, nodes, multiplier, estimator policy, granularity).
//
//   stem: conv 3x3 (in -> stem_multiplier * C) -> BN
//   cells 0..L-1, reductions at L/3 and 2L/3 (channels double there); cell k reads the outputs
//   of cells k-2 and k-1; node i = sum over its 2 + i incoming edges of MixedOp(state_j);
//   cell output = concat of the last `multiplier` nodes
//   head: global average pool -> linear
// One alpha [E, K] for all normal cells and one for all reduction cells.
#pragma once

#include <memory>
#include <span>
#include <string>
#include <vector>

#include "datanas/estimators/estimators.hpp"
#include "datanas/ops/loss.hpp"
#include "datanas/spaces/darts_ops.hpp"

namespace datanas::spaces {

using estimators::EstimatorPolicy;
using estimators::GroupLayout;
using search::Granularity;
using search::Normalize;

/// A search space, entirely compile time. A user's space is another instantiation, e.g.
/// SearchSpace<OpSet<NoneOp, SepConv3x3, SkipConnect>, 3, 3, estimators::EGS<2>, Granularity::kEdge>.
template <OpSetType Ops, int Nodes, int Multiplier, EstimatorPolicy Estimator,
          Granularity G = Granularity::kNode>
struct SearchSpace {
  static_assert(Nodes >= 1 && Nodes <= 16, "SearchSpace: Nodes must be in [1, 16]");
  static_assert(Multiplier >= 1 && Multiplier <= Nodes,
                "SearchSpace: Multiplier (nodes concatenated into the cell output) must be in [1, Nodes]");
  using OpSetT = Ops;
  using EstimatorT = Estimator;
  static constexpr int kNodes = Nodes;
  static constexpr int kMultiplier = Multiplier;
  static constexpr int kOps = Ops::kSize;
  static constexpr int kEdges = Nodes * (Nodes + 3) / 2;
  static constexpr Granularity kGranularity = G;
  static constexpr GroupLayout layout() { return {Nodes, Ops::kSize, G}; }
};

template <class S>
concept SearchSpaceType = requires {
  typename S::OpSetT;
  typename S::EstimatorT;
  { S::kNodes } -> std::convertible_to<int>;
  { S::kMultiplier } -> std::convertible_to<int>;
  { S::kEdges } -> std::convertible_to<int>;
};

/// sum_k w[offset + k] * op_k(x) over the K candidate ops of one edge. "none" and, in sparse mode,
/// ops of weight 0 do not run and add no term (their weight's gradient is 0).
template <class T, class Ops, class D = Cpu>
class MixedOp : public nn::Module<T, D> {
  static_assert(Ops::kSize <= kMaxMixedTerms, "MixedOp: an edge mixes at most kMaxMixedTerms ops");

 public:
  MixedOp(index_t c, int stride, PhiloxGenerator& gen) : stride_(stride) {
    for (int k = 0; k < Ops::kSize; ++k) {
      ops_[std::size_t(k)] = Ops::template make<T, D>(k, c, stride, Phase::kSearch, gen);
      this->register_module("_ops." + std::to_string(k), *ops_[std::size_t(k)]);
    }
  }
  /// w: the cell type's flat weights [E * K]; `offset` = edge * K. Sparse mode: `host_w` is a
  /// host copy of w, read to skip the ops of weight 0; nullptr runs every op (dense).
  Var<T, D> operator()(const Var<T, D>& x, const Var<T, D>& w, index_t offset, const T* host_w) const {
    Var<T, D> terms[Ops::kSize];
    int idx[Ops::kSize];
    int n = append_terms(x, offset, host_w, terms, idx);
    if (n == 0) {  // nothing runs: zeros, and weight 0 for the first op
      terms[0] = zeros<T, D>(out_shape(x.shape()));
      idx[0] = int(offset);
      n = 1;
    }
    return weighted_sum<T, D>(std::span<const Var<T, D>>(terms, std::size_t(n)), w,
                              std::span<const int>(idx, std::size_t(n)), host_w);
  }
  /// The terms of the ops that run (runs()): appends op_k(x) to `terms` and its weight's index
  /// offset + k to `idx`, for count(offset, host_w) ops. A node sums the terms of all its edges
  /// in one weighted_sum (SearchCell).
  int append_terms(const Var<T, D>& x, index_t offset, const T* host_w, Var<T, D>* terms, int* idx) const {
    const Shape shape = out_shape(x.shape());
    Var<T, D> r;  // relu(x), shared by the ops of the edge that start with ReLU and do not fuse it
    int n = 0;
    for (int k = 0; k < Ops::kSize; ++k) {
      if (!runs(k, offset, host_w)) continue;
      const OpModule<T, D>& op = *ops_[std::size_t(k)];
      if (takes_shared_relu(op)) {
        if (!r.defined()) r = relu(x);
        terms[n] = op.from_relu(r);
      } else {
        terms[n] = op(x);
      }
      DATANAS_ASSERT(terms[n].shape() == shape);
      idx[n++] = int(offset + k);
    }
    return n;
  }
  [[nodiscard]] const OpModule<T, D>& op(int k) const { return *ops_[std::size_t(k)]; }
  /// How many ops operator() runs for these weights: in sparse mode 0 when every op with a
  /// non-zero weight is "none" (the edge's output is then exact zeros).
  [[nodiscard]] int count(index_t offset, const T* host_w) const {
    int n = 0;
    for (int k = 0; k < Ops::kSize; ++k) n += runs(k, offset, host_w);
    return n;
  }
  /// The edge's output shape for an input of shape `in`.
  [[nodiscard]] Shape out_shape(const Shape& in) const {
    return {in.n(), in.c(), strided_size(in.h(), stride_), strided_size(in.w(), stride_)};
  }

 private:
  /// Op k runs unless it is "none" or, in sparse mode, its weight is 0.
  [[nodiscard]] bool runs(int k, index_t offset, const T* host_w) const {
    return !ops_[std::size_t(k)]->is_zero() && (!host_w || host_w[offset + k] != T(0));
  }

  int stride_;
  std::array<OpPtr<T, D>, std::size_t(Ops::kSize)> ops_;
};

/// One search cell. It depends on the op set and the cell's shape only, not on the estimator
/// or the granularity, so every estimator of a space shares one instantiation of the heavy code.
template <class T, OpSetType Ops, int Nodes, int Multiplier, class D = Cpu>
class SearchCell : public nn::Module<T, D> {
  static constexpr int kOps = Ops::kSize;
  static constexpr int kEdges = Nodes * (Nodes + 3) / 2;

 public:
  SearchCell(index_t c_pp, index_t c_p, index_t c, bool reduction, bool reduction_prev, PhiloxGenerator& gen)
      : reduction_(reduction) {
    if (reduction_prev)
      pre0_ = std::make_unique<FactorizedReduce<T, D>>(c_pp, c, false, gen);
    else
      pre0_ = std::make_unique<ReLUConvBN<T, D>>(c_pp, c, 1, 1, 0, false, gen);
    pre1_ = std::make_unique<ReLUConvBN<T, D>>(c_p, c, 1, 1, 0, false, gen);
    this->register_module("preprocess0", *pre0_);
    this->register_module("preprocess1", *pre1_);
    int e = 0;
    for (int i = 0; i < Nodes; ++i)
      for (int j = 0; j < 2 + i; ++j, ++e) {
        const int stride = reduction && j < 2 ? 2 : 1;
        edges_[std::size_t(e)] = std::make_unique<MixedOp<T, Ops, D>>(c, stride, gen);
        this->register_module("_ops." + std::to_string(e), *edges_[std::size_t(e)]);
      }
  }

  /// s0, s1: outputs of cells k-2 and k-1. w: this cell type's weights [E * K]; host_w: its host
  /// copy in sparse mode, nullptr in dense mode (MixedOp).
  Var<T, D> operator()(const Var<T, D>& s0, const Var<T, D>& s1, const Var<T, D>& w, const T* host_w) const {
    std::array<Var<T, D>, std::size_t(Nodes + 2)> states;
    states[0] = (*pre0_)(s0);
    states[1] = (*pre1_)(s1);
    // Node i = sum over its edges j of sum_k w[e, k] op_k(state_j), summed as one weighted_sum
    // over the terms of all its edges (up to kMaxMixedTerms at a time), not edge by edge and
    // then added: each term is read once and the node written once, and no per-edge output or
    // add is made (in forward or backward). Ops that do not run add no term (in sparse mode
    // most of them; an edge of which nothing runs, about a third under a per-node EGS sample,
    // costs nothing); their weights' gradient stays zero (w's gradient is zero-filled by the
    // first sum that writes it). A node of which nothing runs is zeros.
    std::array<Var<T, D>, std::size_t(kMaxMixedTerms)> terms;
    std::array<int, std::size_t(kMaxMixedTerms)> idx{};
    int e = 0;
    for (int i = 0; i < Nodes; ++i) {
      Var<T, D> node;
      int n = 0;
      const auto sum_terms = [&] {
        const Var<T, D> part = weighted_sum<T, D>(std::span<const Var<T, D>>(terms.data(), std::size_t(n)), w,
                                                  std::span<const int>(idx.data(), std::size_t(n)), host_w);
        node = node.defined() ? add(node, part) : part;
        for (; n > 0; --n) terms[std::size_t(n - 1)] = {};  // the tape keeps what backward reads
      };
      for (int j = 0; j < 2 + i; ++j, ++e) {
        const MixedOp<T, Ops, D>& edge = *edges_[std::size_t(e)];
        const index_t offset = index_t(e) * kOps;
        if (n > 0 && n + edge.count(offset, host_w) > kMaxMixedTerms) sum_terms();
        n += edge.append_terms(states[std::size_t(j)], offset, host_w, terms.data() + n, idx.data() + n);
      }
      if (n == 0 && !node.defined()) {  // nothing runs: zeros (weight 0 for the last edge's first op)
        terms[0] = zeros<T, D>(edges_[std::size_t(e - 1)]->out_shape(states[std::size_t(1 + i)].shape()));
        idx[0] = (e - 1) * kOps;
        n = 1;
      }
      if (n > 0) sum_terms();
      states[std::size_t(i + 2)] = node;
    }
    return concat_channels<T, D>(std::span<const Var<T, D>>(states.data() + 2 + Nodes - Multiplier,
                                                           std::size_t(Multiplier)));
  }
  [[nodiscard]] bool reduction() const { return reduction_; }
  /// Edge e's mixed op; edges in DARTS order (node 0's two, node 1's three, ...).
  [[nodiscard]] const MixedOp<T, Ops, D>& edge(int e) const { return *edges_[std::size_t(e)]; }
  /// The preprocessing of input i: 0 for cell k-2's output, 1 for cell k-1's.
  [[nodiscard]] const OpModule<T, D>& preprocess(int i) const { return i == 0 ? *pre0_ : *pre1_; }

 private:
  bool reduction_;
  std::unique_ptr<OpModule<T, D>> pre0_, pre1_;
  std::array<std::unique_ptr<MixedOp<T, Ops, D>>, std::size_t(kEdges)> edges_;
};

/// What the search loop needs of a supernet, independent of its compile-time space: the one
/// place where the runtime and compile-time worlds meet, so the loop (and everything else that
/// only drives a search) is compiled once per scalar type, not once per space.
template <class T, class D = Cpu>
class SearchNetwork : public nn::Module<T, D> {
 public:
  using device_type = D;

  /// Logits [N, classes] under explicit mixing weights [E * K] of each cell type.
  virtual Var<T, D> forward(const Var<T, D>& x, const Var<T, D>& w_normal, const Var<T, D>& w_reduce,
                         bool sparse) const = 0;
  /// The estimator's mixing weights for one cell type's alpha (one sample per call).
  virtual Var<T, D> mixing_weights(const Var<T, D>& alpha, const estimators::EstimatorConfig& ec,
                                PhiloxGenerator& gen) const = 0;
  /// Samples both cell types' weights and runs the network (sparse only for hard estimators).
  Var<T, D> forward(const Var<T, D>& x, const estimators::EstimatorConfig& ec, PhiloxGenerator& gen,
                 bool sparse) const {
    Var<T, D> wn = mixing_weights(alpha_normal(), ec, gen);
    Var<T, D> wr = mixing_weights(alpha_reduce(), ec, gen);
    return forward(x, wn, wr, sparse && hard_estimator());
  }
  [[nodiscard]] virtual GroupLayout layout() const = 0;
  [[nodiscard]] virtual bool hard_estimator() const = 0;
  [[nodiscard]] virtual estimators::Kind estimator_kind() const = 0;
  [[nodiscard]] virtual int ensemble_size() const = 0;  ///< M (1 for non-ensemble estimators)
  [[nodiscard]] virtual std::span<const std::string_view> op_names() const = 0;
  [[nodiscard]] virtual const Var<T, D>& alpha_normal() const = 0;
  [[nodiscard]] virtual const Var<T, D>& alpha_reduce() const = 0;
  [[nodiscard]] std::vector<Var<T, D>> alphas() const { return {alpha_normal(), alpha_reduce()}; }
  /// The network weights (everything but alpha).
  [[nodiscard]] std::vector<Var<T, D>> weights() const { return this->parameters(); }
};

/// Sizes of a supernet (runtime: data decides them).
struct SupernetConfig {
  index_t init_channels = 16;  ///< C
  int layers = 8;              ///< cells
  index_t in_channels = 3;
  int num_classes = 10;
  int stem_multiplier = 3;
  Normalize normalize = Normalize::kSoftmax;  ///< relu: alpha initialised at 1 + 1e-3 N(0, 1)
};

/// Everything of a supernet but its estimator: stem, cells, head and the two alphas. It depends
/// on the op set and the cell shape only, so the estimators and granularities of one shape (the
/// 22 estimator and granularity choices of datanas-search per node count) share one instantiation of the construction and forward code;
/// Supernet adds the estimator on top. Not used on its own (mixing_weights is Supernet's).
template <class T, OpSetType Ops, int Nodes, int Multiplier, class D = Cpu>
class SupernetBody : public SearchNetwork<T, D> {
  static constexpr int kOps = Ops::kSize;
  static constexpr int kEdges = Nodes * (Nodes + 3) / 2;

 public:
  using Cell = SearchCell<T, Ops, Nodes, Multiplier, D>;

  SupernetBody(const SupernetConfig& cfg, PhiloxGenerator& gen)
      : cfg_(cfg),
        stem_conv_(cfg.in_channels, cfg.stem_multiplier * cfg.init_channels, 3, {.padding = 1}, false, gen),
        stem_bn_(cfg.stem_multiplier * cfg.init_channels) {
    DATANAS_CHECK(cfg.layers >= 1, "Supernet: needs at least one cell, got ", cfg.layers);
    DATANAS_CHECK(cfg.init_channels >= 1, "Supernet: init channels must be >= 1, got ", cfg.init_channels);
    this->register_module("stem.0", stem_conv_);
    this->register_module("stem.1", stem_bn_);
    index_t c_pp = cfg.stem_multiplier * cfg.init_channels, c_p = c_pp, c = cfg.init_channels;
    bool reduction_prev = false;
    for (int i = 0; i < cfg.layers; ++i) {
      const bool reduction = cfg.layers >= 3 && (i == cfg.layers / 3 || i == 2 * cfg.layers / 3);
      if (reduction) c *= 2;
      cells_.push_back(std::make_unique<Cell>(c_pp, c_p, c, reduction, reduction_prev, gen));
      this->register_module("cells." + std::to_string(i), *cells_.back());
      reduction_prev = reduction;
      c_pp = c_p;
      c_p = Multiplier * c;
    }
    head_ = std::make_unique<nn::Linear<T, D>>(c_p, cfg.num_classes, true, gen);
    this->register_module("classifier", *head_);
    // alpha ~ 1e-3 N(0, 1) (DARTS), or 1 + 1e-3 N(0, 1) for relu normalisation (DATA code).
    const double shift = cfg.normalize == Normalize::kRelu ? 1.0 : 0.0;
    for (Var<T, D>* a : {&alpha_normal_, &alpha_reduce_}) {
      Tensor<T> t = Tensor<T>::empty({kEdges, kOps});
      for (index_t i = 0; i < t.numel(); ++i) t[i] = T(shift + 1e-3 * gen.normal());
      *a = Var<T, D>(to_device_of<D>(t), true);
    }
  }

  using SearchNetwork<T, D>::forward;

  /// Logits [N, classes] for x [N, in_channels, H, W] under the given mixing weights.
  Var<T, D> forward(const Var<T, D>& x, const Var<T, D>& w_normal, const Var<T, D>& w_reduce, bool sparse) const override {
    // Sparse mode decides on the host which ops run: one copy of each cell type's weights per
    // step (on a device, the step's one synchronisation besides logging).
    Tensor<T, Cpu> host_n, host_r;
    if (sparse) {
      host_n = to_cpu(w_normal.value());
      host_r = to_cpu(w_reduce.value());
    }
    Var<T, D> s0 = stem_bn_(stem_conv_(x));
    Var<T, D> s1 = s0;
    for (const auto& cell : cells_) {
      Var<T, D> out = (*cell)(s0, s1, cell->reduction() ? w_reduce : w_normal,
                              cell->reduction() ? host_r.data() : host_n.data());
      s0 = s1;
      s1 = out;
    }
    return (*head_)(global_avg_pool(s1));
  }

  [[nodiscard]] std::span<const std::string_view> op_names() const override { return Ops::kNames; }
  [[nodiscard]] const Var<T, D>& alpha_normal() const override { return alpha_normal_; }
  [[nodiscard]] const Var<T, D>& alpha_reduce() const override { return alpha_reduce_; }
  [[nodiscard]] const SupernetConfig& config() const { return cfg_; }
  [[nodiscard]] int num_cells() const { return int(cells_.size()); }
  [[nodiscard]] const Cell& cell(int i) const { return *cells_[std::size_t(i)]; }

 private:
  SupernetConfig cfg_;
  nn::Conv2d<T, D> stem_conv_;
  nn::BatchNorm2d<T, D> stem_bn_;
  std::vector<std::unique_ptr<Cell>> cells_;
  std::unique_ptr<nn::Linear<T, D>> head_;
  Var<T, D> alpha_normal_, alpha_reduce_;  // not registered: parameters() are the weights only
};

/// The supernet of space S: SupernetBody (stem, cells, head, alphas) plus S's estimator and
/// granularity, which decide how alpha becomes each step's mixing weights.
template <class T, SearchSpaceType S, class D = Cpu>
class Supernet : public SupernetBody<T, typename S::OpSetT, S::kNodes, S::kMultiplier, D> {
  using Body = SupernetBody<T, typename S::OpSetT, S::kNodes, S::kMultiplier, D>;

 public:
  using Space = S;

  Supernet(const SupernetConfig& cfg, PhiloxGenerator& gen) : Body(cfg, gen) {}

  Var<T, D> mixing_weights(const Var<T, D>& alpha, const estimators::EstimatorConfig& ec,
                        PhiloxGenerator& gen) const override {
    return estimators::weights<typename S::EstimatorT>(alpha, S::layout(), ec, gen);
  }
  [[nodiscard]] GroupLayout layout() const override { return S::layout(); }
  [[nodiscard]] bool hard_estimator() const override { return S::EstimatorT::kHard; }
  [[nodiscard]] estimators::Kind estimator_kind() const override { return S::EstimatorT::kKind; }
  [[nodiscard]] int ensemble_size() const override { return S::EstimatorT::kM; }
};

}  // namespace datanas::spaces
