// datanas/data/ptb.hpp - word-level language-modelling corpora (Penn Treebank, Mikolov's
// preprocessing), contiguous batch streams and BPTT windows (ALGORITHMS.md §4).
//
// The vocabulary is built as the AWD-LSTM / DARTS `data.py` does: every line is split on white
// space and an "<eos>" token is appended; words get ids in order of first appearance, over the
// training file first, then validation, then test (PTB's valid and test add no new word, so the
// 10,000 ids come from train alone). Streams are batchified into B contiguous columns, and a
// window of `seq_len` rows gives the inputs and the next-word targets.
#pragma once

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "datanas/core/error.hpp"
#include "datanas/core/random.hpp"
#include "datanas/core/tensor.hpp"

namespace datanas::data {

/// Word <-> id map, ids in order of first appearance.
class Vocabulary {
 public:
  static constexpr std::string_view kEos = "<eos>";

  /// The id of `word`, adding it when new.
  std::int32_t add(std::string_view word) {
    const auto it = index_.find(std::string(word));
    if (it != index_.end()) return it->second;
    const auto id = static_cast<std::int32_t>(words_.size());
    words_.emplace_back(word);
    index_.emplace(words_.back(), id);
    return id;
  }
  /// The id of `word`, or -1 when it is not in the vocabulary.
  [[nodiscard]] std::int32_t find(std::string_view word) const {
    const auto it = index_.find(std::string(word));
    return it == index_.end() ? -1 : it->second;
  }
  [[nodiscard]] const std::string& word(std::int32_t id) const {
    DATANAS_CHECK(id >= 0 && std::size_t(id) < words_.size(), "vocabulary: id ", id,
                  " outside [0, ", words_.size(), ")");
    return words_[std::size_t(id)];
  }
  [[nodiscard]] std::int32_t size() const { return static_cast<std::int32_t>(words_.size()); }

 private:
  std::vector<std::string> words_;
  std::unordered_map<std::string, std::int32_t> index_;
};

/// Appends the ids of `text` (one sentence per line, words separated by white space, "<eos>"
/// after every line, as data.py) to `out`, adding new words to `vocab`. `source` names the text
/// in errors. Bytes that cannot occur in a text corpus (NUL and the other control characters
/// except tab, CR, LF, VT, FF) are reported as corruption with their line and byte offset; so is
/// a text without any word. UTF-8 bytes (>= 0x80) are accepted as parts of words.
inline void tokenize(std::string_view text, std::string_view source, Vocabulary& vocab,
                     std::vector<std::int32_t>& out) {
  std::size_t line = 1, words = 0;
  for (std::size_t i = 0; i < text.size(); ++i) {
    const unsigned char c = static_cast<unsigned char>(text[i]);
    if (c < 0x20 && c != '\t' && c != '\n' && c != '\r' && c != '\v' && c != '\f')
      throw error(datanas::detail::concat(source, ": line ", line, ", byte offset ", i, ": control byte 0x",
                                          "0123456789abcdef"[c >> 4], "0123456789abcdef"[c & 15],
                                          " - not a text corpus (corrupt or binary file?)"));
    if (c == '\n') ++line;
  }
  std::size_t pos = 0;
  while (pos < text.size()) {
    std::size_t end = text.find('\n', pos);
    const bool has_newline = end != std::string_view::npos;
    if (!has_newline) end = text.size();
    const std::string_view l = text.substr(pos, end - pos);
    std::size_t k = 0;
    while (k < l.size()) {
      while (k < l.size() && std::isspace(static_cast<unsigned char>(l[k]))) ++k;
      std::size_t e = k;
      while (e < l.size() && !std::isspace(static_cast<unsigned char>(l[e]))) ++e;
      if (e > k) {
        out.push_back(vocab.add(l.substr(k, e - k)));
        ++words;
      }
      k = e;
    }
    // data.py: line.split() + ['<eos>'] for every line, empty ones too; <eos> gets its id
    // when the first line ends, like any other word.
    out.push_back(vocab.add(Vocabulary::kEos));
    pos = end + 1;
  }
  DATANAS_CHECK(words > 0, source, ": no words (empty or truncated file?)");
}

/// A word-level corpus: the vocabulary and the three splits as id streams.
struct TextCorpus {
  Vocabulary vocab;
  std::vector<std::int32_t> train, valid, test;
  std::string train_path, valid_path, test_path;

  /// Reads train, valid and test from `dir`: the files ptb.{train,valid,test}.txt (Mikolov's
  /// names) or, failing that, {train,valid,test}.txt (the AWD-LSTM / DARTS names). A missing
  /// directory or file is an error naming both names tried.
  static TextCorpus load(const std::string& dir) {
    namespace fs = std::filesystem;
    DATANAS_CHECK(fs::is_directory(dir), "PTB: corpus directory '", dir,
                  "' does not exist (give --data-dir, e.g. ../shared/data/ptb)");
    TextCorpus c;
    auto read = [&](const char* split, std::vector<std::int32_t>& out, std::string& path) {
      const std::string a = dir + "/ptb." + split + ".txt", b = dir + "/" + split + ".txt";
      path = fs::is_regular_file(a) ? a : b;
      DATANAS_CHECK(fs::is_regular_file(path), "PTB: no ", split, " file in '", dir, "' (looked for '",
                    a, "' and '", b, "')");
      std::ifstream in(path, std::ios::binary);
      DATANAS_CHECK(in.good(), "PTB: cannot open '", path, "'");
      std::ostringstream ss;
      ss << in.rdbuf();
      DATANAS_CHECK(!in.bad(), "PTB: error reading '", path, "'");
      tokenize(ss.str(), path, c.vocab, out);
    };
    read("train", c.train, c.train_path);
    read("valid", c.valid, c.valid_path);
    read("test", c.test, c.test_path);
    return c;
  }
};

/// B contiguous streams of a token sequence: data.view(B, -1).t() of data.py's batchify, the
/// tail that does not fill a row dropped. Element (t, b) = ids[b * rows + t]; shape [rows, B].
inline Tensor<std::int32_t> batchify(const std::vector<std::int32_t>& ids, index_t batch) {
  DATANAS_CHECK(batch >= 1, "batchify: batch size must be >= 1, got ", batch);
  const index_t rows = index_t(ids.size()) / batch;
  DATANAS_CHECK(rows >= 2, "batchify: ", ids.size(), " tokens give ", rows, " rows for batch size ",
                batch, "; at least 2 are needed (an input and its target)");
  Tensor<std::int32_t> t = Tensor<std::int32_t>::empty({rows, batch});
  for (index_t b = 0; b < batch; ++b)
    for (index_t r = 0; r < rows; ++r) t[r * batch + b] = ids[std::size_t(b * rows + r)];
  return t;
}

/// Inputs rows [i, i + len) and targets rows [i + 1, i + 1 + len) of a batchified stream, with
/// len = min(seq_len, rows - 1 - i) (data.py's get_batch). inputs: [len, B]; targets: [len * B]
/// in the same (t-major) order as the model's stacked outputs.
struct Window {
  Tensor<std::int32_t> inputs, targets;
  [[nodiscard]] index_t length() const { return inputs.dim(0); }
};
inline Window get_window(const Tensor<std::int32_t>& stream, index_t i, index_t seq_len) {
  const index_t rows = stream.dim(0), b = stream.dim(1);
  DATANAS_CHECK(i >= 0 && i < rows - 1, "get_window: start row ", i, " outside [0, ", rows - 1, ")");
  DATANAS_CHECK(seq_len >= 1, "get_window: sequence length must be >= 1, got ", seq_len);
  const index_t len = std::min(seq_len, rows - 1 - i);
  Window w{Tensor<std::int32_t>::empty({len, b}), Tensor<std::int32_t>::empty({len * b})};
  std::copy_n(stream.data() + i * b, len * b, w.inputs.data());
  std::copy_n(stream.data() + (i + 1) * b, len * b, w.targets.data());
  return w;
}

/// The variable BPTT length of AWD-LSTM / DARTS training: base = bptt with probability 0.95,
/// else bptt / 2; with `jitter`, seq_len = max(5, int(N(base, 5))), capped at bptt + max_delta
/// (train.py); without, seq_len = int(base) (DARTS' train_search.py, which comments the jitter
/// out). Draws from `gen` (two blocks per call), so windows are reproducible and checkpointed.
struct BpttSampler {
  index_t bptt = 35;
  index_t max_delta = 20;
  bool jitter = true;

  index_t operator()(PhiloxGenerator& gen) const {
    const double base = gen.uniform() < 0.95f ? double(bptt) : double(bptt) / 2.0;
    if (!jitter) return std::max<index_t>(1, index_t(base));
    const double draw = base + 5.0 * gen.normal();
    // int() of numpy truncates towards zero; max(5, .) makes the sign irrelevant.
    const index_t len = std::max<index_t>(5, index_t(std::trunc(draw)));
    return std::min(len, bptt + max_delta);
  }
};

}  // namespace datanas::data
