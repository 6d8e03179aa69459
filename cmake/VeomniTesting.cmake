# Test helpers. Every test carries a ctest label naming its area
# (core, comm, nn, parallel, train, e2e, reliability).
find_package(doctest REQUIRED)
include(doctest)

# Sanitized builds run slower: every TIMEOUT given to veomni_add_doctest is
# multiplied by this (ctest's --timeout only sets the default for tests
# without one). The `asan` preset sets it.
# (VEOMNI_TEST_TIMEOUT_SCALE: the top-level CMakeLists.txt, with every other option.)

# One executable per area keeps heavy (torch) translation units few; each
# doctest TEST_CASE becomes its own ctest test carrying LABEL.
#   veomni_add_doctest(NAME n LABEL l SOURCES a.cpp... [LIBS ...] [PROPERTIES ...])
function(veomni_add_doctest)
  cmake_parse_arguments(T "" "NAME;LABEL" "SOURCES;LIBS;PROPERTIES" ${ARGN})
  list(FIND T_PROPERTIES TIMEOUT i)
  if(i GREATER_EQUAL 0 AND NOT VEOMNI_TEST_TIMEOUT_SCALE EQUAL 1)
    math(EXPR i "${i} + 1")
    list(GET T_PROPERTIES ${i} t)
    math(EXPR t "${t} * ${VEOMNI_TEST_TIMEOUT_SCALE}")
    list(REMOVE_AT T_PROPERTIES ${i})
    list(INSERT T_PROPERTIES ${i} ${t})
  endif()
  # ctest (doctest_discover_tests) splits a test name at ';' into names that
  # match no case, and doctest passes a filter that matches nothing: such a
  # case would never run. Refused here, at configure time.
  foreach(src IN LISTS T_SOURCES)
    file(STRINGS ${CMAKE_CURRENT_SOURCE_DIR}/${src} bad REGEX "TEST_CASE\\(\"[^\"]*;")
    if(bad)
      message(FATAL_ERROR "${CMAKE_CURRENT_SOURCE_DIR}/${src}: a TEST_CASE name holds ';', which splits it in ctest "
                          "into names that run nothing; use ',' or '-' instead:\n${bad}")
    endif()
  endforeach()
  add_executable(${T_NAME} ${T_SOURCES})
  target_link_libraries(${T_NAME} PRIVATE doctest::doctest ${T_LIBS})
  target_compile_options(${T_NAME} PRIVATE -Wall -Wextra)
  doctest_discover_tests(${T_NAME}
    TEST_PREFIX "${T_LABEL}."
    PROPERTIES LABELS ${T_LABEL} ${T_PROPERTIES})
endfunction()

# A compile-fail case is one source compiled twice: as is it must compile
# (so the failure is caused by the one guarded line, not a typo elsewhere),
# and with VEOMNI_COMPILE_FAIL defined it must fail with exactly one error
# whose diagnostic contains each of MESSAGES (plain substrings). GCC_MESSAGES
# are checked too when the compiler is GCC, which prints string template
# arguments readably (the node's name, say).
# SECOND_COMPILER (torch-free sources only): the case also runs under the
# second compiler, VEOMNI_DIAGNOSTICS_CLANG (clang++ when the build's is GCC),
# as the test <label>.compile_fail_clang.<name>: one error, MESSAGES and
# CLANG_MESSAGES.
#   veomni_add_compile_fail(NAME n SOURCE f.cpp LABEL l MESSAGES m... [GCC_MESSAGES m...]
#                           [CLANG_MESSAGES m...] [SECOND_COMPILER] [LIBS ...])
set(VEOMNI_COMPILE_FAIL_SCRIPT ${CMAKE_CURRENT_LIST_DIR}/compile_fail.cmake)
set(veomni_second_compiler "")
if(VEOMNI_DIAGNOSTICS_CLANG)
  set(veomni_second_compiler "${VEOMNI_DIAGNOSTICS_CLANG}")
elseif(NOT DEFINED CACHE{VEOMNI_DIAGNOSTICS_CLANG} OR VEOMNI_DIAGNOSTICS_CLANG STREQUAL "")
  if(CMAKE_CXX_COMPILER_ID STREQUAL "GNU")
    find_program(VEOMNI_CLANG_FOUND NAMES clang++-14 clang++ DOC "clang++ for the second-compiler compile-fail tests")
    if(VEOMNI_CLANG_FOUND)
      set(veomni_second_compiler "${VEOMNI_CLANG_FOUND}")
    endif()
  endif()
endif()
function(veomni_add_compile_fail)
  cmake_parse_arguments(T "SECOND_COMPILER" "NAME;SOURCE;LABEL" "MESSAGES;GCC_MESSAGES;CLANG_MESSAGES;LIBS" ${ARGN})
  add_library(${T_NAME}_ok OBJECT ${T_SOURCE})
  target_link_libraries(${T_NAME}_ok PRIVATE ${T_LIBS})
  add_library(${T_NAME}_fail OBJECT EXCLUDE_FROM_ALL ${T_SOURCE})
  target_link_libraries(${T_NAME}_fail PRIVATE ${T_LIBS})
  target_compile_definitions(${T_NAME}_fail PRIVATE VEOMNI_COMPILE_FAIL=1)
  set(patterns ${T_MESSAGES})
  if(CMAKE_CXX_COMPILER_ID STREQUAL "GNU")
    list(APPEND patterns ${T_GCC_MESSAGES})
  elseif(CMAKE_CXX_COMPILER_ID MATCHES "Clang")
    list(APPEND patterns ${T_CLANG_MESSAGES})
  endif()
  string(REPLACE ";" "|" patterns "${patterns}")
  add_test(NAME ${T_LABEL}.compile_fail.${T_NAME}
    COMMAND ${CMAKE_COMMAND} -DBUILD_DIR=${CMAKE_BINARY_DIR} -DTARGET=${T_NAME}_fail
            "-DPATTERNS=${patterns}" -DONE_ERROR=ON -P ${VEOMNI_COMPILE_FAIL_SCRIPT})
  set_tests_properties(${T_LABEL}.compile_fail.${T_NAME} PROPERTIES
    LABELS "${T_LABEL};compile_fail"
    # compile-fail builds share the build tree's ninja lock
    RESOURCE_LOCK veomni_build_tree)
  if(T_SECOND_COMPILER AND veomni_second_compiler)
    set(second ${T_MESSAGES} ${T_CLANG_MESSAGES})
    string(REPLACE ";" "|" second "${second}")
    add_test(NAME ${T_LABEL}.compile_fail_clang.${T_NAME}
      COMMAND ${CMAKE_COMMAND} "-DCOMPILER=${veomni_second_compiler}"
              -DSOURCE=${CMAKE_CURRENT_SOURCE_DIR}/${T_SOURCE} -DTARGET=${T_NAME}
              "-DFLAGS=-I${PROJECT_SOURCE_DIR}/include|-I${PROJECT_SOURCE_DIR}"
              "-DPATTERNS=${second}" -P ${VEOMNI_COMPILE_FAIL_SCRIPT})
    set_tests_properties(${T_LABEL}.compile_fail_clang.${T_NAME} PROPERTIES LABELS "${T_LABEL};compile_fail")
  endif()
endfunction()

# Torch translation units cost ~10 s and 1 GB each: targets that include
# <torch/torch.h> share one precompiled header.
#   veomni_use_torch_pch(target)
function(veomni_use_torch_pch target)
  if(NOT TARGET veomni_torch_pch)
    file(CONFIGURE OUTPUT ${CMAKE_BINARY_DIR}/veomni_torch_pch.cpp CONTENT "int veomni_torch_pch_anchor;\n")
    add_library(veomni_torch_pch STATIC ${CMAKE_BINARY_DIR}/veomni_torch_pch.cpp)
    target_link_libraries(veomni_torch_pch PUBLIC veomni::veomni)
    target_compile_options(veomni_torch_pch PRIVATE -Wall -Wextra)
    target_precompile_headers(veomni_torch_pch PRIVATE <torch/torch.h>)
  endif()
  target_precompile_headers(${target} REUSE_FROM veomni_torch_pch)
endfunction()
