# transmla_require_package(<Name> <min-version> <debian-package> [extra find_package args])
# find_package that stops configure with a message naming the Debian package to install.
macro(transmla_require_package name version debian)
    find_package(${name} ${version} QUIET ${ARGN})
    if(NOT ${name}_FOUND)
        message(FATAL_ERROR "transmla needs ${name} >= ${version}, which was not found. "
                            "On Debian/Ubuntu: sudo apt-get install ${debian}")
    endif()
endmacro()
