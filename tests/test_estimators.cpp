// Estimators: their distributions (statistical tests at fixed seeds) and the gradients of
// their surrogates against finite differences.
#include <map>

#include "gradcheck.hpp"
#include "datanas/estimators/estimators.hpp"
#include "datanas/search/sample.hpp"

using namespace datanas;
using namespace datanas::testing;
using namespace datanas::estimators;

namespace {
/// One group of K ops (one edge, edge granularity, a 1-node cell has 2 edges: use group 0).
GroupLayout one_edge_layout(int k) { return {1, k, Granularity::kEdge}; }

VarD alpha_with_row(const std::vector<double>& row) {
  const index_t k = index_t(row.size());
  TensorD t = TensorD::zeros({2, k});  // a 1-node cell has 2 edges; the test looks at edge 0
  for (index_t i = 0; i < k; ++i) t[i] = row[std::size_t(i)];
  return VarD(t, true);
}

std::vector<double> softmax_of(const std::vector<double>& a) {
  double m = *std::max_element(a.begin(), a.end()), s = 0;
  std::vector<double> p(a.size());
  for (std::size_t i = 0; i < a.size(); ++i) s += (p[i] = std::exp(a[i] - m));
  for (auto& v : p) v /= s;
  return p;
}
}  // namespace

TEST_SUITE("cpu") {
TEST_CASE("Softmax gives softmax(alpha); relu normalisation gives relu(a)/sum") {
  PhiloxGenerator gen(1);
  auto a = alpha_with_row({0.5, -1.0, 2.0});
  NoGradGuard ng;
  auto w = mixing_weights(Kind::kSoftmax, 1, a, one_edge_layout(3), {}, gen).value();
  auto p = softmax_of({0.5, -1.0, 2.0});
  for (int k = 0; k < 3; ++k) CHECK(w[k] == doctest::Approx(p[std::size_t(k)]));
  auto r = mixing_weights(Kind::kSoftmax, 1, a, one_edge_layout(3), {1.0, Normalize::kRelu}, gen).value();
  CHECK(r[0] == doctest::Approx(0.5 / 2.5));
  CHECK(r[1] == 0.0);
  CHECK(r[2] == doctest::Approx(2.0 / 2.5));
  CHECK(gen.offset() == 0);  // deterministic estimators draw nothing
}

TEST_CASE("EGS: P(b_k = 1) = 1 - (1 - p_k)^M, |S| <= M, w = b / |S|") {
  const std::vector<double> logits = {1.0, 0.2, -0.5, 0.0, -2.0};
  const auto p = softmax_of(logits);
  auto a = alpha_with_row(logits);
  for (int M : {2, 4, 7}) {
    PhiloxGenerator gen(100 + std::uint64_t(M));
    const int n = 20000;
    std::vector<int> hits(5, 0);
    NoGradGuard ng;
    for (int t = 0; t < n; ++t) {
      auto w = mixing_weights(Kind::kEgs, M, a, one_edge_layout(5), {}, gen).value();
      int size = 0;
      for (int k = 0; k < 5; ++k) size += w[k] > 0;
      REQUIRE(size >= 1);
      REQUIRE(size <= M);
      for (int k = 0; k < 5; ++k) {
        if (w[k] > 0) {
          ++hits[std::size_t(k)];
          REQUIRE(w[k] == doctest::Approx(1.0 / size));
        }
      }
    }
    for (int k = 0; k < 5; ++k) {
      const double expect = 1 - std::pow(1 - p[std::size_t(k)], M);
      const double sd = std::sqrt(expect * (1 - expect) / n);
      CHECK(std::abs(hits[std::size_t(k)] / double(n) - expect) < 4 * sd + 1e-9);
    }
  }
}

TEST_CASE("EGS: P(b = 1_S) matches the multinomial formula of ALGORITHMS.md 2.1") {
  const std::vector<double> logits = {0.3, -0.2, 0.6};
  const auto p = softmax_of(logits);
  auto a = alpha_with_row(logits);
  const int M = 3, n = 30000;
  PhiloxGenerator gen(7);
  std::map<int, int> freq;  // bitmask of S -> count
  NoGradGuard ng;
  for (int t = 0; t < n; ++t) {
    auto w = mixing_weights(Kind::kEgs, M, a, one_edge_layout(3), {}, gen).value();
    int mask = 0;
    for (int k = 0; k < 3; ++k) mask |= (w[k] > 0) << k;
    ++freq[mask];
  }
  // sum over count vectors c (c_j >= 1 on S, sum c = M) of M! / prod c_j! prod p_j^c_j.
  auto formula = [&](int mask) {
    double total = 0;
    for (int c0 = 0; c0 <= M; ++c0)
      for (int c1 = 0; c0 + c1 <= M; ++c1) {
        const int c2 = M - c0 - c1, c[3] = {c0, c1, c2};
        bool ok = true;
        for (int k = 0; k < 3; ++k) ok = ok && ((mask >> k & 1) ? c[k] >= 1 : c[k] == 0);
        if (!ok) continue;
        double term = std::tgamma(M + 1.0);
        for (int k = 0; k < 3; ++k) term *= std::pow(p[std::size_t(k)], c[k]) / std::tgamma(c[k] + 1.0);
        total += term;
      }
    return total;
  };
  double sum_formula = 0;
  for (int mask = 1; mask < 8; ++mask) {
    const double expect = formula(mask);
    sum_formula += expect;
    const double sd = std::sqrt(expect * (1 - expect) / n);
    CHECK(std::abs(freq[mask] / double(n) - expect) < 4 * sd + 1e-9);
  }
  CHECK(sum_formula == doctest::Approx(1.0));
}

TEST_CASE("EGS with M = 1 draws exactly what HardGumbel draws; Gumbel-max picks k with prob p_k") {
  const std::vector<double> logits = {0.1, 1.5, -0.3, 0.7};
  const auto p = softmax_of(logits);
  auto a = alpha_with_row(logits);
  PhiloxGenerator g1(11), g2(11);
  std::vector<int> wins(4, 0);
  const int n = 20000;
  NoGradGuard ng;
  for (int t = 0; t < n; ++t) {
    auto h = mixing_weights(Kind::kHardGumbel, 1, a, one_edge_layout(4), {5.0}, g1).value();
    auto e = mixing_weights(Kind::kEgs, 1, a, one_edge_layout(4), {5.0}, g2).value();
    for (int k = 0; k < 8; ++k) REQUIRE(h[k] == e[k]);
    for (int k = 0; k < 4; ++k) wins[std::size_t(k)] += h[k] == 1.0;
  }
  CHECK(g1.offset() == g2.offset());
  for (int k = 0; k < 4; ++k) {
    const double sd = std::sqrt(p[std::size_t(k)] * (1 - p[std::size_t(k)]) / n);
    CHECK(std::abs(wins[std::size_t(k)] / double(n) - p[std::size_t(k)]) < 4 * sd);
  }
}

TEST_CASE("SoftGumbel: soft samples sum to 1 and their argmax follows p") {
  const std::vector<double> logits = {0.0, 1.0, -1.0};
  const auto p = softmax_of(logits);
  auto a = alpha_with_row(logits);
  PhiloxGenerator gen(5);
  std::vector<int> wins(3, 0);
  const int n = 20000;
  NoGradGuard ng;
  for (int t = 0; t < n; ++t) {
    auto w = mixing_weights(Kind::kSoftGumbel, 1, a, one_edge_layout(3), {0.5}, gen).value();
    CHECK(w[0] + w[1] + w[2] == doctest::Approx(1.0));
    wins[std::size_t(std::max_element(w.data(), w.data() + 3) - w.data())]++;
  }
  for (int k = 0; k < 3; ++k) {
    const double sd = std::sqrt(p[std::size_t(k)] * (1 - p[std::size_t(k)]) / n);
    CHECK(std::abs(wins[std::size_t(k)] / double(n) - p[std::size_t(k)]) < 4 * sd);
  }
}

namespace {
/// The surrogate each straight-through estimator differentiates, evaluated with the noise of a
/// fixed generator state and with the hard decisions (which coordinates are 1, which draw owns
/// each coordinate) frozen at alpha0: value b + (y - y(alpha0)) routed as in the forward pass.
double surrogate_loss(Kind kind, int M, const TensorD& alpha, const TensorD& alpha0,
                      const GroupLayout& layout, const EstimatorConfig& cfg, PhiloxGenerator gen,
                      const TensorD& c) {
  const index_t total = c.numel();
  const int draws = kind == Kind::kEgs ? M : 1;
  const std::uint64_t base = gen.reserve(std::uint64_t(draws) * std::uint64_t(total));
  double loss = 0;
  for (int g = 0; g < layout.count(); ++g) {
    const auto [o, n] = layout.group(g);
    const auto un = static_cast<std::size_t>(n);
    std::vector<double> lp(un), lp0(un), y(un), y0(un);
    estimators::detail::log_probs(alpha.data() + o, n, cfg.normalize, lp.data());
    estimators::detail::log_probs(alpha0.data() + o, n, cfg.normalize, lp0.data());
    if (kind == Kind::kSoftmax) {
      for (index_t k = 0; k < n; ++k) loss += c[o + k] * std::exp(lp[std::size_t(k)]);
      continue;
    }
    std::vector<double> b(un, 0.0);
    std::vector<bool> owned(un, false);
    for (int m = 0; m < draws; ++m) {
      const std::uint64_t first = std::uint64_t(m) * std::uint64_t(total) + std::uint64_t(o);
      estimators::detail::gumbel_softmax(lp.data(), n, cfg.tau, gen, base, first, y.data());
      const index_t h = estimators::detail::gumbel_softmax(lp0.data(), n, cfg.tau, gen, base, first, y0.data());
      if (kind == Kind::kSoftGumbel) {
        for (index_t k = 0; k < n; ++k) b[std::size_t(k)] = y[std::size_t(k)];
      } else if (!owned[std::size_t(h)]) {
        owned[std::size_t(h)] = true;
        b[std::size_t(h)] = 1.0 + y[std::size_t(h)] - y0[std::size_t(h)];
      }
      // Coordinates not selected by any draw: value 0, gradient routed to draw 0.
      if (m == 0 && kind != Kind::kSoftGumbel)
        for (index_t k = 0; k < n; ++k)
          if (k != h) b[std::size_t(k)] = y[std::size_t(k)] - y0[std::size_t(k)];
    }
    double s = 0;
    for (double v : b) s += v;
    for (index_t k = 0; k < n; ++k) {
      const double wk = kind == Kind::kEgs ? b[std::size_t(k)] / s : b[std::size_t(k)];
      loss += c[o + k] * wk;
    }
  }
  return loss;
}
}  // namespace

TEST_CASE("estimator gradients equal finite differences of their surrogates") {
  for (Granularity gran : {Granularity::kEdge, Granularity::kNode}) {
    const GroupLayout layout{2, 4, gran};  // 5 edges x 4 ops
    const TensorD alpha0 = random_tensor({5, 4}, 3, -1.0, 1.0);
    const TensorD alpha_pos = random_tensor({5, 4}, 4, 0.2, 2.0);
    const TensorD c = random_tensor({20}, 5);
    struct Case {
      Kind kind;
      int M;
      Normalize norm;
    };
    for (Case cs : {Case{Kind::kSoftmax, 1, Normalize::kSoftmax}, Case{Kind::kSoftmax, 1, Normalize::kRelu},
                    Case{Kind::kSoftGumbel, 1, Normalize::kSoftmax}, Case{Kind::kHardGumbel, 1, Normalize::kSoftmax},
                    Case{Kind::kEgs, 1, Normalize::kSoftmax}, Case{Kind::kEgs, 3, Normalize::kSoftmax},
                    Case{Kind::kEgs, 4, Normalize::kRelu}}) {
      CAPTURE(int(cs.kind));
      CAPTURE(cs.M);
      const TensorD& a0 = cs.norm == Normalize::kRelu ? alpha_pos : alpha0;
      const EstimatorConfig cfg{0.7, cs.norm};
      const PhiloxGenerator gen(42);
      VarD alpha(a0.clone(), true);
      PhiloxGenerator g = gen;
      clear_tape<double>();
      alpha.zero_grad();
      g = gen;
      VarD w2 = mixing_weights(cs.kind, cs.M, alpha, layout, cfg, g);
      {
        auto [gs, acc] = w2.grad_slot();
        (void)acc;
        gs.copy_from(c);
        tape<double, Cpu>().run_backward();
      }
      const double h = 1e-6;
      for (index_t i = 0; i < a0.numel(); ++i) {
        TensorD ap = a0.clone(), am = a0.clone();
        ap[i] += h;
        am[i] -= h;
        const double numeric = (surrogate_loss(cs.kind, cs.M, ap, a0, layout, cfg, gen, c) -
                                surrogate_loss(cs.kind, cs.M, am, a0, layout, cfg, gen, c)) / (2 * h);
        CHECK(alpha.grad()[i] == doctest::Approx(numeric).epsilon(1e-5).scale(1.0));
      }
    }
  }
}

TEST_CASE("l1_to_code and group probabilities have correct gradients") {
  TensorD code = TensorD::from({6}, {1, 0, 0, 0, 1, 0});
  check_gradients([&](auto& in) { return l1_to_code(in[0], code, 0.1); }, {param({6}, 9, 0.05, 0.9)});
  const GroupLayout layout{1, 3, Granularity::kNode};  // one node group of 2 edges x 3 ops
  check_gradients(
      [&](auto& in) {
        PhiloxGenerator g(0);
        return group_probabilities(in[0], layout, Normalize::kSoftmax, g);
      },
      {param({2, 3}, 10)});
  check_gradients(
      [&](auto& in) {
        PhiloxGenerator g(0);
        return group_probabilities(in[0], layout, Normalize::kRelu, g);
      },
      {param({2, 3}, 11, 0.1, 2.0)});
}

TEST_CASE("group layouts and temperature schedules") {
  const GroupLayout node{4, 8, Granularity::kNode}, edge{4, 8, Granularity::kEdge};
  CHECK(node.edges() == 14);
  CHECK(node.count() == 4);
  CHECK(edge.count() == 14);
  CHECK(node.group(0) == std::pair<index_t, index_t>{0, 16});
  CHECK(node.group(3) == std::pair<index_t, index_t>{9 * 8, 40});
  CHECK(edge.group(13) == std::pair<index_t, index_t>{13 * 8, 8});
  const auto gdas = default_schedule(Kind::kHardGumbel);
  CHECK(gdas.at(0, 250) == doctest::Approx(10.0));
  CHECK(gdas.at(249, 250) == doctest::Approx(0.1));
  CHECK(default_schedule(Kind::kSoftGumbel).at(149, 150) == doctest::Approx(0.03));
  CHECK(default_schedule(Kind::kEgs).at(0, 150) == doctest::Approx(5.0));
  PhiloxGenerator g(1);
  VarD bad(TensorD::zeros({3, 8}), true);
  CHECK_THROWS_WITH_AS(mixing_weights(Kind::kEgs, 4, bad, node, {}, g),
                       doctest::Contains("alpha has shape [3, 8], the cell needs [14, 8]"), datanas::error);
  clear_tape<double>();
}
TEST_CASE("sample_cell draws what the estimator draws: at most M pairs per node, no none, reproducible") {
  search::AlphaMatrix a{14, 8, {}};
  PhiloxGenerator init(3);
  for (int i = 0; i < 14 * 8; ++i) a.logits.push_back(init.normal());
  a.logits[0] = 4.0;  // node 0, edge 0: 'none' very likely, and never listed
  for (int M : {1, 4}) {
    PhiloxGenerator g1(9), g2(9);
    for (int t = 0; t < 200; ++t) {
      const auto c = search::sample_cell(a, search::kDartsOps, 4, Kind::kEgs, M, Normalize::kSoftmax,
                                         Granularity::kNode, g1);
      const auto d = search::sample_cell(a, search::kDartsOps, 4, Kind::kEgs, M, Normalize::kSoftmax,
                                         Granularity::kNode, g2);
      REQUIRE(c.nodes.size() == 4);
      for (std::size_t i = 0; i < 4; ++i) {
        REQUIRE(c.nodes[i].size() <= std::size_t(M));
        REQUIRE(c.nodes[i] == d.nodes[i]);  // same seed, same architecture
        for (const auto& p : c.nodes[i]) {
          REQUIRE(p.op != "none");
          REQUIRE(p.input < int(i) + 2);
        }
      }
    }
  }
  PhiloxGenerator g(1);
  CHECK_THROWS_WITH_AS(search::sample_cell(a, search::kDartsOps, 4, Kind::kSoftmax, 1, Normalize::kSoftmax,
                                           Granularity::kNode, g),
                       doctest::Contains("only hard estimators"), datanas::error);
  CHECK_THROWS_WITH_AS(search::sample_cell(a, search::kDartsOps, 3, Kind::kEgs, 4, Normalize::kSoftmax,
                                           Granularity::kNode, g),
                       doctest::Contains("needs 9 x 8"), datanas::error);
}
}
