// The recurrent cell's ops on the GPU against the CPU (tests/gpu/parity.hpp): highway with
// every activation, highway_mix (dense and sparse, a zero weight, a weight vector shared by two
// calls), zero_if_all_none (kept and all-none nodes), mul_mask, scale_rows, concat_cols,
// stack_rows, slice_rows, view, temporal_penalty and dropout masks drawn for the device; forward, and
// gradients written then accumulated. Odd shapes: batch 1 and 3, units 7 and 33, plus sizes that
// need several blocks in the reductions.
#include "parity.hpp"

#include <array>
#include <cstring>
#include <type_traits>

#include "datanas/ops/arithmetic.hpp"
#include "datanas/ops/recurrent.hpp"

using namespace datanas;
using gpu_test::check_parity;
using gpu_test::Input;

// The kernels take RecurrentActivation's values as plain codes.
static_assert(int(RecurrentActivation::kNone) == cuda::kRecurrentNone);
static_assert(int(RecurrentActivation::kTanh) == cuda::kRecurrentTanh);
static_assert(int(RecurrentActivation::kRelu) == cuda::kRecurrentRelu);
static_assert(int(RecurrentActivation::kSigmoid) == cuda::kRecurrentSigmoid);
static_assert(int(RecurrentActivation::kIdentity) == cuda::kRecurrentIdentity);
static_assert(detail::HighwayTerms<float>::kMax == cuda::kMaxHighwayTerms);

namespace {

// Static storage: highway_mix's backward reads the activation list.
constexpr std::array<RecurrentActivation, 5> kActs = {
    RecurrentActivation::kNone, RecurrentActivation::kTanh, RecurrentActivation::kRelu,
    RecurrentActivation::kSigmoid, RecurrentActivation::kIdentity};
constexpr std::array<RecurrentActivation, 4> kActsNoNone = {
    RecurrentActivation::kIdentity, RecurrentActivation::kSigmoid, RecurrentActivation::kTanh,
    RecurrentActivation::kRelu};

/// (batch, units) of the brief: batch 1 and 3, units 7 and 33.
constexpr std::array<std::array<index_t, 2>, 4> kShapes = {{{1, 7}, {1, 33}, {3, 7}, {3, 33}}};

template <class Xs>
using DeviceOf = typename std::remove_cvref_t<decltype(std::declval<Xs>()[0])>::device_type;

/// Gates [B, 2H] with some h entries exactly 0 (relu's kink: gradient 0 on both devices).
Tensor<float> gates(index_t b, index_t u, PhiloxGenerator& gen) {
  Tensor<float> ch = gpu_test::random_normal({b, 2 * u}, gen, 2.0f);
  for (index_t r = 0; r < b; ++r) ch(r, u + (r % u)) = 0.0f;
  return ch;
}

/// Mixing weights of `n` entries, with a zero at `zero_at`.
Tensor<float> weights(index_t n, index_t zero_at, PhiloxGenerator& gen) {
  Tensor<float> w = Tensor<float>::empty({n});
  for (index_t i = 0; i < n; ++i) w[i] = float(0.1 + 0.8 * gen.uniform());
  w[zero_at] = 0.0f;
  return w;
}

}  // namespace

TEST_CASE("highway with every activation on the GPU matches the CPU") {
  PhiloxGenerator gen(21);
  for (const auto& shape : kShapes) {
    const index_t b = shape[0], u = shape[1];
    CAPTURE(b);
    CAPTURE(u);
    const Tensor<float> s = gpu_test::random_normal({b, u}, gen), ch = gates(b, u, gen);
    for (RecurrentActivation a : kActs) {
      CAPTURE(int(a));
      check_parity("highway", {{s}, {ch}}, [a](auto xs, auto&) { return highway(xs[0], xs[1], a); });
      check_parity("highway, state constant", {{s, false}, {ch}},
                   [a](auto xs, auto&) { return highway(xs[0], xs[1], a); });
      check_parity("highway, gates constant", {{s}, {ch, false}},
                   [a](auto xs, auto&) { return highway(xs[0], xs[1], a); });
    }
  }
}

TEST_CASE("highway_mix on the GPU matches the CPU (dense and sparse, a zero weight)") {
  PhiloxGenerator gen(22);
  for (const auto& shape : kShapes) {
    const index_t b = shape[0], u = shape[1];
    CAPTURE(b);
    CAPTURE(u);
    const Tensor<float> s = gpu_test::random_normal({b, u}, gen), ch = gates(b, u, gen);
    // 9 weights, the call reads [2, 7): index 2 is none's, index 4 (relu's) is exactly 0;
    // entries outside the call get gradient 0 (overwrite) or keep theirs (accumulate).
    const Tensor<float> w = weights(9, 4, gen);
    for (bool sparse : {false, true}) {
      CAPTURE(sparse);
      check_parity("highway_mix", {{s}, {ch}, {w}}, [sparse](auto xs, auto&) {
        return highway_mix(xs[0], xs[1], xs[2], 2, std::span<const RecurrentActivation>(kActs), sparse);
      });
      check_parity("highway_mix, weights constant", {{s}, {ch}, {w, false}}, [sparse](auto xs, auto&) {
        return highway_mix(xs[0], xs[1], xs[2], 2, std::span<const RecurrentActivation>(kActs), sparse);
      });
      check_parity("highway_mix, only weights", {{s, false}, {ch, false}, {w}}, [sparse](auto xs, auto&) {
        return highway_mix(xs[0], xs[1], xs[2], 2, std::span<const RecurrentActivation>(kActs), sparse);
      });
    }
    // Other weight vectors: all zero but one, no none column at offset 0, every weight 0.
    Tensor<float> one = Tensor<float>::zeros({5});
    one[3] = 0.7f;
    Tensor<float> dense = weights(4, 0, gen);
    dense[0] = 1.3f;
    const Tensor<float> zero = Tensor<float>::zeros({5});
    for (bool sparse : {false, true}) {
      CAPTURE(sparse);
      check_parity("highway_mix, one weight", {{s}, {ch}, {one}}, [sparse](auto xs, auto&) {
        return highway_mix(xs[0], xs[1], xs[2], 0, std::span<const RecurrentActivation>(kActs), sparse);
      });
      check_parity("highway_mix, no none", {{s}, {ch}, {dense}}, [sparse](auto xs, auto&) {
        return highway_mix(xs[0], xs[1], xs[2], 0, std::span<const RecurrentActivation>(kActsNoNone), sparse);
      });
      check_parity("highway_mix, all zero", {{s}, {ch}, {zero}}, [sparse](auto xs, auto&) {
        return highway_mix(xs[0], xs[1], xs[2], 0, std::span<const RecurrentActivation>(kActs), sparse);
      });
    }
  }
}

TEST_CASE("highway_mix: one weight vector shared by two calls, large sizes") {
  PhiloxGenerator gen(23);
  // (3, 33): one block; (64, 257) and (256, 300): many blocks, grid-stride beyond 65536 threads.
  for (const auto& shape : std::array<std::array<index_t, 2>, 3>{{{3, 33}, {64, 257}, {256, 300}}}) {
    const index_t b = shape[0], u = shape[1];
    CAPTURE(b);
    CAPTURE(u);
    const Tensor<float> w = weights(12, 7, gen);
    std::vector<Input> in = {{gpu_test::random_normal({b, u}, gen)}, {gates(b, u, gen)},
                             {gpu_test::random_normal({b, u}, gen)}, {gates(b, u, gen)}, {w}};
    for (bool sparse : {false, true}) {
      CAPTURE(sparse);
      // Two predecessors mixed into one node, as the search cell does: weights [0, 5) and
      // [5, 10) of one vector; the second backward writer of dL/dw accumulates.
      check_parity("highway_mix shared weights", in, [sparse](auto xs, auto&) {
        const auto acts = std::span<const RecurrentActivation>(kActs);
        return add(highway_mix(xs[0], xs[1], xs[4], 0, acts, sparse),
                   highway_mix(xs[2], xs[3], xs[4], 5, acts, sparse));
      });
    }
  }
}

TEST_CASE("highway_mix's weight gradient on the GPU is deterministic") {
  PhiloxGenerator gen(24);
  const index_t b = 64, u = 257;
  const Tensor<float> s = gpu_test::random_normal({b, u}, gen), ch = gates(b, u, gen),
                      w = weights(5, 2, gen), dy = gpu_test::random_normal({b, u}, gen);
  Tensor<float> first;
  for (int run = 0; run < 3; ++run) {
    Var<float, Cuda> sv(cuda::to_device(s), true), cv(cuda::to_device(ch), true), wv(cuda::to_device(w), true);
    backward(highway_mix(sv, cv, wv, 0, std::span<const RecurrentActivation>(kActs)), cuda::to_device(dy));
    const Tensor<float> g = cuda::to_host(wv.grad());
    if (run == 0)
      first = g;
    else
      CHECK(std::memcmp(g.data(), first.data(), sizeof(float) * std::size_t(g.numel())) == 0);
  }
}

TEST_CASE("zero_if_all_none on the GPU matches the CPU (kept and all-none nodes)") {
  PhiloxGenerator gen(29);
  // A node of 3 predecessors from offset 1: entries [1, 16), none at 1, 6 and 11. Kept by a
  // single non-zero entry at either end of the node, all-none with non-zero entries only in
  // the none columns and just outside the node.
  Tensor<float> none_only = Tensor<float>::zeros({17});
  none_only[0] = none_only[16] = 1.0f;
  none_only[1] = none_only[6] = none_only[11] = 0.5f;
  Tensor<float> first = none_only.clone(), last = none_only.clone();
  first[2] = 0.25f;
  last[15] = 1e-30f;
  const Tensor<float> dense = weights(17, 4, gen);
  const auto acts = std::span<const RecurrentActivation>(kActs);
  for (const auto& shape : kShapes) {
    const index_t b = shape[0], u = shape[1];
    CAPTURE(b);
    CAPTURE(u);
    const Tensor<float> x = gpu_test::random_normal({b, u}, gen);
    for (const Tensor<float>* w : std::array<const Tensor<float>*, 4>{&none_only, &first, &last, &dense}) {
      CAPTURE(w == &none_only);
      check_parity("zero_if_all_none", {{x}}, [&](auto xs, auto&) {
        return zero_if_all_none(xs[0], gpu_test::on<DeviceOf<decltype(xs)>>(*w), 1, 3, acts);
      });
    }
  }
}

TEST_CASE("mul_mask and scale_rows on the GPU match the CPU") {
  PhiloxGenerator gen(25);
  for (const auto& shape : kShapes) {
    const index_t b = shape[0], u = shape[1];
    CAPTURE(b);
    CAPTURE(u);
    const index_t steps = 5;
    const Tensor<float> x = gpu_test::random_normal({steps * b, u}, gen);
    const Tensor<float> locked = gpu_test::random_normal({b, u}, gen),
                        full = gpu_test::random_normal({steps * b, u}, gen),
                        scale = gpu_test::random_normal({steps * b}, gen);
    check_parity("mul_mask, time-shared", {{x}}, [&](auto xs, auto&) {
      return mul_mask(xs[0], gpu_test::on<DeviceOf<decltype(xs)>>(locked));
    });
    check_parity("mul_mask, element-wise", {{x}}, [&](auto xs, auto&) {
      return mul_mask(xs[0], gpu_test::on<DeviceOf<decltype(xs)>>(full));
    });
    check_parity("mul_mask, one element", {{x}}, [&](auto xs, auto&) {
      return mul_mask(xs[0], gpu_test::on<DeviceOf<decltype(xs)>>(Tensor<float>::full({1}, -1.5f)));
    });
    check_parity("scale_rows", {{x}}, [&](auto xs, auto&) {
      return scale_rows(xs[0], gpu_test::on<DeviceOf<decltype(xs)>>(scale));
    });
    // A dropout mask drawn inside the op from the harness's generator (same seed per device).
    for (double keep : {0.6, 1.0}) {
      CAPTURE(keep);
      check_parity("locked dropout", {{x}}, [&](auto xs, auto& g) {
        using D = DeviceOf<decltype(xs)>;
        const Tensor<float, D> m = Tensor<float, D>::empty({b, u});
        bernoulli_mask(m, keep, g);
        return mul_mask(xs[0], m);
      });
    }
  }
}

TEST_CASE("a dropout mask drawn for the GPU equals the CPU's and consumes the same counters") {
  for (const auto& shape : kShapes) {
    const index_t b = shape[0], u = shape[1];
    CAPTURE(b);
    CAPTURE(u);
    PhiloxGenerator gc(31), gg(31);
    const Tensor<float> mc = Tensor<float>::empty({b, u});
    const Tensor<float, Cuda> mg = Tensor<float, Cuda>::empty({b, u});
    bernoulli_mask(mc, 0.35, gc);
    bernoulli_mask(mg, 0.35, gg);
    const Tensor<float> back = cuda::to_host(mg);
    CHECK(std::memcmp(back.data(), mc.data(), sizeof(float) * std::size_t(mc.numel())) == 0);
    CHECK(gc.offset() == gg.offset());
    bernoulli_mask(mg, 1.0, gg);
    const Tensor<float> ones = cuda::to_host(mg);
    for (index_t i = 0; i < ones.numel(); ++i) CHECK(ones[i] == 1.0f);
    // Double masks keep the CPU's scale T(1 / keep) exactly, too.
    const Tensor<double> dc = Tensor<double>::empty({b, u});
    const Tensor<double, Cuda> dg = Tensor<double, Cuda>::empty({b, u});
    bernoulli_mask(dc, 0.8, gc);
    bernoulli_mask(dg, 0.8, gg);
    const Tensor<double> dback = cuda::to_host(dg);
    CHECK(std::memcmp(dback.data(), dc.data(), sizeof(double) * std::size_t(dc.numel())) == 0);
  }
}

TEST_CASE("concat_cols, stack_rows, slice_rows and view on the GPU match the CPU") {
  PhiloxGenerator gen(26);
  for (const auto& shape : kShapes) {
    const index_t b = shape[0], u = shape[1];
    CAPTURE(b);
    CAPTURE(u);
    const Tensor<float> a = gpu_test::random_normal({b, u}, gen), c = gpu_test::random_normal({b, u + 3}, gen);
    check_parity("concat_cols", {{a}, {c}}, [](auto xs, auto&) { return concat_cols(xs[0], xs[1]); });
    check_parity("concat_cols, right constant", {{a}, {c, false}},
                 [](auto xs, auto&) { return concat_cols(xs[0], xs[1]); });
    check_parity("concat_cols, left constant", {{a, false}, {c}},
                 [](auto xs, auto&) { return concat_cols(xs[0], xs[1]); });
    check_parity("concat_cols with itself", {{a}}, [](auto xs, auto&) { return concat_cols(xs[0], xs[0]); });

    // Several inputs of different row counts, one constant, one stacked twice (its gradient
    // is written, then accumulated, within one backward).
    const std::vector<Input> parts = {{gpu_test::random_normal({b, u}, gen)},
                                      {gpu_test::random_normal({2 * b, u}, gen)},
                                      {gpu_test::random_normal({b, u}, gen), false},
                                      {gpu_test::random_normal({1, u}, gen)}};
    check_parity("stack_rows", parts, [](auto xs, auto&) {
      using V = std::remove_cvref_t<decltype(xs[0])>;
      const V list[] = {xs[0], xs[1], xs[2], xs[0], xs[3]};
      return stack_rows<float, DeviceOf<decltype(xs)>>(std::span<const V>(list));
    });
    check_parity("stack_rows, one input", {{a}}, [](auto xs, auto&) {
      return stack_rows<float, DeviceOf<decltype(xs)>>(xs.subspan(0, 1));
    });
    // slice_rows as the language model uses it (a window cut into its time steps, stacked
    // again), one slice alone (the other rows' gradient is 0) and overlapping slices.
    const Tensor<float> window = gpu_test::random_normal({3 * b, u}, gen);
    check_parity("slice_rows, time steps", {{window}}, [b](auto xs, auto&) {
      using V = std::remove_cvref_t<decltype(xs[0])>;
      const V steps[] = {slice_rows(xs[0], 0, b), slice_rows(xs[0], b, b), slice_rows(xs[0], 2 * b, b)};
      return stack_rows<float, DeviceOf<decltype(xs)>>(std::span<const V>(steps));
    });
    check_parity("slice_rows, one slice", {{window}}, [b](auto xs, auto&) { return slice_rows(xs[0], b, b); });
    check_parity("slice_rows, overlapping", {{window}}, [b](auto xs, auto&) {
      return add(slice_rows(xs[0], 0, 2 * b), slice_rows(xs[0], b, 2 * b));
    });

    check_parity("view", {{a}}, [u, b](auto xs, auto&) { return view(xs[0], Shape{u, b, 1, 1}); });
    // A view feeding an op whose backward reads the view's gradient through the shared storage.
    check_parity("view then scale_rows", {{a}}, [u, b](auto xs, auto&) {
      using D = DeviceOf<decltype(xs)>;
      const Tensor<float> sc = Tensor<float>::full({u}, 0.5f);
      return scale_rows(view(xs[0], Shape{u, b}), gpu_test::on<D>(sc));
    });
  }
}

TEST_CASE("temporal_penalty on the GPU matches the CPU, deterministically") {
  PhiloxGenerator gen(27);
  for (const auto& shape : kShapes) {
    const index_t b = shape[0], u = shape[1];
    for (index_t steps : {2, 5, 35}) {
      CAPTURE(b);
      CAPTURE(u);
      CAPTURE(steps);
      const Tensor<float> x = gpu_test::random_normal({steps * b, u}, gen);
      check_parity("temporal_penalty", {{x}}, [b](auto xs, auto&) { return temporal_penalty(xs[0], b); });
      // Scaled as in the language model's loss, so that dy[0] is not 1.
      check_parity("temporal_penalty scaled", {{x}}, [b](auto xs, auto&) {
        return scale(temporal_penalty(xs[0], b), 2.5f);
      });
    }
  }
  // Many blocks in the reduction (35 steps of [64, 300]: 672000 differences); the same bits
  // on every run.
  const index_t steps = 35, b = 64, u = 300;
  const Tensor<float> x = gpu_test::random_normal({steps * b, u}, gen);
  check_parity("temporal_penalty, large", {{x}}, [](auto xs, auto&) { return temporal_penalty(xs[0], 64); });
  const Var<float, Cuda> xg(cuda::to_device(x));
  const Tensor<float> first = cuda::to_host(temporal_penalty(xg, b).value());
  for (int run = 0; run < 3; ++run)
    CHECK(cuda::to_host(temporal_penalty(xg, b).value())[0] == first[0]);
}

TEST_CASE("bad input to the recurrent ops on the GPU gives the CPU's errors") {
  using VG = Var<float, Cuda>;
  using TG = Tensor<float, Cuda>;
  const VG s(TG::zeros({2, 3})), ch(TG::zeros({2, 6})), w(TG::zeros({5}));
  CHECK_THROWS_WITH_AS(highway(s, VG(TG::zeros({2, 5})), RecurrentActivation::kTanh),
                       doctest::Contains("gates must be [2, 6]"), error);
  CHECK_THROWS_WITH_AS(highway_mix(s, ch, w, 2, std::span<const RecurrentActivation>(kActs)),
                       doctest::Contains("have no entries [2, 7)"), error);
  CHECK_THROWS_WITH_AS(zero_if_all_none(s, TG::zeros({9}), 0, 2, std::span<const RecurrentActivation>(kActs)),
                       doctest::Contains("have no entries [0, 10)"), error);
  CHECK_THROWS_WITH_AS(mul_mask(s, TG::zeros({4})), doctest::Contains("does not tile"), error);
  CHECK_THROWS_WITH_AS(scale_rows(s, TG::zeros({3})), doctest::Contains("needs a scale of [2]"), error);
  CHECK_THROWS_WITH_AS(concat_cols(s, VG(TG::zeros({3, 3}))), doctest::Contains("cannot put"), error);
  const VG parts[] = {s, VG(TG::zeros({2, 4}))};
  CHECK_THROWS_WITH_AS((stack_rows<float, Cuda>(std::span<const VG>(parts))),
                       doctest::Contains("input 1 has shape"), error);
  CHECK_THROWS_WITH_AS(slice_rows(s, 1, 2), doctest::Contains("rows [1, 3) are outside x [2, 3]"), error);
  CHECK_THROWS_WITH_AS(temporal_penalty(s, 2), doctest::Contains("at least 2 time steps"), error);
  CHECK_THROWS_WITH_AS(view(s, Shape{4}), doctest::Contains("cannot view"), error);
  PhiloxGenerator gen(1);
  CHECK_THROWS_WITH_AS(bernoulli_mask(TG::empty({2}), 0.0, gen), doctest::Contains("keep probability"), error);
}
