# Test helpers. Every test carries a ctest label naming its area
# (core, comm, nn, parallel, train, e2e, reliability).
find_package(doctest REQUIRED)
include(doctest)

# One executable per area keeps heavy (torch) translation units few; each
# doctest TEST_CASE becomes its own ctest test carrying LABEL.
#   veomni_add_doctest(NAME n LABEL l SOURCES a.cpp... [LIBS ...] [PROPERTIES ...])
function(veomni_add_doctest)
  cmake_parse_arguments(T "" "NAME;LABEL" "SOURCES;LIBS;PROPERTIES" ${ARGN})
  add_executable(${T_NAME} ${T_SOURCES})
  target_link_libraries(${T_NAME} PRIVATE doctest::doctest ${T_LIBS})
  target_compile_options(${T_NAME} PRIVATE -Wall -Wextra)
  doctest_discover_tests(${T_NAME}
    TEST_PREFIX "${T_LABEL}."
    PROPERTIES LABELS ${T_LABEL} ${T_PROPERTIES})
endfunction()

# A compile-fail case is one source compiled twice: as is it must compile
# (so the failure below is caused by the one guarded line, not a typo), and
# with VEOMNI_COMPILE_FAIL defined it must fail with a message matching REGEX.
#   veomni_add_compile_fail(NAME n SOURCE f.cpp REGEX re LABEL l LIBS ...)
function(veomni_add_compile_fail)
  cmake_parse_arguments(T "" "NAME;SOURCE;REGEX;LABEL" "LIBS" ${ARGN})
  add_library(${T_NAME}_ok OBJECT ${T_SOURCE})
  target_link_libraries(${T_NAME}_ok PRIVATE ${T_LIBS})
  add_library(${T_NAME}_fail OBJECT EXCLUDE_FROM_ALL ${T_SOURCE})
  target_link_libraries(${T_NAME}_fail PRIVATE ${T_LIBS})
  target_compile_definitions(${T_NAME}_fail PRIVATE VEOMNI_COMPILE_FAIL=1)
  add_test(NAME ${T_LABEL}.compile_fail.${T_NAME}
    COMMAND ${CMAKE_COMMAND} --build ${CMAKE_BINARY_DIR} --target ${T_NAME}_fail)
  set_tests_properties(${T_LABEL}.compile_fail.${T_NAME} PROPERTIES
    LABELS "${T_LABEL};compile_fail"
    PASS_REGULAR_EXPRESSION "${T_REGEX}"
    # several compile-fail builds in parallel would race on the build tree
    RESOURCE_LOCK veomni_build_tree)
endfunction()
