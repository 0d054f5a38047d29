// What the mm suite's scenarios share: the kernel rules they assert (a value,
// so the suite's own tests can run a scenario against a deliberately wrong
// rule and see it fail), counter snapshots of a folio and an mm, the port's
// own verdict after a step (its invariant checker and its debug reports),
// and the machines the scenarios build: a port Kernel with device-dax
// devices, an extent file store on fs-dax memory, and MMs.
//
// The mm suite drives the ported code only (MMCore, DAXCore, and DAXRuntime
// over the emulated device): it runs the same on the host and in a guest.

import CDaxMM
import DAXBase
import DAXCore
import Foundation
import MMCore
import MMTestSupport
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

// MARK: the rules

/// The kernel's answers the scenarios expect, after the ZONE_DEVICE refcount
/// series. Every field names where the rule lives; `.kernel` is the only
/// value the suite runs with.
struct KernelRules: Sendable {
    /// References one present PTE, PMD or PUD holds on its folio
    /// (insert_page_into_pte_locked, insert_pmd, insert_pud: folio_get).
    var refsPerEntry: Int32 = 1
    /// Mapcount one present entry adds (folio_add_file_rmap_ptes/_pmd/_pud).
    var mapcountPerEntry: Int32 = 1
    /// GUP_PIN_COUNTING_BIAS: what one FOLL_PIN adds to a small folio's
    /// refcount (try_grab_folio).
    var pinCountingBias: Int32 = 1024
    /// The idle refcount of a MEMORY_DEVICE_GENERIC (device-dax) folio:
    /// __init_zone_device_page leaves it at 1, free_zone_device_folio resets
    /// it to 1.
    var devdaxIdleRefcount: Int32 = 1
    /// The idle refcount of a MEMORY_DEVICE_FS_DAX folio (0 after the series).
    var fsdaxIdleRefcount: Int32 = 0
    /// check_vma_flags: FOLL_LONGTERM on an fs-dax VMA (vma_is_fsdax).
    var longtermFsdaxErrno: Int32 = EOPNOTSUPP
    /// drivers/dax/device.c check_vma: a private or misaligned VMA.
    var checkVmaErrno: Int32 = EINVAL
    /// drivers/dax/device.c dev_dax_may_split: a split off the alignment.
    var maySplitErrno: Int32 = EINVAL

    static let kernel = KernelRules()

    /// A copy with the changes `change` makes (a deliberately wrong rule).
    func with(_ change: (inout KernelRules) -> Void) -> KernelRules {
        var r = self
        change(&r)
        return r
    }
}

// MARK: counters

/// What a scenario asserts about one folio, its mm and the node counters.
struct Counters: Equatable, CustomStringConvertible {
    var refcount: Int32
    var mapcount: Int32
    var entireMapcount: Int32
    var pincount: Int32
    /// get_mm_counter(mm, MM_FILEPAGES)
    var rss: Int64
    /// NR_FILE_MAPPED / NR_FILE_PMDMAPPED
    var fileMapped: Int64
    var filePmdMapped: Int64
    /// NR_FOLL_PIN_ACQUIRED / NR_FOLL_PIN_RELEASED
    var pinAcquired: Int64
    var pinReleased: Int64

    init(_ kernel: Kernel, _ folio: Folio, _ mm: MM) {
        refcount = folio.refCount
        mapcount = folio.mapcount
        entireMapcount = folio.entireMapcount
        pincount = folio.pincount
        rss = mm.rssFilePages
        fileMapped = kernel.stat(DAX_NR_FILE_MAPPED)
        filePmdMapped = kernel.stat(DAX_NR_FILE_PMDMAPPED)
        pinAcquired = kernel.stat(DAX_NR_FOLL_PIN_ACQUIRED)
        pinReleased = kernel.stat(DAX_NR_FOLL_PIN_RELEASED)
    }

    /// (name, value) in a fixed order, for the description and the diff.
    var fields: [(String, Int64)] {
        [("refcount", Int64(refcount)), ("mapcount", Int64(mapcount)), ("entire_mapcount", Int64(entireMapcount)),
         ("pincount", Int64(pincount)), ("MM_FILEPAGES", rss), ("NR_FILE_MAPPED", fileMapped),
         ("NR_FILE_PMDMAPPED", filePmdMapped), ("NR_FOLL_PIN_ACQUIRED", pinAcquired),
         ("NR_FOLL_PIN_RELEASED", pinReleased)]
    }

    var description: String { fields.map { "\($0.0) \($0.1)" }.joined(separator: ", ") }

    /// The fields that differ from `want`: "refcount 3 (expected 2)".
    func differences(from want: Counters) -> String {
        zip(fields, want.fields).filter { $0.0.1 != $0.1.1 }
            .map { "\($0.0.0) \($0.0.1) (expected \($0.1.1))" }.joined(separator: ", ")
    }

    /// A copy with the changes `change` makes.
    func with(_ change: (inout Counters) -> Void) -> Counters {
        var c = self
        change(&c)
        return c
    }
}

extension TestContext {
    /// One check: the folio's and the mm's counters are exactly `want`; a
    /// failure names each counter that differs.
    @discardableResult
    func expectCounters(_ got: Counters, _ want: Counters, _ what: String) -> Bool {
        expect(got == want, "\(what): \(got.differences(from: want))")
    }

    /// One check: the port's invariant checker (MMCore/Invariants.swift: rule
    /// 1 as an equality against `ledger`, the references held outside the
    /// page tables, when given) finds nothing over `mms` and `pgmaps`, and
    /// the kernel made no debug report (VM_BUG_ON/VM_WARN_ON) since the last
    /// drain. A failure carries the violations dump_page-style.
    @discardableResult
    func expectPortConsistent(_ kernel: Kernel, mms: [MM], pgmaps: [DevPagemap], ledger: RefLedger? = [:],
                              after what: String) -> Bool {
        let problems = portProblems(kernel, mms: mms, pgmaps: pgmaps, ledger: ledger)
        return expect(problems.isEmpty, "port after \(what): \(problems.joined(separator: "\n"))")
    }

    /// `t.expect` on a fault's VM_FAULT_* bits, naming them on failure.
    @discardableResult
    func expectFault(_ got: UInt32, _ want: UInt32, _ what: String) -> Bool {
        expect(got == want, "\(what): \(vmFaultName(got)), expected \(vmFaultName(want))")
    }

    /// `t.expect` on an error a port call threw: its errno.
    @discardableResult
    func expectErrno(_ what: String, _ want: Int32, _ body: () throws -> Void) -> Bool {
        do {
            try body()
            return expect(false, "\(what): succeeded, expected \(errnoName(want))")
        } catch let e as MMError {
            return expect(e.code == want, "\(what): \(e), expected \(errnoName(want))")
        } catch let e as FSError {
            return expect(e.code == want, "\(what): \(e), expected \(errnoName(want))")
        } catch {
            return expect(false, "\(what): \(error), expected \(errnoName(want))")
        }
    }
}

/// The invariant violations and debug reports the port has, as text (each
/// with its dump_page lines); drains the kernel's report ring.
func portProblems(_ kernel: Kernel, mms: [MM], pgmaps: [DevPagemap], ledger: RefLedger?) -> [String] {
    let v = invariants(mms: mms, pgmaps: pgmaps, ledger: ledger)
    return v.map(\.description) + kernel.drainReports().map { "debug report:\n\($0)" }
}

/// VM_FAULT_* bits by name ("VM_FAULT_NOPAGE|VM_FAULT_MAJOR", "0").
func vmFaultName(_ bits: UInt32) -> String {
    let names: [(UInt32, String)] = [
        (DAX_VM_FAULT_OOM, "OOM"), (DAX_VM_FAULT_SIGBUS, "SIGBUS"), (DAX_VM_FAULT_MAJOR, "MAJOR"),
        (DAX_VM_FAULT_HWPOISON, "HWPOISON"), (DAX_VM_FAULT_SIGSEGV, "SIGSEGV"), (DAX_VM_FAULT_NOPAGE, "NOPAGE"),
        (DAX_VM_FAULT_LOCKED, "LOCKED"), (DAX_VM_FAULT_RETRY, "RETRY"), (DAX_VM_FAULT_FALLBACK, "FALLBACK"),
        (DAX_VM_FAULT_NEEDDSYNC, "NEEDDSYNC"), (DAX_VM_FAULT_COMPLETED, "COMPLETED"),
    ]
    let set = names.filter { bits & $0.0 != 0 }.map { "VM_FAULT_" + $0.1 }
    let known = names.reduce(UInt32(0)) { $0 | $1.0 }
    let rest = bits & ~known
    if set.isEmpty && rest == 0 { return "0" }
    return (set + (rest != 0 ? [hex(UInt64(rest))] : [])).joined(separator: "|")
}

// MARK: page-table views

/// The leaf that maps `addr` in `mm`, if any: its level and entry.
struct Leaf: Equatable {
    var level: RmapLevel
    var entry: PTEntry
    var pfn: UInt64 { entryPfn(entry) }
    var writable: Bool { entryWrite(entry) }
    var dirty: Bool { entryDirty(entry) }
    var young: Bool { entryYoung(entry) }
    var special: Bool { entrySpecial(entry) }
    var user: Bool { entry & PT.user != 0 }
}

/// The present leaf mapping `addr` (PUD, PMD or PTE), read under mmap_lock.
func leaf(_ mm: MM, _ addr: UInt64) -> Leaf? {
    mm.lockRead()
    defer { mm.unlockRead() }
    return mm.withUnsafeRecord { ref -> Leaf? in
        let w = walk(ref, addr)
        if let pud = w.pud, entryLeaf(dax_load_u64(pud)) { return Leaf(level: .pud, entry: dax_load_u64(pud)) }
        if let pmd = w.pmd, entryLeaf(dax_load_u64(pmd)) { return Leaf(level: .pmd, entry: dax_load_u64(pmd)) }
        if let pte = w.pte, entryPresent(dax_load_u64(pte)) { return Leaf(level: .pte, entry: dax_load_u64(pte)) }
        return nil
    }
}

/// zap_page_range_single over [start, start+length) with mmap_lock held for read.
func zap(_ mm: MM, _ start: UInt64, _ length: UInt64) {
    mm.lockRead()
    defer { mm.unlockRead() }
    mm.withUnsafeRecord { zapPageRange($0, start, start + length) }
}

/// The level a fault of `align` bytes maps at, and its folio order.
func level(of align: UInt64) -> RmapLevel {
    align == UInt64(pudSize) ? .pud : align == UInt64(pmdSize) ? .pmd : .pte
}

func order(of align: UInt64) -> Int { (align >> UInt64(pageShift)).trailingZeroBitCount }

func levelName(_ l: RmapLevel) -> String {
    switch l {
    case .pte: "PTE"
    case .pmd: "PMD"
    case .pud: "PUD"
    }
}

func sizeName(_ bytes: UInt64) -> String {
    if bytes >= 1 << 40 && bytes % (1 << 40) == 0 { return "\(bytes >> 40)T" }
    if bytes >= 1 << 30 && bytes % (1 << 30) == 0 { return "\(bytes >> 30)G" }
    if bytes >= 1 << 20 && bytes % (1 << 20) == 0 { return "\(bytes >> 20)M" }
    return "\(bytes >> 10)K"
}

// MARK: machines

/// A port kernel with one probed device-dax instance of `align` over
/// `size` bytes at physical `base`, and an empty MM.
final class DevDaxMachine: @unchecked Sendable {
    let kernel: Kernel
    let dev: DevDax
    let mm: MM

    init(align: UInt64, size: UInt64, base: UInt64 = 0x40_0000_0000) throws {
        kernel = try Kernel(physBits: 40)
        dev = try DevDax(kernel: kernel, ranges: [PhysicalRange(start: base, size: size)], align: align)
        try dev.probe()
        mm = try MM(kernel: kernel)
    }

    var pgmap: DevPagemap { dev.pgmap! }
    var pgmaps: [DevPagemap] { dev.pgmap.map { [$0] } ?? [] }
    var basePfn: UInt64 { dev.ranges[0].range.startPfn }

    /// The folio at device byte `offset`.
    func folio(_ offset: UInt64) -> Folio { pfnToPage(kernel.ref, basePfn + (offset >> UInt64(pageShift))).folio }

    /// dax_mmap of `length` bytes from device byte `offset`.
    func map(_ length: UInt64, offset: UInt64 = 0, prot: Prot = [.read, .write]) throws -> UInt64 {
        try mm.mmap(dev.mmapRequest(length: length, pgoff: offset >> UInt64(pageShift), prot: prot))
    }

    func counters(_ folio: Folio) -> Counters { Counters(kernel, folio, mm) }

    /// The ledger of references held outside the page tables: (folio, refs).
    func ledger(_ held: [(Folio, Int64)]) -> RefLedger {
        var l: RefLedger = [:]
        for (f, n) in held { l[pageToPfn(kernel.ref, f.head), default: 0] += n }
        return l
    }
}

/// A port kernel with an extent file store over `size` bytes of fs-dax
/// memory at `start`, and an empty MM.
final class FSDaxMachine: @unchecked Sendable {
    let kernel: Kernel
    let fs: DaxFS
    let mm: MM

    init(size: UInt64 = 16 << 20, start: UInt64 = 0x8000_0000) throws {
        kernel = try Kernel(physBits: 40)
        fs = try DaxFS(kernel: kernel, start: start, size: size)
        mm = try MM(kernel: kernel)
    }

    var pgmaps: [DevPagemap] { [fs.pgmap] }
    func counters(_ folio: Folio) -> Counters { Counters(kernel, folio, mm) }
}

// MARK: threads

/// A thread running `body`; `join(seconds:)` waits for it at most that long.
final class CheckThread: @unchecked Sendable {
    private let done = DispatchSemaphore(value: 0)

    init(_ body: @escaping @Sendable () -> Void) {
        let d = done
        Thread { body(); d.signal() }.start()
    }

    /// Whether the thread finished within `seconds`.
    func join(seconds: Double) -> Bool {
        done.wait(timeout: .now() + seconds) == .success
    }
}

/// Waits until a thread sleeps in wait_var_event on `addr` (its bucket's
/// waitqueue is active) or `done()` holds, at most `seconds`; returns whether
/// one of them happened.
func waitUntilSleeping(_ kernel: Kernel, on addr: UnsafeRawPointer, seconds: Double, orUntil done: () -> Bool) -> Bool {
    let deadline = monotonicNanos() &+ UInt64(seconds * 1e9)
    while monotonicNanos() < deadline {
        if kernel.withUnsafeRecord({ varWaitqueueActive($0, addr) }) || done() { return true }
        usleep(200)
    }
    return false
}

/// A value two threads share.
final class SharedBox<T>: @unchecked Sendable {
    private let lock = NSLock()
    private var stored: T
    init(_ v: T) { stored = v }
    var value: T {
        get { lock.lock(); defer { lock.unlock() }; return stored }
        set { lock.lock(); stored = newValue; lock.unlock() }
    }
}

/// A counter two threads share.
final class AtomicCount: Sendable {
    private let v = Atomic<Int>(0)
    func add(_ n: Int = 1) { v.add(n, ordering: .sequentiallyConsistent) }
    var value: Int { v.load(ordering: .sequentiallyConsistent) }
}
