# Tokenizer encode throughput (included from bench/CMakeLists.txt): prints one JSON line.
add_executable(tokenizer_bench ${CMAKE_CURRENT_LIST_DIR}/tokenizer_bench.cc)
target_include_directories(tokenizer_bench PRIVATE ${PROJECT_SOURCE_DIR})
target_link_libraries(tokenizer_bench PRIVATE mp_tokenizer)
