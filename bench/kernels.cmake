# CPU kernel benchmarks (included from bench/CMakeLists.txt): prints JSON lines.
add_executable(kernels_bench ${CMAKE_CURRENT_LIST_DIR}/kernels_bench.cc)
target_include_directories(kernels_bench PRIVATE ${PROJECT_SOURCE_DIR})
target_link_libraries(kernels_bench PRIVATE mp_kernels_cpu)
