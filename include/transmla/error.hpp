// transmla/error.hpp — the one exception type of the library and helpers to raise it.
#pragma once

#include <sstream>
#include <stdexcept>
#include <string>
#include <utility>

namespace transmla {

/// Every run-time misuse and every bad file is reported with this type. The message says what
/// was wrong and where (function, tensor, file, offset).
class error : public std::runtime_error {
public:
    using std::runtime_error::runtime_error;
};

namespace detail {

template <class... Parts>
std::string concat(Parts&&... parts) {
    std::ostringstream os;
    (os << ... << std::forward<Parts>(parts));
    return os.str();
}

}  // namespace detail

/// Throws transmla::error with the message built from the parts (streamed in order).
template <class... Parts>
[[noreturn]] void fail(Parts&&... parts) {
    throw error(detail::concat(std::forward<Parts>(parts)...));
}

/// Throws transmla::error with the message built from the parts when cond is false.
template <class... Parts>
void require(bool cond, Parts&&... parts) {
    if (!cond) fail(std::forward<Parts>(parts)...);
}

}  // namespace transmla
