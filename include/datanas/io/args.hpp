// datanas/io/args.hpp - a small command-line parser for the sample programs.
//
// Flags are `--name value` or `--name=value`; booleans are `--name`. Unknown flags, missing or
// malformed values and out-of-range choices throw datanas::error naming the flag.
#pragma once

#include <charconv>
#include <cmath>
#include <cstdint>
#include <functional>
#include <ostream>
#include <string>
#include <string_view>
#include <vector>

#include "datanas/core/error.hpp"

namespace datanas::io {

class ArgParser {
 public:
  ArgParser(std::string program, std::string description)
      : program_(std::move(program)), description_(std::move(description)) {}

  ArgParser& add(std::string name, std::string* v, std::string help) {
    return add_impl(std::move(name), std::move(help), *v, false, [v](std::string_view s) { *v = s; });
  }
  ArgParser& add(std::string name, bool* v, std::string help) {
    const std::string flag = name;
    return add_impl(std::move(name), std::move(help), *v ? "true" : "false", true,
                    [v, flag](std::string_view s) {
                      DATANAS_CHECK(s == "true" || s == "false" || s == "1" || s == "0", "--", flag,
                                    ": '", s, "' is not true/false");
                      *v = s == "true" || s == "1";
                    });
  }
  template <class N>
    requires std::is_arithmetic_v<N>
  ArgParser& add(std::string name, N* v, std::string help) {
    const std::string flag = name;
    return add_impl(std::move(name), std::move(help), to_string(*v), false, [v, flag](std::string_view s) {
      N out{};
      const auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), out);
      DATANAS_CHECK(ec == std::errc() && p == s.data() + s.size(), "--", flag, ": '", s,
                    "' is not a valid ", std::is_floating_point_v<N> ? "number" : "integer");
      // from_chars also reads "nan" and "inf": no flag means either (a NaN learning rate would
      // only show as a diverged run).
      if constexpr (std::is_floating_point_v<N>)
        DATANAS_CHECK(std::isfinite(out), "--", flag, ": '", s, "' is not a finite number");
      *v = out;
    });
  }
  /// A string restricted to `choices`.
  ArgParser& add_choice(std::string name, std::string* v, std::vector<std::string> choices, std::string help) {
    const std::string flag = name;
    std::string list;
    for (const auto& c : choices) list += (list.empty() ? "" : ", ") + c;
    return add_impl(std::move(name), help + " {" + list + "}", *v, false, [=](std::string_view s) {
      for (const auto& c : choices)
        if (s == c) {
          *v = c;
          return;
        }
      throw error(datanas::detail::concat("--", flag, ": '", s, "' is not one of {", list, "}"));
    });
  }

  /// Parses argv; returns false when --help was given (usage already printed to `out`).
  bool parse(int argc, const char* const* argv, std::ostream& out) {
    for (int i = 1; i < argc; ++i) {
      std::string_view a = argv[i];
      if (a == "--help" || a == "-h") {
        usage(out);
        return false;
      }
      DATANAS_CHECK(a.starts_with("--"), "unexpected argument '", a, "' (flags start with --; see --help)");
      a.remove_prefix(2);
      std::string_view value;
      bool has_value = false;
      if (auto eq = a.find('='); eq != std::string_view::npos) {
        value = a.substr(eq + 1);
        a = a.substr(0, eq);
        has_value = true;
      }
      Flag* f = find(a);
      if (!f && a.starts_with("no-") && !has_value)  // --no-X switches a boolean flag off
        if (Flag* b = find(a.substr(3)); b && b->is_bool) {
          b->set("false");
          b->given = true;
          continue;
        }
      DATANAS_CHECK(f != nullptr, "unknown flag --", a, " (see --help)");
      f->given = true;
      if (f->is_bool) {  // --X, --X=true, --X=false
        f->set(has_value ? value : std::string_view("true"));
        continue;
      }
      if (!has_value) {
        DATANAS_CHECK(i + 1 < argc, "--", a, " needs a value");
        value = argv[++i];
      }
      f->set(value);
    }
    return true;
  }

  /// Whether --name (or --no-name) appeared on the command line of the last parse().
  [[nodiscard]] bool given(std::string_view name) const {
    for (const auto& f : flags_)
      if (f.name == name) return f.given;
    throw error(datanas::detail::concat("ArgParser::given: no flag --", name));
  }

  void usage(std::ostream& out) const {
    out << "usage: " << program_ << " [flags]\n" << description_ << "\n\nflags:\n";
    for (const auto& f : flags_) {
      std::string head = "  --" + f.name + (f.is_bool ? "" : " V");
      if (head.size() < 26) head.resize(26, ' ');
      out << head << " " << f.help
          << (f.is_bool ? (f.default_value == "true" ? " (on by default; --no-" + f.name + " turns it off)" : "")
                        : " (default: " + f.default_value + ")")
          << "\n";
    }
    out << "  --help                     show this message\n";
  }

 private:
  struct Flag {
    std::string name, help, default_value;
    bool is_bool;
    bool given = false;
    std::function<void(std::string_view)> set;
  };
  template <class N>
  static std::string to_string(N v) {
    // Shortest text that reads back to v: 0.025, 5e-07 (std::to_string would print 0.000000).
    char buf[64];
    const auto r = std::to_chars(buf, buf + sizeof buf, v);
    return std::string(buf, r.ptr);
  }
  ArgParser& add_impl(std::string name, std::string help, std::string def, bool is_bool,
                      std::function<void(std::string_view)> set) {
    flags_.push_back({std::move(name), std::move(help), std::move(def), is_bool, false, std::move(set)});
    return *this;
  }
  Flag* find(std::string_view name) {
    for (auto& f : flags_)
      if (f.name == name) return &f;
    return nullptr;
  }
  std::string program_, description_;
  std::vector<Flag> flags_;
};

}  // namespace datanas::io
