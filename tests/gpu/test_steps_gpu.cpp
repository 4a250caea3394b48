// Whole steps on the GPU against the CPU: the search step (first and second order, dense and
// sparse EGS, SNAS single level) and the evaluation network's training step start from the same
// weights, alphas, data and generator states on both devices, so they must end in the same
// place up to float rounding, sample the same architectures, and derive the same genotype.
#include "parity.hpp"
#include "steps_common.hpp"
#include "../synthetic.hpp"

#include "datanas/search/searcher.hpp"
#include "datanas/spaces/eval_network.hpp"
#include "datanas/train/trainer.hpp"

using namespace datanas;
using gpu_test::rel_err;

namespace {

data::LabelledImages synthetic(index_t n, std::uint64_t seed) { return testing::synthetic_thirds(n, seed); }
const auto& kMean = testing::kThirdsMean;
const auto& kStd = testing::kThirdsStd;

template <class E>
using Space = gpu_test::SmallSpace<E>;
using gpu_test::kSmallEval;
using gpu_test::small_search;
using gpu_test::small_training;

template <class E, class D>
struct SearchRun {
  PhiloxGenerator init{5};
  spaces::Supernet<float, Space<E>, D> net;
  search::Searcher<float, D> searcher;
  SearchRun(const data::LabelledImages& d, const search::SearchConfig& cfg)
      : net({.init_channels = 4, .layers = 3, .in_channels = 1, .num_classes = 3}, init),
        searcher(net, d, data::ChannelNorm{kMean, kStd}, cfg) {}
};

/// Runs one epoch of the same search on both devices and compares everything it leaves behind.
template <class E>
void check_search(const search::SearchConfig& cfg, double tol) {
  const auto d = synthetic(96, 3);
  SearchRun<E, Cpu> cpu(d, cfg);
  SearchRun<E, Cuda> gpu(d, cfg);
  const auto sc = cpu.searcher.run_epoch();
  const auto sg = gpu.searcher.run_epoch();
  CHECK(sg.steps == sc.steps);
  CHECK(std::abs(sg.train_loss - sc.train_loss) <= tol * std::max(1.0, std::abs(sc.train_loss)));
  CHECK(std::abs(sg.arch_loss - sc.arch_loss) <= tol * std::max(1.0, std::abs(sc.arch_loss)));
  CHECK(sg.train_acc == sc.train_acc);
  CHECK(rel_err(gpu.net.alpha_normal().value(), cpu.net.alpha_normal().value()) <= tol);
  CHECK(rel_err(gpu.net.alpha_reduce().value(), cpu.net.alpha_reduce().value()) <= tol);
  const auto wc = cpu.net.weights();
  const auto wg = gpu.net.weights();
  REQUIRE(wc.size() == wg.size());
  for (std::size_t i = 0; i < wc.size(); ++i) {
    CAPTURE(i);
    CHECK(rel_err(wg[i].value(), wc[i].value()) <= tol);
  }
  const std::span<const std::string_view> ops(spaces::DartsOps::kNames);
  search::DeriveOptions rule;
  rule.rule = search::DeriveRule::kDarts;
  const search::Genotype gc = search::derive(cpu.searcher.alpha_pair(), ops, rule);
  const search::Genotype gg = search::derive(gpu.searcher.alpha_pair(), ops, rule);
  CHECK(search::to_text(gg) == search::to_text(gc));
}

}  // namespace

TEST_CASE("a DARTS (softmax) search epoch on the GPU matches the CPU, first and second order") {
  auto cfg = small_search();
  check_search<estimators::Softmax>(cfg, 1e-3);
  cfg.order = 2;
  check_search<estimators::Softmax>(cfg, 1e-3);
}

TEST_CASE("an EGS search epoch on the GPU samples the same codes as the CPU, dense and sparse") {
  auto cfg = small_search();
  cfg.tau = {5.0, 1.0};
  check_search<estimators::EGS<4>>(cfg, 1e-3);
  cfg.sparse = true;
  cfg.l1 = 0.1;
  check_search<estimators::EGS<4>>(cfg, 1e-3);
  const gpu_test::SmallSegments on;  // the library's default: small blocks cut from segments
  check_search<estimators::EGS<4>>(cfg, 1e-3);
}

TEST_CASE("SNAS (single level) and GDAS search epochs on the GPU match the CPU") {
  auto cfg = small_search();
  cfg.single_level = true;
  cfg.tau = {1.0, 0.03};
  check_search<estimators::SoftGumbel>(cfg, 1e-3);
  cfg.single_level = false;
  cfg.tau = {10.0, 0.1};
  cfg.sparse = true;
  check_search<estimators::HardGumbel>(cfg, 1e-3);
}

TEST_CASE("a training epoch of the evaluation network on the GPU matches the CPU") {
  const auto d = synthetic(64, 4);
  const search::Genotype g = search::load_genotype("DATA_M7");
  PhiloxGenerator ic(9), ig(9);
  spaces::EvalNetwork<float, spaces::DartsOps, Cpu> cpu_net(g, kSmallEval, ic);
  spaces::EvalNetwork<float, spaces::DartsOps, Cuda> gpu_net(g, kSmallEval, ig);
  const train::TrainConfig tc = small_training(2);
  const data::ChannelNorm norm{kMean, kStd};
  train::Trainer<float, Cpu> tcpu(cpu_net, d, norm, tc);
  train::Trainer<float, Cuda> tgpu(gpu_net, d, norm, tc);
  for (int e = 0; e < 2; ++e) {  // epoch 2 has drop path on
    const auto sc = tcpu.run_epoch();
    const auto sg = tgpu.run_epoch();
    CHECK(std::abs(sg.loss - sc.loss) <= 1e-3 * std::max(1.0, std::abs(sc.loss)));
  }
  const auto pc = cpu_net.parameters();
  const auto pg = gpu_net.parameters();
  REQUIRE(pc.size() == pg.size());
  for (std::size_t i = 0; i < pc.size(); ++i) {
    CAPTURE(i);
    CHECK(rel_err(pg[i].value(), pc[i].value()) <= 1e-3);
  }
  const auto ec = train::evaluate(cpu_net, d, norm, 10, 3);
  const auto eg = train::evaluate(gpu_net, d, norm, 10, 3);
  CHECK(eg.confusion == ec.confusion);
  CHECK(std::abs(eg.loss - ec.loss) <= 1e-3 * std::max(1.0, ec.loss));
}

TEST_CASE("a search checkpoint written on the GPU restores on the CPU and back") {
  const auto d = synthetic(96, 5);
  auto cfg = small_search();
  SearchRun<estimators::EGS<2>, Cuda> gpu(d, cfg);
  gpu.searcher.run_epoch();
  io::Checkpoint ck("<memory>");
  gpu.searcher.save(ck);
  SearchRun<estimators::EGS<2>, Cpu> cpu(d, cfg);
  cpu.searcher.restore(ck);
  CHECK(cpu.searcher.epoch() == 1);
  CHECK(rel_err(gpu.net.alpha_normal().value(), cpu.net.alpha_normal().value()) == 0.0);
  SearchRun<estimators::EGS<2>, Cuda> back(d, cfg);
  io::Checkpoint ck2("<memory>");
  cpu.searcher.save(ck2);
  back.searcher.restore(ck2);
  const auto wa = back.net.weights();
  const auto wb = gpu.net.weights();
  for (std::size_t i = 0; i < wa.size(); ++i) CHECK(rel_err(wa[i].value(), cuda::to_host(wb[i].value())) == 0.0);
}

// ---- a step's discipline on the device (issue 5: "no host synchronisation inside a training step
// except where a value is logged"; the caching allocator serves every step after the first) -------

namespace {

using gpu_test::demand_of;
using gpu_test::EpochDemand;

/// One epoch to warm up (cuDNN plans, optimiser state, the allocator's cache), then one measured:
/// no allocation, and, where it can be counted, `reads_per_step` scalar reads per step (the
/// logged losses and correct counts) as the only waits, plus, in sparse mode, each forward's
/// host copy of both cell types' sampled weights [E * K] (it decides which ops run).
template <class E>
void check_search_demand(const search::SearchConfig& cfg, std::uint64_t reads_per_step) {
  CAPTURE(cfg.order);
  CAPTURE(cfg.sparse);
  CAPTURE(cfg.single_level);
  const auto d = synthetic(96, 3);
  SearchRun<E, Cuda> run(d, cfg);
  run.searcher.run_epoch();
  // Sparse steps give a weight its gradient and its SGD momentum buffer the first time its op is
  // sampled: what the measured epoch may add to the memory in use (in the allocator's 256-byte
  // blocks), and the only blocks it may have to ask the system for (whether a free block of the
  // size is cached depends on what else the warm-up freed). Nothing else may stay behind.
  const auto weights = run.net.weights();
  std::vector<bool> had_grad;
  for (const auto& w : weights) had_grad.push_back(w.out_grad().defined());
  long steps = 0;
  const EpochDemand m = demand_of([&] { steps = run.searcher.run_epoch().steps; });
  std::uint64_t new_grad_bytes = 0, new_grads = 0;
  for (std::size_t i = 0; i < weights.size(); ++i) {
    if (had_grad[i] || !weights[i].out_grad().defined()) continue;
    new_grad_bytes += (sizeof(float) * std::uint64_t(weights[i].value().numel()) + 255) / 256 * 256;
    ++new_grads;
  }
  if (!cfg.sparse) CHECK(new_grad_bytes == 0);
  REQUIRE(steps >= 2);
  CHECK(m.system_allocations <= 2 * new_grads);
  CHECK(m.bytes_in_use_change == 2 * new_grad_bytes);
#if DATANAS_CUDA_SIM
  const std::uint64_t forwards = cfg.single_level ? 1 : 2;  // architecture and weight steps
  const std::uint64_t weight_reads = cfg.sparse ? 2 * forwards : 0;
  const std::uint64_t weight_bytes = sizeof(float) * std::uint64_t(run.net.layout().edges() * run.net.layout().ops);
  CHECK(m.sim.mallocs == m.system_allocations);  // only the allocator calls cudaMalloc
  CHECK(m.sim.reads == std::uint64_t(steps) * (reads_per_step + weight_reads));
  CHECK(m.sim.host_waits == m.sim.reads);  // the host waits only to read
  CHECK(m.sim.read_bytes <= std::uint64_t(steps) * (reads_per_step * sizeof(std::int64_t) + weight_reads * weight_bytes));
  CHECK(m.sim.largest_read == (cfg.sparse ? weight_bytes : sizeof(float)));
#else
  (void)reads_per_step;
#endif
}

}  // namespace

TEST_CASE("a search epoch on the GPU allocates only for newly sampled ops after the first, and waits only to read its log") {
  auto cfg = small_search();
  // First order: architecture (loss, correct count), weights (loss, correct count).
  check_search_demand<estimators::Softmax>(cfg, 4);
  // Second order also checks the unrolled and the two finite-difference training losses.
  cfg.order = 2;
  check_search_demand<estimators::Softmax>(cfg, 7);
  cfg.order = 1;
  cfg.tau = {5.0, 1.0};
  cfg.l1 = 0.1;
  check_search_demand<estimators::EGS<4>>(cfg, 4);
  cfg.sparse = true;  // plus the host copies of the sampled weights
  check_search_demand<estimators::EGS<4>>(cfg, 4);
  cfg.sparse = false;
  cfg.l1 = 0;
  cfg.single_level = true;  // SNAS: one update per step, reported once
  check_search_demand<estimators::SoftGumbel>(cfg, 2);
}

TEST_CASE("sparse search epochs on small segments stop calling cudaMalloc; exact sizes keep calling it") {
  // A sparse step runs other ops, and so makes other temporaries, at every step. Exact-size
  // blocks need a block of every size a step ever held; segments only as much memory as a step
  // holds at once.
  const auto d = synthetic(96, 3);
  auto cfg = small_search();
  cfg.tau = {5.0, 1.0};
  cfg.l1 = 0.1;
  cfg.sparse = true;
  const auto epochs = [&](bool segments) {
    cuda::Stream stream;  // a pool of its own: nothing other tests cached helps
    const cuda::StreamGuard on(stream);
    const gpu_test::SmallSegments mode(segments);
    SearchRun<estimators::EGS<4>, Cuda> run(d, cfg);
    std::vector<std::uint64_t> misses;
    for (int e = 0; e < 4; ++e)
      misses.push_back(demand_of([&] { run.searcher.run_epoch(); }).system_allocations);
    return misses;
  };
  const auto exact = epochs(false);
  const auto carved = epochs(true);
  std::uint64_t exact_later = 0, carved_later = 0;
  for (std::size_t e = 1; e < exact.size(); ++e) {
    exact_later += exact[e];
    carved_later += carved[e];
  }
  CHECK(exact_later > 0);
#if DATANAS_CUDA_SIM
  CHECK(carved_later == 0);  // every tensor here is small
#else
  // On a GPU, the cuDNN workspaces of algorithms chosen for shapes an epoch meets first may be
  // large blocks (1 MiB and up), new in either mode.
  CHECK(carved_later < exact_later);
#endif
  MESSAGE("cudaMalloc calls per epoch, exact sizes: ", exact[0], " ", exact[1], " ", exact[2], " ",
          exact[3], "; small segments: ", carved[0], " ", carved[1], " ", carved[2], " ", carved[3]);
}

TEST_CASE("a training epoch on the GPU allocates nothing after the first and waits only to read its log") {
  const auto d = synthetic(64, 4);
  PhiloxGenerator init(9);
  spaces::EvalNetwork<float, spaces::DartsOps, Cuda> net(search::load_genotype("DATA_M7"), kSmallEval, init);
  train::Trainer<float, Cuda> trainer(net, d, data::ChannelNorm{kMean, kStd}, small_training(3));
  trainer.run_epoch();  // drop path is off in epoch 1; the measured epoch 2 has it on
  long steps = 0;
  const EpochDemand m = demand_of([&] { steps = trainer.run_epoch().steps; });
  REQUIRE(steps >= 2);
  CHECK(m.system_allocations == 0);
  CHECK(m.bytes_in_use_change == 0);
#if DATANAS_CUDA_SIM
  CHECK(m.sim.mallocs == 0);
  CHECK(m.sim.reads == std::uint64_t(steps) * 2);  // the loss and the correct count
  CHECK(m.sim.host_waits == m.sim.reads);
  CHECK(m.sim.largest_read <= sizeof(std::int64_t));
#endif
}
