// IDX files (the MNIST / Fashion-MNIST container), plain or gzipped.
//
// Format: magic 00 00 <type code> <ndims>, then ndims big-endian uint32 extents, then the
// elements in row-major order, big-endian. A file whose first two bytes are 1f 8b is a gzip
// stream (one or more members) holding such a file.
#pragma once

#include <zlib.h>

#include <algorithm>
#include <bit>
#include <cerrno>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <limits>
#include <string>
#include <vector>

#include "tnas/core/error.hpp"

namespace tnas::data {

enum class IdxType : uint8_t {
  u8 = 0x08,
  i8 = 0x09,
  i16 = 0x0B,
  i32 = 0x0C,
  f32 = 0x0D,
  f64 = 0x0E,
};

inline const char* name(IdxType t) {
  switch (t) {
    case IdxType::u8:
      return "ubyte";
    case IdxType::i8:
      return "byte";
    case IdxType::i16:
      return "int16";
    case IdxType::i32:
      return "int32";
    case IdxType::f32:
      return "float32";
    case IdxType::f64:
      return "float64";
  }
  return "?";
}
inline size_t size_of(IdxType t) {
  switch (t) {
    case IdxType::u8:
    case IdxType::i8:
      return 1;
    case IdxType::i16:
      return 2;
    case IdxType::i32:
    case IdxType::f32:
      return 4;
    case IdxType::f64:
      return 8;
  }
  return 0;
}
inline bool is_integral(IdxType t) {
  return t != IdxType::f32 && t != IdxType::f64;
}

// Limits that separate a real file from a corrupt header: IDX stores ndims in a byte, but no
// dataset needs more than a handful, and a header claiming more than 64 GiB of data is garbage.
inline constexpr int kMaxIdxDims = 8;
inline constexpr uint64_t kMaxIdxBytes = uint64_t(1) << 36;

// IdxArray: the contents of one IDX file.
//
// represents: an n-dimensional array of `type` elements with extents `dims` (row-major).
// ensures: exactly one of `bytes` / `values` holds the numel() elements. ubyte data stays in
//   `bytes` (60000x28x28 images are 47 MB as bytes, 188 MB as float); every other type is
//   decoded to double in `values`, which holds each of them exactly (int32 and float64
//   included), so nothing is lost before the caller picks its own representation.
struct IdxArray {
  std::string path;  // where it was read from (for error messages further on)
  IdxType type = IdxType::u8;
  std::vector<int64_t> dims;
  std::vector<uint8_t> bytes;  // type == u8
  std::vector<double> values;  // every other type

  int rank() const { return int(dims.size()); }
  int64_t numel() const {
    int64_t n = 1;
    for (auto d : dims) n *= d;
    return n;
  }
  double at(int64_t i) const { return type == IdxType::u8 ? double(bytes[i]) : values[i]; }
  std::string dims_str() const {
    std::string s = "[";
    for (size_t i = 0; i < dims.size(); ++i) s += (i ? ", " : "") + std::to_string(dims[i]);
    return s + "]";
  }
  // The elements as int32 (class labels); a tnas::Error if the type is not integral (every
  // integral IDX type fits in int32).
  std::vector<int32_t> to_int32() const {
    TNAS_CHECK(is_integral(type), path, ": expected integer data, file holds ", name(type));
    std::vector<int32_t> r(static_cast<size_t>(numel()));
    for (size_t i = 0; i < r.size(); ++i) r[i] = int32_t(at(int64_t(i)));
    return r;
  }
};

namespace detail {

[[noreturn]] inline void idx_fail(const std::string& path, const std::string& what) {
  TNAS_FAIL("read_idx: '", path, "': ", what);
}

inline std::string hex_byte(unsigned v) {
  const char* d = "0123456789abcdef";
  return std::string{d[(v >> 4) & 15], d[v & 15]};
}

// The decompressed bytes of an IDX file: a plain file read as is, or a gzip stream inflated on
// the fly, so the data is never held twice (compressed and not) in memory.
class IdxSource {
 public:
  explicit IdxSource(std::string path) : path_(std::move(path)) {
    std::error_code ec;
    if (!std::filesystem::exists(path_, ec)) idx_fail(path_, "no such file");
    TNAS_CHECK(!std::filesystem::is_directory(path_, ec), "read_idx: '", path_,
               "': is a directory, not a file");
    f_ = std::fopen(path_.c_str(), "rb");
    if (!f_) idx_fail(path_, std::string("cannot open: ") + std::strerror(errno));
    unsigned char m[2] = {0, 0};
    size_t n = std::fread(m, 1, 2, f_);
    gz_ = n == 2 && m[0] == 0x1f && m[1] == 0x8b;
    std::fseek(f_, 0, SEEK_SET);
    if (gz_) {
      in_.resize(1 << 16);
      // 16 + MAX_WBITS: gzip wrapper only, so the CRC32 and length in the trailer are checked.
      if (inflateInit2(&zs_, 16 + MAX_WBITS) != Z_OK) {
        std::fclose(f_);
        idx_fail(path_, "zlib inflateInit failed");
      }
      zs_init_ = true;
      // The trailer's ISIZE (length mod 2^32 of the last member) lets the data be read in one
      // allocation when it agrees with the header.
      uint8_t t[4];
      if (std::fseek(f_, -4, SEEK_END) == 0 && std::fread(t, 1, 4, f_) == 4)
        isize_ = uint32_t(t[0]) | uint32_t(t[1]) << 8 | uint32_t(t[2]) << 16 | uint32_t(t[3]) << 24;
      std::fseek(f_, 0, SEEK_SET);
    } else {
      std::error_code e2;
      plain_size_ = std::filesystem::file_size(path_, e2);
    }
  }
  ~IdxSource() {
    if (zs_init_) inflateEnd(&zs_);
    if (f_) std::fclose(f_);
  }
  IdxSource(const IdxSource&) = delete;
  IdxSource& operator=(const IdxSource&) = delete;

  bool gzipped() const { return gz_; }
  // Bytes left in a plain file (how a lying header is caught before allocating for it).
  uint64_t plain_remaining() const { return plain_size_ - consumed_; }

  // Reads up to n bytes; fewer only at the end of the data. A corrupt or cut gzip stream is a
  // tnas::Error, never a short read, so a short read always means the IDX data itself is short.
  size_t read(void* dst, size_t n) {
    size_t got = gz_ ? read_gz(static_cast<unsigned char*>(dst), n) : read_plain(dst, n);
    consumed_ += got;
    return got;
  }
  uint64_t consumed() const { return consumed_; }
  // Whether a file of `total` decompressed bytes is plausible before reading it: always for a
  // plain file (its size was checked), for gzip when the trailer's ISIZE agrees.
  bool size_plausible(uint64_t total) const {
    return !gz_ || (isize_ >= 0 && uint32_t(total) == uint32_t(isize_));
  }

 private:
  size_t read_plain(void* dst, size_t n) {
    size_t got = std::fread(dst, 1, n, f_);
    if (got < n && std::ferror(f_)) idx_fail(path_, "read error");
    return got;
  }
  // Refills the input buffer, keeping unconsumed bytes; false at the end of the file.
  bool refill() {
    if (zs_.avail_in > 0 && zs_.next_in != in_.data())
      std::memmove(in_.data(), zs_.next_in, zs_.avail_in);
    size_t r = std::fread(in_.data() + zs_.avail_in, 1, in_.size() - zs_.avail_in, f_);
    if (r == 0 && std::ferror(f_)) idx_fail(path_, "read error");
    zs_.next_in = in_.data();
    zs_.avail_in += unsigned(r);
    return r > 0;
  }
  size_t read_gz(unsigned char* dst, size_t n) {
    size_t got = 0;
    while (got < n && !done_) {
      if (zs_.avail_in == 0 && !refill())
        idx_fail(path_, "corrupt gzip stream: the file ends inside the compressed data (after " +
                            std::to_string(consumed_ + got) + " decompressed bytes)");
      size_t want = std::min<size_t>(n - got, 1u << 30);
      zs_.next_out = dst + got;
      zs_.avail_out = unsigned(want);
      int rc = inflate(&zs_, Z_NO_FLUSH);
      got += want - zs_.avail_out;
      if (rc == Z_STREAM_END) {
        // gzip allows several members back to back; anything else after one is garbage.
        if (zs_.avail_in < 2) refill();
        if (zs_.avail_in == 0) {
          done_ = true;
        } else if (zs_.avail_in >= 2 && zs_.next_in[0] == 0x1f && zs_.next_in[1] == 0x8b) {
          inflateReset(&zs_);
        } else {
          idx_fail(path_, "corrupt gzip stream: garbage after the end of the gzip data");
        }
      } else if (rc != Z_OK && rc != Z_BUF_ERROR) {
        idx_fail(path_, std::string("corrupt gzip stream: zlib error ") + std::to_string(rc) +
                            " (" + (zs_.msg ? zs_.msg : zError(rc)) + ")");
      }
    }
    return got;
  }

  std::string path_;
  std::FILE* f_ = nullptr;
  bool gz_ = false;
  bool zs_init_ = false;
  bool done_ = false;
  z_stream zs_{};
  std::vector<unsigned char> in_;
  uint64_t plain_size_ = 0;
  uint64_t consumed_ = 0;
  int64_t isize_ = -1;
};

// Reads exactly n bytes into out. Unless the size is known to be plausible, out grows as data
// arrives, so a header claiming far more data than a gzip file holds fails on the short read,
// not on a giant allocation.
inline size_t read_grow(IdxSource& src, std::vector<uint8_t>& out, size_t n, bool plausible) {
  size_t have = 0;
  out.clear();
  while (have < n) {
    size_t next = plausible ? n : std::min(n, std::max(have * 2, size_t(1) << 20));
    out.resize(next);
    size_t got = src.read(out.data() + have, next - have);
    have += got;
    if (have < next) break;
  }
  out.resize(have);
  return have;
}

inline uint32_t be32(const uint8_t* p) {
  return uint32_t(p[0]) << 24 | uint32_t(p[1]) << 16 | uint32_t(p[2]) << 8 | uint32_t(p[3]);
}

inline void decode_be(IdxType t, const uint8_t* p, size_t count, double* out) {
  switch (t) {
    case IdxType::u8:
      for (size_t i = 0; i < count; ++i) out[i] = p[i];
      break;
    case IdxType::i8:
      for (size_t i = 0; i < count; ++i) out[i] = int8_t(p[i]);
      break;
    case IdxType::i16:
      for (size_t i = 0; i < count; ++i) out[i] = int16_t(uint16_t(p[2 * i] << 8 | p[2 * i + 1]));
      break;
    case IdxType::i32:
      for (size_t i = 0; i < count; ++i) out[i] = int32_t(be32(p + 4 * i));
      break;
    case IdxType::f32:
      for (size_t i = 0; i < count; ++i) out[i] = std::bit_cast<float>(be32(p + 4 * i));
      break;
    case IdxType::f64:
      for (size_t i = 0; i < count; ++i) {
        uint64_t v = uint64_t(be32(p + 8 * i)) << 32 | be32(p + 8 * i + 4);
        out[i] = std::bit_cast<double>(v);
      }
      break;
  }
}

}  // namespace detail

// Reads an IDX file, gzipped or plain (told apart by the gzip magic 1f 8b, not by the name).
// requires: the file holds exactly one IDX array: nothing missing, nothing after it.
// ensures: every failure (missing file, neither gzip nor IDX, bad magic, unknown type, zero or
//   absurd dims, truncated data, trailing bytes, corrupt gzip) is a tnas::Error naming the path.
inline IdxArray read_idx(const std::filesystem::path& file) {
  IdxArray a;
  a.path = file.string();
  const std::string& path = a.path;
  detail::IdxSource src(path);

  uint8_t head[4];
  size_t got = src.read(head, 4);
  if (!src.gzipped() && got >= 2 && (head[0] != 0 || head[1] != 0))
    detail::idx_fail(path, "neither a gzip file (magic 1f 8b) nor an IDX file (magic 00 00): " +
                               std::string("first bytes are ") + detail::hex_byte(head[0]) + " " +
                               detail::hex_byte(head[1]));
  if (got < 4)
    detail::idx_fail(path, got == 0 ? std::string("empty (no IDX header)")
                                    : "truncated IDX header: " + std::to_string(got) +
                                          " bytes, the magic alone is 4");
  if (head[0] != 0 || head[1] != 0)
    detail::idx_fail(path, "bad IDX magic after gunzip: first bytes are " +
                               detail::hex_byte(head[0]) + " " + detail::hex_byte(head[1]) +
                               ", expected 00 00");
  switch (head[2]) {
    case 0x08:
    case 0x09:
    case 0x0B:
    case 0x0C:
    case 0x0D:
    case 0x0E:
      a.type = IdxType(head[2]);
      break;
    default:
      detail::idx_fail(path, "unknown IDX type code 0x" + detail::hex_byte(head[2]) +
                                 " (known: 08 ubyte, 09 byte, 0b int16, 0c int32, 0d float32, "
                                 "0e float64)");
  }
  const int ndims = head[3];
  if (ndims == 0) detail::idx_fail(path, "IDX header has 0 dimensions");
  if (ndims > kMaxIdxDims)
    detail::idx_fail(path, "IDX header has " + std::to_string(ndims) + " dimensions (at most " +
                               std::to_string(kMaxIdxDims) + " supported)");

  uint8_t dbuf[4 * kMaxIdxDims];
  got = src.read(dbuf, size_t(4 * ndims));
  if (got < size_t(4 * ndims))
    detail::idx_fail(path, "truncated IDX header: " + std::to_string(ndims) + " dimensions need " +
                               std::to_string(4 * ndims) + " bytes of extents, got " +
                               std::to_string(got));
  for (int i = 0; i < ndims; ++i) a.dims.push_back(int64_t(detail::be32(dbuf + 4 * i)));
  uint64_t numel = 1;
  for (int i = 0; i < ndims; ++i) {
    if (a.dims[i] == 0)
      detail::idx_fail(path, "dimension " + std::to_string(i) + " is 0 in dims " + a.dims_str());
    numel *= uint64_t(a.dims[i]);  // no overflow: the product stays <= 2^36 * 2^32 here
    if (numel * size_of(a.type) > kMaxIdxBytes)
      detail::idx_fail(path, "absurd dims " + a.dims_str() + ": more than " +
                                 std::to_string(kMaxIdxBytes) + " bytes of " + name(a.type) +
                                 " data");
  }

  const uint64_t nbytes = numel * size_of(a.type);
  auto truncated = [&](uint64_t have) {
    detail::idx_fail(path, "truncated data: dims " + a.dims_str() + " of " + name(a.type) +
                               ": expected " + std::to_string(nbytes) + " bytes of data, got " +
                               std::to_string(have));
  };
  if (!src.gzipped() && src.plain_remaining() < nbytes) truncated(src.plain_remaining());

  std::vector<uint8_t> raw;
  got = detail::read_grow(src, raw, size_t(nbytes), src.size_plausible(src.consumed() + nbytes));
  if (got < nbytes) truncated(got);

  // Read on to the end: it finds trailing bytes, and (gzip) verifies the CRC in the trailer.
  uint64_t extra = src.gzipped() ? 0 : src.plain_remaining();
  uint8_t sink[4096];
  if (src.gzipped())
    for (size_t n; (n = src.read(sink, sizeof sink)) > 0;) extra += n;
  if (extra > 0)
    detail::idx_fail(path, "trailing garbage: " + std::to_string(extra) + " bytes after the " +
                               std::to_string(nbytes) + " bytes of data that dims " + a.dims_str() +
                               " describe");

  if (a.type == IdxType::u8) {
    a.bytes = std::move(raw);
  } else {
    a.values.resize(size_t(numel));
    detail::decode_be(a.type, raw.data(), size_t(numel), a.values.data());
  }
  return a;
}

}  // namespace tnas::data
