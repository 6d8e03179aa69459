#pragma once
// <veomni/train/threads.hpp>: how many intra-op threads a rank uses, and why
// (torch-free; the trainer applies the choice with at::set_num_threads).
//
//   train.threads: N                 N, whatever else is set
//   OMP_NUM_THREADS=N (the user's)   N
//   otherwise                        the CPUs of this rank's affinity mask, divided
//                                    among the local ranks whose masks overlap it
//
// Launchers set OMP_NUM_THREADS=1 for several local ranks when the user did
// not (torchrun; veomni-launch too, and it says so in VEOMNI_LAUNCH_SET_OMP):
// that 1 is the launcher's guard against oversubscription, not the user's
// wish, so the affinity rule decides instead — a rank of two on a 16-CPU
// host gets 8 threads, and ranks bound to their own cores (veomni-launch
// --bind-cores, taskset, numactl) get all of theirs. Under torchrun an
// OMP_NUM_THREADS=1 the user did set cannot be told from torchrun's own:
// train.threads=1 says it for sure.
//
//   choose_threads({.cpus = 16, .sharing = 2})            -> {8, "16 CPUs in its affinity mask, shared by 2 local ranks"}
//   choose_threads({.configured = 3, .cpus = 16})         -> {3, "train.threads"}
//   choose_threads({.omp = "4", .cpus = 16})              -> {4, "OMP_NUM_THREADS=4"}
#include <sched.h>

#include <cstdint>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

namespace veomni::train {

struct thread_inputs {
  long configured = 0;              // train.threads (0: choose)
  std::optional<std::string> omp;   // OMP_NUM_THREADS, when set
  bool launcher_omp = false;        // that value is a launcher's default for several local ranks
  long cpus = 1;                    // CPUs in this rank's affinity mask
  long sharing = 1;                 // local ranks (this one included) whose masks overlap this one's
};

struct thread_choice {
  int threads = 1;
  std::string why;
};

// Throws std::invalid_argument naming OMP_NUM_THREADS when it is set to
// something that is not a positive number of threads.
inline thread_choice choose_threads(const thread_inputs& in) {
  if (in.configured > 0) return {static_cast<int>(in.configured), "train.threads"};
  if (in.omp && !in.launcher_omp) {
    // OpenMP allows a list for nested levels ("4,2"); the first is ours
    const std::string first = in.omp->substr(0, in.omp->find(','));
    std::size_t used = 0;
    long n = 0;
    try {
      n = std::stol(first, &used);
    } catch (const std::exception&) {
      used = 0;
    }
    if (used == 0 || used != first.size() || n < 1)
      throw std::invalid_argument("OMP_NUM_THREADS: '" + *in.omp + "' is not a positive number of threads (unset it, or set train.threads)");
    return {static_cast<int>(n), "OMP_NUM_THREADS=" + first};
  }
  const long cpus = in.cpus < 1 ? 1 : in.cpus, sharing = in.sharing < 1 ? 1 : in.sharing;
  const long n = cpus / sharing < 1 ? 1 : cpus / sharing;
  std::string why = std::to_string(cpus) + (cpus == 1 ? " CPU" : " CPUs") + " in its affinity mask" +
                    (sharing == 1 ? ", not shared with another local rank" : ", shared by " + std::to_string(sharing) + " local ranks");
  if (in.omp) why += "; OMP_NUM_THREADS=" + *in.omp + " is the launcher's default, train.threads overrides";
  return {static_cast<int>(n), why};
}

// This process's affinity mask as 64-bit words (CPU c is bit c % 64 of word c / 64).
inline std::vector<std::uint64_t> affinity_words() {
  for (int ncpu = 1024; ncpu <= (1 << 16); ncpu *= 4) {
    cpu_set_t* set = CPU_ALLOC(ncpu);
    const std::size_t size = CPU_ALLOC_SIZE(ncpu);
    CPU_ZERO_S(size, set);
    if (sched_getaffinity(0, size, set) == 0) {
      std::vector<std::uint64_t> words(static_cast<std::size_t>((ncpu + 63) / 64), 0);
      for (int c = 0; c < ncpu; ++c)
        if (CPU_ISSET_S(c, size, set)) words[static_cast<std::size_t>(c / 64)] |= std::uint64_t{1} << (c % 64);
      CPU_FREE(set);
      while (words.size() > 1 && words.back() == 0) words.pop_back();
      return words;
    }
    CPU_FREE(set);
  }
  return {1};  // unknown: one CPU
}

inline long count_cpus(const std::vector<std::uint64_t>& words) {
  long n = 0;
  for (std::uint64_t w : words) n += __builtin_popcountll(w);
  return n;
}

// The launcher's OMP_NUM_THREADS default: "1" for several local ranks, set
// by veomni-launch (VEOMNI_LAUNCH_SET_OMP=1) or by torchrun (its workers
// have TORCHELASTIC_RUN_ID) — see the top of this file.
inline bool launcher_set_omp(const char* omp, const char* veomni_launch_flag, const char* torchelastic_run_id, long local_world) {
  if (omp == nullptr || std::string(omp) != "1" || local_world < 2) return false;
  return (veomni_launch_flag != nullptr && std::string(veomni_launch_flag) == "1") || torchelastic_run_id != nullptr;
}

}  // namespace veomni::train
