// Proves the memory claim: once the first training step has run, a step makes no heap
// allocation at all. Every malloc-family call of the process (ours, Eigen's, libstdc++'s,
// OpenMP's) is counted by interposing the C allocator in this executable (malloc_counter.hpp),
// and the caching allocator's own counters must show only cache hits.
#include "malloc_counter.hpp"

#include "gradcheck.hpp"
#include "datanas/nn/layers.hpp"
#include "datanas/optim/optimizers.hpp"
#include "datanas/ops/conv.hpp"
#include "datanas/ops/pool.hpp"
#include "datanas/data/augment.hpp"
#include "datanas/spaces/eval_network.hpp"
#include "datanas/train/language_model.hpp"
#include "synthetic_ptb.hpp"

using namespace datanas;
using testing::MallocCount;
using V = Var<float>;

namespace {
/// A cell-like network touching every op family of a search step: conv (general, depthwise,
/// pointwise, 1x1 stride 2), BN, relu, pools, the mixed op with a symbolic zero, concat,
/// crop, linear, cross-entropy.
struct Net : nn::Module<float> {
  nn::Conv2d<float> stem, dw, pw, fr1, fr2;
  nn::BatchNorm2d<float> bn0, bn1, bn2;
  nn::Linear<float> head;
  V alpha;
  explicit Net(PhiloxGenerator& g)
      : stem(3, 8, 3, {.padding = 1}, false, g), dw(8, 8, 3, {.padding = 1, .groups = 8}, false, g),
        pw(8, 8, 1, {}, false, g), fr1(8, 4, 1, {.stride = 2}, false, g), fr2(8, 4, 1, {.stride = 2}, false, g),
        bn0(8), bn1(8, false), bn2(8, false), head(16, 10, true, g),
        alpha(Tensor<float>::full({4}, 0.25f), true) {
    register_module("stem", stem);
    register_module("dw", dw);
    register_module("pw", pw);
    register_module("fr1", fr1);
    register_module("fr2", fr2);
    register_module("bn0", bn0);
    register_module("bn1", bn1);
    register_module("bn2", bn2);
    register_module("head", head);
    register_parameter("alpha", alpha);
  }
  V operator()(const V& x) const {
    V s = bn0(stem(x));
    V w = softmax(alpha);
    V terms[] = {zeros<float>(s.shape()), max_pool2d(s, 3, 1, 1), avg_pool2d(s, 3, 1, 1),
                 bn1(pw(dw(relu(s))))};
    V mixed = weighted_sum(terms, w);
    V r = relu(mixed);
    V halves[] = {fr1(r), fr2(shift_crop(r))};
    V red = bn2(concat_channels<float, Cpu>(halves));       // FactorizedReduce: [N, 8, 8, 8]
    V both[] = {red, red};
    return head(global_avg_pool(concat_channels<float, Cpu>(both)));
  }
};
}  // namespace

TEST_SUITE("cpu") {
TEST_CASE("a training step makes no heap allocation after the first" * doctest::skip(!testing::kMallocCounting)) {
  PhiloxGenerator gen(3);
  Net net(gen);
  auto params = net.parameters();
  optim::SGD<float> sgd(params, 0.05, 0.9, 3e-4);
  auto x = Tensor<float>::empty({4, 3, 16, 16});
  for (index_t i = 0; i < x.numel(); ++i) x[i] = gen.uniform() - 0.5f;
  auto y = Tensor<std::int32_t>::from({4}, {1, 7, 3, 3});
  auto step = [&] {
    V loss = cross_entropy(net(V(x)), y);
    sgd.zero_grad();
    backward(loss);
    optim::clip_grad_norm<float, Cpu>(params, 5.0);
    sgd.step();
    return loss.value()[0];
  };
  const float first = step();
  step();
  auto& alloc = CachingAllocator<Cpu>::instance();
  const auto before = alloc.stats();
  MallocCount allocs;
  float last = 0;
  for (int i = 0; i < 3; ++i) last = step();
  const long n = allocs.stop();  // before CHECK, which may allocate
  CHECK(n == 0);
  const auto after = alloc.stats();
  CHECK(after.system_allocations == before.system_allocations);
  CHECK(after.cache_hits > before.cache_hits);  // the steps did allocate tensors, from the cache
  CHECK(after.bytes_in_use == before.bytes_in_use);  // and gave every block back
  CHECK(last < first);  // and they trained
}

TEST_CASE("a training step of the evaluation network makes no heap allocation after the first" *
          doctest::skip(!testing::kMallocCounting)) {
  // DATA_M7 cells (several ops per input, shared ReLUs), drop path, the auxiliary head, and the
  // trainer's augmentation into preallocated batch tensors.
  PhiloxGenerator gen(3), aug(4), drop(5);
  spaces::EvalNetwork<float> net(search::DATA_M7,
                                 {.init_channels = 4, .layers = 3, .in_channels = 1, .image_size = 28,
                                  .auxiliary = true},
                                 gen);
  net.set_drop_path_prob(0.2);
  auto params = net.parameters();
  optim::SGD<float> sgd(params, 0.05, 0.9, 3e-4);
  data::LabelledImages src{Tensor<float>::empty({8, 1, 28, 28}), Tensor<std::int32_t>::from({8}, {0, 1, 2, 3, 4, 5, 6, 7})};
  for (index_t i = 0; i < src.images.numel(); ++i) src.images[i] = gen.uniform();
  const index_t rows[] = {3, 1, 4, 7};
  const float mean[] = {0.3f}, sd[] = {0.35f};
  auto x = Tensor<float>::empty({4, 1, 28, 28});
  auto y = Tensor<std::int32_t>::empty({4});
  auto step = [&] {
    data::random_crop_flip<float>(src, rows, 2, {mean, sd}, aug, x, y);
    data::cutout(x, 8, aug);
    auto out = net.forward(V(x), drop);
    V loss = add(cross_entropy(out.logits, y), scale(cross_entropy(out.aux, y), 0.4f));
    sgd.zero_grad();
    backward(loss);
    optim::clip_grad_norm<float, Cpu>(params, 5.0);
    sgd.step();
  };
  step();
  step();
  auto& alloc = CachingAllocator<Cpu>::instance();
  const auto before = alloc.stats();
  MallocCount allocs;
  for (int i = 0; i < 3; ++i) step();
  const long n = allocs.stop();
  CHECK(n == 0);
  const auto after = alloc.stats();
  CHECK(after.system_allocations == before.system_allocations);
  CHECK(after.bytes_in_use == before.bytes_in_use);
}

TEST_CASE("a PTB weight step (search and evaluation cells) makes no heap allocation after the first" *
          doctest::skip(!testing::kMallocCounting)) {
  // Every dropout on, the temporal penalty, clipping; the search cell with EGS per node (the
  // all-none decision through zero_if_all_none) and the DARTS_V2 evaluation cell; the cell
  // weights' gradients per time step, then in groups of 3 products (GroupedMatmul).
  for (bool grouped : {false, true}) {
    CAPTURE(grouped);
    spaces::rnn::RnnConfig c = testing::tiny_rnn_config();
    if (grouped) c.grouped_weight_bytes = 0, c.grouped_weight_rows = 12;
    const std::vector<data::Window> windows = testing::tiny_windows();
    PhiloxGenerator init(31), noise(3), dropout(4);
    using Space =
        spaces::rnn::RecurrentSearchSpace<spaces::rnn::DartsRnnOps, 4, estimators::EGS<2>>;
    spaces::rnn::RnnSupernet<float, Space> search_net(c, init);
    spaces::rnn::RnnEvalModel<float> eval_net(c, search::RNN_DARTS_V2, init);
    const estimators::EstimatorConfig ec{1.0, search::Normalize::kSoftmax};
    for (int model = 0; model < 2; ++model) {
      CAPTURE(model);
      auto params = model == 0 ? search_net.parameters() : eval_net.parameters();
      optim::SGD<float> sgd(params, 1.0, 0.0, 5e-7);
      Tensor<float> hidden = search_net.init_hidden(4);
      std::size_t next = 0;
      const auto step = [&] {
        const data::Window& w = windows[next++];
        (void)train::weight_step<float>(
            w, hidden,
            [&](const Tensor<std::int32_t>& in, const Tensor<float>& h) {
              return model == 0 ? search_net.forward_sampled(in, h, ec, noise, dropout, false)
                                : eval_net.forward(in, h, dropout);
            },
            params, sgd, 0.25, 1e-3, 1, long(next));
      };
      for (int i = 0; i < 3; ++i) step();
      MallocCount allocs;
      for (int i = 0; i < 3; ++i) step();
      const long n = allocs.stop();
      CHECK(n == 0);
    }
  }
}

TEST_CASE("the counter sees allocations (the test above can fail)" * doctest::skip(!testing::kMallocCounting)) {
  MallocCount allocs;
  void* volatile p = std::malloc(1000);  // volatile: GCC may elide a malloc/free pair
  const long n = allocs.stop();
  std::free(p);
  CHECK(n == 1);
}
}
