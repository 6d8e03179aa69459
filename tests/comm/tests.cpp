// comm tests. In process: the rank layout, the size rules, the environment
// rules, the rendezvous store between threads (no torch in this TU). Out of
// process: jobs of comm_worker at 2 and 4 ranks under veomni-launch, and
// under torchrun; each has a deadline well under 30 s and is killed, not
// waited for, past it.
#define DOCTEST_CONFIG_IMPLEMENT_WITH_MAIN
#include <doctest/doctest.h>

#include <veomni/comm/launch_env.hpp>
#include <veomni/comm/mesh_layout.hpp>
#include <veomni/comm/store.hpp>
#include <veomni/comm/trace.hpp>

#include <arpa/inet.h>
#include <ifaddrs.h>
#include <netinet/in.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <map>
#include <memory>
#include <string>
#include <thread>
#include <vector>

namespace comm = veomni::comm;
namespace axis = veomni::axis;
using veomni::axes;
using veomni::mesh_shape;

namespace {

using ranks = std::vector<int>;

// ---- in process -----------------------------------------------------------

// The message of the E that f throws (std::invalid_argument: the rules;
// comm_error: the engine).
template <class E = std::invalid_argument>
std::string error_of(auto&& f) {
  try {
    f();
  } catch (const E& e) {
    return e.what();
  }
  return "(no error)";
}

comm::launch_env env_from(std::map<std::string, std::string> vars) {
  return comm::read_launch_env([vars](std::string_view k) -> std::optional<std::string> {
    auto it = vars.find(std::string(k));
    if (it == vars.end()) return std::nullopt;
    return it->second;
  });
}

using namespace std::chrono_literals;

std::string comm_error_of(auto&& f) { return error_of<comm::comm_error>(f); }

double seconds_since(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

// This host's IPv4 addresses other than loopback ("192.0.2.2").
std::vector<std::string> outside_ipv4_addresses() {
  std::vector<std::string> out;
  ifaddrs* all = nullptr;
  if (getifaddrs(&all) != 0) return out;
  for (const ifaddrs* i = all; i; i = i->ifa_next) {
    if (!i->ifa_addr || i->ifa_addr->sa_family != AF_INET) continue;
    char text[INET_ADDRSTRLEN];
    inet_ntop(AF_INET, &reinterpret_cast<const sockaddr_in*>(i->ifa_addr)->sin_addr, text, sizeof text);
    if (std::string(text).rfind("127.", 0) != 0) out.push_back(text);
  }
  freeifaddrs(all);
  return out;
}

// An address of documentation (TEST-NET-3) that no interface here has.
const std::string not_this_host = "203.0.113.7";

bool is_this_host(const std::string& addr) {
  const auto mine = outside_ipv4_addresses();
  return std::find(mine.begin(), mine.end(), addr) != mine.end();
}

// A raw connection to a store server, to play a broken client.
int raw_connection(std::uint16_t port) {
  const int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(port);
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  REQUIRE(connect(fd, reinterpret_cast<const sockaddr*>(&a), sizeof a) == 0);
  return fd;
}

// ---- out of process -------------------------------------------------------

struct job {
  int status = -1;  // waitpid status; -1: killed at the deadline
  std::string output;
  double seconds = 0;
  bool exited(int code) const { return status >= 0 && WIFEXITED(status) && WEXITSTATUS(status) == code; }
};

// Runs `sh -c command` with stdout+stderr captured; kills its process group
// at the deadline, so no test hangs.
job run(const std::string& command, double deadline_s = 25) {
  int fds[2];
  REQUIRE(pipe(fds) == 0);
  const auto start = std::chrono::steady_clock::now();
  const pid_t pid = fork();
  REQUIRE(pid >= 0);
  if (pid == 0) {
    setpgid(0, 0);
    dup2(fds[1], 1), dup2(fds[1], 2);
    close(fds[0]), close(fds[1]);
    execl("/bin/sh", "sh", "-c", command.c_str(), static_cast<char*>(nullptr));
    _exit(127);
  }
  setpgid(pid, pid);
  close(fds[1]);
  job j;
  bool killed = false;
  for (;;) {
    const double elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    if (elapsed > deadline_s && !killed) {
      kill(-pid, SIGKILL);
      killed = true;
    }
    pollfd p{fds[0], POLLIN, 0};
    if (poll(&p, 1, 100) > 0) {
      char buf[4096];
      const ssize_t n = read(fds[0], buf, sizeof buf);
      if (n <= 0) break;
      j.output.append(buf, static_cast<std::size_t>(n));
    }
  }
  close(fds[0]);
  int status = 0;
  waitpid(pid, &status, 0);
  j.status = killed ? -1 : status;
  j.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return j;
}

const std::string worker = VEOMNI_TEST_WORKER;
const std::string launch = VEOMNI_TEST_LAUNCH;

std::string launched(int nproc, const std::string& args, const std::string& launch_flags = "--timeout 25") {
  return "VEOMNI_COMM_TIMEOUT=5 " + launch + " --nproc " + std::to_string(nproc) + " " + launch_flags + " -- " +
         worker + " " + args;
}

bool contains(const std::string& s, const std::string& part) { return s.find(part) != std::string::npos; }

}  // namespace

// ---- rank layout ----------------------------------------------------------

TEST_CASE("mesh_layout_worked_example") {
  // The example in mesh_layout.hpp: {dp_replicate 2, dp_shard 2, sp 2, ep 2}, rank 5.
  const mesh_shape m{.dp_replicate = 2, .dp_shard = 2, .sp = 2, .ep = 2};
  comm::validate_mesh(m, 8);
  CHECK(comm::group_ranks(m, axes<axis::sp>, 5) == ranks{4, 5});
  CHECK(comm::group_ranks(m, axes<axis::dp_shard>, 5) == ranks{5, 7});
  CHECK(comm::group_ranks(m, axes<axis::dp_shard, axis::sp>, 5) == ranks{4, 5, 6, 7});
  CHECK(comm::group_ranks(m, axes<axis::ep>, 5) == ranks{4, 5});
  CHECK(comm::group_ranks(m, axes<axis::ep_dp>, 5) == ranks{5, 7});
  CHECK(comm::group_ranks(m, axes<axis::dp_replicate>, 5) == ranks{1, 5});
  CHECK(comm::group_ranks(m, axes<axis::dp_replicate, axis::ep_dp>, 5) == ranks{1, 3, 5, 7});
  CHECK(comm::group_ranks(m, comm::world_axes, 5) == ranks{0, 1, 2, 3, 4, 5, 6, 7});
  CHECK(comm::group_ranks(m, veomni::axis_set{}, 5) == ranks{5});
}

TEST_CASE("mesh_layout_ep_groups") {
  // dp_shard 2 x sp 2 = 4 flat ranks, ep 4: one ep group, ep_dp of one rank.
  const mesh_shape all_ep{.dp_shard = 2, .sp = 2, .ep = 4};
  CHECK(comm::group_ranks(all_ep, axes<axis::ep>, 2) == ranks{0, 1, 2, 3});
  CHECK(comm::group_ranks(all_ep, axes<axis::ep_dp>, 2) == ranks{2});
  // dp_shard 6, ep 3: ep groups {0,1,2} {3,4,5}; ep_dp groups {0,3} {1,4} {2,5}.
  const mesh_shape six{.dp_shard = 6, .ep = 3};
  CHECK(comm::group_ranks(six, axes<axis::ep>, 4) == ranks{3, 4, 5});
  CHECK(comm::group_ranks(six, axes<axis::ep_dp>, 4) == ranks{1, 4});
  // ep cuts across sp: dp_shard 2, sp 3, ep 2 -> flat 6, ep groups {0,1} {2,3} {4,5}.
  const mesh_shape cross{.dp_shard = 2, .sp = 3, .ep = 2};
  CHECK(comm::group_ranks(cross, axes<axis::ep>, 3) == ranks{2, 3});
  CHECK(comm::group_ranks(cross, axes<axis::sp>, 3) == ranks{3, 4, 5});
  CHECK(comm::group_ranks(cross, axes<axis::ep_dp>, 3) == ranks{1, 3, 5});
}

TEST_CASE("mesh_layout_groups_partition_the_world") {
  // For several shapes and every standard axis set: each rank is in its own
  // group, groups are disjoint and cover the world, and have the mesh's size.
  const std::vector<mesh_shape> shapes{
      {.dp_shard = 4},
      {.dp_replicate = 2, .dp_shard = 2},
      {.dp_shard = 2, .sp = 2, .ep = 2},
      {.dp_replicate = 2, .dp_shard = 3, .sp = 2, .ep = 3},
      {.dp_replicate = 3, .dp_shard = 1, .sp = 4, .ep = 4},
  };
  for (const auto& m : shapes) {
    const long world = m.world();
    comm::validate_mesh(m, world);
    for (const auto& s : comm::standard_axis_sets) {
      CAPTURE(comm::axis_key(s));
      std::vector<int> owner(static_cast<std::size_t>(world), -1);
      for (long r = 0; r < world; ++r) {
        const auto g = comm::group_ranks(m, s, r);
        CHECK(static_cast<long>(g.size()) == m.size(s));
        CHECK(std::find(g.begin(), g.end(), r) != g.end());
        CHECK(std::is_sorted(g.begin(), g.end()));
        for (int q : g) CHECK(comm::group_ranks(m, s, q) == g);  // same group from every member
      }
    }
  }
}

TEST_CASE("mesh_layout_axis_keys") {
  CHECK(comm::axis_key(axes<axis::dp_shard, axis::sp>) == "dp_shard*sp");
  CHECK(comm::axis_key(comm::world_axes) == "dp_replicate*dp_shard*sp");
  CHECK(comm::same_axes(axes<axis::sp, axis::dp_shard>, axes<axis::dp_shard, axis::sp>));
  CHECK(error_of([] { comm::group_ranks({.dp_shard = 2, .ep = 2}, axes<axis::dp_shard, axis::ep>, 0); }) ==
        "veomni::comm::group_ranks: dp_shard*ep mixes the dp_shard x sp and ep x ep_dp factorings of one flat index");
}

// ---- size rules -----------------------------------------------------------

TEST_CASE("mesh_sizes_name_the_rule") {
  CHECK(error_of([] { comm::validate_mesh({.dp_replicate = 2, .dp_shard = 3}, 4); }) ==
        "veomni::comm::validate_mesh: dp_replicate*dp_shard*sp = 6 but WORLD_SIZE = 4");
  CHECK(error_of([] { comm::validate_mesh({.dp_shard = 2, .sp = 2, .ep = 3}, 4); }) ==
        "veomni::comm::validate_mesh: ep = 3 must divide dp_shard*sp = 4");
  CHECK(error_of([] { comm::validate_mesh({.dp_shard = 0}, 4); }) ==
        "veomni::comm::validate_mesh: dp_shard = 0 must be >= 1");
  CHECK(error_of([] { comm::validate_mesh({.dp_shard = 4, .ep = 2}, 4); }) == "(no error)");
}

// ---- environment rules ----------------------------------------------------

TEST_CASE("env_world_of_one_needs_nothing") {
  const auto e = env_from({});
  CHECK(e.rank == 0);
  CHECK(e.world_size == 1);
  CHECK(e.master_addr == "127.0.0.1");
}

TEST_CASE("env_torchrun_variables") {
  const auto e = env_from({{"RANK", "3"}, {"WORLD_SIZE", "4"}, {"LOCAL_RANK", "1"}, {"LOCAL_WORLD_SIZE", "2"},
                           {"MASTER_ADDR", "10.0.0.7"}, {"MASTER_PORT", "29501"}});
  CHECK(e.rank == 3);
  CHECK(e.world_size == 4);
  CHECK(e.local_rank == 1);
  CHECK(e.local_world_size == 2);
  CHECK(e.master_addr == "10.0.0.7");
  CHECK(e.master_port == 29501);
  CHECK_FALSE(e.agent_store);
  CHECK(env_from({{"WORLD_SIZE", "2"}, {"MASTER_PORT", "1"}, {"TORCHELASTIC_USE_AGENT_STORE", "True"}}).agent_store);
}

TEST_CASE("env_store_bind") {
  auto options = [](std::optional<std::string> bind) {
    return comm::comm_options::from_env([bind](std::string_view k) {
      return k == "VEOMNI_STORE_BIND" ? bind : std::nullopt;
    });
  };
  CHECK(options(std::nullopt).store_bind.empty());  // MASTER_ADDR's address
  CHECK(options("0.0.0.0").store_bind == "0.0.0.0");
  CHECK(error_of([&] { options(""); }) == "veomni::comm::read_launch_env: VEOMNI_STORE_BIND = '' is empty");
}

TEST_CASE("env_comm_trace") {
  auto options = [](std::optional<std::string> prefix) {
    return comm::comm_options::from_env([prefix](std::string_view k) {
      return k == "VEOMNI_COMM_TRACE" ? prefix : std::nullopt;
    });
  };
  CHECK(options(std::nullopt).trace.empty());
  CHECK(options("/tmp/run7").trace == "/tmp/run7");
  CHECK(error_of([&] { options(""); }) ==
        "veomni::comm::read_launch_env: VEOMNI_COMM_TRACE = '' is empty (a path prefix)");
}

TEST_CASE("env_bad_values_name_the_variable") {
  const std::string fn = "veomni::comm::read_launch_env: ";
  CHECK(error_of([] { env_from({{"RANK", "x"}, {"WORLD_SIZE", "2"}, {"MASTER_PORT", "1"}}); }) ==
        fn + "RANK = 'x' is not a non-negative integer");
  CHECK(error_of([] { env_from({{"RANK", "2"}, {"WORLD_SIZE", "2"}, {"MASTER_PORT", "1"}}); }) ==
        fn + "RANK = 2 must be < WORLD_SIZE = 2");
  CHECK(error_of([] { env_from({{"WORLD_SIZE", "0"}}); }) == fn + "WORLD_SIZE = 0 must be >= 1");
  CHECK(error_of([] { env_from({{"WORLD_SIZE", "2"}}); }) ==
        fn + "MASTER_PORT is not set (needed when WORLD_SIZE = 2)");
  CHECK(error_of([] { env_from({{"WORLD_SIZE", "2"}, {"MASTER_PORT", "70000"}}); }) ==
        fn + "MASTER_PORT = 70000 is not a port (1..65535)");
  CHECK(error_of([] { env_from({{"WORLD_SIZE", "2"}, {"MASTER_PORT", "29500"}, {"LOCAL_RANK", "-1"}}); }) ==
        fn + "LOCAL_RANK = '-1' is not a non-negative integer");
  CHECK(error_of([] { env_from({{"VEOMNI_COMM_TIMEOUT", "5s"}}); comm::comm_options::from_env([](std::string_view k) {
    return k == "VEOMNI_COMM_TIMEOUT" ? std::optional<std::string>("5s") : std::nullopt; }); }) ==
        fn + "VEOMNI_COMM_TIMEOUT = '5s' is not a non-negative integer");
}

// ---- the rendezvous store, between threads ----------------------------------

TEST_CASE("store_set_get_add_compare_set_erase_check_count" * doctest::timeout(30)) {
  comm::store_server server("127.0.0.1", 0);
  comm::store_client a("127.0.0.1", server.port(), 5s), b("localhost", server.port(), 5s);
  const std::string binary("v\0w\xff", 4);
  a.set("k", binary);
  CHECK(b.get("k") == binary);
  std::thread later([&] {
    std::this_thread::sleep_for(100ms);
    a.set("late", "x");
  });
  CHECK(b.get("late") == "x");  // get waits for the key
  later.join();
  CHECK(a.add("n", 2) == 2);
  CHECK(b.add("n", 3) == 5);
  CHECK(a.get("n") == "5");  // kept as decimal text, as c10d's stores do
  CHECK(b.add("n", -7) == -2);
  a.set("word", "abc");
  CHECK(comm_error_of([&] { a.add("word", 1); }) == "veomni::comm::store: add to 'word': the value 'abc' is not an integer");
  // compare_set: c10d's rule
  CHECK(a.compare_set("c", "", "1") == "1");       // absent, expected empty: set
  CHECK(b.compare_set("c", "2", "3") == "1");      // mismatch: unchanged
  CHECK(b.compare_set("c", "1", "3") == "3");      // match: swapped
  CHECK(a.compare_set("absent", "x", "y") == "x");  // absent, expected given: not set
  CHECK(a.check({"k", "n", "c"}));
  CHECK_FALSE(a.check({"k", "absent"}));
  CHECK(a.count() == 5);  // k late n word c
  CHECK(a.erase("late"));
  CHECK_FALSE(b.erase("late"));
  CHECK_FALSE(b.check({"late"}));
  CHECK(b.count() == 4);
}

TEST_CASE("store_wait_times_out_naming_the_keys" * doctest::timeout(30)) {
  comm::store_server server("127.0.0.1", 0);
  const std::string at = "(store at 127.0.0.1:" + std::to_string(server.port()) + ")";
  comm::store_client c("127.0.0.1", server.port(), 300ms), other("127.0.0.1", server.port(), 5s);
  auto start = std::chrono::steady_clock::now();
  CHECK(comm_error_of([&] { c.wait({"never", "also/never"}, 200ms); }) ==
        "veomni::comm::store: wait for 'never', 'also/never' timed out after 200 ms " + at);
  CHECK(seconds_since(start) >= 0.19);
  CHECK(seconds_since(start) < 2);
  start = std::chrono::steady_clock::now();
  CHECK(comm_error_of([&] { c.get("missing"); }) == "veomni::comm::store: get of 'missing' timed out after 300 ms " + at);
  CHECK(seconds_since(start) < 2);
  // The client reconnects; the server forgot the abandoned waits.
  c.set("never", "now");
  CHECK(other.get("never") == "now");
  std::thread later([&] {
    std::this_thread::sleep_for(100ms);
    other.set("w", "1");
  });
  c.wait({"w", "never"}, 5s);  // answered by another client's set
  later.join();
}

TEST_CASE("store_server_survives_broken_and_dying_clients" * doctest::timeout(30)) {
  comm::store_server server("127.0.0.1", 0);
  comm::store_client c("127.0.0.1", server.port(), 5s);
  c.set("before", "1");
  {  // half a length, then gone
    const int fd = raw_connection(server.port());
    CHECK(write(fd, "\0\0", 2) == 2);
    close(fd);
  }
  {  // a frame over the 64 MiB limit: dropped (EOF), not allocated
    const int fd = raw_connection(server.port());
    CHECK(write(fd, "\xff\xff\xff\xff", 4) == 4);
    char byte;
    CHECK(read(fd, &byte, 1) <= 0);
    close(fd);
  }
  {  // an op nobody knows: dropped
    const int fd = raw_connection(server.port());
    const std::string frame = comm::detail::store_frame_writer{}.u8(0x7f).frame();
    CHECK(write(fd, frame.data(), frame.size()) == static_cast<ssize_t>(frame.size()));
    char byte;
    CHECK(read(fd, &byte, 1) <= 0);
    close(fd);
  }
  {  // parked in a wait, then dies
    const int fd = raw_connection(server.port());
    const std::string frame = comm::detail::store_frame_writer{}.op(comm::detail::store_op::wait).strs({"never"}).frame();
    CHECK(write(fd, frame.data(), frame.size()) == static_cast<ssize_t>(frame.size()));
    close(fd);
  }
  c.set("never", "set after its waiter died");  // wakes nobody, breaks nothing
  CHECK(c.get("before") == "1");
  CHECK(comm::store_client("127.0.0.1", server.port(), 5s).count() == 2);
}

TEST_CASE("store_server_stops_promptly_with_clients_connected" * doctest::timeout(30)) {
  auto server = std::make_unique<comm::store_server>("127.0.0.1", 0);
  const std::uint16_t port = server->port();
  const std::string at = "store at 127.0.0.1:" + std::to_string(port);
  comm::store_client idle("127.0.0.1", port, 5s), waiting("127.0.0.1", port, 5s);
  idle.set("a", "1");
  std::string parked;
  std::thread t([&] { parked = comm_error_of([&] { waiting.wait({"never"}, 20s); }); });
  std::this_thread::sleep_for(200ms);
  const auto start = std::chrono::steady_clock::now();
  server.reset();
  CHECK(seconds_since(start) < 1);
  t.join();
  CHECK(parked == "veomni::comm::store: the " + at + " closed the connection during wait for 'never' (is rank 0 gone?)");
  CHECK(comm_error_of([&] { idle.set("a", "2"); }) ==
        "veomni::comm::store: the " + at + " closed the connection during set of 'a' (is rank 0 gone?)");
  CHECK(comm_error_of([&] { comm::store_client late("127.0.0.1", port, 200ms); }) ==
        "veomni::comm::store: could not connect to the " + at + " within 200 ms: Connection refused");
}

TEST_CASE("store_server_listens_only_where_told") {
  comm::store_server taken("127.0.0.1", 0);
  const std::string port = std::to_string(taken.port());
  CHECK(comm_error_of([&] { comm::store_server again("127.0.0.1", taken.port()); }) ==
        "veomni::comm::store_server: cannot listen on 127.0.0.1:" + port + ": Address already in use");
  if (is_this_host(not_this_host)) {
    MESSAGE("skipped: " << not_this_host << " is an address of this host");
    return;
  }
  CHECK(comm_error_of([&] { comm::store_server elsewhere(not_this_host, 0); }) ==
        "veomni::comm::store_server: cannot listen on " + not_this_host + ":0: Cannot assign requested address");
}

// ---- jobs -----------------------------------------------------------------

TEST_CASE("job_world_of_one" * doctest::timeout(30)) {
  const job j = run("env -u RANK -u WORLD_SIZE -u MASTER_ADDR -u MASTER_PORT " + worker + " collectives");
  INFO(j.output);
  CHECK(j.exited(0));
  CHECK(contains(j.output, "collectives ok (1 ranks)"));
}

TEST_CASE("job_collectives_2_ranks" * doctest::timeout(30)) {
  const job j = run(launched(2, "collectives"));
  INFO(j.output);
  CHECK(j.exited(0));
  CHECK(contains(j.output, "[rank 0] collectives ok (2 ranks)"));
  CHECK(contains(j.output, "[rank 1] collectives ok (2 ranks)"));
}

TEST_CASE("job_collectives_4_ranks" * doctest::timeout(30)) {
  const job j = run(launched(4, "collectives"));
  INFO(j.output);
  CHECK(j.exited(0));
  for (int r = 0; r < 4; ++r) CHECK(contains(j.output, "[rank " + std::to_string(r) + "] collectives ok (4 ranks)"));
}

TEST_CASE("job_mesh_groups_4_ranks" * doctest::timeout(30)) {
  // {dp_shard 2, sp 2, ep 2} and {dp_replicate 2, dp_shard 2, ep 2}: every
  // standard group gathers exactly the ranks the layout predicts.
  for (const std::string shape : {"1 2 2 2", "2 2 1 2"}) {
    CAPTURE(shape);
    const job j = run(launched(4, "mesh " + shape));
    INFO(j.output);
    CHECK(j.exited(0));
    for (int r = 0; r < 4; ++r) CHECK(contains(j.output, "[rank " + std::to_string(r) + "] mesh ok"));
  }
}

// One row of a trace file (comm/trace.hpp).
struct trace_row {
  std::string op, axis;
  long long bytes = 0, issued = 0, done = 0, wait_begin = 0, wait_end = 0;
  std::string dtype;
  long long plan_op = -1;
};

std::vector<trace_row> read_trace(const std::string& path) {
  std::ifstream in(path);
  std::string line;
  std::getline(in, line);
  CHECK(line ==
        "index,op,axis,bytes,issued_ns,done_ns,wait_begin_ns,wait_end_ns,dtype,plan_op,node,where,block,phase,tensor,"
        "policy,recompute");
  std::vector<trace_row> rows;
  while (std::getline(in, line)) {
    std::vector<std::string> f;
    std::stringstream ss(line);
    for (std::string cell; std::getline(ss, cell, ',');) f.push_back(cell);
    REQUIRE(f.size() >= 16);  // an untagged row leaves the label fields empty (the last one may be dropped)
    CHECK(std::stoul(f[0]) == rows.size());
    rows.push_back({f[1], f[2], std::stoll(f[3]), std::stoll(f[4]), std::stoll(f[5]), std::stoll(f[6]), std::stoll(f[7]),
                    f[8], std::stoll(f[9])});
  }
  return rows;
}

TEST_CASE("job_trace_times_every_collective" * doctest::timeout(30)) {
  char dir[] = "/tmp/veomni_trace_XXXXXX";
  REQUIRE(mkdtemp(dir));
  const std::string prefix = std::string(dir) + "/run";
  const job j = run(launched(2, "trace " + prefix));
  INFO(j.output);
  CHECK(j.exited(0));
  std::vector<std::vector<trace_row>> ranks_rows;
  for (int r = 0; r < 2; ++r) {
    const std::vector<trace_row> rows = read_trace(prefix + ".rank" + std::to_string(r) + ".csv");
    REQUIRE(rows.size() == 3);
    CHECK(rows[0].op == "all_gather");
    CHECK(rows[0].bytes == 4000);  // the counters' payload: the input shard
    CHECK(rows[1].op == "reduce_scatter");
    CHECK(rows[1].bytes == 8000);  // the full input
    CHECK(rows[2].op == "all_reduce");
    CHECK(rows[2].bytes == 40);
    for (const trace_row& t : rows) {
      CAPTURE(t.op);
      CHECK(t.axis == comm::axis_key(comm::world_axes));
      CHECK(t.issued > 0);
      CHECK(t.done >= t.issued);
      CHECK(t.wait_begin >= t.issued);
      CHECK(t.wait_end >= t.wait_begin);
      CHECK(t.wait_end >= t.done);
      CHECK(t.dtype == "f32");
      CHECK(t.plan_op == -1);  // issued outside a plan op
    }
    // the all_reduce finished during the 300 ms before its first wait, which
    // returned at once (the second wait is not recorded)
    CHECK(rows[2].done < rows[2].wait_begin);
    CHECK(rows[2].wait_begin - rows[2].issued >= 300'000'000LL);
    CHECK(rows[2].wait_end - rows[2].wait_begin < 100'000'000LL);
    ranks_rows.push_back(rows);
  }
  // one clock for both ranks: each collective completes after both issued it
  for (std::size_t i = 0; i < 3; ++i)
    for (int r = 0; r < 2; ++r) CHECK(ranks_rows[r][i].done >= ranks_rows[1 - r][i].issued);
  std::filesystem::remove_all(dir);
}

TEST_CASE("trace_keeps_the_first_rows_and_counts_the_rest") {
  char dir[] = "/tmp/veomni_trace_XXXXXX";
  REQUIRE(mkdtemp(dir));
  const std::string path = std::string(dir) + "/t.csv";
  comm::comm_trace t(path, 2);
  CHECK(t.issued("all_gather", "dp_shard*sp", 8) != nullptr);
  CHECK(t.issued("all_reduce", "dp_shard*sp", 4) != nullptr);
  CHECK(t.issued("all_reduce", "dp_shard*sp", 4) == nullptr);
  CHECK(t.size() == 2);
  CHECK(t.dropped() == 1);
  t.write();
  const std::vector<trace_row> rows = read_trace(path);
  REQUIRE(rows.size() == 2);
  CHECK(rows[0].op == "all_gather");
  CHECK(rows[1].done == -1);  // nothing completed or waited for it
  CHECK(rows[1].wait_begin == -1);
  std::filesystem::remove_all(dir);
}

TEST_CASE("trace_rows_name_the_plan_op_they_carry_out") {
  char dir[] = "/tmp/veomni_trace_XXXXXX";
  REQUIRE(mkdtemp(dir));
  const std::string path = std::string(dir) + "/t.csv";
  comm::comm_trace t(path);
  const comm::op_label q{7, "lm", "attn", "Split<Ulysses>", "backward", "q", "f32", "all_to_all", "sp"};
  CHECK(t.issued("all_to_all", "sp", 4096, "bf16", {&q, 3, true}) != nullptr);
  t.write();
  std::ifstream in(path);
  std::string header, row;
  std::getline(in, header);
  std::getline(in, row);
  CHECK(row.find(",4096,") != std::string::npos);
  CHECK(row.find(",bf16,7,lm,attn,3,backward,q,Split<Ulysses>,1") != std::string::npos);
  std::filesystem::remove_all(dir);
}

TEST_CASE("job_trace_to_a_path_that_cannot_be_written_fails_at_once" * doctest::timeout(30)) {
  const job j = run(launched(2, "trace /nonexistent-veomni-dir/run"));
  INFO(j.output);
  CHECK(j.exited(1));  // the launcher's code for a failed rank
  // whichever rank fails first, the launcher stops the other
  CHECK((contains(j.output, "error: veomni::comm: cannot create the collective trace file "
                            "'/nonexistent-veomni-dir/run.rank0.csv' (comm_options::trace, VEOMNI_COMM_TRACE)") ||
         contains(j.output, "error: veomni::comm: cannot create the collective trace file "
                            "'/nonexistent-veomni-dir/run.rank1.csv' (comm_options::trace, VEOMNI_COMM_TRACE)")));
  CHECK(contains(j.output, "(exit code 4)"));
  CHECK(j.seconds < 10);
}

TEST_CASE("job_bad_sizes_fail_before_any_collective" * doctest::timeout(30)) {
  const job j = run(launched(2, "bad_sizes 1 3 1 1"));
  INFO(j.output);
  CHECK(j.exited(1));
  // every rank fails the same check; whichever fails first, the launcher stops the other
  CHECK(contains(j.output, "] error: veomni::comm::validate_mesh: dp_replicate*dp_shard*sp = 3 but WORLD_SIZE = 2"));
  CHECK(j.seconds < 10);
}

TEST_CASE("job_bad_env_names_the_variable" * doctest::timeout(30)) {
  const job j = run("RANK=one WORLD_SIZE=2 MASTER_PORT=29500 " + worker + " env");
  INFO(j.output);
  CHECK(j.exited(4));
  CHECK(contains(j.output, "error: veomni::comm::read_launch_env: RANK = 'one' is not a non-negative integer"));
}

TEST_CASE("job_waiting_on_a_silent_rank_times_out" * doctest::timeout(30)) {
  // Rank 1 is alive but never joins rank 0's all_reduce; VEOMNI_COMM_TIMEOUT=5.
  const job j = run(launched(2, "hang"));
  INFO(j.output);
  CHECK(contains(j.output, "[rank 0] caught after"));
  CHECK(contains(j.output, "veomni::comm: all_reduce over dp_shard*sp (rank 0 of 2) timed out after"));
  CHECK(contains(j.output, "veomni-launch: job failed: rank 0 (exit code 3)"));
  CHECK(j.exited(1));
  CHECK(j.seconds < 20);
}

TEST_CASE("job_killed_rank_fails_the_others" * doctest::timeout(30)) {
  // Rank 1 dies by SIGKILL; rank 0 (which ignores the launcher's SIGTERM)
  // must fail on its own, within the timeout, naming op and axis.
  const job j = run(launched(2, "killed", "--timeout 25 --grace 15"));
  INFO(j.output);
  CHECK(contains(j.output, "veomni-launch: rank 1 failed (killed by signal 9"));
  CHECK(contains(j.output, "[rank 0] caught after"));
  CHECK(contains(j.output, "veomni::comm: all_reduce over dp_shard*sp (rank 0 of 2)"));
  CHECK(contains(j.output, "veomni-launch: job failed: rank 1"));
  CHECK(j.exited(1));
  CHECK(j.seconds < 14);  // rank 0 ended itself, before the 15 s grace ran out
}

TEST_CASE("job_launcher_exit_codes" * doctest::timeout(30)) {
  const job ok = run(launch + " --nproc 2 -- sh -c 'echo hello $RANK of $WORLD_SIZE at $MASTER_ADDR'");
  INFO(ok.output);
  CHECK(ok.exited(0));
  CHECK(contains(ok.output, "[rank 1] hello 1 of 2 at 127.0.0.1"));
  const job bad = run(launch + " --nproc 3 --grace 1 -- sh -c 'if [ $RANK = 2 ]; then exit 7; fi; sleep 20'");
  INFO(bad.output);
  CHECK(bad.exited(1));
  CHECK(contains(bad.output, "veomni-launch: job failed: rank 2 (exit code 7)"));
  CHECK(bad.seconds < 5);
  const job slow = run(launch + " --nproc 2 --timeout 1 --grace 1 -- sleep 20");
  CHECK(slow.exited(124));
}

TEST_CASE("job_launcher_binds_each_rank_to_its_own_cores" * doctest::timeout(30)) {
  // What the launcher may use (it inherits this process's affinity), in order.
  cpu_set_t set;
  CPU_ZERO(&set);
  REQUIRE(sched_getaffinity(0, sizeof set, &set) == 0);
  std::vector<int> cpus;
  for (int c = 0; c < CPU_SETSIZE; ++c)
    if (CPU_ISSET(c, &set)) cpus.push_back(c);
  const int n = std::min<int>(2, static_cast<int>(cpus.size()));
  const std::size_t k = cpus.size() / static_cast<std::size_t>(n);
  const job j = run(launch + " --nproc " + std::to_string(n) +
                    " --bind-cores -- sh -c 'grep Cpus_allowed_list /proc/self/status'");
  INFO(j.output);
  CHECK(j.exited(0));
  for (int r = 0; r < n; ++r) {
    // rank r: the r-th block of k CPUs, as the kernel lists it ("4-7"; one CPU: "4")
    const int first = cpus[static_cast<std::size_t>(r) * k], last = cpus[static_cast<std::size_t>(r + 1) * k - 1];
    const bool contiguous = last - first + 1 == static_cast<int>(k);
    if (!contiguous) continue;  // an affinity with holes: the listing has several ranges
    const std::string list = first == last ? std::to_string(first) : std::to_string(first) + "-" + std::to_string(last);
    CHECK(contains(j.output, "[rank " + std::to_string(r) + "] Cpus_allowed_list:\t" + list + "\n"));
  }
  CHECK(contains(j.output, "veomni-launch: CPUs by rank: rank 0: "));

  const std::string more = std::to_string(cpus.size() + 1);
  const job bad = run(launch + " --nproc " + more + " --bind-cores -- true");
  INFO(bad.output);
  CHECK(bad.exited(2));
  CHECK(contains(bad.output, "veomni-launch: --bind-cores: " + more + " ranks but only " + std::to_string(cpus.size()) +
                                 " CPUs are allowed"));
}

TEST_CASE("job_store_calls_between_2_ranks" * doctest::timeout(30)) {
  const job j = run(launched(2, "store"));
  INFO(j.output);
  CHECK(j.exited(0));
  CHECK(contains(j.output, "[rank 0] store ok"));
  CHECK(contains(j.output, "[rank 1] store ok"));
  CHECK(contains(j.output, "veomni::comm::store: wait for 'never/1' timed out after 300 ms (store at 127.0.0.1:"));
}

TEST_CASE("job_store_listens_on_loopback_only" * doctest::timeout(30)) {
  // MASTER_ADDR 127.0.0.1 (the default) and localhost: rank 0's store socket
  // is 127.0.0.1:MASTER_PORT, and nothing on 0.0.0.0 or :: takes that port.
  for (const std::string addr : {"127.0.0.1", "localhost"}) {
    CAPTURE(addr);
    const job j = run(launched(2, "listen 127.0.0.1", "--timeout 25 --master-addr " + addr));
    INFO(j.output);
    CHECK(j.exited(0));
    CHECK(contains(j.output, "[rank 0] listen ok: 127.0.0.1 (0100007F:"));
  }
}

TEST_CASE("job_store_listens_on_every_interface_only_when_asked" * doctest::timeout(30)) {
  const job j = run("VEOMNI_STORE_BIND=0.0.0.0 " + launched(2, "listen 0.0.0.0"));
  INFO(j.output);
  CHECK(j.exited(0));
  CHECK(contains(j.output, "[rank 0] listen ok: 0.0.0.0 (00000000:"));
}

TEST_CASE("job_store_listens_on_the_given_address" * doctest::timeout(30)) {
  const auto mine = outside_ipv4_addresses();
  if (mine.empty()) {
    MESSAGE("skipped: this host has no IPv4 address besides loopback");
    return;
  }
  const job j = run(launched(2, "listen " + mine[0], "--timeout 25 --master-addr " + mine[0]));
  INFO(j.output);
  CHECK(j.exited(0));
  CHECK(contains(j.output, "[rank 0] listen ok: " + mine[0]));
}

TEST_CASE("job_store_bind_elsewhere_fails_at_once" * doctest::timeout(30)) {
  if (is_this_host(not_this_host)) {
    MESSAGE("skipped: " << not_this_host << " is an address of this host");
    return;
  }
  const job j = run("VEOMNI_STORE_BIND=" + not_this_host + " " + launched(2, "listen 127.0.0.1"));
  INFO(j.output);
  CHECK(j.exited(1));
  CHECK(contains(j.output, "[rank 0] error: veomni::comm::make_store: rank 0 of 2 could not serve the store "
                           "(VEOMNI_STORE_BIND = " + not_this_host + "): veomni::comm::store_server: cannot listen on " +
                           not_this_host + ":"));
  CHECK(contains(j.output, ": Cannot assign requested address; VEOMNI_STORE_BIND may name another address of this "
                           "host, or 0.0.0.0 for every interface"));
  CHECK(contains(j.output, "veomni-launch: job failed: rank 0 (exit code 4)"));
  CHECK(j.seconds < 10);
}

TEST_CASE("job_collectives_under_torchrun" * doctest::timeout(30)) {
  if (access("/usr/bin/torchrun", X_OK) != 0) {
    MESSAGE("skipped: /usr/bin/torchrun not found (Debian's python3-torch provides it)");
    return;
  }
  // --standalone: torchrun picks a free port; Python 3.11 needs --redirects/--tee.
  const job j = run("VEOMNI_COMM_TIMEOUT=5 OMP_NUM_THREADS=1 /usr/bin/torchrun --standalone --nproc_per_node 2 "
                    "--redirects 1 --tee 1 --no_python " + worker + " collectives");
  INFO(j.output);
  CHECK(j.exited(0));
  CHECK(contains(j.output, "[default0]:collectives ok (2 ranks)"));
  CHECK(contains(j.output, "[default1]:collectives ok (2 ranks)"));
}

TEST_CASE("job_collectives_under_torchrun_static_rendezvous" * doctest::timeout(30)) {
  if (access("/usr/bin/torchrun", X_OK) != 0) {
    MESSAGE("skipped: /usr/bin/torchrun not found (Debian's python3-torch provides it)");
    return;
  }
  // torchrun's default rendezvous: its agent serves a TCPStore at
  // MASTER_PORT (TORCHELASTIC_USE_AGENT_STORE=True) and every rank is a client.
  const std::uint16_t port = comm::store_server("127.0.0.1", 0).port();  // free now
  const job j = run("VEOMNI_COMM_TIMEOUT=5 OMP_NUM_THREADS=1 /usr/bin/torchrun --nproc_per_node 2 --master_port " +
                    std::to_string(port) + " --redirects 1 --tee 1 --no_python " + worker + " collectives");
  INFO(j.output);
  CHECK(j.exited(0));
  CHECK(contains(j.output, "[default0]:collectives ok (2 ranks)"));
  CHECK(contains(j.output, "[default1]:collectives ok (2 ranks)"));
}
