# Sanitizer builds of veomni's own targets: tests, tools (veomni-train,
# veomni-launch, veomni-dataset), workers, examples, benchmarks.
#   cmake -DVEOMNI_SANITIZE=address,undefined ...   (the `asan` preset does this)
# The value is passed to -fsanitize= as is; address,undefined is what the preset
# uses and what the suite has been run under.
# These are build settings of this tree, not usage requirements: the installed
# veomni::* targets carry none of them, and LibTorch, Gloo and the other system
# libraries stay uninstrumented (ASan still sees their heap through its malloc
# interposition, so leaks and frees of their memory are checked; their loads
# and stores are not).
# (VEOMNI_SANITIZE is declared with every other option in the top-level CMakeLists.txt.)
if(VEOMNI_SANITIZE)
  set(_veomni_sanitize_flags -fsanitize=${VEOMNI_SANITIZE} -fno-omit-frame-pointer)
  if(VEOMNI_SANITIZE MATCHES "undefined")
    # Undefined behaviour aborts the process, so a test fails instead of
    # printing a line nobody reads. The vptr check stays on: Debian's LibTorch
    # is built with RTTI and exports its type_info, which is all the check
    # reads of an object that uninstrumented code created.
    list(APPEND _veomni_sanitize_flags -fno-sanitize-recover=undefined)
  endif()
  add_compile_options(${_veomni_sanitize_flags})
  add_link_options(-fsanitize=${VEOMNI_SANITIZE})
  message(STATUS "veomni: sanitizers on: ${_veomni_sanitize_flags}")
endif()
