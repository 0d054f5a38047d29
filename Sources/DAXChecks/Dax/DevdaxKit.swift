// What the device-dax checks share: namespaces as ndctl prints them, raw
// mappings and descriptors released at cleanup, a namespace put back at
// cleanup, the kernel log since a mark, vmstat counters, and a catcher for
// the SIGBUS a system call delivers (MADV_HWPOISON).
//
// The mappings here are plain mmap(2) calls with the exact flags ndctl's
// tests use, not DaxCharDevice.map: the kernel's own answer (its errno) is
// what these tests check.

import CDaxSys
import DAXBase
import DAXDevice
import DAXRuntime
import Foundation
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// A namespace as `ndctl list -N` and `ndctl create-namespace` print it.
struct NdNamespace: Equatable, Sendable, CustomStringConvertible {
    var dev: String
    var mode: String
    var size: UInt64
    var align: UInt64?
    /// The device-dax device of a devdax namespace ("dax0.1").
    var chardev: String?
    /// The block device of an fsdax namespace ("pmem0.3").
    var blockdev: String?

    init(dev: String, mode: String, size: UInt64, align: UInt64? = nil, chardev: String? = nil, blockdev: String? = nil) {
        self.dev = dev
        self.mode = mode
        self.size = size
        self.align = align
        self.chardev = chardev
        self.blockdev = blockdev
    }

    /// From one JSON object of ndctl's output; nil without "dev".
    init?(json o: [String: Any]) {
        guard let dev = o["dev"] as? String else { return nil }
        self.dev = dev
        mode = o["mode"] as? String ?? "?"
        size = (o["size"] as? NSNumber)?.uint64Value ?? 0
        align = (o["align"] as? NSNumber)?.uint64Value
        blockdev = o["blockdev"] as? String
        // `list -N` names the device at the top level; create-namespace
        // nests it in daxregion.devices.
        if let c = o["chardev"] as? String {
            chardev = c
        } else if let region = o["daxregion"] as? [String: Any],
                  let devices = region["devices"] as? [[String: Any]],
                  let c = devices.first?["chardev"] as? String {
            chardev = c
        } else {
            chardev = nil
        }
    }

    var description: String {
        "\(dev) \(mode)\(align.map { " align \(formatSize($0))" } ?? "") size \(formatSize(size))"
            + (chardev.map { " /dev/\($0)" } ?? "") + (blockdev.map { " /dev/\($0)" } ?? "")
    }
}

/// A region as `ndctl list -R` prints it.
struct NdRegion: Equatable, Sendable {
    var dev: String
    var size: UInt64
    var availableSize: UInt64
    /// The largest contiguous free extent (what one namespace can take).
    var maxAvailableExtent: UInt64

    init?(json o: [String: Any]) {
        guard let dev = o["dev"] as? String else { return nil }
        self.dev = dev
        size = (o["size"] as? NSNumber)?.uint64Value ?? 0
        availableSize = (o["available_size"] as? NSNumber)?.uint64Value ?? 0
        maxAvailableExtent = (o["max_available_extent"] as? NSNumber)?.uint64Value ?? availableSize
    }
}

enum Ndctl {
    /// The active namespaces (`ndctl list -N`).
    static func namespaces(_ t: TestContext) throws -> [NdNamespace] {
        let r = try t.mustRun(["ndctl", "list", "-N"])
        return SystemState.jsonObjects(r.stdout).compactMap(NdNamespace.init(json:))
    }

    /// The namespace whose device-dax device is `chardev`.
    static func namespace(ofChardev chardev: String, _ t: TestContext) throws -> NdNamespace? {
        try namespaces(t).first { $0.chardev == chardev }
    }

    /// The pmem regions (`ndctl list -R`), the one with the largest free
    /// extent first.
    static func regions(_ t: TestContext) throws -> [NdRegion] {
        let r = try t.mustRun(["ndctl", "list", "-R"])
        return SystemState.jsonObjects(r.stdout).compactMap(NdRegion.init(json:))
            .sorted { $0.maxAvailableExtent > $1.maxAvailableExtent }
    }

    /// The namespace's raw size (sysfs `size`): what a reconfiguration has
    /// to fit its info block, memmap and aligned data into.
    static func rawSize(_ dev: String) -> UInt64? {
        guard let s = try? String(contentsOfFile: "/sys/bus/nd/devices/\(dev)/size", encoding: .utf8) else { return nil }
        return UInt64(s.trimmingCharacters(in: .whitespacesAndNewlines))
    }

    /// `ndctl create-namespace -f -e DEV -m MODE [-a ALIGN]`: the namespace as
    /// ndctl prints it afterwards.
    @discardableResult
    static func reconfigure(_ t: TestContext, _ dev: String, mode: String, align: UInt64? = nil) throws -> NdNamespace {
        var argv = ["ndctl", "create-namespace", "-f", "-e", dev, "-m", mode]
        if let align { argv += ["-a", String(align)] }
        let r = try t.mustRun(argv)
        return try t.require(SystemState.jsonObjects(r.stdout).compactMap(NdNamespace.init(json:)).first,
                             "`\(argv.joined(separator: " "))` printed no namespace")
    }

    /// Registers a cleanup that puts `original` back (mode and alignment)
    /// unless it is already as it was.
    static func restoreAtCleanup(_ t: TestContext, _ original: NdNamespace) {
        t.atCleanup("put \(original.dev) back to \(original.mode)") {
            let now = try? Command.run(["ndctl", "list", "-n", original.dev], timeout: 60)
            if let now, let cur = SystemState.jsonObjects(now.stdout).compactMap(NdNamespace.init(json:)).first,
               cur.mode == original.mode, cur.align == original.align, cur.size == original.size {
                return
            }
            var argv = ["ndctl", "create-namespace", "-f", "-e", original.dev, "-m", original.mode]
            if let a = original.align, original.mode == "devdax" || original.mode == "fsdax" { argv += ["-a", String(a)] }
            let r = try t.command(argv, timeout: 120)
            if !r.succeeded { throw CommandError(result: r) }
        }
    }

    /// Registers a cleanup that destroys `dev` (a namespace the test made)
    /// if it still exists.
    static func destroyAtCleanup(_ t: TestContext, _ dev: String) {
        t.atCleanup("destroy \(dev)") {
            let now = try? Command.run(["ndctl", "list", "-n", dev], timeout: 60)
            guard let now, !SystemState.jsonObjects(now.stdout).isEmpty else { return }
            let r = try t.command(["ndctl", "destroy-namespace", "-f", dev], timeout: 120)
            if !r.succeeded { throw CommandError(result: r) }
        }
    }
}

/// A failed system call: its name and errno.
struct SysError: Error, CustomStringConvertible {
    var call: String
    var errno: Int32
    var description: String { "\(call): \(errnoName(errno)) (\(String(cString: strerror(errno))))" }
}

enum DevdaxKit {
    static var mapFailed: UnsafeMutableRawPointer? { UnsafeMutableRawPointer(bitPattern: -1) }

    /// open(2); the descriptor is closed at cleanup.
    static func open(_ t: TestContext, _ path: String, _ flags: Int32) throws -> Int32 {
        let fd = Glibc.open(path, flags)
        guard fd >= 0 else { throw CheckAbort(message: SysError(call: "open(\(path))", errno: errno).description) }
        t.atCleanup("close \(path)") { Glibc.close(fd) }
        return fd
    }

    /// mmap(2), the kernel's errno on failure. Not registered for cleanup.
    static func mmap(length: Int, prot: Int32, flags: Int32, fd: Int32, offset: UInt64 = 0,
                     at hint: UnsafeMutableRawPointer? = nil) -> Result<UnsafeMutableRawPointer, SysError> {
        let p = Glibc.mmap(hint, length, prot, flags, fd, off_t(offset))
        guard let p, p != mapFailed else { return .failure(SysError(call: "mmap", errno: errno)) }
        return .success(p)
    }

    /// mmap(2) that must succeed; unmapped at cleanup.
    static func map(_ t: TestContext, _ what: String, length: Int, prot: Int32 = PROT_READ | PROT_WRITE,
                    flags: Int32, fd: Int32, offset: UInt64 = 0) throws -> UnsafeMutableRawPointer {
        switch mmap(length: length, prot: prot, flags: flags, fd: fd, offset: offset) {
        case .success(let p):
            t.atCleanup("munmap \(what)") { munmap(p, length) }
            return p
        case .failure(let e):
            throw CheckAbort(message: "\(what): \(e)")
        }
    }

    /// What a test maps of a device: 2*align as ndctl does, or the whole
    /// device when it is smaller (CI's 1G device is 1G: 2G would not fit).
    static func mappedLength(_ dev: DaxDeviceInfo) -> Int {
        let align = max(dev.align, 4096)
        return Int(min(2 * align, dev.size / align * align))
    }

    /// The device of `align`, or the test ends (the gate has checked it).
    static func device(_ t: TestContext, _ align: DaxAlign) throws -> DaxDeviceInfo {
        try t.require(t.environment.devdax(align: align), "no device-dax device with align \(align)")
    }

    /// The physical address of device offset `offset`, from its ranges.
    static func physical(_ dev: DaxDeviceInfo, offset: UInt64) -> UInt64? {
        var base: UInt64 = 0
        for m in dev.mappings.sorted(by: { $0.pageOffset < $1.pageOffset }) {
            if offset < base + m.size { return m.start + (offset - base) }
            base += m.size
        }
        return dev.mappings.isEmpty && dev.resource != 0 && offset < dev.size ? dev.resource + offset : nil
    }

    /// Installs the fault guards, so that guarded accesses return a
    /// SIGBUS/SIGSEGV instead of killing the test.
    static func guards() throws {
        do { try installFaultGuards() } catch { throw CheckAbort(message: "fault guards: \(error)") }
    }

    /// A test suffix for an alignment: 4k, 2m, 1g.
    static func suffix(_ a: DaxAlign) -> String {
        switch a {
        case .pte: "4k"
        case .pmd: "2m"
        case .pud: "1g"
        }
    }

    /// The number of whole memory blocks of `blockSize` inside
    /// [start, end] (inclusive end): what the kmem driver can hot-plug of
    /// that range after aligning it inwards (dax_kmem_range).
    static func wholeMemoryBlocks(start: UInt64, end: UInt64, blockSize: UInt64) -> Int {
        guard blockSize > 0, end >= start else { return 0 }
        let first = (start + blockSize - 1) / blockSize * blockSize
        let last = (end + 1) / blockSize * blockSize
        return last > first ? Int((last - first) / blockSize) : 0
    }

    /// The word a test writes at `offset` with `salt`: distinct for every
    /// offset, and for every run (the salt is random).
    @inline(__always)
    static func patternWord(offset: UInt64, salt: UInt64) -> UInt64 {
        SplitMix64.mix(offset ^ salt)
    }

    /// Writes the pattern into [base, base+bytes) for device offset `offset`.
    static func fillPattern(_ base: UnsafeMutableRawPointer, bytes: Int, offset: UInt64, salt: UInt64) {
        let w = base.assumingMemoryBound(to: UInt64.self)
        for i in 0..<(bytes / 8) { w[i] = patternWord(offset: offset + UInt64(i * 8), salt: salt) }
    }

    /// The first offset in [base, base+bytes) whose word is not the
    /// pattern's, with the word found; nil when all match.
    static func checkPattern(_ base: UnsafeRawPointer, bytes: Int, offset: UInt64, salt: UInt64) -> (UInt64, UInt64)? {
        let w = base.assumingMemoryBound(to: UInt64.self)
        for i in 0..<(bytes / 8) where w[i] != patternWord(offset: offset + UInt64(i * 8), salt: salt) {
            return (offset + UInt64(i * 8), w[i])
        }
        return nil
    }

    /// A counter of /proc/vmstat ("nr_foll_pin_acquired"), after folding
    /// the per-CPU deltas into the totals (/proc/sys/vm/stat_refresh, root):
    /// without that a change of a few pages stays invisible for up to a
    /// second.
    static func vmstat(_ key: String) -> UInt64? {
        _ = writeText("/proc/sys/vm/stat_refresh", "1\n")
        guard let text = try? String(contentsOfFile: "/proc/vmstat", encoding: .utf8) else { return nil }
        for line in text.split(separator: "\n") {
            let f = line.split(separator: " ")
            if f.count == 2, f[0] == key { return UInt64(f[1]) }
        }
        return nil
    }

    /// A small sysfs or procfs file, trimmed.
    static func readText(_ path: String) -> String? {
        (try? String(contentsOfFile: path, encoding: .utf8))?.trimmingCharacters(in: .whitespacesAndNewlines)
    }

    /// write(2) of `text` to a sysfs/debugfs file: nil on success, else errno.
    static func writeText(_ path: String, _ text: String) -> Int32? {
        let fd = Glibc.open(path, O_WRONLY)
        guard fd >= 0 else { return errno }
        defer { Glibc.close(fd) }
        let n = text.withCString { Glibc.write(fd, $0, strlen($0)) }
        return n < 0 ? errno : nil
    }
}

/// The kernel log from a mark on (/dev/kmsg read from its end): ndctl's
/// check_dmesg, which fails a test whose kernel log shows a Call Trace.
final class KernelLog {
    private let fd: Int32

    /// Marks the current end of the log; nil when /dev/kmsg cannot be read.
    init?() {
        let fd = Glibc.open("/dev/kmsg", O_RDONLY | O_NONBLOCK)
        guard fd >= 0 else { return nil }
        lseek(fd, 0, SEEK_END)
        self.fd = fd
    }

    deinit { Glibc.close(fd) }

    /// The messages logged since the mark (or the last call).
    func newMessages() -> [String] {
        var out: [String] = []
        var buf = [UInt8](repeating: 0, count: 8192)
        while true {
            let n = buf.withUnsafeMutableBytes { Glibc.read(fd, $0.baseAddress, $0.count) }
            if n < 0 && errno == EPIPE { continue }  // overwritten records: go on
            guard n > 0 else { break }
            let rec = String(decoding: buf[0..<n], as: UTF8.self)
            // "prio,seq,usec,flags;message\n continuation lines"
            let msg = rec.split(separator: ";", maxSplits: 1).last.map(String.init) ?? rec
            out.append(msg.split(separator: "\n").first.map(String.init) ?? msg)
        }
        return out
    }

    /// Logs the new messages and checks that none is a Call Trace, a
    /// WARNING or a BUG (ndctl's check_dmesg).
    static func expectClean(_ t: TestContext, _ log: KernelLog?, _ what: String) {
        guard let log else { return }
        let msgs = log.newMessages()
        for m in msgs { t.log("kernel: \(m)") }
        let bad = msgs.filter { $0.contains("Call Trace") || $0.hasPrefix("WARNING:") || $0.contains("kernel BUG") }
        t.expect(bad.isEmpty, "kernel log during \(what): \(bad.first ?? "")")
    }
}

/// A SIGBUS delivered to this thread while a system call returns (as
/// memory_failure's force_sig_mceerr for MADV_HWPOISON), caught by a
/// handler that records it and returns. Only for signals that are not
/// raised by a faulting instruction: returning from one of those would
/// fault again.
enum SyscallSIGBUS {
    struct Caught: Sendable, CustomStringConvertible {
        var count: Int32
        var code: Int32
        var address: UInt
        var addressLSB: Int32
        var description: String {
            count == 0 ? "no SIGBUS" : "SIGBUS x\(count), si_code \(code), si_addr \(hex(UInt64(address))), si_addr_lsb \(addressLSB)"
        }
    }

    private static let count = Atomic<Int32>(0)
    private static let code = Atomic<Int32>(0)
    private static let address = Atomic<UInt>(0)
    private static let lsb = Atomic<Int32>(0)

    /// Runs `body` with the recording SIGBUS handler installed, then puts
    /// the previous handler back.
    static func catching<T>(_ body: () -> T) -> (T, Caught) {
        count.store(0, ordering: .sequentiallyConsistent)
        code.store(0, ordering: .sequentiallyConsistent)
        address.store(0, ordering: .sequentiallyConsistent)
        lsb.store(0, ordering: .sequentiallyConsistent)
        var sa = sigaction()
        sa.__sigaction_handler.sa_sigaction = { _, info, _ in
            guard let info else { return }
            SyscallSIGBUS.count.add(1, ordering: .sequentiallyConsistent)
            SyscallSIGBUS.code.store(info.pointee.si_code, ordering: .sequentiallyConsistent)
            SyscallSIGBUS.address.store(UInt(bitPattern: info.pointee._sifields._sigfault.si_addr),
                                        ordering: .sequentiallyConsistent)
            SyscallSIGBUS.lsb.store(Int32(info.pointee._sifields._sigfault.si_addr_lsb), ordering: .sequentiallyConsistent)
        }
        sa.sa_flags = SA_SIGINFO
        sigemptyset(&sa.sa_mask)
        var old = sigaction()
        sigaction(SIGBUS, &sa, &old)
        let r = body()
        sigaction(SIGBUS, &old, nil)
        return (r, Caught(count: count.load(ordering: .sequentiallyConsistent),
                          code: code.load(ordering: .sequentiallyConsistent),
                          address: address.load(ordering: .sequentiallyConsistent),
                          addressLSB: lsb.load(ordering: .sequentiallyConsistent)))
    }
}
