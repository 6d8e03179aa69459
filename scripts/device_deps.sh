#!/usr/bin/env bash
# Assembles a CMake prefix with the header-only packages veomni's launcher and
# tests need (CLI11, doctest), from this machine's Debian packages, for a
# machine that has none and cannot install them (the device machine of
# scripts/gpu_check.sh: DEPS=OUT_DIR there).
#   scripts/device_deps.sh OUT_DIR
set -euo pipefail
out=${1:?usage: device_deps.sh OUT_DIR}
rm -rf "$out"
mkdir -p "$out/include" "$out/lib/cmake/doctest" "$out/lib/cmake/CLI11"
cp -r /usr/include/CLI "$out/include/"
cp -r /usr/include/doctest "$out/include/"
cp /usr/lib/cmake/doctest/doctest.cmake /usr/lib/cmake/doctest/doctestAddTests.cmake "$out/lib/cmake/doctest/"
cat >"$out/lib/cmake/doctest/doctestConfig.cmake" <<'CFG'
# doctest, header-only, from a prefix assembled by scripts/device_deps.sh
if(NOT TARGET doctest::doctest)
  add_library(doctest::doctest INTERFACE IMPORTED)
  set_target_properties(doctest::doctest PROPERTIES INTERFACE_INCLUDE_DIRECTORIES "${CMAKE_CURRENT_LIST_DIR}/../../../include")
endif()
list(APPEND CMAKE_MODULE_PATH "${CMAKE_CURRENT_LIST_DIR}")
CFG
cat >"$out/lib/cmake/CLI11/CLI11Config.cmake" <<'CFG'
# CLI11, header-only, from a prefix assembled by scripts/device_deps.sh
if(NOT TARGET CLI11::CLI11)
  add_library(CLI11::CLI11 INTERFACE IMPORTED)
  set_target_properties(CLI11::CLI11 PROPERTIES INTERFACE_INCLUDE_DIRECTORIES "${CMAKE_CURRENT_LIST_DIR}/../../../include")
endif()
CFG
echo "device_deps: $(du -sh "$out" | cut -f1) in $out"
