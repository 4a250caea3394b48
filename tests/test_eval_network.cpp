// The evaluation network (ALGORITHMS.md §1.4): DATA multi-input cells, parameter counts against
// the reference, drop path, the auxiliary head, genotype sources and errors.
#include <cmath>
#include <filesystem>

#include "gradcheck.hpp"
#include "datanas/io/checkpoint.hpp"
#include "datanas/spaces/eval_network.hpp"

using namespace datanas;
using namespace datanas::testing;
using search::CellGenotype;
using search::Genotype;
using spaces::EvalCell;
using spaces::EvalNetwork;
using spaces::EvalNetworkConfig;
using TensorF = Tensor<float>;

namespace {
TensorF random_float(const Shape& s, std::uint64_t seed) {
  PhiloxGenerator g(seed);
  TensorF t = TensorF::empty(s);
  for (index_t i = 0; i < t.numel(); ++i) t[i] = float(2 * g.uniform() - 1);
  return t;
}

bool bit_equal(const TensorF& a, const TensorF& b) {
  if (a.shape() != b.shape()) return false;
  for (index_t i = 0; i < a.numel(); ++i)
    if (a[i] != b[i]) return false;
  return true;
}

CellGenotype one_node(std::vector<search::OpInput> terms) { return {{std::move(terms)}, {2}}; }
/// A cell's output on (s0, s1) with drop-path probability p, its masks drawn from seed 9.
TensorF cell_out(const EvalCell<float>& cell, const TensorF& s0, const TensorF& s1, double p) {
  PhiloxGenerator drop(9);
  return cell(Var<float>(s0), Var<float>(s1), p, drop).value();
}

EvalNetworkConfig small(int layers = 3, index_t image = 32, bool aux = true) {
  return {.init_channels = 4, .layers = layers, .in_channels = 3, .image_size = image, .num_classes = 10,
          .auxiliary = aux};
}
}  // namespace

TEST_SUITE("cpu") {
TEST_CASE("DATA multi-input cells: every term is built and the shapes follow the cell") {
  for (const Genotype* g : {&search::DATA_M4, &search::DATA_M7}) {
    PhiloxGenerator gen(1);
    EvalNetwork<float> net(*g, small(), gen);  // reductions at cells 1 and 2
    REQUIRE(net.num_cells() == 3);
    auto terms = [](const CellGenotype& c) {
      int n = 0;
      for (const auto& node : c.nodes) n += int(node.size());
      return n;
    };
    CHECK(net.cell(0).num_terms() == terms(g->normal));
    CHECK(net.cell(1).num_terms() == terms(g->reduce));
    CHECK_FALSE(net.cell(0).reduction());
    CHECK(net.cell(1).reduction());
    CHECK(net.cell(0).out_channels() == 4 * 4);
    CHECK(net.cell(1).out_channels() == 4 * 8);
    CHECK(net.cell(2).out_channels() == 4 * 16);
    PhiloxGenerator drop(2);
    auto out = net.forward(Var<float>(random_float({2, 3, 32, 32}, 3)), drop);
    CHECK(out.logits.shape() == Shape{2, 10});
    REQUIRE(out.aux.defined());
    CHECK(out.aux.shape() == Shape{2, 10});
    net.eval();
    auto ev = net.forward(Var<float>(random_float({2, 3, 32, 32}, 3)), drop);
    CHECK(ev.logits.shape() == Shape{2, 10});
    CHECK_FALSE(ev.aux.defined());  // the auxiliary head runs in training only
  }
  // M7's reduction node 2 has five terms, three of them on state 2.
  PhiloxGenerator gen(1);
  EvalCell<float> cell(search::DATA_M7.reduce, 8, 8, 4, true, false, gen);
  CHECK(cell.num_terms() == 13);
  PhiloxGenerator drop(2);
  Var<float> y = cell(Var<float>(random_float({2, 8, 8, 8}, 4)), Var<float>(random_float({2, 8, 8, 8}, 5)), 0, drop);
  CHECK(y.shape() == Shape{2, 16, 4, 4});
}

TEST_CASE("a node is the sum of its terms, several ops may read one input") {
  // Same seed: the preprocessing draws the same weights and identities draw nothing, so the
  // cell with two skips on input 1 must output exactly twice the cell with one.
  const TensorF s0 = random_float({2, 6, 4, 4}, 7), s1 = random_float({2, 6, 4, 4}, 8);
  PhiloxGenerator g1(5), g2(5), drop(0);
  EvalCell<float> two(one_node({{"skip_connect", 1}, {"skip_connect", 1}}), 6, 6, 4, false, false, g1);
  EvalCell<float> one(one_node({{"skip_connect", 1}}), 6, 6, 4, false, false, g2);
  const TensorF a = two(Var<float>(s0), Var<float>(s1), 0, drop).value();
  const TensorF b = one(Var<float>(s0), Var<float>(s1), 0, drop).value();
  REQUIRE(a.shape() == Shape{2, 4, 4, 4});
  for (index_t i = 0; i < a.numel(); ++i) CHECK(a[i] == doctest::Approx(2 * b[i]).epsilon(1e-6));
}

TEST_CASE("gradient of a DATA cell with shared inputs and a reduction matches finite differences") {
  // Two ops read state 0 (their ReLU is shared), a node reads another node, stride 2 edges.
  CellGenotype c{{{{"sep_conv_3x3", 0}, {"dil_conv_3x3", 0}, {"skip_connect", 1}},
                  {{"avg_pool_3x3", 2}, {"sep_conv_3x3", 0}, {"max_pool_3x3", 1}}},
                 {2, 3}};
  PhiloxGenerator gen(11), drop(0);
  EvalCell<double> cell(c, 3, 3, 2, true, false, gen);
  VarD s0 = param({2, 3, 4, 4}, 21), s1 = param({2, 3, 4, 4}, 22);
  check_gradients([&](const std::vector<VarD>& in) { return cell(in[0], in[1], 0, drop); }, {s0, s1}, 1e-5);
}

TEST_CASE("parameter size is counted as DARTS counts it, without the auxiliary head") {
  // References: DARTS' train.py logs "param size = 3.349342MB" for DARTS_V2 (C=36, 20 cells);
  // the other counts come from benchmarks/pytorch/eval_network.py --params, the same network
  // written in PyTorch, which also gives the auxiliary head's 476426 weights.
  struct Case {
    const Genotype* g;
    index_t expected;
  };
  for (const Case& k : {Case{&search::DARTS_V2, 3349342}, Case{&search::DARTS_V1, 3169414},
                        Case{&search::DATA_M4, 3894094}, Case{&search::DATA_M7, 3410038}}) {
    PhiloxGenerator gen(1);
    EvalNetwork<float> net(*k.g, {.auxiliary = true}, gen);
    CHECK(net.parameter_count_without_auxiliary() == k.expected);
    // ReLU -> pool -> conv 576->128 -> BN -> conv 2x2 128->768 -> BN -> linear 768->10.
    CHECK(net.parameter_count() - k.expected == 576 * 128 + 2 * 128 + 128 * 768 * 4 + 2 * 768 + 768 * 10 + 10);
  }
}

TEST_CASE("drop path: per-sample statistics in training, never on identities, off in evaluation") {
  const index_t n = 400;
  const TensorF s0 = random_float({n, 2, 3, 3}, 31), s1 = random_float({n, 2, 3, 3}, 32);
  PhiloxGenerator g1(3), g2(3);
  EvalCell<float> conv(one_node({{"sep_conv_3x3", 1}}), 2, 2, 2, false, false, g1);
  const TensorF ref = cell_out(conv, s0, s1, 0.0);
  const double p = 0.3;
  const TensorF dropped = cell_out(conv, s0, s1, p);
  const index_t per = ref.numel() / n;
  long zeroed = 0;
  for (index_t s = 0; s < n; ++s) {
    bool all_zero = true;
    for (index_t i = 0; i < per; ++i) all_zero &= dropped[s * per + i] == 0.0f;
    if (all_zero) {
      ++zeroed;
      continue;
    }
    // Kept samples are scaled by 1 / (1 - p); BN inside the op saw the whole batch either way.
    for (index_t i = 0; i < per; ++i)
      REQUIRE(dropped[s * per + i] == doctest::Approx(ref[s * per + i] / (1 - p)).epsilon(1e-5));
  }
  // Binomial(400, 0.3): mean 120, sd 9.2; 5 sd either side.
  CHECK(zeroed > 120 - 46);
  CHECK(zeroed < 120 + 46);
  // Evaluation: no drop path, whatever the probability.
  conv.eval();
  CHECK(bit_equal(cell_out(conv, s0, s1, 0.0), cell_out(conv, s0, s1, 0.9)));
  // An identity term is never dropped: with p = 0.9 no sample of a skip-only cell is zero.
  EvalCell<float> skip(one_node({{"skip_connect", 1}}), 2, 2, 2, false, false, g2);
  CHECK(bit_equal(cell_out(skip, s0, s1, 0.0), cell_out(skip, s0, s1, 0.9)));
}

TEST_CASE("drop path on a node's second term: each sample keeps the first term, plus the second scaled or not") {
  // node = skip(s0) + drop_path(sep_conv(s1)): the second term is added with its mask in one
  // pass (add_drop_path). `skip` has the same preprocessing weights (built first from the same
  // seed), so it gives the first term alone.
  const index_t n = 400;
  const TensorF s0 = random_float({n, 2, 3, 3}, 41), s1 = random_float({n, 2, 3, 3}, 42);
  PhiloxGenerator g1(6), g2(6);
  EvalCell<float> both(one_node({{"skip_connect", 0}, {"sep_conv_3x3", 1}}), 2, 2, 2, false, false, g1);
  EvalCell<float> skip(one_node({{"skip_connect", 0}}), 2, 2, 2, false, false, g2);
  const TensorF sum = cell_out(both, s0, s1, 0.0), first = cell_out(skip, s0, s1, 0.0);
  const double p = 0.3;
  const TensorF dropped = cell_out(both, s0, s1, p);
  const index_t per = sum.numel() / n;
  long zeroed = 0;
  for (index_t s = 0; s < n; ++s) {
    const index_t o = s * per;
    bool is_first = true;
    for (index_t i = 0; i < per; ++i) is_first &= dropped[o + i] == doctest::Approx(first[o + i]).epsilon(1e-5);
    zeroed += is_first;
    if (!is_first)
      for (index_t i = 0; i < per; ++i)
        REQUIRE(dropped[o + i] ==
                doctest::Approx(first[o + i] + (sum[o + i] - first[o + i]) / (1 - p)).epsilon(1e-4).scale(1));
  }
  CHECK(zeroed > 120 - 46);  // Binomial(400, 0.3), 5 sd either side, as above
  CHECK(zeroed < 120 + 46);
}

TEST_CASE("the auxiliary head: 8x8 (CIFAR) and 7x7 (28x28 inputs) maps, other sizes rejected") {
  PhiloxGenerator gen(1);
  spaces::AuxiliaryHead<float> head(12, 10, 8, gen);
  CHECK(head(Var<float>(random_float({3, 12, 8, 8}, 1))).shape() == Shape{3, 10});
  spaces::AuxiliaryHead<float> head7(12, 7, 7, gen);
  CHECK(head7(Var<float>(random_float({3, 12, 7, 7}, 1))).shape() == Shape{3, 7});
  CHECK_THROWS_WITH_AS(spaces::AuxiliaryHead<float>(12, 10, 6, gen), doctest::Contains("auxiliary head: cell 2L/3 outputs 6x6"),
                       datanas::error);
  // A Fashion-MNIST-sized network (1 x 28 x 28) has 7x7 maps after its second reduction.
  EvalNetworkConfig fm{.init_channels = 4, .layers = 6, .in_channels = 1, .image_size = 28, .auxiliary = true};
  EvalNetwork<float> net(search::DARTS_V2, fm, gen);
  PhiloxGenerator drop(1);
  auto out = net.forward(Var<float>(random_float({2, 1, 28, 28}, 2)), drop);
  CHECK(out.aux.shape() == Shape{2, 10});
  CHECK_THROWS_WITH_AS(net.forward(Var<float>(random_float({2, 3, 28, 28}, 2)), drop),
                       doctest::Contains("does not match the network's [N, 1, 28, 28]"), datanas::error);
  // Without the head: no auxiliary parameters, no auxiliary logits.
  EvalNetwork<float> plain(search::DARTS_V2, small(3, 32, false), gen);
  CHECK(plain.parameter_count() == plain.parameter_count_without_auxiliary());
  CHECK_FALSE(plain.forward(Var<float>(random_float({2, 3, 32, 32}, 2)), drop).aux.defined());
}

TEST_CASE("genotype.json, genotype.txt, the text and the name rebuild the same network") {
  const auto dir = std::filesystem::temp_directory_path() / "datanas_test_eval_network";
  std::filesystem::create_directories(dir);
  io::write_text_file((dir / "genotype.json").string(), search::to_json(search::DATA_M7) + "\n");
  io::write_text_file((dir / "genotype.txt").string(), search::to_text(search::DATA_M7) + "\n");
  const Genotype sources[] = {search::load_genotype("DATA_M7"), search::load_genotype(search::to_text(search::DATA_M7)),
                              search::load_genotype((dir / "genotype.json").string()),
                              search::load_genotype((dir / "genotype.txt").string())};
  const TensorF x = random_float({2, 3, 32, 32}, 5);
  TensorF first;
  for (const Genotype& g : sources) {
    CHECK(g == search::DATA_M7);
    PhiloxGenerator gen(42), drop(1);
    EvalNetwork<float> net(g, small(), gen);
    const TensorF y = net.forward(Var<float>(x), drop).logits.value();
    if (!first.defined())
      first = y.clone();
    else
      CHECK(bit_equal(first, y));
  }
  io::write_text_file((dir / "bad.json").string(), "{\"normal\": [[[\"sep_conv_3x3\", 0]]]}");
  CHECK_THROWS_WITH_AS((void)search::load_genotype((dir / "bad.json").string()),
                       doctest::Contains("normal_concat: missing"), datanas::error);
  std::filesystem::remove_all(dir);
}

TEST_CASE("genotypes that do not fit the space or the data are rejected with the problem named") {
  PhiloxGenerator gen(1);
  Genotype g = search::DARTS_V2;
  g.normal.nodes[1][0].op = "conv_7x7";
  CHECK_THROWS_WITH_AS(EvalNetwork<float>(g, small(), gen), doctest::Contains("normal cell, node 1: unknown op 'conv_7x7'"),
                       datanas::error);
  g = search::DARTS_V2;
  g.reduce.nodes[0][1].input = 2;
  CHECK_THROWS_WITH_AS(EvalNetwork<float>(g, small(), gen), doctest::Contains("reduce cell, node 0: op 'max_pool_3x3' has input 2"),
                       datanas::error);
  g = search::DARTS_V2;
  g.reduce.concat = {1, 2, 3, 4, 5};
  CHECK_THROWS_WITH_AS(EvalNetwork<float>(g, small(), gen), doctest::Contains("reduce cell: concat lists input state 1"),
                       datanas::error);
  // 30 -> 15 at the first reduction: the second would need FactorizedReduce on odd maps.
  CHECK_THROWS_WITH_AS(EvalNetwork<float>(search::DARTS_V2, small(3, 30, false), gen),
                       doctest::Contains("cell 2 reduces 15x15 maps, an odd size"), datanas::error);
  // 16 -> 8 -> 4: the auxiliary head has no definition for 4x4 maps.
  CHECK_THROWS_WITH_AS(EvalNetwork<float>(search::DARTS_V2, small(3, 16, true), gen),
                       doctest::Contains("auxiliary head: cell 2L/3 outputs 4x4 maps"), datanas::error);
}

TEST_CASE("weights saved from one genotype do not load into another") {
  PhiloxGenerator gen(1);
  EvalNetwork<float> v2(search::DARTS_V2, small(), gen);
  io::Checkpoint ck;
  io::put_module(ck, "model.", v2);
  EvalNetwork<float> v1(search::DARTS_V1, small(), gen);
  CHECK_THROWS_AS(io::restore_module(ck, "model.", v1), datanas::error);
  EvalNetwork<float> same(search::DARTS_V2, small(), gen);
  io::restore_module(ck, "model.", same);
  CHECK(bit_equal(same.parameters()[0].value(), v2.parameters()[0].value()));
}
}
