// The GPU-against-CPU harness of the op tests: runs one op on Var<float, Cpu> and on
// Var<float, Cuda> with the same inputs, and compares the forward values and, after backward
// with the same random output gradient, every input's gradient. Forward and backward run twice,
// so that both gradient paths are compared: the first backward overwrites (GradSlot), the second
// adds. Device memory is poisoned with NaN by the allocator (gpu_main.cpp), so an element a
// kernel forgets to write fails the comparison. Plain host C++: no device code, no nvcc.
#pragma once

#include <doctest/doctest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <span>
#include <string>
#include <vector>

#include "datanas/autograd/variable.hpp"
#include "datanas/cuda.hpp"
#include "datanas/core/random.hpp"

namespace datanas::gpu_test {

/// Relative error ||got - want|| / ||want|| in double (absolute when want is 0); infinity when
/// got holds a NaN or an infinity that want does not.
template <class T>
double rel_err(const Tensor<T>& got, const Tensor<T>& want) {
  double num = 0, den = 0;
  for (index_t i = 0; i < want.numel(); ++i) {
    if (!std::isfinite(got[i]) && got[i] != want[i]) return std::numeric_limits<double>::infinity();
    if (!std::isfinite(want[i])) continue;
    const double d = double(got[i]) - double(want[i]);
    num += d * d;
    den += double(want[i]) * double(want[i]);
  }
  return den > 0 ? std::sqrt(num / den) : std::sqrt(num);
}
template <class T>
double rel_err(const Tensor<T, Cuda>& got, const Tensor<T>& want) {
  return rel_err(cuda::to_host(got), want);
}

/// A tensor of standard normal values (seeded, so a failure names its seed).
inline Tensor<float> random_normal(const Shape& s, PhiloxGenerator& gen, float scale = 1.0f) {
  Tensor<float> t = Tensor<float>::empty(s);
  for (index_t i = 0; i < t.numel(); ++i) t[i] = scale * float(gen.normal());
  return t;
}

/// A host tensor on device D: itself on the Cpu, a device copy on Cuda (labels, masks, ids).
template <class D, class T>
Tensor<T, D> on(const Tensor<T, Cpu>& t) {
  if constexpr (is_cpu<D>)
    return t;
  else
    return cuda::to_device(t);
}

/// One input of an op under test: its value, and whether it needs a gradient.
struct Input {
  Tensor<float> value;
  bool grad = true;
};

/// Runs `op` on both devices and compares. `op` is a generic callable
///   (std::span<const Var<float, D>> inputs, PhiloxGenerator& gen) -> Var<float, D>
/// called with D = Cpu and D = Cuda; each device gets a generator seeded with `seed`, so ops
/// that draw (dropout, estimators) draw the same numbers. Checks forward values and input
/// gradients within `tol` (relative error), twice.
template <class Op>
void check_parity(const std::string& name, const std::vector<Input>& inputs, Op&& op,
                  double tol = 1e-4, std::uint64_t seed = 1234) {
  CAPTURE(name);
  std::vector<Var<float, Cpu>> xc;
  std::vector<Var<float, Cuda>> xg;
  for (const Input& in : inputs) {
    xc.emplace_back(in.value.clone(), in.grad);
    xg.emplace_back(cuda::to_device(in.value), in.grad);
  }
  PhiloxGenerator gc(seed), gg(seed), gdy(seed + 1);
  for (int round = 0; round < 2; ++round) {
    CAPTURE(round);
    Var<float, Cpu> yc = op(std::span<const Var<float, Cpu>>(xc), gc);
    Var<float, Cuda> yg = op(std::span<const Var<float, Cuda>>(xg), gg);
    REQUIRE(yg.shape() == yc.shape());
    const double ef = rel_err(yg.value(), yc.value());
    CAPTURE(ef);
    CHECK(ef <= tol);
    if (!yc.requires_grad()) continue;
    const Tensor<float> dy = random_normal(yc.shape(), gdy);
    backward(yc, dy);
    backward(yg, cuda::to_device(dy));
    for (std::size_t i = 0; i < inputs.size(); ++i) {
      if (!inputs[i].grad) continue;
      CAPTURE(i);
      const double eg = rel_err(xg[i].grad(), xc[i].grad());
      CAPTURE(eg);
      CHECK(eg <= tol);
    }
  }
}

/// Bitwise equality of two tensors of the same shape (what a replay, a reuse or a repeat must
/// reproduce exactly; -0.0 differs from 0.0, and a NaN equals only the same NaN).
inline bool same_bits(const Tensor<float>& a, const Tensor<float>& b) {
  return a.shape() == b.shape() && std::memcmp(a.data(), b.data(), sizeof(float) * std::size_t(a.numel())) == 0;
}
inline bool same_bits(const Tensor<float, Cuda>& a, const Tensor<float, Cuda>& b) {
  return same_bits(cuda::to_host(a), cuda::to_host(b));
}


/// Turns the Cuda allocator's small segments on (or off) for a scope. gpu_main turns them off for
/// every test: the tests count blocks and bytes as exact-size blocks, and the simulator's guard
/// pages check a block to its end only when it is a cudaMalloc of its own. The library's default
/// (on) is tested by the cases that turn it on with this.
class SmallSegments {
 public:
  explicit SmallSegments(bool on = true) : was_(CachingAllocator<Cuda>::instance().small_segments()) {
    CachingAllocator<Cuda>::instance().set_small_segments(on);
  }
  ~SmallSegments() { CachingAllocator<Cuda>::instance().set_small_segments(was_); }
  SmallSegments(const SmallSegments&) = delete;
  SmallSegments& operator=(const SmallSegments&) = delete;

 private:
  bool was_;
};
}  // namespace datanas::gpu_test
