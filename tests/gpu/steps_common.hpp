// What the whole-step GPU tests share (test_steps_gpu.cpp: CPU parity; test_graph_gpu.cpp: CUDA
// graph replay): a tiny DARTS search space and a search configuration that moves alpha visibly
// within a few steps of tests/synthetic.hpp's data.
#pragma once

#include "datanas/search/searcher.hpp"

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

}  // namespace datanas::gpu_test
