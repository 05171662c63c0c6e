// IDX reading (plain, gzip, every corruption), datasets, and the DataLoader.
#include <doctest/doctest.h>
#include <zlib.h>

#include <algorithm>
#include <atomic>
#include <bit>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <numbers>
#include <numeric>
#include <set>
#include <string>
#include <vector>

#include "tnas/data/dataset.hpp"
#include "tnas/data/idx.hpp"
#include "tnas/data/loader.hpp"

namespace fs = std::filesystem;
using namespace tnas;
using namespace tnas::data;

namespace {

using Bytes = std::vector<uint8_t>;

// A fresh directory under the system temp dir, removed with everything in it at scope exit.
struct TempDir {
  fs::path path;
  TempDir() {
    static std::atomic<int> counter{0};
    auto t = std::chrono::steady_clock::now().time_since_epoch().count();
    path = fs::temp_directory_path() /
           ("tnas_test_data_" + std::to_string(t) + "_" + std::to_string(counter++));
    fs::create_directories(path);
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path, ec);
  }
  fs::path operator/(const std::string& name) const { return path / name; }
};

void put_be32(Bytes& b, uint32_t v) {
  for (int s = 24; s >= 0; s -= 8) b.push_back(uint8_t(v >> s));
}

// An IDX header for `type` and `dims`, followed by `payload` as given (already big-endian).
Bytes idx_bytes(uint8_t type, const std::vector<uint32_t>& dims, const Bytes& payload) {
  Bytes b = {0, 0, type, uint8_t(dims.size())};
  for (auto d : dims) put_be32(b, d);
  b.insert(b.end(), payload.begin(), payload.end());
  return b;
}

void write_plain(const fs::path& p, const Bytes& b) {
  std::ofstream f(p, std::ios::binary);
  f.write(reinterpret_cast<const char*>(b.data()), std::streamsize(b.size()));
}

void write_gz(const fs::path& p, const Bytes& b, const char* mode = "wb") {
  gzFile f = gzopen(p.string().c_str(), mode);
  REQUIRE(f != nullptr);
  REQUIRE(gzwrite(f, b.data(), unsigned(b.size())) == int(b.size()));
  REQUIRE(gzclose(f) == Z_OK);
}

Bytes read_file(const fs::path& p) {
  std::ifstream f(p, std::ios::binary);
  return Bytes(std::istreambuf_iterator<char>(f), {});
}

// The message of the tnas::Error that f throws ("" when it throws nothing).
std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

// read_idx(p) must throw a tnas::Error naming the file and containing every one of `parts`.
void check_idx_error(const fs::path& p, std::initializer_list<std::string> parts) {
  CAPTURE(p.string());
  CHECK_THROWS_AS(read_idx(p), Error);
  std::string msg = error_of([&] { read_idx(p); });
  CAPTURE(msg);
  CHECK(msg.find(p.filename().string()) != std::string::npos);
  for (const auto& s : parts) {
    CAPTURE(s);
    CHECK(msg.find(s) != std::string::npos);
  }
}

Bytes iota_bytes(size_t n, int step = 1) {
  Bytes b(n);
  for (size_t i = 0; i < n; ++i) b[i] = uint8_t(i * size_t(step));
  return b;
}

// A small dataset in memory: N images of C x H x W with pixel value (n*C*H*W + i) / 1000.
Dataset toy_dataset(int64_t N, int64_t C = 1, int64_t H = 4, int64_t W = 5, int classes = 3) {
  Dataset ds;
  ds.images = Tensor::empty(Shape{N, C, H, W});
  float* p = ds.images.data<float>();
  for (int64_t i = 0; i < ds.images.numel(); ++i) p[i] = float(i) / 1000.f;
  for (int64_t n = 0; n < N; ++n) ds.labels.push_back(int32_t(n % classes));
  ds.num_classes = classes;
  return ds;
}

std::vector<int64_t> epoch_indices(DataLoader& dl) {
  std::vector<int64_t> all;
  Batch b;
  while (dl.next(b)) all.insert(all.end(), b.indices.begin(), b.indices.end());
  return all;
}

}  // namespace

// ---- IDX -------------------------------------------------------------------------------------

TEST_CASE("read_idx: ubyte round trip, plain and gzip") {
  TempDir dir;
  Bytes payload = iota_bytes(3 * 2 * 4, 7);
  Bytes file = idx_bytes(0x08, {3, 2, 4}, payload);
  write_plain(dir / "a-idx3-ubyte", file);
  write_gz(dir / "a-idx3-ubyte.gz", file);
  write_gz(dir / "gz-without-suffix", file);  // detected by magic, not by name
  for (auto name : {"a-idx3-ubyte", "a-idx3-ubyte.gz", "gz-without-suffix"}) {
    CAPTURE(name);
    IdxArray a = read_idx(dir / name);
    CHECK(a.type == IdxType::u8);
    CHECK(a.dims == std::vector<int64_t>{3, 2, 4});
    CHECK(a.numel() == 24);
    CHECK(a.bytes == payload);
    CHECK(a.values.empty());
    CHECK(a.at(5) == payload[5]);
    CHECK(a.path == (dir / name).string());
  }
}

TEST_CASE("read_idx: a gzip file of several members reads as their concatenation") {
  TempDir dir;
  Bytes file = idx_bytes(0x08, {2, 300}, iota_bytes(600, 3));
  Bytes first(file.begin(), file.begin() + 100), second(file.begin() + 100, file.end());
  write_gz(dir / "m.gz", first, "wb");
  write_gz(dir / "m.gz", second, "ab");
  IdxArray a = read_idx(dir / "m.gz");
  CHECK(a.bytes == iota_bytes(600, 3));
}

TEST_CASE("read_idx: signed, integer and float types decode big-endian exactly") {
  TempDir dir;
  struct Case {
    uint8_t code;
    IdxType type;
    Bytes payload;
    std::vector<double> expect;
  };
  Bytes f32, f64;
  for (float v : {1.5f, -2.25f, 3.0e-8f}) put_be32(f32, std::bit_cast<uint32_t>(v));
  for (double v : {std::numbers::pi, -1e300}) {
    uint64_t u = std::bit_cast<uint64_t>(v);
    put_be32(f64, uint32_t(u >> 32));
    put_be32(f64, uint32_t(u));
  }
  std::vector<Case> cases = {
      {0x09, IdxType::i8, {0x80, 0xff, 0x05}, {-128, -1, 5}},
      {0x0B, IdxType::i16, {0xfe, 0xd4, 0x04, 0xd2}, {-300, 1234}},
      {0x0C, IdxType::i32, {0xff, 0xfe, 0xee, 0x90, 0x7f, 0xff, 0xff, 0xff}, {-70000, 2147483647}},
      {0x0D, IdxType::f32, f32, {1.5, -2.25, double(3.0e-8f)}},
      {0x0E, IdxType::f64, f64, {std::numbers::pi, -1e300}},
  };
  for (const auto& c : cases) {
    CAPTURE(name(c.type));
    Bytes file = idx_bytes(c.code, {uint32_t(c.expect.size())}, c.payload);
    write_plain(dir / "p", file);
    write_gz(dir / "p.gz", file);
    for (auto nm : {"p", "p.gz"}) {
      IdxArray a = read_idx(dir / nm);
      CHECK(a.type == c.type);
      CHECK(a.bytes.empty());
      CHECK(a.values == c.expect);
    }
  }
  // Labels stored as int16 convert to int32; float labels are refused.
  write_plain(dir / "l16", idx_bytes(0x0B, {2}, {0x00, 0x07, 0x01, 0x00}));
  CHECK(read_idx(dir / "l16").to_int32() == std::vector<int32_t>{7, 256});
  write_plain(dir / "lf", idx_bytes(0x0D, {1}, {0x3f, 0x80, 0, 0}));
  CHECK_THROWS_AS(read_idx(dir / "lf").to_int32(), Error);
}

TEST_CASE("read_idx: every malformed file is a tnas::Error naming the file and the problem") {
  TempDir dir;
  Bytes good = idx_bytes(0x08, {2, 3}, iota_bytes(6));

  SUBCASE("missing file") {
    check_idx_error(dir / "no-such-file.gz", {"no such file"});
  }
  SUBCASE("neither gzip nor IDX") {
    write_plain(dir / "text.txt", Bytes{'h', 'e', 'l', 'l', 'o', '\n'});
    check_idx_error(dir / "text.txt", {"neither a gzip file", "68 65"});
  }
  SUBCASE("empty file and short header") {
    write_plain(dir / "empty", {});
    check_idx_error(dir / "empty", {"empty"});
    write_plain(dir / "short", {0, 0, 8});
    check_idx_error(dir / "short", {"truncated IDX header"});
    write_plain(dir / "short-dims", {0, 0, 8, 3, 0, 0, 0, 2});
    check_idx_error(dir / "short-dims", {"truncated IDX header", "need 12", "got 4"});
  }
  SUBCASE("bad magic inside a gzip file") {
    Bytes bad = good;
    bad[0] = 0x01;
    bad[1] = 0x02;
    write_gz(dir / "badmagic.gz", bad);
    check_idx_error(dir / "badmagic.gz", {"bad IDX magic", "01 02"});
  }
  SUBCASE("unknown type code") {
    Bytes bad = good;
    bad[2] = 0x07;
    write_plain(dir / "type7", bad);
    check_idx_error(dir / "type7", {"unknown IDX type code 0x07"});
    write_gz(dir / "type7.gz", bad);
    check_idx_error(dir / "type7.gz", {"unknown IDX type code 0x07"});
  }
  SUBCASE("zero and absurd dims") {
    write_plain(dir / "ndims0", {0, 0, 8, 0});
    check_idx_error(dir / "ndims0", {"0 dimensions"});
    write_plain(dir / "dim0", idx_bytes(0x08, {5, 0, 3}, {}));
    check_idx_error(dir / "dim0", {"dimension 1 is 0", "[5, 0, 3]"});
    write_plain(dir / "ndims200", {0, 0, 8, 200});
    check_idx_error(dir / "ndims200", {"200 dimensions"});
    write_gz(dir / "huge.gz", idx_bytes(0x08, {0xffffffffu, 0xffffffffu}, iota_bytes(10)));
    check_idx_error(dir / "huge.gz", {"absurd dims", "4294967295"});
  }
  SUBCASE("truncated data says how many bytes were expected and got") {
    Bytes cut(good.begin(), good.end() - 2);  // 4 of 6 data bytes
    write_plain(dir / "cut", cut);
    check_idx_error(dir / "cut", {"truncated data", "expected 6 bytes", "got 4"});
    write_gz(dir / "cut.gz", cut);
    check_idx_error(dir / "cut.gz", {"truncated data", "expected 6 bytes", "got 4"});
    // A header that claims a lot of data must fail on the short read, not on an allocation.
    write_gz(dir / "claims-much.gz", idx_bytes(0x08, {60000, 28, 28}, iota_bytes(100)));
    check_idx_error(dir / "claims-much.gz", {"truncated data", "expected 47040000", "got 100"});
    write_plain(dir / "claims-much", idx_bytes(0x0D, {60000, 28, 28}, iota_bytes(100)));
    check_idx_error(dir / "claims-much", {"truncated data", "expected 188160000", "got 100"});
  }
  SUBCASE("trailing garbage") {
    Bytes extra = good;
    extra.insert(extra.end(), {1, 2, 3});
    write_plain(dir / "extra", extra);
    check_idx_error(dir / "extra", {"trailing garbage", "3 bytes"});
    write_gz(dir / "extra.gz", extra);
    check_idx_error(dir / "extra.gz", {"trailing garbage", "3 bytes"});
  }
  SUBCASE("corrupt gzip streams") {
    Bytes big = idx_bytes(0x08, {50, 40}, iota_bytes(2000, 13));
    write_gz(dir / "ok.gz", big);
    Bytes gz = read_file(dir / "ok.gz");
    REQUIRE(gz.size() > 30);
    Bytes crc = gz;
    crc[crc.size() - 6] ^= 0xff;  // inside the CRC32 of the trailer
    write_plain(dir / "crc.gz", crc);
    check_idx_error(dir / "crc.gz", {"corrupt gzip stream", "zlib"});
    Bytes method = gz;
    method[2] = 9;  // compression method other than deflate
    write_plain(dir / "method.gz", method);
    check_idx_error(dir / "method.gz", {"corrupt gzip stream", "zlib"});
    Bytes body = gz;
    for (size_t i = 12; i < 20; ++i) body[i] ^= 0x5a;
    write_plain(dir / "body.gz", body);
    check_idx_error(dir / "body.gz", {"corrupt gzip stream"});
    Bytes cut(gz.begin(), gz.begin() + long(gz.size() / 2));
    write_plain(dir / "cut-stream.gz", cut);
    check_idx_error(dir / "cut-stream.gz", {"corrupt gzip stream", "ends inside"});
    Bytes garbage = gz;
    garbage.insert(garbage.end(), {'x', 'y', 'z'});
    write_plain(dir / "after.gz", garbage);
    check_idx_error(dir / "after.gz", {"corrupt gzip stream", "garbage after"});
    // The good file still reads.
    CHECK(read_idx(dir / "ok.gz").bytes == iota_bytes(2000, 13));
  }
}

// ---- Dataset ---------------------------------------------------------------------------------

TEST_CASE("load_idx_dataset: MNIST-style files, gz or plain, idx3 and idx4") {
  TempDir dir;
  const uint32_t N = 5, H = 4, W = 3;
  Bytes pix = iota_bytes(N * H * W, 4);
  Bytes labels = {3, 0, 7, 1, 3};
  write_gz(dir / "train-images-idx3-ubyte.gz", idx_bytes(0x08, {N, H, W}, pix));
  write_gz(dir / "train-labels-idx1-ubyte.gz", idx_bytes(0x08, {N}, labels));
  // t10k: plain files, images as [N, H, W, C] with C = 2.
  Bytes pix4 = iota_bytes(2 * H * W * 2, 5);
  write_plain(dir / "t10k-images-idx4-ubyte", idx_bytes(0x08, {2, H, W, 2}, pix4));
  write_plain(dir / "t10k-labels-idx1-ubyte", idx_bytes(0x08, {2}, {1, 0}));

  Dataset tr = load_idx_dataset(dir.path, "train");
  CHECK(tr.size() == N);
  CHECK(tr.images.shape() == Shape{N, 1, H, W});
  CHECK(tr.num_classes == 8);
  CHECK(tr.labels == std::vector<int32_t>{3, 0, 7, 1, 3});
  CHECK(tr.images.at({2, 0, 1, 2}) == doctest::Approx(pix[2 * H * W + 1 * W + 2] / 255.0));
  CHECK(tr.images.at({0, 0, 0, 0}) == 0.0);
  tr.check();

  for (auto split : {"t10k", "test"}) {
    Dataset te = load_idx_dataset(dir.path, split);
    CHECK(te.images.shape() == Shape{2, 2, H, W});
    CHECK(te.num_classes == 2);
    for (int64_t n = 0; n < 2; ++n)
      for (int64_t c = 0; c < 2; ++c)
        for (int64_t y = 0; y < H; ++y)
          for (int64_t x = 0; x < W; ++x)
            CHECK(te.images.at({n, c, y, x}) ==
                  doctest::Approx(pix4[size_t(((n * H + y) * W + x) * 2 + c)] / 255.0));
  }
}

TEST_CASE("load_idx_dataset: errors name the files") {
  TempDir dir;
  write_gz(dir / "train-images-idx3-ubyte.gz", idx_bytes(0x08, {3, 2, 2}, iota_bytes(12)));
  write_gz(dir / "train-labels-idx1-ubyte.gz", idx_bytes(0x08, {4}, {0, 1, 2, 3}));
  std::string msg = error_of([&] { load_idx_dataset(dir.path, "train"); });
  CHECK(msg.find("train-images-idx3-ubyte.gz") != std::string::npos);
  CHECK(msg.find("train-labels-idx1-ubyte.gz") != std::string::npos);
  CHECK(msg.find("image count 3") != std::string::npos);
  CHECK(msg.find("label count 4") != std::string::npos);

  msg = error_of([&] { load_idx_dataset(dir.path, "t10k"); });
  CHECK(msg.find("t10k-images-idx3-ubyte.gz") != std::string::npos);
  CHECK(msg.find(dir.path.string()) != std::string::npos);
  CHECK_THROWS_AS(load_idx_dataset(dir.path, "valid"), Error);
  CHECK_THROWS_AS(load_idx_dataset(dir / "nope", "train"), Error);

  // Negative labels (signed byte) are refused, naming the labels file.
  write_plain(dir / "t10k-images-idx3-ubyte", idx_bytes(0x08, {2, 1, 1}, {1, 2}));
  write_plain(dir / "t10k-labels-idx1-ubyte", idx_bytes(0x09, {2}, {0, 0xff}));
  msg = error_of([&] { load_idx_dataset(dir.path, "test"); });
  CHECK(msg.find("t10k-labels-idx1-ubyte") != std::string::npos);
  CHECK(msg.find("negative") != std::string::npos);
}

TEST_CASE("Dataset: subset, seeded train/valid split, channel stats, normalize") {
  Dataset ds = toy_dataset(20, 2, 3, 3, 4);
  Dataset sub = ds.subset(std::vector<int64_t>{7, 2, 7});
  CHECK(sub.size() == 3);
  CHECK(sub.num_classes == 4);
  CHECK(sub.labels == std::vector<int32_t>{3, 2, 3});
  CHECK(sub.images.at({1, 1, 2, 0}) == ds.images.at({2, 1, 2, 0}));
  CHECK_FALSE(sub.images.shares_storage(ds.images));
  CHECK_THROWS_AS(ds.subset(std::vector<int64_t>{20}), Error);

  auto a = split_train_valid(ds, 6, 42), b = split_train_valid(ds, 6, 42);
  auto c = split_train_valid(ds, 6, 43);
  CHECK(a.train.size() == 14);
  CHECK(a.valid.size() == 6);
  CHECK(a.valid.images.to_vector() == b.valid.images.to_vector());
  CHECK(a.valid.images.to_vector() != c.valid.images.to_vector());
  // Disjoint and covering: pixel 0 of each image identifies it.
  std::set<double> seen;
  for (const Dataset* d : {&a.train, &a.valid})
    for (int64_t n = 0; n < d->size(); ++n) seen.insert(d->images.at({n, 0, 0, 0}));
  CHECK(seen.size() == 20);
  auto f = split_train_valid_fraction(ds, 0.25, 1);
  CHECK(f.valid.size() == 5);
  CHECK(f.train.size() == 15);
  CHECK_THROWS_AS(split_train_valid(ds, 21, 0), Error);

  ChannelStats st = channel_stats(ds);
  REQUIRE(st.mean.size() == 2);
  for (int c = 0; c < 2; ++c) {
    double s = 0, s2 = 0;
    int cnt = 0;
    for (int64_t n = 0; n < 20; ++n)
      for (int64_t y = 0; y < 3; ++y)
        for (int64_t x = 0; x < 3; ++x) {
          double v = ds.images.at({n, c, y, x});
          s += v, s2 += v * v, ++cnt;
        }
    double m = s / cnt;
    CHECK(st.mean[c] == doctest::Approx(m));
    CHECK(st.std[c] == doctest::Approx(std::sqrt(s2 / cnt - m * m)));
  }
  std::vector<int64_t> all(20);
  std::iota(all.begin(), all.end(), int64_t(0));
  Dataset norm = ds.subset(all);  // a copy: normalize() works in place
  norm.normalize(st.mean, st.std);
  ChannelStats after = channel_stats(norm);
  for (int c = 0; c < 2; ++c) {
    CHECK(after.mean[c] == doctest::Approx(0.0).epsilon(1e-5).scale(1));
    CHECK(after.std[c] == doctest::Approx(1.0).epsilon(1e-4));
  }
  CHECK_THROWS_AS(norm.normalize(std::vector<float>{0.f}, std::vector<float>{1.f}), Error);
}

TEST_CASE("Fashion-MNIST from /usr/share/datasets/fashion-mnist") {
  const fs::path dir = "/usr/share/datasets/fashion-mnist";
  if (!fs::is_directory(dir)) {
    MESSAGE("skipped: ", dir.string(), " is absent");
    return;
  }
  auto t0 = std::chrono::steady_clock::now();
  Dataset train = load_idx_dataset(dir, "train");
  double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  MESSAGE("Fashion-MNIST train set loaded in ", secs, " s");
  Dataset test = load_idx_dataset(dir, "test");
  CHECK(train.images.shape() == Shape{60000, 1, 28, 28});
  CHECK(test.images.shape() == Shape{10000, 1, 28, 28});
  for (const Dataset* d : {&train, &test}) {
    CHECK(d->num_classes == 10);
    CHECK(*std::min_element(d->labels.begin(), d->labels.end()) == 0);
    CHECK(*std::max_element(d->labels.begin(), d->labels.end()) == 9);
    ChannelStats st = channel_stats(*d);
    CHECK(st.mean[0] > 0.2);
    CHECK(st.mean[0] < 0.4);
    auto v = d->images.data<float>();
    auto [lo, hi] = std::minmax_element(v, v + d->images.numel());
    CHECK(*lo >= 0.f);
    CHECK(*hi <= 1.f);
  }
}

// ---- DataLoader ------------------------------------------------------------------------------

TEST_CASE("DataLoader: seeded shuffles, each sample once per epoch, drop_last") {
  Dataset ds = toy_dataset(23);
  DataLoader::Options o;
  o.batch_size = 5;
  o.seed = 7;
  DataLoader a(ds, o), b(ds, o);
  o.seed = 8;
  DataLoader c(ds, o);
  CHECK(a.batches_per_epoch() == 5);

  auto ea = epoch_indices(a), eb = epoch_indices(b), ec = epoch_indices(c);
  CHECK(ea == eb);
  CHECK(ea != ec);
  auto sorted = ea;
  std::sort(sorted.begin(), sorted.end());
  std::vector<int64_t> all(23);
  std::iota(all.begin(), all.end(), int64_t(0));
  CHECK(sorted == all);
  CHECK(a.epoch() == 1);
  auto ea2 = epoch_indices(a);  // a new epoch is a new order
  CHECK(ea2 != ea);
  std::sort(ea2.begin(), ea2.end());
  CHECK(ea2 == all);

  // Batches carry the right images and labels.
  DataLoader d(ds, o);
  Batch bt;
  REQUIRE(d.next(bt));
  CHECK(bt.x.shape() == Shape{5, 1, 4, 5});
  for (int64_t i = 0; i < 5; ++i) {
    CHECK(bt.labels[size_t(i)] == ds.labels[size_t(bt.indices[size_t(i)])]);
    CHECK(bt.x.at({i, 0, 3, 4}) == ds.images.at({bt.indices[size_t(i)], 0, 3, 4}));
  }
  // The buffer is reused when no one else holds it, and not when someone does.
  const void* before = bt.x.raw();
  REQUIRE(d.next(bt));
  CHECK(bt.x.raw() == before);
  Tensor kept = bt.x;
  std::vector<double> kept_values = kept.to_vector();
  REQUIRE(d.next(bt));
  CHECK(bt.x.raw() != kept.raw());
  CHECK(kept.to_vector() == kept_values);

  // Without drop_last the last batch is short; with it, it is dropped.
  o.shuffle = false;
  DataLoader keep(ds, o);
  std::vector<int64_t> sizes;
  while (keep.next(bt)) sizes.push_back(bt.size());
  CHECK(sizes == std::vector<int64_t>{5, 5, 5, 5, 3});
  o.drop_last = true;
  DataLoader drop(ds, o);
  CHECK(drop.batches_per_epoch() == 4);
  sizes.clear();
  while (drop.next(bt)) sizes.push_back(bt.size());
  CHECK(sizes == std::vector<int64_t>{5, 5, 5, 5});
  CHECK(drop.epoch() == 1);
  auto unshuffled = epoch_indices(keep);
  CHECK(unshuffled == all);
}

TEST_CASE("DataLoader: augmentation keeps shapes; crop with padding 0 and no flip is identity") {
  Dataset ds = toy_dataset(12, 3, 8, 8);
  DataLoader::Options o;
  o.batch_size = 4;
  o.shuffle = false;
  o.augment.crop_padding = 0;
  DataLoader id(ds, o);
  Batch b;
  int64_t seen = 0;
  while (id.next(b)) {
    CHECK(b.x.shape() == Shape{4, 3, 8, 8});
    CHECK(max_abs_diff(b.x, ds.subset(b.indices).images) == 0.0);
    seen += b.size();
  }
  CHECK(seen == 12);

  // Every augmentation on: shapes hold; pixels are either a shifted/mirrored source pixel, or
  // padding, or cutout (both 0 here without normalisation).
  o.augment.crop_padding = 2;
  o.augment.hflip = true;
  o.augment.cutout = 3;
  DataLoader aug(ds, o);
  REQUIRE(aug.next(b));
  CHECK(b.x.shape() == Shape{4, 3, 8, 8});
  int zeros = 0;
  for (int64_t i = 0; i < 4; ++i) {
    std::set<float> src;
    const float* s = ds.images.data<float>() + b.indices[size_t(i)] * 3 * 64;
    src.insert(s, s + 3 * 64);
    const float* p = b.x.data<float>() + i * 3 * 64;
    for (int k = 0; k < 3 * 64; ++k) {
      if (p[k] == 0.f) ++zeros;
      CHECK((p[k] == 0.f || src.count(p[k]) == 1));
    }
  }
  CHECK(zeros >= 4 * 3 * 4);  // cutout clears at least a 2 x 2 corner in each image
  CHECK(max_abs_diff(b.x, ds.subset(b.indices).images) > 0);

  // Flip alone mirrors exactly half of the time on average; a flipped image is exact.
  DataLoader::Options fo;
  fo.batch_size = 12;
  fo.shuffle = false;
  fo.augment.hflip = true;
  DataLoader fl(ds, fo);
  REQUIRE(fl.next(b));
  int flipped = 0;
  for (int64_t i = 0; i < 12; ++i) {
    bool same = true, mirrored = true;
    for (int64_t c = 0; c < 3; ++c)
      for (int64_t y = 0; y < 8; ++y)
        for (int64_t x = 0; x < 8; ++x) {
          double v = b.x.at({i, c, y, x});
          same = same && v == ds.images.at({i, c, y, x});
          mirrored = mirrored && v == ds.images.at({i, c, y, 7 - x});
        }
    CHECK((same || mirrored));
    flipped += mirrored;
  }
  CHECK(flipped > 0);
  CHECK(flipped < 12);

  // Normalisation alone is (x - mean) / std per channel.
  DataLoader::Options no;
  no.batch_size = 3;
  no.shuffle = false;
  no.augment.mean = {0.1f, 0.2f, 0.3f};
  no.augment.std = {0.5f, 2.f, 4.f};
  DataLoader nl(ds, no);
  REQUIRE(nl.next(b));
  for (int64_t c = 0; c < 3; ++c)
    CHECK(b.x.at({1, c, 2, 3}) ==
          doctest::Approx((ds.images.at({1, c, 2, 3}) - no.augment.mean[size_t(c)]) /
                          no.augment.std[size_t(c)]));
  no.augment.mean = {0.1f};
  no.augment.std = {1.f};
  CHECK_THROWS_AS(DataLoader(ds, no), Error);
}

TEST_CASE("DataLoader: a state saved mid-epoch reproduces the following batches exactly") {
  Dataset ds = toy_dataset(37, 2, 6, 6);
  DataLoader::Options o;
  o.batch_size = 4;
  o.seed = 123;
  o.augment.crop_padding = 2;
  o.augment.hflip = true;
  o.augment.cutout = 2;
  o.augment.mean = {0.5f, 0.5f};
  o.augment.std = {0.25f, 0.25f};

  DataLoader run(ds, o);
  Batch b;
  for (int i = 0; i < 13; ++i) {  // into epoch 1 (10 batches per epoch)
    if (!run.next(b)) REQUIRE(run.next(b));
  }
  CHECK(run.epoch() == 1);
  const std::string saved = run.state();
  std::vector<std::vector<double>> xs;
  std::vector<std::vector<int32_t>> ys;
  for (int i = 0; i < 15; ++i) {  // crosses into epoch 2
    if (!run.next(b)) REQUIRE(run.next(b));
    xs.push_back(b.x.to_vector());
    ys.push_back(b.labels);
  }

  DataLoader::Options other = o;
  other.seed = 999;  // the saved state carries the seed
  DataLoader resumed(ds, other);
  resumed.set_state(saved);
  CHECK(resumed.state() == saved);
  for (int i = 0; i < 15; ++i) {
    if (!resumed.next(b)) REQUIRE(resumed.next(b));
    CHECK(b.x.to_vector() == xs[size_t(i)]);
    CHECK(b.labels == ys[size_t(i)]);
  }
  CHECK(resumed.state() == run.state());

  CHECK_THROWS_AS(resumed.set_state("garbage"), Error);
  DataLoader smaller(ds.subset(std::vector<int64_t>{0, 1, 2}), o);
  CHECK_THROWS_AS(smaller.set_state(saved), Error);
}
