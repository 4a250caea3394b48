// datanas/train/language_model.hpp - the pieces shared by recurrent search and training on a
// word-level corpus (ALGORITHMS.md §4): one weight step on a BPTT window (cross-entropy plus the
// temporal activation penalty, gradient clipping, the optimiser step at an lr scaled by the
// window length), exact evaluation over a whole stream, perplexity.
//
// Generic over the device D of the model: windows are cut on the host (data::Window) and their
// targets copied to D; on a device the host reads the losses and predictions only after a step's
// work is queued (weight_step), or after every window of a stream is queued (evaluate_stream).
#pragma once

#include <array>
#include <cmath>
#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <span>
#include <type_traits>
#include <utility>
#include <variant>
#include <vector>

#include "datanas/data/ptb.hpp"
#include "datanas/ops/arithmetic.hpp"
#include "datanas/ops/loss.hpp"
#include "datanas/ops/recurrent.hpp"
#include "datanas/optim/optimizers.hpp"
#include "datanas/spaces/rnn_space.hpp"

namespace datanas::train {

/// exp(mean cross-entropy in nats per token).
inline double perplexity(double mean_nll) { return std::exp(mean_nll); }

/// Throws naming `where` when a loss is not finite (a diverged run must stop, not write NaNs).
inline double checked_loss(double loss, const char* where, long epoch, long step) {
  DATANAS_CHECK(std::isfinite(loss), "training diverged: ", where, " loss is ", loss, " at epoch ", epoch,
                ", step ", step, " (lower --lr, or check the data)");
  return loss;
}

/// Sum of the negative log-likelihoods of a whole stream [rows, B] and the number of predicted
/// tokens, in fixed windows of `bptt` rows from a zero hidden state carried across windows
/// (DARTS' evaluate()). `forward(inputs, hidden)` returns an RnnOutput; call with the model in
/// evaluation mode. The mean is over the (rows - 1) * B predicted tokens; DARTS' evaluate()
/// divides by rows instead of rows - 1, which reads about 0.01% lower on PTB's validation set.
struct StreamLoss {
  double nll_sum = 0;
  long tokens = 0;
  [[nodiscard]] double mean() const { return tokens ? nll_sum / double(tokens) : 0.0; }
};
template <class T, class D = Cpu, class Forward>
StreamLoss evaluate_stream(const Tensor<std::int32_t>& stream, index_t bptt, index_t nhid, Forward&& forward) {
  DATANAS_CHECK(bptt >= 1, "evaluate: bptt must be >= 1, got ", bptt);
  NoGradGuard ng;
  const index_t rows = stream.dim(0), batch = stream.dim(1);
  Tensor<T, D> hidden = Tensor<T, D>::zeros({batch, nhid});
  StreamLoss out;
  // Each window's loss [1] stays on D until every window is queued; then read and summed in order.
  std::vector<std::pair<Tensor<T, D>, long>> losses;
  for (index_t i = 0; i < rows - 1; i += bptt) {
    const data::Window w = data::get_window(stream, i, bptt);
    spaces::rnn::RnnOutput<T, D> o = forward(w.inputs, hidden);
    losses.emplace_back(cross_entropy(o.logits, to_device_of<D>(w.targets)).value(), long(w.targets.numel()));
    hidden = o.hidden;
  }
  for (const auto& [loss, tokens] : losses) {
    out.nll_sum += double(to_cpu(loss)[0]) * double(tokens);
    out.tokens += tokens;
  }
  return out;
}

/// What one training window gave.
struct WindowResult {
  double loss = 0;   ///< mean cross-entropy of the window (without the penalty)
  long correct = 0;  ///< correctly predicted next words
  long tokens = 0;
};

/// A weight step queued on D, not yet read: the window's mean cross-entropy [1] and its count of
/// correct next-word predictions [1] (in a captured step both live in the graph, and every
/// replay rewrites them).
template <class T, class D>
struct QueuedWindow {
  Tensor<T, D> loss;
  Tensor<std::int32_t, D> correct;
  long tokens = 0;
};

/// Queues one weight step (DARTS' train loop body): loss = CE + beta * TAR(raw outputs),
/// backward, clip the joint gradient norm of `params` to `clip`, opt.step(). `forward(hidden)`
/// runs the model on the window in training mode; `targets` [T * B] are the window's next words
/// on D; the window's last state is copied into `hidden` (so a captured step keeps carrying it
/// in the same buffer). Reads nothing back.
template <class T, class D, class Opt, class Forward>
QueuedWindow<T, D> queue_weight_step(const Tensor<std::int32_t, D>& targets, index_t batch, Tensor<T, D>& hidden,
                                     Forward&& forward, const std::vector<Var<T, D>>& params, Opt& opt, double clip,
                                     double beta) {
  spaces::rnn::RnnOutput<T, D> o = forward(hidden);
  const Var<T, D> ce = cross_entropy(o.logits, targets);
  Var<T, D> loss = ce;
  if (beta > 0 && targets.numel() >= 2 * batch) loss = add(loss, scale(temporal_penalty(o.raw, batch), T(beta)));
  opt.zero_grad();
  backward(loss);
  optim::clip_grad_norm<T, D>(params, clip);  // on a device: no synchronisation
  opt.step();
  hidden.copy_from(o.hidden);
  // Next-word accuracy counted on D (argmax, first on ties): 4 bytes to read, not the T B x V logits.
  return {ce.value(), count_correct(o.logits.value(), targets), long(targets.numel())};
}

/// Reads a queued weight step (on a device: waits for it); a non-finite loss throws.
template <class T, class D>
WindowResult finish_window(const QueuedWindow<T, D>& q, long epoch, long step) {
  WindowResult r;
  r.loss = checked_loss(double(to_cpu(q.loss)[0]), "training", epoch, step);
  r.correct = long(to_cpu(q.correct)[0]);
  r.tokens = q.tokens;
  return r;
}

/// One weight step on a host window: queue_weight_step with `forward(inputs, hidden)`, then
/// finish_window (the loss and the predictions are read only after the whole step is queued).
template <class T, class D, class Opt, class Forward>
WindowResult weight_step(const data::Window& w, Tensor<T, D>& hidden, Forward&& forward,
                         const std::vector<Var<T, D>>& params, Opt& opt, double clip, double beta, long epoch,
                         long step) {
  const Tensor<std::int32_t, D> targets = to_device_of<D>(w.targets);
  return finish_window(queue_weight_step<T>(targets, w.inputs.dim(1), hidden,
                                            [&](const Tensor<T, D>& h) { return forward(w.inputs, h); }, params,
                                            opt, clip, beta),
                       epoch, step);
}

/// The captured steps of one epoch of a PTB loop with cuda_graph (RnnSearcher, RnnTrainer), on a
/// device D: one CUDA graph per key (the window lengths that fix a step's shapes and its lr), with
/// the windows' ids and targets in fixed buffers on D, every graph in one GraphPool. The loops
/// read each step's results (finish) before the next step replays, which the shared pool needs.
template <class D, class Out>
class WindowGraphs {
 public:
  using Key = std::array<index_t, 3>;
  using Ids = Tensor<std::int32_t, D>;

  /// One step on `windows`: their inputs and targets are copied into the key's buffers (in
  /// order: inputs, targets of each window), then the key's graph replays; the first step of a
  /// key runs queue(buffers) eagerly (first-use work: optimiser state, gradients, plans) and then
  /// captures it. Returns finish(what queue returned).
  template <std::size_t N, class Queue, class Finish>
  auto step(const Key& key, const std::array<const data::Window*, N>& windows, Queue&& queue, Finish&& finish) {
    std::unique_ptr<Entry>& e = entries_[key];
    if (!e) {
      e = std::make_unique<Entry>();
      for (const data::Window* w : windows) {
        e->ids.push_back(Ids::empty(w->inputs.shape()));
        e->ids.push_back(Ids::empty(w->targets.shape()));
      }
    }
    for (std::size_t i = 0; i < N; ++i) {  // before the replay's kernels, in stream order
      upload_into(e->ids[2 * i], windows[i]->inputs);
      upload_into(e->ids[2 * i + 1], windows[i]->targets);
    }
    if (e->out) {
      e->graph.replay();
      ++replayed_;
      return finish(*e->out);
    }
    auto r = finish(queue(std::as_const(e->ids)));
    e->out.emplace(e->graph.capture([&] { return queue(std::as_const(e->ids)); }, pool_));
    return r;
  }

  /// Drops the graphs (each waits for its last replay), their buffers and their memory.
  void clear() {
    entries_.clear();
    pool_ = {};
  }
  /// Steps replayed so far (not reset by clear()).
  [[nodiscard]] long replayed() const { return replayed_; }

 private:
  struct Entry {
    std::vector<Ids> ids;
    StepGraph<D> graph;
    std::optional<Out> out;
  };
  std::map<Key, std::unique_ptr<Entry>> entries_;
  std::conditional_t<is_cpu<D>, std::monostate, GraphPool> pool_;
  long replayed_ = 0;
};

}  // namespace datanas::train
