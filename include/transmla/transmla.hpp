// transmla/transmla.hpp — umbrella header of the backend-independent core. Module headers can
// be included alone; the CPU backend, conversion and I/O have their own umbrellas
// (transmla/cpu/cpu.hpp, transmla/convert/convert.hpp, transmla/io/io.hpp).
#pragma once

#include "transmla/error.hpp"
#include "transmla/kv_cache.hpp"
#include "transmla/reference/reference.hpp"
#include "transmla/rope.hpp"
#include "transmla/shape.hpp"
#include "transmla/softmax.hpp"
#include "transmla/types.hpp"
#include "transmla/view.hpp"
