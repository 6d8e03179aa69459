#pragma once
// <veomni/comm/error.hpp>: the one exception type comm/ throws for failures
// of the distributed engine (timeouts, dead peers, rendezvous), so callers
// can tell "the job is broken" apart from programming errors
// (std::invalid_argument: bad sizes, bad environment, mismatched tensors).
#include <stdexcept>
#include <string>

namespace veomni::comm {

struct comm_error : std::runtime_error {
  using std::runtime_error::runtime_error;
};

namespace detail {
// First line of an engine message: c10::Error::what() appends a C++
// backtrace that buries the reason.
inline std::string first_line(const char* what) {
  std::string s = what ? what : "";
  if (auto nl = s.find('\n'); nl != std::string::npos) s.resize(nl);
  return s;
}
}  // namespace detail

}  // namespace veomni::comm
