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
// counters images_per_s, alloc_peak_MB (the tensor allocator's high-water mark during a step, max
// over the steps) and params.
//
//   bench_train_step --peak-rss CASE [--steps N]   N steps (default 3) of one case (e.g.
//                                                   DARTS_V2/C16_L8_b64) after one warm-up step,
//                                                   one JSON line: median ms, CPU ms, allocator
//                                                   and process peak (eval_network.py --step
//                                                   --json prints the same fields)
#include <benchmark/benchmark.h>

#include "bench_common.hpp"

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "datanas/datanas.hpp"
#include "datanas/optim/optimizers.hpp"
#include "datanas/spaces/eval_network.hpp"

namespace {

using namespace datanas;
using namespace datanas::bench;

struct Case {
  const char* name;
  const search::Genotype* g;
  index_t c;
  int layers;
  index_t batch;
};

const std::vector<Case>& cases() {
  static const std::vector<Case> k{{"DARTS_V2/C16_L8_b64", &search::DARTS_V2, 16, 8, 64},
                                   {"DATA_M7/C16_L8_b64", &search::DATA_M7, 16, 8, 64},
                                   {"DARTS_V2/C36_L20_b96", &search::DARTS_V2, 36, 20, 96}};
  return k;
}

/// A network, its optimiser and one fixed batch, ready to step.
struct TrainBench {
  PhiloxGenerator init{1}, data{2}, drop{3};
  spaces::EvalNetwork<float> net;
  std::vector<Var<float>> params;
  optim::SGD<float> sgd;
  Tensor<float> x;
  Tensor<std::int32_t> y;

  explicit TrainBench(const Case& k)
      : net(*k.g, {.init_channels = k.c, .layers = k.layers, .auxiliary = true}, init),
        params(net.parameters()),
        sgd(params, 0.025, 0.9, 3e-4),
        x(Tensor<float>::empty({k.batch, 3, 32, 32})),
        y(Tensor<std::int32_t>::empty({k.batch})) {
    net.set_drop_path_prob(0.1);
    for (index_t i = 0; i < x.numel(); ++i) x[i] = float(data.uniform());
    for (index_t i = 0; i < k.batch; ++i) y[i] = std::int32_t(std::min(9.0, data.uniform() * 10.0));
  }

  void step() {
    const auto out = net.forward(Var<float>(x), drop);
    Var<float> loss = add(cross_entropy(out.logits, y), scale(cross_entropy(out.aux, y), 0.4f));
    sgd.zero_grad();
    backward(loss);
    optim::clip_grad_norm<float, Cpu>(params, 5.0);
    sgd.step();
  }
};

void train_step(benchmark::State& state, const Case& k) {
  TrainBench b(k);
  auto& alloc = CachingAllocator<Cpu>::instance();
  b.step();  // warm-up: the allocator's cache fills
  std::size_t peak = 0;
  for (auto _ : state) {
    alloc.reset_peak();
    b.step();
    peak = std::max(peak, alloc.stats().peak_bytes_in_use);
  }
  state.counters["images_per_s"] = benchmark::Counter(double(k.batch), benchmark::Counter::kIsIterationInvariantRate);
  state.counters["alloc_peak_MB"] = double(peak) / (1024.0 * 1024.0);
  state.counters["params"] = double(b.net.parameter_count_without_auxiliary());
}

/// --peak-rss CASE [--steps N]: a plain loop in a process that runs nothing else, one JSON line.
int peak_rss_run(const std::string& name, int steps) {
  const auto& ks = cases();
  auto it = std::find_if(ks.begin(), ks.end(), [&](const Case& k) { return name == k.name; });
  if (it == ks.end()) {
    std::string known;
    for (const Case& k : ks) known += std::string(known.empty() ? "" : ", ") + k.name;
    std::fprintf(stderr, "unknown case '%s' (%s)\n", name.c_str(), known.c_str());
    return 2;
  }
  TrainBench b(*it);
  const double rss_setup = current_rss_mb();
  const StepTimes t = time_steps([&] { b.step(); }, steps);
  std::printf(
      "{\"side\": \"datanas\", \"case\": \"%s\", \"steps\": %d, \"threads\": %d, \"ms_per_step\": %.3f, "
      "\"cpu_ms_per_step\": %.3f, \"alloc_peak_MB\": %.2f, \"rss_after_setup_MB\": %.2f, "
      "\"peak_rss_MB\": %.2f, \"new_blocks_per_step\": %.2f, \"params\": %lld}\n",
      name.c_str(), steps, cpu::num_threads(), t.wall_ms, t.cpu_ms, t.alloc_peak_mb, rss_setup, peak_rss_mb(),
      t.new_blocks, (long long)b.net.parameter_count_without_auxiliary());
  return 0;
}

void register_all() {
  for (const Case& k : cases())
    benchmark::RegisterBenchmark((std::string("train_step/") + k.name).c_str(), train_step, k)
        ->Unit(benchmark::kMillisecond)
        ->UseRealTime()
        ->MeasureProcessCPUTime()
        ->MinTime(5.0);
}

}  // namespace

int main(int argc, char** argv) {
  const PeakRssArgs rss = take_peak_rss_args(argc, argv);
  if (!rss.name.empty()) return peak_rss_run(rss.name, rss.steps);
  register_all();
  return datanas::bench::run_benchmarks(argc, argv);
}
