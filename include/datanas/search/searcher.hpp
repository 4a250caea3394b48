// datanas/search/searcher.hpp - the bilevel architecture search of ALGORITHMS.md §3.
//
// The training set is split 50/50 into a weight half and an architecture half. Each step runs
// one architecture step on an architecture-half batch (Adam on alpha; first order, or DARTS'
// second order with the finite-difference Hessian-vector product), then one weight step on a
// weight-half batch (SGD with momentum, weight decay, cosine lr, grad-norm clipping). SNAS is
// single level: one batch of the weight half updates weights and alpha together. Every forward
// draws a fresh estimator sample. All randomness comes from three counter-based generators
// whose state is checkpointed at each epoch end, so a resumed run is bit-identical.
#pragma once

#include <algorithm>
#include <array>
#include <chrono>
#include <cmath>
#include <numeric>
#include <optional>
#include <string>
#include <type_traits>
#include <variant>
#include <vector>

#include "datanas/data/augment.hpp"
#include "datanas/data/batch.hpp"
#include "datanas/io/checkpoint.hpp"
#include "datanas/io/progress.hpp"
#include "datanas/ops/tensor_math.hpp"
#include "datanas/optim/optimizers.hpp"
#include "datanas/search/derive.hpp"
#include "datanas/search/genotype.hpp"
#include "datanas/spaces/supernet.hpp"

namespace datanas::search {

struct SearchConfig {
  long epochs = 50;
  long batch_size = 64;
  // Weights (§3): SGD lr 0.025 cosine to 0.001, momentum 0.9, wd 3e-4, clip 5.
  double lr = 0.025, lr_min = 0.001, momentum = 0.9, weight_decay = 3e-4, grad_clip = 5.0;
  // Architecture: Adam lr 3e-4, betas (0.5, 0.999), wd 1e-3.
  double arch_lr = 3e-4, arch_beta1 = 0.5, arch_beta2 = 0.999, arch_weight_decay = 1e-3;
  double l1 = 0.0;     ///< coefficient of DATA's L1 term |p - code| (0 = off; the code uses 0.1)
  int order = 1;       ///< 1: first order; 2: DARTS' unrolled second order
  bool sparse = false; ///< run only the ops the (hard) sample selected
  bool single_level = false;  ///< SNAS: weights and alpha on the same batch
  estimators::TemperatureSchedule tau;
  int crop_pad = 0;    ///< random crop padding (4 on CIFAR; 0 = no crop/flip augmentation)
  std::uint64_t seed = 1;
  /// Cuda, dense steps only: capture each epoch's step once as a CUDA graph (after one eager
  /// step) and replay it for the epoch's other steps. Same results, bit for bit: the noise and
  /// Adam's step count advance before each replay exactly as in eager steps.
  bool cuda_graph = false;
};

/// What one epoch measured (accuracies in [0, 1]).
struct EpochStats {
  long epoch = 0;  ///< 1-based
  double train_loss = 0, train_acc = 0, arch_loss = 0, arch_acc = 0, lr = 0, tau = 0, seconds = 0;
  long steps = 0;
  double images_per_second = 0;
};

/// Mixing weights of a fixed, discrete cell: 1 on each (edge, op) of the genotype; for hard
/// estimators normalised per group as their samples are (w = b / |S|), for soft ones a plain
/// sum, as DARTS' evaluation network sums a node's ops.
template <class T>
Tensor<T> child_weights(const CellGenotype& cell, std::span<const std::string_view> op_names,
                        const estimators::GroupLayout& layout, bool hard) {
  Tensor<T> w = Tensor<T>::zeros({index_t(layout.edges()) * layout.ops});
  DATANAS_CHECK(int(cell.nodes.size()) == layout.nodes, "child_weights: genotype has ",
                cell.nodes.size(), " nodes, the cell ", layout.nodes);
  for (int i = 0; i < layout.nodes; ++i)
    for (const OpInput& p : cell.nodes[std::size_t(i)]) {
      const int k = int(std::find(op_names.begin(), op_names.end(), p.op) - op_names.begin());
      DATANAS_CHECK(k < int(op_names.size()), "child_weights: unknown op '", p.op, "'");
      DATANAS_CHECK(p.input >= 0 && p.input < i + 2, "child_weights: node ", i, " input ", p.input);
      if (p.op == "none") continue;
      w[index_t(edge_offset(i) + p.input) * layout.ops + k] = T(1);
    }
  if (hard)
    for (int g = 0; g < layout.count(); ++g) {
      const auto [o, n] = layout.group(g);
      T s = 0;
      for (index_t k = 0; k < n; ++k) s += w[o + k];
      if (s > 0)
        for (index_t k = 0; k < n; ++k) w[o + k] /= s;
    }
  return w;
}

/// The search loop over any SearchNetwork (compiled once per scalar type and device). Batches
/// are assembled on the host (augmentation is cheap next to a step) and copied to D into the
/// same device buffers every step; on a device a step is queued whole before the host reads the
/// values it logs (the losses, the correct counts), and, in sparse mode, it reads the sampled
/// codes (Supernet::forward). With cfg.cuda_graph the queued step is captured once per epoch and
/// replayed (StepGraph).
template <class T, class D = Cpu>
class Searcher {
 public:
  using Net = spaces::SearchNetwork<T, D>;

  /// `train`: the (possibly limited) training split; its first half trains the weights, its
  /// second half the architecture, and is the held-out half of the final evaluation.
  Searcher(Net& net, const data::LabelledImages& train, data::ChannelNorm norm, SearchConfig cfg)
      : net_(net), train_(train), norm_(norm), cfg_(cfg),
        weights_(net.weights()), alphas_(net.alphas()),
        w_opt_(weights_, cfg.lr, cfg.momentum, cfg.weight_decay),
        a_opt_(alphas_, cfg.arch_lr, cfg.arch_beta1, cfg.arch_beta2, cfg.arch_weight_decay),
        data_gen_(cfg.seed ^ 0x5EA4C4DA7A000001ull), aug_gen_(cfg.seed ^ 0x5EA4C4DA7A000002ull),
        noise_gen_(cfg.seed ^ 0x5EA4C4DA7A000003ull) {
    const index_t n = train.size();
    half_ = n / 2;
    DATANAS_CHECK(cfg.epochs >= 1, "search: --epochs must be >= 1, got ", cfg.epochs);
    DATANAS_CHECK(cfg.batch_size >= 1, "search: --batch-size must be >= 1");
    DATANAS_CHECK(half_ >= cfg.batch_size, "search: ", n, " training images give halves of ", half_,
                  ", fewer than one batch of ", cfg.batch_size);
    DATANAS_CHECK(cfg.order == 1 || cfg.order == 2, "search: --order must be 1 or 2, got ", cfg.order);
    DATANAS_CHECK(!(cfg.order == 2 && cfg.single_level), "search: SNAS is single level; --order 2 does not apply");
    DATANAS_CHECK(!cfg.cuda_graph || !is_cpu<D>, "search: --cuda-graph needs --device cuda");
    DATANAS_CHECK(!cfg.cuda_graph || !cfg.sparse, "search: --cuda-graph needs a dense step (a sparse step reads "
                  "the sampled architecture on the host to choose its ops); drop --sparse or --cuda-graph");
    if constexpr (!is_cpu<D>)
      if (cfg.cuda_graph) DeviceOps<D>::check_capturable("search");
    const Shape& s = train.images.shape();
    for (Batch* b : {&wb_, &ab_}) {
      b->x = Tensor<T>::empty({cfg.batch_size, s.c(), s.h(), s.w()});
      b->y = Tensor<std::int32_t>::empty({cfg.batch_size});
    }
    ec_.tau = cfg.tau.at(0, cfg.epochs);
  }

  [[nodiscard]] long epoch() const { return epoch_; }
  [[nodiscard]] long steps_per_epoch() const { return half_ / cfg_.batch_size; }
  [[nodiscard]] const SearchConfig& config() const { return cfg_; }
  [[nodiscard]] index_t held_out_begin() const { return half_; }

  /// Runs the next epoch (learning rate and temperature from the schedules at this epoch).
  EpochStats run_epoch(io::ProgressBar* bar = nullptr) {
    const auto t0 = std::chrono::steady_clock::now();
    EpochStats st;
    st.epoch = epoch_ + 1;
    st.lr = optim::cosine_lr(cfg_.lr, cfg_.lr_min, epoch_, cfg_.epochs);
    st.tau = cfg_.tau.at(epoch_, cfg_.epochs);
    w_opt_.set_lr(st.lr);
    ec_ = {st.tau, normalize_};
    std::vector<index_t> wrows = data::shuffled_indices(half_, data_gen_);
    std::vector<index_t> arows = data::shuffled_indices(train_.size() - half_, data_gen_);
    for (auto& r : arows) r += half_;
    const long steps = steps_per_epoch();
    long correct_w = 0, correct_a = 0;
    double loss_w = 0, loss_a = 0;
    net_.train();
    reset_graph();  // lr and tau are new: one capture serves the epoch
    for (long s = 0; s < steps; ++s) {
      const auto span_of = [&](const std::vector<index_t>& rows) {
        return std::span<const index_t>(rows).subspan(std::size_t(s * cfg_.batch_size), std::size_t(cfg_.batch_size));
      };
      load_batch(span_of(wrows), wb_);
      if (!cfg_.single_level) load_batch(span_of(arows), ab_);
      const auto [ra, rw] = search_step(st.lr);
      loss_a += ra.loss;
      correct_a += ra.correct;
      loss_w += rw.loss;
      correct_w += rw.correct;
      if (bar) bar->update(s + 1, loss_w / double(s + 1), double(correct_w) / double((s + 1) * cfg_.batch_size),
                           (s + 1) * cfg_.batch_size * (cfg_.single_level ? 1 : 2));
    }
    reset_graph();  // gives the graph's memory back for the evaluations between epochs
    const double denom = double(steps * cfg_.batch_size);
    st.steps = steps;
    st.train_loss = loss_w / double(steps);
    st.train_acc = double(correct_w) / denom;
    st.arch_loss = loss_a / double(steps);
    st.arch_acc = double(correct_a) / denom;
    st.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    st.images_per_second = denom * (cfg_.single_level ? 1 : 2) / std::max(st.seconds, 1e-9);
    ++epoch_;
    return st;
  }

  /// Normalisation used by the estimator (softmax or relu).
  void set_normalize(Normalize n) {
    reset_graph();
    normalize_ = n;
    ec_.normalize = n;
  }

  // ---- evaluation on the held-out half (the paper's Table 8) ----------------------------------

  /// (a) Top-1 error of the supernet under its architecture distribution: a fresh sample per
  /// batch, BN in evaluation mode.
  double supernet_error(long max_images = 0) {
    return held_out_error(max_images, [&](const Var<T, D>& x) {
      return net_.forward(x, ec_, noise_gen_, cfg_.sparse);
    });
  }

  /// (b) Top-1 error of the derived discrete cell with the inherited weights, after recomputing
  /// the BN statistics (cumulative average over `bn_batches` weight-half batches).
  double child_error(const Genotype& g, long bn_batches = 20, long max_images = 0) {
    const auto layout = net_.layout();
    const bool hard = net_.hard_estimator();
    Var<T, D> wn(to_device_of<D>(child_weights<T>(g.normal, net_.op_names(), layout, hard)));
    Var<T, D> wr(to_device_of<D>(child_weights<T>(g.reduce, net_.op_names(), layout, hard)));
    std::vector<nn::BatchNorm2d<T, D>*> bns;
    net_.visit_modules([&](nn::Module<T, D>& m) {
      if (auto* bn = dynamic_cast<nn::BatchNorm2d<T, D>*>(&m)) bns.push_back(bn);
    });
    std::vector<T> momenta;
    for (auto* bn : bns) {
      momenta.push_back(bn->momentum());
      bn->reset_running_stats();
    }
    {
      NoGradGuard ng;
      net_.train();
      PhiloxGenerator order_gen(cfg_.seed ^ 0xB17C0DEull);
      auto rows = data::shuffled_indices(half_, order_gen);
      const long batches = std::min<long>(bn_batches, long(half_ / cfg_.batch_size));
      for (long b = 0; b < batches; ++b) {
        for (auto* bn : bns) bn->set_momentum(T(1) / T(b + 1));
        data::gather_normalized<T>(train_, std::span<const index_t>(rows).subspan(std::size_t(b * cfg_.batch_size), std::size_t(cfg_.batch_size)),
                                   norm_, wb_.x, wb_.y);
        wb_.upload();
        net_.forward(Var<T, D>(wb_.xd), wn, wr, true);
      }
    }
    for (std::size_t i = 0; i < bns.size(); ++i) bns[i]->set_momentum(momenta[i]);
    return held_out_error(max_images, [&](const Var<T, D>& x) { return net_.forward(x, wn, wr, true); });
  }

  // ---- derivation -----------------------------------------------------------------------------

  [[nodiscard]] AlphaPair alpha_pair() const {
    auto to_matrix = [](const Var<T, D>& a) {
      AlphaMatrix m{int(a.shape()[0]), int(a.shape()[1]), {}};
      const Tensor<T> h = to_cpu(a.value());
      m.logits.assign(h.data(), h.data() + h.numel());
      return m;
    };
    AlphaPair p;
    p.normal = to_matrix(net_.alpha_normal());
    p.reduce = to_matrix(net_.alpha_reduce());
    return p;
  }

  // ---- checkpoints ----------------------------------------------------------------------------

  void save(io::Checkpoint& ck) const {
    io::put_module(ck, "model.", net_);
    ck.put("alpha.normal", net_.alpha_normal().value());
    ck.put("alpha.reduce", net_.alpha_reduce().value());
    io::put_optimizer(ck, "w_opt.", const_cast<optim::SGD<T, D>&>(w_opt_));
    io::put_optimizer(ck, "a_opt.", const_cast<optim::Adam<T, D>&>(a_opt_));
    io::put_generator(ck, "gen.data", data_gen_);
    io::put_generator(ck, "gen.aug", aug_gen_);
    io::put_generator(ck, "gen.noise", noise_gen_);
    ck.put("epoch", std::int64_t(epoch_));
  }
  void restore(const io::Checkpoint& ck) {
    reset_graph();
    io::restore_module(ck, "model.", net_);
    ck.get_tensor_into("alpha.normal", net_.alpha_normal().value());
    ck.get_tensor_into("alpha.reduce", net_.alpha_reduce().value());
    io::restore_optimizer(ck, "w_opt.", w_opt_);
    io::restore_optimizer(ck, "a_opt.", a_opt_);
    io::restore_generator(ck, "gen.data", data_gen_);
    io::restore_generator(ck, "gen.aug", aug_gen_);
    io::restore_generator(ck, "gen.noise", noise_gen_);
    epoch_ = long(ck.get_int("epoch"));
  }

  struct StepResult {
    double loss;   ///< cross-entropy of the batch (plus the L1 term for architecture steps)
    long correct;  ///< correctly classified images of the batch
  };

  /// Loads the next weight-half and architecture-half batches (custom loops and tests).
  void load_batches(std::span<const index_t> weight_rows, std::span<const index_t> arch_rows) {
    load_batch(weight_rows, wb_);
    load_batch(arch_rows, ab_);
  }
  /// One architecture step on the loaded batches (first or second order per the config;
  /// `eta` is the current weight learning rate, used by the unrolled step).
  StepResult arch_step(double eta) { return finish(queue_arch_step(eta)); }
  /// One weight step on the loaded weight batch.
  StepResult weight_step() { return finish(queue_weight_step()); }
  /// The estimator settings of the current epoch.
  void set_estimator_config(const estimators::EstimatorConfig& ec) {
    reset_graph();
    ec_ = ec;
  }

  /// One whole search step on the loaded batches, as run_epoch runs it: {architecture, weight}
  /// results (SNAS: the single-level step's, twice). `eta` is the weight learning rate. With
  /// cfg.cuda_graph the first call runs eagerly (so the capture does no first-use work: cuDNN
  /// plans, optimiser state), the step is then captured, and later calls replay it (a call with
  /// another eta, or after the settings changed, captures again).
  std::pair<StepResult, StepResult> search_step(double eta) {
    if constexpr (!is_cpu<D>) {
      if (cfg_.cuda_graph) {
        if (captured_ && captured_eta_ == eta) {
          graph_.replay();
          return finish(*captured_);
        }
        reset_graph();
        const StepPair r = finish(queue_step(eta));
        captured_.emplace(graph_.capture([&] { return queue_step(eta); }));
        captured_eta_ = eta;
        return r;
      }
    }
    return finish(queue_step(eta));
  }

 private:
  /// A batch: host images and labels, and their copies on D (the same tensors on the Cpu).
  struct Batch {
    Tensor<T> x;
    Tensor<std::int32_t> y;
    Tensor<T, D> xd;
    Tensor<std::int32_t, D> yd;
    /// On a device the copies go into the same buffers every time: a captured step reads them
    /// there (stream order keeps a copy behind the kernels that read the previous batch).
    void upload() {
      if constexpr (is_cpu<D>) {
        xd = x;
        yd = y;
      } else {
        if (!xd.defined() || !(xd.shape() == x.shape())) xd = Tensor<T, D>::empty(x.shape());
        if (!yd.defined() || !(yd.shape() == y.shape())) yd = Tensor<std::int32_t, D>::empty(y.shape());
        upload_into(xd, x);
        upload_into(yd, y);
      }
    }
  };

  /// What a queued step leaves for the host to read once its work is queued: the losses to check
  /// for divergence (in the order computed: the first non-finite one names where), which of them
  /// is reported, and the logits of the reported loss with the batch they classify. On a device
  /// these are device tensors; in a captured step they live in the graph and every replay
  /// rewrites them.
  struct Queued {
    static constexpr int kMaxChecks = 4;
    std::array<Tensor<T, D>, kMaxChecks> losses;
    std::array<const char*, kMaxChecks> where{};
    int count = 0, reported = 0;
    Tensor<T, D> logits;
    const Batch* batch = nullptr;
    void check(const Var<T, D>& loss, const char* w) {
      losses[std::size_t(count)] = loss.value();
      where[std::size_t(count++)] = w;
    }
    void report(const Var<T, D>& loss, const Var<T, D>& lg, const char* w, const Batch& b) {
      reported = count;
      check(loss, w);
      logits = lg.value();
      batch = &b;
    }
  };
  /// A whole search step: architecture then weights (bilevel), or one single-level update
  /// (reported twice, as both halves of the log).
  struct QueuedStep {
    Queued arch, weight;
  };
  using StepPair = std::pair<StepResult, StepResult>;

  StepResult finish(const Queued& q) const {
    double reported = 0;
    for (int i = 0; i < q.count; ++i) {
      const double l = checked(q.losses[std::size_t(i)], q.where[std::size_t(i)]);
      if (i == q.reported) reported = l;
    }
    return {reported, correct_count(q.logits, q.batch->yd)};
  }
  StepPair finish(const QueuedStep& q) const {
    if (cfg_.single_level) {
      const StepResult r = finish(q.arch);
      return {r, r};
    }
    const StepResult a = finish(q.arch);
    return {a, finish(q.weight)};
  }

  /// Drops the captured step (its values would be stale); a no-op without one.
  void reset_graph() {
    if constexpr (!is_cpu<D>) {
      captured_.reset();
      graph_.reset();
    }
  }

  QueuedStep queue_step(double eta) {
    if (cfg_.single_level) return {queue_single_level_step(), {}};
    Queued a = queue_arch_step(eta);
    return {std::move(a), queue_weight_step()};
  }
  Queued queue_arch_step(double eta) {
    return cfg_.order == 2 ? arch_step_second_order(eta) : arch_step_first_order();
  }

  /// Assembles a batch on the host and copies it into the device buffers (on the Cpu they are the
  /// same storage); a step's forwards all read the device copy.
  void load_batch(std::span<const index_t> rows, Batch& b) {
    if (cfg_.crop_pad > 0)
      data::random_crop_flip<T>(train_, rows, cfg_.crop_pad, norm_, aug_gen_, b.x, b.y);
    else
      data::gather_normalized<T>(train_, rows, norm_, b.x, b.y);
    b.upload();
  }

  /// Correctly classified rows, counted on D (the host reads 4 bytes, not the logits).
  static long correct_count(const Tensor<T, D>& logits, const Tensor<std::int32_t, D>& y) {
    return long(to_cpu(count_correct(logits, y))[0]);
  }

  static void set_requires_grad(const std::vector<Var<T, D>>& vs, bool on) {
    for (const auto& v : vs) v.set_requires_grad(on);
  }

  static double checked(const Tensor<T, D>& loss, const char* where) {
    const double l = double(to_cpu(loss)[0]);
    DATANAS_CHECK(std::isfinite(l), "search diverged: ", where, " loss is ", l,
                  " (lower --lr or --arch-lr, or check the data)");
    return l;
  }

  /// Architecture loss on (x, y): cross-entropy plus the optional L1 term; gradients to alpha
  /// (and to the weights only if they require grad).
  struct Loss {
    Var<T, D> loss, logits;
  };
  Loss arch_loss(const Batch& b) {
    const auto layout = net_.layout();
    Var<T, D> wn = net_.mixing_weights(net_.alpha_normal(), ec_, noise_gen_);
    Var<T, D> wr = net_.mixing_weights(net_.alpha_reduce(), ec_, noise_gen_);
    Var<T, D> logits = net_.forward(Var<T, D>(b.xd), wn, wr, cfg_.sparse && net_.hard_estimator());
    Var<T, D> loss = cross_entropy(logits, b.yd);
    if (cfg_.l1 > 0) {
      for (const auto& [alpha, w] : {std::pair{net_.alpha_normal(), wn}, std::pair{net_.alpha_reduce(), wr}}) {
        Tensor<T, D> code = Tensor<T, D>::empty(w.shape());
        indicator_positive(w.value(), code);  // DATA's sampled code, w > 0, formed on D
        Var<T, D> p = estimators::group_probabilities(alpha, layout, normalize_, noise_gen_);
        loss = add(loss, estimators::l1_to_code(p, code, T(cfg_.l1)));
      }
    }
    return {loss, logits};
  }

  Queued arch_step_first_order() {
    set_requires_grad(weights_, false);  // only dL/dalpha is needed: skip every dW kernel
    const Loss r = arch_loss(ab_);
    a_opt_.zero_grad();
    backward(r.loss);
    set_requires_grad(weights_, true);
    a_opt_.step();
    Queued q;  // read by finish() once the step is queued: on a device the host waits only then
    q.report(r.loss, r.logits, "architecture", ab_);
    return q;
  }

  /// DARTS' unrolled step: alpha grad = dL_val(w', a)/da - eta * (dL_train(w+)/da -
  /// dL_train(w-)/da) / (2 eps), w' = w - eta (mu buf + dL_train/dw + wd w), w+- = w +- eps v,
  /// v = dL_val(w')/dw', eps = 0.01 / ||v||.
  Queued arch_step_second_order(double eta) {
    ensure_backups();
    Queued q;  // every loss is checked by finish(), after the whole step is queued
    // 1. w' from the training gradient at w.
    set_requires_grad(alphas_, false);
    for (auto& w : weights_) w.zero_grad();
    {
      Var<T, D> l = cross_entropy(net_.forward(Var<T, D>(wb_.xd), ec_, noise_gen_, cfg_.sparse), wb_.yd);
      q.check(l, "unrolled training");
      backward(l);
    }
    auto& bufs = w_opt_.momentum_buffers();
    for (std::size_t i = 0; i < weights_.size(); ++i) {
      const auto& w = weights_[i];
      backup_[i].copy_from(w.value());
      if constexpr (is_cpu<D>) {
        auto g = w.has_grad() ? w.grad().eigen() : (tmp_[i].fill(T(0)), tmp_[i].eigen());
        auto step = T(cfg_.weight_decay) * w.value().eigen() + g;
        if (bufs[i].defined())
          w.value().eigen() -= T(eta) * (T(cfg_.momentum) * bufs[i].eigen() + step);
        else
          w.value().eigen() -= T(eta) * step;
      } else {
        // The same expression in steps: tmp = wd w + g; tmp = mu buf + tmp; w -= eta tmp.
        if (w.has_grad())
          axpby<T, D>(T(cfg_.weight_decay), w.value(), T(1), w.grad(), tmp_[i]);
        else
          axpby<T, D>(T(cfg_.weight_decay), w.value(), T(0), w.value(), tmp_[i]);
        if (bufs[i].defined()) axpby<T, D>(T(cfg_.momentum), bufs[i], T(1), tmp_[i], tmp_[i]);
        axpby<T, D>(T(1), w.value(), T(-eta), tmp_[i], w.value());
      }
    }
    // 2. dL_val(w', alpha)/dalpha and v = dL_val/dw'.
    set_requires_grad(alphas_, true);
    for (auto& w : weights_) w.zero_grad();
    a_opt_.zero_grad();
    const Loss r = arch_loss(ab_);
    q.report(r.loss, r.logits, "architecture", ab_);
    backward(r.loss);
    double vnorm2 = 0;
    for (std::size_t i = 0; i < weights_.size(); ++i) {
      const auto& w = weights_[i];
      if (w.has_grad()) {
        v_[i].copy_from(w.grad());
        if constexpr (is_cpu<D>) vnorm2 += double(v_[i].eigen().square().sum());
      } else {
        v_[i].fill(T(0));
      }
    }
    // On a device eps stays there (a tensor [1]): the finite difference needs no host read.
    Tensor<T, D> eps_dev;
    if constexpr (!is_cpu<D>) eps_dev = norm_ratio(squared_norm<T, D>(v_), 0.01, 1e-12);
    for (std::size_t i = 0; i < alphas_.size(); ++i) dalpha_[i].copy_from(alphas_[i].grad());
    const double eps = 0.01 / std::max(std::sqrt(vnorm2), 1e-12);
    // 3. dL_train/dalpha at w + eps v and w - eps v (on the original w).
    set_requires_grad(weights_, false);
    for (int sign : {+1, -1}) {
      for (std::size_t i = 0; i < weights_.size(); ++i) {
        if constexpr (is_cpu<D>)
          weights_[i].value().eigen() = backup_[i].eigen() + T(sign * eps) * v_[i].eigen();
        else
          axpby<T, D>(T(1), backup_[i], T(sign), eps_dev, v_[i], weights_[i].value());
      }
      a_opt_.zero_grad();
      Var<T, D> lt = cross_entropy(net_.forward(Var<T, D>(wb_.xd), ec_, noise_gen_, cfg_.sparse), wb_.yd);
      q.check(lt, "finite-difference training");
      backward(lt);
      for (std::size_t i = 0; i < alphas_.size(); ++i) {
        auto gp = (sign > 0 ? gplus_[i] : gminus_[i]);
        if (alphas_[i].has_grad()) gp.copy_from(alphas_[i].grad()); else gp.fill(T(0));
      }
    }
    // 4. Combine, restore w, step alpha. (p - n) / (2 eps): the parentheses DARTS' code lacks.
    for (std::size_t i = 0; i < weights_.size(); ++i) weights_[i].value().copy_from(backup_[i]);
    set_requires_grad(weights_, true);
    a_opt_.zero_grad();
    for (std::size_t i = 0; i < alphas_.size(); ++i) {
      auto slot = alphas_[i].grad_slot();
      if constexpr (is_cpu<D>) {
        slot.g.eigen() = dalpha_[i].eigen() - T(eta) * (gplus_[i].eigen() - gminus_[i].eigen()) / T(2 * eps);
      } else {
        axpby<T, D>(T(1), gplus_[i], T(-1), gminus_[i], gplus_[i]);
        axpby<T, D>(T(1), dalpha_[i], T(-eta / 2), reciprocal(eps_dev), gplus_[i], slot.g);
      }
    }
    a_opt_.step();
    for (auto& w : weights_) w.zero_grad();
    return q;
  }

  Queued queue_weight_step() {
    set_requires_grad(alphas_, false);
    Var<T, D> logits = net_.forward(Var<T, D>(wb_.xd), ec_, noise_gen_, cfg_.sparse);
    Var<T, D> loss = cross_entropy(logits, wb_.yd);
    w_opt_.zero_grad();
    backward(loss);
    set_requires_grad(alphas_, true);
    clip_weights();
    w_opt_.step();
    Queued q;
    q.report(loss, logits, "weight", wb_);
    return q;
  }

  Queued queue_single_level_step() {
    const Loss r = arch_loss(wb_);
    w_opt_.zero_grad();
    a_opt_.zero_grad();
    backward(r.loss);
    clip_weights();
    w_opt_.step();
    a_opt_.step();
    Queued q;
    q.report(r.loss, r.logits, "training", wb_);
    return q;
  }

  /// Clips the weights' gradient norm to cfg_.grad_clip (on a device without synchronising).
  void clip_weights() { optim::clip_grad_norm<T, D>(weights_, cfg_.grad_clip); }

  void ensure_backups() {
    if (!backup_.empty()) return;
    for (const auto& w : weights_) {
      backup_.push_back(Tensor<T, D>::empty(w.shape()));
      v_.push_back(Tensor<T, D>::empty(w.shape()));
      tmp_.push_back(Tensor<T, D>::empty(w.shape()));
    }
    for (const auto& a : alphas_) {
      dalpha_.push_back(Tensor<T, D>::empty(a.shape()));
      gplus_.push_back(Tensor<T, D>::empty(a.shape()));
      gminus_.push_back(Tensor<T, D>::empty(a.shape()));
    }
  }

  template <class F>
  double held_out_error(long max_images, F&& forward) {
    NoGradGuard ng;
    net_.eval();
    const index_t total = train_.size() - half_;
    const index_t limit = max_images > 0 ? std::min<index_t>(total, max_images) : total;
    long wrong = 0, seen = 0;
    std::vector<index_t> rows(static_cast<std::size_t>(cfg_.batch_size));
    for (index_t start = 0; start + cfg_.batch_size <= limit; start += cfg_.batch_size) {
      std::iota(rows.begin(), rows.end(), half_ + start);
      data::gather_normalized<T>(train_, rows, norm_, ab_.x, ab_.y);
      ab_.upload();
      const long c = correct_count(forward(Var<T, D>(ab_.xd)).value(), ab_.yd);
      wrong += cfg_.batch_size - c;
      seen += cfg_.batch_size;
    }
    net_.train();
    DATANAS_CHECK(seen > 0, "held-out evaluation: fewer held-out images than one batch");
    return double(wrong) / double(seen);
  }

  Net& net_;
  const data::LabelledImages& train_;
  data::ChannelNorm norm_;
  SearchConfig cfg_;
  std::vector<Var<T, D>> weights_, alphas_;
  optim::SGD<T, D> w_opt_;
  optim::Adam<T, D> a_opt_;
  PhiloxGenerator data_gen_, aug_gen_, noise_gen_;
  estimators::EstimatorConfig ec_;
  Normalize normalize_ = Normalize::kSoftmax;
  index_t half_ = 0;
  long epoch_ = 0;
  Batch wb_, ab_;  // the weight-half and architecture-half batches
  std::vector<Tensor<T, D>> backup_, v_, tmp_, dalpha_, gplus_, gminus_;
  // cfg.cuda_graph: the captured step, what it leaves to read, and the eta it was captured with.
  std::conditional_t<is_cpu<D>, std::monostate, StepGraph<D>> graph_;
  std::optional<QueuedStep> captured_;
  double captured_eta_ = 0;
};

}  // namespace datanas::search
