// The x86 intrinsics and Eigen, read once with GCC 12's false uninitialised-value warnings off.
//
// GCC 12 writes `__m512 __Y = __Y;` in _mm512_undefined_ps() and its siblings, then warns
// (-Wuninitialized, -Wmaybe-uninitialized) wherever those get inlined, e.g. into Eigen's
// AVX-512 GEMM packing and transposes: over a hundred warnings for one matrix product when
// compiled with -march=native on an AVX-512 machine (fixed in GCC 13). The diagnostic state is
// looked up at the intrinsic's own location, so the warnings have to be off where the
// intrinsics headers are first read, which is here: every tnas header that needs them includes
// this one instead of <immintrin.h> or <Eigen/Core>.
#pragma once

#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#endif
#include <Eigen/Core>
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic pop
#endif
