// The host side of the device path makes no heap allocation in a steady-state step, as the CPU
// path makes none (tests/test_allocation.cpp): the searcher's step (DARTS first and second
// order, EGS dense with the L1 term, SNAS, a replayed CUDA graph; EGS sparse only for the caching
// allocator's records of the blocks it creates or cuts), the evaluation network's training step
// with augmentation, drop path and clipping, and the PTB model's weight step. Every
// malloc-family call of the process is counted (../malloc_counter.hpp).
//
// On the CUDA simulator its own allocations (kernels run on the host, queued work is held in
// std::function) are left out (cudasim::in_simulator), so the count is the library's alone and
// is checked. On a GPU the CUDA runtime, cuBLAS and cuDNN may allocate behind their API calls
// and cannot be told apart: the count is reported there, not checked. Compiled into the
// steps_gpu binary (test_steps_gpu.cpp).
#include "../malloc_counter.hpp"

#include <numeric>
#include <vector>

#include "../synthetic.hpp"
#include "../synthetic_ptb.hpp"
#include "datanas/data/augment.hpp"
#include "datanas/train/language_model.hpp"
#include "parity.hpp"
#include "steps_common.hpp"

using namespace datanas;
using testing::MallocCount;

namespace {

#if DATANAS_CUDA_SIM
bool simulator_work() { return cudasim::in_simulator(); }
#else
bool (*const simulator_work)() = nullptr;
#endif

/// The heap allocations of `steps` calls of `step` (after the caller's warm-up), less the
/// simulator's.
template <class F>
long host_allocations(F&& step, int steps) {
  MallocCount allocs(simulator_work);
  for (int i = 0; i < steps; ++i) step();
  return allocs.stop();
}

/// Zero on the simulator; on a GPU, reported (see the file comment).
void check_none(long n) {
#if DATANAS_CUDA_SIM
  CHECK(n == 0);
#else
  if (n != 0) MESSAGE(n << " host allocations: the library's, or the CUDA runtime's, cuBLAS's or cuDNN's");
#endif
}

template <class E>
void check_search_step(const search::SearchConfig& cfg) {
  CAPTURE(cfg.order);
  CAPTURE(cfg.sparse);
  CAPTURE(cfg.single_level);
  CAPTURE(cfg.cuda_graph);
  cuda::Stream stream;  // a graph captures a stream of ours, not the legacy one
  const cuda::StreamGuard on_stream(stream);
  const auto d = testing::synthetic_thirds(96, 3);
  PhiloxGenerator init(5);
  spaces::Supernet<float, gpu_test::SmallSpace<E>, Cuda> net(
      {.init_channels = 4, .layers = 3, .in_channels = 1, .num_classes = 3}, init);
  search::Searcher<float, Cuda> s(net, d, data::ChannelNorm{testing::kThirdsMean, testing::kThirdsStd}, cfg);
  s.set_estimator_config({cfg.tau.start, search::Normalize::kSoftmax});
  std::vector<index_t> wrows(std::size_t(cfg.batch_size)), arows(std::size_t(cfg.batch_size));
  std::iota(wrows.begin(), wrows.end(), index_t(0));
  std::iota(arows.begin(), arows.end(), index_t(48));
  const auto step = [&] {
    s.load_batches(wrows, arows);
    s.search_step(cfg.lr);
  };
  for (int i = 0; i < 4; ++i) step();  // plans, optimiser state, gradients, the graph
  auto& alloc = CachingAllocator<Cuda>::instance();
  const auto before = alloc.stats();
  const long n = host_allocations(step, 3);
  const auto new_blocks = long(alloc.stats().system_allocations - before.system_allocations);
  const auto bookkeeping = long(alloc.stats().bookkeeping_allocations - before.bookkeeping_allocations);
  if (!cfg.sparse) {
    CHECK(new_blocks == 0);
    CHECK(bookkeeping == 0);
    check_none(n);
    return;
  }
  // A sparse step samples other ops each time, so its tensors' sizes vary: exact-size free lists
  // may lack a block (a gradient the first time an op is sampled, an intermediate), and small
  // segments may be cut into more pieces than ever before. The allocator's records of that
  // (block headers, 64 at a time; free-list and index nodes) are the only host allocations
  // allowed.
  MESSAGE(n << " host allocations, " << bookkeeping << " of them the allocator's records, for " << new_blocks
            << " new device blocks");
#if DATANAS_CUDA_SIM
  CHECK(n == bookkeeping);
#endif
}

}  // namespace

TEST_CASE("a search step on the GPU makes no host heap allocation after the first" *
          doctest::skip(!testing::kMallocCounting)) {
  auto cfg = gpu_test::small_search();
  check_search_step<estimators::Softmax>(cfg);
  cfg.order = 2;
  check_search_step<estimators::Softmax>(cfg);
  cfg.order = 1;
  cfg.tau = {5.0, 1.0};
  cfg.l1 = 0.1;
  check_search_step<estimators::EGS<4>>(cfg);
  cfg.cuda_graph = true;  // replays
  check_search_step<estimators::EGS<4>>(cfg);
  cfg.cuda_graph = false;
  cfg.sparse = true;
  check_search_step<estimators::EGS<4>>(cfg);
  {
    const gpu_test::SmallSegments on;  // the library's default
    check_search_step<estimators::EGS<4>>(cfg);
  }
  cfg.sparse = false;
  cfg.l1 = 0;
  cfg.single_level = true;
  check_search_step<estimators::SoftGumbel>(cfg);
}

TEST_CASE("a training step of the evaluation network on the GPU makes no host heap allocation after the first" *
          doctest::skip(!testing::kMallocCounting)) {
  // Augmentation on the host into a preallocated batch, its upload, drop path, clipping, SGD
  // with momentum, and the loss read for the log.
  PhiloxGenerator init(3), aug(4), drop(5);
  spaces::EvalNetwork<float, spaces::DartsOps, Cuda> net(search::load_genotype("DATA_M7"), gpu_test::kSmallEval,
                                                         init);
  net.set_drop_path_prob(0.2);
  auto params = net.parameters();
  optim::SGD<float, Cuda> sgd(params, 0.05, 0.9, 3e-4);
  const auto src = testing::synthetic_thirds(8, 6);
  const index_t rows[] = {3, 1, 4, 7};
  auto x = Tensor<float>::empty({4, 1, 8, 8});
  auto y = Tensor<std::int32_t>::empty({4});
  const Tensor<float, Cuda> xd = Tensor<float, Cuda>::empty(x.shape());
  const Tensor<std::int32_t, Cuda> yd = Tensor<std::int32_t, Cuda>::empty(y.shape());
  float loss_sum = 0;
  const auto step = [&] {
    data::random_crop_flip<float>(src, rows, 1, {testing::kThirdsMean, testing::kThirdsStd}, aug, x, y);
    data::cutout(x, 3, aug);
    cuda::copy_from_host(xd, x);
    cuda::copy_from_host(yd, y);
    const Var<float, Cuda> loss = cross_entropy(net.forward(Var<float, Cuda>(xd), drop).logits, yd);
    sgd.zero_grad();
    backward(loss);
    optim::clip_grad_norm<float, Cuda>(params, 5.0);
    sgd.step();
    loss_sum += cuda::to_host(loss.value())[0];
  };
  step();
  step();
  check_none(host_allocations(step, 3));
}

TEST_CASE("a PTB weight step on the GPU makes no host heap allocation after the first" *
          doctest::skip(!testing::kMallocCounting)) {
  // The search cell (EGS per node, dense: the all-none decision on the device) on windows of
  // the same length, every dropout on, the temporal penalty, clipping, SGD; the cell weights'
  // gradients per time step, then in groups of 3 products (GroupedMatmul).
  for (bool grouped : {false, true}) {
    CAPTURE(grouped);
    spaces::rnn::RnnConfig c = testing::tiny_rnn_config();
    if (grouped) c.grouped_weight_bytes = 0, c.grouped_weight_rows = 12;
    const std::vector<data::Window> windows = testing::tiny_windows();
    using Space =
        spaces::rnn::RecurrentSearchSpace<spaces::rnn::DartsRnnOps, 4, estimators::EGS<2>>;
    PhiloxGenerator init(31), noise(3), dropout(4);
    spaces::rnn::RnnSupernet<float, Space, Cuda> net(c, init);
    auto params = net.parameters();
    optim::SGD<float, Cuda> sgd(params, 1.0, 0.0, 5e-7);
    Tensor<float, Cuda> hidden = net.init_hidden(4);
    const estimators::EstimatorConfig ec{1.0, search::Normalize::kSoftmax};
    std::size_t next = 0;
    const auto step = [&] {
      const data::Window& w = windows[next++];
      (void)train::weight_step<float>(
          w, hidden,
          [&](const Tensor<std::int32_t>& in, const Tensor<float, Cuda>& h) {
            return net.forward_sampled(in, h, ec, noise, dropout, false);
          },
          params, sgd, 0.25, 1e-3, 1, long(next));
    };
    for (int i = 0; i < 3; ++i) step();
    check_none(host_allocations(step, 3));
  }
}

TEST_CASE("the simulator's allocations are left out, the library's are counted" *
          doctest::skip(!testing::kMallocCounting)) {
  const Tensor<float, Cuda> t = Tensor<float, Cuda>::empty({1000});
  const long n = host_allocations(
      [&] {
        t.fill(1.0f);                           // a kernel launch
        void* volatile p = std::malloc(1000);  // volatile: GCC may elide a malloc/free pair
        std::free(p);
      },
      2);
#if DATANAS_CUDA_SIM
  CHECK(n == 2);
#else
  CHECK(n >= 2);  // the CUDA runtime may add its own
#endif
}
