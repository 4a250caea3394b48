// Derivation rules on alpha alone (ALGORITHMS.md §2.2): DARTS top-2, argmax, DATA's most probable
// EGS code, the exact-set probability they rest on, and the alpha.json format.
#include <doctest/doctest.h>

#include <array>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include "datanas/search/derive.hpp"

using namespace datanas;
using namespace datanas::search;

namespace {

// A tiny op set for hand computation: column 0 is none.
const std::array<std::string_view, 3> kOps3 = {"none", "a", "b"};

AlphaMatrix mat(const std::vector<std::vector<double>>& rows) {
  AlphaMatrix m;
  m.rows = int(rows.size());
  m.cols = int(rows.at(0).size());
  for (const auto& r : rows) m.logits.insert(m.logits.end(), r.begin(), r.end());
  return m;
}

AlphaMatrix random_alpha(int rows, int cols, std::mt19937_64& rng, double scale) {
  std::normal_distribution<double> n(0.0, scale);
  AlphaMatrix m{rows, cols, {}};
  for (int i = 0; i < rows * cols; ++i) m.logits.push_back(n(rng));
  return m;
}

using Node = std::vector<OpInput>;

// Reference 1: enumerate all K^M draw sequences from the full distribution p and add up those
// whose set of distinct categories is exactly `mask`.
double brute_force(const std::vector<double>& p, unsigned mask, int M) {
  const int K = int(p.size());
  double total = 0;
  std::vector<int> seq(std::size_t(M), 0);
  for (;;) {
    unsigned hit = 0;
    double pr = 1;
    for (int c : seq) hit |= 1u << c, pr *= p[std::size_t(c)];
    if (hit == mask) total += pr;
    int i = 0;
    while (i < M && ++seq[std::size_t(i)] == K) seq[std::size_t(i++)] = 0;
    if (i == M) break;
  }
  return total;
}

// Reference 2: the multinomial sum of ALGORITHMS.md §2.1 over count vectors c_j >= 1, sum M.
double multinomial(const std::vector<double>& p, int M) {
  const int s = int(p.size());
  if (s == 0) return M == 0 ? 1.0 : 0.0;
  double total = 0;
  std::vector<int> c(std::size_t(s), 1);
  std::function<void(int, int)> rec = [&](int j, int left) {
    if (j == s - 1) {
      if (left < 1) return;
      c[std::size_t(j)] = left;
      double term = std::tgamma(M + 1.0);
      for (int k = 0; k < s; ++k)
        term *=
            std::pow(p[std::size_t(k)], c[std::size_t(k)]) / std::tgamma(c[std::size_t(k)] + 1.0);
      total += term;
      return;
    }
    for (int x = 1; x <= left - (s - 1 - j); ++x) {
      c[std::size_t(j)] = x;
      rec(j + 1, left - x);
    }
  };
  rec(0, M);
  return total;
}

// Reference 3: inclusion-exclusion sum_{T subset S} (-1)^{|S|-|T|} (sum_T p)^M.
double inclusion_exclusion(const std::vector<double>& p, int M) {
  const std::size_t s = p.size();
  double total = 0;
  for (unsigned t = 0; t < (1u << s); ++t) {
    double sum = 0;
    int size = 0;
    for (std::size_t j = 0; j < s; ++j)
      if (t >> j & 1u) sum += p[j], ++size;
    total += ((int(s) - size) % 2 ? -1.0 : 1.0) * std::pow(sum, M);
  }
  return total;
}

std::vector<double> random_distribution(int K, std::mt19937_64& rng) {
  std::gamma_distribution<double> g(0.7, 1.0);
  std::vector<double> p(static_cast<std::size_t>(K));
  double sum = 0;
  for (auto& x : p) sum += x = g(rng) + 1e-3;
  for (auto& x : p) x /= sum;
  return p;
}

}  // namespace

TEST_SUITE_BEGIN("cpu");

TEST_CASE("edge bookkeeping: 2 + 3 + ... + (n + 1) edges in node order") {
  CHECK(edges_for_nodes(4) == 14);
  CHECK(edges_for_nodes(1) == 2);
  CHECK(edge_offset(0) == 0);
  CHECK(edge_offset(1) == 2);
  CHECK(edge_offset(2) == 5);
  CHECK(edge_offset(3) == 9);
  CHECK(nodes_for_edges(14) == 4);
  CHECK(nodes_for_edges(20) == 5);
  CHECK(nodes_for_edges(2) == 1);
  CHECK(nodes_for_edges(13) == -1);
  CHECK(nodes_for_edges(0) == -1);
}

TEST_CASE("prob_exact_set equals brute-force enumeration of all K^M draw sequences") {
  std::mt19937_64 rng(7);
  for (int K = 2; K <= 4; ++K)
    for (int M = 1; M <= 5; ++M) {
      const auto p = random_distribution(K, rng);
      double total = 0;
      for (unsigned mask = 1; mask < (1u << K); ++mask) {
        std::vector<double> in_set;
        for (int k = 0; k < K; ++k)
          if (mask >> k & 1u) in_set.push_back(p[std::size_t(k)]);
        const double exact = prob_exact_set(in_set, M);
        CAPTURE(K);
        CAPTURE(M);
        CAPTURE(mask);
        CHECK(exact == doctest::Approx(brute_force(p, mask, M)).epsilon(1e-12));
        total += exact;
      }
      CHECK(total == doctest::Approx(1.0).epsilon(1e-12));  // some set is always hit
    }
}

TEST_CASE("prob_exact_set equals the multinomial sum and inclusion-exclusion") {
  std::mt19937_64 rng(11);
  for (int s = 1; s <= 6; ++s)
    for (int M = 1; M <= 9; ++M) {
      auto p = random_distribution(s + 2, rng);
      p.resize(std::size_t(s));  // a strict subset: its members sum to < 1
      CAPTURE(s);
      CAPTURE(M);
      const double exact = prob_exact_set(p, M);
      if (s > M) {
        CHECK(exact == 0.0);
        continue;
      }
      CHECK(exact == doctest::Approx(multinomial(p, M)).epsilon(1e-12));
      CHECK(exact == doctest::Approx(inclusion_exclusion(p, M)).epsilon(1e-9));
    }
  // Closed forms: singletons p^M; M draws on M members: M! prod p; M = 2 pair: 2 p q.
  const std::vector<double> one = {0.3}, pair = {0.5, 0.3}, three = {0.2, 0.3, 0.1};
  CHECK(prob_exact_set(one, 4) == doctest::Approx(0.0081));
  CHECK(prob_exact_set(pair, 2) == doctest::Approx(0.3));
  CHECK(prob_exact_set(three, 3) == doctest::Approx(6 * 0.2 * 0.3 * 0.1));
  CHECK(prob_exact_set(std::vector<double>{}, 0) == 1.0);
  CHECK(prob_exact_set(std::vector<double>{}, 3) == 0.0);
  // Tiny probabilities: no cancellation (inclusion-exclusion loses every digit here).
  const std::vector<double> tiny = {1e-6, 2e-6, 3e-6};
  CHECK(prob_exact_set(tiny, 3) == doctest::Approx(6e-18 * 1 * 2 * 3).epsilon(1e-12));
  CHECK_THROWS_AS((void)prob_exact_set(pair, -1), datanas::error);
  CHECK_THROWS_AS((void)prob_exact_set(std::vector<double>{-0.1}, 2), datanas::error);
}

TEST_CASE("DARTS rule: none never chosen, distinct edges, softmax ranking, ties") {
  // Node 0: edge 0 is dominated by none (softmax 0.9998), but its best non-none op still
  // competes; edge 1's best is b. Two edges only: both kept, best first.
  CHECK(derive_darts(mat({{10, 1, 0}, {0, 0, 2}}), kOps3).nodes ==
        std::vector<Node>{{{"b", 1}, {"a", 0}}});

  // Node 1's edge 0 holds the two largest (edge, op) probabilities (b 0.525, a 0.475); a rule
  // picking the top-2 pairs would take both from input 0. DARTS takes distinct edges: edge 0's b,
  // then edge 1 (1/3 each: op tie -> a) over edge 2 (none 0.58, a = b = 0.21).
  const AlphaMatrix two = mat({{0, 0, 1}, {0, 2, 0}, {-20, 0, 0.1}, {0, 0, 0}, {0, -1, -1}});
  const CellGenotype c = derive_darts(two, kOps3);
  CHECK(c.nodes == std::vector<Node>{{{"a", 1}, {"b", 0}}, {{"b", 0}, {"a", 1}}});
  CHECK(c.concat == std::vector<int>{2, 3});

  // Equal scores: lower edge first; equal ops: lower op index.
  CHECK(derive_darts(mat({{0, 0, 0}, {0, 0, 0}, {0, 0, 0}, {0, 0, 0}, {0, 0, 0}}), kOps3).nodes ==
        std::vector<Node>{{{"a", 0}, {"a", 1}}, {{"a", 0}, {"a", 1}}});

  // Rank by softmax probability, never raw alpha: node 1's raw maxima are 2 (edge 0), 1.5
  // (edge 1), 1.9 (edge 2), but the probabilities are 0.468, 0.817, 0.869.
  const AlphaMatrix raw = mat({{0, 0, 0}, {0, 0, 0}, {0, 2, 2}, {0, 1.5, -5}, {0, 1.9, -5}});
  CHECK(derive_darts(raw, kOps3).nodes[1] == Node{{"a", 2}, {"a", 1}});
  // An explicit node count that disagrees with the rows is an error.
  CHECK_THROWS_WITH_AS((void)derive_darts(raw, kOps3, 3), "alpha has 5 edges but 3 nodes need 9",
                       datanas::error);
}

TEST_CASE("argmax rule: every edge kept with its argmax, none included") {
  const CellGenotype c =
      derive_argmax(mat({{10, 1, 0}, {0, 2, 2}, {0, 1, 3}, {5, 0, 0}, {0, 0, -1}}), kOps3);
  CHECK(c.nodes ==
        std::vector<Node>{{{"none", 0}, {"a", 1}}, {{"b", 0}, {"none", 1}, {"none", 2}}});
  CHECK(c.concat == std::vector<int>{2, 3});
}

TEST_CASE("node probabilities: per node, per edge, relu, uniform fallback") {
  const AlphaMatrix a = mat({{0, std::log(3.0), 0}, {0, 0, std::log(2.0)}});
  const auto node = node_probabilities(a, 0, Normalize::kSoftmax, Granularity::kNode);
  const std::vector<double> want_node = {1 / 9.0, 3 / 9.0, 1 / 9.0, 1 / 9.0, 1 / 9.0, 2 / 9.0};
  const auto edge = node_probabilities(a, 0, Normalize::kSoftmax, Granularity::kEdge);
  const std::vector<double> want_edge = {1 / 10.0, 3 / 10.0, 1 / 10.0, 1 / 8.0, 1 / 8.0, 2 / 8.0};
  const auto relu =
      node_probabilities(mat({{-1, 2, 0}, {1, 0.5, 0.5}}), 0, Normalize::kRelu, Granularity::kNode);
  const std::vector<double> want_relu = {0, 0.5, 0, 0.25, 0.125, 0.125};
  const auto relu_edge = node_probabilities(mat({{-1, -2, 0}, {1, 0.5, 0.5}}), 0, Normalize::kRelu,
                                            Granularity::kEdge);
  const std::vector<double> want_relu_edge = {1 / 6.0, 1 / 6.0, 1 / 6.0, 0.25, 0.125, 0.125};
  for (std::size_t i = 0; i < 6; ++i) {
    CAPTURE(i);
    CHECK(node[i] == doctest::Approx(want_node[i]));
    CHECK(edge[i] == doctest::Approx(want_edge[i]));
    CHECK(relu[i] == doctest::Approx(want_relu[i]));
    CHECK(relu_edge[i] == doctest::Approx(want_relu_edge[i]));
  }
  const auto uniform =
      node_probabilities(mat({{0, -1, 0}, {-2, 0, -0.5}}), 0, Normalize::kRelu, Granularity::kNode);
  for (double p : uniform) CHECK(p == doctest::Approx(1 / 6.0));
}

TEST_CASE("DATA rule: the merged none winning alone falls back to the best non-none pair") {
  // Per-node softmax: none entries 0.4905 each, merged 0.981; b on input 1 is the best pair
  // (0.009). P_4(top-1 = {none}) = 0.981^4 = 0.93 beats every larger set, so none wins alone.
  const AlphaMatrix a = mat({{5, 0, 0}, {5, 0, 1}});
  const auto d = data_node_decision(a, kOps3, 0, 4, Normalize::kSoftmax, Granularity::kNode);
  REQUIRE(d.ranked.size() == 5);
  CHECK(d.ranked[0].is_none());
  const double e5 = std::exp(5.0), z = 2 * e5 + 3 + std::exp(1.0);
  CHECK(d.ranked[0].p == doctest::Approx(2 * e5 / z));
  CHECK(d.p_top[0] == doctest::Approx(std::pow(2 * e5 / z, 4)));
  CHECK(d.best == 1);
  CHECK(d.fallback);
  CHECK(derive_data(a, kOps3, 0, 4).nodes == std::vector<Node>{{{"b", 1}}});
  // The DARTS rule on the same alpha still keeps two pairs.
  CHECK(derive_darts(a, kOps3).nodes == std::vector<Node>{{{"b", 1}, {"a", 0}}});
}

TEST_CASE("DATA rule with relu normalisation: hand-computed P_M and i*") {
  // relu probabilities a0 = 0.5, b0 = 0.3, a1 = 0.2 (none columns 0).
  const AlphaMatrix a = mat({{0, 0.5, 0.3}, {0, 0.2, 0}});
  auto derive = [&](const AlphaMatrix& x, int M) {
    return derive_data(x, kOps3, 1, M, Normalize::kRelu, Granularity::kNode).nodes.at(0);
  };
  // M = 1: the mode is the single best pair.
  CHECK(derive(a, 1) == Node{{"a", 0}});
  // M = 2: P(top-1) = 0.25 < P(top-2) = 2 * 0.5 * 0.3 = 0.3.
  CHECK(derive(a, 2) == Node{{"a", 0}, {"b", 0}});
  // M = 4: P = 0.0625, 0.339, 0.36, 0 -> i* = 3.
  const auto d = data_node_decision(a, kOps3, 0, 4, Normalize::kRelu, Granularity::kNode);
  REQUIRE(d.p_top.size() == 4);
  CHECK(d.p_top[0] == doctest::Approx(0.0625));
  CHECK(d.p_top[1] == doctest::Approx(0.4096 - 0.0625 - 0.0081));
  CHECK(d.p_top[2] == doctest::Approx(1 - (0.4096 + 0.2401 + 0.0625) + (0.0625 + 0.0081 + 0.0016)));
  CHECK(d.p_top[3] == 0.0);
  CHECK(d.best == 3);
  CHECK_FALSE(d.fallback);
  CHECK(derive(a, 4) == Node{{"a", 0}, {"b", 0}, {"a", 1}});
  CHECK(derive(a, 7) == Node{{"a", 0}, {"b", 0}, {"a", 1}});
  // relu is scale invariant and ignores negative logits.
  CHECK(derive(mat({{0, 5, 3}, {0, 2, 0}}), 4) == Node{{"a", 0}, {"b", 0}, {"a", 1}});
  CHECK(derive(mat({{-3, 0.5, 0.3}, {-1, 0.2, -7}}), 4) == Node{{"a", 0}, {"b", 0}, {"a", 1}});
  // All logits <= 0: uniform 1/6; merged none 1/3 ranks first, then a0, b0 (ties: lower edge,
  // lower op). P_4 = 0.0123, 0.0494, 0.0741, 0.0370 -> i* = 3 -> none dropped -> a0, b0.
  const auto u = data_node_decision(mat({{0, -1, 0}, {-2, 0, -0.5}}), kOps3, 0, 4, Normalize::kRelu,
                                    Granularity::kNode);
  CHECK(u.best == 3);
  CHECK(u.p_top[3] == doctest::Approx(24.0 / 3 / 216));
  CHECK(derive(mat({{0, -1, 0}, {-2, 0, -0.5}}), 4) == Node{{"a", 0}, {"b", 0}});
}

TEST_CASE("DATA rule keeps several ops on one input; equal probabilities by op order") {
  // relu: a0 = b0 = 0.4, a1 = b1 = 0.1; P_4 = 0.0256, 0.3584, 0.1728, ... -> the two ops of input
  // 0.
  const AlphaMatrix a = mat({{0, 0.4, 0.4}, {0, 0.1, 0.1}});
  const auto d = data_node_decision(a, kOps3, 0, 4, Normalize::kRelu, Granularity::kNode);
  CHECK(d.p_top[1] == doctest::Approx(0.4096 - 2 * 0.0256));
  CHECK(d.p_top[2] == doctest::Approx(0.6561 - (0.4096 + 0.0625 + 0.0625) + (0.0512 + 0.0001)));
  CHECK(derive_data(a, kOps3, 1, 4, Normalize::kRelu).nodes[0] == Node{{"a", 0}, {"b", 0}});
}

TEST_CASE("DATA rule: per-edge and per-node granularity differ on a crafted alpha") {
  // Edge 1's logits are all tiny: per node it carries almost no mass (a0 = 0.951, P_4(top-1) =
  // 0.82); per edge it carries half the node, b1 = 0.288, and P_4 = 0.052, 0.283, 0.191, 0.045
  // -> i* = 2.
  const AlphaMatrix a = mat({{0, 3, -9}, {-5, -5, -4}});
  CHECK(derive_data(a, kOps3, 1, 4, Normalize::kSoftmax, Granularity::kNode).nodes[0] ==
        Node{{"a", 0}});
  CHECK(derive_data(a, kOps3, 1, 4, Normalize::kSoftmax, Granularity::kEdge).nodes[0] ==
        Node{{"a", 0}, {"b", 1}});
  const auto d = data_node_decision(a, kOps3, 0, 4, Normalize::kSoftmax, Granularity::kEdge);
  CHECK(d.best == 2);
  CHECK(d.ranked[2].is_none());  // merged none: 0.0237 + 0.106
  CHECK(d.ranked[2].p == doctest::Approx(std::exp(0.0) / (1 + std::exp(3.0) + std::exp(-9.0)) / 2 +
                                         1 / (2 + std::exp(1.0)) / 2));
}

TEST_CASE("DATA rule: i* is the argmax of P_M over the top-i sets (random alphas)") {
  std::mt19937_64 rng(3);
  for (int trial = 0; trial < 40; ++trial) {
    const AlphaMatrix a = random_alpha(14, 8, rng, trial % 2 ? 1.5 : 0.3);
    const int M = 1 + trial % 8;
    const Normalize norm = trial % 3 == 0 ? Normalize::kRelu : Normalize::kSoftmax;
    const Granularity gran = trial % 5 < 2 ? Granularity::kEdge : Granularity::kNode;
    for (int node = 0; node < 4; ++node) {
      CAPTURE(trial);
      CAPTURE(node);
      const auto d = data_node_decision(a, kDartsOps, node, M, norm, gran);
      double sum = 0;
      for (std::size_t r = 0; r < d.ranked.size(); ++r) {
        sum += d.ranked[r].p;
        if (r) CHECK(d.ranked[r - 1].p >= d.ranked[r].p);
      }
      CHECK(sum == doctest::Approx(1.0));
      CHECK(d.ranked.size() == std::size_t((node + 2) * 7 + 1));
      REQUIRE(d.p_top.size() == std::size_t(M));
      std::vector<double> top;
      int argmax = 1;
      for (int i = 1; i <= M; ++i) {
        top.push_back(d.ranked[std::size_t(i - 1)].p);
        CHECK(d.p_top[std::size_t(i - 1)] == doctest::Approx(multinomial(top, M)).epsilon(1e-10));
        if (d.p_top[std::size_t(i - 1)] > d.p_top[std::size_t(argmax - 1)]) argmax = i;
      }
      CHECK(d.best == argmax);
      std::vector<DataNodeDecision::Category> want;
      for (int r = 0; r < d.best; ++r)
        if (!d.ranked[std::size_t(r)].is_none()) want.push_back(d.ranked[std::size_t(r)]);
      CHECK(d.fallback == want.empty());
      REQUIRE(d.kept.size() == (want.empty() ? 1 : want.size()));
      for (std::size_t k = 0; k < want.size(); ++k) {
        CHECK(d.kept[k].edge == want[k].edge);
        CHECK(d.kept[k].op == want[k].op);
      }
    }
    const CellGenotype c = derive_data(a, kDartsOps, 0, M, norm, gran);
    validate(c, "normal", kDartsOps, 4);
    for (const auto& n : c.nodes) CHECK(int(n.size()) <= M);
  }
}

TEST_CASE("derive(): both cells, op names from the file, errors name the cell") {
  std::mt19937_64 rng(5);
  AlphaPair a{random_alpha(14, 8, rng, 1.0), random_alpha(14, 8, rng, 1.0), {}};
  const Genotype darts = derive(a, {.rule = DeriveRule::kDarts});
  validate(darts, kDartsOps, 4);
  CHECK(is_darts_form(darts));
  for (const auto& n : darts.normal.nodes) CHECK(n[0].input != n[1].input);
  CHECK(darts.normal == derive_darts(a.normal, kDartsOps));
  const Genotype arg = derive(a, {.rule = DeriveRule::kArgmax});
  CHECK(arg.reduce.nodes[3].size() == 5);
  const Genotype data = derive(a, {.M = 7, .granularity = Granularity::kEdge});
  validate(data, kDartsOps, 4);
  CHECK(data.reduce ==
        derive_data(a.reduce, kDartsOps, 4, 7, Normalize::kSoftmax, Granularity::kEdge));
  CHECK(data.normal.concat == std::vector<int>{2, 3, 4, 5});

  AlphaPair small{mat({{0, 1, 0}, {0, 0, 2}}), mat({{0, 0, 1}, {3, 0, 0}}), {"none", "x", "y"}};
  CHECK(to_text(derive(small, {.rule = DeriveRule::kDarts})) ==
        "Genotype(normal=[('y', 1), ('x', 0)], normal_concat=[2], reduce=[('y', 0), ('x', 1)], "
        "reduce_concat=[2])");
  CHECK_THROWS_WITH_AS(
      (void)derive(small, kDartsOps),
      "normal cell: alpha has 3 columns but the op set has 8 ops (none, max_pool_3x3, "
      "avg_pool_3x3, skip_connect, sep_conv_3x3, sep_conv_5x5, dil_conv_3x3, "
      "dil_conv_5x5)",
      datanas::error);
  small.reduce.logits[4] = std::nan("");
  CHECK_THROWS_WITH_AS((void)derive(small),
                       "reduce cell: alpha edge 1, op 1 (x): logit nan is not finite",
                       datanas::error);
  small.reduce.logits[4] = 0;
  CHECK_THROWS_WITH_AS((void)derive(small, {.M = 0}),
                       "normal cell: DATA rule: M must be >= 1, got 0", datanas::error);
  const std::array<std::string_view, 1> only_none = {"none"};
  CHECK_THROWS_AS((void)derive_darts(mat({{1}, {2}}), only_none), datanas::error);
}

TEST_CASE("alpha JSON: exact round trip, errors name the file, cell and edge") {
  std::mt19937_64 rng(9);
  AlphaPair a{random_alpha(14, 8, rng, 1e-3), random_alpha(14, 8, rng, 1e-3), {}};
  const std::string text = alpha_to_json(a);
  CHECK(text.starts_with("{\n  \"normal\": [\n    ["));
  CHECK(alpha_from_json(text) == a);
  a.ops.assign(kDartsOps.begin(), kDartsOps.end());
  CHECK(alpha_from_json(alpha_to_json(a)) == a);
  // Unknown keys (metadata) are ignored.
  CHECK(
      alpha_from_json(R"({"epoch": 3, "normal": [[1, 2], [3, 4]], "reduce": [[0, 0], [0, -1e-3]]})")
          .reduce.logits == std::vector<double>{0, 0, 0, -1e-3});

  const std::string path = "test_derive_alpha.json";
  { std::ofstream(path) << text; }
  CHECK(read_alpha_json(path).normal == a.normal);
  CHECK_THROWS_WITH_AS((void)read_alpha_json(path, 5),
                       "test_derive_alpha.json: normal has 14 edges, but 5 nodes need 20",
                       datanas::error);
  std::remove(path.c_str());
  CHECK_THROWS_WITH_AS((void)read_alpha_json("/nonexistent/alpha.json"),
                       "cannot open alpha file '/nonexistent/alpha.json'", datanas::error);

  auto bad = [](const char* json, const char* message) {
    CAPTURE(json);
    CHECK_THROWS_WITH_AS((void)alpha_from_json(json, "a.json"), message, datanas::error);
  };
  bad(R"({"normal": [[1, 2, 3], [1, 2]], "reduce": [[1, 2, 3], [1, 2, 3]]})",
      "a.json: normal edge 1: 2 logits, but edge 0 has 3 (ragged rows)");
  bad(R"({"normal": [[1, 2], [1, 2], [1, 2]], "reduce": [[1, 2], [1, 2], [1, 2]]})",
      "a.json: normal has 3 edges, which is not 2 + 3 + ... + (n + 1) for any node count n (2 "
      "nodes: "
      "5 edges, 3: 9, 4: 14, 5: 20)");
  bad(R"({"normal": [[1, 2], [1, "2"]], "reduce": [[1, 2], [1, 2]]})",
      "a.json: normal edge 1, op 1: expected a number, found a string");
  bad(R"({"normal": [[1, 2], 7], "reduce": [[1, 2], [1, 2]]})",
      "a.json: normal edge 1: expected an array of logits, found the number 7");
  bad(R"({"normal": [[1, 2], [1, 2]]})",
      "a.json: missing \"reduce\" (expected {\"normal\": [[K logits] per edge], \"reduce\": "
      "[...]})");
  bad(R"({"normal": [[1, 2], [1, 2]], "reduce": [[1, 2, 3], [1, 2, 3]]})",
      "a.json: normal is 2 x 2 but reduce is 2 x 3 (edges x ops)");
  bad(R"({"normal": [[1, 2], [1, 2]], "reduce": [[1, 2], [1, 2]], "ops": ["none"]})",
      "a.json: \"ops\": expected an array of 2 op names (one per column)");
  bad(R"({"normal": [[1, 2], [1, 2]], "reduce": [[1, 2], [1, 2]], "ops": ["a", "a"]})",
      "a.json: ops[1]: 'a' appears twice");
  bad(R"({"normal": [], "reduce": []})", "a.json: \"normal\" has no edges");
  bad(R"({"normal": [[]], "reduce": []})", "a.json: normal edge 0: no logits");
  bad(R"([[1, 2]])",
      "a.json: expected an object {\"normal\": [...], \"reduce\": [...]}, found an array");
  bad(R"({"normal": [[1, 2], [1, 2]], "reduce": [[1, 2], [1, 2]],})",
      "a.json, offset 56 (line 1, column 57): expected '\"' starting an object key, found '}'");
}

TEST_SUITE_END();
