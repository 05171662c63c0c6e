// cudasim's memory-traffic profile (profile.hpp): the race checker hands it every access it
// checks, already classified as shared or device memory; the accesses are grouped into warp
// instructions per block and costed when the block ends.
#include "profile.hpp"

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <sstream>
#include <tuple>
#include <unordered_map>
#include <unordered_set>

#include "internal.hpp"

namespace cudasim::prof {

bool g_on = false;

namespace {

// One lane's access, tagged with the warp instruction it belongs to: (warp, code address,
// the lane's count of accesses from that address).
struct Access {
  const void* pc;
  uint32_t warp, k;
  uintptr_t a;
  uint8_t lane, n;
  bool write, shared;
  auto key() const { return std::tuple(warp, reinterpret_cast<uintptr_t>(pc), k); }
};
// A lane's access being assembled from the pieces of a split vector access: bytes `mask` of
// the aligned 16-byte chunk at `chunk`.
struct Open {
  uintptr_t chunk = 0;
  unsigned mask = 0;  // 0: none open
  bool write = false, shared = false;
  const void* pc = nullptr;       // the first piece's code address: the access's
  const void* last_pc = nullptr;  // the latest piece's
};
struct Thread {
  std::vector<std::pair<const void*, uint32_t>> count;  // accesses per code address (few)
  Open open;
};

struct State {
  std::vector<Access> accesses;                         // the running block's
  std::vector<Thread> threads;                          // the running block's
  std::vector<uintptr_t> block_ld, block_st;            // sectors of the running block
  std::unordered_set<uintptr_t> launch_ld, launch_st;   // and of the launch
  std::vector<uintptr_t> scratch;                       // cost()'s, reused
  std::vector<std::pair<uintptr_t, uintptr_t>> ranges;  // cost()'s, reused
  KernelProfile* cur = nullptr;
  std::vector<std::unique_ptr<KernelProfile>> kernels;  // in order of first launch
  std::unordered_map<const void*, KernelProfile*> by_fn;
};
State& P() {
  static State s;
  return s;
}

size_t sort_unique(std::vector<uintptr_t>& v) {
  std::sort(v.begin(), v.end());
  v.erase(std::unique(v.begin(), v.end()), v.end());
  return v.size();
}

// The kernel's name (dladdr sees only exported symbols, and kernels are in anonymous
// namespaces).
std::string kernel_name(const void* fn) {
  std::string function, location;
  if (symbolize(fn, function, location)) return function;
  std::ostringstream os;
  os << "kernel at " << fn;
  return os.str();
}

// The bytes of [a, a + n) ranges, overlaps counted once.
uint64_t distinct_bytes(std::vector<std::pair<uintptr_t, uintptr_t>>& r) {
  std::sort(r.begin(), r.end());
  uint64_t bytes = 0;
  uintptr_t end = 0;
  for (auto [lo, hi] : r) {
    lo = std::max(lo, end);
    if (hi > lo) {
      bytes += hi - lo;
      end = hi;
    }
  }
  return bytes;
}

// Costs one warp instruction: the lanes' accesses [first, last).
void cost(const Access* first, const Access* last) {
  State& s = P();
  KernelProfile& kp = *s.cur;
  const bool write = first->write;
  unsigned n = 0;
  for (const Access* q = first; q != last; ++q) n = std::max(n, unsigned(q->n));
  std::vector<uintptr_t>& v = s.scratch;
  if (!first->shared) {
    v.clear();
    auto& ranges = s.ranges;
    ranges.clear();
    for (const Access* q = first; q != last; ++q) {
      for (uintptr_t sec = q->a / 32; sec <= (q->a + n - 1) / 32; ++sec) v.push_back(sec);
      ranges.emplace_back(q->a, q->a + n);
    }
    const size_t sectors = sort_unique(v);
    for (uintptr_t sec : v) {
      (write ? s.block_st : s.block_ld).push_back(sec);
      (write ? s.launch_st : s.launch_ld).insert(sec);
    }
    const uint64_t bytes = distinct_bytes(ranges);
    if (write) {
      ++kp.st_requests, kp.st_sectors += sectors, kp.st_bytes += bytes;
    } else {
      ++kp.ld_requests, kp.ld_sectors += sectors, kp.ld_bytes += bytes;
    }
    return;
  }
  // Shared memory, phase by phase: lanes [p * per, (p + 1) * per).
  const int per = n <= 4 ? 32 : n <= 8 ? 16 : 8;
  ++kp.smem_requests;
  for (int p = 0; p * per < 32; ++p) {
    v.clear();
    for (const Access* q = first; q != last; ++q)
      if (q->lane / per == p)
        for (uintptr_t w = q->a / 4; w <= (q->a + n - 1) / 4; ++w) v.push_back(w);
    if (v.empty()) continue;
    const size_t words = sort_unique(v);
    int in_bank[32] = {};
    for (uintptr_t w : v) ++in_bank[w % 32];
    kp.smem_wavefronts += uint64_t(*std::max_element(in_bank, in_bank + 32));
    kp.smem_ideal += (words + 31) / 32;
  }
}

// Makes thread tid's access [a, a + n) (from pc) one lane of its warp instruction.
void add(int tid, uintptr_t a, unsigned n, bool write, bool shared, const void* pc) {
  State& s = P();
  auto& count = s.threads[size_t(tid)].count;
  auto it = std::find_if(count.begin(), count.end(), [pc](const auto& c) { return c.first == pc; });
  if (it == count.end()) it = count.insert(count.end(), {pc, 0});
  s.accesses.push_back(Access{pc, uint32_t(tid / 32), it->second++, a, uint8_t(tid % 32),
                              uint8_t(std::min(n, 255u)), write, shared});
}

void close(int tid) {
  Open& o = P().threads[size_t(tid)].open;
  if (!o.mask) return;
  const int lo = __builtin_ctz(o.mask), hi = 31 - __builtin_clz(o.mask);
  add(tid, o.chunk + uintptr_t(lo), unsigned(hi - lo + 1), o.write, o.shared, o.pc);
  o.mask = 0;
}

}  // namespace

void launch_begin(const Config& c) {
  if (!g_on) return;
  State& s = P();
  auto [it, fresh] = s.by_fn.emplace(c.fn, nullptr);
  if (fresh) {
    s.kernels.push_back(std::make_unique<KernelProfile>());
    s.kernels.back()->name = kernel_name(c.fn);
    it->second = s.kernels.back().get();
  }
  s.cur = it->second;
  ++s.cur->launches;
  s.threads.resize(size_t(c.block.x) * c.block.y * c.block.z);
  for (Thread& t : s.threads) t.count.clear(), t.open = Open{};
  s.launch_ld.clear();
  s.launch_st.clear();
}

void access(const void* p, size_t n, bool write, bool shared, const void* pc, int tid) {
  State& s = P();
  if (!s.cur || size_t(tid) >= s.threads.size()) return;
  const auto a = reinterpret_cast<uintptr_t>(p);
  const uintptr_t chunk = a & ~uintptr_t(15);
  const bool fits = n <= 16 && ((a + n - 1) & ~uintptr_t(15)) == chunk;
  const unsigned bits = fits ? ((n == 16 ? 0xffffu : (1u << n) - 1) << (a - chunk)) : 0;
  Open& o = s.threads[size_t(tid)].open;
  if (fits && o.mask && o.chunk == chunk && o.write == write && o.shared == shared &&
      !(o.mask & bits) && o.last_pc != pc) {
    o.mask |= bits;  // the next piece of a split vector access
    o.last_pc = pc;
    return;
  }
  close(tid);
  if (fits)
    o = Open{chunk, bits, write, shared, pc, pc};
  else
    add(tid, a, unsigned(n), write, shared, pc);
}

void block_end() {
  State& s = P();
  if (!g_on || !s.cur) return;
  for (size_t t = 0; t < s.threads.size(); ++t) close(int(t));
  auto& acc = s.accesses;
  std::sort(acc.begin(), acc.end(),
            [](const Access& x, const Access& y) { return x.key() < y.key(); });
  for (size_t i = 0, j; i < acc.size(); i = j) {
    for (j = i + 1; j < acc.size() && acc[j].key() == acc[i].key();) ++j;
    cost(&acc[i], &acc[j]);
  }
  acc.clear();
  for (auto& t : s.threads) t.count.clear();
  s.cur->l2_ld_bytes += 32 * sort_unique(s.block_ld);
  s.cur->l2_st_bytes += 32 * sort_unique(s.block_st);
  s.block_ld.clear();
  s.block_st.clear();
}

void launch_end() {
  State& s = P();
  if (!g_on || !s.cur) return;
  s.accesses.clear();  // (a launch that failed)
  s.cur->dram_ld_bytes += 32 * s.launch_ld.size();
  s.cur->dram_st_bytes += 32 * s.launch_st.size();
  s.cur = nullptr;
}

}  // namespace cudasim::prof

namespace cudasim {

bool profile_enable(bool on, bool race_check) {
  prof::g_on = on && race::g_enabled;
  race::g_check = race_check || !prof::g_on;
  return prof::g_on;
}

std::vector<KernelProfile> profile_take() {
  auto& s = prof::P();
  std::vector<KernelProfile> out;
  for (const auto& k : s.kernels) out.push_back(*k);
  s.kernels.clear();
  s.by_fn.clear();
  return out;
}

std::string short_name(std::string name) {
  const std::string anon = "(anonymous namespace)::";
  for (size_t i; (i = name.find(anon)) != std::string::npos;) name.erase(i, anon.size());
  name = name.substr(0, name.find('('));
  if (const size_t c = name.rfind("::", name.find('<')); c != std::string::npos)
    name = name.substr(c + 2);
  return name;
}

std::string profile_table(const std::vector<KernelProfile>& ps) {
  std::ostringstream os;
  char line[512];
  std::snprintf(line, sizeof line, "%-40s %6s %9s %7s %8s %8s %9s %7s %8s %8s %9s %9s %6s\n",
                "kernel", "launch", "ld req", "sec/req", "L2 ld", "DRAM ld", "st req", "sec/req",
                "L2 st", "DRAM st", "smem req", "smem wf", "confl");
  os << line;
  constexpr double MiB = 1 << 20;
  for (const KernelProfile& k : ps) {
    std::string name = short_name(k.name);
    if (name.size() > 40) name = name.substr(0, 37) + "...";
    std::snprintf(line, sizeof line,
                  "%-40s %6llu %9llu %7.2f %7.2fM %7.2fM %9llu %7.2f %7.2fM %7.2fM %9llu %9llu "
                  "%5.2fx\n",
                  name.c_str(), (unsigned long long)k.launches, (unsigned long long)k.ld_requests,
                  k.ld_sectors_per_request(), double(k.l2_ld_bytes) / MiB,
                  double(k.dram_ld_bytes) / MiB, (unsigned long long)k.st_requests,
                  k.st_sectors_per_request(), double(k.l2_st_bytes) / MiB,
                  double(k.dram_st_bytes) / MiB, (unsigned long long)k.smem_requests,
                  (unsigned long long)k.smem_wavefronts, k.smem_conflict_factor());
    os << line;
  }
  return os.str();
}

}  // namespace cudasim

namespace cudasim::prof {
void from_env() {
  const char* e = std::getenv("CUDASIM_PROFILE");
  if (!e || std::string(e) == "0" || g_on) return;
  g_on = true;
  race::g_check = std::string(e) != "norace";
  std::atexit([] {
    const auto ps = profile_take();
    if (!ps.empty()) std::fprintf(stderr, "cudasim profile:\n%s", profile_table(ps).c_str());
  });
}
}  // namespace cudasim::prof
