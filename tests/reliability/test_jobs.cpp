// Jobs that die: a rank killed in the middle of training, the whole job
// killed (kill -9) and resumed; and where the trainer may write, and how it
// starts processes.
#include <doctest/doctest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <thread>

#include "harness.hpp"

using namespace veomni::testing;
namespace fs = std::filesystem;
using clock_type = std::chrono::steady_clock;

namespace {

// A command started in a session of its own (so the whole job can be
// killed at once), its output in tmp/<tag>.log.
struct process {
  pid_t pid = -1;
  std::string log;

  process(const std::string& cmd, const std::string& tag) : log(tmp_root + "/" + tag + ".log") {
    pid = fork();
    if (pid == 0) {
      setsid();
      execl("/bin/sh", "sh", "-c", (cmd + " > " + log + " 2>&1").c_str(), static_cast<char*>(nullptr));
      _exit(127);
    }
  }
  // The exit status, or -1 if it is still running after `seconds`.
  int wait_for(double seconds) {
    const auto end = clock_type::now() + std::chrono::duration<double>(seconds);
    for (;;) {
      int status = 0;
      if (waitpid(pid, &status, WNOHANG) == pid) {
        pid = -1;
        return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
      }
      if (clock_type::now() > end) return -1;
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
  }
  void kill_all(int sig) const { ::kill(-pid, sig); }
  std::string output() const { return slurp(log); }
  ~process() {
    if (pid > 0) {
      kill_all(SIGKILL);
      waitpid(pid, nullptr, 0);
    }
  }
};

size_t lines_of(const std::string& path) {
  const std::string s = slurp(path);
  return static_cast<size_t>(std::count(s.begin(), s.end(), '\n'));
}

// Waits until rank 0 has logged `steps` steps (metrics.jsonl lines).
bool reaches(const std::string& out_dir, size_t steps, process& p, double seconds = 60) {
  const auto end = clock_type::now() + std::chrono::duration<double>(seconds);
  while (clock_type::now() < end) {
    if (lines_of(out_dir + "/metrics.jsonl") >= steps) return true;
    if (p.wait_for(0) != -1) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  return false;
}

std::string dense_config(const std::string& dir, int steps, const std::string& extra = "") {
  return "model:\n  name: dense_lm\ndata:\n  type: synthetic\n  synthetic_seq_len: 64\n"
         "train:\n  output_dir: " + dir + "/out\n  max_steps: " + std::to_string(steps) +
         "\n  global_batch_size: 8\n  lr: 0.003\n  lr_decay_style: constant\n  log_steps: 1000\n"
         "  export_safetensors: false\n  peak_flops_per_rank: 1e9\n" + extra;
}

// The pid of the process of rank `rank` whose command line mentions `marker`.
pid_t rank_pid(const std::string& marker, int rank) {
  for (const auto& e : fs::directory_iterator("/proc")) {
    const std::string name = e.path().filename().string();
    if (name.find_first_not_of("0123456789") != std::string::npos) continue;
    std::string cmd = slurp(e.path().string() + "/cmdline"), env = slurp(e.path().string() + "/environ");
    std::replace(cmd.begin(), cmd.end(), '\0', ' ');
    if (cmd.rfind(train_bin, 0) != 0 || !contains(cmd, marker)) continue;
    if (contains(std::string(1, '\0') + env, std::string(1, '\0') + "RANK=" + std::to_string(rank) + '\0')) return std::stoi(name);
  }
  return -1;
}
}  // namespace

TEST_SUITE("jobs") {
TEST_CASE("a rank killed mid-training: the other rank exits non-zero within 60 s naming the collective" * doctest::timeout(120)) {
  const std::string dir = case_dir("job_dead");
  write_file(dir + "/c.yaml", dense_config(dir, 100000, "  save_checkpoints: false\n"));
  // A dead peer usually fails rank 0's next collective at once (connection reset); when the
  // reset is not seen, the collective's timeout names it. 20 s, not the default 60, keeps
  // that path inside the 60 s this case promises (a CI run once hit it and timed out at 60.01 s).
  const std::string env = "WORLD_SIZE=2 MASTER_ADDR=127.0.0.1 VEOMNI_COMM_TIMEOUT=20 MASTER_PORT=" +
                          std::to_string(29600 + getpid() % 300) + " ";
  process r0("RANK=0 " + env + train_bin + " " + dir + "/c.yaml", "job_dead_r0");
  process r1("RANK=1 " + env + train_bin + " " + dir + "/c.yaml", "job_dead_r1");
  REQUIRE(reaches(dir + "/out", 3, r0));
  r1.kill_all(SIGKILL);
  const auto t0 = clock_type::now();
  const int rc = r0.wait_for(60);
  const double secs = std::chrono::duration<double>(clock_type::now() - t0).count();
  INFO(r0.output());
  MESSAGE("rank 0 exited with ", rc, " after ", secs, " s");
  CHECK(rc > 0);
  CHECK(rc != -1);
  CHECK(secs < 60);
  CHECK(contains(r0.output(), "veomni-train: failed: veomni::comm: "));
  CHECK(contains(r0.output(), "(rank 0 of 2)"));
}

TEST_CASE("a rank killed mid-training under veomni-launch: the launcher names it and exits non-zero" * doctest::timeout(120)) {
  const std::string dir = case_dir("job_dead_launch");
  write_file(dir + "/c.yaml", dense_config(dir, 100000, "  save_checkpoints: false\n"));
  process job(launch_bin + " --nproc 2 --timeout 100 -- " + train_bin + " " + dir + "/c.yaml", "job_dead_launch");
  REQUIRE(reaches(dir + "/out", 3, job));
  const pid_t victim = rank_pid(dir + "/c.yaml", 1);
  REQUIRE(victim > 0);
  ::kill(victim, SIGKILL);
  const int rc = job.wait_for(60);
  INFO(job.output());
  CHECK(rc == 1);
  CHECK(contains(job.output(), "veomni-launch: rank 1 failed (killed by signal 9"));
  CHECK(contains(job.output(), "veomni-launch: job failed: rank 1"));
}

TEST_CASE("kill -9 of the whole job mid-training, then resume: the losses of the uninterrupted run, exactly" * doctest::timeout(240)) {
  const std::string ref = case_dir("job_kill9_ref"), dir = case_dir("job_kill9");
  const std::string extra = "  save_steps: 3\n";
  const auto reference = [&] {
    const job j = train("job_kill9_ref", 2, dense_config(ref, 24, extra));
    INFO(j.output);
    REQUIRE(j.rc == 0);
    return metrics(ref + "/out");
  }();
  REQUIRE(reference.size() == 24);
  write_file(dir + "/c.yaml", dense_config(dir, 24, extra));
  {
    process job(launch_bin + " --nproc 2 --timeout 200 -- " + train_bin + " " + dir + "/c.yaml", "job_kill9_first");
    REQUIRE(reaches(dir + "/out", 11, job));
    job.kill_all(SIGKILL);  // launcher and both ranks, wherever they are (maybe inside a save)
    CHECK(job.wait_for(10) == 128 + SIGKILL);
  }
  const size_t logged = metrics(dir + "/out").size();
  MESSAGE("killed after ", logged, " logged steps");
  CHECK(logged < 24);
  const job again = run("VEOMNI_COMM_TIMEOUT=60 " + launch_bin + " --nproc 2 --timeout 200 -- " + train_bin + " " + dir +
                            "/c.yaml --train.load_checkpoint_path=auto",
                        "job_kill9_resume");
  INFO(again.output);
  REQUIRE(again.rc == 0);
  CHECK(contains(again.output, "resumed from " + dir + "/out/checkpoints/step_0000"));
  const auto got = metrics(dir + "/out");
  REQUIRE(got.size() == 24);
  for (size_t i = 0; i < 24; ++i) {
    CHECK(got[i]["step"] == reference[i]["step"]);
    CHECK(got[i]["loss"].get<double>() == reference[i]["loss"].get<double>());
    CHECK(got[i]["grad_norm"].get<double>() == reference[i]["grad_norm"].get<double>());
  }
}

TEST_CASE("no output escapes train.output_dir: a symbolic link out of it is refused before training" * doctest::timeout(60)) {
  const std::string dir = case_dir("job_escape");
  fs::create_directories(dir + "/out");
  fs::create_directories(dir + "/elsewhere");
  fs::create_directory_symlink(dir + "/elsewhere", dir + "/out/checkpoints");
  const std::string msg = "train.output_dir: '" + dir + "/out/checkpoints' leads to '" + dir + "/elsewhere', outside " + dir +
                          "/out: refusing to write there";
  expect_error(train("job_escape", 1, dense_config(dir, 2)), msg);
  expect_error_on_each_rank("job_escape", "", msg);
  CHECK(fs::is_empty(dir + "/elsewhere"));
  CHECK(!fs::exists(dir + "/out/metrics.jsonl"));
  // a file too: hf/model.safetensors -> outside
  fs::remove(dir + "/out/checkpoints");
  fs::create_directories(dir + "/out/hf");
  fs::create_symlink(dir + "/elsewhere/model.safetensors", dir + "/out/hf/model.safetensors");
  expect_error(train("job_escape", 1, dense_config(dir, 2)), "train.output_dir: '" + dir + "/out/hf/model.safetensors' leads to");
  CHECK(fs::is_empty(dir + "/elsewhere"));
}

TEST_CASE("no user string reaches a shell: shell syntax in paths and arguments stays literal" * doctest::timeout(60)) {
  const std::string dir = case_dir("job_shell");
  // output_dir and an override full of shell syntax (YAML single-quoted: taken verbatim)
  const std::string odd = dir + "/o; touch " + dir + "/pwned1 $(touch " + dir + "/pwned2) `touch " + dir + "/pwned3`";
  write_file(dir + "/c.yaml", "model:\n  name: dense_lm\ndata:\n  type: synthetic\ntrain:\n  output_dir: '" + odd +
                                  "'\n  max_steps: 1\n  global_batch_size: 2\n  save_checkpoints: false\n  export_safetensors: false\n"
                                  "  peak_flops_per_rank: 1e9\n");
  // through veomni-launch, which must exec the command as given (no sh -c)
  const job j = run(launch_bin + " --nproc 1 -- " + train_bin + " '" + dir + "/c.yaml'", "job_shell");
  INFO(j.output);
  CHECK(j.rc == 0);
  CHECK(fs::exists(odd + "/metrics.jsonl"));
  for (const char* f : {"/pwned1", "/pwned2", "/pwned3"}) CHECK_MESSAGE(!fs::exists(dir + f), f);
  // and the sources: no shell anywhere in the library or the tools
  for (const char* root : {VEOMNI_TEST_SOURCE_DIR "/include", VEOMNI_TEST_SOURCE_DIR "/tools"})
    for (const auto& e : fs::recursive_directory_iterator(root)) {
      if (!e.is_regular_file()) continue;
      const std::string text = slurp(e.path().string());
      for (const char* call : {"system(", "popen(", "\"/bin/sh\"", "execl("}) CHECK_MESSAGE(!contains(text, call), e.path().string(), " calls ", call);
    }
}
}
