// benchmarks/bench_ops.cpp - forward + backward of each CPU op at DARTS search sizes.
//
// Every benchmark times one training-style iteration of one op: forward, reduce the output to a
// scalar with sum() (the cheapest reduction, so the op dominates), backward. The inputs and all
// weights require grad, as the same op inside a PyTorch model would, so both libraries compute
// the same set of gradients. benchmarks/pytorch/ops.py does exactly the same work under the same
// names; benchmarks/compare_ops.py puts the two side by side.
//
// Gradients are forgotten lazily before each iteration (Var::zero_grad, torch: grad = None), so
// the first backward writer overwrites instead of accumulating, in both libraries.
//
// Real time is reported (UseRealTime): the kernels use every OpenMP thread, and CPU time of the
// main thread alone would hide the work of the others.
//
//   bench_ops                              the Google Benchmark run (all its flags work; add
//                                          --benchmark_min_warmup_time=0.2 for a warm-up, as
//                                          compare_ops.py does)
//   bench_ops --verify                     one iteration of every case, JSON checksums of the
//                                          loss and the gradients (ops.py --verify prints the
//                                          same), to check that both sides compute the same thing
#include <benchmark/benchmark.h>

#include <cmath>
#include <cstdio>
#include <cstring>
#include <functional>
#include <string>
#include <utility>
#include <vector>

#include "bench_common.hpp"
#include "datanas/datanas.hpp"

// The conv op lands separately; without it the conv benchmarks are simply not registered.
#if __has_include("datanas/ops/conv.hpp")
#include "datanas/ops/conv.hpp"
#define DATANAS_BENCH_HAVE_CONV 1
#else
#define DATANAS_BENCH_HAVE_CONV 0
#endif

namespace {

using namespace datanas;
using namespace datanas::bench;

/// One benchmark: its leaves (inputs and weights, all requiring grad) and a forward that builds
/// the graph and returns the op output, or the loss itself when `scalar` (cross_entropy).
struct Case {
  std::vector<VarF> leaves;
  std::function<VarF()> forward;
  bool scalar = false;
};

struct NamedCase {
  std::string name;
  std::function<Case()> make;  // built inside the benchmark, so setup is never timed
};

constexpr index_t kBatch = 64;

/// The DARTS search sizes: C = 16 at 32x32, 32 at 16x16, 64 at 8x8 (CIFAR, 8 cells).
struct Size {
  index_t c, hw;
};
constexpr Size kSizes[] = {{16, 32}, {32, 16}, {64, 8}};

std::string shape_name(Size s) {
  // Appended piece by piece: GCC 12 reports a false -Wrestrict on `"C" + std::to_string(...)`.
  std::string name = "C";
  name += std::to_string(s.c);
  name += '/';
  name += std::to_string(s.hw);
  name += 'x';
  return name + std::to_string(s.hw);
}

/// A BN without affine parameters keeps running statistics (nn.BatchNorm2d(C, affine=False)).
struct RunningStats {
  TensorF mean, var;
  explicit RunningStats(index_t c) : mean(TensorF::zeros({c})), var(TensorF::full({c}, 1)) {}
};

VarF bn_nonaffine(const VarF& x, const RunningStats& rs) {
  return batch_norm2d(x, VarF(), VarF(), rs.mean, rs.var, /*training=*/true);
}

#if DATANAS_BENCH_HAVE_CONV
Case depthwise_case(Size s, int k, int dilation) {
  const index_t c = s.c;
  VarF x = param({kBatch, c, s.hw, s.hw}, 1);
  VarF w = param({c, 1, k, k}, 2, 1.0 / k);
  const Conv2dParams p{
      .stride = 1, .padding = dilation * (k - 1) / 2, .dilation = dilation, .groups = int(c)};
  return {{x, w}, [x, w, p] { return conv2d(x, w, VarF(), p); }};
}

Case conv_case(Size s, index_t cout, int k, int stride) {
  VarF x = param({kBatch, s.c, s.hw, s.hw}, 1);
  VarF w = param({cout, s.c, k, k}, 2, 1.0 / std::sqrt(double(s.c * k * k)));
  const Conv2dParams p{.stride = stride, .padding = (k - 1) / 2};
  return {{x, w}, [x, w, p] { return conv2d(x, w, VarF(), p); }};
}

/// DARTS SepConv(C, C, 3, stride, padding 1, affine=False):
/// relu -> dw3x3 -> 1x1 -> BN -> relu -> dw3x3 -> 1x1 -> BN, each relu -> dw -> 1x1 run as
/// relu_conv2d_pair, as nn::SepConv does (the depthwise convolution reads relu(x) while padding
/// it). Stride 2 is a reduction cell's edge from its inputs.
Case sep_conv_case(Size s, int stride) {
  const index_t c = s.c;
  VarF x = param({kBatch, c, s.hw, s.hw}, 1);
  VarF dw1 = param({c, 1, 3, 3}, 2, 1.0 / 3), pw1 = param({c, c, 1, 1}, 3, 1.0 / std::sqrt(c));
  VarF dw2 = param({c, 1, 3, 3}, 4, 1.0 / 3), pw2 = param({c, c, 1, 1}, 5, 1.0 / std::sqrt(c));
  RunningStats bn1(c), bn2(c);
  const Conv2dParams dw_first{.stride = stride, .padding = 1, .groups = int(c)},
      dw{.stride = 1, .padding = 1, .groups = int(c)}, pw{};
  return {{x, dw1, pw1, dw2, pw2}, [=] {
            VarF h = bn_nonaffine(relu_conv2d_pair(x, dw1, dw_first, pw1, pw), bn1);
            return bn_nonaffine(relu_conv2d_pair(h, dw2, dw, pw2, pw), bn2);
          }};
}
#endif

std::vector<NamedCase> all_cases() {
  std::vector<NamedCase> v;
  for (const Size s : kSizes) {
    const std::string sh = shape_name(s);
    const Shape xs{kBatch, s.c, s.hw, s.hw};
    auto add = [&](const std::string& op, std::function<Case()> make) {
      v.push_back({op + "/" + sh, std::move(make)});
    };
#if DATANAS_BENCH_HAVE_CONV
    add("dw3x3", [s] { return depthwise_case(s, 3, 1); });
    add("dw5x5", [s] { return depthwise_case(s, 5, 1); });
    add("dw3x3_dil2", [s] { return depthwise_case(s, 3, 2); });
    add("dw5x5_dil2", [s] { return depthwise_case(s, 5, 2); });
    add("conv1x1", [s] { return conv_case(s, s.c, 1, 1); });
    add("conv1x1_s2_half", [s] { return conv_case(s, s.c / 2, 1, 2); });
    add("conv3x3", [s] { return conv_case(s, s.c, 3, 1); });
#endif
    add("bn_train", [s, xs] {
      VarF x = param(xs, 1);
      RunningStats rs(s.c);
      return Case{{x}, [x, rs] { return bn_nonaffine(x, rs); }};
    });
    add("bn_train_affine", [s, xs] {
      VarF x = param(xs, 1), gamma = param({s.c}, 2), beta = param({s.c}, 3);
      RunningStats rs(s.c);
      return Case{{x, gamma, beta}, [x, gamma, beta, rs] {
                    return batch_norm2d(x, gamma, beta, rs.mean, rs.var, true);
                  }};
    });
    add("relu", [xs] {
      VarF x = param(xs, 1);
      return Case{{x}, [x] { return relu(x); }};
    });
    for (const int stride : {1, 2}) {
      const std::string suffix = "3x3_s" + std::to_string(stride);
      add("maxpool" + suffix, [xs, stride] {
        VarF x = param(xs, 1);
        return Case{{x}, [x, stride] { return max_pool2d(x, 3, stride, 1); }};
      });
      add("avgpool" + suffix, [xs, stride] {
        VarF x = param(xs, 1);
        return Case{{x}, [x, stride] { return avg_pool2d(x, 3, stride, 1); }};
      });
    }
    add("global_avg_pool", [xs] {
      VarF x = param(xs, 1);
      return Case{{x}, [x] { return global_avg_pool(x); }};
    });
    add("add", [xs] {
      VarF a = param(xs, 1), b = param(xs, 2);
      return Case{{a, b}, [a, b] { return datanas::add(a, b); }};
    });
    // The DARTS mixed op of one edge: 8 terms, the first the symbolic zero of "none".
    add("weighted_sum8", [xs] {
      std::vector<VarF> leaves;
      for (int i = 1; i < 8; ++i) leaves.push_back(param(xs, 10 + i));
      VarF w = param({8}, 3, 0.5);
      std::vector<VarF> terms{zeros<F32>(xs)};
      terms.insert(terms.end(), leaves.begin(), leaves.end());
      leaves.push_back(w);
      return Case{leaves, [terms, w] { return weighted_sum<F32, Cpu>(terms, w); }};
    });
    add("concat4", [xs] {
      std::vector<VarF> parts;
      for (int i = 0; i < 4; ++i) parts.push_back(param(xs, 20 + i));
      return Case{parts, [parts] { return concat_channels<F32, Cpu>(parts); }};
    });
    add("shift_crop", [xs] {
      VarF x = param(xs, 1);
      return Case{{x}, [x] { return shift_crop(x); }};
    });
#if DATANAS_BENCH_HAVE_CONV
    add("sep_conv_3x3", [s] { return sep_conv_case(s, 1); });
    if (s.hw > 8) add("sep_conv_3x3_s2", [s] { return sep_conv_case(s, 2); });
#endif
  }
#if DATANAS_BENCH_HAVE_CONV
  // Dense 3x3 convolutions wider than a DARTS cell's (a ResNet-like stage, ImageNet's last
  // stages) at small batches: where conv2d chooses between the shifted-taps path and im2col.
  struct Wide {
    index_t batch, c, hw;
  };
  for (const Wide w : {Wide{8, 256, 14}, Wide{8, 512, 7}, Wide{2, 512, 7}}) {
    const std::string name = "conv3x3_wide/B" + std::to_string(w.batch) + "_C" +
                             std::to_string(w.c) + "/" + std::to_string(w.hw) + "x" +
                             std::to_string(w.hw);
    v.push_back({name, [w] {
                   VarF x = param({w.batch, w.c, w.hw, w.hw}, 1);
                   VarF wt = param({w.c, w.c, 3, 3}, 2, 1.0 / std::sqrt(double(w.c * 9)));
                   return Case{{x, wt}, [x, wt] { return conv2d(x, wt, VarF(), {.padding = 1}); }};
                 }});
  }
#endif
  // The classifier head of the search network and its loss.
  v.push_back({"linear/64x256to10", [] {
                 VarF x = param({kBatch, 256}, 1), w = param({10, 256}, 2, 1.0 / 16);
                 VarF b = param({10}, 3);
                 return Case{{x, w, b}, [x, w, b] { return linear(x, w, b); }};
               }});
  v.push_back({"cross_entropy/64x10", [] {
                 VarF logits = param({kBatch, 10}, 1, 3.0);
                 Tensor<std::int32_t, Cpu> labels = Tensor<std::int32_t, Cpu>::empty({kBatch});
                 for (index_t i = 0; i < kBatch; ++i) labels[i] = std::int32_t(i % 10);
                 return Case{{logits},
                             [logits, labels] { return cross_entropy(logits, labels); },
                             /*scalar=*/true};
               }});
  // The RNN search cell's batch norm: non-affine, batch statistics only, on a state [256, 300]
  // (BatchNorm1d's layout; planes of one element, cpu::bn_rows).
  v.push_back({"bn_rows/256x300", [] {
                 VarF x = param({256, 300, 1, 1}, 1);
                 return Case{{x}, [x] {
                               return batch_norm2d(x, VarF(), VarF(), TensorF(), TensorF(), true);
                             }};
               }});
  return v;
}

void run_case(benchmark::State& state, const std::function<Case()>& make) {
  Case c = make();
  for (auto _ : state) {
    for (const VarF& leaf : c.leaves) leaf.zero_grad();
    VarF y = c.forward();
    backward(c.scalar ? y : sum(y));
  }
  state.SetItemsProcessed(state.iterations());
}

/// --verify: the reduction is sum(relu(y)) instead of sum(y). The gradient of sum(y) through a
/// batch norm is zero up to rounding noise, which no checksum can compare; relu keeps it real.
int verify(const std::vector<NamedCase>& cases) {
  std::printf("{\n");
  for (std::size_t i = 0; i < cases.size(); ++i) {
    Case c = cases[i].make();
    VarF y = c.forward();
    VarF loss = c.scalar ? y : sum(relu(y));
    backward(loss);
    std::printf("  \"%s\": %s%s\n", cases[i].name.c_str(),
                verify_json(loss.value()[0], c.leaves).c_str(), i + 1 < cases.size() ? "," : "");
  }
  std::printf("}\n");
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  bool do_verify = false;
  int kept = 1;
  for (int i = 1; i < argc; ++i) {
    if (std::strcmp(argv[i], "--verify") == 0)
      do_verify = true;
    else
      argv[kept++] = argv[i];
  }
  argc = kept;
  const std::vector<NamedCase> cases = all_cases();
  if (do_verify) return verify(cases);

  for (const NamedCase& nc : cases) {
    benchmark::RegisterBenchmark(nc.name.c_str(),
                                 [make = nc.make](benchmark::State& st) { run_case(st, make); })
        ->UseRealTime()
        ->Unit(benchmark::kMillisecond);
  }
  benchmark::AddCustomContext("datanas_conv", DATANAS_BENCH_HAVE_CONV ? "yes" : "not built");
  return bench::run_benchmarks(argc, argv);
}
