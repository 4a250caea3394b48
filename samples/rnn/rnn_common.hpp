// samples/rnn/rnn_common.hpp - what datanas-search-rnn and datanas-train-rnn share: loading the
// corpus with optional limits (the resumable output directory is io::open_run).
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
#include "datanas/io/run.hpp"

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

using io::csv_quote;
using io::open_run;

}  // namespace rnn_sample
