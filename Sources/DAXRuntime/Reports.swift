// The window handler's report ring, read from normal code. The handler (and
// the mirror) write fixed records into a preallocated ring; here they are
// drained into a buffer and turned into text, so several readers (one per
// binding, tests side by side) each get the reports of their own windows.

import CDaxMM
import CDaxWindow
import DAXBase
import MMCore

#if canImport(Glibc)
import Glibc
#endif

public struct WindowReport: Sendable, Equatable, CustomStringConvertible {
    public enum Kind: Int32, Sendable {
        case portSigbus = 1, portSigsegv = 2, portOther = 3, hostSigbus = 4
        case mirrorFailed = 5, lockHeld = 6, repeatedFault = 7, badEntry = 8
    }
    public var sequence: UInt64
    public var kind: Kind
    /// errno (mirror failures, refusals) or the VM_FAULT_* bits (port faults).
    public var code: Int32
    public var signal: Int32
    /// 0 PTE, 1 PMD, 2 PUD; -1 when not about an entry.
    public var level: Int32
    public var address: UInt64
    public var value: UInt64
    public var thread: UInt32

    public var description: String {
        let lv = level >= 0 && level < 3 ? " " + ["PTE", "PMD", "PUD"][Int(level)] : ""
        switch kind {
        case .portSigbus: return "fault at \(hex(address)): the port returned VM_FAULT_SIGBUS (SIGBUS, \(value != 0 ? "write" : "read"))"
        case .portSigsegv: return "fault at \(hex(address)): the port returned VM_FAULT_SIGSEGV (SIGSEGV, \(value != 0 ? "write" : "read"))"
        case .portOther: return "fault at \(hex(address)): the port returned VM_FAULT \(hex(UInt64(UInt32(bitPattern: code))))"
        case .hostSigbus: return "SIGBUS from the device at \(hex(address)) (si_code \(value)): the memory under a mapped extent went away"
        case .mirrorFailed: return "host mapping of the\(lv) extent at \(hex(address)) failed: \(errnoName(code)) (entry \(hex(value)))"
        case .lockHeld: return "fault at \(hex(address)) while the faulting thread held the port's mmap_lock for write: refused"
        case .repeatedFault: return "the page at \(hex(address)) faulted \(value) times in a row without progress: refused"
        case .badEntry: return "the port's\(lv) entry at \(hex(address)) names pfn \(hex((value & PT.pfnMask) >> 12)), outside the device"
        }
    }
}

/// Drained reports not yet claimed by a reader.
private let pending = Locked<[WindowReport]>([])
private let drainLock = Locked(())

/// Reports (drained from the ring) whose address is in `range`, removed from
/// the pending buffer; plus how many reports the ring lost (overwritten
/// before anyone read them: never expected, but counted).
public func takeWindowReports(in range: Range<UInt64>) -> (reports: [WindowReport], lost: Int64) {
    drainLock.withLock { _ in
        var r = dax_win_report()
        var fresh: [WindowReport] = []
        while dax_window_next_report(&r) {
            guard let k = WindowReport.Kind(rawValue: r.kind) else { continue }
            fresh.append(WindowReport(sequence: r.seq, kind: k, code: r.err, signal: r.sig, level: r.level,
                                      address: r.addr, value: r.value, thread: r.tid))
        }
        pending.withLock { $0.append(contentsOf: fresh) }
    }
    let mine = pending.withLock { p -> [WindowReport] in
        let m = p.filter { range.contains($0.address) }
        p.removeAll { range.contains($0.address) }
        return m
    }
    return (mine, dax_window_reports_lost())
}

extension Window {
    /// The handler's and the mirror's reports about this window since the
    /// last call.
    public func takeReports() -> [WindowReport] {
        takeLeftover() + takeWindowReports(in: base..<(base + length)).reports
    }
}

/// Gives the calling thread an alternate signal stack for window faults
/// (threads that touch windows should call this once).
public func prepareThreadForWindows() throws(RuntimeError) {
    let rc = dax_window_thread_init()
    if rc != 0 { throw .host(call: "sigaltstack", errno: -rc, detail: "the window fault stack") }
}

/// Installs the SIGSEGV/SIGBUS handlers (once per process; a Binding does
/// it too) so that `guardedAccess` and `guardedFill` catch the signals of
/// any mapping, a plain kernel mapping of a device included, and gives the
/// calling thread its signal stack.
public func installFaultGuards() throws(RuntimeError) {
    let rc = dax_window_install(windowPortFault)
    if rc != 0 { throw .host(call: "sigaction", errno: -rc, detail: "installing the fault handler") }
    try prepareThreadForWindows()
}

/// The outcome of one guarded access.
public struct AccessResult: Sendable, Equatable, CustomStringConvertible {
    /// 0, SIGSEGV or SIGBUS.
    public var signal: Int32
    public var code: Int32
    public var address: UInt64
    /// Read: the value read (access) or the number of mismatching words (fill).
    public var value: UInt64
    public var ok: Bool { signal == 0 }
    public var description: String {
        signal == 0 ? "ok" : "\(signal == SIGBUS ? "SIGBUS" : signal == SIGSEGV ? "SIGSEGV" : "signal \(signal)") (si_code \(code)) at \(hex(address))"
    }
}

/// Reads or writes one word; a SIGSEGV or SIGBUS the access raises (from the
/// host, or delivered for the port's VM_FAULT_SIGSEGV/SIGBUS) is returned.
public func guardedAccess(_ address: UInt64, write: Bool, value: UInt64 = 0) -> AccessResult {
    var out = dax_access_result()
    dax_guarded_access(UnsafeMutablePointer<UInt64>(bitPattern: UInt(address)), write, value, &out)
    return AccessResult(signal: out.sig, code: out.code, address: out.addr, value: out.value)
}

/// Writes `value` to (or checks it in) every word of [address, address+bytes).
public func guardedFill(_ address: UInt64, bytes: UInt64, write: Bool, value: UInt64) -> AccessResult {
    var out = dax_access_result()
    dax_guarded_fill(UnsafeMutablePointer<UInt64>(bitPattern: UInt(address)), bytes, write, value, &out)
    return AccessResult(signal: out.sig, code: out.code, address: out.addr, value: out.value)
}
