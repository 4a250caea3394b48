// datanas/estimators/estimators.hpp - how architecture logits alpha become the mixing weights
// of the mixed ops (ALGORITHMS.md §2): Softmax (DARTS), SoftGumbel (SNAS), HardGumbel (GDAS)
// and EGS<M> (DATA's Ensemble Gumbel-Softmax), as compile-time policies over one fused op.
//
// For a group with logits a (length n) and normalised probabilities p:
//   Softmax     w = p
//   SoftGumbel  w = y,  y = softmax((log p + g) / tau), fresh Gumbel noise g
//   HardGumbel  w = h + y - stopgrad(y),  h = onehot(argmax y)          (value h)
//   EGS<M>      z_m = h_m + y_m - stopgrad(y_m) for M independent draws; b = max_m z_m (the OR
//               of the one-hots; each coordinate's gradient goes to the first draw attaining
//               the max); w = b / sum(b), the sum kept in the graph as the reference does.
// The noise for one forward is drawn once and shared by every cell of a type and the batch.
#pragma once

#include <cmath>
#include <limits>
#include <span>
#include <string_view>
#include <vector>

#include "datanas/autograd/variable.hpp"
#include "datanas/core/random.hpp"
#include "datanas/ops/cpu/common.hpp"
#include "datanas/search/common.hpp"

namespace datanas::estimators {

using search::Granularity;
using search::Normalize;

enum class Kind { kSoftmax, kSoftGumbel, kHardGumbel, kEgs };

/// The groups of a cell's alpha [E, K] (edges in node order, node i having first_inputs + i
/// edges): per edge, group e is row e; per node, group i is the contiguous block of node i's rows.
/// first_inputs is 2 in the DARTS CNN cell (two cell inputs) and 1 in the recurrent cell (node i
/// reads states 0 .. i, ALGORITHMS.md §4).
struct GroupLayout {
  int nodes = 4;
  int ops = 8;  // K
  Granularity granularity = Granularity::kNode;
  int first_inputs = 2;

  /// sum over i < nodes of (first_inputs + i)
  [[nodiscard]] int edges() const { return nodes * first_inputs + nodes * (nodes - 1) / 2; }
  [[nodiscard]] int count() const { return granularity == Granularity::kEdge ? edges() : nodes; }
  /// First flat index and length of group g.
  [[nodiscard]] std::pair<index_t, index_t> group(int g) const {
    if (granularity == Granularity::kEdge) return {index_t(g) * ops, ops};
    const index_t first_edge = index_t(g) * first_inputs + index_t(g) * (g - 1) / 2;
    return {first_edge * ops, index_t(first_inputs + g) * ops};
  }
};

/// Forward-time settings of an estimator.
struct EstimatorConfig {
  double tau = 1.0;                         ///< Gumbel-softmax temperature (gradient only for hard estimators)
  Normalize normalize = Normalize::kSoftmax;
};

namespace detail {

/// log p of one group into lp (for relu normalisation, -inf where p = 0; uniform if all <= 0).
template <class T>
void log_probs(const T* a, index_t n, Normalize norm, T* lp) {
  if (norm == Normalize::kSoftmax) {
    T m = a[0];
    for (index_t k = 1; k < n; ++k) m = std::max(m, a[k]);
    T s = 0;
    for (index_t k = 0; k < n; ++k) s += exp_once(a[k] - m);
    const T lse = m + log_once(s);
    for (index_t k = 0; k < n; ++k) lp[k] = a[k] - lse;
    return;
  }
  T r = 0;
  for (index_t k = 0; k < n; ++k) r += std::max(a[k], T(0));
  for (index_t k = 0; k < n; ++k)
    lp[k] = r > 0 ? (a[k] > 0 ? log_once(a[k] / r) : -std::numeric_limits<T>::infinity())
                  : -log_once(T(n));
}

/// y = softmax((lp + g) / tau) for one draw; returns the argmax (first on ties).
template <class T>
index_t gumbel_softmax(const T* lp, index_t n, double tau, const PhiloxGenerator& gen,
                       std::uint64_t base, std::uint64_t first, T* y) {
  index_t best = 0;
  T mx = -std::numeric_limits<T>::infinity();
  for (index_t k = 0; k < n; ++k) {
    const T s = (lp[k] + T(gumbel_from_bits(gen.bits_at(base, first + std::uint64_t(k))))) / T(tau);
    y[k] = s;
    if (s > mx) {
      mx = s;
      best = k;
    }
  }
  T sum = 0;
  for (index_t k = 0; k < n; ++k) sum += (y[k] = exp_once(y[k] - mx));
  for (index_t k = 0; k < n; ++k) y[k] /= sum;
  return best;
}

}  // namespace detail

/// The mixing weights w [E * K] of one cell type from its alpha [E, K] (see the file comment).
/// Draws M * E * K Gumbel numbers from `gen` for the stochastic kinds (one counter range per
/// call), none for Softmax. M is used by kEgs only.
///
/// On Cuda the fused estimator kernels (kernels/datanas/cuda/estimators.cuh) compute the same
/// weights and save the same buffer; the generator stays on the host and the call reserves the
/// same counter range from it as on the Cpu, so both devices draw the same architectures from the
/// same generator state (also in a captured step, where the range is reserved at each replay).
/// The kernels also need every group to have at most 512 logits.
template <class T, class D>
Var<T, D> mixing_weights(Kind kind, int M, const Var<T, D>& alpha, const GroupLayout& layout,
                         const EstimatorConfig& cfg, PhiloxGenerator& gen) {
  const index_t total = index_t(layout.edges()) * layout.ops;
  DATANAS_CHECK(alpha.shape() == Shape({layout.edges(), layout.ops}), "estimator: alpha has shape ",
                alpha.shape().str(), ", the cell needs [", layout.edges(), ", ", layout.ops, "]");
  DATANAS_CHECK(cfg.tau > 0, "estimator: temperature must be > 0, got ", cfg.tau);
  DATANAS_CHECK(kind != Kind::kEgs || (M >= 1 && M <= 64), "EGS: M must be in [1, 64], got ", M);
  const int draws = kind == Kind::kSoftmax ? 0 : kind == Kind::kEgs ? M : 1;
  if constexpr (!is_cpu<D>) {
    // Checked before the noise is reserved, so a call the kernels refuse consumes no counters.
    auto params = DeviceOps<D>::estimator_params(int(kind), draws, layout.nodes, layout.ops,
                                                 layout.first_inputs,
                                                 layout.granularity == Granularity::kEdge,
                                                 cfg.normalize == Normalize::kRelu, cfg.tau);
    // gen.reserve(draws * E * K), nothing for Softmax: as below. Inside a captured step
    // (StepGraph) the reservation runs before each replay and the kernel reads its base from the
    // device, so every replay draws the noise the same eager step would have (gen must then
    // outlive the graph).
    if (draws) {
      const std::uint64_t n = std::uint64_t(draws) * std::uint64_t(total);
      params.seed = gen.seed();
      params.base_device =
          DeviceOps<D>::step_values(&params.base, 1, [&gen, n](std::uint64_t* base) { *base = gen.reserve(n); });
    }
    // The CPU's buffer: log p | y_m | route | sum(b) per group.
    Tensor<T, D> saved = Tensor<T, D>::empty({total * (draws + 2) + layout.count()});
    Var<T, D> w(Tensor<T, D>::empty({total}));
    DeviceOps<D>::estimator_forward(params, alpha.value(), w.value(), saved);
    if (needs_grad(alpha))
      record(w, [alpha, w, saved, params] {
        auto [ga, acc] = alpha.grad_slot();
        DeviceOps<D>::estimator_backward(params, alpha.value(), w.value(), saved, w.out_grad(), ga, acc);
      });
    return w;
  } else {
    // Saved for backward, in one buffer: log p (total) | soft samples y_m (draws * total) |
    // route (total; the draw each coordinate's gradient goes to, stored as T) | sum(b) per group.
    Tensor<T> saved = Tensor<T>::empty({total * (draws + 2) + layout.count()});
    T* lp = saved.data();
    T* ys = lp + total;
    T* route = ys + total * draws;
    T* sums = route + total;
    const std::uint64_t base = draws ? gen.reserve(std::uint64_t(draws) * std::uint64_t(total)) : 0;
    Var<T> w(Tensor<T>::empty({total}));
    T* wp = w.value().data();
    const T* ap = alpha.value().data();
    for (int g = 0; g < layout.count(); ++g) {
      const auto [o, n] = layout.group(g);
      detail::log_probs(ap + o, n, cfg.normalize, lp + o);
      switch (kind) {
        case Kind::kSoftmax:
          for (index_t k = 0; k < n; ++k) wp[o + k] = exp_once(lp[o + k]);
          break;
        case Kind::kSoftGumbel:
          detail::gumbel_softmax(lp + o, n, cfg.tau, gen, base, std::uint64_t(o), ys + o);
          for (index_t k = 0; k < n; ++k) wp[o + k] = ys[o + k];
          break;
        case Kind::kHardGumbel:
        case Kind::kEgs: {
          for (index_t k = 0; k < n; ++k) {
            wp[o + k] = 0;
            route[o + k] = 0;
          }
          for (int m = 0; m < draws; ++m) {
            const index_t h = detail::gumbel_softmax(lp + o, n, cfg.tau, gen, base,
                                                     std::uint64_t(m) * std::uint64_t(total) + std::uint64_t(o),
                                                     ys + index_t(m) * total + o);
            if (wp[o + h] == 0) {  // first draw to select h owns its gradient
              wp[o + h] = 1;
              route[o + h] = T(m);
            }
          }
          T s = 0;
          for (index_t k = 0; k < n; ++k) s += wp[o + k];
          sums[g] = s;
          for (index_t k = 0; k < n; ++k) wp[o + k] /= s;
          break;
        }
      }
    }
    if (needs_grad(alpha)) {
      const double tau = cfg.tau;
      const Normalize norm = cfg.normalize;
      record(w, [alpha, w, saved, layout, kind, draws, tau, norm, total] {
        const T* gw = w.out_grad().data();
        const T* lp = saved.data();
        const T* ys = lp + total;
        const T* route = ys + total * draws;
        const T* sums = route + total;
        const T* wv = w.value().data();
        const T* ap = alpha.value().data();
        auto [ga, acc] = alpha.grad_slot();
        T* gap = ga.data();
        for (int g = 0; g < layout.count(); ++g) {
          const auto group = layout.group(g);  // not bound as [o, n]: the lambdas below use
          const index_t o = group.first, n = group.second;  // them (clang < 16, see GradSlot)
          T gl[512];  // dL/dlog p of this group; groups are at most 5 edges x K ops
          DATANAS_CHECK(n <= 512, "estimator: group of ", n, " logits exceeds 512");
          for (index_t k = 0; k < n; ++k) gl[k] = 0;
          // dL/dy_m -> dL/dlog p through y_m = softmax((log p + g_m) / tau).
          auto through_softmax = [&](const T* y, auto dy_of) {
            T dot = 0;
            for (index_t k = 0; k < n; ++k) dot += dy_of(k) * y[k];
            for (index_t k = 0; k < n; ++k) gl[k] += y[k] * (dy_of(k) - dot) / T(tau);
          };
          switch (kind) {
            case Kind::kSoftmax:
              for (index_t k = 0; k < n; ++k) gl[k] = gw[o + k] * exp_once(lp[o + k]);
              break;
            case Kind::kSoftGumbel:
            case Kind::kHardGumbel:
              through_softmax(ys + o, [&](index_t k) { return gw[o + k]; });
              break;
            case Kind::kEgs: {
              // w = b / S: dL/db_k = gw_k / S - <gw, b> / S^2 (b_k = w_k * S).
              const T s = sums[g];
              T gb_dot = 0;
              for (index_t k = 0; k < n; ++k) gb_dot += gw[o + k] * wv[o + k] * s;
              for (int m = 0; m < draws; ++m)
                through_softmax(ys + index_t(m) * total + o, [&](index_t k) {
                  return route[o + k] == T(m) ? gw[o + k] / s - gb_dot / (s * s) : T(0);
                });
              break;
            }
          }
          // dL/dlog p -> dL/dalpha.
          if (norm == Normalize::kSoftmax) {
            T sg = 0;
            for (index_t k = 0; k < n; ++k) sg += gl[k];
            for (index_t k = 0; k < n; ++k) {
              const T d = gl[k] - exp_once(lp[o + k]) * sg;
              gap[o + k] = acc ? gap[o + k] + d : d;
            }
          } else {
            T r = 0, sg = 0;
            for (index_t k = 0; k < n; ++k)
              if (ap[o + k] > 0) {
                r += ap[o + k];
                sg += gl[k];
              }
            for (index_t k = 0; k < n; ++k) {
              const T d = (r > 0 && ap[o + k] > 0) ? gl[k] / ap[o + k] - sg / r : T(0);
              gap[o + k] = acc ? gap[o + k] + d : d;
            }
          }
        }
      });
    }
    return w;
  }
}

/// The normalised probabilities p [E * K] (softmax or relu per group), differentiable.
template <class T, class D>
Var<T, D> group_probabilities(const Var<T, D>& alpha, const GroupLayout& layout, Normalize normalize,
                              PhiloxGenerator& gen) {
  return mixing_weights(Kind::kSoftmax, 1, alpha, layout, {1.0, normalize}, gen);
}

/// coeff * sum_k |p_k - code_k| with the gradient through p only (the optional L1 term of the
/// DATA code, pulling the probabilities towards the sampled code). Returns shape [1]. On Cuda
/// the sum is a deterministic reduction (in double) and code is a device tensor.
template <class T, class D>
Var<T, D> l1_to_code(const Var<T, D>& p, const Tensor<T, D>& code, T coeff) {
  DATANAS_CHECK(p.value().numel() == code.numel(), "l1_to_code: ", p.value().numel(),
                " probabilities but a code of ", code.numel());
  if constexpr (!is_cpu<D>) {
    Var<T, D> y(Tensor<T, D>::empty({1}));
    DeviceOps<D>::l1_distance(p.value(), code, coeff, y.value());
    if (needs_grad(p))
      record(y, [p, code, y, coeff] {
        auto [g, acc] = p.grad_slot();
        DeviceOps<D>::l1_distance_backward(p.value(), code, y.out_grad(), coeff, g, acc);
      });
    return y;
  } else {
    Var<T> y(Tensor<T>::empty({1}));
    y.value()[0] = coeff * (p.value().eigen() - code.eigen()).abs().sum();
    if (needs_grad(p))
      record(y, [p, code, y, coeff] {
        auto [g, acc] = p.grad_slot();
        const T d = y.out_grad()[0] * coeff;
        auto diff = p.value().eigen() - code.eigen();
        cpu::store(g.eigen(), d * ((diff > T(0)).template cast<T>() - (diff < T(0)).template cast<T>()), acc);
      });
    return y;
  }
}

// ---- policies ---------------------------------------------------------------------------------

/// DARTS: w = softmax(alpha); every op runs.
struct Softmax {
  static constexpr std::string_view kName = "softmax";
  static constexpr Kind kKind = Kind::kSoftmax;
  static constexpr int kM = 1;
  static constexpr bool kHard = false;
};
/// SNAS: a soft Gumbel-softmax sample; every op runs.
struct SoftGumbel {
  static constexpr std::string_view kName = "snas";
  static constexpr Kind kKind = Kind::kSoftGumbel;
  static constexpr int kM = 1;
  static constexpr bool kHard = false;
};
/// GDAS: a straight-through one-hot sample; only the selected op needs to run.
struct HardGumbel {
  static constexpr std::string_view kName = "gdas";
  static constexpr Kind kKind = Kind::kHardGumbel;
  static constexpr int kM = 1;
  static constexpr bool kHard = true;
};
/// DATA: the OR of M straight-through one-hot samples, normalised; at most M ops per group.
template <int M>
struct EGS {
  static_assert(M >= 1 && M <= 64, "EGS<M>: M must be in [1, 64]");
  static constexpr std::string_view kName = "egs";
  static constexpr Kind kKind = Kind::kEgs;
  static constexpr int kM = M;
  static constexpr bool kHard = true;
};

/// What a user-defined estimator policy must provide.
template <class E>
concept EstimatorPolicy = requires {
  { E::kName } -> std::convertible_to<std::string_view>;
  { E::kKind } -> std::convertible_to<Kind>;
  { E::kM } -> std::convertible_to<int>;
  { E::kHard } -> std::convertible_to<bool>;
};

template <EstimatorPolicy E, class T, class D>
Var<T, D> weights(const Var<T, D>& alpha, const GroupLayout& layout, const EstimatorConfig& cfg,
                  PhiloxGenerator& gen) {
  return mixing_weights(E::kKind, E::kM, alpha, layout, cfg, gen);
}

// ---- temperature schedules (ALGORITHMS.md §2) -------------------------------------------------

/// tau_e = start - (start - end) * e / (E - 1), e = 0 .. E - 1 (GDAS' linear rule; E = 1: start).
struct TemperatureSchedule {
  double start = 1.0, end = 1.0;
  [[nodiscard]] double at(long epoch, long epochs) const {
    if (epochs <= 1) return start;
    return start - (start - end) * double(epoch) / double(epochs - 1);
  }
};
/// The published schedules: SNAS 1 -> 0.03, GDAS 10 -> 0.1, DATA 5 -> 1; Softmax ignores tau.
inline TemperatureSchedule default_schedule(Kind kind) {
  switch (kind) {
    case Kind::kSoftGumbel: return {1.0, 0.03};
    case Kind::kHardGumbel: return {10.0, 0.1};
    case Kind::kEgs: return {5.0, 1.0};
    default: return {1.0, 1.0};
  }
}

/// The one runtime-to-compile-time switch of the sample programs: calls
/// f.template operator()<Estimator, Granularity>() for `name` in {softmax, snas, gdas, egs}
/// (egs with ensemble size M in 1..8) and granularity "edge" or "node". Each combination is
/// an instantiation of f, so callers keep what f instantiates small.
template <class F>
int with_estimator(std::string_view name, long M, std::string_view granularity, F&& f) {
  auto by_granularity = [&]<class E>() -> int {
    if (granularity == "edge") return f.template operator()<E, Granularity::kEdge>();
    DATANAS_CHECK(granularity == "node", "granularity must be edge or node, got '", granularity, "'");
    return f.template operator()<E, Granularity::kNode>();
  };
  if (name == "softmax") return by_granularity.template operator()<Softmax>();
  if (name == "snas") return by_granularity.template operator()<SoftGumbel>();
  if (name == "gdas") return by_granularity.template operator()<HardGumbel>();
  DATANAS_CHECK(name == "egs", "unknown estimator '", name, "' (softmax, snas, gdas, egs)");
  switch (M) {
    case 1: return by_granularity.template operator()<EGS<1>>();
    case 2: return by_granularity.template operator()<EGS<2>>();
    case 3: return by_granularity.template operator()<EGS<3>>();
    case 4: return by_granularity.template operator()<EGS<4>>();
    case 5: return by_granularity.template operator()<EGS<5>>();
    case 6: return by_granularity.template operator()<EGS<6>>();
    case 7: return by_granularity.template operator()<EGS<7>>();
    case 8: return by_granularity.template operator()<EGS<8>>();
  }
  throw error(datanas::detail::concat("--M: ", M, " is not supported (1 to 8)"));
}

}  // namespace datanas::estimators
