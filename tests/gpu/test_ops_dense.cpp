// The dense op family on the GPU against the CPU (tests/gpu/parity.hpp): linear and matmul
// (cuBLAS; GroupedMatmul's weight gradient in groups), embedding, softmax / log-softmax /
// cross-entropy, channel concatenation and crop, dropout and drop path; forward, and gradients
// written then accumulated. Plus what parity cannot see: the embedding gradient's overwrite path is
// the CPU's bits, dropout draws the CPU's masks bit for bit and consumes the same counters, and bad
// device labels / ids give NaN instead of touching memory out of bounds; the device accuracy count
// equals the CPU's.
#include "parity.hpp"

#include <algorithm>
#include <array>
#include <cmath>
#include <type_traits>

#include "datanas/ops/activation.hpp"
#include "datanas/ops/arithmetic.hpp"
#include "datanas/ops/dropout.hpp"
#include "datanas/ops/linear.hpp"
#include "datanas/ops/loss.hpp"
#include "datanas/ops/structure.hpp"

using namespace datanas;
using gpu_test::check_parity;
using gpu_test::Input;

namespace {

/// The device of the Vars an op lambda receives.
template <class Span>
using device_of = typename std::remove_cvref_t<decltype(std::declval<Span>()[0])>::device_type;

/// int32 values uniform in [0, k), with deliberate repeats when k is small.
Tensor<std::int32_t> random_ids(const Shape& s, index_t k, PhiloxGenerator& gen) {
  Tensor<std::int32_t> t = Tensor<std::int32_t>::empty(s);
  for (index_t i = 0; i < t.numel(); ++i) t[i] = std::int32_t(gen.next_block().v[0] % std::uint32_t(k));
  return t;
}

/// Exact equality of a device tensor with a host tensor (NaN equals NaN).
bool same_bits(const Tensor<float, Cuda>& got, const Tensor<float>& want) {
  const Tensor<float> h = cuda::to_host(got);
  for (index_t i = 0; i < want.numel(); ++i)
    if (!(h[i] == want[i] || (std::isnan(h[i]) && std::isnan(want[i])))) return false;
  return true;
}

}  // namespace

TEST_CASE("linear on the GPU matches the CPU, with and without bias") {
  PhiloxGenerator gen(21);
  // (N, in, out): batch 1 and 5, odd sizes, a one-feature input, a PTB-like decoder slice.
  const std::array<std::array<index_t, 3>, 5> sizes{{{1, 7, 5}, {5, 13, 9}, {5, 1, 3}, {1, 1, 1}, {70, 850, 333}}};
  for (const auto& s : sizes) {
    const index_t n = s[0], in = s[1], out = s[2];  // not [n, in, out]: CAPTURE needs variables
    CAPTURE(n);
    CAPTURE(in);
    CAPTURE(out);
    const Tensor<float> x = gpu_test::random_normal({n, in}, gen);
    const Tensor<float> w = gpu_test::random_normal({out, in}, gen, 0.3f);
    const Tensor<float> b = gpu_test::random_normal({out}, gen);
    check_parity("linear with bias", {{x}, {w}, {b}},
                 [](auto xs, auto&) { return linear(xs[0], xs[1], xs[2]); });
    check_parity("linear without bias", {{x}, {w}}, [](auto xs, auto&) {
      using D = device_of<decltype(xs)>;
      return linear(xs[0], xs[1], Var<float, D>());
    });
    check_parity("linear, x frozen", {{x, false}, {w}, {b}},
                 [](auto xs, auto&) { return linear(xs[0], xs[1], xs[2]); });
    check_parity("linear, weight frozen", {{x}, {w, false}, {b, false}},
                 [](auto xs, auto&) { return linear(xs[0], xs[1], xs[2]); });
  }
}

TEST_CASE("matmul on the GPU matches the CPU") {
  PhiloxGenerator gen(22);
  const std::array<std::array<index_t, 3>, 5> sizes{{{1, 1, 1}, {3, 7, 5}, {17, 33, 9}, {2, 1, 11}, {1, 64, 3}}};
  for (const auto& s : sizes) {
    const index_t n = s[0], k = s[1], m = s[2];
    CAPTURE(n);
    CAPTURE(k);
    CAPTURE(m);
    const Tensor<float> a = gpu_test::random_normal({n, k}, gen);
    const Tensor<float> b = gpu_test::random_normal({k, m}, gen);
    check_parity("matmul", {{a}, {b}}, [](auto xs, auto&) { return matmul(xs[0], xs[1]); });
    check_parity("matmul, a frozen", {{a, false}, {b}}, [](auto xs, auto&) { return matmul(xs[0], xs[1]); });
    check_parity("matmul, b frozen", {{a}, {b, false}}, [](auto xs, auto&) { return matmul(xs[0], xs[1]); });
  }
  // a a: both operands are the same Var, so its gradient is written then accumulated in one
  // backward (a must be square).
  const Tensor<float> a = gpu_test::random_normal({6, 6}, gen);
  check_parity("matmul a a", {{a}}, [](auto xs, auto&) { return matmul(xs[0], xs[0]); });
}

TEST_CASE("every cuBLAS call gets its workspace from the caching allocator, for the call only") {
  // Whatever the test program chose (the simulated suite uses a small one), restored at the end.
  struct Restore {
    std::size_t bytes = cuda::cublas_workspace_bytes();
    ~Restore() { cuda::set_cublas_workspace(bytes); }
  } restore;
  int device = 0, major = 0;
  REQUIRE(cudaGetDevice(&device) == cudaSuccess);
  REQUIRE(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device) == cudaSuccess);
  cuda::set_cublas_workspace(0);  // the default: NVIDIA's recommendation for the device
  CHECK(cuda::cublas_workspace_bytes() == (std::size_t(major >= 9 ? 32 : 4) << 20));
  CHECK_THROWS_WITH_AS(cuda::set_cublas_workspace(1000),
                       doctest::Contains("below cuBLAS's minimum"), datanas::error);
  CHECK(cuda::cublas_workspace_bytes() == (std::size_t(major >= 9 ? 32 : 4) << 20));

  PhiloxGenerator gen(23);
  const Tensor<float, Cuda> x = to_device_of<Cuda>(gpu_test::random_normal({5, 13}, gen));
  const Tensor<float, Cuda> w = to_device_of<Cuda>(gpu_test::random_normal({9, 13}, gen));
  auto& alloc = CachingAllocator<Cuda>::instance();
  for (const std::size_t bytes : {std::size_t(0), std::size_t(1) << 20}) {
    CAPTURE(bytes);
    cuda::set_cublas_workspace(bytes);
    const std::size_t ws = cuda::cublas_workspace_bytes();
    Var<float, Cuda> xv(x, true), wv(w, true);
#if DATANAS_CUDA_SIM
    const std::uint64_t own = cudasim::counters().cublas_own_workspace;
    const std::uint64_t calls = cudasim::counters().library_calls;
#endif
    alloc.reset_peak();
    const std::size_t before = alloc.stats().bytes_in_use;
    Var<float, Cuda> y = linear(xv, wv, Var<float, Cuda>());
    // The workspace was held during the GEMM and handed back after it: only y remains.
    CHECK(alloc.stats().peak_bytes_in_use - before >= ws);
    CHECK(alloc.stats().bytes_in_use - before < ws);
    backward(sum(y));                                          // two more GEMMs: dL/dx and dL/dw
    CHECK(alloc.stats().peak_bytes_in_use - before < 2 * ws);  // one workspace at a time
#if DATANAS_CUDA_SIM
    CHECK(cudasim::counters().library_calls - calls == 3);
    CHECK(cudasim::counters().cublas_own_workspace == own);  // none on cuBLAS's own pool
#endif
  }
}

TEST_CASE("GroupedMatmul on the GPU matches the CPU: a recurrence, short groups, unused products") {
  // h_{t+1} = tanh(h_t) w over five products in groups of 2 (the last one short), a product of
  // another batch size (a new group mid-way) added to the result, and one whose output is
  // dropped (its rows of the group's dy stay zero).
  PhiloxGenerator gen(29);
  const Tensor<float> a0 = gpu_test::random_normal({5, 9}, gen),
                      w = gpu_test::random_normal({9, 9}, gen, 0.4f),
                      side = gpu_test::random_normal({3, 9}, gen),
                      mix = gpu_test::random_normal({5, 3}, gen);
  check_parity("grouped matmul", {{a0}, {w}, {side}, {mix, false}}, [](auto xs, auto&) {
    using D = device_of<decltype(xs)>;
    GroupedMatmul<float, D> gm;
    gm.start(xs[1], 2);
    Var<float, D> h = xs[0], extra;
    for (int t = 0; t < 5; ++t) {
      h = gm(t == 0 ? h : tanh(h));
      if (t == 1) extra = gm(xs[2]);
      if (t == 3) (void)gm(xs[0]);
    }
    gm.finish();
    return add(h, matmul(xs[3], extra));
  });
}

TEST_CASE("embedding on the GPU matches the CPU, repeated ids included") {
  PhiloxGenerator gen(23);
  struct Case {
    index_t vocab, e;
    Shape ids;
  };
  // Small vocabularies force many repeats; the last case is PTB's (10000 words, 35 x 64
  // tokens, 850 columns).
  const Case cases[] = {{1, 1, Shape{4}}, {11, 7, Shape{13}}, {5, 3, Shape{5, 3}},
                        {50, 33, Shape{2, 3, 4}}, {10000, 850, Shape{35, 64}}};
  for (const Case& c : cases) {
    CAPTURE(c.vocab);
    CAPTURE(c.e);
    CAPTURE(c.ids.str());
    const Tensor<float> w = gpu_test::random_normal({c.vocab, c.e}, gen);
    const Tensor<std::int32_t> ids = random_ids(c.ids, c.vocab, gen);
    check_parity("embedding", {{w}}, [&](auto xs, auto&) {
      using D = device_of<decltype(xs)>;
      return embedding(xs[0], gpu_test::on<D>(ids));
    });

    // The overwrite path adds each row's dy rows in the CPU's order, from zero: same bits.
    Var<float> wc(w.clone(), true);
    Var<float, Cuda> wg(cuda::to_device(w), true);
    const Var<float> yc = embedding(wc, ids);
    const Var<float, Cuda> yg = embedding(wg, cuda::to_device(ids));
    const Tensor<float> dy = gpu_test::random_normal(yc.shape(), gen);
    backward(yc, dy);
    backward(yg, cuda::to_device(dy));
    CHECK(same_bits(wg.grad(), wc.grad()));
  }
}

TEST_CASE("embedding on the GPU: an id outside the vocabulary gives a NaN row, nothing else") {
  PhiloxGenerator gen(24);
  const Tensor<float> w = gpu_test::random_normal({6, 5}, gen);
  Tensor<std::int32_t> ids = Tensor<std::int32_t>::empty({4});
  ids[0] = 2;
  ids[1] = 6;  // == vocab
  ids[2] = -1;
  ids[3] = 2;
  Var<float, Cuda> wg(cuda::to_device(w), true);
  Var<float, Cuda> y = embedding(wg, cuda::to_device(ids));
  const Tensor<float> yh = cuda::to_host(y.value());
  for (index_t j = 0; j < 5; ++j) {
    CHECK(yh[0 * 5 + j] == w[2 * 5 + j]);
    CHECK(std::isnan(yh[1 * 5 + j]));
    CHECK(std::isnan(yh[2 * 5 + j]));
    CHECK(yh[3 * 5 + j] == w[2 * 5 + j]);
  }
  Tensor<float> dy = Tensor<float>::full(y.shape(), 1.0f);
  backward(y, cuda::to_device(dy));
  const Tensor<float> g = cuda::to_host(wg.grad());
  for (index_t v = 0; v < 6; ++v)
    for (index_t j = 0; j < 5; ++j) CHECK(g[v * 5 + j] == (v == 2 ? 2.0f : 0.0f));
}

namespace {

/// Logits of three kinds: standard normal; rows shifted by +50 and -50 alternately (the max
/// shift must keep exp finite; values spread within a row as usual); and wild ones, N(0, 20^2)
/// with an exact +50 and -50, whose rows are nearly one-hot.
Tensor<float> logits(const Shape& s, int kind, PhiloxGenerator& gen) {
  Tensor<float> x = gpu_test::random_normal(s, gen, kind == 2 ? 20.0f : kind == 1 ? 2.0f : 1.0f);
  const index_t k = s[s.rank() - 1];
  if (kind == 1)
    for (index_t i = 0; i < x.numel(); ++i) x[i] += (i / k) % 2 ? -50.0f : 50.0f;
  if (kind == 2) {
    x[0] = 50.0f;
    x[x.numel() - 1] = -50.0f;
  }
  return x;
}

}  // namespace

// The gradient of softmax at a nearly one-hot row is a difference of nearly equal numbers
// (y_max (dy_max - <dy, y>)): its value is rounding noise in float on any device, so the wild
// logits are compared in forward only for softmax. log_softmax's and cross-entropy's gradients
// have no such cancellation.
TEST_CASE("softmax and log_softmax on the GPU match the CPU, large logits included") {
  PhiloxGenerator gen(25);
  const Shape shapes[] = {Shape{1}, Shape{7}, Shape{3, 5}, Shape{33, 31}, Shape{1, 1000}, Shape{7, 10000}};
  for (const Shape& s : shapes) {
    CAPTURE(s.str());
    for (int kind : {0, 1, 2}) {
      CAPTURE(kind);
      const Tensor<float> x = logits(s, kind, gen);
      check_parity("softmax", {{x, kind != 2}}, [](auto xs, auto&) { return softmax(xs[0]); });
      check_parity("log_softmax", {{x}}, [](auto xs, auto&) { return log_softmax(xs[0]); });
    }
  }
}

TEST_CASE("cross_entropy on the GPU matches the CPU") {
  PhiloxGenerator gen(26);
  const std::array<std::array<index_t, 2>, 6> sizes{{{1, 1}, {1, 10}, {5, 7}, {96, 10}, {33, 257}, {64, 10000}}};
  for (const auto& s : sizes) {
    const index_t n = s[0], k = s[1];
    CAPTURE(n);
    CAPTURE(k);
    for (int kind : {0, 1, 2}) {
      // A single wild row whose label is its argmax has a gradient of rounding noise (1 - p).
      if (kind == 2 && n == 1 && k > 1) continue;
      CAPTURE(kind);
      const Tensor<float> x = logits({n, k}, kind, gen);
      const Tensor<std::int32_t> labels = random_ids({n}, k, gen);
      check_parity("cross_entropy", {{x}}, [&](auto xs, auto&) {
        using D = device_of<decltype(xs)>;
        return cross_entropy(xs[0], gpu_test::on<D>(labels));
      });
    }
  }
}

TEST_CASE("cross_entropy on the GPU: a label outside [0, K) makes the loss NaN, nothing else") {
  PhiloxGenerator gen(27);
  const Tensor<float> x = gpu_test::random_normal({4, 5}, gen);
  for (std::int32_t bad : {5, -1, 1 << 30}) {
    CAPTURE(bad);
    Tensor<std::int32_t> labels = Tensor<std::int32_t>::full({4}, 1);
    labels[2] = bad;
    Var<float, Cuda> xg(cuda::to_device(x), true);
    Var<float, Cuda> loss = cross_entropy(xg, cuda::to_device(labels));
    CHECK(std::isnan(cuda::to_host(loss.value())[0]));
    backward(loss);
    const Tensor<float> g = cuda::to_host(xg.grad());
    for (index_t r = 0; r < 4; ++r)
      for (index_t c = 0; c < 5; ++c) CHECK(std::isnan(g[r * 5 + c]) == (r == 2));
  }
}

TEST_CASE("concat_channels on the GPU matches the CPU, symbolic zeros included") {
  PhiloxGenerator gen(28);
  for (index_t n : {index_t(1), index_t(3)}) {
    CAPTURE(n);
    const index_t h = 5, w = 7;
    const index_t channels[] = {2, 3, 1, 4};
    std::vector<Input> in;
    for (index_t c : channels) in.push_back({gpu_test::random_normal({n, c, h, w}, gen)});
    check_parity("concat of 2", {in[0], in[1]}, [](auto xs, auto&) {
      using V = std::remove_cvref_t<decltype(xs[0])>;
      const V parts[] = {xs[0], xs[1]};
      return concat_channels<float, device_of<decltype(xs)>>(std::span<const V>(parts));
    });
    check_parity("concat of 3 with a zero", {in[0], in[1]}, [&](auto xs, auto&) {
      using V = std::remove_cvref_t<decltype(xs[0])>;
      using D = device_of<decltype(xs)>;
      const V parts[] = {xs[0], zeros<float, D>({n, 3, h, w}), xs[1]};
      return concat_channels<float, D>(std::span<const V>(parts));
    });
    check_parity("concat of 4, one frozen, a zero first", in, [&](auto xs, auto&) {
      using V = std::remove_cvref_t<decltype(xs[0])>;
      using D = device_of<decltype(xs)>;
      const V parts[] = {zeros<float, D>({n, 2, h, w}), xs[0], xs[1].detach(), xs[2], xs[3]};
      return concat_channels<float, D>(std::span<const V>(parts));
    });
    check_parity("concat of one input with itself", {in[2]}, [](auto xs, auto&) {
      using V = std::remove_cvref_t<decltype(xs[0])>;
      const V parts[] = {xs[0], xs[0]};
      return concat_channels<float, device_of<decltype(xs)>>(std::span<const V>(parts));
    });
    // More inputs than one launch takes (16): the device splits them.
    std::vector<Input> many;
    for (int i = 0; i < 19; ++i) many.push_back({gpu_test::random_normal({n, 1 + i % 3, 3, 3}, gen)});
    check_parity("concat of 19 with a zero", many, [&](auto xs, auto&) {
      using V = std::remove_cvref_t<decltype(xs[0])>;
      using D = device_of<decltype(xs)>;
      std::vector<V> parts(xs.begin(), xs.end());
      parts.insert(parts.begin() + 15, zeros<float, D>({n, 2, 3, 3}));
      return concat_channels<float, D>(std::span<const V>(parts));
    });
  }
}

TEST_CASE("crop and shift_crop on the GPU match the CPU") {
  PhiloxGenerator gen(29);
  const Shape shapes[] = {Shape{1, 1, 2, 2}, Shape{2, 3, 7, 9}, Shape{3, 16, 8, 8}};
  for (const Shape& s : shapes) {
    CAPTURE(s.str());
    const Tensor<float> x = gpu_test::random_normal(s, gen);
    check_parity("shift_crop", {{x}}, [](auto xs, auto&) { return shift_crop(xs[0]); });
    check_parity("crop (1, 0)", {{x}}, [](auto xs, auto&) { return crop(xs[0], 1, 0); });
    check_parity("crop (0, 1)", {{x}}, [](auto xs, auto&) { return crop(xs[0], 0, 1); });
    check_parity("crop (0, 0)", {{x}}, [](auto xs, auto&) { return crop(xs[0], 0, 0); });
  }
  const Tensor<float> x = gpu_test::random_normal({2, 3, 7, 9}, gen);
  check_parity("crop (3, 5)", {{x}}, [](auto xs, auto&) { return crop(xs[0], 3, 5); });
}

TEST_CASE("dropout and drop_path on the GPU draw the CPU's masks") {
  PhiloxGenerator gen(30);
  // Sizes around the four words of a Philox counter, and a large one.
  const Shape shapes[] = {Shape{1}, Shape{5}, Shape{2, 3, 5, 7}, Shape{4099}, Shape{8, 16, 32, 32}};
  for (const Shape& s : shapes) {
    CAPTURE(s.str());
    const Tensor<float> x = gpu_test::random_normal(s, gen);
    // The forward is one product per element on both devices: identical; the accumulate path
    // may round differently (a fused multiply-add), hence 1e-6, not 0.
    check_parity("dropout 0.3", {{x}}, [](auto xs, auto& g) { return dropout(xs[0], 0.3, true, g); }, 1e-6);
    check_parity("drop_path 0.2", {{x}}, [](auto xs, auto& g) { return drop_path(xs[0], 0.2, true, g); },
                 1e-6);
    check_parity("dropout in eval", {{x}}, [](auto xs, auto& g) { return dropout(xs[0], 0.3, false, g); }, 0.0);
    check_parity("add_drop_path 0.3", {{x}, {gpu_test::random_normal(x.shape(), gen)}},
                 [](auto xs, auto& g) { return add_drop_path(xs[0], xs[1], 0.3, true, g); });
    check_parity("drop_path in eval", {{x}}, [](auto xs, auto& g) { return drop_path(xs[0], 0.2, false, g); },
                 0.0);

    // Bit for bit, from a generator state far into its stream, and the same counters consumed.
    for (double p : {0.3, 0.2}) {
      CAPTURE(p);
      PhiloxGenerator gc(77, (std::uint64_t(1) << 32) - 3), gg = gc;
      Var<float> xc(x.clone(), true);
      Var<float, Cuda> xg(cuda::to_device(x), true);
      Var<float> yc = p == 0.3 ? dropout(xc, p, true, gc) : drop_path(xc, p, true, gc);
      Var<float, Cuda> yg = p == 0.3 ? dropout(xg, p, true, gg) : drop_path(xg, p, true, gg);
      CHECK(gg.offset() == gc.offset());
      CHECK(same_bits(yg.value(), yc.value()));
      const Tensor<float> dy = gpu_test::random_normal(s, gen);
      backward(yc, dy);
      backward(yg, cuda::to_device(dy));
      CHECK(same_bits(xg.grad(), xc.grad()));
    }
  }
}

TEST_CASE("dropout in eval mode and with p = 0 is the identity on the GPU, and draws nothing") {
  PhiloxGenerator gen(31);
  Var<float, Cuda> x(cuda::to_device(gpu_test::random_normal({3, 4}, gen)), true);
  const std::uint64_t before = gen.offset();
  CHECK(same_node(dropout(x, 0.3, false, gen), x));
  CHECK(same_node(drop_path(x, 0.2, false, gen), x));
  CHECK(same_node(dropout(x, 0.0, true, gen), x));
  CHECK(same_node(drop_path(x, 0.0, true, gen), x));
  CHECK(gen.offset() == before);
}

TEST_CASE("count_correct on the GPU counts what the CPU counts: ties, wide rows, bad labels") {
  PhiloxGenerator gen(21);
  // Rows of 3 (one warp, mostly idle), 257 (two passes of a 256-thread block) and 10000 (PTB's
  // vocabulary); quantised values make ties between columns common, where the first wins.
  for (const index_t k : {index_t(3), index_t(257), index_t(10000)}) {
    CAPTURE(k);
    const index_t n = 67;
    Tensor<float> logits = Tensor<float>::empty({n, k});
    for (index_t i = 0; i < logits.numel(); ++i) logits[i] = std::round(4.0f * float(gen.normal())) / 4.0f;
    Tensor<std::int32_t> labels = random_ids({n}, k, gen);
    for (index_t i = 0; i < n; i += 5) {  // every fifth row: the label at its first maximum
      const float* row = logits.data() + i * k;
      labels[i] = std::int32_t(std::max_element(row, row + k) - row);
    }
    labels[1] = -1;               // never correct, on either device
    labels[2] = std::int32_t(k);
    const std::int32_t want = count_correct(logits, labels)[0];
    CHECK(want >= (n + 4) / 5 - 1);
    const Tensor<std::int32_t, Cuda> got = count_correct(cuda::to_device(logits), cuda::to_device(labels));
    CHECK(cuda::to_host(got)[0] == want);
  }
}
