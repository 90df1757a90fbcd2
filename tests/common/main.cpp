// The doctest main of every test executable (the CUDA tests have their own, which skips without
// a GPU); both register the seed listener of seed_listener.hpp.
#define DOCTEST_CONFIG_IMPLEMENT_WITH_MAIN
#include "seed_listener.hpp"
