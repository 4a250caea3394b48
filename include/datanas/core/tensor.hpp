// datanas/core/tensor.hpp - Tensor<Scalar, Device>: a contiguous, reference-counted, NCHW array.
//
// A Tensor is a cheap handle (one pointer plus an inline Shape): copies share storage, like
// torch.Tensor. Storage comes from CachingAllocator<Device>. Element access (operator(), eigen())
// is host-only and exists for Cpu tensors; device tensors are touched only by their kernels.
#pragma once

#include <algorithm>
#include <cstring>
#include <initializer_list>
#include <span>
#include <utility>

#include "datanas/core/allocator.hpp"
#include "datanas/core/device.hpp"
#include "datanas/core/shape.hpp"
#include "datanas/detail/eigen.hpp"

namespace datanas {

template <Element T, Device D = Cpu>
class Tensor {
 public:
  using value_type = T;
  using device_type = D;
  using EigenVec = Eigen::Map<Eigen::Array<T, Eigen::Dynamic, 1>, Eigen::Aligned64>;
  using ConstEigenVec = Eigen::Map<const Eigen::Array<T, Eigen::Dynamic, 1>, Eigen::Aligned64>;

  Tensor() = default;
  Tensor(const Tensor& o) : storage_(o.storage_), shape_(o.shape_) { retain(); }
  Tensor(Tensor&& o) noexcept
      : storage_(std::exchange(o.storage_, nullptr)), shape_(o.shape_) {}
  Tensor& operator=(const Tensor& o) {
    if (this != &o) {
      o.retain();
      drop();
      storage_ = o.storage_;
      shape_ = o.shape_;
    }
    return *this;
  }
  Tensor& operator=(Tensor&& o) noexcept {
    if (this != &o) {
      drop();
      storage_ = std::exchange(o.storage_, nullptr);
      shape_ = o.shape_;
    }
    return *this;
  }
  ~Tensor() { drop(); }

  /// Uninitialised tensor of the given shape.
  static Tensor empty(const Shape& s) {
    Tensor t;
    t.shape_ = s;
    t.storage_ = CachingAllocator<D>::instance().acquire(sizeof(T) * std::max<index_t>(1, s.numel()));
    return t;
  }
  /// A shape without storage (defined() is false): the symbolic zero of the "none" op.
  static Tensor unallocated(const Shape& s) {
    Tensor t;
    t.shape_ = s;
    return t;
  }
  static Tensor zeros(const Shape& s) { return full(s, T(0)); }
  static Tensor full(const Shape& s, T v) {
    Tensor t = empty(s);
    t.fill(v);
    return t;
  }
  /// A tensor holding `values` (row-major); their count must equal the shape's size.
  static Tensor from(const Shape& s, std::initializer_list<T> values) requires std::same_as<D, Cpu> {
    return from(s, std::span<const T>(values.begin(), values.size()));
  }
  static Tensor from(const Shape& s, std::span<const T> values) requires std::same_as<D, Cpu> {
    DATANAS_CHECK(index_t(values.size()) == s.numel(), "Tensor::from: shape ", s.str(), " needs ",
                  s.numel(), " values, got ", values.size());
    Tensor t = empty(s);
    std::copy(values.begin(), values.end(), t.data());
    return t;
  }

  [[nodiscard]] bool defined() const { return storage_ != nullptr; }
  [[nodiscard]] const Shape& shape() const { return shape_; }
  [[nodiscard]] index_t numel() const { return shape_.numel(); }
  [[nodiscard]] int rank() const { return shape_.rank(); }
  [[nodiscard]] index_t dim(int i) const { return shape_[i]; }
  [[nodiscard]] T* data() const { return storage_ ? static_cast<T*>(storage_->data) : nullptr; }
  /// True when both handles share storage (a reshape or a copy of the same tensor).
  [[nodiscard]] bool same_storage(const Tensor& o) const { return storage_ == o.storage_; }

  /// A view of the same storage with another shape of the same size.
  [[nodiscard]] Tensor reshape(const Shape& s) const {
    DATANAS_CHECK(s.numel() == numel(), "reshape: cannot view ", shape_.str(), " as ", s.str());
    Tensor t(*this);
    t.shape_ = s;
    return t;
  }

  /// The first n entries along dimension 0, as a view of the same storage from the same start
  /// (a product over the filled prefix of a buffer's rows). 0 <= n <= dim(0).
  [[nodiscard]] Tensor leading(index_t n) const {
    DATANAS_CHECK(rank() >= 1 && n >= 0 && n <= shape_[0], "leading: cannot take ", n,
                  " entries of dimension 0 of ", shape_.str());
    Tensor t(*this);
    t.shape_ = shape_.with_dim(0, n);
    return t;
  }

  // ---- on any device (a device queues the work on its current stream) ----------------------
  void fill(T v) const {
    if constexpr (is_cpu<D>)
      std::fill_n(data(), numel(), v);
    else
      DeviceOps<D>::fill(*this, v);
  }
  void copy_from(const Tensor& o) const {
    DATANAS_CHECK(o.numel() == numel(), "copy_from: size mismatch ", o.shape().str(), " vs ",
                  shape_.str());
    if constexpr (is_cpu<D>)
      std::memcpy(data(), o.data(), sizeof(T) * numel());
    else
      DeviceOps<D>::copy(*this, o);
  }
  [[nodiscard]] Tensor clone() const {
    Tensor t = empty(shape_);
    if (numel()) t.copy_from(*this);
    return t;
  }

  // ---- host access (Cpu only) ---------------------------------------------------------------
  EigenVec eigen() const requires std::same_as<D, Cpu> { return EigenVec(data(), numel()); }
  T& operator[](index_t i) const requires std::same_as<D, Cpu> { return data()[i]; }
  T& operator()(index_t n, index_t c, index_t h, index_t w) const requires std::same_as<D, Cpu> {
    return data()[((n * shape_[1] + c) * shape_[2] + h) * shape_[3] + w];
  }
  T& operator()(index_t i, index_t j) const requires std::same_as<D, Cpu> {
    return data()[i * shape_[1] + j];
  }

 private:
  void retain() const {
    if (storage_) ++storage_->refs;
  }
  void drop() {
    if (storage_ && --storage_->refs == 0) CachingAllocator<D>::instance().release(storage_);
    storage_ = nullptr;
  }

  detail::Storage* storage_ = nullptr;
  Shape shape_;
};

/// `host` on device D: the same tensor on the Cpu, otherwise a device copy queued on the
/// device's current stream (the host data has been read when this returns).
template <class D, class T>
Tensor<T, D> to_device_of(const Tensor<T, Cpu>& host) {
  if constexpr (is_cpu<D>)
    return host;
  else
    return DeviceOps<D>::upload(host);
}
/// dst = host, into dst's existing storage (the same number of elements): a copy on the Cpu, a
/// copy queued on the device's current stream otherwise (the host data has been read when this
/// returns). dst keeps its address, as the inputs of a captured step (StepGraph) must.
template <class D, class T>
void upload_into(const Tensor<T, D>& dst, const Tensor<T, Cpu>& host) {
  if constexpr (is_cpu<D>)
    dst.copy_from(host);
  else
    DeviceOps<D>::upload_into(host, dst);
}
/// A host copy of `t` (the same tensor on the Cpu). On a device this waits for the current
/// stream: use it where a value is logged or saved, never inside a training step.
template <class T, class D>
Tensor<T, Cpu> to_cpu(const Tensor<T, D>& t) {
  if constexpr (is_cpu<D>)
    return t;
  else
    return DeviceOps<D>::download(t);
}

/// Throws datanas::error naming `what` unless `t` has shape `s`.
template <class T, class D>
void check_shape(const Tensor<T, D>& t, const Shape& s, const char* what) {
  DATANAS_CHECK(t.shape() == s, what, ": expected shape ", s.str(), ", got ", t.shape().str());
}

}  // namespace datanas
