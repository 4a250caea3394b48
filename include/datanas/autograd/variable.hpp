// datanas/autograd/variable.hpp - reverse-mode autograd: Var, the tape, grad mode.
//
// Design (docs/design.md has the full argument): a thread-local tape of backward closures.
// Each op computes its forward value and, when an input needs a gradient, appends one closure
// that knows how to push the output gradient to its inputs. backward() runs the tape in
// reverse. Closures live inline in the tape and Var nodes come from a free-list pool, so
// after the first step the tape and the nodes cost no allocation and an op costs tens of
// nanoseconds of bookkeeping next to its kernel.
#pragma once

#include <cstddef>
#include <mutex>
#include <span>
#include <utility>
#include <vector>

#include "datanas/core/tensor.hpp"
#include "datanas/detail/inline_function.hpp"

namespace datanas {

/// Bytes of captured state a backward closure may hold (Var handles are 8 bytes each).
inline constexpr std::size_t kTapeClosureBytes = 192;
/// A tape this long means forward passes were recorded and never differentiated.
inline constexpr std::size_t kMaxTapeEntries = std::size_t(1) << 22;

// ---- grad mode ----------------------------------------------------------------------------

namespace detail {
inline bool& grad_mode_flag() {
  thread_local bool enabled = true;
  return enabled;
}
}  // namespace detail

/// Whether ops record backward closures on this thread.
inline bool grad_enabled() { return detail::grad_mode_flag(); }

/// RAII: disables recording (inference, evaluation, optimiser updates) on this thread.
class NoGradGuard {
 public:
  NoGradGuard() : prev_(std::exchange(detail::grad_mode_flag(), false)) {}
  ~NoGradGuard() { detail::grad_mode_flag() = prev_; }
  NoGradGuard(const NoGradGuard&) = delete;
  NoGradGuard& operator=(const NoGradGuard&) = delete;

 private:
  bool prev_;
};

// ---- nodes ----------------------------------------------------------------------------------

namespace detail {

template <class T, class D>
struct VarNode {
  Tensor<T, D> value;
  Tensor<T, D> grad;
  int refs = 0;        // every handle: Vars and GradRefs
  int value_refs = 0;  // Vars only; at 0 the value is released (its shape is kept)
  bool requires_grad = false;
  bool is_leaf = true;
  bool grad_live = false;   // grad holds a value written since the last zero_grad()/release
  bool retain_grad = false; // keep a non-leaf's gradient after backward
  VarNode* next_free = nullptr;
};

/// Free-list pool of nodes: creating a Var after warm-up allocates nothing.
template <class T, class D>
class NodePool {
 public:
  static NodePool& instance() {
    static NodePool p;
    return p;
  }
  VarNode<T, D>* acquire() {
    std::lock_guard lock(mutex_);
    VarNode<T, D>* n = head_;
    if (n)
      head_ = n->next_free;
    else
      n = new VarNode<T, D>;
    return n;
  }
  void release(VarNode<T, D>* n) {
    n->value = {};
    n->value_refs = 0;
    n->grad = {};
    n->requires_grad = n->is_leaf = n->grad_live = n->retain_grad = false;
    std::lock_guard lock(mutex_);
    n->next_free = head_;
    head_ = n;
  }
  ~NodePool() {
    while (head_) delete std::exchange(head_, head_->next_free);
  }

 private:
  std::mutex mutex_;
  VarNode<T, D>* head_ = nullptr;
};

}  // namespace detail

/// Where a backward kernel writes an input's gradient: into `g`, adding when `accumulate`,
/// overwriting otherwise (the first writer overwrites, so gradients need no zero fill).
/// A backward function whose nested lambda (a parallel_for body) uses g or accumulate unpacks
/// the slot into plain variables, not `auto [g, acc]`: clang before 16 cannot capture a
/// structured binding in a lambda (P1091), and the library builds with clang 14 too.
template <class T, class D>
struct GradSlot {
  Tensor<T, D> g;
  bool accumulate;
};

template <Scalar T, Device D>
class Var;
template <Scalar T, Device D>
class GradRef;

namespace detail {
/// What Var and GradRef share: the gradient side of a node. Holds no reference itself; the
/// two handle types count theirs.
template <class T, class D>
class NodeHandle {
 public:
  using Tensor_ = Tensor<T, D>;

  [[nodiscard]] bool defined() const { return n_ != nullptr; }
  /// The value's shape; known after the value itself was released.
  [[nodiscard]] const Shape& shape() const { return n_->value.shape(); }
  [[nodiscard]] bool requires_grad() const { return n_ && n_->requires_grad; }
  /// Whether a gradient was written since the last zero_grad() (torch: grad is not None).
  [[nodiscard]] bool has_grad() const { return n_ && n_->grad_live; }

  // ---- for op implementations --------------------------------------------------------------
  /// The buffer to write this node's gradient into; allocates it on first use.
  GradSlot<T, D> grad_slot() const {
    if (!n_->grad.defined() || !(n_->grad.shape() == n_->value.shape()))
      n_->grad = Tensor_::empty(n_->value.shape());
    const bool acc = n_->grad_live;
    n_->grad_live = true;
    return {n_->grad, acc};
  }
  /// The incoming gradient inside a backward closure (valid only while it runs).
  [[nodiscard]] const Tensor_& out_grad() const { return n_->grad; }
  /// For an op whose gradient to this input is its output's gradient unchanged (dx = dy):
  /// takes `out`'s gradient buffer as this node's gradient instead of copying it, and returns
  /// true; returns false when the caller must write through grad_slot() instead. Sharing is
  /// safe only when nothing else will read or write the buffer as `out`'s: `out` drops its
  /// gradient after its closure (not retained), and only one input of a closure may take it
  /// (the caller's duty). Later consumers of this node then add into the shared buffer. Not
  /// done when this node has a gradient already (it must be added to), or is a leaf (a
  /// parameter's gradient buffer is its own from step to step: optimisers hold it).
  [[nodiscard]] bool adopt_grad(const NodeHandle& out) const {
    if (n_ == out.n_ || n_->is_leaf || n_->grad_live || out.n_->is_leaf || out.n_->retain_grad ||
        !(out.n_->grad.shape() == n_->value.shape()))
      return false;
    n_->grad = out.n_->grad;
    n_->grad_live = true;
    return true;
  }
  void release_grad_if_temporary() const {
    if (!n_->is_leaf && !n_->retain_grad) {
      n_->grad = {};
      n_->grad_live = false;
    }
  }
  friend bool same_node(const NodeHandle& a, const NodeHandle& b) { return a.n_ == b.n_; }

 protected:
  NodeHandle() = default;
  explicit NodeHandle(VarNode<T, D>* n) : n_(n) {}
  static NodePool<T, D>& pool() { return NodePool<T, D>::instance(); }
  VarNode<T, D>* n_ = nullptr;
};
}  // namespace detail

/// A tensor in the autograd graph: a value, and a gradient when requires_grad().
///
/// Lifetime of the value: a node lives while any Var or GradRef refers to it, its value only
/// while a Var does. The tape and the backward closures refer by GradRef to what they only
/// route gradients through, and by Var to what their backward reads; so an op output that no
/// backward reads is freed as soon as the forward pass drops it, as with torch's saved tensors.
template <Scalar T, Device D = Cpu>
class Var : public detail::NodeHandle<T, D> {
  using Base = detail::NodeHandle<T, D>;
  using Base::n_;

 public:
  using Tensor_ = Tensor<T, D>;
  using value_type = T;
  using device_type = D;

  Var() = default;
  /// A leaf. With requires_grad it is a trainable parameter: its gradient accumulates over
  /// backward() calls until zero_grad().
  explicit Var(Tensor_ value, bool requires_grad = false) : Base(Base::pool().acquire()) {
    n_->refs = 1;
    n_->value_refs = 1;
    n_->value = std::move(value);
    n_->requires_grad = requires_grad;
    n_->is_leaf = true;
  }
  Var(const Var& o) : Base(o.n_) {
    if (n_) ++n_->refs, ++n_->value_refs;
  }
  Var(Var&& o) noexcept : Base(std::exchange(o.n_, nullptr)) {}
  Var& operator=(Var o) noexcept {
    std::swap(n_, o.n_);
    return *this;
  }
  ~Var() {
    if (!n_) return;
    // The last Var gone while GradRefs remain: no one can read the value again.
    if (--n_->value_refs == 0 && n_->refs > 1) n_->value = Tensor_::unallocated(n_->value.shape());
    if (--n_->refs == 0) Base::pool().release(n_);
  }

  [[nodiscard]] const Tensor_& value() const { return n_->value; }
  [[nodiscard]] bool is_leaf() const { return n_->is_leaf; }
  /// The gradient, zeros when none was written yet.
  [[nodiscard]] const Tensor_& grad() const {
    if (!n_->grad_live) {
      auto slot = this->grad_slot();
      slot.g.fill(T(0));
    }
    return n_->grad;
  }
  /// Forgets the gradient lazily (no fill): the next backward overwrites instead of adding.
  void zero_grad() const {
    if (n_) n_->grad_live = false;
  }
  void set_requires_grad(bool on) const { n_->requires_grad = on; }
  /// Keep this non-leaf's gradient after backward() (for inspection and tests).
  void retain_grad() const { n_->retain_grad = true; }
  /// The same value outside the graph.
  [[nodiscard]] Var detach() const { return Var(n_->value, false); }
  /// Marks an op output: part of the graph, gradient released after its closure ran.
  void mark_op_output() const {
    n_->requires_grad = true;
    n_->is_leaf = false;
  }

 private:
  friend class GradRef<T, D>;
};

/// A reference to a Var's node for routing gradients only: keeps its gradient and shape, not
/// its value (see Var). Backward closures capture the inputs whose value they do not read, and
/// their own output unless they read it, as GradRefs: `record(y, [x = GradRef(x), y = GradRef(y)] {...})`.
template <Scalar T, Device D = Cpu>
class GradRef : public detail::NodeHandle<T, D> {
  using Base = detail::NodeHandle<T, D>;
  using Base::n_;

 public:
  GradRef() = default;
  explicit GradRef(const Var<T, D>& v) : Base(v.n_) {
    if (n_) ++n_->refs;
  }
  GradRef(const GradRef& o) : Base(o.n_) {
    if (n_) ++n_->refs;
  }
  GradRef(GradRef&& o) noexcept : Base(std::exchange(o.n_, nullptr)) {}
  GradRef& operator=(GradRef o) noexcept {
    std::swap(n_, o.n_);
    return *this;
  }
  ~GradRef() {
    if (n_ && --n_->refs == 0) Base::pool().release(n_);
  }
};

// ---- the tape -------------------------------------------------------------------------------

template <class T, class D>
class Tape {
 public:
  /// Appends the backward closure of op output `out`.
  template <class F>
  void record(const Var<T, D>& out, F&& backward) {
    DATANAS_CHECK(entries_.size() < kMaxTapeEntries, "autograd tape holds ", entries_.size(),
                  " entries: forward passes under grad mode were never followed by backward(); "
                  "evaluate inside NoGradGuard or call clear_tape()");
    out.mark_op_output();
    entries_.push_back(Entry{GradRef<T, D>(out), detail::InlineFunction<kTapeClosureBytes>(std::forward<F>(backward))});
  }

  /// Runs every closure whose output received a gradient, newest first, freeing activations
  /// and temporary gradients as it goes; leaves the tape empty (its capacity is kept).
  void run_backward() {
    for (auto it = entries_.rbegin(); it != entries_.rend(); ++it) {
      if (it->out.has_grad()) it->backward();
      it->backward.reset();
      it->out.release_grad_if_temporary();
    }
    clear();
  }
  void clear() {
    entries_.clear();
    stash_.clear();
    ref_stash_.clear();
  }
  [[nodiscard]] std::size_t size() const { return entries_.size(); }

  /// Keeps a variable number of Vars alive for a closure (concat, the mixed op) without
  /// allocating: they go to a side buffer of the tape, and the closure captures the returned
  /// position. Read them back with stashed(pos + i) while the closure runs.
  std::size_t stash(std::span<const Var<T, D>> vars) {
    const std::size_t pos = stash_.size();
    stash_.insert(stash_.end(), vars.begin(), vars.end());
    return pos;
  }
  [[nodiscard]] const Var<T, D>& stashed(std::size_t i) const { return stash_[i]; }
  /// stash() for closures that only route gradients to the Vars (their values may be freed).
  std::size_t stash_refs(std::span<const Var<T, D>> vars) {
    const std::size_t pos = ref_stash_.size();
    for (const auto& v : vars) ref_stash_.emplace_back(v);
    return pos;
  }
  [[nodiscard]] const GradRef<T, D>& stashed_ref(std::size_t i) const { return ref_stash_[i]; }

 private:
  struct Entry {
    GradRef<T, D> out;  // the tape routes gradients; it keeps no value alive
    detail::InlineFunction<kTapeClosureBytes> backward;
  };
  std::vector<Entry> entries_;
  std::vector<Var<T, D>> stash_;
  std::vector<GradRef<T, D>> ref_stash_;
};

/// This thread's tape for (T, D).
template <class T, class D>
Tape<T, D>& tape() {
  thread_local Tape<T, D> t;
  return t;
}

/// Drops everything recorded on this thread's tape for (T, D) without differentiating.
template <class T, class D = Cpu>
void clear_tape() {
  tape<T, D>().clear();
}

/// d(loss)/d(every Var that requires grad), accumulated into leaves. `loss` must hold one
/// element. The tape is consumed: a second backward needs a new forward (no retain_graph).
template <class T, class D>
void backward(const Var<T, D>& loss) {
  DATANAS_CHECK(loss.defined() && loss.value().numel() == 1,
                "backward: the loss must be a single element, got shape ",
                loss.defined() ? loss.shape().str() : std::string("<undefined>"));
  DATANAS_CHECK(loss.requires_grad(), "backward: the loss does not depend on any Var that requires grad");
  auto slot = loss.grad_slot();
  if constexpr (is_cpu<D>)
    slot.g.data()[0] = T(1);
  else
    slot.g.fill(T(1));
  tape<T, D>().run_backward();
}

/// Backpropagates a given output gradient: d<dy, out>/d(every Var that requires grad), as
/// torch's out.backward(dy). `dy` must have out's shape; it is copied, not kept.
template <class T, class D>
void backward(const Var<T, D>& out, const Tensor<T, D>& dy) {
  DATANAS_CHECK(out.defined() && out.value().defined(), "backward: the output has no value");
  DATANAS_CHECK(dy.shape() == out.shape(), "backward: gradient shape ", dy.shape().str(),
                " differs from the output's ", out.shape().str());
  DATANAS_CHECK(out.requires_grad(), "backward: the output does not depend on any Var that requires grad");
  auto slot = out.grad_slot();
  slot.g.copy_from(dy);
  tape<T, D>().run_backward();
}

// ---- helpers for writing ops ----------------------------------------------------------------

/// True when an op with these inputs must record a backward closure.
template <class... V>
[[nodiscard]] bool needs_grad(const V&... inputs) {
  return grad_enabled() && (inputs.requires_grad() || ...);
}

/// Records `backward` for `out` on the tape of its type.
template <class T, class D, class F>
void record(const Var<T, D>& out, F&& backward) {
  tape<T, D>().record(out, std::forward<F>(backward));
}

}  // namespace datanas
