// Genotypes: text and JSON round trips, pasted DARTS-family text, malformed input, validation,
// Graphviz output, the published cells; and the small JSON library they are written with.
#include <doctest/doctest.h>

#include <algorithm>
#include <string>
#include <vector>

#include "datanas/io/json.hpp"
#include "datanas/search/genotype.hpp"

using namespace datanas;
using namespace datanas::search;

namespace {

// What quark0/darts prints for genotypes.DARTS_V2 (Python namedtuple repr).
const std::string kDartsV2Text =
    "Genotype(normal=[('sep_conv_3x3', 0), ('sep_conv_3x3', 1), ('sep_conv_3x3', 0), "
    "('sep_conv_3x3', 1), ('sep_conv_3x3', 1), ('skip_connect', 0), ('skip_connect', 0), "
    "('dil_conv_3x3', 2)], normal_concat=[2, 3, 4, 5], reduce=[('max_pool_3x3', 0), "
    "('max_pool_3x3', 1), ('skip_connect', 2), ('max_pool_3x3', 1), ('max_pool_3x3', 0), "
    "('skip_connect', 2), ('skip_connect', 2), ('max_pool_3x3', 1)], reduce_concat=[2, 3, 4, 5])";

// A DATA cell with 1, 2, 3 and 4 pairs per node, several ops on one input.
Genotype data_cell() {
  Genotype g;
  g.normal.nodes = {{{"sep_conv_3x3", 1}},
                    {{"skip_connect", 0}, {"sep_conv_3x3", 0}},
                    {{"dil_conv_3x3", 3}, {"skip_connect", 2}, {"sep_conv_5x5", 0}},
                    {{"skip_connect", 1}, {"sep_conv_3x3", 2}, {"skip_connect", 2}, {"none", 5}}};
  g.normal.concat = {2, 3, 4, 5};
  g.reduce.nodes = {
      {{"max_pool_3x3", 0}, {"max_pool_3x3", 1}},
      {{"avg_pool_3x3", 2}},
      {{"dil_conv_5x5", 1}, {"skip_connect", 3}, {"max_pool_3x3", 0}, {"sep_conv_3x3", 2}},
      {{"skip_connect", 4}, {"dil_conv_3x3", 0}, {"sep_conv_5x5", 1}}};
  g.reduce.concat = {2, 3, 4, 5};
  return g;
}

}  // namespace

TEST_SUITE_BEGIN("cpu");

TEST_CASE("DARTS_V2 prints exactly as quark0/darts prints it and parses back") {
  CHECK(to_text(DARTS_V2) == kDartsV2Text);
  CHECK(parse_genotype(kDartsV2Text) == DARTS_V2);
  CHECK(is_darts_form(DARTS_V2));
  CHECK(DARTS_V2.normal.nodes.size() == 4);
  CHECK(DARTS_V2.normal.nodes[3][1] == OpInput{"dil_conv_3x3", 2});
}

TEST_CASE("every published genotype round-trips through text and JSON") {
  for (const auto& name : kPublishedGenotypes) {
    CAPTURE(name);
    const auto g = published_genotype(name);
    REQUIRE(g.has_value());
    validate(*g);
    const std::string text = to_text(*g);
    CHECK(parse_genotype(text) == *g);
    CHECK(to_text(parse_genotype(text)) == text);
    const std::string json = to_json(*g);
    CHECK(genotype_from_json(json) == *g);
    CHECK(to_json(genotype_from_json(json)) == json);
  }
  CHECK(published_genotype("DARTS_V1") == DARTS_V1);
  CHECK(published_genotype("darts") == DARTS_V2);
  CHECK(published_genotype("data-m4") == DATA_M4);
  CHECK(published_genotype("DATA_M7") == DATA_M7);
  CHECK_FALSE(published_genotype("ENAS").has_value());
  CHECK(DARTS_V1 != DARTS_V2);
}

TEST_CASE("the DATA cells use the nested form with the published terms") {
  CHECK_FALSE(is_darts_form(DATA_M4));
  const std::string t = to_text(DATA_M4);
  CHECK(t.starts_with(
      "Genotype(normal=[[('skip_connect', 0), ('sep_conv_3x3', 0), ('sep_conv_3x3', 1)], "
      "[('skip_connect', 2), ('skip_connect', 1), ('sep_conv_3x3', 2)], "
      "[('sep_conv_5x5', 3), ('skip_connect', 3)], "));
  CHECK(
      t.ends_with("[('dil_conv_3x3', 1), ('dil_conv_5x5', 1), ('skip_connect', 3)]], "
                  "reduce_concat=[2, 3, 4, 5])"));
  CHECK(DATA_M7.reduce.nodes[2].size() == 5);
  CHECK(DATA_M7.reduce.nodes[2][4] == OpInput{"dil_conv_3x3", 3});
  CHECK(DATA_M7.reduce.nodes[3] == std::vector<OpInput>{{"skip_connect", 0}, {"sep_conv_3x3", 0}});
  CHECK(DATA_M4.normal.concat == std::vector<int>{2, 3, 4, 5});
}

TEST_CASE("a DATA genotype with 1..4 pairs per node round-trips") {
  const Genotype g = data_cell();
  const std::string t = to_text(g);
  CHECK(
      t.starts_with("Genotype(normal=[[('sep_conv_3x3', 1)], [('skip_connect', 0), "
                    "('sep_conv_3x3', 0)], [('dil_conv_3x3', 3), "));
  CHECK(parse_genotype(t) == g);
  CHECK(to_text(parse_genotype(t)) == t);
  CHECK(genotype_from_json(to_json(g)) == g);

  // Only one cell irregular: the nested form must be used for both.
  Genotype h = DARTS_V2;
  h.reduce.nodes[1].pop_back();
  const std::string ht = to_text(h);
  CHECK(ht.starts_with("Genotype(normal=[[('sep_conv_3x3', 0), ('sep_conv_3x3', 1)], "));
  CHECK(parse_genotype(ht) == h);
}

TEST_CASE("text pasted from DARTS-family logs and genotypes.py parses to the same genotype") {
  // Python 3 log line of the DARTS search: concat printed as range(2, 6).
  CHECK(parse_genotype(
            "Genotype(normal=[('sep_conv_3x3', 0), ('sep_conv_3x3', 1), ('sep_conv_3x3', 0), "
            "('sep_conv_3x3', 1), ('sep_conv_3x3', 1), ('skip_connect', 0), ('skip_connect', 0), "
            "('dil_conv_3x3', 2)], normal_concat=range(2, 6), reduce=[('max_pool_3x3', 0), "
            "('max_pool_3x3', 1), ('skip_connect', 2), ('max_pool_3x3', 1), ('max_pool_3x3', "
            "0), ('skip_connect', 2), ('skip_connect', 2), ('max_pool_3x3', 1)], "
            "reduce_concat=range(2, 6))") == DARTS_V2);
  // genotypes.py style: assignment, module prefix, double quotes, line breaks, comments,
  // trailing commas.
  const char* py = R"(DARTS_V2 = genotypes.Genotype(
    normal=[
        ("sep_conv_3x3", 0), ("sep_conv_3x3", 1),   # node 0
        ("sep_conv_3x3", 0), ("sep_conv_3x3", 1),
        ("sep_conv_3x3", 1), ("skip_connect", 0),
        ("skip_connect", 0), ("dil_conv_3x3", 2),
    ],
    normal_concat=[2, 3, 4, 5,],
    reduce=[
        ('max_pool_3x3', 0), ('max_pool_3x3', 1),
        ('skip_connect', 2), ('max_pool_3x3', 1),
        ('max_pool_3x3', 0), ('skip_connect', 2),
        ('skip_connect', 2), ('max_pool_3x3', 1),
    ],
    reduce_concat = range( 2 , 6 ),
)
)";
  CHECK(parse_genotype(py) == DARTS_V2);
  // Without the Genotype prefix, with or without parentheses; fields in another order;
  // positional fields; other spellings of concat.
  const std::string fields = kDartsV2Text.substr(9, kDartsV2Text.size() - 10);
  CHECK(parse_genotype("(" + fields + ")") == DARTS_V2);
  CHECK(parse_genotype(fields) == DARTS_V2);
  CHECK(parse_genotype("genotype = " + kDartsV2Text) == DARTS_V2);
  Genotype v1 = parse_genotype(to_text(DARTS_V1));
  CHECK(v1 == DARTS_V1);
  CHECK(parse_genotype("Genotype(reduce_concat=list(range(2, 6)), reduce=[('a', 0), ('b', 1)], "
                       "normal_concat=(2,), normal=[('c', 1), ('d', 0)])") ==
        Genotype{cell_from_pairs({{"c", 1}, {"d", 0}}, {2}),
                 cell_from_pairs({{"a", 0}, {"b", 1}}, {2, 3, 4, 5})});
  CHECK(parse_genotype("Genotype([('c', 1), ('d', 0)], range(2, 3), [('a', 0), ('b', 1)], "
                       "reduce_concat=[2])") ==
        Genotype{cell_from_pairs({{"c", 1}, {"d", 0}}, {2}),
                 cell_from_pairs({{"a", 0}, {"b", 1}}, {2})});
  CHECK(
      parse_genotype("Genotype(normal=[[('a', 0,)],], normal_concat=range(3), reduce=[[('b', 1)]], "
                     "reduce_concat=range(5, 1, -2))")
          .reduce.concat == std::vector<int>{5, 3});
  // A DATA cell pasted with double quotes and line breaks.
  const Genotype g = data_cell();
  std::string t = to_text(g);
  for (auto& c : t)
    if (c == '\'') c = '"';
  std::string broken;
  for (const char c : t) {
    broken += c;
    if (c == ']') broken += "\n   ";
  }
  CHECK(parse_genotype(broken) == g);
}

TEST_CASE("op names that need escaping follow Python repr and round-trip") {
  Genotype g = DARTS_V2;
  g.normal.nodes[0][0].op = "it's";
  g.normal.nodes[0][1].op = "both ' and \"";
  const std::string t = to_text(g);
  CHECK(t.starts_with(R"(Genotype(normal=[("it's", 0), ('both \' and "', 1), )"));
  CHECK(parse_genotype(t) == g);
}

TEST_CASE("malformed genotype text names the offset and what was expected") {
  struct Bad {
    std::string text;
    std::size_t offset;
    std::string message;
  };
  const std::string v2 = kDartsV2Text;
  auto replace = [&](std::string from, std::string to) {
    std::string s = v2;
    s.replace(s.find(from), from.size(), to);
    return s;
  };
  auto pos = [](const std::string& s, const std::string& marker) {
    const auto p = s.find(marker);
    REQUIRE(p != std::string::npos);
    return p;
  };
  std::vector<Bad> cases;
  auto add = [&](std::string text, std::string marker, std::string message) {
    const std::size_t p = pos(text, marker);
    cases.push_back({std::move(text), p, std::move(message)});
  };
  add(replace("('sep_conv_3x3', 1), ('sep_conv_3x3', 0)",
              "('sep_conv_3x3', 1x), ('sep_conv_3x3', 0)"),
      "x)", "expected ')' closing the (op, input) pair, found 'x'");
  add(replace("('dil_conv_3x3', 2)]", "('dil_conv_3x3', 2) ('none', 0)]"), "('none'",
      "expected ',' or ']' after pair, found '('");
  add(replace("('skip_connect', 0), ('dil_conv_3x3', 2)", "('skip_connect', 0)"),
      "[('sep_conv_3x3', 0)",
      "expected an even number of pairs in the flat list (pairs 2i, 2i+1 feed node i), but it "
      "has 7, found '['");
  add(replace(", reduce_concat=[2, 3, 4, 5]", ""), "])",
      "expected field 'reduce_concat' (it is missing), found ']'");
  cases.back().offset += 1;
  cases.back().message = "expected field 'reduce_concat' (it is missing), found ')'";
  add(replace("reduce=", "reduction="), "reduction=",
      "expected a field name (normal, normal_concat, reduce, reduce_concat) instead of "
      "'reduction', found 'r'");
  add(replace("('max_pool_3x3', 0)", "('max_pool_3x3', a)"), "a)",
      "expected an integer, found 'a'");
  add(replace("('max_pool_3x3', 0)", "(max_pool_3x3, 0)"), "max_pool_3x3, 0",
      "expected a quoted op name, found 'm'");
  add(v2 + " x", ") x", "expected end of text after ')', found 'x'");
  cases.back().offset += 2;
  add(replace("normal_concat=[2, 3, 4, 5]", "normal_concat=[2, 3; 4, 5]"), "; 4",
      "expected ',' or ']' in the concat list, found ';'");
  add(replace("normal_concat=[2, 3, 4, 5]", "normal_concat=2"),
      "2, reduce=", "expected a concat list: [2, 3, 4, 5] or range(2, 6), found '2'");
  add(replace("reduce_concat=[2, 3, 4, 5]", "normal_concat=[2, 3, 4, 5]"),
      "normal_concat=[2, 3, 4, 5])",
      "expected each field once, but 'normal_concat' appears again, found 'n'");
  add("Genotype[normal=[]]", "[", "expected '(' after 'Genotype', found '['");
  add("Genotype(normal=[[], [('a', 0)]], normal_concat=[2], reduce=[[('a', 0)]], "
      "reduce_concat=[2])",
      "], [", "expected at least one (op, input) pair in node 0, found ']'");
  add("Genotype(normal=[[('a', 0)], ('b', 1)], normal_concat=[2], reduce=[], reduce_concat=[2])",
      "('b'", "expected '[' starting a node's list of pairs, found '('");
  add("Genotype(normal=[('a', 0), [('b', 1)]], normal_concat=[2], reduce=[], reduce_concat=[2])",
      "[('b'", "expected '(' starting an (op, input) pair, found '['");
  add("Genotype(normal=[('a', 0), ('b', 1)], normal_concat=[2], reduce=[('a', 0), ('b', 1)]", "]",
      "expected ',' or ')' after field 'reduce', found end of text");
  cases.back().offset = cases.back().text.size();
  add("Genotype(normal=[('sep_conv_3x3, 0)], normal_concat=[2], reduce=[], reduce_concat=[2])", "(",
      "expected the closing quote ' of the op name, found end of text");
  cases.back().offset = cases.back().text.size();
  add("Genotype(normal=[], normal_concat=range(2, 6, 0), reduce=[], reduce_concat=[])", "0)",
      "expected a range with a non-zero step and at most 4096 elements, found ')'");
  cases.back().offset += 1;
  add("", "", "expected field 'normal' (it is missing), found end of text");
  add("Genotype(normal=[('a', 99999999999)], normal_concat=[2], reduce=[], reduce_concat=[2])",
      "99999999999", "expected an integer, found '9'");
  add("Genotype(normal=[('a', 0), ('b', 0)], [2], reduce=[], reduce_concat=[2])", "[2]",
      "expected 'name=' (positional fields cannot follow keyword fields), found '['");
  // list( nested without bound once overflowed the stack (found by fuzzing): 4 levels parse,
  // the fifth is refused, and so is a million.
  CHECK(parse_genotype("normal=[], normal_concat=list(list(list(list([2])))), reduce=[], "
                       "reduce_concat=[2]")
            .normal.concat == std::vector<int>{2});
  add("normal=[], normal_concat=list(list(list(list(list([2]))))), reduce=[], reduce_concat=[2]",
      "list([2])", "expected a concat list, not list(...) nested more than 4 deep, found 'l'");
  std::string deep = "normal=[], normal_concat=";
  for (int i = 0; i < 1000000; ++i) deep += "list(";
  add(deep, "list(list(list(list(list(",
      "expected a concat list, not list(...) nested more than 4 deep, found 'l'");
  cases.back().offset = std::string("normal=[], normal_concat=").size() + 4 * 5;
  for (const auto& c : cases) {
    CAPTURE(c.text);
    const std::string expected =
        "genotype text, offset " + std::to_string(c.offset) + ": " + c.message;
    CHECK_THROWS_WITH_AS((void)parse_genotype(c.text), expected.c_str(), datanas::error);
  }
  CHECK(cases.size() >= 8);
}

TEST_CASE("validate names the cell, node and offending op or input") {
  validate(DARTS_V1);
  validate(DATA_M7, kDartsOps, 4);
  Genotype g = DARTS_V2;
  g.reduce.nodes[2][1].op = "sep_conv_7x7";
  CHECK_THROWS_WITH_AS(validate(g),
                       "reduce cell, node 2: unknown op 'sep_conv_7x7' (known: none, max_pool_3x3, "
                       "avg_pool_3x3, skip_connect, sep_conv_3x3, sep_conv_5x5, dil_conv_3x3, "
                       "dil_conv_5x5)",
                       datanas::error);
  g = DARTS_V2;
  g.normal.nodes[1][0].input = 3;
  CHECK_THROWS_WITH_AS(validate(g),
                       "normal cell, node 1: op 'sep_conv_3x3' has input 3, outside [0, 3) (0, 1 = "
                       "cell inputs, 2.. = earlier nodes)",
                       datanas::error);
  g = DARTS_V2;
  g.normal.nodes[0][0].input = -1;
  CHECK_THROWS_WITH_AS(validate(g),
                       doctest::Contains("normal cell, node 0: op 'sep_conv_3x3' has input -1"),
                       datanas::error);
  g = DARTS_V2;
  g.reduce.concat = {2, 3, 6};
  CHECK_THROWS_WITH_AS(validate(g), "reduce cell: concat index 6 outside [0, 6)", datanas::error);
  g.reduce.concat = {2, 3, 3};
  CHECK_THROWS_WITH_AS(validate(g), "reduce cell: concat index 3 repeated", datanas::error);
  g.reduce.concat = {};
  CHECK_THROWS_WITH_AS(validate(g), "reduce cell: empty concat list", datanas::error);
  g = DATA_M4;
  g.normal.nodes[3].clear();
  CHECK_THROWS_WITH_AS(validate(g), "normal cell, node 3: no (op, input) pairs", datanas::error);
  CHECK_THROWS_WITH_AS(validate(DARTS_V2, kDartsOps, 5), "normal cell: 4 nodes, expected 5",
                       datanas::error);
  const std::array<std::string_view, 3> small = {"none", "skip_connect", "sep_conv_3x3"};
  CHECK_THROWS_WITH_AS(validate(DARTS_V2, small),
                       "normal cell, node 3: unknown op 'dil_conv_3x3' (known: none, skip_connect, "
                       "sep_conv_3x3)",
                       datanas::error);
}

TEST_CASE("genotype JSON: exact form, flat lists and errors with paths") {
  const std::string j = to_json(DARTS_V2);
  CHECK(j.starts_with(
      R"({"normal": [[["sep_conv_3x3", 0], ["sep_conv_3x3", 1]], [["sep_conv_3x3", 0], )"));
  CHECK(j.ends_with(
      R"([["skip_connect", 2], ["max_pool_3x3", 1]]], "reduce_concat": [2, 3, 4, 5]})"));
  CHECK(j.find(R"(], "normal_concat": [2, 3, 4, 5], "reduce": [[["max_pool_3x3", 0], )") !=
        std::string::npos);
  // A flat list of pairs is accepted too.
  CHECK(genotype_from_json(R"({"normal": [["a", 0], ["b", 1]], "normal_concat": [2],
      "reduce": [[["c", 1]]], "reduce_concat": [2]})") ==
        Genotype{cell_from_pairs({{"a", 0}, {"b", 1}}, {2}), CellGenotype{{{{"c", 1}}}, {2}}});
  CHECK_THROWS_WITH_AS(
      (void)genotype_from_json(R"({"normal": [], "normal_concat": [], "reduce": []})"),
      "genotype JSON: reduce_concat: missing", datanas::error);
  CHECK_THROWS_WITH_AS(
      (void)genotype_from_json(
          R"({"normal": [[["a", 0], ["b"]]], "normal_concat": [2], "reduce": [], "reduce_concat": []})"),
      "genotype JSON: normal[0][1]: expected an [op, input] pair like [\"sep_conv_3x3\", 0], found "
      "an "
      "array of 1",
      datanas::error);
  CHECK_THROWS_WITH_AS(
      (void)genotype_from_json(
          R"({"normal": [[["a", 0.5]]], "normal_concat": [2], "reduce": [], "reduce_concat": []})"),
      doctest::Contains("genotype JSON: normal[0][0]: expected an [op, input] pair"),
      datanas::error);
  CHECK_THROWS_WITH_AS(
      (void)genotype_from_json(
          R"({"normal": [["a", 0]], "normal_concat": [2], "reduce": [], "reduce_concat": []})"),
      "genotype JSON: normal: a flat list of pairs needs an even length, got 1", datanas::error);
  CHECK_THROWS_WITH_AS(
      (void)genotype_from_json(
          R"({"normal": [[]], "normal_concat": [2], "reduce": [], "reduce_concat": []})"),
      "genotype JSON: normal[0]: expected a non-empty list of [op, input] pairs, found an empty "
      "array",
      datanas::error);
  CHECK_THROWS_WITH_AS(
      (void)genotype_from_json(
          R"({"normal": [], "normal_concat": [2, "3"], "reduce": [], "reduce_concat": []})"),
      "genotype JSON: normal_concat[1]: expected an integer, found a string", datanas::error);
  CHECK_THROWS_WITH_AS((void)genotype_from_json("[1, 2]"),
                       "genotype JSON: top level: expected an object, found an array",
                       datanas::error);
  CHECK_THROWS_WITH_AS(
      (void)genotype_from_json(R"({"normal": [}")"),
      doctest::Contains("genotype JSON, offset 12 (line 1, column 13): expected a value"),
      datanas::error);
}

TEST_CASE("Graphviz output: one cluster per cell, one labelled edge per term") {
  const std::string d = to_dot(DARTS_V2);
  CHECK(d.starts_with("digraph genotype {\n"));
  CHECK(d.ends_with("}\n"));
  CHECK(d.find("subgraph cluster_normal {") != std::string::npos);
  CHECK(d.find("subgraph cluster_reduce {") != std::string::npos);
  CHECK(d.find("label=\"reduction cell\"") != std::string::npos);
  CHECK(d.find(R"("normal/c_{k-2}" -> "normal/0" [label="sep_conv_3x3", fillcolor=gray];)") !=
        std::string::npos);
  CHECK(d.find(R"("normal/0" -> "normal/3" [label="dil_conv_3x3", fillcolor=gray];)") !=
        std::string::npos);
  CHECK(d.find(R"("reduce/3" -> "reduce/c_{k}" [fillcolor=gray];)") != std::string::npos);
  std::size_t arrows = 0;
  for (std::size_t p = d.find("->"); p != std::string::npos; p = d.find("->", p + 1)) ++arrows;
  CHECK(arrows == 2 * (8 + 4));  // 8 terms and 4 concat edges per cell
  CHECK(std::count(d.begin(), d.end(), '{') - std::count(d.begin(), d.end(), '}') == 0);
  const std::string one = to_dot(DATA_M7.reduce, "reduce");
  CHECK(one.starts_with("digraph \"reduce\" {\n  rankdir=LR;\n"));
  CHECK(one.find(R"("1" -> "2" [label="dil_conv_3x3", fillcolor=gray];)") != std::string::npos);
}

TEST_CASE("JSON values: parse, access, write") {
  const auto v = io::parse_json(
      R"( {"a": [1, -2.5e3, 0, 1E-2, true, false, null], "s": "q\"\\\/\b\f\n\r\t\u00e9\ud83d\ude00", "o": {}} )");
  REQUIRE(v.is_object());
  const auto& a = v.at("a").as_array();
  CHECK(a.size() == 7);
  CHECK(a[0].as_integer() == 1);
  CHECK(a[1].as_number() == -2500.0);
  CHECK(a[3].as_number() == 0.01);
  CHECK(a[4].as_bool());
  CHECK(a[6].is_null());
  CHECK(v.at("s").as_string() == "q\"\\/\b\f\n\r\t\xc3\xa9\xf0\x9f\x98\x80");
  CHECK(v.at("o").size() == 0);
  CHECK(v.find("missing") == nullptr);
  CHECK(io::dump_json(v) ==
        R"({"a": [1, -2500, 0, 0.01, true, false, null], "s": "q\"\\/\b\f\n\r\t)"
        "\xc3\xa9\xf0\x9f\x98\x80"
        R"(", "o": {}})");
  CHECK(io::parse_json(io::dump_json(v)) == v);
  CHECK(io::parse_json(io::dump_json(v, 2)) == v);
  // Shortest round-trip numbers.
  for (double x : {0.1, 1.0 / 3.0, -1e-300, 6.02214076e23, 123456789.0}) {
    CAPTURE(x);
    CHECK(io::parse_json(io::dump_json(io::Json(x))).as_number() == x);
  }
  io::Json o;
  o.set("k", 1);
  o.set("k", "two");
  o.set("list", io::Json::array({1, 2})).push_back(3);
  CHECK(io::dump_json(o) == R"({"k": "two", "list": [1, 2, 3]})");
  CHECK(io::dump_json(o, 2) == "{\n  \"k\": \"two\",\n  \"list\": [1, 2, 3]\n}");
  o["k"] = 2.5;
  o["new"] = "x";
  CHECK(o.dump() == R"({"k": 2.5, "list": [1, 2, 3], "new": "x"})");
  const io::Json& co = o;
  CHECK(co["new"].as_string() == "x");
  CHECK_THROWS_WITH_AS((void)co["nope"], "JSON: missing key \"nope\"", datanas::error);
  CHECK_THROWS_WITH_AS((void)o.at("new").as_number(), "JSON: expected a number, found a string",
                       datanas::error);
  CHECK_THROWS_WITH_AS((void)io::Json(2.5).as_integer(),
                       "JSON: expected an integer, found the number 2.5", datanas::error);
  CHECK_THROWS_AS((void)io::dump_json(io::Json(std::nan(""))), datanas::error);
}

TEST_CASE("strict JSON: malformed documents name the offset and what was expected") {
  struct Bad {
    const char* text;
    const char* message;
  };
  const Bad cases[] = {
      {"[1, 2,]",
       "x, offset 6 (line 1, column 7): expected a value (object, array, string, number, "
       "true, false or null), found ']'"},
      {"{\"a\": 1,}",
       "x, offset 8 (line 1, column 9): expected '\"' starting an object key, found '}'"},
      {"[01]",
       "x, offset 2 (line 1, column 3): expected '.', 'e' or the end of a number after 0, found "
       "'1'"},
      {"['a']",
       "x, offset 1 (line 1, column 2): expected a value (object, array, string, number, true, "
       "false or null), found '''"},
      {"[1 2]", "x, offset 3 (line 1, column 4): expected ',' or ']' in an array, found '2'"},
      {"{\"a\" 1}", "x, offset 5 (line 1, column 6): expected ':' after an object key, found '1'"},
      {"{\"a\": 1, \"a\": 2}",
       "x, offset 9 (line 1, column 10): expected a key other than the duplicate \"a\", found "
       "'\"'"},
      {"\"a\nb\"",
       "x, offset 2 (line 1, column 3): expected no raw control character in a string (use an "
       "escape), found byte 0x0a"},
      {"\"\\x\"",
       "x, offset 2 (line 1, column 3): expected one of \\\" \\\\ \\/ \\b \\f \\n \\r \\t \\u "
       "after "
       "'\\', found 'x'"},
      {"[1]\n x",
       "x, offset 5 (line 2, column 2): expected end of input after the value, found 'x'"},
      {"[NaN]",
       "x, offset 1 (line 1, column 2): expected a value (object, array, string, number, true, "
       "false or null), found 'N'"},
      {"[1.]", "x, offset 3 (line 1, column 4): expected a digit after '.', found ']'"},
      {"[1e400]",
       "x, offset 1 (line 1, column 2): expected a number that fits in a double, found '1'"},
      {"\"\\ud800x\"",
       "x, offset 7 (line 1, column 8): expected a low surrogate \\uDC00-\\uDFFF, found 'x'"},
      {"", "x, offset 0 (line 1, column 1): expected a value, found end of input"},
      {"{\"a\": [1, {\"b\": tru}]}",
       "x, offset 16 (line 1, column 17): expected a value (object, array, "
       "string, number, true, false or null), found 't'"},
  };
  for (const auto& c : cases) {
    CAPTURE(c.text);
    CHECK_THROWS_WITH_AS((void)io::parse_json(c.text, "x"), c.message, datanas::error);
  }
  CHECK_THROWS_WITH_AS((void)io::parse_json(std::string(300, '[') + std::string(300, ']'), "x"),
                       doctest::Contains("expected at most 256 levels of nesting"), datanas::error);
  // Duplicate keys in a large object: found past the scan, with the same message (a scan per
  // key made 150,000 keys take about 15 s; found by fuzzing).
  std::string big = "{";
  for (int i = 0; i < 150000; ++i)
    big += "\"k" + std::to_string(i) + "\": " + std::to_string(i) + ", ";
  const io::Json parsed = io::parse_json(big.substr(0, big.size() - 2) + "}", "x");
  CHECK(parsed.as_object().size() == 150000);
  CHECK(parsed.at("k149999").as_integer() == 149999);
  const std::string where =
      datanas::detail::concat("offset ", big.size(), " (line 1, column ", big.size() + 1,
                              "): expected a key other than the duplicate \"k20\"");
  CHECK_THROWS_WITH_AS((void)io::parse_json(big + "\"k20\": 0}", "x"),
                       doctest::Contains(where.c_str()), datanas::error);
  CHECK_THROWS_WITH_AS((void)io::parse_json("{\"a\": 1, \"b\": 2, \"a\": 3}", "x"),
                       doctest::Contains("duplicate \"a\""), datanas::error);
}

TEST_SUITE_END();
