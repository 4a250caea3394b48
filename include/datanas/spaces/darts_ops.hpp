// datanas/spaces/darts_ops.hpp - the candidate operations of the DARTS CNN space, exactly as
// composed in ALGORITHMS.md §1.1, in their search and evaluation variants.
//
// Search variant (Phase::kSearch): every BN is non-affine and each pooling op is followed by a
// non-affine BN. Evaluation variant (Phase::kEval): affine BNs, pools without BN.
//
// Each op is a descriptor type (SepConv3x3, ...) with a compile-time name and a factory; an op
// set is a type list of descriptors (OpSet<...>). Op modules share the OpModule interface so
// that the evaluation network can also build them from a genotype's names at run time.
#pragma once

#include <array>
#include <memory>
#include <string_view>

#include "datanas/nn/layers.hpp"
#include "datanas/ops/activation.hpp"
#include "datanas/ops/arithmetic.hpp"
#include "datanas/ops/pool.hpp"
#include "datanas/ops/structure.hpp"

namespace datanas::spaces {

enum class Phase { kSearch, kEval };

/// A candidate operation: C channels in, C channels out, stride 1 or 2.
template <class T, class D = Cpu>
class OpModule : public nn::Module<T, D> {
 public:
  virtual Var<T, D> operator()(const Var<T, D>& x) const = 0;
  /// DARTS "none": the output is a symbolic zero and nothing runs.
  [[nodiscard]] virtual bool is_zero() const { return false; }
  /// skip_connect at stride 1: no drop path in the evaluation network.
  [[nodiscard]] virtual bool is_identity() const { return false; }
  /// Whether the op begins with ReLU(x). A mixed op then computes relu(x) once per edge and
  /// hands it to every such op that does not fuse it (fuses_relu) through from_relu(): one
  /// activation (and one ReLU backward) per edge instead of one per op, the same values.
  [[nodiscard]] virtual bool relu_first() const { return false; }
  /// The op applied to r = relu(x); only for relu_first() ops.
  virtual Var<T, D> from_relu(const Var<T, D>& r) const {
    (void)r;
    throw error("from_relu: this op does not start with ReLU");
  }
  /// Whether operator()(x) applies its leading ReLU inside its convolution kernels
  /// (relu_conv_pair): no relu(x) tensor, and on the CPU no ReLU backward pass either (the
  /// depthwise backward masks the gradient as it writes it). A mixed op on the CPU then calls
  /// operator()(x) rather than sharing one relu(x) among its ops.
  [[nodiscard]] virtual bool fuses_relu() const { return false; }
};

/// Whether a cell (a supernet edge, an evaluation cell's input state) gives `op` the relu(x) it
/// shares among the ops on that input (from_relu) rather than x itself. On the CPU an op that
/// fuses its ReLU takes x: the fused mask costs nothing extra in backward, so each op reading
/// relu(x) in its kernels beats one shared relu(x) tensor (no ReLU pass either way, and one
/// activation fewer kept). On the GPU each fused op would mask its gradient in a pass of its own
/// (four per supernet edge, where one shared ReLU backward does), so the input's ops share it.
template <class T, class D>
bool takes_shared_relu(const OpModule<T, D>& op) {
  return op.relu_first() && !(is_cpu<D> && op.fuses_relu());
}

/// Output spatial size of the stride-s DARTS ops (3x3 with padding 1): ceil(h / s).
inline index_t strided_size(index_t h, int stride) { return (h + stride - 1) / stride; }

/// ReLU -> conv k x k (no bias) -> BN. relu(x) is never kept (relu_conv2d); a 1x1 convolution
/// (the cells' preprocessing) reads it from x in the CPU kernels.
template <class T, class D = Cpu>
class ReLUConvBN : public OpModule<T, D> {
 public:
  ReLUConvBN(index_t cin, index_t cout, int k, int stride, int pad, bool affine, PhiloxGenerator& g)
      : conv_(cin, cout, k, {.stride = stride, .padding = pad}, false, g), bn_(cout, affine) {
    this->register_module("op.1", conv_);
    this->register_module("op.2", bn_);
  }
  Var<T, D> operator()(const Var<T, D>& x) const override { return bn_(nn::relu_conv(conv_, x)); }
  [[nodiscard]] bool relu_first() const override { return true; }
  /// A 1x1 convolution at stride 1 without padding: the CPU's kernels read relu(x) from x.
  [[nodiscard]] bool fuses_relu() const override {
    const Conv2dParams& p = conv_.params();
    return conv_.weight().shape()[3] == 1 && p.stride == 1 && p.padding == 0;
  }
  Var<T, D> from_relu(const Var<T, D>& r) const override { return bn_(conv_(r)); }

 private:
  nn::Conv2d<T, D> conv_;
  nn::BatchNorm2d<T, D> bn_;
};

/// ReLU, then two 1x1 stride-2 convs with Cout/2 outputs on x and on x[:, :, 1:, 1:],
/// concatenated on channels, then BN. On the CPU the two convolutions read relu(x) from x
/// (relu_conv2d: im2col gathers it), so relu(x) is never kept; on the GPU they share one.
///
/// The second convolution runs on x itself, padded by one, and drops its output's first row
/// and column: a 1x1 stride-2 convolution with padding 1 reads x[2i - 1][2j - 1] at output
/// (i, j), so its outputs from (1, 1) on are those of the convolution of the shifted crop (the
/// same sums over the channels; equal to rounding, as the product tiles its columns otherwise).
/// It computes one more output row and column, whose gradient is zero, and in exchange keeps
/// no shifted copy of x for its backward: that copy (all of x's channels, one pixel smaller)
/// was the largest tensor FactorizedReduce held, and the cells' preprocessing applies it to
/// 4C-channel cell outputs.
template <class T, class D = Cpu>
class FactorizedReduce : public OpModule<T, D> {
 public:
  FactorizedReduce(index_t cin, index_t cout, bool affine, PhiloxGenerator& g)
      : conv1_(cin, half(cout), 1, {.stride = 2}, false, g),
        conv2_(cin, half(cout), 1, {.stride = 2, .padding = 1}, false, g), bn_(cout, affine) {
    this->register_module("conv_1", conv1_);
    this->register_module("conv_2", conv2_);
    this->register_module("bn", bn_);
  }
  Var<T, D> operator()(const Var<T, D>& x) const override {
    if constexpr (!is_cpu<D>) return from_relu(relu(x));
    check_even(x);
    Var<T, D> halves[] = {nn::relu_conv(conv1_, x), shift_crop(nn::relu_conv(conv2_, x))};
    return bn_(concat_channels<T, D>(halves));
  }
  [[nodiscard]] bool relu_first() const override { return true; }
  [[nodiscard]] bool fuses_relu() const override { return is_cpu<D>; }
  Var<T, D> from_relu(const Var<T, D>& r) const override {
    check_even(r);
    Var<T, D> halves[] = {conv1_(r), shift_crop(conv2_(r))};
    return bn_(concat_channels<T, D>(halves));
  }

 private:
  static void check_even(const Var<T, D>& x) {
    DATANAS_CHECK(x.shape().h() % 2 == 0 && x.shape().w() % 2 == 0, "FactorizedReduce: input ", x.shape().str(),
                  " has an odd spatial size; its two halves would not line up");
  }
  static index_t half(index_t cout) {
    DATANAS_CHECK(cout % 2 == 0, "FactorizedReduce: output channels ", cout, " must be even");
    return cout / 2;
  }
  nn::Conv2d<T, D> conv1_, conv2_;
  nn::BatchNorm2d<T, D> bn_;
};

/// [ReLU -> dw kxk (stride s) -> 1x1 -> BN] then [ReLU -> dw kxk -> 1x1 -> BN].
template <class T, class D = Cpu>
class SepConv : public OpModule<T, D> {
 public:
  SepConv(index_t c, int k, int stride, int pad, bool affine, PhiloxGenerator& g)
      : dw1_(c, c, k, {.stride = stride, .padding = pad, .groups = int(c)}, false, g),
        pw1_(c, c, 1, {}, false, g), bn1_(c, affine),
        dw2_(c, c, k, {.stride = 1, .padding = pad, .groups = int(c)}, false, g),
        pw2_(c, c, 1, {}, false, g), bn2_(c, affine) {
    this->register_module("op.1", dw1_);
    this->register_module("op.2", pw1_);
    this->register_module("op.3", bn1_);
    this->register_module("op.5", dw2_);
    this->register_module("op.6", pw2_);
    this->register_module("op.7", bn2_);
  }
  // The depthwise outputs are recomputed in backward, not kept (nn::conv_pair); so is the ReLU
  // between the halves (nn::relu_conv_pair), whose output only the second depthwise
  // convolution reads, while the first BN keeps its own output anyway.
  Var<T, D> operator()(const Var<T, D>& x) const override {
    return second_half(bn1_(nn::relu_conv_pair(dw1_, pw1_, x)));
  }
  [[nodiscard]] bool relu_first() const override { return true; }
  [[nodiscard]] bool fuses_relu() const override { return true; }
  Var<T, D> from_relu(const Var<T, D>& r) const override { return second_half(bn1_(nn::conv_pair(dw1_, pw1_, r))); }

 private:
  Var<T, D> second_half(const Var<T, D>& h) const { return bn2_(nn::relu_conv_pair(dw2_, pw2_, h)); }

  nn::Conv2d<T, D> dw1_, pw1_;
  nn::BatchNorm2d<T, D> bn1_;
  nn::Conv2d<T, D> dw2_, pw2_;
  nn::BatchNorm2d<T, D> bn2_;
};

/// ReLU -> dw kxk dilation d (stride s) -> 1x1 -> BN.
template <class T, class D = Cpu>
class DilConv : public OpModule<T, D> {
 public:
  DilConv(index_t c, int k, int stride, int pad, int dilation, bool affine, PhiloxGenerator& g)
      : dw_(c, c, k, {.stride = stride, .padding = pad, .dilation = dilation, .groups = int(c)}, false, g),
        pw_(c, c, 1, {}, false, g), bn_(c, affine) {
    this->register_module("op.1", dw_);
    this->register_module("op.2", pw_);
    this->register_module("op.3", bn_);
  }
  Var<T, D> operator()(const Var<T, D>& x) const override { return bn_(nn::relu_conv_pair(dw_, pw_, x)); }
  [[nodiscard]] bool relu_first() const override { return true; }
  [[nodiscard]] bool fuses_relu() const override { return true; }
  Var<T, D> from_relu(const Var<T, D>& r) const override { return bn_(nn::conv_pair(dw_, pw_, r)); }

 private:
  nn::Conv2d<T, D> dw_, pw_;
  nn::BatchNorm2d<T, D> bn_;
};

/// Max or average 3x3 pooling (padding 1, average without the padding), with a non-affine BN
/// after it in the search phase.
template <class T, class D = Cpu>
class Pool3x3 : public OpModule<T, D> {
 public:
  Pool3x3(bool max, index_t c, int stride, bool with_bn)
      : max_(max), stride_(stride), bn_(with_bn ? std::make_unique<nn::BatchNorm2d<T, D>>(c, false) : nullptr) {
    if (bn_) this->register_module("bn", *bn_);
  }
  Var<T, D> operator()(const Var<T, D>& x) const override {
    Var<T, D> y = max_ ? max_pool2d(x, 3, stride_, 1) : avg_pool2d(x, 3, stride_, 1);
    return bn_ ? (*bn_)(y) : y;
  }

 private:
  bool max_;
  int stride_;
  std::unique_ptr<nn::BatchNorm2d<T, D>> bn_;
};

template <class T, class D = Cpu>
class Identity : public OpModule<T, D> {
 public:
  Var<T, D> operator()(const Var<T, D>& x) const override { return x; }
  [[nodiscard]] bool is_identity() const override { return true; }
};

/// DARTS "none": zeros of the output shape (stride 2: the subsampled shape).
template <class T, class D = Cpu>
class Zero : public OpModule<T, D> {
 public:
  explicit Zero(int stride) : stride_(stride) {}
  Var<T, D> operator()(const Var<T, D>& x) const override {
    const Shape& s = x.shape();
    return zeros<T, D>({s.n(), s.c(), strided_size(s.h(), stride_), strided_size(s.w(), stride_)});
  }
  [[nodiscard]] bool is_zero() const override { return true; }

 private:
  int stride_;
};

// ---- descriptors: name + factory ----------------------------------------------------------

template <class T, class D = Cpu>
using OpPtr = std::unique_ptr<OpModule<T, D>>;

#define DATANAS_DEFINE_OP(Type, op_name, ...)                                                \
  struct Type {                                                                               \
    static constexpr std::string_view kName = op_name;                                        \
    template <class T, class D = Cpu>                                                         \
    static OpPtr<T, D> make(index_t c, int stride, Phase phase, PhiloxGenerator& gen) {       \
      const bool affine = phase == Phase::kEval;                                              \
      (void)affine;                                                                           \
      (void)gen;                                                                              \
      (void)c;                                                                                \
      __VA_ARGS__                                                                             \
    }                                                                                         \
  }

DATANAS_DEFINE_OP(NoneOp, "none", return std::make_unique<Zero<T, D>>(stride););
DATANAS_DEFINE_OP(MaxPool3x3, "max_pool_3x3",
                  return std::make_unique<Pool3x3<T, D>>(true, c, stride, phase == Phase::kSearch););
DATANAS_DEFINE_OP(AvgPool3x3, "avg_pool_3x3",
                  return std::make_unique<Pool3x3<T, D>>(false, c, stride, phase == Phase::kSearch););
DATANAS_DEFINE_OP(SkipConnect, "skip_connect",
                  if (stride == 1) return std::make_unique<Identity<T, D>>();
                  return std::make_unique<FactorizedReduce<T, D>>(c, c, affine, gen););
DATANAS_DEFINE_OP(SepConv3x3, "sep_conv_3x3",
                  return std::make_unique<SepConv<T, D>>(c, 3, stride, 1, affine, gen););
DATANAS_DEFINE_OP(SepConv5x5, "sep_conv_5x5",
                  return std::make_unique<SepConv<T, D>>(c, 5, stride, 2, affine, gen););
DATANAS_DEFINE_OP(DilConv3x3, "dil_conv_3x3",
                  return std::make_unique<DilConv<T, D>>(c, 3, stride, 2, 2, affine, gen););
DATANAS_DEFINE_OP(DilConv5x5, "dil_conv_5x5",
                  return std::make_unique<DilConv<T, D>>(c, 5, stride, 4, 2, affine, gen););
#undef DATANAS_DEFINE_OP

/// What an op descriptor must provide: a compile-time name and a factory of OpModules.
template <class Op>
concept OpDescriptor = requires(index_t c, int stride, Phase phase, PhiloxGenerator& gen) {
  { Op::kName } -> std::convertible_to<std::string_view>;
  { Op::template make<float>(c, stride, phase, gen) } -> std::same_as<OpPtr<float>>;
};

/// Op::make<T, D> when the descriptor is device-generic; descriptors written for the host only
/// (`template <class T> static OpPtr<T> make(...)`) still work on the Cpu.
template <class Op, class T, class D>
OpPtr<T, D> make_op(index_t c, int stride, Phase phase, PhiloxGenerator& gen) {
  if constexpr (requires { Op::template make<T, D>(c, stride, phase, gen); }) {
    return Op::template make<T, D>(c, stride, phase, gen);
  } else {
    static_assert(is_cpu<D>, "this op descriptor has only make<T>() (host): give it "
                             "template <class T, class D> static OpPtr<T, D> make(...) to run on a device");
    return Op::template make<T>(c, stride, phase, gen);
  }
}

/// A compile-time list of candidate operations; its order is the column order of alpha.
template <OpDescriptor... Ops>
struct OpSet {
  static constexpr int kSize = int(sizeof...(Ops));
  static_assert(kSize >= 1, "an OpSet needs at least one op");
  static constexpr std::array<std::string_view, sizeof...(Ops)> kNames = {Ops::kName...};

  /// Column of `name`, or -1.
  static constexpr int index_of(std::string_view name) {
    for (int i = 0; i < kSize; ++i)
      if (kNames[std::size_t(i)] == name) return i;
    return -1;
  }
  /// Builds op k (column k of alpha).
  template <class T, class D = Cpu>
  static OpPtr<T, D> make(int k, index_t c, int stride, Phase phase, PhiloxGenerator& gen) {
    OpPtr<T, D> out;
    int i = 0;
    ((i++ == k ? (out = make_op<Ops, T, D>(c, stride, phase, gen), 0) : 0), ...);
    DATANAS_CHECK(out != nullptr, "OpSet: no op at index ", k);
    return out;
  }
  /// Builds the op called `name`; throws naming the known ops otherwise.
  template <class T, class D = Cpu>
  static OpPtr<T, D> make(std::string_view name, index_t c, int stride, Phase phase, PhiloxGenerator& gen) {
    const int k = index_of(name);
    if (k < 0) {
      std::string known;
      for (auto n : kNames) known += (known.empty() ? "" : ", ") + std::string(n);
      throw error(datanas::detail::concat("unknown op '", name, "' (known: ", known, ")"));
    }
    return make<T, D>(k, c, stride, phase, gen);
  }
};

template <class S>
concept OpSetType = requires {
  { S::kSize } -> std::convertible_to<int>;
  { S::kNames[0] } -> std::convertible_to<std::string_view>;
  { S::index_of(std::string_view()) } -> std::same_as<int>;
};

/// The DARTS CNN op set (ALGORITHMS.md §1.1), in alpha column order.
using DartsOps = OpSet<NoneOp, MaxPool3x3, AvgPool3x3, SkipConnect, SepConv3x3, SepConv5x5,
                       DilConv3x3, DilConv5x5>;

}  // namespace datanas::spaces
