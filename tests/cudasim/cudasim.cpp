// cudasim's scheduler: kernel launches (checks, capture), the threads of a block as fibers,
// barriers and warp-collective operations, shared memory, and the PTX instructions of the XNOR
// kernel. The runtime API is in cuda_api.cpp, cuBLAS in cublas.cpp. See cudasim.hpp.
#include "cudasim.hpp"

#include <sys/mman.h>

#include <cstdio>
#include <cstdlib>
#include <exception>
#include <sstream>
#include <string>
#include <vector>

#include "include/cuda_runtime.h"
#include "internal.hpp"

// The kernels' vocabulary is not this file's: it names the members these macros stand for.
#undef threadIdx
#undef blockIdx
#undef blockDim
#undef gridDim

// ---- fibers ------------------------------------------------------------------------------------
// A context switch saves the callee-saved registers on the current stack and swaps stack
// pointers: a few ns on x86-64, against ~1 us for swapcontext (a sigprocmask system call).
// The floating-point control words are not switched: kernels do not change them.
#if defined(__x86_64__)
extern "C" void cudasim_switch(void** save_sp, void* new_sp);
asm(R"(
  .text
  .globl cudasim_switch
  .type cudasim_switch, @function
cudasim_switch:
  pushq %rbp
  pushq %rbx
  pushq %r12
  pushq %r13
  pushq %r14
  pushq %r15
  movq %rsp, (%rdi)
  movq %rsi, %rsp
  popq %r15
  popq %r14
  popq %r13
  popq %r12
  popq %rbx
  popq %rbp
  ret
  .size cudasim_switch, .-cudasim_switch
)");
#else
#include <ucontext.h>
#endif

namespace cudasim {
namespace {

constexpr size_t kStackBytes = size_t(256) << 10;
constexpr int kMaxThreads = 1024;

struct Copy {
  unsigned char* dst;
  const void* src;
  int bytes;
};

struct SimThread {
  ThreadState st;
  int linear = 0, warp = 0, lane = 0;
  enum State { ready, at_barrier, at_warp, done } state = ready;
  void* sp = nullptr;
  unsigned char* stack = nullptr;
#if !defined(__x86_64__)
  ucontext_t ctx;
#endif
  std::vector<Copy> open;                 // cp.async copies not yet committed
  std::vector<std::vector<Copy>> groups;  // committed groups, oldest first
};

struct WarpState {
  unsigned live = 0;     // lanes that exist and have not exited
  unsigned arrived = 0;  // lanes waiting in the current collective
  unsigned mask = 0;
  Collective op = nullptr;
  uint64_t gen = 0;
  unsigned char in[2][32][kSlot];
  unsigned char out[2][32][kSlot];
};

struct Block {
  std::vector<SimThread> threads;
  std::vector<WarpState> warps;
  int live = 0, arrived = 0;
};

// Scheduler state (one launch at a time; the backend is single-threaded on its stream).
struct Sched {
  Block block;
  SimThread* cur = nullptr;
  void* sched_sp = nullptr;
#if !defined(__x86_64__)
  ucontext_t sched_ctx;
#endif
  const LaunchOps* ops = nullptr;
  const void* state = nullptr;
  std::exception_ptr error;
  std::vector<unsigned char*> stacks;
  std::vector<unsigned char> smem;  // dynamic shared memory of the running block (cfg.smem bytes)
  std::vector<std::pair<void*, size_t>> shared;  // static __shared__ arrays
  unsigned launch_id = 0;                        // counts launches, for count_static_shared
  size_t static_bytes = 0;                       // static __shared__ bytes the launch uses
  Config cfg;                                    // the running launch's configuration
  bool reverse = false;
  bool in_kernel = false;
};
Sched& S() {
  static Sched s;
  return s;
}

ThreadState g_host_state;  // what threadIdx reads outside a kernel (never, in valid code)

void fiber_body() {
  Sched& s = S();
  try {
    s.ops->run(s.state);
  } catch (...) {
    if (!s.error) s.error = std::current_exception();
  }
}

void yield_to_scheduler();

void thread_exit(SimThread& t);

#if defined(__x86_64__)
[[noreturn]] void fiber_entry() {
  fiber_body();
  thread_exit(*S().cur);
  yield_to_scheduler();
  std::abort();  // a finished thread is never resumed
}
void start_fiber(SimThread& t) {
  // Stack, from the top: a zero return address (the entry function's caller), the entry
  // function (for `ret`) and six callee-saved registers. The tops are staggered by a few cache
  // lines per thread, so that the threads' hot stack frames do not all map to the same cache
  // sets (the stacks themselves are 256 KiB apart).
  const size_t color = size_t(t.linear % 61) * 320;
  auto* top = reinterpret_cast<uint64_t*>(t.stack + kStackBytes - color);
  *--top = 0;
  *--top = reinterpret_cast<uint64_t>(&fiber_entry);
  for (int i = 0; i < 6; ++i) *--top = 0;
  t.sp = top;
}
void switch_to(SimThread& t) {
  cudasim_switch(&S().sched_sp, t.sp);
}
void yield_to_scheduler() {
  Sched& s = S();
  cudasim_switch(&s.cur->sp, s.sched_sp);
}
#else
void fiber_entry_uc() {
  fiber_body();
  thread_exit(*S().cur);
  yield_to_scheduler();
}
void start_fiber(SimThread& t) {
  getcontext(&t.ctx);
  t.ctx.uc_stack.ss_sp = t.stack;
  t.ctx.uc_stack.ss_size = kStackBytes;
  t.ctx.uc_link = nullptr;
  makecontext(&t.ctx, fiber_entry_uc, 0);
}
void switch_to(SimThread& t) {
  swapcontext(&S().sched_ctx, &t.ctx);
}
void yield_to_scheduler() {
  Sched& s = S();
  swapcontext(&s.cur->ctx, &s.sched_ctx);
}
#endif

void ensure_stacks(size_t n) {
  Sched& s = S();
  while (s.stacks.size() < n) {
    void* p = mmap(nullptr, kStackBytes + 4096, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (p == MAP_FAILED) fail("cannot map a fiber stack");
    mprotect(p, 4096, PROT_NONE);  // guard page: an overflow faults instead of corrupting
    s.stacks.push_back(static_cast<unsigned char*>(p) + 4096);
  }
}

void perform(const Copy& c) {
  const int tid = S().cur->linear;
  race::note(c.src, size_t(c.bytes), race::Kind::read, tid, race::Tag::cp_async);
  race::note(c.dst, 16, race::Kind::write, tid, race::Tag::cp_async);
  std::memcpy(c.dst, c.src, size_t(c.bytes));
  std::memset(c.dst + c.bytes, 0, size_t(16 - c.bytes));
}

// Every thread of the block has arrived at the __syncthreads (or exited): all go on, into a
// new barrier interval.
void release_barrier(Block& b) {
  race::barrier();
  for (auto& t : b.threads)
    if (t.state == SimThread::at_barrier) t.state = SimThread::ready;
  b.arrived = 0;
}

void thread_exit(SimThread& t) {
  Sched& s = S();
  Block& b = s.block;
  // cp.async copies still in flight complete even if the thread never waits for them.
  for (auto& g : t.groups)
    for (auto& c : g) perform(c);
  for (auto& c : t.open) perform(c);
  t.groups.clear();
  t.open.clear();
  t.state = SimThread::done;
  --b.live;
  WarpState& w = b.warps[size_t(t.warp)];
  w.live &= ~(1u << t.lane);
  if (w.arrived && (w.mask >> t.lane & 1) && !s.error) {
    std::ostringstream os;
    os << "thread " << t.linear << " (warp " << t.warp << ", lane " << t.lane
       << ") exited while lanes of its warp wait for it in a warp-collective operation (mask 0x"
       << std::hex << w.mask << ")";
    s.error = std::make_exception_ptr(tnas::Error("cudasim: " + os.str()));
  }
  if (b.arrived > 0 && b.arrived == b.live) release_barrier(b);  // exited threads count
}

std::string describe_deadlock(const Block& b) {
  std::ostringstream os;
  int bar = 0, warp = 0;
  for (const auto& t : b.threads) {
    bar += t.state == SimThread::at_barrier;
    warp += t.state == SimThread::at_warp;
  }
  os << "deadlock in block (" << b.threads[0].st.blockIdx.x << ", " << b.threads[0].st.blockIdx.y
     << ", " << b.threads[0].st.blockIdx.z << "): " << bar << " threads wait at __syncthreads, "
     << warp << " in a warp-collective operation, " << b.live << " alive";
  return os.str();
}

// CUDASIM_STATS=1: counts, printed every 16,384 launches and at exit.
struct Stats {
  uint64_t launches = 0, blocks = 0, threads = 0, switches = 0;
  bool on = std::getenv("CUDASIM_STATS") != nullptr;
  void print() const {
    std::fprintf(stderr,
                 "cudasim: %llu launches, %llu blocks, %llu threads, %llu thread switches\n",
                 (unsigned long long)launches, (unsigned long long)blocks,
                 (unsigned long long)threads, (unsigned long long)switches);
    if (race::g_enabled)
      std::fprintf(stderr,
                   "cudasim: racecheck: %llu accesses checked, %llu pages (4 KiB) of device "
                   "memory shadowed\n",
                   (unsigned long long)race::g_checked, (unsigned long long)race::g_pages);
  }
  ~Stats() {
    if (on) print();
  }
};
Stats g_stats;

void run_grid(const Config& c) {
  Sched& s = S();
  if ((++g_stats.launches & 0x3fff) == 0 && g_stats.on) g_stats.print();
  const int nt = int(c.block.x * c.block.y * c.block.z);
  ensure_stacks(size_t(nt));
  Block& b = s.block;
  b.threads.resize(size_t(nt));
  b.warps.resize(size_t((nt + 31) / 32));
  s.smem.assign(c.smem + 16, 0);
  ++s.launch_id;
  s.static_bytes = 0;
  s.cfg = c;
  s.error = nullptr;
  s.in_kernel = true;
  race::launch_begin(s.smem.data(), c.smem, s.smem.size() - c.smem, c);
  prof::launch_begin(c);
  struct Done {
    ~Done() {
      S().in_kernel = false;
      race::running(-1);
      race::launch_end();
      prof::launch_end();
    }
  } done;
  for (unsigned bz = 0; bz < c.grid.z; ++bz)
    for (unsigned by = 0; by < c.grid.y; ++by)
      for (unsigned bx = 0; bx < c.grid.x; ++bx) {
        // Shared memory starts every block as NaN bytes, as garbage would be on a device.
        std::memset(s.smem.data(), 0xff, s.smem.size());
        for (auto& [p, n] : s.shared) std::memset(p, 0xff, n);
        for (auto& w : b.warps) w.live = w.arrived = w.mask = 0, w.op = nullptr, w.gen = 0;
        for (int i = 0; i < nt; ++i) {
          SimThread& t = b.threads[size_t(i)];
          t.st.blockDim = c.block;
          t.st.gridDim = c.grid;
          t.st.blockIdx = {bx, by, bz};
          t.st.threadIdx = {unsigned(i) % c.block.x, (unsigned(i) / c.block.x) % c.block.y,
                            unsigned(i) / (c.block.x * c.block.y)};
          t.linear = i;
          t.warp = i / 32;
          t.lane = i % 32;
          t.state = SimThread::ready;
          t.open.clear();
          t.groups.clear();
          t.stack = s.stacks[size_t(i)];
          start_fiber(t);
          b.warps[size_t(t.warp)].live |= 1u << t.lane;
        }
        b.live = nt;
        b.arrived = 0;
        race::block_begin(bx, by, bz, b.warps.size());
        ++g_stats.blocks;
        g_stats.threads += uint64_t(nt);
        for (;;) {
          bool ran = false;
          for (int k = 0; k < nt; ++k) {
            SimThread& t = b.threads[size_t(s.reverse ? nt - 1 - k : k)];
            if (t.state != SimThread::ready) continue;
            s.cur = &t;
            ++g_stats.switches;
            race::running(t.linear, t.stack, kStackBytes);
            switch_to(t);
            race::running(-1);
            s.cur = nullptr;
            ran = true;
            if (s.error) std::rethrow_exception(s.error);
          }
          if (b.live == 0) break;
          if (!ran) fail(describe_deadlock(b));
        }
        prof::block_end();
        race::block_end();
      }
}

}  // namespace

ThreadState& cur() {
  Sched& s = S();
  return s.cur ? s.cur->st : g_host_state;
}
uint3 thread_idx() {
  return cur().threadIdx;
}
uint3 block_idx() {
  return cur().blockIdx;
}
dim3 block_dim() {
  return cur().blockDim;
}
dim3 grid_dim() {
  return cur().gridDim;
}

// ---- launches ----------------------------------------------------------------------------------
namespace {
struct Captured {
  const LaunchOps* ops;
  void* state;
  Config cfg;
};
void run_launch(const LaunchOps& ops, const void* state, const Config& c) {
  Sched& s = S();
  if (s.in_kernel) fail("a kernel launched from inside a kernel");
  s.ops = &ops;  // read by every fiber of the grid
  s.state = state;
  run_grid(c);
}
}  // namespace

void launch(const void* fn, const Config& c, const void* const* pointers, int npointers,
            const LaunchOps& ops, const void* state) {
  const uint64_t nt = uint64_t(c.block.x) * c.block.y * c.block.z;
  if (c.block.x == 0 || c.block.y == 0 || c.block.z == 0 || nt > uint64_t(kMaxThreads) ||
      c.block.z > 64 || c.grid.x == 0 || c.grid.y == 0 || c.grid.z == 0 || c.grid.x > 0x7fffffffu ||
      c.grid.y > max_grid_yz() || c.grid.z > max_grid_yz()) {
    if (std::getenv("CUDASIM_VERBOSE"))
      std::fprintf(stderr, "cudasim: invalid launch configuration: grid %ux%ux%u, block %ux%ux%u\n",
                   c.grid.x, c.grid.y, c.grid.z, c.block.x, c.block.y, c.block.z);
    record(cudaErrorInvalidConfiguration);
    return;
  }
  const size_t limit = smem_limit(fn);
  Config cl = c;
  cl.smem_attr = limit;
  cl.fn = fn;
  if (c.smem > limit) {
    if (std::getenv("CUDASIM_VERBOSE"))
      std::fprintf(stderr, "cudasim: %zu bytes of dynamic shared memory, the function allows %zu\n",
                   c.smem, limit);
    record(cudaErrorInvalidValue);
    return;
  }
  for (int i = 0; i < npointers; ++i)
    if (pointers[i] && !in_device_memory(pointers[i])) {
      std::ostringstream os;
      os << "kernel argument " << i << " (pointer " << pointers[i]
         << ") is not device memory (grid " << c.grid.x << "x" << c.grid.y << "x" << c.grid.z
         << ", block " << c.block.x << "x" << c.block.y << "x" << c.block.z << ")";
      fail(os.str());
    }
  CUstream_st& st = stream_of(c.stream);
  if (st.capturing) {
    auto* cap = new Captured{&ops, ops.copy(state), cl};
    st.capture->ops.push_back({[](void* p) {
                                 auto* k = static_cast<Captured*>(p);
                                 run_launch(*k->ops, k->state, k->cfg);
                               },
                               cap,
                               [](void* p) {
                                 auto* k = static_cast<Captured*>(p);
                                 k->ops->destroy(k->state);
                                 delete k;
                               }});
    return;
  }
  run_launch(ops, state, cl);
}

// ---- shared memory and synchronisation ---------------------------------------------------------
unsigned char* dynamic_shared_base() {
  return S().smem.data();
}
void register_shared(void* p, size_t bytes) {
  S().shared.emplace_back(p, bytes);
  std::memset(p, 0xff, bytes);
}
void count_static_shared(unsigned& seen, void* p, size_t bytes) {
  Sched& s = S();
  if (!s.cur || seen == s.launch_id) return;
  seen = s.launch_id;
  s.static_bytes += bytes;
  race::use_static(p, bytes);
  // A device counts static and dynamic shared memory together: within 48 KiB, or, once
  // cudaFuncSetAttribute raised the dynamic limit, static plus that limit within the opt-in.
  const Config& c = s.cfg;
  const bool raised = c.smem_attr > kDefaultSmem;
  if (raised ? s.static_bytes + c.smem_attr > kOptinSmem : s.static_bytes + c.smem > kDefaultSmem) {
    std::ostringstream os;
    os << "a launch with " << s.static_bytes << " bytes of static __shared__ arrays and " << c.smem
       << " bytes of dynamic shared memory (limit " << c.smem_attr << ") needs more than the "
       << (raised ? kOptinSmem : kDefaultSmem) << " bytes a block may have"
       << (raised ? "" : " without opting in (cudaFuncSetAttribute)");
    fail(os.str());
  }
}

void syncthreads() {
  Sched& s = S();
  if (!s.cur) fail("__syncthreads outside a kernel");
  Block& b = s.block;
  if (++b.arrived == b.live) {
    release_barrier(b);
    return;
  }
  s.cur->state = SimThread::at_barrier;
  yield_to_scheduler();
}

void warp_collective(unsigned mask, Collective op, const void* in, size_t in_bytes, void* out,
                     size_t out_bytes) {
  Sched& s = S();
  if (!s.cur) fail("a warp-collective operation outside a kernel");
  SimThread& t = *s.cur;
  WarpState& w = s.block.warps[size_t(t.warp)];
  if (!(mask >> t.lane & 1)) {
    std::ostringstream os;
    os << "lane " << t.lane << " of warp " << t.warp << " calls a warp-collective operation "
       << "with mask 0x" << std::hex << mask << ", which leaves it out";
    fail(os.str());
  }
  if (mask & ~w.live) {
    std::ostringstream os;
    os << "warp " << t.warp << ": a warp-collective operation names lanes 0x" << std::hex
       << (mask & ~w.live) << " that have exited or do not exist (mask 0x" << mask << ")";
    fail(os.str());
  }
  if (w.arrived == 0) {
    w.mask = mask;
    w.op = op;
  } else if (w.mask != mask || w.op != op) {
    std::ostringstream os;
    os << "warp " << t.warp << ": lanes meet at different warp-collective operations (masks 0x"
       << std::hex << w.mask << " and 0x" << mask << ")";
    fail(os.str());
  }
  const int buf = int(w.gen & 1);
  std::memcpy(w.in[buf][t.lane], in, in_bytes);
  w.arrived |= 1u << t.lane;
  if (w.arrived == mask) {
    internal_begin();  // the operation (in the kernel's file) works on the simulator's buffers
    op(w.in[buf], w.out[buf], mask);
    internal_end();
    // (every live lane of a partial or thinned warp counts as the whole warp)
    race::collective(t.warp, mask == w.live ? 0xffffffffu : mask);
    ++w.gen;
    w.arrived = 0;
    for (int l = 0; l < 32; ++l)
      if ((mask >> l & 1) && l != t.lane) {
        SimThread& o = s.block.threads[size_t(t.warp * 32 + l)];
        if (o.state == SimThread::at_warp) o.state = SimThread::ready;
      }
  } else {
    t.state = SimThread::at_warp;
    yield_to_scheduler();
  }
  std::memcpy(out, w.out[buf][t.lane], out_bytes);
}

void misaligned_vector(const char* file, int line, const void* p, size_t align) {
  const ThreadState& t = cur();
  std::ostringstream os;
  os << "thread (" << t.threadIdx.x << ", " << t.threadIdx.y << ", " << t.threadIdx.z
     << ") of block (" << t.blockIdx.x << ", " << t.blockIdx.y << ", " << t.blockIdx.z
     << ") casts address " << p << " to a pointer to a " << align
     << "-byte vector (float4, uint4, int4) it is not aligned for, at " << file << ":" << line
     << ": a GPU faults (misaligned address) when it loads or stores through it";
  fail(os.str());
}
void trap() {
  fail("__trap() in a kernel");
}
void launch_bounds(int max_threads, int min_blocks) {
  const dim3& b = cur().blockDim;
  const uint64_t nt = uint64_t(b.x) * b.y * b.z;
  if (max_threads < 1 || min_blocks < 0) fail("__launch_bounds__ with bad arguments");
  if (nt > uint64_t(max_threads)) {
    std::ostringstream os;
    os << "a block of " << nt << " threads for a kernel declared __launch_bounds__(" << max_threads
       << "): a device refuses the launch";
    fail(os.str());
  }
}

// ---- PTX ---------------------------------------------------------------------------------------
uint32_t cvta_shared(const void* p) {
  Sched& s = S();
  const auto* q = static_cast<const unsigned char*>(p);
  if (q < s.smem.data() || q > s.smem.data() + s.cfg.smem)
    fail("__cvta_generic_to_shared of a pointer outside the block's dynamic shared memory");
  return uint32_t(q - s.smem.data());
}
namespace {
unsigned char* smem_at(uint32_t addr, size_t bytes, const char* what) {
  Sched& s = S();
  if (size_t(addr) + bytes > s.cfg.smem || addr % 16) {
    std::ostringstream os;
    os << what << ": shared address " << addr << " (+" << bytes << " bytes) is misaligned or "
       << "outside the " << s.cfg.smem << " bytes of dynamic shared memory";
    fail(os.str());
  }
  return s.smem.data() + addr;
}
}  // namespace
void cp_async16(uint32_t smem_addr, const void* gmem, int src_bytes) {
  Sched& s = S();
  if (!s.cur) fail("cp.async outside a kernel");
  if (src_bytes < 0 || src_bytes > 16) fail("cp.async: src-size outside [0, 16]");
  if (src_bytes > 0 && !is_device(gmem, size_t(src_bytes)))
    fail("cp.async: the global source is not device memory");
  if (reinterpret_cast<uintptr_t>(gmem) % 16)  // checked for src-size 0 too: it is an address
    fail("cp.async: the global source is not 16-byte aligned");
  // The copy lands when a cp.async.wait_group lets it (or at thread exit), not now.
  s.cur->open.push_back({smem_at(smem_addr, 16, "cp.async"), gmem, src_bytes});
}
void cp_async_commit() {
  Sched& s = S();
  s.cur->groups.push_back(std::move(s.cur->open));
  s.cur->open.clear();
}
void cp_async_wait(int n) {
  Sched& s = S();
  auto& g = s.cur->groups;
  const size_t done = g.size() > size_t(n) ? g.size() - size_t(n) : 0;
  for (size_t i = 0; i < done; ++i)
    for (auto& c : g[i]) perform(c);
  g.erase(g.begin(), g.begin() + std::ptrdiff_t(done));
}
namespace {
void ldmatrix_op(const unsigned char (*in)[kSlot], unsigned char (*out)[kSlot], unsigned) {
  // x4: lanes 8i..8i+7 give the row addresses of matrix i (8 rows of 16 bytes); lane l gets,
  // of every matrix, the 32-bit word (l & 3) of row (l >> 2).
  const int warp = S().cur->warp;
  for (int l = 0; l < 32; ++l) {  // what the race checker sees: lane l reads its row
    uint32_t row;
    std::memcpy(&row, in[l], 4);
    race::note(smem_at(row, 16, "ldmatrix"), 16, race::Kind::read, warp * 32 + l,
               race::Tag::ldmatrix);
  }
  for (int l = 0; l < 32; ++l)
    for (int i = 0; i < 4; ++i) {
      uint32_t row;
      std::memcpy(&row, in[i * 8 + (l >> 2)], 4);
      const unsigned char* p = smem_at(row, 16, "ldmatrix");
      std::memcpy(out[l] + 4 * i, p + 4 * (l & 3), 4);
    }
}
void mma_b1_op(const unsigned char (*in)[kSlot], unsigned char (*out)[kSlot], unsigned) {
  // m16n8k256, A row-major 16 x 256 bits, B column-major 256 x 8, C/D 16 x 8 s32. Lane l
  // (group g = l >> 2, t = l & 3): a0 = A[g][32t, +32), a1 = A[g + 8][32t, +32),
  // a2 = A[g][128 + 32t, +32), a3 = A[g + 8][128 + 32t, +32); b0 = B[32t, +32)[g],
  // b1 = B[128 + 32t, +32)[g]; c0, c1 = C[g][2t, 2t + 1], c2, c3 = C[g + 8][2t, 2t + 1].
  uint32_t A[16][8], B[8][8];
  int C[16][8];
  for (int l = 0; l < 32; ++l) {
    uint32_t v[10];
    std::memcpy(v, in[l], sizeof v);
    const int g = l >> 2, t = l & 3;
    A[g][t] = v[0];
    A[g + 8][t] = v[1];
    A[g][4 + t] = v[2];
    A[g + 8][4 + t] = v[3];
    B[g][t] = v[4];
    B[g][4 + t] = v[5];
    int c[4];
    std::memcpy(c, v + 6, sizeof c);
    C[g][2 * t] = c[0];
    C[g][2 * t + 1] = c[1];
    C[g + 8][2 * t] = c[2];
    C[g + 8][2 * t + 1] = c[3];
  }
  for (int r = 0; r < 16; ++r)
    for (int n = 0; n < 8; ++n)
      for (int k = 0; k < 8; ++k) C[r][n] += __builtin_popcount(A[r][k] & B[n][k]);
  for (int l = 0; l < 32; ++l) {
    const int g = l >> 2, t = l & 3;
    const int d[4] = {C[g][2 * t], C[g][2 * t + 1], C[g + 8][2 * t], C[g + 8][2 * t + 1]};
    std::memcpy(out[l], d, sizeof d);
  }
}
}  // namespace
void ldmatrix_x4(uint32_t addr, uint32_t& r0, uint32_t& r1, uint32_t& r2, uint32_t& r3) {
  uint32_t r[4];
  warp_collective(0xffffffffu, ldmatrix_op, &addr, sizeof addr, r, sizeof r);
  r0 = r[0], r1 = r[1], r2 = r[2], r3 = r[3];
}
void mma_b1_and_popc(int (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  uint32_t v[10] = {a[0], a[1], a[2], a[3], b0, b1};
  std::memcpy(v + 6, c, sizeof c);
  warp_collective(0xffffffffu, mma_b1_op, v, sizeof v, c, sizeof c);
}

namespace {
// CUDASIM_ORDER=reverse runs the threads of every barrier interval in reverse order.
const bool g_order_init = [] {
  const char* e = std::getenv("CUDASIM_ORDER");
  S().reverse = e && std::string(e) == "reverse";
  return true;
}();
}  // namespace

}  // namespace cudasim
