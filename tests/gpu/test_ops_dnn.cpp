// conv2d, batch_norm2d and the pools on the GPU against the CPU (tests/gpu/parity.hpp): every
// convolution a DARTS cell or network runs (separable = depthwise + pointwise, dilated,
// FactorizedReduce's 1x1 stride 2, the stem and reduction convolutions, groups), batch norm in
// training and evaluation, affine or not, with frozen parameters, its running statistics, and
// max / average / global average pooling; forward, and gradients written then accumulated.
// Also: the cuDNN plan cache plans a shape once, the algorithm choice prefers what the file
// comment of ops/cuda/dnn.hpp promises (synthetic heuristics lists), the backward passes are
// deterministic, and bad shapes are rejected on the Cuda device as on the CPU.
#include <algorithm>
#include <cmath>
#include <map>
#include <string>
#include <thread>
#include <type_traits>
#include <vector>

#include "datanas/nn/layers.hpp"
#include "datanas/ops/arithmetic.hpp"
#include "datanas/ops/batchnorm.hpp"
#include "datanas/ops/conv.hpp"
#include "datanas/ops/pool.hpp"
#include "parity.hpp"

using namespace datanas;
using gpu_test::check_parity;
using gpu_test::Input;
using gpu_test::random_normal;
using gpu_test::same_bits;

namespace {

template <class V>
using DeviceOf = typename std::remove_cvref_t<V>::device_type;

/// A random weight [cout, cin / groups, k, k] scaled like torch's init, so outputs stay O(1).
Tensor<float> conv_weight(index_t cout, index_t cin, int k, int groups, PhiloxGenerator& gen) {
  return random_normal({cout, cin / groups, k, k}, gen,
                       float(1.0 / std::sqrt(double(cin / groups * k * k))));
}

/// conv2d on both devices: x [n, cin, h, w], weight [cout, cin / groups, k, k], bias optional.
void check_conv(const std::string& name, Shape xs, index_t cout, int k, Conv2dParams p, bool bias,
                PhiloxGenerator& gen, bool x_grad = true, bool w_grad = true) {
  CAPTURE(xs.str());
  CAPTURE(bias);
  std::vector<Input> in{{random_normal(xs, gen), x_grad},
                        {conv_weight(cout, xs[1], k, p.groups, gen), w_grad}};
  if (bias) in.push_back({random_normal({cout}, gen, 0.5f), true});
  check_parity(name, in, [p, bias](auto v, auto&) {
    using V = std::remove_cvref_t<decltype(v[0])>;
    return conv2d(v[0], v[1], bias ? v[2] : V(), p);
  });
}

/// max(|a - b|) / max(|b|) for double host tensors (the parity harness is float only).
double rel_err_double(const Tensor<double>& got, const Tensor<double>& want) {
  double num = 0, den = 0;
  for (index_t i = 0; i < want.numel(); ++i) {
    if (!std::isfinite(got[i])) return INFINITY;
    num = std::max(num, std::abs(got[i] - want[i]));
    den = std::max(den, std::abs(want[i]));
  }
  return den > 0 ? num / den : num;
}

Tensor<double> random_double(const Shape& s, PhiloxGenerator& gen) {
  Tensor<double> t = Tensor<double>::empty(s);
  for (index_t i = 0; i < t.numel(); ++i) t[i] = gen.normal();
  return t;
}

/// conv2d with bias in double on both devices: the output and the three gradients within 1e-12.
void check_conv_double(const Shape& xs, const Shape& ws, const Conv2dParams& p,
                       PhiloxGenerator& gen) {
  const Tensor<double> x = random_double(xs, gen), w = random_double(ws, gen);
  const Tensor<double> b = random_double({ws[0]}, gen);
  Var<double> xc(x.clone(), true), wc(w.clone(), true), bc(b.clone(), true);
  Var<double, Cuda> xg(cuda::to_device(x), true), wg(cuda::to_device(w), true),
      bg(cuda::to_device(b), true);
  const Var<double> yc = conv2d(xc, wc, bc, p);
  const Var<double, Cuda> yg = conv2d(xg, wg, bg, p);
  const Tensor<double> dy = random_double(yc.shape(), gen);
  CHECK(rel_err_double(cuda::to_host(yg.value()), yc.value()) <= 1e-12);
  backward(yc, dy);
  backward(yg, cuda::to_device(dy));
  CHECK(rel_err_double(cuda::to_host(xg.grad()), xc.grad()) <= 1e-12);
  CHECK(rel_err_double(cuda::to_host(wg.grad()), wc.grad()) <= 1e-12);
  CHECK(rel_err_double(cuda::to_host(bg.grad()), bc.grad()) <= 1e-12);
}

/// Sets the depthwise implementation for a scope and restores the previous one.
class DepthwiseChoice {
 public:
  explicit DepthwiseChoice(cuda::DepthwiseConv v) : old_(cuda::depthwise_conv()) {
    cuda::set_depthwise_conv(v);
  }
  ~DepthwiseChoice() { cuda::set_depthwise_conv(old_); }
  DepthwiseChoice(const DepthwiseChoice&) = delete;
  DepthwiseChoice& operator=(const DepthwiseChoice&) = delete;

 private:
  cuda::DepthwiseConv old_;
};

/// y = f(x, w1, w2) computed two ways on the device (`pair`, and `chain` as its definition): y
/// and the gradients of x, w1, w2 (dL/dy = dy) must agree bit for bit.
template <class Pair, class Chain>
void check_same_bits(Pair pair, Chain chain, const Tensor<float>& x, const Tensor<float>& w1,
                     const Tensor<float>& w2, const Tensor<float>& dy) {
  Tensor<float> out[2][4];
  for (int k = 0; k < 2; ++k) {
    Var<float, Cuda> xv(cuda::to_device(x), true), w1v(cuda::to_device(w1), true), w2v(cuda::to_device(w2), true);
    const Var<float, Cuda> y = k == 0 ? pair(xv, w1v, w2v) : chain(xv, w1v, w2v);
    backward(y, cuda::to_device(dy));
    out[k][0] = cuda::to_host(y.value());
    out[k][1] = cuda::to_host(xv.grad());
    out[k][2] = cuda::to_host(w1v.grad());
    out[k][3] = cuda::to_host(w2v.grad());
  }
  for (int i = 0; i < 4; ++i) {
    CAPTURE(i);
    CHECK(same_bits(out[0][i], out[1][i]));
  }
}

}  // namespace

// ---- conv2d
// ---------------------------------------------------------------------------------------

TEST_CASE("DARTS convolutions on the GPU match the CPU, depthwise on cuDNN and on our kernels") {
  PhiloxGenerator gen(21);
  const Shape spatial[] = {Shape{7, 5}, Shape{8, 8}, Shape{9, 9}};
  for (const auto impl : {cuda::DepthwiseConv::kCudnn, cuda::DepthwiseConv::kOwn}) {
    DepthwiseChoice choice(impl);
    CAPTURE(cuda::to_string(impl));
    for (index_t n : {1, 3})
      for (const Shape& hw : spatial) {
        const index_t c = 6;
        const Shape xs{n, c, hw[0], hw[1]};
        for (int stride : {1, 2}) {
          CAPTURE(stride);
          // sep_conv 3x3 / 5x5: the depthwise half (stride on a reduction edge's first one)...
          check_conv("depthwise 3x3", xs, c, 3, {stride, 1, 1, int(c)}, false, gen);
          check_conv("depthwise 5x5", xs, c, 5, {stride, 2, 1, int(c)}, false, gen);
          // dil_conv 3x3 / 5x5: depthwise with dilation 2.
          check_conv("dilated depthwise 3x3", xs, c, 3, {stride, 2, 2, int(c)}, false, gen);
          check_conv("dilated depthwise 5x5", xs, c, 5, {stride, 4, 2, int(c)}, false, gen);
          // The reduction cell's general convolutions and a grouped one.
          check_conv("3x3", xs, 8, 3, {stride, 1, 1, 1}, false, gen);
          check_conv("3x3 groups 2", xs, 8, 3, {stride, 1, 1, 2}, false, gen);
          check_conv("3x3 groups 2 bias", xs, 8, 3, {stride, 1, 1, 2}, true, gen);
        }
        // ...and its pointwise half; FactorizedReduce's 1x1 stride 2 (C -> C / 2).
        check_conv("pointwise 1x1", xs, 10, 1, {1, 0, 1, 1}, false, gen);
        check_conv("pointwise 1x1 bias", xs, 10, 1, {1, 0, 1, 1}, true, gen);
        check_conv("1x1 stride 2", xs, c / 2, 1, {2, 0, 1, 1}, false, gen);
        check_conv("depthwise 3x3 bias", xs, c, 3, {1, 1, 1, int(c)}, true, gen);
        // The stem: the image needs no gradient; a frozen weight; dilation on a dense conv.
        check_conv("stem 3x3, x constant", Shape{n, 3, hw[0], hw[1]}, 8, 3, {1, 1, 1, 1}, true, gen,
                   false);
        check_conv("3x3, weight frozen", xs, 4, 3, {1, 1, 1, 1}, false, gen, true, false);
        check_conv("3x3 dilation 2, no padding", xs, 4, 3, {1, 0, 2, 1}, true, gen);
        check_conv("forward only", xs, 4, 3, {2, 1, 1, 1}, false, gen, false, false);
      }
    // The sizes of a real cell (CIFAR-10 at 16 channels), so that cuDNN's workspaces are used.
    check_conv("depthwise 3x3, 32x32", Shape{8, 16, 32, 32}, 16, 3, {1, 1, 1, 16}, false, gen);
    check_conv("pointwise, 32x32", Shape{8, 16, 32, 32}, 32, 1, {1, 0, 1, 1}, false, gen);
    check_conv("3x3, 32x32", Shape{8, 16, 32, 32}, 16, 3, {1, 1, 1, 1}, true, gen);
    check_conv("5x5 dilated stride 2, 32x32", Shape{4, 16, 32, 32}, 16, 5, {2, 4, 2, 16}, false,
               gen);
  }
}

TEST_CASE("our depthwise convolution kernels on the GPU match the CPU") {
  DepthwiseChoice own(cuda::DepthwiseConv::kOwn);
  REQUIRE(cuda::depthwise_conv() == cuda::DepthwiseConv::kOwn);
  PhiloxGenerator gen(26);
  const Shape spatial[] = {Shape{7, 5}, Shape{8, 8}, Shape{9, 9}, Shape{1, 1}};
  for (index_t n : {1, 3})
    for (const Shape& hw : spatial) {
      const index_t c = 6;
      const Shape xs{n, c, hw[0], hw[1]};
      for (int stride : {1, 2}) {
        CAPTURE(stride);
        // Beyond the DARTS shapes (tested with both implementations above): a 1 x 1 image,
        // paddings other than "same", a bias; the generic kernel (sizes at run time).
        check_conv("depthwise 5x5", xs, c, 5, {stride, 2, 1, int(c)}, false, gen);
        if (hw[0] >= 3 && hw[1] >= 3)
          check_conv("depthwise 3x3 no padding", xs, c, 3, {stride, 0, 1, int(c)}, true, gen);
        check_conv("depthwise 3x3 padding 2 bias", xs, c, 3, {stride, 2, 1, int(c)}, true, gen);
        check_conv("depthwise 7x7 dilation 3", xs, c, 7, {stride, 9, 3, int(c)}, false, gen);
        check_conv("depthwise 1x1 bias", xs, c, 1, {stride, 0, 1, int(c)}, true, gen);
      }
      check_conv("depthwise 3x3 stride 3", xs, c, 3, {3, 1, 1, int(c)}, true, gen);
      // Frozen weight (no filter pass), constant input (no data pass).
      check_conv("depthwise 5x5, weight frozen", xs, c, 5, {1, 2, 1, int(c)}, true, gen, true,
                 false);
      check_conv("depthwise 3x3, x constant", xs, c, 3, {1, 1, 1, int(c)}, true, gen, false);
    }
  // A non-square kernel (generic path).
  std::vector<Input> in{{random_normal({2, 5, 9, 8}, gen)},
                        {random_normal({5, 1, 3, 5}, gen, 0.3f)},
                        {random_normal({5}, gen)}};
  check_parity("depthwise 3x5", in,
               [](auto v, auto&) { return conv2d(v[0], v[1], v[2], {1, 1, 1, 5}); });
  // Sizes of a search cell: several chunks per channel in the filter reduction (8 x 32 x 32
  // positions = 4 chunks), 5 x 5 at stride 2 (a reduction edge).
  check_conv("depthwise 3x3, 32x32", Shape{8, 16, 32, 32}, 16, 3, {1, 1, 1, 16}, true, gen);
  check_conv("depthwise 5x5 stride 2, 32x32", Shape{16, 16, 32, 32}, 16, 5, {2, 2, 1, 16}, false,
             gen);
  check_conv("dilated depthwise 5x5, 16x16", Shape{64, 32, 16, 16}, 32, 5, {1, 4, 2, 32}, false,
             gen);
}

TEST_CASE("our depthwise kernels refuse tensors and filters beyond their index and grid limits") {
  DepthwiseChoice own(cuda::DepthwiseConv::kOwn);
  // input [2048, 16, 256, 256]: 2^31 elements (8 GiB of float), checked before any launch.
  cpu::ConvGeom g{2048, 16, 256, 256, 16, 3, 3, 256, 256, 1, 1, 1, 16};
  CHECK_THROWS_WITH_AS(cuda::dnn_host::own_depthwise(g), doctest::Contains("2^31 or more elements"),
                       error);
  g.n = 1;
  CHECK(cuda::dnn_host::own_depthwise(g));
  g.groups = 8;  // grouped, not depthwise: cuDNN's
  CHECK_FALSE(cuda::dnn_host::own_depthwise(g));
  // A 1 x 65535 filter: its gradient's generic launch would put 65535 + 1 tap rows in gridDim.y
  // (at most 65535); 65534 taps fit.
  cpu::ConvGeom wide{1, 16, 1, 65535, 16, 1, 65535, 1, 1, 1, 0, 1, 16};
  CHECK_THROWS_WITH_AS(cuda::dnn_host::own_depthwise(wide), doctest::Contains("too many taps"),
                       error);
  wide.w = wide.kw = 65534;
  CHECK(cuda::dnn_host::own_depthwise(wide));
  g.groups = 16;
  DepthwiseChoice cudnn(cuda::DepthwiseConv::kCudnn);
  CHECK_FALSE(cuda::dnn_host::own_depthwise(g));
}

TEST_CASE("our depthwise kernels in double on the GPU match the CPU") {
  DepthwiseChoice own(cuda::DepthwiseConv::kOwn);
  PhiloxGenerator gen(27);
  for (const int k : {3, 4}) {  // unrolled and generic
    CAPTURE(k);
    check_conv_double({3, 4, 9, 7}, {4, 1, k, k}, {2, 1, 1, 4}, gen);
  }
}

TEST_CASE("a separable convolution (depthwise then pointwise) on the GPU matches the CPU") {
  PhiloxGenerator gen(22);
  for (int k : {3, 5})
    for (int stride : {1, 2}) {
      CAPTURE(k);
      CAPTURE(stride);
      const index_t c = 8;
      std::vector<Input> in{{random_normal({3, c, 11, 7}, gen)},
                            {conv_weight(c, c, k, int(c), gen)},
                            {conv_weight(c, c, 1, 1, gen)}};
      check_parity("sep_conv", in, [k, stride](auto v, auto&) {
        using V = std::remove_cvref_t<decltype(v[0])>;
        const V dw = conv2d(v[0], v[1], V(), {stride, k / 2, 1, 8});
        return conv2d(dw, v[2], V(), {1, 0, 1, 1});
      });
      // What sep_conv and dil_conv run: the pair, the depthwise output recomputed in backward;
      // with the ReLU in front read from x (our kernels) or from a temporary (cuDNN).
      for (int dilation : {1, 2}) {
        check_parity("conv2d_pair", in, [k, stride, dilation](auto v, auto&) {
          return conv2d_pair(v[0], v[1], {stride, k / 2 * dilation, dilation, 8}, v[2]);
        });
        for (const auto impl : {cuda::DepthwiseConv::kCudnn, cuda::DepthwiseConv::kOwn}) {
          DepthwiseChoice choice(impl);
          CAPTURE(cuda::to_string(impl));
          check_parity("relu_conv2d_pair", in, [k, stride, dilation](auto v, auto&) {
            return relu_conv2d_pair(v[0], v[1], {stride, k / 2 * dilation, dilation, 8}, v[2]);
          });
        }
      }
    }
}

TEST_CASE("conv2d_pair and relu_conv2d_pair on the GPU compute their definitions' bits") {
  // conv2d_pair is two conv2d calls (a sep_conv half at stride 2); relu_conv2d_pair is relu
  // then conv2d_pair (a dil_conv-like pair), with our depthwise kernels reading relu(x) from x
  // (DwShape::relu_input) and with cuDNN's path making a temporary relu(x).
  using V = Var<float, Cuda>;
  PhiloxGenerator gen(24);
  const index_t c = 8;
  for (const bool with_relu : {false, true}) {
    CAPTURE(with_relu);
    const int k = with_relu ? 3 : 5;
    const Conv2dParams p1 = with_relu ? Conv2dParams{.stride = 1, .padding = 2, .dilation = 2, .groups = int(c)}
                                      : Conv2dParams{.stride = 2, .padding = 2, .groups = int(c)};
    const Tensor<float> x = random_normal({3, c, 12, 9}, gen), w1 = conv_weight(c, c, k, int(c), gen);
    const Tensor<float> w2 = conv_weight(c, c, 1, 1, gen);
    const Tensor<float> dy = random_normal(with_relu ? Shape{3, c, 12, 9} : Shape{3, c, 6, 5}, gen);
    for (const auto impl : {cuda::DepthwiseConv::kCudnn, cuda::DepthwiseConv::kOwn}) {
      DepthwiseChoice choice(impl);
      CAPTURE(cuda::to_string(impl));
      if (with_relu)
        check_same_bits([p1](const V& xv, const V& w1v, const V& w2v) { return relu_conv2d_pair(xv, w1v, p1, w2v); },
                        [p1](const V& xv, const V& w1v, const V& w2v) { return conv2d_pair(relu(xv), w1v, p1, w2v); },
                        x, w1, w2, dy);
      else
        check_same_bits([p1](const V& xv, const V& w1v, const V& w2v) { return conv2d_pair(xv, w1v, p1, w2v); },
                        [p1](const V& xv, const V& w1v, const V& w2v) { return conv2d(conv2d(xv, w1v, V(), p1), w2v, V()); },
                        x, w1, w2, dy);
    }
  }
}

TEST_CASE("relu_conv2d on the GPU matches the CPU and computes relu then conv2d's bits") {
  // The CPU reads relu(x) from x in its 1x1 (groups 1 and 2) and im2col (strides 2) kernels and
  // takes a temporary on its shifted path (3x3, stride 1); cuDNN always takes one, made again in
  // backward for the weight gradient. x read by two convolutions: the masked gradients add up.
  using V = Var<float, Cuda>;
  PhiloxGenerator gen(25);
  const Conv2dParams one{}, groups2{.groups = 2}, stride2{.stride = 2}, pad1{.padding = 1},
      pad1s2{.stride = 2, .padding = 1};
  for (const Conv2dParams& p : {one, groups2, stride2, pad1, pad1s2}) {
    CAPTURE(p.groups);
    CAPTURE(p.stride);
    CAPTURE(p.padding);
    const int k = p.padding == 1 ? 3 : 1;
    std::vector<Input> in{{random_normal({3, 8, 9, 7}, gen)}, {conv_weight(6, 8, k, p.groups, gen)},
                          {conv_weight(6, 8, k, p.groups, gen)}};
    check_parity("relu_conv2d", in, [p](auto v, auto&) {
      return add(relu_conv2d(v[0], v[1], p), relu_conv2d(v[0], v[2], p));
    });
    const Shape ys{3, 6, (9 + 2 * p.padding - k) / p.stride + 1, (7 + 2 * p.padding - k) / p.stride + 1};
    check_same_bits(
        [p](const V& xv, const V& w1v, const V& w2v) { return add(relu_conv2d(xv, w1v, p), relu_conv2d(xv, w2v, p)); },
        [p](const V& xv, const V& w1v, const V& w2v) {
          return add(conv2d(relu(xv), w1v, V(), p), conv2d(relu(xv), w2v, V(), p));
        },
        in[0].value, in[1].value, in[2].value, random_normal(ys, gen));
  }
}

TEST_CASE("conv2d in double on the GPU matches the CPU") {
  PhiloxGenerator gen(23);
  check_conv_double({2, 4, 7, 5}, {6, 2, 3, 3}, {2, 1, 1, 2}, gen);
}

TEST_CASE("conv2d plans a shape once and reuses it") {
  PhiloxGenerator gen(24);
  // A shape no other test uses: the cache is process-wide.
  const Shape xs{2, 6, 13, 11};
  const Tensor<float> w = conv_weight(4, 6, 3, 1, gen);
  auto run = [&](const Shape& s) {
    Var<float, Cuda> x(cuda::to_device(random_normal(s, gen)), true), wv(cuda::to_device(w), true);
    const Var<float, Cuda> y = conv2d(x, wv, Var<float, Cuda>(), {1, 1, 1, 1});
    backward(y, cuda::to_device(random_normal(y.shape(), gen)));
    (void)cuda::to_host(wv.grad());
  };
  const std::size_t before = cuda::DnnOps::conv_plan_count();
  run(xs);
  CHECK(cuda::DnnOps::conv_plan_count() == before + 1);
  run(xs);  // forward and backward again: no new plan
  run(xs);
  CHECK(cuda::DnnOps::conv_plan_count() == before + 1);
  run(Shape{3, 6, 13, 11});  // another batch size is another shape
  CHECK(cuda::DnnOps::conv_plan_count() == before + 2);
  // The algorithms cuDNN's heuristics gave each shape seen so far (logged for the GPU record).
  const std::string report = cuda::DnnOps::conv_plan_report();
  MESSAGE("cuDNN plans:\n" << report);
#if DATANAS_CUDA_SIM
  // The simulated heuristics rank a TF32 entry, an unsupported FFT and, backward, non-deterministic
  // entries ahead of the deterministic FMA algorithm 1, whose workspace is one image's im2col
  // matrix: 6 x 3 x 3 x 13 x 11 floats = 30888 bytes. Every direction must have chosen it, and the
  // runs above passed its workspace (the simulated cuDNN checks and overwrites it).
  CHECK(report.find("input [2, 6, 13, 11], weight [4, 6, 3, 3], stride 1, padding 1, dilation 1, groups 1, float: "
                    "forward algo 1 (math 3, deterministic, 30888 B, status 0), backward data algo 1 (math 3, "
                    "deterministic, 30888 B, status 0), backward filter algo 1 (math 3, deterministic, 30888 B, "
                    "status 0)") != std::string::npos);
#endif
}

#if DATANAS_CUDA_SIM
TEST_CASE("a cuDNN built for another CUDA major version is refused when its first handle is made") {
  // The handle is per thread and made once: a fresh thread makes one, with the simulated cuDNN
  // saying it was built for CUDA 12.8 while the runtime is 13.0.
  auto handle_error = [] {
    std::string message;
    std::thread t([&] {
      try {
        (void)cuda::dnn_host::cudnn_handle();
      } catch (const datanas::error& e) {
        message = e.what();
      }
    });
    t.join();
    return message;
  };
  cudasim::cudnn_detail::built_for_cudart = 12080;
  const std::string refused = handle_error();
  cudasim::cudnn_detail::built_for_cudart = CUDART_VERSION;
  CHECK(refused.find(
            "cuDNN 90000 was built for CUDA 12.8 but this program runs the CUDA 13.0 runtime: "
            "install the cuDNN 9 build for CUDA 13 (e.g. the nvidia-cudnn-cu13 wheel)") !=
        std::string::npos);
  CHECK(handle_error().empty());
}
#endif

TEST_CASE("the convolution algorithm: deterministic, within the workspace cap, FMA math for float") {
  // Synthetic heuristics lists (the choice is host code; the simulated cuDNN always offers a
  // deterministic FMA algorithm within the cap, so only these lists reach the fallbacks).
  using Perf = cudnnConvolutionBwdFilterAlgoPerf_t;
  using cuda::dnn_host::choose_algorithm;
  constexpr std::size_t cap = cuda::dnn_host::kConvWorkspaceCap;
  auto perf = [](int algo, cudnnMathType_t math, bool deterministic, std::size_t bytes,
                 cudnnStatus_t status = CUDNN_STATUS_SUCCESS) {
    Perf r{};
    r.algo = cudnnConvolutionBwdFilterAlgo_t(algo);
    r.status = status;
    r.memory = bytes;
    r.determinism = deterministic ? CUDNN_DETERMINISTIC : CUDNN_NON_DETERMINISTIC;
    r.mathType = math;
    return r;
  };
  auto chosen = [&](const std::vector<Perf>& ranked, bool is_float) {
    const Perf* r = choose_algorithm(ranked, is_float);
    return r ? int(r->algo) : -1;
  };
  const auto fma = CUDNN_FMA_MATH, dflt = CUDNN_DEFAULT_MATH;
  // In rank order: unusable, default math (TF32 for float), non-deterministic, over the cap,
  // then the first acceptable one.
  const std::vector<Perf> ranked = {perf(0, fma, true, 0, CUDNN_STATUS_NOT_SUPPORTED), perf(1, dflt, true, 0),
                                    perf(2, fma, false, 0), perf(3, fma, true, cap + 1), perf(4, fma, true, 1024),
                                    perf(5, fma, true, 0)};
  CHECK(chosen(ranked, true) == 4);   // float: the first deterministic FMA algorithm within the cap
  CHECK(chosen(ranked, false) == 1);  // double: any math type
  // No deterministic algorithm fits: the first that fits; none fits: the first that succeeds.
  CHECK(chosen({perf(3, fma, true, cap + 1), perf(2, fma, false, 64), perf(6, fma, false, 0)}, true) == 2);
  CHECK(chosen({perf(0, fma, true, 0, CUDNN_STATUS_NOT_SUPPORTED), perf(3, fma, true, cap + 1),
                perf(7, fma, false, 2 * cap)},
               true) == 3);
  // Float when the heuristics label nothing FMA: the others, in the same order of preference.
  CHECK(chosen({perf(2, dflt, false, 0), perf(5, dflt, true, 0)}, true) == 5);
  // Nothing usable: null, and pick() names the direction, the shape and every candidate.
  CHECK(chosen({perf(0, fma, true, 0, CUDNN_STATUS_NOT_SUPPORTED)}, true) == -1);
  CHECK(chosen({}, true) == -1);
  auto query = [&](std::vector<Perf> list) {
    return [list](int count, int* returned, Perf* out) {
      *returned = std::min(count, int(list.size()));
      std::copy_n(list.begin(), *returned, out);
    };
  };
  CHECK(cuda::dnn_host::pick<Perf>("backward filter", "x [1, 2, 3, 3]", true, 4, query({perf(4, fma, true, 1024)}))
            .algo == cudnnConvolutionBwdFilterAlgo_t(4));
  CHECK_THROWS_WITH_AS(
      cuda::dnn_host::pick<Perf>("backward filter", "x [1, 2, 3, 3]", true, 4,
                                 query({perf(3, fma, true, 0, CUDNN_STATUS_NOT_SUPPORTED)})),
      doctest::Contains("no usable backward filter algorithm for x [1, 2, 3, 3]; candidates; algo 3 (math"),
      error);
  CHECK_THROWS_WITH_AS(cuda::dnn_host::pick<Perf>("forward", "x [1]", false, 4, query({})),
                       doctest::Contains("candidates: none"), error);
}

TEST_CASE("conv2d gradients on the GPU are deterministic") {
  PhiloxGenerator gen(25);
  for (const auto impl : {cuda::DepthwiseConv::kCudnn, cuda::DepthwiseConv::kOwn})
  for (const Conv2dParams p :
       {Conv2dParams{1, 1, 1, 16}, Conv2dParams{1, 1, 1, 1}, Conv2dParams{2, 2, 2, 16}}) {
    DepthwiseChoice choice(impl);
    CAPTURE(cuda::to_string(impl));
    CAPTURE(p.groups);
    const Tensor<float> x = random_normal({8, 16, 32, 32}, gen);
    const Tensor<float> w = conv_weight(16, 16, 3, p.groups, gen);
    const Tensor<float> b = random_normal({16}, gen);
    Tensor<float> dy;
    auto run = [&] {
      Var<float, Cuda> xv(cuda::to_device(x), true), wv(cuda::to_device(w), true),
          bv(cuda::to_device(b), true);
      const Var<float, Cuda> y = conv2d(xv, wv, bv, p);
      if (!dy.defined()) dy = random_normal(y.shape(), gen);
      backward(y, cuda::to_device(dy));
      return std::vector<Tensor<float>>{cuda::to_host(y.value()), cuda::to_host(xv.grad()),
                                        cuda::to_host(wv.grad()), cuda::to_host(bv.grad())};
    };
    const auto a = run(), b2 = run();
    for (std::size_t i = 0; i < a.size(); ++i) {
      CAPTURE(i);
      CHECK(same_bits(a[i], b2[i]));
    }
  }
}

TEST_CASE("conv2d on the GPU rejects bad shapes like the CPU") {
  Var<float, Cuda> x(Tensor<float, Cuda>::zeros({1, 4, 5, 5}), true);
  Var<float, Cuda> w(Tensor<float, Cuda>::zeros({2, 3, 3, 3}), true);
  CHECK_THROWS_WITH_AS(conv2d(x, w, Var<float, Cuda>()), doctest::Contains("channels"),
                       datanas::error);
  Var<float, Cuda> w7(Tensor<float, Cuda>::zeros({2, 4, 7, 7}), true);
  CHECK_THROWS_WITH_AS(conv2d(x, w7, Var<float, Cuda>()), doctest::Contains("not positive"),
                       datanas::error);
}

// ---- batch_norm2d
// ---------------------------------------------------------------------------------

namespace {

/// batch_norm2d on both devices. x has a non-zero mean (the statistics' shift matters);
/// running statistics are fresh copies of rm / rv for every call (or none: `track` false).
void check_bn(const std::string& name, const Shape& s, bool affine, bool training, bool track,
              PhiloxGenerator& gen, bool x_grad = true, bool param_grad = true) {
  CAPTURE(s.str());
  CAPTURE(affine);
  CAPTURE(training);
  CAPTURE(track);
  Tensor<float> x = random_normal(s, gen, 2.0f);
  for (index_t i = 0; i < x.numel(); ++i) x[i] += 3.0f;
  const index_t c = s[1];
  std::vector<Input> in{{x, x_grad}};
  if (affine) {
    Tensor<float> gamma = random_normal({c}, gen, 0.3f);
    for (index_t i = 0; i < c; ++i) gamma[i] += 1.0f;
    in.push_back({gamma, param_grad});
    in.push_back({random_normal({c}, gen, 0.5f), param_grad});
  }
  Tensor<float> rm = random_normal({c}, gen), rv = Tensor<float>::empty({c});
  for (index_t i = 0; i < c; ++i) rv[i] = 0.5f + float(gen.uniform()) * 4.0f;
  check_parity(name, in, [=](auto v, auto&) {
    using V = std::remove_cvref_t<decltype(v[0])>;
    using D = DeviceOf<V>;
    const Tensor<float, D> m = track ? gpu_test::on<D>(rm.clone()) : Tensor<float, D>();
    const Tensor<float, D> var = track ? gpu_test::on<D>(rv.clone()) : Tensor<float, D>();
    return batch_norm2d(v[0], affine ? v[1] : V(), affine ? v[2] : V(), m, var, training);
  });
}

const Shape kBnShapes[] = {Shape{3, 16, 8, 8},  Shape{1, 5, 7, 5},    Shape{3, 4, 1, 1},
                           Shape{4, 8, 32, 32}, Shape{16, 4, 32, 32}, Shape{5, 3, 33, 31},
                           Shape{64, 2, 16, 16}};

}  // namespace

TEST_CASE("batch norm in training on the GPU matches the CPU") {
  PhiloxGenerator gen(31);
  for (const Shape& s : kBnShapes) {
    check_bn("affine", s, true, true, true, gen);
    check_bn("non-affine (DARTS search)", s, false, true, true, gen);
    check_bn("no running statistics", s, true, true, false, gen);
    check_bn("frozen gamma and beta", s, true, true, true, gen, true, false);
    check_bn("x constant, gamma and beta learn", s, true, true, true, gen, false, true);
  }
}

TEST_CASE("batch norm in evaluation on the GPU matches the CPU") {
  PhiloxGenerator gen(32);
  for (const Shape& s : kBnShapes) {
    check_bn("affine", s, true, false, true, gen);
    check_bn("non-affine", s, false, false, true, gen);
    check_bn("frozen gamma and beta", s, true, false, true, gen, true, false);
    check_bn("x constant, gamma and beta learn", s, true, false, true, gen, false, true);
  }
}

TEST_CASE("BatchNorm2d's running statistics on the GPU follow the CPU's") {
  PhiloxGenerator gen(33);
  for (bool affine : {true, false})
    for (const Shape& s : {Shape{8, 16, 8, 8}, Shape{2, 3, 7, 5}, Shape{32, 4, 16, 16}}) {
      CAPTURE(affine);
      CAPTURE(s.str());
      nn::BatchNorm2d<float, Cpu> bc(s[1], affine);
      nn::BatchNorm2d<float, Cuda> bg(s[1], affine);
      auto buffers = [](const auto& m) {
        std::map<std::string, Tensor<float>> out;
        m.visit_buffers([&](const std::string& name, const auto& t) {
          if constexpr (is_cpu<typename std::remove_cvref_t<decltype(t)>::device_type>)
            out[name] = t.clone();
          else
            out[name] = cuda::to_host(t);
        });
        return out;
      };
      // Two training steps with different batches (different means and spreads), then one
      // evaluation that uses the running statistics.
      for (int step = 0; step < 3; ++step) {
        CAPTURE(step);
        if (step == 2) {
          bc.eval();
          bg.eval();
        }
        Tensor<float> x = random_normal(s, gen, 1.0f + float(step));
        for (index_t i = 0; i < x.numel(); ++i) x[i] += float(step) - 0.5f;
        const Var<float> yc = bc(Var<float>(x, true));
        const Var<float, Cuda> yg = bg(Var<float, Cuda>(cuda::to_device(x), true));
        CHECK(gpu_test::rel_err(yg.value(), yc.value()) <= 1e-5);
        const auto hc = buffers(bc), hg = buffers(bg);
        REQUIRE(hc.size() == 2);
        REQUIRE(hg.size() == 2);
        for (const auto& entry : hc) {
          const std::string& name = entry.first;  // not [name, t]: CAPTURE needs a variable
          CAPTURE(name);
          CHECK(gpu_test::rel_err(hg.at(name), entry.second) <= 1e-6);
        }
      }
    }
}

TEST_CASE("batch norm in double on the GPU matches the CPU") {
  PhiloxGenerator gen(34);
  const Shape s{4, 3, 9, 7};
  const Tensor<double> x = random_double(s, gen), dy = random_double(s, gen);
  const Tensor<double> gamma = random_double({3}, gen), beta = random_double({3}, gen);
  for (bool training : {true, false}) {
    CAPTURE(training);
    Tensor<double> rm = Tensor<double>::zeros({3}), rv = Tensor<double>::full({3}, 1.0);
    Tensor<double, Cuda> rmg = cuda::to_device(rm), rvg = cuda::to_device(rv);
    Var<double> xc(x.clone(), true), gc(gamma.clone(), true), bc(beta.clone(), true);
    Var<double, Cuda> xg(cuda::to_device(x), true), gg(cuda::to_device(gamma), true),
        bg(cuda::to_device(beta), true);
    const Var<double> yc = batch_norm2d(xc, gc, bc, rm, rv, training);
    const Var<double, Cuda> yg = batch_norm2d(xg, gg, bg, rmg, rvg, training);
    CHECK(rel_err_double(cuda::to_host(yg.value()), yc.value()) <= 1e-12);
    CHECK(rel_err_double(cuda::to_host(rmg), rm) <= 1e-12);
    CHECK(rel_err_double(cuda::to_host(rvg), rv) <= 1e-12);
    backward(yc, dy);
    backward(yg, cuda::to_device(dy));
    CHECK(rel_err_double(cuda::to_host(xg.grad()), xc.grad()) <= 1e-10);
    CHECK(rel_err_double(cuda::to_host(gg.grad()), gc.grad()) <= 1e-10);
    CHECK(rel_err_double(cuda::to_host(bg.grad()), bc.grad()) <= 1e-10);
  }
}

TEST_CASE("batch norm gradients on the GPU are deterministic") {
  PhiloxGenerator gen(35);
  const Shape s{32, 8, 32, 32};  // 8 chunks per channel: the partial sums matter
  const Tensor<float> x = random_normal(s, gen), dy = random_normal(s, gen);
  auto run = [&] {
    Var<float, Cuda> xv(cuda::to_device(x), true);
    Var<float, Cuda> g(Tensor<float, Cuda>::full({8}, 1.5f), true),
        b(Tensor<float, Cuda>::zeros({8}), true);
    Tensor<float, Cuda> rm = Tensor<float, Cuda>::zeros({8}),
                        rv = Tensor<float, Cuda>::full({8}, 1.0f);
    const Var<float, Cuda> y = batch_norm2d(xv, g, b, rm, rv, true);
    backward(y, cuda::to_device(dy));
    return std::vector<Tensor<float>>{cuda::to_host(y.value()), cuda::to_host(xv.grad()),
                                      cuda::to_host(g.grad()),  cuda::to_host(b.grad()),
                                      cuda::to_host(rm),        cuda::to_host(rv)};
  };
  const auto a = run(), b = run();
  for (std::size_t i = 0; i < a.size(); ++i) {
    CAPTURE(i);
    CHECK(same_bits(a[i], b[i]));
  }
}

// ---- pooling
// --------------------------------------------------------------------------------------

namespace {

struct PoolCase {
  int k, s, p;
};
// DARTS' 3x3 pools (stride 1 in normal cells, 2 in reduction cells), the evaluation network's
// auxiliary-head 5x5 stride 3, and windows that overlap unevenly or not at all.
const PoolCase kPools[] = {{3, 1, 1}, {3, 2, 1}, {5, 3, 0}, {2, 2, 0},
                           {3, 2, 0}, {5, 1, 2}, {4, 3, 2}, {1, 1, 0}};
const Shape kPoolShapes[] = {Shape{1, 3, 7, 5}, Shape{3, 16, 8, 8}, Shape{2, 5, 9, 11},
                             Shape{2, 4, 32, 32}};

bool pool_fits(const Shape& s, const PoolCase& pc) {
  return cpu::PoolGeometry::out_size(s[2], pc.k, pc.s, pc.p) > 0 &&
         cpu::PoolGeometry::out_size(s[3], pc.k, pc.s, pc.p) > 0;
}

}  // namespace

TEST_CASE("max and average pooling on the GPU match the CPU") {
  PhiloxGenerator gen(41);
  for (const Shape& s : kPoolShapes)
    for (const PoolCase& pc : kPools) {
      if (!pool_fits(s, pc)) continue;
      CAPTURE(s.str());
      CAPTURE(pc.k);
      CAPTURE(pc.s);
      CAPTURE(pc.p);
      const Tensor<float> x = random_normal(s, gen);
      check_parity("max_pool2d", {{x}},
                   [pc](auto v, auto&) { return max_pool2d(v[0], pc.k, pc.s, pc.p); });
      check_parity("avg_pool2d", {{x}},
                   [pc](auto v, auto&) { return avg_pool2d(v[0], pc.k, pc.s, pc.p); });
      check_parity("max_pool2d, no gradient", {{x, false}},
                   [pc](auto v, auto&) { return max_pool2d(v[0], pc.k, pc.s, pc.p); });
      // Ties: a few distinct values, so most windows hold several maxima and the gradient
      // must go to the first in row-major order, as on the CPU.
      Tensor<float> ties = x.clone();
      for (index_t i = 0; i < ties.numel(); ++i) ties[i] = std::round(ties[i]);
      check_parity("max_pool2d with ties", {{ties}},
                   [pc](auto v, auto&) { return max_pool2d(v[0], pc.k, pc.s, pc.p); });
      // -inf: the top rows of the first plane, so that some windows see nothing else (their
      // output is -inf, their gradient goes to their first real pixel).
      Tensor<float> inf = x.clone();
      for (index_t i = 0; i < 2 * s[3]; ++i) inf[i] = -INFINITY;
      check_parity("max_pool2d with -inf", {{inf}},
                   [pc](auto v, auto&) { return max_pool2d(v[0], pc.k, pc.s, pc.p); });
    }
}

TEST_CASE("global average pooling on the GPU matches the CPU") {
  PhiloxGenerator gen(42);
  for (const Shape& s : {Shape{3, 16, 8, 8}, Shape{1, 5, 7, 5}, Shape{2, 3, 1, 1},
                         Shape{2, 7, 33, 31}, Shape{96, 256, 8, 8}}) {
    CAPTURE(s.str());
    const Tensor<float> x = random_normal(s, gen);
    check_parity("global_avg_pool", {{x}}, [](auto v, auto&) { return global_avg_pool(v[0]); });
  }
}

TEST_CASE("pooling in double on the GPU matches the CPU") {
  PhiloxGenerator gen(43);
  const Tensor<double> x = random_double({2, 3, 9, 7}, gen);
  Var<double> xc(x.clone(), true);
  Var<double, Cuda> xg(cuda::to_device(x), true);
  const Var<double> yc = add(add(sum(max_pool2d(xc, 3, 2, 1)), sum(avg_pool2d(xc, 3, 1, 1))),
                             sum(global_avg_pool(xc)));
  const Var<double, Cuda> yg = add(add(sum(max_pool2d(xg, 3, 2, 1)), sum(avg_pool2d(xg, 3, 1, 1))),
                                   sum(global_avg_pool(xg)));
  CHECK(rel_err_double(cuda::to_host(yg.value()), yc.value()) <= 1e-12);
  backward(yc);
  backward(yg);
  CHECK(rel_err_double(cuda::to_host(xg.grad()), xc.grad()) <= 1e-12);
}

TEST_CASE("pooling on the GPU rejects bad windows like the CPU") {
  Var<float, Cuda> x(Tensor<float, Cuda>::zeros({1, 2, 3, 3}), true);
  CHECK_THROWS_WITH_AS(max_pool2d(x, 3, 1, 2), doctest::Contains("padding"), datanas::error);
  CHECK_THROWS_WITH_AS(avg_pool2d(x, 5, 1, 0), doctest::Contains("output size"), datanas::error);
}

TEST_CASE("batch norm on the GPU with more channels than one launch covers") {
  // 4100 channels: the per-channel kernels cover 4096 in y and loop over the rest.
  PhiloxGenerator gen(36);
  check_bn("affine", Shape{2, 4100, 1, 1}, true, true, true, gen);
  check_bn("affine", Shape{2, 4100, 1, 1}, true, false, true, gen);
}

#if DATANAS_CUDA_SIM
TEST_CASE("batch norm on the GPU is two launches forward and two backward") {
  // Partial sums, then the statistics and the output in one launch; partial sums, then the
  // parameter gradients and dx in one (every block of a channel computes the statistics).
  PhiloxGenerator gen(37);
  const Shape s{8, 16, 32, 32};
  Var<float, Cuda> x(cuda::to_device(random_normal(s, gen)), true);
  Var<float, Cuda> g(Tensor<float, Cuda>::full({16}, 1.5f), true), b(Tensor<float, Cuda>::zeros({16}), true);
  Tensor<float, Cuda> rm = Tensor<float, Cuda>::zeros({16}), rv = Tensor<float, Cuda>::full({16}, 1.0f);
  const Tensor<float, Cuda> dy = cuda::to_device(random_normal(s, gen));
  std::uint64_t before = cudasim::counters().kernels;
  const Var<float, Cuda> y = batch_norm2d(x, g, b, rm, rv, true);
  CHECK(cudasim::counters().kernels - before == 2);
  before = cudasim::counters().kernels;
  backward(y, dy);
  CHECK(cudasim::counters().kernels - before == 2);
}
#endif
