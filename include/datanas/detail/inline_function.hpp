// datanas/detail/inline_function.hpp - a move-only void() callable stored in a fixed inline
// buffer. Backward closures live in the tape; keeping them inline (no std::function heap
// fallback) is what lets a training step run without allocating.
#pragma once

#include <cstddef>
#include <new>
#include <type_traits>
#include <utility>

namespace datanas::detail {

template <std::size_t Capacity>
class InlineFunction {
 public:
  InlineFunction() = default;
  template <class F>
    requires(!std::is_same_v<std::decay_t<F>, InlineFunction>)
  explicit InlineFunction(F&& f) {
    using Fn = std::decay_t<F>;
    static_assert(sizeof(Fn) <= Capacity,
                  "datanas: a backward closure captures more than the tape's inline capacity; "
                  "capture less (Var handles are 8 bytes) or raise kTapeClosureBytes");
    static_assert(alignof(Fn) <= alignof(std::max_align_t), "closure over-aligned");
    ::new (buf_) Fn(std::forward<F>(f));
    call_ = [](void* p) { (*static_cast<Fn*>(p))(); };
    ops_ = [](void* dst, void* src) {  // move-construct into dst (if given), destroy src
      if (dst) ::new (dst) Fn(std::move(*static_cast<Fn*>(src)));
      static_cast<Fn*>(src)->~Fn();
    };
  }
  InlineFunction(InlineFunction&& o) noexcept : call_(o.call_), ops_(o.ops_) {
    if (ops_) ops_(buf_, o.buf_);
    o.call_ = nullptr;
    o.ops_ = nullptr;
  }
  InlineFunction& operator=(InlineFunction&& o) noexcept {
    if (this != &o) {
      reset();
      call_ = o.call_;
      ops_ = o.ops_;
      if (ops_) ops_(buf_, o.buf_);
      o.call_ = nullptr;
      o.ops_ = nullptr;
    }
    return *this;
  }
  InlineFunction(const InlineFunction&) = delete;
  InlineFunction& operator=(const InlineFunction&) = delete;
  ~InlineFunction() { reset(); }

  void operator()() { call_(buf_); }
  explicit operator bool() const { return call_ != nullptr; }
  /// Destroys the stored callable (and with it whatever it captured).
  void reset() {
    if (ops_) ops_(nullptr, buf_);
    call_ = nullptr;
    ops_ = nullptr;
  }

 private:
  alignas(std::max_align_t) unsigned char buf_[Capacity];
  void (*call_)(void*) = nullptr;
  void (*ops_)(void*, void*) = nullptr;
};

}  // namespace datanas::detail
