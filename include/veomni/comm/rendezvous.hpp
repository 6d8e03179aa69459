#pragma once
// <veomni/comm/rendezvous.hpp>: the key-value store every rank meets at.
// Rank 0 serves a c10d::TCPStore at MASTER_ADDR:MASTER_PORT and the others
// connect to it; a world of one gets an in-process store and needs no
// environment. Group rendezvous (Gloo addresses, NCCL unique ids) happens
// under per-group prefixes of this store.
//
// Note: LibTorch 1.13's TCPStore server listens on every interface (its
// socket API takes no bind address); "loopback unless told otherwise" is
// held by the default MASTER_ADDR (127.0.0.1) that clients dial and by the
// Gloo device, which binds 127.0.0.1 for a loopback MASTER_ADDR.
#include <string>

#include "error.hpp"
#include "launch_env.hpp"
#include "torch_compat.hpp"

namespace veomni::comm {

inline compat::store_ptr make_store(const launch_env& env, std::chrono::milliseconds timeout) {
  if (env.world_size == 1) return compat::make_hash_store();
  try {
    return compat::make_tcp_store(env.master_addr, env.master_port, env.rank == 0, env.world_size, timeout);
  } catch (const std::exception& e) {
    throw comm_error("veomni::comm::make_store: rank " + std::to_string(env.rank) + " of " +
                     std::to_string(env.world_size) + " could not " + (env.rank == 0 ? "serve" : "reach") +
                     " the store at " + env.master_addr + ":" + std::to_string(env.master_port) + ": " +
                     compat::reason(e));
  }
}

}  // namespace veomni::comm
