// expect: T must be float, half or bfloat16
#include "transmla/kv_cache.hpp"
#ifdef TRANSMLA_CONTROL
transmla::GqaCache<transmla::half> c(1, 2, 3);
#else
transmla::GqaCache<int> c(1, 2, 3);
#endif
