// datanas/ops/cuda/optim.hpp - the Cuda side of the optimisers (optim/optimizers.hpp,
// optim/asgd.hpp), clip_grad_norm, the tensor algebra of ops/tensor_math.hpp, and the
// estimator ops of estimators/estimators.hpp: host code that takes device pointers from the
// tensors and queues the launchers of kernels/datanas/cuda/{optim,estimators}.hpp on the current
// stream.
//
// Part of DeviceOps<Cuda> (datanas/cuda.hpp). The generic callers check shapes and arguments;
// these functions only do the device work. None synchronises the host: scalars computed on the
// device (norms, clipping coefficients) stay there, and the tensors that return them are read on
// the host only where someone logs them (cuda::to_host).
#pragma once

#include <algorithm>
#include <array>
#include <cstdint>
#include <span>
#include <utility>
#include <vector>

#include "datanas/core/cuda.hpp"
#include "datanas/cuda/estimators.hpp"
#include "datanas/cuda/optim.hpp"

namespace datanas::cuda {

struct OptimOps {
  template <class T>
  using DTensor = Tensor<T, Cuda>;

  // ---- optimiser updates -------------------------------------------------------------------

  /// SGD on the parameters of one step in few launches (cuda::sgd_chunk): add() each parameter
  /// in the CPU's order, then launch(). A full chunk goes to the GPU at once. One launch updates
  /// its parameters at the same time, where the CPU updates them one after another: so before a
  /// chunk goes out, its storage ranges (w, g, buf of every parameter) are sorted and checked for
  /// overlap (a parameter listed twice, views of one buffer), and a chunk with an overlap goes
  /// out one parameter per launch, in order, as the CPU runs it. The check sorts 3 k ranges per
  /// chunk of k parameters once, rather than comparing each new parameter with the whole chunk
  /// (docs/cuda.md, "Not done", for its cost). Builds no heap memory (the chunk and the ranges
  /// live on the stack).
  template <class T>
  class SgdBatch {
   public:
    SgdBatch(T lr, T momentum, bool decay, T wd) {
      c_.lr = lr;
      c_.momentum = momentum;
      c_.decay = decay;
      c_.wd = wd;
    }
    /// Parameter w with gradient g; buf undefined: no momentum; `first`: buf = g.
    void add(const DTensor<T>& w, const DTensor<T>& g, const DTensor<T>& buf, bool first) {
      if (c_.count == kSgdChunk) launch();
      c_.p[c_.count++] = {w.data(), g.data(), buf.defined() ? buf.data() : nullptr, w.numel(), first};
    }
    /// Queues the parameters added since the last launch.
    void launch() {
      if (c_.count == 0) return;
      if (!overlaps()) {
        cuda::sgd_chunk<T>(c_, optim_stream());
      } else {
        SgdChunk<T> one = c_;
        one.count = 1;
        for (int i = 0; i < c_.count; ++i) {
          one.p[0] = c_.p[i];
          cuda::sgd_chunk<T>(one, optim_stream());
        }
      }
      c_.count = 0;
    }

   private:
    /// Whether two of the chunk's storage ranges share an element (addresses as integers: the
    /// pointers may point into different allocations).
    [[nodiscard]] bool overlaps() const {
      std::array<std::pair<std::uintptr_t, std::uintptr_t>, 3 * kSgdChunk> r;
      std::size_t k = 0;
      for (int i = 0; i < c_.count; ++i) {
        const SgdParam<T>& q = c_.p[i];
        const std::uintptr_t bytes = std::uintptr_t(q.n) * sizeof(T);
        if (bytes == 0) continue;
        for (const T* a : {q.w, q.g, q.buf})
          if (a) r[k++] = {std::uintptr_t(a), std::uintptr_t(a) + bytes};
      }
      std::sort(r.begin(), r.begin() + std::ptrdiff_t(k));
      for (std::size_t i = 1; i < k; ++i)
        if (r[i].first < r[i - 1].second) return true;
      return false;
    }
    SgdChunk<T> c_;
  };
  /// Adam on one parameter: see cuda::adam_step.
  template <class T>
  static void adam_step(const DTensor<T>& w, const DTensor<T>& g, const DTensor<T>& m, const DTensor<T>& v,
                        const AdamScalars<T>& s) {
    cuda::adam_step<T>(w.numel(), w.data(), g.data(), m.data(), v.data(), s, optim_stream());
  }
  /// ASGD on one parameter: see cuda::asgd_step.
  template <class T>
  static void asgd_step(const DTensor<T>& w, const DTensor<T>& g, const DTensor<T>& ax,
                        const AsgdScalars<T>& s) {
    cuda::asgd_step<T>(w.numel(), w.data(), g.data(), ax.data(), s, optim_stream());
  }

  // ---- norms and clipping (deterministic, no host synchronisation) -----------------------

  /// Scales the gradients `grads` so that their joint L2 norm is at most max_norm, exactly as
  /// the CPU clip_grad_norm (coef = max_norm / (norm + 1e-6), applied when < 1), with the norm
  /// and the coefficient computed on the device. Returns the norm before clipping, [1]. The
  /// gradients must be distinct tensors.
  template <class T>
  static DTensor<T> clip_grad_norm(std::span<const DTensor<T>> grads, double max_norm) {
    List<T> l(grads);
    // One launch scales a chunk's tensors in parallel: a tensor listed twice would be scaled by
    // two blocks at once (a race), where the CPU scales it twice. Equal base pointers are the
    // only way two tensors overlap (a tensor's data is its storage block's start, and live
    // blocks are disjoint), so comparing them is exact.
    thread_local std::vector<T*> sorted;  // reused: no heap allocation per step after the first
    sorted.assign(l.x.begin(), l.x.end());
    std::sort(sorted.begin(), sorted.end());
    DATANAS_CHECK(std::adjacent_find(sorted.begin(), sorted.end()) == sorted.end(),
                  "clip_grad_norm: a parameter (or gradient buffer) is listed twice");
    const std::int64_t parts = squared_norm_workspace(l.count(), l.n.data());
    DTensor<double> work = DTensor<double>::empty({parts + 1});  // partials | coef
    DTensor<T> norm = DTensor<T>::empty({1});
    NormOutputs<T> out;
    out.norm = norm.data();
    out.clip_coef = work.data() + parts;
    out.max_norm = max_norm;
    cuda::squared_norm<T>(l.count(), l.x.data(), l.n.data(), work.data(), out, optim_stream());
    cuda::scale_by_coef<T>(l.count(), l.x.data(), l.n.data(), work.data() + parts, optim_stream());
    return norm;  // `work` goes back to this stream's free list: reuse is stream-ordered
  }
  /// out[0] = sum of squares of every defined tensor of xs (out has one element).
  template <class T>
  static void squared_norm(std::span<const DTensor<T>> xs, const DTensor<T>& out) {
    List<T> l(xs);
    DTensor<double> work =
        DTensor<double>::empty({squared_norm_workspace(l.count(), l.n.data())});
    NormOutputs<T> o;
    o.sq_value = out.data();
    cuda::squared_norm<T>(l.count(), l.x.data(), l.n.data(), work.data(), o, optim_stream());
  }

  // ---- tensor algebra (ops/tensor_math.hpp) -----------------------------------------------

  /// out = a x + b y (out may be x or y).
  template <class T>
  static void axpby(T a, const DTensor<T>& x, T b, const DTensor<T>& y, const DTensor<T>& out) {
    cuda::axpby<T>(out.numel(), a, x.data(), b, nullptr, y.data(), out.data(), optim_stream());
  }
  /// out = a x + (b s[0]) y, s a device scalar (out may be x or y).
  template <class T>
  static void axpby_scaled(T a, const DTensor<T>& x, T b, const DTensor<T>& s, const DTensor<T>& y,
                           const DTensor<T>& out) {
    cuda::axpby<T>(out.numel(), a, x.data(), b, s.data(), y.data(), out.data(), optim_stream());
  }
  /// x *= factor s[0], s a device scalar.
  template <class T>
  static void scale_by(const DTensor<T>& x, const DTensor<T>& s, T factor) {
    cuda::scale_by<T>(x.numel(), x.data(), s.data(), factor, optim_stream());
  }
  /// x *= c, c a host value.
  template <class T>
  static void scale_by_value(const DTensor<T>& x, T c) {
    cuda::scale_by<T>(x.numel(), x.data(), nullptr, c, optim_stream());
  }
  /// out[0] = num / max(sqrt(sq[0]), floor).
  template <class T>
  static void norm_ratio(const DTensor<T>& sq, double num, double floor, const DTensor<T>& out) {
    cuda::norm_ratio<T>(sq.data(), num, floor, out.data(), optim_stream());
  }
  /// out[0] = 1 / s[0].
  template <class T>
  static void reciprocal(const DTensor<T>& s, const DTensor<T>& out) {
    cuda::reciprocal<T>(s.data(), out.data(), optim_stream());
  }

  // ---- estimators (estimators/estimators.hpp) ---------------------------------------------

  /// The kernel parameters of estimators::mixing_weights, checked (no noise reserved yet: the
  /// caller reserves it from its host generator with reserve_noise, as the CPU op does).
  static EstimatorParams estimator_params(int kind, int draws, int nodes, int ops, int first_inputs,
                                          bool per_edge, bool relu, double tau) {
    EstimatorParams p;
    p.kind = EstimatorKind(kind);
    p.draws = draws;
    p.nodes = nodes;
    p.ops = ops;
    p.first_inputs = first_inputs;
    p.per_edge = per_edge;
    p.relu = relu;
    p.tau = tau;
    check_estimator_params(p);
    return p;
  }
  /// alpha [E K] -> w [E K] and the saved buffer [p.saved_size()].
  template <class T>
  static void estimator_forward(const EstimatorParams& p, const DTensor<T>& alpha, const DTensor<T>& w,
                                const DTensor<T>& saved) {
    launch_estimator_forward<T>(p, alpha.data(), w.data(), saved.data(), optim_stream());
  }
  /// dL/dw -> dL/dalpha, written or added (`accumulate`).
  template <class T>
  static void estimator_backward(const EstimatorParams& p, const DTensor<T>& alpha, const DTensor<T>& w,
                                 const DTensor<T>& saved, const DTensor<T>& gw, const DTensor<T>& galpha,
                                 bool accumulate) {
    launch_estimator_backward<T>(p, alpha.data(), w.data(), saved.data(), gw.data(), galpha.data(),
                                 accumulate, optim_stream());
  }
  /// y[0] = coeff sum |p - code|.
  template <class T>
  static void l1_distance(const DTensor<T>& p, const DTensor<T>& code, T coeff, const DTensor<T>& y) {
    DTensor<double> work = DTensor<double>::empty({l1_distance_workspace(p.numel())});
    cuda::l1_distance<T>(p.numel(), p.data(), code.data(), coeff, y.data(), work.data(), optim_stream());
  }
  /// g (+)= dy[0] coeff sign(p - code).
  template <class T>
  static void l1_distance_backward(const DTensor<T>& p, const DTensor<T>& code, const DTensor<T>& dy,
                                   T coeff, const DTensor<T>& g, bool accumulate) {
    cuda::l1_distance_backward<T>(p.numel(), p.data(), code.data(), dy.data(), coeff, g.data(),
                                  accumulate, optim_stream());
  }

 private:
  static cudaStream_t optim_stream() { return current_stream().handle; }

  /// Device pointers and sizes of the defined tensors of a list, for the multi-tensor launchers.
  /// The vectors are this thread's scratch, reused from call to call (a step allocates nothing on
  /// the host once they have grown), so one List may be alive per thread and T at a time.
  template <class T>
  struct List {
    std::vector<T*>& x = scratch<T*>();
    std::vector<std::int64_t>& n = scratch<std::int64_t>();
    explicit List(std::span<const DTensor<T>> ts) {
      x.clear();
      n.clear();
      for (const DTensor<T>& t : ts) {
        if (!t.defined() || t.numel() == 0) continue;
        x.push_back(t.data());
        n.push_back(t.numel());
      }
    }
    [[nodiscard]] int count() const { return int(x.size()); }
  };
  template <class V>
  static std::vector<V>& scratch() {
    thread_local std::vector<V> v;
    return v;
  }
};

}  // namespace datanas::cuda
