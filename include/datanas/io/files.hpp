// datanas/io/files.hpp - small file helpers for the sample programs' outputs.
#pragma once

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>
#include <string_view>

#include "datanas/core/error.hpp"

namespace datanas::io {

/// Writes `text` to `path` through a temporary file and a rename, so a reader never sees a
/// half-written file.
inline void write_text_file(const std::string& path, std::string_view text) {
  const std::string tmp = path + ".tmp";
  {
    std::ofstream f(tmp, std::ios::binary | std::ios::trunc);
    DATANAS_CHECK(f.good(), "cannot write '", tmp, "'");
    f.write(text.data(), std::streamsize(text.size()));
    f.flush();
    DATANAS_CHECK(f.good(), "error writing '", tmp, "'");
  }
  std::error_code ec;
  std::filesystem::rename(tmp, path, ec);
  DATANAS_CHECK(!ec, "cannot rename '", tmp, "' to '", path, "': ", ec.message());
}

/// The whole content of a text file; throws naming the file when it cannot be read.
inline std::string read_text_file(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  DATANAS_CHECK(f.good(), "cannot open '", path, "'");
  return {std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>()};
}

/// Appends one line (a trailing newline is added).
inline void append_line(const std::string& path, std::string_view line) {
  std::ofstream f(path, std::ios::app);
  DATANAS_CHECK(f.good(), "cannot append to '", path, "'");
  f << line << '\n';
}

}  // namespace datanas::io
