# transmla_cpu.cmake — builds the CPU attention kernels for run-time ISA dispatch.
#
#   include(<prefix>/include/transmla/cpu/transmla_cpu.cmake)   # or found via transmla's config
#   transmla_cpu_kernels(my_transmla_kernels)
#   target_link_libraries(my_app PRIVATE transmla::transmla my_transmla_kernels)
#
# creates a static library <name> holding cpu/isa/{sse2,avx2,avx512,avx512bf16}.cpp, each compiled
# with its own instruction-set flags, and defines TRANSMLA_CPU_DISPATCH=1 for everything that links
# it: cpu/dispatch.hpp then picks the best level the CPU supports at run time. Without it, the
# kernels are compiled inline for each translation unit's own architecture (Isa::native).
# x86-64 with GCC or Clang only; elsewhere <name> is an empty INTERFACE library (native kernels).
set(_TRANSMLA_CPU_ISA_DIR "${CMAKE_CURRENT_LIST_DIR}/isa")

function(transmla_cpu_kernels name)
    if(TARGET ${name})
        return()
    endif()
    set(_x86 OFF)
    if(CMAKE_SYSTEM_PROCESSOR MATCHES "^(x86_64|AMD64|amd64|i[3-6]86)$"
       AND CMAKE_CXX_COMPILER_ID MATCHES "GNU|Clang")
        set(_x86 ON)
    endif()
    if(NOT _x86)
        add_library(${name} INTERFACE)
        target_link_libraries(${name} INTERFACE transmla::transmla)
        return()
    endif()
    include(CheckCXXCompilerFlag)
    check_cxx_compiler_flag(-mavx512bf16 TRANSMLA_CXX_HAS_AVX512BF16)
    set(_no_avx -mno-avx -mno-avx2 -mno-fma -mno-f16c -mno-avx512f)
    set(_avx2 -mavx2 -mfma -mf16c -mno-avx512f)
    set(_avx512 -mavx2 -mfma -mf16c -mavx512f -mavx512bw -mavx512dq -mavx512vl)
    set(_avx512bf16 ${_avx512})
    if(TRANSMLA_CXX_HAS_AVX512BF16)
        list(APPEND _avx512bf16 -mavx512bf16)
    endif()
    set(_objs)
    foreach(isa sse2 avx2 avx512 avx512bf16)
        add_library(${name}_${isa} OBJECT ${_TRANSMLA_CPU_ISA_DIR}/${isa}.cpp)
        target_link_libraries(${name}_${isa} PRIVATE transmla::transmla)
        target_compile_definitions(${name}_${isa} PRIVATE TRANSMLA_CPU_DISPATCH=1)
        if(isa STREQUAL "sse2")
            target_compile_options(${name}_${isa} PRIVATE ${_no_avx})
        else()
            target_compile_options(${name}_${isa} PRIVATE ${_${isa}})
        endif()
        set_target_properties(${name}_${isa} PROPERTIES POSITION_INDEPENDENT_CODE ON)
        list(APPEND _objs $<TARGET_OBJECTS:${name}_${isa}>)
    endforeach()
    add_library(${name} STATIC ${_objs})
    set_target_properties(${name} PROPERTIES LINKER_LANGUAGE CXX)
    target_link_libraries(${name} PUBLIC transmla::transmla)
    target_compile_definitions(${name} PUBLIC TRANSMLA_CPU_DISPATCH=1)
endfunction()
