// benchmarks/bench_common.hpp - what bench_ops and bench_autograd share with
// benchmarks/pytorch/ops.py: the deterministic inputs and the --verify checksums.
//
// Both sides fill their tensors from the same integer hash, computed in double and rounded once
// to float, so the C++ and the Python benchmarks see bit-identical inputs (the sparsity of relu
// and the arg-max pattern of max pooling, which change kernel time, are then the same too).
#pragma once

#include <sys/resource.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <string>
#include <vector>

#include "datanas/datanas.hpp"

namespace datanas::bench {

using F32 = float;
using VarF = Var<F32, Cpu>;
using TensorF = Tensor<F32, Cpu>;

/// Element i of input number `seed`: uniform-looking in [-scale, scale). ops.py: hashed().
inline TensorF hashed(const Shape& s, std::uint32_t seed, double scale = 1.0) {
  TensorF t = TensorF::empty(s);
  for (index_t i = 0; i < t.numel(); ++i) {
    const std::uint64_t h =
        (std::uint64_t(i + 1) * 2654435761ull + std::uint64_t(seed) * 40503ull) % 4294967296ull;
    t[i] = F32((double(h) / 4294967296.0 * 2.0 - 1.0) * scale);
  }
  return t;
}

/// A leaf that requires grad (an input or a weight that PyTorch would differentiate).
inline VarF param(const Shape& s, std::uint32_t seed, double scale = 1.0) {
  return VarF(hashed(s, seed, scale), true);
}

/// Two numbers that identify a gradient up to float rounding: sum_i g_i * ((i % 7) - 3) and
/// sum_i |g_i|. A permuted or mis-padded gradient changes the first; a wrong scale both.
inline std::pair<double, double> checksum(const TensorF& g) {
  double w = 0, a = 0;
  for (index_t i = 0; i < g.numel(); ++i) {
    w += double(g[i]) * double(i % 7 - 3);
    a += std::abs(double(g[i]));
  }
  return {w, a};
}

/// {"loss": l, "grads": [[w, a], ...]} for the --verify output.
inline std::string verify_json(double loss, const std::vector<VarF>& leaves) {
  std::string s = "{\"loss\": ";
  char buf[96];
  std::snprintf(buf, sizeof buf, "%.9g", loss);
  s += buf;
  s += ", \"grads\": [";
  for (std::size_t i = 0; i < leaves.size(); ++i) {
    const auto [w, a] = checksum(leaves[i].grad());
    std::snprintf(buf, sizeof buf, "%s[%.9g, %.9g]", i ? ", " : "", w, a);
    s += buf;
  }
  return s + "]}";
}

/// The process's peak resident memory so far (getrusage ru_maxrss), in MB: what the memory
/// comparisons with PyTorch use (its scripts read the same counter).
inline double peak_rss_mb() {
  rusage ru{};
  getrusage(RUSAGE_SELF, &ru);
  return double(ru.ru_maxrss) / 1024.0;  // Linux: KiB
}

/// The process's resident memory now (VmRSS of /proc/self/status), in MB; 0 where unreadable.
inline double current_rss_mb() {
  std::FILE* f = std::fopen("/proc/self/status", "r");
  if (!f) return 0;
  char line[256];
  double mb = 0;
  while (std::fgets(line, sizeof line, f))
    if (std::strncmp(line, "VmRSS:", 6) == 0) mb = std::atof(line + 6) / 1024.0;
  std::fclose(f);
  return mb;
}

/// CPU time of every thread of this process so far, in seconds.
inline double process_cpu_s() {
  timespec ts{};
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
  return double(ts.tv_sec) + 1e-9 * double(ts.tv_nsec);
}

/// Median of a non-empty sample (the mean of the middle two for an even count).
inline double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  const std::size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

/// `--peak-rss NAME [--steps N] [--small-segments]` of the step benchmarks (bench_search_step,
/// bench_train_step): taken out of argv, the rest left for Google Benchmark. An empty name: not
/// given. --small-segments cuts the Cpu allocator's small blocks from segments, as the Cuda
/// allocator does by default.
struct PeakRssArgs {
  std::string name;
  int steps = 3;
  bool small_segments = false;
};
inline PeakRssArgs take_peak_rss_args(int& argc, char** argv) {
  PeakRssArgs a;
  int kept = 1;
  for (int i = 1; i < argc; ++i) {
    if (std::strcmp(argv[i], "--peak-rss") == 0 && i + 1 < argc)
      a.name = argv[++i];
    else if (std::strcmp(argv[i], "--steps") == 0 && i + 1 < argc)
      a.steps = std::max(1, std::atoi(argv[++i]));
    else if (std::strcmp(argv[i], "--small-segments") == 0)
      a.small_segments = true;
    else
      argv[kept++] = argv[i];
  }
  argc = kept;
  CachingAllocator<Cpu>::instance().set_small_segments(a.small_segments);
  return a;
}

/// Medians of `steps` calls of step() after one untimed warm-up call, and the tensor allocator's
/// high-water mark over them: what the --peak-rss runs print.
struct StepTimes {
  double wall_ms, cpu_ms, alloc_peak_mb;
  double new_blocks;  // the allocator's system allocations per timed step (mean)
};
template <class F>
StepTimes time_steps(F&& step, int steps) {
  auto& alloc = CachingAllocator<Cpu>::instance();
  step();
  std::vector<double> wall, cpu;
  std::size_t peak = 0;
  const std::size_t misses = alloc.stats().system_allocations;
  for (int i = 0; i < steps; ++i) {
    alloc.reset_peak();
    const double c0 = process_cpu_s();
    const auto t0 = std::chrono::steady_clock::now();
    step();
    wall.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
    cpu.push_back(1e3 * (process_cpu_s() - c0));
    peak = std::max(peak, alloc.stats().peak_bytes_in_use);
  }
  return {median(wall), median(cpu), double(peak) / (1024.0 * 1024.0),
          double(alloc.stats().system_allocations - misses) / steps};
}

/// The common tail of every benchmark main(): context lines (threads, NDEBUG), then Google
/// Benchmark's own argument handling and run. Needs <benchmark/benchmark.h> included first.
#ifdef BENCHMARK_BENCHMARK_H_
inline int run_benchmarks(int argc, char** argv) {
  benchmark::AddCustomContext("omp_threads", std::to_string(cpu::num_threads()));
#ifdef NDEBUG
  benchmark::AddCustomContext("NDEBUG", "yes");
#else
  benchmark::AddCustomContext("NDEBUG", "no (Eigen assertions on)");
#endif
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
#endif

}  // namespace datanas::bench
