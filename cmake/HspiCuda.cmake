# Ahead-of-time CUDA build of the probe kernels.
#
# Each .cu file pins the flags that change its numerics on a line of its own:
#     // hspi-build: -fmad=false
# and may restrict the arches it is built for (wgmma needs sm_90a):
#     // hspi-build-archs: 90a
# A .cu file without an explicit -fmad=... in its hspi-build line is a configure error: FMA
# contraction changes results, so it is never left to nvcc's default. The NVRTC fallback of the
# runtime loader reads the same line from the same (installed) source, so both paths agree.
set(HSPI_CUDA "AUTO" CACHE STRING "Build CUDA cubins: AUTO, ON or OFF")
set(HSPI_CUDA_ARCHS "90a" CACHE STRING "Semicolon/comma separated SM arches for the cubins, e.g. 90a;80;89")
string(REPLACE "," ";" HSPI_CUDA_ARCHS "${HSPI_CUDA_ARCHS}")
string(TOUPPER "${HSPI_CUDA}" HSPI_CUDA)

set(HSPI_NVCC "")
if(NOT HSPI_CUDA STREQUAL "OFF")
  find_program(HSPI_NVCC_EXE nvcc HINTS ENV CUDA_HOME ENV CUDA_PATH PATH_SUFFIXES bin
               PATHS /usr/local/cuda/bin)
  if(HSPI_NVCC_EXE)
    set(HSPI_NVCC "${HSPI_NVCC_EXE}")
  elseif(HSPI_CUDA STREQUAL "ON")
    message(FATAL_ERROR "HSPI_CUDA=ON but nvcc was not found (set CUDA_HOME or put nvcc on PATH)")
  endif()
endif()

set(HSPI_NVCC_VERSION "")
set(HSPI_CUBIN_ENTRIES "")
file(GLOB_RECURSE HSPI_CU_SOURCES CONFIGURE_DEPENDS RELATIVE ${CMAKE_CURRENT_SOURCE_DIR}/csrc/cuda
     ${CMAKE_CURRENT_SOURCE_DIR}/csrc/cuda/*.cu)
list(SORT HSPI_CU_SOURCES)
# Headers shared by the kernels (e.g. gemm/splitk_combine.cuh): every cubin depends on all of
# them (included as "family/name.cuh" relative to csrc/cuda), so editing one rebuilds its users.
file(GLOB_RECURSE HSPI_CUH_HEADERS CONFIGURE_DEPENDS ${CMAKE_CURRENT_SOURCE_DIR}/csrc/cuda/*.cuh)

# Flags read from each source are needed by the build-info even without nvcc.
function(hspi_read_cu_flags rel out_flags out_archs)
  file(STRINGS ${CMAKE_CURRENT_SOURCE_DIR}/csrc/cuda/${rel} lines REGEX "^// hspi-build(-archs)?:")
  set(flags "")
  set(archs "${HSPI_CUDA_ARCHS}")
  foreach(line IN LISTS lines)
    if(line MATCHES "^// hspi-build: (.*)$")
      separate_arguments(flags UNIX_COMMAND "${CMAKE_MATCH_1}")
    elseif(line MATCHES "^// hspi-build-archs: (.*)$")
      string(REPLACE "," ";" wanted "${CMAKE_MATCH_1}")
      string(STRIP "${wanted}" wanted)
      separate_arguments(wanted UNIX_COMMAND "${wanted}")
      # built for the requested arches this kernel supports
      set(archs "")
      foreach(a IN LISTS HSPI_CUDA_ARCHS)
        if(a IN_LIST wanted)
          list(APPEND archs ${a})
        endif()
      endforeach()
    endif()
  endforeach()
  string(REGEX MATCH "-fmad=(true|false)" has_fmad "${flags}")
  if(NOT has_fmad)
    message(FATAL_ERROR "csrc/cuda/${rel}: missing '// hspi-build: -fmad=true|false' line (FMA contraction must be pinned per kernel)")
  endif()
  set(${out_flags} "${flags}" PARENT_SCOPE)
  set(${out_archs} "${archs}" PARENT_SCOPE)
endfunction()

set(HSPI_COMMON_NVCC_FLAGS -O3 -std=c++17 -lineinfo)
set(HSPI_ALL_CUBINS "")
# cubins to build, for the progress lines ("hspi: cubin 3/14 ...")
set(HSPI_CUBIN_TOTAL 0)
foreach(rel IN LISTS HSPI_CU_SOURCES)
  hspi_read_cu_flags(${rel} flags archs)
  list(LENGTH archs n)
  math(EXPR HSPI_CUBIN_TOTAL "${HSPI_CUBIN_TOTAL} + ${n}")
endforeach()
set(HSPI_CUBIN_INDEX 0)
if(HSPI_NVCC)
  message(STATUS "hspi: ${HSPI_CUBIN_TOTAL} CUDA cubins will be built with ${HSPI_NVCC} (about a minute; HSPI_CUDA=OFF skips them)")
endif()
foreach(rel IN LISTS HSPI_CU_SOURCES)
  hspi_read_cu_flags(${rel} flags archs)
  get_filename_component(family ${rel} DIRECTORY)
  get_filename_component(stem ${rel} NAME_WE)
  string(REPLACE ";" "\", \"" flags_py "${flags}")
  foreach(arch IN LISTS archs)
    set(cubin_rel "${family}/${stem}.sm_${arch}.cubin")
    set(built "False")
    if(HSPI_NVCC)
      set(out ${CMAKE_CURRENT_BINARY_DIR}/cubins/${cubin_rel})
      math(EXPR HSPI_CUBIN_INDEX "${HSPI_CUBIN_INDEX} + 1")
      add_custom_command(
        OUTPUT ${out}
        COMMAND ${CMAKE_COMMAND} "-DMSG=hspi: CUDA ${family} ${HSPI_CUBIN_INDEX}/${HSPI_CUBIN_TOTAL}: nvcc sm_${arch} ${rel}"
                -P ${CMAKE_CURRENT_SOURCE_DIR}/cmake/HspiProgress.cmake
        COMMAND ${CMAKE_COMMAND} -E make_directory ${CMAKE_CURRENT_BINARY_DIR}/cubins/${family}
        COMMAND ${HSPI_NVCC} -cubin -arch=sm_${arch} ${HSPI_COMMON_NVCC_FLAGS} ${flags}
                -I${CMAKE_CURRENT_SOURCE_DIR}/csrc/cuda -o ${out}
                ${CMAKE_CURRENT_SOURCE_DIR}/csrc/cuda/${rel}
        DEPENDS ${CMAKE_CURRENT_SOURCE_DIR}/csrc/cuda/${rel} ${HSPI_CUH_HEADERS}
        COMMENT "nvcc sm_${arch} ${rel}"
        VERBATIM)
      list(APPEND HSPI_ALL_CUBINS ${out})
      install(FILES ${out} DESTINATION hspi_kernels/cubins/${family})
      set(built "True")
    endif()
    string(REPLACE ";" "\", \"" common_py "${HSPI_COMMON_NVCC_FLAGS}")
    string(APPEND HSPI_CUBIN_ENTRIES
      "    {\"source\": \"${rel}\", \"arch\": \"sm_${arch}\", \"cubin\": \"${cubin_rel}\", \"flags\": [\"${common_py}\", \"${flags_py}\"], \"built\": ${built}},\n")
  endforeach()
endforeach()
if(HSPI_ALL_CUBINS)
  add_custom_target(hspi_cubins ALL DEPENDS ${HSPI_ALL_CUBINS})
endif()

# The CUDA sources ship with the package for the NVRTC fallback and for inspection.
install(DIRECTORY ${CMAKE_CURRENT_SOURCE_DIR}/csrc/cuda/ DESTINATION hspi_kernels/cuda_src
        FILES_MATCHING PATTERN "*.cu" PATTERN "*.cuh")

if(HSPI_NVCC)
  execute_process(COMMAND ${HSPI_NVCC} --version OUTPUT_VARIABLE nvcc_out OUTPUT_STRIP_TRAILING_WHITESPACE)
  string(REGEX MATCH "release [0-9]+\\.[0-9]+, V[0-9.]+" HSPI_NVCC_VERSION "${nvcc_out}")
endif()
string(REPLACE ";" "\", \"" archs_py "${HSPI_CUDA_ARCHS}")
configure_file(${CMAKE_CURRENT_SOURCE_DIR}/cmake/_build_info.py.in
               ${CMAKE_CURRENT_BINARY_DIR}/_build_info.py @ONLY)
install(FILES ${CMAKE_CURRENT_BINARY_DIR}/_build_info.py DESTINATION hspi_kernels)
