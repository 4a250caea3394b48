// datanas/spaces/eval_network.hpp - the evaluation network (ALGORITHMS.md §1.4): a genotype's
// discrete cells stacked and trained from scratch.
//
//   stem: conv 3x3 (in -> stem_multiplier * C) -> BN (affine)
//   cells 0..L-1, reductions at L/3 and 2L/3 (channels double there); cell k reads the outputs
//   of cells k-2 and k-1, preprocessed by FactorizedReduce after a reduction, else ReLUConvBN 1x1;
//   node i = sum of its genotype terms op(state_input) (DATA cells: 1..M terms, several ops may
//   read the same input); cell output = concat of the genotype's concat states
//   head: global average pool -> linear; optional auxiliary head after cell 2L/3
// Every BN is affine and pools have no BN (Phase::kEval ops). Drop path zeroes whole samples of
// each non-identity op output in training, with a probability the trainer ramps over epochs.
//
// The network is specialised at compile time on the op set only (DartsOps by default): the
// genotype is data, so one instantiation trains any cell of the space.
#pragma once

#include <array>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "datanas/ops/dropout.hpp"
#include "datanas/ops/linear.hpp"
#include "datanas/search/genotype.hpp"
#include "datanas/spaces/darts_ops.hpp"

namespace datanas::spaces {

/// Sizes of an evaluation network (runtime: flags and data decide them).
struct EvalNetworkConfig {
  index_t init_channels = 36;  ///< C of the first cells (the reference recipe's 36)
  int layers = 20;             ///< cells
  index_t in_channels = 3;
  index_t image_size = 32;     ///< input height = width; fixes the auxiliary head's pooling
  int num_classes = 10;
  int stem_multiplier = 3;
  bool auxiliary = false;      ///< build the auxiliary head after cell 2L/3
};

/// Whether cell i of an L-cell network is a reduction cell (as the supernet: L/3 and 2L/3).
inline bool is_reduction_cell(int i, int layers) {
  return layers >= 3 && (i == layers / 3 || i == 2 * layers / 3);
}

/// The auxiliary classifier of DARTS (§1.4), on the output of cell 2L/3:
///   ReLU -> AvgPool 5x5 stride s (no padding) -> conv 1x1 to 128 -> BN -> ReLU
///   -> conv 2x2 to 768 -> BN -> ReLU -> linear to classes.
/// The pooling stride must bring the input to 2x2 so that the 2x2 conv leaves 1x1: s = 3 on the
/// 8x8 maps of 32x32 inputs (DARTS' CIFAR head), s = 2 on the 7x7 maps of 28x28 inputs (the
/// stride of DARTS' ImageNet head, whose input is also 7x7). Other sizes are rejected.
/// Input [N, c, hw, hw]; output logits [N, classes].
template <class T, class D = Cpu>
class AuxiliaryHead : public nn::Module<T, D> {
 public:
  AuxiliaryHead(index_t c, int classes, index_t hw, PhiloxGenerator& gen)
      : stride_(pool_stride(hw)),
        conv1_(c, 128, 1, {}, false, gen), bn1_(128),
        conv2_(128, 768, 2, {}, false, gen), bn2_(768),
        linear_(768, classes, true, gen) {
    this->register_module("features.2", conv1_);
    this->register_module("features.3", bn1_);
    this->register_module("features.5", conv2_);
    this->register_module("features.6", bn2_);
    this->register_module("classifier", linear_);
  }
  Var<T, D> operator()(const Var<T, D>& x) const {
    Var<T, D> y = avg_pool2d(relu(x), 5, stride_, 0);
    y = relu(bn2_(conv2_(relu(bn1_(conv1_(y))))));
    DATANAS_ASSERT(y.shape().h() == 1 && y.shape().w() == 1);
    return linear_(global_avg_pool(y));  // [N, 768, 1, 1] -> [N, 768]: the flatten, exactly
  }
  /// The pooling stride for a square input of side hw (see the class comment).
  static int pool_stride(index_t hw) {
    if (hw == 8) return 3;
    if (hw == 7) return 2;
    throw error(datanas::detail::concat(
        "auxiliary head: cell 2L/3 outputs ", hw, "x", hw, " maps; the head is defined for 8x8 "
        "(32x32 inputs, DARTS' CIFAR head) and 7x7 (28x28 inputs); drop --auxiliary or change "
        "--layers / the image size"));
  }

 private:
  int stride_;
  nn::Conv2d<T, D> conv1_;
  nn::BatchNorm2d<T, D> bn1_;
  nn::Conv2d<T, D> conv2_;
  nn::BatchNorm2d<T, D> bn2_;
  nn::Linear<T, D> linear_;
};

/// One discrete cell built from a CellGenotype (§1.3-1.4).
template <class T, OpSetType Ops = DartsOps, class D = Cpu>
class EvalCell : public nn::Module<T, D> {
 public:
  static constexpr int kMaxNodes = 16;  ///< as SearchSpace
  static constexpr std::size_t kMaxStates = kMaxNodes + 2;

  /// c_pp, c_p: channels of the cell's inputs (outputs of cells k-2, k-1); c: channels of every
  /// node. `cell` names the cell in errors ("normal", "reduce").
  EvalCell(const search::CellGenotype& g, index_t c_pp, index_t c_p, index_t c, bool reduction,
           bool reduction_prev, PhiloxGenerator& gen, std::string_view cell = "")
      : genotype_(g), c_(c), reduction_(reduction) {
    const std::string_view name = cell.empty() ? (reduction ? "reduce" : "normal") : cell;
    search::validate(g, name, std::span<const std::string_view>(Ops::kNames));
    DATANAS_CHECK(int(g.nodes.size()) <= kMaxNodes, name, " cell: ", g.nodes.size(), " nodes, at most ",
                  kMaxNodes, " are supported");
    if (reduction)
      for (int k : g.concat)
        DATANAS_CHECK(k >= 2, name, " cell: concat lists input state ", k,
                      ", which a reduction cell does not downsample (only nodes, states >= 2, can be "
                      "concatenated)");
    if (reduction_prev)
      pre0_ = std::make_unique<FactorizedReduce<T, D>>(c_pp, c, true, gen);
    else
      pre0_ = std::make_unique<ReLUConvBN<T, D>>(c_pp, c, 1, 1, 0, true, gen);
    pre1_ = std::make_unique<ReLUConvBN<T, D>>(c_p, c, 1, 1, 0, true, gen);
    this->register_module("preprocess0", *pre0_);
    this->register_module("preprocess1", *pre1_);
    for (std::size_t i = 0; i < g.nodes.size(); ++i)
      for (const search::OpInput& p : g.nodes[i]) {
        const int stride = reduction && p.input < 2 ? 2 : 1;
        terms_.push_back({int(i), p.input, Ops::template make<T, D>(p.op, c, stride, Phase::kEval, gen)});
        this->register_module("_ops." + std::to_string(terms_.size() - 1), *terms_.back().op);
      }
  }

  /// s0, s1: outputs of cells k-2 and k-1 [N, c_pp | c_p, H, W]; returns [N, concat * c, H', W']
  /// (H' = ceil(H / 2) in reduction cells). In training, each non-identity op output goes
  /// through drop_path(drop_prob) with masks from `gen`.
  Var<T, D> operator()(const Var<T, D>& s0, const Var<T, D>& s1, double drop_prob, PhiloxGenerator& gen) const {
    // Fixed-size arrays: a training step allocates nothing on the heap after the first.
    std::array<Var<T, D>, kMaxStates> states, relus;
    states[0] = (*pre0_)(s0);
    states[1] = (*pre1_)(s1);
    const bool drop = this->training() && drop_prob > 0;
    for (const Term& t : terms_) {
      const auto in = std::size_t(t.input);
      Var<T, D> y;
      if (takes_shared_relu(*t.op)) {
        // Several ops on one input share its ReLU: same values, one activation (on the CPU,
        // sep_conv and dil_conv read relu(x) in their kernels instead, as on a supernet edge).
        if (!relus[in].defined()) relus[in] = relu(states[in]);
        y = t.op->from_relu(relus[in]);
      } else {
        y = (*t.op)(states[in]);
      }
      // DARTS drops every op output but identities' before adding it to its node (none's is a
      // symbolic zero, which drop path leaves alone); add_drop_path does both in one pass,
      // drawing the same masks.
      const bool dropped = drop && !t.op->is_identity();
      Var<T, D>& node = states[std::size_t(t.node) + 2];
      if (!node.defined())
        node = dropped ? drop_path(y, drop_prob, true, gen) : y;
      else
        node = dropped ? add_drop_path(node, y, drop_prob, true, gen) : add(node, y);
    }
    std::array<Var<T, D>, kMaxStates> out;  // concat has no repeats: at most kMaxStates entries
    std::size_t n = 0;
    for (int k : genotype_.concat) out[n++] = states[std::size_t(k)];
    return concat_channels<T, D>(std::span<const Var<T, D>>(out.data(), n));
  }

  [[nodiscard]] bool reduction() const { return reduction_; }
  /// Channels of the cell output: |concat| * c.
  [[nodiscard]] index_t out_channels() const { return index_t(genotype_.concat.size()) * c_; }
  /// Ops of the cell in genotype order (node by node, term by term).
  [[nodiscard]] int num_terms() const { return int(terms_.size()); }
  [[nodiscard]] const OpModule<T, D>& term(int k) const { return *terms_[std::size_t(k)].op; }

 private:
  struct Term {
    int node, input;
    OpPtr<T, D> op;
  };
  search::CellGenotype genotype_;
  index_t c_;
  bool reduction_;
  std::unique_ptr<OpModule<T, D>> pre0_, pre1_;
  std::vector<Term> terms_;
};

/// What a training loop needs of a classifier with drop path and an optional auxiliary head,
/// independent of its op set (so the loop is compiled once per scalar type).
template <class T, class D = Cpu>
class TrainNetwork : public nn::Module<T, D> {
 public:
  struct Output {
    Var<T, D> logits;  ///< [N, classes]
    Var<T, D> aux;     ///< [N, classes] in training with an auxiliary head; undefined otherwise
  };
  /// x [N, in_channels, H, W]; drop-path masks (training only) come from `gen`.
  virtual Output forward(const Var<T, D>& x, PhiloxGenerator& gen) const = 0;
  /// Drop-path probability of the next forwards (the trainer ramps it: p * epoch / epochs).
  void set_drop_path_prob(double p) {
    DATANAS_CHECK(p >= 0 && p < 1, "drop path probability must be in [0, 1), got ", p);
    drop_path_prob_ = p;
  }
  [[nodiscard]] double drop_path_prob() const { return drop_path_prob_; }
  [[nodiscard]] virtual bool has_auxiliary() const = 0;
  /// Weights as the DARTS code counts them ("param size"): every parameter whose name does not
  /// contain "auxiliary".
  [[nodiscard]] index_t parameter_count_without_auxiliary() const {
    index_t n = 0;
    this->visit_parameters([&](const std::string& name, const Var<T, D>& v) {
      if (name.find("auxiliary") == std::string::npos) n += v.value().numel();
    });
    return n;
  }

 private:
  double drop_path_prob_ = 0;
};

/// The evaluation network of a genotype over the op set `Ops`.
template <class T, OpSetType Ops = DartsOps, class D = Cpu>
class EvalNetwork : public TrainNetwork<T, D> {
 public:
  using Output = typename TrainNetwork<T, D>::Output;

  EvalNetwork(const search::Genotype& g, const EvalNetworkConfig& cfg, PhiloxGenerator& gen)
      : genotype_(g), cfg_(cfg),
        stem_conv_(cfg.in_channels, cfg.stem_multiplier * cfg.init_channels, 3, {.padding = 1}, false, gen),
        stem_bn_(cfg.stem_multiplier * cfg.init_channels) {
    DATANAS_CHECK(cfg.layers >= 1, "evaluation network: needs at least one cell, got ", cfg.layers);
    DATANAS_CHECK(cfg.init_channels >= 2 && cfg.init_channels % 2 == 0,
                  "evaluation network: init channels must be even and >= 2 (FactorizedReduce halves "
                  "them), got ", cfg.init_channels);
    DATANAS_CHECK(cfg.image_size >= 1, "evaluation network: image size must be >= 1, got ", cfg.image_size);
    search::validate(g, std::span<const std::string_view>(Ops::kNames));
    this->register_module("stem.0", stem_conv_);
    this->register_module("stem.1", stem_bn_);
    index_t c_pp = cfg.stem_multiplier * cfg.init_channels, c_p = c_pp, c = cfg.init_channels;
    index_t hw = cfg.image_size, aux_c = 0, aux_hw = 0;
    bool reduction_prev = false;
    for (int i = 0; i < cfg.layers; ++i) {
      const bool reduction = is_reduction_cell(i, cfg.layers);
      if (reduction) {
        c *= 2;
        // FactorizedReduce preprocessing of the next cells needs even maps.
        DATANAS_CHECK(hw % 2 == 0, "evaluation network: cell ", i, " reduces ", hw, "x", hw,
                      " maps, an odd size; FactorizedReduce needs even sizes (image size ",
                      cfg.image_size, ")");
        hw = strided_size(hw, 2);
      }
      cells_.push_back(std::make_unique<Cell>(reduction ? g.reduce : g.normal, c_pp, c_p, c, reduction,
                                              reduction_prev, gen));
      this->register_module("cells." + std::to_string(i), *cells_.back());
      reduction_prev = reduction;
      c_pp = c_p;
      c_p = cells_.back()->out_channels();
      if (i == aux_index()) {
        aux_c = c_p;
        aux_hw = hw;
      }
    }
    if (cfg.auxiliary) {
      aux_ = std::make_unique<AuxiliaryHead<T, D>>(aux_c, cfg.num_classes, aux_hw, gen);
      this->register_module("auxiliary_head", *aux_);
    }
    head_ = std::make_unique<nn::Linear<T, D>>(c_p, cfg.num_classes, true, gen);
    this->register_module("classifier", *head_);
  }

  /// Logits [N, classes] for x [N, in_channels, image_size, image_size]; aux logits in training.
  Output forward(const Var<T, D>& x, PhiloxGenerator& gen) const override {
    DATANAS_CHECK(x.shape().rank() == 4 && x.shape().c() == cfg_.in_channels &&
                      x.shape().h() == cfg_.image_size && x.shape().w() == cfg_.image_size,
                  "evaluation network: input ", x.shape().str(), " does not match the network's [N, ",
                  cfg_.in_channels, ", ", cfg_.image_size, ", ", cfg_.image_size, "]");
    Output out;
    const double p = this->drop_path_prob();
    Var<T, D> s0 = stem_bn_(stem_conv_(x));
    Var<T, D> s1 = s0;
    for (int i = 0; i < int(cells_.size()); ++i) {
      Var<T, D> y = (*cells_[std::size_t(i)])(s0, s1, p, gen);
      s0 = s1;
      s1 = y;
      if (i == aux_index() && aux_ && this->training()) out.aux = (*aux_)(s1);
    }
    out.logits = (*head_)(global_avg_pool(s1));
    return out;
  }

  [[nodiscard]] bool has_auxiliary() const override { return aux_ != nullptr; }
  [[nodiscard]] const search::Genotype& genotype() const { return genotype_; }
  [[nodiscard]] const EvalNetworkConfig& config() const { return cfg_; }
  [[nodiscard]] int num_cells() const { return int(cells_.size()); }
  [[nodiscard]] const EvalCell<T, Ops, D>& cell(int i) const { return *cells_[std::size_t(i)]; }
  /// The cell whose output feeds the auxiliary head: 2L/3.
  [[nodiscard]] int aux_index() const { return 2 * cfg_.layers / 3; }

 private:
  using Cell = EvalCell<T, Ops, D>;
  search::Genotype genotype_;
  EvalNetworkConfig cfg_;
  nn::Conv2d<T, D> stem_conv_;
  nn::BatchNorm2d<T, D> stem_bn_;
  std::vector<std::unique_ptr<Cell>> cells_;
  std::unique_ptr<AuxiliaryHead<T, D>> aux_;
  std::unique_ptr<nn::Linear<T, D>> head_;
};

}  // namespace datanas::spaces
