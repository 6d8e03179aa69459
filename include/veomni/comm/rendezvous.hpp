#pragma once
// <veomni/comm/rendezvous.hpp>: the key-value store every rank meets at.
// Rank 0 serves our own store (store.hpp) at MASTER_ADDR:MASTER_PORT and
// every rank connects to it; a world of one gets an in-process store and
// needs no environment. Group rendezvous (Gloo addresses, NCCL unique ids)
// happens under per-group prefixes of this store.
//
// Where rank 0 listens (LibTorch 1.13's TCPStore would take every interface):
//   MASTER_ADDR 127.0.0.1 (the default) or localhost -> 127.0.0.1 only
//   MASTER_ADDR 10.0.0.7 or a name for it             -> 10.0.0.7 only
//   VEOMNI_STORE_BIND=10.0.0.8                        -> 10.0.0.8 only (must be this host's)
//   VEOMNI_STORE_BIND=0.0.0.0 (or ::)                 -> every interface: the explicit opt-in
// An address that is not this host's fails at once, naming the variable.
// torchrun --standalone sets MASTER_ADDR to the host's name, so the store
// listens on that name's address. Under torchrun's default static rendezvous
// (TORCHELASTIC_USE_AGENT_STORE=True) its agent already serves a TCPStore at
// MASTER_ADDR:MASTER_PORT (torchrun's socket, on every interface), and every
// rank is a client of it.
#include <memory>
#include <string>

#include "error.hpp"
#include "launch_env.hpp"
#include "store.hpp"
#include "torch_compat.hpp"

namespace veomni::comm {

// The c10d face of store.hpp's client, what ProcessGroupGloo and the NCCL id
// exchange call; rank 0's also owns the server.
class rendezvous_store final : public c10d::Store {
 public:
  rendezvous_store(const std::string& host, std::uint16_t port, std::chrono::milliseconds timeout,
                   std::shared_ptr<store_server> server = nullptr)
      : c10d::Store(timeout), server_(std::move(server)), client_(host, port, timeout) {}

  void set(const std::string& key, const std::vector<std::uint8_t>& value) override { client_.set(key, text(value)); }
  std::vector<std::uint8_t> get(const std::string& key) override { return bytes(client_.get(key)); }
  std::int64_t add(const std::string& key, std::int64_t value) override { return client_.add(key, value); }
  std::vector<std::uint8_t> compareSet(const std::string& key, const std::vector<std::uint8_t>& expected,
                                       const std::vector<std::uint8_t>& desired) override {
    return bytes(client_.compare_set(key, text(expected), text(desired)));
  }
  bool deleteKey(const std::string& key) override { return client_.erase(key); }
  bool check(const std::vector<std::string>& keys) override { return client_.check(keys); }
  std::int64_t getNumKeys() override { return client_.count(); }
  void wait(const std::vector<std::string>& keys) override { client_.wait(keys); }
  void wait(const std::vector<std::string>& keys, const std::chrono::milliseconds& timeout) override {
    client_.wait(keys, timeout);
  }
  void setTimeout(const std::chrono::milliseconds& timeout) override {
    c10d::Store::setTimeout(timeout);
    client_.set_timeout(timeout);
  }
#if defined(VEOMNI_STORE_HAS_CLONE)
  c10::intrusive_ptr<c10d::Store> clone() override {  // another connection, sharing the server
    return c10::make_intrusive<rendezvous_store>(client_.host(), client_.port(), client_.timeout(), server_);
  }
#endif

 private:
  static std::string text(const std::vector<std::uint8_t>& v) { return {v.begin(), v.end()}; }
  static std::vector<std::uint8_t> bytes(const std::string& s) { return {s.begin(), s.end()}; }

  std::shared_ptr<store_server> server_;  // declared first: outlives the client
  store_client client_;
};

inline compat::store_ptr make_store(const launch_env& env, const comm_options& options) {
  if (env.world_size == 1) return compat::make_hash_store();
  const std::string who = "veomni::comm::make_store: rank " + std::to_string(env.rank) + " of " +
                          std::to_string(env.world_size);
  if (env.agent_store) {
    try {
      return compat::make_tcp_store_client(env.master_addr, env.master_port, env.world_size, options.timeout);
    } catch (const std::exception& e) {
      throw comm_error(who + " could not reach torchrun's store at " + env.master_addr + ":" +
                       std::to_string(env.master_port) + ": " + compat::reason(e));
    }
  }
  const bool asked = !options.store_bind.empty();
  const std::string bind = asked ? options.store_bind : env.master_addr;
  std::shared_ptr<store_server> server;
  if (env.rank == 0) {
    try {
      server = std::make_shared<store_server>(bind, env.master_port);
    } catch (const comm_error& e) {
      throw comm_error(who + " could not serve the store (" + (asked ? "VEOMNI_STORE_BIND" : "MASTER_ADDR") + " = " +
                       bind + "): " + e.what() +
                       "; VEOMNI_STORE_BIND may name another address of this host, or 0.0.0.0 for every interface");
    }
  }
  // Rank 0 dials the address it bound, which may differ from MASTER_ADDR.
  const bool every_interface = bind == "0.0.0.0" || bind == "::" || bind == "[::]";
  const std::string dial = env.rank == 0 && asked && !every_interface ? bind : env.master_addr;
  try {
    return c10::make_intrusive<rendezvous_store>(dial, env.master_port, options.timeout, std::move(server));
  } catch (const comm_error& e) {
    throw comm_error(who + ": " + e.what());
  }
}

}  // namespace veomni::comm
