# Helpers in the spirit of absl_cc_library / absl_cc_test.
#
#   mp_cc_library(NAME foo SRCS a.cc b.cc DEPS absl::status)
#   mp_cc_test(NAME foo_test SRCS foo_test.cc DEPS mp_foo LABELS cpu)
#
# Libraries are static, named mp_<NAME>; every target sees the repository root as its include
# directory so that headers are included as "common/status.h", "model/config.h", ...

function(mp_cc_library)
  cmake_parse_arguments(MP "" "NAME" "SRCS;DEPS" ${ARGN})
  add_library(mp_${MP_NAME} STATIC ${MP_SRCS})
  target_include_directories(mp_${MP_NAME} PUBLIC ${PROJECT_SOURCE_DIR} ${PROJECT_BINARY_DIR})
  target_link_libraries(mp_${MP_NAME} PUBLIC ${MP_DEPS})
  target_compile_options(mp_${MP_NAME} PRIVATE
    $<$<COMPILE_LANGUAGE:CXX>:-Wall -Wextra -Wno-unused-parameter>)
endfunction()

# One executable per test file, registered with ctest through gtest_discover_tests.
# LABELS: cpu (runs in CI), gpu (needs a GPU), integration (multi-process, CPU).
function(mp_cc_test)
  cmake_parse_arguments(MP "" "NAME;TIMEOUT" "SRCS;DEPS;LABELS;ENV" ${ARGN})
  if(NOT MP_LABELS)
    set(MP_LABELS cpu)
  endif()
  if(NOT MP_TIMEOUT)
    set(MP_TIMEOUT 600)
  endif()
  add_executable(${MP_NAME} ${MP_SRCS})
  target_include_directories(${MP_NAME} PRIVATE ${PROJECT_SOURCE_DIR} ${PROJECT_BINARY_DIR})
  target_link_libraries(${MP_NAME} PRIVATE ${MP_DEPS} GTest::gtest GTest::gtest_main GTest::gmock)
  gtest_discover_tests(${MP_NAME}
    PROPERTIES LABELS "${MP_LABELS}" TIMEOUT ${MP_TIMEOUT} ENVIRONMENT "${MP_ENV}"
    DISCOVERY_TIMEOUT 60)
endfunction()
