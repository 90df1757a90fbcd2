// expect: 1 <= r <= 2L - d_r
#include "transmla/convert/shape_link.hpp"
#ifdef TRANSMLA_CONTROL
using M = transmla::convert::converted_shape_t<transmla::GqaShape<9, 3, 64>, 32, 300, 2>;
#else
using M = transmla::convert::converted_shape_t<transmla::GqaShape<9, 3, 64>, 32, 400, 2>;
#endif
M m;
