// The emulated device's memory and its guards (see ../emulated_device.hpp): the arena of
// device blocks, the access scopes of kernels, graph capture by recording, the report of a
// host access to device memory, and the checks of kernel arguments.
#pragma once

#include <signal.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <limits>
#include <map>
#include <mutex>
#include <utility>
#include <vector>

#include "tnas/backend/cpu/conv.hpp"
#include "tnas/backend/cpu/gemm.hpp"
#include "tnas/backend/cpu/mixed.hpp"
#include "tnas/backend/cpu/norm.hpp"
#include "tnas/backend/cpu/pool.hpp"
#include "tnas/backend/cpu/xnor.hpp"
#include "tnas/backend/registry.hpp"
#include "tnas/core/allocator.hpp"
#include "tnas/core/tensor.hpp"
#include "tnas/ops/loss.hpp"

namespace tnas::testing {
namespace emulated_detail {

static_assert(backend::kKernelCount == 31,
              "backend::Kernels changed: give the emulated device (tests/emulated_device.hpp) the "
              "new kernels too");
inline constexpr size_t kHookCount = 9;
static_assert(sizeof(DeviceHooks) == kHookCount * sizeof(void*),
              "DeviceHooks changed: give the emulated device (tests/emulated_device.hpp) the new "
              "hooks too");

// ---- device memory -----------------------------------------------------------------------
// One reserved range of address space, handed out in whole pages: blocks are carved from its
// start (or reused from blocks returned at their exact size); every block is inaccessible
// except while a kernel or hook that was handed a pointer into it runs.
class Arena {
 public:
  static Arena& get() {
    static Arena* a = new Arena;  // never destroyed: device tensors may outlive statics
    return *a;
  }

  void* allocate(size_t bytes) {
    const size_t n = (std::max<size_t>(bytes, 1) + page_ - 1) / page_ * page_;
    std::lock_guard lock(mu_);
    char* p = nullptr;
    auto it = free_.find(n);
    if (it != free_.end() && !it->second.empty()) {
      p = it->second.back();
      it->second.pop_back();
    } else {
      const size_t used = used_.load(std::memory_order_relaxed);
      if (n > reserved_ - used) return nullptr;  // "out of device memory"
      p = base_ + used;
      used_.store(used + n, std::memory_order_release);
    }
    blocks_[p] = {bytes, n};
    protect(p, n, PROT_READ | PROT_WRITE);
    std::memset(p, 0xFF, n);  // NaN, so unwritten outputs show
    if (protect_) protect(p, n, PROT_NONE);
    return p;
  }
  void release(void* ptr) {
    if (!ptr) return;
    std::lock_guard lock(mu_);
    auto it = blocks_.find(static_cast<char*>(ptr));
    if (it == blocks_.end()) {
      std::fprintf(stderr, "tnas emulated device: freeing %p, which is no device block\n", ptr);
      std::abort();
    }
    ::madvise(it->first, it->second.pages, MADV_DONTNEED);  // the pages go back, the range stays
    free_[it->second.pages].push_back(it->first);
    blocks_.erase(it);
  }

  // Whether p points into the arena's range.
  bool contains(const void* p) const {
    const char* c = static_cast<const char*>(p);
    return base_ && c >= base_ && c < base_ + used_.load(std::memory_order_acquire);
  }
  // Whether [p, p + bytes) lies inside one live block (as requested, not as rounded to pages).
  bool inside_block(const void* p, size_t bytes) {
    const char* c = static_cast<const char*>(p);
    if (!contains(c)) return false;
    std::lock_guard lock(mu_);
    auto it = blocks_.upper_bound(const_cast<char*>(c));
    if (it == blocks_.begin()) return false;
    --it;
    const size_t size = it->second.bytes;
    return c >= it->first && bytes <= size && size_t(c - it->first) <= size - bytes;
  }
  bool protecting() const { return protect_; }

  // A kernel or hook opens, for its own duration, only the blocks its arguments were checked
  // against (dev() below): the cost of the protection changes is then proportional to the
  // memory the call works on, not to all device memory in use. open_block() makes the block
  // holding p accessible until the outermost DeviceAccess scope of this thread ends.
  void open_block(const void* p) {
    if (!protect_ || depth() == 0) return;
    char* c = const_cast<char*>(static_cast<const char*>(p));
    std::lock_guard lock(mu_);
    auto it = blocks_.upper_bound(c);
    if (it == blocks_.begin()) return;
    --it;
    for (auto& [start, pages] : opened())
      if (start == it->first) return;
    protect(it->first, it->second.pages, PROT_READ | PROT_WRITE);
    opened().emplace_back(it->first, it->second.pages);
  }
  void enter() { ++depth(); }
  void leave() {
    if (--depth() != 0) return;
    std::lock_guard lock(mu_);
    for (auto& [start, pages] : opened())
      if (blocks_.count(start)) protect(start, pages, PROT_NONE);
    opened().clear();
  }

 private:
  Arena() {
    page_ = size_t(::sysconf(_SC_PAGESIZE));
    const char* env = std::getenv("TNAS_EMULATED_DEVICE_PROTECT");
    protect_ = !(env && std::strcmp(env, "0") == 0);
    // Address space only (nothing is committed until a block is touched): a 16 GiB "GPU", or
    // less where the process may not reserve that much.
    for (size_t gib : {16, 4, 1}) {
      void* p =
          ::mmap(nullptr, gib << 30, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
      if (p != MAP_FAILED) {
        base_ = static_cast<char*>(p);
        reserved_ = gib << 30;
        break;
      }
    }
    if (!base_) {
      std::fprintf(stderr, "tnas emulated device: cannot reserve address space for the arena\n");
      std::abort();
    }
  }
  static void protect(void* p, size_t n, int prot) {
    if (n && ::mprotect(p, n, prot) != 0) {
      std::perror("tnas emulated device: mprotect");
      std::abort();
    }
  }

  char* base_ = nullptr;
  size_t reserved_ = 0;
  size_t page_ = 4096;
  std::atomic<size_t> used_{0};
  bool protect_ = true;
  std::mutex mu_;
  static int& depth() {
    thread_local int d = 0;
    return d;
  }
  static std::vector<std::pair<char*, size_t>>& opened() {
    thread_local std::vector<std::pair<char*, size_t>> v;
    return v;
  }
  struct Block {
    size_t bytes, pages;  // as requested (the allocator's size class), as mapped
  };
  std::map<char*, Block> blocks_;              // live blocks by start
  std::map<size_t, std::vector<char*>> free_;  // returned blocks by size
};

inline void* sys_alloc(size_t n) {
  return Arena::get().allocate(n);
}
inline void sys_free(void* p) {
  Arena::get().release(p);
}

// Makes device memory accessible for the scope of a kernel or hook.
struct DeviceAccess {
  DeviceAccess() { Arena::get().enter(); }
  ~DeviceAccess() { Arena::get().leave(); }
  DeviceAccess(const DeviceAccess&) = delete;
  DeviceAccess& operator=(const DeviceAccess&) = delete;
};

// ---- graph capture (core/graph.hpp) ---------------------------------------------------------
// While a capture is open, kernels and device-side hooks are recorded, with copies of their
// host arguments (which the caller may free on return), instead of run; a replay runs them in
// order, reading whatever the device memory holds then. A copy between host and device during
// a capture is an error, as on the real backend.
struct Graph {
  std::vector<std::function<void()>> work;
};
inline Graph*& open_capture() {
  static Graph* g = nullptr;
  return g;
}
// Runs f now, or records it in the open capture.
template <class F>
void enqueue(F&& f) {
  if (Graph* g = open_capture())
    g->work.emplace_back(std::forward<F>(f));
  else
    f();
}
// Enqueue<&kernel>::call: the kernel, run now or recorded (for kernels with no host arrays).
template <auto F>
struct Enqueue;
template <class... A, void (*F)(A...)>
struct Enqueue<F> {
  static void call(A... a) {
    enqueue([=] { F(a...); });
  }
};
// A copy of a host array of n elements (empty for null).
template <class T>
std::vector<T> host_copy(const T* p, int64_t n) {
  return p && n > 0 ? std::vector<T>(p, p + n) : std::vector<T>();
}
template <class T>
const T* ptr(const std::vector<T>& v) {
  return v.empty() ? nullptr : v.data();
}

inline void capture_begin(Device d) {
  TNAS_CHECK(d == Device::cuda, "emulated device: graph capture on ", d);
  TNAS_CHECK(!open_capture(), "emulated device: graph capture: already capturing");
  open_capture() = new Graph;
}
inline void* capture_end(Device, bool abort) {
  Graph* g = std::exchange(open_capture(), nullptr);
  TNAS_CHECK(g, "emulated device: capture_end without capture_begin");
  if (!abort) return g;
  delete g;
  return nullptr;
}
inline void graph_replay(void* g) {
  TNAS_CHECK(g, "emulated device: replay of a null graph");
  TNAS_CHECK(!open_capture(), "emulated device: a graph replayed during a capture");
  for (auto& w : static_cast<Graph*>(g)->work) w();
}
inline void graph_destroy(void* g) {
  delete static_cast<Graph*>(g);
}

// ---- host touching device memory: say so, then let the crash be reported as usual ---------
inline struct sigaction g_prev_segv;

inline void on_segv(int sig, siginfo_t* info, void*) {
  static volatile sig_atomic_t entered = 0;
  if (entered) {  // a second time: the previous handler has had its turn
    ::signal(sig, SIG_DFL);
    ::raise(sig);
    return;
  }
  entered = 1;
  const bool fault = info && info->si_code > 0;  // raised by the kernel, not sent
  if (fault && Arena::get().contains(info->si_addr)) {
    char msg[200] = "\ntnas emulated device: the host touched device memory at 0x";
    size_t len = std::strlen(msg);
    const auto a = reinterpret_cast<uintptr_t>(info->si_addr);
    for (int s = int(sizeof a * 8) - 4; s >= 0; s -= 4)
      msg[len++] = "0123456789abcdef"[(a >> s) & 15];
    const char tail[] =
        " outside a kernel or hook (a device tensor's data read or written "
        "on the host)\n";
    std::memcpy(msg + len, tail, sizeof tail - 1);
    len += sizeof tail - 1;
    (void)!::write(2, msg, len);
  }
  ::sigaction(SIGSEGV, &g_prev_segv, nullptr);
  if (!fault) ::raise(sig);
  // A fault returns here and the access runs again, into the previous handler.
}

inline void arm_fault_report() {
  struct sigaction cur {};
  ::sigaction(SIGSEGV, nullptr, &cur);
  if ((cur.sa_flags & SA_SIGINFO) && cur.sa_sigaction == on_segv) return;
  struct sigaction sa {};
  sa.sa_sigaction = on_segv;
  sa.sa_flags = SA_SIGINFO | SA_ONSTACK;
  sigemptyset(&sa.sa_mask);
  ::sigaction(SIGSEGV, &sa, &g_prev_segv);
}

// ---- argument checks -----------------------------------------------------------------------
// A device pointer of `bytes` bytes (nothing to check when bytes is 0).
inline void dev(const void* p, size_t bytes, const char* kernel, const char* what) {
  if (bytes == 0) return;
  TNAS_CHECK(p, "emulated device: ", kernel, ": ", what, " is null");
  TNAS_CHECK(Arena::get().inside_block(p, bytes), "emulated device: ", kernel, ": ", what, " (", p,
             ", ", bytes, " bytes) is not inside one device block",
             Arena::get().contains(p) ? "" : ": it is host memory");
  Arena::get().open_block(p);
}
// As dev(), for T elements.
template <class T>
void dev_n(const T* p, int64_t count, const char* kernel, const char* what) {
  TNAS_CHECK(count >= 0, "emulated device: ", kernel, ": negative size for ", what);
  dev(p, size_t(count) * sizeof(T), kernel, what);
}
inline void host(const void* p, const char* kernel, const char* what) {
  TNAS_CHECK(p && !Arena::get().contains(p), "emulated device: ", kernel, ": ", what,
             " must be host memory, got ", p);
}

}  // namespace emulated_detail
}  // namespace tnas::testing
