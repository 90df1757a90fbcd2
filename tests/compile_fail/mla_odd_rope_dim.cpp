// expect: RoPE dim must be even
#include "transmla/shape.hpp"
#ifdef TRANSMLA_CONTROL
transmla::MlaShape<16, 512, 64, 128> s;
#else
transmla::MlaShape<16, 512, 63, 128> s;
#endif
