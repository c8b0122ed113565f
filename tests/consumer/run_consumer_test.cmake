# Installs the funnel build tree into a scratch prefix, then configures,
# builds and runs tests/consumer against it, as a host project would.
# Inputs: FUNNEL_BINARY_DIR, FUNNEL_CONSUMER_SOURCE, FUNNEL_WORK_DIR, CMAKE_BUILD_TYPE.
file(REMOVE_RECURSE "${FUNNEL_WORK_DIR}")
set(prefix "${FUNNEL_WORK_DIR}/prefix")

function(run_step)
  execute_process(COMMAND ${ARGN} RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "step failed (${rc}): ${ARGN}\n${out}\n${err}")
  endif()
  message(STATUS "${out}")
endfunction()

run_step(${CMAKE_COMMAND} --install "${FUNNEL_BINARY_DIR}" --prefix "${prefix}")
foreach(f include/funnel/funnel.hpp lib/cmake/funnel/funnelConfig.cmake)
  if(NOT EXISTS "${prefix}/${f}")
    message(FATAL_ERROR "install is missing ${f}")
  endif()
endforeach()
run_step(${CMAKE_COMMAND} -S "${FUNNEL_CONSUMER_SOURCE}" -B "${FUNNEL_WORK_DIR}/build"
         -DCMAKE_PREFIX_PATH=${prefix} -DCMAKE_BUILD_TYPE=${CMAKE_BUILD_TYPE})
run_step(${CMAKE_COMMAND} --build "${FUNNEL_WORK_DIR}/build")
run_step("${FUNNEL_WORK_DIR}/build/consumer")
