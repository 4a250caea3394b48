// datanas/spaces/rnn_space.hpp - the DARTS recurrent search space and the language model around
// it (ALGORITHMS.md §4), specialised at compile time over an op set, a node count, an estimator
// policy and a granularity.
//
// Cell (one time step, x_t [B, E], h_{t-1} [B, H]):
//   [c0 | h0] = [x_t * mx ; h_{t-1} * mh] W0             W0: [(E + H), 2H]
//   s0 = h_{t-1} + sigmoid(c0) (tanh(h0) - h_{t-1})
//   node i reading s_p:  [c | h] = (s_p * mh) W_i,  s_i = s_p + sigmoid(c) (f(h) - s_p)
//   h_t = mean of the states in concat (1 .. 8)
// mx, mh are variational dropout masks [B, E], [B, H], drawn once per forward (per BPTT window)
// and shared by every time step; mh multiplies every state before its matmul (DARTS' cell).
// Search cell: node i = sum over predecessors j and ops k of w_jk [s_j + c_j (f_k(h_j) - s_j)]
// (one W_i per node, shared over predecessors), then a non-affine batch norm; s0 too (batch
// statistics also in evaluation, where DARTS uses running ones: see RnnSearchNetwork::bn).
// Model: embedding (tied with the decoder weight) with embedding dropout (whole words) and
// locked dropout on its output, the cell unrolled over the window, locked dropout on the
// outputs, the decoder (tied weight, zero-initialised bias). Weights uniform in +-0.04.
//
// Every class is a template on the device D (Cpu by default). Weights and alpha are drawn on
// the host and copied to D; dropout masks (embedding dropout's word scales too) are drawn on D
// from the same Philox words, so a model has the same values on every device. A forward takes
// the window's token ids on the host and copies them to D once, or takes them already on D
// (forward_ids / forward_sampled_ids: a captured step reads them from a fixed buffer). In
// sparse mode the search cell decides on the host which predecessors run and which nodes are
// all-none, from a host copy of the window's mixing weights (one copy per forward); a dense cell
// leaves the all-none decision to the device (zero_if_all_none), so it never reads the weights
// on the host (RnnSearchNetwork::forward_sampled).
#pragma once

#include <algorithm>
#include <array>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "datanas/estimators/estimators.hpp"
#include "datanas/nn/module.hpp"
#include "datanas/ops/activation.hpp"
#include "datanas/ops/arithmetic.hpp"
#include "datanas/ops/batchnorm.hpp"
#include "datanas/ops/linear.hpp"
#include "datanas/ops/recurrent.hpp"
#include "datanas/search/rnn_genotype.hpp"

namespace datanas::spaces::rnn {

using estimators::EstimatorPolicy;
using estimators::GroupLayout;
using search::Granularity;
using search::Normalize;

// ---- the op set ----------------------------------------------------------------------------------

/// A recurrent candidate op: a name and the activation f of s_p + sigmoid(c) (f(h) - s_p).
template <class O>
concept RecurrentOpDescriptor = requires {
  { O::kName } -> std::convertible_to<std::string_view>;
  { O::kActivation } -> std::convertible_to<RecurrentActivation>;
};

struct NoneOp {
  static constexpr std::string_view kName = "none";
  static constexpr RecurrentActivation kActivation = RecurrentActivation::kNone;
};
struct TanhOp {
  static constexpr std::string_view kName = "tanh";
  static constexpr RecurrentActivation kActivation = RecurrentActivation::kTanh;
};
struct ReluOp {
  static constexpr std::string_view kName = "relu";
  static constexpr RecurrentActivation kActivation = RecurrentActivation::kRelu;
};
struct SigmoidOp {
  static constexpr std::string_view kName = "sigmoid";
  static constexpr RecurrentActivation kActivation = RecurrentActivation::kSigmoid;
};
struct IdentityOp {
  static constexpr std::string_view kName = "identity";
  static constexpr RecurrentActivation kActivation = RecurrentActivation::kIdentity;
};

/// A type list of recurrent ops; the order is the column order of alpha.
template <RecurrentOpDescriptor... Ops>
struct RecurrentOpSet {
  static constexpr int kSize = int(sizeof...(Ops));
  static_assert(kSize >= 1 && kSize <= 16, "RecurrentOpSet: 1 to 16 ops");
  static constexpr std::array<std::string_view, sizeof...(Ops)> kNames = {Ops::kName...};
  static constexpr std::array<RecurrentActivation, sizeof...(Ops)> kActivations = {Ops::kActivation...};
  /// Column of `name`, or -1.
  static constexpr int index_of(std::string_view name) {
    for (int i = 0; i < kSize; ++i)
      if (kNames[std::size_t(i)] == name) return i;
    return -1;
  }
};

template <class S>
concept RecurrentOpSetType = requires {
  { S::kSize } -> std::convertible_to<int>;
  { S::kNames[0] } -> std::convertible_to<std::string_view>;
  { S::kActivations[0] } -> std::convertible_to<RecurrentActivation>;
};

/// DARTS' PRIMITIVES: none, tanh, relu, sigmoid, identity.
using DartsRnnOps = RecurrentOpSet<NoneOp, TanhOp, ReluOp, SigmoidOp, IdentityOp>;

/// The recurrent search space, entirely compile time: e.g.
/// RecurrentSearchSpace<DartsRnnOps, 8, estimators::EGS<4>> (EGS per node, DATA's default).
template <RecurrentOpSetType Ops, int Nodes, EstimatorPolicy Estimator, Granularity G = Granularity::kNode>
struct RecurrentSearchSpace {
  static_assert(Nodes >= 1 && Nodes <= 16, "RecurrentSearchSpace: Nodes must be in [1, 16]");
  using OpSetT = Ops;
  using EstimatorT = Estimator;
  static constexpr int kNodes = Nodes;
  static constexpr int kOps = Ops::kSize;
  static constexpr int kEdges = Nodes * (Nodes + 1) / 2;  // node i reads states 0 .. i
  static constexpr Granularity kGranularity = G;
  static constexpr GroupLayout layout() { return {Nodes, Ops::kSize, G, 1}; }
};

// ---- the model -----------------------------------------------------------------------------------

/// Sizes and regularisation of a recurrent language model (defaults: DARTS' search script).
struct RnnConfig {
  index_t vocab = 10000;
  index_t emsize = 300;  ///< must equal nhid (tied decoder)
  index_t nhid = 300;
  double dropout = 0.75;   ///< locked dropout on the RNN outputs
  double dropouth = 0.25;  ///< variational dropout on h and on every state before its matmul
  double dropoutx = 0.75;  ///< variational dropout on x_t
  double dropouti = 0.2;   ///< locked dropout on the embedding output
  double dropoute = 0.0;   ///< embedding dropout (whole words); 0.1 for training from scratch
  double init_range = 0.04;
  /// A cell weight (W0, W_i) of more than this many bytes takes its gradient over the window in
  /// groups of about grouped_weight_rows rows (time steps x batch), one product per group
  /// (GroupedMatmul; at 850 units a step ran 1.04-1.10x faster on one thread, 0.98-1.18x on two
  /// on a noisy host; at 128 and 300 units, whose per-step gradients stay in cache, grouping
  /// gained nothing or lost: docs/benchmarks.md). Speed only: the results are the same up to
  /// rounding. 0 groups every weight.
  index_t grouped_weight_bytes = index_t(4) << 20;
  index_t grouped_weight_rows = 512;
};

/// The per-forward state of a cell: dropout masks and, for search cells, the mixing weights.
template <class T, class D = Cpu>
struct CellContext {
  bool training = false;
  Tensor<T, D> x_mask, h_mask;  // undefined when not applied
  Var<T, D> weights;            // search: the estimator's weights [E * K]
  /// A host copy of `weights` (the same tensor on the Cpu), read by the search cell's host
  /// decisions in sparse mode; undefined in dense mode.
  Tensor<T> host_weights;
  bool sparse = false;
  /// Dense mode: whether a node's non-none weights can all be 0 (hard estimators, SNAS at low
  /// temperature, relu normalisation), so that every node goes through zero_if_all_none.
  /// False only for weights that are never 0 (DARTS' softmax), saving those launches.
  bool all_none_possible = true;
};

/// What a forward pass over a window returns.
template <class T, class D = Cpu>
struct RnnOutput {
  Var<T, D> logits;     ///< [T*B, V], row t*B + b
  Var<T, D> raw;        ///< stacked h_t [T*B, H] before the output dropout (for the temporal penalty)
  Tensor<T, D> hidden;  ///< h_T [B, H], to carry into the next window (detached)
};

/// Embedding, cell unrolled in time, decoder. Subclasses provide the cell.
/// Parameter names follow the PyTorch model: encoder.weight, decoder.bias, rnns.0._W0, rnns.0._Ws.i.
template <class T, class D = Cpu>
class RnnModel : public nn::Module<T, D> {
 public:
  using device_type = D;

  RnnModel(const RnnConfig& cfg, int steps, PhiloxGenerator& gen) : cfg_(cfg) {
    DATANAS_CHECK(cfg.vocab >= 1 && cfg.emsize >= 1 && cfg.nhid >= 1, "RNN model: vocab, emsize and nhid must be >= 1");
    DATANAS_CHECK(cfg.emsize == cfg.nhid, "RNN model: the tied decoder needs emsize == nhid, got ", cfg.emsize,
                  " and ", cfg.nhid);
    for (double p : {cfg.dropout, cfg.dropouth, cfg.dropoutx, cfg.dropouti, cfg.dropoute})
      DATANAS_CHECK(p >= 0 && p < 1, "RNN model: dropout probabilities must be in [0, 1), got ", p);
    DATANAS_CHECK(steps >= 1, "RNN model: the cell needs at least one node");
    DATANAS_CHECK(cfg.grouped_weight_bytes >= 0 && cfg.grouped_weight_rows >= 1,
                  "RNN model: grouped_weight_bytes must be >= 0 and grouped_weight_rows >= 1, got ",
                  cfg.grouped_weight_bytes, " and ", cfg.grouped_weight_rows);
    // Every weight U(-init_range, init_range) (DARTS' INITRANGE); the decoder bias is zero. Drawn
    // on the host in this order on every device.
    w0_ = nn::uniform_parameter<T, D>({cfg.emsize + cfg.nhid, 2 * cfg.nhid}, cfg.init_range, gen);
    ws_.resize(std::size_t(steps));
    for (auto& w : ws_) w = nn::uniform_parameter<T, D>({cfg.nhid, 2 * cfg.nhid}, cfg.init_range, gen);
    products_.resize(ws_.size() + 1);
    encoder_ = nn::uniform_parameter<T, D>({cfg.vocab, cfg.emsize}, cfg.init_range, gen);
    decoder_bias_ = Var<T, D>(Tensor<T, D>::zeros({cfg.vocab}), true);
    this->register_parameter("encoder.weight", encoder_);
    this->register_parameter("rnns.0._W0", w0_);
    for (std::size_t i = 0; i < ws_.size(); ++i) this->register_parameter("rnns.0._Ws." + std::to_string(i), ws_[i]);
    this->register_parameter("decoder.bias", decoder_bias_);
  }

  [[nodiscard]] const RnnConfig& config() const { return cfg_; }
  /// Zeros [B, H]: the hidden state at the start of a stream.
  [[nodiscard]] Tensor<T, D> init_hidden(index_t batch) const { return Tensor<T, D>::zeros({batch, cfg_.nhid}); }

  /// Runs the window inputs [T, B] (host token ids) from `hidden` [B, H]. In training mode the
  /// dropout masks are drawn from `gen` (a fixed number of counters per call); `weights` and
  /// `sparse` are for search cells (the estimator's sample, shared by every time step of the
  /// window). In sparse mode the search cell reads a host copy of `weights` (on a device: a wait
  /// for the stream); a dense one does not.
  RnnOutput<T, D> forward(const Tensor<std::int32_t>& inputs, const Tensor<T, D>& hidden, PhiloxGenerator& gen,
                          const Var<T, D>& weights = {}, bool sparse = false) const {
    return forward_ids(ids_on_device(inputs), hidden, gen, weights, sparse);
  }
  /// forward() with the ids [T, B] already on D. The model keeps a reference to them until the
  /// backward pass (the embedding's gradient reads them): do not overwrite them before.
  RnnOutput<T, D> forward_ids(const Tensor<std::int32_t, D>& ids, const Tensor<T, D>& hidden, PhiloxGenerator& gen,
                              const Var<T, D>& weights = {}, bool sparse = false) const {
    const bool host = sparse && weights.defined();
    return run(ids, hidden, gen, weights, sparse, host ? to_cpu(weights.value()) : Tensor<T>(), true);
  }

  /// The cell for one time step: h_t from x_t [B, E] and h_{t-1} [B, H].
  virtual Var<T, D> cell(const Var<T, D>& x, const Var<T, D>& h, const CellContext<T, D>& ctx) const = 0;
  [[nodiscard]] int steps() const { return int(ws_.size()); }

 protected:
  /// The window's ids on D: one copy to a device; on the Cpu a copy too, since the embedding's
  /// backward keeps them and the caller may reuse `inputs`.
  static Tensor<std::int32_t, D> ids_on_device(const Tensor<std::int32_t>& inputs) {
    if constexpr (is_cpu<D>)
      return inputs.clone();
    else
      return to_device_of<D>(inputs);
  }

  /// forward_ids() with the host copy of the weights given (see CellContext for it and for
  /// `all_none_possible`).
  RnnOutput<T, D> run(const Tensor<std::int32_t, D>& inputs, const Tensor<T, D>& hidden, PhiloxGenerator& gen,
                      const Var<T, D>& weights, bool sparse, Tensor<T> host_weights, bool all_none_possible) const {
    DATANAS_CHECK(inputs.rank() == 2 && inputs.dim(0) >= 1 && inputs.dim(1) >= 1,
                  "RNN forward: inputs must be [T, B] token ids, got ", inputs.shape().str());
    const index_t steps = inputs.dim(0), batch = inputs.dim(1);
    check_shape(hidden, Shape{batch, cfg_.nhid}, "RNN forward: hidden state");
    CellContext<T, D> ctx;
    ctx.training = this->training();
    ctx.weights = weights;
    ctx.host_weights = std::move(host_weights);
    ctx.sparse = sparse;
    ctx.all_none_possible = all_none_possible;
    Tensor<T, D> in_mask, out_mask, word_scale;
    if (ctx.training) {
      // Always the same draws, in this order, so that a window costs a fixed count of counters.
      ctx.x_mask = mask<D>({batch, cfg_.emsize}, cfg_.dropoutx, gen);
      ctx.h_mask = mask<D>({batch, cfg_.nhid}, cfg_.dropouth, gen);
      in_mask = mask<D>({batch, cfg_.emsize}, cfg_.dropouti, gen);
      out_mask = mask<D>({batch, cfg_.nhid}, cfg_.dropout, gen);
      word_scale = mask<D>({cfg_.vocab, 1}, cfg_.dropoute, gen);  // one scale per vocabulary word
    }
    // The whole window at once: one embedding, embedding dropout (each token's row scaled by its
    // word's scale, gathered on D like an embedding row) and input mask (time-shared: it tiles
    // over the T row blocks); time step t reads rows [tB, (t+1)B).
    const Tensor<std::int32_t, D> ids = inputs.reshape({steps * batch});
    Var<T, D> xs = embedding(encoder_, ids);
    if (word_scale.defined())
      xs = scale_rows(xs, embedding(Var<T, D>(word_scale), ids).value().reshape({steps * batch}));
    if (in_mask.defined()) xs = mul_mask(xs, in_mask);
    Var<T, D> h(hidden);
    std::vector<Var<T, D>>& outs = outs_;
    outs.resize(std::size_t(steps));
    const int group = int(std::clamp<index_t>(cfg_.grouped_weight_rows / batch, 1, 1 << 20));
    for (std::size_t i = 0; i < products_.size(); ++i) {
      const Var<T, D>& w = i == 0 ? w0_ : ws_[i - 1];
      products_[i].finish();  // (left started by a forward that threw)
      if (w.value().numel() * index_t(sizeof(T)) > cfg_.grouped_weight_bytes)
        products_[i].start(w, group);
    }
    for (index_t t = 0; t < steps; ++t) {
      h = cell(steps == 1 ? xs : slice_rows(xs, t * batch, batch), h, ctx);
      outs[std::size_t(t)] = h;
    }
    for (auto& p : products_) p.finish();
    RnnOutput<T, D> out;
    out.raw = stack_rows<T, D>(outs);
    outs.clear();  // the handles go (stack_rows' tape entry keeps what backward needs)
    const Var<T, D> dropped = out_mask.defined() ? mul_mask(out.raw, out_mask) : out.raw;
    out.logits = linear(dropped, encoder_, decoder_bias_);
    out.hidden = h.value();
    return out;
  }

  /// A dropout mask on device M with drop probability p, or an undefined tensor when p == 0
  /// (the same Philox words, so the same values, on every device).
  template <class M>
  static Tensor<T, M> mask(const Shape& s, double p, PhiloxGenerator& gen) {
    if (p == 0) return {};
    Tensor<T, M> m = Tensor<T, M>::empty(s);
    bernoulli_mask(m, 1.0 - p, gen);
    return m;
  }
  static Var<T, D> masked(const Var<T, D>& v, const Tensor<T, D>& m) { return m.defined() ? mul_mask(v, m) : v; }

  /// s0 = h + sigmoid(c0) (tanh(h0) - h), [c0 | h0] = [x * mx ; h * mh] W0.
  Var<T, D> init_state(const Var<T, D>& x, const Var<T, D>& h, const CellContext<T, D>& ctx) const {
    const Var<T, D> ch = product(0, concat_cols(masked(x, ctx.x_mask), masked(h, ctx.h_mask)), w0_);
    return highway(h, ch, RecurrentActivation::kTanh);
  }
  /// [c | h] = (s * mh) W_i.
  Var<T, D> gates(const Var<T, D>& s, int node, const CellContext<T, D>& ctx) const {
    return product(std::size_t(node) + 1, masked(s, ctx.h_mask), ws_[std::size_t(node)]);
  }
  /// a w, with w's gradient taken in groups over the window when run() has started them.
  Var<T, D> product(std::size_t i, const Var<T, D>& a, const Var<T, D>& w) const {
    return products_[i].started() ? products_[i](a) : matmul(a, w);
  }
  /// The mean of the states `which` (one op: a weighted sum with constant weights 1/n).
  static Var<T, D> average(std::span<const Var<T, D>> states, std::span<const int> which) {
    DATANAS_CHECK(!which.empty() && which.size() <= std::size_t(kMaxMixedTerms), "RNN cell: concat of ",
                  which.size(), " states (1 to ", kMaxMixedTerms, ")");
    if (which.size() == 1) return states[std::size_t(which[0])];
    std::array<Var<T, D>, kMaxMixedTerms> xs;
    std::array<int, kMaxMixedTerms> zero{};
    for (std::size_t i = 0; i < which.size(); ++i) xs[i] = states[std::size_t(which[i])];
    const Var<T, D> w(Tensor<T, D>::full({1}, T(1) / T(which.size())));
    return weighted_sum<T, D>(std::span<const Var<T, D>>(xs.data(), which.size()), w,
                              std::span<const int>(zero.data(), which.size()));
  }

  RnnConfig cfg_;
  Var<T, D> encoder_, decoder_bias_, w0_;
  std::vector<Var<T, D>> ws_;  // sized once in the constructor: registered addresses stay valid
  // Scratch kept between forwards so that a steady-state step allocates nothing on the heap
  // (tests/test_allocation.cpp, tests/gpu/test_host_allocation_gpu.cpp). A forward is not
  // reentrant on one model (as the batch norms' running statistics already make it). Empty
  // between forwards.
  mutable std::vector<Var<T, D>> outs_;
  // W0's and each W_i's products over the window, for the weights larger than
  // cfg_.grouped_weight_bytes (run() starts and finishes them): their weight gradients in groups
  // of cfg_.grouped_weight_rows rows, one product per group instead of per time step
  // (GroupedMatmul says why). Sized once in the constructor.
  mutable std::vector<GroupedMatmul<T, D>> products_;
};

/// The evaluation (train-from-scratch) model of a recurrent genotype. A node with several
/// (op, predecessor) terms (DATA's nested form) is their mean; terms on the same predecessor
/// share one matmul.
template <class T, RecurrentOpSetType Ops = DartsRnnOps, class D = Cpu>
class RnnEvalModel : public RnnModel<T, D> {
 public:
  RnnEvalModel(const RnnConfig& cfg, search::RecurrentGenotype genotype, PhiloxGenerator& gen)
      : RnnModel<T, D>(cfg, checked_steps(genotype), gen), genotype_(std::move(genotype)) {
    for (const auto& node : genotype_.nodes) {
      std::vector<RecurrentActivation> acts;
      for (const auto& p : node) acts.push_back(Ops::kActivations[std::size_t(Ops::index_of(p.op))]);
      acts_.push_back(std::move(acts));
    }
  }
  [[nodiscard]] const search::RecurrentGenotype& genotype() const { return genotype_; }

  Var<T, D> cell(const Var<T, D>& x, const Var<T, D>& h, const CellContext<T, D>& ctx) const override {
    std::vector<Var<T, D>>& states = states_;  // scratch (RnnModel::outs_ says why)
    std::vector<Var<T, D>>& ch = ch_;
    states.clear();
    states.push_back(this->init_state(x, h, ctx));
    ch.resize(genotype_.nodes.size() + 1);
    for (std::size_t i = 0; i < genotype_.nodes.size(); ++i) {
      const auto& node = genotype_.nodes[i];
      std::fill(ch.begin(), ch.end(), Var<T, D>());
      Var<T, D> s;
      for (std::size_t k = 0; k < node.size(); ++k) {
        const std::size_t p = std::size_t(node[k].input);
        if (!ch[p].defined()) ch[p] = this->gates(states[p], int(i), ctx);
        const Var<T, D> term = highway(states[p], ch[p], acts_[i][k]);
        s = s.defined() ? add(s, term) : term;
      }
      if (node.size() > 1) s = scale(s, T(1) / T(node.size()));
      states.push_back(s);
    }
    Var<T, D> out = RnnModel<T, D>::average(states, genotype_.concat);
    states.clear();
    ch.clear();
    return out;
  }

 private:
  static int checked_steps(const search::RecurrentGenotype& g) {
    search::validate(g, Ops::kNames, "RNN evaluation model");
    return int(g.nodes.size());
  }
  search::RecurrentGenotype genotype_;
  std::vector<std::vector<RecurrentActivation>> acts_;
  mutable std::vector<Var<T, D>> states_, ch_;  // one time step's scratch, empty between steps
};

/// What the recurrent search loop needs of a search model, independent of its compile-time
/// space (so the loop compiles once per scalar type and device).
template <class T, class D = Cpu>
class RnnSearchNetwork : public RnnModel<T, D> {
 public:
  RnnSearchNetwork(const RnnConfig& cfg, int nodes, PhiloxGenerator& gen) : RnnModel<T, D>(cfg, nodes, gen) {}
  /// The estimator's mixing weights [E * K] for the current alpha (one sample per call).
  virtual Var<T, D> mixing_weights(const estimators::EstimatorConfig& ec, PhiloxGenerator& gen) const = 0;
  [[nodiscard]] virtual GroupLayout layout() const = 0;
  [[nodiscard]] virtual bool hard_estimator() const = 0;
  [[nodiscard]] virtual estimators::Kind estimator_kind() const = 0;
  [[nodiscard]] virtual int ensemble_size() const = 0;
  [[nodiscard]] virtual std::span<const std::string_view> op_names() const = 0;
  [[nodiscard]] virtual std::span<const RecurrentActivation> op_activations() const = 0;
  [[nodiscard]] const Var<T, D>& alpha() const { return alpha_; }

  /// Samples the weights and runs the window (sparse only for hard estimators). Only sparse mode
  /// reads the weights on the host (on a device, a wait for the stream); a dense cell finds its
  /// all-none nodes on the device, and skips even that for DARTS' softmax (all weights > 0).
  RnnOutput<T, D> forward_sampled(const Tensor<std::int32_t>& inputs, const Tensor<T, D>& hidden,
                                  const estimators::EstimatorConfig& ec, PhiloxGenerator& noise_gen,
                                  PhiloxGenerator& dropout_gen, bool sparse) const {
    return forward_sampled_ids(this->ids_on_device(inputs), hidden, ec, noise_gen, dropout_gen, sparse);
  }
  /// forward_sampled() with the ids [T, B] already on D (see RnnModel::forward_ids).
  RnnOutput<T, D> forward_sampled_ids(const Tensor<std::int32_t, D>& ids, const Tensor<T, D>& hidden,
                                      const estimators::EstimatorConfig& ec, PhiloxGenerator& noise_gen,
                                      PhiloxGenerator& dropout_gen, bool sparse) const {
    const Var<T, D> w = mixing_weights(ec, noise_gen);
    const bool sp = sparse && hard_estimator();
    return this->run(ids, hidden, dropout_gen, w, sp, sp ? to_cpu(w.value()) : Tensor<T>(), !positive_weights(ec));
  }

  /// The search cell (file comment). Needs ctx.weights [E * K].
  Var<T, D> cell(const Var<T, D>& x, const Var<T, D>& h, const CellContext<T, D>& ctx) const override {
    const GroupLayout lay = layout();
    const auto acts = op_activations();
    DATANAS_CHECK(ctx.weights.defined() && ctx.weights.shape() == Shape{index_t(lay.edges()) * lay.ops},
                  "RNN search cell: mixing weights must be [", lay.edges() * lay.ops, "], got ",
                  ctx.weights.defined() ? ctx.weights.shape().str() : std::string("undefined"));
    // Sparse mode decides on the host; a dense cell runs every predecessor.
    const T* wp = ctx.host_weights.defined() ? ctx.host_weights.data() : nullptr;
    DATANAS_CHECK(wp || !ctx.sparse, "RNN search cell: sparse mode needs a host copy of the weights");
    std::array<Var<T, D>, 17> states;
    states[0] = bn(this->init_state(x, h, ctx));
    for (int i = 0; i < lay.nodes; ++i) {
      Var<T, D> node;
      for (int j = 0; j <= i; ++j) {
        const index_t off = index_t(search::rnn_edge_offset(i) + j) * lay.ops;
        if (ctx.sparse) {  // a predecessor none of whose ops was sampled costs nothing
          bool any = false;
          for (int k = 0; k < lay.ops; ++k) any = any || (wp[off + k] != T(0) && acts[std::size_t(k)] != RecurrentActivation::kNone);
          if (!any) continue;
        }
        const Var<T, D>& s = states[std::size_t(j)];
        const Var<T, D> term = highway_mix(s, this->gates(s, i, ctx), ctx.weights, off, acts, ctx.sparse);
        node = node.defined() ? add(node, term) : term;
      }
      // Every op the sample kept for this node is none (possible with hard estimators, dense or
      // sparse): the node is the zero state, without gradient (zero_if_all_none says why). In
      // sparse mode the host knows it; a dense node leaves it to the weights' device.
      if (ctx.sparse) {
        states[std::size_t(i + 1)] = !node.defined() || all_none(wp, i, lay, acts)
                                         ? Var<T, D>(Tensor<T, D>::zeros({x.shape()[0], this->cfg_.nhid}))
                                         : bn(node);
      } else if (ctx.all_none_possible) {
        const index_t first = index_t(search::rnn_edge_offset(i)) * lay.ops;
        states[std::size_t(i + 1)] = zero_if_all_none(bn(node), ctx.weights.value(), first, index_t(i + 1), acts);
      } else {
        states[std::size_t(i + 1)] = bn(node);
      }
    }
    std::array<int, 16> which{};
    for (int i = 0; i < lay.nodes; ++i) which[std::size_t(i)] = i + 1;
    return RnnModel<T, D>::average(std::span<const Var<T, D>>(states.data(), std::size_t(lay.nodes + 1)),
                                   std::span<const int>(which.data(), std::size_t(lay.nodes)));
  }

 protected:
  /// True when every mixing weight of this estimator is > 0 (so no node can be all-none and a
  /// dense cell needs no host decision): DARTS' softmax over softmax-normalised alpha. (A weight
  /// would underflow to 0 only for alpha logits about 100 apart.)
  [[nodiscard]] bool positive_weights(const estimators::EstimatorConfig& ec) const {
    return estimator_kind() == estimators::Kind::kSoftmax && ec.normalize == Normalize::kSoftmax;
  }
  /// True when every non-none weight of node i is 0.
  static bool all_none(const T* wp, int i, const GroupLayout& lay, std::span<const RecurrentActivation> acts) {
    for (int j = 0; j <= i; ++j)
      for (int k = 0; k < lay.ops; ++k)
        if (acts[std::size_t(k)] != RecurrentActivation::kNone &&
            wp[index_t(search::rnn_edge_offset(i) + j) * lay.ops + k] != T(0))
          return false;
    return true;
  }
  /// Non-affine batch norm of a state [B, H] with the batch's statistics, in training and in
  /// evaluation alike, through the 2-d op on [B, H, 1, 1]. DARTS keeps running statistics (one
  /// BatchNorm1d shared by s0 and the 8 nodes) for evaluation; that works for its softmax cell,
  /// whose nodes always mix the same ops, but a sampled cell (EGS, GDAS) changes each node's
  /// statistics with every sample, and evaluating with running averages let the states grow
  /// through the nodes and the time steps until they overflowed (NaN validation perplexity in
  /// our small searches). Batch statistics keep every sampled cell normalised; evaluation
  /// batches need at least 2 sequences.
  Var<T, D> bn(const Var<T, D>& s) const {
    const index_t b = s.shape()[0], hid = s.shape()[1];
    DATANAS_CHECK(b >= 2, "RNN search cell: batch norm needs a batch of at least 2, got ", b);
    const Var<T, D> y = batch_norm2d(view(s, Shape{b, hid, 1, 1}), Var<T, D>(), Var<T, D>(), Tensor<T, D>(),
                                     Tensor<T, D>(), true);
    return view(y, Shape{b, hid});
  }
  Var<T, D> alpha_;  // not registered: parameters() are the weights only
};

/// The recurrent supernet of a compile-time space. alpha [E, K] ~ 1e-3 N(0, 1) (DARTS), or
/// 1 + 1e-3 N(0, 1) with relu normalisation (the DATA code's convention); drawn on the host.
template <class T, class S, class D = Cpu>
class RnnSupernet final : public RnnSearchNetwork<T, D> {
 public:
  using Space = S;
  RnnSupernet(const RnnConfig& cfg, PhiloxGenerator& gen, Normalize normalize = Normalize::kSoftmax)
      : RnnSearchNetwork<T, D>(cfg, S::kNodes, gen) {
    const double shift = normalize == Normalize::kRelu ? 1.0 : 0.0;
    Tensor<T> a = Tensor<T>::empty({S::kEdges, S::kOps});
    for (index_t i = 0; i < a.numel(); ++i) a[i] = T(shift + 1e-3 * gen.normal());
    this->alpha_ = Var<T, D>(to_device_of<D>(a), true);
  }
  Var<T, D> mixing_weights(const estimators::EstimatorConfig& ec, PhiloxGenerator& gen) const override {
    return estimators::weights<typename S::EstimatorT>(this->alpha_, S::layout(), ec, gen);
  }
  [[nodiscard]] GroupLayout layout() const override { return S::layout(); }
  [[nodiscard]] bool hard_estimator() const override { return S::EstimatorT::kHard; }
  [[nodiscard]] estimators::Kind estimator_kind() const override { return S::EstimatorT::kKind; }
  [[nodiscard]] int ensemble_size() const override { return S::EstimatorT::kM; }
  [[nodiscard]] std::span<const std::string_view> op_names() const override { return S::OpSetT::kNames; }
  [[nodiscard]] std::span<const RecurrentActivation> op_activations() const override {
    return S::OpSetT::kActivations;
  }
};

}  // namespace datanas::spaces::rnn
