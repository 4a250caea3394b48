// custom_space: a user-defined search space in a few lines - its own op (tanh -> 1x1 conv ->
// BN), a different op set and node count, searched with DATA's EGS (M = 2, per edge) on
// Fashion-MNIST, then derived with DATA's rule.
#include <cstdio>

#include "datanas/datanas.hpp"
#include "datanas/search/searcher.hpp"

using namespace datanas;
using namespace datanas::spaces;

template <class T>
struct TanhConv : OpModule<T> {  // a new candidate op: a module with operator()
  nn::Conv2d<T> conv;
  nn::BatchNorm2d<T> bn;
  TanhConv(index_t c, int stride, bool affine, PhiloxGenerator& g)
      : conv(c, c, 1, {.stride = stride}, false, g), bn(c, affine) {
    this->register_module("conv", conv);
    this->register_module("bn", bn);
  }
  Var<T> operator()(const Var<T>& x) const override { return bn(conv(tanh(x))); }
};
struct TanhConv1x1 {  // its descriptor: a name (alpha column) and a factory
  static constexpr std::string_view kName = "tanh_conv_1x1";
  template <class T>
  static OpPtr<T> make(index_t c, int stride, Phase phase, PhiloxGenerator& g) {
    return std::make_unique<TanhConv<T>>(c, stride, phase == Phase::kEval, g);
  }
};

// 4 candidate ops, 3 nodes per cell (all concatenated), EGS with M = 2 over each edge.
using MyOps = OpSet<NoneOp, SkipConnect, SepConv3x3, TanhConv1x1>;
using MySpace = SearchSpace<MyOps, 3, 3, estimators::EGS<2>, search::Granularity::kEdge>;

int main() try {
  auto train = data::head(data::FashionMnist::load().train, 1024);
  PhiloxGenerator gen(7);
  Supernet<float, MySpace> net({.init_channels = 8, .layers = 3, .in_channels = 1}, gen);
  search::SearchConfig cfg;
  cfg.epochs = 2;
  cfg.batch_size = 32;
  cfg.tau = estimators::default_schedule(estimators::Kind::kEgs);  // DATA: 5 -> 1
  const float mean[] = {data::FashionMnist::kMean}, std_dev[] = {data::FashionMnist::kStd};
  search::Searcher<float> searcher(net, train, {mean, std_dev}, cfg);
  while (searcher.epoch() < cfg.epochs) {
    auto st = searcher.run_epoch();
    std::printf("epoch %ld: loss %.3f, accuracy %.1f%%\n", st.epoch, st.train_loss, 100 * st.train_acc);
  }
  auto genotype = search::derive(searcher.alpha_pair(), net.op_names(),
                                 {.rule = search::DeriveRule::kData, .M = 2,
                                  .granularity = search::Granularity::kEdge, .nodes = 3});
  std::printf("%s\n", search::to_text(genotype).c_str());
} catch (const std::exception& e) {
  std::fprintf(stderr, "custom_space: error: %s\n", e.what());
  return 2;
}
