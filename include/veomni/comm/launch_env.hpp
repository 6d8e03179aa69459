#pragma once
// <veomni/comm/launch_env.hpp>: reads the environment that torchrun (and
// veomni-launch) give each rank. No torch.
//
//   RANK  WORLD_SIZE  LOCAL_RANK  LOCAL_WORLD_SIZE  MASTER_ADDR  MASTER_PORT
//
// A world of one needs none of them. Missing LOCAL_* default to the global
// values (one machine); MASTER_ADDR defaults to 127.0.0.1, so a job stays on
// loopback unless told otherwise. TORCHELASTIC_USE_AGENT_STORE=True (torchrun
// with its default static rendezvous) says torchrun's agent already serves
// the store at MASTER_ADDR:MASTER_PORT. Anything malformed throws
// std::invalid_argument naming the variable and its value, e.g.
//   "veomni::comm::read_launch_env: RANK = 'x' is not a non-negative integer"
//   "veomni::comm::read_launch_env: RANK = 2 must be < WORLD_SIZE = 2"
#include <charconv>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <functional>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>

namespace veomni::comm {

struct launch_env {
  int rank = 0;
  int world_size = 1;
  int local_rank = 0;
  int local_world_size = 1;
  std::string master_addr = "127.0.0.1";
  std::uint16_t master_port = 0;  // 0: not given (world of one)
  bool agent_store = false;       // TORCHELASTIC_USE_AGENT_STORE=True
};

// Looks a variable up; std::nullopt when unset.
using env_lookup = std::function<std::optional<std::string>(std::string_view)>;

inline std::optional<std::string> process_env(std::string_view name) {
  if (const char* v = std::getenv(std::string(name).c_str())) return std::string(v);
  return std::nullopt;
}

namespace detail {
inline const std::string env_fn = "veomni::comm::read_launch_env: ";

inline long parse_env_int(std::string_view name, const std::string& v) {
  long out = 0;
  const auto* end = v.data() + v.size();
  auto [p, ec] = std::from_chars(v.data(), end, out);
  if (v.empty() || ec != std::errc{} || p != end || out < 0)
    throw std::invalid_argument(env_fn + std::string(name) + " = '" + v + "' is not a non-negative integer");
  return out;
}
}  // namespace detail

inline launch_env read_launch_env(const env_lookup& get = process_env) {
  using detail::env_fn;
  auto int_or = [&](std::string_view name, long fallback) {
    auto v = get(name);
    return v ? detail::parse_env_int(name, *v) : fallback;
  };
  auto must_be_less = [&](std::string_view a, long av, std::string_view b, long bv) {
    if (av >= bv)
      throw std::invalid_argument(env_fn + std::string(a) + " = " + std::to_string(av) + " must be < " +
                                  std::string(b) + " = " + std::to_string(bv));
  };
  launch_env e;
  const long world = int_or("WORLD_SIZE", 1);
  if (world < 1) throw std::invalid_argument(env_fn + "WORLD_SIZE = " + std::to_string(world) + " must be >= 1");
  const long rank = int_or("RANK", 0);
  must_be_less("RANK", rank, "WORLD_SIZE", world);
  const long local_world = int_or("LOCAL_WORLD_SIZE", world);
  if (local_world < 1)
    throw std::invalid_argument(env_fn + "LOCAL_WORLD_SIZE = " + std::to_string(local_world) + " must be >= 1");
  const long local_rank = int_or("LOCAL_RANK", rank % local_world);
  must_be_less("LOCAL_RANK", local_rank, "LOCAL_WORLD_SIZE", local_world);
  e.rank = static_cast<int>(rank);
  e.world_size = static_cast<int>(world);
  e.local_rank = static_cast<int>(local_rank);
  e.local_world_size = static_cast<int>(local_world);
  if (auto a = get("MASTER_ADDR")) {
    if (a->empty()) throw std::invalid_argument(env_fn + "MASTER_ADDR = '' is empty");
    e.master_addr = *a;
  }
  if (auto p = get("MASTER_PORT")) {
    const long port = detail::parse_env_int("MASTER_PORT", *p);
    if (port < 1 || port > 65535)
      throw std::invalid_argument(env_fn + "MASTER_PORT = " + *p + " is not a port (1..65535)");
    e.master_port = static_cast<std::uint16_t>(port);
  } else if (world > 1) {
    throw std::invalid_argument(env_fn + "MASTER_PORT is not set (needed when WORLD_SIZE = " +
                                std::to_string(world) + ")");
  }
  e.agent_store = get("TORCHELASTIC_USE_AGENT_STORE") == std::optional<std::string>("True");
  return e;
}

// Collective (and store) timeout: comm_options' default, or
// VEOMNI_COMM_TIMEOUT (seconds). Where rank 0's store listens: MASTER_ADDR's
// address unless VEOMNI_STORE_BIND names another address of this host;
// VEOMNI_STORE_BIND=0.0.0.0 (or ::) listens on every interface, and only
// then (rendezvous.hpp). VEOMNI_COMM_TRACE=PREFIX: each rank's mesh writes
// the times of its collectives to PREFIX.rank<R>.csv (trace.hpp).
struct comm_options {
  std::chrono::milliseconds timeout{std::chrono::seconds(60)};
  std::string store_bind;  // empty: MASTER_ADDR
  std::string trace;       // empty: no trace; else the path prefix of the per-rank files

  static comm_options from_env(const env_lookup& get = process_env) {
    comm_options o;
    if (auto v = get("VEOMNI_COMM_TIMEOUT")) {
      const long s = detail::parse_env_int("VEOMNI_COMM_TIMEOUT", *v);
      if (s < 1) throw std::invalid_argument(detail::env_fn + "VEOMNI_COMM_TIMEOUT = " + *v + " must be >= 1 (seconds)");
      o.timeout = std::chrono::seconds(s);
    }
    if (auto v = get("VEOMNI_STORE_BIND")) {
      if (v->empty()) throw std::invalid_argument(detail::env_fn + "VEOMNI_STORE_BIND = '' is empty");
      o.store_bind = *v;
    }
    if (auto v = get("VEOMNI_COMM_TRACE")) {
      if (v->empty()) throw std::invalid_argument(detail::env_fn + "VEOMNI_COMM_TRACE = '' is empty (a path prefix)");
      o.trace = *v;
    }
    return o;
  }
};

}  // namespace veomni::comm
