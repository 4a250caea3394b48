// benchmarks/bench_autograd.cpp - the per-op cost of the autograd layer itself.
//
// A chain of kChain ops, alternately y = relu(y) and y = y + x, on tensors of n elements. For
// n = 1 or 16 the kernels are a few nanoseconds, so the time per op is the bookkeeping: the Var
// node, the tape entry, the backward closure, the gradient buffers. For large n the same chain is
// kernel-bound; the two read side by side say when the overhead matters. benchmarks/pytorch/
// ops.py runs the same chains under the same names.
//
//   chain100/fwd_bwd/n<N>     forward with recording, sum(), backward: what a training step does
//   chain100/fwd_nograd/n<N>  forward under NoGradGuard (torch.no_grad()): no tape at all
//
// The counter ns_per_op is real time per iteration / kChain.
#include <benchmark/benchmark.h>

#include <string>

#include "bench_common.hpp"
#include "datanas/datanas.hpp"

namespace {

using namespace datanas;
using namespace datanas::bench;

constexpr int kChain = 100;

VarF chain(const VarF& x) {
  VarF y = x;
  for (int i = 0; i < kChain; ++i) y = (i % 2 == 0) ? relu(y) : add(y, x);
  return y;
}

void set_counters(benchmark::State& state) {
  state.SetItemsProcessed(state.iterations() * kChain);
  // kIsIterationInvariantRate | kInvert: seconds per op; the JSON holds it in seconds.
  state.counters["ns_per_op"] = benchmark::Counter(
      1e-9 * kChain, benchmark::Counter::kIsIterationInvariantRate | benchmark::Counter::kInvert);
}

void fwd_bwd(benchmark::State& state, index_t n) {
  VarF x = param({n}, 1);
  for (auto _ : state) {
    x.zero_grad();
    backward(sum(chain(x)));
  }
  set_counters(state);
}

void fwd_nograd(benchmark::State& state, index_t n) {
  VarF x = param({n}, 1);
  NoGradGuard guard;
  for (auto _ : state) {
    VarF y = chain(x);
    benchmark::DoNotOptimize(y.value().data());
  }
  set_counters(state);
}

}  // namespace

int main(int argc, char** argv) {
  // 1 and 16 elements: pure overhead. 64 Ki: in cache, above the parallel grain (kernels fork).
  // 1 Mi (4 MiB): memory-bound kernels.
  for (const index_t n : {index_t(1), index_t(16), index_t(65536), index_t(1048576)}) {
    const std::string suffix = "/n" + std::to_string(n);
    const auto unit = n >= 65536 ? benchmark::kMillisecond : benchmark::kMicrosecond;
    benchmark::RegisterBenchmark(("chain100/fwd_bwd" + suffix).c_str(),
                                 [n](benchmark::State& st) { fwd_bwd(st, n); })
        ->UseRealTime()
        ->Unit(unit);
    benchmark::RegisterBenchmark(("chain100/fwd_nograd" + suffix).c_str(),
                                 [n](benchmark::State& st) { fwd_nograd(st, n); })
        ->UseRealTime()
        ->Unit(unit);
  }
  benchmark::AddCustomContext("omp_threads", std::to_string(cpu::num_threads()));
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
