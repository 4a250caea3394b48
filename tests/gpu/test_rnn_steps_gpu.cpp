// The PTB (recurrent) loops on the GPU against the CPU: a short search (EGS per node, dense and
// sparse, and DARTS' softmax) and a short training run (SGD, then averaged SGD after the
// non-monotone trigger, every dropout on) start from the same weights, alphas, token streams and
// generator states on both devices, so they must end in the same place up to rounding, sample
// the same architectures and derive the same genotype. The searches run in double for two
// epochs: this tiny search at lr 2 amplifies float rounding (different summation orders on the
// two devices) about a hundredfold per epoch, until a nearly tied Gumbel argmax flips and the
// runs part (seen on the CUDA simulator: 2e-5 after one epoch, then a flip), while in double
// they agree to 1e-11. Float runs one epoch, where its rounding is still far from a flip. A checkpoint written on the GPU
// restores on the CPU. Compiled into the steps_gpu binary (test_steps_gpu.cpp).
#include "parity.hpp"
#include "steps_common.hpp"

#include <cstdint>
#include <optional>
#include <vector>

#include "datanas/data/ptb.hpp"
#include "datanas/search/rnn_genotype.hpp"
#include "datanas/search/rnn_searcher.hpp"
#include "datanas/train/rnn_trainer.hpp"

using namespace datanas;
using gpu_test::rel_err;
using gpu_test::same_bits;

namespace {

constexpr index_t kVocab = 11;

/// A token stream with structure to learn: mostly next = (a * prev + 1) mod V, sometimes random.
std::vector<std::int32_t> token_stream(std::size_t n, std::uint64_t seed, int a = 3) {
  PhiloxGenerator g(seed);
  std::vector<std::int32_t> ids(n);
  std::int32_t prev = 0;
  for (auto& t : ids) {
    prev = g.uniform() < 0.8 ? std::int32_t((a * prev + 1) % kVocab) : std::int32_t(g.next_block().v[0] % kVocab);
    t = prev;
  }
  return ids;
}

spaces::rnn::RnnConfig tiny_model() {
  spaces::rnn::RnnConfig c;
  c.vocab = kVocab;
  c.emsize = c.nhid = 8;
  c.dropout = 0.3;
  c.dropouth = 0.2;
  c.dropoutx = 0.3;
  c.dropouti = 0.2;
  c.dropoute = 0.1;
  c.init_range = 0.3;
  // Every cell weight's gradient in groups of 3 products (GroupedMatmul, as at PTB's 850 units):
  // the grouped products inside eager and captured steps; plain products are matmul's (parity
  // tests of the op family).
  c.grouped_weight_bytes = 0;
  c.grouped_weight_rows = 12;
  return c;
}

/// The token streams of a run, batchified as the samples do (they must outlive the loops).
struct Streams {
  Tensor<std::int32_t> train, search, valid;
  /// valid_rule: the multiplier of the validation stream's rule (3: the training rule).
  Streams(index_t batch, index_t eval_batch, int valid_rule = 3)
      : train(data::batchify(token_stream(240, 1), batch)),
        search(data::batchify(token_stream(120, 2), batch)),
        valid(data::batchify(token_stream(80, 3, valid_rule), eval_batch)) {}
};

template <class E>
using RnnSpace = spaces::rnn::RecurrentSearchSpace<spaces::rnn::DartsRnnOps, 4, E, search::Granularity::kNode>;

template <class E, class D, class T = float>
struct RnnSearchRun {
  PhiloxGenerator init{21};
  spaces::rnn::RnnSupernet<T, RnnSpace<E>, D> net;
  search::RnnSearcher<T, D> searcher;
  RnnSearchRun(const Streams& s, const search::RnnSearchConfig& cfg)
      : net(tiny_model(), init, cfg.normalize), searcher(net, s.train, s.search, s.valid, cfg) {}
};

search::RnnSearchConfig small_rnn_search() {
  search::RnnSearchConfig cfg;
  cfg.epochs = 2;
  cfg.batch_size = 4;
  cfg.eval_batch_size = 2;
  cfg.bptt = 6;
  cfg.max_seq_len_delta = 4;
  cfg.lr = 2;
  cfg.arch_lr = 3e-2;
  return cfg;
}

/// Batches of 4, bptt 6, lr 10, and nonmono 0: the switch to averaged SGD comes after the first
/// SGD epoch that does not improve on the best.
train::RnnTrainConfig small_rnn_training(long epochs) {
  train::RnnTrainConfig tc;
  tc.epochs = epochs;
  tc.batch_size = 4;
  tc.eval_batch_size = 2;
  tc.bptt = 6;
  tc.max_seq_len_delta = 4;
  tc.lr = 10;
  tc.nonmono = 0;
  return tc;
}

bool agrees(double got, double want, double tol) { return std::abs(got - want) <= tol * std::max(1.0, std::abs(want)); }

/// Runs the same search on both devices, epoch by epoch, and compares everything it leaves.
template <class E, class T>
void check_rnn_search(search::RnnSearchConfig cfg, long epochs, double tol) {
  CAPTURE(cfg.sparse);
  CAPTURE(sizeof(T));
  cfg.epochs = epochs;
  const Streams s(cfg.batch_size, cfg.eval_batch_size);
  RnnSearchRun<E, Cpu, T> cpu(s, cfg);
  RnnSearchRun<E, Cuda, T> gpu(s, cfg);
  for (long e = 0; e < cfg.epochs; ++e) {
    CAPTURE(e);
    const auto sc = cpu.searcher.run_epoch();
    const auto sg = gpu.searcher.run_epoch();
    CHECK(sg.steps == sc.steps);
    CHECK(sg.tokens == sc.tokens);
    CHECK(agrees(sg.train_loss, sc.train_loss, tol));
    CHECK(agrees(sg.arch_loss, sc.arch_loss, tol));
    CHECK(agrees(sg.valid_loss, sc.valid_loss, tol));
    // Argmax of nearly tied logits may flip with rounding: at most one token in a hundred.
    CHECK(std::abs(sg.train_acc - sc.train_acc) <= 0.01);
  }
  CHECK(rel_err(gpu.net.alpha().value(), cpu.net.alpha().value()) <= tol);
  const auto wc = cpu.net.parameters();
  const auto wg = gpu.net.parameters();
  REQUIRE(wc.size() == wg.size());
  for (std::size_t i = 0; i < wc.size(); ++i) {
    CAPTURE(i);
    CHECK(rel_err(wg[i].value(), wc[i].value()) <= tol);
  }
  const auto ac = cpu.searcher.alpha_matrix();
  const auto ag = gpu.searcher.alpha_matrix();
  const auto ops = cpu.net.op_names();
  CHECK(search::to_text(search::derive_rnn_darts(ag, ops)) == search::to_text(search::derive_rnn_darts(ac, ops)));
  const int m = cpu.net.ensemble_size();
  CHECK(search::to_text(search::derive_rnn_data(ag, m, cfg.normalize, search::Granularity::kNode, ops)) ==
        search::to_text(search::derive_rnn_data(ac, m, cfg.normalize, search::Granularity::kNode, ops)));
}

/// One search epoch on the device; on the simulator, its reads of device values are exactly the
/// log's: per step the architecture loss, the training loss and the correct count, and one loss
/// per validation window. Sparse mode adds one host copy of the weights [E * K] per forward
/// (it decides there which terms run); a dense cell finds its all-none nodes on the device. Its
/// copies to the device are few too: per forward the window's ids and its targets (not one copy
/// per time step; embedding dropout's word scales are drawn and gathered on the device).
template <class E>
void check_rnn_search_reads(const search::RnnSearchConfig& cfg) {
  CAPTURE(cfg.sparse);
  const Streams s(cfg.batch_size, cfg.eval_batch_size);
  RnnSearchRun<E, Cuda> run(s, cfg);
  long steps = 0;
  const gpu_test::EpochDemand m = gpu_test::demand_of([&] { steps = run.searcher.run_epoch().steps; });
  REQUIRE(steps >= 2);
#if DATANAS_CUDA_SIM
  const auto windows = std::uint64_t((s.valid.dim(0) - 1 + cfg.bptt - 1) / cfg.bptt);
  const auto n = std::uint64_t(steps);
  const std::uint64_t weight_reads = cfg.sparse ? 2 * n + windows : 0;
  const auto weight_bytes = std::uint64_t(sizeof(float) * std::size_t(run.net.layout().edges() * run.net.layout().ops));
  CHECK(m.sim.reads == 3 * n + windows + weight_reads);
  CHECK(m.sim.host_waits == m.sim.reads);  // the host waits only to read
  REQUIRE(tiny_model().dropoute > 0);
  CHECK(m.sim.uploads == 2 * 2 * n + 2 * windows);
  if (cfg.sparse)
    CHECK(m.sim.largest_read == weight_bytes);
  else
    CHECK(m.sim.largest_read <= sizeof(std::int64_t));
#else
  (void)m;
#endif
}

/// Two epochs of eager steps and two with cfg.cuda_graph (each pair of window lengths runs once
/// eagerly and is captured; its later steps replay), each on its own stream: the same kernels on
/// the same values, so every epoch's losses, then alpha and every weight, agree bit for bit. The
/// graphs' shared pool holds about one eager step's temporaries.
template <class E>
void check_rnn_graph_search(search::RnnSearchConfig cfg) {
  const Streams s(cfg.batch_size, cfg.eval_batch_size);
  cuda::Stream eager_stream, graph_stream;
  std::optional<RnnSearchRun<E, Cuda>> eager, graph;
  cfg.cuda_graph = false;
  {
    const cuda::StreamGuard on(eager_stream);
    eager.emplace(s, cfg);
  }
  cfg.cuda_graph = true;
  {
    const cuda::StreamGuard on(graph_stream);
    graph.emplace(s, cfg);
  }
  long steps = 0;
  for (long e = 0; e < cfg.epochs; ++e) {
    CAPTURE(e);
    search::RnnSearchEpoch a, b;
    auto& alloc = CachingAllocator<Cuda>::instance();
    std::size_t eager_transient = 0, pool_peak = 0;
    {
      const cuda::StreamGuard on(eager_stream);
      alloc.reset_peak();
      const std::size_t before = alloc.stats().bytes_in_use;
      a = eager->searcher.run_epoch();
      eager_transient = alloc.stats().peak_bytes_in_use - before;
    }
    {
      const cuda::StreamGuard on(graph_stream);
      alloc.reset_peak();
      b = graph->searcher.run_epoch();
      pool_peak = alloc.stats().peak_graph_pool_bytes;
    }
    // The epoch's graphs (three or more here) share one pool: together they hold about what one
    // eager step allocates at its peak, not that once per graph (a pool each: 2.8x to 3.4x).
    CHECK(double(pool_peak) < 1.5 * double(eager_transient));
    MESSAGE("graph pool peak ", pool_peak, " B, eager peak ", eager_transient, " B");  // docs/benchmarks.md
    CHECK(b.steps == a.steps);
    CHECK(b.train_loss == a.train_loss);
    CHECK(b.train_acc == a.train_acc);
    CHECK(b.arch_loss == a.arch_loss);
    CHECK(b.valid_loss == a.valid_loss);
    steps += a.steps;
  }
  // Most steps replayed: each epoch runs only its first step of each length pair eagerly.
  CHECK(graph->searcher.replayed_steps() >= steps / 2);
  CHECK(graph->searcher.replayed_steps() < steps);
  CHECK(eager->searcher.replayed_steps() == 0);
  CHECK(same_bits(graph->net.alpha().value(), eager->net.alpha().value()));
  const auto wg = graph->net.parameters(), we = eager->net.parameters();
  REQUIRE(wg.size() == we.size());
  for (std::size_t i = 0; i < wg.size(); ++i) {
    CAPTURE(i);
    CHECK(same_bits(wg[i].value(), we[i].value()));
  }
}

}  // namespace

TEST_CASE("a PTB search replayed from CUDA graphs computes exactly what eager steps compute") {
  auto cfg = small_rnn_search();
  check_rnn_graph_search<estimators::Softmax>(cfg);
  cfg.tau = {5.0, 1.0};
  check_rnn_graph_search<estimators::EGS<2>>(cfg);
  // Refused where it cannot work, before any step.
  const Streams s(cfg.batch_size, cfg.eval_batch_size);
  cfg.cuda_graph = true;
  CHECK_THROWS_WITH_AS((RnnSearchRun<estimators::EGS<2>, Cpu>(s, cfg)), "search: --cuda-graph needs --device cuda",
                       error);
  cuda::Stream stream;
  const cuda::StreamGuard on(stream);
  cfg.sparse = true;
  CHECK_THROWS_WITH_AS((RnnSearchRun<estimators::EGS<2>, Cuda>(s, cfg)),
                       doctest::Contains("--cuda-graph needs a dense step"), error);
}

TEST_CASE("a PTB-style EGS search (per node) on the GPU samples the same codes as the CPU, dense and sparse") {
  auto cfg = small_rnn_search();
  cfg.tau = {5.0, 1.0};
  for (bool sparse : {false, true}) {
    cfg.sparse = sparse;
    check_rnn_search<estimators::EGS<2>, double>(cfg, 2, 1e-9);
    check_rnn_search<estimators::EGS<2>, float>(cfg, 1, 1e-3);
  }
}

TEST_CASE("a PTB-style DARTS (softmax) search on the GPU matches the CPU (no host copy of the weights)") {
  check_rnn_search<estimators::Softmax, double>(small_rnn_search(), 2, 1e-9);
  check_rnn_search<estimators::Softmax, float>(small_rnn_search(), 1, 1e-3);
}

TEST_CASE("a PTB search checkpoint written on the GPU restores on the CPU") {
  const auto cfg = small_rnn_search();
  const Streams s(cfg.batch_size, cfg.eval_batch_size);
  RnnSearchRun<estimators::EGS<2>, Cuda> gpu(s, cfg);
  gpu.searcher.run_epoch();
  io::Checkpoint ck("<memory>");
  gpu.searcher.save(ck);
  RnnSearchRun<estimators::EGS<2>, Cpu> cpu(s, cfg);
  cpu.searcher.restore(ck);
  CHECK(cpu.searcher.epoch() == 1);
  CHECK(rel_err(gpu.net.alpha().value(), cpu.net.alpha().value()) == 0.0);
  const auto wg = gpu.net.parameters();
  const auto wc = cpu.net.parameters();
  REQUIRE(wg.size() == wc.size());
  for (std::size_t i = 0; i < wg.size(); ++i) CHECK(rel_err(wg[i].value(), wc[i].value()) == 0.0);
  // Both continue alike: the generators and optimiser states came along.
  const auto sg = gpu.searcher.run_epoch();
  const auto sc = cpu.searcher.run_epoch();
  CHECK(sg.steps == sc.steps);
  CHECK(agrees(sg.train_loss, sc.train_loss, 1e-3));
  CHECK(agrees(sg.valid_loss, sc.valid_loss, 1e-3));
}

TEST_CASE("PTB-style training on the GPU matches the CPU through the switch to averaged SGD") {
  const train::RnnTrainConfig tc = small_rnn_training(6);
  // The validation stream follows another rule, so that learning the training rule soon makes
  // the validation loss rise: the trigger fires early and averaged SGD runs.
  const Streams s(tc.batch_size, tc.eval_batch_size, 5);
  PhiloxGenerator ic(31), ig(31);
  using spaces::rnn::DartsRnnOps;
  spaces::rnn::RnnEvalModel<float, DartsRnnOps, Cpu> cpu_model(tiny_model(), search::RNN_DARTS_V2, ic);
  spaces::rnn::RnnEvalModel<float, DartsRnnOps, Cuda> gpu_model(tiny_model(), search::RNN_DARTS_V2, ig);
  train::RnnTrainer<float, Cpu> tcpu(cpu_model, s.train, s.valid, tc);
  train::RnnTrainer<float, Cuda> tgpu(gpu_model, s.train, s.valid, tc);
  bool switched = false;
  for (long e = 0; e < tc.epochs; ++e) {
    CAPTURE(e);
    const auto sc = tcpu.run_epoch();
    const auto sg = tgpu.run_epoch();
    CHECK(sg.steps == sc.steps);
    CHECK(agrees(sg.train_loss, sc.train_loss, 1e-3));
    CHECK(agrees(sg.valid_loss, sc.valid_loss, 1e-3));
    CHECK(sg.averaged == sc.averaged);
    CHECK(sg.switched == sc.switched);
    CHECK(sg.best == sc.best);
    switched = switched || sc.switched;
  }
  CHECK(switched);  // the config was chosen so that ASGD runs (verified on the CPU)
  CHECK(tgpu.averaging() == tcpu.averaging());
  CHECK(tgpu.best_epoch() == tcpu.best_epoch());
  CHECK(agrees(tgpu.best_valid_loss(), tcpu.best_valid_loss(), 1e-3));
  const auto pc = cpu_model.parameters();
  const auto pg = gpu_model.parameters();
  REQUIRE(pc.size() == pg.size());
  for (std::size_t i = 0; i < pc.size(); ++i) {
    CAPTURE(i);
    CHECK(rel_err(pg[i].value(), pc[i].value()) <= 1e-3);
  }
  // The checkpoint (ASGD averages, best weights, history) restores on the CPU exactly.
  io::Checkpoint ck("<memory>");
  tgpu.save(ck);
  PhiloxGenerator ir(32);
  spaces::rnn::RnnEvalModel<float, DartsRnnOps, Cpu> restored(tiny_model(), search::RNN_DARTS_V2, ir);
  train::RnnTrainer<float, Cpu> tres(restored, s.train, s.valid, tc);
  tres.restore(ck);
  CHECK(tres.epoch() == tgpu.epoch());
  CHECK(tres.averaging() == tgpu.averaging());
  CHECK(tres.best_valid_loss() == tgpu.best_valid_loss());
  const auto pr = restored.parameters();
  for (std::size_t i = 0; i < pr.size(); ++i) CHECK(rel_err(pg[i].value(), pr[i].value()) == 0.0);
  // The best weights give the same perplexity on both devices.
  tcpu.load_best();
  tgpu.load_best();
  CHECK(agrees(tgpu.valid_loss(), tcpu.valid_loss(), 1e-3));
}

TEST_CASE("PTB training replayed from CUDA graphs computes exactly what eager epochs compute, through ASGD") {
  const train::RnnTrainConfig tc = small_rnn_training(6);
  const Streams s(tc.batch_size, tc.eval_batch_size, 5);  // the switch to ASGD comes early
  using Model = spaces::rnn::RnnEvalModel<float, spaces::rnn::DartsRnnOps, Cuda>;
  cuda::Stream eager_stream, graph_stream;
  PhiloxGenerator ie(31), ig(31);
  std::optional<Model> me, mg;
  std::optional<train::RnnTrainer<float, Cuda>> te, tg;
  {
    const cuda::StreamGuard on(eager_stream);
    me.emplace(tiny_model(), search::RNN_DARTS_V2, ie);
    te.emplace(*me, s.train, s.valid, tc);
  }
  {
    const cuda::StreamGuard on(graph_stream);
    train::RnnTrainConfig gc = tc;
    gc.cuda_graph = true;
    mg.emplace(tiny_model(), search::RNN_DARTS_V2, ig);
    tg.emplace(*mg, s.train, s.valid, gc);
  }
  auto& alloc = CachingAllocator<Cuda>::instance();
  long steps = 0;
  bool switched = false;
  for (long e = 0; e < tc.epochs; ++e) {
    CAPTURE(e);
    train::RnnTrainEpoch a, b;
    std::size_t eager_transient = 0, pool_peak = 0;
    {
      const cuda::StreamGuard on(eager_stream);
      alloc.reset_peak();
      const std::size_t before = alloc.stats().bytes_in_use;
      a = te->run_epoch();
      eager_transient = alloc.stats().peak_bytes_in_use - before;
    }
    {
      const cuda::StreamGuard on(graph_stream);
      alloc.reset_peak();
      b = tg->run_epoch();
      pool_peak = alloc.stats().peak_graph_pool_bytes;
    }
    CHECK(b.steps == a.steps);
    CHECK(b.train_loss == a.train_loss);
    CHECK(b.train_acc == a.train_acc);
    CHECK(b.valid_loss == a.valid_loss);
    CHECK(b.averaged == a.averaged);
    CHECK(b.switched == a.switched);
    CHECK(b.best == a.best);
    // One pool for the epoch's graphs (one per window length): about one eager epoch's peak.
    CHECK(double(pool_peak) < 1.5 * double(eager_transient));
    MESSAGE("graph pool peak ", pool_peak, " B, eager peak ", eager_transient, " B");  // docs/benchmarks.md
    steps += a.steps;
    switched = switched || a.switched;
  }
  CHECK(switched);  // epochs under averaged SGD were replayed too
  CHECK(tg->replayed_steps() >= steps / 3);
  CHECK(tg->replayed_steps() < steps);
  CHECK(te->replayed_steps() == 0);
  CHECK(tg->best_valid_loss() == te->best_valid_loss());
  const auto pe = me->parameters(), pg = mg->parameters();
  REQUIRE(pe.size() == pg.size());
  for (std::size_t i = 0; i < pe.size(); ++i) {
    CAPTURE(i);
    CHECK(same_bits(pg[i].value(), pe[i].value()));
  }
  // Refused where it cannot work, before any step.
  PhiloxGenerator ic(31);
  spaces::rnn::RnnEvalModel<float, spaces::rnn::DartsRnnOps, Cpu> cpu_model(tiny_model(), search::RNN_DARTS_V2, ic);
  train::RnnTrainConfig gc = tc;
  gc.cuda_graph = true;
  CHECK_THROWS_WITH_AS(train::RnnTrainer<float>(cpu_model, s.train, s.valid, gc),
                       "train: --cuda-graph needs --device cuda", error);
}

TEST_CASE("a PTB search epoch on the GPU waits only to read its log; dense cells never read their weights") {
  auto cfg = small_rnn_search();
  cfg.tau = {5.0, 1.0};
  check_rnn_search_reads<estimators::Softmax>(cfg);
  check_rnn_search_reads<estimators::EGS<2>>(cfg);
  check_rnn_search_reads<estimators::SoftGumbel>(cfg);
  cfg.sparse = true;  // plus the host copy of each forward's weights
  check_rnn_search_reads<estimators::EGS<2>>(cfg);
}

TEST_CASE("a PTB training epoch on the GPU waits only to read its log, with SGD and averaged SGD") {
  const train::RnnTrainConfig tc = small_rnn_training(4);
  const Streams s(tc.batch_size, tc.eval_batch_size, 5);
  PhiloxGenerator init(31);
  spaces::rnn::RnnEvalModel<float, spaces::rnn::DartsRnnOps, Cuda> model(tiny_model(), search::RNN_DARTS_V2, init);
  train::RnnTrainer<float, Cuda> trainer(model, s.train, s.valid, tc);
  bool averaged = false;
  for (long e = 0; e < tc.epochs; ++e) {
    CAPTURE(e);
    train::RnnTrainEpoch st;
    const gpu_test::EpochDemand m = gpu_test::demand_of([&] { st = trainer.run_epoch(); });
    averaged = averaged || st.averaged;
    REQUIRE(st.steps >= 2);
#if DATANAS_CUDA_SIM
    // Per step the loss and the correct count, per validation window its loss; uploads: per
    // training forward, and per validation window, the ids and the targets.
    const auto windows = std::uint64_t((s.valid.dim(0) - 1 + tc.bptt - 1) / tc.bptt);
    const auto n = std::uint64_t(st.steps);
    CHECK(m.sim.reads == 2 * n + windows);
    CHECK(m.sim.host_waits == m.sim.reads);
    CHECK(m.sim.uploads == 2 * n + 2 * windows);
    CHECK(m.sim.largest_read <= sizeof(std::int64_t));
#else
    (void)m;
#endif
  }
  CHECK(averaged);
}
