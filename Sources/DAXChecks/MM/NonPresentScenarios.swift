// The mm suite's scenarios for non-present PTEs, mmu notifiers and
// device-exclusive entries (mm/rmap.c make_device_exclusive, mm/memory.c
// do_swap_page / remove_device_exclusive_entry / restore_exclusive_pte /
// zap_nonpresent_ptes, mm/mprotect.c change_pte_range, mm/mremap.c
// move_ptes, mm/gup.c faultin_page, include/linux/mmu_notifier.h), as the
// kernel has them since 6.15.
//
// Migration and device-private entries are installed by hand (the port has
// no page migration and these checks bind no device-private driver): a
// migration entry as try_to_migrate_one leaves it (rmap and the mapping's
// reference dropped, rss kept, the folio locked and held by the migrator),
// a device-private entry over an ordinary anon page as migrate_vma_pages
// leaves one (reference, mapcount and rss kept). What zap, mprotect and
// mremap do with an entry depends only on its type, so the stand-in page
// does not change what is checked; the CPU fault of a device-private entry
// (migrate_to_ram) is not exercised.

import CDaxMM
import DAXBase
import DAXCore
import Foundation
import MMCore
import MMTestSupport

#if canImport(Glibc)
import Glibc
#endif

// MARK: a recording mmu notifier

/// One invalidate_range_start a recorder saw.
struct NotifierEvent: Equatable, CustomStringConvertible {
    var event: MMUNotifierEvent
    var start: UInt64
    var end: UInt64
    var owner: UInt

    init(_ event: MMUNotifierEvent, _ start: UInt64, _ end: UInt64, owner: UInt = 0) {
        self.event = event
        self.start = start
        self.end = end
        self.owner = owner
    }

    var description: String {
        "\(event) [\(hex(start)), \(hex(end)))" + (owner != 0 ? " owner \(hex(UInt64(owner)))" : "")
    }
}

/// The recorder's C-visible state: the callbacks write here only (no Swift
/// object, no allocation: they may run in a signal handler).
private struct RecorderState {
    var owner: UInt
    var starts: Int
    var ends: Int
    var releases: Int
    var filtered: Int
    var startBuf: UnsafeMutablePointer<dax_mmu_notifier_range>
    var endBuf: UnsafeMutablePointer<dax_mmu_notifier_range>
    var cap: Int
}

/// dax_mmu_notifier_ops of the recorder: invalidate_range_start records the
/// range unless its owner is the recorder's own (the filtering a driver
/// calling make_device_exclusive must do), invalidate_range_end records the
/// end, release counts.
nonisolated(unsafe) private let recorderOps: UnsafeMutablePointer<dax_mmu_notifier_ops> = {
    let ops = UnsafeMutablePointer<dax_mmu_notifier_ops>.allocate(capacity: 1)
    ops.initialize(to: dax_mmu_notifier_ops(
        release: { ctx, _ in
            ctx!.assumingMemoryBound(to: RecorderState.self).pointee.releases += 1
        },
        invalidate_range_start: { ctx, range in
            let s = ctx!.assumingMemoryBound(to: RecorderState.self)
            let r = range!.pointee
            if s.pointee.owner != 0 && UInt(bitPattern: r.owner) == s.pointee.owner {
                s.pointee.filtered += 1
                return 0
            }
            if s.pointee.starts < s.pointee.cap { s.pointee.startBuf[s.pointee.starts] = r }
            s.pointee.starts += 1
            return 0
        },
        invalidate_range_end: { ctx, range in
            let s = ctx!.assumingMemoryBound(to: RecorderState.self)
            let r = range!.pointee
            if s.pointee.owner != 0 && UInt(bitPattern: r.owner) == s.pointee.owner { return }
            if s.pointee.ends < s.pointee.cap { s.pointee.endBuf[s.pointee.ends] = r }
            s.pointee.ends += 1
        }))
    return ops
}()

/// A subscriber that records every range it hears (mmu_notifier_register
/// on the MM), ignoring ranges started with its own `owner` cookie.
final class NotifierRecorder: @unchecked Sendable {
    private let state: UnsafeMutablePointer<RecorderState>
    private var handle: MMUNotifierHandle?
    private weak var mm: MM?

    init(owner: UInt = 0, capacity: Int = 256) {
        state = .allocate(capacity: 1)
        state.initialize(to: RecorderState(owner: owner, starts: 0, ends: 0, releases: 0, filtered: 0,
                                           startBuf: .allocate(capacity: capacity), endBuf: .allocate(capacity: capacity),
                                           cap: capacity))
    }

    deinit {
        unregister()
        state.pointee.startBuf.deallocate()
        state.pointee.endBuf.deallocate()
        state.deallocate()
    }

    func register(_ mm: MM) throws {
        handle = try mm.registerMMUNotifier(UnsafePointer(recorderOps), context: UnsafeMutableRawPointer(state))
        self.mm = mm
    }

    func unregister() {
        if let h = handle, let mm { mm.unregisterMMUNotifier(h) }
        handle = nil
    }

    /// The address-space cookie this recorder ignores (its own).
    var owner: UnsafeMutableRawPointer? { UnsafeMutableRawPointer(bitPattern: state.pointee.owner) }

    private func list(_ buf: UnsafeMutablePointer<dax_mmu_notifier_range>, _ n: Int) -> [NotifierEvent] {
        (0..<min(n, state.pointee.cap)).map {
            let r = buf[$0]
            return NotifierEvent(MMUNotifierEvent(rawValue: r.event) ?? .migrate, r.start, r.end, owner: UInt(bitPattern: r.owner))
        }
    }

    /// The ranges started since the last `take`, in order; clears them.
    /// `balanced` says whether every start had its end (same ranges).
    func take() -> (events: [NotifierEvent], balanced: Bool) {
        let s = list(state.pointee.startBuf, state.pointee.starts)
        let e = list(state.pointee.endBuf, state.pointee.ends)
        let key = { (x: NotifierEvent) in "\(x)" }
        let balanced = s.map(key).sorted() == e.map(key).sorted()
        state.pointee.starts = 0
        state.pointee.ends = 0
        return (s, balanced)
    }

    var releases: Int { state.pointee.releases }
    var filtered: Int { state.pointee.filtered }
}

extension TestContext {
    /// The recorder heard exactly `want` (in order), each start with its end.
    @discardableResult
    func expectEvents(_ r: NotifierRecorder, _ want: [NotifierEvent], _ what: String) -> Bool {
        let (got, balanced) = r.take()
        return expect(got == want && balanced,
                      "\(what): heard \(got.isEmpty ? "nothing" : got.map(\.description).joined(separator: ", "))\(balanced ? "" : " (a start without its end)"), expected \(want.isEmpty ? "nothing" : want.map(\.description).joined(separator: ", "))")
    }
}

// MARK: hand-installed entries

/// Replaces the present PTE at `addr` with `make(old)` under mmap_lock and
/// the PTE lock; returns the old PTE.
@discardableResult
private func replacePte(_ m: AnonMachine, _ addr: UInt64, _ make: (PTEntry) -> PTEntry) -> PTEntry {
    m.mm.lockWrite()
    defer { m.mm.unlockWrite() }
    return m.mm.withUnsafeRecord { mm -> PTEntry in
        let w = walk(mm, addr)
        guard let ptep = w.pte, let pmd = w.pmd else { return 0 }
        let ptl = pteLockptr(m.k, dax_load_u64(pmd))
        dax_spin_lock(ptl)
        defer { dax_spin_unlock(ptl) }
        let old = ptepGetAndClear(mm, addr, ptep)
        setPteAt(mm, addr, ptep, make(old))
        return old
    }
}

/// The present anon PTE at `addr` becomes a writable migration entry as
/// try_to_migrate_one leaves it: the folio locked and referenced by the
/// migrator, the rmap and the PTE's reference dropped, MM_ANONPAGES kept.
private func installMigrationEntry(_ m: AnonMachine, _ addr: UInt64, _ folio: Folio, _ page: Page) {
    folioLock(m.k, folio)
    folio.refInc()   // the migrator's isolation reference
    replacePte(m, addr) { old in
        var e = swpEntryToPte(makeWritableMigrationEntry(pageToPfn(m.k, page)))
        if pteSoftDirty(old) { e = pteSwpMksoftDirty(e) }
        return e
    }
    _ = folioRemoveRmapPte(m.k, folio, page)
    folioPut(m.k, folio)
}

// MARK: mm-nonpresent-entries

/// What zap, mprotect, mremap, GUP and the CPU fault do with each kind of
/// non-present entry (zap_nonpresent_ptes, change_pte_range, move_ptes,
/// faultin_page -> do_swap_page):
///  - device-exclusive: mprotect leaves it as it is (one entry type since
///    6.15); mremap moves it as is with soft-dirty set; GUP faults it back
///    (remove_device_exclusive_entry) and takes its reference from the
///    restored PTE; zap drops the reference, the mapcount and MM_ANONPAGES;
///  - migration: mprotect turns a writable one into a readable-exclusive
///    one for anon, soft-dirty kept; mremap moves it; a CPU fault sleeps in
///    migration_entry_wait until the folio is unlocked and maps nothing;
///    zap drops MM_ANONPAGES only (no rmap, no reference);
///  - device-private: mprotect turns a writable one readable, soft-dirty
///    dropped; mremap moves it with soft-dirty set; zap drops the
///    reference, the mapcount and MM_ANONPAGES.
func nonpresentEntriesScenario(_ t: TestContext) throws {
    let m = try t.must("a port kernel with ordinary memory") { try AnonMachine() }
    let k = m.k
    let len: UInt64 = 64 << 10
    let a = try t.must("mmap 64 KiB private anonymous") { try m.map(len) }
    for i in 0..<8 { t.expectFault(m.mm.handleFault(a + UInt64(i) * 4096, write: true), 0, "write fault on page \(i)") }
    let base = m.totals()
    t.expectEqual(base.rssAnon, 8, "MM_ANONPAGES after 8 writes")
    let pages = PageArray.allocate(capacity: 4)
    defer { pages.deallocate() }
    let owner = UnsafeMutableRawPointer(bitPattern: 0xde_c0de)

    // Device-exclusive.
    let x = a
    let xf = try t.require(m.folio(at: x), "page 0's folio")
    let xpfn = pageToPfn(k, xf.head)
    let dx = try t.must("make_device_exclusive(page 0)") { try m.mm.makeDeviceExclusive(x, owner: owner) }
    m.mm.releaseDeviceExclusive(dx)
    let xe = m.pte(x)
    t.expect(isSwapPte(xe) && isDeviceExclusiveEntry(pteToSwpEntry(xe)) && swpOffsetPfn(pteToSwpEntry(xe)) == xpfn,
             "a device-exclusive entry for the pfn: \(hex(xe))")
    t.expectFolio(xf, AnonFolioState(refcount: 1, mapcount: 1, exclusivePages: 1), "device-exclusive: the entry keeps the mapping")
    try t.must("mprotect PROT_READ") { try m.mm.mprotect(a, len, [.read]) }
    t.expectEqual(m.pte(x), xe, "mprotect(PROT_READ) leaves a device-exclusive entry as it is")
    try t.must("mprotect PROT_READ|PROT_WRITE") { try m.mm.mprotect(a, len, [.read, .write]) }
    t.expectEqual(m.pte(x), xe, "mprotect back to RW leaves it as it is")
    let moved = try t.must("mremap page 0 to a new place (grow 4K -> 8K, MREMAP_MAYMOVE)") {
        try m.mm.mremap(x, oldLength: 4096, newLength: 8192, mayMove: true)
    }
    t.expect(moved != x, "mremap moved the page")
    t.expectEqual(m.pte(x), 0, "the old slot after mremap")
    t.expectEqual(m.pte(moved), pteSwpMksoftDirty(xe), "move_ptes: the entry moved as is, move_soft_dirty_pte set swp soft-dirty")
    t.expectFolio(xf, AnonFolioState(refcount: 1, mapcount: 1, exclusivePages: 1), "device-exclusive after mremap")
    t.expectTotals(m, base, "after mremap of the device-exclusive entry")
    t.expectAnonConsistent(m, after: "mremap of a device-exclusive entry")
    let got = m.mm.withUnsafeRecord { getUserPages($0, moved, 1, [.write], pages) }
    t.expectEqual(got, 1, "get_user_pages(FOLL_WRITE) over a device-exclusive entry")
    let restored = m.pte(moved)
    t.expect(entryPresent(restored) && entryPfn(restored) == xpfn && entryWrite(restored) && pteSoftDirty(restored),
             "GUP faulted the entry back (restore_exclusive_pte: writable, soft-dirty from the entry): \(hex(restored))")
    t.expectFolio(xf, AnonFolioState(refcount: 2, mapcount: 1, exclusivePages: 1), "the restored PTE plus GUP's reference")
    if got == 1 { folioPut(k, Page(pages[0]!).folio) }
    let dx2 = try t.must("make_device_exclusive again") { try m.mm.makeDeviceExclusive(moved, owner: owner) }
    m.mm.releaseDeviceExclusive(dx2)
    try t.must("madvise(MADV_DONTNEED) of the device-exclusive entry") { try m.mm.madvise(moved, 4096, .dontNeed) }
    t.expectEqual(m.pte(moved), 0, "zap cleared the entry")
    t.expectTotals(m, base.plus(rss: -1, mapped: -1, allocated: -1),
                   "zap of a device-exclusive entry: folio_remove_rmap_pte, folio_put, MM_ANONPAGES -1 (the page freed)")
    t.expectAnonConsistent(m, after: "zap of a device-exclusive entry")

    // Migration.
    let g = a + 4096
    let gf = try t.require(m.folio(at: g), "page 1's folio")
    let gpfn = pageToPfn(k, gf.head)
    let before = m.totals()
    installMigrationEntry(m, g, gf, gf.head)
    let gInstalled = m.pte(g)
    t.expect(isWritableMigrationEntry(pteToSwpEntry(gInstalled)), "a writable migration entry: \(hex(gInstalled))")
    t.expectFolio(gf, AnonFolioState(refcount: 1, mapcount: 0, exclusivePages: 1),
                  "try_to_migrate_one: the mapping's rmap and reference gone, the migrator's reference held")
    t.expectTotals(m, before.plus(mapped: -1), "a migration entry keeps MM_ANONPAGES")
    try t.must("mprotect PROT_READ") { try m.mm.mprotect(a + 4096, len - 4096, [.read]) }
    let ge = m.pte(g)
    t.expect(isReadableExclusiveMigrationEntry(pteToSwpEntry(ge)) && swpOffsetPfn(pteToSwpEntry(ge)) == gpfn,
             "change_pte_range: a writable anon migration entry becomes readable-exclusive, same pfn: \(hex(ge))")
    t.expectEqual(pteSwpSoftDirty(ge), pteSwpSoftDirty(gInstalled), "mprotect keeps a migration entry's soft-dirty")
    try t.must("mprotect PROT_READ|PROT_WRITE") { try m.mm.mprotect(a + 4096, len - 4096, [.read, .write]) }
    t.expectEqual(m.pte(g), ge, "mprotect back to RW leaves the readable-exclusive entry")
    // A CPU fault sleeps in migration_entry_wait until the migrator unlocks.
    let mmBox = SharedBox<MM?>(m.mm)
    let ret = SharedBox<UInt32?>(nil)
    let faulter = CheckThread { ret.value = mmBox.value!.handleFault(g, write: false) }
    let flagsWord = UnsafeRawPointer(dax_page_flags(gf.raw)!)
    t.expect(waitUntilSleeping(m.kernel, on: flagsWord, seconds: 5, orUntil: { ret.value != nil }) && ret.value == nil,
             "a CPU fault on a migration entry sleeps while the folio is locked (migration_entry_wait)")
    folioUnlock(k, gf)
    t.expect(faulter.join(seconds: 10), "the fault returns after folio_unlock")
    t.expectEqual(ret.value, 0, "migration_entry_wait's fault returns 0 (retry)")
    mmBox.value = nil
    t.expectEqual(m.pte(g), ge, "the fault left the migration entry for the migrator")
    t.expectEqual(gf.refCount, 1, "the waiter's reference is put")
    try t.must("madvise(MADV_DONTNEED) of the migration entry") { try m.mm.madvise(g, 4096, .dontNeed) }
    t.expectEqual(m.pte(g), 0, "zap cleared the migration entry")
    t.expectTotals(m, before.plus(rss: -1, mapped: -1), "zap of a migration entry: MM_ANONPAGES -1, no rmap, no reference")
    t.expectEqual(gf.refCount, 1, "the migrator's reference survives the zap")
    folioPut(k, gf)
    t.expectTotals(m, before.plus(rss: -1, mapped: -1, allocated: -1), "the migrator's put frees the page")
    t.expectAnonConsistent(m, after: "zap of a migration entry")

    // Device-private (an anon page standing in for the device page).
    let p = a + 2 * 4096
    let pf = try t.require(m.folio(at: p), "page 2's folio")
    let ppfn = pageToPfn(k, pf.head)
    let before2 = m.totals()
    replacePte(m, p) { _ in pteSwpMksoftDirty(swpEntryToPte(makeWritableDevicePrivateEntry(ppfn))) }
    t.expect(isWritableDevicePrivateEntry(pteToSwpEntry(m.pte(p))), "a writable device-private entry, soft-dirty")
    try t.must("mprotect PROT_READ") { try m.mm.mprotect(p, 4096, [.read]) }
    let pe = m.pte(p)
    t.expect(isDevicePrivateEntry(pteToSwpEntry(pe)) && !isWritableDevicePrivateEntry(pteToSwpEntry(pe))
             && swpOffsetPfn(pteToSwpEntry(pe)) == ppfn && !pteSwpSoftDirty(pe),
             "change_pte_range: a writable device-private entry becomes readable, soft-dirty dropped: \(hex(pe))")
    t.expectFolio(pf, AnonFolioState(refcount: 1, mapcount: 1, exclusivePages: 1), "a device-private entry keeps the mapping")
    let pmoved = try t.must("mremap the device-private page") { try m.mm.mremap(p, oldLength: 4096, newLength: 8192, mayMove: true) }
    t.expectEqual(m.pte(pmoved), pteSwpMksoftDirty(pe), "move_ptes moves a device-private entry as is, soft-dirty set")
    t.expectTotals(m, before2, "after mprotect and mremap of the device-private entry")
    try t.must("munmap the device-private page") { try m.mm.munmap(pmoved, 8192) }
    t.expectTotals(m, before2.plus(rss: -1, mapped: -1, allocated: -1),
                   "zap of a device-private entry: folio_remove_rmap_pte, folio_put, MM_ANONPAGES -1")
    t.expectAnonConsistent(m, after: "zap of a device-private entry")

    try t.must("munmap the rest") {
        try m.mm.munmap(moved, 8192)
        try m.mm.munmap(a, len)
    }
    t.expectEqual(m.totals(), AnonTotals(rssAnon: 0, rssFile: 0, anonMapped: 0, anonThps: 0, allocated: 0), "everything freed")
    t.expectAnonConsistent(m, after: "munmap")
}

// MARK: mm-mmu-notifier

/// Which ranges a subscriber hears, and with which event and owner:
/// munmap UNMAP over the range (unmap_region); MADV_DONTNEED CLEAR over it
/// (zap_page_range_single); mprotect PROTECTION_VMA over the VMA range
/// (change_pud_range); mremap UNMAP over the old range (move_page_tables);
/// a 4K MADV_DONTNEED inside a THP CLEAR over the 4K, then CLEAR over the
/// PMD (__split_huge_pmd); make_device_exclusive EXCLUSIVE over the page
/// with the caller's owner, which a subscriber with that owner filters out;
/// the CPU fault's restore CLEAR with no owner; exit_mmap ->release, after
/// which the subscriber is unhooked (mn_hlist_release) and hears nothing of
/// the unmap.
func mmuNotifierScenario(_ t: TestContext) throws {
    var m: AnonMachine? = try t.must("a port kernel with ordinary memory") { try AnonMachine() }
    let driverCookie: UInt = 0xd1_5ca0
    let all = NotifierRecorder()
    let driver = NotifierRecorder(owner: driverCookie)
    try t.must("mmu_notifier_register x2") {
        try all.register(m!.mm)
        try driver.register(m!.mm)
    }
    t.expectEqual(m!.mm.mmuNotifierCount, 2, "subscriptions")
    let len = UInt64(4 * pmdSize)
    let a = try t.must("mmap 8 MiB private anonymous, MADV_HUGEPAGE") { try m!.map(len, hugepage: true) }
    t.expectEvents(all, [], "mmap and madvise(MADV_HUGEPAGE)")
    t.expectEvents(driver, [], "mmap and madvise(MADV_HUGEPAGE), driver")

    // Faults raise nothing.
    t.expectFault(m!.mm.handleFault(a, write: true), 0, "THP write fault")
    t.expectFault(m!.mm.handleFault(a + UInt64(pmdSize) + 4096, write: false), 0, "huge zero read fault")
    t.expectEvents(all, [], "faults")

    // MADV_DONTNEED of 4K in the THP: CLEAR over the range, then the split's CLEAR.
    try t.must("madvise(MADV_DONTNEED) of 4K inside the THP") { try m!.mm.madvise(a + 4096, 4096, .dontNeed) }
    t.expectEvents(all, [NotifierEvent(.clear, a + 4096, a + 8192), NotifierEvent(.clear, a, a + UInt64(pmdSize))],
                   "zap_page_range_single, then __split_huge_pmd inside it")
    t.expectEvents(driver, [NotifierEvent(.clear, a + 4096, a + 8192), NotifierEvent(.clear, a, a + UInt64(pmdSize))],
                   "the same, heard by the driver (no owner to filter)")

    // make_device_exclusive with the driver's owner, then the CPU restore.
    let x = a + 16 * 4096
    let dx = try t.must("make_device_exclusive") { try m!.mm.makeDeviceExclusive(x, owner: driver.owner) }
    m!.mm.releaseDeviceExclusive(dx)
    t.expectEvents(all, [NotifierEvent(.exclusive, x, x + 4096, owner: driverCookie)],
                   "make_device_exclusive: MMU_NOTIFY_EXCLUSIVE over the page, owner = the caller's")
    t.expectEvents(driver, [], "the driver filters its own EXCLUSIVE range")
    t.expectEqual(driver.filtered, 1, "ranges the driver filtered")
    t.expectFault(m!.mm.handleFault(x + 8, write: false), 0, "CPU fault on the device-exclusive entry")
    t.expectEvents(all, [NotifierEvent(.clear, x, x + 4096)], "remove_device_exclusive_entry: MMU_NOTIFY_CLEAR, owner NULL")
    t.expectEvents(driver, [NotifierEvent(.clear, x, x + 4096)], "the driver hears the restore (not its own owner)")
    t.expectEqual(driver.filtered, 1, "ranges the driver filtered after the restore")

    // mprotect: PROTECTION_VMA.
    let b = a + UInt64(2 * pmdSize)
    try t.must("mprotect PROT_READ of the third 2 MiB") { try m!.mm.mprotect(b, UInt64(pmdSize), [.read]) }
    t.expectEvents(all, [NotifierEvent(.protectionVMA, b, b + UInt64(pmdSize))], "mprotect: change_pud_range")
    // mremap: UNMAP over the old range.
    let moved = try t.must("mremap 2 MiB out of the mapping (MREMAP_MAYMOVE)") {
        try m!.mm.mremap(b, oldLength: UInt64(pmdSize), newLength: UInt64(2 * pmdSize), mayMove: true)
    }
    t.expectEvents(all, [NotifierEvent(.unmap, b, b + UInt64(pmdSize))], "mremap: move_page_tables, old range")
    // munmap: UNMAP over the range.
    try t.must("munmap the moved range") { try m!.mm.munmap(moved, UInt64(2 * pmdSize)) }
    t.expectEvents(all, [NotifierEvent(.unmap, moved, moved + UInt64(2 * pmdSize))], "munmap: unmap_region")
    // MADV_DONTNEED over whole PMDs: one CLEAR, no split.
    let c = a + UInt64(3 * pmdSize)
    try t.must("madvise(MADV_DONTNEED) of the last 2 MiB") { try m!.mm.madvise(c, UInt64(pmdSize), .dontNeed) }
    t.expectEvents(all, [NotifierEvent(.clear, c, c + UInt64(pmdSize))], "MADV_DONTNEED of a whole PMD range")
    _ = driver.take()
    t.expectAnonConsistent(m!, after: "the notified operations")

    // Owner filtering leaves other ranges alone: the unregistered driver hears nothing more.
    driver.unregister()
    t.expectEqual(driver.releases, 1, "mmu_notifier_unregister calls ->release")
    t.expectEqual(m!.mm.mmuNotifierCount, 1, "subscriptions after unregister")

    // exit_mmap: ->release, then the subscriber is unhooked before the unmap.
    let releases0 = all.releases
    m = nil
    t.expectEqual(all.releases, releases0 + 1, "exit_mmap: mmu_notifier_release")
    t.expectEvents(all, [], "exit_mmap: the released subscriber hears nothing of unmap_vmas (mn_hlist_release unhooked it)")
    t.expectEvents(driver, [], "an unregistered subscriber hears nothing")
}

// MARK: mm-device-exclusive

/// The seed's make_device_exclusive, as 6.15 has it: on a PMD-mapped THP,
/// GUP with FOLL_SPLIT_PMD PTE-maps the folio first (the folio is not
/// split); the entry carries the subpage's pfn; the tail page is what GUP
/// returned and never reaches an rmap walk (rmap_walk given a tail page is
/// the kernel's VM_BUG_ON_PAGE: reported, nothing walked; the folio's walk
/// finds the VMA); soft-dirty is kept; the mapping's reference, mapcount,
/// MM_ANONPAGES and PageAnonExclusive are kept; the caller gets the folio
/// locked with one more reference; a CPU fault restores the PTE after
/// MMU_NOTIFY_CLEAR (old, writable for an exclusive page, the data
/// intact), or read-only after mprotect(PROT_READ) with FOLL_WRITE GUP
/// refused (hmm-tests exclusive_mprotect); zap drops the entry's reference;
/// a non-anon page (fs-dax, device-dax) is -EOPNOTSUPP with no counter moved.
func deviceExclusiveScenario(_ t: TestContext) throws {
    let m = try t.must("a port kernel with ordinary memory") { try AnonMachine() }
    let k = m.k
    let rec = NotifierRecorder()
    try t.must("mmu_notifier_register") { try rec.register(m.mm) }
    let len = UInt64(2 * pmdSize)
    let a = try t.must("mmap 4 MiB private anonymous, MADV_HUGEPAGE") { try m.map(len, hugepage: true) }
    t.expectFault(m.mm.handleFault(a, write: true), 0, "THP write fault")
    t.expect(entryLeaf(m.pmd(a)), "a PMD-mapped THP")
    let thp = try t.require(m.folio(at: a), "the THP")
    t.expectEqual(thp.order, pmdOrder, "THP order")
    let nr = Int32(hpagePmdNr)
    // Fill the pages with a pattern (hmm-tests exclusive: ptr[i] = i).
    for i in 0..<hpagePmdNr {
        pfnAddress(k, pageToPfn(k, thp.page(i)))!.storeBytes(of: UInt64(i) * 3 + 1, as: UInt64.self)
    }
    let base = m.totals()
    _ = rec.take()

    let sub = 7
    let x = a + UInt64(sub) * 4096 + 0x10
    let owner = UnsafeMutableRawPointer(bitPattern: 0x0dd_ba11)
    let dx = try t.must("make_device_exclusive on subpage 7 of the THP") { try m.mm.makeDeviceExclusive(x, owner: owner) }
    t.expectEvents(rec, [NotifierEvent(.clear, a, a + UInt64(pmdSize)),
                         NotifierEvent(.exclusive, a + UInt64(sub) * 4096, a + UInt64(sub + 1) * 4096, owner: 0x0dd_ba11)],
                   "FOLL_SPLIT_PMD's __split_huge_pmd (CLEAR over the PMD), then MMU_NOTIFY_EXCLUSIVE over the page with the owner")
    t.expect(!entryLeaf(m.pmd(a)) && entryPresent(m.pmd(a)), "FOLL_SPLIT_PMD PTE-mapped the THP")
    t.expectEqual(thp.order, pmdOrder, "the folio itself is not split")
    t.expect(dx.folio == thp && dx.page == thp.page(sub) && dx.page.isTail,
             "make_device_exclusive returns the subpage (a tail page) and its folio")
    t.expect(dx.folio.isLocked, "the folio is returned locked")
    t.expectFolio(thp, AnonFolioState(refcount: nr + 1, mapcount: nr, entireMapcount: 0, exclusivePages: hpagePmdNr),
                  "512 PTE mappings (AnonExclusive propagated by the split) plus the caller's FOLL_GET reference")
    t.expectTotals(m, base.plus(thps: -Int64(nr)), "the split moves NR_ANON_THPS only; the entry keeps MM_ANONPAGES")

    // The entry.
    let xe = m.pte(a + UInt64(sub) * 4096)
    let entry = pteToSwpEntry(xe)
    t.expect(isSwapPte(xe) && isDeviceExclusiveEntry(entry), "a device-exclusive entry: \(hex(xe))")
    t.expectEqual(swpOffsetPfn(entry), pageToPfn(k, thp.page(sub)), "the entry carries the subpage's pfn, not the head's")
    let neighbour = m.pte(a + UInt64(sub + 1) * 4096)
    t.expectEqual(pteSwpSoftDirty(xe), pteSoftDirty(neighbour), "soft-dirty carried from the PTE (its neighbour from the same split)")
    t.expect(thp.isDirty, "ptep_clear_flush's dirty bit went to the folio")

    // No rmap walk reaches a tail page.
    var visited = 0
    t.expect(!rmapWalkPage(k, dx.page) { _, _ in visited += 1; return true }, "rmap_walk given the tail page refuses")
    t.expectEqual(visited, 0, "VMAs the tail-page walk visited")
    let reports = m.kernel.drainReports()
    t.expect(reports.count == 1 && "\(reports[0])".contains("PageTail"), "the tail page is the kernel's VM_BUG_ON_PAGE: \(reports)")
    var addrs: [UInt64] = []
    rmapWalk(k, thp) { _, addr in addrs.append(addr); return true }
    t.expectEqual(addrs, [a], "rmap_walk of the folio finds the one VMA at the folio's address")

    // The caller programs the device, then unlocks and puts.
    m.mm.releaseDeviceExclusive(dx)
    t.expect(!thp.isLocked, "folio_unlock")
    t.expectFolio(thp, AnonFolioState(refcount: nr, mapcount: nr, exclusivePages: hpagePmdNr), "after folio_put")
    t.expectEvents(rec, [], "the caller's release")
    t.expectAnonConsistent(m, after: "make_device_exclusive")

    // The CPU fault restores after MMU_NOTIFY_CLEAR.
    t.expectFault(m.mm.handleFault(x, write: false), 0, "CPU read of the device-exclusive page")
    t.expectEvents(rec, [NotifierEvent(.clear, a + UInt64(sub) * 4096, a + UInt64(sub + 1) * 4096)],
                   "remove_device_exclusive_entry: MMU_NOTIFY_CLEAR over the page, no owner")
    let r = m.pte(a + UInt64(sub) * 4096)
    t.expect(entryPresent(r) && entryPfn(r) == pageToPfn(k, thp.page(sub)) && entryWrite(r) && !entryYoung(r),
             "restore_exclusive_pte: the subpage, writable (PageAnonExclusive), old: \(hex(r))")
    t.expectFolio(thp, AnonFolioState(refcount: nr, mapcount: nr, exclusivePages: hpagePmdNr), "the restore moves no counter")
    let data = pfnAddress(k, pageToPfn(k, thp.page(sub)))!.load(as: UInt64.self)
    t.expectEqual(data, UInt64(sub) * 3 + 1, "the data survives (hmm-tests exclusive)")
    t.expectTotals(m, base.plus(thps: -Int64(nr)), "after the restore")

    // Zap drops the entry's reference.
    let z = a + 11 * 4096
    let dz = try t.must("make_device_exclusive on subpage 11") { try m.mm.makeDeviceExclusive(z, owner: owner) }
    m.mm.releaseDeviceExclusive(dz)
    _ = rec.take()
    try t.must("madvise(MADV_DONTNEED) of subpage 11") { try m.mm.madvise(z, 4096, .dontNeed) }
    t.expectEvents(rec, [NotifierEvent(.clear, z, z + 4096)], "the zap's CLEAR")
    t.expectEqual(m.pte(z), 0, "the entry is gone")
    t.expectFolio(thp, AnonFolioState(refcount: nr - 1, mapcount: nr - 1, exclusivePages: hpagePmdNr),
                  "zap_nonpresent_ptes: folio_remove_rmap_pte and folio_put of the entry's mapping")
    t.expect(thp.isPartiallyMapped, "the folio is now partially mapped (deferred split)")
    t.expectTotals(m, base.plus(rss: -1, mapped: -1, thps: -Int64(nr)), "MM_ANONPAGES and NR_ANON_MAPPED -1")
    t.expectAnonConsistent(m, after: "zap of a device-exclusive entry")

    // exclusive_mprotect: read-only VMA, FOLL_WRITE GUP refused, read restores read-only.
    let y = a + 9 * 4096
    let dy = try t.must("make_device_exclusive on subpage 9") { try m.mm.makeDeviceExclusive(y, owner: owner) }
    m.mm.releaseDeviceExclusive(dy)
    let ye = m.pte(y)
    try t.must("mprotect PROT_READ") { try m.mm.mprotect(a, len, [.read]) }
    t.expectEqual(m.pte(y), ye, "mprotect leaves the device-exclusive entry")
    let pages = PageArray.allocate(capacity: 1)
    defer { pages.deallocate() }
    let wgot = m.mm.withUnsafeRecord { getUserPages($0, y, 1, [.write], pages) }
    t.expectEqual(wgot, Int(-EFAULT), "get_user_pages(FOLL_WRITE) on a read-only VMA (check_vma_flags: -EFAULT; hmm-tests exclusive_mprotect's -EPERM)")
    t.expectEqual(m.pte(y), ye, "the refused GUP left the entry")
    t.expectFault(m.mm.handleFault(y, write: true), DAX_VM_FAULT_SIGSEGV, "a CPU write to the read-only VMA")
    t.expectFault(m.mm.handleFault(y, write: false), 0, "a CPU read restores")
    let ry = m.pte(y)
    t.expect(entryPresent(ry) && !entryWrite(ry), "restore_exclusive_pte without VM_WRITE: read-only: \(hex(ry))")
    try t.must("mprotect PROT_READ|PROT_WRITE") { try m.mm.mprotect(a, len, [.read, .write]) }

    // Non-anon: -EOPNOTSUPP, nothing moved.
    let fs = try t.must("an extent store on 8 MiB of fs-dax memory") { try DaxFS(kernel: m.kernel, start: 0x2_0000_0000, size: 8 << 20) }
    let f = try t.must("create \"x\"") { try fs.create(name: "x", maxSize: 2 << 20) }
    try t.must("write 2 MiB") { try f.extend(to: 2 << 20) }
    let fa = try t.must("mmap the file MAP_SHARED") { try m.mm.mmap(f.mmapRequest(length: 64 << 10)) }
    let fret = m.mm.handleFault(fa, write: true)
    t.expect(fret & DAX_VM_FAULT_ERROR == 0, "fs-dax write fault: \(vmFaultName(fret))")
    let ff = try t.require(m.folio(at: fa), "the fs-dax folio")
    let before = Counters(m.kernel, ff, m.mm)
    t.expectErrno("make_device_exclusive on an fs-dax page", EOPNOTSUPP) { _ = try m.mm.makeDeviceExclusive(fa, owner: owner) }
    t.expectCounters(Counters(m.kernel, ff, m.mm), before, "the fs-dax folio after the refusal (GUP's reference put)")
    t.expect(!ff.isLocked, "the refused folio is not locked")
    t.expect(entryPresent(m.pte(fa)), "the fs-dax PTE is left present")
    try t.must("munmap the file") { try m.mm.munmap(fa, 64 << 10) }
    try t.must("unmount") { try fs.unmount(timeoutNanos: 1_000_000_000) }

    // hmm-tests exclusive_cow: fork after make_device_exclusive restores
    // the entry (copy_nonpresent_pte -> try_restore_exclusive_pte) and the
    // page is then COW-shared like any other.
    let ca = try t.must("mmap 64 KiB private anonymous") { try m.map(64 << 10) }
    t.expectFault(m.mm.handleFault(ca, write: true), 0, "write fault")
    let cf = try t.require(m.folio(at: ca), "the page to make device-exclusive")
    let cpfn = pageToPfn(k, cf.head)
    pfnAddress(k, cpfn)!.storeBytes(of: 0xc0_ffee, as: UInt64.self)
    let dc = try t.must("make_device_exclusive") { try m.mm.makeDeviceExclusive(ca, owner: owner) }
    m.mm.releaseDeviceExclusive(dc)
    t.expect(isSwapPte(m.pte(ca)), "a device-exclusive entry before fork")
    _ = rec.take()
    var child: MM? = try t.must("fork") { try m.mm.fork() }
    let (forkEvents, _) = rec.take()
    t.expect(forkEvents.contains(NotifierEvent(.protectionPage, ca, ca + (64 << 10))),
             "fork's MMU_NOTIFY_PROTECTION_PAGE over the VMA covers the restore: \(forkEvents)")
    let cpe = m.pte(ca)
    let cce = child!.withUnsafeRecord { walk($0, ca).pte.map { dax_load_u64($0) } ?? 0 }
    t.expect(entryPresent(cpe) && entryPfn(cpe) == cpfn && !entryWrite(cpe),
             "the parent's entry is restored, then write-protected by the COW copy: \(hex(cpe))")
    t.expect(entryPresent(cce) && entryPfn(cce) == cpfn && !entryWrite(cce), "the child maps the same page read-only: \(hex(cce))")
    t.expectFolio(cf, AnonFolioState(refcount: 2, mapcount: 2, exclusivePages: 0), "COW-shared: refcount and mapcount 2, AnonExclusive cleared")
    t.expectEqual(child!.rssAnonPages, 1 + Int64(nr) - 1, "the child's MM_ANONPAGES: the shared page and the 511 pages of the THP still mapped")
    t.expectAnonConsistent(m, mms: [m.mm, child!], pgmaps: [fs.pgmap], after: "fork after make_device_exclusive")
    t.expectFault(m.mm.handleFault(ca, write: true), 0, "the parent's write")
    let npe = m.pte(ca)
    t.expect(entryWrite(npe) && entryPfn(npe) != cpfn, "the parent writes into a copy: \(hex(npe))")
    t.expectEqual(pfnAddress(k, entryPfn(npe))!.load(as: UInt64.self), 0xc0_ffee, "the copy has the data (hmm-tests exclusive_cow)")
    t.expectFolio(cf, AnonFolioState(refcount: 1, mapcount: 1, exclusivePages: 0), "the old page stays with the child")
    child = nil
    t.expectEqual(m.allocated, base.allocated + 1, "the child's exit frees the old page (the parent keeps its copy)")
    try t.must("munmap the COW region") { try m.mm.munmap(ca, 64 << 10) }

    try t.must("munmap") { try m.mm.munmap(a, len) }
    t.expectTotals(m, AnonTotals(rssAnon: 0, rssFile: 0, anonMapped: 0, anonThps: 0, allocated: 0), "everything freed")
    t.expectAnonConsistent(m, pgmaps: [fs.pgmap], after: "munmap")
}
