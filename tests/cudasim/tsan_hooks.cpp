// The racecheck build's runtime for the compiler's ThreadSanitizer instrumentation: the
// translated kernels of tnas_cudasim_race are compiled with -fsanitize=thread, and instead of
// ThreadSanitizer's runtime (which is not linked), these functions receive their loads and
// stores and hand them to the race checker (racecheck.cpp). Built without instrumentation, and
// only into tnas_cudasim_race.
#include <cstddef>

#include "internal.hpp"

#include <cstdint>

namespace {
namespace race = cudasim::race;
// The instrumented code's atomics (std::atomic, static-local guards) arrive as calls too:
// done here, sequentially consistent whatever order was asked for.
template <class T>
T load(const volatile T* a) {
  return __atomic_load_n(a, __ATOMIC_SEQ_CST);
}
template <class T>
void store(volatile T* a, T v) {
  __atomic_store_n(a, v, __ATOMIC_SEQ_CST);
}
template <class T>
bool cas(volatile T* a, T* expected, T v) {
  return __atomic_compare_exchange_n(a, expected, v, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);
}
inline void on(const void* p, size_t n, race::Kind k, const void* pc, bool aligned = false) {
  if (race::g_active) race::access(p, n, k, pc, aligned);
}
}  // namespace

#define CUDASIM_HOOKS(N)                                            \
  void __tsan_read##N(void* p) {                                    \
    on(p, N, race::Kind::read, __builtin_return_address(0), true);  \
  }                                                                 \
  void __tsan_write##N(void* p) {                                   \
    on(p, N, race::Kind::write, __builtin_return_address(0), true); \
  }                                                                 \
  void __tsan_unaligned_read##N(void* p) {                          \
    on(p, N, race::Kind::read, __builtin_return_address(0));        \
  }                                                                 \
  void __tsan_unaligned_write##N(void* p) {                         \
    on(p, N, race::Kind::write, __builtin_return_address(0));       \
  }

extern "C" {
// Called by every instrumented file's constructor.
void __tsan_init() {
  race::enable();
}
CUDASIM_HOOKS(1)
CUDASIM_HOOKS(2)
CUDASIM_HOOKS(4)
CUDASIM_HOOKS(8)
CUDASIM_HOOKS(16)
void __tsan_read_range(void* p, size_t n) {
  on(p, n, race::Kind::read, __builtin_return_address(0));
}
void __tsan_write_range(void* p, size_t n) {
  on(p, n, race::Kind::write, __builtin_return_address(0));
}
#define CUDASIM_ATOMICS(N, T)                                                          \
  T __tsan_atomic##N##_load(const volatile T* a, int) {                                \
    return load(a);                                                                    \
  }                                                                                    \
  void __tsan_atomic##N##_store(volatile T* a, T v, int) {                             \
    store(a, v);                                                                       \
  }                                                                                    \
  T __tsan_atomic##N##_exchange(volatile T* a, T v, int) {                             \
    return __atomic_exchange_n(a, v, __ATOMIC_SEQ_CST);                                \
  }                                                                                    \
  T __tsan_atomic##N##_fetch_add(volatile T* a, T v, int) {                            \
    return __atomic_fetch_add(a, v, __ATOMIC_SEQ_CST);                                 \
  }                                                                                    \
  T __tsan_atomic##N##_fetch_sub(volatile T* a, T v, int) {                            \
    return __atomic_fetch_sub(a, v, __ATOMIC_SEQ_CST);                                 \
  }                                                                                    \
  T __tsan_atomic##N##_fetch_and(volatile T* a, T v, int) {                            \
    return __atomic_fetch_and(a, v, __ATOMIC_SEQ_CST);                                 \
  }                                                                                    \
  T __tsan_atomic##N##_fetch_or(volatile T* a, T v, int) {                             \
    return __atomic_fetch_or(a, v, __ATOMIC_SEQ_CST);                                  \
  }                                                                                    \
  T __tsan_atomic##N##_fetch_xor(volatile T* a, T v, int) {                            \
    return __atomic_fetch_xor(a, v, __ATOMIC_SEQ_CST);                                 \
  }                                                                                    \
  int __tsan_atomic##N##_compare_exchange_strong(volatile T* a, T* c, T v, int, int) { \
    return cas(a, c, v);                                                               \
  }                                                                                    \
  int __tsan_atomic##N##_compare_exchange_weak(volatile T* a, T* c, T v, int, int) {   \
    return cas(a, c, v);                                                               \
  }                                                                                    \
  T __tsan_atomic##N##_compare_exchange_val(volatile T* a, T c, T v, int, int) {       \
    cas(a, &c, v);                                                                     \
    return c;                                                                          \
  }
CUDASIM_ATOMICS(8, int8_t)
CUDASIM_ATOMICS(16, int16_t)
CUDASIM_ATOMICS(32, int32_t)
CUDASIM_ATOMICS(64, int64_t)
#undef CUDASIM_ATOMICS
void __tsan_atomic_thread_fence(int) {
  __atomic_thread_fence(__ATOMIC_SEQ_CST);
}
void __tsan_atomic_signal_fence(int) {
  __atomic_signal_fence(__ATOMIC_SEQ_CST);
}
void __tsan_func_entry(void*) {}
void __tsan_func_exit() {}
void __tsan_vptr_update(void**, void*) {}
void __tsan_vptr_read(void**) {}
}
#undef CUDASIM_HOOKS
