// DataLoader: shuffled, augmented mini-batches from a Dataset, reproducible and resumable.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <numeric>
#include <sstream>
#include <string>
#include <vector>

#include "tnas/core/error.hpp"
#include "tnas/core/rng.hpp"
#include "tnas/core/tensor.hpp"
#include "tnas/data/dataset.hpp"

namespace tnas::data {

// Per-sample augmentation, applied in this order (the CIFAR recipe of DeVries & Taylor):
// random crop from the zero-padded image, horizontal flip, normalisation, cutout. Padding is
// zero before normalisation (black on [0, 1] images) and cutout zero after it (the mean).
struct Augment {
  int crop_padding = -1;         // pad by p, crop back to H x W at a random offset; < 0 = off
  bool hflip = false;            // mirror left-right with probability 0.5
  int cutout = 0;                // zero a square of this side at a random centre, clipped; 0 = off
  std::vector<float> mean, std;  // per channel; empty = no normalisation

  bool any() const { return crop_padding >= 0 || hflip || cutout > 0 || !mean.empty(); }
};

// One mini-batch. indices are the dataset rows it holds (tests, debugging, per-sample logs).
struct Batch {
  Tensor x;                     // [B, C, H, W] float32
  std::vector<int32_t> labels;  // B class indices
  std::vector<int64_t> indices;
  int64_t size() const { return int64_t(labels.size()); }
};

// DataLoader
//
// represents: epochs over a Dataset in mini-batches: the order of epoch e is a shuffle by an Rng
//   seeded from (seed, e), and the augmentation of the k-th sample of epoch e draws from an Rng
//   seeded from (seed, e, k). Nothing else is random, so (seed, epoch, position) is the whole
//   state: state() / set_state() save and restore it, and a resumed run yields the very batches
//   the uninterrupted run would have (and samples could be augmented in any order or in
//   parallel, since each has its own generator).
// requires: a valid Dataset (Dataset::check), batch_size > 0, augmentation statistics with one
//   entry per channel.
// ensures: each epoch visits every sample exactly once (drop_last: all but the last N mod B);
//   next() returns false once at the end of each epoch and the following call begins the next.
class DataLoader {
 public:
  struct Options {
    int64_t batch_size = 64;
    bool shuffle = true;
    bool drop_last = false;
    uint64_t seed = 0;
    Augment augment;
  };

  DataLoader(Dataset ds, Options opt) : ds_(std::move(ds)), opt_(std::move(opt)) {
    ds_.check();
    TNAS_CHECK(opt_.batch_size > 0, "DataLoader: batch_size must be positive, got ",
               opt_.batch_size);
    const auto& a = opt_.augment;
    TNAS_CHECK(a.mean.size() == a.std.size() &&
                   (a.mean.empty() || int64_t(a.mean.size()) == ds_.channels()),
               "DataLoader: normalisation needs one mean and one std per channel (", ds_.channels(),
               "), got ", a.mean.size(), " and ", a.std.size());
    for (float s : a.std) TNAS_CHECK(s > 0, "DataLoader: normalisation std ", s, " <= 0");
    TNAS_CHECK(a.cutout >= 0, "DataLoader: cutout size ", a.cutout, " < 0");
  }

  const Dataset& dataset() const { return ds_; }
  const Options& options() const { return opt_; }
  int64_t size() const { return ds_.size(); }
  int64_t batches_per_epoch() const {
    const int64_t n = ds_.size(), b = opt_.batch_size;
    return opt_.drop_last ? n / b : (n + b - 1) / b;
  }
  int64_t epoch() const { return epoch_; }
  // Samples of the current epoch already handed out.
  int64_t position() const { return pos_; }

  // Jumps to the start (or `position` samples into) epoch e.
  void seek(int64_t epoch, int64_t position = 0) {
    TNAS_CHECK(epoch >= 0 && position >= 0 && position <= ds_.size(), "DataLoader::seek: epoch ",
               epoch, " position ", position, " out of range (", ds_.size(), " samples)");
    epoch_ = epoch;
    pos_ = position;
  }

  // "tnas.DataLoader 1 <seed> <epoch> <position> <N>"; set_state checks N so a state is not
  // restored onto another dataset by mistake.
  std::string state() const {
    std::ostringstream os;
    os << "tnas.DataLoader 1 " << opt_.seed << ' ' << epoch_ << ' ' << pos_ << ' ' << ds_.size();
    return os.str();
  }
  void set_state(const std::string& st) {
    std::istringstream is(st);
    std::string tag;
    int version = 0;
    uint64_t seed = 0;
    int64_t epoch = -1, pos = -1, n = -1;
    is >> tag >> version >> seed >> epoch >> pos >> n;
    TNAS_CHECK(!is.fail() && tag == "tnas.DataLoader" && version == 1,
               "DataLoader::set_state: malformed state '", st, "'");
    TNAS_CHECK(n == ds_.size(), "DataLoader::set_state: state is for ", n,
               " samples, this dataset has ", ds_.size());
    opt_.seed = seed;
    seek(epoch, pos);
  }

  // The order of the samples in epoch e.
  std::vector<int64_t> epoch_order(int64_t e) const {
    std::vector<int64_t> order(size_t(ds_.size()));
    std::iota(order.begin(), order.end(), int64_t(0));
    if (opt_.shuffle) {
      Rng rng(mix(opt_.seed, uint64_t(e), 0));
      for (size_t i = order.size(); i > 1; --i) std::swap(order[i - 1], order[rng.below(i)]);
    }
    return order;
  }

  // Fills b with the next batch and returns true, or returns false at the end of the epoch
  // (and moves to the next one). b.x is reused when b holds the only reference to a buffer of
  // the right shape, so a steady-state loop allocates nothing.
  bool next(Batch& b) {
    const int64_t n = ds_.size(), bs = opt_.batch_size;
    const int64_t left = n - pos_;
    if (left <= 0 || (opt_.drop_last && left < bs)) {
      ++epoch_;
      pos_ = 0;
      return false;
    }
    if (order_epoch_ != epoch_ || int64_t(order_.size()) != n) {
      order_ = epoch_order(epoch_);
      order_epoch_ = epoch_;
    }
    const int64_t B = std::min(bs, left);
    const int64_t C = ds_.channels(), H = ds_.height(), W = ds_.width(), per = C * H * W;
    const Shape s{B, C, H, W};
    if (!reusable(b.x, s)) b.x = Tensor::empty(s);
    b.labels.resize(size_t(B));
    b.indices.assign(order_.begin() + pos_, order_.begin() + pos_ + B);

    const float* src = ds_.images.data<float>();
    float* dst = b.x.data<float>();
    const bool aug = opt_.augment.any();
    const int64_t first = pos_;
    // Serial on purpose: a 28x28 batch of 128 takes ~0.15 ms; with OpenMP on a loaded 2-core
    // machine it took 8 ms (threads waiting at the barrier), and training owns the cores.
    for (int64_t i = 0; i < B; ++i) {
      const int64_t k = b.indices[size_t(i)];
      b.labels[size_t(i)] = ds_.labels[size_t(k)];
      if (aug) {
        Rng rng(mix(opt_.seed, uint64_t(epoch_), uint64_t(first + i) + 1));
        augment_one(src + k * per, dst + i * per, C, H, W, rng);
      } else {
        std::copy_n(src + k * per, per, dst + i * per);
      }
    }
    pos_ += B;
    return true;
  }

 private:
  // A seed for one (seed, a, b) triple: splitmix64 finalisers chained, so nearby triples give
  // unrelated streams.
  static uint64_t mix(uint64_t seed, uint64_t a, uint64_t b) {
    auto fmix = [](uint64_t z) {
      z += 0x9E3779B97F4A7C15ull;
      z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
      z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
      return z ^ (z >> 31);
    };
    return fmix(fmix(fmix(seed) ^ a) ^ b);
  }

  // True when t can be overwritten: right shape, and no one else holds it or a view of it
  // (an autograd graph may still reference last step's input).
  static bool reusable(const Tensor& t, const Shape& s) {
    return t.defined() && t.shape() == s && t.dtype() == DType::f32 && t.device() == Device::cpu &&
           t.is_contiguous() && t.impl_shared().use_count() == 1 &&
           t.impl_ptr()->storage.use_count() == 1;
  }

  void augment_one(const float* in, float* out, int64_t C, int64_t H, int64_t W, Rng& rng) const {
    const Augment& a = opt_.augment;
    int64_t dy = 0, dx = 0;
    if (a.crop_padding >= 0) {
      const uint64_t span = 2 * uint64_t(a.crop_padding) + 1;
      dy = int64_t(rng.below(span)) - a.crop_padding;
      dx = int64_t(rng.below(span)) - a.crop_padding;
    }
    const bool flip = a.hflip && rng.bernoulli(0.5);
    // out(y, x) = padded(y + dy, x' + dx) with x' = flip ? W-1-x : x; outside the image is 0.
    for (int64_t c = 0; c < C; ++c) {
      const float* ic = in + c * H * W;
      float* oc = out + c * H * W;
      const float m = a.mean.empty() ? 0.f : a.mean[size_t(c)];
      const float inv = a.std.empty() ? 1.f : 1.f / a.std[size_t(c)];
      for (int64_t y = 0; y < H; ++y) {
        const int64_t sy = y + dy;
        float* orow = oc + y * W;
        if (sy < 0 || sy >= H) {
          std::fill_n(orow, W, (0.f - m) * inv);
          continue;
        }
        const float* irow = ic + sy * W;
        for (int64_t x = 0; x < W; ++x) {
          const int64_t sx = (flip ? W - 1 - x : x) + dx;
          const float v = (sx >= 0 && sx < W) ? irow[sx] : 0.f;
          orow[x] = (v - m) * inv;
        }
      }
    }
    if (a.cutout > 0) {
      // As in DeVries & Taylor's code: centre anywhere in the image, square clipped to it
      // (their [c - L/2, c + L/2) for even L; side L for odd L too).
      const int64_t cy = int64_t(rng.below(uint64_t(H))), cx = int64_t(rng.below(uint64_t(W)));
      const int64_t L = a.cutout;
      const int64_t y0 = std::max<int64_t>(0, cy - L / 2),
                    y1 = std::min<int64_t>(H, cy - L / 2 + L);
      const int64_t x0 = std::max<int64_t>(0, cx - L / 2),
                    x1 = std::min<int64_t>(W, cx - L / 2 + L);
      for (int64_t c = 0; c < C; ++c)
        for (int64_t y = y0; y < y1; ++y)
          std::fill(out + (c * H + y) * W + x0, out + (c * H + y) * W + x1, 0.f);
    }
  }

  Dataset ds_;
  Options opt_;
  int64_t epoch_ = 0;
  int64_t pos_ = 0;
  std::vector<int64_t> order_;
  int64_t order_epoch_ = -1;
};

}  // namespace tnas::data
