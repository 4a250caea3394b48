// The search loop: a tiny end-to-end search learns, resume is bit-identical, the second-order
// hypergradient matches finite differences of the unrolled objective, child weights.
#include <filesystem>

#include "synthetic.hpp"
#include "gradcheck.hpp"
#include "datanas/search/searcher.hpp"

using namespace datanas;
using namespace datanas::testing;
using namespace datanas::search;

namespace {
using TinyOps = spaces::OpSet<spaces::NoneOp, spaces::MaxPool3x3, spaces::SkipConnect, spaces::SepConv3x3>;
template <class E>
using TinySpace = spaces::SearchSpace<TinyOps, 2, 2, E, Granularity::kNode>;

/// A smooth user-defined op (tanh -> 1x1 conv -> BN): finite differences of a second-order
/// objective are only meaningful where nothing switches (no max-pool argmax, no ReLU kink
/// downstream of alpha).
template <class T>
class TanhConv : public spaces::OpModule<T> {
 public:
  TanhConv(index_t c, int stride, PhiloxGenerator& g)
      : conv_(c, c, 1, {.stride = stride}, false, g), bn_(c, false) {
    this->register_module("conv", conv_);
    this->register_module("bn", bn_);
  }
  Var<T> operator()(const Var<T>& x) const override { return bn_(conv_(tanh(x))); }

 private:
  nn::Conv2d<T> conv_;
  nn::BatchNorm2d<T> bn_;
};
struct TanhConvOp {
  static constexpr std::string_view kName = "tanh_conv_1x1";
  template <class T>
  static spaces::OpPtr<T> make(index_t c, int stride, spaces::Phase, PhiloxGenerator& g) {
    return std::make_unique<TanhConv<T>>(c, stride, g);
  }
};
using SmoothOps = spaces::OpSet<spaces::NoneOp, spaces::SkipConnect, TanhConvOp>;

data::LabelledImages synthetic(index_t n, std::uint64_t seed) { return testing::synthetic_thirds(n, seed); }
const auto& kMean = testing::kThirdsMean;
const auto& kStd = testing::kThirdsStd;

template <class T, class Space>
struct Run {
  spaces::SupernetConfig nc;
  PhiloxGenerator init{5};
  spaces::Supernet<T, Space> net;
  search::Searcher<T> searcher;
  Run(const data::LabelledImages& d, SearchConfig cfg, int layers = 3)
      : nc{.init_channels = 4, .layers = layers, .in_channels = 1, .num_classes = 3},
        net(nc, init),
        searcher(net, d, data::ChannelNorm{kMean, kStd}, cfg) {}
};
}  // namespace

TEST_SUITE("cpu") {
TEST_CASE("a tiny EGS search learns: the training loss falls") {
  auto d = synthetic(192, 1);
  SearchConfig cfg;
  cfg.epochs = 6;
  cfg.batch_size = 16;
  cfg.lr = 0.05;
  cfg.arch_lr = 3e-3;
  cfg.tau = estimators::default_schedule(estimators::Kind::kEgs);
  Run<float, TinySpace<estimators::EGS<2>>> run(d, cfg);
  const auto first = run.searcher.run_epoch();
  EpochStats last;
  while (run.searcher.epoch() < cfg.epochs) last = run.searcher.run_epoch();
  CHECK(last.train_loss < first.train_loss * 0.8);
  CHECK(last.train_acc > first.train_acc);
  CHECK(std::isfinite(run.searcher.supernet_error()));
}

TEST_CASE("resume from a checkpoint is bit-identical to an uninterrupted run") {
  auto d = synthetic(96, 2);
  SearchConfig cfg;
  cfg.epochs = 3;
  cfg.batch_size = 16;
  cfg.sparse = true;
  cfg.l1 = 0.1;
  cfg.tau = {5.0, 1.0};
  using Space = TinySpace<estimators::EGS<3>>;
  Run<float, Space> straight(d, cfg);
  for (int e = 0; e < 3; ++e) straight.searcher.run_epoch();

  const std::string path = (std::filesystem::temp_directory_path() / "datanas_test_resume.ckpt").string();
  {
    Run<float, Space> first(d, cfg);
    first.searcher.run_epoch();
    io::Checkpoint ck(path);
    first.searcher.save(ck);
    ck.save_atomic(path);
  }
  Run<float, Space> resumed(d, cfg);
  resumed.searcher.restore(io::Checkpoint::load(path));
  CHECK(resumed.searcher.epoch() == 1);
  while (resumed.searcher.epoch() < 3) resumed.searcher.run_epoch();

  auto same = [](const Tensor<float>& a, const Tensor<float>& b) {
    return a.numel() == b.numel() && std::memcmp(a.data(), b.data(), sizeof(float) * std::size_t(a.numel())) == 0;
  };
  CHECK(same(straight.net.alpha_normal().value(), resumed.net.alpha_normal().value()));
  CHECK(same(straight.net.alpha_reduce().value(), resumed.net.alpha_reduce().value()));
  auto ws = straight.net.weights(), wr = resumed.net.weights();
  REQUIRE(ws.size() == wr.size());
  bool all_same = true;
  for (std::size_t i = 0; i < ws.size(); ++i) all_same = all_same && same(ws[i].value(), wr[i].value());
  CHECK(all_same);
  std::filesystem::remove(path);
}

TEST_CASE("second order: the alpha gradient matches finite differences of L_val(w'(alpha), alpha)") {
  auto d = synthetic(32, 3);
  SearchConfig cfg;
  cfg.epochs = 1;
  cfg.batch_size = 8;
  cfg.order = 2;
  cfg.momentum = 0.0;  // no buffer yet: w' = w - eta (dL_train/dw + wd w)
  using Space = spaces::SearchSpace<SmoothOps, 2, 2, estimators::Softmax, Granularity::kNode>;
  Run<double, Space> run(d, cfg, 1);
  const index_t wrows[] = {0, 1, 2, 3, 4, 5, 6, 7}, arows[] = {16, 17, 18, 19, 20, 21, 22, 23};
  run.searcher.load_batches(wrows, arows);
  const double eta = 0.05;
  // The unrolled objective, evaluated directly.
  auto xw = Tensor<double>::empty({8, 1, 8, 8}), xa = Tensor<double>::empty({8, 1, 8, 8});
  auto yw = Tensor<std::int32_t>::empty({8}), ya = Tensor<std::int32_t>::empty({8});
  data::gather_normalized<double>(d, wrows, data::ChannelNorm{kMean, kStd}, xw, yw);
  data::gather_normalized<double>(d, arows, data::ChannelNorm{kMean, kStd}, xa, ya);
  auto weights = run.net.weights();
  auto unrolled = [&]() {
    std::vector<TensorD> saved;
    for (auto& w : weights) saved.push_back(w.value().clone());
    PhiloxGenerator n(0);
    for (auto& w : weights) w.zero_grad();
    clear_tape<double>();
    for (auto& a : run.net.alphas()) a.set_requires_grad(false);
    backward(cross_entropy(run.net.forward(VarD(xw), {}, n, false), yw));
    for (auto& w : weights)
      if (w.has_grad()) w.value().eigen() -= eta * (w.grad().eigen() + cfg.weight_decay * w.value().eigen());
    double l;
    {
      NoGradGuard ng;
      l = cross_entropy(run.net.forward(VarD(xa), {}, n, false), ya).value()[0];
    }
    for (std::size_t i = 0; i < weights.size(); ++i) weights[i].value().copy_from(saved[i]);
    for (auto& a : run.net.alphas()) a.set_requires_grad(true);
    return l;
  };
  TensorD numeric = TensorD::empty({5 * 3});
  const TensorD alpha0 = run.net.alpha_normal().value().clone();
  for (index_t i = 0; i < numeric.numel(); ++i) {
    double& a = run.net.alpha_normal().value()[i];
    const double h = 1e-5;
    a = alpha0[i] + h;
    const double lp = unrolled();
    a = alpha0[i] - h;
    const double lm = unrolled();
    a = alpha0[i];
    numeric[i] = (lp - lm) / (2 * h);
  }
  run.searcher.arch_step(eta);  // leaves the combined gradient in alpha.grad() (Adam read it)
  const TensorD analytic = run.net.alpha_normal().grad();
  double max_num = 0;
  for (index_t i = 0; i < numeric.numel(); ++i) max_num = std::max(max_num, std::abs(numeric[i]));
  for (index_t i = 0; i < numeric.numel(); ++i)
    CHECK(analytic[i] == doctest::Approx(numeric[i]).epsilon(2e-3).scale(max_num));
}

TEST_CASE("child weights: a code per group, normalised for hard estimators") {
  const estimators::GroupLayout layout{2, 4, Granularity::kNode};
  CellGenotype cell{{{{"sep_conv_3x3", 0}, {"skip_connect", 1}}, {{"max_pool_3x3", 2}}}, {2, 3}};
  auto hard = child_weights<double>(cell, TinyOps::kNames, layout, true);
  auto soft = child_weights<double>(cell, TinyOps::kNames, layout, false);
  CHECK(hard[0 * 4 + 3] == 0.5);  // node 0, edge 0, sep_conv_3x3
  CHECK(hard[1 * 4 + 2] == 0.5);  // node 0, edge 1, skip_connect
  CHECK(hard[4 * 4 + 1] == 1.0);  // node 1, its edge from node 0 (state 2) is edge 2 + 2
  CHECK(soft[0 * 4 + 3] == 1.0);
  CHECK(soft[1 * 4 + 2] == 1.0);
  double total = 0;
  for (index_t i = 0; i < hard.numel(); ++i) total += hard[i];
  CHECK(total == doctest::Approx(2.0));
  CellGenotype bad{{{{"sep_conv_9x9", 0}}, {{"none", 0}}}, {2, 3}};
  CHECK_THROWS_WITH_AS((child_weights<double>(bad, TinyOps::kNames, layout, true)), doctest::Contains("unknown op 'sep_conv_9x9'"),
                       datanas::error);
}
}
