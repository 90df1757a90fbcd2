// expect: multiple of the number of KV heads
#include "transmla/shape.hpp"
#ifdef TRANSMLA_CONTROL
transmla::GqaShape<32, 8, 128> s;
#else
transmla::GqaShape<32, 6, 128> s;
#endif
