// comm_worker: one rank of a multi-process comm test, started by
// veomni-launch or torchrun (tests.cpp drives it). Each scenario checks its
// results against a local computation of what every rank sent, prints
// "<scenario> ok" and exits 0, or prints why and exits non-zero.
//
//   comm_worker collectives            every collective's values and counters
//   comm_worker mesh R S P E           groups of mesh {R, S, P, E} hold the right ranks
//   comm_worker hang                   rank 0 waits on a rank that never joins
//   comm_worker killed                 rank 1 dies by SIGKILL mid-job
//   comm_worker bad_sizes R S P E      sizes that break a rule
//   comm_worker store                  the c10d::Store calls on the rendezvous store
//   comm_worker listen A.B.C.D         rank 0's store listens on A.B.C.D:MASTER_PORT only
//   comm_worker trace PREFIX           three collectives traced to PREFIX.rank<R>.csv (tests.cpp reads them)
#include "scenarios.hpp"

#include <veomni/core/cost.hpp>

#include <arpa/inet.h>

#include <csignal>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <sstream>
#include <string>
#include <thread>

using namespace comm_test;

namespace {

mesh_shape shape_from(char** argv) {
  return {.dp_replicate = std::stol(argv[0]), .dp_shard = std::stol(argv[1]), .sp = std::stol(argv[2]), .ep = std::stol(argv[3])};
}

int mesh(const comm::launch_env& env, const mesh_shape& shape) {
  comm::gloo_mesh mesh(shape, env);
  std::map<std::string, comm::op_count> expected;
  for (const auto& s : comm::standard_axis_sets) {
    auto& c = mesh[s];
    const std::vector<int> want = comm::group_ranks(shape, s, env.rank);
    WORKER_CHECK(c.ranks() == want, comm::axis_key(s));
    WORKER_CHECK(c.size() == shape.size(s), comm::axis_key(s) << ": group of " << c.size() << ", mesh says " << shape.size(s));
    // Each member contributes its global rank: the gathered list is the group
    // as the engine actually connected it, in group-rank order.
    at::Tensor mine = at::full({1}, env.rank, at::kLong), all = at::zeros({c.size()}, at::kLong);
    c.all_gather(all, mine).wait();
    std::vector<int> got(all.data_ptr<std::int64_t>(), all.data_ptr<std::int64_t>() + c.size());
    WORKER_CHECK(got == want, comm::axis_key(s) << ": connected ranks differ from the layout");
    if (c.size() > 1) expected[comm::axis_key(s)] = {1, 8};
  }
  // An FSDP unit of P = 1001 floats over dp_shard*sp, as the cost model
  // prices it: all_gather payload = ceil(P/n) * 4, reduce_scatter = n * ceil(P/n) * 4.
  auto& fsdp = mesh[axes<axis::dp_shard, axis::sp>];
  const long n = fsdp.size(), P = 1001, shard = veomni::ceil_div(P, n);
  at::Tensor flat_shard = at::ones({shard}), full = at::empty({n * shard}), grad_shard = at::empty({shard});
  fsdp.all_gather(full, flat_shard).wait();
  fsdp.reduce_scatter(grad_shard, full).wait();
  if (n > 1) {
    WORKER_CHECK(mesh.counters().get("all_gather", "dp_shard*sp").bytes == 8 + shard * 4, "fsdp all_gather bytes");
    WORKER_CHECK(mesh.counters().get("reduce_scatter", "dp_shard*sp").bytes == n * shard * 4, "fsdp reduce_scatter bytes");
    expected["dp_shard*sp"] = {3, 8 + shard * 4 + n * shard * 4};
  }
  expect_equal(grad_shard, at::full({shard}, static_cast<float>(n)), "fsdp reduce_scatter");
  for (const auto& s : comm::standard_axis_sets) {
    const auto key = comm::axis_key(s);
    const auto want = expected.count(key) ? expected[key] : comm::op_count{};
    WORKER_CHECK(mesh.counters().axis_total(key) == want, key << ": counted " << mesh.counters().axis_total(key).bytes << " B");
  }
  std::cout << "mesh ok" << std::endl;
  return 0;
}

// Rank 0's all_reduce must fail with comm_error naming op and axis; prints
// what it caught and how long it took, and exits 3 (the test expects 3).
int expect_failure(comm::gloo_mesh& mesh) {
  auto& c = mesh[axes<axis::dp_shard, axis::sp>];
  at::Tensor t = at::ones({16});
  const auto start = std::chrono::steady_clock::now();
  try {
    c.all_reduce(t).wait();
  } catch (const comm::comm_error& e) {
    const std::chrono::duration<double> took = std::chrono::steady_clock::now() - start;
    std::cout << "caught after " << took.count() << " s: " << e.what() << std::endl;
    return 3;
  }
  std::cout << "no error from an all_reduce with a missing rank" << std::endl;
  return 1;
}

// Rank 1 is alive but never joins: the timeout path.
int hang(const comm::launch_env& env) {
  comm::gloo_mesh mesh({.dp_shard = env.world_size}, env);
  mesh.world().barrier().wait();
  if (env.rank != 0) {
    std::this_thread::sleep_for(std::chrono::seconds(60));
    return 0;
  }
  return expect_failure(mesh);
}

// Rank 1 dies: its sockets close. Rank 0 ignores SIGTERM so that what ends
// it is its own communicator, not veomni-launch cleaning up.
int killed(const comm::launch_env& env) {
  if (env.rank == 0) std::signal(SIGTERM, SIG_IGN);
  comm::gloo_mesh mesh({.dp_shard = env.world_size}, env);
  mesh.world().barrier().wait();
  if (env.rank == 1) std::raise(SIGKILL);
  if (env.rank != 0) {
    std::this_thread::sleep_for(std::chrono::seconds(60));
    return 0;
  }
  return expect_failure(mesh);
}

std::vector<std::uint8_t> bytes(const std::string& s) { return {s.begin(), s.end()}; }
std::string text(const std::vector<std::uint8_t>& v) { return {v.begin(), v.end()}; }

// Every c10d::Store call ProcessGroupGloo, the NCCL id exchange or a user
// makes, between the two ranks of a real job (rank 0 serves the store).
int store(const comm::launch_env& env) {
  WORKER_CHECK(env.world_size == 2, "store runs on 2 ranks");
  auto s = comm::make_store(env, comm::comm_options::from_env());
  const std::string me = std::to_string(env.rank), other = std::to_string(1 - env.rank);
  s->set("from/" + me, bytes("hello from " + me));
  WORKER_CHECK(text(s->get("from/" + other)) == "hello from " + other, "get waits for the other rank's set");
  WORKER_CHECK(s->check({"from/0", "from/1"}) && !s->check({"from/0", "nope"}), "check");
  s->add("counter", env.rank + 1);
  s->set("added/" + me, bytes("1"));
  s->wait({"added/0", "added/1"});
  WORKER_CHECK(text(s->get("counter")) == "3", "add from both ranks: " << text(s->get("counter")));
  WORKER_CHECK(s->add("counter", 0) == 3, "add 0 reads the sum");
  if (env.rank == 0) {
    WORKER_CHECK(text(s->compareSet("cas", {}, bytes("a"))) == "a", "compareSet on an absent key with empty expected sets it");
    s->set("cas/set", bytes("1"));
  } else {
    s->wait({"cas/set"});
    WORKER_CHECK(text(s->compareSet("cas", bytes("a"), bytes("b"))) == "b", "compareSet swaps on a match");
    WORKER_CHECK(text(s->compareSet("cas", bytes("x"), bytes("c"))) == "b", "compareSet keeps on a mismatch");
  }
  auto prefixed = comm::compat::make_prefix_store("group", s);  // as device_mesh's groups do
  prefixed->set("rank_" + me, bytes(me));
  WORKER_CHECK(text(prefixed->get("rank_" + other)) == other, "prefix store get");
  WORKER_CHECK(s->check({"group/rank_" + other}), "prefix store keys are prefix/key");
  const auto start = std::chrono::steady_clock::now();
  try {
    s->wait({"never/" + me}, std::chrono::milliseconds(300));
    WORKER_CHECK(false, "wait for a key nobody sets returned");
  } catch (const comm::comm_error& e) {
    const std::chrono::duration<double> took = std::chrono::steady_clock::now() - start;
    std::cout << "wait timed out after " << took.count() << " s: " << e.what() << std::endl;
    WORKER_CHECK(took.count() >= 0.29 && took.count() < 3, "timeout took " << took.count() << " s");
  }
  s->set("after_timeout/" + me, bytes("ok"));  // the client reconnected
  if (env.rank == 1) {
    s->set("r1/done", bytes("1"));  // rank 1's last call: rank 0 may stop serving after it
  } else {
    s->wait({"r1/done"});
    WORKER_CHECK(text(s->get("after_timeout/1")) == "ok", "rank 1 went on after its timeout");
    WORKER_CHECK(s->deleteKey("from/1") && !s->deleteKey("from/1"), "deleteKey says whether the key was there");
    WORKER_CHECK(!s->check({"from/1"}), "a deleted key is gone");
    WORKER_CHECK(s->getNumKeys() == 11, "getNumKeys = " << s->getNumKeys());
  }
  std::cout << "store ok" << std::endl;
  return 0;
}

// Rank 0, after the rendezvous: the sockets listening on MASTER_PORT, from
// /proc/net/tcp and tcp6 ("0100007F:7530" is 127.0.0.1:30000), must be
// exactly one, on `addr` (IPv4).
int listen(const comm::launch_env& env, const std::string& addr) {
  comm::gloo_mesh mesh({.dp_shard = env.world_size}, env);
  mesh.world().barrier().wait();
  if (env.rank == 0) {
    in_addr a{};
    WORKER_CHECK(inet_pton(AF_INET, addr.c_str(), &a) == 1, "not an IPv4 address: " << addr);
    char want[32];
    std::snprintf(want, sizeof want, "%08X:%04X", a.s_addr, env.master_port);
    std::vector<std::string> found;
    for (const std::string table : {"/proc/net/tcp", "/proc/net/tcp6"}) {
      std::ifstream in(table);
      std::string line, slot, local, remote, state;
      std::getline(in, line);  // header
      while (std::getline(in, line)) {
        std::istringstream(line) >> slot >> local >> remote >> state;
        const auto colon = local.rfind(':');
        if (state == "0A" && std::stoi(local.substr(colon + 1), nullptr, 16) == env.master_port)
          found.push_back(table.substr(10) + " " + local);
      }
    }
    std::ostringstream all;
    for (const auto& f : found) all << " [" << f << "]";
    WORKER_CHECK(found.size() == 1 && found[0] == std::string("tcp ") + want,
                 "LISTEN sockets on port " << env.master_port << ":" << all.str() << ", want [tcp " << want << "]");
    std::cout << "listen ok: " << addr << " (" << want << ")" << std::endl;
  }
  mesh.world().barrier().wait();
  return 0;
}

// all_gather and reduce_scatter waited at once, then an all_reduce waited
// for only after 300 ms (its done time comes before its wait), waited twice
// (the second wait is not a row's wait). The mesh writes the trace as it
// goes out of scope.
int trace(const comm::launch_env& env, const std::string& prefix) {
  comm::comm_options o = comm::comm_options::from_env();
  o.trace = prefix;
  {
    comm::gloo_mesh mesh({.dp_shard = env.world_size}, env, o);
    auto& c = mesh.world();
    const long n = c.size();
    at::Tensor shard = values_of(env.rank, 1000), full = at::empty({1000 * n}), part = at::empty({1000});
    c.all_gather(full, shard).wait();
    c.reduce_scatter(part, full).wait();
    at::Tensor t = at::ones({10});
    comm::work w = c.all_reduce(t);
    std::this_thread::sleep_for(std::chrono::milliseconds(300));
    w.wait();
    w.wait();
    WORKER_CHECK(mesh.counters().trace() && mesh.counters().trace()->size() == 3,
                 "rows recorded: " << (mesh.counters().trace() ? mesh.counters().trace()->size() : 0));
  }
  std::cout << "trace ok" << std::endl;
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  const std::string scenario = argc > 1 ? argv[1] : "";
  try {
    const comm::launch_env env = comm::read_launch_env();
    if (scenario == "collectives") return collectives<comm::gloo_mesh>(env, at::TensorOptions());
    if (scenario == "mesh" && argc == 6) return mesh(env, shape_from(argv + 2));
    if (scenario == "bad_sizes" && argc == 6) {
      comm::gloo_mesh m(shape_from(argv + 2), env);
      std::cout << "no error for mesh sizes that break a rule" << std::endl;
      return 1;
    }
    if (scenario == "hang") return hang(env);
    if (scenario == "killed") return killed(env);
    if (scenario == "store") return store(env);
    if (scenario == "listen" && argc == 3) return listen(env, argv[2]);
    if (scenario == "trace" && argc == 3) return trace(env, argv[2]);
    if (scenario == "env") {
      std::cout << "env ok: rank " << env.rank << " of " << env.world_size << std::endl;
      return 0;
    }
    std::cerr << "usage: comm_worker collectives | mesh R S P E | bad_sizes R S P E | hang | killed | store | "
                 "listen A.B.C.D | trace PREFIX | env\n";
    return 2;
  } catch (const check_failed& e) {
    std::cout << "FAILED: " << e.what() << std::endl;
    return 1;
  } catch (const std::exception& e) {
    std::cout << "error: " << e.what() << std::endl;
    return 4;
  }
}
