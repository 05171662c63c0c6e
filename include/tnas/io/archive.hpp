// A binary archive of named tensors plus string metadata: the one file format for state dicts,
// optimizer state and checkpoints.
//
// Layout (all integers little-endian):
//   "TNASARC1"                          8 bytes, magic and format version
//   u64 file_size                       bytes in the whole file, crc included
//   u32 meta_count, then per item:      u32 key_len, key, u64 value_len, value
//   u32 tensor_count, then per tensor:  u32 name_len, name, u8 dtype (0 = float32,
//                                       1 = float64), u8 rank, i64 dims[rank], raw data
//                                       (row-major, numel * sizeof(dtype) bytes)
//   u32 crc32                           zlib crc32 of every byte before it
// The size in the header tells a truncated file (an interrupted copy) from a corrupt one (a
// flipped bit), so each failure can be named for what it is.
//
// ensures: write() is atomic: it writes path + ".tmp", flushes it to disk and renames it over
//   path, so a process killed mid-write leaves the previous file (or none), never half a file.
//   read() returns exactly what was written (values bit for bit, names and metadata in order)
//   or throws a tnas::Error naming the file and the failure: cannot open, bad magic,
//   truncated (expected vs got bytes), corrupt (crc mismatch, inconsistent structure),
//   unknown dtype.
#pragma once

#include <zlib.h>

#include <bit>
#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <map>
#include <string>
#include <utility>
#include <vector>

#if defined(__unix__) || defined(__APPLE__)
#include <unistd.h>
#endif

#include "tnas/core/error.hpp"
#include "tnas/core/tensor.hpp"

namespace tnas::io {

static_assert(std::endian::native == std::endian::little,
              "tnas archives are little-endian and are read and written by memcpy; a big-endian "
              "host would need byte swapping in io/archive.hpp");

using NamedTensors = std::vector<std::pair<std::string, Tensor>>;
using Metadata = std::map<std::string, std::string>;

// What an archive holds: tensors in the order written, and metadata by key.
struct Archive {
  NamedTensors tensors;
  Metadata meta;

  const Tensor* find(const std::string& name) const {
    for (auto& [k, t] : tensors)
      if (k == name) return &t;
    return nullptr;
  }
  const Tensor& tensor(const std::string& name) const {
    const Tensor* t = find(name);
    TNAS_CHECK(t, "archive: no tensor named '", name, "' (", tensors.size(), " tensors held)");
    return *t;
  }
  const std::string& meta_at(const std::string& key) const {
    auto it = meta.find(key);
    TNAS_CHECK(it != meta.end(), "archive: no metadata key '", key, "'");
    return it->second;
  }
  // Adds every tensor and metadata item of `other` under `prefix` (e.g. "model." and "optim."
  // to put a model and its optimizer in one checkpoint).
  void add(const std::string& prefix, const Archive& other) {
    for (auto& [k, t] : other.tensors) tensors.emplace_back(prefix + k, t);
    for (auto& [k, v] : other.meta) meta[prefix + k] = v;
  }
  // The tensors and metadata whose names start with `prefix`, with the prefix removed.
  Archive extract(const std::string& prefix) const {
    Archive a;
    for (auto& [k, t] : tensors)
      if (k.starts_with(prefix)) a.tensors.emplace_back(k.substr(prefix.size()), t);
    for (auto& [k, v] : meta)
      if (k.starts_with(prefix)) a.meta[k.substr(prefix.size())] = v;
    return a;
  }
};

inline constexpr char kArchiveMagic[8] = {'T', 'N', 'A', 'S', 'A', 'R', 'C', '1'};

namespace detail {
using tnas::detail::cat;

inline uint8_t dtype_code(DType t) {
  return t == DType::f32 ? 0 : 1;
}

// Writes bytes to a FILE and folds them into a running crc32.
class CrcWriter {
 public:
  CrcWriter(std::FILE* f, const std::string& path) : f_(f), path_(path) {}
  void bytes(const void* p, size_t n) {
    if (n == 0) return;
    TNAS_CHECK(std::fwrite(p, 1, n, f_) == n, "io::write: writing '", path_,
               "' failed: ", std::strerror(errno));
    crc_ = crc32_z(crc_, static_cast<const Bytef*>(p), n);
  }
  template <class T>
  void pod(T v) {
    bytes(&v, sizeof v);
  }
  uint32_t crc() const { return uint32_t(crc_); }

 private:
  std::FILE* f_;
  const std::string& path_;
  uLong crc_ = crc32_z(0, nullptr, 0);
};

// Reads from an in-memory file image, checking every read against its end.
class Cursor {
 public:
  Cursor(const std::vector<unsigned char>& buf, size_t end, const std::string& path)
      : buf_(buf), end_(end), path_(path) {}
  const unsigned char* take(size_t n, const char* what) {
    TNAS_CHECK(n <= end_ - pos_, "io::read: '", path_, "' is corrupt: ", what, " at offset ", pos_,
               " needs ", n, " bytes but only ", end_ - pos_, " remain");
    const unsigned char* p = buf_.data() + pos_;
    pos_ += n;
    return p;
  }
  template <class T>
  T pod(const char* what) {
    T v;
    std::memcpy(&v, take(sizeof v, what), sizeof v);
    return v;
  }
  std::string str(size_t n, const char* what) {
    const unsigned char* p = take(n, what);
    return std::string(reinterpret_cast<const char*>(p), n);
  }
  size_t pos() const { return pos_; }

 private:
  const std::vector<unsigned char>& buf_;
  size_t end_;
  size_t pos_ = 0;
  const std::string& path_;
};
}  // namespace detail

// Writes `tensors` and `meta` to `path`, atomically (see above). Tensors may live on any
// device; they are copied to the host.
inline void write(const std::filesystem::path& path, const NamedTensors& tensors,
                  const Metadata& meta = {}) {
  const std::string p = path.string();
  const std::string tmp = p + ".tmp";
  TNAS_CHECK(meta.size() <= UINT32_MAX && tensors.size() <= UINT32_MAX, "io::write: '", p,
             "': too many entries");
  std::vector<Tensor> host;
  host.reserve(tensors.size());
  uint64_t size = sizeof kArchiveMagic + 8 + 4 + 4 + 4;
  for (auto& [k, v] : meta) {
    TNAS_CHECK(k.size() <= UINT32_MAX, "io::write: '", p, "': metadata key too long");
    size += 4 + k.size() + 8 + v.size();
  }
  for (auto& [name, t] : tensors) {
    TNAS_CHECK(t.defined(), "io::write: '", p, "': tensor '", name, "' is undefined");
    TNAS_CHECK(name.size() <= UINT32_MAX, "io::write: '", p, "': tensor name too long");
    host.push_back(t.to(Device::cpu).contiguous());
    size += 4 + name.size() + 1 + 1 + 8 * uint64_t(t.rank()) + t.nbytes();
  }

  std::FILE* f = std::fopen(tmp.c_str(), "wb");
  TNAS_CHECK(f, "io::write: cannot create '", tmp, "' (to be renamed to '", p,
             "'): ", std::strerror(errno));
  try {
    detail::CrcWriter w(f, p);
    w.bytes(kArchiveMagic, sizeof kArchiveMagic);
    w.pod<uint64_t>(size);
    w.pod<uint32_t>(uint32_t(meta.size()));
    for (auto& [k, v] : meta) {
      w.pod<uint32_t>(uint32_t(k.size()));
      w.bytes(k.data(), k.size());
      w.pod<uint64_t>(v.size());
      w.bytes(v.data(), v.size());
    }
    w.pod<uint32_t>(uint32_t(tensors.size()));
    for (size_t i = 0; i < tensors.size(); ++i) {
      const std::string& name = tensors[i].first;
      const Tensor& t = host[i];
      w.pod<uint32_t>(uint32_t(name.size()));
      w.bytes(name.data(), name.size());
      w.pod<uint8_t>(detail::dtype_code(t.dtype()));
      w.pod<uint8_t>(uint8_t(t.rank()));
      for (int d = 0; d < t.rank(); ++d) w.pod<int64_t>(t.shape()[d]);
      w.bytes(t.raw(), t.nbytes());
    }
    const uint32_t crc = w.crc();
    TNAS_CHECK(std::fwrite(&crc, 1, 4, f) == 4 && std::fflush(f) == 0, "io::write: writing '", tmp,
               "' failed: ", std::strerror(errno));
#if defined(__unix__) || defined(__APPLE__)
    // Without this, a power cut after the rename could leave the new name on an empty file.
    TNAS_CHECK(::fsync(fileno(f)) == 0, "io::write: fsync of '", tmp,
               "' failed: ", std::strerror(errno));
#endif
  } catch (...) {
    std::fclose(f);
    std::remove(tmp.c_str());
    throw;
  }
  TNAS_CHECK(std::fclose(f) == 0, "io::write: closing '", tmp, "' failed: ", std::strerror(errno));
  std::error_code ec;
  std::filesystem::rename(tmp, path, ec);
  if (ec) {
    std::remove(tmp.c_str());
    TNAS_FAIL("io::write: cannot rename '", tmp, "' to '", p, "': ", ec.message());
  }
}
inline void write(const std::filesystem::path& path, const Archive& a) {
  write(path, a.tensors, a.meta);
}

// Reads an archive written by write(); CPU tensors.
inline Archive read(const std::filesystem::path& path) {
  const std::string p = path.string();
  std::FILE* f = std::fopen(p.c_str(), "rb");
  TNAS_CHECK(f, "io::read: cannot open '", p, "': ", std::strerror(errno));
  std::vector<unsigned char> buf;
  {
    unsigned char chunk[1 << 16];
    size_t n;
    while ((n = std::fread(chunk, 1, sizeof chunk, f)) > 0) buf.insert(buf.end(), chunk, chunk + n);
    const bool err = std::ferror(f);
    std::fclose(f);
    TNAS_CHECK(!err, "io::read: reading '", p, "' failed");
  }
  constexpr size_t kHeader = sizeof kArchiveMagic + 8;
  TNAS_CHECK(buf.size() >= sizeof kArchiveMagic &&
                 std::memcmp(buf.data(), kArchiveMagic, sizeof kArchiveMagic) == 0,
             "io::read: '", p, "' is not a tnas archive (bad magic: expected \"TNASARC1\" in the ",
             "first 8 bytes)");
  TNAS_CHECK(buf.size() >= kHeader + 4, "io::read: '", p, "' is truncated: ", buf.size(),
             " bytes, too short for the header");
  uint64_t expected;
  std::memcpy(&expected, buf.data() + sizeof kArchiveMagic, 8);
  TNAS_CHECK(buf.size() >= expected, "io::read: '", p, "' is truncated: expected ", expected,
             " bytes, got ", buf.size());
  TNAS_CHECK(buf.size() == expected, "io::read: '", p, "' is corrupt: expected ", expected,
             " bytes, got ", buf.size(), " (trailing data)");
  const size_t body = buf.size() - 4;
  uint32_t stored;
  std::memcpy(&stored, buf.data() + body, 4);
  const uint32_t actual = uint32_t(crc32_z(crc32_z(0, nullptr, 0), buf.data(), body));
  TNAS_CHECK(stored == actual, "io::read: '", p, "' is corrupt: crc32 mismatch (stored ", stored,
             ", computed ", actual, ")");

  detail::Cursor c(buf, body, p);
  c.take(kHeader, "header");
  Archive a;
  const uint32_t nmeta = c.pod<uint32_t>("metadata count");
  for (uint32_t i = 0; i < nmeta; ++i) {
    std::string k = c.str(c.pod<uint32_t>("metadata key length"), "metadata key");
    std::string v = c.str(c.pod<uint64_t>("metadata value length"), "metadata value");
    a.meta[std::move(k)] = std::move(v);
  }
  const uint32_t ntensors = c.pod<uint32_t>("tensor count");
  for (uint32_t i = 0; i < ntensors; ++i) {
    std::string name = c.str(c.pod<uint32_t>("tensor name length"), "tensor name");
    const uint8_t code = c.pod<uint8_t>("dtype");
    TNAS_CHECK(code <= 1, "io::read: '", p, "': tensor '", name, "' has unknown dtype code ",
               int(code),
               " (this build knows 0 = float32, 1 = float64; was the file written by "
               "a newer tnas?)");
    const DType dt = code == 0 ? DType::f32 : DType::f64;
    const uint8_t rank = c.pod<uint8_t>("rank");
    TNAS_CHECK(rank <= kMaxDims, "io::read: '", p, "' is corrupt: tensor '", name, "' has rank ",
               int(rank), " (at most ", kMaxDims, ")");
    Shape s;
    uint64_t nbytes = size_of(dt);
    for (int d = 0; d < rank; ++d) {
      const int64_t e = c.pod<int64_t>("dims");
      const bool overflow = e < 0 || __builtin_mul_overflow(nbytes, uint64_t(e), &nbytes);
      TNAS_CHECK(!overflow && nbytes <= body, "io::read: '", p, "' is corrupt: tensor '", name,
                 "' has impossible extent ", e, " in axis ", d);
      s.push_back(e);
    }
    const unsigned char* src = c.take(nbytes, "tensor data");
    Tensor t = Tensor::empty(s, dt);
    if (nbytes) std::memcpy(t.raw(), src, nbytes);
    a.tensors.emplace_back(std::move(name), std::move(t));
  }
  TNAS_CHECK(c.pos() == body, "io::read: '", p, "' is corrupt: ", body - c.pos(),
             " unread bytes before the crc");
  return a;
}

}  // namespace tnas::io
