// The optimisers, gradient clipping, the tensor algebra of ops/tensor_math.hpp and the estimator
// ops on the GPU against the CPU: SGD, Adam and ASGD for three steps on random parameters and
// gradients (parameters, gradients and optimiser state compared after every step; SGD also on
// 150 parameters, up to 64 a launch, and on one listed twice), clipping above and below the
// threshold with a parameter that has no gradient and more tensors than one launch covers,
// axpby with aliasing, squared_norm, and mixing_weights for every estimator kind (forward,
// gradients, and the sampled codes identical), group_probabilities and l1_to_code.
#include "parity.hpp"

#include "datanas/estimators/estimators.hpp"
#include "datanas/ops/tensor_math.hpp"
#include "datanas/optim/asgd.hpp"
#include "datanas/optim/optimizers.hpp"

using namespace datanas;
using gpu_test::check_parity;
using gpu_test::Input;
using gpu_test::random_normal;
using gpu_test::rel_err;

namespace {

using VarC = Var<float, Cpu>;
using VarG = Var<float, Cuda>;

/// The same parameters on both devices; the last one never gets a gradient.
struct Params {
  std::vector<VarC> c;
  std::vector<VarG> g;
  std::vector<bool> with_grad;

  Params(const std::vector<Shape>& shapes, PhiloxGenerator& gen) {
    for (std::size_t i = 0; i < shapes.size(); ++i) {
      const Tensor<float> v = random_normal(shapes[i], gen);
      c.emplace_back(v.clone(), true);
      g.emplace_back(cuda::to_device(v), true);
      with_grad.push_back(i + 1 < shapes.size());
    }
  }
  /// Fresh random gradients, the same on both devices (the GradSlot is overwritten).
  void set_grads(PhiloxGenerator& gen, float scale = 1.0f) {
    for (std::size_t i = 0; i < c.size(); ++i) {
      c[i].zero_grad();
      g[i].zero_grad();
      if (!with_grad[i]) continue;
      const Tensor<float> gr = random_normal(c[i].shape(), gen, scale);
      c[i].grad_slot().g.copy_from(gr);
      g[i].grad_slot().g.copy_from(cuda::to_device(gr));
    }
  }
  /// Values and (live) gradients agree within tol; has_grad agrees.
  void compare(double tol) const {
    for (std::size_t i = 0; i < c.size(); ++i) {
      CAPTURE(i);
      const double ev = rel_err(g[i].value(), c[i].value());
      CAPTURE(ev);
      CHECK(ev <= tol);
      REQUIRE(g[i].has_grad() == c[i].has_grad());
      if (c[i].has_grad()) {
        const double eg = rel_err(g[i].grad(), c[i].grad());
        CAPTURE(eg);
        CHECK(eg <= tol);
      }
    }
  }
};

/// Optimiser state tensors agree (both undefined, or within tol).
void compare_state(const char* what, const std::vector<Tensor<float, Cuda>>& g,
                   const std::vector<Tensor<float>>& c, double tol) {
  CAPTURE(what);
  REQUIRE(g.size() == c.size());
  for (std::size_t i = 0; i < c.size(); ++i) {
    CAPTURE(i);
    REQUIRE(g[i].defined() == c[i].defined());
    if (!c[i].defined()) continue;
    const double e = rel_err(g[i], c[i]);
    CAPTURE(e);
    CHECK(e <= tol);
  }
}

const std::vector<Shape> kParamShapes = {Shape{1}, Shape{3, 5, 7}, Shape{17, 1, 3, 3},
                                         Shape{(index_t(1) << 20) + 3}, Shape{4, 4}};
constexpr double kOptimTol = 1e-5;

}  // namespace

TEST_CASE("SGD on the GPU matches the CPU for three steps") {
  struct Case {
    double momentum, wd;
  };
  for (const Case k : {Case{0.9, 3e-4}, Case{0.0, 0.0}, Case{0.9, 0.0}, Case{0.0, 3e-4}}) {
    CAPTURE(k.momentum);
    CAPTURE(k.wd);
    PhiloxGenerator gen(21);
    Params ps(kParamShapes, gen);
    optim::SGD<float, Cpu> oc(ps.c, 0.025, k.momentum, k.wd);
    optim::SGD<float, Cuda> og(ps.g, 0.025, k.momentum, k.wd);
    for (int step = 0; step < 3; ++step) {
      CAPTURE(step);
      ps.set_grads(gen);
      if (step == 2) {  // a lr change between steps, as the cosine schedule does
        oc.set_lr(0.01);
        og.set_lr(0.01);
      }
      oc.step();
      og.step();
      ps.compare(kOptimTol);
      compare_state("momentum", og.momentum_buffers(), oc.momentum_buffers(), kOptimTol);
    }
  }
}

TEST_CASE("SGD on the GPU updates many parameters in few launches, as the CPU one by one") {
  // 150 parameters of varied sizes: three launches of at most 64 (cuda::kSgdChunk). The last
  // one never has a gradient; every fifth gets its first gradient only at step 1, so one launch
  // mixes new and old momentum buffers.
  PhiloxGenerator gen(26);
  std::vector<Shape> shapes;
  for (int i = 0; i < 149; ++i) shapes.push_back(Shape{1 + 53 * i % 389});
  shapes.push_back(Shape{(index_t(1) << 17) + 9});
  shapes.push_back(Shape{3});
  Params ps(shapes, gen);
  optim::SGD<float, Cpu> oc(ps.c, 0.025, 0.9, 3e-4);
  optim::SGD<float, Cuda> og(ps.g, 0.025, 0.9, 3e-4);
  for (int step = 0; step < 3; ++step) {
    CAPTURE(step);
    ps.set_grads(gen);
    if (step == 0)
      for (std::size_t i = 0; i < ps.c.size(); i += 5) {
        ps.c[i].zero_grad();
        ps.g[i].zero_grad();
      }
#if DATANAS_CUDA_SIM
    const std::uint64_t before = cudasim::counters().kernels;
#endif
    oc.step();
    og.step();
#if DATANAS_CUDA_SIM
    const std::size_t updated = step == 0 ? 150 - 30 : 150;  // the last and every fifth wait
    CHECK(cudasim::counters().kernels - before == (updated + cuda::kSgdChunk - 1) / cuda::kSgdChunk);
#endif
    ps.compare(kOptimTol);
    compare_state("momentum", og.momentum_buffers(), oc.momentum_buffers(), kOptimTol);
  }
}

TEST_CASE("SGD on the GPU updates a parameter listed twice twice, as the CPU") {
  // One launch would update it twice at once (a race): a chunk with overlapping storage goes
  // out one parameter per launch, in order.
  PhiloxGenerator gen(27);
  Params two({Shape{5}, Shape{1000}}, gen);
  two.with_grad = {true, true};
  const std::vector<VarC> lc{two.c[0], two.c[1], two.c[0]};
  const std::vector<VarG> lg{two.g[0], two.g[1], two.g[0]};
  optim::SGD<float, Cpu> tc(lc, 0.1, 0.9, 3e-4);
  optim::SGD<float, Cuda> tg(lg, 0.1, 0.9, 3e-4);
  for (int step = 0; step < 2; ++step) {
    two.set_grads(gen);
#if DATANAS_CUDA_SIM
    // The simulator runs blocks one after another, so a race would not show in the values:
    // check the launches instead (one per parameter).
    const std::uint64_t before = cudasim::counters().kernels;
#endif
    tc.step();
    tg.step();
#if DATANAS_CUDA_SIM
    CHECK(cudasim::counters().kernels - before == 3);
#endif
    two.compare(kOptimTol);
  }
}

TEST_CASE("Adam on the GPU matches the CPU for three steps") {
  struct Case {
    double b1, b2, wd;
  };
  for (const Case k : {Case{0.5, 0.999, 1e-3}, Case{0.9, 0.999, 0.0}}) {
    CAPTURE(k.b1);
    CAPTURE(k.wd);
    PhiloxGenerator gen(22);
    Params ps(kParamShapes, gen);
    optim::Adam<float, Cpu> oc(ps.c, 3e-4, k.b1, k.b2, k.wd);
    optim::Adam<float, Cuda> og(ps.g, 3e-4, k.b1, k.b2, k.wd);
    for (int step = 0; step < 3; ++step) {
      CAPTURE(step);
      ps.set_grads(gen, step == 1 ? 1e-3f : 1.0f);  // small gradients: eps matters
      oc.step();
      og.step();
      CHECK(og.step_count() == oc.step_count());
      ps.compare(kOptimTol);
      compare_state("exp_avg", og.exp_avg(), oc.exp_avg(), kOptimTol);
      compare_state("exp_avg_sq", og.exp_avg_sq(), oc.exp_avg_sq(), kOptimTol);
    }
  }
}

TEST_CASE("ASGD on the GPU matches the CPU for three steps") {
  struct Case {
    double lambd, t0, wd;
  };
  // t0 = 0 as DARTS: mu is 1 for two steps (ax = w), then 1/2 (the average path).
  for (const Case k : {Case{1e-4, 0.0, 1.2e-6}, Case{0.0, 0.0, 0.0}, Case{1e-4, 1e6, 0.0}}) {
    CAPTURE(k.lambd);
    CAPTURE(k.t0);
    CAPTURE(k.wd);
    PhiloxGenerator gen(23);
    Params ps(kParamShapes, gen);
    optim::ASGD<float, Cpu> oc(ps.c, 20.0, k.lambd, 0.75, k.t0, k.wd);
    optim::ASGD<float, Cuda> og(ps.g, 20.0, k.lambd, 0.75, k.t0, k.wd);
    for (int step = 0; step < 3; ++step) {
      CAPTURE(step);
      ps.set_grads(gen, 1e-2f);
      oc.step();
      og.step();
      CHECK(og.eta() == oc.eta());
      CHECK(og.mu() == oc.mu());
      ps.compare(kOptimTol);
      compare_state("averages", og.averages(), oc.averages(), kOptimTol);
    }
  }
}

TEST_CASE("clip_grad_norm on the GPU matches the CPU, on the device") {
  // 40 parameters (two multi-tensor launches), the last without a gradient.
  PhiloxGenerator gen(24);
  std::vector<Shape> shapes;
  for (int i = 0; i < 39; ++i) shapes.push_back(Shape{1 + 37 * i % 301, 3});
  shapes.push_back(Shape{(index_t(1) << 18) + 5});
  shapes.push_back(Shape{7});
  for (const double max_norm : {5.0, 1e6}) {  // the norm is about 530: clipped, then untouched
    CAPTURE(max_norm);
    Params ps(shapes, gen);
    ps.set_grads(gen);
    const double nc = optim::clip_grad_norm<float, Cpu>(ps.c, max_norm);
    const Tensor<float, Cuda> ng = optim::clip_grad_norm<float, Cuda>(ps.g, max_norm);
    REQUIRE(ng.shape() == Shape{1});
    const float got = cuda::to_host(ng)[0];
    CAPTURE(nc);
    CAPTURE(got);
    CHECK(std::abs(double(got) - nc) <= 1e-5 * nc);
    ps.compare(1e-5);
    CHECK_FALSE(ps.g.back().has_grad());  // skipped, not zero-filled
  }
  SUBCASE("a single parameter, on a stream of its own") {
    cuda::Stream stream;
    cuda::StreamGuard guard(stream);
    Params ps({Shape{3, 3}, Shape{2}}, gen);
    ps.set_grads(gen);
    const double nc = optim::clip_grad_norm<float, Cpu>(ps.c, 0.5);
    const float got = cuda::to_host(optim::clip_grad_norm<float, Cuda>(ps.g, 0.5))[0];
    CHECK(std::abs(double(got) - nc) <= 1e-5 * nc);
    ps.compare(1e-5);
  }
  SUBCASE("a parameter listed twice is an error (one launch would scale it twice at once)") {
    Params ps({Shape{3}, Shape{2}}, gen);
    ps.set_grads(gen);
    const std::vector<VarG> twice{ps.g[0], ps.g[0]};
    CHECK_THROWS_WITH_AS((optim::clip_grad_norm<float, Cuda>(twice, 1.0)), doctest::Contains("listed twice"),
                         error);
  }
  SUBCASE("no parameter has a gradient") {
    Params ps({Shape{5}}, gen);
    ps.set_grads(gen);
    const float got = cuda::to_host(optim::clip_grad_norm<float, Cuda>(ps.g, 1.0))[0];
    CHECK(got == 0.0f);
    CHECK(optim::clip_grad_norm<float, Cpu>(ps.c, 1.0) == 0.0);
  }
}

TEST_CASE("axpby, scale_by, squared_norm, norm_ratio and reciprocal on the GPU match the CPU") {
  PhiloxGenerator gen(25);
  for (const Shape& s : {Shape{1}, Shape{3, 5, 7}, Shape{(index_t(1) << 20) + 3}}) {
    CAPTURE(s.str());
    const Tensor<float> x = random_normal(s, gen), y = random_normal(s, gen);
    const Tensor<float> sc = Tensor<float>::from({1}, {0.37f});
    const Tensor<float, Cuda> sg = cuda::to_device(sc);
    // out = a x + b y into a third tensor, into x, into y; and with b scaled by a device scalar.
    for (int alias = 0; alias < 3; ++alias) {
      for (const bool scaled : {false, true}) {
        CAPTURE(alias);
        CAPTURE(scaled);
        const Tensor<float> xc = x.clone(), yc = y.clone();
        const Tensor<float, Cuda> xg = cuda::to_device(x), yg = cuda::to_device(y);
        const Tensor<float> oc = alias == 0 ? Tensor<float>::empty(s) : alias == 1 ? xc : yc;
        const Tensor<float, Cuda> og = alias == 0 ? Tensor<float, Cuda>::empty(s) : alias == 1 ? xg : yg;
        if (scaled) {
          axpby<float, Cpu>(1.0f, xc, -0.5f, sc, yc, oc);
          axpby<float, Cuda>(1.0f, xg, -0.5f, sg, yg, og);
        } else {
          axpby<float, Cpu>(0.9f, xc, -0.025f, yc, oc);
          axpby<float, Cuda>(0.9f, xg, -0.025f, yg, og);
        }
        CHECK(rel_err(og, oc) <= 1e-6);
        // The input that is not the output is unchanged.
        if (alias != 1) CHECK(rel_err(xg, x) == 0.0);
        if (alias != 2) CHECK(rel_err(yg, y) == 0.0);
      }
    }
    {
      const Tensor<float> xc = x.clone();
      const Tensor<float, Cuda> xg = cuda::to_device(x), xh = cuda::to_device(x);
      scale_by<float, Cpu>(xc, sc, -3.0f);
      scale_by<float, Cuda>(xg, sg, -3.0f);
      scale_by(xh, sc, -3.0f);  // a host scalar for a device tensor
      CHECK(rel_err(xg, xc) <= 1e-6);
      CHECK(rel_err(xh, xc) <= 1e-6);
    }
  }
  SUBCASE("squared_norm of many tensors, one undefined and one empty") {
    std::vector<Tensor<float>> xc;
    std::vector<Tensor<float, Cuda>> xg;
    for (int i = 0; i < 70; ++i) {
      const Shape s = i == 5 ? Shape{(index_t(1) << 20) + 3} : i == 9 ? Shape{0} : Shape{1 + 13 * i % 97};
      const Tensor<float> t = random_normal(s, gen);
      xc.push_back(t);
      xg.push_back(cuda::to_device(t));
    }
    xc.push_back(Tensor<float>::unallocated({4}));
    xg.push_back(Tensor<float, Cuda>::unallocated({4}));
    const Tensor<float> nc = squared_norm<float, Cpu>(xc);
    const Tensor<float, Cuda> ng = squared_norm<float, Cuda>(xg);
    REQUIRE(ng.shape() == Shape{1});
    // The devices sum differently (the CPU sums each tensor in float, the GPU every square in
    // double), so each is held to the exact sum: the GPU to float rounding, the CPU to what
    // float summation of a million squares costs.
    double exact = 0;
    for (const Tensor<float>& t : xc)
      for (index_t i = 0; t.defined() && i < t.numel(); ++i) exact += double(t[i]) * double(t[i]);
    CHECK(std::abs(cuda::to_host(ng)[0] - exact) <= 1e-6 * exact);
    CHECK(std::abs(nc[0] - exact) <= 1e-4 * exact);
    // Deterministic: the same bits again.
    CHECK(cuda::to_host(squared_norm<float, Cuda>(xg))[0] == cuda::to_host(ng)[0]);
    // eps = 0.01 / max(||v||, 1e-12) and 1 / eps, as DARTS' unrolled step.
    const Tensor<float> ec = norm_ratio(nc, 0.01, 1e-12);
    const Tensor<float, Cuda> eg = norm_ratio(ng, 0.01, 1e-12);
    CHECK(rel_err(eg, ec) <= 1e-4);
    CHECK(rel_err(reciprocal(eg), reciprocal(ec)) <= 1e-4);
    CHECK(std::abs(cuda::to_host(eg)[0] - 0.01 / std::sqrt(exact)) <= 1e-6 * (0.01 / std::sqrt(exact)));
    std::vector<Tensor<float, Cuda>> none;
    CHECK(cuda::to_host(squared_norm<float, Cuda>(none))[0] == 0.0f);
    CHECK(cuda::to_host(norm_ratio(squared_norm<float, Cuda>(none), 0.01, 1e-12))[0] == 1e10f);
  }
  SUBCASE("size mismatches are errors") {
    const Tensor<float, Cuda> a = Tensor<float, Cuda>::zeros({3}), b = Tensor<float, Cuda>::zeros({4});
    CHECK_THROWS_WITH_AS((axpby<float, Cuda>(1.0f, a, 1.0f, b, a)), doctest::Contains("differ in size"),
                         error);
    CHECK_THROWS_WITH_AS((scale_by<float, Cuda>(a, b, 1.0f)), doctest::Contains("one element"), error);
  }
}

namespace {

struct EstimatorCase {
  estimators::Kind kind;
  int M;
  const char* name;
};
const EstimatorCase kEstimators[] = {
    {estimators::Kind::kSoftmax, 1, "softmax"},   {estimators::Kind::kSoftGumbel, 1, "snas"},
    {estimators::Kind::kHardGumbel, 1, "gdas"},   {estimators::Kind::kEgs, 1, "egs M=1"},
    {estimators::Kind::kEgs, 4, "egs M=4"},       {estimators::Kind::kEgs, 7, "egs M=7"},
};

/// The DARTS CNN cell (4 nodes, 8 ops, 2 cell inputs) and the recurrent cell (8 nodes, 5 ops).
std::vector<estimators::GroupLayout> layouts() {
  std::vector<estimators::GroupLayout> out;
  for (const auto g : {search::Granularity::kEdge, search::Granularity::kNode}) {
    out.push_back({4, 8, g, 2});
    out.push_back({8, 5, g, 1});
  }
  return out;
}

/// Random logits [E, K]; for relu normalisation, group 0 has no positive logit (uniform p) and
/// one logit is exactly 0.
Tensor<float> random_alpha(const estimators::GroupLayout& l, search::Normalize norm, PhiloxGenerator& gen) {
  Tensor<float> a = random_normal({l.edges(), l.ops}, gen);
  if (norm == search::Normalize::kRelu) {
    const auto [o, n] = l.group(0);
    for (index_t k = 0; k < n; ++k) a[o + k] = -std::abs(a[o + k]) - 0.1f;
    a[a.numel() - 1] = 0.0f;
  }
  return a;
}

}  // namespace

TEST_CASE("mixing_weights on the GPU matches the CPU for every estimator") {
  PhiloxGenerator gen(26);
  for (const EstimatorCase& e : kEstimators) {
    for (const estimators::GroupLayout& layout : layouts()) {
      for (const auto norm : {search::Normalize::kSoftmax, search::Normalize::kRelu}) {
        for (const double tau : {1.0, 0.4}) {
          const estimators::EstimatorConfig cfg{tau, norm};
          CAPTURE(e.name);
          CAPTURE(layout.granularity == search::Granularity::kEdge);
          CAPTURE(layout.nodes);
          CAPTURE(norm == search::Normalize::kRelu);
          CAPTURE(tau);
          const Tensor<float> alpha = random_alpha(layout, norm, gen);
          // Forward and gradients, written then accumulated (the harness runs it twice, drawing
          // fresh noise from generators seeded alike).
          check_parity(e.name, {{alpha}}, [&](auto xs, auto& g) {
            return estimators::mixing_weights(e.kind, e.M, xs[0], layout, cfg, g);
          });
          // Successive calls as in a search: the same counters consumed, the same weights, and for
          // the hard kinds exactly the same codes (nonzero patterns).
          PhiloxGenerator gc(99), gg(99);
          const VarC ac(alpha.clone(), true);
          const VarG ag(cuda::to_device(alpha), true);
          for (int call = 0; call < 20; ++call) {
            CAPTURE(call);
            const VarC wc = estimators::mixing_weights(e.kind, e.M, ac, layout, cfg, gc);
            const VarG wg = estimators::mixing_weights(e.kind, e.M, ag, layout, cfg, gg);
            REQUIRE(gg.offset() == gc.offset());
            const Tensor<float> wh = cuda::to_host(wg.value());
            CHECK(rel_err(wh, wc.value()) <= 1e-5);
            if (e.kind == estimators::Kind::kHardGumbel || e.kind == estimators::Kind::kEgs) {
              int mismatches = 0;
              for (index_t i = 0; i < wh.numel(); ++i) mismatches += (wh[i] != 0.0f) != (wc.value()[i] != 0.0f);
              CHECK(mismatches == 0);
            }
          }
          clear_tape<float, Cpu>();
          clear_tape<float, Cuda>();
        }
      }
    }
  }
}

TEST_CASE("estimators::weights<Policy> and group_probabilities on the GPU match the CPU") {
  PhiloxGenerator gen(27);
  for (const estimators::GroupLayout& layout : layouts()) {
    for (const auto norm : {search::Normalize::kSoftmax, search::Normalize::kRelu}) {
      CAPTURE(layout.nodes);
      CAPTURE(norm == search::Normalize::kRelu);
      const Tensor<float> alpha = random_alpha(layout, norm, gen);
      check_parity("group_probabilities", {{alpha}}, [&](auto xs, auto& g) {
        return estimators::group_probabilities(xs[0], layout, norm, g);
      });
      check_parity("weights<EGS<4>>", {{alpha}}, [&](auto xs, auto& g) {
        return estimators::weights<estimators::EGS<4>>(xs[0], layout, {2.0, norm}, g);
      });
    }
  }
}

TEST_CASE("l1_to_code on the GPU matches the CPU") {
  PhiloxGenerator gen(28);
  for (const Shape& s : {Shape{1}, Shape{14, 8}, Shape{(index_t(1) << 20) + 3}}) {
    CAPTURE(s.str());
    const Tensor<float> p = random_normal(s, gen);
    Tensor<float> code = random_normal(s, gen);
    for (index_t i = 0; i < code.numel(); i += 3) code[i] = p[i];  // ties: gradient 0 on both
    check_parity("l1_to_code", {{p}, {code, false}}, [](auto xs, auto&) {
      return estimators::l1_to_code(xs[0], xs[1].value(), 0.3f);
    });
  }
}

TEST_CASE("estimator errors on the GPU") {
  PhiloxGenerator gen(29);
  // A node of 5 edges x 120 ops: 600 logits, more than a block of the kernels holds.
  const estimators::GroupLayout big{4, 120, search::Granularity::kNode, 2};
  const VarG a(Tensor<float, Cuda>::zeros({big.edges(), big.ops}), true);
  const std::uint64_t before = gen.offset();
  CHECK_THROWS_WITH_AS(estimators::mixing_weights(estimators::Kind::kEgs, 4, a, big, {}, gen),
                       doctest::Contains("exceeds 512"), error);
  CHECK(gen.offset() == before);  // refused before reserving noise
  const estimators::GroupLayout l{4, 8, search::Granularity::kEdge, 2};
  const VarG wrong(Tensor<float, Cuda>::zeros({3, 8}), true);
  CHECK_THROWS_WITH_AS(estimators::mixing_weights(estimators::Kind::kSoftmax, 1, wrong, l, {}, gen),
                       doctest::Contains("alpha has shape"), error);
  CHECK_THROWS_WITH_AS(estimators::l1_to_code(wrong, Tensor<float, Cuda>::zeros({5}), 1.0f),
                       doctest::Contains("l1_to_code"), error);
}
