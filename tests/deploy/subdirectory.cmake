# A consumer that vendors veomni with add_subdirectory: only the library
# targets appear (tests, examples and benchmarks are off when not top-level).
file(REMOVE_RECURSE ${WORK_DIR})
file(MAKE_DIRECTORY ${WORK_DIR}/src)
file(WRITE ${WORK_DIR}/src/CMakeLists.txt "cmake_minimum_required(VERSION 3.22)
project(vendoring LANGUAGES CXX)
add_subdirectory(${SOURCE_DIR} veomni)
if(TARGET test_core OR TARGET plan_explainer)
  message(FATAL_ERROR \"veomni built its tests or examples as a subproject\")
endif()
add_executable(app app.cpp)
target_link_libraries(app PRIVATE veomni::core)
")
file(WRITE ${WORK_DIR}/src/app.cpp "#include <veomni/core.hpp>
using m = veomni::graph<veomni::nodes<veomni::node<\"p\", veomni::projector>>>;
static_assert(veomni::plan<m, veomni::recipe<veomni::apply<\"p\", veomni::Shard<veomni::FSDP>>>>::size == 4);
int main() {}
")
execute_process(COMMAND ${CMAKE_COMMAND} -S ${WORK_DIR}/src -B ${WORK_DIR}/build -G Ninja
                        -DCMAKE_CXX_COMPILER=${CXX} -DVEOMNI_WITH_TORCH=OFF RESULT_VARIABLE rc)
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "add_subdirectory consumer: configure failed")
endif()
execute_process(COMMAND ${CMAKE_COMMAND} --build ${WORK_DIR}/build RESULT_VARIABLE rc)
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "add_subdirectory consumer: build failed")
endif()
message(STATUS "add_subdirectory consumer built")
