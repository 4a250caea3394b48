// datanas/nn/module.hpp - the module base: named parameters and buffers, children, and the
// train/eval switch.
//
// Modules register pointers to their members in their constructors, so a module is neither
// copyable nor movable (hold it by value in its parent, or in a std::unique_ptr).
#pragma once

#include <string>
#include <vector>

#include "datanas/autograd/variable.hpp"
#include "datanas/core/random.hpp"

namespace datanas::nn {

template <class T, class D = Cpu>
class Module {
 public:
  Module() = default;
  Module(const Module&) = delete;
  Module& operator=(const Module&) = delete;
  virtual ~Module() = default;

  /// Every trainable parameter of this module and its children, in registration order.
  [[nodiscard]] std::vector<Var<T, D>> parameters() const {
    std::vector<Var<T, D>> out;
    visit_parameters([&](const std::string&, const Var<T, D>& v) { out.push_back(v); });
    return out;
  }
  /// f(name, var) for every parameter; names are dotted paths ("cell3.edge2.sep.dw1.weight").
  template <class F>
  void visit_parameters(F&& f, const std::string& prefix = "") const {
    for (const auto& [name, v] : params_) f(prefix + name, *v);
    for (const auto& [name, m] : children_) m->visit_parameters(f, prefix + name + ".");
  }
  /// f(name, tensor) for every non-trainable state tensor (batch-norm running statistics).
  template <class F>
  void visit_buffers(F&& f, const std::string& prefix = "") const {
    for (const auto& [name, t] : buffers_) f(prefix + name, *t);
    for (const auto& [name, m] : children_) m->visit_buffers(f, prefix + name + ".");
  }
  /// f(module) for this module and every descendant, parents first.
  template <class F>
  void visit_modules(F&& f) {
    f(*this);
    for (auto& [name, m] : children_) m->visit_modules(f);
  }

  /// Number of scalar weights (what DARTS reports as the parameter count).
  [[nodiscard]] index_t parameter_count() const {
    index_t n = 0;
    visit_parameters([&](const std::string&, const Var<T, D>& v) { n += v.value().numel(); });
    return n;
  }

  /// Training mode (batch statistics, dropout on) or evaluation mode, recursively.
  void train(bool on = true) {
    training_ = on;
    for (auto& [name, m] : children_) m->train(on);
  }
  void eval() { train(false); }
  [[nodiscard]] bool training() const { return training_; }

  void zero_grad() const {
    visit_parameters([](const std::string&, const Var<T, D>& v) { v.zero_grad(); });
  }

 protected:
  Var<T, D>& register_parameter(std::string name, Var<T, D>& v) {
    params_.emplace_back(std::move(name), &v);
    return v;
  }
  Tensor<T, D>& register_buffer(std::string name, Tensor<T, D>& t) {
    buffers_.emplace_back(std::move(name), &t);
    return t;
  }
  template <class M>
  M& register_module(std::string name, M& m) {
    children_.emplace_back(std::move(name), &m);
    return m;
  }

 private:
  std::vector<std::pair<std::string, Var<T, D>*>> params_;
  std::vector<std::pair<std::string, Tensor<T, D>*>> buffers_;
  std::vector<std::pair<std::string, Module*>> children_;
  bool training_ = true;
};

/// U(-bound, bound) parameter, as torch's default initialisation draws (bound = 1/sqrt(fan_in)).
/// Drawn on the host and copied to D, so a network gets the same weights on every device.
template <class T, class D = Cpu>
Var<T, D> uniform_parameter(const Shape& s, double bound, PhiloxGenerator& gen) {
  Tensor<T, Cpu> t = Tensor<T, Cpu>::empty(s);
  for (index_t i = 0; i < t.numel(); ++i) t[i] = T((2.0 * gen.uniform() - 1.0) * bound);
  return Var<T, D>(to_device_of<D>(t), true);
}

}  // namespace datanas::nn
