// What the tests of non-present entries, mmu notifiers and device-exclusive
// entries share: installing migration and device-private entries under the
// PTE lock as mm/migrate.c (try_to_migrate_one, remove_migration_pte) and
// mm/migrate_device.c (migrate_vma_insert_page) do, a device-private
// pgmap whose migrate_to_ram brings the page back to the page allocator's
// memory, a recorder of mmu notifier calls, and the whole-kernel invariant
// check (every MM and pgmap given, so the global counters are checked too).

import Testing
@testable import MMCore
import CDaxMM
import DAXBase

#if canImport(Glibc)
import Glibc
#endif

enum EntryKit {
    /// The VMA of `mm` holding `a` (mmap_lock held by the caller).
    static func vma(_ mm: MM, _ a: UInt64) -> VMARef {
        mm.vmaList().first { $0.pointee.vm_start <= a && a < $0.pointee.vm_end }!
    }

    /// `body` with the PTE of `a` under its lock (mmap_lock held by the
    /// caller; the PTE table must exist).
    static func withPTE<R>(_ mm: MM, _ a: UInt64, _ body: (VMARef, EntryPtr) -> R) -> R {
        let k = mm.kernel.ref
        let w = walk(mm.ref, a)
        let ptl = pteLockptr(k, dax_load_u64(w.pmd!))
        dax_spin_lock(ptl)
        defer { dax_spin_unlock(ptl) }
        return body(vma(mm, a), w.pte!)
    }

    /// The PTE of `a` (0 when there is no table).
    static func pte(_ mm: MM, _ a: UInt64) -> PTEntry {
        mm.lockRead(); defer { mm.unlockRead() }
        return walk(mm.ref, a).pte.map { dax_load_u64($0) } ?? 0
    }

    /// Writes `e` as the PTE of `a` (a marker or hwpoison entry in a none
    /// PTE, as memory_failure and MADV_GUARD_INSTALL leave them).
    static func setPTE(_ mm: MM, _ a: UInt64, _ e: PTEntry) {
        mm.lockRead(); defer { mm.unlockRead() }
        withPTE(mm, a) { _, ptep in setPteAt(mm.ref, a, ptep, e) }
    }

    /// try_to_migrate_one for the present PTE of `a`, with the caller in the
    /// migration's place: it takes the isolation reference and the folio
    /// lock (returned held), the PTE becomes a migration entry (writable if
    /// the PTE was; else readable-exclusive if the page was
    /// PageAnonExclusive, whose flag moves into the entry), dirty and young
    /// kept in the entry, soft-dirty and uffd-wp carried; the rmap and the
    /// mapping's reference go, MM_ANONPAGES stays (the entry counts).
    static func installMigration(_ mm: MM, _ a: UInt64) -> Folio {
        let k = mm.kernel.ref
        mm.lockRead(); defer { mm.unlockRead() }
        let page = pfnToPage(k, entryPfn(walk(mm.ref, a).pte.map { dax_load_u64($0) }!))
        let folio = page.folio
        folio.refInc()
        folioLock(k, folio)
        withPTE(mm, a) { vma, ptep in
            let old = ptepGetAndClear(mm.ref, a, ptep)
            flushTlbRange(vma, a, a + UInt64(pageSize))
            if entryDirty(old) { folio.markDirty() }
            let exclusive = page.isAnonExclusive
            if exclusive { _ = folioTryShareAnonRmap(k, folio, page, 1) }
            let pfn = pageToPfn(k, page)
            var entry = entryWrite(old) ? makeWritableMigrationEntry(pfn)
                : exclusive ? makeReadableExclusiveMigrationEntry(pfn) : makeReadableMigrationEntry(pfn)
            if entryYoung(old) { entry = makeMigrationEntryYoung(entry) }
            if entryDirty(old) { entry = makeMigrationEntryDirty(entry) }
            var swp = swpEntryToPte(entry)
            if pteSoftDirty(old) { swp = pteSwpMksoftDirty(swp) }
            if pteUffdWp(old) { swp = pteSwpMkuffdWp(swp) }
            setPteAt(mm.ref, a, ptep, swp)
            folioRemoveRmapPte(k, folio, page)
        }
        folioPut(k, folio)   // the mapping's reference
        return folio
    }

    /// remove_migration_pte with the old folio as the destination (a failed
    /// migration): the entry becomes a present PTE again, a reference and
    /// the rmap come back (exclusive for a writable or readable-exclusive
    /// entry), writable if the entry was. The caller then unlocks and puts
    /// the isolation reference.
    static func removeMigration(_ mm: MM, _ a: UInt64) {
        let k = mm.kernel.ref
        mm.lockRead(); defer { mm.unlockRead() }
        withPTE(mm, a) { vma, ptep in
            let e = dax_load_u64(ptep)
            let entry = pteToSwpEntry(e)
            precondition(isMigrationEntry(entry))
            let page = pfnSwapEntryToPage(k, entry)!
            let folio = page.folio
            folio.refInc()
            var pte = pfnEntry(pageToPfn(k, page), vma.pointee.vm_page_prot) & ~(PT.rw | PT.dirty | PT.accessed)
            if isMigrationEntryYoung(entry) { pte |= PT.accessed }
            if isMigrationEntryDirty(entry) { pte = entryMkdirty(pte) }
            if isWritableMigrationEntry(entry) { pte = entryMkwrite(pte) }
            if pteSwpSoftDirty(e) { pte = pteMksoftDirty(pte) }
            if pteSwpUffdWp(e) { pte = pteMkuffdWp(pte) }
            let exclusive = isWritableMigrationEntry(entry) || isReadableExclusiveMigrationEntry(entry)
            folioAddAnonRmapPte(k, folio, page, vma, a, exclusive ? .exclusive : [])
            setPteAt(mm.ref, a, ptep, pte)
        }
    }

    /// migrate_vma_insert_page into the none PTE of `a`: a device page the
    /// driver allocated (zone_device_page_init: refcount 1, locked) becomes
    /// a new exclusive anon folio mapped by a device-private entry, which
    /// owns that reference; MM_ANONPAGES +1. The page is unlocked after.
    static func installDevicePrivate(_ mm: MM, _ a: UInt64, page: Page, writable: Bool) {
        let k = mm.kernel.ref
        let folio = page.folio
        zoneDevicePageInit(k, page)
        mm.lockRead()
        withPTE(mm, a) { vma, ptep in
            precondition(entryNone(dax_load_u64(ptep)))
            _ = anonVMAPrepare(vma)
            folioAddNewAnonRmap(k, folio, vma, a, .exclusive)
            addMMCounter(mm.ref, DAX_MM_ANONPAGES, 1)
            let pfn = pageToPfn(k, page)
            setPteAt(mm.ref, a, ptep, swpEntryToPte(writable ? makeWritableDevicePrivateEntry(pfn) : makeReadableDevicePrivateEntry(pfn)))
        }
        mm.unlockRead()
        folioUnlock(k, folio)
    }

    /// A device-private pgmap of 2 MiB at `base` whose migrate_to_ram copies
    /// the page back to a new anon folio of the page allocator
    /// (migrateBackToRam); page_free is recorded in the returned log.
    static func devicePrivatePgmap(_ k: Kernel) throws -> (DevPagemap, FreeLog) {
        let log = FreeLog()
        let pg = DevPagemap(kernel: k, type: .devicePrivate, ranges: [phys(base, 2 * MiB)],
                            ops: DevPagemapOps(pageFree: { page, owner in FreeLog.record(page, owner) },
                                               migrateToRam: migrateBackToRam),
                            owner: log.owner).keeping(log)
        try pg.memremapPages()
        return (pg, log)
    }

    /// Every invariant (global counters included: `mms` and `pgmaps` are
    /// all the kernel has) and no debug report.
    static func check(_ k: Kernel, _ mms: [MM], _ pgmaps: [DevPagemap] = [], ledger: RefLedger = [:],
                      sourceLocation: SourceLocation = #_sourceLocation) {
        let v = invariants(mms: mms, pgmaps: pgmaps, ledger: ledger, complete: true)
        #expect(v.isEmpty, "\(v.map(\.description).joined(separator: "\n"))", sourceLocation: sourceLocation)
        let reports = k.drainReports()
        #expect(reports.isEmpty, "\(reports.map(\.description).joined(separator: "\n"))", sourceLocation: sourceLocation)
    }

    /// The folio mapped (present, by a PTE or a PMD) at `a`.
    static func folio(_ mm: MM, _ a: UInt64) -> Folio {
        let pmd = AnonFaultTests.pmd(mm, a)
        let e = entryLeaf(pmd) ? pmd : pte(mm, a)
        return pfnToPage(mm.kernel.ref, entryPfn(e)).folio
    }
}

/// dev_pagemap_ops.migrate_to_ram (as lib/test_hmm.c's dmirror_devmem_fault
/// does through migrate_vma): a new anon folio from the page allocator gets
/// the device page's bytes and replaces the device-private entry (writable
/// and dirty if the entry was), the device folio loses its rmap and the
/// entry's reference, so it is freed to the driver (page_free).
/// MM_ANONPAGES does not change: one anon page for another.
let migrateBackToRam: dax_migrate_to_ram_fn = { raw in
    let vmf = raw!.assumingMemoryBound(to: dax_vm_fault.self)
    let vma = vmf.pointee.vma!
    let mm = vma.pointee.vm_mm!
    let k = mm.pointee.kernel!
    let page = Page(vmf.pointee.page!)
    let folio = page.folio
    let addr = vmf.pointee.address
    guard let dst = folioAlloc(k, order: 0, zero: true) else { return DAX_VM_FAULT_OOM }
    copyUserHighpage(k, dst: dst.head, src: page)
    let ptl = pteLockptr(k, dax_load_u64(vmf.pointee.pmd!))
    let ptep = vmf.pointee.pte!
    dax_spin_lock(ptl)
    let orig = vmf.pointee.orig_pte
    guard dax_load_u64(ptep) == orig else {
        dax_spin_unlock(ptl)
        folioPut(k, dst)
        return 0
    }
    _ = ptepGetAndClear(mm, addr, ptep)
    folioAddNewAnonRmap(k, dst, vma, addr, .exclusive)
    var pte = pfnEntry(pageToPfn(k, dst.head), vma.pointee.vm_page_prot) & ~(PT.rw | PT.dirty)
    if isWritableDevicePrivateEntry(pteToSwpEntry(orig)) { pte = entryMkwrite(entryMkdirty(pte)) }
    setPteAt(mm, addr, ptep, pte)
    folioRemoveRmapPte(k, folio, page)
    dax_spin_unlock(ptl)
    folioPut(k, folio)
    return 0
}

// MARK: an mmu notifier subscriber that records

/// A secondary MMU that records every call it gets: the C ops reach it
/// through the context pointer. `ignoreOwner` makes it behave like a
/// driver that filters its own invalidations (range->owner == its cookie:
/// nouveau's and test_hmm's rule against livelock); those are counted in
/// `ignored` and not recorded. `startDelayNanos` makes every start sleep
/// (a callback in flight, for unregister's wait).
final class NotifierLog: @unchecked Sendable {
    enum Kind: Equatable, Sendable { case start, end, release }
    struct Call: Equatable, Sendable, CustomStringConvertible {
        var kind: Kind
        var event: MMUNotifierEvent?
        var start: UInt64
        var end: UInt64
        var owner: UInt
        var blockable: Bool
        var description: String {
            kind == .release ? "release" : "\(kind) \(event!) [\(hex(start)), \(hex(end))) owner \(hex(UInt64(owner)))"
        }
    }

    private let state = Locked<[Call]>([])
    let ignoreOwner: UnsafeMutableRawPointer?
    private let ignoredCount = Locked(0)
    let startDelayNanos: Int
    let ops: UnsafeMutablePointer<dax_mmu_notifier_ops>
    var context: UnsafeMutableRawPointer { Unmanaged.passUnretained(self).toOpaque() }

    init(ignoreOwner: UnsafeMutableRawPointer? = nil, startDelayNanos: Int = 0) {
        self.ignoreOwner = ignoreOwner
        self.startDelayNanos = startDelayNanos
        ops = .allocate(capacity: 1)
        ops.initialize(to: dax_mmu_notifier_ops(
            release: { ctx, _ in
                NotifierLog.from(ctx).append(Call(kind: .release, event: nil, start: 0, end: 0, owner: 0, blockable: true))
            },
            invalidate_range_start: { ctx, range in
                let log = NotifierLog.from(ctx)
                if log.startDelayNanos > 0 { usleep(UInt32(log.startDelayNanos / 1000)) }
                return log.record(.start, range!)
            },
            invalidate_range_end: { ctx, range in
                _ = NotifierLog.from(ctx).record(.end, range!)
            }))
    }
    deinit { ops.deallocate() }

    static func from(_ ctx: UnsafeMutableRawPointer?) -> NotifierLog {
        Unmanaged<NotifierLog>.fromOpaque(ctx!).takeUnretainedValue()
    }

    func append(_ c: Call) { state.withLock { $0.append(c) } }

    func record(_ kind: Kind, _ r: UnsafePointer<dax_mmu_notifier_range>) -> Int32 {
        if let mine = ignoreOwner, r.pointee.owner == mine {
            if kind == .start { ignoredCount.withLock { $0 += 1 } }
            return 0
        }
        append(Call(kind: kind, event: MMUNotifierEvent(rawValue: r.pointee.event), start: r.pointee.start,
                    end: r.pointee.end, owner: UInt(bitPattern: r.pointee.owner),
                    blockable: r.pointee.flags & DAX_MMU_NOTIFIER_RANGE_BLOCKABLE != 0))
        return 0
    }

    /// Subscribes to `mm` at once (stop() unsubscribes).
    convenience init(_ mm: MM) throws {
        self.init()
        subscription = (mm, try mm.registerMMUNotifier(ops, context: context))
    }
    private var subscription: (MM, MMUNotifierHandle)?

    func stop() {
        if let (mm, h) = subscription { mm.unregisterMMUNotifier(h) }
        subscription = nil
    }

    /// The ranges started, as (event, start, end).
    var ranges: [(event: MMUNotifierEvent, start: UInt64, end: UInt64)] {
        starts.compactMap { c in c.event.map { ($0, c.start, c.end) } }
    }

    func has(_ event: MMUNotifierEvent, _ start: UInt64, _ end: UInt64) -> Bool {
        ranges.contains { $0.event == event && $0.start == start && $0.end == end }
    }

    var calls: [Call] { state.withLock { $0 } }
    var ignored: Int { ignoredCount.withLock { $0 } }
    func clear() { state.withLock { $0.removeAll() } }

    /// The starts only, as (event, start, end, owner).
    var starts: [Call] { calls.filter { $0.kind == .start } }

    /// Every start has its end (same range) after it, properly nested.
    var paired: Bool {
        var stack: [Call] = []
        for c in calls where c.kind != .release {
            if c.kind == .start { stack.append(c); continue }
            guard let top = stack.popLast(), top.event == c.event, top.start == c.start, top.end == c.end,
                  top.owner == c.owner else { return false }
        }
        return stack.isEmpty
    }
}
