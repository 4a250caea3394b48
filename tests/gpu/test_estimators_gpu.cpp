// The estimator kernels against the CPU op (estimators::mixing_weights), which is their
// specification: for every estimator kind x granularity x normalisation, on fresh random logits,
// the GPU selects the same ops for the same (seed, counter) and its weights and gradients agree
// to float rounding. Outputs are poisoned with NaN before every launch.
#include <doctest/doctest.h>

#include <cmath>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "datanas/core/cuda.hpp"
#include "datanas/estimators/estimators.hpp"
#include "gpu_helpers.hpp"

using namespace datanas;
using estimators::GroupLayout;
using estimators::Kind;
using search::Granularity;
using search::Normalize;

static_assert(int(cuda::EstimatorKind::kSoftmax) == int(Kind::kSoftmax) &&
                  int(cuda::EstimatorKind::kSoftGumbel) == int(Kind::kSoftGumbel) &&
                  int(cuda::EstimatorKind::kHardGumbel) == int(Kind::kHardGumbel) &&
                  int(cuda::EstimatorKind::kEgs) == int(Kind::kEgs),
              "cuda::EstimatorKind must list estimators::Kind in the same order");

namespace {

struct Case {
  Kind kind = Kind::kSoftmax;
  int M = 1;
  GroupLayout layout;
  estimators::EstimatorConfig cfg;

  [[nodiscard]] std::string str() const {
    std::ostringstream os;
    const char* names[] = {"Softmax", "SoftGumbel", "HardGumbel", "EGS"};
    os << names[int(kind)] << " M=" << M << " nodes=" << layout.nodes << " ops=" << layout.ops
       << " first_inputs=" << layout.first_inputs
       << (layout.granularity == Granularity::kEdge ? " per-edge" : " per-node")
       << (cfg.normalize == Normalize::kRelu ? " relu" : " softmax") << " tau=" << cfg.tau;
    return os.str();
  }
  [[nodiscard]] bool hard() const { return kind == Kind::kHardGumbel || kind == Kind::kEgs; }
};

/// The kernel parameters of a CPU call (the future Var<T, Cuda> op does the same).
cuda::EstimatorParams params_of(const Case& c) {
  cuda::EstimatorParams p;
  p.kind = cuda::EstimatorKind(int(c.kind));
  p.draws = c.kind == Kind::kSoftmax ? 0 : c.kind == Kind::kEgs ? c.M : 1;
  p.nodes = c.layout.nodes;
  p.ops = c.layout.ops;
  p.first_inputs = c.layout.first_inputs;
  p.per_edge = c.layout.granularity == Granularity::kEdge;
  p.relu = c.cfg.normalize == Normalize::kRelu;
  p.tau = c.cfg.tau;
  return p;
}

/// ||got - want|| / ||want|| in double; infinity when got holds a NaN (an unwritten element).
double rel_err(const Tensor<float>& got, const Tensor<float>& want) {
  double num = 0, den = 0;
  for (index_t i = 0; i < want.numel(); ++i) {
    if (!std::isfinite(got[i])) return INFINITY;
    const double d = double(got[i]) - double(want[i]);
    num += d * d;
    den += double(want[i]) * double(want[i]);
  }
  return den > 0 ? std::sqrt(num / den) : std::sqrt(num);
}

/// Random logits [E, K]; with relu normalisation, group 0 has no positive logit (the uniform
/// branch) and one logit is exactly 0 (p = 0, log p = -inf).
Tensor<float> random_alpha(const Case& c, PhiloxGenerator& gen) {
  Tensor<float> a = Tensor<float>::empty({c.layout.edges(), c.layout.ops});
  for (index_t i = 0; i < a.numel(); ++i) a[i] = float(1.5 * gen.normal());
  if (c.cfg.normalize == Normalize::kRelu) {
    const auto [o, n] = c.layout.group(0);
    for (index_t k = 0; k < n; ++k) a[o + k] = -std::abs(a[o + k]);
    a[a.numel() - 1] = 0.0f;
  }
  return a;
}

struct Result {
  Tensor<float> w, grad;
};

/// The CPU op, with dL/dw = gw injected by a loss node whose backward writes gw.
Result run_cpu(const Case& c, const Tensor<float>& alpha, const Tensor<float>& gw, PhiloxGenerator& gen) {
  Var<float> a(alpha.clone(), true);
  Var<float> w = estimators::mixing_weights(c.kind, c.M, a, c.layout, c.cfg, gen);
  Var<float> loss(Tensor<float>::zeros({1}));
  record(loss, [w, gw] {
    auto [g, acc] = w.grad_slot();
    for (index_t i = 0; i < gw.numel(); ++i) g[i] = acc ? g[i] + gw[i] : gw[i];
  });
  backward(loss);
  return {w.value().clone(), a.grad().clone()};
}

/// The kernels on the current stream, every output poisoned first. With `grad0`, the backward
/// accumulates onto it (GradSlot accumulate); otherwise it overwrites a poisoned buffer.
Result run_gpu(const cuda::EstimatorParams& p, const Tensor<float>& alpha, const Tensor<float>& gw,
               const Tensor<float>* grad0 = nullptr) {
  const cudaStream_t s = cuda::current_stream().handle;
  const auto a = cuda::to_device(alpha);
  const auto g_w = cuda::to_device(gw);
  const auto w = Tensor<float, Cuda>::empty({p.total()});
  const auto saved = Tensor<float, Cuda>::empty({p.saved_size()});
  const auto ga = grad0 ? cuda::to_device(*grad0) : Tensor<float, Cuda>::empty({p.total()});
  cuda::fill_bytes(w, 0xff);
  cuda::fill_bytes(saved, 0xff);
  if (!grad0) cuda::fill_bytes(ga, 0xff);
  gpu_test::estimator_forward(p, a.data(), w.data(), saved.data(), s);
  gpu_test::estimator_backward(p, a.data(), w.data(), saved.data(), g_w.data(), ga.data(),
                               grad0 != nullptr, s);
  return {cuda::to_host(w), cuda::to_host(ga)};
}

/// Number of coordinates selected by one backend and not the other.
int code_mismatches(const Tensor<float>& gpu_w, const Tensor<float>& cpu_w) {
  int bad = 0;
  for (index_t i = 0; i < cpu_w.numel(); ++i) bad += (gpu_w[i] > 0) != (cpu_w[i] > 0);
  return bad;
}

std::vector<Case> all_cases() {
  std::vector<Case> cases;
  const GroupLayout cnn{4, 8, Granularity::kNode, 2}, rnn{8, 5, Granularity::kNode, 1};
  const std::pair<Kind, int> estimators[] = {{Kind::kSoftmax, 1},    {Kind::kSoftGumbel, 1},
                                             {Kind::kHardGumbel, 1}, {Kind::kEgs, 1},
                                             {Kind::kEgs, 4},        {Kind::kEgs, 64}};
  for (const auto& [kind, M] : estimators)
    for (GroupLayout layout : {cnn, rnn})
      for (Granularity gran : {Granularity::kNode, Granularity::kEdge})
        for (Normalize norm : {Normalize::kSoftmax, Normalize::kRelu})
          for (double tau : {0.3, 1.0, 5.0}) {
            if (kind == Kind::kSoftmax && tau != 1.0) continue;  // Softmax ignores tau
            layout.granularity = gran;
            cases.push_back({kind, M, layout, {tau, norm}});
          }
  return cases;
}

}  // namespace

TEST_SUITE("gpu") {
TEST_CASE("EstimatorParams lays out groups and noise exactly as the CPU op") {
  for (const Case& c : all_cases()) {
    INFO(c.str());
    cuda::EstimatorParams p = params_of(c);
    REQUIRE(p.edges() == c.layout.edges());
    REQUIRE(p.groups() == c.layout.count());
    for (int g = 0; g < p.groups(); ++g) {
      std::int64_t o = -1, n = -1;
      p.group(g, o, n);
      const auto [co, cn] = c.layout.group(g);
      REQUIRE(o == co);
      REQUIRE(n == cn);
    }
    // Both reserve the same counter range from the same generator state.
    PhiloxGenerator cpu_gen(3, 11), gpu_gen(3, 11);
    Var<float> a(Tensor<float>::zeros({c.layout.edges(), c.layout.ops}), false);
    (void)estimators::mixing_weights(c.kind, c.M, a, c.layout, c.cfg, cpu_gen);
    p.reserve_noise(gpu_gen);
    CHECK(p.base == (p.draws ? 11u : 0u));  // Softmax draws no noise and reserves none
    CHECK(p.seed == 3);
    CHECK(gpu_gen.offset() == cpu_gen.offset());
  }
}

TEST_CASE("GPU estimators select the CPU's ops and match its weights and gradients") {
  const std::uint64_t seed = std::random_device{}();
  INFO("random seed " << seed);
  PhiloxGenerator inputs(seed);
  cuda::Stream stream;
  cuda::StreamGuard guard(stream);
  int index = 0;
  for (const Case& c : all_cases()) {
    INFO(c.str());
    // Every third case starts its noise just below 2^32 counters, so the range crosses into the
    // counter's high word.
    const std::uint64_t offset = index++ % 3 == 0 ? (std::uint64_t(1) << 32) - 5 : seed % 1000;
    const Tensor<float> alpha = random_alpha(c, inputs);
    Tensor<float> gw = Tensor<float>::empty({alpha.numel()});
    for (index_t i = 0; i < gw.numel(); ++i) gw[i] = float(inputs.normal());

    PhiloxGenerator cpu_gen(seed ^ 0x5eed, offset), gpu_gen(seed ^ 0x5eed, offset);
    const Result cpu = run_cpu(c, alpha, gw, cpu_gen);
    cuda::EstimatorParams p = params_of(c);
    p.reserve_noise(gpu_gen);
    const Result gpu = run_gpu(p, alpha, gw);

    if (c.hard()) {
      CHECK(code_mismatches(gpu.w, cpu.w) == 0);
      // Same code, so the same 1 / |S| computed the same way: exactly equal.
      CHECK(rel_err(gpu.w, cpu.w) == 0.0);
    }
    CHECK(rel_err(gpu.w, cpu.w) < 1e-5);
    CHECK(rel_err(gpu.grad, cpu.grad) < 1e-4);

    // Accumulating backward adds onto what the gradient buffer held.
    Tensor<float> grad0 = Tensor<float>::empty({alpha.numel()});
    for (index_t i = 0; i < grad0.numel(); ++i) grad0[i] = float(inputs.normal());
    const Result acc = run_gpu(p, alpha, gw, &grad0);
    Tensor<float> want = grad0.clone();
    for (index_t i = 0; i < want.numel(); ++i) want[i] += cpu.grad[i];
    CHECK(rel_err(acc.grad, want) < 1e-4);
  }
}

TEST_CASE("a search's sequence of calls draws the same codes on CPU and GPU") {
  // As in a search: one generator advancing call after call, for many architecture samples.
  const std::uint64_t seed = std::random_device{}();
  INFO("random seed " << seed);
  PhiloxGenerator inputs(seed + 1);
  cuda::Stream stream;
  cuda::StreamGuard guard(stream);
  for (const Case& c : {Case{Kind::kHardGumbel, 1, {4, 8, Granularity::kEdge, 2}, {1.0, Normalize::kSoftmax}},
                        Case{Kind::kEgs, 8, {4, 8, Granularity::kNode, 2}, {1.0, Normalize::kSoftmax}},
                        Case{Kind::kEgs, 3, {8, 5, Granularity::kNode, 1}, {1.0, Normalize::kRelu}}}) {
    INFO(c.str());
    const Tensor<float> alpha = random_alpha(c, inputs);
    const Tensor<float> gw = Tensor<float>::full({alpha.numel()}, 1.0f);
    PhiloxGenerator cpu_gen(seed), gpu_gen(seed);
    int mismatches = 0;
    for (int call = 0; call < 200; ++call) {
      const Result cpu = run_cpu(c, alpha, gw, cpu_gen);
      cuda::EstimatorParams p = params_of(c);
      p.reserve_noise(gpu_gen);
      mismatches += code_mismatches(run_gpu(p, alpha, gw).w, cpu.w);
    }
    CHECK(mismatches == 0);
    CHECK(gpu_gen.offset() == cpu_gen.offset());
  }
}

TEST_CASE("the kernels reject parameters they cannot run, with a message") {
  cuda::Stream stream;
  const auto check_message = [&](const cuda::EstimatorParams& p, const std::string& part) {
    try {
      gpu_test::estimator_forward(p, nullptr, nullptr, nullptr, stream.handle());
      FAIL("launch accepted bad parameters");
    } catch (const datanas::error& e) {
      CHECK(std::string(e.what()).find(part) != std::string::npos);
    }
  };
  cuda::EstimatorParams p;
  p.kind = cuda::EstimatorKind::kEgs;
  p.draws = 65;
  check_message(p, "M must be in [1, 64]");
  p.draws = 4;
  p.ops = 200;  // the last node's group has 5 * 200 logits
  check_message(p, "exceeds 512");
  p.ops = 8;
  p.kind = cuda::EstimatorKind::kHardGumbel;  // one draw, not 4
  check_message(p, "draws for estimator kind");
  p.draws = 1;
  p.tau = 0;
  check_message(p, "temperature");
}
}
