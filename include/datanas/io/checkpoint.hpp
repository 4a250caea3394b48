// datanas/io/checkpoint.hpp - checkpoints that make --resume bit-identical: named tensors and
// scalars in a checksummed little-endian file, written atomically, plus helpers for modules,
// optimisers and random generators.
//
// File format (version 1), all integers little-endian:
//   header, 32 bytes:
//     0  char[8]  magic "DNASCKPT"
//     8  u32      format version (1)
//     12 u32      flags (0)
//     16 u64      payload size in bytes
//     24 u32      CRC-32 (zlib) of the payload
//     28 u32      CRC-32 of header bytes 0..27
//   payload:
//     u64 entry count, then per entry, in insertion order:
//       u32 name length, name bytes (UTF-8, no terminator)
//       u8  kind (Checkpoint::Kind)
//       tensors only: u8 rank, rank x i64 dimensions
//       u64 data size in bytes, data (tensor elements row-major; int64 or IEEE-754 binary64
//           scalars as 8 bytes; string bytes)
// Floats are stored as their bit patterns, so a round trip is exact (NaN payloads included).
#pragma once

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

#include <algorithm>
#include <bit>
#include <cerrno>
#include <concepts>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <map>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "datanas/core/random.hpp"
#include "datanas/core/tensor.hpp"
#include "datanas/nn/module.hpp"
#include "datanas/optim/optimizers.hpp"

namespace datanas::io {

namespace ckpt_detail {
inline void put_le(std::vector<unsigned char>& out, std::uint64_t v, int bytes) {
  for (int i = 0; i < bytes; ++i) out.push_back(static_cast<unsigned char>(v >> (8 * i)));
}
inline std::uint64_t get_le(const unsigned char* p, int bytes) {
  std::uint64_t v = 0;
  for (int i = 0; i < bytes; ++i) v |= std::uint64_t(p[i]) << (8 * i);
  return v;
}
/// Copies n elements of `size` bytes, reversing each element's bytes on big-endian hosts so
/// that the file is little-endian everywhere (the same function converts in both directions).
inline void copy_le(void* dst, const void* src, std::size_t n, std::size_t size) {
  if constexpr (std::endian::native == std::endian::little) {
    if (n) std::memcpy(dst, src, n * size);
  } else {
    auto* d = static_cast<unsigned char*>(dst);
    const auto* s = static_cast<const unsigned char*>(src);
    for (std::size_t i = 0; i < n; ++i)
      for (std::size_t b = 0; b < size; ++b) d[i * size + b] = s[i * size + size - 1 - b];
  }
}
/// zlib's crc32 over any length (crc32_z takes a size_t, but older zlibs lack it).
inline std::uint32_t crc32_of(const unsigned char* p, std::size_t n) {
  uLong crc = crc32(0L, Z_NULL, 0);
  while (n > 0) {
    const uInt chunk = uInt(std::min<std::size_t>(n, 1u << 30));
    crc = crc32(crc, p, chunk);
    p += chunk;
    n -= chunk;
  }
  return std::uint32_t(crc);
}
}  // namespace ckpt_detail

/// An ordered set of named entries: float32/float64/int32 tensors (with their shapes), int64
/// and float64 scalars, and strings (a genotype's JSON, the run's flags). Names are unique;
/// errors name the checkpoint's file (or "<memory>") and the entry.
class Checkpoint {
 public:
  enum class Kind : std::uint8_t {
    kFloat32Tensor = 1,
    kFloat64Tensor = 2,
    kInt32Tensor = 3,
    kInt64 = 4,
    kFloat64 = 5,
    kString = 6,
  };
  static constexpr char kMagic[8] = {'D', 'N', 'A', 'S', 'C', 'K', 'P', 'T'};
  static constexpr std::uint32_t kVersion = 1;
  static constexpr std::size_t kHeaderBytes = 32;

  /// An empty checkpoint; `source` names it in error messages.
  explicit Checkpoint(std::string source = "<memory>") : source_(std::move(source)) {}

  // ---- writing ------------------------------------------------------------------------------
  /// Stores a copy of a host tensor (float, double or int32) with its shape.
  /// A device tensor is copied to the host first (a synchronisation: checkpoints are written
  /// between epochs).
  template <Element T, class D>
  void put(const std::string& name, const Tensor<T, D>& dt) {
    const Tensor<T, Cpu> t = to_cpu(dt);
    DATANAS_CHECK(t.defined() || t.numel() == 0, where(name),
                  " cannot store an unallocated tensor ", t.shape().str());
    Entry& e = add(name, kind_of<T>());
    e.shape = t.shape();
    e.data.resize(std::size_t(t.numel()) * sizeof(T));
    ckpt_detail::copy_le(e.data.data(), t.data(), std::size_t(t.numel()), sizeof(T));
  }
  /// Stores an integer as int64 (unsigned 64-bit values keep their bit pattern: get_int()
  /// returns them modulo 2^64, cast back with static_cast<std::uint64_t>).
  template <std::integral I>
  void put(const std::string& name, I v) {
    put_scalar(name, Kind::kInt64, static_cast<std::uint64_t>(static_cast<std::int64_t>(v)));
  }
  /// Stores a floating-point value as float64.
  template <std::floating_point F>
  void put(const std::string& name, F v) {
    put_scalar(name, Kind::kFloat64, std::bit_cast<std::uint64_t>(double(v)));
  }
  void put(const std::string& name, std::string_view s) {
    Entry& e = add(name, Kind::kString);
    e.data.assign(s.begin(), s.end());
  }
  void put(const std::string& name, const char* s) { put(name, std::string_view(s)); }

  // ---- reading ------------------------------------------------------------------------------
  [[nodiscard]] bool has(const std::string& name) const { return index_.contains(name); }
  [[nodiscard]] std::size_t size() const { return entries_.size(); }
  /// Entry names in insertion (file) order.
  [[nodiscard]] std::vector<std::string> names() const {
    std::vector<std::string> out;
    for (const Entry& e : entries_) out.push_back(e.name);
    return out;
  }
  [[nodiscard]] Kind kind(const std::string& name) const { return find(name).kind; }
  /// Shape of a tensor entry.
  [[nodiscard]] Shape shape(const std::string& name) const {
    const Entry& e = find(name);
    DATANAS_CHECK(is_tensor(e.kind), where(name), " holds a value of kind '", kind_name(e.kind),
                  "', not a tensor");
    return e.shape;
  }
  [[nodiscard]] std::int64_t get_int(const std::string& name) const {
    return static_cast<std::int64_t>(scalar_bits(name, Kind::kInt64));
  }
  [[nodiscard]] double get_double(const std::string& name) const {
    return std::bit_cast<double>(scalar_bits(name, Kind::kFloat64));
  }
  [[nodiscard]] std::string get_string(const std::string& name) const {
    const Entry& e = expect(name, Kind::kString);
    return std::string(e.data.begin(), e.data.end());
  }
  /// A new tensor holding the entry; its element type must be T.
  template <Element T>
  [[nodiscard]] Tensor<T, Cpu> get_tensor(const std::string& name) const {
    const Entry& e = expect(name, kind_of<T>());
    Tensor<T, Cpu> t = Tensor<T, Cpu>::empty(e.shape);
    ckpt_detail::copy_le(t.data(), e.data.data(), std::size_t(e.shape.numel()), sizeof(T));
    return t;
  }
  /// Copies the entry into `dst` (its storage is written, so every handle sharing it sees the
  /// values); the entry's element type must be T and its shape dst's shape.
  template <Element T, class D>
  void get_tensor_into(const std::string& name, const Tensor<T, D>& dst) const {
    const Entry& e = expect(name, kind_of<T>());
    DATANAS_CHECK(e.shape == dst.shape(), where(name), " has shape ", e.shape.str(), ", expected ",
                  dst.shape().str());
    DATANAS_CHECK(dst.defined() || dst.numel() == 0, where(name),
                  ": the destination tensor has no storage");
    if constexpr (is_cpu<D>) {
      ckpt_detail::copy_le(dst.data(), e.data.data(), std::size_t(e.shape.numel()), sizeof(T));
    } else if (dst.numel()) {
      const Tensor<T, Cpu> host = get_tensor<T>(name);
      dst.copy_from(to_device_of<D>(host));
    }
  }
  /// Name of the file this checkpoint was loaded from (or "<memory>").
  [[nodiscard]] const std::string& source() const { return source_; }

  // ---- files --------------------------------------------------------------------------------
  /// The whole file: header and payload.
  [[nodiscard]] std::vector<unsigned char> serialize() const {
    using ckpt_detail::put_le;
    std::vector<unsigned char> p;
    put_le(p, entries_.size(), 8);
    for (const Entry& e : entries_) {
      put_le(p, e.name.size(), 4);
      p.insert(p.end(), e.name.begin(), e.name.end());
      p.push_back(static_cast<unsigned char>(e.kind));
      if (is_tensor(e.kind)) {
        p.push_back(static_cast<unsigned char>(e.shape.rank()));
        for (int i = 0; i < e.shape.rank(); ++i) put_le(p, std::uint64_t(e.shape[i]), 8);
      }
      put_le(p, e.data.size(), 8);
      p.insert(p.end(), e.data.begin(), e.data.end());
    }
    std::vector<unsigned char> out(kMagic, kMagic + 8);
    put_le(out, kVersion, 4);
    put_le(out, 0, 4);
    put_le(out, p.size(), 8);
    put_le(out, ckpt_detail::crc32_of(p.data(), p.size()), 4);
    put_le(out, ckpt_detail::crc32_of(out.data(), out.size()), 4);
    out.insert(out.end(), p.begin(), p.end());
    return out;
  }

  /// Parses a whole file's bytes; `source` names it in errors. Verifies magic, version, header
  /// checksum, payload size and payload checksum before reading any entry.
  static Checkpoint parse(std::span<const unsigned char> file, std::string source) {
    using ckpt_detail::get_le;
    Checkpoint ck(std::move(source));
    const std::string& src = ck.source_;
    DATANAS_CHECK(file.size() >= kHeaderBytes, "checkpoint '", src, "': truncated: ", file.size(),
                  " bytes, the header alone is ", kHeaderBytes);
    DATANAS_CHECK(std::memcmp(file.data(), kMagic, 8) == 0, "checkpoint '", src,
                  "': not a datanas checkpoint (wrong magic bytes; expected \"DNASCKPT\")");
    const auto version = std::uint32_t(get_le(file.data() + 8, 4));
    const auto header_crc = std::uint32_t(get_le(file.data() + 28, 4));
    DATANAS_CHECK(header_crc == ckpt_detail::crc32_of(file.data(), 28), "checkpoint '", src,
                  "': header checksum mismatch: the header is corrupt");
    DATANAS_CHECK(version == kVersion, "checkpoint '", src, "': format version ", version,
                  ", this build reads version ", kVersion);
    const std::uint64_t payload = get_le(file.data() + 16, 8);
    const std::uint64_t have = file.size() - kHeaderBytes;
    DATANAS_CHECK(have >= payload, "checkpoint '", src, "': truncated: the header announces ",
                  payload, " payload bytes, the file has ", have, " after the header");
    DATANAS_CHECK(have == payload, "checkpoint '", src, "': ", have - payload,
                  " unexpected bytes after the ", payload, "-byte payload");
    const auto stored = std::uint32_t(get_le(file.data() + 24, 4));
    const std::uint32_t computed = ckpt_detail::crc32_of(file.data() + kHeaderBytes, payload);
    DATANAS_CHECK(stored == computed, "checkpoint '", src,
                  "': payload checksum mismatch (stored 0x", std::hex, stored, ", computed 0x",
                  computed, "): the file is corrupt");

    // The checksum matched, so malformed structure here means a writer bug or a forged file;
    // still, every read is bounds-checked.
    const unsigned char* p = file.data() + kHeaderBytes;
    const std::uint64_t n = payload;
    std::uint64_t at = 0;
    auto take = [&](std::uint64_t bytes, const char* what) {
      DATANAS_CHECK(bytes <= n - at, "checkpoint '", src, "': malformed payload: ", what,
                    " at payload byte ", at, " runs past the end (", n, " bytes)");
      const unsigned char* q = p + at;
      at += bytes;
      return q;
    };
    const std::uint64_t count = get_le(take(8, "the entry count"), 8);
    for (std::uint64_t k = 0; k < count; ++k) {
      const std::uint64_t name_len = get_le(take(4, "an entry name length"), 4);
      const unsigned char* name_p = take(name_len, "an entry name");
      std::string name(reinterpret_cast<const char*>(name_p), std::size_t(name_len));
      const auto kind = static_cast<Kind>(*take(1, "an entry kind"));
      DATANAS_CHECK(kind >= Kind::kFloat32Tensor && kind <= Kind::kString, "checkpoint '", src,
                    "': entry '", name, "' has unknown kind ", int(kind));
      Shape shape;
      std::uint64_t expect_bytes = 8;
      if (is_tensor(kind)) {
        const int rank = *take(1, "a tensor rank");
        DATANAS_CHECK(rank <= Shape::kMaxRank, "checkpoint '", src, "': entry '", name,
                      "' has rank ", rank, " (at most ", Shape::kMaxRank, ")");
        index_t d[Shape::kMaxRank] = {};
        std::uint64_t numel = 1;  // bounded by the payload size, so it cannot overflow
        for (int i = 0; i < rank; ++i) {
          d[i] = static_cast<index_t>(get_le(take(8, "a tensor dimension"), 8));
          const bool fits = d[i] >= 0 && (d[i] == 0 || numel <= n / std::uint64_t(d[i]));
          DATANAS_CHECK(fits, "checkpoint '", src, "': entry '", name,
                        "' has implausible dimension ", d[i]);
          numel *= std::uint64_t(d[i]);
        }
        shape = rank == 0   ? Shape{}
                : rank == 1 ? Shape{d[0]}
                : rank == 2 ? Shape{d[0], d[1]}
                : rank == 3 ? Shape{d[0], d[1], d[2]}
                            : Shape{d[0], d[1], d[2], d[3]};
        expect_bytes = std::uint64_t(shape.numel()) * element_size(kind);
      }
      const std::uint64_t bytes = get_le(take(8, "an entry size"), 8);
      DATANAS_CHECK(kind == Kind::kString || bytes == expect_bytes, "checkpoint '", src,
                    "': entry '", name, "' has ", bytes, " data bytes, expected ", expect_bytes);
      const unsigned char* data = take(bytes, "entry data");
      Entry& e = ck.add(name, kind);
      e.shape = shape;
      e.data.assign(data, data + bytes);
    }
    DATANAS_CHECK(at == n, "checkpoint '", src, "': malformed payload: ", n - at,
                  " bytes after the last of ", count, " entries");
    return ck;
  }

  /// Reads and verifies a checkpoint file.
  static Checkpoint load(const std::string& path) {
    std::FILE* f = std::fopen(path.c_str(), "rb");
    DATANAS_CHECK(f != nullptr, "checkpoint '", path, "': cannot open: ", std::strerror(errno));
    std::vector<unsigned char> bytes;
    std::error_code ec;
    if (const auto size = std::filesystem::file_size(path, ec); !ec) bytes.reserve(size);
    unsigned char buf[1 << 16];
    std::size_t got;
    while ((got = std::fread(buf, 1, sizeof buf, f)) > 0) bytes.insert(bytes.end(), buf, buf + got);
    const bool failed = std::ferror(f) != 0;
    std::fclose(f);
    DATANAS_CHECK(!failed, "checkpoint '", path, "': read error after ", bytes.size(), " bytes");
    return parse(bytes, path);
  }

  /// Writes the checkpoint so that `path` always holds either its previous content or the
  /// complete new one: the bytes go to `path`.tmp (same directory, so rename is atomic), which
  /// is flushed and fsync'ed, then renamed over `path`, and the directory is fsync'ed so the
  /// rename itself survives a power loss. A stale `path`.tmp from a crashed run is overwritten.
  void save_atomic(const std::string& path) const {
    const std::vector<unsigned char> bytes = serialize();
    const std::string tmp = path + ".tmp";
    std::FILE* f = std::fopen(tmp.c_str(), "wb");
    DATANAS_CHECK(f != nullptr, "checkpoint '", path, "': cannot create '", tmp,
                  "': ", std::strerror(errno));
    const bool ok = std::fwrite(bytes.data(), 1, bytes.size(), f) == bytes.size() &&
                    std::fflush(f) == 0 && ::fsync(::fileno(f)) == 0;
    const int write_errno = errno;
    const bool closed = std::fclose(f) == 0;
    if (!ok || !closed) {
      std::remove(tmp.c_str());
      throw error(datanas::detail::concat("checkpoint '", path, "': writing '", tmp,
                                          "' failed: ", std::strerror(ok ? errno : write_errno)));
    }
    if (std::rename(tmp.c_str(), path.c_str()) != 0) {
      const int e = errno;
      std::remove(tmp.c_str());
      throw error(datanas::detail::concat("checkpoint '", path, "': cannot rename '", tmp,
                                          "' over it: ", std::strerror(e)));
    }
    std::string dir = std::filesystem::path(path).parent_path().string();
    if (dir.empty()) dir = ".";
    const int dfd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    DATANAS_CHECK(dfd >= 0, "checkpoint '", path, "': cannot open directory '", dir,
                  "' to sync it: ", std::strerror(errno));
    // Some file systems do not support fsync on directories (EINVAL); the rename is done then.
    const int rc = ::fsync(dfd);
    const int e = errno;
    ::close(dfd);
    DATANAS_CHECK(rc == 0 || e == EINVAL, "checkpoint '", path, "': fsync of directory '", dir,
                  "' failed: ", std::strerror(e));
  }

  [[nodiscard]] static const char* kind_name(Kind k) {
    switch (k) {
      case Kind::kFloat32Tensor:
        return "float32 tensor";
      case Kind::kFloat64Tensor:
        return "float64 tensor";
      case Kind::kInt32Tensor:
        return "int32 tensor";
      case Kind::kInt64:
        return "int64 scalar";
      case Kind::kFloat64:
        return "float64 scalar";
      case Kind::kString:
        return "string";
    }
    return "unknown";
  }

 private:
  struct Entry {
    std::string name;
    Kind kind;
    Shape shape;                      // tensors only
    std::vector<unsigned char> data;  // little-endian
  };

  template <Element T>
  static constexpr Kind kind_of() {
    if constexpr (std::same_as<T, float>)
      return Kind::kFloat32Tensor;
    else if constexpr (std::same_as<T, double>)
      return Kind::kFloat64Tensor;
    else
      return Kind::kInt32Tensor;
  }
  static bool is_tensor(Kind k) { return k <= Kind::kInt32Tensor; }
  static std::uint64_t element_size(Kind k) { return k == Kind::kFloat64Tensor ? 8 : 4; }

  std::string where(const std::string& name) const {
    return datanas::detail::concat("checkpoint '", source_, "': entry '", name, "'");
  }
  Entry& add(const std::string& name, Kind kind) {
    DATANAS_CHECK(!name.empty(), "checkpoint '", source_, "': empty entry name");
    DATANAS_CHECK(!has(name), where(name), " already exists (entry names must be unique)");
    index_.emplace(name, entries_.size());
    entries_.push_back(Entry{name, kind, Shape{}, {}});
    return entries_.back();
  }
  void put_scalar(const std::string& name, Kind kind, std::uint64_t bits) {
    Entry& e = add(name, kind);
    ckpt_detail::put_le(e.data, bits, 8);
  }
  const Entry& find(const std::string& name) const {
    const auto it = index_.find(name);
    DATANAS_CHECK(it != index_.end(), "checkpoint '", source_, "': no entry '", name, "'");
    return entries_[it->second];
  }
  const Entry& expect(const std::string& name, Kind kind) const {
    const Entry& e = find(name);
    DATANAS_CHECK(e.kind == kind, where(name), " holds a value of kind '", kind_name(e.kind),
                  "', expected '", kind_name(kind), "'");
    return e;
  }
  std::uint64_t scalar_bits(const std::string& name, Kind kind) const {
    return ckpt_detail::get_le(expect(name, kind).data.data(), 8);
  }

  std::string source_;
  std::vector<Entry> entries_;
  std::map<std::string, std::size_t> index_;
};

// ---- modules ------------------------------------------------------------------------------

/// Stores every parameter and buffer of `m` as entry prefix + dotted name
/// ("model." + "cell3.bn.running_var").
template <class T, class D>
void put_module(Checkpoint& ck, const std::string& prefix, const nn::Module<T, D>& m) {
  m.visit_parameters(
      [&](const std::string& name, const Var<T, D>& v) { ck.put(prefix + name, v.value()); });
  m.visit_buffers(
      [&](const std::string& name, const Tensor<T, D>& t) { ck.put(prefix + name, t); });
}

/// Copies the entries written by put_module back into m's parameters and buffers, in place
/// (optimisers holding the parameters see the new values). Every parameter and buffer must be
/// present with its shape and type. With `strict`, entries under a non-empty `prefix` that the
/// module does not have are an error too (a different architecture), as torch's strict
/// load_state_dict.
template <class T, class D>
void restore_module(const Checkpoint& ck, const std::string& prefix, nn::Module<T, D>& m,
                    bool strict = true) {
  std::size_t used = 0;
  m.visit_parameters([&](const std::string& name, const Var<T, D>& v) {
    ck.get_tensor_into(prefix + name, v.value());
    ++used;
  });
  m.visit_buffers([&](const std::string& name, const Tensor<T, D>& t) {
    ck.get_tensor_into(prefix + name, t);
    ++used;
  });
  if (!strict || prefix.empty()) return;
  std::vector<std::string> under;
  for (const std::string& n : ck.names())
    if (n.starts_with(prefix)) under.push_back(n);
  if (under.size() == used) return;
  // Find one entry the module lacks, to name it.
  std::map<std::string, bool> known;
  m.visit_parameters(
      [&](const std::string& name, const Var<T, D>&) { known[prefix + name] = true; });
  m.visit_buffers(
      [&](const std::string& name, const Tensor<T, D>&) { known[prefix + name] = true; });
  for (const std::string& n : under)
    DATANAS_CHECK(known.contains(n), "checkpoint '", ck.source(), "': entry '", n,
                  "' matches no parameter or buffer of the module (", under.size(),
                  " entries under '", prefix, "', the module has ", used, ")");
}

// ---- optimisers ---------------------------------------------------------------------------

/// Stores SGD's learning rate and momentum buffers (entries prefix + "lr",
/// prefix + "momentum_buffer.<i>" for parameter i; buffers not yet created are omitted).
template <class T, class D>
void put_optimizer(Checkpoint& ck, const std::string& prefix, optim::SGD<T, D>& opt) {
  ck.put(prefix + "type", "sgd");
  ck.put(prefix + "num_params", opt.params().size());
  ck.put(prefix + "lr", opt.lr());
  auto& bufs = opt.momentum_buffers();
  for (std::size_t i = 0; i < bufs.size(); ++i)
    if (bufs[i].defined()) ck.put(prefix + "momentum_buffer." + std::to_string(i), bufs[i]);
}

namespace ckpt_detail {
inline void check_optimizer(const Checkpoint& ck, const std::string& prefix, const char* type,
                            std::size_t num_params) {
  const std::string t = ck.get_string(prefix + "type");
  DATANAS_CHECK(t == type, "checkpoint '", ck.source(), "': entry '", prefix, "type' is '", t,
                "', but the optimiser being restored is ", type);
  const std::int64_t n = ck.get_int(prefix + "num_params");
  DATANAS_CHECK(n == std::int64_t(num_params), "checkpoint '", ck.source(), "': the ", type,
                " state under '", prefix, "' is for ", n, " parameters, the optimiser has ",
                num_params);
}
/// Restores buffer i from `name` when present (allocated with the parameter's shape), or
/// leaves it undefined ("not created yet") when the checkpoint has no such entry.
template <class T, class D>
void restore_buffer(const Checkpoint& ck, const std::string& name, const Shape& shape,
                    Tensor<T, D>& buf) {
  if (!ck.has(name)) {
    buf = Tensor<T, D>();
    return;
  }
  if (!buf.defined() || buf.shape() != shape) buf = Tensor<T, D>::empty(shape);
  ck.get_tensor_into(name, buf);
}
}  // namespace ckpt_detail

/// Restores what put_optimizer(SGD) stored; the optimiser must hold as many parameters, of the
/// same shapes, in the same order.
template <class T, class D>
void restore_optimizer(const Checkpoint& ck, const std::string& prefix, optim::SGD<T, D>& opt) {
  ckpt_detail::check_optimizer(ck, prefix, "sgd", opt.params().size());
  opt.set_lr(ck.get_double(prefix + "lr"));
  auto& bufs = opt.momentum_buffers();
  for (std::size_t i = 0; i < bufs.size(); ++i)
    ckpt_detail::restore_buffer(ck, prefix + "momentum_buffer." + std::to_string(i),
                                opt.params()[i].value().shape(), bufs[i]);
}

/// What checkpointing an Adam-like optimiser needs from it (torch's state names). optim::Adam
/// satisfies this once it has these accessors.
template <class O, class T, class D = Cpu>
concept AdamCheckpointable = requires(O& o, const O& co, long t) {
  { co.lr() } -> std::convertible_to<double>;
  { co.params() } -> std::same_as<const std::vector<Var<T, D>>&>;
  { o.exp_avg() } -> std::same_as<std::vector<Tensor<T, D>>&>;
  { o.exp_avg_sq() } -> std::same_as<std::vector<Tensor<T, D>>&>;
  { co.step_count() } -> std::convertible_to<long>;
  o.set_step_count(t);
  o.set_lr(1.0);
};

/// Stores an Adam optimiser's learning rate, step count and moment estimates
/// (prefix + "exp_avg.<i>", prefix + "exp_avg_sq.<i>").
template <class T, class D, template <class, class> class Opt>
requires AdamCheckpointable<Opt<T, D>, T, D>
void put_optimizer(Checkpoint& ck, const std::string& prefix, Opt<T, D>& opt) {
  ck.put(prefix + "type", "adam");
  ck.put(prefix + "num_params", opt.params().size());
  ck.put(prefix + "lr", opt.lr());
  ck.put(prefix + "step", std::int64_t(opt.step_count()));
  for (std::size_t i = 0; i < opt.exp_avg().size(); ++i) {
    if (opt.exp_avg()[i].defined())
      ck.put(prefix + "exp_avg." + std::to_string(i), opt.exp_avg()[i]);
    if (opt.exp_avg_sq()[i].defined())
      ck.put(prefix + "exp_avg_sq." + std::to_string(i), opt.exp_avg_sq()[i]);
  }
}

/// Restores what put_optimizer(Adam) stored.
template <class T, class D, template <class, class> class Opt>
requires AdamCheckpointable<Opt<T, D>, T, D>
void restore_optimizer(const Checkpoint& ck, const std::string& prefix, Opt<T, D>& opt) {
  ckpt_detail::check_optimizer(ck, prefix, "adam", opt.params().size());
  opt.set_lr(ck.get_double(prefix + "lr"));
  opt.set_step_count(long(ck.get_int(prefix + "step")));
  for (std::size_t i = 0; i < opt.exp_avg().size(); ++i) {
    const Shape& s = opt.params()[i].value().shape();
    ckpt_detail::restore_buffer(ck, prefix + "exp_avg." + std::to_string(i), s, opt.exp_avg()[i]);
    ckpt_detail::restore_buffer(ck, prefix + "exp_avg_sq." + std::to_string(i), s,
                                opt.exp_avg_sq()[i]);
  }
}

// ---- random generators --------------------------------------------------------------------

/// Stores a generator's whole state as name + ".seed" and name + ".offset".
inline void put_generator(Checkpoint& ck, const std::string& name, const PhiloxGenerator& gen) {
  ck.put(name + ".seed", gen.seed());
  ck.put(name + ".offset", gen.offset());
}

/// Sets `gen` to the stored state: it then draws exactly what the saved generator would have.
inline void restore_generator(const Checkpoint& ck, const std::string& name, PhiloxGenerator& gen) {
  gen.set_state(static_cast<std::uint64_t>(ck.get_int(name + ".seed")),
                static_cast<std::uint64_t>(ck.get_int(name + ".offset")));
}

}  // namespace datanas::io
