// The recurrent cell and language model of the DARTS RNN space: finite-difference gradient
// checks (double) of the evaluation cell and of the search cell through several time steps,
// including the architecture gradient; estimator integration (EGS samples, sparse mode);
// perplexity = exp(mean cross-entropy) on a toy corpus.
#include "../gradcheck.hpp"
#include "datanas/search/rnn_searcher.hpp"
#include "datanas/spaces/rnn_space.hpp"
#include "datanas/train/language_model.hpp"

using namespace datanas;
using namespace datanas::testing;
using namespace datanas::spaces::rnn;

namespace {

spaces::rnn::RnnConfig tiny_config(double dropout) {
  RnnConfig c;
  c.vocab = 7;
  c.emsize = c.nhid = 3;
  c.dropout = c.dropouth = c.dropoutx = c.dropouti = c.dropoute = dropout;
  c.init_range = 0.6;  // larger than 0.04 so that the activations are far from linear
  return c;
}

// [steps, batch] ids
Tensor<std::int32_t> tokens(index_t steps, index_t batch, std::uint64_t seed) {
  PhiloxGenerator g(seed);
  Tensor<std::int32_t> t = Tensor<std::int32_t>::empty({steps, batch});
  for (index_t i = 0; i < t.numel(); ++i) t[i] = std::int32_t(g.next_block().v[0] % 7);
  return t;
}

// The model's logits over a window as a function of its parameters, with the same dropout
// masks on every call, from a non-zero initial state.
template <class Model>
VarD window_logits(const Model& m, const Tensor<std::int32_t>& ids, const VarD& w = {}, bool sparse = false) {
  PhiloxGenerator gen(77);
  TensorD h0 = random_tensor({ids.dim(1), m.config().nhid}, 5, -0.5, 0.5);
  return m.forward(ids, h0, gen, w, sparse).logits;
}

using SoftmaxSpace = RecurrentSearchSpace<DartsRnnOps, 8, estimators::Softmax>;
using GumbelSpace = RecurrentSearchSpace<DartsRnnOps, 3, estimators::SoftGumbel, search::Granularity::kEdge>;
using EgsSpace = RecurrentSearchSpace<DartsRnnOps, 8, estimators::EGS<2>>;

}  // namespace

TEST_SUITE("cpu") {
TEST_CASE("evaluation cell (DARTS_V2): gradients through 3 time steps, dropout on") {
  PhiloxGenerator init(1);
  RnnEvalModel<double> m(tiny_config(0.3), search::RNN_DARTS_V2, init);
  CHECK(m.parameter_count() == 7 * 3 + 6 * 6 + 8 * 3 * 6 + 7);
  const auto ids = tokens(3, 2, 11);
  check_gradients([&](auto&) { return window_logits(m, ids); }, m.parameters(), 1e-6);
}

TEST_CASE("evaluation cell of a DATA nested genotype (several terms per node), evaluation mode") {
  auto g = search::parse_recurrent_genotype(
      "Genotype(recurrent=[[('relu', 0), ('tanh', 0)], [('identity', 1), ('sigmoid', 0)], [('relu', 2)]], "
      "concat=[1, 3])");
  PhiloxGenerator init(2);
  RnnEvalModel<double> m(tiny_config(0.0), g, init);
  m.eval();
  const auto ids = tokens(4, 2, 12);
  check_gradients([&](auto&) { return window_logits(m, ids); }, m.parameters(), 1e-6);
}

TEST_CASE("evaluation cell: h_t by hand for a one-node cell") {
  // One node: s1 = s0 + sig(c1)(relu(h1) - s0); h_t = s1. Weights set by hand, no dropout.
  PhiloxGenerator init(3);
  RnnConfig c = tiny_config(0.0);
  c.emsize = c.nhid = 1;
  c.vocab = 2;
  RnnEvalModel<double> m(c, search::parse_recurrent_genotype("Genotype(recurrent=[('relu', 0)], concat=range(1, 2))"),
                         init);
  m.eval();
  auto params = m.parameters();  // encoder [2,1], W0 [2,2], W1 [1,2], bias [2]
  params[0].value()[0] = 0.5, params[0].value()[1] = -1.0;
  const double w0[] = {0.2, -0.3, 0.7, 0.1};  // rows: x, h; columns: c0, h0
  for (int i = 0; i < 4; ++i) params[1].value()[i] = w0[i];
  params[2].value()[0] = 0.4, params[2].value()[1] = 0.9;
  Tensor<std::int32_t> ids = Tensor<std::int32_t>::from({1, 1}, {1});
  PhiloxGenerator gen(0);
  const auto out = m.forward(ids, TensorD::from({1, 1}, {0.25}), gen);
  const double x = -1.0, h = 0.25;
  const double c0 = x * 0.2 + h * 0.7, hh0 = x * -0.3 + h * 0.1;
  const double s0 = h + (1 / (1 + std::exp(-c0))) * (std::tanh(hh0) - h);
  const double c1 = s0 * 0.4, hh1 = s0 * 0.9;
  const double s1 = s0 + (1 / (1 + std::exp(-c1))) * (std::max(hh1, 0.0) - s0);
  CHECK(out.hidden[0] == doctest::Approx(s1).epsilon(1e-12));
  // Tied decoder: logits = h_t * encoder row + bias (0).
  CHECK(out.logits.value()[1] == doctest::Approx(s1 * -1.0).epsilon(1e-12));
}

TEST_CASE("search cell (softmax): weight and alpha gradients through 3 time steps") {
  PhiloxGenerator init(4);
  RnnSupernet<double, SoftmaxSpace> net(tiny_config(0.2), init);
  CHECK(net.alpha().shape() == Shape{36, 5});
  // Spread alpha so that the softmax is far from uniform.
  for (index_t i = 0; i < 180; ++i) net.alpha().value()[i] = random_tensor({180}, 9, -1, 1)[i];
  const auto ids = tokens(3, 3, 13);
  auto inputs = net.parameters();
  inputs.push_back(net.alpha());
  check_gradients(
      [&](auto&) {
        PhiloxGenerator noise(1);
        return window_logits(net, ids, net.mixing_weights({1.0, search::Normalize::kSoftmax}, noise));
      },
      inputs, 1e-5);
}

TEST_CASE("cell weights' gradients in groups of time steps: gradient checks, per-step values") {
  // Every weight grouped (grouped_weight_bytes 0), in groups of 2 rows of a batch of 2 (one
  // product each: the search cell's node 2 makes 3 a step) and of 6 (3 products: groups that
  // straddle time steps, short last groups). A tiny model's weights are otherwise per step.
  const auto ids = tokens(4, 2, 16);
  for (index_t rows : {2, 6}) {
    CAPTURE(rows);
    RnnConfig grouped = tiny_config(0.3);
    grouped.grouped_weight_bytes = 0;
    grouped.grouped_weight_rows = rows;
    PhiloxGenerator i1(7), i2(7), i3(8), i4(8);
    RnnEvalModel<double> eval_grouped(grouped, search::RNN_DARTS_V2, i1),
        eval_plain(tiny_config(0.3), search::RNN_DARTS_V2, i2);
    RnnSupernet<double, SoftmaxSpace> net_grouped(grouped, i3), net_plain(tiny_config(0.3), i4);
    check_gradients([&](auto&) { return window_logits(eval_grouped, ids); },
                    eval_grouped.parameters(), 1e-6);
    auto weights = [](const auto& net) {
      PhiloxGenerator noise(1);
      return net.mixing_weights({1.0, search::Normalize::kSoftmax}, noise);
    };
    auto search_inputs = net_grouped.parameters();
    search_inputs.push_back(net_grouped.alpha());
    check_gradients([&](auto&) { return window_logits(net_grouped, ids, weights(net_grouped)); },
                    search_inputs, 1e-5);
    // The same gradients as the per-step products, to rounding.
    auto compare = [&](const auto& a, const auto& b, auto&& logits_of) {
      auto pa = a.parameters(), pb = b.parameters();
      for (auto* m : {&pa, &pb})
        for (auto& p : *m) p.zero_grad();
      clear_tape<double>();
      backward(sum(logits_of(a)));
      backward(sum(logits_of(b)));
      for (std::size_t k = 0; k < pa.size(); ++k)
        for (index_t i = 0; i < pa[k].value().numel(); ++i)
          CHECK(pa[k].grad()[i] == doctest::Approx(pb[k].grad()[i]).epsilon(1e-12));
    };
    compare(eval_grouped, eval_plain, [&](const auto& m) { return window_logits(m, ids); });
    compare(net_grouped, net_plain,
            [&](const auto& m) { return window_logits(m, ids, weights(m)); });
  }
}

TEST_CASE("search cell (SNAS soft Gumbel, per edge, relu normalisation): alpha gradient with fixed noise") {
  PhiloxGenerator init(5);
  RnnSupernet<double, GumbelSpace> net(tiny_config(0.0), init, search::Normalize::kRelu);
  CHECK(net.layout().edges() == 6);
  const auto ids = tokens(3, 2, 14);
  check_gradients(
      [&](auto&) {
        PhiloxGenerator noise(3);
        return window_logits(net, ids, net.mixing_weights({0.7, search::Normalize::kRelu}, noise));
      },
      {net.alpha()}, 1e-5);
}

TEST_CASE("EGS per node: codes have 1..M pairs per node, sparse == dense, alpha gets a gradient") {
  PhiloxGenerator init(6);
  RnnSupernet<double, EgsSpace> net(tiny_config(0.2), init);
  CHECK(net.hard_estimator());
  CHECK(net.ensemble_size() == 2);
  const auto ids = tokens(3, 3, 15);
  const estimators::EstimatorConfig ec{1.0, search::Normalize::kSoftmax};
  for (std::uint64_t seed = 0; seed < 5; ++seed) {
    PhiloxGenerator noise(seed);
    const VarD w = net.mixing_weights(ec, noise);
    const auto lay = net.layout();
    for (int g = 0; g < lay.count(); ++g) {
      const auto [o, n] = lay.group(g);
      int nonzero = 0;
      double total = 0;
      for (index_t k = 0; k < n; ++k) {
        nonzero += w.value()[o + k] != 0;
        total += w.value()[o + k];
      }
      CHECK(nonzero >= 1);
      CHECK(nonzero <= 2);
      CHECK(total == doctest::Approx(1.0));
    }
    // Same sample: the sparse cell skips unsampled terms but computes the same function.
    clear_tape<double>();
    for (auto& p : net.parameters()) p.zero_grad();
    net.alpha().zero_grad();
    PhiloxGenerator n1(seed), n2(seed);
    const VarD dense = window_logits(net, ids, net.mixing_weights(ec, n1), false);
    backward(sum(dense));
    const TensorD g_dense = net.parameters()[1].grad().clone();  // W0
    CHECK(net.alpha().has_grad());
    double alpha_norm = 0;
    for (index_t i = 0; i < net.alpha().value().numel(); ++i) {
      CHECK(std::isfinite(net.alpha().grad()[i]));
      alpha_norm += std::abs(net.alpha().grad()[i]);
    }
    CHECK(alpha_norm > 0);
    for (auto& p : net.parameters()) p.zero_grad();
    const VarD sparse = window_logits(net, ids, net.mixing_weights(ec, n2), true);
    backward(sum(sparse));
    for (index_t i = 0; i < dense.value().numel(); ++i)
      CHECK(sparse.value()[i] == doctest::Approx(dense.value()[i]).epsilon(1e-12));
    for (index_t i = 0; i < g_dense.numel(); ++i)
      CHECK(net.parameters()[1].grad()[i] == doctest::Approx(g_dense[i]).epsilon(1e-10));
  }
  // The weights' gradient is exact given the sample (finite differences on W0 and W_8).
  const auto params = net.parameters();
  check_gradients(
      [&](auto&) {
        PhiloxGenerator noise(2);
        return window_logits(net, ids, net.mixing_weights(ec, noise), true);
      },
      {params[1], params[9]}, 1e-5);
}

TEST_CASE("search cell, dense: a node whose kept ops are all none is the zero state, as in sparse mode") {
  // Hand-set weights [36 * 5]: node 3 (edges 6..9) keeps only none entries; elsewhere some
  // entries are 0. The dense cell must find node 3 by itself (no host copy of the weights) and
  // give the sparse cell's function and gradients; a batch norm of node 3's zero sum would
  // instead hand its zero weights gradients of order 1/sqrt(eps).
  PhiloxGenerator init(8);
  RnnSupernet<double, EgsSpace> net(tiny_config(0.2), init);
  const auto ids = tokens(3, 3, 16);
  TensorD wt = random_tensor({180}, 17, 0.1, 0.9);
  for (index_t i = 0; i < 180; i += 7) wt[i] = 0.0;
  const index_t first = index_t(search::rnn_edge_offset(3)) * 5, last = first + 4 * 5;
  for (index_t i = first; i < last; ++i)
    if (i % 5 != 0) wt[i] = 0.0;
  VarD w(wt.clone(), true);
  const auto params = net.parameters();
  std::vector<TensorD> dense_grads;
  TensorD dense_logits, dense_w_grad;
  for (bool sparse : {false, true}) {
    CAPTURE(sparse);
    clear_tape<double>();
    for (auto& p : params) p.zero_grad();
    w.zero_grad();
    const VarD logits = window_logits(net, ids, w, sparse);
    backward(sum(logits));
    for (index_t i = first; i < last; ++i) CHECK(w.grad()[i] == 0.0);
    const TensorD g_w3 = params[2 + 3].grad();  // W_3 serves node 3 alone
    for (index_t i = 0; i < g_w3.numel(); ++i) CHECK(g_w3[i] == 0.0);
    if (!sparse) {
      dense_logits = logits.value().clone();
      dense_w_grad = w.grad().clone();
      for (const auto& p : params) dense_grads.push_back(p.grad().clone());
      continue;
    }
    for (index_t i = 0; i < dense_logits.numel(); ++i)
      CHECK(logits.value()[i] == doctest::Approx(dense_logits[i]).epsilon(1e-12));
    for (std::size_t p = 0; p < params.size(); ++p) {
      CAPTURE(p);
      for (index_t i = 0; i < dense_grads[p].numel(); ++i)
        CHECK(params[p].grad()[i] == doctest::Approx(dense_grads[p][i]).epsilon(1e-10));
    }
    // Sparse mode leaves zero weights undifferentiated; the others agree.
    for (index_t i = 0; i < 180; ++i)
      if (wt[i] != 0.0) CHECK(w.grad()[i] == doctest::Approx(dense_w_grad[i]).epsilon(1e-10));
  }
  // The dense cell's gradient is exact: finite differences in the weights (node 3's non-none
  // entries held at 0 by a mask, since any non-zero one would switch the node on) and in W_3, W_4.
  TensorD hold = TensorD::full({180}, 1.0);
  for (index_t i = first; i < last; ++i)
    if (i % 5 != 0) hold[i] = 0.0;
  check_gradients([&](auto& in) { return window_logits(net, ids, mul_mask(in[0], hold), false); },
                  {VarD(wt.clone(), true)}, 1e-5);
  check_gradients([&](auto&) { return window_logits(net, ids, VarD(wt), false); }, {params[2 + 3], params[2 + 4]},
                  1e-5);
}

TEST_CASE("perplexity is exp(mean cross-entropy) over every predicted token (toy corpus by hand)") {
  // With zero embeddings the tied decoder gives logits = bias at every position, so each token's
  // cross-entropy is logsumexp(bias) - bias[target], whatever the cell.
  data::Vocabulary vocab;
  std::vector<std::int32_t> ids;
  data::tokenize("a b a\nc a\n", "toy", vocab, ids);  // a b a <eos> c a <eos>: 7 tokens, V = 4
  REQUIRE(vocab.size() == 4);
  const auto stream = data::batchify(ids, 2);  // rows 3: columns (a b a), (<eos> c a)
  PhiloxGenerator init(7);
  RnnConfig c = tiny_config(0.5);
  c.vocab = 4;
  RnnEvalModel<double> m(c, search::RNN_DARTS_V2, init);
  m.parameters()[0].value().fill(0.0);  // encoder = decoder weight
  const double bias[] = {0.5, -1.0, 2.0, 0.0};  // ids: a=1, b=2, <eos>=0, c=3
  for (int k = 0; k < 4; ++k) m.parameters().back().value()[k] = bias[k];
  m.eval();
  const auto loss = train::evaluate_stream<double>(stream, 2, c.nhid, [&](const auto& in, const auto& h) {
    PhiloxGenerator gen(0);
    return m.forward(in, h, gen);
  });
  const double lse = std::log(std::exp(0.5) + std::exp(-1.0) + std::exp(2.0) + std::exp(0.0));
  // Targets: rows 1..2 of both columns: b, a (column 0) and c, a (column 1).
  const int targets[] = {2, 1, 3, 1};
  double sum = 0;
  for (int t : targets) sum += lse - bias[t];
  CHECK(loss.tokens == 4);
  CHECK(loss.mean() == doctest::Approx(sum / 4).epsilon(1e-12));
  CHECK(train::perplexity(loss.mean()) == doctest::Approx(std::exp(sum / 4)).epsilon(1e-12));
}

TEST_CASE("model errors: untied sizes, bad dropout, bad grouping, wrong hidden shape") {
  PhiloxGenerator init(8);
  RnnConfig c = tiny_config(0.0);
  c.emsize = 4;
  CHECK_THROWS_WITH_AS((RnnEvalModel<double>(c, search::RNN_DARTS_V2, init)), doctest::Contains("emsize == nhid"), error);
  c = tiny_config(1.0);
  CHECK_THROWS_WITH_AS((RnnEvalModel<double>(c, search::RNN_DARTS_V2, init)), doctest::Contains("[0, 1)"), error);
  c = tiny_config(0.0);
  c.grouped_weight_rows = 0;
  CHECK_THROWS_WITH_AS((RnnEvalModel<double>(c, search::RNN_DARTS_V2, init)),
                       doctest::Contains("grouped_weight_rows >= 1, got 4194304 and 0"), error);
  RnnEvalModel<double> m(tiny_config(0.0), search::RNN_DARTS_V2, init);
  PhiloxGenerator gen(0);
  CHECK_THROWS_WITH_AS(m.forward(tokens(2, 2, 1), TensorD::zeros({3, 3}), gen), doctest::Contains("hidden state"), error);
}
}
