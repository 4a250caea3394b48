// What the whole-step GPU tests share (test_steps_gpu.cpp: CPU parity and step discipline;
// test_graph_gpu.cpp: CUDA graph replay; test_rnn_steps_gpu.cpp: the PTB loops): a tiny DARTS
// search space, a search configuration that moves alpha visibly within a few steps of
// tests/synthetic.hpp's data, a tiny evaluation network with its training configuration, and
// what an epoch asks of the device.
#pragma once

#include <cstdint>

#include "datanas/cuda.hpp"
#include "datanas/search/searcher.hpp"
#include "datanas/spaces/eval_network.hpp"
#include "datanas/train/trainer.hpp"

namespace datanas::gpu_test {

/// The DARTS op set, 2 nodes, 2 cells per stage, estimator E per node.
template <class E>
using SmallSpace = spaces::SearchSpace<spaces::DartsOps, 2, 2, E, search::Granularity::kNode>;

/// Batches of 16, lr 0.05, Adam 3e-3 on alpha, a 4-epoch schedule.
inline search::SearchConfig small_search() {
  search::SearchConfig cfg;
  cfg.epochs = 4;
  cfg.batch_size = 16;
  cfg.lr = 0.05;
  cfg.arch_lr = 3e-3;
  return cfg;
}

/// The evaluation network of the training tests (auxiliary head off: at 8x8 inputs cell 2L/3
/// outputs 2x2 maps, for which it is not defined).
inline const spaces::EvalNetworkConfig kSmallEval{
    .init_channels = 4, .layers = 3, .in_channels = 1, .image_size = 8, .num_classes = 3};

/// Batches of 16 with cutout 3, crop padding 1 and drop path 0.3 (0 in the first epoch).
inline train::TrainConfig small_training(long epochs) {
  train::TrainConfig tc;
  tc.epochs = epochs;
  tc.batch_size = 16;
  tc.cutout = 3;
  tc.crop_pad = 1;
  tc.drop_path = 0.3;
  return tc;
}

/// What an epoch asked of the device: the allocator's new cudaMalloc calls always; on the
/// simulator also every wait for the device and every device-to-host read (a GPU offers no such
/// count, so there those checks are skipped).
struct EpochDemand {
  std::uint64_t system_allocations = 0, bytes_in_use_change = 0;
#if DATANAS_CUDA_SIM
  cudasim::Counters sim;
#endif
};

template <class F>
EpochDemand demand_of(F&& epoch) {
  auto& alloc = CachingAllocator<Cuda>::instance();
  const auto before = alloc.stats();
#if DATANAS_CUDA_SIM
  cudasim::counters() = {};
#endif
  epoch();
  const auto after = alloc.stats();
  EpochDemand d;
  d.system_allocations = after.system_allocations - before.system_allocations;
  d.bytes_in_use_change = after.bytes_in_use - before.bytes_in_use;
#if DATANAS_CUDA_SIM
  d.sim = cudasim::counters();
#endif
  return d;
}

}  // namespace datanas::gpu_test
