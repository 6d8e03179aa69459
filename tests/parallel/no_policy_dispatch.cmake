# No dispatch on built-in policy types outside their own headers:
#   cmake -DROOT=<source root> -P no_policy_dispatch.cmake
# Scans include/veomni/parallel/ (but parallel/policies/, where the built-in
# runtime halves live), include/veomni/train/ and tools/ for type tests on
# built-in policies (is_same / same_as / a *_traits template naming FSDP,
# HSDP, DDP, Ulysses, EP, fsdp<>, hsdp<>), and parallel/ also for any use of
# their names in code: the runtime and the trainer reach every policy through
# the one contract (parallel/contract.hpp). Comments are not code.
set(builtin "(FSDP|HSDP|DDP|Ulysses|EP|fsdp|hsdp|fsdp_impl|fsdp_options)")
set(dispatch "(is_same(_v)?|same_as)[ \t]*<[^;{]*[^A-Za-z0-9_]${builtin}[^A-Za-z0-9_]|[a-z_]+_traits[ \t]*<[^;{]*${builtin}|fsdp_traits")
set(named "(^|[^A-Za-z0-9_])${builtin}[ \t]*(::|<|>|,)")
file(GLOB_RECURSE parallel_files ${ROOT}/include/veomni/parallel/*.hpp)
file(GLOB_RECURSE other_files ${ROOT}/include/veomni/train/*.hpp ${ROOT}/tools/*.cpp ${ROOT}/tools/*.hpp)
set(found 0)
foreach(f IN LISTS parallel_files other_files)
  if(f MATCHES "/parallel/policies/")
    continue()
  endif()
  file(STRINGS ${f} lines)
  set(n 0)
  foreach(line IN LISTS lines)
    math(EXPR n "${n} + 1")
    string(REGEX REPLACE "//.*$" "" code "${line}")
    if(code MATCHES "${dispatch}" OR (f MATCHES "/parallel/" AND code MATCHES "${named}"))
      message(STATUS "${f}:${n}: ${line}")
      math(EXPR found "${found} + 1")
    endif()
  endforeach()
endforeach()
if(found GREATER 0)
  message(FATAL_ERROR "${found} line(s) above dispatch on built-in policy types outside their headers")
endif()
list(LENGTH parallel_files np)
list(LENGTH other_files no)
message(STATUS "no dispatch on built-in policy types in ${np} runtime and ${no} trainer/tool files")
