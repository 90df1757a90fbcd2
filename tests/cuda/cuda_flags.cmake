# Compile settings of every CUDA target of the project's tests and benchmarks (included by
# tests/cuda and bench/cuda). Targets sm_80 (mma.sync) and sm_90a; C++20; the project's warnings.
find_package(CUDAToolkit REQUIRED)

function(transmla_cuda_target target)
    set_target_properties(${target} PROPERTIES CUDA_ARCHITECTURES "80;90a")
    if("cuda_std_20" IN_LIST CMAKE_CUDA_COMPILE_FEATURES)
        set_target_properties(${target} PROPERTIES CUDA_STANDARD 20 CUDA_STANDARD_REQUIRED ON CUDA_EXTENSIONS OFF)
    else()
        # CMake 3.25 does not know that nvcc ≥ 12 accepts C++20: pass the flag ourselves.
        target_compile_options(${target} PRIVATE $<$<COMPILE_LANGUAGE:CUDA>:-std=c++20>)
    endif()
    target_compile_options(${target} PRIVATE
        $<$<COMPILE_LANGUAGE:CUDA>:-Xcompiler=-Wall,-Wextra $<$<BOOL:${TRANSMLA_WERROR}>:-Xcompiler=-Werror>>)
    target_link_libraries(${target} PUBLIC transmla_cuda CUDA::cudart)
endfunction()
