// expect: must be smaller than the GQA cache
#include "transmla/convert/shape_link.hpp"
#ifdef TRANSMLA_CONTROL
using M = transmla::convert::converted_shape_t<transmla::GqaShape<9, 3, 64>, 64, 319, 1>;
#else
using M = transmla::convert::converted_shape_t<transmla::GqaShape<9, 3, 64>, 64, 320, 1>;
#endif
M m;
