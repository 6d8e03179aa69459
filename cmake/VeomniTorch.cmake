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
