// The elementwise kernels (add, scale, relu, the mixed op's weighted sum) against the CPU ops,
// forward and backward, on fresh random inputs with poisoned outputs.
#include <doctest/doctest.h>

#include <array>
#include <cmath>
#include <random>
#include <vector>

#include "datanas/core/cuda.hpp"
#include "datanas/ops/activation.hpp"
#include "datanas/ops/arithmetic.hpp"
#include "gpu_helpers.hpp"

using namespace datanas;

namespace {

using DTensor = Tensor<float, Cuda>;

Tensor<float> random_tensor(index_t n, PhiloxGenerator& gen) {
  Tensor<float> t = Tensor<float>::empty({n});
  for (index_t i = 0; i < n; ++i) t[i] = float(gen.normal());
  return t;
}
/// An uninitialised device tensor filled with NaN, so that unwritten elements fail the checks.
DTensor poisoned(index_t n) {
  DTensor t = DTensor::empty({n});
  cuda::fill_bytes(t, 0xff);
  return t;
}
/// ||got - want|| / ||want|| in double; infinity when got holds a NaN.
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
Tensor<float> plus(const Tensor<float>& a, const Tensor<float>& b) {
  Tensor<float> c = a.clone();
  for (index_t i = 0; i < c.numel(); ++i) c[i] += b[i];
  return c;
}
/// Runs backward from y with dL/dy = gy (a loss node whose backward writes gy).
void backward_with(const Var<float>& y, const Tensor<float>& gy) {
  Var<float> loss(Tensor<float>::zeros({1}));
  record(loss, [y, gy] {
    auto [g, acc] = y.grad_slot();
    for (index_t i = 0; i < gy.numel(); ++i) g[i] = acc ? g[i] + gy[i] : gy[i];
  });
  backward(loss);
}

const index_t kSizes[] = {1, 1000, (index_t(1) << 20) + 3};

}  // namespace

TEST_SUITE("gpu") {
TEST_CASE("add and scale, forward and backward, match the CPU") {
  const std::uint64_t seed = std::random_device{}();
  INFO("random seed " << seed);
  PhiloxGenerator gen(seed);
  cuda::Stream stream;
  cuda::StreamGuard guard(stream);
  const cudaStream_t s = stream.handle();
  for (const index_t n : kSizes) {
    INFO("n = " << n);
    const Tensor<float> a = random_tensor(n, gen), b = random_tensor(n, gen), gy = random_tensor(n, gen);
    const Tensor<float> g0 = random_tensor(n, gen);
    const float k = float(gen.normal());
    Var<float> va(a.clone(), true), vb(b.clone(), true);
    const Var<float> y = add(va, vb);
    const Var<float> z = scale(va, k);
    backward_with(add(y, z), gy);  // dL/da = gy + k gy, dL/db = gy
    const DTensor da = cuda::to_device(a), db = cuda::to_device(b), dgy = cuda::to_device(gy);

    DTensor out = poisoned(n);
    gpu_test::add(n, da.data(), db.data(), out.data(), s);
    CHECK(rel_err(cuda::to_host(out), y.value()) < 1e-6);
    out = poisoned(n);
    gpu_test::scale(n, k, da.data(), out.data(), s);
    CHECK(rel_err(cuda::to_host(out), z.value()) < 1e-6);

    // dL/da: overwrite with gy (add), then accumulate k * gy (scale).
    DTensor ga = poisoned(n);
    gpu_test::store_grad(n, 1.0f, dgy.data(), ga.data(), false, s);
    gpu_test::store_grad(n, k, dgy.data(), ga.data(), true, s);
    CHECK(rel_err(cuda::to_host(ga), va.grad()) < 1e-5);
    // dL/db accumulated onto a buffer that already held g0.
    DTensor gb = cuda::to_device(g0);
    gpu_test::store_grad(n, 1.0f, dgy.data(), gb.data(), true, s);
    CHECK(rel_err(cuda::to_host(gb), plus(g0, vb.grad())) < 1e-6);
  }
}

TEST_CASE("relu forward and backward match the CPU") {
  const std::uint64_t seed = std::random_device{}();
  INFO("random seed " << seed);
  PhiloxGenerator gen(seed);
  cuda::Stream stream;
  cuda::StreamGuard guard(stream);
  const cudaStream_t s = stream.handle();
  for (const index_t n : kSizes) {
    INFO("n = " << n);
    Tensor<float> x = random_tensor(n, gen);
    x[0] = 0.0f;  // relu'(0) = 0 on both backends
    const Tensor<float> gy = random_tensor(n, gen), g0 = random_tensor(n, gen);
    Var<float> vx(x.clone(), true);
    const Var<float> y = relu(vx);
    backward_with(y, gy);
    const DTensor dx = cuda::to_device(x), dgy = cuda::to_device(gy);
    const DTensor dy = poisoned(n);
    gpu_test::relu_forward(n, dx.data(), dy.data(), s);
    CHECK(rel_err(cuda::to_host(dy), y.value()) == 0.0);
    const DTensor g = poisoned(n);
    gpu_test::relu_backward(n, dy.data(), dgy.data(), g.data(), false, s);
    CHECK(rel_err(cuda::to_host(g), vx.grad()) == 0.0);
    const DTensor gacc = cuda::to_device(g0);
    gpu_test::relu_backward(n, dy.data(), dgy.data(), gacc.data(), true, s);
    CHECK(rel_err(cuda::to_host(gacc), plus(g0, vx.grad())) < 1e-6);
  }
}

TEST_CASE("weighted_sum with an index map and a symbolic zero matches the CPU mixed op") {
  const std::uint64_t seed = std::random_device{}();
  INFO("random seed " << seed);
  PhiloxGenerator gen(seed);
  cuda::Stream stream;
  cuda::StreamGuard guard(stream);
  const cudaStream_t s = stream.handle();
  // Term 1 is DARTS' none; terms 1 and 2 share weight 2; weight 3 is named by no term.
  constexpr int kTerms = 5, kWeights = 6;
  const std::array<int, kTerms> index = {0, 2, 2, 4, 1};
  for (const index_t n : kSizes) {
    INFO("n = " << n);
    std::vector<Tensor<float>> xs;
    std::vector<Var<float>> vxs;
    for (int t = 0; t < kTerms; ++t) {
      xs.push_back(random_tensor(n, gen));
      vxs.push_back(t == 1 ? zeros<float>({n}) : Var<float>(xs.back().clone(), true));
    }
    const Tensor<float> w = random_tensor(kWeights, gen), gy = random_tensor(n, gen);
    const Tensor<float> gw0 = random_tensor(kWeights, gen);
    Var<float> vw(w.clone(), true);
    const Var<float> y = weighted_sum<float, Cpu>(vxs, vw, index);
    backward_with(y, gy);

    std::vector<DTensor> dxs;
    std::array<const float*, kTerms> ptrs{};
    for (int t = 0; t < kTerms; ++t) {
      dxs.push_back(cuda::to_device(xs[std::size_t(t)]));
      ptrs[std::size_t(t)] = t == 1 ? nullptr : dxs.back().data();
    }
    const DTensor dw = cuda::to_device(w), dgy = cuda::to_device(gy);
    const DTensor dy = poisoned(n);
    gpu_test::weighted_sum_forward(n, kTerms, ptrs.data(), index.data(), dw.data(), kWeights, dy.data(), s);
    CHECK(rel_err(cuda::to_host(dy), y.value()) < 1e-5);

    // Every term's gradient in one launch: term 1 (none) has none, term 3 adds to what it holds.
    {
      std::vector<DTensor> gs;
      cuda::WeightedGrads<float> grads;
      grads.count = kTerms;
      const Tensor<float> g3 = random_tensor(n, gen);
      for (int t = 0; t < kTerms; ++t) {
        gs.push_back(t == 3 ? cuda::to_device(g3) : poisoned(n));
        grads.g[t] = t == 1 ? nullptr : gs.back().data();
        grads.index[t] = index[std::size_t(t)];
      }
      grads.accumulate = 1u << 3;
      gpu_test::weighted_sum_backward_x(n, grads, dw.data(), kWeights, dgy.data(), s);
      for (int t = 0; t < kTerms; ++t) {
        if (t == 1) continue;
        const Tensor<float>& want = vxs[std::size_t(t)].grad();
        CHECK(rel_err(cuda::to_host(gs[std::size_t(t)]), t == 3 ? plus(g3, want) : want) < 1e-6);
      }
      // One buffer for terms 0 and 4 (an input used twice): overwritten by the first, added to
      // by the second, as the CPU's gradient of a Var that appears twice.
      const DTensor shared = poisoned(n);
      cuda::WeightedGrads<float> twice;
      twice.count = kTerms;
      twice.g[0] = twice.g[4] = shared.data();
      twice.index[0] = index[0];
      twice.index[4] = index[4];
      twice.accumulate = 1u << 4;
      gpu_test::weighted_sum_backward_x(n, twice, dw.data(), kWeights, dgy.data(), s);
      CHECK(rel_err(cuda::to_host(shared), plus(vxs[0].grad(), vxs[4].grad())) < 1e-6);
      twice.index[4] = kWeights;  // out of range: refused on the host
      CHECK_THROWS_AS(gpu_test::weighted_sum_backward_x(n, twice, dw.data(), kWeights, dgy.data(), s),
                      datanas::error);
    }

    const DTensor workspace = poisoned(gpu_test::weighted_sum_dw_workspace(n, kTerms));
    const DTensor gw = poisoned(kWeights);
    gpu_test::weighted_sum_backward_w(n, kTerms, ptrs.data(), index.data(), dgy.data(), kWeights,
                                      gw.data(), false, workspace.data(), s);
    const Tensor<float> gw_host = cuda::to_host(gw);
    CHECK(rel_err(gw_host, vw.grad()) < 1e-4);
    CHECK(gw_host[3] == 0.0f);  // no term names weight 3
    CHECK(gw_host[5] == 0.0f);
    const DTensor gw_acc = cuda::to_device(gw0);
    gpu_test::weighted_sum_backward_w(n, kTerms, ptrs.data(), index.data(), dgy.data(), kWeights,
                                      gw_acc.data(), true, workspace.data(), s);
    CHECK(rel_err(cuda::to_host(gw_acc), plus(gw0, vw.grad())) < 1e-4);
    // Deterministic: the same inputs give the same bits again.
    const DTensor gw_again = poisoned(kWeights);
    gpu_test::weighted_sum_backward_w(n, kTerms, ptrs.data(), index.data(), dgy.data(), kWeights,
                                      gw_again.data(), false, workspace.data(), s);
    CHECK(rel_err(cuda::to_host(gw_again), gw_host) == 0.0);

    // Both gradients in one pass over dy (weighted_sum_backward): the separate launches' bits,
    // with terms 0 and 4 sharing a buffer (4 adds), term 1 a symbolic zero, term 3 adding to
    // what its buffer holds, and dL/dw written or added.
    {
      const Tensor<float> g3 = random_tensor(n, gen);
      auto run = [&](bool fused, bool acc_w) {
        const DTensor shared = poisoned(n), b2 = poisoned(n), b3 = cuda::to_device(g3);
        const DTensor g = acc_w ? cuda::to_device(gw0) : poisoned(kWeights);
        cuda::WeightedGrads<float> grads;
        grads.count = kTerms;
        float* bufs[kTerms] = {shared.data(), nullptr, b2.data(), b3.data(), shared.data()};
        for (int t = 0; t < kTerms; ++t) {
          grads.g[t] = bufs[t];
          grads.index[t] = index[std::size_t(t)];
        }
        grads.accumulate = (1u << 3) | (1u << 4);
        if (fused) {
          gpu_test::weighted_sum_backward(n, kTerms, ptrs.data(), index.data(), grads, dw.data(),
                                          kWeights, dgy.data(), g.data(), acc_w, workspace.data(),
                                          s);
        } else {
          gpu_test::weighted_sum_backward_w(n, kTerms, ptrs.data(), index.data(), dgy.data(),
                                            kWeights, g.data(), acc_w, workspace.data(), s);
          gpu_test::weighted_sum_backward_x(n, grads, dw.data(), kWeights, dgy.data(), s);
        }
        return std::vector<Tensor<float>>{cuda::to_host(shared), cuda::to_host(b2),
                                          cuda::to_host(b3), cuda::to_host(g)};
      };
      for (bool acc_w : {false, true}) {
        CAPTURE(acc_w);
        const auto fused = run(true, acc_w), separate = run(false, acc_w);
        for (std::size_t i = 0; i < fused.size(); ++i) {
          CAPTURE(i);
          CHECK(rel_err(fused[i], separate[i]) == 0.0);
        }
        CHECK(rel_err(fused[0], plus(vxs[0].grad(), vxs[4].grad())) < 1e-6);
        CHECK(rel_err(fused[3], acc_w ? plus(gw0, vw.grad()) : vw.grad()) < 1e-4);
      }
      // terms and grads must describe the same terms.
      cuda::WeightedGrads<float> bad;
      bad.count = kTerms - 1;
      CHECK_THROWS_WITH_AS(gpu_test::weighted_sum_backward(n, kTerms, ptrs.data(), index.data(),
                                                           bad, dw.data(), kWeights, dgy.data(),
                                                           gw.data(), false, workspace.data(), s),
                           doctest::Contains("5 terms but 4 term gradients"), datanas::error);
      bad.count = kTerms;
      const DTensor b = poisoned(n);
      bad.g[2] = b.data();
      bad.index[2] = 1;  // term 2's weight is 2
      CHECK_THROWS_WITH_AS(gpu_test::weighted_sum_backward(n, kTerms, ptrs.data(), index.data(),
                                                           bad, dw.data(), kWeights, dgy.data(),
                                                           gw.data(), false, workspace.data(), s),
                           doctest::Contains("term 2 has weight index 2 but its gradient 1"),
                           datanas::error);
    }
  }
}

TEST_CASE("weighted_sum rejects a weight index out of range") {
  cuda::Stream stream;
  const std::array<const float*, 1> ptrs = {nullptr};
  const std::array<int, 1> index = {7};
  CHECK_THROWS_AS(gpu_test::weighted_sum_forward(4, 1, ptrs.data(), index.data(), nullptr, 6, nullptr,
                                                 stream.handle()),
                  datanas::error);
}
}
