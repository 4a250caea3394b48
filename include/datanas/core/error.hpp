// datanas/core/error.hpp - the one exception type of the library and its checking macros.
#pragma once

#include <cstdio>
#include <sstream>
#include <stdexcept>
#include <string>

namespace datanas {

/// Thrown for every kind of bad input: wrong shapes, invalid arguments, corrupt files, bad flags.
/// The message always names what was wrong and where (op, shape, file, flag).
class error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

namespace detail {
template <class... Args>
[[nodiscard]] std::string concat(const Args&... args) {
  std::ostringstream os;
  (os << ... << args);
  return os.str();
}
}  // namespace detail

}  // namespace datanas

/// Validates user-facing input; the message parts are streamed together only on failure.
#define DATANAS_CHECK(cond, ...)                                      \
  do {                                                                \
    if (!(cond)) [[unlikely]]                                         \
      throw ::datanas::error(::datanas::detail::concat(__VA_ARGS__)); \
  } while (0)

/// Internal invariant (a bug in datanas if it fires); compiled out under NDEBUG.
#ifdef NDEBUG
#define DATANAS_ASSERT(cond) ((void)0)
#else
#define DATANAS_ASSERT(cond)                                                            \
  do {                                                                                  \
    if (!(cond)) [[unlikely]] {                                                         \
      std::fprintf(stderr, "datanas internal error: %s at %s:%d\n", #cond, __FILE__, \
                   __LINE__);                                                           \
      std::abort();                                                                     \
    }                                                                                   \
  } while (0)
#endif
