// expect: every listed shape must be fully static
#include "transmla/shape.hpp"
int f() {
    using namespace transmla;
#ifdef TRANSMLA_CONTROL
    return dispatch(ShapeList<GqaShape<8, 2, 64>>{}, DynamicGqaShape(8, 2, 64), [](auto s) { return s.n_q(); });
#else
    return dispatch(ShapeList<GqaShape<8, 2, dynamic>>{}, DynamicGqaShape(8, 2, 64), [](auto s) { return s.n_q(); });
#endif
}
