import CDaxSys
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// An mmap for the kernel-probe tests, unmapped when it goes.
final class ProbeMapping {
    let base: UnsafeMutableRawPointer
    let address: UInt
    let length: Int
    private var mapped = true

    /// Anonymous private memory, without THP unless `hugepage`.
    convenience init(anonymous length: Int, prot: Int32 = PROT_READ | PROT_WRITE, hugepage: Bool = false) throws {
        try self.init(length: length, prot: prot, flags: MAP_PRIVATE | MAP_ANONYMOUS, fd: -1)
        _ = madvise(base, length, hugepage ? MADV_HUGEPAGE : MADV_NOHUGEPAGE)
    }

    init(length: Int, prot: Int32, flags: Int32, fd: Int32, offset: Int = 0,
         at hint: UnsafeMutableRawPointer? = nil) throws {
        let p = mmap(hint, length, prot, flags, fd, off_t(offset))
        guard let p, p != MAP_FAILED else {
            throw ProbeSetupError("mmap(\(length)) failed with errno \(dax_errno())")
        }
        base = p
        self.length = length
        self.address = UInt(bitPattern: p)
    }

    func page(_ i: Int) -> UnsafeMutableRawPointer { base + i * 4096 }
    func pageAddress(_ i: Int) -> UInt { address + UInt(i * 4096) }

    func unmap() {
        guard mapped else { return }
        mapped = false
        munmap(base, length)
    }

    deinit { unmap() }
}

/// A memfd of `size` bytes, closed when it goes.
final class ProbeMemfd {
    let fd: Int32

    init(size: Int) throws {
        fd = dax_memfd_create("daxmm-probe", dax_mfd_cloexec())
        guard fd >= 0 else { throw ProbeSetupError("memfd_create failed with errno \(dax_errno())") }
        guard ftruncate(fd, off_t(size)) == 0 else { throw ProbeSetupError("ftruncate failed with errno \(dax_errno())") }
    }

    func mapShared(_ length: Int) throws -> ProbeMapping {
        try ProbeMapping(length: length, prot: PROT_READ | PROT_WRITE, flags: MAP_SHARED, fd: fd)
    }

    deinit { close(fd) }
}

struct ProbeSetupError: Error, CustomStringConvertible {
    let description: String
    init(_ d: String) { description = d }
}

extension String {
    /// A /proc file's text (its size reads as 0, so read until EOF).
    init(contentsOfProcFile path: String) throws {
        let fd = open(path, O_RDONLY)
        guard fd >= 0 else { throw ProbeSetupError("open \(path)") }
        defer { close(fd) }
        var bytes: [UInt8] = []
        var buf = [UInt8](repeating: 0, count: 4096)
        while true {
            let n = read(fd, &buf, buf.count)
            if n <= 0 { break }
            bytes += buf[0..<n]
        }
        self = String(decoding: bytes, as: UTF8.self)
    }
}
