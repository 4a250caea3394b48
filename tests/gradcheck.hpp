// tests/gradcheck.hpp - finite-difference gradient checks in double.
//
// check_gradients(f, inputs): L = sum(f(inputs) * r) for a fixed random r; compares dL/dinput
// from backward() with central differences (L(x + h) - L(x - h)) / 2h on every element.
#pragma once

#include <doctest/doctest.h>

#include <cmath>
#include <functional>
#include <string>
#include <vector>

#include "datanas/datanas.hpp"

namespace datanas::testing {

using VarD = Var<double, Cpu>;
using TensorD = Tensor<double, Cpu>;

/// Tensor of the given shape with entries uniform in [lo, hi), reproducible from `seed`.
inline TensorD random_tensor(const Shape& s, std::uint64_t seed, double lo = -1.0, double hi = 1.0) {
  PhiloxGenerator g(seed);
  TensorD t = TensorD::empty(s);
  for (index_t i = 0; i < t.numel(); ++i) t[i] = lo + (hi - lo) * double(g.uniform());
  return t;
}

inline double weighted_sum_of(const TensorD& y, const TensorD& r) {
  double s = 0;
  for (index_t i = 0; i < y.numel(); ++i) s += y[i] * r[i];
  return s;
}

struct GradcheckResult {
  double max_abs_err = 0;
  double max_rel_err = 0;
};

/// Checks every input that requires grad. `tol` bounds |analytic - numeric| / max(1, |numeric|).
inline GradcheckResult check_gradients(const std::function<VarD(const std::vector<VarD>&)>& f,
                                       const std::vector<VarD>& inputs, double tol = 1e-6,
                                       double h = 1e-6, std::uint64_t seed = 99) {
  clear_tape<double, Cpu>();
  for (auto& v : inputs) v.zero_grad();
  VarD y = f(inputs);
  REQUIRE(y.defined());
  const TensorD r = random_tensor(y.shape(), seed);
  // Analytic: L = sum(y * r) -> dL/dy = r, pushed through a mul-by-constant built here.
  {
    auto [g, acc] = y.grad_slot();
    (void)acc;
    g.copy_from(r);
    tape<double, Cpu>().run_backward();
  }
  GradcheckResult res;
  for (std::size_t k = 0; k < inputs.size(); ++k) {
    const VarD& x = inputs[k];
    if (!x.requires_grad()) continue;
    const TensorD analytic = x.grad().clone();
    const TensorD& xv = x.value();
    for (index_t i = 0; i < xv.numel(); ++i) {
      const double orig = xv[i];
      double lp, lm;
      {
        NoGradGuard ng;
        xv[i] = orig + h;
        lp = weighted_sum_of(f(inputs).value(), r);
        xv[i] = orig - h;
        lm = weighted_sum_of(f(inputs).value(), r);
        xv[i] = orig;
      }
      const double numeric = (lp - lm) / (2 * h);
      const double abs_err = std::abs(analytic[i] - numeric);
      const double rel_err = abs_err / std::max(1.0, std::abs(numeric));
      res.max_abs_err = std::max(res.max_abs_err, abs_err);
      res.max_rel_err = std::max(res.max_rel_err, rel_err);
      if (rel_err > tol) {
        FAIL_CHECK("input " << k << " element " << i << ": analytic " << analytic[i]
                            << " vs numeric " << numeric);
        return res;
      }
    }
  }
  CHECK(res.max_rel_err <= tol);  // counted, so a report shows the check ran
  return res;
}

/// Convenience: a leaf that requires grad, filled with uniform values in [lo, hi).
inline VarD param(const Shape& s, std::uint64_t seed, double lo = -1.0, double hi = 1.0) {
  return VarD(random_tensor(s, seed, lo, hi), true);
}

}  // namespace datanas::testing
