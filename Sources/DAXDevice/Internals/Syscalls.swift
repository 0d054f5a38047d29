// The one place where DAXDevice calls into libc for files and mappings. Each
// wrapper retries EINTR where the call can be interrupted and returns the
// kernel's errno as a swift-system `Errno`.

import CDaxSys
import SystemPackage

#if canImport(Glibc)
import Glibc
#endif

@usableFromInline
internal enum Sys {
    static func currentErrno() -> Errno { Errno(rawValue: dax_errno()) }

    static func open(_ path: String, _ flags: Int32, _ mode: mode_t = 0) -> Result<Int32, Errno> {
        while true {
            let fd = Glibc.open(path, flags | O_CLOEXEC, mode)
            if fd >= 0 { return .success(fd) }
            let e = currentErrno()
            if e != .interrupted { return .failure(e) }
        }
    }

    static func close(_ fd: Int32) {
        _ = Glibc.close(fd)
    }

    static func stat(_ path: String) -> Result<Glibc.stat, Errno> {
        var st = Glibc.stat()
        if dax_stat(path, &st) == 0 { return .success(st) }
        return .failure(currentErrno())
    }

    static func fstat(_ fd: Int32) -> Result<Glibc.stat, Errno> {
        var st = Glibc.stat()
        if Glibc.fstat(fd, &st) == 0 { return .success(st) }
        return .failure(currentErrno())
    }

    static func ftruncate(_ fd: Int32, _ size: Int) -> Result<Void, Errno> {
        while true {
            if Glibc.ftruncate(fd, off_t(size)) == 0 { return .success(()) }
            let e = currentErrno()
            if e != .interrupted { return .failure(e) }
        }
    }

    static func memfdCreate(_ name: String) -> Result<Int32, Errno> {
        let fd = dax_memfd_create(name, dax_mfd_cloexec())
        return fd >= 0 ? .success(fd) : .failure(currentErrno())
    }

    /// mmap; `nil` address lets the kernel choose. Returns the mapping address.
    static func mmap(
        _ addr: UnsafeMutableRawPointer?, _ length: Int, _ prot: Int32, _ flags: Int32,
        _ fd: Int32, _ offset: Int
    ) -> Result<UnsafeMutableRawPointer, Errno> {
        let p = Glibc.mmap(addr, length, prot, flags, fd, off_t(offset))
        if p == MAP_FAILED || p == nil { return .failure(currentErrno()) }
        return .success(p!)
    }

    static func munmap(_ addr: UnsafeMutableRawPointer, _ length: Int) -> Result<Void, Errno> {
        Glibc.munmap(addr, length) == 0 ? .success(()) : .failure(currentErrno())
    }

    static func madvise(_ addr: UnsafeMutableRawPointer, _ length: Int, _ advice: Int32) -> Result<Void, Errno> {
        Glibc.madvise(addr, length, advice) == 0 ? .success(()) : .failure(currentErrno())
    }

    /// Reads a small text file (sysfs attribute) and trims the trailing newline.
    static func readSmallFile(_ path: String) -> Result<String, Errno> {
        let fd: Int32
        switch open(path, O_RDONLY) {
        case .success(let f): fd = f
        case .failure(let e): return .failure(e)
        }
        defer { close(fd) }
        var bytes: [UInt8] = []
        var buf = [UInt8](repeating: 0, count: 4096)
        while true {
            let n = buf.withUnsafeMutableBytes { Glibc.read(fd, $0.baseAddress, $0.count) }
            if n < 0 {
                let e = currentErrno()
                if e == .interrupted { continue }
                return .failure(e)
            }
            if n == 0 { break }
            bytes.append(contentsOf: buf[0..<n])
        }
        var s = String(decoding: bytes, as: UTF8.self)
        while s.last == "\n" { s.removeLast() }
        return .success(s)
    }

    /// readlink(2) as a String.
    static func readlink(_ path: String) -> Result<String, Errno> {
        var buf = [CChar](repeating: 0, count: 4096)
        let n = Glibc.readlink(path, &buf, buf.count - 1)
        if n < 0 { return .failure(currentErrno()) }
        return .success(String(decoding: buf[0..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self))
    }

    static func pageSize() -> Int { Int(sysconf(Int32(_SC_PAGESIZE))) }
}

/// Mode bits of a `stat`.
extension Glibc.stat {
    var isCharacterDevice: Bool { (st_mode & S_IFMT) == S_IFCHR }
    var isRegularFile: Bool { (st_mode & S_IFMT) == S_IFREG }
    var isDirectory: Bool { (st_mode & S_IFMT) == S_IFDIR }
    var isBlockDevice: Bool { (st_mode & S_IFMT) == S_IFBLK }
    var deviceMajor: UInt32 { dax_dev_major(st_rdev) }
    var deviceMinor: UInt32 { dax_dev_minor(st_rdev) }
}
