// Short-term pins by the real kernel: O_DIRECT reads and writes. The block
// layer pins the caller's buffer for the length of the I/O
// (bio_iov_iter_get_pages -> iov_iter_extract_pages, FOLL_PIN without
// FOLL_LONGTERM for a user buffer), so a buffer in fs-dax or device-dax
// memory can be the target, unlike an io_uring registration.

import CDaxSys
import DAXBase
import SystemPackage

#if canImport(Glibc)
import Glibc
#endif

/// Why an O_DIRECT transfer was not done.
public enum DirectIOError: Error, Equatable, Sendable, CustomStringConvertible {
    /// Refused before any system call: `what` ("buffer address", "file
    /// offset", "length") is not a multiple of the logical block size. The
    /// kernel would say EINVAL.
    case misaligned(path: String, what: String, value: UInt64, blockSize: Int)
    /// open(2) with O_DIRECT refused: the file system does not support it
    /// (EINVAL at open, e.g. tmpfs before 6.6).
    case notSupported(path: String, errno: Errno)
    /// Any other failed call.
    case call(KernelCallError)

    public var errno: Errno {
        switch self {
        case .misaligned: return .invalidArgument
        case .notSupported(_, let e): return e
        case .call(let e): return e.errno
        }
    }

    public var description: String {
        switch self {
        case .misaligned(let path, let what, let value, let bs):
            return "\(path): O_DIRECT needs the buffer address, file offset and length to be multiples of the logical block size \(bs): the \(what) \(hex(value)) is not"
        case .notSupported(let path, let e):
            return "\(path): the file system refuses O_DIRECT (\(errnoName(e.rawValue)) at open)"
        case .call(let e):
            return e.description
        }
    }
}

/// A file or block device opened with O_DIRECT.
public final class DirectIO {
    public let path: String
    /// The alignment every transfer must keep: the device's logical block
    /// size for a block device, 512 for a file.
    public let logicalBlockSize: Int
    public let isBlockDevice: Bool
    private let fd: Int32

    /// Opens `path` O_DIRECT, read-only or read-write.
    public init(path: String, writable: Bool = false) throws(DirectIOError) {
        self.path = path
        let st: Glibc.stat
        switch Sys.stat(path) {
        case .success(let s): st = s
        case .failure(let e): throw .call(KernelCallError(call: "stat(\(path))", errno: e))
        }
        isBlockDevice = st.isBlockDevice
        logicalBlockSize = isBlockDevice ? Self.logicalBlockSize(ofBlockDevice: path) ?? 512 : 512
        switch Sys.open(path, (writable ? O_RDWR : O_RDONLY) | dax_o_direct()) {
        case .success(let f): fd = f
        case .failure(let e) where e == .invalidArgument:
            throw .notSupported(path: path, errno: e)
        case .failure(let e):
            throw .call(KernelCallError(call: "open(\(path), O_DIRECT)", errno: e))
        }
    }

    deinit { Sys.close(fd) }

    /// pread into `buffer` at file `offset`; returns the bytes read (fewer at
    /// the end of the file).
    public func read(into buffer: UnsafeMutableRawBufferPointer, at offset: UInt64) throws(DirectIOError) -> Int {
        try transfer("pread", UInt(bitPattern: buffer.baseAddress), buffer.count, offset) {
            Glibc.pread(fd, buffer.baseAddress, buffer.count, off_t(offset))
        }
    }

    /// pwrite of `buffer` at file `offset`; returns the bytes written.
    public func write(_ buffer: UnsafeRawBufferPointer, at offset: UInt64) throws(DirectIOError) -> Int {
        try transfer("pwrite", UInt(bitPattern: buffer.baseAddress), buffer.count, offset) {
            Glibc.pwrite(fd, buffer.baseAddress, buffer.count, off_t(offset))
        }
    }

    private func transfer(_ call: String, _ address: UInt, _ length: Int, _ offset: UInt64,
                          _ io: () -> Int) throws(DirectIOError) -> Int {
        try Self.checkAlignment(path: path, address: address, offset: offset, length: length,
                                blockSize: logicalBlockSize)
        while true {
            let n = io()
            if n >= 0 { return n }
            let e = Sys.currentErrno()
            if e == .interrupted { continue }
            throw .call(KernelCallError(call: "\(call)(\(path), O_DIRECT)", errno: e))
        }
    }

    /// The up-front check: `address`, `offset` and `length` are multiples of
    /// `blockSize`.
    public static func checkAlignment(path: String, address: UInt, offset: UInt64, length: Int,
                                      blockSize: Int) throws(DirectIOError) {
        let bs = UInt64(blockSize)
        for (what, value) in [("buffer address", UInt64(address)), ("file offset", offset),
                              ("length", UInt64(length))] where value % bs != 0 {
            throw .misaligned(path: path, what: what, value: value, blockSize: blockSize)
        }
    }

    /// /sys/class/block/NAME/queue/logical_block_size of the block device at
    /// `path` (for a partition, its disk's queue), or nil.
    public static func logicalBlockSize(ofBlockDevice path: String) -> Int? {
        var resolved = path
        if case .success(let target) = Sys.readlink(path) {
            resolved = target
        }
        guard let name = resolved.split(separator: "/").last else { return nil }
        for dir in ["/sys/class/block/\(name)/queue", "/sys/class/block/\(name)/../queue"] {
            if case .success(let s) = Sys.readSmallFile("\(dir)/logical_block_size"), let n = Int(s.trimmingSpaces()) {
                return n
            }
        }
        return nil
    }
}
