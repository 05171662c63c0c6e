// cudasim's race checker: data races between the threads of a launch, found on every machine
// the way compute-sanitizer's racecheck finds shared-memory hazards on a device (and, beyond
// it, races in device memory).
//
// How the accesses are seen: the race-checking build of the simulator (tnas_cudasim_race)
// compiles the translated kernels with GCC's (or Clang's) ThreadSanitizer instrumentation but
// links no ThreadSanitizer runtime. The compiler then calls __tsan_read4(p), __tsan_write16(p),
// ... before every load and store; tsan_hooks.cpp defines those functions and passes them here.
// (The Linux kernel's KCSAN uses the same instrumentation with its own runtime.) The accesses
// the compiler does not see are reported by the simulator itself: cp.async copies as they land,
// ldmatrix reads, and atomicAdd, whose plain read-modify-write is marked atomic.
//
// The rule: two accesses to the same byte, at least one a write (an atomic counts as a write,
// but two atomics do not conflict), are a data race
//  - by two threads of a block, in shared or device memory, unless a __syncthreads lies between
//    them, or both are lanes of one warp and a warp-collective operation (__shfl_*_sync,
//    __ballot_sync, __syncwarp, ldmatrix, mma) that both took part in lies between them;
//  - by threads of two blocks of one launch, in device memory (blocks are never ordered).
// Accesses in different launches are ordered (one stream). Every byte's shadow keeps the last
// write and the reads since it (one reader, or "several" and their warp and block), with the
// barrier interval (an "epoch" counted over the whole run, so no shadow is ever cleared), the
// launch and block, and the warp's collective count at the access. A thread's own stack is not
// checked.
//
// A race is reported as a tnas::Error when its block ends: the first one found, with both
// accesses, the threads that made them and where in the source (addr2line, from binutils,
// turns the code addresses into file:line when it is installed), and how many more there were.
//
// Since every access of a kernel passes here, the build also does part of compute-sanitizer's
// memcheck: an access outside the block's shared memory, the thread's stack, every device
// allocation and the loaded program's own segments (a static table) is out of bounds, one that
// runs past the end of the dynamic shared memory too, and one the compiler took as aligned to
// its size but is not is misaligned (a GPU faults on both). The simulator's own code that runs
// in the kernels' files (copying a launch's arguments, a warp operation's buffers) is left out
// (internal_begin / internal_end), and threadIdx and friends are values, not memory.
#include <dlfcn.h>
#include <link.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <sstream>
#include <string>
#include <unordered_map>
#include <vector>

#include "internal.hpp"

namespace cudasim::race {

bool g_enabled = false;
bool g_active = false;
bool g_device = true;  // device memory too (CUDASIM_RACECHECK=shared: shared memory only)
bool g_check = true;
uint64_t g_checked = 0;
uint64_t g_pages = 0;

namespace {

constexpr int32_t kNone = -1, kMany = -2;

// One byte's accesses: the last write, and the reads since it.
struct Cell {
  uint64_t w_epoch = 0, r_epoch = 0;  // barrier interval (unique over the run)
  const void* w_pc = nullptr;
  const void* r_pc = nullptr;
  uint32_t w_launch = 0, r_launch = 0;       // global memory: the launch ...
  int32_t w_block = kNone, r_block = kNone;  // ... and its block (r: kMany for several)
  int32_t w_tid = kNone, r_tid = kNone;      // thread in the block (r: kMany for several)
  uint32_t w_seq = 0, r_seq = 0;             // the warp's collective count at the access
  int32_t r_warp = kNone;  // the readers' warp; kMany when they are in different warps
  bool w_atomic = false;
};

struct Region {
  unsigned char* lo = nullptr;
  size_t n = 0, slack = 0;  // size, and the simulator's bytes after it (not the kernel's)
  std::vector<Cell> cells;
  std::string name;
};

// A warp's completed collective operations in the current barrier interval: (count, lanes).
struct WarpSync {
  uint32_t seq = 0;
  std::vector<std::pair<uint32_t, unsigned>> done;
};

// The tags that stand for the code address of an access the simulator reports itself.
const char kLdmatrix = 0, kCpAsync = 0;

// Global (device) memory's shadow: pages of cells, made when a kernel first touches them, up
// to kMaxPages (about 2.3 GiB of shadow for 32 MiB of device memory); device memory past that
// is not checked, and a line on stderr says so.
constexpr int kPageBits = 12;
constexpr size_t kPage = size_t(1) << kPageBits;
constexpr uint64_t kMaxPages = 8192;

struct State {
  Region dynamic{.name = "the dynamic shared memory"};
  std::vector<Region> statics;  // every static __shared__ array seen, kept across launches
  std::vector<Region*> active;  // the running launch's shared memory
  std::unordered_map<uintptr_t, std::unique_ptr<Cell[]>> pages;
  uintptr_t last_page = ~uintptr_t(0);
  Cell* last_cells = nullptr;
  uintptr_t dev_lo = 0, dev_hi = 0;         // the device allocation last accessed
  const unsigned char* stack_lo = nullptr;  // the running thread's stack
  const unsigned char* stack_hi = nullptr;
  uint64_t epoch = 1;
  uint32_t launch = 0;
  int32_t block = 0;  // linear index of the running block
  std::vector<WarpSync> warps;
  int tid = kNone;   // the running thread (linear index in its block)
  int internal = 0;  // inside an atomic's own read and write, or the simulator's code
  unsigned bx = 0, by = 0, bz = 0;
  Config cfg;
  uint64_t hazards = 0;  // accesses that found a hazard, in the running block
  bool hit = false;      // the access being checked found one
  std::string first;
};
State& R() {
  static State s;
  return s;
}

// Whether a warp-collective operation that both lane a and lane b took part in completed after
// the access made at collective count `seq` (all lanes of the warp, if b is kMany).
bool warp_ordered(int warp, uint32_t seq, int lane_a, int lane_b) {
  const WarpSync& w = R().warps[size_t(warp)];
  for (auto it = w.done.rbegin(); it != w.done.rend() && it->first > seq; ++it) {
    const unsigned m = it->second;
    if ((m >> lane_a & 1) && (lane_b == kMany ? m == 0xffffffffu : (m >> lane_b & 1) != 0))
      return true;
  }
  return false;
}

std::string site(const void* pc) {
  if (pc == &kLdmatrix) return "ldmatrix";
  if (pc == &kCpAsync) return "a cp.async copy";
  if (!pc) return "?";
  // pc is a return address: the access is the call just before it.
  std::string function, location;
  if (symbolize(static_cast<const char*>(pc) - 1, function, location) && !location.empty() &&
      location[0] != '?')
    return location + " (" + function + ")";
  std::ostringstream os;
  os << pc;
  return os.str();
}

std::string who(int32_t block, int32_t tid) {
  const State& s = R();
  std::ostringstream os;
  if (block == kMany) return "threads of several blocks";
  if (tid == kMany) return "several threads";
  os << "thread " << tid << " (warp " << tid / 32 << ", lane " << tid % 32 << ")";
  if (block != s.block) {
    const int gx = int(s.cfg.grid.x), gy = int(s.cfg.grid.y);
    os << " of block (" << block % gx << ", " << block / gx % gy << ", " << block / (gx * gy)
       << ")";
  }
  return os.str();
}

// "block (x, y, z) of a launch of grid ..., block ...": where the running thread is.
std::string launch_text() {
  const State& s = R();
  std::ostringstream os;
  os << "block (" << s.bx << ", " << s.by << ", " << s.bz << ") of a launch of grid "
     << s.cfg.grid.x << "x" << s.cfg.grid.y << "x" << s.cfg.grid.z << ", block " << s.cfg.block.x
     << "x" << s.cfg.block.y << "x" << s.cfg.block.z;
  return os.str();
}

const char* did(Kind k) {
  return k == Kind::read ? "read" : k == Kind::write ? "wrote" : "updated (atomically)";
}

// A hazard on cell c (byte `off` of region r, or, with r null, the device byte at `addr`):
// the earlier access (block_a, tid_a, kind_a at pc_a) and the running thread's (k at pc).
void hazard(const char* kind, const Region* r, size_t off, const void* addr, int32_t block_a,
            int32_t tid_a, Kind kind_a, const void* pc_a, Kind k, const void* pc) {
  State& s = R();
  if (s.hit) return;
  s.hit = true;
  if (s.hazards) return;
  std::ostringstream os;
  os << "racecheck: " << kind << " hazard on ";
  if (r)
    os << "byte " << off << " of " << r->name;
  else
    os << "device memory (address " << addr << ")";
  os << ", " << launch_text() << ": " << who(block_a, tid_a) << " " << did(kind_a) << " it at "
     << site(pc_a) << ", then " << who(s.block, s.tid) << " " << did(k) << " it at " << site(pc);
  if (block_a == s.block)
    os << ", with no __syncthreads (or, within a warp, no warp-collective operation) between";
  else
    os << ", in the same launch (blocks are not ordered)";
  s.first = os.str();
}

// Checks the running thread's access k to cell c, then records it. `global`: device memory,
// where threads of other blocks of the launch conflict too.
void check(Cell& c, bool global, const Region* r, size_t off, const void* addr, Kind k,
           const void* pc) {
  State& s = R();
  const int tid = s.tid, warp = tid / 32, lane = tid % 32;
  const int32_t block = s.block;
  const uint32_t seq = s.warps[size_t(warp)].seq;
  const uint64_t e = s.epoch;
  const uint32_t L = s.launch;
  // The last write: in this barrier interval, by another thread and not ordered by their warp;
  // or (device memory) by another block of the launch.
  const bool w_same = c.w_epoch == e && c.w_tid != tid &&
                      !(c.w_tid / 32 == warp && warp_ordered(warp, c.w_seq, c.w_tid % 32, lane));
  const bool w_other = global && c.w_launch == L && c.w_block != block;
  if ((w_same || w_other) && !(k == Kind::atomic && c.w_atomic))
    hazard(k == Kind::read ? "read-after-write" : "write-after-write", r, off, addr, c.w_block,
           c.w_tid, c.w_atomic ? Kind::atomic : Kind::write, c.w_pc, k, pc);
  const bool r_fresh = c.r_epoch == e || (global && c.r_launch == L && c.r_block != block);
  if (k != Kind::read) {
    // The reads since: by another thread in this interval, not ordered by the warp; or by
    // another block of the launch.
    const bool r_same =
        c.r_epoch == e && c.r_block == block && c.r_tid != tid &&
        !(c.r_warp == warp &&
          warp_ordered(warp, c.r_seq, lane, c.r_tid == kMany ? kMany : c.r_tid % 32));
    const bool r_other = global && c.r_launch == L && c.r_block != block;
    if (r_same || r_other)
      hazard("write-after-read", r, off, addr, c.r_block, c.r_tid, Kind::read, c.r_pc, k, pc);
    c.w_epoch = e;
    c.w_launch = L;
    c.w_block = block;
    c.w_tid = tid;
    c.w_seq = seq;
    c.w_pc = pc;
    c.w_atomic = k == Kind::atomic;
    return;
  }
  if (!r_fresh) {  // the first read of this interval (and, in device memory, of the launch)
    c.r_epoch = e;
    c.r_launch = L;
    c.r_block = block;
    c.r_tid = tid;
    c.r_warp = warp;
  } else if (c.r_block != block) {  // device memory read by several blocks
    c.r_block = kMany;
    c.r_tid = kMany;
  } else if (c.r_epoch != e) {  // this block's reads of an earlier interval: ordered
    c.r_epoch = e;
    c.r_tid = tid;
    c.r_warp = warp;
  } else if (c.r_tid != tid) {
    c.r_tid = kMany;
    if (c.r_warp != warp) c.r_warp = kMany;
  }
  c.r_seq = seq;  // the latest read: a later write must be ordered after it
  c.r_pc = pc;
}

// The loaded images' segments (code, constants, static data): kernels may read them (a static
// table), and nothing else outside device, shared and stack memory.
bool in_image(uintptr_t a) {
  static const std::vector<std::pair<uintptr_t, uintptr_t>> images = [] {
    std::vector<std::pair<uintptr_t, uintptr_t>> v;
    dl_iterate_phdr(
        [](dl_phdr_info* info, size_t, void* out) {
          auto& r = *static_cast<std::vector<std::pair<uintptr_t, uintptr_t>>*>(out);
          for (int i = 0; i < info->dlpi_phnum; ++i) {
            const auto& ph = info->dlpi_phdr[i];
            if (ph.p_type == PT_LOAD)
              r.emplace_back(info->dlpi_addr + ph.p_vaddr,
                             info->dlpi_addr + ph.p_vaddr + ph.p_memsz);
          }
          return 0;
        },
        &v);
    return v;
  }();
  for (const auto& [lo, hi] : images)
    if (a >= lo && a < hi) return true;
  return false;
}

// An access that a GPU would refuse (memcheck's errors, not a race): reported like a hazard.
void fault(Kind k, size_t n, const void* p, const void* pc, const char* why) {
  State& s = R();
  if (s.hazards++) return;
  std::ostringstream os;
  os << "memcheck: " << who(s.block, s.tid) << " of " << launch_text() << " "
     << (k == Kind::read ? "read" : "wrote") << " " << n << " bytes at address " << p << ", which "
     << why << ", at " << site(pc);
  s.first = os.str();
}

// A misaligned access: an error like the others, and said at once, since the host may not
// survive it (a 16-byte vector type is loaded with an instruction that faults there too).
void misaligned(Kind k, size_t n, const void* p, const void* pc) {
  State& s = R();
  const bool first = s.hazards == 0;
  fault(k, n, p, pc, "is not aligned to its size: a GPU faults (misaligned address)");
  if (first && n == 16) std::fprintf(stderr, "cudasim: %s\n", s.first.c_str());
}

Cell* global_cells(uintptr_t page) {
  State& s = R();
  if (page == s.last_page) return s.last_cells;
  auto it = s.pages.find(page);
  if (it == s.pages.end()) {
    if (g_pages == kMaxPages) {
      static const bool said = (std::fprintf(stderr,
                                             "cudasim: racecheck: %llu pages of device memory "
                                             "have a shadow; the rest is not checked\n",
                                             (unsigned long long)kMaxPages),
                                true);
      (void)said;
      return nullptr;
    }
    it = s.pages.emplace(page, std::make_unique<Cell[]>(kPage)).first;
    ++g_pages;
  }
  auto& p = it->second;
  s.last_page = page;
  s.last_cells = p.get();
  return s.last_cells;
}

}  // namespace

void enable() {
  const char* e = std::getenv("CUDASIM_RACECHECK");
  g_enabled = !(e && std::string(e) == "0");
  g_device = !(e && std::string(e) == "shared");
  if (g_enabled) prof::from_env();
}

void launch_begin(unsigned char* dynamic, size_t bytes, size_t slack, const Config& c) {
  if (!g_enabled) return;
  State& s = R();
  s.active.clear();
  s.dynamic.lo = dynamic;
  s.dynamic.n = bytes;
  s.dynamic.slack = slack;
  if (s.dynamic.cells.size() < bytes) s.dynamic.cells.resize(bytes);
  s.active.push_back(&s.dynamic);
  s.cfg = c;
  s.internal = 0;  // (a launch that failed may have left one open)
  ++s.launch;
  s.dev_lo = s.dev_hi = 0;  // allocations may have changed since the last launch
  s.hazards = 0;
  s.first.clear();
}
void use_static(void* p, size_t bytes) {
  if (!g_enabled) return;
  State& s = R();
  auto* q = static_cast<unsigned char*>(p);
  auto it =
      std::find_if(s.statics.begin(), s.statics.end(), [&](const Region& r) { return r.lo == q; });
  if (it == s.statics.end()) {
    s.statics.reserve(64);  // `active` points into it: no reallocation while a launch runs
    if (s.statics.size() == s.statics.capacity()) fail("racecheck: too many __shared__ arrays");
    Region r;
    r.lo = q;
    r.n = bytes;
    r.cells.resize(bytes);
    std::ostringstream os;
    os << "a static __shared__ array of " << bytes << " bytes";
    r.name = os.str();
    s.statics.push_back(std::move(r));
    it = s.statics.end() - 1;
  }
  s.active.push_back(&*it);
}
void block_begin(unsigned bx, unsigned by, unsigned bz, size_t warps) {
  if (!g_enabled) return;
  State& s = R();
  s.bx = bx, s.by = by, s.bz = bz;
  s.block = int32_t(bx + s.cfg.grid.x * (by + s.cfg.grid.y * bz));
  s.warps.resize(warps);
  barrier();
}
void barrier() {
  if (!g_enabled) return;
  State& s = R();
  ++s.epoch;
  for (auto& w : s.warps) w.done.clear();
}
void collective(int warp, unsigned mask) {
  if (!g_enabled) return;
  WarpSync& w = R().warps[size_t(warp)];
  w.done.emplace_back(++w.seq, mask);
}
void running(int tid, const void* stack, size_t stack_bytes) {
  State& s = R();
  s.tid = tid;
  s.stack_lo = static_cast<const unsigned char*>(stack);
  s.stack_hi = s.stack_lo + stack_bytes;
  g_active = g_enabled && tid >= 0;
}
void block_end() {
  State& s = R();
  if (!g_enabled || !s.hazards) return;
  std::string what = s.first;
  if (s.hazards > 1)
    what += " (and " + std::to_string(s.hazards - 1) + " more accesses with an error in the block)";
  s.hazards = 0;
  s.first.clear();
  fail(what);
}
void launch_end() {
  if (!g_enabled) return;
  R().active.clear();
}

void access(const void* p, size_t n, Kind k, const void* pc, bool aligned) {
  State& s = R();
  if (s.internal || s.tid < 0) return;
  const auto* q = static_cast<const unsigned char*>(p);
  if (q >= s.stack_lo && q < s.stack_hi) return;  // the thread's own locals
  const auto a = reinterpret_cast<uintptr_t>(q);
  if (aligned && a % n) {
    misaligned(k, n, q, pc);
    return;
  }
  for (Region* r : s.active)
    if (q >= r->lo && q < r->lo + r->n + r->slack) {
      const size_t off = size_t(q - r->lo);
      if (off + n > r->n) {
        fault(k, n, q, pc, ("runs past the end of " + r->name).c_str());
        return;
      }
      s.hit = false;
      if (prof::g_on) prof::access(q, n, k != Kind::read, true, pc, s.tid);
      if (!g_check) return;
      ++g_checked;
      for (size_t i = off; i < off + n; ++i) check(r->cells[i], false, r, i, nullptr, k, pc);
      s.hazards += s.hit;
      return;
    }
  if (!g_device) return;
  // Device memory: the allocation last accessed, or look it up.
  if (a < s.dev_lo || a + n > s.dev_hi) {
    uintptr_t lo;
    size_t bytes;
    if (!device_allocation(q, lo, bytes) || a + n > lo + bytes) {
      if (!in_image(a)) fault(k, n, q, pc, "is outside every device allocation");
      return;
    }
    s.dev_lo = lo, s.dev_hi = lo + bytes;
  }
  s.hit = false;
  if (prof::g_on) prof::access(q, n, k != Kind::read, false, pc, s.tid);
  if (!g_check) return;
  ++g_checked;
  for (uintptr_t b = a; b < a + n; ++b) {
    Cell* cells = global_cells(b >> kPageBits);
    if (!cells) break;
    check(cells[b & (kPage - 1)], true, nullptr, 0, reinterpret_cast<const void*>(b), k, pc);
  }
  s.hazards += s.hit;
}
void note(const void* p, size_t n, Kind k, int tid, Tag tag) {
  if (!g_enabled) return;
  State& s = R();
  // (ldmatrix's reads are noted from inside its warp operation, which is internal code)
  const int saved = s.tid, saved_internal = s.internal;
  s.tid = tid;
  s.internal = 0;
  access(p, n, k, tag == Tag::ldmatrix ? static_cast<const void*>(&kLdmatrix) : &kCpAsync);
  s.tid = saved;
  s.internal = saved_internal;
}

}  // namespace cudasim::race

namespace cudasim {
bool symbolize(const void* code, std::string& function, std::string& location) {
  Dl_info info;
  if (!code || !dladdr(code, &info) || !info.dli_fbase) return false;
  const uintptr_t off =
      reinterpret_cast<uintptr_t>(code) - reinterpret_cast<uintptr_t>(info.dli_fbase);
  char exe[4096];
  std::string file = info.dli_fname ? info.dli_fname : "";
  const ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
  if (n > 0 && (file.empty() || file.find('/') == std::string::npos)) file.assign(exe, size_t(n));
  std::ostringstream cmd;
  cmd << "addr2line -C -f -e '" << file << "' 0x" << std::hex << off << " 2>/dev/null";
  FILE* f = popen(cmd.str().c_str(), "r");
  if (!f) return false;
  char fn[4096] = {}, loc[1024] = {};
  const bool ok = std::fgets(fn, sizeof fn, f) && std::fgets(loc, sizeof loc, f);
  pclose(f);
  if (!ok || fn[0] == '?') return false;
  function = fn;
  location = loc;
  function.erase(function.find_last_not_of('\n') + 1);
  location.erase(location.find_last_not_of('\n') + 1);
  return true;
}

void atomic_begin(const void* p, size_t n) {
  if (race::g_active) race::access(p, n, race::Kind::atomic, __builtin_return_address(0));
  internal_begin();
}
void atomic_end() {
  internal_end();
}
void internal_begin() {
  ++race::R().internal;
}
void internal_end() {
  --race::R().internal;
}
bool racecheck_enabled() {
  return race::g_enabled;
}
unsigned long long racecheck_checked() {
  return race::g_checked;
}
}  // namespace cudasim
