// datanas/io/run.hpp - the output directory of a resumable run (search or training): its
// checkpoint, checked against the flags that wrote it, and its CSV log, kept in step with it.
#pragma once

#include <filesystem>
#include <optional>
#include <sstream>
#include <string>
#include <string_view>

#include "datanas/io/checkpoint.hpp"
#include "datanas/io/files.hpp"

namespace datanas::io {

/// Opens OUT for a run. Without `resume`: creates OUT and starts OUT/log.csv with `header`.
/// With `resume`: loads OUT/checkpoint, refuses it unless its "flags" entry equals `identity`
/// (the flags that fix the network, the data and the schedules; both strings are shown), and
/// trims OUT/log.csv to the header and the checkpoint's "epoch" rows, since a run killed after
/// logging an epoch but before its checkpoint landed would otherwise log that epoch twice.
/// Returns the checkpoint when resuming.
inline std::optional<Checkpoint> open_run(const std::string& out, bool resume, const std::string& identity,
                                          const std::string& header) {
  std::filesystem::create_directories(out);
  const std::string ckpt_path = out + "/checkpoint", log_path = out + "/log.csv";
  if (!resume) {
    write_text_file(log_path, header + "\n");
    return std::nullopt;
  }
  DATANAS_CHECK(std::filesystem::exists(ckpt_path), "--resume: no checkpoint at '", ckpt_path, "'");
  auto ck = Checkpoint::load(ckpt_path);
  const std::string saved = ck.get_string("flags");
  DATANAS_CHECK(saved == identity, "--resume: '", ckpt_path, "' was written with different flags:\n  saved: ", saved,
                "\n  now:   ", identity);
  const long epoch = long(ck.get_int("epoch"));
  if (std::filesystem::exists(log_path)) {
    std::istringstream in(read_text_file(log_path));
    std::string line, kept;
    for (long row = -1; std::getline(in, line) && row < epoch; ++row) kept += line + "\n";
    write_text_file(log_path, kept);
  } else {
    write_text_file(log_path, header + "\n");
  }
  return ck;
}

/// A CSV field: quoted, inner quotes doubled.
inline std::string csv_quote(std::string_view s) {
  std::string out = "\"";
  for (char c : s) out += c == '"' ? std::string("\"\"") : std::string(1, c);
  return out + "\"";
}

}  // namespace datanas::io
