// A tiny language-modelling task for the allocation tests (tests/test_allocation.cpp and
// tests/gpu/test_host_allocation_gpu.cpp): a model configuration with every dropout on, and
// windows of a token stream with structure, no files needed.
#pragma once

#include <cstdint>
#include <vector>

#include "datanas/data/ptb.hpp"
#include "datanas/spaces/rnn_space.hpp"

namespace datanas::testing {

/// Vocabulary 11, 8 units, every dropout 0.2.
inline spaces::rnn::RnnConfig tiny_rnn_config() {
  spaces::rnn::RnnConfig c;
  c.vocab = 11;
  c.emsize = c.nhid = 8;
  c.dropout = c.dropouth = c.dropoutx = c.dropouti = c.dropoute = 0.2;
  return c;
}

/// `count` windows of 6 time steps of a 4-column stream of ids in [0, 11).
inline std::vector<data::Window> tiny_windows(index_t count = 8) {
  std::vector<std::int32_t> ids(std::size_t(count * 6 * 4 + 8));
  for (std::size_t i = 0; i < ids.size(); ++i) ids[i] = std::int32_t((i * 7 + i / 5) % 11);
  const Tensor<std::int32_t> stream = data::batchify(ids, 4);
  std::vector<data::Window> windows;
  for (index_t i = 0; i < count; ++i) windows.push_back(data::get_window(stream, i * 6, 6));
  return windows;
}

}  // namespace datanas::testing
