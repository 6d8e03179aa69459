// comm tests. In process: the rank layout, the size rules, the environment
// rules (no torch in this TU). Out of process: jobs of comm_worker at 2 and
// 4 ranks under veomni-launch, and one under torchrun; each has a deadline
// well under 30 s and is killed, not waited for, past it.
#define DOCTEST_CONFIG_IMPLEMENT_WITH_MAIN
#include <doctest/doctest.h>

#include <veomni/comm/launch_env.hpp>
#include <veomni/comm/mesh_layout.hpp>

#include <poll.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <map>
#include <string>
#include <vector>

namespace comm = veomni::comm;
namespace axis = veomni::axis;
using veomni::axes;
using veomni::mesh_shape;

namespace {

using ranks = std::vector<int>;

// ---- in process -----------------------------------------------------------

std::string error_of(auto&& f) {
  try {
    f();
  } catch (const std::invalid_argument& e) {
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
