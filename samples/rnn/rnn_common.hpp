// samples/rnn/rnn_common.hpp - what datanas-search-rnn and datanas-train-rnn share: loading the
// corpus with optional limits, the output directory with its resumable log, CSV quoting.
#pragma once

#include <cstdio>
#include <filesystem>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

#include "datanas/data/ptb.hpp"
#include "datanas/io/checkpoint.hpp"
#include "datanas/io/files.hpp"

namespace rnn_sample {

namespace fs = std::filesystem;
using namespace datanas;

/// The corpus, its splits cut to the first `limit` tokens when limit > 0 (quick runs).
struct Corpus {
  data::TextCorpus text;
  std::vector<std::int32_t> train, valid, test;
};

inline Corpus load_corpus(const std::string& dir, long train_limit, long eval_limit) {
  Corpus c;
  c.text = data::TextCorpus::load(dir);
  auto cut = [](const std::vector<std::int32_t>& v, long limit) {
    return limit > 0 && std::size_t(limit) < v.size() ? std::vector<std::int32_t>(v.begin(), v.begin() + limit) : v;
  };
  c.train = cut(c.text.train, train_limit);
  c.valid = cut(c.text.valid, eval_limit);
  c.test = cut(c.text.test, eval_limit);
  return c;
}

/// CSV field: quoted, inner quotes doubled.
inline std::string csv_quote(std::string_view s) {
  std::string out = "\"";
  for (char c : s) out += c == '"' ? std::string("\"\"") : std::string(1, c);
  return out + "\"";
}

/// Opens OUT for a run: with `resume`, loads OUT/checkpoint, checks that it was written with the
/// same identity string and trims OUT/log.csv to `epoch_of(checkpoint)` rows (a run killed after
/// logging an epoch but before its checkpoint landed would otherwise log it twice); without,
/// starts OUT/log.csv with `header`. Returns the checkpoint when resuming.
inline std::optional<io::Checkpoint> open_run(const std::string& out, bool resume, const std::string& identity,
                                              const std::string& header) {
  fs::create_directories(out);
  const std::string ckpt_path = out + "/checkpoint", log_path = out + "/log.csv";
  if (!resume) {
    io::write_text_file(log_path, header + "\n");
    return std::nullopt;
  }
  DATANAS_CHECK(fs::exists(ckpt_path), "--resume: no checkpoint at '", ckpt_path, "'");
  auto ck = io::Checkpoint::load(ckpt_path);
  const std::string saved = ck.get_string("flags");
  DATANAS_CHECK(saved == identity, "--resume: '", ckpt_path, "' was written with different flags:\n  saved: ", saved,
                "\n  now:   ", identity);
  const long epoch = long(ck.get_int("epoch"));
  if (fs::exists(log_path)) {
    std::istringstream in(io::read_text_file(log_path));
    std::string line, kept;
    for (long row = -1; std::getline(in, line) && row < epoch; ++row) kept += line + "\n";
    io::write_text_file(log_path, kept);
  } else {
    io::write_text_file(log_path, header + "\n");
  }
  return ck;
}

}  // namespace rnn_sample
