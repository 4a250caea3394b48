// datanas/search/genotype.hpp - discrete cell architectures (genotypes): the type, the DARTS and
// DATA text forms, JSON, Graphviz pictures, validation and the published cells.
//
// A cell has two inputs (states 0 and 1: the outputs of cells k-2 and k-1) and n intermediate
// nodes; node i is state i + 2 and is the sum of its (op, input) terms, where input is a state
// index < i + 2. The cell output concatenates the states listed in `concat` (ALGORITHMS.md §1.3).
//
// Text forms (both written by to_text and read by parse_genotype):
//   DARTS flat:  Genotype(normal=[('sep_conv_3x3', 0), ('sep_conv_3x3', 1), ...],
//                normal_concat=[2, 3, 4, 5], reduce=[...], reduce_concat=[2, 3, 4, 5])
//                - pairs 2i and 2i+1 feed node i; used when every node of both cells has 2 pairs.
//   DATA nested: Genotype(normal=[[('skip_connect', 0), ('sep_conv_3x3', 0)], [...], ...], ...)
//                - one list of pairs per node, any number >= 1 of pairs.
#pragma once

#include <algorithm>
#include <array>
#include <cctype>
#include <charconv>
#include <cstdio>
#include <filesystem>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "datanas/core/error.hpp"
#include "datanas/io/files.hpp"
#include "datanas/io/json.hpp"

namespace datanas::search {

/// The DARTS CNN candidate ops in alpha column order (ALGORITHMS.md §1.1).
inline constexpr std::array<std::string_view, 8> kDartsOps = {
    "none",         "max_pool_3x3", "avg_pool_3x3", "skip_connect",
    "sep_conv_3x3", "sep_conv_5x5", "dil_conv_3x3", "dil_conv_5x5"};

/// One term of a node: op applied to state `input` (0, 1 = cell inputs, 2.. = earlier nodes).
struct OpInput {
  std::string op;
  int input = 0;
  friend bool operator==(const OpInput&, const OpInput&) = default;
};

/// One cell: nodes[i] lists the terms summed into node i (state i + 2); concat lists the states
/// concatenated into the cell output.
struct CellGenotype {
  std::vector<std::vector<OpInput>> nodes;
  std::vector<int> concat;
  friend bool operator==(const CellGenotype&, const CellGenotype&) = default;
};

/// A normal cell and a reduction cell.
struct Genotype {
  CellGenotype normal, reduce;
  friend bool operator==(const Genotype&, const Genotype&) = default;
};

/// Groups a DARTS flat pair list (pairs 2i, 2i+1 feed node i) into a cell. The list must be even.
[[nodiscard]] inline CellGenotype cell_from_pairs(const std::vector<OpInput>& pairs,
                                                  std::vector<int> concat) {
  DATANAS_CHECK(pairs.size() % 2 == 0, "a DARTS flat list needs an even number of pairs, got ",
                pairs.size());
  CellGenotype c;
  for (std::size_t i = 0; i < pairs.size(); i += 2) c.nodes.push_back({pairs[i], pairs[i + 1]});
  c.concat = std::move(concat);
  return c;
}

/// True when every node of both cells has exactly 2 pairs: the DARTS flat form applies.
[[nodiscard]] inline bool is_darts_form(const Genotype& g) {
  for (const CellGenotype* c : {&g.normal, &g.reduce})
    for (const auto& n : c->nodes)
      if (n.size() != 2) return false;
  return true;
}

/// [2, 3, ..., nodes + 1]: every intermediate node, the usual concat.
[[nodiscard]] inline std::vector<int> default_concat(int nodes) {
  std::vector<int> c;
  for (int i = 0; i < nodes; ++i) c.push_back(i + 2);
  return c;
}

// ---- text form ---------------------------------------------------------------------------------

namespace detail {

// Python's repr() of an ASCII string: single quotes unless the text holds one and no double quote.
inline void py_repr(std::string& out, std::string_view s) {
  const char q = (s.find('\'') != std::string_view::npos && s.find('"') == std::string_view::npos)
                     ? '"'
                     : '\'';
  out += q;
  for (const char c : s) {
    if (c == q || c == '\\') {
      out += '\\';
      out += c;
    } else if (c == '\n') {
      out += "\\n";
    } else if (c == '\t') {
      out += "\\t";
    } else if (c == '\r') {
      out += "\\r";
    } else if (static_cast<unsigned char>(c) < 0x20 || c == 0x7f) {
      char buf[8];
      std::snprintf(buf, sizeof buf, "\\x%02x", unsigned(static_cast<unsigned char>(c)));
      out += buf;
    } else {
      out += c;
    }
  }
  out += q;
}

inline void write_pair(std::string& out, const OpInput& p) {
  out += '(';
  py_repr(out, p.op);
  out += ", " + std::to_string(p.input) + ')';
}

inline void write_ints(std::string& out, const std::vector<int>& v) {
  out += '[';
  for (std::size_t i = 0; i < v.size(); ++i) out += (i ? ", " : "") + std::to_string(v[i]);
  out += ']';
}

inline void write_cell(std::string& out, const CellGenotype& c, bool flat) {
  out += '[';
  bool first = true;
  for (const auto& node : c.nodes) {
    if (flat) {
      for (const auto& p : node) {
        if (!first) out += ", ";
        first = false;
        write_pair(out, p);
      }
    } else {
      if (!first) out += ", ";
      first = false;
      out += '[';
      for (std::size_t j = 0; j < node.size(); ++j) {
        if (j) out += ", ";
        write_pair(out, node[j]);
      }
      out += ']';
    }
  }
  out += ']';
}

inline constexpr std::array<std::string_view, 4> kGenotypeFields = {"normal", "normal_concat",
                                                                    "reduce", "reduce_concat"};

// Recursive-descent reader for the Python text forms. Lenient where pasted text varies (quotes,
// whitespace, comments, trailing commas, range(), prefixes), strict about structure.
class GenotypeParser {
 public:
  explicit GenotypeParser(std::string_view s) : s_(s) {}

  Genotype parse() {
    skip();
    // "NAME = Genotype(...)" as in genotypes.py or a log line: drop the assignment.
    const std::size_t start = pos_;
    std::string name = dotted_ident();
    skip();
    if (!name.empty() && name.find('.') == std::string::npos && !is_field(name) && peek('=') &&
        !peek_at(1, '=')) {
      ++pos_;
      skip();
      name = dotted_ident();
      skip();
    }
    bool parens = false;
    if (peek('(')) {
      ++pos_;
      parens = true;
    } else if (!name.empty() && !is_field(name)) {
      fail(concat("'(' after '", name, "'"));
    } else {
      pos_ = start;  // bare "normal=[...], normal_concat=..." without Genotype(...)
      skip();
    }

    std::array<bool, 4> seen{};
    std::size_t positional = 0;
    bool keywords = false;
    Genotype g;
    for (;;) {
      skip();
      if (parens ? peek(')') : at_end()) break;
      std::size_t field = 0;
      const std::size_t field_pos = pos_;
      const std::string key = ident();
      skip();
      if (!key.empty() && peek('=')) {
        ++pos_;
        const auto it = std::find(kGenotypeFields.begin(), kGenotypeFields.end(), key);
        if (it == kGenotypeFields.end()) {
          pos_ = field_pos;
          fail(concat("a field name (normal, normal_concat, reduce, reduce_concat) instead of '",
                      key, "'"));
        }
        field = std::size_t(it - kGenotypeFields.begin());
        keywords = true;
      } else {
        pos_ = field_pos;  // a positional field, in namedtuple order
        if (keywords) fail("'name=' (positional fields cannot follow keyword fields)");
        if (positional >= 4) fail(parens ? "')' after 4 fields" : "end of text after 4 fields");
        field = positional++;
      }
      if (seen[field]) {
        pos_ = field_pos;
        fail(concat("each field once, but '", kGenotypeFields[field], "' appears again"));
      }
      seen[field] = true;
      skip();
      switch (field) {
        case 0:
          g.normal.nodes = parse_cell();
          break;
        case 1:
          g.normal.concat = parse_concat();
          break;
        case 2:
          g.reduce.nodes = parse_cell();
          break;
        default:
          g.reduce.concat = parse_concat();
          break;
      }
      skip();
      if (peek(',')) {
        ++pos_;
        continue;
      }
      if (parens ? peek(')') : at_end()) break;
      fail(concat(parens ? "',' or ')'" : "',' or end of text", " after field '",
                  kGenotypeFields[field], "'"));
    }
    for (std::size_t f = 0; f < 4; ++f)
      if (!seen[f]) fail(concat("field '", kGenotypeFields[f], "' (it is missing)"));
    if (parens) {
      ++pos_;
      skip();
      if (!at_end()) fail("end of text after ')'");
    }
    return g;
  }

 private:
  template <class... A>
  static std::string concat(const A&... a) {
    return datanas::detail::concat(a...);
  }
  static bool is_field(std::string_view n) {
    return std::find(kGenotypeFields.begin(), kGenotypeFields.end(), n) != kGenotypeFields.end();
  }

  [[noreturn]] void fail(std::string_view expected) const {
    std::string found = "end of text";
    if (pos_ < s_.size()) {
      const unsigned char c = static_cast<unsigned char>(s_[pos_]);
      if (c < 0x20 || c >= 0x7f) {
        char buf[16];
        std::snprintf(buf, sizeof buf, "byte 0x%02x", unsigned(c));
        found = buf;
      } else {
        found = std::string("'") + char(c) + "'";
      }
    }
    throw error(concat("genotype text, offset ", pos_, ": expected ", expected, ", found ", found));
  }

  bool at_end() const { return pos_ >= s_.size(); }
  bool peek(char c) const { return pos_ < s_.size() && s_[pos_] == c; }
  bool peek_at(std::size_t k, char c) const { return pos_ + k < s_.size() && s_[pos_ + k] == c; }
  void expect(char c, std::string_view what) {
    if (!peek(c)) fail(what);
    ++pos_;
  }

  // Whitespace, line breaks, Python comments and backslash line continuations.
  void skip() {
    while (pos_ < s_.size()) {
      const char c = s_[pos_];
      if (std::isspace(static_cast<unsigned char>(c))) {
        ++pos_;
      } else if (c == '#') {
        while (pos_ < s_.size() && s_[pos_] != '\n') ++pos_;
      } else if (c == '\\' && (peek_at(1, '\n') || (peek_at(1, '\r') && peek_at(2, '\n')))) {
        pos_ += peek_at(1, '\n') ? 2 : 3;
      } else {
        break;
      }
    }
  }

  std::string ident() {
    const std::size_t b = pos_;
    if (pos_ < s_.size() &&
        (std::isalpha(static_cast<unsigned char>(s_[pos_])) || s_[pos_] == '_')) {
      while (pos_ < s_.size() &&
             (std::isalnum(static_cast<unsigned char>(s_[pos_])) || s_[pos_] == '_'))
        ++pos_;
    }
    return std::string(s_.substr(b, pos_ - b));
  }
  std::string dotted_ident() {
    std::string n = ident();
    while (!n.empty() && peek('.')) {
      const std::size_t dot = pos_++;
      std::string part = ident();
      if (part.empty()) {
        pos_ = dot;
        break;
      }
      n += '.' + part;
    }
    return n;
  }

  int parse_int() {
    const std::size_t b = pos_;
    if (peek('-')) ++pos_;
    while (pos_ < s_.size() && std::isdigit(static_cast<unsigned char>(s_[pos_]))) ++pos_;
    int v = 0;
    const auto r = std::from_chars(s_.data() + b, s_.data() + pos_, v);
    if (r.ec != std::errc() || r.ptr != s_.data() + pos_) {
      pos_ = b;
      fail("an integer");
    }
    return v;
  }

  std::string parse_string() {
    if (!peek('\'') && !peek('"')) fail("a quoted op name");
    const char q = s_[pos_++];
    std::string out;
    for (;;) {
      if (at_end() || s_[pos_] == '\n') fail(concat("the closing quote ", q, " of the op name"));
      const char c = s_[pos_++];
      if (c == q) return out;
      if (c != '\\') {
        out += c;
        continue;
      }
      if (at_end()) fail("an escaped character after '\\'");
      const char e = s_[pos_++];
      switch (e) {
        case 'n':
          out += '\n';
          break;
        case 't':
          out += '\t';
          break;
        case 'r':
          out += '\r';
          break;
        case 'x': {
          unsigned v = 0;
          const auto r =
              std::from_chars(s_.data() + pos_, s_.data() + std::min(pos_ + 2, s_.size()), v, 16);
          if (r.ptr != s_.data() + pos_ + 2) fail("two hex digits after \\x");
          pos_ += 2;
          out += char(v);
          break;
        }
        default:
          out += e;  // \' \" \\ and anything else: the character itself
      }
    }
  }

  OpInput parse_pair() {
    expect('(', "'(' starting an (op, input) pair");
    skip();
    OpInput p;
    p.op = parse_string();
    skip();
    expect(',', "',' after the op name of a pair");
    skip();
    p.input = parse_int();
    skip();
    if (peek(',')) {
      ++pos_;
      skip();
    }
    expect(')', "')' closing the (op, input) pair");
    return p;
  }

  // After an item of a list: ',' (with an optional trailing comma before ']') or ']'.
  // Returns true when the list continues.
  bool list_next(std::string_view after) {
    skip();
    if (peek(',')) {
      ++pos_;
      skip();
      if (peek(']')) {
        ++pos_;
        return false;
      }
      return true;
    }
    if (peek(']')) {
      ++pos_;
      return false;
    }
    fail(concat("',' or ']' after ", after));
  }

  std::vector<std::vector<OpInput>> parse_cell() {
    const std::size_t list_pos = pos_;
    expect('[', "'[' starting a cell's list of pairs");
    skip();
    std::vector<std::vector<OpInput>> nodes;
    if (peek(']')) {
      ++pos_;
      return nodes;
    }
    if (peek('(')) {  // DARTS flat form
      std::vector<OpInput> flat;
      do {
        flat.push_back(parse_pair());
      } while (list_next("pair"));
      if (flat.size() % 2 != 0) {
        pos_ = list_pos;
        fail(
            concat("an even number of pairs in the flat list (pairs 2i, 2i+1 feed node i), "
                   "but it has ",
                   flat.size()));
      }
      for (std::size_t i = 0; i < flat.size(); i += 2) nodes.push_back({flat[i], flat[i + 1]});
      return nodes;
    }
    if (!peek('[')) fail("'(' (a DARTS pair) or '[' (a DATA node's list of pairs)");
    do {  // DATA nested form
      expect('[', "'[' starting a node's list of pairs");
      skip();
      if (peek(']')) fail(concat("at least one (op, input) pair in node ", nodes.size()));
      std::vector<OpInput> node;
      do {
        node.push_back(parse_pair());
      } while (list_next("pair"));
      nodes.push_back(std::move(node));
    } while (list_next("a node's list"));
    return nodes;
  }

  // depth: how many list( wrap this one. Bounded, so that text nesting list( a million times
  // is an error rather than a stack overflow.
  std::vector<int> parse_concat(int depth = 0) {
    std::vector<int> v;
    if (peek('[') || peek('(')) {
      const char close = peek('[') ? ']' : ')';
      ++pos_;
      skip();
      if (peek(close)) return ++pos_, v;
      for (;;) {
        v.push_back(parse_int());
        skip();
        if (peek(',')) {
          ++pos_;
          skip();
          if (peek(close)) return ++pos_, v;
          continue;
        }
        if (peek(close)) return ++pos_, v;
        fail(concat("',' or '", close, "' in the concat list"));
      }
    }
    const std::size_t b = pos_;
    const std::string fn = ident();
    skip();
    if (fn == "list" && peek('(')) {  // list(range(2, 6))
      if (depth >= 4) {
        pos_ = b;
        fail("a concat list, not list(...) nested more than 4 deep");
      }
      ++pos_;
      skip();
      v = parse_concat(depth + 1);
      skip();
      expect(')', "')' closing list(");
      return v;
    }
    if (fn != "range" || !peek('(')) {
      pos_ = b;
      fail("a concat list: [2, 3, 4, 5] or range(2, 6)");
    }
    ++pos_;
    std::vector<int> a;
    for (;;) {
      skip();
      if (peek(')') && !a.empty()) break;
      if (a.size() == 3) fail("')' after range's 3 arguments");
      a.push_back(parse_int());
      skip();
      if (peek(',')) {
        ++pos_;
        continue;
      }
      if (!peek(')')) fail("',' or ')' in range(...)");
    }
    const std::size_t close = pos_++;
    const long start = a.size() >= 2 ? a[0] : 0;
    const long stop = a.size() >= 2 ? a[1] : a[0];
    const long step = a.size() == 3 ? a[2] : 1;
    if (step == 0 || (stop - start) / step > 4096) {
      pos_ = close;
      fail("a range with a non-zero step and at most 4096 elements");
    }
    for (long i = start; step > 0 ? i < stop : i > stop; i += step) v.push_back(int(i));
    return v;
  }

  std::string_view s_;
  std::size_t pos_ = 0;
};

}  // namespace detail

/// The text form: DARTS flat when every node of both cells has exactly 2 pairs, else DATA nested
/// (see the file comment). Separators are ", " and names use Python repr quotes, so the output
/// is what Python prints for the same namedtuple and parse_genotype(to_text(g)) == g.
[[nodiscard]] inline std::string to_text(const Genotype& g) {
  const bool flat = is_darts_form(g);
  std::string out = "Genotype(normal=";
  detail::write_cell(out, g.normal, flat);
  out += ", normal_concat=";
  detail::write_ints(out, g.normal.concat);
  out += ", reduce=";
  detail::write_cell(out, g.reduce, flat);
  out += ", reduce_concat=";
  detail::write_ints(out, g.reduce.concat);
  out += ')';
  return out;
}

/// Reads either text form, as printed by to_text or pasted from DARTS-family logs and
/// genotypes.py: optional `NAME =` assignment, optional (module-qualified) `Genotype` prefix or
/// no parentheses at all, keyword fields in any order (or positional in namedtuple order),
/// either quote style, any whitespace, line breaks, `#` comments, trailing commas, concat as a
/// list, a tuple, range(b), range(a, b[, step]) or list(range(...)). A flat list must have an
/// even length; nested nodes must be non-empty; all four fields are required.
/// Throws datanas::error "genotype text, offset N: expected X, found Y".
[[nodiscard]] inline Genotype parse_genotype(std::string_view text) {
  return detail::GenotypeParser(text).parse();
}

// ---- validation --------------------------------------------------------------------------------

/// Checks one cell: `nodes` intermediate nodes when nodes > 0; every node has >= 1 pair; every op
/// is in `op_names`; node i's inputs lie in [0, i + 2); concat is non-empty, without repeats, in
/// [0, n + 2). Errors name the cell, the node and the offending op or input.
inline void validate(const CellGenotype& c, std::string_view cell,
                     std::span<const std::string_view> op_names, int nodes = 0) {
  const int n = int(c.nodes.size());
  DATANAS_CHECK(nodes <= 0 || n == nodes, cell, " cell: ", n, " nodes, expected ", nodes);
  DATANAS_CHECK(n >= 1, cell, " cell: no nodes");
  for (int i = 0; i < n; ++i) {
    DATANAS_CHECK(!c.nodes[std::size_t(i)].empty(), cell, " cell, node ", i,
                  ": no (op, input) pairs");
    for (const auto& p : c.nodes[std::size_t(i)]) {
      if (std::find(op_names.begin(), op_names.end(), p.op) == op_names.end()) {
        std::string known;
        for (const auto& o : op_names) known += (known.empty() ? "" : ", ") + std::string(o);
        throw error(datanas::detail::concat(cell, " cell, node ", i, ": unknown op '", p.op,
                                            "' (known: ", known, ")"));
      }
      DATANAS_CHECK(p.input >= 0 && p.input < i + 2, cell, " cell, node ", i, ": op '", p.op,
                    "' has input ", p.input, ", outside [0, ", i + 2,
                    ") (0, 1 = cell inputs, 2.. = earlier nodes)");
    }
  }
  DATANAS_CHECK(!c.concat.empty(), cell, " cell: empty concat list");
  for (std::size_t k = 0; k < c.concat.size(); ++k) {
    DATANAS_CHECK(c.concat[k] >= 0 && c.concat[k] < n + 2, cell, " cell: concat index ",
                  c.concat[k], " outside [0, ", n + 2, ")");
    DATANAS_CHECK(std::find(c.concat.begin(), c.concat.begin() + long(k), c.concat[k]) ==
                      c.concat.begin() + long(k),
                  cell, " cell: concat index ", c.concat[k], " repeated");
  }
}

/// Validates both cells (see the cell overload); nodes > 0 also fixes the node count.
inline void validate(const Genotype& g,
                     std::span<const std::string_view> op_names = std::span(kDartsOps),
                     int nodes = 0) {
  validate(g.normal, "normal", op_names, nodes);
  validate(g.reduce, "reduce", op_names, nodes);
}

// ---- JSON --------------------------------------------------------------------------------------

/// {"normal": [[["sep_conv_3x3", 0], ["skip_connect", 1]], ...], "normal_concat": [2, 3, 4, 5],
///  "reduce": [...], "reduce_concat": [...]}: one list of [op, input] pairs per node, always.
[[nodiscard]] inline io::Json genotype_to_json_value(const Genotype& g) {
  io::Json out = io::Json::object();
  auto cell = [&](const CellGenotype& c, const char* name) {
    io::Json nodes = io::Json::array();
    for (const auto& node : c.nodes) {
      io::Json pairs = io::Json::array();
      for (const auto& p : node)
        pairs.push_back(io::Json::array({io::Json(p.op), io::Json(p.input)}));
      nodes.push_back(std::move(pairs));
    }
    io::Json concat = io::Json::array();
    for (int k : c.concat) concat.push_back(k);
    out.set(name, std::move(nodes));
    out.set(std::string(name) + "_concat", std::move(concat));
  };
  cell(g.normal, "normal");
  cell(g.reduce, "reduce");
  return out;
}

/// The JSON form on one line (see genotype_to_json_value).
[[nodiscard]] inline std::string to_json(const Genotype& g) {
  return io::dump_json(genotype_to_json_value(g));
}

/// Reads the JSON form; a cell may also be a DARTS flat list of [op, input] pairs (even length).
/// Errors name the path of the offending value, e.g. "genotype JSON: normal[2][1]: ...".
[[nodiscard]] inline Genotype genotype_from_json_value(const io::Json& j,
                                                       std::string_view source = "genotype JSON") {
  auto bad = [&](const std::string& path, const std::string& what) -> error {
    return error(datanas::detail::concat(source, ": ", path, ": ", what));
  };
  if (!j.is_object()) throw bad("top level", "expected an object, found " + j.describe());
  auto pair = [&](const io::Json& v, const std::string& path) {
    if (!v.is_array() || v.size() != 2 || !v.as_array()[0].is_string() ||
        !v.as_array()[1].is_integer())
      throw bad(path,
                "expected an [op, input] pair like [\"sep_conv_3x3\", 0], found " +
                    (v.is_array() ? "an array of " + std::to_string(v.size()) : v.describe()));
    return OpInput{v.as_array()[0].as_string(), int(v.as_array()[1].as_integer())};
  };
  auto cell = [&](std::string_view name) {
    CellGenotype c;
    const io::Json* nodes = j.find(name);
    if (!nodes) throw bad(std::string(name), "missing");
    if (!nodes->is_array())
      throw bad(std::string(name), "expected an array, found " + nodes->describe());
    const auto& items = nodes->as_array();
    const bool flat = !items.empty() && items[0].is_array() && items[0].size() > 0 &&
                      items[0].as_array()[0].is_string();
    if (flat) {
      if (items.size() % 2 != 0)
        throw bad(std::string(name),
                  "a flat list of pairs needs an even length, got " + std::to_string(items.size()));
      for (std::size_t k = 0; k < items.size(); k += 2) {
        const std::string path = std::string(name) + "[";
        c.nodes.push_back({pair(items[k], path + std::to_string(k) + "]"),
                           pair(items[k + 1], path + std::to_string(k + 1) + "]")});
      }
    } else {
      for (std::size_t i = 0; i < items.size(); ++i) {
        const std::string path = std::string(name) + "[" + std::to_string(i) + "]";
        if (!items[i].is_array() || items[i].size() == 0)
          throw bad(path, "expected a non-empty list of [op, input] pairs, found " +
                              (items[i].is_array() ? std::string("an empty array")
                                                   : items[i].describe()));
        std::vector<OpInput> node;
        for (std::size_t k = 0; k < items[i].size(); ++k)
          node.push_back(pair(items[i].as_array()[k], path + "[" + std::to_string(k) + "]"));
        c.nodes.push_back(std::move(node));
      }
    }
    const std::string cname = std::string(name) + "_concat";
    const io::Json* concat = j.find(cname);
    if (!concat) throw bad(cname, "missing");
    if (!concat->is_array())
      throw bad(cname, "expected an array of integers, found " + concat->describe());
    for (std::size_t k = 0; k < concat->size(); ++k) {
      const io::Json& v = concat->as_array()[k];
      if (!v.is_integer())
        throw bad(cname + "[" + std::to_string(k) + "]",
                  "expected an integer, found " + v.describe());
      c.concat.push_back(int(v.as_integer()));
    }
    return c;
  };
  Genotype g;
  g.normal = cell("normal");
  g.reduce = cell("reduce");
  return g;
}

/// Parses JSON text and reads it with genotype_from_json_value.
[[nodiscard]] inline Genotype genotype_from_json(std::string_view text,
                                                 std::string_view source = "genotype JSON") {
  return genotype_from_json_value(io::parse_json(text, source), source);
}

// ---- Graphviz ----------------------------------------------------------------------------------

namespace detail {

inline std::string dot_quote(std::string_view s) {
  std::string out = "\"";
  for (const char c : s) {
    if (c == '"' || c == '\\') out += '\\';
    out += c;
  }
  return out + '"';
}

// The body of one cell picture (as DARTS' visualize.py draws it). Node ids carry `prefix` so that
// two cells can share one graph.
inline void dot_cell(std::string& out, const CellGenotype& c, const std::string& prefix,
                     const std::string& indent) {
  const int n = int(c.nodes.size());
  auto id = [&](int state) {
    if (state == 0) return dot_quote(prefix + "c_{k-2}");
    if (state == 1) return dot_quote(prefix + "c_{k-1}");
    return dot_quote(prefix + std::to_string(state - 2));
  };
  const std::string out_id = dot_quote(prefix + "c_{k}");
  out += indent + id(0) + " [label=\"c_{k-2}\", fillcolor=darkseagreen2];\n";
  out += indent + id(1) + " [label=\"c_{k-1}\", fillcolor=darkseagreen2];\n";
  for (int i = 0; i < n; ++i)
    out += indent + id(i + 2) + " [label=\"" + std::to_string(i) + "\", fillcolor=lightblue];\n";
  for (int i = 0; i < n; ++i)
    for (const auto& p : c.nodes[std::size_t(i)])
      out += indent + id(p.input) + " -> " + id(i + 2) + " [label=" + dot_quote(p.op) +
             ", fillcolor=gray];\n";
  out += indent + out_id + " [label=\"c_{k}\", fillcolor=palegoldenrod];\n";
  for (int s : c.concat) out += indent + id(s) + " -> " + out_id + " [fillcolor=gray];\n";
}

inline constexpr const char* kDotStyle =
    "rankdir=LR;\n"
    "  node [style=filled, shape=rect, align=center, fontsize=20, height=0.5, width=0.5, "
    "penwidth=2, fontname=\"times\"];\n"
    "  edge [fontsize=20, fontname=\"times\"];\n";

}  // namespace detail

/// One cell as a standalone Graphviz digraph named `name`: inputs c_{k-2}, c_{k-1}, nodes
/// 0..n-1, output c_{k}; one edge per (op, input) term, labelled with the op.
[[nodiscard]] inline std::string to_dot(const CellGenotype& c, std::string_view name) {
  std::string out = "digraph " + detail::dot_quote(name) + " {\n  " + detail::kDotStyle;
  detail::dot_cell(out, c, "", "  ");
  return out + "}\n";
}

/// Both cells in one Graphviz digraph, as two clusters labelled "normal cell" and "reduction
/// cell" (so `dot -Tpng cells.dot -o cells.png` draws one picture with both).
[[nodiscard]] inline std::string to_dot(const Genotype& g) {
  std::string out = "digraph genotype {\n  " + std::string(detail::kDotStyle);
  out += "  subgraph cluster_normal {\n    label=\"normal cell\";\n";
  detail::dot_cell(out, g.normal, "normal/", "    ");
  out += "  }\n  subgraph cluster_reduce {\n    label=\"reduction cell\";\n";
  detail::dot_cell(out, g.reduce, "reduce/", "    ");
  return out + "  }\n}\n";
}

// ---- published cells (ALGORITHMS.md §1.3) ------------------------------------------------------

namespace detail {

inline Genotype make_darts_v1() {
  return {cell_from_pairs({{"sep_conv_3x3", 1},
                           {"sep_conv_3x3", 0},
                           {"skip_connect", 0},
                           {"sep_conv_3x3", 1},
                           {"skip_connect", 0},
                           {"sep_conv_3x3", 1},
                           {"sep_conv_3x3", 0},
                           {"skip_connect", 2}},
                          {2, 3, 4, 5}),
          cell_from_pairs({{"max_pool_3x3", 0},
                           {"max_pool_3x3", 1},
                           {"skip_connect", 2},
                           {"max_pool_3x3", 0},
                           {"max_pool_3x3", 0},
                           {"skip_connect", 2},
                           {"skip_connect", 2},
                           {"avg_pool_3x3", 0}},
                          {2, 3, 4, 5})};
}

inline Genotype make_darts_v2() {
  return {cell_from_pairs({{"sep_conv_3x3", 0},
                           {"sep_conv_3x3", 1},
                           {"sep_conv_3x3", 0},
                           {"sep_conv_3x3", 1},
                           {"sep_conv_3x3", 1},
                           {"skip_connect", 0},
                           {"skip_connect", 0},
                           {"dil_conv_3x3", 2}},
                          {2, 3, 4, 5}),
          cell_from_pairs({{"max_pool_3x3", 0},
                           {"max_pool_3x3", 1},
                           {"skip_connect", 2},
                           {"max_pool_3x3", 1},
                           {"max_pool_3x3", 0},
                           {"skip_connect", 2},
                           {"skip_connect", 2},
                           {"max_pool_3x3", 1}},
                          {2, 3, 4, 5})};
}

inline Genotype make_data_m4() {
  Genotype g;
  g.normal.nodes = {{{"skip_connect", 0}, {"sep_conv_3x3", 0}, {"sep_conv_3x3", 1}},
                    {{"skip_connect", 2}, {"skip_connect", 1}, {"sep_conv_3x3", 2}},
                    {{"sep_conv_5x5", 3}, {"skip_connect", 3}},
                    {{"skip_connect", 0}, {"sep_conv_5x5", 1}, {"sep_conv_3x3", 2}}};
  g.reduce.nodes = {{{"skip_connect", 1}, {"dil_conv_3x3", 1}, {"dil_conv_5x5", 1}},
                    {{"sep_conv_5x5", 0}, {"dil_conv_5x5", 2}, {"skip_connect", 1}},
                    {{"max_pool_3x3", 0}, {"skip_connect", 2}},
                    {{"dil_conv_3x3", 1}, {"dil_conv_5x5", 1}, {"skip_connect", 3}}};
  g.normal.concat = g.reduce.concat = {2, 3, 4, 5};
  return g;
}

inline Genotype make_data_m7() {
  Genotype g;
  g.normal.nodes = {
      {{"skip_connect", 0}, {"sep_conv_3x3", 0}, {"skip_connect", 1}, {"sep_conv_3x3", 1}},
      {{"skip_connect", 0}, {"sep_conv_3x3", 2}, {"skip_connect", 1}},
      {{"skip_connect", 0}, {"dil_conv_3x3", 3}, {"skip_connect", 2}},
      {{"skip_connect", 1}, {"sep_conv_3x3", 2}, {"skip_connect", 2}}};
  g.reduce.nodes = {{{"sep_conv_3x3", 0}, {"max_pool_3x3", 1}, {"skip_connect", 1}},
                    {{"sep_conv_3x3", 0}, {"dil_conv_3x3", 1}, {"dil_conv_3x3", 2}},
                    {{"dil_conv_3x3", 1},
                     {"skip_connect", 2},
                     {"dil_conv_3x3", 2},
                     {"sep_conv_3x3", 2},
                     {"dil_conv_3x3", 3}},
                    {{"skip_connect", 0}, {"sep_conv_3x3", 0}}};
  g.normal.concat = g.reduce.concat = {2, 3, 4, 5};
  return g;
}

}  // namespace detail

// Names follow the Python genotypes.py files they come from.
/// DARTS first order (quark0/darts cnn/genotypes.py).
inline const Genotype DARTS_V1 = detail::make_darts_v1();
/// DARTS second order (quark0/darts cnn/genotypes.py; DARTS = DARTS_V2 there).
inline const Genotype DARTS_V2 = detail::make_darts_v2();
/// DATA, M = 4 (the authors' genotypes.py, Gumbel_model_M4).
inline const Genotype DATA_M4 = detail::make_data_m4();
/// DATA, M = 7 (the authors' genotypes.py, Gumbel_model_M7).
inline const Genotype DATA_M7 = detail::make_data_m7();

/// The names published_genotype accepts.
inline constexpr std::array<std::string_view, 5> kPublishedGenotypes = {
    "DARTS_V1", "DARTS_V2", "DARTS", "DATA_M4", "DATA_M7"};

/// A published genotype by name (DARTS_V1, DARTS_V2, DARTS = DARTS_V2, DATA_M4, DATA_M7;
/// case-insensitive, '-' may stand for '_'), or nullopt. Safe during static initialisation.
[[nodiscard]] inline std::optional<Genotype> published_genotype(std::string_view name) {
  std::string n;
  for (const char c : name) n += c == '-' ? '_' : char(std::toupper(static_cast<unsigned char>(c)));
  if (n == "DARTS_V1") return detail::make_darts_v1();
  if (n == "DARTS_V2" || n == "DARTS") return detail::make_darts_v2();
  if (n == "DATA_M4") return detail::make_data_m4();
  if (n == "DATA_M7") return detail::make_data_m7();
  return std::nullopt;
}

/// A genotype from what a user types: a published name (see published_genotype), a text form
/// as printed by DARTS-family code ("Genotype(normal=[...], ...)"), or the path of a file
/// holding either the text form or the JSON form (genotype.txt / genotype.json written by
/// datanas-search). Errors say which of the three was tried and why it failed.
[[nodiscard]] inline Genotype load_genotype(std::string_view spec) {
  if (auto g = published_genotype(spec)) return *g;
  std::string_view s = spec;
  while (!s.empty() && std::isspace(static_cast<unsigned char>(s.front()))) s.remove_prefix(1);
  if (s.starts_with("Genotype")) return parse_genotype(s);
  const std::string path(spec);
  std::error_code ec;
  if (!std::filesystem::is_regular_file(path, ec)) {
    std::string names;
    for (auto n : kPublishedGenotypes) names += (names.empty() ? "" : ", ") + std::string(n);
    throw error(datanas::detail::concat("genotype '", spec, "' is not a published name (", names,
                                        "), not a Genotype(...) text and not a readable file"));
  }
  const std::string text = io::read_text_file(path);
  std::string_view t = text;
  while (!t.empty() && std::isspace(static_cast<unsigned char>(t.front()))) t.remove_prefix(1);
  try {
    if (t.starts_with("{")) return genotype_from_json(t, path);
    return parse_genotype(t);
  } catch (const error& e) {
    throw error(datanas::detail::concat("genotype file '", path, "': ", e.what()));
  }
}

}  // namespace datanas::search
