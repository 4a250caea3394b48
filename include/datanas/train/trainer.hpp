// datanas/train/trainer.hpp - training a discrete network from scratch (ALGORITHMS.md §1.4, the
// DARTS train.py recipe) and measuring it.
//
// Per epoch e of E: lr = lr_max (1 + cos(pi e / E)) / 2 (cosine to 0, stepped per epoch), drop
// path probability p * e / E. Per step: random crop + flip + normalise + cutout, loss =
// CE(logits) + aux_weight * CE(aux logits), backward, clip the gradient norm, SGD with momentum
// and weight decay. All randomness comes from three counter-based generators (batch order,
// augmentation, drop-path masks) checkpointed with the weights, so a resumed run is
// bit-identical to an uninterrupted one.
#pragma once

#include <algorithm>
#include <chrono>
#include <cmath>
#include <numeric>
#include <optional>
#include <type_traits>
#include <variant>
#include <vector>

#include "datanas/data/augment.hpp"
#include "datanas/data/batch.hpp"
#include "datanas/io/checkpoint.hpp"
#include "datanas/io/progress.hpp"
#include "datanas/ops/loss.hpp"
#include "datanas/optim/optimizers.hpp"
#include "datanas/spaces/eval_network.hpp"

namespace datanas::train {

/// The training recipe; defaults are the reference CIFAR-10 recipe except `epochs` (600 there).
struct TrainConfig {
  long epochs = 10;
  long batch_size = 96;
  double lr = 0.025, lr_min = 0.0, momentum = 0.9, weight_decay = 3e-4, grad_clip = 5.0;
  double drop_path = 0.2;         ///< final drop-path probability (ramped from 0)
  double auxiliary_weight = 0.4;  ///< weight of the auxiliary loss (if the network has the head)
  int cutout = 16;                ///< cutout square side in pixels (0 = off)
  int crop_pad = 4;               ///< random crop padding (0 = no crop and no flip)
  std::uint64_t seed = 1;
  /// Cuda only: capture each epoch's step once as a CUDA graph (after one eager step) and replay
  /// it; the same results bit for bit (drop-path masks are drawn before each replay as eagerly).
  bool cuda_graph = false;
};

/// What one training epoch measured (accuracy in [0, 1]; loss includes the auxiliary term).
struct TrainEpochStats {
  long epoch = 0;  ///< 1-based
  double lr = 0, drop_path = 0, loss = 0, accuracy = 0, seconds = 0, images_per_second = 0;
  long steps = 0;
};

/// Classification results on a labelled set.
struct EvalResult {
  double loss = 0;      ///< mean cross-entropy
  double accuracy = 0;  ///< top-1, in [0, 1]
  long images = 0;
  int classes = 0;
  std::vector<long> confusion;  ///< [true class * classes + predicted class]

  [[nodiscard]] long count(int truth, int predicted) const {
    return confusion[std::size_t(truth * classes + predicted)];
  }
  /// Recall of each class (correct / images of that class; 0 for an absent class).
  [[nodiscard]] std::vector<double> per_class_accuracy() const {
    std::vector<double> out(static_cast<std::size_t>(classes));
    for (int t = 0; t < classes; ++t) {
      long total = 0;
      for (int p = 0; p < classes; ++p) total += count(t, p);
      out[std::size_t(t)] = total > 0 ? double(count(t, t)) / double(total) : 0.0;
    }
    return out;
  }
};

/// Argmax of each row of logits [N, K] (first maximum on ties, as torch.max).
template <class T>
void predictions(const Tensor<T>& logits, std::vector<int>& out) {
  const index_t n = logits.dim(0), k = logits.dim(1);
  out.resize(static_cast<std::size_t>(n));
  for (index_t i = 0; i < n; ++i) {
    const T* row = logits.data() + i * k;
    out[std::size_t(i)] = int(std::max_element(row, row + k) - row);
  }
}

/// Runs the forward of `net` in evaluation mode over `set` (its first `limit` images; 0 = all)
/// in batches of `batch_size`, the last one partial; restores the module's mode afterwards.
template <class T, class D>
EvalResult evaluate(spaces::TrainNetwork<T, D>& net, const data::LabelledImages& set, data::ChannelNorm norm,
                    long batch_size, int classes, long limit = 0) {
  DATANAS_CHECK(batch_size >= 1, "evaluate: batch size must be >= 1, got ", batch_size);
  const index_t total = limit > 0 ? std::min<index_t>(set.size(), limit) : set.size();
  DATANAS_CHECK(total > 0, "evaluate: no images to evaluate");
  const bool was_training = net.training();
  NoGradGuard ng;
  net.eval();
  EvalResult r;
  r.classes = classes;
  r.confusion.assign(static_cast<std::size_t>(classes * classes), 0);
  PhiloxGenerator unused(0);  // drop path is off in evaluation
  const Shape& s = set.images.shape();
  std::vector<index_t> rows;
  std::vector<int> pred;
  double loss_sum = 0;
  long correct = 0;
  for (index_t start = 0; start < total; start += batch_size) {
    const index_t b = std::min<index_t>(batch_size, total - start);
    rows.resize(static_cast<std::size_t>(b));
    std::iota(rows.begin(), rows.end(), start);
    Tensor<T> x = Tensor<T>::empty({b, s.c(), s.h(), s.w()});
    Tensor<std::int32_t> y = Tensor<std::int32_t>::empty({b});
    data::gather_normalized<T>(set, rows, norm, x, y);
    const Var<T, D> logits = net.forward(Var<T, D>(to_device_of<D>(x)), unused).logits;
    DATANAS_CHECK(logits.shape()[1] == classes, "evaluate: the network has ", logits.shape()[1],
                  " outputs, the data ", classes, " classes");
    loss_sum += double(to_cpu(cross_entropy(logits, to_device_of<D>(y)).value())[0]) * double(b);
    predictions(to_cpu(logits.value()), pred);
    for (index_t i = 0; i < b; ++i) {
      const int truth = y[i];
      DATANAS_CHECK(truth >= 0 && truth < classes, "evaluate: label ", truth, " of image ", start + i,
                    " is outside [0, ", classes, ")");
      ++r.confusion[std::size_t(truth * classes + pred[std::size_t(i)])];
      correct += truth == pred[std::size_t(i)];
    }
  }
  net.train(was_training);
  r.images = long(total);
  r.loss = loss_sum / double(total);
  r.accuracy = double(correct) / double(total);
  return r;
}

/// The training loop over any TrainNetwork (compiled once per scalar type and device). Batches
/// are assembled on the host and copied to D into the same device buffers every step; a device
/// step synchronises once, to read the loss and the predictions for the log, after the whole step
/// is queued. With cfg.cuda_graph the step is captured once per epoch and replayed (StepGraph).
template <class T, class D = Cpu>
class Trainer {
 public:
  Trainer(spaces::TrainNetwork<T, D>& net, const data::LabelledImages& train, data::ChannelNorm norm,
          TrainConfig cfg)
      : net_(net), train_(train), norm_(norm), cfg_(cfg), weights_(net.parameters()),
        opt_(weights_, cfg.lr, cfg.momentum, cfg.weight_decay),
        data_gen_(cfg.seed ^ 0x7A1E0DA7A0000001ull), aug_gen_(cfg.seed ^ 0x7A1E0DA7A0000002ull),
        drop_gen_(cfg.seed ^ 0x7A1E0DA7A0000003ull) {
    DATANAS_CHECK(cfg.epochs >= 1, "train: --epochs must be >= 1, got ", cfg.epochs);
    DATANAS_CHECK(cfg.batch_size >= 1, "train: --batch-size must be >= 1, got ", cfg.batch_size);
    DATANAS_CHECK(train.size() >= cfg.batch_size, "train: ", train.size(),
                  " training images are fewer than one batch of ", cfg.batch_size);
    DATANAS_CHECK(cfg.drop_path >= 0 && cfg.drop_path < 1, "train: --drop-path must be in [0, 1), got ",
                  cfg.drop_path);
    DATANAS_CHECK(cfg.cutout >= 0 && cfg.crop_pad >= 0, "train: --cutout and --crop-pad must be >= 0");
    DATANAS_CHECK(cfg.auxiliary_weight >= 0, "train: --auxiliary-weight must be >= 0, got ",
                  cfg.auxiliary_weight);
    DATANAS_CHECK(!cfg.cuda_graph || !is_cpu<D>, "train: --cuda-graph needs --device cuda");
    if constexpr (!is_cpu<D>)
      if (cfg.cuda_graph) DeviceOps<D>::check_capturable("train");
    const Shape& s = train.images.shape();
    x_ = Tensor<T>::empty({cfg.batch_size, s.c(), s.h(), s.w()});
    y_ = Tensor<std::int32_t>::empty({cfg.batch_size});
    if constexpr (is_cpu<D>) {  // the device copies are the host tensors themselves
      xd_ = x_;
      yd_ = y_;
    } else {
      xd_ = Tensor<T, D>::empty(x_.shape());
      yd_ = Tensor<std::int32_t, D>::empty(y_.shape());
    }
  }

  [[nodiscard]] long epoch() const { return epoch_; }
  /// Full batches per epoch (the last partial batch is dropped: BN needs real batch statistics).
  [[nodiscard]] long steps_per_epoch() const { return long(train_.size() / cfg_.batch_size); }
  [[nodiscard]] const TrainConfig& config() const { return cfg_; }

  /// Runs the next epoch with the learning rate and drop-path probability of its index.
  TrainEpochStats run_epoch(io::ProgressBar* bar = nullptr) {
    const auto t0 = std::chrono::steady_clock::now();
    TrainEpochStats st;
    st.epoch = epoch_ + 1;
    st.lr = optim::cosine_lr(cfg_.lr, cfg_.lr_min, epoch_, cfg_.epochs);
    st.drop_path = cfg_.drop_path * double(epoch_) / double(cfg_.epochs);
    opt_.set_lr(st.lr);
    net_.set_drop_path_prob(st.drop_path);
    net_.train();
    reset_graph();  // lr and the drop-path probability are new: one capture serves the epoch
    const std::vector<index_t> rows = data::shuffled_indices(train_.size(), data_gen_);
    const long steps = steps_per_epoch();
    double loss_sum = 0;
    long correct = 0;
    for (long s = 0; s < steps; ++s) {
      const auto batch = std::span<const index_t>(rows).subspan(std::size_t(s * cfg_.batch_size),
                                                               std::size_t(cfg_.batch_size));
      load_batch(batch);
      const Queued q = step();
      // Read for the log only now: on a device the whole step is queued before the host waits.
      const double l = double(to_cpu(q.loss)[0]);
      DATANAS_CHECK(std::isfinite(l), "training diverged: loss is ", l, " at epoch ", st.epoch, " step ",
                    s + 1, " (lower --lr, or check the data)");
      correct += long(to_cpu(count_correct(q.logits, yd_))[0]);  // counted on D: 4 bytes read
      loss_sum += l;
      if (bar) bar->update(s + 1, loss_sum / double(s + 1), double(correct) / double((s + 1) * cfg_.batch_size),
                           (s + 1) * cfg_.batch_size);
    }
    reset_graph();  // gives the graph's memory back between epochs
    st.steps = steps;
    st.loss = loss_sum / double(steps);
    st.accuracy = double(correct) / double(steps * cfg_.batch_size);
    st.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    st.images_per_second = double(steps * cfg_.batch_size) / std::max(st.seconds, 1e-9);
    ++epoch_;
    return st;
  }

  void save(io::Checkpoint& ck) const {
    io::put_module(ck, "model.", net_);
    io::put_optimizer(ck, "opt.", const_cast<optim::SGD<T, D>&>(opt_));
    io::put_generator(ck, "gen.data", data_gen_);
    io::put_generator(ck, "gen.aug", aug_gen_);
    io::put_generator(ck, "gen.drop", drop_gen_);
    ck.put("epoch", std::int64_t(epoch_));
  }
  void restore(const io::Checkpoint& ck) {
    reset_graph();
    io::restore_module(ck, "model.", net_);
    io::restore_optimizer(ck, "opt.", opt_);
    io::restore_generator(ck, "gen.data", data_gen_);
    io::restore_generator(ck, "gen.aug", aug_gen_);
    io::restore_generator(ck, "gen.drop", drop_gen_);
    epoch_ = long(ck.get_int("epoch"));
    DATANAS_CHECK(epoch_ >= 0 && epoch_ <= cfg_.epochs, "checkpoint '", ck.source(), "': epoch ", epoch_,
                  " outside [0, ", cfg_.epochs, "]");
  }

 private:
  /// What a queued step leaves for the host to read: the loss and the logits (device tensors; in
  /// a captured step they live in the graph and every replay rewrites them).
  struct Queued {
    Tensor<T, D> loss, logits;
  };

  /// Assembles the batch on the host and copies it into the device buffers (on the Cpu they are
  /// the host tensors).
  void load_batch(std::span<const index_t> rows) {
    if (cfg_.crop_pad > 0)
      data::random_crop_flip<T>(train_, rows, cfg_.crop_pad, norm_, aug_gen_, x_, y_);
    else
      data::gather_normalized<T>(train_, rows, norm_, x_, y_);
    if (cfg_.cutout > 0) data::cutout(x_, cfg_.cutout, aug_gen_);
    if constexpr (!is_cpu<D>) {
      upload_into(xd_, x_);
      upload_into(yd_, y_);
    }
  }

  /// Forward, loss (+ auxiliary), backward, clipping and the SGD update, queued.
  Queued queue_step() {
    const auto out = net_.forward(Var<T, D>(xd_), drop_gen_);
    Var<T, D> loss = cross_entropy(out.logits, yd_);
    if (out.aux.defined() && cfg_.auxiliary_weight > 0)
      loss = add(loss, scale(cross_entropy(out.aux, yd_), T(cfg_.auxiliary_weight)));
    opt_.zero_grad();
    backward(loss);
    optim::clip_grad_norm<T, D>(weights_, cfg_.grad_clip);  // on a device: no synchronisation
    opt_.step();
    return {loss.value(), out.logits.value()};
  }

  /// One training step: eagerly, or with cfg.cuda_graph the epoch's first step eagerly (first-use
  /// work out of the capture), then captured, and replayed for every later step.
  Queued step() {
    if constexpr (!is_cpu<D>) {
      if (cfg_.cuda_graph) {
        if (captured_) {
          graph_.replay();
          return *captured_;
        }
        Queued eager = queue_step();
        captured_.emplace(graph_.capture([&] { return queue_step(); }));
        return eager;
      }
    }
    return queue_step();
  }
  void reset_graph() {
    if constexpr (!is_cpu<D>) {
      captured_.reset();
      graph_.reset();
    }
  }

  spaces::TrainNetwork<T, D>& net_;
  const data::LabelledImages& train_;
  data::ChannelNorm norm_;
  TrainConfig cfg_;
  std::vector<Var<T, D>> weights_;
  optim::SGD<T, D> opt_;
  PhiloxGenerator data_gen_, aug_gen_, drop_gen_;
  long epoch_ = 0;
  Tensor<T> x_;
  Tensor<std::int32_t> y_;
  Tensor<T, D> xd_;              // the batch on D, at a fixed address (a captured step reads it)
  Tensor<std::int32_t, D> yd_;
  // cfg.cuda_graph: the epoch's captured step and what it leaves to read.
  std::conditional_t<is_cpu<D>, std::monostate, StepGraph<D>> graph_;
  std::optional<Queued> captured_;
};

}  // namespace datanas::train
