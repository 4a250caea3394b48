// benchmarks/bench_gemm.cpp - the CPU convolutions' matrix products, one thread: our
// register-tiled small product (ops/cpu/small_gemm.hpp) against Eigen's general product, on the
// shapes the DARTS networks give them.
//
// Why it exists: conv.hpp's gemm sends a product with inner dimension k <= small_gemm::kMaxInner
// (and at least a packet of columns) to small_gemm and anything else to Eigen, and a weight
// gradient A B^T with at least a packet of columns and of inner indices to small_gemm::nt. This
// benchmark is the measurement behind those rules: both kernels on the 1x1 convolutions of the
// search network (C = 16, on 32x32 and 28x28 inputs) and of the evaluation network (C = 36), on
// k from 288 to 1152, on an im2col 3x3 convolution of 512 channels on 7x7 (k = 4,608), on the
// PTB decoder behind linear (thousands of rows, k = 10,000: kMaxInner) and on one column (where
// Eigen's matrix-vector kernel wins; as nt, one inner index, where its outer product does).
//
// Names: gemm/<form>/m<M>_n<N>_k<K>/<kernel>, kernel small or eigen. form nn: C = A B, the
// forward product W X of a 1x1 convolution (A = W [Cout x Cin], B = one image [Cin x H*W]);
// form tn: C = A^T B with A stored k x m, the data gradient W^T dY; form nt: C = A B^T with B
// stored n x k, the weight gradient dY X^T (A = dY [Cout x H*W], B = X [Cin x H*W]; the same
// convolutions as nn's shapes with n and k exchanged, small_gemm::nt). C is written, not
// accumulated, as in the convolutions (the weight gradient accumulates over images there).
// benchmarks/pytorch/ops.py --suite gemm times torch.mm on the same shapes (names ending in
// /torch); compare_ops.py --suite gemm puts them side by side.
//
// One thread on purpose: the convolutions call these products once per image from inside their
// own parallel loop, so a single product never runs on more than one thread. Eigen's own
// threading is switched off (Eigen::setNbThreads(1)).
//
//   bench_gemm [Google Benchmark flags]
// Before timing, every shape's two results are compared (relative to sum |a_ip b_pj|); a
// difference beyond float rounding stops the run with an error, so a broken kernel cannot
// produce a fast number.
#include <benchmark/benchmark.h>

#include <cmath>
#include <cstdio>
#include <numeric>
#include <string>
#include <vector>

#include "bench_common.hpp"
#include "datanas/ops/cpu/conv.hpp"

namespace {

using namespace datanas;
using namespace datanas::bench;

struct Shape3 {
  index_t m, n, k;
};

enum class Form { kNN, kTN, kNT };
const char* form_name(Form f) { return f == Form::kNN ? "nn" : f == Form::kTN ? "tn" : "nt"; }

// (m, n, k) = (output channels, H*W, input channels) of a 1x1 convolution; for tn, m and k are
// the other way round (input channels, H*W, output channels) with the same A.
const std::vector<Shape3>& shapes() {
  // One line per group of shapes.
  // clang-format off
  static const std::vector<Shape3> v = {
      // Search network, C = 16: the three resolutions' node convolutions.
      {16, 1024, 16}, {32, 256, 32}, {64, 64, 64},
      // The same on 28x28 inputs (Fashion-MNIST, datanas-search's default): 784 = 49 packets
      // of 16 floats, 196 and 49 are not whole packets.
      {16, 784, 16}, {32, 196, 32}, {64, 49, 64},
      // Evaluation network, C = 36, and a cell preprocessing 4 x 144 channels to 144.
      {36, 1024, 36}, {72, 256, 72}, {144, 64, 144}, {144, 64, 576},
      // Longer k at two output sizes (the limit was 576 before 06b4667).
      {64, 256, 288}, {64, 256, 576}, {64, 256, 1152}, {144, 64, 1152},
      // A 3x3 convolution of 512 channels on 7x7 (im2col, k = 9 * 512; kMaxInner until a31521e).
      {512, 49, 4608},
      // The PTB decoder behind linear (batch 64 x window 35 = 2,240 rows, 10,000 words, 128
      // units and the recipe's 850): nn is its data gradient (k = 10,000 = kMaxInner), nt its
      // forward x W^T (at 850 units C's row blocks go in column chunks: kBlockN).
      {2240, 128, 10000}, {2240, 850, 10000},
      // The PTB cell's weight gradients at 850 units, tn (dW0 [1,700 x 1,700] and a dW_i [850 x
      // 1,700] from 64 rows, one time step, or 512, a group of 8 steps: GroupedMatmul).
      {1700, 1700, 64}, {1700, 1700, 512}, {850, 1700, 64}, {850, 1700, 512},
      // The auxiliary head's 2x2 convolution (128 -> 768 channels on 2x2: one output pixel).
      {768, 1, 512}};
  // clang-format on
  return v;
}

/// The form's shape for one convolution of shapes(): nt exchanges n and k (H*W is its k).
Shape3 form_shape(Form f, const Shape3& s) { return f == Form::kNT ? Shape3{s.m, s.k, s.n} : s; }

template <Form F>
void product(bool small, const Shape3& s, const F32* a, const F32* b, F32* c) {
  // A is m x k (lda = k) or, for tn, stored k x m (lda = m); B is k x n or, for nt, stored
  // n x k; C is m x n.
  constexpr bool TA = F == Form::kTN, TB = F == Form::kNT;
  const index_t lda = TA ? s.m : s.k, ldb = TB ? s.k : s.n;
  if (small && TB)
    cpu::small_gemm::nt(s.m, s.n, s.k, a, lda, b, ldb, c, s.n, false);
  else if (small)
    cpu::small_gemm::nn<TA>(s.m, s.n, s.k, a, lda, b, ldb, c, s.n, false);
  else
    cpu::conv_detail::eigen_gemm<TA, TB>(s.m, s.n, s.k, a, lda, b, ldb, c, s.n, false);
}

/// The inputs of one shape, from the same hash as ops.py's (seeds 1 and 2).
struct Operands {
  TensorF a, b;
  explicit Operands(const Shape3& s) : a(hashed({s.m * s.k}, 1)), b(hashed({s.k * s.n}, 2)) {}
};

/// Both kernels' C must agree to rounding: |c_small - c_eigen| <= (k + 1) eps sum_p |a_ip b_pj|
/// (each side's error is below k eps times that sum; 2k covers both, k + 1 is what test_conv
/// allows for one against an exact reference, and both here are far inside it in practice).
template <Form F>
bool agree(const Shape3& s) {
  constexpr bool TA = F == Form::kTN, TB = F == Form::kNT;
  const Operands o(s);
  std::vector<F32> c1(std::size_t(s.m * s.n)), c2(c1.size());
  product<F>(true, s, o.a.data(), o.b.data(), c1.data());
  product<F>(false, s, o.a.data(), o.b.data(), c2.data());
  const double eps = std::ldexp(1.0, -23);
  // Every row, but for the decoder's shape (2.9 G terms a form: 47 s at startup) one row in
  // `step` and the last, about 2^27 terms. step is prime to 6 (23 there), so the rows checked
  // fall in every block of kBlockM rows and at every offset within a 6-row tile.
  index_t step = std::max<index_t>(1, (s.m * s.n * s.k) >> 27);
  while (std::gcd(step, index_t(6)) != 1) ++step;
  for (index_t i = 0; i < s.m; i = i == s.m - 1 ? s.m : std::min(i + step, s.m - 1))
    for (index_t j = 0; j < s.n; ++j) {
      double mag = 0;
      for (index_t p = 0; p < s.k; ++p) {
        const F32 aip = TA ? o.a[p * s.m + i] : o.a[i * s.k + p];
        const F32 bpj = TB ? o.b[j * s.k + p] : o.b[p * s.n + j];
        mag += std::abs(double(aip) * double(bpj));
      }
      const double d = std::abs(double(c1[i * s.n + j]) - double(c2[i * s.n + j]));
      if (d > 2.0 * double(s.k + 1) * eps * mag) {
        std::fprintf(stderr,
                     "bench_gemm: %s %ld x %ld x %ld: the kernels differ at (%ld, %ld): %g vs %g\n",
                     form_name(F), long(s.m), long(s.n), long(s.k), long(i), long(j),
                     double(c1[i * s.n + j]), double(c2[i * s.n + j]));
        return false;
      }
    }
  return true;
}

template <Form F>
void run(benchmark::State& state, Shape3 s, bool small) {
  const Operands o(s);
  TensorF c = TensorF::empty({s.m * s.n});
  for (auto _ : state) {
    product<F>(small, s, o.a.data(), o.b.data(), c.data());
    benchmark::DoNotOptimize(c.data());
    benchmark::ClobberMemory();
  }
  state.counters["GFLOPS"] = benchmark::Counter(2.0 * double(s.m * s.n * s.k),
                                                benchmark::Counter::kIsIterationInvariantRate);
}

template <Form F>
bool register_form() {
  for (const Shape3& conv : shapes()) {
    const Shape3 s = form_shape(F, conv);
    if (!agree<F>(s)) return false;
    const std::string base = std::string("gemm/") + form_name(F) + "/m" + std::to_string(s.m) +
                             "_n" + std::to_string(s.n) + "_k" + std::to_string(s.k) + "/";
    for (const bool small : {true, false})
      benchmark::RegisterBenchmark((base + (small ? "small" : "eigen")).c_str(),
                                   [s, small](benchmark::State& st) { run<F>(st, s, small); })
          ->Unit(benchmark::kMillisecond);
  }
  return true;
}

}  // namespace

int main(int argc, char** argv) {
  Eigen::setNbThreads(1);
  if (!register_form<Form::kNN>() || !register_form<Form::kTN>() || !register_form<Form::kNT>())
    return 1;
  benchmark::AddCustomContext("kMaxInner", std::to_string(cpu::small_gemm::kMaxInner));
  return bench::run_benchmarks(argc, argv);
}
