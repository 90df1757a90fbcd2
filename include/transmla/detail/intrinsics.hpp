// transmla/detail/intrinsics.hpp — includes the x86 intrinsic headers once, before Eigen or xsimd
// do, so that a GCC 12 false positive inside those headers can be silenced there and nowhere else.
//
// GCC before 13 (bug 105593) reports `-Wmaybe-uninitialized` or `-Wuninitialized` inside its own avx512fintrin.h
// whenever an `_mm512_undefined_*()` helper is inlined into user code (Eigen's AVX-512 packet
// functions use them); the deliberately self-initialised variable `__Y` is the "uninitialized"
// value. GCC honours a diagnostic pragma at any location of the inlining chain, so ignoring those two
// warnings around the *inclusion* of <immintrin.h> covers exactly the intrinsic headers' lines:
// project code keeps both. Every transmla header that includes Eigen or xsimd
// includes this file first; a program that includes Eigen before any transmla header should
// include this header first too if it builds for AVX-512 with GCC 12.
#pragma once

#if defined(__GNUC__) && !defined(__clang__) && __GNUC__ < 13 && (defined(__x86_64__) || defined(__i386__))
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#include <immintrin.h>
#pragma GCC diagnostic pop
#endif
