// transmla/io/mapped_file.hpp — a read-only memory-mapped file (RAII, POSIX mmap), and the
// write-to-a-temporary-name-then-rename helper every writer of this library uses.
#pragma once

#include "transmla/error.hpp"

#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

namespace transmla::io {

/// The whole file mapped read-only. Move-only; unmaps on destruction. An empty file maps to an
/// empty span (mmap of length 0 is not allowed, so nothing is mapped).
///
/// The readers take their bytes from here, so the same object also stands for bytes already in
/// memory: borrowed() refers to the caller's buffer (which must outlive it), owned() keeps a copy.
/// `name` is what error messages call the bytes (a path, or e.g. "<fuzz input>").
class MappedFile {
public:
    MappedFile() = default;

    /// Non-owning view of `bytes`, which must stay valid while this object (or one it is moved
    /// into) lives.
    static MappedFile borrowed(std::span<const std::byte> bytes, std::string name) {
        MappedFile m;
        m.path_ = std::move(name);
        m.data_ = bytes.empty() ? nullptr : bytes.data();
        m.size_ = bytes.size();
        m.mapped_ = false;
        return m;
    }
    /// Owns `bytes` (moving the object keeps data() valid: a vector's buffer moves with it).
    static MappedFile owned(std::vector<std::byte> bytes, std::string name) {
        MappedFile m;
        m.path_ = std::move(name);
        m.owned_ = std::move(bytes);
        m.data_ = m.owned_.empty() ? nullptr : m.owned_.data();
        m.size_ = m.owned_.size();
        m.mapped_ = false;
        return m;
    }

    explicit MappedFile(std::string path) : path_(std::move(path)) {
        const int fd = ::open(path_.c_str(), O_RDONLY | O_CLOEXEC);
        if (fd < 0) fail("cannot open '", path_, "': ", std::strerror(errno));
        struct stat st {};
        if (::fstat(fd, &st) != 0) {
            const int e = errno;
            ::close(fd);
            fail("cannot stat '", path_, "': ", std::strerror(e));
        }
        if (!S_ISREG(st.st_mode)) {
            ::close(fd);
            fail("'", path_, "' is not a regular file");
        }
        size_ = static_cast<std::size_t>(st.st_size);
        if (size_ > 0) {
            void* p = ::mmap(nullptr, size_, PROT_READ, MAP_PRIVATE, fd, 0);
            if (p == MAP_FAILED) {
                const int e = errno;
                ::close(fd);
                fail("cannot memory-map '", path_, "' (", size_, " bytes): ", std::strerror(e));
            }
            data_ = static_cast<const std::byte*>(p);
        }
        ::close(fd);  // the mapping stays valid after the descriptor is closed
    }

    MappedFile(const MappedFile&) = delete;
    MappedFile& operator=(const MappedFile&) = delete;
    MappedFile(MappedFile&& o) noexcept
        : path_(std::move(o.path_)),
          data_(std::exchange(o.data_, nullptr)),
          size_(std::exchange(o.size_, 0)),
          mapped_(std::exchange(o.mapped_, true)),
          owned_(std::move(o.owned_)) {}
    MappedFile& operator=(MappedFile&& o) noexcept {
        if (this != &o) {
            unmap();
            path_ = std::move(o.path_);
            data_ = std::exchange(o.data_, nullptr);
            size_ = std::exchange(o.size_, 0);
            mapped_ = std::exchange(o.mapped_, true);
            owned_ = std::move(o.owned_);
        }
        return *this;
    }
    ~MappedFile() { unmap(); }

    const std::string& path() const noexcept { return path_; }
    const std::byte* data() const noexcept { return data_; }
    std::size_t size() const noexcept { return size_; }
    std::span<const std::byte> bytes() const noexcept { return {data_, size_}; }

private:
    void unmap() noexcept {
        if (data_ && mapped_) ::munmap(const_cast<std::byte*>(data_), size_);
        data_ = nullptr;
        size_ = 0;
        owned_.clear();
    }

    std::string path_;
    const std::byte* data_ = nullptr;
    std::size_t size_ = 0;
    bool mapped_ = true;            ///< data_ comes from mmap (else: borrowed or owned_)
    std::vector<std::byte> owned_;  ///< the bytes of owned()
};

/// Writes a file atomically: the content goes to `<path>.tmp.<pid>` and is renamed over `path`
/// only once it is complete, so a reader never sees a half-written file. Usage:
///     AtomicFileWriter w(path); w.write(p, n); ...; w.commit();
/// Destroying it without commit() removes the temporary file.
class AtomicFileWriter {
public:
    explicit AtomicFileWriter(std::string path)
        : path_(std::move(path)), tmp_(path_ + ".tmp." + std::to_string(::getpid())) {
        f_ = std::fopen(tmp_.c_str(), "wb");
        if (!f_) fail("cannot create '", tmp_, "' (temporary for '", path_, "'): ", std::strerror(errno));
    }
    AtomicFileWriter(const AtomicFileWriter&) = delete;
    AtomicFileWriter& operator=(const AtomicFileWriter&) = delete;
    ~AtomicFileWriter() {
        if (f_) {
            std::fclose(f_);
            std::remove(tmp_.c_str());
        }
    }

    void write(const void* p, std::size_t n) {
        if (n == 0) return;
        if (std::fwrite(p, 1, n, f_) != n)
            fail("write to '", tmp_, "' failed after ", written_, " bytes: ", std::strerror(errno));
        written_ += n;
    }
    /// Writes `n` zero bytes (alignment padding).
    void pad(std::size_t n) {
        static constexpr char zeros[64] = {};
        while (n > 0) {
            const std::size_t k = n < sizeof zeros ? n : sizeof zeros;
            write(zeros, k);
            n -= k;
        }
    }
    std::uint64_t written() const noexcept { return written_; }

    /// Flushes, closes and renames the temporary file to the final path.
    void commit() {
        require(f_ != nullptr, "AtomicFileWriter: '", path_, "' already committed");
        const bool ok = std::fflush(f_) == 0 && ::fsync(::fileno(f_)) == 0;
        const int e = errno;
        const bool closed = std::fclose(f_) == 0;
        f_ = nullptr;
        if (!ok || !closed) {
            std::remove(tmp_.c_str());
            fail("cannot finish writing '", tmp_, "': ", std::strerror(e));
        }
        if (std::rename(tmp_.c_str(), path_.c_str()) != 0) {
            const int e2 = errno;
            std::remove(tmp_.c_str());
            fail("cannot rename '", tmp_, "' to '", path_, "': ", std::strerror(e2));
        }
    }

private:
    std::string path_, tmp_;
    std::FILE* f_ = nullptr;
    std::uint64_t written_ = 0;
};

/// The in-memory constructors shared by the readers built from a MappedFile (GgufFile,
/// SafetensorsFile): `class Reader : public FromMemory<Reader>` with a public
/// `explicit Reader(MappedFile)`.
template <class Reader>
struct FromMemory {
    /// The file in `bytes` (not copied: they must outlive the returned object and every span it
    /// hands out); `name` stands for the file in error messages.
    static Reader from_memory(std::span<const std::byte> bytes, std::string name) {
        return Reader(MappedFile::borrowed(bytes, std::move(name)));
    }
    static Reader from_memory(std::string_view bytes, std::string name) {
        return from_memory(std::as_bytes(std::span<const char>(bytes.data(), bytes.size())), std::move(name));
    }
    /// Same, keeping its own copy of the bytes.
    static Reader from_bytes(std::vector<std::byte> bytes, std::string name) {
        return Reader(MappedFile::owned(std::move(bytes), std::move(name)));
    }
};

}  // namespace transmla::io
