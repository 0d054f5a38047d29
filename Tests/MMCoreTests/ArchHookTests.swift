// The arch hook behind the page-table funnels (struct dax_arch_ops): every
// leaf change made by a fault, an mkwrite upgrade, a zap, a huge split,
// mprotect and mremap is reported once with its address, level, old and new
// entry, and every flush with its range; nothing else is. A recording hook
// (C function pointers writing into a preallocated buffer through ctx) sees
// the reports.

import CDaxMM
import DAXBase
import Testing
@testable import MMCore
import MMTestChecks
import MMTestSupport

/// One report of the hook.
struct ArchEvent: Equatable, CustomStringConvertible {
    var isFlush: Bool
    var addr: UInt64   // set_entry: the entry's address; flush: start
    var level: UInt32
    var a: UInt64      // set_entry: old entry; flush: end
    var b: UInt64      // set_entry: new entry; flush: 0

    static func set(_ addr: UInt64, _ level: dax_pgtable_level, _ old: PTEntry, _ new: PTEntry) -> ArchEvent {
        ArchEvent(isFlush: false, addr: addr, level: level.rawValue, a: old, b: new)
    }
    static func flush(_ start: UInt64, _ end: UInt64, _ level: dax_pgtable_level) -> ArchEvent {
        ArchEvent(isFlush: true, addr: start, level: level.rawValue, a: end, b: 0)
    }

    var description: String {
        let l = ["PTE", "PMD", "PUD"][Int(level)]
        return isFlush ? "flush [\(hex(addr)), \(hex(a))) \(l)"
                       : "set \(l) @\(hex(addr)) \(hex(a)) -> \(hex(b))"
    }
}

/// A recording arch hook. The callbacks reach the buffer through ctx: word
/// 0 counts reports, each report takes `stride` words (kind, addr, level,
/// a, b, mm). Nothing is allocated inside a callback.
final class ArchRecorder: @unchecked Sendable {
    static let capacity = 1024
    static let stride = 6
    let words: UnsafeMutablePointer<Int64>
    let ops: UnsafeMutablePointer<dax_arch_ops>

    init() {
        let n = 1 + Self.capacity * Self.stride
        words = .allocate(capacity: n)
        words.initialize(repeating: 0, count: n)
        ops = .allocate(capacity: 1)
        ops.initialize(to: dax_arch_ops())
        ops.pointee.set_entry = archRecordSetEntry
        ops.pointee.flush_tlb_range = archRecordFlush
    }

    deinit {
        words.deallocate()
        ops.deallocate()
    }

    var context: UnsafeMutableRawPointer { UnsafeMutableRawPointer(words) }

    func install(on mm: MM) { mm.setArchHook(ops, context: context) }

    /// The callbacks' body.
    static func append(_ ctx: UnsafeMutableRawPointer?, _ mm: UnsafeMutablePointer<dax_mm>?, _ kind: Int64,
                       _ addr: UInt64, _ level: UInt32, _ a: UInt64, _ b: UInt64) {
        let w = ctx!.assumingMemoryBound(to: Int64.self)
        let i = Int(dax_atomic64_add_return(w, 1) - 1)
        guard i < capacity else { return }
        let r = w + 1 + i * stride
        r[0] = kind
        r[1] = Int64(bitPattern: addr)
        r[2] = Int64(level)
        r[3] = Int64(bitPattern: a)
        r[4] = Int64(bitPattern: b)
        r[5] = Int64(Int(bitPattern: mm))
    }

    /// How many reports arrived (including any beyond the buffer).
    var count: Int { Int(dax_atomic64_read(words)) }

    /// The reports so far, in order, and starts over. Every report must name
    /// `mm` (checked here).
    func take(_ mm: MM, sourceLocation: SourceLocation = #_sourceLocation) -> [ArchEvent] {
        let n = count
        #expect(n <= Self.capacity, sourceLocation: sourceLocation)
        var out: [ArchEvent] = []
        for i in 0..<min(n, Self.capacity) {
            let r = words + 1 + i * Self.stride
            #expect(r[5] == Int64(Int(bitPattern: mm.ref)), "report \(i) names another mm", sourceLocation: sourceLocation)
            out.append(ArchEvent(isFlush: r[0] == 2, addr: UInt64(bitPattern: r[1]), level: UInt32(r[2]),
                                 a: UInt64(bitPattern: r[3]), b: UInt64(bitPattern: r[4])))
        }
        dax_atomic64_set(words, 0)
        return out
    }
}

let archRecordSetEntry: @convention(c) (UnsafeMutableRawPointer?, UnsafeMutablePointer<dax_mm>?, UInt64,
                                        dax_pgtable_level, UInt64, UInt64) -> Void = { ctx, mm, addr, level, old, new in
    ArchRecorder.append(ctx, mm, 1, addr, level.rawValue, old, new)
}

let archRecordFlush: @convention(c) (UnsafeMutableRawPointer?, UnsafeMutablePointer<dax_mm>?, UInt64, UInt64,
                                     dax_pgtable_level) -> Void = { ctx, mm, start, end, level in
    ArchRecorder.append(ctx, mm, 2, start, level.rawValue, end, 0)
}

/// Counting callbacks for the removal test: ctx words are (calls, dead,
/// late); a call that sees `dead` set is late. Each call lingers first, so
/// a remover that did not wait for it would mark it dead meanwhile.
@inline(__always)
func archCount(_ ctx: UnsafeMutableRawPointer?) {
    let w = ctx!.assumingMemoryBound(to: Int64.self)
    for _ in 0..<2000 { dax_cpu_relax() }
    if dax_atomic64_read(w + 1) != 0 { dax_atomic64_add(w + 2, 1) }
    dax_atomic64_add(w, 1)
}

let archCountSetEntry: @convention(c) (UnsafeMutableRawPointer?, UnsafeMutablePointer<dax_mm>?, UInt64,
                                       dax_pgtable_level, UInt64, UInt64) -> Void = { ctx, _, _, _, _, _ in archCount(ctx) }
let archCountFlush: @convention(c) (UnsafeMutableRawPointer?, UnsafeMutablePointer<dax_mm>?, UInt64, UInt64,
                                    dax_pgtable_level) -> Void = { ctx, _, _, _, _ in archCount(ctx) }

@Suite("Arch hook: every page-table change through the funnels")
struct ArchHookTests {
    static func level(_ order: Int) -> dax_pgtable_level {
        order == 0 ? DAX_PGTABLE_LEVEL_PTE : order == pmdOrder ? DAX_PGTABLE_LEVEL_PMD : DAX_PGTABLE_LEVEL_PUD
    }

    static func entry(_ mm: MM, _ addr: UInt64, order: Int) -> PTEntry {
        order == 0 ? VMAKit.pte(mm, addr) : order == pmdOrder ? VMAKit.pmd(mm, addr) : VMAKit.pud(mm, addr)
    }

    @Test("set_pte_at / set_pmd_at / set_pud_at: a first fault reports one entry (addr, level, 0 -> the entry mapped), no flush; populated tables are not reported",
          arguments: [0, 9, 18])
    func faultReportsOneEntry(order: Int) throws {
        let size = UInt64(4096) << UInt64(order)
        let rig = try FaultRig(order: order, bytes: max(size, 4 << 20))
        let rec = ArchRecorder()
        rec.install(on: rig.mm)
        defer { rig.mm.removeArchHook() }
        let a = try rig.linkVMA(length: size)
        #expect(rec.take(rig.mm).isEmpty, "mmap changes no entry")
        // A PTE fault at `a`; a huge fault from inside the entry maps it at `a`.
        let at = order == 0 ? a : a + 4096
        let f = rig.folio(pgoff: 0)
        let before = VMAKit.counters(rig, f)
        let tables = rig.kernel.pageTablesInUse
        #expect(rig.mm.handleFault(at, write: false) & DAX_VM_FAULT_ERROR == 0)
        #expect(rig.kernel.pageTablesInUse > tables)
        let e = Self.entry(rig.mm, a, order: order)
        #expect(entryPresent(e) && entryPfn(e) == rig.pgmap.ranges[0].startPfn)
        #expect(rec.take(rig.mm) == [.set(a, Self.level(order), 0, e)])
        let after = VMAKit.counters(rig, f)
        #expect(after.ref == before.ref + 1 && after.mapcount == before.mapcount + 1)
        #expect(after.rss == before.rss + Int64(1) << Int64(order))
        // A read fault on the mapped entry makes it young (*_set_access_flags): one more report.
        #expect(!entryYoung(e))
        #expect(rig.mm.handleFault(at, write: false) & DAX_VM_FAULT_ERROR == 0)
        let young = Self.entry(rig.mm, a, order: order)
        #expect(young == entryMkyoung(e))
        #expect(rec.take(rig.mm) == [.set(a, Self.level(order), e, young)])
        #expect(VMAKit.counters(rig, f) == after)
        rig.check()
    }

    @Test("ptep/pmdp_set_access_flags with maybe_mkwrite: a write fault after a read fault on a write-notify VMA reports the upgrade (old -> old|RW|dirty|young) and nothing else",
          arguments: [0, 9])
    func mkwriteUpgradeReportsOldAndNew(order: Int) throws {
        let size = UInt64(4096) << UInt64(order)
        let (rig, a) = try vmaFixture(order: order, bytes: max(size, 4 << 20), length: size, ops: .writenotify)
        let rec = ArchRecorder()
        rec.install(on: rig.mm)
        defer { rig.mm.removeArchHook() }
        #expect(rig.mm.handleFault(a, write: false) & DAX_VM_FAULT_ERROR == 0)
        let e0 = Self.entry(rig.mm, a, order: order)
        #expect(entryPresent(e0) && !entryWrite(e0), "write notification keeps the first entry read-only")
        #expect(rec.take(rig.mm) == [.set(a, Self.level(order), 0, e0)])
        let f = rig.folio(pgoff: 0)
        let before = VMAKit.counters(rig, f)

        #expect(rig.mm.handleFault(a, write: true) & DAX_VM_FAULT_ERROR == 0)
        let e1 = Self.entry(rig.mm, a, order: order)
        #expect(e1 == e0 | PT.rw | PT.dirty | PT.accessed)
        #expect(rec.take(rig.mm) == [.set(a, Self.level(order), e0, e1)])
        #expect(VMAKit.counters(rig, f) == before, "an upgrade takes no reference and no mapcount")
        rig.check()
    }

    @Test("zap_pte_range: munmap reports ptep_get_and_clear of each mapped PTE (empty ones not), then one flush_tlb_range over the cleared span before the references go")
    func zapReportsClearsThenFlush() throws {
        let (rig, a) = try vmaFixture(length: 8 * 4096)
        let rec = ArchRecorder()
        rec.install(on: rig.mm)
        defer { rig.mm.removeArchHook() }
        let mapped: [UInt64] = [1, 2, 5]
        for i in mapped { #expect(rig.mm.handleFault(a + i * 4096, write: true) & DAX_VM_FAULT_ERROR == 0) }
        let entries = mapped.map { VMAKit.pte(rig.mm, a + $0 * 4096) }
        #expect(rec.take(rig.mm).count == 3)
        let folios = mapped.map { rig.folio(pgoff: $0) }
        #expect(folios.allSatisfy { $0.refCount == 2 && $0.mapcount == 1 })
        #expect(rig.mm.rssFilePages == 3)

        try rig.mm.munmap(a, 8 * 4096)
        let expected: [ArchEvent] = zip(mapped, entries).map { .set(a + $0 * 4096, DAX_PGTABLE_LEVEL_PTE, $1, 0) }
            + [.flush(a + 4096, a + 6 * 4096, DAX_PGTABLE_LEVEL_PTE)]
        #expect(rec.take(rig.mm) == expected)
        #expect(folios.allSatisfy { $0.refCount == 1 && $0.mapcount == 0 })
        #expect(rig.mm.rssFilePages == 0)
        rig.check()
    }

    @Test("zap_huge_pmd / zap_huge_pud: munmap of a huge mapping reports pmdp/pudp_huge_get_and_clear and a flush of the whole entry at its level",
          arguments: [9, 18])
    func hugeZapReportsClearAndFlush(order: Int) throws {
        let size = UInt64(4096) << UInt64(order)
        let (rig, a) = try vmaFixture(order: order, bytes: max(size, 4 << 20), length: size)
        let rec = ArchRecorder()
        rec.install(on: rig.mm)
        defer { rig.mm.removeArchHook() }
        let f = rig.folio(pgoff: 0)
        let before = VMAKit.counters(rig, f)
        #expect(rig.mm.handleFault(a, write: true) & DAX_VM_FAULT_ERROR == 0)
        let e = Self.entry(rig.mm, a, order: order)
        #expect(rec.take(rig.mm) == [.set(a, Self.level(order), 0, e)])
        try rig.mm.munmap(a, size)
        #expect(rec.take(rig.mm) == [.set(a, Self.level(order), e, 0), .flush(a, a + size, Self.level(order))])
        #expect(VMAKit.counters(rig, f) == before)
        rig.check()
    }

    @Test("__split_huge_pmd_locked: munmap of a 4K piece of a PMD mapping reports pmdp_huge_clear_flush of the whole PMD (clear, then a PMD flush) and nothing for the piece")
    func hugeSplitReportsClearFlush() throws {
        let (rig, a) = try vmaFixture(order: pmdOrder, bytes: 4 << 20, length: 4 << 20, ops: .noMaySplit)
        let f = rig.folio(pgoff: 0), g = rig.folio(pgoff: 512)
        let bf = VMAKit.counters(rig, f)
        #expect(rig.mm.handleFault(a, write: false) & DAX_VM_FAULT_ERROR == 0)
        #expect(rig.mm.handleFault(a + (2 << 20), write: false) & DAX_VM_FAULT_ERROR == 0)
        let e = VMAKit.pmd(rig.mm, a)
        let rec = ArchRecorder()
        rec.install(on: rig.mm)
        defer { rig.mm.removeArchHook() }
        try rig.mm.munmap(a + 8192, 4096)
        #expect(rec.take(rig.mm) == [.set(a, DAX_PGTABLE_LEVEL_PMD, e, 0), .flush(a, a + (2 << 20), DAX_PGTABLE_LEVEL_PMD)])
        #expect(VMAKit.counters(rig, f).ref == bf.ref && f.mapcount == 0 && f.entireMapcount == 0)
        #expect(g.refCount == 2 && g.entireMapcount == 1, "the other PMD is neither touched nor reported")
        #expect(rig.mm.rssFilePages == 512)
        rig.check()
    }

    @Test("change_protection: mprotect reports ptep_modify_prot_commit / set_pmd_at of each present entry losing RW, then one flush of the changed span; PROT_NONE then reports the loss of USER, and read-write access coming back the return of both",
          arguments: [0, 9])
    func mprotectReportsEachEntryAndOneFlush(order: Int) throws {
        let size = UInt64(4096) << UInt64(order)
        let len = order == 0 ? 8 * size : size
        let (rig, a) = try vmaFixture(order: order, bytes: max(len, 4 << 20), length: len)
        let mapped: [UInt64] = order == 0 ? [2, 3, 6] : [0]
        for i in mapped { #expect(rig.mm.handleFault(a + i * size, write: true) & DAX_VM_FAULT_ERROR == 0) }
        let e0 = mapped.map { Self.entry(rig.mm, a + $0 * size, order: order) }
        #expect(e0.allSatisfy(entryWrite))
        let f = rig.folio(pgoff: mapped[0] << UInt64(order))
        let before = VMAKit.counters(rig, f)
        let rec = ArchRecorder()
        rec.install(on: rig.mm)
        defer { rig.mm.removeArchHook() }
        let lvl = Self.level(order)
        let span = (a + mapped.first! * size, a + (mapped.last! + 1) * size)

        try rig.mm.mprotect(a, len, [.read])
        let e1 = e0.map { $0 & ~PT.rw }
        #expect(mapped.map { Self.entry(rig.mm, a + $0 * size, order: order) } == e1)
        #expect(rec.take(rig.mm) == zip(mapped, zip(e0, e1)).map { .set(a + $0 * size, lvl, $1.0, $1.1) }
                + [.flush(span.0, span.1, lvl)])
        #expect(VMAKit.counters(rig, f) == before)

        try rig.mm.mprotect(a, len, [.read])
        #expect(rec.take(rig.mm).isEmpty, "nothing to change: no report, no flush")

        try rig.mm.mprotect(a, len, [])
        let e2 = e1.map { $0 & ~PT.user }
        #expect(rec.take(rig.mm) == zip(mapped, zip(e1, e2)).map { .set(a + $0 * size, lvl, $1.0, $1.1) }
                + [.flush(span.0, span.1, lvl)])
        #expect(VMAKit.counters(rig, f) == before)

        // Read and write access come back (pte_modify with the new
        // vm_page_prot, PAGE_SHARED: the mapping has no write notification):
        // _PAGE_USER and _PAGE_RW return at once.
        try rig.mm.mprotect(a, len, [.read, .write])
        #expect(mapped.map { Self.entry(rig.mm, a + $0 * size, order: order) } == e0)
        #expect(rec.take(rig.mm) == zip(mapped, zip(e2, e0)).map { .set(a + $0 * size, lvl, $1.0, $1.1) }
                + [.flush(span.0, span.1, lvl)])
        #expect(VMAKit.counters(rig, f) == before)
        #expect(rig.mm.handleFault(a + mapped[0] * size, write: true) & DAX_VM_FAULT_ERROR == 0)
        #expect(entryWrite(Self.entry(rig.mm, a + mapped[0] * size, order: order)))
        rig.check()
    }

    @Test("move_page_tables: mremap reports each moved entry cleared at the old address and set at the new one, then one flush of the old span",
          arguments: [0, 9])
    func mremapReportsMoveAndFlush(order: Int) throws {
        let size = UInt64(4096) << UInt64(order)
        let len = order == 0 ? 4 * size : size
        let (rig, a) = try vmaFixture(order: order, bytes: max(2 * len, 4 << 20), length: len)
        let mapped: [UInt64] = order == 0 ? [0, 2] : [0]
        for i in mapped { #expect(rig.mm.handleFault(a + i * size, write: true) & DAX_VM_FAULT_ERROR == 0) }
        let e = mapped.map { Self.entry(rig.mm, a + $0 * size, order: order) }
        let f = rig.folio(pgoff: 0)
        let before = VMAKit.counters(rig, f)
        let rec = ArchRecorder()
        rec.install(on: rig.mm)
        defer { rig.mm.removeArchHook() }

        let d = try rig.mm.mremap(a, oldLength: len, newLength: 2 * len, mayMove: true)
        try #require(d != a)
        let lvl = Self.level(order)
        var expected: [ArchEvent] = []
        for (i, old) in zip(mapped, e) {
            expected.append(.set(a + i * size, lvl, old, 0))
            // move_soft_dirty_pte / move_soft_dirty_pmd: the moved entry is soft-dirty.
            expected.append(.set(d + i * size, lvl, 0, old | PT.softDirty))
        }
        expected.append(.flush(a + mapped.first! * size, a + (mapped.last! + 1) * size, lvl))
        #expect(rec.take(rig.mm) == expected)
        #expect(zip(mapped, e).allSatisfy { Self.entry(rig.mm, d + $0 * size, order: order) == $1 | PT.softDirty })
        #expect(VMAKit.counters(rig, f) == before, "references and rmap travel with the entries")
        rig.check()
    }

    @Test("No hook installed: the funnels are plain stores; the same faults, mprotect and munmap leave the same entries and counters as with a hook, and an uninstalled recorder hears nothing")
    func noHookIsExistingBehaviour() throws {
        let plain = try FaultRig(order: 0, bytes: 2 << 20)
        let hooked = try FaultRig(order: 0, bytes: 2 << 20)
        let idle = ArchRecorder()
        let rec = ArchRecorder()
        rec.install(on: hooked.mm)
        defer { hooked.mm.removeArchHook() }
        #expect(!plain.mm.hasArchHook && hooked.mm.hasArchHook)
        var addrs: [UInt64] = []
        for rig in [plain, hooked] {
            var req = rig.map.request(length: 8 * 4096)
            req.fixedAddress = VMAOpsTests.fixedBase
            addrs.append(try rig.mm.mmap(req))
        }
        #expect(addrs[0] == addrs[1])
        let a = addrs[0]
        func state(_ rig: FaultRig) -> ([PTEntry], [VMAKit.Counters]) {
            ((0..<8).map { VMAKit.pte(rig.mm, a + UInt64($0) * 4096) },
             (0..<8).map { VMAKit.counters(rig, rig.folio(pgoff: UInt64($0))) })
        }
        let steps: [(FaultRig) throws -> Void] = [
            { #expect($0.mm.handleFault(a, write: false) & DAX_VM_FAULT_ERROR == 0) },
            { #expect($0.mm.handleFault(a + 4096, write: true) & DAX_VM_FAULT_ERROR == 0) },
            { #expect($0.mm.handleFault(a, write: true) & DAX_VM_FAULT_ERROR == 0) },
            { try $0.mm.mprotect(a, 8 * 4096, [.read]) },
            { try $0.mm.munmap(a + 4096, 4096) },
        ]
        for step in steps {
            try step(plain)
            try step(hooked)
            let p = state(plain), h = state(hooked)
            #expect(p.0 == h.0)
            #expect(p.1 == h.1)
        }
        #expect(rec.take(hooked.mm).count == 8)   // 2 inserts, 1 upgrade, 2 wrprotects + flush, 1 clear + flush
        #expect(idle.count == 0)
        plain.check()
        hooked.check()
    }

    @Test("MM.removeArchHook: after removal no change is reported; a hook installed after it hears only its own changes")
    func removingTheHookStopsReports() throws {
        let (rig, a) = try vmaFixture(length: 8 * 4096)
        let first = ArchRecorder(), second = ArchRecorder()
        first.install(on: rig.mm)
        #expect(rig.mm.handleFault(a, write: true) & DAX_VM_FAULT_ERROR == 0)
        let e0 = VMAKit.pte(rig.mm, a)
        #expect(first.take(rig.mm) == [.set(a, DAX_PGTABLE_LEVEL_PTE, 0, e0)])

        rig.mm.removeArchHook()
        #expect(!rig.mm.hasArchHook)
        let f1 = rig.folio(pgoff: 1)
        let b1 = VMAKit.counters(rig, f1)
        #expect(rig.mm.handleFault(a + 4096, write: true) & DAX_VM_FAULT_ERROR == 0)
        try rig.mm.mprotect(a, 8 * 4096, [.read])
        try rig.mm.munmap(a, 4096)
        #expect(first.count == 0, "a removed hook hears nothing")
        #expect(VMAKit.counters(rig, f1).ref == b1.ref + 1, "the changes themselves still happen")
        #expect(!entryWrite(VMAKit.pte(rig.mm, a + 4096)) && VMAKit.pte(rig.mm, a) == 0)

        second.install(on: rig.mm)
        let e1 = VMAKit.pte(rig.mm, a + 4096)
        try rig.mm.munmap(a + 4096, 4096)
        #expect(second.take(rig.mm) == [.set(a + 4096, DAX_PGTABLE_LEVEL_PTE, e1, 0),
                                         .flush(a + 4096, a + 2 * 4096, DAX_PGTABLE_LEVEL_PTE)])
        #expect(first.count == 0)
        let after = VMAKit.counters(rig, f1)
        #expect(after.ref == b1.ref && after.mapcount == b1.mapcount && after.rss == 0)
        rig.mm.removeArchHook()
        rig.check()
    }

    @Test("MM.setArchHook(nil) waits for hook calls in flight: zaps running without mmap_lock (as unmap_mapping_range does) never call a hook after its removal returned")
    func removalWaitsForCallsInFlight() throws {
        let (rig, a) = try vmaFixture(length: 64 * 4096)
        let vmaBits = UInt(bitPattern: VMAKit.read(rig.mm) { vmaLookup(rig.mm.ref, a) })
        // One context per installation (calls, dead, late), and a stop word.
        let rounds = 200
        let words = UnsafeMutablePointer<Int64>.allocate(capacity: 3 * rounds + 1)
        words.initialize(repeating: 0, count: 3 * rounds + 1)
        defer { words.deallocate() }
        let stop = words + 3 * rounds
        let ops = UnsafeMutablePointer<dax_arch_ops>.allocate(capacity: 1)
        ops.initialize(to: dax_arch_ops(set_entry: archCountSetEntry, flush_tlb_range: archCountFlush))
        defer { ops.deallocate() }
        let stopBits = UInt(bitPattern: stop)
        let mm = rig.mm
        let zapper = TestThread {
            let stop = UnsafeMutablePointer<Int64>(bitPattern: stopBits)!
            let vma = VMARef(bitPattern: vmaBits)!
            while dax_atomic64_read(stop) == 0 {
                for i in 0..<UInt64(64) { _ = mm.handleFault(a + i * 4096, write: true) }
                zapVMARange(mm.ref, vma, a, a + 64 * 4096)   // no mmap_lock
            }
        }
        for r in 0..<rounds {
            let ctx = words + 3 * r
            rig.mm.setArchHook(ops, context: UnsafeMutableRawPointer(ctx))
            var spins = 0
            while dax_atomic64_read(ctx) < 3 && spins < 1_000_000 {
                dax_cpu_relax()
                spins += 1
            }
            rig.mm.removeArchHook()
            dax_atomic64_set(ctx + 1, 1)   // from here on, a call on ctx is late
        }
        dax_atomic64_set(stop, 1)
        zapper.join()
        let calls = (0..<rounds).map { dax_atomic64_read(words + 3 * $0) }.reduce(0, +)
        let late = (0..<rounds).map { dax_atomic64_read(words + 3 * $0 + 2) }.reduce(0, +)
        #expect(calls > 0, "the hook was called while installed")
        #expect(late == 0, "no call after its removal returned")
        #expect(!rig.mm.hasArchHook)
        #expect(rig.mm.rssFilePages == 0 && rig.folio(pgoff: 0).refCount == 1)
        rig.check()
    }
}
