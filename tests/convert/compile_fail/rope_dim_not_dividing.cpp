// expect: d_r must divide the head dim
#include "transmla/convert/shape_link.hpp"
#ifdef TRANSMLA_CONTROL
using M = transmla::convert::converted_shape_t<transmla::GqaShape<32, 8, 128>, 64, 512, 4>;
#else
using M = transmla::convert::converted_shape_t<transmla::GqaShape<32, 8, 128>, 48, 512, 4>;
#endif
M m;
