# ctest driver for a compile-fail case: the build of TARGET must fail, its
# output must contain every pattern in PATTERNS (a |-separated list), and,
# with ONE_ERROR=ON, exactly one "error:" line.
#   cmake -DBUILD_DIR=... -DTARGET=... -DPATTERNS=a|b [-DONE_ERROR=ON] -P compile_fail.cmake
# Or, with COMPILER, SOURCE and FLAGS (a |-separated list), the source is
# compiled by that compiler directly (-fsyntax-only): as is it must compile,
# and with VEOMNI_COMPILE_FAIL=1 it must fail as above. ONE_ERROR is then on.
#   cmake -DCOMPILER=clang++ -DSOURCE=f.cpp -DFLAGS=-Ia|-Ib -DTARGET=name -DPATTERNS=a|b -P compile_fail.cmake
if(COMPILER)
  string(REPLACE "|" ";" flags "${FLAGS}")
  execute_process(COMMAND ${COMPILER} -std=c++20 -fsyntax-only ${flags} ${SOURCE}
                  RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "compile-fail: ${SOURCE} must compile with ${COMPILER} without VEOMNI_COMPILE_FAIL:\n${out}${err}")
  endif()
  execute_process(COMMAND ${COMPILER} -std=c++20 -fsyntax-only -DVEOMNI_COMPILE_FAIL=1 ${flags} ${SOURCE}
                  RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
  set(ONE_ERROR ON)
else()
  execute_process(COMMAND ${CMAKE_COMMAND} --build ${BUILD_DIR} --target ${TARGET}
                  RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
endif()
set(log "${out}${err}")
if(rc EQUAL 0)
  message(FATAL_ERROR "compile-fail: ${TARGET} compiled, but it must not")
endif()
string(REPLACE "|" ";" patterns "${PATTERNS}")
foreach(p IN LISTS patterns)
  string(FIND "${log}" "${p}" at)
  if(at EQUAL -1)
    message(FATAL_ERROR "compile-fail: ${TARGET} failed, but its diagnostic lacks \"${p}\":\n${log}")
  endif()
endforeach()
if(ONE_ERROR)
  string(REGEX MATCHALL "error: " errors "${log}")
  list(LENGTH errors n)
  if(NOT n EQUAL 1)
    message(FATAL_ERROR "compile-fail: ${TARGET} failed with ${n} errors; a user's mistake must be one:\n${log}")
  endif()
endif()
message(STATUS "compile-fail: ${TARGET} failed as expected with: ${PATTERNS}")
