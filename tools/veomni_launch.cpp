// veomni-launch: runs N ranks of a program on this machine with the
// environment torchrun gives them, and keeps the job all-or-nothing.
//
//   veomni-launch --nproc 4 [--master-port P] [--timeout S] -- ./train --config c.yaml
//
// Several hosts, as torchrun's static multi-node launch: one veomni-launch
// per host, each with the host's --node-rank, the same --nnodes, --nproc,
// and the rendezvous address and port of node 0 (where rank 0's store
// listens, on that address alone):
//   host A:  veomni-launch --nnodes 2 --node-rank 0 --nproc 2 --master-addr 10.0.0.1 --master-port 29500 -- ...
//   host B:  veomni-launch --nnodes 2 --node-rank 1 --nproc 2 --master-addr 10.0.0.1 --master-port 29500 -- ...
// Ranks are numbered host by host (node k holds k * nproc ... k * nproc + nproc - 1).
//
// Each rank gets RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR,
// MASTER_PORT (a free loopback port unless given), GROUP_RANK, ROLE_RANK,
// ROLE_WORLD_SIZE, and OMP_NUM_THREADS=1 unless set (as torchrun does), with
// VEOMNI_LAUNCH_SET_OMP=1 saying that 1 is ours, not the user's (veomni-train
// then chooses its threads from the CPUs, train/threads.hpp).
// Output lines are prefixed "[rank k] " (--no-prefix turns that off).
// SIGINT / SIGTERM / SIGHUP are forwarded to every rank. When a rank exits
// non-zero or dies by a signal, the others get SIGTERM, then SIGKILL after
// --grace seconds, and veomni-launch exits 1 naming the rank that failed
// first. --timeout bounds the whole job the same way (exit 124).
//
// --bind-cores gives each rank its own block of the CPUs veomni-launch may
// run on (sched_getaffinity): with M CPUs and N ranks, local rank r gets the
// r-th block of M / N of them, in CPU order (the M mod N left over run no
// rank). A rank's threads (Gloo's too) then stay on its cores, and one
// rank's communication threads do not take another rank's core. Fewer CPUs
// than ranks is an error.
#include <CLI/CLI.hpp>

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <optional>
#include <random>
#include <string>
#include <vector>

namespace {

using clock_type = std::chrono::steady_clock;

int signal_pipe[2] = {-1, -1};

void on_signal(int sig) {
  const int saved = errno;
  const unsigned char b = static_cast<unsigned char>(sig);
  [[maybe_unused]] auto n = write(signal_pipe[1], &b, 1);
  errno = saved;
}

[[noreturn]] void die(const std::string& msg) {
  std::fprintf(stderr, "veomni-launch: %s\n", msg.c_str());
  std::exit(2);
}

// Asks the kernel for a free loopback port. Another process may take it
// before rank 0's store binds it; torchrun makes the same trade.
// Whether nothing on this host listens on 127.0.0.1:port right now.
bool bindable(int port) {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) die(std::string("socket: ") + std::strerror(errno));
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  a.sin_port = htons(static_cast<uint16_t>(port));
  const bool ok = bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0;
  close(fd);
  return ok;
}

// A port for rank 0's store, free now and drawn below the kernel's
// ephemeral range: a port from that range (what binding port 0 gives) can
// be taken, between this check and rank 0's listen, by any connection or
// Gloo listener of a job running beside this one.
int free_port() {
  int ephemeral_low = 32768;
  if (std::FILE* f = std::fopen("/proc/sys/net/ipv4/ip_local_port_range", "r")) {
    if (std::fscanf(f, "%d", &ephemeral_low) != 1) ephemeral_low = 32768;
    std::fclose(f);
  }
  const int high = std::max(2048, ephemeral_low) - 1, low = std::max(1024, high - 12000);
  std::mt19937 pick{std::random_device{}()};
  std::uniform_int_distribution<int> port(low, high);
  for (int attempt = 0; attempt < 200; ++attempt)
    if (const int p = port(pick); bindable(p)) return p;
  die("could not find a free port in " + std::to_string(low) + "-" + std::to_string(high) + "; pass --master-port");
}

std::string describe_status(int status) {
  if (WIFEXITED(status)) return "exit code " + std::to_string(WEXITSTATUS(status));
  if (WIFSIGNALED(status)) {
    const int s = WTERMSIG(status);
    const char* name = sigabbrev_np(s);
    return "killed by signal " + std::to_string(s) + (name ? std::string(" (SIG") + name + ")" : "");
  }
  return "status " + std::to_string(status);
}

struct stream {
  int fd = -1;
  FILE* sink = nullptr;
  std::string pending;  // bytes after the last newline
};

struct rank_proc {
  pid_t pid = -1;
  bool running = false;
  int status = 0;
  stream out, err;
};

void emit(const std::string& prefix, FILE* sink, const char* data, std::size_t n) {
  std::string s = prefix;
  s.append(data, n);
  std::fwrite(s.data(), 1, s.size(), sink);
  std::fflush(sink);
}

// Reads what is available; writes whole lines, prefixed. At EOF flushes the
// unterminated tail and closes the fd.
void pump(stream& s, const std::string& prefix, bool at_eof_only = false) {
  char buf[65536];
  for (;;) {
    const ssize_t n = read(s.fd, buf, sizeof buf);
    if (n > 0) {
      s.pending.append(buf, static_cast<std::size_t>(n));
      std::size_t start = 0, nl;
      while ((nl = s.pending.find('\n', start)) != std::string::npos) {
        emit(prefix, s.sink, s.pending.data() + start, nl - start + 1);
        start = nl + 1;
      }
      s.pending.erase(0, start);
      if (at_eof_only) continue;
      return;
    }
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return;
    if (!s.pending.empty()) {
      s.pending += '\n';
      emit(prefix, s.sink, s.pending.data(), s.pending.size());
      s.pending.clear();
    }
    close(s.fd);
    s.fd = -1;
    return;
  }
}

// The CPUs this process may run on, in order.
std::vector<int> allowed_cpus() {
  cpu_set_t set;
  CPU_ZERO(&set);
  if (sched_getaffinity(0, sizeof set, &set) != 0) die(std::string("sched_getaffinity: ") + std::strerror(errno));
  std::vector<int> cpus;
  for (int c = 0; c < CPU_SETSIZE; ++c)
    if (CPU_ISSET(c, &set)) cpus.push_back(c);
  return cpus;
}

// "0-3,8": a CPU list as the kernel prints one (Cpus_allowed_list).
std::string cpu_list(const std::vector<int>& cpus) {
  std::string out;
  for (std::size_t i = 0; i < cpus.size();) {
    std::size_t j = i;
    while (j + 1 < cpus.size() && cpus[j + 1] == cpus[j] + 1) ++j;
    out += (out.empty() ? "" : ",") + std::to_string(cpus[i]) + (j > i ? "-" + std::to_string(cpus[j]) : "");
    i = j + 1;
  }
  return out;
}

// --bind-cores: each rank's block of the allowed CPUs.
std::vector<std::vector<int>> core_blocks(int nproc) {
  const std::vector<int> cpus = allowed_cpus();
  const std::size_t n = static_cast<std::size_t>(nproc);
  if (cpus.size() < n)
    die("--bind-cores: " + std::to_string(nproc) + " ranks but only " + std::to_string(cpus.size()) +
        " CPUs are allowed (" + cpu_list(cpus) + "); start at most " + std::to_string(cpus.size()) +
        " ranks, or leave out --bind-cores");
  const std::size_t k = cpus.size() / n;
  std::vector<std::vector<int>> blocks(n);
  for (std::size_t r = 0; r < n; ++r) blocks[r].assign(cpus.begin() + static_cast<long>(r * k), cpus.begin() + static_cast<long>((r + 1) * k));
  return blocks;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"veomni-launch: run N ranks of a program with torchrun's environment"};
  int nproc = 0;
  int nnodes = 1, node_rank = 0;
  int master_port = 0;
  std::string master_addr = "127.0.0.1";
  double timeout_s = 0;
  double grace_s = 5;
  bool no_prefix = false;
  bool bind_cores = false;
  std::vector<std::string> command;
  app.add_option("--nproc,--nproc-per-node,--nproc_per_node", nproc, "ranks to start")->required()->check(CLI::Range(1, 4096));
  app.add_option("--nnodes", nnodes, "hosts in the job (one veomni-launch each)")->capture_default_str()->check(CLI::Range(1, 4096));
  app.add_option("--node-rank,--node_rank", node_rank, "this host's place among them, 0 to nnodes - 1")
      ->capture_default_str()
      ->check(CLI::NonNegativeNumber);
  app.add_option("--master-port", master_port, "rendezvous port (default: a free one; required with --nnodes > 1)")
      ->check(CLI::Range(1, 65535));
  app.add_option("--master-addr", master_addr, "rendezvous address")->capture_default_str();
  app.add_option("--timeout", timeout_s, "seconds before the whole job is terminated (0: none)")->check(CLI::NonNegativeNumber);
  app.add_option("--grace", grace_s, "seconds between SIGTERM and SIGKILL")->capture_default_str()->check(CLI::NonNegativeNumber);
  app.add_flag("--no-prefix", no_prefix, "do not prefix output lines with [rank k]");
  app.add_flag("--bind-cores", bind_cores, "give each rank its own block of the allowed CPUs");
  app.add_option("command", command, "program and its arguments (after --)")->required();
  CLI11_PARSE(app, argc, argv);

  if (node_rank >= nnodes) {
    std::fprintf(stderr, "veomni-launch: --node-rank %d is not below --nnodes %d\n", node_rank, nnodes);
    return 2;
  }
  if (nnodes > 1 && master_port == 0) {
    std::fprintf(stderr, "veomni-launch: --nnodes %d needs --master-port: every host must dial the port node 0 listens on\n",
                 nnodes);
    return 2;
  }
  if (master_port == 0) master_port = free_port();
  const int first_rank = node_rank * nproc, world = nnodes * nproc;
  std::vector<std::vector<int>> blocks;
  if (bind_cores) {
    blocks = core_blocks(nproc);
    std::string say;
    for (std::size_t r = 0; r < blocks.size(); ++r) say += (r ? ", rank " : "rank ") + std::to_string(r) + ": " + cpu_list(blocks[r]);
    std::fprintf(stderr, "veomni-launch: CPUs by rank: %s\n", say.c_str());
  }
  if (pipe(signal_pipe) != 0) die("pipe failed");
  fcntl(signal_pipe[0], F_SETFL, O_NONBLOCK);
  fcntl(signal_pipe[1], F_SETFL, O_NONBLOCK);
  fcntl(signal_pipe[0], F_SETFD, FD_CLOEXEC);
  fcntl(signal_pipe[1], F_SETFD, FD_CLOEXEC);
  struct sigaction sa {};
  sa.sa_handler = on_signal;
  sigemptyset(&sa.sa_mask);
  sa.sa_flags = SA_RESTART;
  for (int s : {SIGCHLD, SIGINT, SIGTERM, SIGHUP}) sigaction(s, &sa, nullptr);

  std::vector<rank_proc> ranks(static_cast<std::size_t>(nproc));
  const bool set_omp = std::getenv("OMP_NUM_THREADS") == nullptr && nproc > 1;
  for (int r = 0; r < nproc; ++r) {
    int out[2], err[2];
    if (pipe(out) != 0 || pipe(err) != 0) die("pipe failed");
    // Until the child has dropped our handlers, a signal must not run them
    // there: on_signal would write into our signal pipe (shared until exec),
    // and a SIGTERM sent to the rank would read here as one sent to us.
    // Blocked across fork; the child unblocks after resetting them.
    sigset_t handled, before;
    sigemptyset(&handled);
    for (int s : {SIGCHLD, SIGINT, SIGTERM, SIGHUP}) sigaddset(&handled, s);
    sigprocmask(SIG_BLOCK, &handled, &before);
    const pid_t pid = fork();
    if (pid < 0) die(std::string("fork: ") + std::strerror(errno));
    if (pid == 0) {
      struct sigaction dfl {};
      dfl.sa_handler = SIG_DFL;
      for (int s : {SIGCHLD, SIGINT, SIGTERM, SIGHUP}) sigaction(s, &dfl, nullptr);
      sigprocmask(SIG_SETMASK, &before, nullptr);  // a pending SIGTERM now ends the child
      close(signal_pipe[0]), close(signal_pipe[1]);
      // Own process group: terminating a rank reaches what it started too.
      setpgid(0, 0);
      dup2(out[1], STDOUT_FILENO);
      dup2(err[1], STDERR_FILENO);
      close(out[0]), close(out[1]), close(err[0]), close(err[1]);
      auto set = [](const char* k, const std::string& v) { setenv(k, v.c_str(), 1); };
      set("RANK", std::to_string(first_rank + r));
      set("WORLD_SIZE", std::to_string(world));
      set("LOCAL_RANK", std::to_string(r));
      set("LOCAL_WORLD_SIZE", std::to_string(nproc));
      set("GROUP_RANK", std::to_string(node_rank));
      set("GROUP_WORLD_SIZE", std::to_string(nnodes));
      set("ROLE_RANK", std::to_string(first_rank + r));
      set("ROLE_WORLD_SIZE", std::to_string(world));
      set("MASTER_ADDR", master_addr);
      set("MASTER_PORT", std::to_string(master_port));
      if (set_omp) {
        set("OMP_NUM_THREADS", "1");
        set("VEOMNI_LAUNCH_SET_OMP", "1");
      } else {
        unsetenv("VEOMNI_LAUNCH_SET_OMP");
      }
      if (!blocks.empty()) {
        cpu_set_t mine;
        CPU_ZERO(&mine);
        for (int c : blocks[static_cast<std::size_t>(r)]) CPU_SET(c, &mine);
        if (sched_setaffinity(0, sizeof mine, &mine) != 0) {
          std::fprintf(stderr, "veomni-launch: rank %d: sched_setaffinity(%s): %s\n", r,
                       cpu_list(blocks[static_cast<std::size_t>(r)]).c_str(), std::strerror(errno));
          _exit(127);
        }
      }
      std::vector<char*> args;
      for (auto& c : command) args.push_back(c.data());
      args.push_back(nullptr);
      execvp(args[0], args.data());
      std::fprintf(stderr, "veomni-launch: cannot run %s: %s\n", args[0], std::strerror(errno));
      _exit(127);
    }
    setpgid(pid, pid);  // also here, so the group exists before we signal it
    sigprocmask(SIG_SETMASK, &before, nullptr);
    close(out[1]), close(err[1]);
    fcntl(out[0], F_SETFL, O_NONBLOCK);
    fcntl(err[0], F_SETFL, O_NONBLOCK);
    auto& p = ranks[static_cast<std::size_t>(r)];
    p.pid = pid;
    p.running = true;
    p.out = {out[0], stdout, {}};
    p.err = {err[0], stderr, {}};
  }

  const auto started = clock_type::now();
  std::optional<clock_type::time_point> kill_at;  // SIGKILL the rest then
  int failed_rank = -1, failed_status = 0;
  int forwarded_signal = 0;
  bool timed_out = false;

  auto signal_all = [&](int sig) {
    for (auto& p : ranks)
      if (p.running) kill(-p.pid, sig);
  };
  auto terminate_all = [&] {
    if (kill_at) return;
    signal_all(SIGTERM);
    kill_at = clock_type::now() + std::chrono::duration_cast<clock_type::duration>(std::chrono::duration<double>(grace_s));
  };
  auto prefix = [&](int r) { return no_prefix ? std::string() : "[rank " + std::to_string(first_rank + r) + "] "; };

  for (;;) {
    // Reap.
    for (;;) {
      int status = 0;
      const pid_t pid = waitpid(-1, &status, WNOHANG);
      if (pid <= 0) break;
      for (std::size_t r = 0; r < ranks.size(); ++r) {
        auto& p = ranks[r];
        if (p.pid != pid) continue;
        p.running = false;
        p.status = status;
        const bool ok = WIFEXITED(status) && WEXITSTATUS(status) == 0;
        if (!ok && failed_rank < 0 && !forwarded_signal && !timed_out) {
          failed_rank = static_cast<int>(r), failed_status = status;
          std::fprintf(stderr, "veomni-launch: rank %zu failed (%s); terminating the other ranks\n",
                       r + static_cast<std::size_t>(first_rank), describe_status(status).c_str());
          terminate_all();
        }
      }
    }
    bool any_running = false, any_open = false;
    for (auto& p : ranks) any_running |= p.running, any_open |= p.out.fd >= 0 || p.err.fd >= 0;
    if (!any_running) {
      // Drain what the ranks wrote before exiting (a grandchild holding the
      // pipe open is not waited for).
      for (std::size_t r = 0; r < ranks.size(); ++r) {
        for (stream* s : {&ranks[r].out, &ranks[r].err}) {
          if (s->fd < 0) continue;
          pump(*s, prefix(static_cast<int>(r)), true);
          if (s->fd >= 0) close(s->fd), s->fd = -1;
        }
      }
      break;
    }
    const auto now = clock_type::now();
    if (kill_at && now >= *kill_at) {
      signal_all(SIGKILL);
      kill_at = now + std::chrono::hours(1);
    }
    if (timeout_s > 0 && !timed_out && now - started >= std::chrono::duration<double>(timeout_s)) {
      timed_out = true;
      std::fprintf(stderr, "veomni-launch: timed out after %.0f s; terminating all ranks\n", timeout_s);
      terminate_all();
    }

    std::vector<pollfd> fds{{signal_pipe[0], POLLIN, 0}};
    std::vector<std::pair<stream*, int>> owners{{nullptr, -1}};
    for (std::size_t r = 0; r < ranks.size(); ++r)
      for (stream* s : {&ranks[r].out, &ranks[r].err})
        if (s->fd >= 0) fds.push_back({s->fd, POLLIN, 0}), owners.emplace_back(s, static_cast<int>(r));
    (void)any_open;
    const int rc = poll(fds.data(), fds.size(), 100);
    if (rc < 0 && errno != EINTR) die(std::string("poll: ") + std::strerror(errno));
    if (rc <= 0) continue;
    if (fds[0].revents & POLLIN) {
      unsigned char sigs[64];
      ssize_t n;
      while ((n = read(signal_pipe[0], sigs, sizeof sigs)) > 0) {
        for (ssize_t i = 0; i < n; ++i) {
          const int sig = sigs[i];
          if (sig == SIGCHLD) continue;
          if (!forwarded_signal) {
            forwarded_signal = sig;
            std::fprintf(stderr, "veomni-launch: got signal %d; forwarding it to all ranks\n", sig);
          }
          signal_all(sig);
          if (!kill_at)
            kill_at = clock_type::now() +
                      std::chrono::duration_cast<clock_type::duration>(std::chrono::duration<double>(grace_s));
        }
      }
    }
    for (std::size_t i = 1; i < fds.size(); ++i)
      if (fds[i].revents & (POLLIN | POLLHUP | POLLERR)) pump(*owners[i].first, prefix(owners[i].second));
  }

  if (timed_out) return 124;
  if (forwarded_signal) return 128 + forwarded_signal;
  if (failed_rank >= 0) {
    std::fprintf(stderr, "veomni-launch: job failed: rank %d (%s)\n", first_rank + failed_rank, describe_status(failed_status).c_str());
    return 1;
  }
  return 0;
}
