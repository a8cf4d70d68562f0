# Transfer bandwidth bench (local, ucx tcp/shm, against memcpy). Prints JSON lines.
add_executable(mp_transfer_bench ${CMAKE_CURRENT_LIST_DIR}/transfer_bench.cc)
target_link_libraries(mp_transfer_bench PRIVATE mp_kvtransfer CLI11::CLI11)
