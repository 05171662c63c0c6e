// Dataset: labelled images in memory, loaded from MNIST-style IDX files.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <filesystem>
#include <numeric>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "tnas/core/error.hpp"
#include "tnas/core/rng.hpp"
#include "tnas/core/tensor.hpp"
#include "tnas/data/idx.hpp"

namespace tnas::data {

// Dataset
//
// represents: N labelled images: `images` is a contiguous [N, C, H, W] float32 CPU tensor and
//   labels[i] in [0, num_classes) is the class of image i.
// requires: images.dim(0) == labels.size() (check() says so when it is not).
// ensures: copying a Dataset copies the labels but shares the images (Tensor is a handle), so
//   normalize() on one copy is seen by every copy; subset() makes independent images.
struct Dataset {
  Tensor images;
  std::vector<int32_t> labels;
  int num_classes = 0;

  int64_t size() const { return int64_t(labels.size()); }
  int64_t channels() const { return images.dim(1); }
  int64_t height() const { return images.dim(2); }
  int64_t width() const { return images.dim(3); }

  void check() const {
    TNAS_CHECK(images.defined() && images.rank() == 4, "Dataset: images must be [N, C, H, W]",
               images.defined() ? ", got " + images.shape().str() : ", got none");
    TNAS_CHECK(
        images.dtype() == DType::f32 && images.device() == Device::cpu && images.is_contiguous(),
        "Dataset: images must be a contiguous float32 CPU tensor");
    TNAS_CHECK(images.dim(0) == size(), "Dataset: ", images.dim(0), " images but ", size(),
               " labels");
    for (size_t i = 0; i < labels.size(); ++i)
      TNAS_CHECK(labels[i] >= 0 && labels[i] < num_classes, "Dataset: label ", labels[i],
                 " of sample ", i, " is outside [0, ", num_classes, ")");
  }

  // The samples at `indices` (in that order, repeats allowed), with this dataset's num_classes
  // (a subset may miss a class, and still has the same classifier head).
  Dataset subset(std::span<const int64_t> indices) const {
    Dataset r;
    const int64_t per = channels() * height() * width();
    Shape s = images.shape();
    s[0] = int64_t(indices.size());
    r.images = Tensor::empty(s);
    r.labels.resize(indices.size());
    r.num_classes = num_classes;
    const float* src = images.data<float>();
    float* dst = r.images.data<float>();
    for (size_t i = 0; i < indices.size(); ++i) {
      const int64_t k = indices[i];
      TNAS_CHECK(k >= 0 && k < size(), "Dataset::subset: index ", k, " out of range for ", size(),
                 " samples");
      std::copy_n(src + k * per, per, dst + int64_t(i) * per);
      r.labels[i] = labels[size_t(k)];
    }
    return r;
  }

  // images[:, c] = (images[:, c] - mean[c]) / std[c], in place (see the class comment on
  // sharing). Returns *this.
  Dataset& normalize(std::span<const float> mean, std::span<const float> stddev) {
    const int64_t C = channels(), HW = height() * width(), N = size();
    TNAS_CHECK(int64_t(mean.size()) == C && int64_t(stddev.size()) == C, "Dataset::normalize: ", C,
               " channels but ", mean.size(), " means and ", stddev.size(), " stds");
    for (int64_t c = 0; c < C; ++c)
      TNAS_CHECK(stddev[c] > 0, "Dataset::normalize: std of channel ", c, " is ", stddev[c]);
    float* p = images.data<float>();
#pragma omp parallel for schedule(static)
    for (int64_t n = 0; n < N; ++n)
      for (int64_t c = 0; c < C; ++c) {
        const float m = mean[c], inv = 1.0f / stddev[c];
        float* q = p + (n * C + c) * HW;
        for (int64_t i = 0; i < HW; ++i) q[i] = (q[i] - m) * inv;
      }
    return *this;
  }
};

// Per-channel mean and (population) standard deviation of a dataset's images.
struct ChannelStats {
  std::vector<float> mean;
  std::vector<float> std;
};

inline ChannelStats channel_stats(const Dataset& ds) {
  const int64_t C = ds.channels(), HW = ds.height() * ds.width(), N = ds.size();
  TNAS_CHECK(N > 0, "channel_stats: empty dataset");
  const float* p = ds.images.data<float>();
  ChannelStats st;
  for (int64_t c = 0; c < C; ++c) {
    // Sums per image in double, then over images: no catastrophic loss over 47M pixels.
    double s = 0, s2 = 0;
#pragma omp parallel for schedule(static) reduction(+ : s, s2)
    for (int64_t n = 0; n < N; ++n) {
      const float* q = p + (n * C + c) * HW;
      double a = 0, b = 0;
      for (int64_t i = 0; i < HW; ++i) {
        a += q[i];
        b += double(q[i]) * q[i];
      }
      s += a;
      s2 += b;
    }
    const double cnt = double(N) * double(HW);
    const double m = s / cnt;
    st.mean.push_back(float(m));
    st.std.push_back(float(std::sqrt(std::max(0.0, s2 / cnt - m * m))));
  }
  return st;
}

struct TrainValid {
  Dataset train;
  Dataset valid;
};

// Splits ds at random (a shuffle by Rng(seed)) into valid_count validation samples and the rest
// for training; each part keeps the original order of its samples (locality, and a subset of a
// sorted dataset stays sorted).
inline TrainValid split_train_valid(const Dataset& ds, int64_t valid_count, uint64_t seed) {
  TNAS_CHECK(valid_count >= 0 && valid_count <= ds.size(), "split_train_valid: valid_count ",
             valid_count, " is outside [0, ", ds.size(), "]");
  std::vector<int64_t> perm(size_t(ds.size()));
  std::iota(perm.begin(), perm.end(), int64_t(0));
  Rng rng(seed);
  for (size_t i = perm.size(); i > 1; --i) std::swap(perm[i - 1], perm[rng.below(i)]);
  std::vector<int64_t> valid(perm.begin(), perm.begin() + valid_count);
  std::vector<int64_t> train(perm.begin() + valid_count, perm.end());
  std::sort(valid.begin(), valid.end());
  std::sort(train.begin(), train.end());
  return {ds.subset(train), ds.subset(valid)};
}
// The same with the validation part a fraction of the samples (rounded to nearest).
inline TrainValid split_train_valid_fraction(const Dataset& ds, double valid_fraction,
                                             uint64_t seed) {
  TNAS_CHECK(valid_fraction >= 0 && valid_fraction <= 1, "split_train_valid_fraction: fraction ",
             valid_fraction, " is outside [0, 1]");
  return split_train_valid(ds, int64_t(std::llround(valid_fraction * double(ds.size()))), seed);
}

// Builds a Dataset from an images IDX array ([N, H, W] or [N, H, W, C]) and a labels IDX
// array ([N]). Integer pixels are scaled by their type's range to [0, 1] (ubyte: v / 255);
// float pixels are kept as they are.
inline Dataset make_dataset(const IdxArray& images, const IdxArray& labels) {
  TNAS_CHECK(images.rank() == 3 || images.rank() == 4, "load dataset: '", images.path,
             "': images must be [N, H, W] (idx3) or [N, H, W, C] (idx4), got dims ",
             images.dims_str());
  TNAS_CHECK(labels.rank() == 1 || (labels.rank() == 2 && labels.dims[1] == 1), "load dataset: '",
             labels.path, "': labels must be [N], got dims ", labels.dims_str());
  TNAS_CHECK(images.dims[0] == labels.dims[0], "load dataset: image count ", images.dims[0],
             " in '", images.path, "' differs from label count ", labels.dims[0], " in '",
             labels.path, "'");
  TNAS_CHECK(is_integral(labels.type), "load dataset: '", labels.path,
             "': labels must be integers, file holds ", name(labels.type));
  const int64_t N = images.dims[0], H = images.dims[1], W = images.dims[2];
  const int64_t C = images.rank() == 4 ? images.dims[3] : 1;

  Dataset ds;
  ds.labels = labels.to_int32();
  int32_t maxl = -1;
  for (size_t i = 0; i < ds.labels.size(); ++i) {
    TNAS_CHECK(ds.labels[i] >= 0, "load dataset: '", labels.path, "': label ", ds.labels[i],
               " of sample ", i, " is negative");
    maxl = std::max(maxl, ds.labels[i]);
  }
  ds.num_classes = maxl + 1;

  double scale = 1, shift = 0;
  switch (images.type) {
    case IdxType::u8:
      scale = 1.0 / 255;
      break;
    case IdxType::i8:
      shift = 128, scale = 1.0 / 255;
      break;
    case IdxType::i16:
      shift = 32768, scale = 1.0 / 65535;
      break;
    case IdxType::i32:
      shift = 2147483648.0, scale = 1.0 / 4294967295.0;
      break;
    case IdxType::f32:
    case IdxType::f64:
      break;
  }
  ds.images = Tensor::empty(Shape{N, C, H, W});
  float* dst = ds.images.data<float>();
  const int64_t HW = H * W, per = C * HW;
  const bool u8 = images.type == IdxType::u8;
  const float fscale = float(scale);
  if (u8 && C == 1) {  // the common case (MNIST-likes), as one vectorisable loop
    const uint8_t* src = images.bytes.data();
    const int64_t total = N * per;
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < total; ++i) dst[i] = float(src[i]) * fscale;
    return ds;
  }
#pragma omp parallel for schedule(static)
  for (int64_t n = 0; n < N; ++n) {
    // The file is [H, W, C] per image; tensors are [C, H, W]: reading source order keeps the
    // big buffer sequential.
    for (int64_t i = 0; i < HW; ++i)
      for (int64_t c = 0; c < C; ++c) {
        const int64_t s = n * per + i * C + c;
        dst[n * per + c * HW + i] = u8 ? float(images.bytes[size_t(s)]) * fscale
                                       : float((images.values[size_t(s)] + shift) * scale);
      }
  }
  return ds;
}

namespace detail {
// The first existing file among <dir>/<stem><sep><kind>-idx<d>-ubyte[.gz].
inline std::filesystem::path find_idx_file(const std::filesystem::path& dir,
                                           const std::string& stem, const std::string& kind,
                                           std::initializer_list<int> ranks) {
  std::vector<std::string> tried;
  for (int d : ranks)
    for (const char* sep : {"-", "."})
      for (const char* ext : {".gz", ""}) {
        std::string nm = stem + "-" + kind + sep + "idx" + std::to_string(d) + "-ubyte" + ext;
        std::error_code ec;
        if (std::filesystem::is_regular_file(dir / nm, ec)) return dir / nm;
        tried.push_back(nm);
      }
  std::string list;
  for (auto& t : tried) list += (list.empty() ? "" : ", ") + t;
  TNAS_FAIL("load_idx_dataset: no ", kind, " file for split '", stem, "' in '", dir.string(),
            "' (looked for ", list, ")");
}
}  // namespace detail

// Loads the MNIST-style pair <split>-images-idx3-ubyte[.gz] (or idx4, [N, H, W, C]) and
// <split>-labels-idx1-ubyte[.gz] from dir. split is "train" or "t10k" ("test" means t10k).
// ensures: images [N, C, H, W] in [0, 1], num_classes = max label + 1; a tnas::Error naming the
//   file(s) for a missing directory or file, a bad file, or image and label counts that differ.
inline Dataset load_idx_dataset(const std::filesystem::path& dir, std::string_view split) {
  std::string stem(split);
  if (stem == "test") stem = "t10k";
  TNAS_CHECK(stem == "train" || stem == "t10k", "load_idx_dataset: split must be 'train', ",
             "'t10k' or 'test', got '", split, "'");
  std::error_code ec;
  TNAS_CHECK(std::filesystem::is_directory(dir, ec), "load_idx_dataset: '", dir.string(),
             "' is not a directory");
  auto img = detail::find_idx_file(dir, stem, "images", {3, 4});
  auto lab = detail::find_idx_file(dir, stem, "labels", {1});
  return make_dataset(read_idx(img), read_idx(lab));
}

}  // namespace tnas::data
