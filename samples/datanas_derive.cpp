// datanas-derive: turns architecture logits (alpha.json) into a discrete genotype by one of the
// derivation rules of ALGORITHMS.md §2.2 - DARTS top-2, GDAS / NAS-Bench-201 argmax, or DATA's
// most probable EGS code - and prints it as DARTS/DATA text, JSON or a Graphviz picture.
//
//   datanas-derive --alpha alpha.json                       # DATA rule, M = 4, per node
//   datanas-derive --alpha alpha.json --rule darts
//   datanas-derive --alpha alpha.json --format dot > cells.dot && dot -Tpng cells.dot -o cells.png
//
// alpha.json: {"normal": [[K logits] per edge], "reduce": [...]}, optionally "ops": [K names]
// (default: the DARTS CNN ops). Every bad input prints "datanas-derive: error: ..." and exits 2.
#include <cstdio>
#include <iostream>
#include <string>

#include "datanas/io/args.hpp"
#include "datanas/search/derive.hpp"
#include "datanas/search/genotype.hpp"
#include "datanas/search/sample.hpp"

using namespace datanas;

int main(int argc, char** argv) try {
  std::string alpha_path, rule = "data", normalize = "softmax", granularity = "node",
                          format = "text";
  int M = 4, nodes = 0;
  long sample = 0;
  std::string estimator = "egs";
  std::uint64_t seed = 1;
  io::ArgParser args("datanas-derive",
                     "Derive a genotype from architecture logits (alpha.json) by the DARTS, "
                     "argmax (GDAS) or DATA rule.");
  args.add("alpha", &alpha_path,
           "alpha file: {\"normal\": [[K logits] per edge], \"reduce\": [...]} (required)")
      .add_choice("rule", &rule, {"darts", "argmax", "data"},
                  "darts: top-2 distinct edges, argmax non-none op; argmax: every edge's argmax "
                  "(none kept); data: the most probable EGS code of M draws")
      .add("M", &M, "DATA rule: ensemble size (number of draws per node)")
      .add_choice("normalize", &normalize, {"softmax", "relu"},
                  "DATA rule: how logits become probabilities")
      .add_choice("granularity", &granularity, {"edge", "node"},
                  "DATA rule: one categorical per edge or per node")
      .add("nodes", &nodes, "intermediate nodes per cell (0: inferred, 14 edges -> 4 nodes)")
      .add_choice("format", &format, {"text", "json", "dot"},
                  "output: DARTS/DATA Genotype(...) text, JSON, or a Graphviz digraph");
  args.add("sample", &sample,
           "instead of deriving, draw N architectures from the estimator's distribution and print "
           "one JSON genotype per line (none left out)")
      .add_choice("estimator", &estimator, {"gdas", "egs"},
                  "--sample: gdas (one pair per group) or egs (OR of M draws per group)")
      .add("seed", &seed, "--sample: random seed");
  if (!args.parse(argc, argv, std::cout)) return 0;

  DATANAS_CHECK(!alpha_path.empty(), "--alpha is required (see --help)");
  DATANAS_CHECK(M >= 1, "--M must be >= 1, got ", M);
  DATANAS_CHECK(nodes >= 0, "--nodes must be >= 0 (0: inferred), got ", nodes);

  const search::AlphaPair alpha = search::read_alpha_json(alpha_path, nodes);
  DATANAS_CHECK(!alpha.ops.empty() || alpha.normal.cols == int(search::kDartsOps.size()),
                alpha_path, ": ", alpha.normal.cols,
                " logits per edge, but the file has no \"ops\" "
                "list and the default DARTS op set has ",
                search::kDartsOps.size(), " ops");
  search::DeriveOptions opt;
  opt.rule = rule == "darts"    ? search::DeriveRule::kDarts
             : rule == "argmax" ? search::DeriveRule::kArgmax
                                : search::DeriveRule::kData;
  opt.M = M;
  opt.normalize = normalize == "relu" ? search::Normalize::kRelu : search::Normalize::kSoftmax;
  opt.granularity = granularity == "edge" ? search::Granularity::kEdge : search::Granularity::kNode;
  opt.nodes = nodes;

  DATANAS_CHECK(sample >= 0, "--sample must be >= 0, got ", sample);
  if (sample > 0) {
    const int n = opt.nodes > 0 ? opt.nodes : search::nodes_for_edges(alpha.normal.rows);
    std::vector<std::string_view> names;
    for (const auto& op : alpha.ops) names.push_back(op);
    const std::span<const std::string_view> ops =
        names.empty() ? std::span<const std::string_view>(search::kDartsOps) : std::span<const std::string_view>(names);
    const auto kind = estimator == "gdas" ? estimators::Kind::kHardGumbel : estimators::Kind::kEgs;
    PhiloxGenerator gen(seed);
    for (long i = 0; i < sample; ++i) {
      search::Genotype g;
      g.normal = search::sample_cell(alpha.normal, ops, n, kind, M, opt.normalize, opt.granularity, gen);
      g.reduce = search::sample_cell(alpha.reduce, ops, n, kind, M, opt.normalize, opt.granularity, gen);
      std::cout << search::to_json(g) << "\n";
    }
    return 0;
  }
  const search::Genotype g = search::derive(alpha, opt);

  if (format == "json")
    std::cout << search::to_json(g) << "\n";
  else if (format == "dot")
    std::cout << search::to_dot(g);
  else
    std::cout << search::to_text(g) << "\n";
  return 0;
} catch (const std::exception& e) {
  std::fprintf(stderr, "datanas-derive: error: %s\n", e.what());
  return 2;
}
