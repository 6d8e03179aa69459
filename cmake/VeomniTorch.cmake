# Finds LibTorch (and, optionally, NCCL + CUDA) and defines the imported
# targets veomni::torch and veomni::nccl. Shared by the build tree and by the
# installed veomniConfig.cmake, so a consumer links exactly what veomni was
# built with. Sets VEOMNI_HAS_TORCH / VEOMNI_HAS_NCCL / VEOMNI_TORCH_CUDA.
#
# Which LibTorch: the first of
#   Torch_DIR                       a LibTorch's share/cmake/Torch (a CUDA one, or any)
#   VEOMNI_TORCH_PYTHON=python3     the torch of that Python (a CUDA wheel): its
#                                   torch.utils.cmake_prefix_path joins CMAKE_PREFIX_PATH
#   CMAKE_PREFIX_PATH, system       Debian's CPU libtorch-dev (the default)
# CUDA and NCCL come from the CUDA Toolkit CMake finds (CUDAToolkit_ROOT,
# CUDA_HOME, /usr/local/cuda); VEOMNI_NCCL_INCLUDE_DIR / VEOMNI_NCCL_LIBRARY
# name another NCCL (the wheel's nvidia-nccl).
if(VEOMNI_TORCH_PYTHON AND NOT Torch_DIR)
  execute_process(COMMAND ${VEOMNI_TORCH_PYTHON} -c "import torch, sys; sys.stdout.write(torch.utils.cmake_prefix_path)"
                  OUTPUT_VARIABLE _veomni_torch_prefix ERROR_VARIABLE _veomni_torch_err RESULT_VARIABLE _veomni_torch_rc)
  if(NOT _veomni_torch_rc EQUAL 0 OR NOT IS_DIRECTORY "${_veomni_torch_prefix}")
    message(FATAL_ERROR "veomni: VEOMNI_TORCH_PYTHON=${VEOMNI_TORCH_PYTHON} gives no torch CMake prefix "
                        "(import torch failed?): ${_veomni_torch_err}")
  endif()
  list(PREPEND CMAKE_PREFIX_PATH "${_veomni_torch_prefix}")
  message(STATUS "veomni: LibTorch of ${VEOMNI_TORCH_PYTHON}: ${_veomni_torch_prefix}")
endif()
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
  # A CUDA LibTorch (c10_cuda among its libraries): the runtime may place
  # tensors on GPUs, the NCCL communicator orders itself on torch's stream.
  set(VEOMNI_TORCH_CUDA OFF)
  if(TARGET c10_cuda OR "${TORCH_LIBRARIES}" MATCHES "c10_cuda")
    set(VEOMNI_TORCH_CUDA ON)
    set_property(TARGET veomni::torch APPEND PROPERTY INTERFACE_COMPILE_DEFINITIONS VEOMNI_TORCH_CUDA=1)
  endif()
  if(VEOMNI_TORCH_CUDA)
    message(STATUS "veomni: LibTorch ${Torch_VERSION} at ${Torch_DIR}, with CUDA")
  else()
    message(STATUS "veomni: LibTorch ${Torch_VERSION} at ${Torch_DIR} (CPU only)")
  endif()
else()
  set(VEOMNI_HAS_TORCH OFF)
endif()

if(VEOMNI_HAS_TORCH AND (NOT DEFINED VEOMNI_WITH_NCCL OR VEOMNI_WITH_NCCL))
  find_package(CUDAToolkit QUIET)  # CUDAToolkit_ROOT, CUDA_HOME or nvcc on PATH
  set(_veomni_cuda_hints ${CUDAToolkit_LIBRARY_ROOT} ${CUDAToolkit_TARGET_DIR} $ENV{CUDA_HOME} /usr/local/cuda)
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
