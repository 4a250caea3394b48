// datanas-demo: trains a small CNN built from DARTS-style ops (3x3 stem, separable convs,
// batch norm, pooling) on Fashion-MNIST with SGD + cosine schedule, then reports test
// accuracy. The smallest end-to-end use of the library; the architecture search itself
// arrives as datanas-search.
#include <cmath>
#include <cstdio>
#include <iostream>

#include "datanas/data/batch.hpp"
#include "datanas/datanas.hpp"
#include "datanas/io/args.hpp"
#include "datanas/io/progress.hpp"
#include "datanas/nn/layers.hpp"
#include "datanas/optim/optimizers.hpp"

using namespace datanas;
using V = Var<float>;

/// relu -> depthwise kxk (stride s) -> pointwise 1x1 -> BN: half of DARTS' sep_conv.
struct SepBlock : nn::Module<float> {
  nn::Conv2d<float> dw, pw;
  nn::BatchNorm2d<float> bn;
  SepBlock(index_t cin, index_t cout, int stride, PhiloxGenerator& gen)
      : dw(cin, cin, 3, {.stride = stride, .padding = 1, .groups = int(cin)}, false, gen),
        pw(cin, cout, 1, {}, false, gen), bn(cout) {
    register_module("dw", dw);
    register_module("pw", pw);
    register_module("bn", bn);
  }
  V operator()(const V& x) const { return bn(pw(dw(relu(x)))); }
};

struct TinyNet : nn::Module<float> {
  nn::Conv2d<float> stem;
  nn::BatchNorm2d<float> stem_bn;
  SepBlock b1, b2, b3;
  nn::Linear<float> head;
  explicit TinyNet(index_t c, PhiloxGenerator& gen)
      : stem(1, c, 3, {.padding = 1}, false, gen), stem_bn(c), b1(c, 2 * c, 1, gen),
        b2(2 * c, 2 * c, 1, gen), b3(2 * c, 4 * c, 2, gen), head(4 * c, 10, true, gen) {
    register_module("stem", stem);
    register_module("stem_bn", stem_bn);
    register_module("b1", b1);
    register_module("b2", b2);
    register_module("b3", b3);
    register_module("head", head);
  }
  V operator()(const V& x) const {
    V s = stem_bn(stem(x));                  // [N, c, 28, 28]
    V h = max_pool2d(b1(s), 3, 2, 1);        // [N, 2c, 14, 14]
    h = add(h, b2(h));                       // residual, like a skip_connect edge
    h = b3(h);                               // [N, 4c, 7, 7]
    return head(global_avg_pool(relu(h)));   // [N, 10]
  }
};

int main(int argc, char** argv) try {
  std::string data_dir = data::FashionMnist::kDefaultDir;
  long epochs = 2, batch = 64, train_limit = 0, channels = 16;
  double lr = 0.05;
  std::uint64_t seed = 1;
  io::ArgParser args("datanas-demo", "Train a small CNN of DARTS ops on Fashion-MNIST (CPU).");
  args.add("data-dir", &data_dir, "directory with the Fashion-MNIST *-ubyte.gz files")
      .add("epochs", &epochs, "training epochs")
      .add("batch-size", &batch, "batch size")
      .add("channels", &channels, "stem channels C (blocks use 2C and 4C)")
      .add("lr", &lr, "initial SGD learning rate (cosine to 0)")
      .add("train-limit", &train_limit, "use only the first N training images (0 = all)")
      .add("seed", &seed, "random seed");
  if (!args.parse(argc, argv, std::cout)) return 0;
  DATANAS_CHECK(epochs >= 1, "--epochs must be >= 1, got ", epochs);
  DATANAS_CHECK(batch >= 1, "--batch-size must be >= 1, got ", batch);
  DATANAS_CHECK(channels >= 1, "--channels must be >= 1, got ", channels);
  DATANAS_CHECK(train_limit >= 0, "--train-limit must be >= 0, got ", train_limit);

  auto ds = data::FashionMnist::load(data_dir);
  const index_t n_train = train_limit > 0 ? std::min<index_t>(train_limit, ds.train.size()) : ds.train.size();
  std::printf("Fashion-MNIST: %ld training images (of %ld), %ld test images; %d threads\n",
              long(n_train), long(ds.train.size()), long(ds.test.size()), cpu::num_threads());

  PhiloxGenerator gen(seed);
  TinyNet net(channels, gen);
  std::printf("TinyNet: %.6fM parameters\n", double(net.parameter_count()) / 1e6);
  optim::SGD<float> sgd(net.parameters(), lr, 0.9, 3e-4);

  const long steps = long(n_train / batch);  // drop the last partial batch, as DARTS does
  DATANAS_CHECK(steps >= 1, "--train-limit ", n_train, " is smaller than one batch of ", batch);
  auto x = Tensor<float>::empty({batch, 1, 28, 28});
  auto y = Tensor<std::int32_t>::empty({batch});
  for (long epoch = 0; epoch < epochs; ++epoch) {
    sgd.set_lr(optim::cosine_lr(lr, 0.0, epoch, epochs));
    net.train();
    auto order = data::shuffled_indices(n_train, gen);
    io::ProgressBar bar("epoch " + std::to_string(epoch + 1) + "/" + std::to_string(epochs), steps);
    double loss_sum = 0;
    long correct = 0;
    for (long s = 0; s < steps; ++s) {
      data::gather_batch<float>(ds.train, std::span(order).subspan(std::size_t(s * batch), std::size_t(batch)),
                                data::FashionMnist::kMean, data::FashionMnist::kStd, x, y);
      V logits = net(V(x));
      V loss = cross_entropy(logits, y);
      const float l = loss.value()[0];
      DATANAS_CHECK(std::isfinite(l), "training diverged: loss is ", l, " at epoch ", epoch + 1,
                    " step ", s + 1, " (try a smaller --lr)");
      sgd.zero_grad();
      backward(loss);
      optim::clip_grad_norm<float, Cpu>(sgd.params(), 5.0);  // no copy: the step stays allocation-free
      sgd.step();
      loss_sum += l;
      for (index_t i = 0; i < batch; ++i) {
        const float* row = logits.value().data() + i * 10;
        correct += (std::max_element(row, row + 10) - row) == y[i];
      }
      bar.update(s + 1, loss_sum / double(s + 1), double(correct) / double((s + 1) * batch),
                 (s + 1) * batch);
    }
  }

  // Test accuracy in evaluation mode (running BN statistics), without recording a tape.
  NoGradGuard ng;
  net.eval();
  const index_t eval_batch = 500;
  long correct = 0;
  std::vector<index_t> rows(static_cast<std::size_t>(eval_batch));
  auto tx = Tensor<float>::empty({eval_batch, 1, 28, 28});
  auto ty = Tensor<std::int32_t>::empty({eval_batch});
  for (index_t start = 0; start + eval_batch <= ds.test.size(); start += eval_batch) {
    std::iota(rows.begin(), rows.end(), start);
    data::gather_batch<float>(ds.test, rows, data::FashionMnist::kMean, data::FashionMnist::kStd, tx, ty);
    auto logits = net(V(tx)).value();
    for (index_t i = 0; i < eval_batch; ++i) {
      const float* row = logits.data() + i * 10;
      correct += (std::max_element(row, row + 10) - row) == ty[i];
    }
  }
  std::printf("test accuracy: %.2f%% (%ld / %ld)\n", 100.0 * double(correct) / double(ds.test.size()),
              correct, long(ds.test.size()));
  return 0;
} catch (const std::exception& e) {
  std::fprintf(stderr, "datanas-demo: error: %s\n", e.what());
  return 2;
}
