// datanas/search/rnn_searcher.hpp - the recurrent architecture search of ALGORITHMS.md §3-4 on
// a word-level corpus, as DARTS' rnn/train_search.py runs it (first order):
//
//   for each window i of the training stream (length bptt, or bptt / 2 with probability 0.05):
//     lr of the step = lr * seq_len / bptt
//     architecture step: Adam on alpha, loss = CE on the window of the *validation* stream
//       (batchified with the training batch size) at row i mod (rows - 1), length bptt, with its
//       own hidden state carried across steps
//     weight step: SGD (weight decay, no momentum) on CE + beta * TAR of the training window,
//       joint gradient norm clipped
//   then the validation perplexity (eval batch size, fixed windows).
// Every forward draws a fresh estimator sample, shared by all time steps of its window, and
// fresh dropout masks. All randomness comes from three counter-based generators checkpointed at
// each epoch end, so a resumed run is bit-identical.
//
// The loop is a template on the device D (Cpu by default). The token streams stay on the host
// (windows are cut there; each step copies its windows' ids and targets to D). On a device a
// search step waits for the GPU only to read the two losses and the correct count for the log,
// after both the architecture and the weight step are queued, and, in sparse mode, where the
// search cell reads a host copy of the mixing weights (RnnSearchNetwork::forward_sampled).
// With cfg.cuda_graph (dense steps on a device) each search step is captured once per epoch and
// pair of window lengths, and replayed: the epoch's graphs share one memory pool (they replay
// one at a time, and each step's results are read before the next replays), the windows are
// copied into that graph's fixed buffers before each replay, the hidden states are carried in
// fixed buffers, and the dropout masks and estimator noise are drawn on the device from counters
// reserved before each replay, so the replays compute exactly what eager steps compute. A
// checkpoint holds host tensors: it resumes on either device.
#pragma once

#include <array>
#include <chrono>
#include <cmath>
#include <string>
#include <type_traits>
#include <utility>
#include <variant>
#include <vector>

#include "datanas/data/ptb.hpp"
#include "datanas/estimators/estimators.hpp"
#include "datanas/io/checkpoint.hpp"
#include "datanas/io/progress.hpp"
#include "datanas/optim/optimizers.hpp"
#include "datanas/search/rnn_genotype.hpp"
#include "datanas/spaces/rnn_space.hpp"
#include "datanas/train/language_model.hpp"

namespace datanas::search {

struct RnnSearchConfig {
  long epochs = 50;
  index_t batch_size = 256;      ///< training and architecture batches
  index_t eval_batch_size = 10;  ///< validation perplexity
  index_t bptt = 35;
  index_t max_seq_len_delta = 20;
  bool seq_jitter = false;  ///< N(bptt, 5) window lengths; DARTS' search script has them off
  // Weights (§4): SGD lr 20, no momentum, wd 5e-7, clip 0.25; TAR beta 1e-3 (DARTS default).
  double lr = 20, weight_decay = 5e-7, clip = 0.25, beta = 1e-3;
  // Architecture: Adam lr 3e-3, torch's default betas (DARTS rnn/architect.py), wd 1e-3.
  double arch_lr = 3e-3, arch_beta1 = 0.9, arch_beta2 = 0.999, arch_weight_decay = 1e-3;
  bool sparse = false;  ///< run only the sampled (predecessor, op) terms (hard estimators)
  bool cuda_graph = false;  ///< replay captured steps (dense, on a device; file comment)
  estimators::TemperatureSchedule tau;
  Normalize normalize = Normalize::kSoftmax;
  std::uint64_t seed = 1;
};

struct RnnSearchEpoch {
  long epoch = 0;  ///< 1-based
  double train_loss = 0, train_acc = 0, arch_loss = 0, valid_loss = 0, lr = 0, tau = 0, seconds = 0;
  long steps = 0, tokens = 0;
  double tokens_per_second = 0;  ///< training + architecture tokens per second (excluding validation)
};

template <class T, class D = Cpu>
class RnnSearcher {
 public:
  using Net = spaces::rnn::RnnSearchNetwork<T, D>;

  /// train: the training stream batchified with batch_size; search: the validation stream
  /// batchified with batch_size (architecture steps); valid: the validation stream batchified
  /// with eval_batch_size (perplexity). The streams must outlive the searcher.
  RnnSearcher(Net& net, const Tensor<std::int32_t>& train, const Tensor<std::int32_t>& search,
              const Tensor<std::int32_t>& valid, RnnSearchConfig cfg)
      : net_(net), train_(train), search_(search), valid_(valid), cfg_(cfg), weights_(net.parameters()),
        alphas_{net.alpha()},
        w_opt_(weights_, cfg.lr, 0.0, cfg.weight_decay),
        a_opt_(alphas_, cfg.arch_lr, cfg.arch_beta1, cfg.arch_beta2, cfg.arch_weight_decay),
        data_gen_(cfg.seed ^ 0x52AA5EA4C4000001ull), noise_gen_(cfg.seed ^ 0x52AA5EA4C4000002ull),
        dropout_gen_(cfg.seed ^ 0x52AA5EA4C4000003ull) {
    DATANAS_CHECK(cfg.epochs >= 1, "search: --epochs must be >= 1, got ", cfg.epochs);
    DATANAS_CHECK(cfg.bptt >= 2, "search: --bptt must be >= 2, got ", cfg.bptt);
    DATANAS_CHECK(train.dim(1) == cfg.batch_size && search.dim(1) == cfg.batch_size, "search: the training and "
                  "architecture streams must be batchified with the batch size ", cfg.batch_size);
    DATANAS_CHECK(train.dim(0) >= 3 && search.dim(0) >= 2, "search: streams too short (", train.dim(0), " and ",
                  search.dim(0), " rows)");
    DATANAS_CHECK(cfg.batch_size >= 2, "search: the batch norm of the search cell needs a batch of >= 2");
    DATANAS_CHECK(!cfg.cuda_graph || !is_cpu<D>, "search: --cuda-graph needs --device cuda");
    DATANAS_CHECK(!cfg.cuda_graph || !cfg.sparse, "search: --cuda-graph needs a dense step (a sparse step reads "
                  "the sampled architecture on the host to choose its terms); drop --sparse or --cuda-graph");
    if constexpr (!is_cpu<D>)
      if (cfg.cuda_graph) DeviceOps<D>::check_capturable("search");
    ec_ = {cfg.tau.at(0, cfg.epochs), cfg.normalize};
  }

  [[nodiscard]] long epoch() const { return epoch_; }
  [[nodiscard]] const RnnSearchConfig& config() const { return cfg_; }
  /// Search steps replayed from captured graphs so far (cfg.cuda_graph; 0 otherwise).
  [[nodiscard]] long replayed_steps() const {
    if constexpr (is_cpu<D>)
      return 0;
    else
      return graphs_.replayed();
  }
  /// About how many windows an epoch has (the exact count depends on the sampled lengths).
  [[nodiscard]] long estimated_steps() const { return long((train_.dim(0) - 2) / cfg_.bptt) + 1; }

  /// Runs the next epoch, then measures the validation loss.
  RnnSearchEpoch run_epoch(io::ProgressBar* bar = nullptr) {
    const auto t0 = std::chrono::steady_clock::now();
    RnnSearchEpoch st;
    st.epoch = epoch_ + 1;
    st.lr = cfg_.lr;
    st.tau = cfg_.tau.at(epoch_, cfg_.epochs);
    ec_ = {st.tau, cfg_.normalize};
    const data::BpttSampler sampler{cfg_.bptt, cfg_.max_seq_len_delta, cfg_.seq_jitter};
    const index_t rows = train_.dim(0), search_rows = search_.dim(0), batch = cfg_.batch_size;
    reset_graphs();  // an epoch that threw may have left some
    Tensor<T, D> hidden = net_.init_hidden(batch), hidden_valid = net_.init_hidden(batch);
    net_.train();
    double loss_w = 0, loss_a = 0;
    long correct = 0, tokens = 0, steps = 0;
    const long estimate = estimated_steps();
    for (index_t i = 0; i < rows - 2;) {
      const index_t seq_len = sampler(data_gen_);
      w_opt_.set_lr(cfg_.lr * double(seq_len) / double(cfg_.bptt));
      // The architecture step's window of the validation stream, then the weight step's.
      const data::Window wa = data::get_window(search_, i % (search_rows - 1), cfg_.bptt);
      const data::Window ww = data::get_window(train_, i, seq_len);
      const auto [arch, r] = search_step(wa, ww, seq_len, hidden, hidden_valid, st.epoch, steps);
      loss_a += arch;
      loss_w += r.loss * double(r.tokens);
      correct += r.correct;
      tokens += r.tokens;
      ++steps;
      i += seq_len;
      if (bar)
        bar->update(std::min(steps, estimate - (i < rows - 2 ? 1 : 0)), loss_w / double(tokens),
                    double(correct) / double(tokens), tokens + steps * long(cfg_.bptt * batch));
    }
    reset_graphs();  // their buffers and hidden states are this epoch's
    w_opt_.set_lr(cfg_.lr);
    st.steps = steps;
    st.tokens = tokens;
    st.train_loss = loss_w / double(tokens);
    st.train_acc = double(correct) / double(tokens);
    st.arch_loss = loss_a / double(steps);
    const double train_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    st.tokens_per_second = double(tokens + steps * cfg_.bptt * batch) / std::max(train_seconds, 1e-9);
    st.valid_loss = valid_loss();
    st.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    ++epoch_;
    return st;
  }

  /// Mean cross-entropy of the validation stream under the estimator's distribution (a fresh
  /// sample per window; batch norm with running statistics, no dropout).
  double valid_loss() {
    net_.eval();
    const auto l = train::evaluate_stream<T, D>(valid_, cfg_.bptt, net_.config().nhid,
                                                [&](const Tensor<std::int32_t>& in, const Tensor<T, D>& h) {
                                                  return net_.forward_sampled(in, h, ec_, noise_gen_, dropout_gen_,
                                                                              cfg_.sparse);
                                                });
    net_.train();
    return l.mean();
  }

  /// alpha as a matrix of logits (rows: (node, predecessor) in node order; columns: ops).
  [[nodiscard]] AlphaMatrix alpha_matrix() const {
    const Var<T, D>& a = net_.alpha();
    AlphaMatrix m{int(a.shape()[0]), int(a.shape()[1]), {}};
    const Tensor<T> h = to_cpu(a.value());
    m.logits.assign(h.data(), h.data() + h.numel());
    return m;
  }

  void save(io::Checkpoint& ck) const {
    io::put_module(ck, "model.", net_);
    ck.put("alpha", net_.alpha().value());
    io::put_optimizer(ck, "w_opt.", const_cast<optim::SGD<T, D>&>(w_opt_));
    io::put_optimizer(ck, "a_opt.", const_cast<optim::Adam<T, D>&>(a_opt_));
    io::put_generator(ck, "gen.data", data_gen_);
    io::put_generator(ck, "gen.noise", noise_gen_);
    io::put_generator(ck, "gen.dropout", dropout_gen_);
    ck.put("epoch", std::int64_t(epoch_));
  }
  void restore(const io::Checkpoint& ck) {
    io::restore_module(ck, "model.", net_);
    ck.get_tensor_into("alpha", net_.alpha().value());
    io::restore_optimizer(ck, "w_opt.", w_opt_);
    io::restore_optimizer(ck, "a_opt.", a_opt_);
    io::restore_generator(ck, "gen.data", data_gen_);
    io::restore_generator(ck, "gen.noise", noise_gen_);
    io::restore_generator(ck, "gen.dropout", dropout_gen_);
    epoch_ = long(ck.get_int("epoch"));
  }

 private:
  static void set_requires_grad(const std::vector<Var<T, D>>& vs, bool on) {
    for (const auto& v : vs) v.set_requires_grad(on);
  }

  /// A search step queued on D: the architecture loss [1] and the weight step's results.
  struct QueuedStep {
    Tensor<T, D> arch_loss;
    train::QueuedWindow<T, D> weight;
  };

  /// Queues the architecture step (weights frozen: only dL/dalpha is computed) on the window
  /// (a_in [T, B], a_tgt [T * B], on D) from hidden_valid, then the weight step (alpha frozen) on
  /// (w_in, w_tgt) from hidden; both hidden states take the windows' last states. Reads nothing.
  QueuedStep queue_step(const Tensor<std::int32_t, D>& a_in, const Tensor<std::int32_t, D>& a_tgt,
                        const Tensor<std::int32_t, D>& w_in, const Tensor<std::int32_t, D>& w_tgt,
                        Tensor<T, D>& hidden, Tensor<T, D>& hidden_valid) {
    QueuedStep q;
    set_requires_grad(weights_, false);
    {
      const spaces::rnn::RnnOutput<T, D> o =
          net_.forward_sampled_ids(a_in, hidden_valid, ec_, noise_gen_, dropout_gen_, cfg_.sparse);
      const Var<T, D> loss = cross_entropy(o.logits, a_tgt);
      a_opt_.zero_grad();
      backward(loss);
      a_opt_.step();
      q.arch_loss = loss.value();
      hidden_valid.copy_from(o.hidden);
    }
    set_requires_grad(weights_, true);
    set_requires_grad(alphas_, false);
    q.weight = train::queue_weight_step<T>(
        w_tgt, w_in.dim(1), hidden,
        [&](const Tensor<T, D>& h) {
          return net_.forward_sampled_ids(w_in, h, ec_, noise_gen_, dropout_gen_, cfg_.sparse);
        },
        weights_, w_opt_, cfg_.clip, cfg_.beta);
    set_requires_grad(alphas_, true);
    return q;
  }
  /// Reads a queued step for the log (the weight step's results first, as they were queued last
  /// and the loss checks name the first non-finite one in that order).
  std::pair<double, train::WindowResult> finish(const QueuedStep& q, long epoch, long step) const {
    const train::WindowResult r = train::finish_window(q.weight, epoch, step);
    return {train::checked_loss(double(to_cpu(q.arch_loss)[0]), "architecture", epoch, step), r};
  }

  /// One search step on the windows wa (architecture) and ww (weights, sampled length seq_len):
  /// eagerly, or with cfg.cuda_graph from the graph of its lengths (train::WindowGraphs).
  std::pair<double, train::WindowResult> search_step(const data::Window& wa, const data::Window& ww, index_t seq_len,
                                                     Tensor<T, D>& hidden, Tensor<T, D>& hidden_valid, long epoch,
                                                     long step) {
    const auto done = [&](const QueuedStep& q) { return finish(q, epoch, step); };
    if constexpr (!is_cpu<D>) {
      if (cfg_.cuda_graph)
        return graphs_.step({seq_len, ww.length(), wa.length()}, std::array{&wa, &ww},
                            [&](const std::vector<Tensor<std::int32_t, D>>& ids) {
                              return queue_step(ids[0], ids[1], ids[2], ids[3], hidden, hidden_valid);
                            },
                            done);
    }
    return done(queue_step(to_device_of<D>(wa.inputs), to_device_of<D>(wa.targets), to_device_of<D>(ww.inputs),
                           to_device_of<D>(ww.targets), hidden, hidden_valid));
  }
  /// Drops the captured steps and their memory.
  void reset_graphs() {
    if constexpr (!is_cpu<D>) graphs_.clear();
  }

  Net& net_;
  const Tensor<std::int32_t>& train_;
  const Tensor<std::int32_t>& search_;
  const Tensor<std::int32_t>& valid_;
  RnnSearchConfig cfg_;
  std::vector<Var<T, D>> weights_, alphas_;
  optim::SGD<T, D> w_opt_;
  optim::Adam<T, D> a_opt_;
  PhiloxGenerator data_gen_, noise_gen_, dropout_gen_;
  estimators::EstimatorConfig ec_;
  long epoch_ = 0;
  // cfg.cuda_graph: this epoch's captured steps, by (seq_len, weight and architecture lengths).
  std::conditional_t<is_cpu<D>, std::monostate, train::WindowGraphs<D, QueuedStep>> graphs_;
};

}  // namespace datanas::search
