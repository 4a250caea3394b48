// datanas/ops/recurrent.hpp - the ops of the DARTS recurrent cell (ALGORITHMS.md §4) and of the
// language model around it: the fused highway update s + sigmoid(c) * (f(h) - s) and its mixed
// (search) form, time-shared dropout masks, row scaling (embedding dropout), column
// concatenation, row stacking (time steps -> one decoder batch) and slicing (one embedded
// window -> time steps), a shape view and the temporal activation penalty of AWD-LSTM.
//
// Every op here takes rank-2 row-major tensors [rows, cols]; rows are batch elements (or
// time-major (t, b) pairs), which is how the recurrent model lays out its activations.
//
// Every op is a template on <T, D>: the CPU kernels below on Cpu, DeviceOps<D> (the Cuda
// kernels of ops/cuda/recurrent.hpp) otherwise. Masks and scales are Tensor<T, D> of the same
// device. Dropout masks (bernoulli_mask) use the same Philox words on every device.
#pragma once

#include <algorithm>
#include <array>
#include <cmath>
#include <span>
#include <tuple>
#include <type_traits>

#include "datanas/autograd/variable.hpp"
#include "datanas/core/random.hpp"
#include "datanas/ops/cpu/common.hpp"

namespace datanas {

/// Activations of the recurrent op set, in the DARTS PRIMITIVES order. kNone is the zero op: its
/// term of a mixed node is nothing at all (DARTS skips it), not s_prev.
enum class RecurrentActivation { kNone, kTanh, kRelu, kSigmoid, kIdentity };

namespace cpu {

/// out (=|+=) w * f(h) over one row segment.
template <class T, class Out>
void weighted_activation(RecurrentActivation a, T w, const ConstArrayMap<T>& h, Out&& out, bool accumulate) {
  switch (a) {
    case RecurrentActivation::kNone: if (!accumulate) out.setZero(); break;
    case RecurrentActivation::kTanh: store(out, w * h.tanh(), accumulate); break;
    case RecurrentActivation::kRelu: store(out, w * h.max(T(0)), accumulate); break;
    case RecurrentActivation::kSigmoid: store(out, w / (T(1) + (-h).exp()), accumulate); break;
    case RecurrentActivation::kIdentity: store(out, w * h, accumulate); break;
  }
}

/// out (=|+=) w * f'(h), given fh = f(h) (tanh' = 1 - tanh^2 and sigmoid' = s (1 - s) come from
/// the value, without a second exp). relu' is 0 at exactly 0 (PyTorch's convention).
template <class T, class Out>
void weighted_derivative(RecurrentActivation a, T w, const ConstArrayMap<T>& h,
                         const ConstArrayMap<T>& fh, Out&& out, bool accumulate) {
  switch (a) {
    case RecurrentActivation::kNone: if (!accumulate) out.setZero(); break;
    case RecurrentActivation::kTanh:
      store(out, w * (T(1) - fh.square()), accumulate);
      break;
    case RecurrentActivation::kRelu: store(out, w * (h > T(0)).template cast<T>(), accumulate); break;
    case RecurrentActivation::kSigmoid:
      store(out, w * fh * (T(1) - fh), accumulate);
      break;
    case RecurrentActivation::kIdentity:
      if (accumulate) out += w; else out.setConstant(w);
      break;
  }
}

}  // namespace cpu

namespace detail {

/// One activation each, in static storage: highway() hands a span of one of them to the kernel,
/// whose backward closure keeps the span (16 bytes) instead of a copy of the op list.
inline constexpr std::array<RecurrentActivation, 5> kSingleActivations = {
    RecurrentActivation::kNone, RecurrentActivation::kTanh, RecurrentActivation::kRelu,
    RecurrentActivation::kSigmoid, RecurrentActivation::kIdentity};

/// The terms of one highway kernel call: weights, which terms run, and their weight sum.
template <class T>
struct HighwayTerms {
  static constexpr int kMax = 16;
  std::array<T, kMax> w{};
  std::array<bool, kMax> on{};
  T wsum = 0;

  HighwayTerms(const Var<T>& weights, index_t offset, std::span<const RecurrentActivation> acts,
               bool skip_zero_weights) {
    for (std::size_t k = 0; k < acts.size(); ++k) {
      w[k] = weights.defined() ? weights.value()[offset + index_t(k)] : T(1);
      on[k] = acts[k] != RecurrentActivation::kNone && !(skip_zero_weights && w[k] == T(0));
      if (on[k]) wsum += w[k];
    }
  }
};

/// The highway kernel shared by highway() and highway_mix(): for the terms k with weight w_k
///   y = sum_k w_k [s + sig(c) (f_k(h) - s)] = W (1 - sig(c)) s + sig(c) sum_k w_k f_k(h),
/// W = sum of the weights of non-none terms; ch = [c | h] row-wise. `skip_zero_weights`: terms
/// with w_k == 0 are not computed and get a zero weight gradient (the sparse mode of hard
/// estimators); otherwise every non-none term is computed, as DARTS' dense cell does.
/// `w`: a rank-1 Var of weights read at [offset, offset + acts.size()); undefined means all 1
/// (no weight gradient). `acts` must outlive the backward pass (static storage).
template <class T, class D>
Var<T, D> highway_impl(const Var<T, D>& s, const Var<T, D>& ch, const Var<T, D>& w, index_t offset,
                       std::span<const RecurrentActivation> acts, bool skip_zero_weights, const char* op) {
  DATANAS_CHECK(s.shape().rank() == 2, op, ": state must be [B, H], got ", s.shape().str());
  const index_t rows = s.shape()[0], hid = s.shape()[1];
  DATANAS_CHECK(ch.shape() == Shape({rows, 2 * hid}), op, ": gates must be [", rows, ", ", 2 * hid,
                "] ([c | h] for state ", s.shape().str(), "), got ", ch.shape().str());
  DATANAS_CHECK(s.value().defined() && ch.value().defined(), op, ": inputs must have storage");
  const int k_ops = int(acts.size());
  DATANAS_CHECK(k_ops >= 1 && k_ops <= HighwayTerms<T>::kMax, op, ": 1 to ", HighwayTerms<T>::kMax,
                " activations, got ", k_ops);
  if (w.defined())
    DATANAS_CHECK(w.shape().rank() == 1 && offset >= 0 && offset + k_ops <= w.shape()[0], op,
                  ": weights ", w.shape().str(), " have no entries [", offset, ", ", offset + k_ops, ")");
  if constexpr (!is_cpu<D>) {
    // The weights stay on the device: the kernels read them and decide there which terms run.
    Var<T, D> y(Tensor<T, D>::empty(s.shape()));
    const Tensor<T, D> none;
    DeviceOps<D>::highway_forward(acts, skip_zero_weights, s.value(), ch.value(),
                                  w.defined() ? w.value() : none, offset, y.value());
    if (needs_grad(s, ch, w)) {
      record(y, [s, ch, w, y = GradRef(y), offset, acts, skip_zero_weights] {
        Tensor<T, D> gs, gch, gw;
        bool acc_s = false, acc_ch = false, acc_w = false;
        if (s.requires_grad()) {
          auto slot = s.grad_slot();
          gs = slot.g, acc_s = slot.accumulate;
        }
        if (ch.requires_grad()) {
          auto slot = ch.grad_slot();
          gch = slot.g, acc_ch = slot.accumulate;
        }
        if (w.defined() && w.requires_grad()) {
          auto slot = w.grad_slot();
          gw = slot.g, acc_w = slot.accumulate;
        }
        const Tensor<T, D> none;
        DeviceOps<D>::highway_backward(acts, skip_zero_weights, s.value(), ch.value(),
                                       w.defined() ? w.value() : none, offset, y.out_grad(), gs, acc_s,
                                       gch, acc_ch, gw, acc_w);
      });
    }
    return y;
  } else {
    const HighwayTerms<T> t(w, offset, acts, skip_zero_weights);
    Var<T> y(Tensor<T>::empty(s.shape()));
    const T *sp = s.value().data(), *cp = ch.value().data();
    T* yp = y.value().data();
    // sig(c) goes through a row of scratch: as an Eigen expression it is evaluated, exp and
    // all, at every use (twice here, up to 13 times per element in the backward below).
    cpu::parallel_range_scratch<T>(
        rows, hid * (k_ops + 2), hid, [&](index_t r0, index_t r1, T* scratch) {
          cpu::ArrayMap<T> sig(scratch, hid);
          for (index_t r = r0; r < r1; ++r) {
            const T* c = cp + r * 2 * hid;
            cpu::ConstArrayMap<T> cv(c, hid), hv(c + hid, hid), sv(sp + r * hid, hid);
            cpu::ArrayMap<T> yv(yp + r * hid, hid);
            bool first = true;
            for (int k = 0; k < k_ops; ++k)
              if (t.on[std::size_t(k)]) {
                cpu::weighted_activation(acts[std::size_t(k)], t.w[std::size_t(k)], hv, yv, !first);
                first = false;
              }
            if (first) yv.setZero();
            sig = T(1) / (T(1) + (-cv).exp());
            yv = t.wsum * (T(1) - sig) * sv + sig * yv;
          }
        });
    if (needs_grad(s, ch, w)) {
      record(y, [s, ch, w, y = GradRef(y), offset, acts, skip_zero_weights] {
        const HighwayTerms<T> t(w, offset, acts, skip_zero_weights);
        const index_t rows = s.shape()[0], hid = s.shape()[1];
        const int k_ops = int(acts.size());
        const T* dy = y.out_grad().data();
        const T *sp = s.value().data(), *cp = ch.value().data();
        // Per-row partial dL/dw_k, summed in row order afterwards (deterministic whatever the
        // thread count).
        const bool want_w = w.defined() && w.requires_grad();
        Tensor<T> wpart = want_w ? Tensor<T>::empty({rows, k_ops}) : Tensor<T>();
        Tensor<T> gs, gch;
        bool acc_s = false, acc_ch = false;
        if (s.requires_grad()) {
          auto slot = s.grad_slot();
          gs = slot.g, acc_s = slot.accumulate;
        }
        if (ch.requires_grad()) {
          auto slot = ch.grad_slot();
          gch = slot.g, acc_ch = slot.accumulate;
        }
        // Per row, in four rows of scratch: sig(c) and each term's f_k(h), computed once (the
        // derivatives come from the values, and dL/dw_k reuses f_k(h)), and the row's
        // sum_k w_k f_k(h) and sum_k w_k f_k'(h).
        cpu::parallel_range_scratch<T>(
            rows, hid * (2 * k_ops + 4), 4 * hid, [&](index_t r0, index_t r1, T* scratch) {
              cpu::ArrayMap<T> sig(scratch, hid), fk(scratch + hid, hid),
                  fv(scratch + 2 * hid, hid), dv(scratch + 3 * hid, hid);
              const cpu::ConstArrayMap<T> fkc(scratch + hid, hid);
              for (index_t r = r0; r < r1; ++r) {
                const T* c = cp + r * 2 * hid;
                cpu::ConstArrayMap<T> cv(c, hid), hv(c + hid, hid), sv(sp + r * hid, hid),
                    g(dy + r * hid, hid);
                sig = T(1) / (T(1) + (-cv).exp());
                T* wrow = want_w ? wpart.data() + r * k_ops : nullptr;
                bool first = true;
                for (int k = 0; k < k_ops; ++k) {
                  if (!t.on[std::size_t(k)]) {
                    if (wrow) wrow[k] = T(0);
                    continue;
                  }
                  const RecurrentActivation a = acts[std::size_t(k)];
                  cpu::weighted_activation(a, T(1), hv, fk, false);
                  const T wk = t.w[std::size_t(k)];
                  cpu::store(fv, wk * fkc, !first);
                  cpu::weighted_derivative(a, wk, hv, fkc, dv, !first);
                  // dL/dw_k = sum dy (s + sig (f_k(h) - s)) = sum dy s (1 - sig) + sum dy sig
                  // f_k(h); the first sum is added below.
                  if (wrow) wrow[k] = (g * sig * fkc).sum();
                  first = false;
                }
                if (first) {
                  fv.setZero();
                  dv.setZero();
                }
                if (gs.defined())
                  cpu::store(cpu::ArrayMap<T>(gs.data() + r * hid, hid), g * t.wsum * (T(1) - sig),
                             acc_s);
                if (gch.defined()) {
                  cpu::store(cpu::ArrayMap<T>(gch.data() + r * 2 * hid, hid),
                             g * (fv - t.wsum * sv) * sig * (T(1) - sig), acc_ch);
                  cpu::store(cpu::ArrayMap<T>(gch.data() + r * 2 * hid + hid, hid), g * sig * dv,
                             acc_ch);
                }
                if (wrow) {
                  const T base = (g * sv * (T(1) - sig)).sum();
                  for (int k = 0; k < k_ops; ++k)
                    if (t.on[std::size_t(k)]) wrow[k] = base + wrow[k];
                }
              }
            });
        if (want_w) {
          auto [gw, acc] = w.grad_slot();
          if (!acc) gw.fill(T(0));
          for (index_t r = 0; r < rows; ++r)
            for (int k = 0; k < k_ops; ++k) gw[offset + k] += wpart[r * k_ops + k];
        }
      });
    }
    return y;
  }
}

}  // namespace detail

/// One recurrent node (ALGORITHMS.md §4): y = s + sigmoid(c) * (f(h) - s), where [c | h] = ch
/// row-wise. s: [B, H]; ch: [B, 2H] (= s_prev W_i, or [x ; h_prev] W0 for node 0 with f = tanh).
/// f = none gives y = 0 with zero gradients.
template <class T, class D>
Var<T, D> highway(const Var<T, D>& s, const Var<T, D>& ch, RecurrentActivation f) {
  const std::span<const RecurrentActivation> acts(&detail::kSingleActivations[std::size_t(f)], 1);
  return detail::highway_impl(s, ch, Var<T, D>(), 0, acts, false, "highway");
}

/// The mixed node term of the search cell for one predecessor s_j:
///   y = sum_k w[offset + k] * [s + sigmoid(c) * (f_k(h) - s)]  over the non-none activations,
/// the none column contributing nothing (DARTS' DARTSCellSearch). w: the estimator's flat weights
/// (rank 1); dL/dw[offset + k] = <dy, term_k> (0 for none). `sparse`: terms with weight 0 are
/// neither computed nor differentiated (hard estimators' speed mode). `acts` must stay alive until
/// backward (an op set's static name table).
template <class T, class D>
Var<T, D> highway_mix(const Var<T, D>& s, const Var<T, D>& ch, const Var<T, D>& w, index_t offset,
                      std::span<const RecurrentActivation> acts, bool sparse = false) {
  DATANAS_CHECK(w.defined(), "highway_mix: the weights are undefined");
  return detail::highway_impl(s, ch, w, offset, acts, sparse, "highway_mix");
}

/// y[i] = x[i] * m[i mod m.numel()]: a constant mask repeated over the leading rows. With x
/// [T*B, D] and m [B, D] this is AWD-LSTM's locked (variational, time-shared) dropout; with m of
/// x's size, a plain element-wise mask. Only x gets a gradient (dy * m).
template <class T, class D>
Var<T, D> mul_mask(const Var<T, D>& x, const Tensor<T, D>& m) {
  const index_t n = x.value().numel(), p = m.numel();
  DATANAS_CHECK(p >= 1 && n % p == 0, "mul_mask: a mask of ", m.shape().str(), " does not tile x ",
                x.shape().str());
  Var<T, D> y(Tensor<T, D>::empty(x.shape()));
  if constexpr (is_cpu<D>) {
    const T *xp = x.value().data(), *mp = m.data();
    T* yp = y.value().data();
    cpu::parallel_for(n / p, p, [&](index_t r) {
      cpu::ArrayMap<T>(yp + r * p, p) = cpu::ConstArrayMap<T>(xp + r * p, p) * cpu::ConstArrayMap<T>(mp, p);
    });
  } else {
    DeviceOps<D>::mul_mask_forward(x.value(), m, y.value());
  }
  if (needs_grad(x))
    record(y, [x = GradRef(x), y = GradRef(y), m] {
      auto slot = x.grad_slot();  // plain variables, not [g, acc]: see GradSlot
      auto& g = slot.g;
      const bool acc = slot.accumulate;
      if constexpr (is_cpu<D>) {
        const index_t n = g.numel(), p = m.numel();
        const T *dy = y.out_grad().data(), *mp = m.data();
        T* gp = g.data();
        cpu::parallel_for(n / p, p, [&](index_t r) {
          cpu::store(cpu::ArrayMap<T>(gp + r * p, p),
                     cpu::ConstArrayMap<T>(dy + r * p, p) * cpu::ConstArrayMap<T>(mp, p), acc);
        });
      } else {
        DeviceOps<D>::mul_mask_backward(y.out_grad(), m, g, acc);
      }
    });
  return y;
}

/// y[r, :] = scale[r] * x[r, :] for x [R, C] and a constant scale [R] (embedding dropout: the
/// scale of a token's whole embedding row). Only x gets a gradient.
template <class T, class D>
Var<T, D> scale_rows(const Var<T, D>& x, const Tensor<T, D>& scale) {
  DATANAS_CHECK(x.shape().rank() == 2 && scale.shape() == Shape{x.shape()[0]}, "scale_rows: x ",
                x.shape().str(), " needs a scale of [", x.shape().rank() == 2 ? x.shape()[0] : 0,
                "], got ", scale.shape().str());
  const index_t rows = x.shape()[0], cols = x.shape()[1];
  Var<T, D> y(Tensor<T, D>::empty(x.shape()));
  if constexpr (is_cpu<D>) {
    const T *xp = x.value().data(), *sp = scale.data();
    T* yp = y.value().data();
    cpu::parallel_for(rows, cols, [&](index_t r) {
      cpu::ArrayMap<T>(yp + r * cols, cols) = sp[r] * cpu::ConstArrayMap<T>(xp + r * cols, cols);
    });
  } else {
    DeviceOps<D>::scale_rows_forward(x.value(), scale, y.value());
  }
  if (needs_grad(x))
    record(y, [x = GradRef(x), y = GradRef(y), scale] {
      auto slot = x.grad_slot();  // plain variables, not [g, acc]: see GradSlot
      auto& g = slot.g;
      const bool acc = slot.accumulate;
      if constexpr (is_cpu<D>) {
        const index_t rows = g.shape()[0], cols = g.shape()[1];
        const T *dy = y.out_grad().data(), *sp = scale.data();
        cpu::parallel_for(rows, cols, [&](index_t r) {
          cpu::store(cpu::ArrayMap<T>(g.data() + r * cols, cols),
                     sp[r] * cpu::ConstArrayMap<T>(dy + r * cols, cols), acc);
        });
      } else {
        DeviceOps<D>::scale_rows_backward(y.out_grad(), scale, g, acc);
      }
    });
  return y;
}

/// The state of a search-cell node whose sampled ops may all be `none` (ALGORITHMS.md §4 with a
/// hard or sparse estimator):
///   y = x  if w[offset + e K + k] != 0 for some e < edges and some k < K with acts[k] != none,
///   y = 0  otherwise (the zero state: x gets gradient 0),
/// K = acts.size(). w is the search cell's flat weights [E * K] (rank 1, no gradient), holding the
/// node's `edges` predecessor groups one after the other from `offset`. Why not batch-normalise a
/// zero node: the batch norm of a constant is 0 forward, but its backward divides by sqrt(eps)
/// (about 300x the output gradient) and would hand the node's zero weights gradients where the
/// zero state gives them none. On a device the kernel reads w itself, so the host never waits
/// for the weights (a dense PTB search step stays free of host reads). x: any shape; y: x's
/// shape. `acts` must outlive backward (an op set's static table).
template <class T, class D>
Var<T, D> zero_if_all_none(const Var<T, D>& x, const Tensor<T, D>& w, index_t offset, index_t edges,
                           std::span<const RecurrentActivation> acts) {
  const index_t k_ops = index_t(acts.size());
  DATANAS_CHECK(k_ops >= 1 && k_ops <= detail::HighwayTerms<T>::kMax, "zero_if_all_none: 1 to ",
                detail::HighwayTerms<T>::kMax, " activations, got ", k_ops);
  DATANAS_CHECK(w.defined() && w.shape().rank() == 1, "zero_if_all_none: weights must be rank 1, got ",
                w.defined() ? w.shape().str() : std::string("undefined"));
  DATANAS_CHECK(edges >= 1 && offset >= 0 && offset + edges * k_ops <= w.shape()[0], "zero_if_all_none: weights ",
                w.shape().str(), " have no entries [", offset, ", ", offset + edges * k_ops, ") for ", edges,
                " predecessors of ", k_ops, " ops");
  DATANAS_CHECK(x.value().defined(), "zero_if_all_none: the state has no storage");
  Var<T, D> y(Tensor<T, D>::empty(x.shape()));
  bool keep = false;  // Cpu only: on a device the kernels decide
  if constexpr (is_cpu<D>) {
    for (index_t e = 0; e < edges; ++e)
      for (index_t k = 0; k < k_ops; ++k)
        keep = keep || (acts[std::size_t(k)] != RecurrentActivation::kNone && w[offset + e * k_ops + k] != T(0));
    if (keep)
      y.value().copy_from(x.value());
    else
      y.value().fill(T(0));
  } else {
    DeviceOps<D>::zero_if_all_none_forward(acts, edges, w, offset, x.value(), y.value());
  }
  if (!needs_grad(x)) return y;
  // Two closures, each holding only what its backend reads: the CPU decided `keep` above; a
  // device's kernel decides again from the weights.
  if constexpr (is_cpu<D>)
    record(y, [x = GradRef(x), y = GradRef(y), keep] {
      auto [g, acc] = x.grad_slot();
      if (keep)
        cpu::store(cpu::ArrayMap<T>(g.data(), g.numel()),
                   cpu::ConstArrayMap<T>(y.out_grad().data(), g.numel()), acc);
      else if (!acc)
        g.fill(T(0));
    });
  else
    record(y, [x = GradRef(x), y = GradRef(y), w, offset, edges, acts] {
      auto [g, acc] = x.grad_slot();
      DeviceOps<D>::zero_if_all_none_backward(acts, edges, w, offset, y.out_grad(), g, acc);
    });
  return y;
}

/// [a | b] column-wise: a [N, A], b [N, B] -> [N, A + B] (the [x_t ; h_{t-1}] of node 0).
template <class T, class D>
Var<T, D> concat_cols(const Var<T, D>& a, const Var<T, D>& b) {
  DATANAS_CHECK(a.shape().rank() == 2 && b.shape().rank() == 2 && a.shape()[0] == b.shape()[0],
                "concat_cols: cannot put ", a.shape().str(), " beside ", b.shape().str());
  const index_t n = a.shape()[0], ca = a.shape()[1], cb = b.shape()[1], c = ca + cb;
  Var<T, D> y(Tensor<T, D>::empty({n, c}));
  if constexpr (is_cpu<D>) {
    const T *ap = a.value().data(), *bp = b.value().data();
    T* yp = y.value().data();
    cpu::parallel_for(n, c, [&](index_t r) {
      std::copy_n(ap + r * ca, ca, yp + r * c);
      std::copy_n(bp + r * cb, cb, yp + r * c + ca);
    });
  } else {
    DeviceOps<D>::concat_cols_forward(a.value(), b.value(), y.value());
  }
  if (needs_grad(a, b))
    record(y, [a = GradRef(a), b = GradRef(b), y = GradRef(y), ca, cb] {
      const T* dy = y.out_grad().data();
      for (auto [in, off, w] : {std::tuple{&a, index_t(0), ca}, std::tuple{&b, ca, cb}}) {
        if (!in->requires_grad()) continue;
        auto [g, acc] = in->grad_slot();
        if constexpr (!is_cpu<D>) {
          DeviceOps<D>::concat_cols_backward(y.out_grad(), off, g, acc);
        } else {
          T* gp = g.data();
          const index_t n = g.shape()[0], c = ca + cb;
          cpu::parallel_for(n, w, [&, off = off, w = w, acc = acc](index_t r) {
            cpu::store(cpu::ArrayMap<T>(gp + r * w, w), cpu::ConstArrayMap<T>(dy + r * c + off, w), acc);
          });
        }
      }
    });
  return y;
}

/// Rows of xs[0], xs[1], ... one after the other: xs[i] [n_i, C] -> [sum n_i, C]. Stacks the
/// per-step outputs h_t [B, H] into [T*B, H] (row t*B + b), so the decoder runs once.
template <class T, class D = Cpu>
Var<T, D> stack_rows(std::type_identity_t<std::span<const Var<T, D>>> xs) {
  DATANAS_CHECK(!xs.empty(), "stack_rows: no inputs");
  DATANAS_CHECK(xs[0].shape().rank() == 2, "stack_rows: inputs must be [n, C], got ", xs[0].shape().str());
  const index_t cols = xs[0].shape()[1];
  index_t rows = 0;
  bool any = false;
  for (std::size_t i = 0; i < xs.size(); ++i) {
    DATANAS_CHECK(xs[i].shape().rank() == 2 && xs[i].shape()[1] == cols && xs[i].value().defined(),
                  "stack_rows: input ", i, " has shape ", xs[i].shape().str(), ", input 0 has ",
                  xs[0].shape().str());
    rows += xs[i].shape()[0];
    any = any || needs_grad(xs[i]);
  }
  Var<T, D> y(Tensor<T, D>::empty({rows, cols}));
  index_t off = 0;
  for (const auto& x : xs) {
    if constexpr (is_cpu<D>)
      std::copy_n(x.value().data(), x.value().numel(), y.value().data() + off);
    else
      DeviceOps<D>::stack_rows_forward(x.value(), y.value(), off);
    off += x.value().numel();
  }
  if (any) {
    const std::size_t pos = tape<T, D>().stash_refs(xs);
    const std::size_t count = xs.size();
    record(y, [pos, count, y = GradRef(y)] {
      const auto& tp = tape<T, D>();
      const T* dy = y.out_grad().data();
      index_t o = 0;
      for (std::size_t i = 0; i < count; ++i) {
        const GradRef<T, D>& x = tp.stashed_ref(pos + i);
        const index_t n = x.shape().numel();
        if (x.requires_grad()) {
          auto [g, acc] = x.grad_slot();
          if constexpr (is_cpu<D>)
            cpu::store(cpu::ArrayMap<T>(g.data(), n), cpu::ConstArrayMap<T>(dy + o, n), acc);
          else
            DeviceOps<D>::stack_rows_backward(y.out_grad(), o, g, acc);
        }
        o += n;
      }
    });
  }
  return y;
}

/// Rows [first, first + count) of x [R, C] -> [count, C]: stack_rows' inverse. The language
/// model embeds a whole window [T*B] at once (one copy of its ids to the device, one embedding,
/// dropout and mask op) and hands time step t its rows [tB, (t+1)B). Backward: the first
/// gradient writer into x zeroes x's other rows; later slices add their rows only, so T slices
/// cost O(R C) in all.
template <class T, class D>
Var<T, D> slice_rows(const Var<T, D>& x, index_t first, index_t count) {
  DATANAS_CHECK(x.shape().rank() == 2 && x.value().defined(), "slice_rows: x must be [rows, C], got ",
                x.shape().str());
  DATANAS_CHECK(first >= 0 && count >= 1 && first + count <= x.shape()[0], "slice_rows: rows [", first, ", ",
                first + count, ") are outside x ", x.shape().str());
  const index_t cols = x.shape()[1], off = first * cols, n = count * cols;
  Var<T, D> y(Tensor<T, D>::empty({count, cols}));
  if constexpr (is_cpu<D>)
    std::copy_n(x.value().data() + off, n, y.value().data());
  else
    DeviceOps<D>::slice_rows_forward(x.value(), off, y.value());
  if (needs_grad(x))
    record(y, [x = GradRef(x), y = GradRef(y), off] {
      auto [g, acc] = x.grad_slot();
      if (!acc) g.fill(T(0));
      const index_t n = y.out_grad().numel();
      if constexpr (is_cpu<D>)
        cpu::ArrayMap<T>(g.data() + off, n) += cpu::ConstArrayMap<T>(y.out_grad().data(), n);
      else
        DeviceOps<D>::slice_rows_backward(y.out_grad(), off, g);
    });
  return y;
}

/// The same values seen with another shape of the same size (storage shared); the gradient
/// flows back unchanged. Lets the [B, H] states use batch_norm2d as [B, H, 1, 1].
template <class T, class D>
Var<T, D> view(const Var<T, D>& x, const Shape& s) {
  DATANAS_CHECK(x.value().defined(), "view: x has no storage");
  Var<T, D> y(x.value().reshape(s));
  if (needs_grad(x))
    record(y, [x = GradRef(x), y = GradRef(y)] {
      auto [g, acc] = x.grad_slot();
      if constexpr (is_cpu<D>) {
        const index_t n = g.numel();
        cpu::store(cpu::ArrayMap<T>(g.data(), n), cpu::ConstArrayMap<T>(y.out_grad().data(), n), acc);
      } else {
        DeviceOps<D>::view_backward(y.out_grad(), g, acc);
      }
    });
  return y;
}

/// AWD-LSTM's temporal activation regularisation (slowness):
///   mean over t < T-1, b, j of (x[t+1, b, j] - x[t, b, j])^2
/// for x [T*B, H] with rows t*B + b (stacked RNN outputs) and `batch` = B. Needs T >= 2.
template <class T, class D>
Var<T, D> temporal_penalty(const Var<T, D>& x, index_t batch) {
  DATANAS_CHECK(x.shape().rank() == 2 && batch >= 1 && x.shape()[0] % batch == 0,
                "temporal_penalty: x ", x.shape().str(), " is not [T*B, H] for B = ", batch);
  const index_t steps = x.shape()[0] / batch, width = batch * x.shape()[1];
  DATANAS_CHECK(steps >= 2, "temporal_penalty: needs at least 2 time steps, got ", steps);
  const index_t count = (steps - 1) * width;
  if constexpr (!is_cpu<D>) {
    // Reduced on the device in a fixed order (no host read, no atomics).
    Var<T, D> y(Tensor<T, D>::empty({1}));
    DeviceOps<D>::temporal_penalty_forward(x.value(), steps, width, y.value());
    if (needs_grad(x))
      record(y, [x, y = GradRef(y), steps, width] {
        auto [g, accumulate] = x.grad_slot();
        DeviceOps<D>::temporal_penalty_backward(x.value(), steps, width, y.out_grad(), g, accumulate);
      });
    return y;
  } else {
    const T* xp = x.value().data();
    double acc = 0;
    for (index_t t = 0; t + 1 < steps; ++t)
      acc += double((cpu::ConstArrayMap<T>(xp + (t + 1) * width, width) -
                     cpu::ConstArrayMap<T>(xp + t * width, width))
                        .square()
                        .sum());
    Var<T> y(Tensor<T>::full({1}, T(acc / double(count))));
    if (needs_grad(x))
      record(y, [x, y = GradRef(y), steps, width, count] {
        auto [g, accumulate] = x.grad_slot();
        const T k = T(2) * y.out_grad()[0] / T(count);
        const T* xp = x.value().data();
        T* gp = g.data();
        // d/dx[t] = k (x[t] - x[t-1]) [t > 0] - k (x[t+1] - x[t]) [t < T-1]
        for (index_t t = 0; t < steps; ++t) {
          cpu::ArrayMap<T> gv(gp + t * width, width);
          cpu::ConstArrayMap<T> xt(xp + t * width, width);
          if (!accumulate) gv.setZero();
          if (t > 0) gv += k * (xt - cpu::ConstArrayMap<T>(xp + (t - 1) * width, width));
          if (t + 1 < steps) gv -= k * (cpu::ConstArrayMap<T>(xp + (t + 1) * width, width) - xt);
        }
      });
    return y;
  }
}

/// Fills m with Bernoulli(keep) / keep (a dropout mask that keeps the expectation), drawing
/// ceil(numel / 4) counters of `gen`. keep = 1 gives all ones. A device draws the same words on
/// the device (the same counters, the same values as the CPU); inside a captured step the
/// counters are reserved again before each replay (DeviceOps<D>::step_values).
template <class T, class D>
void bernoulli_mask(const Tensor<T, D>& m, double keep, PhiloxGenerator& gen) {
  DATANAS_CHECK(keep > 0 && keep <= 1, "dropout: keep probability must be in (0, 1], got ", keep);
  if (keep == 1.0) {
    m.fill(T(1));
    return;
  }
  const T v = T(1.0 / keep);
  const float kf = float(keep);
  const std::uint64_t n = std::uint64_t(m.numel());
  if constexpr (!is_cpu<D>) {
    std::uint64_t base = 0;
    const std::uint64_t* base_dev =
        DeviceOps<D>::step_values(&base, 1, [&gen, n](std::uint64_t* b) { *b = gen.reserve(n); });
    DeviceOps<D>::bernoulli_mask(gen.seed(), base, base_dev, kf, v, m);
  } else {
    const std::uint64_t base = gen.reserve(n);
    for (index_t i = 0; i < m.numel(); ++i)
      m[i] = uniform_open01(gen.bits_at(base, std::uint64_t(i))) < kf ? v : T(0);
  }
}

}  // namespace datanas
