# Compiles SRC twice: with -DTRANSMLA_CONTROL it must compile (the snippet is otherwise valid),
# without it it must fail with a diagnostic matching the snippet's `// expect: <regex>` line.
file(STRINGS ${SRC} expect_line REGEX "^// expect: ")
string(REGEX REPLACE "^// expect: " "" expect "${expect_line}")
if(expect STREQUAL "")
    message(FATAL_ERROR "${SRC} has no '// expect: <regex>' line")
endif()
separate_arguments(flags UNIX_COMMAND "${FLAGS}")
execute_process(COMMAND ${CXX} ${flags} -DTRANSMLA_CONTROL -fsyntax-only ${SRC}
                RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
if(NOT rc EQUAL 0)
    message(FATAL_ERROR "control build of ${SRC} failed, so the test would prove nothing:\n${err}")
endif()
execute_process(COMMAND ${CXX} ${flags} -fsyntax-only ${SRC}
                RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
if(rc EQUAL 0)
    message(FATAL_ERROR "${SRC} compiled but must not")
endif()
if(NOT err MATCHES "${expect}")
    message(FATAL_ERROR "${SRC} failed to compile, but not with the expected message '${expect}':\n${err}")
endif()
message(STATUS "failed to compile as expected: ${expect}")
