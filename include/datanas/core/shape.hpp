// datanas/core/shape.hpp - a small fixed-capacity shape (rank <= 4), stored inline so that
// creating a tensor never allocates for its shape.
#pragma once

#include <array>
#include <cstdint>
#include <initializer_list>
#include <string>

#include "datanas/core/error.hpp"

namespace datanas {

using index_t = std::int64_t;

class Shape {
 public:
  static constexpr int kMaxRank = 4;

  constexpr Shape() = default;
  Shape(std::initializer_list<index_t> dims) {
    DATANAS_CHECK(dims.size() <= kMaxRank, "Shape: rank ", dims.size(), " exceeds ", kMaxRank);
    for (index_t d : dims) {
      DATANAS_CHECK(d >= 0, "Shape: negative dimension ", d);
      d_[rank_++] = d;
    }
  }

  [[nodiscard]] constexpr int rank() const { return rank_; }
  [[nodiscard]] constexpr index_t operator[](int i) const { return d_[i]; }
  [[nodiscard]] constexpr index_t numel() const {
    // A fixed trip count, which GCC unrolls: bounded by rank_ alone, -O3 inlining this into
    // a constructor can warn that d_ "may be used uninitialized" past its end.
    index_t n = 1;
    for (int i = 0; i < kMaxRank; ++i) n *= i < rank_ ? d_[i] : 1;
    return n;
  }
  /// This shape with dimension i (< rank) set to d >= 0.
  [[nodiscard]] Shape with_dim(int i, index_t d) const {
    DATANAS_CHECK(i >= 0 && i < rank_ && d >= 0, "Shape: cannot set dimension ", i, " of ", str(),
                  " to ", d);
    Shape s = *this;
    s.d_[std::size_t(i)] = d;
    return s;
  }
  // NCHW accessors for rank-4 shapes.
  [[nodiscard]] constexpr index_t n() const { return d_[0]; }
  [[nodiscard]] constexpr index_t c() const { return d_[1]; }
  [[nodiscard]] constexpr index_t h() const { return d_[2]; }
  [[nodiscard]] constexpr index_t w() const { return d_[3]; }

  friend constexpr bool operator==(const Shape& a, const Shape& b) {
    if (a.rank_ != b.rank_) return false;
    for (int i = 0; i < a.rank_; ++i)
      if (a.d_[i] != b.d_[i]) return false;
    return true;
  }

  /// "[64, 16, 32, 32]", for error messages.
  [[nodiscard]] std::string str() const {
    std::string s = "[";
    for (int i = 0; i < rank_; ++i) s += (i ? ", " : "") + std::to_string(d_[i]);
    return s + "]";
  }

 private:
  int rank_ = 0;
  std::array<index_t, kMaxRank> d_{};
};

}  // namespace datanas
