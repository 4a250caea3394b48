// datanas/io/json.hpp - a small, strict JSON value type, parser and writer.
//
// Enough for the files datanas reads and writes (genotype.json, alpha.json, run summaries):
// objects (keys kept in insertion order), arrays, numbers (double), strings with every JSON
// escape including \uXXXX surrogate pairs, true, false, null. Strict RFC 8259: no comments, no
// trailing commas, no NaN/Infinity, no leading zeros or '+', no duplicate keys, no control
// characters inside strings, nothing but whitespace after the value. Every parse error throws
// datanas::error "<source>, offset N (line L, column C): expected X, found Y".
#pragma once

#include <charconv>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <string>
#include <string_view>
#include <type_traits>
#include <unordered_set>
#include <utility>
#include <vector>

#include "datanas/core/error.hpp"

namespace datanas::io {

/// One JSON value. Arrays are std::vector<Json>; objects are (key, value) pairs in the order they
/// were written or parsed (lookups are linear: the files here have a handful of keys).
class Json {
 public:
  enum class Type { kNull, kBool, kNumber, kString, kArray, kObject };
  using Array = std::vector<Json>;
  using Member = std::pair<std::string, Json>;
  using Object = std::vector<Member>;

  Json() = default;  // null
  Json(std::nullptr_t) {}
  Json(bool b) : type_(Type::kBool), bool_(b) {}
  template <class N>
  requires(std::is_arithmetic_v<N> && !std::is_same_v<N, bool>) Json(N v)
      : type_(Type::kNumber), number_(static_cast<double>(v)) {}
  Json(std::string s) : type_(Type::kString), string_(std::move(s)) {}
  Json(std::string_view s) : type_(Type::kString), string_(s) {}
  Json(const char* s) : type_(Type::kString), string_(s) {}
  Json(Array a) : type_(Type::kArray), array_(std::move(a)) {}
  Json(Object o) : type_(Type::kObject), object_(std::move(o)) {}

  static Json array(Array a = {}) { return Json(std::move(a)); }
  static Json object(Object o = {}) { return Json(std::move(o)); }

  [[nodiscard]] Type type() const { return type_; }
  [[nodiscard]] bool is_null() const { return type_ == Type::kNull; }
  [[nodiscard]] bool is_bool() const { return type_ == Type::kBool; }
  [[nodiscard]] bool is_number() const { return type_ == Type::kNumber; }
  [[nodiscard]] bool is_string() const { return type_ == Type::kString; }
  [[nodiscard]] bool is_array() const { return type_ == Type::kArray; }
  [[nodiscard]] bool is_object() const { return type_ == Type::kObject; }
  /// True for a number with no fractional part that fits in a long long.
  [[nodiscard]] bool is_integer() const {
    return is_number() && std::isfinite(number_) && number_ == std::trunc(number_) &&
           std::abs(number_) < 9.2e18;
  }

  /// Typed access; the wrong type throws datanas::error naming both types.
  [[nodiscard]] bool as_bool() const { return expect(Type::kBool), bool_; }
  [[nodiscard]] double as_number() const { return expect(Type::kNumber), number_; }
  [[nodiscard]] long long as_integer() const {
    DATANAS_CHECK(is_integer(), "JSON: expected an integer, found ", describe());
    return static_cast<long long>(number_);
  }
  [[nodiscard]] const std::string& as_string() const { return expect(Type::kString), string_; }
  [[nodiscard]] const Array& as_array() const { return expect(Type::kArray), array_; }
  [[nodiscard]] Array& as_array() { return expect(Type::kArray), array_; }
  [[nodiscard]] const Object& as_object() const { return expect(Type::kObject), object_; }
  [[nodiscard]] Object& as_object() { return expect(Type::kObject), object_; }

  /// Object member by key, or nullptr when absent (throws if this is not an object).
  [[nodiscard]] const Json* find(std::string_view key) const {
    for (const auto& [k, v] : as_object())
      if (k == key) return &v;
    return nullptr;
  }
  /// Object member by key; a missing key throws.
  [[nodiscard]] const Json& at(std::string_view key) const {
    const Json* v = find(key);
    DATANAS_CHECK(v != nullptr, "JSON: missing key \"", key, "\"");
    return *v;
  }
  /// Sets (or replaces) an object member; turns a null value into an empty object first.
  Json& set(std::string key, Json value) {
    if (is_null()) type_ = Type::kObject;
    for (auto& [k, v] : as_object())
      if (k == key) return v = std::move(value);
    object_.emplace_back(std::move(key), std::move(value));
    return object_.back().second;
  }
  /// Object member by key, inserted as null when absent (a null value becomes an object first):
  /// `summary["gap"] = 0.5;`.
  Json& operator[](std::string_view key) {
    if (is_null()) type_ = Type::kObject;
    for (auto& [k, v] : as_object())
      if (k == key) return v;
    object_.emplace_back(std::string(key), Json());
    return object_.back().second;
  }
  /// Object member by key; a missing key throws (as at()).
  const Json& operator[](std::string_view key) const { return at(key); }
  /// This value as JSON text (see dump_json).
  [[nodiscard]] std::string dump(int indent = -1) const;
  /// Appends to an array; turns a null value into an empty array first.
  Json& push_back(Json value) {
    if (is_null()) type_ = Type::kArray;
    as_array().push_back(std::move(value));
    return array_.back();
  }
  /// Number of elements (array) or members (object); 0 for scalars.
  [[nodiscard]] std::size_t size() const {
    return is_array() ? array_.size() : is_object() ? object_.size() : 0;
  }

  [[nodiscard]] static const char* type_name(Type t) {
    switch (t) {
      case Type::kNull:
        return "null";
      case Type::kBool:
        return "a boolean";
      case Type::kNumber:
        return "a number";
      case Type::kString:
        return "a string";
      case Type::kArray:
        return "an array";
      case Type::kObject:
        return "an object";
    }
    return "?";
  }
  /// "a string", "the number 3.5", ... for error messages.
  [[nodiscard]] std::string describe() const {
    if (is_number()) return "the number " + format_number(number_);
    if (is_bool()) return bool_ ? "true" : "false";
    return type_name(type_);
  }

  friend bool operator==(const Json& a, const Json& b) {
    if (a.type_ != b.type_) return false;
    switch (a.type_) {
      case Type::kNull:
        return true;
      case Type::kBool:
        return a.bool_ == b.bool_;
      case Type::kNumber:
        return a.number_ == b.number_;
      case Type::kString:
        return a.string_ == b.string_;
      case Type::kArray:
        return a.array_ == b.array_;
      case Type::kObject:
        return a.object_ == b.object_;
    }
    return false;
  }

  /// Shortest text that reads back to exactly the same double ("2", "0.1", "1e-07").
  [[nodiscard]] static std::string format_number(double v) {
    DATANAS_CHECK(std::isfinite(v), "JSON cannot represent the number ", v);
    char buf[32];
    const auto r = std::to_chars(buf, buf + sizeof buf, v);
    return std::string(buf, r.ptr);
  }

 private:
  void expect(Type t) const {
    DATANAS_CHECK(type_ == t, "JSON: expected ", type_name(t), ", found ", describe());
  }

  Type type_ = Type::kNull;
  bool bool_ = false;
  double number_ = 0;
  std::string string_;
  Array array_;
  Object object_;
};

namespace detail {

class JsonParser {
 public:
  JsonParser(std::string_view text, std::string_view source) : s_(text), source_(source) {}

  Json parse_document() {
    skip_ws();
    Json v = parse_value(0);
    skip_ws();
    if (pos_ != s_.size()) fail("end of input after the value");
    return v;
  }

 private:
  // Deep enough for any real file, shallow enough that recursion cannot overflow the stack.
  static constexpr int kMaxDepth = 256;

  [[noreturn]] void fail(std::string_view expected) const {
    int line = 1, col = 1;
    for (std::size_t i = 0; i < pos_ && i < s_.size(); ++i) {
      if (s_[i] == '\n') {
        ++line;
        col = 1;
      } else {
        ++col;
      }
    }
    throw error(datanas::detail::concat(source_, ", offset ", pos_, " (line ", line, ", column ",
                                        col, "): expected ", expected, ", found ", found()));
  }
  std::string found() const {
    if (pos_ >= s_.size()) return "end of input";
    const unsigned char c = static_cast<unsigned char>(s_[pos_]);
    if (c < 0x20 || c >= 0x7f) {
      char buf[16];
      std::snprintf(buf, sizeof buf, "byte 0x%02x", unsigned(c));
      return buf;
    }
    return std::string("'") + char(c) + "'";
  }
  void skip_ws() {
    while (pos_ < s_.size() &&
           (s_[pos_] == ' ' || s_[pos_] == '\t' || s_[pos_] == '\n' || s_[pos_] == '\r'))
      ++pos_;
  }
  bool peek(char c) const { return pos_ < s_.size() && s_[pos_] == c; }

  Json parse_value(int depth) {
    if (depth > kMaxDepth) fail("at most 256 levels of nesting");
    if (pos_ >= s_.size()) fail("a value");
    const char c = s_[pos_];
    if (c == '{') return parse_object(depth);
    if (c == '[') return parse_array(depth);
    if (c == '"') return Json(parse_string());
    if (c == '-' || (c >= '0' && c <= '9')) return Json(parse_number());
    if (s_.substr(pos_).starts_with("true")) return pos_ += 4, Json(true);
    if (s_.substr(pos_).starts_with("false")) return pos_ += 5, Json(false);
    if (s_.substr(pos_).starts_with("null")) return pos_ += 4, Json();
    fail("a value (object, array, string, number, true, false or null)");
  }

  Json parse_object(int depth) {
    ++pos_;  // '{'
    Json::Object members;
    std::unordered_set<std::string> seen;  // the keys, once the object has kScan of them
    skip_ws();
    if (peek('}')) return ++pos_, Json(std::move(members));
    for (;;) {
      skip_ws();
      if (!peek('"')) fail("'\"' starting an object key");
      const std::size_t key_pos = pos_;
      std::string key = parse_string();
      // Duplicates by a scan while the object is small, by a set past that: a scan per key made
      // an object of many keys quadratic (found by fuzzing; 150,000 keys took about 15 s).
      constexpr std::size_t kScan = 16;
      bool duplicate = false;
      if (members.size() < kScan) {
        for (const auto& m : members) duplicate = duplicate || m.first == key;
      } else {
        if (seen.empty())
          for (const auto& m : members) seen.insert(m.first);
        duplicate = !seen.insert(key).second;
      }
      if (duplicate) {
        pos_ = key_pos;
        fail(datanas::detail::concat("a key other than the duplicate \"", key, "\""));
      }
      skip_ws();
      if (!peek(':')) fail("':' after an object key");
      ++pos_;
      skip_ws();
      Json v = parse_value(depth + 1);
      members.emplace_back(std::move(key), std::move(v));
      skip_ws();
      if (peek(',')) {
        ++pos_;
        continue;
      }
      if (peek('}')) return ++pos_, Json(std::move(members));
      fail("',' or '}' in an object");
    }
  }

  Json parse_array(int depth) {
    ++pos_;  // '['
    Json::Array items;
    skip_ws();
    if (peek(']')) return ++pos_, Json(std::move(items));
    for (;;) {
      skip_ws();
      items.push_back(parse_value(depth + 1));
      skip_ws();
      if (peek(',')) {
        ++pos_;
        continue;
      }
      if (peek(']')) return ++pos_, Json(std::move(items));
      fail("',' or ']' in an array");
    }
  }

  static bool digit(char c) { return c >= '0' && c <= '9'; }

  double parse_number() {
    // Validate the exact JSON grammar first: from_chars alone would accept "01", ".5" or "1.".
    const std::size_t start = pos_;
    if (peek('-')) ++pos_;
    if (peek('0')) {
      ++pos_;
      if (pos_ < s_.size() && digit(s_[pos_])) fail("'.', 'e' or the end of a number after 0");
    } else if (pos_ < s_.size() && digit(s_[pos_])) {
      while (pos_ < s_.size() && digit(s_[pos_])) ++pos_;
    } else {
      fail("a digit");
    }
    if (peek('.')) {
      ++pos_;
      if (!(pos_ < s_.size() && digit(s_[pos_]))) fail("a digit after '.'");
      while (pos_ < s_.size() && digit(s_[pos_])) ++pos_;
    }
    if (peek('e') || peek('E')) {
      ++pos_;
      if (peek('+') || peek('-')) ++pos_;
      if (!(pos_ < s_.size() && digit(s_[pos_]))) fail("a digit in the exponent");
      while (pos_ < s_.size() && digit(s_[pos_])) ++pos_;
    }
    double v = 0;
    const auto r = std::from_chars(s_.data() + start, s_.data() + pos_, v);
    if (r.ec != std::errc() || !std::isfinite(v)) {
      pos_ = start;
      fail("a number that fits in a double");
    }
    return v;
  }

  unsigned parse_hex4() {
    unsigned v = 0;
    for (int i = 0; i < 4; ++i) {
      if (pos_ >= s_.size()) fail("4 hex digits after \\u");
      const char c = s_[pos_];
      v <<= 4;
      if (c >= '0' && c <= '9')
        v |= unsigned(c - '0');
      else if (c >= 'a' && c <= 'f')
        v |= unsigned(c - 'a' + 10);
      else if (c >= 'A' && c <= 'F')
        v |= unsigned(c - 'A' + 10);
      else
        fail("4 hex digits after \\u");
      ++pos_;
    }
    return v;
  }
  static void append_utf8(std::string& out, unsigned cp) {
    if (cp < 0x80) {
      out += char(cp);
    } else if (cp < 0x800) {
      out += char(0xC0 | (cp >> 6));
      out += char(0x80 | (cp & 0x3F));
    } else if (cp < 0x10000) {
      out += char(0xE0 | (cp >> 12));
      out += char(0x80 | ((cp >> 6) & 0x3F));
      out += char(0x80 | (cp & 0x3F));
    } else {
      out += char(0xF0 | (cp >> 18));
      out += char(0x80 | ((cp >> 12) & 0x3F));
      out += char(0x80 | ((cp >> 6) & 0x3F));
      out += char(0x80 | (cp & 0x3F));
    }
  }

  std::string parse_string() {
    ++pos_;  // opening quote
    std::string out;
    for (;;) {
      if (pos_ >= s_.size()) fail("'\"' closing the string");
      const char c = s_[pos_];
      if (c == '"') {
        ++pos_;
        return out;
      }
      if (static_cast<unsigned char>(c) < 0x20)
        fail("no raw control character in a string (use an escape)");
      if (c != '\\') {
        out += c;
        ++pos_;
        continue;
      }
      ++pos_;
      if (pos_ >= s_.size()) fail("an escape character after '\\'");
      const char e = s_[pos_++];
      switch (e) {
        case '"':
          out += '"';
          break;
        case '\\':
          out += '\\';
          break;
        case '/':
          out += '/';
          break;
        case 'b':
          out += '\b';
          break;
        case 'f':
          out += '\f';
          break;
        case 'n':
          out += '\n';
          break;
        case 'r':
          out += '\r';
          break;
        case 't':
          out += '\t';
          break;
        case 'u': {
          unsigned cp = parse_hex4();
          if (cp >= 0xD800 && cp < 0xDC00) {  // high surrogate: a low one must follow
            if (!s_.substr(pos_).starts_with("\\u")) fail("a low surrogate \\uDC00-\\uDFFF");
            pos_ += 2;
            const unsigned lo = parse_hex4();
            if (lo < 0xDC00 || lo >= 0xE000) {
              pos_ -= 6;
              fail("a low surrogate \\uDC00-\\uDFFF");
            }
            cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
          } else if (cp >= 0xDC00 && cp < 0xE000) {
            pos_ -= 6;
            fail("no unpaired low surrogate");
          }
          append_utf8(out, cp);
          break;
        }
        default:
          --pos_;
          fail("one of \\\" \\\\ \\/ \\b \\f \\n \\r \\t \\u after '\\'");
      }
    }
  }

  std::string_view s_;
  std::string_view source_;
  std::size_t pos_ = 0;
};

inline void json_write_string(std::string& out, std::string_view s) {
  out += '"';
  for (const char c : s) {
    switch (c) {
      case '"':
        out += "\\\"";
        break;
      case '\\':
        out += "\\\\";
        break;
      case '\b':
        out += "\\b";
        break;
      case '\f':
        out += "\\f";
        break;
      case '\n':
        out += "\\n";
        break;
      case '\r':
        out += "\\r";
        break;
      case '\t':
        out += "\\t";
        break;
      default:
        if (static_cast<unsigned char>(c) < 0x20) {
          char buf[8];
          std::snprintf(buf, sizeof buf, "\\u%04x", unsigned(c));
          out += buf;
        } else {
          out += c;  // UTF-8 passes through unchanged
        }
    }
  }
  out += '"';
}

inline bool json_is_flat(const Json& v) {
  if (v.is_array())
    for (const auto& x : v.as_array())
      if (x.is_array() || x.is_object()) return false;
  return !v.is_object() || v.size() == 0;
}

inline void json_write(std::string& out, const Json& v, int indent, int level) {
  switch (v.type()) {
    case Json::Type::kNull:
      out += "null";
      return;
    case Json::Type::kBool:
      out += v.as_bool() ? "true" : "false";
      return;
    case Json::Type::kNumber:
      out += Json::format_number(v.as_number());
      return;
    case Json::Type::kString:
      json_write_string(out, v.as_string());
      return;
    default:
      break;
  }
  // Containers: on one line (Python's json.dumps separators ", " and ": ") when compact or when
  // they hold only scalars (a row of alpha stays one line); else one element per line.
  const bool one_line = indent < 0 || json_is_flat(v);
  const std::string pad =
      one_line ? "" : "\n" + std::string(std::size_t(indent * (level + 1)), ' ');
  const std::string close_pad =
      one_line ? "" : "\n" + std::string(std::size_t(indent * level), ' ');
  const char* sep = one_line ? ", " : ",";
  if (v.is_array()) {
    out += '[';
    bool first = true;
    for (const auto& x : v.as_array()) {
      if (!first) out += sep;
      first = false;
      out += pad;
      json_write(out, x, indent, level + 1);
    }
    if (!v.as_array().empty()) out += close_pad;
    out += ']';
  } else {
    out += '{';
    bool first = true;
    for (const auto& [k, x] : v.as_object()) {
      if (!first) out += sep;
      first = false;
      out += pad;
      json_write_string(out, k);
      out += ": ";
      json_write(out, x, indent, level + 1);
    }
    if (!v.as_object().empty()) out += close_pad;
    out += '}';
  }
}

}  // namespace detail

/// Parses one JSON document. `source` names the text in error messages (a file name, "alpha JSON").
[[nodiscard]] inline Json parse_json(std::string_view text, std::string_view source = "JSON") {
  return detail::JsonParser(text, source).parse_document();
}

/// Writes `v` as JSON. indent < 0: one line, Python json.dumps style (", " and ": ").
/// indent >= 0: one element per line indented by `indent` spaces per level, except that arrays of
/// scalars stay on one line. Numbers are written in the shortest form that reads back exactly.
[[nodiscard]] inline std::string dump_json(const Json& v, int indent = -1) {
  std::string out;
  detail::json_write(out, v, indent, 0);
  return out;
}

inline std::string Json::dump(int indent) const { return dump_json(*this, indent); }

}  // namespace datanas::io
