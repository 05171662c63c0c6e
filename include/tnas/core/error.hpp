// tnas::Error and the checks that raise it.
//
// Every run-time failure in tnas (bad shapes, bad axes, dtype/device mismatches, corrupt files,
// NaN where a number is required) is a tnas::Error whose message says what went wrong and
// where: the op or file involved, the values seen and the values expected.
#pragma once

#include <sstream>
#include <stdexcept>
#include <string>
#include <utility>

namespace tnas {

class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& what) : std::runtime_error(what) {}
};

namespace detail {
template <class... Args>
std::string cat(Args&&... args) {
  std::ostringstream os;
  (os << ... << std::forward<Args>(args));
  return os.str();
}

// The location is passed as __FILE__ / __LINE__ from the macros below rather than as a
// std::source_location: the same information, and it also builds with Clang before 16 on
// libstdc++, whose <source_location> needs a builtin those Clangs lack (Debian 12's clang++ is 14).
[[noreturn]] inline void fail(const std::string& msg, const char* file_name, int line) {
  std::string file = file_name;
  auto slash = file.rfind("include/tnas/");
  if (slash != std::string::npos) file = file.substr(slash + 8);
  throw Error(msg + " [" + file + ":" + std::to_string(line) + "]");
}
}  // namespace detail

// TNAS_CHECK(cond, parts...): throws tnas::Error built from `parts` when `cond` is false.
#define TNAS_CHECK(cond, ...)                                                     \
  do {                                                                            \
    if (!(cond)) [[unlikely]]                                                     \
      ::tnas::detail::fail(::tnas::detail::cat(__VA_ARGS__), __FILE__, __LINE__); \
  } while (0)

#define TNAS_FAIL(...) ::tnas::detail::fail(::tnas::detail::cat(__VA_ARGS__), __FILE__, __LINE__)

}  // namespace tnas
