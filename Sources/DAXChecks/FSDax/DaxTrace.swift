// The fs_dax:dax_pmd_fault_done tracepoint (fs/dax.c dax_iomap_pmd_fault,
// include/trace/events/fs_dax.h), read through tracefs directly: the check
// ndctl's dax.sh makes with trace-cmd. A private trace instance
// (instances/NAME) records only this event, filtered to one inode, so
// nothing else on the system is disturbed; the instance is removed at
// cleanup.

import DAXBase
import Foundation

#if canImport(Glibc)
import Glibc
#endif

/// One dax_pmd_fault_done record.
struct PmdFaultEvent: CustomStringConvertible {
    var pid: Int
    var inode: UInt64
    var shared: Bool
    var flags: String
    var address: UInt64
    var pgoff: UInt64
    /// The VM_FAULT_* result as the event prints it: "NOPAGE" for a PMD
    /// installed, "FALLBACK" when the fault fell back to PTEs.
    var result: String

    var description: String {
        "pid \(pid) ino \(hex(inode)) \(shared ? "shared" : "private") \(flags) address \(hex(address)) pgoff \(hex(pgoff)) \(result)"
    }

    /// Parses one line of the `trace` file, or nil when it is not this event.
    /// "  daxmm-1234  [000] ..... 12.345: dax_pmd_fault_done: dev 259:0 ino
    /// 0xc shared WRITE|... address 0x7f.. vm_start .. vm_end .. pgoff 0x..
    /// max_pgoff 0x.. NOPAGE"
    static func parse(_ line: Substring) -> PmdFaultEvent? {
        guard let mark = line.range(of: "dax_pmd_fault_done: ") else { return nil }
        let head = line[..<mark.lowerBound].split(separator: " ")
        // The task field is COMM-PID; the comm may contain dashes.
        let pid = head.first.flatMap { $0.split(separator: "-").last }.flatMap { Int($0) } ?? -1
        let f = line[mark.upperBound...].split(separator: " ").map(String.init)
        func value(after key: String) -> UInt64? {
            guard let i = f.firstIndex(of: key), i + 1 < f.count else { return nil }
            let s = f[i + 1]
            return s.hasPrefix("0x") ? UInt64(s.dropFirst(2), radix: 16) : UInt64(s)
        }
        guard let ino = value(after: "ino"), let addr = value(after: "address"), let i = f.firstIndex(of: "ino"),
              i + 3 < f.count, let result = f.last else { return nil }
        let flags = f[i + 3] == "address" ? "" : f[i + 3]
        return PmdFaultEvent(pid: pid, inode: ino, shared: f[i + 2] == "shared", flags: flags, address: addr,
                             pgoff: value(after: "pgoff") ?? 0, result: result)
    }
}

/// A tracefs instance recording dax_pmd_fault_done for one inode.
final class DaxPmdTrace {
    let root: String
    let instance: String
    private var removed = false

    private init(root: String, instance: String) {
        self.root = root
        self.instance = instance
    }

    private var eventDir: String { "\(instance)/events/fs_dax/dax_pmd_fault_done" }

    /// Where tracefs is mounted, or nil.
    static func tracefsRoot() -> String? {
        for r in ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"] where access("\(r)/instances", F_OK) == 0 {
            return r
        }
        return nil
    }

    /// Creates the instance, filters the event to `inode` and enables it.
    /// The removal is registered as a cleanup.
    static func start(_ t: TestContext, inode: UInt64) throws -> DaxPmdTrace {
        let root = try t.require(tracefsRoot(), "tracefs is not mounted (/sys/kernel/tracing/instances)")
        let name = "daxmm-\(t.name)-\(getpid())"
        let dir = "\(root)/instances/\(name)"
        try t.must("mkdir \(dir)") { try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: false) }
        let tr = DaxPmdTrace(root: root, instance: dir)
        t.atCleanup("remove the trace instance \(dir)") { [tr] in try tr.remove() }
        try t.require(access(tr.eventDir, F_OK) == 0,
                      "no fs_dax:dax_pmd_fault_done event in tracefs (\(tr.eventDir)): a kernel without CONFIG_FS_DAX?")
        try tr.write("filter", "ino == \(inode)", dir: tr.eventDir)
        try tr.write("enable", "1", dir: tr.eventDir)
        t.log("tracing fs_dax:dax_pmd_fault_done for inode \(inode) in \(dir)")
        return tr
    }

    private func write(_ file: String, _ value: String, dir: String) throws {
        let path = "\(dir)/\(file)"
        let fd = open(path, O_WRONLY | O_TRUNC)
        guard fd >= 0 else { throw CheckAbort(message: "open \(path): \(lastErrno())") }
        defer { close(fd) }
        let n = value.withCString { Glibc.write(fd, $0, strlen($0)) }
        guard n >= 0 else { throw CheckAbort(message: "write '\(value)' to \(path): \(lastErrno())") }
    }

    /// Every recorded event so far, in order.
    func events() -> [PmdFaultEvent] {
        guard let text = try? String(contentsOfFile: "\(instance)/trace", encoding: .utf8) else { return [] }
        return text.split(separator: "\n").compactMap { $0.hasPrefix("#") ? nil : PmdFaultEvent.parse($0) }
    }

    /// Disables the event and removes the instance (idempotent).
    func remove() throws {
        guard !removed else { return }
        removed = true
        try? write("enable", "0", dir: eventDir)
        if rmdir(instance) != 0 && errno != ENOENT {
            throw CheckAbort(message: "rmdir \(instance): \(lastErrno())")
        }
    }
}
