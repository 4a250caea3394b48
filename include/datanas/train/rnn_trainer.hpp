// datanas/train/rnn_trainer.hpp - training a recurrent cell from scratch on a word-level corpus
// as DARTS' rnn/train.py does (ALGORITHMS.md §4):
//
//   each epoch: windows of variable length (bptt, or bptt / 2 with probability 0.05, then
//   N(., 5), at least 5, at most bptt + 20), lr scaled by seq_len / bptt, loss CE + beta * TAR,
//   joint gradient norm clipped; then the validation loss (eval batch size, fixed windows).
//   SGD (weight decay, no momentum) until the non-monotone trigger fires: after an SGD epoch
//   whose validation loss exceeds the best of all but the last `nonmono` earlier SGD epochs
//   (and more than nonmono such epochs exist), switch to averaged SGD (torch ASGD, t0 = 0,
//   lambd = 0). Under ASGD the validation loss is measured with the averaged weights.
//   The best validation weights (averaged ones under ASGD) are kept; the final valid and test
//   perplexities are measured with them.
// Randomness comes from two counter-based generators checkpointed with everything else, so a
// resumed run is bit-identical.
//
// The trainer is a template on the device D of the model (Cpu by default): on a device a step
// waits for the GPU only to read the loss and the predictions for the log, after the step is
// queued (queue_weight_step, then finish_window). The best and averaged weights stay on D; a
// checkpoint holds host copies and resumes on either device.
// With cfg.cuda_graph (on a device) each step is captured once per epoch and window length (the
// lr scales with it; the sampled lengths are a few dozen at bptt 35) and replayed, as the PTB
// search does: the first step of each length runs eagerly and captures, later ones copy their
// window into that graph's fixed buffers and replay. The graphs share one memory pool (a step's
// results are read before the next replays), the hidden state is carried in a fixed buffer, and
// dropout masks and ASGD's step scalars come from per-replay values, so the replays compute
// exactly what eager steps compute.
#pragma once

#include <array>
#include <chrono>
#include <cmath>
#include <limits>
#include <memory>
#include <string>
#include <type_traits>
#include <variant>
#include <vector>

#include "datanas/data/ptb.hpp"
#include "datanas/io/checkpoint.hpp"
#include "datanas/io/progress.hpp"
#include "datanas/optim/asgd.hpp"
#include "datanas/optim/optimizers.hpp"
#include "datanas/spaces/rnn_space.hpp"
#include "datanas/train/language_model.hpp"

namespace datanas::train {

struct RnnTrainConfig {
  long epochs = 8000;
  index_t batch_size = 64;
  index_t eval_batch_size = 10;
  index_t bptt = 35;
  index_t max_seq_len_delta = 20;
  double lr = 20, weight_decay = 8e-7, clip = 0.25, beta = 1e-3;
  long nonmono = 5;
  std::uint64_t seed = 1267;
  bool cuda_graph = false;  ///< replay captured steps (on a device; file comment)
};

struct RnnTrainEpoch {
  long epoch = 0;  ///< 1-based
  double train_loss = 0, train_acc = 0, valid_loss = 0, seconds = 0, tokens_per_second = 0;
  long steps = 0, tokens = 0;
  bool averaged = false;  ///< ASGD was in use (valid_loss measured on the averaged weights)
  bool switched = false;  ///< the non-monotone trigger fired after this epoch
  bool best = false;      ///< a new best validation loss
};

template <class T, class D = Cpu>
class RnnTrainer {
 public:
  using Model = spaces::rnn::RnnModel<T, D>;

  /// train: the training stream batchified with batch_size; valid: the validation stream
  /// batchified with eval_batch_size. Both must outlive the trainer.
  RnnTrainer(Model& model, const Tensor<std::int32_t>& train, const Tensor<std::int32_t>& valid, RnnTrainConfig cfg)
      : model_(model), train_(train), valid_(valid), cfg_(cfg), params_(model.parameters()),
        sgd_(params_, cfg.lr, 0.0, cfg.weight_decay),
        data_gen_(cfg.seed ^ 0x7A1E5EA4C4000001ull), dropout_gen_(cfg.seed ^ 0x7A1E5EA4C4000002ull) {
    DATANAS_CHECK(cfg.epochs >= 1, "train: --epochs must be >= 1, got ", cfg.epochs);
    DATANAS_CHECK(cfg.bptt >= 2, "train: --bptt must be >= 2, got ", cfg.bptt);
    DATANAS_CHECK(cfg.nonmono >= 0, "train: --nonmono must be >= 0, got ", cfg.nonmono);
    DATANAS_CHECK(train.dim(1) == cfg.batch_size, "train: the training stream must be batchified with the batch size");
    DATANAS_CHECK(train.dim(0) >= 3, "train: the training stream has only ", train.dim(0), " rows");
    DATANAS_CHECK(!cfg.cuda_graph || !is_cpu<D>, "train: --cuda-graph needs --device cuda");
    if constexpr (!is_cpu<D>) {
      if (cfg.cuda_graph) DeviceOps<D>::check_capturable("train");
    }
    for (const auto& p : params_) best_.push_back(p.value().clone());
  }

  [[nodiscard]] long epoch() const { return epoch_; }
  [[nodiscard]] bool averaging() const { return asgd_ != nullptr; }
  [[nodiscard]] double best_valid_loss() const { return stored_loss_; }
  [[nodiscard]] long best_epoch() const { return best_epoch_; }
  [[nodiscard]] long estimated_steps() const { return long((train_.dim(0) - 2) / cfg_.bptt) + 1; }
  /// Training steps replayed from captured graphs so far (cfg.cuda_graph; 0 otherwise).
  [[nodiscard]] long replayed_steps() const {
    if constexpr (is_cpu<D>)
      return 0;
    else
      return graphs_.replayed();
  }

  RnnTrainEpoch run_epoch(io::ProgressBar* bar = nullptr) {
    const auto t0 = std::chrono::steady_clock::now();
    RnnTrainEpoch st;
    st.epoch = epoch_ + 1;
    const data::BpttSampler sampler{cfg_.bptt, cfg_.max_seq_len_delta, true};
    const index_t rows = train_.dim(0);
    reset_graphs();  // an epoch that threw may have left some
    Tensor<T, D> hidden = model_.init_hidden(cfg_.batch_size);
    model_.train();
    double loss = 0;
    long correct = 0, tokens = 0, steps = 0;
    const long estimate = estimated_steps();
    for (index_t i = 0; i < rows - 2;) {
      const index_t seq_len = sampler(data_gen_);
      const double lr = cfg_.lr * double(seq_len) / double(cfg_.bptt);
      if (asgd_)
        asgd_->set_lr(lr);
      else
        sgd_.set_lr(lr);
      const WindowResult r = train_step(data::get_window(train_, i, seq_len), seq_len, hidden, st.epoch, steps);
      loss += r.loss * double(r.tokens);
      correct += r.correct;
      tokens += r.tokens;
      ++steps;
      i += seq_len;
      if (bar)
        bar->update(std::min(steps, estimate - (i < rows - 2 ? 1 : 0)), loss / double(tokens),
                    double(correct) / double(tokens), tokens);
    }
    reset_graphs();  // their buffers and the hidden state are this epoch's
    st.steps = steps;
    st.tokens = tokens;
    st.train_loss = loss / double(tokens);
    st.train_acc = double(correct) / double(tokens);
    st.tokens_per_second =
        double(tokens) / std::max(1e-9, std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());

    st.averaged = asgd_ != nullptr;
    if (asgd_) {
      swap_with_averages();
      st.valid_loss = valid_loss();
      st.best = st.valid_loss < stored_loss_;
      if (st.best) keep_best(st.epoch, st.valid_loss);
      swap_with_averages();
    } else {
      st.valid_loss = valid_loss();
      st.best = st.valid_loss < stored_loss_;
      if (st.best) keep_best(st.epoch, st.valid_loss);
      // DARTS' trigger: min over all but the last `nonmono` earlier SGD epochs.
      const long n = long(history_.size());
      if (n > cfg_.nonmono &&
          st.valid_loss > *std::min_element(history_.begin(), history_.end() - cfg_.nonmono)) {
        asgd_ = make_asgd();
        st.switched = true;
      }
      history_.push_back(st.valid_loss);
    }
    st.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    ++epoch_;
    return st;
  }

  /// Mean cross-entropy of a stream with the current weights (evaluation mode).
  double stream_loss(const Tensor<std::int32_t>& stream) {
    model_.eval();
    const auto l = evaluate_stream<T, D>(stream, cfg_.bptt, model_.config().nhid,
                                         [&](const Tensor<std::int32_t>& in, const Tensor<T, D>& h) {
                                           return model_.forward(in, h, dropout_gen_);
                                         });
    model_.train();
    return l.mean();
  }
  double valid_loss() { return stream_loss(valid_); }

  /// Puts the best validation weights into the model (the end of DARTS' train.py).
  void load_best() {
    for (std::size_t i = 0; i < params_.size(); ++i) params_[i].value().copy_from(best_[i]);
  }

  void save(io::Checkpoint& ck) const {
    io::put_module(ck, "model.", model_);
    io::put_optimizer(ck, "sgd.", const_cast<optim::SGD<T, D>&>(sgd_));
    ck.put("asgd.on", std::int64_t(asgd_ ? 1 : 0));
    if (asgd_) {
      ck.put("asgd.step", std::int64_t(asgd_->step_count()));
      ck.put("asgd.eta", asgd_->eta());
      ck.put("asgd.mu", asgd_->mu());
      for (std::size_t i = 0; i < params_.size(); ++i)
        if (asgd_->averages()[i].defined()) ck.put("asgd.ax." + std::to_string(i), asgd_->averages()[i]);
    }
    for (std::size_t i = 0; i < best_.size(); ++i) ck.put("best." + std::to_string(i), best_[i]);
    ck.put("best.loss", stored_loss_);
    ck.put("best.epoch", std::int64_t(best_epoch_));
    Tensor<double> h = Tensor<double>::empty({index_t(history_.size())});
    std::copy(history_.begin(), history_.end(), h.data());
    ck.put("history", h);
    io::put_generator(ck, "gen.data", data_gen_);
    io::put_generator(ck, "gen.dropout", dropout_gen_);
    ck.put("epoch", std::int64_t(epoch_));
  }
  void restore(const io::Checkpoint& ck) {
    io::restore_module(ck, "model.", model_);
    io::restore_optimizer(ck, "sgd.", sgd_);
    asgd_.reset();
    if (ck.get_int("asgd.on")) {
      asgd_ = make_asgd();
      asgd_->set_state(long(ck.get_int("asgd.step")), ck.get_double("asgd.eta"), ck.get_double("asgd.mu"));
      for (std::size_t i = 0; i < params_.size(); ++i) {
        const std::string name = "asgd.ax." + std::to_string(i);
        if (!ck.has(name)) continue;
        asgd_->averages()[i] = Tensor<T, D>::empty(params_[i].shape());
        ck.get_tensor_into(name, asgd_->averages()[i]);
      }
    }
    for (std::size_t i = 0; i < best_.size(); ++i) ck.get_tensor_into("best." + std::to_string(i), best_[i]);
    stored_loss_ = ck.get_double("best.loss");
    best_epoch_ = long(ck.get_int("best.epoch"));
    const Tensor<double> h = ck.get_tensor<double>("history");
    history_.assign(h.data(), h.data() + h.numel());
    io::restore_generator(ck, "gen.data", data_gen_);
    io::restore_generator(ck, "gen.dropout", dropout_gen_);
    epoch_ = long(ck.get_int("epoch"));
  }

 private:
  /// Queues a step on the window (inputs [T, B] and targets [T * B], on D) from `hidden`, which
  /// takes the window's last state, with the optimiser in use (SGD, or ASGD after the switch).
  QueuedWindow<T, D> queue_step(const Tensor<std::int32_t, D>& in, const Tensor<std::int32_t, D>& tgt,
                                Tensor<T, D>& hidden) {
    const auto forward = [&](const Tensor<T, D>& h) { return model_.forward_ids(in, h, dropout_gen_); };
    if (asgd_) return queue_weight_step<T>(tgt, in.dim(1), hidden, forward, params_, *asgd_, cfg_.clip, cfg_.beta);
    return queue_weight_step<T>(tgt, in.dim(1), hidden, forward, params_, sgd_, cfg_.clip, cfg_.beta);
  }

  /// One training step on window w (sampled length seq_len, which sets the lr): eagerly, or with
  /// cfg.cuda_graph from the graph of its lengths (WindowGraphs).
  WindowResult train_step(const data::Window& w, index_t seq_len, Tensor<T, D>& hidden, long epoch, long step) {
    const auto finish = [&](const QueuedWindow<T, D>& q) { return finish_window(q, epoch, step); };
    if constexpr (!is_cpu<D>) {
      if (cfg_.cuda_graph)
        return graphs_.step(
            {seq_len, w.length(), 0}, std::array{&w},
            [&](const std::vector<Tensor<std::int32_t, D>>& ids) { return queue_step(ids[0], ids[1], hidden); },
            finish);
    }
    return finish(queue_step(to_device_of<D>(w.inputs), to_device_of<D>(w.targets), hidden));
  }
  /// Drops the captured steps and their memory.
  void reset_graphs() {
    if constexpr (!is_cpu<D>) graphs_.clear();
  }

  std::unique_ptr<optim::ASGD<T, D>> make_asgd() const {
    return std::make_unique<optim::ASGD<T, D>>(params_, cfg_.lr, 0.0, 0.75, 0.0, cfg_.weight_decay);
  }
  void swap_with_averages() {
    auto& ax = asgd_->averages();
    for (std::size_t i = 0; i < params_.size(); ++i) {
      if (!ax[i].defined()) continue;
      if constexpr (is_cpu<D>) {
        std::swap_ranges(ax[i].data(), ax[i].data() + ax[i].numel(), params_[i].value().data());
      } else {  // three copies queued on the stream
        const Tensor<T, D> tmp = ax[i].clone();
        ax[i].copy_from(params_[i].value());
        params_[i].value().copy_from(tmp);
      }
    }
  }
  void keep_best(long epoch, double loss) {
    for (std::size_t i = 0; i < params_.size(); ++i) best_[i].copy_from(params_[i].value());
    stored_loss_ = loss;
    best_epoch_ = epoch;
  }

  Model& model_;
  const Tensor<std::int32_t>& train_;
  const Tensor<std::int32_t>& valid_;
  RnnTrainConfig cfg_;
  std::vector<Var<T, D>> params_;
  optim::SGD<T, D> sgd_;
  std::unique_ptr<optim::ASGD<T, D>> asgd_;
  PhiloxGenerator data_gen_, dropout_gen_;
  std::vector<Tensor<T, D>> best_;
  std::vector<double> history_;
  double stored_loss_ = std::numeric_limits<double>::infinity();
  long best_epoch_ = 0;
  long epoch_ = 0;
  // cfg.cuda_graph: this epoch's captured steps, by (seq_len, window length).
  std::conditional_t<is_cpu<D>, std::monostate, WindowGraphs<D, QueuedWindow<T, D>>> graphs_;
};

}  // namespace datanas::train
