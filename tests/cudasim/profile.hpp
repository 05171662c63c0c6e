// cudasim's memory-traffic profile of the simulated kernels (profile.cpp): what a kernel's
// loads and stores would cost a GPU's memory system, counted from the accesses the
// race-checking build sees, warp instruction by warp instruction. Host code may include this
// header (it does not define threadIdx and the rest, as cudasim.hpp does).
//
// A warp instruction is grouped from its lanes' accesses: the k-th access that each lane of a
// warp makes from one code address is taken to be the same instruction (exact where the lanes
// run the same path; a lane that loops more often than its neighbours makes extra
// instructions of its own). For each one:
//  - device memory: the 32-byte sectors it touches, against the bytes its lanes asked for
//    (a fully coalesced 4-byte load of a warp: 4 sectors for 128 bytes, 100% efficiency);
//  - shared memory: the wavefronts it takes (the most distinct 4-byte words that fall in one
//    of the 32 banks, per phase: 32 lanes for accesses of up to 4 bytes, 16 for 8, 8 for
//    16), against the fewest its words need (a conflict-free access: as many as its bytes
//    need 128-byte rows).
// Per block and per launch, the distinct sectors read and written: what moves between L2 and
// the SMs, and between DRAM and L2, when the caches keep what a block, and a launch, reuses.
//
// The host compiler may split a 16-byte vector access (a float4 load or store) into four
// 4-byte ones; a lane's consecutive accesses from different code addresses that fill one
// aligned 16-byte chunk without overlap are counted as one access again. (An unrolled run of
// scalar loads of neighbouring elements is merged the same way, where nvcc might have issued
// them one by one: their sectors are the same, their instruction count is not.)
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace cudasim {

struct KernelProfile {
  std::string name;  // the kernel's function name
  uint64_t launches = 0;
  // Device memory, loads (ld) and stores and atomics (st): warp instructions, the sectors
  // they touch and the bytes their lanes ask for; the distinct sectors of each block, summed
  // (what L2 sends to the SMs if L1 keeps what a block reuses, or takes from them); and the
  // distinct sectors of each launch, summed (DRAM, if L2 keeps what a launch reuses).
  uint64_t ld_requests = 0, ld_sectors = 0, ld_bytes = 0, l2_ld_bytes = 0, dram_ld_bytes = 0;
  uint64_t st_requests = 0, st_sectors = 0, st_bytes = 0, l2_st_bytes = 0, dram_st_bytes = 0;
  uint64_t smem_requests = 0, smem_wavefronts = 0, smem_ideal = 0;
  double ld_sectors_per_request() const {
    return ld_requests ? double(ld_sectors) / double(ld_requests) : 0;
  }
  double st_sectors_per_request() const {
    return st_requests ? double(st_sectors) / double(st_requests) : 0;
  }
  // bytes asked for per byte of the sectors touched: 1 when every sector is used in full
  double st_efficiency() const { return st_sectors ? double(st_bytes) / (32.0 * st_sectors) : 1; }
  // wavefronts per conflict-free wavefront: 1 without bank conflicts
  double smem_conflict_factor() const {
    return smem_ideal ? double(smem_wavefronts) / double(smem_ideal) : 1;
  }
};

// Profiling needs the race-checking build (tnas_cudasim_race), whose kernels report every
// access; elsewhere profile_enable returns false and nothing is counted. CUDASIM_PROFILE=1
// turns it on for a whole run and prints the table on stderr at exit (CUDASIM_PROFILE=norace:
// without race checking). race_check = false: the accesses are profiled but not checked for
// races (about 3x faster).
bool profile_enable(bool on, bool race_check = true);
// The profiles counted since the last call, one per kernel in order of first launch; resets.
std::vector<KernelProfile> profile_take();
std::string profile_table(const std::vector<KernelProfile>& ps);
// A kernel's name without its namespaces and parameters: "dw_forward_kernel<3, 3, ...>".
std::string short_name(std::string name);

}  // namespace cudasim
