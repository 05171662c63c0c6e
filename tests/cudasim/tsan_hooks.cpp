// The racecheck build's runtime for the compiler's ThreadSanitizer instrumentation: the
// translated kernels of tnas_cudasim_race are compiled with -fsanitize=thread, and instead of
// ThreadSanitizer's runtime (which is not linked), these functions receive their loads and
// stores and hand them to the race checker (racecheck.cpp). Built without instrumentation, and
// only into tnas_cudasim_race.
#include <cstddef>
#include <cstdint>

#include "internal.hpp"

namespace {
namespace race = cudasim::race;
// The instrumented code's atomics (std::atomic, static-local guards) arrive as calls too:
// done here, sequentially consistent whatever order was asked for.
template <class T>
bool cas(volatile T* a, T* expected, T v) {
  return __atomic_compare_exchange_n(a, expected, v, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);
}
inline void on(const void* p, size_t n, race::Kind k, const void* pc, bool aligned = false) {
  if (race::g_active) race::access(p, n, k, pc, aligned);
}
}  // namespace

// __tsan_read4(p), __tsan_unaligned_write16(p), ...: `aligned`, the compiler took the access
// to be aligned to its size.
#define CUDASIM_HOOK(name, N, kind, aligned)                          \
  void __tsan_##name(void* p) {                                       \
    on(p, N, race::Kind::kind, __builtin_return_address(0), aligned); \
  }
#define CUDASIM_HOOKS(N)                          \
  CUDASIM_HOOK(read##N, N, read, true)            \
  CUDASIM_HOOK(write##N, N, write, true)          \
  CUDASIM_HOOK(unaligned_read##N, N, read, false) \
  CUDASIM_HOOK(unaligned_write##N, N, write, false)

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
#define CUDASIM_RMW(N, T, op)                          \
  T __tsan_atomic##N##_##op(volatile T* a, T v, int) { \
    return __atomic_##op(a, v, __ATOMIC_SEQ_CST);      \
  }
#define CUDASIM_ATOMICS(N, T)                                                          \
  T __tsan_atomic##N##_load(const volatile T* a, int) {                                \
    return __atomic_load_n(a, __ATOMIC_SEQ_CST);                                       \
  }                                                                                    \
  void __tsan_atomic##N##_store(volatile T* a, T v, int) {                             \
    __atomic_store_n(a, v, __ATOMIC_SEQ_CST);                                          \
  }                                                                                    \
  T __tsan_atomic##N##_exchange(volatile T* a, T v, int) {                             \
    return __atomic_exchange_n(a, v, __ATOMIC_SEQ_CST);                                \
  }                                                                                    \
  CUDASIM_RMW(N, T, fetch_add)                                                         \
  CUDASIM_RMW(N, T, fetch_sub)                                                         \
  CUDASIM_RMW(N, T, fetch_and)                                                         \
  CUDASIM_RMW(N, T, fetch_or)                                                          \
  CUDASIM_RMW(N, T, fetch_xor)                                                         \
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
#undef CUDASIM_RMW
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
#undef CUDASIM_HOOK
