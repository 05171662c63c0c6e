// Shape: the extents of a tensor (at most kMaxDims dimensions), stored inline.
#pragma once

#include <algorithm>
#include <array>
#include <cstdint>
#include <initializer_list>
#include <ostream>
#include <string>

#include "tnas/core/error.hpp"

namespace tnas {

inline constexpr int kMaxDims = 6;

class Shape {
 public:
  Shape() = default;
  Shape(std::initializer_list<int64_t> dims) {
    TNAS_CHECK(dims.size() <= kMaxDims, "Shape: at most ", kMaxDims, " dimensions, got ",
               dims.size());
    for (auto d : dims) push_back(d);
  }
  template <class It>
  Shape(It first, It last) {
    for (; first != last; ++first) push_back(static_cast<int64_t>(*first));
  }

  void push_back(int64_t d) {
    TNAS_CHECK(rank_ < kMaxDims, "Shape: at most ", kMaxDims, " dimensions");
    TNAS_CHECK(d >= 0, "Shape: negative extent ", d);
    d_[rank_++] = d;
  }
  int rank() const { return rank_; }
  int64_t operator[](int i) const { return d_[i]; }
  int64_t& operator[](int i) { return d_[i]; }
  // Dimension i, where a negative i counts from the back; checked.
  int64_t dim(int i) const { return d_[axis(i)]; }
  int axis(int i) const {
    int a = i < 0 ? i + rank_ : i;
    TNAS_CHECK(a >= 0 && a < rank_, "axis ", i, " is out of range for shape ", str());
    return a;
  }
  int64_t numel() const {
    int64_t n = 1;
    for (int i = 0; i < rank_; ++i) n *= d_[i];
    return n;
  }
  const int64_t* begin() const { return d_.data(); }
  const int64_t* end() const { return d_.data() + rank_; }

  friend bool operator==(const Shape& a, const Shape& b) {
    return a.rank_ == b.rank_ && std::equal(a.begin(), a.end(), b.begin());
  }
  std::string str() const {
    std::string s = "[";
    for (int i = 0; i < rank_; ++i) s += (i ? ", " : "") + std::to_string(d_[i]);
    return s + "]";
  }
  friend std::ostream& operator<<(std::ostream& os, const Shape& s) { return os << s.str(); }

 private:
  std::array<int64_t, kMaxDims> d_{};
  int rank_ = 0;
};

using Strides = std::array<int64_t, kMaxDims>;

inline Strides contiguous_strides(const Shape& s) {
  Strides st{};
  int64_t acc = 1;
  for (int i = s.rank() - 1; i >= 0; --i) {
    st[i] = acc;
    acc *= s[i];
  }
  return st;
}

}  // namespace tnas
