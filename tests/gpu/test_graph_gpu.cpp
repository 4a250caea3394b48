// CUDA graph capture (StepGraph<Cuda>): a captured step replays exactly what the same eager steps
// compute: the same Gumbel noise (the Philox base of every estimator launch is reserved before
// each replay), the same Adam bias corrections (t advances before each replay), the same memory
// discipline (the graph's blocks are never handed to eager work while it lives; graphs sharing a
// GraphPool reuse each other's temporaries); and what cannot be captured (host reads, host copies)
// is refused with the reason.
#include <functional>
#include <optional>

#include "parity.hpp"
#include "steps_common.hpp"
#include "../synthetic.hpp"

#include "datanas/estimators/estimators.hpp"
#include "datanas/ops/dropout.hpp"
#include "datanas/ops/recurrent.hpp"
#include "datanas/optim/asgd.hpp"
#include "datanas/optim/optimizers.hpp"
#include "datanas/search/searcher.hpp"
#include "datanas/spaces/eval_network.hpp"
#include "datanas/train/trainer.hpp"

using namespace datanas;
using gpu_test::rel_err;
using gpu_test::same_bits;

namespace {

/// Every parameter of the graph run equals the eager run's, bit for bit.
void check_same_values(const std::vector<Var<float, Cuda>>& graph, const std::vector<Var<float, Cuda>>& eager) {
  REQUIRE(graph.size() == eager.size());
  for (std::size_t i = 0; i < graph.size(); ++i) {
    CAPTURE(i);
    CHECK(same_bits(graph[i].value(), eager[i].value()));
  }
}

Tensor<float, Cuda> random_device(const Shape& s, std::uint64_t seed) {
  PhiloxGenerator g(seed);
  Tensor<float> h = Tensor<float>::empty(s);
  for (index_t i = 0; i < h.numel(); ++i) h[i] = float(g.normal());
  return cuda::to_device(h);
}

template <class E>
using Space = gpu_test::SmallSpace<E>;
using gpu_test::small_search;

template <class E>
struct GraphRun {
  cuda::Stream stream;  // capture needs a real stream; each run has its own
  PhiloxGenerator init{5};
  std::optional<spaces::Supernet<float, Space<E>, Cuda>> net;
  std::optional<search::Searcher<float, Cuda>> searcher;
  GraphRun(const data::LabelledImages& d, const search::SearchConfig& cfg) {
    cuda::StreamGuard on(stream);
    net.emplace(spaces::SupernetConfig{.init_channels = 4, .layers = 3, .in_channels = 1, .num_classes = 3}, init);
    searcher.emplace(*net, d, data::ChannelNorm{testing::kThirdsMean, testing::kThirdsStd}, cfg);
  }
  search::EpochStats epoch() {
    cuda::StreamGuard on(stream);
    return searcher->run_epoch();
  }
};

/// Two epochs eagerly and two with every step after each epoch's first replayed from a graph:
/// everything must agree bit for bit (the same kernels on the same inputs), including the second
/// epoch, whose noise and Adam state continue from the replays' host-side bookkeeping.
template <class E>
void check_graph_search(search::SearchConfig cfg) {
  const auto d = testing::synthetic_thirds(96, 3);
  cfg.cuda_graph = false;
  GraphRun<E> eager(d, cfg);
  cfg.cuda_graph = true;
  GraphRun<E> graph(d, cfg);
  for (int e = 0; e < 2; ++e) {
    CAPTURE(e);
    const auto se = eager.epoch();
    const auto sg = graph.epoch();
    REQUIRE(se.steps >= 3);  // an eager step, a capture, and replays
    CHECK(sg.train_loss == se.train_loss);
    CHECK(sg.arch_loss == se.arch_loss);
    CHECK(sg.train_acc == se.train_acc);
    CHECK(sg.arch_acc == se.arch_acc);
  }
  cuda::StreamGuard on(graph.stream);
  CHECK(same_bits(graph.net->alpha_normal().value(), eager.net->alpha_normal().value()));
  CHECK(same_bits(graph.net->alpha_reduce().value(), eager.net->alpha_reduce().value()));
  check_same_values(graph.net->weights(), eager.net->weights());
  // The generators and optimiser counters the replays advanced on the host: identical checkpoints.
  io::Checkpoint ce("<memory>"), cg("<memory>");
  eager.searcher->save(ce);
  graph.searcher->save(cg);
  for (const char* key : {"gen.noise", "gen.data", "gen.aug"})
    for (const char* part : {".seed", ".offset"}) {
      CAPTURE(key);
      CHECK(cg.get_int(std::string(key) + part) == ce.get_int(std::string(key) + part));
    }
}

}  // namespace

TEST_CASE("captured DARTS search steps replay the eager ones bit for bit, first and second order") {
  auto cfg = small_search();
  check_graph_search<estimators::Softmax>(cfg);
  cfg.order = 2;
  check_graph_search<estimators::Softmax>(cfg);
}

TEST_CASE("captured EGS and GDAS dense steps draw the eager steps' noise at every replay") {
  auto cfg = small_search();
  cfg.tau = {5.0, 1.0};
  cfg.l1 = 0.1;  // DATA's L1 term: its code is formed on the device, inside the graph
  check_graph_search<estimators::EGS<4>>(cfg);
  cfg.l1 = 0;
  cfg.tau = {10.0, 0.1};
  check_graph_search<estimators::HardGumbel>(cfg);
}

TEST_CASE("captured steps replay the eager ones with small blocks cut from segments") {
  const gpu_test::SmallSegments on;  // the library's default (gpu_main turns it off)
  auto cfg = small_search();
  cfg.tau = {5.0, 1.0};
  check_graph_search<estimators::EGS<4>>(cfg);
}

TEST_CASE("a captured SNAS (single-level) step replays the eager ones") {
  auto cfg = small_search();
  cfg.single_level = true;
  cfg.tau = {1.0, 0.03};
  check_graph_search<estimators::SoftGumbel>(cfg);
}

TEST_CASE("captured training steps of the evaluation network replay the eager ones, drop path included") {
  const auto d = testing::synthetic_thirds(64, 4);
  const search::Genotype geno = search::load_genotype("DATA_M7");
  const spaces::EvalNetworkConfig& nc = gpu_test::kSmallEval;
  train::TrainConfig tc = gpu_test::small_training(2);  // drop path on in the second epoch
  const data::ChannelNorm norm{testing::kThirdsMean, testing::kThirdsStd};
  struct Run {
    cuda::Stream stream;
    PhiloxGenerator init{9};
    std::optional<spaces::EvalNetwork<float, spaces::DartsOps, Cuda>> net;
    std::optional<train::Trainer<float, Cuda>> trainer;
  };
  Run eager, graph;
  for (Run* r : {&eager, &graph}) {
    cuda::StreamGuard on(r->stream);
    tc.cuda_graph = r == &graph;
    r->net.emplace(geno, nc, r->init);
    r->trainer.emplace(*r->net, d, norm, tc);
  }
  for (int e = 0; e < 2; ++e) {
    CAPTURE(e);
    train::TrainEpochStats se, sg;
    {
      cuda::StreamGuard on(eager.stream);
      se = eager.trainer->run_epoch();
    }
    {
      cuda::StreamGuard on(graph.stream);
      sg = graph.trainer->run_epoch();
    }
    REQUIRE(se.steps >= 3);
    CHECK(sg.loss == se.loss);
    CHECK(sg.accuracy == se.accuracy);
  }
  cuda::StreamGuard on(graph.stream);
  check_same_values(graph.net->parameters(), eager.net->parameters());
  io::Checkpoint ce("<memory>"), cg("<memory>");
  eager.trainer->save(ce);
  graph.trainer->save(cg);
  CHECK(cg.get_int("gen.drop.offset") == ce.get_int("gen.drop.offset"));
  CHECK(cg.get_int("gen.aug.offset") == ce.get_int("gen.aug.offset"));
}

TEST_CASE("each replay of a captured estimator call draws the next eager call's sample") {
  cuda::Stream stream;
  cuda::StreamGuard on(stream);
  const estimators::GroupLayout layout{4, 8, search::Granularity::kNode, 2};
  Var<float, Cuda> alpha(random_device({layout.edges(), layout.ops}, 11), true);
  const estimators::EstimatorConfig ec{1.0, search::Normalize::kSoftmax};
  PhiloxGenerator eager_gen(42), graph_gen(42);
  StepGraph<Cuda> g;
  const Tensor<float, Cuda> w = g.capture([&] {
    NoGradGuard ng;
    return estimators::mixing_weights(estimators::Kind::kEgs, 4, alpha, layout, ec, graph_gen).value();
  });
  CHECK(graph_gen.offset() == 0);  // the capture reserved nothing: replays do
  CHECK(g.nodes() >= 1);
  for (int r = 0; r < 3; ++r) {
    CAPTURE(r);
    g.replay();
    NoGradGuard ng;
    const auto expect = estimators::mixing_weights(estimators::Kind::kEgs, 4, alpha, layout, ec, eager_gen);
    CHECK(same_bits(w, expect.value()));
    CHECK(graph_gen.offset() == eager_gen.offset());
  }
}

/// Twin optimisers on twin parameters given the same gradient: one eager step on both (their
/// state exists before the capture), then og's step captured; for each replay r: before(r),
/// og's replay, oe's eager step, after(r).
template <class Opt>
void replay_against_eager(Opt& oe, Opt& og, const Var<float, Cuda>& pe, const Var<float, Cuda>& pg, int replays,
                          const std::function<void(int)>& before, const std::function<void(int)>& after) {
  const Tensor<float, Cuda> grad = random_device({37}, 2);
  const auto set_grad = [&](const Var<float, Cuda>& p) {
    p.zero_grad();
    p.grad_slot().g.copy_from(grad);
  };
  for (auto* o : {&oe, &og}) {
    set_grad(o == &oe ? pe : pg);
    o->step();
  }
  StepGraph<Cuda> g;
  g.capture([&] {
    set_grad(pg);
    og.step();
  });
  CHECK(og.step_count() == 1);
  for (int r = 0; r < replays; ++r) {
    CAPTURE(r);
    before(r);
    g.replay();
    set_grad(pe);
    oe.step();
    CHECK(og.step_count() == oe.step_count());
    after(r);
  }
}

TEST_CASE("a captured Adam step advances t at each replay as eager steps do") {
  cuda::Stream stream;
  cuda::StreamGuard on(stream);
  Var<float, Cuda> pe(random_device({37}, 1), true), pg(random_device({37}, 1), true);
  optim::Adam<float, Cuda> oe({pe}, 0.01, 0.5, 0.999, 1e-3), og({pg}, 0.01, 0.5, 0.999, 1e-3);
  replay_against_eager(oe, og, pe, pg, 4, [](int) {}, [](int) {});
  CHECK(same_bits(pg.value(), pe.value()));
  CHECK(same_bits(og.exp_avg()[0], oe.exp_avg()[0]));
}

TEST_CASE("a captured ASGD step takes each replay's eta and mu, lagging lr included, as eager steps do") {
  cuda::Stream stream;
  cuda::StreamGuard on(stream);
  Var<float, Cuda> pe(random_device({37}, 1), true), pg(random_device({37}, 1), true);
  // lambd > 0 (the shrink factor changes with eta), t0 = 0 (mu = 1 for two steps, then 1 / n).
  optim::ASGD<float, Cuda> oe({pe}, 0.5, 1e-2, 0.75, 0.0, 1e-3), og({pg}, 0.5, 1e-2, 0.75, 0.0, 1e-3);
  replay_against_eager(
      oe, og, pe, pg, 5,
      [&](int r) {
        const double lr = 0.5 / (1 + r);  // as DARTS rescales it per window; eta lags one step
        og.set_lr(lr);
        oe.set_lr(lr);
      },
      [&](int) {
        CHECK(og.eta() == oe.eta());
        CHECK(og.mu() == oe.mu());
        CHECK(same_bits(pg.value(), pe.value()));
        CHECK(same_bits(og.averages()[0], oe.averages()[0]));
      });
  CHECK(oe.mu() < 1.0);  // the averaging branch ran
}

TEST_CASE("each replay of captured dropout, drop path and recurrent masks draws the next eager masks") {
  cuda::Stream stream;
  cuda::StreamGuard on(stream);
  Var<float, Cuda> x(random_device({6, 5, 4}, 12), true);
  const Tensor<float, Cuda> dy = random_device({6, 5, 4}, 13);
  const Tensor<float, Cuda> mask = Tensor<float, Cuda>::empty({7, 9});  // a locked-dropout mask
  PhiloxGenerator eager_gen(8), graph_gen(8);
  // Forward and backward (the backward recomputes the mask from the same per-replay word).
  const auto run = [&](PhiloxGenerator& gen) {
    x.zero_grad();
    bernoulli_mask(mask, 0.35, gen);
    Var<float, Cuda> y = drop_path(dropout(x, 0.3, true, gen), 0.4, true, gen);
    backward(y, dy);
    return y.value();
  };
  StepGraph<Cuda> g;
  const Tensor<float, Cuda> y = g.capture([&] { return run(graph_gen); });
  const Tensor<float, Cuda> gx = x.grad();
  for (int r = 0; r < 3; ++r) {
    CAPTURE(r);
    g.replay();
    const Tensor<float, Cuda> y_graph = y.clone(), g_graph = gx.clone(), m_graph = mask.clone();
    const Tensor<float, Cuda> y_eager = run(eager_gen);
    CHECK(same_bits(y_graph, y_eager));
    CHECK(same_bits(g_graph, x.grad()));
    CHECK(same_bits(m_graph, mask));
    CHECK(graph_gen.offset() == eager_gen.offset());
  }
  // And the device mask is the CPU's, word for word, from the same generator state.
  PhiloxGenerator cpu_gen(8, eager_gen.offset());
  const Tensor<float> want = Tensor<float>::empty({7, 9});
  bernoulli_mask(want, 0.35, cpu_gen);
  bernoulli_mask(mask, 0.35, eager_gen);
  CHECK(same_bits(mask, cuda::to_device(want)));
  CHECK(cpu_gen.offset() == eager_gen.offset());
}

TEST_CASE("a capture refuses host reads and host copies, and leaves the stream usable") {
  cuda::Stream stream;
  cuda::StreamGuard on(stream);
  const Tensor<float, Cuda> t = random_device({8}, 3);
  StepGraph<Cuda> g;
  CHECK_THROWS_WITH_AS(g.capture([&] { (void)cuda::to_host(t); }),
                       doctest::Contains("reads a device value on the host"), error);
  CHECK_FALSE(g.ready());
  CHECK_THROWS_WITH_AS(g.capture([&] { (void)cuda::to_device(Tensor<float>::zeros({4})); }),
                       doctest::Contains("copies host data"), error);
  CHECK(cuda::capturing_graph() == nullptr);
  // The stream still runs eager work.
  const Tensor<float, Cuda> u = t.clone();
  CHECK(same_bits(u, t));
  // The legacy default stream (no StreamGuard) cannot be captured.
  StepGraph<Cuda> legacy;
  const cuda::StreamRef saved = cuda::detail::current_stream_slot();
  cuda::detail::current_stream_slot() = cuda::StreamRef{};
  CHECK_THROWS_WITH_AS(legacy.capture([] {}), doctest::Contains("legacy default stream"), error);
  cuda::detail::current_stream_slot() = saved;
}

TEST_CASE("nothing is freed to the system while a graph captures (cudaFree would end it)") {
  auto& alloc = CachingAllocator<Cuda>::instance();
  // A tensor that outlives its stream: released eagerly, its block would be freed at once.
  Tensor<float, Cuda> orphan;
  {
    cuda::Stream gone;
    cuda::StreamGuard on_gone(gone);
    orphan = Tensor<float, Cuda>::empty({6000});  // 24,064 bytes
  }
  cuda::Stream stream;
  cuda::StreamGuard on(stream);
  const Tensor<float, Cuda> x = random_device({1000}, 6);
  { const auto t = Tensor<float, Cuda>::empty({4000}); }  // something cached, for the retry below
  StepGraph<Cuda> g;
  const std::size_t cached = alloc.stats().bytes_cached;
  const Tensor<float, Cuda> y = g.capture([&] {
    orphan = {};  // released inside the capture: kept cached until the capture ends
    CHECK(alloc.stats().bytes_cached == cached + 24064);
    Tensor<float, Cuda> out = Tensor<float, Cuda>::empty({1000});
    out.copy_from(x);
    return out;
  });
  REQUIRE(g.ready());                           // the capture was not invalidated
  CHECK(alloc.stats().bytes_cached == cached);  // and then it went back to the system
  g.replay();
  CHECK(same_bits(y, x));
  g.reset();

  // empty_cache() is refused; an allocation that fails does not free the cache to retry.
  CHECK_THROWS_WITH_AS(
      StepGraph<Cuda>().capture([&] { CachingAllocator<Cuda>::instance().empty_cache(); }),
      doctest::Contains("while a CUDA graph is being captured"), error);
  CHECK_THROWS_WITH_AS(
      StepGraph<Cuda>().capture([] { (void)Tensor<float, Cuda>::empty({index_t(1) << 48}); }),
      doctest::Contains("the cache is not freed while a CUDA graph captures"), error);
  CHECK(cuda::capturing_graph() == nullptr);
  // Outside a capture both work again, and the stream still runs.
  alloc.empty_cache();
  CHECK(alloc.stats().bytes_cached == 0);
  CHECK(same_bits(x.clone(), x));
}

TEST_CASE("a graph's memory stays its own while it lives and returns to the stream after") {
  cuda::Stream stream;
  cuda::StreamGuard on(stream);
  auto& alloc = CachingAllocator<Cuda>::instance();
  const Tensor<float, Cuda> x = random_device({1000}, 4);
  const float* inside = nullptr;
  StepGraph<Cuda> g;
  const Tensor<float, Cuda> y = g.capture([&] {
    Tensor<float, Cuda> tmp = Tensor<float, Cuda>::empty({1000});  // freed inside the capture
    inside = tmp.data();
    tmp.copy_from(x);
    Tensor<float, Cuda> out = Tensor<float, Cuda>::empty({1000});
    out.copy_from(tmp);
    return out;
  });
  {
    // Eager work of the same size gets other memory: the graph writes `inside` at every replay.
    const Tensor<float, Cuda> eager = Tensor<float, Cuda>::empty({1000});
    CHECK(eager.data() != inside);
    CHECK(eager.data() != y.data());
  }
  g.replay();
  CHECK(same_bits(y, x));
  const auto before = alloc.stats();
  g.reset();
  // The pool's idle block went back to the stream's cache, nothing to the system.
  CHECK(alloc.stats().bytes_cached >= before.bytes_cached);
  const auto misses = alloc.stats().system_allocations;
  const Tensor<float, Cuda> a = Tensor<float, Cuda>::empty({1000});
  const Tensor<float, Cuda> b = Tensor<float, Cuda>::empty({1000});
  CHECK(alloc.stats().system_allocations == misses);
}

TEST_CASE("graphs sharing a GraphPool hold a temporary once and replay correctly one after another") {
  cuda::Stream stream;
  cuda::StreamGuard on(stream);
  auto& alloc = CachingAllocator<Cuda>::instance();
  const Tensor<float, Cuda> xa = random_device({1000}, 5), xb = random_device({1000}, 6);
  // Each step copies its input through a temporary (freed inside the capture) into its output.
  // 1000 floats take one 4096-byte block.
  const float* tmp_at[2] = {};
  auto step = [&](const Tensor<float, Cuda>& x, int k) {
    return [&x, &tmp_at, k] {
      Tensor<float, Cuda> tmp = Tensor<float, Cuda>::empty({1000});
      tmp_at[k] = tmp.data();
      tmp.copy_from(x);
      Tensor<float, Cuda> out = Tensor<float, Cuda>::empty({1000});
      out.copy_from(tmp);
      return out;
    };
  };
  const std::size_t base = alloc.stats().graph_pool_bytes;
  alloc.reset_peak();
  {
    std::optional<GraphPool> pool(std::in_place);
    StepGraph<Cuda> ga, gb;
    const Tensor<float, Cuda> ya = ga.capture(step(xa, 0), *pool);
    CHECK(alloc.stats().graph_pool_bytes == base + 2 * 4096);
    const Tensor<float, Cuda> yb = gb.capture(step(xb, 1), *pool);
    // b's temporary is a's (a's replay is over before b's starts); the outputs stay apart.
    CHECK(tmp_at[1] == tmp_at[0]);
    CHECK(yb.data() != ya.data());
    CHECK(alloc.stats().graph_pool_bytes == base + 3 * 4096);  // 4 blocks with a pool each
    CHECK(alloc.stats().peak_graph_pool_bytes == base + 3 * 4096);
    for (int round = 0; round < 2; ++round) {
      cuda::fill_bytes(ya, 0xff);
      cuda::fill_bytes(yb, 0xff);
      ga.replay();
      CHECK(same_bits(ya, xa));
      gb.replay();
      CHECK(same_bits(yb, xb));
    }
    // A pool belongs to one stream.
    {
      cuda::Stream other;
      cuda::StreamGuard on_other(other);
      StepGraph<Cuda> gc;
      CHECK_THROWS_WITH_AS(gc.capture(step(xa, 0), *pool), doctest::Contains("captured on another stream"), error);
    }
    // The pool lives while a graph or the handle holds it.
    ga.reset();
    pool.reset();
    CHECK(alloc.stats().graph_pool_bytes == base + 3 * 4096);
    gb.replay();
    CHECK(same_bits(yb, xb));
    gb.reset();
    // Gone: the idle temporary went back to the stream; the outputs follow when released.
    CHECK(alloc.stats().graph_pool_bytes == base + 2 * 4096);
  }
  CHECK(alloc.stats().graph_pool_bytes == base);
}

TEST_CASE("a graph carves large temporaries out of its stream's free segment; they merge back after it") {
  cuda::Stream stream;
  cuda::StreamGuard on(stream);
  auto& alloc = CachingAllocator<Cuda>::instance();
  constexpr index_t kFloatsPerMiB = index_t(1) << 18;  // blocks of 1 MiB and more are split and merged
  constexpr std::size_t kMiBBytes = std::size_t(1) << 20;
  const Tensor<float, Cuda> x = random_device({2 * kFloatsPerMiB}, 7);
  const float* base = nullptr;
  { base = Tensor<float, Cuda>::empty({8 * kFloatsPerMiB}).data(); }  // one free 8 MiB segment on `stream`
  // Device memory the allocator holds (in use or cached): a large cudaMalloc shows here. (The
  // capture itself may take a small block or two for its own bookkeeping.)
  const auto reserved = [&] { return alloc.stats().bytes_in_use + alloc.stats().bytes_cached; };
  const std::size_t before = reserved();
  const float* tmp_at = nullptr;
  std::optional<StepGraph<Cuda>> g(std::in_place);
  std::optional<Tensor<float, Cuda>> y = g->capture([&] {
    Tensor<float, Cuda> tmp = Tensor<float, Cuda>::empty({4 * kFloatsPerMiB});  // freed inside the capture
    tmp_at = tmp.data();
    tmp.fill(0.0f);
    Tensor<float, Cuda> out = Tensor<float, Cuda>::empty({2 * kFloatsPerMiB});
    out.copy_from(x);
    return out;
  });
  // Both came out of the free segment: [tmp 4 | out 2 | free 2] MiB, no large cudaMalloc.
  CHECK(reserved() - before < kMiBBytes);
  CHECK(tmp_at == base);
  CHECK(y->data() == base + 4 * kFloatsPerMiB);
  {
    // Eager work gets the stream's 2 MiB that is left, never the graph's idle temporary.
    const Tensor<float, Cuda> eager = Tensor<float, Cuda>::empty({2 * kFloatsPerMiB});
    CHECK(eager.data() == base + 6 * kFloatsPerMiB);
    const Tensor<float, Cuda> more = Tensor<float, Cuda>::empty({4 * kFloatsPerMiB});
    CHECK(more.data() != tmp_at);
    CHECK(reserved() - before >= 4 * kMiBBytes);  // a new 4 MiB segment
  }
  cuda::fill_bytes(*y, 0xff);
  g->replay();
  CHECK(same_bits(*y, x));
  // The graph goes, then its output: the segment is one free block of the stream again.
  g.reset();
  y.reset();
  const Tensor<float, Cuda> whole = Tensor<float, Cuda>::empty({8 * kFloatsPerMiB});
  CHECK(whole.data() == base);
}

TEST_CASE("with small segments, a graph's small temporaries come out of its stream's segment and merge back") {
  const gpu_test::SmallSegments segments;
  cuda::Stream stream;
  cuda::StreamGuard on(stream);
  auto& alloc = CachingAllocator<Cuda>::instance();
  constexpr std::size_t kSegment = detail::BlockCache<detail::CudaMemory>::kSmallSegment;
  const Tensor<float, Cuda> x = random_device({64}, 8);  // 256 bytes: [x | free] in a new segment
  const auto in_segment = [&](const float* p) {
    return p > x.data() && p < x.data() + kSegment / sizeof(float);
  };
  const auto misses = alloc.stats().system_allocations;
  const float* tmp_at = nullptr;
  std::optional<StepGraph<Cuda>> g(std::in_place);
  std::optional<Tensor<float, Cuda>> y = g->capture([&] {
    Tensor<float, Cuda> tmp = Tensor<float, Cuda>::empty({1000});  // freed inside the capture
    tmp_at = tmp.data();
    tmp.fill(0.0f);
    Tensor<float, Cuda> out = Tensor<float, Cuda>::empty({64});
    out.copy_from(x);
    return out;
  });
  // The graph's blocks, its own bookkeeping's included, came out of the stream's segment.
  CHECK(alloc.stats().system_allocations == misses);
  CHECK(in_segment(tmp_at));
  CHECK(in_segment(y->data()));
  {
    // Eager work gets the stream's free memory, never the graph's idle temporary.
    const Tensor<float, Cuda> eager = Tensor<float, Cuda>::empty({1000});
    CHECK(eager.data() != tmp_at);
    CHECK(in_segment(eager.data()));
  }
  cuda::fill_bytes(*y, 0xff);
  g->replay();
  CHECK(same_bits(*y, x));
  // The graph goes, then its output: everything but x merges back into one free block, which
  // two requests of just under 1 MiB (small ones) fill without a cudaMalloc.
  g.reset();
  y.reset();
  const auto after = alloc.stats().system_allocations;
  const index_t just_under = index_t((std::size_t(1) << 20) - 256) / index_t(sizeof(float));
  const Tensor<float, Cuda> a = Tensor<float, Cuda>::empty({just_under});
  const Tensor<float, Cuda> b = Tensor<float, Cuda>::empty({just_under});
  CHECK(alloc.stats().system_allocations == after);
  CHECK(in_segment(a.data()));
  CHECK(in_segment(b.data()));
}
