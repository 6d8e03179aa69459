# Finds LibTorch (and, optionally, NCCL + CUDA) and defines the imported
# targets veomni::torch and veomni::nccl. Shared by the build tree and by the
# installed veomniConfig.cmake, so a consumer links exactly what veomni was
# built with. Sets VEOMNI_HAS_TORCH / VEOMNI_HAS_NCCL.
find_package(Torch QUIET)
if(Torch_FOUND OR TORCH_FOUND)
  set(VEOMNI_HAS_TORCH ON)
  if(NOT TARGET veomni::torch)
    add_library(veomni::torch INTERFACE IMPORTED)
    # TORCH_LIBRARIES carries torch, c10 and (for CUDA wheels) the CUDA libraries;
    # TORCH_CXX_FLAGS carries the ABI define the libraries were built with.
    separate_arguments(_veomni_torch_flags UNIX_COMMAND "${TORCH_CXX_FLAGS}")
    set_target_properties(veomni::torch PROPERTIES
      INTERFACE_LINK_LIBRARIES "${TORCH_LIBRARIES}"
      INTERFACE_INCLUDE_DIRECTORIES "${TORCH_INCLUDE_DIRS}"
      INTERFACE_COMPILE_OPTIONS "${_veomni_torch_flags}")
    # ATen's at::parallel_for is a header template: with an OpenMP build of
    # LibTorch (ATen/Config.h: AT_PARALLEL_OPENMP 1, as Debian's) its
    # `#pragma omp parallel` is compiled into *our* translation units, and
    # without -fopenmp it silently runs on one thread: every veomni CPU kernel
    # (flash attention, norms, RoPE, loss, AdamW) would then use one core
    # whatever at::set_num_threads says. LibTorch's CMake config does not add
    # the flag, so we do, with the OpenMP runtime LibTorch links (GCC's).
    set(_veomni_aten_config "")
    foreach(_dir IN LISTS TORCH_INCLUDE_DIRS)
      if(NOT _veomni_aten_config AND EXISTS "${_dir}/ATen/Config.h")
        set(_veomni_aten_config "${_dir}/ATen/Config.h")
      endif()
    endforeach()
    if(_veomni_aten_config)
      file(STRINGS "${_veomni_aten_config}" _veomni_omp REGEX "#define AT_PARALLEL_OPENMP 1")
      if(_veomni_omp)
        find_package(OpenMP QUIET COMPONENTS CXX)
        if(OpenMP_CXX_FOUND AND CMAKE_CXX_COMPILER_ID STREQUAL "GNU")
          set_property(TARGET veomni::torch APPEND PROPERTY INTERFACE_LINK_LIBRARIES OpenMP::OpenMP_CXX)
        else()
          message(WARNING "veomni: LibTorch parallelises with OpenMP but ${CMAKE_CXX_COMPILER_ID} has no GCC-compatible "
                          "OpenMP here: veomni's CPU kernels will run on one thread")
        endif()
      endif()
    endif()
  endif()
else()
  set(VEOMNI_HAS_TORCH OFF)
endif()

if(VEOMNI_HAS_TORCH AND (NOT DEFINED VEOMNI_WITH_NCCL OR VEOMNI_WITH_NCCL))
  set(_veomni_cuda_hints $ENV{CUDA_HOME} /usr/local/cuda)
  find_path(VEOMNI_NCCL_INCLUDE_DIR nccl.h HINTS ${_veomni_cuda_hints} PATH_SUFFIXES include)
  find_library(VEOMNI_NCCL_LIBRARY nccl HINTS ${_veomni_cuda_hints} PATH_SUFFIXES lib64 lib)
  find_path(VEOMNI_CUDART_INCLUDE_DIR cuda_runtime_api.h HINTS ${_veomni_cuda_hints} PATH_SUFFIXES include)
  find_library(VEOMNI_CUDART_LIBRARY cudart HINTS ${_veomni_cuda_hints} PATH_SUFFIXES lib64 lib)
  if(VEOMNI_NCCL_INCLUDE_DIR AND VEOMNI_NCCL_LIBRARY AND VEOMNI_CUDART_INCLUDE_DIR AND VEOMNI_CUDART_LIBRARY)
    set(VEOMNI_HAS_NCCL ON)
    if(NOT TARGET veomni::nccl)
      add_library(veomni::nccl INTERFACE IMPORTED)
      set_target_properties(veomni::nccl PROPERTIES
        INTERFACE_INCLUDE_DIRECTORIES "${VEOMNI_NCCL_INCLUDE_DIR};${VEOMNI_CUDART_INCLUDE_DIR}"
        INTERFACE_LINK_LIBRARIES "${VEOMNI_NCCL_LIBRARY};${VEOMNI_CUDART_LIBRARY}"
        INTERFACE_COMPILE_DEFINITIONS "VEOMNI_WITH_NCCL=1")
    endif()
  endif()
endif()
