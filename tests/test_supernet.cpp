// The DARTS search space: op compositions, cell and supernet shapes, parameter counts, the
// sparse forward, and a user-defined space.
#include <cstring>

#include "gradcheck.hpp"
#include "datanas/spaces/supernet.hpp"

using namespace datanas;
using namespace datanas::spaces;
using namespace datanas::testing;

namespace {
using DartsEgs = SearchSpace<DartsOps, 4, 4, estimators::EGS<4>, Granularity::kNode>;
using DartsSoftmax = SearchSpace<DartsOps, 4, 4, estimators::Softmax, Granularity::kEdge>;

/// Bytes the Cpu allocator counts for one float tensor of `shape` (its rounded block).
std::size_t held_bytes(const Shape& shape) {
  auto& alloc = CachingAllocator<Cpu>::instance();
  const std::size_t b0 = alloc.stats().bytes_in_use;
  const Tensor<float, Cpu> t = Tensor<float, Cpu>::empty(shape);
  return alloc.stats().bytes_in_use - b0;
}

/// The gradient of each of `params` (zeros for one that received none), in order.
std::vector<TensorD> grads_of(const std::vector<VarD>& params) {
  std::vector<TensorD> out;
  for (const VarD& p : params) out.push_back(p.has_grad() ? p.grad().clone() : TensorD::zeros(p.shape()));
  return out;
}

/// a == b element by element, within relative `eps` (absolute where |b| < 1).
void check_close(const TensorD& a, const TensorD& b, double eps) {
  REQUIRE(a.shape() == b.shape());
  for (index_t i = 0; i < a.numel(); ++i) CHECK(a[i] == doctest::Approx(b[i]).epsilon(eps).scale(1));
}
void check_close(const std::vector<TensorD>& a, const std::vector<TensorD>& b, double eps) {
  REQUIRE(a.size() == b.size());
  for (std::size_t i = 0; i < a.size(); ++i) check_close(a[i], b[i], eps);
}
}  // namespace

TEST_SUITE("cpu") {
TEST_CASE("a DARTS mixed edge keeps 10 activation-sized tensors for backward, not 21") {
  // Counted by hand, each the edge's output shape: per sep_conv the BN outputs of both halves
  // (the second half's relu_conv2d_pair reads the first BN's output, which that BN keeps
  // anyway); per dil_conv its BN output; max_pool its arg-max indices and BN output; avg_pool
  // its BN output; the edge's output. The four conv ops read relu(x) inside their kernels on
  // the CPU (OpModule::fuses_relu) and keep x, which the test owns. Freed during forward: the
  // pointwise outputs feeding the non-affine BNs and the pool outputs (each BN keeps its output
  // instead of its input). Never kept: the depthwise outputs and the ReLU outputs (recomputed in
  // backward). Before values were kept only where a backward reads them, the tape also held the
  // six pointwise outputs, the two pool outputs and the two inner ReLU outputs: 21; while the
  // edge shared one relu(x) tensor among its conv ops (as it still does on the GPU), 11. Plus
  // per BN its [2, C] statistics.
  using VarF = Var<float, Cpu>;
  auto& alloc = CachingAllocator<Cpu>::instance();
  const index_t c = 8;
  const Shape s{2, c, 8, 8};
  const std::size_t unit = held_bytes(s), stats = held_bytes({2, c});
  PhiloxGenerator gen(3);
  MixedOp<float, DartsOps, Cpu> edge(c, 1, gen);
  Tensor<float, Cpu> xv = Tensor<float, Cpu>::empty(s), wv = Tensor<float, Cpu>::full({8}, 0.125f);
  for (index_t i = 0; i < s.numel(); ++i) xv.data()[i] = float((i * 37) % 23) / 11.0f - 1.0f;
  VarF x(xv, true), w(wv, true);
  const std::size_t before = alloc.stats().bytes_in_use;
  VarF y = edge(x, w, 0, nullptr);
  CHECK(alloc.stats().bytes_in_use - before == 10 * unit + 8 * stats);
  backward(sum(y));  // every closure finds what it reads
  CHECK(w.has_grad());
  CHECK(std::isfinite(x.grad().eigen().sum()));
  CHECK(y.value().defined());
}

/// op(x), which reads relu(x) in its kernels (OpModule::fuses_relu), against op.from_relu(relu(x)):
/// the same output and gradients (x's, the parameters'), bit for bit.
void check_fused_relu(const OpModule<float, Cpu>& op, const Shape& xs) {
  using VarF = Var<float, Cpu>;
  REQUIRE(op.fuses_relu());
  PhiloxGenerator data(11);
  auto xv = Tensor<float, Cpu>::empty(xs);
  for (index_t i = 0; i < xv.numel(); ++i) xv[i] = 2 * float(data.uniform()) - 1;
  Tensor<float, Cpu> r;
  auto run = [&](bool fused) {
    VarF x(xv.clone(), true);
    op.zero_grad();
    VarF y = fused ? op(x) : op.from_relu(relu(x));
    if (!r.defined()) {
      r = Tensor<float, Cpu>::empty(y.shape());
      for (index_t i = 0; i < r.numel(); ++i) r[i] = 2 * float(data.uniform()) - 1;
    }
    backward(y, r);
    std::vector<Tensor<float, Cpu>> out{y.value().clone(), x.grad().clone()};
    for (const VarF& p : op.parameters()) out.push_back(p.grad().clone());
    return out;
  };
  const auto fused = run(true), shared = run(false);
  REQUIRE(fused.size() == shared.size());
  for (std::size_t i = 0; i < fused.size(); ++i) {
    CAPTURE(i);  // 0: output, 1: dx, then the parameters' gradients
    REQUIRE(fused[i].shape() == shared[i].shape());
    CHECK(std::memcmp(fused[i].data(), shared[i].data(), sizeof(float) * std::size_t(fused[i].numel())) == 0);
  }
}

TEST_CASE("ops fusing their ReLU give relu-then-op's values and gradients bit for bit") {
  // On the CPU a mixed op (and an evaluation cell) calls op(x) for sep_conv and dil_conv
  // (OpModule::fuses_relu: the depthwise kernels read max(x, 0) and mask the gradient) where it
  // used to hand them a shared relu(x) through from_relu; the GPU still shares. A search must
  // not depend on which.
  for (const char* name : {"sep_conv_3x3", "sep_conv_5x5", "dil_conv_3x3", "dil_conv_5x5"})
    for (const int stride : {1, 2})
      for (const Phase phase : {Phase::kSearch, Phase::kEval}) {
        CAPTURE(name);
        CAPTURE(stride);
        CAPTURE(phase == Phase::kSearch);
        PhiloxGenerator g(7);
        check_fused_relu(*DartsOps::make<float>(name, 4, stride, phase, g), Shape{2, 4, 9, 7});
      }
  // The cells' preprocessing (relu_conv2d): ReLUConvBN 1x1 and FactorizedReduce, in the search
  // (no affine BN) and the evaluation network (affine).
  for (const bool affine : {false, true}) {
    CAPTURE(affine);
    PhiloxGenerator g(8);
    check_fused_relu(ReLUConvBN<float>(12, 6, 1, 1, 0, affine, g), Shape{2, 12, 8, 6});
    check_fused_relu(FactorizedReduce<float>(12, 6, affine, g), Shape{2, 12, 8, 6});
  }
  PhiloxGenerator g(9);
  CHECK_FALSE(ReLUConvBN<float>(4, 4, 3, 1, 1, true, g).fuses_relu());  // the shifted path: a temporary
}

TEST_CASE("FactorizedReduce is DARTS' composition, and keeps no shifted copy of its input") {
  // DARTS: bn(cat(conv_1(relu(x)), conv_2(relu(x)[:, :, 1:, 1:]))). The module runs conv_2 on x
  // padded by one and crops its output instead; the values and gradients must be the
  // reference composition's on both of its paths (fused ReLU, shared ReLU), to rounding: the
  // same products over the channels, but at other positions of the product's column tiles.
  using VarF = Var<float, Cpu>;
  const Shape xs{2, 6, 8, 10};
  PhiloxGenerator g(12), data(13);
  const FactorizedReduce<float> fr(6, 8, false, g);
  const std::vector<VarF> params = fr.parameters();  // conv_1.weight, conv_2.weight (no affine BN)
  REQUIRE(params.size() == 2);
  auto xv = Tensor<float, Cpu>::empty(xs);
  for (index_t i = 0; i < xv.numel(); ++i) xv[i] = 2 * float(data.uniform()) - 1;
  auto r = Tensor<float, Cpu>::empty({2, 8, 4, 5});
  for (index_t i = 0; i < r.numel(); ++i) r[i] = 2 * float(data.uniform()) - 1;
  nn::BatchNorm2d<float, Cpu> reference_bn(8, false);
  auto run = [&](int path) {  // 0: the module, 1: the module on a shared relu(x), 2: DARTS' text
    VarF x(xv.clone(), true);
    fr.zero_grad();
    VarF y;
    if (path == 0) {
      y = fr(x);
    } else if (path == 1) {
      y = fr.from_relu(relu(x));
    } else {
      const VarF rx = relu(x);
      VarF halves[] = {conv2d(rx, params[0], VarF(), {.stride = 2}),
                       conv2d(shift_crop(rx), params[1], VarF(), {.stride = 2})};
      y = reference_bn(concat_channels<float, Cpu>(halves));
    }
    REQUIRE(y.shape() == r.shape());
    backward(y, r);
    return std::vector<Tensor<float, Cpu>>{y.value().clone(), x.grad().clone(), params[0].grad().clone(),
                                           params[1].grad().clone()};
  };
  const auto reference = run(2);
  for (const int path : {0, 1}) {
    CAPTURE(path);
    const auto got = run(path);
    for (std::size_t i = 0; i < got.size(); ++i) {
      CAPTURE(i);  // 0: output, 1: dx, 2, 3: the convolutions' weight gradients
      REQUIRE(got[i].shape() == reference[i].shape());
      const float scale = reference[i].eigen().abs().maxCoeff();
      CHECK(scale > 0.1f);
      CHECK((got[i].eigen() - reference[i].eigen()).abs().maxCoeff() <= 1e-6f * scale);
    }
  }
  // Held between forward and backward: the BN's output (the result) and its [2, 8] statistics;
  // x is the caller's. The shifted crop of x ([2, 6, 7, 9], larger than the output) is not.
  auto& alloc = CachingAllocator<Cpu>::instance();
  VarF x(xv.clone(), true);
  const std::size_t before = alloc.stats().bytes_in_use;
  VarF y = fr(x);
  CHECK(alloc.stats().bytes_in_use - before == held_bytes(y.shape()) + held_bytes({2, 8}));
}

TEST_CASE("DARTS op set: names in alpha order, factories, errors") {
  CHECK(DartsOps::kSize == 8);
  CHECK(DartsOps::kNames[4] == "sep_conv_3x3");
  CHECK(DartsOps::index_of("dil_conv_5x5") == 7);
  CHECK(DartsOps::index_of("conv_7x1_1x7") == -1);
  PhiloxGenerator g(1);
  CHECK_THROWS_WITH_AS(DartsOps::make<float>("sep_conv_7x7", 4, 1, Phase::kEval, g),
                       doctest::Contains("unknown op 'sep_conv_7x7' (known: none, max_pool_3x3"), datanas::error);
  // Search-phase pools carry a non-affine BN (no parameters), eval pools nothing; sep_conv has
  // two dw + two pw convs and (eval) two affine BNs: 2 * (9C + C^2 + 2C).
  const index_t c = 6;
  CHECK(DartsOps::make<float>("max_pool_3x3", c, 1, Phase::kSearch, g)->parameter_count() == 0);
  CHECK(DartsOps::make<float>("sep_conv_3x3", c, 1, Phase::kEval, g)->parameter_count() == 2 * (9 * c + c * c + 2 * c));
  CHECK(DartsOps::make<float>("sep_conv_3x3", c, 1, Phase::kSearch, g)->parameter_count() == 2 * (9 * c + c * c));
  CHECK(DartsOps::make<float>("dil_conv_5x5", c, 2, Phase::kEval, g)->parameter_count() == 25 * c + c * c + 2 * c);
  CHECK(DartsOps::make<float>("skip_connect", c, 2, Phase::kEval, g)->parameter_count() == 2 * c * (c / 2) + 2 * c);
  CHECK(DartsOps::make<float>("skip_connect", c, 1, Phase::kEval, g)->is_identity());
  CHECK(DartsOps::make<float>("none", c, 2, Phase::kEval, g)->is_zero());
}

TEST_CASE("every DARTS op maps [N, C, H, W] to C channels at stride 1 and 2 (odd sizes too)") {
  PhiloxGenerator g(2);
  Var<float> x(Tensor<float>::full({2, 4, 7, 8}, 0.5f));
  Var<float> x_even(Tensor<float>::full({2, 4, 8, 6}, 0.5f));
  NoGradGuard ng;
  for (auto name : DartsOps::kNames) {
    CAPTURE(name);
    auto op1 = DartsOps::make<float>(name, 4, 1, Phase::kSearch, g);
    CHECK((*op1)(x).shape() == Shape{2, 4, 7, 8});
    auto op2 = DartsOps::make<float>(name, 4, 2, Phase::kSearch, g);
    CHECK((*op2)(x_even).shape() == Shape{2, 4, 4, 3});
    // Ops that start with ReLU give the same values from a shared relu(x) (the mixed op's path).
    if (op2->relu_first()) {
      auto a = (*op2)(x_even).value(), b = op2->from_relu(relu(x_even)).value();
      CHECK(std::memcmp(a.data(), b.data(), sizeof(float) * std::size_t(a.numel())) == 0);
    }
  }
  CHECK(DartsOps::make<float>("sep_conv_3x3", 4, 1, Phase::kSearch, g)->relu_first());
  CHECK(DartsOps::make<float>("dil_conv_5x5", 4, 2, Phase::kSearch, g)->relu_first());
  CHECK(DartsOps::make<float>("skip_connect", 4, 2, Phase::kSearch, g)->relu_first());
  CHECK_FALSE(DartsOps::make<float>("max_pool_3x3", 4, 1, Phase::kSearch, g)->relu_first());
  CHECK_THROWS_AS(DartsOps::make<float>("avg_pool_3x3", 4, 1, Phase::kSearch, g)->from_relu(x), datanas::error);
}

TEST_CASE("supernet shapes: 8 cells, reductions at 2 and 5, 14 x 8 alphas") {
  PhiloxGenerator g(3);
  SupernetConfig cfg{.init_channels = 4, .layers = 5, .in_channels = 1, .num_classes = 7};
  Supernet<float, DartsEgs> net(cfg, g);
  CHECK(net.alpha_normal().shape() == Shape{14, 8});
  CHECK(net.alpha_reduce().shape() == Shape{14, 8});
  CHECK_FALSE(net.cell(0).reduction());
  CHECK(net.cell(1).reduction());  // layers / 3
  CHECK(net.cell(3).reduction());  // 2 * layers / 3
  Var<float> x(Tensor<float>::full({3, 1, 16, 16}, 0.1f));
  PhiloxGenerator noise(4);
  NoGradGuard ng;
  auto y = net.forward(x, {}, noise, false);
  CHECK(y.shape() == Shape{3, 7});
  auto ys = net.forward(x, {}, noise, true);  // sparse: only sampled ops run
  CHECK(ys.shape() == Shape{3, 7});
  // Default DARTS sizes: 8 cells, C = 16, CIFAR -> 1.93M weights as the DARTS code reports
  // (it counts weights only, not alpha; its "param size" excludes nothing else in search).
  Supernet<float, DartsSoftmax> darts(SupernetConfig{}, g);
  CHECK(darts.parameter_count() == 1930618);
}

TEST_CASE("sparse and dense forwards agree when the weights are the same hard code") {
  PhiloxGenerator g(5);
  SupernetConfig cfg{.init_channels = 4, .layers = 3, .in_channels = 2, .num_classes = 3};
  Supernet<double, DartsEgs> net(cfg, g);
  VarD x(random_tensor({2, 2, 8, 8}, 6));
  PhiloxGenerator n1(7), n2(7);
  auto dense = net.forward(x, {}, n1, false).value();
  auto sparse = net.forward(x, {}, n2, true).value();
  for (index_t i = 0; i < dense.numel(); ++i) CHECK(sparse[i] == doctest::Approx(dense[i]).epsilon(1e-10));
  clear_tape<double>();
}

TEST_CASE("a sparse forward skips edges that run nothing and matches the dense one") {
  // Hand-made hard codes [14 edges x 8 ops] (DartsOps: none, max, avg, skip, sep3, sep5, dil3,
  // dil5). Edges with no op to run are left out of their node's sum in sparse mode; node 1 of
  // the normal cell and node 2 of the reduction cell select only "none" on one edge, so they
  // take that edge's zeros (and the normal cell's edges 8 and 12 read that zero node). The
  // values and every gradient must be the dense forward's, except that the mixing weights of
  // ops that did not run get 0 (the sparse rule, symbolic zeros).
  auto code = [](std::initializer_list<std::pair<int, int>> on) {  // (edge, op) pairs set to 1
    TensorD t = TensorD::zeros({14 * 8});
    for (auto [e, k] : on) t[e * 8 + k] = 1;
    return t;
  };
  const TensorD wn = code({{0, 4}, {3, 0}, {5, 3}, {7, 1}, {8, 1}, {9, 7}, {12, 2}, {13, 6}});
  const TensorD wr = code({{0, 3}, {1, 5}, {4, 1}, {6, 0}, {10, 4}, {11, 2}});
  PhiloxGenerator g(15);
  SupernetConfig cfg{.init_channels = 4, .layers = 3, .in_channels = 2, .num_classes = 3};
  Supernet<double, DartsEgs> net(cfg, g);
  const TensorD xv = random_tensor({2, 2, 8, 8}, 16), r = random_tensor({2, 3}, 17);
  struct Result {
    TensorD y, dx, dwn, dwr;
    std::vector<TensorD> dweights;
  };
  auto run = [&](bool sparse) {
    net.zero_grad();
    VarD x(xv.clone(), true), vn(wn.clone(), true), vr(wr.clone(), true);
    VarD y = net.forward(x, vn, vr, sparse);
    backward(y, r);
    return Result{y.value().clone(), x.grad().clone(), vn.grad().clone(), vr.grad().clone(), grads_of(net.weights())};
  };
  const Result dense = run(false), sparse = run(true);
  check_close(sparse.y, dense.y, 1e-9);
  check_close(sparse.dx, dense.dx, 1e-9);
  check_close(sparse.dweights, dense.dweights, 1e-9);
  for (const auto& [w, dw_sparse, dw_dense] :
       {std::tuple{&wn, &sparse.dwn, &dense.dwn}, std::tuple{&wr, &sparse.dwr, &dense.dwr}})
    for (index_t i = 0; i < w->numel(); ++i) {
      CAPTURE(i);
      // The ops that ran: the dense gradient. None, and ops with weight 0: exactly 0.
      const bool ran = (*w)[i] != 0 && i % 8 != 0;
      if (ran)
        CHECK((*dw_sparse)[i] == doctest::Approx((*dw_dense)[i]).epsilon(1e-9).scale(1));
      else
        CHECK((*dw_sparse)[i] == 0);
    }
  CHECK(std::abs(dense.dwn[13 * 8 + 5]) > 1e-8);  // dense: an op that did not run has a gradient
}

TEST_CASE("a search cell's node sums are DARTS' sums of mixed edges, dense and sparse") {
  // The cell sums each node's terms over all its edges in weighted_sums of up to
  // kMaxMixedTerms terms; the reference is the definition: node i = sum over its edges of
  // MixedOp(state_j), edge by edge, added. Dense weights are random (node 3 has 5 edges x 7
  // ops = 35 terms: three sums); the sparse code leaves node 1 of the normal cell with "none"
  // only and edges that run nothing.
  const TensorD dense_w = random_tensor({14 * 8}, 31, 0.05, 1.0);
  TensorD code = TensorD::zeros({14 * 8});
  for (auto [e, k] : {std::pair{0, 4}, {1, 3}, {3, 0}, {5, 3}, {5, 6}, {8, 1}, {9, 7}, {12, 2}, {13, 5}})
    code[e * 8 + k] = 0.5;
  for (const bool reduction : {false, true})
    for (const bool sparse : {false, true}) {
      CAPTURE(reduction);
      CAPTURE(sparse);
      PhiloxGenerator g(32);
      const SearchCell<double, DartsOps, 4, 4> cell(6, 5, 4, reduction, reduction, g);
      const TensorD& wv = sparse ? code : dense_w;
      const double* host_w = sparse ? wv.data() : nullptr;
      const TensorD s0v = random_tensor({2, 6, 16, 16}, 33), s1v = random_tensor({2, 5, 8, 8}, 34);
      const TensorD dy = random_tensor({2, 16, reduction ? 4 : 8, reduction ? 4 : 8}, 35);
      struct Result {
        TensorD y, ds0, ds1, dw;
        std::vector<TensorD> dparams;
      };
      auto run = [&](bool reference) {
        cell.zero_grad();
        VarD s0(reduction ? s0v.clone() : random_tensor({2, 6, 8, 8}, 33), true), s1(s1v.clone(), true);
        VarD w(wv.clone(), true);
        VarD y;
        if (reference) {
          std::array<VarD, 6> st{cell.preprocess(0)(s0), cell.preprocess(1)(s1)};
          int e = 0;
          for (int i = 0; i < 4; ++i) {
            VarD node;
            for (int j = 0; j < 2 + i; ++j, ++e) {
              const VarD t = cell.edge(e)(st[std::size_t(j)], w, e * 8, host_w);
              node = node.defined() ? add(node, t) : t;
            }
            st[std::size_t(2 + i)] = node;
          }
          y = concat_channels<double, Cpu>(std::span<const VarD>(st.data() + 2, 4));
        } else {
          y = cell(s0, s1, w, host_w);
        }
        backward(y, dy);
        return Result{y.value().clone(), s0.grad().clone(), s1.grad().clone(), w.grad().clone(),
                      grads_of(cell.parameters())};
      };
      const Result fused = run(false), ref = run(true);
      check_close(fused.y, ref.y, 1e-12);
      check_close(fused.ds0, ref.ds0, 1e-12);
      check_close(fused.ds1, ref.ds1, 1e-12);
      check_close(fused.dw, ref.dw, 1e-12);
      check_close(fused.dparams, ref.dparams, 1e-12);
    }
}

TEST_CASE("gradients reach alpha and weights through a whole supernet") {
  PhiloxGenerator g(8);
  SupernetConfig cfg{.init_channels = 2, .layers = 3, .in_channels = 1, .num_classes = 3};
  using Space = SearchSpace<OpSet<NoneOp, AvgPool3x3, SkipConnect, SepConv3x3>, 2, 2,
                            estimators::Softmax, Granularity::kEdge>;
  Supernet<double, Space> net(cfg, g);
  VarD x(random_tensor({2, 1, 8, 8}, 9));
  auto labels = Tensor<std::int32_t>::from({2}, {0, 2});
  // Finite differences on a few alpha entries of the full network (batch-norm in train mode
  // makes every sample's output depend on the batch; the check holds all the same).
  auto loss_at = [&]() {
    PhiloxGenerator n(1);
    return cross_entropy(net.forward(x, {}, n, false), labels);
  };
  clear_tape<double>();
  backward(loss_at());
  const TensorD grad = net.alpha_normal().grad().clone();
  for (index_t i : {index_t(1), index_t(6), index_t(13)}) {
    double& a = net.alpha_normal().value()[i];
    const double orig = a, h = 1e-6;
    double lp, lm;
    {
      NoGradGuard ng;
      a = orig + h;
      lp = loss_at().value()[0];
      a = orig - h;
      lm = loss_at().value()[0];
      a = orig;
    }
    CHECK(grad[i] == doctest::Approx((lp - lm) / (2 * h)).epsilon(1e-5));
  }
}
}
