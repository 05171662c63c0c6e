# cudasim: rewrites one CUDA source of the backend (cuda/*.cu) into C++ that a host compiler
# builds against tests/cudasim/include. Usage:
#   cmake -DIN=cuda/conv.cu -DOUT=build/.../conv.cpp -P tests/cudasim/translate.cmake
# Six rewrites, none of which changes the line count (diagnostics keep the .cu lines):
#   k<<<grid, block, smem, stream>>>(args)  ->  k | ::cudasim::config(grid, ...) | ::cudasim::args(args)
#   extern __shared__ [__align__(n)] T name[];  ->  T* name = ::cudasim::dynamic_shared<T>();
#   __shared__ T name[dims];  ->  auto& name = ::cudasim::block_shared<T[dims], __LINE__>();
#   __launch_bounds__(b) signature {  ->  signature { ::cudasim::launch_bounds(b);
#   #pragma unroll [n]  ->  a comment (Clang honours it on the host and warns, -Wpass-failed,
#                           where it cannot fully unroll a loop with an early exit; GCC ignores it)
#   reinterpret_cast<[const ]float4*>(p)  ->  ::cudasim::vector_cast<[const ]float4*>(__FILE__,
#                           __LINE__, p) (and
#                           uint4, int4): a pointer a GPU could not load the vector through (not
#                           16-byte aligned) is an error; the host compiler splits the copy into
#                           scalar accesses that would work
if(NOT IN OR NOT OUT)
  message(FATAL_ERROR "translate.cmake: pass -DIN=<file.cu> -DOUT=<file.cpp>")
endif()
file(READ "${IN}" src)
string(REPLACE "<<<" " | ::cudasim::config(" src "${src}")
string(REPLACE ">>>(" ") | ::cudasim::args(" src "${src}")
string(REGEX REPLACE
  "extern __shared__ (__align__\\([0-9]+\\) )?([A-Za-z_][A-Za-z_0-9 ]*[A-Za-z_0-9]) ([A-Za-z_][A-Za-z_0-9]*)\\[\\];"
  "\\2* \\3 = ::cudasim::dynamic_shared<\\2>();" src "${src}")
string(REGEX REPLACE
  "__shared__ ([A-Za-z_][A-Za-z_0-9: ]*[A-Za-z_0-9]) ([A-Za-z_][A-Za-z_0-9]*)((\\[[^];]+\\])+);"
  "auto& \\2 = ::cudasim::block_shared<\\1\\3, __LINE__>();" src "${src}")
string(REGEX REPLACE "__launch_bounds__\\(([^()]*)\\)([^{;]*)\\{"
  "\\2{ ::cudasim::launch_bounds(\\1);" src "${src}")
string(REGEX REPLACE "#pragma unroll" "// (device) pragma unroll" src "${src}")
string(REGEX REPLACE "reinterpret_cast<((const )?(float4|uint4|int4)) ?\\*>\\("
  "::cudasim::vector_cast<\\1*>(__FILE__, __LINE__, " src "${src}")
if(src MATCHES "<<<|>>>|__shared__|__launch_bounds__\\(")
  message(FATAL_ERROR "translate.cmake: ${IN} has a launch, __shared__ or __launch_bounds__ this script "
    "cannot rewrite")
endif()
file(WRITE "${OUT}.tmp" "#line 1 \"${IN}\"\n${src}")
file(COPY_FILE "${OUT}.tmp" "${OUT}" ONLY_IF_DIFFERENT)
file(REMOVE "${OUT}.tmp")
