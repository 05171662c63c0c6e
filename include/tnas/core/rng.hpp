// Rng: the one source of randomness in tnas (initialisation, shuffling, augmentation, dropout,
// sampling). Its results are the same on every platform and standard library (no
// std::*_distribution, whose algorithms are implementation-defined), and its state saves to a
// string and restores exactly, so a resumed run continues the same random stream.
#pragma once

#include <cmath>
#include <cstdint>
#include <sstream>
#include <string>

#include "tnas/core/error.hpp"

namespace tnas {

class Rng {
 public:
  explicit Rng(uint64_t seed = 0x5EEDu) { reseed(seed); }
  void reseed(uint64_t seed) {
    // splitmix64 expands the seed into the xoshiro256** state.
    for (auto& w : s_) {
      seed += 0x9E3779B97F4A7C15ull;
      uint64_t z = seed;
      z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
      z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
      w = z ^ (z >> 31);
    }
    has_spare_ = false;
  }
  uint64_t next_u64() {
    const uint64_t result = rotl(s_[1] * 5, 7) * 9;
    const uint64_t t = s_[1] << 17;
    s_[2] ^= s_[0];
    s_[3] ^= s_[1];
    s_[1] ^= s_[2];
    s_[0] ^= s_[3];
    s_[2] ^= t;
    s_[3] = rotl(s_[3], 45);
    return result;
  }
  // Uniform in [0, 1) with 53 random bits.
  double uniform() { return double(next_u64() >> 11) * 0x1.0p-53; }
  double uniform(double lo, double hi) { return lo + (hi - lo) * uniform(); }
  // Uniform integer in [0, n).
  uint64_t below(uint64_t n) {
    TNAS_CHECK(n > 0, "Rng::below: n must be positive");
    return static_cast<uint64_t>((static_cast<unsigned __int128>(next_u64()) * n) >> 64);
  }
  // Standard normal (Marsaglia polar method).
  double normal() {
    if (has_spare_) {
      has_spare_ = false;
      return spare_;
    }
    double u, v, s;
    do {
      u = 2 * uniform() - 1;
      v = 2 * uniform() - 1;
      s = u * u + v * v;
    } while (s >= 1 || s == 0);
    double m = std::sqrt(-2 * std::log(s) / s);
    spare_ = v * m;
    has_spare_ = true;
    return u * m;
  }
  double normal(double mean, double stddev) { return mean + stddev * normal(); }
  bool bernoulli(double p) { return uniform() < p; }

  std::string state() const {
    std::ostringstream os;
    os.precision(17);
    os << s_[0] << ' ' << s_[1] << ' ' << s_[2] << ' ' << s_[3] << ' ' << has_spare_ << ' '
       << std::hexfloat << spare_;
    return os.str();
  }
  void set_state(const std::string& st) {
    std::istringstream is(st);
    is >> s_[0] >> s_[1] >> s_[2] >> s_[3] >> has_spare_;
    std::string sp;
    is >> sp;
    TNAS_CHECK(!is.fail(), "Rng::set_state: malformed state string '", st, "'");
    spare_ = std::strtod(sp.c_str(), nullptr);
  }

 private:
  static uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }
  uint64_t s_[4];
  bool has_spare_ = false;
  double spare_ = 0;
};

// The process-wide default generator (used where no Rng is passed). Seed it with manual_seed.
inline Rng& default_rng() {
  static thread_local Rng rng;
  return rng;
}
inline void manual_seed(uint64_t seed) {
  default_rng().reseed(seed);
}

}  // namespace tnas
