// benchmarks/bench_train_step.cpp - one training step of the evaluation network (ALGORITHMS.md
// §1.4), the inner loop of train::Trainer:
//   forward with drop path 0.1 and the auxiliary head, loss = CE + 0.4 CE(aux), backward,
//   grad-norm clip 5, SGD (lr 0.025, momentum 0.9, wd 3e-4).
// Inputs: a fixed batch of uniform random 3 x 32 x 32 images and random labels (no files, no
// augmentation: the step itself is measured). benchmarks/pytorch/eval_network.py --step does the
// same work in PyTorch:
//   bench_train_step --benchmark_filter=DARTS_V2/C16_L8_b64
//   python3 benchmarks/pytorch/eval_network.py --step --genotype DARTS_V2 --init-channels 16
//       --layers 8 --batch-size 64 --steps 5   (one command line)
// Reported: real time per step (the kernels use every OpenMP thread), process CPU time, and
// images_per_s.
#include <benchmark/benchmark.h>

#include "bench_common.hpp"

#include <algorithm>
#include <string>

#include "datanas/datanas.hpp"
#include "datanas/optim/optimizers.hpp"
#include "datanas/spaces/eval_network.hpp"

namespace {

using namespace datanas;

void train_step(benchmark::State& state, const search::Genotype* g, index_t c, int layers, index_t batch) {
  PhiloxGenerator init(1), data(2), drop(3);
  spaces::EvalNetwork<float> net(*g, {.init_channels = c, .layers = layers, .auxiliary = true}, init);
  net.set_drop_path_prob(0.1);
  const auto params = net.parameters();
  optim::SGD<float> sgd(params, 0.025, 0.9, 3e-4);
  auto x = Tensor<float>::empty({batch, 3, 32, 32});
  auto y = Tensor<std::int32_t>::empty({batch});
  for (index_t i = 0; i < x.numel(); ++i) x[i] = float(data.uniform());
  for (index_t i = 0; i < batch; ++i) y[i] = std::int32_t(std::min(9.0, data.uniform() * 10.0));
  auto step = [&] {
    const auto out = net.forward(Var<float>(x), drop);
    Var<float> loss = add(cross_entropy(out.logits, y), scale(cross_entropy(out.aux, y), 0.4f));
    sgd.zero_grad();
    backward(loss);
    optim::clip_grad_norm<float, Cpu>(params, 5.0);
    sgd.step();
  };
  step();  // warm-up: the allocator's cache fills
  for (auto _ : state) step();
  state.counters["images_per_s"] = benchmark::Counter(double(batch), benchmark::Counter::kIsIterationInvariantRate);
  state.counters["params"] = double(net.parameter_count_without_auxiliary());
}

void register_all() {
  struct Case {
    const char* name;
    const search::Genotype* g;
    index_t c;
    int layers;
    index_t batch;
  };
  for (const Case& k : {Case{"DARTS_V2/C16_L8_b64", &search::DARTS_V2, 16, 8, 64},
                        Case{"DATA_M7/C16_L8_b64", &search::DATA_M7, 16, 8, 64},
                        Case{"DARTS_V2/C36_L20_b96", &search::DARTS_V2, 36, 20, 96}})
    benchmark::RegisterBenchmark((std::string("train_step/") + k.name).c_str(), train_step, k.g, k.c, k.layers,
                                 k.batch)
        ->Unit(benchmark::kMillisecond)
        ->UseRealTime()
        ->MeasureProcessCPUTime()
        ->MinTime(5.0);
}

}  // namespace

int main(int argc, char** argv) {
  register_all();
  return datanas::bench::run_benchmarks(argc, argv);
}
