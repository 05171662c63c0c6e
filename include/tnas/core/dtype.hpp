// DType and Device: what a tensor holds and where it lives.
#pragma once

#include <cstddef>
#include <cstdint>
#include <ostream>
#include <type_traits>

#include "tnas/core/error.hpp"

namespace tnas {

enum class DType : uint8_t { f32, f64 };
enum class Device : uint8_t { cpu, cuda };

inline const char* name(DType t) {
  return t == DType::f32 ? "float32" : "float64";
}
inline const char* name(Device d) {
  return d == Device::cpu ? "cpu" : "cuda";
}
inline std::ostream& operator<<(std::ostream& os, DType t) {
  return os << name(t);
}
inline std::ostream& operator<<(std::ostream& os, Device d) {
  return os << name(d);
}
inline size_t size_of(DType t) {
  return t == DType::f32 ? 4 : 8;
}

template <class T>
constexpr DType dtype_of() {
  static_assert(std::is_same_v<T, float> || std::is_same_v<T, double>,
                "tnas tensors hold float or double");
  return std::is_same_v<T, float> ? DType::f32 : DType::f64;
}

// Calls f.template operator()<T>() with T = float or double, as `t` says.
template <class F>
decltype(auto) dispatch(DType t, F&& f) {
  if (t == DType::f32) return f.template operator()<float>();
  return f.template operator()<double>();
}

}  // namespace tnas
