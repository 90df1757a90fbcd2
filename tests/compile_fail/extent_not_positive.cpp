// expect: compile-time extent must be a positive integer
#include "transmla/shape.hpp"
#ifdef TRANSMLA_CONTROL
transmla::GqaShape<8, 2, 64> s;
#else
transmla::GqaShape<8, 0, 64> s;
#endif
