# CUDA kernels (sm_90a). Included from kernels/CMakeLists.txt when MP_HAVE_CUDA.
#
# Needs the CUTLASS/CuTe headers (header-only). They come from the PyPI wheel nvidia-cutlass
# (`pip install --no-deps nvidia-cutlass==4.2.0.0`; headers under
# site-packages/cutlass_library/source/include) or from any CUTLASS >= 3.5 checkout: pass
# -DMP_CUTLASS_INCLUDE_DIR=<dir holding cute/ and cutlass/> to choose one.

if(NOT MP_CUTLASS_INCLUDE_DIR)
  find_package(Python3 COMPONENTS Interpreter QUIET)
  if(Python3_Interpreter_FOUND)
    # find_spec locates the package without importing it (its __init__ needs extra modules).
    set(_mp_find_cutlass
      "import importlib.util, os"
      "s = importlib.util.find_spec('cutlass_library')"
      "d = list(s.submodule_search_locations)[0] if s else ''"
      "print(os.path.join(d, 'source', 'include') if d else '')")
    list(JOIN _mp_find_cutlass "; " _mp_find_cutlass)
    execute_process(COMMAND ${Python3_EXECUTABLE} -c "${_mp_find_cutlass}"
      OUTPUT_VARIABLE _mp_cutlass_guess OUTPUT_STRIP_TRAILING_WHITESPACE ERROR_QUIET)
  endif()
  find_path(MP_CUTLASS_INCLUDE_DIR cute/tensor.hpp
    HINTS ${_mp_cutlass_guess} ENV CUTLASS_INCLUDE_DIR
    DOC "Directory holding the CUTLASS headers cute/ and cutlass/")
endif()
if(NOT MP_CUTLASS_INCLUDE_DIR OR NOT EXISTS "${MP_CUTLASS_INCLUDE_DIR}/cute/tensor.hpp")
  message(FATAL_ERROR "CUTLASS headers not found: pip install --no-deps nvidia-cutlass==4.2.0.0 "
                      "or pass -DMP_CUTLASS_INCLUDE_DIR=<dir with cute/tensor.hpp>")
endif()
message(STATUS "CUTLASS headers: ${MP_CUTLASS_INCLUDE_DIR}")

# The kernels use wgmma and setmaxnreg, which exist only on the sm_90a target.
add_library(mp_kernels_cuda STATIC
  ${CMAKE_CURRENT_LIST_DIR}/paged_prefill_attention.cu
  ${CMAKE_CURRENT_LIST_DIR}/paged_prefill_attention_hd64.cu
  ${CMAKE_CURRENT_LIST_DIR}/paged_prefill_attention_hd128.cu
  ${CMAKE_CURRENT_LIST_DIR}/paged_prefill_dca_attention.cu
  ${CMAKE_CURRENT_LIST_DIR}/paged_prefill_dca_attention_hd64.cu
  ${CMAKE_CURRENT_LIST_DIR}/paged_prefill_dca_attention_hd128.cu
  ${CMAKE_CURRENT_LIST_DIR}/vertical_slash_estimate.cu
  ${CMAKE_CURRENT_LIST_DIR}/vertical_slash_index.cu
  ${CMAKE_CURRENT_LIST_DIR}/vertical_slash_attention.cu
  ${CMAKE_CURRENT_LIST_DIR}/vertical_slash_attention_hd64.cu
  ${CMAKE_CURRENT_LIST_DIR}/vertical_slash_attention_hd128.cu
  ${CMAKE_CURRENT_LIST_DIR}/vertical_slash_prefill.cu
  ${CMAKE_CURRENT_LIST_DIR}/decode_attention.cu
  ${CMAKE_CURRENT_LIST_DIR}/decode_attention_hd64.cu
  ${CMAKE_CURRENT_LIST_DIR}/decode_attention_hd128.cu
  ${CMAKE_CURRENT_LIST_DIR}/tma_tensor_map.cu
  # The CUDA backend's other ops (bf16 storage, fp32 math).
  ${CMAKE_CURRENT_LIST_DIR}/convert.cu
  ${CMAKE_CURRENT_LIST_DIR}/elementwise.cu
  ${CMAKE_CURRENT_LIST_DIR}/generic_attention.cu
  ${CMAKE_CURRENT_LIST_DIR}/kv_write.cu
  ${CMAKE_CURRENT_LIST_DIR}/random_fill.cu
  ${CMAKE_CURRENT_LIST_DIR}/rope.cu
  ${CMAKE_CURRENT_LIST_DIR}/sampling.cu)
set_target_properties(mp_kernels_cuda PROPERTIES
  CUDA_ARCHITECTURES 90a
  CUDA_STANDARD 17
  CUDA_STANDARD_REQUIRED ON
  POSITION_INDEPENDENT_CODE ON)
target_include_directories(mp_kernels_cuda PUBLIC ${PROJECT_SOURCE_DIR})
target_include_directories(mp_kernels_cuda SYSTEM PRIVATE ${MP_CUTLASS_INCLUDE_DIR})
target_compile_options(mp_kernels_cuda PRIVATE
  $<$<COMPILE_LANGUAGE:CUDA>:--expt-relaxed-constexpr -O3>)
target_link_libraries(mp_kernels_cuda PUBLIC CUDA::cudart)
