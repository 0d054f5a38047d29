// A temporary file for O_DIRECT probes, in the first directory whose file
// system accepts O_DIRECT.

import CDaxSys
import Synchronization
import SystemPackage

#if canImport(Glibc)
import Glibc
#endif

/// A regular file of `size` bytes, removed when the object goes.
public final class ScratchFile {
    public let path: String
    public let size: Int

    private init(path: String, size: Int) {
        self.path = path
        self.size = size
    }

    deinit { _ = unlink(path) }

    /// Where to look by default: $TMPDIR, /var/tmp, /tmp, the current directory.
    public static var defaultDirectories: [String] {
        var dirs: [String] = []
        if let t = getenv("TMPDIR"), let s = String(validatingCString: t), !s.isEmpty { dirs.append(s) }
        return dirs + ["/var/tmp", "/tmp", "."]
    }

    /// Creates a file of `bytes` bytes, byte i being `fill(i)`, written and
    /// fsynced through the page cache, in the first of `directories` where the
    /// file can then be opened O_DIRECT. A directory whose file system refuses
    /// O_DIRECT (EINVAL at open) is skipped; if all do, the error is
    /// `.notSupported` naming the last one.
    public static func create(bytes: Int, in directories: [String] = ScratchFile.defaultDirectories,
                              fill: (Int) -> UInt8 = { _ in 0 }) throws(DirectIOError) -> ScratchFile {
        precondition(bytes >= 0)
        var last: DirectIOError = .call(KernelCallError(call: "create scratch file", errno: .noSuchFileOrDirectory,
                                                        reason: "no directory given"))
        for dir in directories {
            let path = "\(dir)/daxmm-dio-\(getpid())-\(nextSerial())"
            do {
                try write(path: path, bytes: bytes, fill: fill)
            } catch {
                last = error
                continue
            }
            let file = ScratchFile(path: path, size: bytes)  // unlinks on every failure below
            switch Sys.open(path, O_RDONLY | dax_o_direct()) {
            case .success(let fd):
                Sys.close(fd)
                return file
            case .failure(let e) where e == .invalidArgument:
                last = .notSupported(path: path, errno: e)
            case .failure(let e):
                last = .call(KernelCallError(call: "open(\(path), O_DIRECT)", errno: e))
            }
        }
        throw last
    }

    private static func write(path: String, bytes: Int, fill: (Int) -> UInt8) throws(DirectIOError) {
        let fd: Int32
        switch Sys.open(path, O_RDWR | O_CREAT | O_EXCL, 0o600) {
        case .success(let f): fd = f
        case .failure(let e): throw .call(KernelCallError(call: "open(\(path), O_CREAT)", errno: e))
        }
        defer { Sys.close(fd) }
        var failure: KernelCallError?
        var chunk = [UInt8](repeating: 0, count: 1 << 16)
        var done = 0
        while done < bytes && failure == nil {
            let n = min(chunk.count, bytes - done)
            for i in 0..<n { chunk[i] = fill(done + i) }
            let w = chunk.withUnsafeBytes { Glibc.pwrite(fd, $0.baseAddress, n, off_t(done)) }
            if w > 0 { done += w; continue }
            let e = Sys.currentErrno()
            if w < 0 && e == .interrupted { continue }
            failure = KernelCallError(call: "pwrite(\(path))", errno: w < 0 ? e : .ioError)
        }
        if failure == nil && fsync(fd) != 0 {
            failure = KernelCallError(call: "fsync(\(path))", errno: Sys.currentErrno())
        }
        if let failure {
            _ = unlink(path)
            throw .call(failure)
        }
    }

    private static let serial = Atomic<Int>(0)

    private static func nextSerial() -> Int {
        serial.wrappingAdd(1, ordering: .relaxed).newValue
    }
}
