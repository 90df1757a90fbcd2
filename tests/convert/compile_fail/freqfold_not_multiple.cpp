// expect: FreqFold F must be a multiple of c
#include "transmla/convert/shape_link.hpp"
#ifdef TRANSMLA_CONTROL
using M = transmla::convert::converted_shape_t<transmla::GqaShape<32, 8, 128>, 32, 512, 4>;
#else
using M = transmla::convert::converted_shape_t<transmla::GqaShape<32, 8, 128>, 32, 512, 2>;
#endif
M m;
