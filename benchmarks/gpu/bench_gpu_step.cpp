// benchmarks/gpu/bench_gpu_step.cpp - the search step and a few ops on the GPU, timed with CUDA
// events after warm-up (median of repeats); the twin of
//   python3 benchmarks/pytorch/search_step.py --device cuda
// which does the same work in PyTorch eager on the same card.
//
// Search step: exactly benchmarks/bench_search_step.cpp's step (DARTS space, 8 ops, 4 nodes,
// C = 16, 8 cells, batch 64, 3 x 32 x 32 synthetic images): next batches, a first-order
// architecture step (Adam on alpha), a weight step (clip 5, SGD momentum). Modes:
//   softmax_edge_dense   DARTS
//   egs4_node_dense      DATA, EGS M = 4 per node, every op runs
//   egs4_node_sparse     the same, only the sampled ops run (reads the code on the host)
// and the two dense modes again with "+graph": the step captured once as a CUDA graph
// (SearchConfig::cuda_graph, StepGraph) and replayed, the batch copied in before each replay;
// then the dense modes with "+own_dw": depthwise convolutions on our kernels instead of cuDNN
// (cuda::set_depthwise_conv), which decides which of the two should be the default.
// The step reads its loss and correct count on the host for the log (one synchronisation) as
// the searcher does; the PyTorch twin synchronises once per step too.
//
// Ops: forward + backward of single ops at the search network's sizes (batch 64, C = 16, 32 x 32),
// the depthwise ones on cuDNN and on our kernels ("+own"); benchmarks/pytorch/gpu_ops.py is their
// PyTorch twin.
//
// Output: one JSON object per line: {"what": ..., "ms": median, "ms_all": [...], "peak_MB": ...,
// "cuda_mallocs": ...} with peak_MB = the device allocator's high-water mark of bytes held by
// tensors during the timed steps (comparable with torch.cuda.max_memory_allocated), and
// cuda_mallocs = the allocator's cudaMalloc calls per timed step (0 once its cache serves a step).
// On the simulator the rows also count what the host queued per timed step: "kernels" (our
// launches), "library_calls" (cuBLAS and cuDNN computations) and "device_copies" (device-side
// copies and memsets); a replayed graph counts none (it was queued at capture).
//
// --smoke runs everything at tiny sizes (C = 4, 3 cells, batch 4, 8 x 8 images): every code path
// in seconds, for the CUDA simulator (tests/cudasim builds this file as bench_gpu_step_sim), so a
// GPU session does not find a broken benchmark. Its numbers mean nothing.
// --smoke --layers 8 gives the tiny network the benchmark's 8 cells: on the simulator, the
// counts of the real search step (they do not depend on C, the batch or the image size).
//
//   bench_gpu_step [--steps N] [--warmup N] [--only search|ops] [--smoke [--layers N]]
#include <algorithm>
#include <cstdio>
#include <cstring>
#include <functional>
#include <memory>
#include <numeric>
#include <string>
#include <vector>

#include "datanas/cuda.hpp"
#include "datanas/datanas.hpp"
#include "datanas/search/searcher.hpp"
#include "../search_step_common.hpp"

namespace {

using namespace datanas;
using F32 = float;

using namespace datanas::bench;

/// Median of the times of `reps` calls of f after `warmup` calls, each timed with CUDA events
/// on the current stream; records the allocator's peak over the timed calls.
struct Timing {
  double median_ms = 0;
  std::vector<double> all;
  double peak_mb = 0;
  double cuda_mallocs = 0;  // per timed repetition
#if DATANAS_CUDA_SIM
  // On the simulator only, per timed repetition: kernel launches, cuBLAS/cuDNN computations
  // and device-side copies and memsets, the work whose launch cost the host pays per step
  // (counting them on a GPU would need CUPTI).
  double kernels = 0, library_calls = 0, device_copies = 0;
#endif
};
Timing time_it(const std::function<void()>& f, int warmup, int reps) {
  const cudaStream_t s = cuda::current_stream().handle;
  for (int i = 0; i < warmup; ++i) f();
  DATANAS_CUDA_CHECK(cudaStreamSynchronize(s));
  auto& alloc = CachingAllocator<Cuda>::instance();
  alloc.reset_peak();
  const std::size_t mallocs = alloc.stats().system_allocations;
  cudaEvent_t e0, e1;
  DATANAS_CUDA_CHECK(cudaEventCreate(&e0));
  DATANAS_CUDA_CHECK(cudaEventCreate(&e1));
  Timing t;
#if DATANAS_CUDA_SIM
  const cudasim::Counters before = cudasim::counters();
#endif
  for (int i = 0; i < reps; ++i) {
    DATANAS_CUDA_CHECK(cudaEventRecord(e0, s));
    f();
    DATANAS_CUDA_CHECK(cudaEventRecord(e1, s));
    DATANAS_CUDA_CHECK(cudaEventSynchronize(e1));
    float ms = 0;
    DATANAS_CUDA_CHECK(cudaEventElapsedTime(&ms, e0, e1));
    t.all.push_back(ms);
  }
  cudaEventDestroy(e0);
  cudaEventDestroy(e1);
  std::vector<double> sorted = t.all;
  std::sort(sorted.begin(), sorted.end());
  t.median_ms = sorted[sorted.size() / 2];
  t.peak_mb = double(alloc.stats().peak_bytes_in_use) / (1024.0 * 1024.0);
  t.cuda_mallocs = double(alloc.stats().system_allocations - mallocs) / reps;
#if DATANAS_CUDA_SIM
  const cudasim::Counters& after = cudasim::counters();
  t.kernels = double(after.kernels - before.kernels) / reps;
  t.library_calls = double(after.library_calls - before.library_calls) / reps;
  t.device_copies = double(after.device_copies - before.device_copies) / reps;
#endif
  return t;
}

void report(const std::string& what, const Timing& t, const std::string& extra = "") {
  std::printf("{\"what\": \"%s\", \"ms\": %.4f, \"peak_MB\": %.2f, \"cuda_mallocs\": %.2f, \"ms_all\": [",
              what.c_str(), t.median_ms, t.peak_mb, t.cuda_mallocs);
  for (std::size_t i = 0; i < t.all.size(); ++i) std::printf("%s%.3f", i ? ", " : "", t.all[i]);
  std::printf("]");
#if DATANAS_CUDA_SIM
  std::printf(", \"kernels\": %.1f, \"library_calls\": %.1f, \"device_copies\": %.1f", t.kernels,
              t.library_calls, t.device_copies);
#endif
  std::printf("%s}\n", extra.c_str());
  std::fflush(stdout);
}

/// The sizes: the benchmark's, or --smoke's tiny ones (file comment).
struct Sizes {
  index_t batch = kBatch, images = kImages, channels = 16, layers = 8, side = 32;
  bool smoke = false;
  static Sizes tiny() { return {4, 16, 4, 3, 8, true}; }
};

template <class E, search::Granularity G>
void search_mode(const char* name, bool sparse, bool graph, const data::LabelledImages& d, const Sizes& z, int warmup,
                 int steps) {
  spaces::SupernetConfig nc{.init_channels = z.channels, .layers = int(z.layers), .in_channels = 3, .num_classes = 10};
  PhiloxGenerator init(1);
  spaces::Supernet<F32, DartsSpace<E, G>, Cuda> net(nc, init);
  DATANAS_CHECK(z.smoke || net.parameter_count() == kDartsParams, "DARTS supernet: ", net.parameter_count(),
                " parameters");
  search::SearchConfig c;
  c.epochs = 1;
  c.batch_size = z.batch;
  c.sparse = sparse;
  c.cuda_graph = graph;
  c.tau = estimators::default_schedule(E::kKind);
  c.seed = 7;
  search::Searcher<F32, Cuda> s(net, d, data::ChannelNorm{kMean, kStd}, c);
  s.set_estimator_config({c.tau.start, search::Normalize::kSoftmax});
  long step_no = 0;
  auto step = [&] {
    const index_t half = z.images / 2, nb = half / z.batch;
    const index_t b = index_t(step_no++ % nb);
    std::vector<index_t> wrows(std::size_t(z.batch)), arows(std::size_t(z.batch));
    std::iota(wrows.begin(), wrows.end(), b * z.batch);
    std::iota(arows.begin(), arows.end(), half + b * z.batch);
    s.load_batches(wrows, arows);
    s.search_step(c.lr);  // architecture + weight step; replays the captured step with graph
  };
  const Timing t = time_it(step, warmup, steps);
  // With a graph, the memory the step holds is its pool (idle between replays, so not in
  // peak_MB's bytes_in_use) plus the tensors that outlive it.
  const double pool_mb = double(CachingAllocator<Cuda>::instance().stats().graph_pool_bytes) / (1024.0 * 1024.0);
  const bool own_dw = cuda::depthwise_conv() == cuda::DepthwiseConv::kOwn;
  report(std::string("search_step/") + name + (graph ? "+graph" : "") + (own_dw ? "+own_dw" : ""), t,
         ", \"images_per_s\": " + std::to_string(2.0 * double(z.batch) / (t.median_ms / 1e3)) +
             (graph ? ", \"graph_pool_MB\": " + std::to_string(pool_mb) : std::string()));
}

/// Forward + backward of one op on random inputs that require grad.
void op_case(const std::string& name, std::vector<Shape> shapes,
             const std::function<Var<F32, Cuda>(std::span<const Var<F32, Cuda>>)>& op, int warmup, int reps) {
  PhiloxGenerator g(3);
  std::vector<Var<F32, Cuda>> xs;
  for (const Shape& s : shapes) {
    Tensor<F32> h = Tensor<F32>::empty(s);
    for (index_t i = 0; i < h.numel(); ++i) h[i] = F32(g.normal());
    xs.emplace_back(cuda::to_device(h), true);
  }
  Tensor<F32, Cuda> dy;
  auto f = [&] {
    Var<F32, Cuda> y = op(xs);
    if (!dy.defined()) dy = Tensor<F32, Cuda>::full(y.shape(), 1.0f);
    backward(y, dy);
  };
  report("op/" + name, time_it(f, warmup, reps));
}

void ops(const Sizes& z, int warmup, int reps) {
  const Shape x{z.batch, 16, z.side, z.side};
  PhiloxGenerator g(4);
  auto p = [](Conv2dParams c) { return c; };
  op_case("relu", {x}, [](auto v) { return relu(v[0]); }, warmup, reps);
  op_case("conv3x3_general_16x16", {x, {16, 16, 3, 3}},
          [&](auto v) { return conv2d(v[0], v[1], Var<F32, Cuda>(), p({.padding = 1})); }, warmup, reps);
  // Depthwise convolutions on cuDNN and on our kernels ("+own"), the shapes of sep_conv and
  // dil_conv at the first cells' size and at a reduction edge's stride 2.
  for (const auto impl : {cuda::DepthwiseConv::kCudnn, cuda::DepthwiseConv::kOwn}) {
    cuda::set_depthwise_conv(impl);
    const std::string own = impl == cuda::DepthwiseConv::kOwn ? "+own" : "";
    op_case("conv3x3_depthwise" + own, {x, {16, 1, 3, 3}},
            [&](auto v) { return conv2d(v[0], v[1], Var<F32, Cuda>(), p({.padding = 1, .groups = 16})); }, warmup,
            reps);
    op_case("conv5x5_depthwise" + own, {x, {16, 1, 5, 5}},
            [&](auto v) { return conv2d(v[0], v[1], Var<F32, Cuda>(), p({.padding = 2, .groups = 16})); }, warmup,
            reps);
    op_case("conv5x5_depthwise_dil2" + own, {x, {16, 1, 5, 5}},
            [&](auto v) { return conv2d(v[0], v[1], Var<F32, Cuda>(), p({.padding = 4, .dilation = 2, .groups = 16})); },
            warmup, reps);
    op_case("conv3x3_depthwise_stride2" + own, {x, {16, 1, 3, 3}},
            [&](auto v) { return conv2d(v[0], v[1], Var<F32, Cuda>(), p({.stride = 2, .padding = 1, .groups = 16})); },
            warmup, reps);
  }
  cuda::set_depthwise_conv(cuda::DepthwiseConv::kCudnn);
  op_case("conv1x1", {x, {16, 16, 1, 1}}, [&](auto v) { return conv2d(v[0], v[1], Var<F32, Cuda>(), p({})); },
          warmup, reps);
  op_case("batch_norm_nonaffine_train", {x}, [](auto v) {
    static Tensor<F32, Cuda> rm = Tensor<F32, Cuda>::zeros({16}), rv = Tensor<F32, Cuda>::full({16}, 1.0f);
    return batch_norm2d(v[0], Var<F32, Cuda>(), Var<F32, Cuda>(), rm, rv, true, 0.1f, 1e-5f);
  }, warmup, reps);
  op_case("max_pool3x3", {x}, [](auto v) { return max_pool2d(v[0], 3, 1, 1); }, warmup, reps);
  op_case("avg_pool3x3", {x}, [](auto v) { return avg_pool2d(v[0], 3, 1, 1); }, warmup, reps);
  op_case("weighted_sum_8", {x, x, x, x, x, x, x, x, {8}}, [](auto v) {
    return weighted_sum<F32, Cuda>(v.subspan(0, 8), v[8]);
  }, warmup, reps);
  (void)g;
}

}  // namespace

int main(int argc, char** argv) try {
  int steps = 20, warmup = 3, layers = -1;  // -1: the size's own cell count
  std::string only;
  Sizes z;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--steps" && i + 1 < argc) steps = std::atoi(argv[++i]);
    else if (a == "--warmup" && i + 1 < argc) warmup = std::atoi(argv[++i]);
    else if (a == "--only" && i + 1 < argc) only = argv[++i];
    else if (a == "--smoke") z = Sizes::tiny();
    else if (a == "--layers" && i + 1 < argc) layers = std::atoi(argv[++i]);
    else {
      std::fprintf(stderr,
                   "usage: bench_gpu_step [--steps N] [--warmup N] [--only search|ops] [--smoke [--layers N]]\n");
      return 2;
    }
  }
  DATANAS_CHECK(steps >= 1 && warmup >= 0, "--steps must be >= 1 and --warmup >= 0");
  DATANAS_CHECK(layers == -1 || (z.smoke && layers >= 3), "--layers needs --smoke and at least 3 cells, got ",
                layers);
  if (layers != -1) z.layers = layers;
  cuda::require_device("bench_gpu_step");
  cudaDeviceProp prop{};
  DATANAS_CUDA_CHECK(cudaGetDeviceProperties(&prop, 0));
  std::printf("{\"device\": \"%s\"%s}\n", prop.name, z.smoke ? ", \"smoke\": true" : "");
  cuda::Stream stream;
  cuda::StreamGuard guard(stream);
  if (only.empty() || only == "search") {
    const auto d = synthetic_cifar(z.images, z.side);
    using search::Granularity;
    search_mode<estimators::Softmax, Granularity::kEdge>("softmax_edge_dense", false, false, d, z, warmup, steps);
    search_mode<estimators::EGS<4>, Granularity::kNode>("egs4_node_dense", false, false, d, z, warmup, steps);
    search_mode<estimators::EGS<4>, Granularity::kNode>("egs4_node_sparse", true, false, d, z, warmup, steps);
    search_mode<estimators::Softmax, Granularity::kEdge>("softmax_edge_dense", false, true, d, z, warmup, steps);
    search_mode<estimators::EGS<4>, Granularity::kNode>("egs4_node_dense", false, true, d, z, warmup, steps);
    // The same dense steps with the depthwise convolutions on our kernels (suffix "+own_dw").
    cuda::set_depthwise_conv(cuda::DepthwiseConv::kOwn);
    search_mode<estimators::Softmax, Granularity::kEdge>("softmax_edge_dense", false, false, d, z, warmup, steps);
    search_mode<estimators::EGS<4>, Granularity::kNode>("egs4_node_dense", false, false, d, z, warmup, steps);
    search_mode<estimators::EGS<4>, Granularity::kNode>("egs4_node_dense", false, true, d, z, warmup, steps);
    cuda::set_depthwise_conv(cuda::DepthwiseConv::kCudnn);
  }
  if (only.empty() || only == "ops") ops(z, warmup, steps);
  return 0;
} catch (const std::exception& e) {
  std::fprintf(stderr, "bench_gpu_step: error: %s\n", e.what());
  return 1;
}
