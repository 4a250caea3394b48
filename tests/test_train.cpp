// Training from scratch: the loop learns, schedules follow the recipe, checkpoint + resume is
// bit-identical, the evaluation's confusion matrix, divergence is reported.
#include <doctest/doctest.h>

#include <cmath>
#include <filesystem>
#include <numbers>

#include "synthetic.hpp"
#include "datanas/train/trainer.hpp"

using namespace datanas;
using search::Genotype;
using TensorF = Tensor<float>;

namespace {
data::LabelledImages synthetic(index_t n, std::uint64_t seed) { return testing::synthetic_thirds(n, seed); }
const auto& kMean = testing::kThirdsMean;
const auto& kStd = testing::kThirdsStd;
const data::ChannelNorm kNorm{kMean, kStd};

// 8x8 inputs, 3 cells (reductions at 1 and 2); no auxiliary head (its maps would be 2x2).
spaces::EvalNetworkConfig tiny() {
  return {.init_channels = 4, .layers = 3, .in_channels = 1, .image_size = 8, .num_classes = 3};
}

train::TrainConfig recipe(long epochs) {
  train::TrainConfig c;
  c.epochs = epochs;
  c.batch_size = 24;
  c.lr = 0.05;
  c.cutout = 3;
  c.crop_pad = 1;
  c.drop_path = 0.2;
  c.seed = 5;
  return c;
}

void all_equal(const nn::Module<float>& a, const nn::Module<float>& b) {
  std::vector<TensorF> ta, tb;
  a.visit_parameters([&](const std::string&, const Var<float>& v) { ta.push_back(v.value()); });
  a.visit_buffers([&](const std::string&, const TensorF& t) { ta.push_back(t); });
  b.visit_parameters([&](const std::string&, const Var<float>& v) { tb.push_back(v.value()); });
  b.visit_buffers([&](const std::string&, const TensorF& t) { tb.push_back(t); });
  REQUIRE(ta.size() == tb.size());
  long differ = 0;
  for (std::size_t k = 0; k < ta.size(); ++k)
    for (index_t i = 0; i < ta[k].numel(); ++i) differ += ta[k][i] != tb[k][i];
  CHECK(differ == 0);
}

/// Logits that put 4 on the class encoded in pixel (0, 0) of each image, 0 elsewhere.
class Oracle : public spaces::TrainNetwork<float> {
 public:
  Output forward(const Var<float>& x, PhiloxGenerator&) const override {
    const index_t n = x.shape()[0];
    TensorF l = TensorF::zeros({n, 3});
    const index_t per = x.value().numel() / n;
    for (index_t i = 0; i < n; ++i) l(i, index_t(std::lround(x.value()[i * per]))) = 4.0f;
    return {Var<float>(l), {}};
  }
  [[nodiscard]] bool has_auxiliary() const override { return false; }
};
}  // namespace

TEST_SUITE("cpu") {
TEST_CASE("a tiny DATA cell learns the synthetic task") {
  const auto train_set = synthetic(240, 1), test_set = synthetic(90, 2);
  PhiloxGenerator gen(1);
  spaces::EvalNetwork<float> net(search::DATA_M4, tiny(), gen);
  train::Trainer<float> t(net, train_set, kNorm, recipe(8));
  const auto before = train::evaluate(net, test_set, kNorm, 32, 3);
  double first = 0, last = 0;
  for (int e = 0; e < 8; ++e) {
    const auto st = t.run_epoch();
    CHECK(st.steps == 10);
    (e == 0 ? first : last) = st.loss;
  }
  const auto after = train::evaluate(net, test_set, kNorm, 32, 3);
  INFO("loss " << first << " -> " << last << ", test accuracy " << before.accuracy << " -> " << after.accuracy);
  CHECK(last < first);
  CHECK(after.accuracy > 0.8);
  CHECK(after.images == 90);
}

TEST_CASE("learning rate and drop path follow the recipe's schedules") {
  const auto train_set = synthetic(48, 1);
  PhiloxGenerator gen(1);
  spaces::EvalNetwork<float> net(search::DARTS_V2, tiny(), gen);
  auto cfg = recipe(4);
  cfg.lr = 0.025;
  train::Trainer<float> t(net, train_set, kNorm, cfg);
  for (int e = 0; e < 4; ++e) {
    const auto st = t.run_epoch();
    CHECK(st.lr == doctest::Approx(0.025 * (1 + std::cos(std::numbers::pi * e / 4)) / 2));
    CHECK(st.drop_path == doctest::Approx(0.2 * e / 4));
    CHECK(net.drop_path_prob() == doctest::Approx(0.2 * e / 4));
  }
}

TEST_CASE("checkpoint and resume: an interrupted run ends bit-identical to a straight one") {
  const auto train_set = synthetic(96, 3);
  // Straight: 3 epochs.
  PhiloxGenerator g1(7);
  spaces::EvalNetwork<float> straight(search::DATA_M7, tiny(), g1);
  train::Trainer<float> ts(straight, train_set, kNorm, recipe(3));
  train::TrainEpochStats last_straight;
  for (int e = 0; e < 3; ++e) last_straight = ts.run_epoch();

  // Interrupted after 1 epoch, checkpointed to disk, resumed into a fresh process-like state
  // (a network initialised from another seed, a new trainer).
  const auto path = (std::filesystem::temp_directory_path() / "datanas_test_train.ckpt").string();
  {
    PhiloxGenerator g2(7);
    spaces::EvalNetwork<float> first(search::DATA_M7, tiny(), g2);
    train::Trainer<float> tf(first, train_set, kNorm, recipe(3));
    tf.run_epoch();
    io::Checkpoint ck(path);
    tf.save(ck);
    ck.save_atomic(path);
  }
  PhiloxGenerator g3(999);
  spaces::EvalNetwork<float> resumed(search::DATA_M7, tiny(), g3);
  train::Trainer<float> tr(resumed, train_set, kNorm, recipe(3));
  tr.restore(io::Checkpoint::load(path));
  CHECK(tr.epoch() == 1);
  train::TrainEpochStats last_resumed;
  while (tr.epoch() < 3) last_resumed = tr.run_epoch();
  CHECK(last_resumed.loss == last_straight.loss);
  CHECK(last_resumed.accuracy == last_straight.accuracy);
  all_equal(straight, resumed);
  std::filesystem::remove(path);
}

TEST_CASE("evaluate: hand-checked confusion matrix, per-class accuracy and loss over a partial batch") {
  // 10 images; pixel (0, 0) = predicted class (after normalisation with mean 0, std 1).
  const int truth[] = {0, 0, 1, 1, 1, 2, 2, 2, 2, 0};
  const int pred[] = {0, 1, 1, 1, 2, 2, 2, 0, 2, 0};
  data::LabelledImages set{Tensor<float>::zeros({10, 1, 2, 2}), Tensor<std::int32_t>::empty({10})};
  for (index_t i = 0; i < 10; ++i) {
    set.images(i, 0, 0, 0) = float(pred[i]);
    set.labels[i] = truth[i];
  }
  const float zero[] = {0.0f}, one[] = {1.0f};
  Oracle net;
  const auto r = train::evaluate<float>(net, set, {zero, one}, 4, 3);  // batches of 4, 4, 2
  CHECK(r.images == 10);
  CHECK(r.accuracy == doctest::Approx(0.7));
  CHECK(r.count(0, 0) == 2);
  CHECK(r.count(0, 1) == 1);
  CHECK(r.count(1, 1) == 2);
  CHECK(r.count(1, 2) == 1);
  CHECK(r.count(2, 2) == 3);
  CHECK(r.count(2, 0) == 1);
  const auto acc = r.per_class_accuracy();
  CHECK(acc[0] == doctest::Approx(2.0 / 3));
  CHECK(acc[1] == doctest::Approx(2.0 / 3));
  CHECK(acc[2] == doctest::Approx(3.0 / 4));
  // CE with logits (4, 0, 0): right -log(e^4 / (e^4 + 2)), wrong -log(1 / (e^4 + 2)).
  const double right = std::log(std::exp(4.0) + 2) - 4, wrong = std::log(std::exp(4.0) + 2);
  CHECK(r.loss == doctest::Approx((7 * right + 3 * wrong) / 10).epsilon(1e-5));
  CHECK(net.training());  // evaluation restored the mode
}

TEST_CASE("divergence and unusable settings are reported") {
  auto bad = synthetic(48, 1);
  bad.images[5] = std::nanf("");
  PhiloxGenerator gen(1);
  spaces::EvalNetwork<float> net(search::DARTS_V2, tiny(), gen);
  auto cfg = recipe(1);
  cfg.crop_pad = 0;
  cfg.cutout = 0;
  train::Trainer<float> t(net, bad, kNorm, cfg);
  CHECK_THROWS_WITH_AS(t.run_epoch(), doctest::Contains("training diverged: loss is nan"), datanas::error);
  CHECK_THROWS_WITH_AS(train::Trainer<float>(net, synthetic(10, 1), kNorm, recipe(1)),
                       doctest::Contains("fewer than one batch of 24"), datanas::error);
  auto neg = recipe(1);
  neg.drop_path = 1.0;
  CHECK_THROWS_WITH_AS(train::Trainer<float>(net, synthetic(48, 1), kNorm, neg),
                       doctest::Contains("--drop-path must be in [0, 1)"), datanas::error);
}
}
