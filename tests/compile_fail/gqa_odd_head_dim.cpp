// expect: head dim must be even
#include "transmla/shape.hpp"
#ifdef TRANSMLA_CONTROL
transmla::GqaShape<8, 2, 64> s;
#else
transmla::GqaShape<8, 2, 65> s;
#endif
