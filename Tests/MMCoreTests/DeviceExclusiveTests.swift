// make_device_exclusive and the entries it leaves (mm/rmap.c, mm/memory.c,
// 6.15+): the PTE becomes a non-present device-exclusive entry that keeps
// the mapping (reference, mapcount, rss, PageAnonExclusive), a CPU fault
// restores it after MMU_NOTIFY_CLEAR, and zap drops what it holds.

import Testing
@testable import MMCore
import CDaxMM
import DAXBase
import MMTestSupport

#if canImport(Glibc)
import Glibc
#endif

/// What make_device_exclusive must leave unchanged on a page: the folio's
/// refcount (but for the caller's reference) and mapcount, the page's
/// PageAnonExclusive, MM_ANONPAGES, NR_ANON_MAPPED and NR_ANON_THPS.
struct ExclusiveCounters: Equatable {
    var refcount: Int32
    var mapcount: Int32
    var anonExclusive: Bool
    var rss: Int64
    var anonMapped: Int64
    var anonThps: Int64
    init(_ k: Kernel, _ mm: MM, _ page: Page) {
        refcount = page.folio.refCount
        mapcount = page.folio.mapcount
        anonExclusive = page.isAnonExclusive
        rss = mm.rssAnonPages
        anonMapped = k.stat(DAX_NR_ANON_MAPPED)
        anonThps = k.stat(DAX_NR_ANON_THPS)
    }
}

@Suite("device-exclusive entries")
struct DeviceExclusiveTests {
    @Test("make_device_exclusive on an anon page: a device-exclusive entry with the pfn, refcount +1 for the caller only, mapcount and MM_ANONPAGES unchanged; a CPU read fault restores a present PTE; zap drops the reference")
    func basicLifecycle() throws {
        let k = try makeKernel()
        let (mm, a) = try AnonFaultTests.anonMM(k, length: 64 * KiB)
        #expect(mm.handleFault(a, write: true) == 0)
        let e0 = AnonFaultTests.pte(mm, a)
        let folio = pfnToPage(k.ref, entryPfn(e0)).folio
        let owner = UnsafeMutableRawPointer(bitPattern: 0xd0_0d)
        let p = try mm.makeDeviceExclusive(a, owner: owner)
        #expect(p.folio == folio && p.folio.isLocked)
        #expect(folio.refCount == 2 && folio.mapcount == 1 && mm.rssAnonPages == 1)
        mm.releaseDeviceExclusive(p)
        #expect(folio.refCount == 1 && !folio.isLocked)
        let x = AnonFaultTests.pte(mm, a)
        #expect(isSwapPte(x))
        let entry = pteToSwpEntry(x)
        #expect(isDeviceExclusiveEntry(entry) && swpOffsetPfn(entry) == entryPfn(e0))
        #expect(folio.head.isAnonExclusive)

        #expect(mm.handleFault(a, write: false) == 0)
        let r = AnonFaultTests.pte(mm, a)
        #expect(entryPresent(r) && entryPfn(r) == entryPfn(e0))
        #expect(entryWrite(r), "restore_exclusive_pte: an exclusive anon page in a writable VMA comes back writable")
        #expect(!entryYoung(r), "restore_exclusive_pte maps the page old")
        #expect(folio.refCount == 1 && folio.mapcount == 1)

        _ = try mm.makeDeviceExclusive(a, owner: owner).folio
        try mm.munmap(a, 64 * KiB)
        #expect(k.ramStats!.allocatedPages == 1, "the caller's reference still holds the folio")
        folioUnlock(k.ref, folio)
        folioPut(k.ref, folio)
        #expect(k.ramStats!.allocatedPages == 0 && mm.rssAnonPages == 0)
        #expect(k.drainReports().isEmpty)
    }

    @Test("make_device_exclusive on a PMD-mapped anon THP: FOLL_SPLIT_PMD PTE-maps it first (MMU_NOTIFY_CLEAR over the huge page, then EXCLUSIVE over the page): the folio stays one order-9 folio, the entry names the subpage at the address, not the head; NR_ANON_THPS falls by 512, nothing else moves")
    func thpSplitFirst() throws {
        let k = try makeKernel()
        let (mm, a) = try AnonFaultTests.anonMM(k, length: 4 * MiB, hugepage: true)
        #expect(mm.handleFault(a, write: true) == 0)
        let e = AnonFaultTests.pmd(mm, a)
        #expect(entryLeaf(e))
        let folio = pfnToPage(k.ref, entryPfn(e)).folio
        let headPfn = pageToPfn(k.ref, folio.head)
        EntryKit.check(k, [mm])
        let before = ExclusiveCounters(k, mm, folio.head)
        #expect(before.anonThps == Int64(hpagePmdNr) && before.rss == Int64(hpagePmdNr))
        let log = NotifierLog()
        let h = try mm.registerMMUNotifier(log.ops, context: log.context)
        let owner = UnsafeMutableRawPointer(bitPattern: 0xbeef)
        let p = try mm.makeDeviceExclusive(a + 5 * 4096, owner: owner)
        #expect(p.folio == folio && p.page == folio.page(5), "GUP returns the subpage (follow_trans_huge_pmd)")
        #expect(folio.order == pmdOrder && folio.isLarge, "only the mapping is split, not the folio")
        #expect(!entryLeaf(AnonFaultTests.pmd(mm, a)))
        #expect(log.calls == MMUNotifierTests.pair(.clear, a, a + UInt64(pmdSize))
                + MMUNotifierTests.pair(.exclusive, a + 5 * 4096, a + 6 * 4096, owner: owner))
        EntryKit.check(k, [mm], ledger: [headPfn: 1])
        mm.releaseDeviceExclusive(p)
        let x = pteToSwpEntry(EntryKit.pte(mm, a + 5 * 4096))
        #expect(isDeviceExclusiveEntry(x) && swpOffsetPfn(x) == headPfn + 5)
        let after = ExclusiveCounters(k, mm, folio.head)
        #expect(before.refcount == 1 && before.mapcount == 1, "one PMD: one reference, one mapping")
        #expect(after.refcount == Int32(hpagePmdNr) && after.mapcount == Int32(hpagePmdNr),
                "__split_huge_pmd_locked: a reference and a mapcount per PTE; the entry keeps its PTE's")
        #expect(after.rss == before.rss && after.anonMapped == before.anonMapped && after.anonThps == 0,
                "the split moves NR_ANON_THPS only")
        #expect((0..<hpagePmdNr).allSatisfy { folio.page($0).isAnonExclusive }, "__split_huge_pmd_locked propagates PageAnonExclusive")
        #expect(folio.page(5).pageMapcount == 1 && folio.entireMapcount == 0)
        EntryKit.check(k, [mm])
        mm.unregisterMMUNotifier(h)
        try mm.munmap(a, 4 * MiB)
        #expect(k.ramStats!.allocatedPages == 0)
        EntryKit.check(k, [mm])
    }

    @Test("tail pages never reach an rmap walk: rmap_walk of a tail page is a VM_BUG (reported, nothing walked); make_device_exclusive of every subpage of a THP works without any report, each entry naming its own subpage")
    func everySubpage() throws {
        let k = try makeKernel()
        let (mm, a) = try AnonFaultTests.anonMM(k, length: 2 * MiB, hugepage: true)
        #expect(mm.handleFault(a, write: true) == 0)
        let folio = EntryKit.folio(mm, a)
        let headPfn = pageToPfn(k.ref, folio.head)
        var walked = 0
        #expect(rmapWalkPage(k.ref, folio.page(7)) { _, _ in walked += 1; return true } == false)
        #expect(walked == 0)
        let reports = k.drainReports()
        #expect(reports.count == 1 && reports.first?.rule.contains("PageTail") == true && reports.first?.pfn == headPfn + 7)
        #expect(rmapWalkPage(k.ref, folio.head) { vma, addr in walked += 1; return addr == a && vma.pointee.vm_start == a } == true)
        #expect(walked == 1)

        let before = ExclusiveCounters(k, mm, folio.head)
        for i in 0..<hpagePmdNr {
            mm.releaseDeviceExclusive(try mm.makeDeviceExclusive(a + UInt64(i) * 4096, owner: nil))
        }
        #expect(k.drainReports().isEmpty)
        for i in 0..<hpagePmdNr {
            let x = pteToSwpEntry(EntryKit.pte(mm, a + UInt64(i) * 4096))
            #expect(isDeviceExclusiveEntry(x) && swpOffsetPfn(x) == headPfn + UInt64(i))
        }
        let after = ExclusiveCounters(k, mm, folio.head)
        #expect(after.refcount == Int32(hpagePmdNr) && after.mapcount == Int32(hpagePmdNr), "split once, then every entry keeps its PTE's reference and mapcount")
        #expect(after.rss == before.rss && after.anonMapped == before.anonMapped && after.anonThps == 0)
        EntryKit.check(k, [mm])
        // rmap still reaches every entry (rule 17) and the CPU gets them back.
        for i in stride(from: 0, to: hpagePmdNr, by: 97) {
            #expect(mm.handleFault(a + UInt64(i) * 4096, write: false) == 0)
            #expect(entryPresent(EntryKit.pte(mm, a + UInt64(i) * 4096)))
        }
        EntryKit.check(k, [mm])
        try mm.munmap(a, 2 * MiB)
        #expect(k.ramStats!.allocatedPages == 0)
        EntryKit.check(k, [mm])
    }

    @Test("make_device_exclusive of a page that is not anon (device-dax, fs-dax shared mappings): -EOPNOTSUPP after GUP, the reference put, no counter moved, no EXCLUSIVE range raised", arguments: [MemoryType.generic, .fsDax])
    func notAnon(type: MemoryType) throws {
        let rig = try FaultRig(type: type, order: 0, bytes: 2 * MiB)
        let (k, mm) = (rig.kernel, rig.mm)
        let b = try mm.mmap(rig.map.request(length: 64 * KiB))
        #expect(mm.handleFault(b, write: true) & DAX_VM_FAULT_ERROR == 0)
        let folio = rig.folio(pgoff: 0)
        let ref0 = folio.refCount, map0 = folio.mapcount
        let file0 = mm.rss(DAX_MM_FILEPAGES), fm0 = k.stat(DAX_NR_FILE_MAPPED)
        let log = NotifierLog()
        let h = try mm.registerMMUNotifier(log.ops, context: log.context)
        do {
            _ = try mm.makeDeviceExclusive(b, owner: nil)
            Issue.record("a \(type) page became device-exclusive")
        } catch {
            #expect(kind(error) == .errno && message(error).contains("make_device_exclusive"))
            if case .errno(let code, _) = error { #expect(code == EOPNOTSUPP) }
        }
        #expect(folio.refCount == ref0 && folio.mapcount == map0 && !folio.isLocked)
        #expect(mm.rss(DAX_MM_FILEPAGES) == file0 && mm.rssAnonPages == 0 && k.stat(DAX_NR_FILE_MAPPED) == fm0)
        #expect(entryPresent(EntryKit.pte(mm, b)))
        #expect(log.calls.isEmpty)
        mm.unregisterMMUNotifier(h)
        let v = invariants(mms: [mm], pgmaps: rig.pgmaps, ledger: [:])
        #expect(v.isEmpty, "\(v)")
        #expect(k.drainReports().isEmpty)
        try mm.munmap(b, 64 * KiB)
    }

    @Test("make_device_exclusive of a read-only anon PTE (the zero page after a read fault): GUP FOLL_WRITE breaks COW first, then the new exclusive page becomes the entry")
    func readOnlyZeroPage() throws {
        let k = try makeKernel()
        let (mm, a) = try AnonFaultTests.anonMM(k, length: 64 * KiB)
        #expect(mm.handleFault(a, write: false) == 0)
        #expect(entryPfn(EntryKit.pte(mm, a)) == 0 && mm.rssAnonPages == 0)
        let p = try mm.makeDeviceExclusive(a, owner: nil)
        #expect(p.folio.isAnon && p.page.isAnonExclusive && mm.rssAnonPages == 1 && k.stat(DAX_NR_ANON_MAPPED) == 1)
        mm.releaseDeviceExclusive(p)
        #expect(isDeviceExclusiveEntry(pteToSwpEntry(EntryKit.pte(mm, a))))
        EntryKit.check(k, [mm])
        try mm.munmap(a, 64 * KiB)
        EntryKit.check(k, [mm])
    }

    @Test("make_device_exclusive needs a writable PTE: mprotect read-only then read-write makes an exclusive anon PTE writable at once (MM_CP_TRY_CHANGE_WRITABLE); after fork and the child's exit the parent's PTE is write-protected and not exclusive, GUP FOLL_WRITE faults and wp_can_reuse_anon_folio reuses the page (refcount 1): the entry names the same pfn, nothing is copied or allocated")
    func writeProtectedPte() throws {
        let k = try makeKernel()
        let (mm, a) = try AnonFaultTests.anonMM(k, length: 64 * KiB)
        #expect(mm.handleFault(a, write: true) == 0)
        let folio = EntryKit.folio(mm, a)
        try mm.mprotect(a, 64 * KiB, [.read])
        #expect(!entryWrite(EntryKit.pte(mm, a)))
        try mm.mprotect(a, 64 * KiB, [.read, .write])
        #expect(entryWrite(EntryKit.pte(mm, a)), "can_change_pte_writable: an exclusive anon page is writable again without a fault")
        do { _ = try mm.fork() }   // the child maps the page, then exits
        let e = EntryKit.pte(mm, a)
        #expect(entryPresent(e) && !entryWrite(e) && !folio.head.isAnonExclusive && folio.refCount == 1 && folio.mapcount == 1,
                "after the child's exit: write-protected, shared no more, not exclusive")
        let allocated = k.ramStats!.allocatedPages
        let rss = mm.rssAnonPages
        let p = try mm.makeDeviceExclusive(a, owner: nil)
        #expect(p.page == folio.head, "GUP FOLL_WRITE returns the reused page, not a copy")
        mm.releaseDeviceExclusive(p)
        let x = EntryKit.pte(mm, a)
        #expect(isSwapPte(x) && isDeviceExclusiveEntry(pteToSwpEntry(x)) && swpOffsetPfn(pteToSwpEntry(x)) == entryPfn(e),
                "a device-exclusive entry for the same pfn: \(hex(x))")
        #expect(k.ramStats!.allocatedPages == allocated, "wp_page_reuse allocates nothing")
        #expect(folio.head.isAnonExclusive && folio.refCount == 1 && folio.mapcount == 1 && mm.rssAnonPages == rss)
        EntryKit.check(k, [mm])
        try mm.munmap(a, 64 * KiB)
    }

    @Test("a CPU write fault on a device-exclusive entry restores a writable, dirty PTE (restore_exclusive_pte: can_change_pte_writable, the folio dirty from ptep_clear_flush); counters unchanged")
    func writeFaultRestores() throws {
        let k = try makeKernel()
        let (mm, a) = try AnonFaultTests.anonMM(k, length: 64 * KiB)
        #expect(mm.handleFault(a, write: true) == 0)
        let folio = EntryKit.folio(mm, a)
        let before = ExclusiveCounters(k, mm, folio.head)
        mm.releaseDeviceExclusive(try mm.makeDeviceExclusive(a, owner: nil))
        #expect(folio.isDirty, "the dirty PTE's bit went to the folio")
        #expect(ExclusiveCounters(k, mm, folio.head) == before)
        EntryKit.check(k, [mm])
        #expect(mm.handleFault(a, write: true) == 0)
        let r = EntryKit.pte(mm, a)
        #expect(entryPresent(r) && entryWrite(r) && entryDirty(r) && entryPfn(r) == pageToPfn(k.ref, folio.head))
        #expect(ExclusiveCounters(k, mm, folio.head) == before)
        EntryKit.check(k, [mm])
        try mm.munmap(a, 64 * KiB)
        #expect(k.ramStats!.allocatedPages == 0)
    }

    @Test("the folio lock held elsewhere: make_device_exclusive sleeps in folio_lock_killable until it is released, and gives -EINTR (a fatal signal) when the wait is cut short; the GUP reference is put and the PTE stays")
    func folioLockWaits() throws {
        let k = try makeKernel()
        let (mm, a) = try AnonFaultTests.anonMM(k, length: 64 * KiB)
        #expect(mm.handleFault(a, write: true) == 0)
        let folio = EntryKit.folio(mm, a)
        let before = ExclusiveCounters(k, mm, folio.head)
        #expect(folioTrylock(folio))
        // -EINTR
        mm.lockRead()
        let r = MMCore.makeDeviceExclusive(mm.ref, a, owner: nil, lockTimeoutNanos: 20_000_000)
        mm.unlockRead()
        guard case .failure(let err) = r else { Issue.record("took a held folio lock"); return }
        #expect(err.code == EINTR)
        #expect(ExclusiveCounters(k, mm, folio.head) == before && entryPresent(EntryKit.pte(mm, a)))
        // The wait
        let result = Shared<Int32?>(nil)
        let box = SendablePtr(mm)
        let t = TestThread {
            let got: Int32
            do {
                let p = try box.p.makeDeviceExclusive(a, owner: nil)
                box.p.releaseDeviceExclusive(p)
                got = 0
            } catch { got = -1 }
            result.withLock { $0 = got }
        }
        usleep(100_000)
        #expect(result.value == nil, "make_device_exclusive waits for the folio lock")
        #expect(entryPresent(EntryKit.pte(mm, a)))
        folioUnlock(k.ref, folio)
        t.join()
        #expect(result.value == 0)
        #expect(isDeviceExclusiveEntry(pteToSwpEntry(EntryKit.pte(mm, a))))
        #expect(ExclusiveCounters(k, mm, folio.head) == before && !folio.isLocked)
        EntryKit.check(k, [mm])
        try mm.munmap(a, 64 * KiB)
    }

    @Test("make_device_exclusive over an existing device-exclusive entry: GUP faults it back first (MMU_NOTIFY_CLEAR, no owner), then a new EXCLUSIVE range with the caller's owner; the same page, counters unchanged")
    func overExistingEntry() throws {
        let k = try makeKernel()
        let (mm, a) = try AnonFaultTests.anonMM(k, length: 64 * KiB)
        #expect(mm.handleFault(a, write: true) == 0)
        let folio = EntryKit.folio(mm, a)
        let before = ExclusiveCounters(k, mm, folio.head)
        let first = UnsafeMutableRawPointer(bitPattern: 0x1111)
        let second = UnsafeMutableRawPointer(bitPattern: 0x2222)
        mm.releaseDeviceExclusive(try mm.makeDeviceExclusive(a, owner: first))
        let x0 = EntryKit.pte(mm, a)
        let log = NotifierLog()
        let h = try mm.registerMMUNotifier(log.ops, context: log.context)
        let p = try mm.makeDeviceExclusive(a, owner: second)
        #expect(p.folio == folio)
        #expect(log.calls == MMUNotifierTests.pair(.clear, a, a + 4096) + MMUNotifierTests.pair(.exclusive, a, a + 4096, owner: second))
        mm.releaseDeviceExclusive(p)
        #expect(EntryKit.pte(mm, a) == x0)
        #expect(ExclusiveCounters(k, mm, folio.head) == before)
        EntryKit.check(k, [mm])
        mm.unregisterMMUNotifier(h)
        try mm.munmap(a, 64 * KiB)
        #expect(k.ramStats!.allocatedPages == 0)
    }
}
