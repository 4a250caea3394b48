// benchmarks/bench_search_step.cpp - one full first-order search step of the DARTS supernet.
//
// One step (ALGORITHMS.md §3, DARTS order) = load the next architecture-half and weight-half
// batches, one first-order architecture step (estimator sample, forward + backward on the
// architecture batch, Adam on alpha: lr 3e-4, betas (0.5, 0.999), wd 1e-3), then one weight step
// (fresh sample, forward + backward on the weight batch, grad-norm clip 5, SGD lr 0.025,
// momentum 0.9, wd 3e-4). Exactly Searcher<float>::run_epoch's inner loop.
//
// Network: DARTS search space (8 ops, 4 nodes, multiplier 4), C = 16, 8 cells (reductions at 2
// and 5), stem multiplier 3, 10 classes, batch 64, 3 x 32 x 32 inputs (CIFAR-10 sizes).
// Data: synthetic, 256 uniform-random images and random labels from a fixed seed (no files).
//
// Modes (benchmark names):
//   search_step/softmax_edge_dense   DARTS: w = softmax(alpha) per edge, every op runs
//   search_step/egs4_node_dense      DATA: EGS<4> per node, every op runs (reference behaviour)
//   search_step/egs4_node_sparse     DATA: EGS<4> per node, only the selected ops run
//
// Reported: real time per step (UseRealTime; the kernels use every OpenMP thread), process CPU
// time (MeasureProcessCPUTime: all threads), and counters
//   images_per_s   (64 architecture + 64 weight images) per step / real time
//   alloc_peak_MB  the tensor allocator's high-water mark during a step (max over the steps)
//   peak_rss_MB    getrusage ru_maxrss of the process at the end of the benchmark; meaningful per
//                  mode only when one mode runs in the process (--benchmark_filter, as
//                  benchmarks/compare_search_step.py does)
//   params         Supernet::parameter_count() (DARTS: 1930618)
//
//   bench_search_step                                  all three modes
//   bench_search_step --benchmark_filter=egs4_node_sparse --benchmark_repetitions=3
//   bench_search_step --peak-rss MODE [--steps N]      N steps (default 3) of one mode after one
//                                                      warm-up step, JSON on stdout: median ms,
//                                                      CPU ms, allocator and process peak, and
//                                                      new_blocks_per_step (the allocator's
//                                                      system allocations per timed step)
//   ... --small-segments                               the Cpu allocator cuts small blocks from
//                                                      2 MiB segments, as the Cuda one does
#include <benchmark/benchmark.h>

#include "bench_common.hpp"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <functional>
#include <memory>
#include <numeric>
#include <string>
#include <vector>

#include "datanas/datanas.hpp"
#include "datanas/search/searcher.hpp"
#include "search_step_common.hpp"

namespace {

using namespace datanas;
using F32 = float;

using namespace datanas::bench;

/// A supernet and its searcher, ready to step.
struct Bench {
  virtual ~Bench() = default;
  virtual search::Searcher<F32>& searcher() = 0;
  virtual index_t params() const = 0;
  data::LabelledImages data = synthetic_cifar();
  long step_no = 0;

  /// One full search step: next batches, architecture step, weight step.
  void step() {
    const index_t half = kImages / 2, nb = half / kBatch;
    const index_t b = index_t(step_no++ % nb);
    std::vector<index_t> wrows(kBatch), arows(kBatch);
    std::iota(wrows.begin(), wrows.end(), b * kBatch);
    std::iota(arows.begin(), arows.end(), half + b * kBatch);
    auto& s = searcher();
    s.load_batches(wrows, arows);
    s.arch_step(s.config().lr);
    s.weight_step();
  }
};

template <class E, search::Granularity G>
struct BenchOf : Bench {
  spaces::SupernetConfig nc{.init_channels = 16, .layers = 8, .in_channels = 3, .num_classes = 10};
  PhiloxGenerator init{1};
  spaces::Supernet<F32, DartsSpace<E, G>> net{nc, init};
  search::Searcher<F32> s;
  explicit BenchOf(bool sparse)
      : s(net, data, data::ChannelNorm{kMean, kStd}, config(sparse)) {
    s.set_estimator_config({estimators::default_schedule(E::kKind).start, search::Normalize::kSoftmax});
  }
  static search::SearchConfig config(bool sparse) {
    search::SearchConfig c;  // defaults are the §3 hyper-parameters
    c.epochs = 1;
    c.batch_size = kBatch;
    c.sparse = sparse;
    c.tau = estimators::default_schedule(E::kKind);
    c.seed = 7;
    return c;
  }
  search::Searcher<F32>& searcher() override { return s; }
  index_t params() const override { return net.parameter_count(); }
};

struct Mode {
  const char* name;
  std::function<std::unique_ptr<Bench>()> make;
};

const std::vector<Mode>& modes() {
  using search::Granularity;
  static const std::vector<Mode> m{
      {"softmax_edge_dense",
       [] { return std::make_unique<BenchOf<estimators::Softmax, Granularity::kEdge>>(false); }},
      {"egs4_node_dense",
       [] { return std::make_unique<BenchOf<estimators::EGS<4>, Granularity::kNode>>(false); }},
      {"egs4_node_sparse",
       [] { return std::make_unique<BenchOf<estimators::EGS<4>, Granularity::kNode>>(true); }},
  };
  return m;
}

void check_params(const Bench& b) {
  DATANAS_CHECK(b.params() == kDartsParams, "DARTS supernet: ", b.params(), " parameters, expected ",
                kDartsParams);
}

void run_mode(benchmark::State& state, const Mode& mode) {
  auto b = mode.make();
  check_params(*b);
  auto& alloc = CachingAllocator<Cpu>::instance();
  b->step();  // warm-up outside the timed loop: fills the allocator cache, first-touch pages
  std::size_t peak = 0;
  for (auto _ : state) {
    alloc.reset_peak();
    b->step();
    peak = std::max(peak, alloc.stats().peak_bytes_in_use);
  }
  const double per_step = double(2 * kBatch);
  state.counters["images_per_s"] = benchmark::Counter(per_step * double(state.iterations()), benchmark::Counter::kIsRate);
  state.counters["alloc_peak_MB"] = double(peak) / (1024.0 * 1024.0);
  state.counters["peak_rss_MB"] = peak_rss_mb();
  state.counters["params"] = double(b->params());
}

/// --peak-rss MODE [--steps N]: a plain loop, one JSON line.
int peak_rss_run(const std::string& name, int steps) {
  const auto& ms = modes();
  auto it = std::find_if(ms.begin(), ms.end(), [&](const Mode& m) { return name == m.name; });
  if (it == ms.end()) {
    std::fprintf(stderr, "unknown mode '%s' (softmax_edge_dense, egs4_node_dense, egs4_node_sparse)\n", name.c_str());
    return 2;
  }
  auto b = it->make();
  check_params(*b);
  const double rss_setup = current_rss_mb();
  const StepTimes t = time_steps([&] { b->step(); }, steps);
  std::printf(
      "{\"mode\": \"%s\", \"steps\": %d, \"threads\": %d, \"ms_per_step\": %.3f, \"cpu_ms_per_step\": %.3f, "
      "\"images_per_s\": %.2f, \"alloc_peak_MB\": %.2f, \"rss_after_setup_MB\": %.2f, "
      "\"peak_rss_MB\": %.2f, \"new_blocks_per_step\": %.2f, \"params\": %lld}\n",
      name.c_str(), steps, cpu::num_threads(), t.wall_ms, t.cpu_ms, double(2 * kBatch) / (t.wall_ms / 1e3),
      t.alloc_peak_mb, rss_setup, peak_rss_mb(), t.new_blocks, (long long)b->params());
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  const PeakRssArgs rss = take_peak_rss_args(argc, argv);
  if (!rss.name.empty()) return peak_rss_run(rss.name, rss.steps);

  for (const Mode& m : modes()) {
    benchmark::RegisterBenchmark((std::string("search_step/") + m.name).c_str(),
                                 [&m](benchmark::State& st) { run_mode(st, m); })
        ->UseRealTime()
        ->MeasureProcessCPUTime()
        ->Iterations(3)
        ->Unit(benchmark::kMillisecond);
  }
  return bench::run_benchmarks(argc, argv);
}
