// datanas/search/rnn_genotype.hpp - recurrent cell genotypes of the DARTS RNN space
// (ALGORITHMS.md §4): the type, the DARTS text form, JSON, the published cells, and the
// derivation rules on alpha alone (DARTS top-1 predecessor, DATA's most probable EGS code).
//
// State 0 is s0 (from x_t and h_{t-1}); node i (1-based) is state i and reads one earlier state
// s_p, p < i. The cell output h_t is the mean of the states listed in `concat`.
//
// Text forms (written by to_text, read by parse_recurrent_genotype):
//   DARTS flat:  Genotype(recurrent=[('sigmoid', 0), ('relu', 1), ...], concat=range(1, 9))
//                - pair i feeds node i + 1; used when every node has exactly one pair.
//   DATA nested: Genotype(recurrent=[[('sigmoid', 0)], [('relu', 1), ('tanh', 0)], ...], concat=...)
//                - the most probable EGS code may keep several (op, predecessor) pairs per node;
//                  such a node is the mean of its terms (the value the search cell's EGS weights
//                  1/|S| give it; our choice, the paper has no recurrent DATA code).
// concat is written as range(a, b) when it is a contiguous ascending run (as DARTS prints it),
// otherwise as a list (ENAS' [2, 5, 6, 9, 10, 11]).
#pragma once

#include <algorithm>
#include <array>
#include <cctype>
#include <charconv>
#include <filesystem>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "datanas/core/error.hpp"
#include "datanas/io/files.hpp"
#include "datanas/io/json.hpp"
#include "datanas/search/derive.hpp"
#include "datanas/search/genotype.hpp"

namespace datanas::search {

/// The DARTS recurrent candidate ops in alpha column order (DARTS' PRIMITIVES).
inline constexpr std::array<std::string_view, 5> kRnnOps = {"none", "tanh", "relu", "sigmoid",
                                                            "identity"};

/// A recurrent cell: nodes[i] lists the (activation, predecessor) terms of state i + 1.
struct RecurrentGenotype {
  std::vector<std::vector<OpInput>> nodes;
  std::vector<int> concat;
  friend bool operator==(const RecurrentGenotype&, const RecurrentGenotype&) = default;
};

/// [1, ..., nodes]: the DARTS concat (range(1, 9) for 8 nodes).
[[nodiscard]] inline std::vector<int> rnn_default_concat(int nodes) {
  std::vector<int> c;
  for (int i = 1; i <= nodes; ++i) c.push_back(i);
  return c;
}

/// Checks op names (against `op_names`, none excluded), predecessors (0 <= p < i + 1 for node
/// i, 0-based) and concat (non-empty, each in [0, nodes], no repeats). `source` prefixes errors.
inline void validate(const RecurrentGenotype& g, std::span<const std::string_view> op_names = kRnnOps,
                     std::string_view source = "recurrent genotype") {
  DATANAS_CHECK(!g.nodes.empty(), source, ": no nodes");
  for (std::size_t i = 0; i < g.nodes.size(); ++i) {
    DATANAS_CHECK(!g.nodes[i].empty(), source, ": node ", i + 1, " has no (op, predecessor) pair");
    for (const auto& p : g.nodes[i]) {
      const bool known = std::find(op_names.begin(), op_names.end(), p.op) != op_names.end();
      std::string names;
      for (auto n : op_names)
        if (n != "none") names += (names.empty() ? "" : ", ") + std::string(n);
      DATANAS_CHECK(known && p.op != "none", source, ": node ", i + 1, ": unknown op '", p.op,
                    "' (expected one of ", names, ")");
      DATANAS_CHECK(p.input >= 0 && std::size_t(p.input) <= i, source, ": node ", i + 1,
                    " reads state ", p.input, ", but only states 0 .. ", i, " exist before it");
    }
  }
  DATANAS_CHECK(!g.concat.empty(), source, ": concat is empty");
  for (std::size_t k = 0; k < g.concat.size(); ++k) {
    DATANAS_CHECK(g.concat[k] >= 0 && std::size_t(g.concat[k]) <= g.nodes.size(), source, ": concat[",
                  k, "] = ", g.concat[k], " is not a state of a cell with ", g.nodes.size(),
                  " nodes (0 .. ", g.nodes.size(), ")");
    DATANAS_CHECK(std::count(g.concat.begin(), g.concat.end(), g.concat[k]) == 1, source,
                  ": concat lists state ", g.concat[k], " twice");
  }
}

// ---- text form ---------------------------------------------------------------------------------

/// The text form (see the file comment).
[[nodiscard]] inline std::string to_text(const RecurrentGenotype& g) {
  const bool flat = std::all_of(g.nodes.begin(), g.nodes.end(), [](const auto& n) { return n.size() == 1; });
  std::string out = "Genotype(recurrent=[";
  for (std::size_t i = 0; i < g.nodes.size(); ++i) {
    if (i) out += ", ";
    if (!flat) out += '[';
    for (std::size_t j = 0; j < g.nodes[i].size(); ++j) {
      if (j) out += ", ";
      detail::write_pair(out, g.nodes[i][j]);
    }
    if (!flat) out += ']';
  }
  out += "], concat=";
  bool run = !g.concat.empty();
  for (std::size_t k = 1; k < g.concat.size(); ++k) run = run && g.concat[k] == g.concat[k - 1] + 1;
  if (run)
    out += "range(" + std::to_string(g.concat.front()) + ", " + std::to_string(g.concat.back() + 1) + ")";
  else
    detail::write_ints(out, g.concat);
  return out + ")";
}

namespace detail {

// Recursive-descent reader of the Python text form; errors give the offset and what was expected.
class RecurrentParser {
 public:
  explicit RecurrentParser(std::string_view s) : s_(s) {}

  RecurrentGenotype parse() {
    skip();
    std::string name = ident();
    skip();
    if (!name.empty() && name != "Genotype" && name != "recurrent" && peek('=')) {  // "X = Genotype(...)"
      ++pos_;
      skip();
      name = ident();
      skip();
    }
    if (name != "Genotype") fail("'Genotype('");
    expect('(');
    RecurrentGenotype g;
    bool have_rec = false, have_concat = false;
    for (int field = 0;; ++field) {
      skip();
      if (peek(')')) break;
      const std::size_t at = pos_;
      std::string key = ident();
      skip();
      if (!key.empty() && peek('=')) {
        ++pos_;
      } else {
        pos_ = at;  // positional: recurrent, then concat (namedtuple order)
        key = field == 0 ? "recurrent" : field == 1 ? "concat" : "";
        if (key.empty()) fail("')' (a recurrent genotype has two fields)");
      }
      skip();
      if (key == "recurrent") {
        if (have_rec) fail("one 'recurrent' field");
        g.nodes = pairs();
        have_rec = true;
      } else if (key == "concat") {
        if (have_concat) fail("one 'concat' field");
        g.concat = concat();
        have_concat = true;
      } else {
        pos_ = at;
        fail("'recurrent=' or 'concat=' (got '" + key + "')");
      }
      skip();
      if (!peek(',')) break;
      ++pos_;
    }
    skip();
    expect(')');
    skip();
    if (pos_ != s_.size()) fail("the end of the text after 'Genotype(...)'");
    if (!have_rec) fail("a 'recurrent' field");
    if (!have_concat) fail("a 'concat' field");
    return g;
  }

 private:
  [[noreturn]] void fail(const std::string& expected) const {
    const std::size_t end = std::min(s_.size(), pos_ + 20);
    throw error(datanas::detail::concat("recurrent genotype text: at offset ", pos_, " ('",
                                        s_.substr(pos_, end - pos_), "'): expected ", expected));
  }
  void skip() {
    while (pos_ < s_.size()) {
      if (std::isspace(static_cast<unsigned char>(s_[pos_]))) {
        ++pos_;
      } else if (s_[pos_] == '#') {
        while (pos_ < s_.size() && s_[pos_] != '\n') ++pos_;
      } else {
        break;
      }
    }
  }
  [[nodiscard]] bool peek(char c) const { return pos_ < s_.size() && s_[pos_] == c; }
  void expect(char c) {
    skip();
    if (!peek(c)) fail(std::string("'") + c + "'");
    ++pos_;
  }
  std::string ident() {
    const std::size_t b = pos_;
    while (pos_ < s_.size() && (std::isalnum(static_cast<unsigned char>(s_[pos_])) || s_[pos_] == '_')) ++pos_;
    return std::string(s_.substr(b, pos_ - b));
  }
  int integer() {
    skip();
    int v = 0;
    const auto [p, ec] = std::from_chars(s_.data() + pos_, s_.data() + s_.size(), v);
    if (ec != std::errc()) fail("an integer");
    pos_ = std::size_t(p - s_.data());
    return v;
  }
  std::string quoted() {
    skip();
    if (!peek('\'') && !peek('"')) fail("a quoted op name");
    const char q = s_[pos_++];
    std::string out;
    while (pos_ < s_.size() && s_[pos_] != q) {
      if (s_[pos_] == '\\' && pos_ + 1 < s_.size()) ++pos_;
      out += s_[pos_++];
    }
    if (!peek(q)) fail("a closing quote");
    ++pos_;
    return out;
  }
  OpInput pair() {
    expect('(');
    OpInput p;
    p.op = quoted();
    expect(',');
    p.input = integer();
    skip();
    if (peek(',')) ++pos_;
    expect(')');
    return p;
  }
  // [(op, p), ...] (flat: one pair per node) or [[(op, p), ...], ...] (nested).
  std::vector<std::vector<OpInput>> pairs() {
    expect('[');
    std::vector<std::vector<OpInput>> nodes;
    for (;;) {
      skip();
      if (peek(']')) break;
      if (peek('[')) {
        ++pos_;
        std::vector<OpInput> node;
        for (;;) {
          skip();
          if (peek(']')) break;
          node.push_back(pair());
          skip();
          if (!peek(',')) break;
          ++pos_;
        }
        expect(']');
        if (node.empty()) fail("a non-empty node");
        nodes.push_back(std::move(node));
      } else if (peek('(')) {
        nodes.push_back({pair()});
      } else {
        fail("'(' or '[' starting a node");
      }
      skip();
      if (!peek(',')) break;
      ++pos_;
    }
    expect(']');
    return nodes;
  }
  // range(b) | range(a, b) | [i, ...]
  std::vector<int> concat() {
    std::vector<int> out;
    if (peek('[')) {
      ++pos_;
      for (;;) {
        skip();
        if (peek(']')) break;
        out.push_back(integer());
        skip();
        if (!peek(',')) break;
        ++pos_;
      }
      expect(']');
      return out;
    }
    if (ident() != "range") fail("'range(' or '[' for concat");
    expect('(');
    int a = integer(), b = 0;
    skip();
    if (peek(',')) {
      ++pos_;
      b = integer();
    } else {
      b = a;
      a = 0;
    }
    // A cell has a few nodes: a range past that is a typo, not a request for gigabytes.
    if ((long long)b - a > 4096) fail("a range of at most 4096 elements");
    expect(')');
    for (int i = a; i < b; ++i) out.push_back(i);
    return out;
  }

  std::string_view s_;
  std::size_t pos_ = 0;
};

}  // namespace detail

/// Reads the text form (the "NAME = " prefix of genotypes.py lines is accepted) and validates it.
[[nodiscard]] inline RecurrentGenotype parse_recurrent_genotype(std::string_view text) {
  RecurrentGenotype g = detail::RecurrentParser(text).parse();
  validate(g, kRnnOps, "recurrent genotype text");
  return g;
}

// ---- JSON --------------------------------------------------------------------------------------

/// {"recurrent": [[["sigmoid", 0]], [["relu", 1]], ...], "concat": [1, ..., 8]}: always nested.
[[nodiscard]] inline std::string to_json(const RecurrentGenotype& g) {
  io::Json nodes = io::Json::array();
  for (const auto& node : g.nodes) {
    io::Json pairs = io::Json::array();
    for (const auto& p : node) pairs.push_back(io::Json::array({io::Json(p.op), io::Json(p.input)}));
    nodes.push_back(std::move(pairs));
  }
  io::Json concat = io::Json::array();
  for (int k : g.concat) concat.push_back(k);
  io::Json out = io::Json::object();
  out.set("recurrent", std::move(nodes));
  out.set("concat", std::move(concat));
  return io::dump_json(out);
}

/// Reads the JSON form (a node may also be a bare [op, p] pair); errors name the path.
[[nodiscard]] inline RecurrentGenotype recurrent_genotype_from_json(std::string_view text,
                                                                   std::string_view source = "genotype JSON") {
  const io::Json j = io::parse_json(text, source);
  auto bad = [&](const std::string& path, const std::string& what) {
    return error(datanas::detail::concat(source, ": ", path, ": ", what));
  };
  if (!j.is_object()) throw bad("top level", "expected an object {\"recurrent\": [...], \"concat\": [...]}");
  auto pair = [&](const io::Json& v, const std::string& path) {
    if (!v.is_array() || v.size() != 2 || !v.as_array()[0].is_string() || !v.as_array()[1].is_integer())
      throw bad(path, "expected an [op, predecessor] pair like [\"relu\", 1], found " + v.describe());
    return OpInput{v.as_array()[0].as_string(), int(v.as_array()[1].as_integer())};
  };
  RecurrentGenotype g;
  const io::Json* rec = j.find("recurrent");
  if (!rec || !rec->is_array()) throw bad("recurrent", rec ? "expected an array, found " + rec->describe() : "missing");
  for (std::size_t i = 0; i < rec->size(); ++i) {
    const io::Json& n = rec->as_array()[i];
    const std::string path = "recurrent[" + std::to_string(i) + "]";
    if (n.is_array() && n.size() == 2 && n.as_array()[0].is_string()) {
      g.nodes.push_back({pair(n, path)});
      continue;
    }
    if (!n.is_array() || n.size() == 0) throw bad(path, "expected a non-empty list of [op, predecessor] pairs");
    std::vector<OpInput> node;
    for (std::size_t k = 0; k < n.size(); ++k)
      node.push_back(pair(n.as_array()[k], path + "[" + std::to_string(k) + "]"));
    g.nodes.push_back(std::move(node));
  }
  const io::Json* concat = j.find("concat");
  if (!concat || !concat->is_array()) throw bad("concat", concat ? "expected an array of integers" : "missing");
  for (std::size_t k = 0; k < concat->size(); ++k) {
    const io::Json& v = concat->as_array()[k];
    if (!v.is_integer()) throw bad("concat[" + std::to_string(k) + "]", "expected an integer, found " + v.describe());
    g.concat.push_back(int(v.as_integer()));
  }
  validate(g, kRnnOps, source);
  return g;
}

// ---- published cells ---------------------------------------------------------------------------

namespace detail {
inline RecurrentGenotype flat_rnn(std::initializer_list<OpInput> pairs, std::vector<int> concat) {
  RecurrentGenotype g;
  for (const auto& p : pairs) g.nodes.push_back({p});
  g.concat = std::move(concat);
  return g;
}
}  // namespace detail

/// DARTS (second order) recurrent cell, quark0/darts rnn/genotypes.py (ALGORITHMS.md §4).
inline const RecurrentGenotype RNN_DARTS_V2 = detail::flat_rnn(
    {{"sigmoid", 0}, {"relu", 1}, {"relu", 1}, {"identity", 1}, {"tanh", 2}, {"sigmoid", 5}, {"tanh", 3}, {"relu", 5}},
    rnn_default_concat(8));
/// DARTS first-order recurrent cell (named DARTS in early versions of genotypes.py).
inline const RecurrentGenotype RNN_DARTS_V1 = detail::flat_rnn(
    {{"relu", 0}, {"relu", 1}, {"tanh", 2}, {"relu", 3}, {"relu", 4}, {"identity", 1}, {"relu", 5}, {"relu", 1}},
    rnn_default_concat(8));
/// The ENAS cell as written in DARTS' genotypes.py: 11 nodes, concat [2, 5, 6, 9, 10, 11].
inline const RecurrentGenotype RNN_ENAS = detail::flat_rnn(
    {{"tanh", 0}, {"tanh", 1}, {"relu", 1}, {"tanh", 3}, {"tanh", 3}, {"relu", 3}, {"relu", 4}, {"relu", 7},
     {"relu", 8}, {"relu", 8}, {"relu", 8}},
    {2, 5, 6, 9, 10, 11});

inline constexpr std::array<std::string_view, 3> kPublishedRecurrentGenotypes = {"DARTS_V1", "DARTS_V2", "ENAS"};

[[nodiscard]] inline std::optional<RecurrentGenotype> published_recurrent_genotype(std::string_view name) {
  if (name == "DARTS_V1") return RNN_DARTS_V1;
  if (name == "DARTS_V2") return RNN_DARTS_V2;
  if (name == "ENAS") return RNN_ENAS;
  return std::nullopt;
}

/// A recurrent genotype from what a user types: a published name, a text form, or the path of a
/// file holding the text or the JSON form (genotype.txt / genotype.json of datanas-search-rnn).
[[nodiscard]] inline RecurrentGenotype load_recurrent_genotype(std::string_view spec) {
  if (auto g = published_recurrent_genotype(spec)) return *g;
  std::string_view s = spec;
  while (!s.empty() && std::isspace(static_cast<unsigned char>(s.front()))) s.remove_prefix(1);
  if (s.starts_with("Genotype")) return parse_recurrent_genotype(s);
  const std::string path(spec);
  std::error_code ec;
  if (!std::filesystem::is_regular_file(path, ec)) {
    std::string names;
    for (auto n : kPublishedRecurrentGenotypes) names += (names.empty() ? "" : ", ") + std::string(n);
    throw error(datanas::detail::concat("genotype '", spec, "' is not a published recurrent cell (", names,
                                        "), not a Genotype(recurrent=...) text and not a readable file"));
  }
  const std::string text = io::read_text_file(path);
  std::string_view t = text;
  while (!t.empty() && std::isspace(static_cast<unsigned char>(t.front()))) t.remove_prefix(1);
  try {
    if (t.starts_with("{")) return recurrent_genotype_from_json(t, path);
    return parse_recurrent_genotype(t);
  } catch (const error& e) {
    throw error(datanas::detail::concat("genotype file '", path, "': ", e.what()));
  }
}

// ---- derivation --------------------------------------------------------------------------------

/// Row of node i's first predecessor in the recurrent alpha (node i, 0-based, has i + 1 rows).
[[nodiscard]] constexpr int rnn_edge_offset(int node) { return node * (node + 1) / 2; }
/// Rows of the recurrent alpha of a cell with `nodes` nodes: 1 + 2 + ... + nodes (8 nodes: 36).
[[nodiscard]] constexpr int rnn_edges_for_nodes(int nodes) { return nodes * (nodes + 1) / 2; }

namespace detail {
inline int check_rnn_alpha(const AlphaMatrix& a, std::span<const std::string_view> op_names) {
  DATANAS_CHECK(a.rows >= 1 && a.logits.size() == std::size_t(a.rows) * std::size_t(a.cols),
                "recurrent alpha: ", a.logits.size(), " logits for a ", a.rows, " x ", a.cols, " matrix");
  DATANAS_CHECK(a.cols == int(op_names.size()), "recurrent alpha has ", a.cols, " columns but the op set has ",
                op_names.size(), " ops (", op_list(op_names), ")");
  int nodes = 1;
  while (rnn_edges_for_nodes(nodes) < a.rows) ++nodes;
  DATANAS_CHECK(rnn_edges_for_nodes(nodes) == a.rows, "recurrent alpha has ", a.rows,
                " rows, which is not 1 + 2 + ... + n for any node count n (8 nodes: 36)");
  for (std::size_t i = 0; i < a.logits.size(); ++i)
    DATANAS_CHECK(std::isfinite(a.logits[i]), "recurrent alpha row ", i / std::size_t(a.cols), ", op ",
                  i % std::size_t(a.cols), ": logit ", a.logits[i], " is not finite");
  DATANAS_CHECK(a.cols > (find_op(op_names, "none") >= 0 ? 1 : 0), "the op set has no op besides none");
  return nodes;
}
}  // namespace detail

/// DARTS' rule (model_search.py genotype()): per node, the softmax of each predecessor's row;
/// the predecessor with the highest non-none probability wins (ties: lower index), with its
/// argmax non-none op (ties: lower column). One pair per node; concat = 1 .. nodes.
[[nodiscard]] inline RecurrentGenotype derive_rnn_darts(const AlphaMatrix& a,
                                                        std::span<const std::string_view> op_names = kRnnOps) {
  const int nodes = detail::check_rnn_alpha(a, op_names);
  const int none = detail::find_op(op_names, "none");
  RecurrentGenotype g;
  for (int i = 0; i < nodes; ++i) {
    int best_j = -1, best_k = -1;
    double best = -1;
    for (int j = 0; j <= i; ++j) {
      const auto p = edge_softmax(a, rnn_edge_offset(i) + j);
      int k_best = -1;
      for (int k = 0; k < a.cols; ++k)
        if (k != none && (k_best < 0 || p[std::size_t(k)] > p[std::size_t(k_best)])) k_best = k;
      if (p[std::size_t(k_best)] > best) {
        best = p[std::size_t(k_best)];
        best_j = j;
        best_k = k_best;
      }
    }
    g.nodes.push_back({{std::string(op_names[std::size_t(best_k)]), best_j}});
  }
  g.concat = rnn_default_concat(nodes);
  return g;
}

/// The probabilities of node i's (predecessor, op) pairs, index j * K + k, summing to 1 over the
/// node: kNode normalises all (i + 1) K logits together; kEdge normalises each predecessor's row
/// and divides by i + 1 (ALGORITHMS.md §2.2).
[[nodiscard]] inline std::vector<double> rnn_node_probabilities(const AlphaMatrix& a, int node, Normalize normalize,
                                                                Granularity granularity) {
  const int preds = node + 1, k = a.cols;
  DATANAS_CHECK(node >= 0 && rnn_edge_offset(node) + preds <= a.rows, "node ", node, " outside the alpha rows");
  const double* x = &a.logits[std::size_t(rnn_edge_offset(node)) * std::size_t(k)];
  std::vector<double> p(std::size_t(preds * k));
  if (granularity == Granularity::kNode) {
    detail::normalise(x, preds * k, normalize, p.data());
  } else {
    for (int j = 0; j < preds; ++j) {
      detail::normalise(x + j * k, k, normalize, p.data() + j * k);
      for (int c = 0; c < k; ++c) p[std::size_t(j * k + c)] /= preds;
    }
  }
  return p;
}

/// DATA's most probable EGS code of one recurrent node (ALGORITHMS.md §2.2, the recurrent
/// layout): pairs ranked by probability, none merged into one category, keep the top i* that
/// maximises P_M(exactly the top-i set), none dropped; the most probable non-none pair if none
/// won alone. DataNodeDecision's `edge` is the predecessor state.
[[nodiscard]] inline DataNodeDecision rnn_data_node_decision(const AlphaMatrix& a,
                                                             std::span<const std::string_view> op_names, int node,
                                                             int M, Normalize normalize, Granularity granularity) {
  const int none = detail::find_op(op_names, "none");
  const auto p = rnn_node_probabilities(a, node, normalize, granularity);
  return data_decision(p, node + 1, a.cols, none, M);
}

/// DATA's rule for the whole recurrent cell: each node's kept pairs in decreasing probability.
[[nodiscard]] inline RecurrentGenotype derive_rnn_data(const AlphaMatrix& a, int M,
                                                       Normalize normalize = Normalize::kSoftmax,
                                                       Granularity granularity = Granularity::kNode,
                                                       std::span<const std::string_view> op_names = kRnnOps) {
  const int nodes = detail::check_rnn_alpha(a, op_names);
  RecurrentGenotype g;
  for (int i = 0; i < nodes; ++i) {
    std::vector<OpInput> node;
    for (const auto& c : rnn_data_node_decision(a, op_names, i, M, normalize, granularity).kept)
      node.push_back({std::string(op_names[std::size_t(c.op)]), c.edge});
    g.nodes.push_back(std::move(node));
  }
  g.concat = rnn_default_concat(nodes);
  return g;
}

}  // namespace datanas::search
