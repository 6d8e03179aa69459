#pragma once
// <veomni/parallel/host_memory.hpp>: keep freed host memory for the next step.
//
//   veomni::parallel::retain_host_memory();   // once, at the start of a training process
//
// A training step frees and re-allocates the same large temporaries every
// step (activations, gathered parameters, gradient buffers). With glibc's
// defaults, blocks above the mmap threshold are unmapped when freed and the
// top of the heap is trimmed back to the kernel, so the next step
// page-faults them in again: 9.8 % of a CPU step's cycles in the profile of
// benchmarks/RESULTS.md. This raises both thresholds, so freed blocks stay in
// the process and are reused (the steady-state footprint is the peak of one
// step, which the process reaches anyway). It changes the whole process's
// malloc (LibTorch's CPU tensors included), which is why it is a call the
// program makes, not something a header does behind its back. Equivalent to
// MALLOC_MMAP_THRESHOLD_ / MALLOC_TRIM_THRESHOLD_ in the environment; no-op
// on a C library other than glibc.
#include <cstddef>

#if defined(__GLIBC__)
#include <malloc.h>
#endif

namespace veomni::parallel {

struct host_memory_options {
  std::size_t mmap_threshold = std::size_t{1} << 30;  // blocks up to this come from the heap (glibc's default: 128 KiB, adaptive up to 32 MiB)
  std::size_t trim_threshold = std::size_t{1} << 30;  // free memory at the heap top kept before returning it (default: 128 KiB, adaptive)
};

// True when the C library took the settings.
inline bool retain_host_memory(const host_memory_options& o = {}) {
#if defined(__GLIBC__)
  return mallopt(M_MMAP_THRESHOLD, static_cast<int>(o.mmap_threshold)) == 1 &&
         mallopt(M_TRIM_THRESHOLD, static_cast<int>(o.trim_threshold)) == 1;
#else
  (void)o;
  return false;
#endif
}

}  // namespace veomni::parallel
