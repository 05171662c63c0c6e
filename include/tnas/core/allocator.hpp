// Allocator: where tensor storage comes from.
//
// represents: one allocator per Device. The CPU one is a caching allocator: freed blocks go
//   back to a free list keyed by their size class and are handed out again, so a training
//   step that has run once allocates nothing from the system in steady state.
// ensures: blocks are 64-byte aligned (AVX-512 loads never straddle a line); stats() reports
//   live and peak bytes, which benches print as peak memory.
// The CUDA backend registers its own caching allocator with set_allocator(Device::cuda, ...).
#pragma once

#include <sys/mman.h>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <map>
#include <memory>
#include <mutex>
#include <new>
#include <unordered_map>
#include <vector>

#include "tnas/core/dtype.hpp"
#include "tnas/core/error.hpp"

#ifdef TNAS_HAVE_CUDA
// Defined in the tnas::cuda library (cuda/runtime.cu): registers its allocator, device hooks
// and kernels when a CUDA device is present (and nothing otherwise).
extern "C" void tnas_cuda_register();
#endif

namespace tnas {

struct AllocatorStats {
  size_t live_bytes = 0;     // handed out and not yet returned
  size_t peak_bytes = 0;     // the most live_bytes ever reached (since reset_peak)
  size_t cached_bytes = 0;   // held in free lists
  size_t system_allocs = 0;  // blocks taken from the system (malloc / cudaMalloc)
};

class Allocator {
 public:
  virtual ~Allocator() = default;
  virtual void* allocate(size_t bytes) = 0;
  virtual void deallocate(void* p, size_t bytes) = 0;
  virtual AllocatorStats stats() const = 0;
  virtual void reset_peak() = 0;
  virtual void release_cache() = 0;  // returns every cached block to the system
  // Private pools for graph capture (see CachingAllocator); allocators without them say so.
  virtual int begin_pool() { TNAS_FAIL("allocator: this allocator has no private pools"); }
  virtual void end_pool() {}
  virtual void release_pool(int) {}
};

// Rounds a request to its size class: multiples of 64 bytes below 4 KiB, then four classes per
// power of two, so at most 25% is wasted and reuse across slightly different sizes is high.
inline size_t size_class(size_t bytes) {
  if (bytes == 0) bytes = 1;
  if (bytes <= 4096) return (bytes + 63) & ~size_t(63);
  size_t p = size_t(1) << (63 - __builtin_clzll(bytes));  // largest power of two <= bytes
  size_t step = p / 4;
  return (bytes + step - 1) / step * step;
}

// A caching allocator over a pair of system functions (malloc/free here, cudaMalloc/cudaFree in
// the CUDA backend). Thread-safe.
class CachingAllocator : public Allocator {
 public:
  using SysAlloc = void* (*)(size_t);
  using SysFree = void (*)(void*);
  CachingAllocator(SysAlloc a, SysFree f) : sys_alloc_(a), sys_free_(f) {}
  ~CachingAllocator() override {
    std::lock_guard lock(mu_);
    for (auto& [id, pool] : pools_)
      for (auto& [cls, v] : pool.free)
        for (void* p : v) free_[cls].push_back(p);
    pools_.clear();
    owner_.clear();
    release_cache_locked();
  }

  void* allocate(size_t bytes) override {
    size_t cls = size_class(bytes);
    std::lock_guard lock(mu_);
    void* p = nullptr;
    Pool* pool = active_ ? &pools_.at(active_) : nullptr;
    auto it = free_.find(cls);
    if (pool && !pool->free[cls].empty()) {
      p = pool->free[cls].back();
      pool->free[cls].pop_back();
      stats_.cached_bytes -= cls;
    } else if (it != free_.end() && !it->second.empty()) {
      p = it->second.back();
      it->second.pop_back();
      stats_.cached_bytes -= cls;
    } else {
      p = sys_alloc_(cls);
      // Out of memory: give back the cache and try once more. Not while a private pool is
      // active (a CUDA graph capture): cudaFree synchronises the device, which a capturing
      // stream does not allow.
      if (!p && !active_) {
        release_cache_locked();
        p = sys_alloc_(cls);
      }
      TNAS_CHECK(p, "allocator: out of memory allocating ", cls, " bytes (", stats_.live_bytes,
                 " bytes live, ", stats_.cached_bytes, " cached",
                 active_ ? ", not released during a graph capture" : "", ")");
      ++stats_.system_allocs;
    }
    if (pool) owner_[p] = active_;
    stats_.live_bytes += cls;
    if (stats_.live_bytes > stats_.peak_bytes) stats_.peak_bytes = stats_.live_bytes;
    return p;
  }
  void deallocate(void* p, size_t bytes) override {
    if (!p) return;
    size_t cls = size_class(bytes);
    std::lock_guard lock(mu_);
    auto own = owner_.empty() ? owner_.end() : owner_.find(p);
    if (own != owner_.end())
      pools_.at(own->second).free[cls].push_back(p);
    else
      free_[cls].push_back(p);
    stats_.live_bytes -= cls;
    stats_.cached_bytes += cls;
  }

  // Private pools, for CUDA graphs. Between begin_pool() and end_pool() every block handed out
  // belongs to the new pool: whenever it is freed, then or later, it goes back to the pool's
  // own free lists, and only allocations made while that pool is active take from them. A
  // captured graph writes its blocks on every replay, so none of them may ever be handed to
  // anyone else while the graph exists. release_pool() (when the graph goes) moves the pool's
  // free blocks to the general cache; its blocks still in use go there when freed.
  int begin_pool() override {
    std::lock_guard lock(mu_);
    TNAS_CHECK(!active_, "allocator: a private pool is already active (nested graph capture)");
    active_ = ++last_pool_;
    pools_[active_];
    return active_;
  }
  void end_pool() override {
    std::lock_guard lock(mu_);
    active_ = 0;
  }
  void release_pool(int id) override {
    std::lock_guard lock(mu_);
    auto it = pools_.find(id);
    if (it == pools_.end()) return;
    for (auto& [cls, v] : it->second.free)
      for (void* p : v) free_[cls].push_back(p);
    for (auto o = owner_.begin(); o != owner_.end();)
      o = o->second == id ? owner_.erase(o) : std::next(o);
    pools_.erase(it);
    if (active_ == id) active_ = 0;
  }
  AllocatorStats stats() const override {
    std::lock_guard lock(mu_);
    return stats_;
  }
  void reset_peak() override {
    std::lock_guard lock(mu_);
    stats_.peak_bytes = stats_.live_bytes;
  }
  void release_cache() override {
    std::lock_guard lock(mu_);
    release_cache_locked();
  }

 private:
  // Frees the general cache (pools keep theirs: a graph may still write there).
  void release_cache_locked() {
    for (auto& [cls, v] : free_)
      for (void* p : v) {
        sys_free_(p);
        stats_.cached_bytes -= cls;
      }
    free_.clear();
  }
  struct Pool {
    std::map<size_t, std::vector<void*>> free;
  };
  SysAlloc sys_alloc_;
  SysFree sys_free_;
  mutable std::mutex mu_;
  std::map<size_t, std::vector<void*>> free_;
  std::map<int, Pool> pools_;
  std::unordered_map<void*, int> owner_;  // blocks of live pools
  int active_ = 0, last_pool_ = 0;        // 0: no pool
  AllocatorStats stats_;
};

namespace detail {
// Blocks of 2 MiB and more are aligned to 2 MiB and offered huge pages: first touch of a large
// activation or data set buffer is then several times cheaper (fewer page faults).
inline void* cpu_sys_alloc(size_t n) {
  constexpr size_t kHuge = size_t(2) << 20;
  if (n >= kHuge) {
    void* p = std::aligned_alloc(kHuge, (n + kHuge - 1) & ~(kHuge - 1));
    if (p) ::madvise(p, n, MADV_HUGEPAGE);
    return p;
  }
  return std::aligned_alloc(64, (n + 63) & ~size_t(63));
}
inline void cpu_sys_free(void* p) {
  std::free(p);
}

inline Allocator*& allocator_slot(Device d) {
  static Allocator* slots[2] = {nullptr, nullptr};
  return slots[static_cast<int>(d)];
}

// Loads the device backends linked into this program, once. A program that links tnas::cuda
// is compiled with TNAS_HAVE_CUDA (an INTERFACE definition of that target), so this call names
// tnas_cuda_register(): the reference makes the linker take the registration object out of
// the static library (a static-initialiser registration could be dropped), and calling it
// here, before the first device block is allocated, fills the allocator slot, the device hooks
// and the kernel table. Every device tensor is made through allocator(), so no op can reach a
// device kernel before this has run. Without TNAS_HAVE_CUDA it is empty.
inline void load_device_backends() {
#ifdef TNAS_HAVE_CUDA
  static const bool loaded = (tnas_cuda_register(), true);
  (void)loaded;
#endif
}
}  // namespace detail

// The allocator for device d. The CPU one always exists; the CUDA one exists once the CUDA
// backend is linked and initialised.
inline Allocator& allocator(Device d) {
  if (d == Device::cpu) {
    // Never destroyed: tensors with static storage may outlive any other static object.
    static auto* cpu = new CachingAllocator(detail::cpu_sys_alloc, detail::cpu_sys_free);
    if (!detail::allocator_slot(d)) detail::allocator_slot(d) = cpu;
  }
  if (d != Device::cpu && !detail::allocator_slot(d)) detail::load_device_backends();
  Allocator* a = detail::allocator_slot(d);
  TNAS_CHECK(a, "no allocator for device ", name(d),
             ": this build of tnas has no CUDA backend, or no GPU was found");
  return *a;
}
inline void set_allocator(Device d, Allocator* a) {
  detail::allocator_slot(d) = a;
}

// Storage: one block from an allocator, returned to it when the last tensor using it goes.
struct Storage {
  void* data = nullptr;
  size_t bytes = 0;
  Device device = Device::cpu;
  Storage(size_t n, Device d) : bytes(n), device(d) { data = allocator(d).allocate(n); }
  ~Storage() { allocator(device).deallocate(data, bytes); }
  Storage(const Storage&) = delete;
  Storage& operator=(const Storage&) = delete;
};

}  // namespace tnas
