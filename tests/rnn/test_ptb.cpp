// PTB reader (vocabulary order, <eos>, batchify, windows, BPTT lengths, clear errors for missing
// and corrupt files), recurrent genotypes (text and JSON round trips, published cells, errors),
// the derivation rules on alpha alone, and averaged SGD against torch.optim.ASGD by hand.
#include <doctest/doctest.h>

#include <cstdio>
#include <filesystem>
#include <fstream>

#include "datanas/data/ptb.hpp"
#include "datanas/optim/asgd.hpp"
#include "datanas/search/rnn_genotype.hpp"

using namespace datanas;
namespace fs = std::filesystem;

namespace {
struct TempDir {
  fs::path path;
  TempDir() {
    path = fs::temp_directory_path() / ("datanas_ptb_test_" + std::to_string(::getpid()));
    fs::create_directories(path);
  }
  ~TempDir() { fs::remove_all(path); }
  void write(const std::string& name, std::string_view text) const {
    std::ofstream(path / name, std::ios::binary) << text;
  }
};
}  // namespace

TEST_SUITE("cpu") {
TEST_CASE("tokenize: ids in order of first appearance, <eos> per line, train before valid") {
  TempDir d;
  d.write("ptb.train.txt", " the cat sat \n the dog \n");
  d.write("ptb.valid.txt", " a cat\n");  // 'a' is new: added after train's words (data.py)
  d.write("ptb.test.txt", "the\n\nend");  // empty line -> <eos> alone; no final newline
  const auto c = data::TextCorpus::load(d.path.string());
  CHECK(c.vocab.size() == 7);
  CHECK(c.vocab.word(0) == "the");
  CHECK(c.vocab.word(3) == "<eos>");  // added at the end of the first line
  CHECK(c.vocab.find("dog") == 4);
  CHECK(c.vocab.find("a") == 5);
  CHECK(c.vocab.find("end") == 6);
  CHECK(c.vocab.find("zebra") == -1);
  CHECK(c.train == std::vector<std::int32_t>{0, 1, 2, 3, 0, 4, 3});
  CHECK(c.valid == std::vector<std::int32_t>{5, 1, 3});
  CHECK(c.test == std::vector<std::int32_t>{0, 3, 3, 6, 3});
}

TEST_CASE("the DARTS names train.txt / valid.txt / test.txt are found too") {
  TempDir d;
  for (auto n : {"train.txt", "valid.txt", "test.txt"}) d.write(n, "x y\n");
  CHECK(data::TextCorpus::load(d.path.string()).train.size() == 3);
}

TEST_CASE("missing and corrupt corpus files give errors naming the file and the problem") {
  TempDir d;
  CHECK_THROWS_WITH_AS(data::TextCorpus::load((d.path / "nope").string()), doctest::Contains("does not exist"), error);
  d.write("ptb.train.txt", "a b\n");
  CHECK_THROWS_WITH_AS(data::TextCorpus::load(d.path.string()),
                       doctest::Contains("no valid file in"), error);
  d.write("ptb.valid.txt", "a\n");
  d.write("ptb.test.txt", "a b\nc \x01\x02 d\n");
  CHECK_THROWS_WITH_AS(data::TextCorpus::load(d.path.string()),
                       doctest::Contains("ptb.test.txt: line 2, byte offset 6: control byte 0x01"), error);
  d.write("ptb.test.txt", std::string("a\0b\n", 4));
  CHECK_THROWS_WITH_AS(data::TextCorpus::load(d.path.string()), doctest::Contains("control byte 0x00"), error);
  d.write("ptb.test.txt", "");
  CHECK_THROWS_WITH_AS(data::TextCorpus::load(d.path.string()), doctest::Contains("ptb.test.txt: no words"), error);
  d.write("ptb.test.txt", " \n\n");
  CHECK_THROWS_WITH_AS(data::TextCorpus::load(d.path.string()), doctest::Contains("no words"), error);
}

TEST_CASE("batchify: contiguous columns, tail dropped; windows: inputs and next-word targets") {
  std::vector<std::int32_t> ids(11);
  for (int i = 0; i < 11; ++i) ids[std::size_t(i)] = i;
  const auto s = data::batchify(ids, 3);  // rows 3: columns 0 1 2 | 3 4 5 | 6 7 8, 9 10 dropped
  CHECK(s.shape() == Shape{3, 3});
  CHECK(s(0, 0) == 0);
  CHECK(s(2, 0) == 2);
  CHECK(s(0, 1) == 3);
  CHECK(s(1, 2) == 7);
  const auto w = data::get_window(s, 0, 5);  // clipped to rows - 1 - i = 2
  CHECK(w.length() == 2);
  CHECK(w.inputs(1, 2) == 7);
  CHECK(w.targets.numel() == 6);
  CHECK(w.targets[0] == 1);  // (t = 0, b = 0) -> stream row 1, column 0
  CHECK(w.targets[5] == 8);
  CHECK_THROWS_WITH_AS(data::batchify(ids, 6), doctest::Contains("at least 2 are needed"), error);
  CHECK_THROWS_WITH_AS(data::get_window(s, 2, 1), doctest::Contains("outside [0, 2)"), error);
}

TEST_CASE("BPTT lengths: bptt w.p. 0.95 else bptt/2, N(., 5), within [5, bptt + 20]") {
  PhiloxGenerator gen(3);
  const data::BpttSampler jitter{35, 20, true}, plain{35, 20, false};
  double sum = 0;
  long halves = 0, lo = 1000, hi = 0;
  const int n = 20000;
  for (int i = 0; i < n; ++i) {
    const auto l = jitter(gen);
    sum += double(l);
    lo = std::min<long>(lo, long(l));
    hi = std::max<long>(hi, long(l));
    const auto p = plain(gen);
    CHECK((p == 35 || p == 17));
    halves += p == 17;
  }
  CHECK(lo >= 5);
  CHECK(hi <= 55);
  CHECK(hi >= 45);  // the upper tail is reached
  // E = 0.95 * 35 + 0.05 * 17.5 - 0.5 (int() truncation) ~ 33.6
  CHECK(sum / n == doctest::Approx(33.6).epsilon(0.01));
  CHECK(double(halves) / n == doctest::Approx(0.05).epsilon(0.15));
}

TEST_CASE("recurrent genotype text: DARTS form round-trips exactly, nested and list forms too") {
  const std::string v2 =
      "Genotype(recurrent=[('sigmoid', 0), ('relu', 1), ('relu', 1), ('identity', 1), ('tanh', 2), ('sigmoid', 5), "
      "('tanh', 3), ('relu', 5)], concat=range(1, 9))";
  CHECK(search::to_text(search::RNN_DARTS_V2) == v2);
  CHECK(search::parse_recurrent_genotype(v2) == search::RNN_DARTS_V2);
  CHECK(search::parse_recurrent_genotype("DARTS_V2 = " + v2) == search::RNN_DARTS_V2);
  CHECK(search::to_text(search::RNN_ENAS).ends_with("concat=[2, 5, 6, 9, 10, 11])"));
  CHECK(search::parse_recurrent_genotype(search::to_text(search::RNN_ENAS)) == search::RNN_ENAS);
  const std::string nested = "Genotype(recurrent=[[('tanh', 0)], [('relu', 1), ('identity', 0)]], concat=range(1, 3))";
  const auto g = search::parse_recurrent_genotype(nested);
  CHECK(g.nodes[1].size() == 2);
  CHECK(search::to_text(g) == nested);
  // Positional fields, double quotes, range(b), comments.
  const auto p = search::parse_recurrent_genotype("Genotype([(\"tanh\", 0), (\"relu\", 1)], range(3))  # x");
  CHECK(p.concat == std::vector<int>{0, 1, 2});
  // JSON round trip, nested always.
  for (const auto& x : {search::RNN_DARTS_V1, search::RNN_DARTS_V2, search::RNN_ENAS, g})
    CHECK(search::recurrent_genotype_from_json(search::to_json(x)) == x);
  CHECK(search::to_json(search::RNN_DARTS_V2).starts_with("{\"recurrent\": [[[\"sigmoid\", 0]], [[\"relu\", 1]]"));
  CHECK(search::load_recurrent_genotype("DARTS_V1") == search::RNN_DARTS_V1);
}

TEST_CASE("recurrent genotype errors name what is wrong") {
  using search::parse_recurrent_genotype;
  CHECK_THROWS_WITH_AS(parse_recurrent_genotype("Genotype(recurrent=[('gelu', 0)], concat=range(1, 2))"),
                       doctest::Contains("unknown op 'gelu'"), error);
  CHECK_THROWS_WITH_AS(parse_recurrent_genotype("Genotype(recurrent=[('relu', 0), ('tanh', 2)], concat=range(1, 3))"),
                       doctest::Contains("node 2 reads state 2"), error);
  CHECK_THROWS_WITH_AS(parse_recurrent_genotype("Genotype(recurrent=[('none', 0)], concat=range(1, 2))"),
                       doctest::Contains("unknown op 'none'"), error);
  CHECK_THROWS_WITH_AS(parse_recurrent_genotype("Genotype(recurrent=[('relu', 0)], concat=range(1, 3))"),
                       doctest::Contains("concat[1] = 2"), error);
  CHECK_THROWS_WITH_AS(parse_recurrent_genotype("Genotype(recurrent=[('relu' 0)], concat=range(1, 2))"),
                       doctest::Contains("expected ','"), error);
  // A huge range is refused before anything is allocated (found by fuzzing: range(2147483647)
  // pushed 2^31 ints).
  CHECK_THROWS_WITH_AS(
      parse_recurrent_genotype("Genotype(recurrent=[('relu', 0)], concat=range(2147483647))"),
      doctest::Contains("expected a range of at most 4096 elements"), error);
  CHECK_THROWS_WITH_AS(
      parse_recurrent_genotype(
          "Genotype(recurrent=[('relu', 0)], concat=range(-2147483648, 2147483647))"),
      doctest::Contains("expected a range of at most 4096 elements"), error);
  CHECK_THROWS_WITH_AS(parse_recurrent_genotype("Genotype(recurrent=[('relu', 0)])"),
                       doctest::Contains("a 'concat' field"), error);
  CHECK_THROWS_WITH_AS(search::recurrent_genotype_from_json("{\"recurrent\": [[\"relu\", \"0\"]], \"concat\": [1]}"),
                       doctest::Contains("recurrent[0]"), error);
  CHECK_THROWS_WITH_AS(search::load_recurrent_genotype("DARTS_V3"), doctest::Contains("not a published recurrent cell"),
                       error);
}

TEST_CASE("DARTS rule: top-1 predecessor by its best non-none probability, then its argmax op") {
  // 2 nodes (3 rows) over none, tanh, relu, sigmoid, identity.
  search::AlphaMatrix a{3, 5, {
      5.0, 1.0, 0.0, 0.0, 0.0,    // node 1 <- 0: none dominates, tanh best non-none
      0.0, 0.0, 0.0, 0.0, 0.0,    // node 2 <- 0: uniform (0.2 each)
      0.0, 0.0, 0.0, 3.0, 0.0}};  // node 2 <- 1: sigmoid 0.83
  const auto g = search::derive_rnn_darts(a);
  CHECK(search::to_text(g) == "Genotype(recurrent=[('tanh', 0), ('sigmoid', 1)], concat=range(1, 3))");
  search::AlphaMatrix bad{4, 5, std::vector<double>(20, 0.0)};
  CHECK_THROWS_WITH_AS(search::derive_rnn_darts(bad), doctest::Contains("not 1 + 2 + ... + n"), error);
}

TEST_CASE("DATA rule on the recurrent layout: most probable EGS code, none merged") {
  // Node 1 (one predecessor): relu and tanh nearly equal -> with M = 4 both are kept;
  // with M = 1 only the most probable.
  const double l = std::log(0.45), s = std::log(0.03);
  search::AlphaMatrix a{1, 5, {std::log(0.04), l, l + 1e-9, s, s}};  // probabilities sum to 1
  auto g4 = search::derive_rnn_data(a, 4);
  REQUIRE(g4.nodes[0].size() == 2);
  CHECK(g4.nodes[0][0].op == "relu");
  CHECK(g4.nodes[0][1].op == "tanh");
  CHECK(search::derive_rnn_data(a, 1).nodes[0].size() == 1);
  // P_4({relu, tanh}) by hand: (0.9)^4 - 2 (0.45)^4 = 0.6561 - 0.0820 = 0.5741 beats P_4({relu}).
  const auto d = search::rnn_data_node_decision(a, search::kRnnOps, 0, 4, search::Normalize::kSoftmax,
                                                search::Granularity::kNode);
  CHECK(d.p_top[1] == doctest::Approx(std::pow(0.9, 4) - 2 * std::pow(0.45, 4)).epsilon(1e-6));
  // none alone wins -> the most probable non-none pair (fallback).
  search::AlphaMatrix n{1, 5, {5.0, 0.0, 1.0, 0.0, 0.0}};
  const auto dn = search::rnn_data_node_decision(n, search::kRnnOps, 0, 2, search::Normalize::kSoftmax,
                                                 search::Granularity::kNode);
  CHECK(dn.fallback);
  CHECK(search::derive_rnn_data(n, 2).nodes[0] == std::vector<search::OpInput>{{"relu", 0}});
  // Node 2 reads predecessors 0 and 1: the pair's input is the predecessor.
  search::AlphaMatrix b{3, 5, {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, -9, -9, -9, -9, 9}};
  CHECK(search::derive_rnn_data(b, 4).nodes[1] == std::vector<search::OpInput>{{"identity", 1}});
}

TEST_CASE("ASGD matches torch.optim.ASGD(t0=0, lambd=0) step by step") {
  // One scalar w = 1, gradient g = 2 w each step, lr 0.1 then 0.2 (eta lags one step),
  // weight decay 0.5: g' = 2w + 0.5w = 2.5w.
  Var<double> w(Tensor<double>::full({1}, 1.0), true);
  optim::ASGD<double> opt({w}, 0.1, 0.0, 0.75, 0.0, 0.5);
  std::vector<double> ws, ax;
  for (int step = 0; step < 4; ++step) {
    opt.set_lr(step == 0 ? 0.1 : 0.2);
    auto [g, acc] = w.grad_slot();
    g[0] = 2 * w.value()[0];
    opt.step();
    ws.push_back(w.value()[0]);
    ax.push_back(opt.averages()[0][0]);
    w.zero_grad();
  }
  // eta: step 1 uses 0.1 (first lr), then 0.1 (the lr of step 1), then 0.2, 0.2.
  const double w1 = 1 - 0.1 * 2.5, w2 = w1 - 0.1 * 2.5 * w1, w3 = w2 - 0.2 * 2.5 * w2, w4 = w3 - 0.2 * 2.5 * w3;
  CHECK(ws[0] == doctest::Approx(w1));
  CHECK(ws[1] == doctest::Approx(w2));
  CHECK(ws[3] == doctest::Approx(w4));
  // mu: 1, 1, 1/2, 1/3 -> ax = w1, w2, (w2 + w3) / 2, (w2 + w3 + w4) / 3.
  CHECK(ax[0] == doctest::Approx(w1));
  CHECK(ax[1] == doctest::Approx(w2));
  CHECK(ax[2] == doctest::Approx((w2 + w3) / 2));
  CHECK(ax[3] == doctest::Approx((w2 + w3 + w4) / 3));
}
}
