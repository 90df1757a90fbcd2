// transmla/reference/reference.hpp — all reference implementations.
#pragma once
#include "transmla/reference/attention.hpp"
#include "transmla/reference/mla.hpp"
