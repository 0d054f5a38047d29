// make_device_exclusive and the entries it leaves (mm/rmap.c, mm/memory.c,
// 6.15+): the PTE becomes a non-present device-exclusive entry that keeps
// the mapping (reference, mapcount, rss, PageAnonExclusive), a CPU fault
// restores it after MMU_NOTIFY_CLEAR, and zap drops what it holds.

import Testing
@testable import MMCore
import CDaxMM
import DAXBase

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
}
