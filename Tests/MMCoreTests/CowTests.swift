// Copy-on-write in private mappings (mm/memory.c, 6.15+): do_wp_page's
// PageAnonExclusive short cut and wp_can_reuse_anon_folio (wp_page_reuse),
// wp_page_copy (the zero page, the huge zero split, VM_FAULT_OOM,
// FAULT_FLAG_UNSHARE), with the counters each rule moves.

import Testing
@testable import MMCore
import CDaxMM
import DAXBase

/// The bytes of a page through the port's direct map.
func pageBytes(_ k: Kernel, _ pfn: UInt64) -> UnsafeMutablePointer<UInt8> {
    pfnAddress(k.ref, pfn)!.assumingMemoryBound(to: UInt8.self)
}

@Suite("copy-on-write in private mappings (do_wp_page, wp_page_copy)")
struct CowTests {
    @Test("wp_page_copy of the zero page: a write after a read maps a new zeroed exclusive page, writable, dirty, young; MM_ANONPAGES +1 and NR_ANON_MAPPED +1, one allocator page; MMU_NOTIFY_CLEAR over [addr, addr+4K)")
    func zeroPageCopy() throws {
        let k = try makeKernel()
        let (mm, a) = try AnonFaultTests.anonMM(k, length: 64 * KiB)
        #expect(mm.handleFault(a, write: false) == 0)
        let z = AnonFaultTests.pte(mm, a)
        #expect(entryPfn(z) == 0 && entrySpecial(z))
        let mapped0 = k.stat(DAX_NR_ANON_MAPPED)
        let alloc0 = k.ramStats!.allocatedPages
        let log = try NotifierLog(mm)
        #expect(mm.handleFault(a + 100, write: true) == 0)
        log.stop()
        let e = AnonFaultTests.pte(mm, a)
        #expect(entryPresent(e) && entryWrite(e) && entryDirty(e) && entryYoung(e) && !entrySpecial(e))
        #expect(entryPfn(e) != 0)
        let page = pfnToPage(k.ref, entryPfn(e))
        #expect(page.folio.isAnon && page.isAnonExclusive && page.folio.refCount == 1 && page.folio.mapcount == 1)
        #expect(mm.rssAnonPages == 1 && mm.rssFilePages == 0)
        #expect(k.stat(DAX_NR_ANON_MAPPED) == mapped0 + 1)
        #expect(k.ramStats!.allocatedPages == alloc0 + 1)
        let bytes = pageBytes(k, entryPfn(e))
        #expect((0..<pageSize).allSatisfy { bytes[$0] == 0 })
        #expect(log.has(.clear, a, a + 4096), "\(log.ranges)")
        try mm.munmap(a, 64 * KiB)
        #expect(k.ramStats!.allocatedPages == alloc0 && k.stat(DAX_NR_ANON_MAPPED) == mapped0)
        #expect(k.drainReports().isEmpty)
    }

    @Test("a write to the huge zero PMD: do_huge_pmd_wp_page splits it into zero-page PTEs and the PTE fault copies only the written page (MM_ANONPAGES 1, one page allocated, the other 511 PTEs stay the zero page)")
    func hugeZeroSplitCopy() throws {
        let k = try makeKernel()
        let (mm, a) = try AnonFaultTests.anonMM(k, length: 2 * MiB, hugepage: true)
        #expect(mm.handleFault(a, write: false) == 0)
        #expect(isHugeZeroPfn(k.ref, entryPfn(AnonFaultTests.pmd(mm, a))))
        let alloc0 = k.ramStats!.allocatedPages
        let thps0 = k.stat(DAX_NR_ANON_THPS)
        #expect(mm.handleFault(a + 8192, write: true) == 0)
        let pmd = AnonFaultTests.pmd(mm, a)
        #expect(entryPresent(pmd) && !entryLeaf(pmd), "the huge zero PMD is split")
        let e = AnonFaultTests.pte(mm, a + 8192)
        #expect(entryWrite(e) && entryPfn(e) != 0 && pfnToPage(k.ref, entryPfn(e)).isAnonExclusive)
        let z = AnonFaultTests.pte(mm, a + 4096)
        #expect(entryPfn(z) == 0 && entrySpecial(z) && !entryWrite(z))
        #expect(mm.rssAnonPages == 1 && k.ramStats!.allocatedPages == alloc0 + 1)
        #expect(k.stat(DAX_NR_ANON_THPS) == thps0)
        try mm.munmap(a, 2 * MiB)
        #expect(k.ramStats!.allocatedPages == alloc0 && mm.rssAnonPages == 0)
        #expect(k.drainReports().isEmpty)
    }

    @Test("do_wp_page's PageAnonExclusive short cut: a write to a write-protected exclusive anon page reuses it in place (same pfn, writable, no allocation, no notifier range, counters unchanged)")
    func exclusiveReuse() throws {
        let k = try makeKernel()
        let (mm, a) = try AnonFaultTests.anonMM(k, length: 64 * KiB)
        #expect(mm.handleFault(a, write: true) == 0)
        let e = AnonFaultTests.pte(mm, a)
        let folio = pfnToPage(k.ref, entryPfn(e)).folio
        mm.lockRead()
        let ptep = walk(mm.ref, a).pte!
        setPteAt(mm.ref, a, ptep, entryWrprotect(e))
        mm.unlockRead()
        let alloc0 = k.ramStats!.allocatedPages
        let log = try NotifierLog(mm)
        #expect(mm.handleFault(a, write: true) == 0)
        log.stop()
        let r = AnonFaultTests.pte(mm, a)
        #expect(entryPfn(r) == entryPfn(e) && entryWrite(r) && entryDirty(r))
        #expect(folio.refCount == 1 && folio.mapcount == 1 && folio.head.isAnonExclusive)
        #expect(k.ramStats!.allocatedPages == alloc0 && mm.rssAnonPages == 1)
        #expect(log.ranges.isEmpty, "wp_page_reuse raises no range: \(log.ranges)")
        #expect(k.drainReports().isEmpty)
    }

    @Test("wp_can_reuse_anon_folio: an anon page that is not PageAnonExclusive but whose only reference is the mapping's is reused and becomes exclusive; with a second reference (FOLL_GET) it is copied and the old page keeps the extra reference")
    func reuseByRefcount() throws {
        let k = try makeKernel()
        let (mm, a) = try AnonFaultTests.anonMM(k, length: 64 * KiB)
        #expect(mm.handleFault(a, write: true) == 0)
        #expect(mm.handleFault(a + 4096, write: true) == 0)
        for addr in [a, a + 4096] {
            let e = AnonFaultTests.pte(mm, addr)
            pfnToPage(k.ref, entryPfn(e)).clear(DAX_PG_anon_exclusive)
            mm.lockRead()
            setPteAt(mm.ref, addr, walk(mm.ref, addr).pte!, entryWrprotect(e))
            mm.unlockRead()
        }
        let p0 = entryPfn(AnonFaultTests.pte(mm, a))
        let alloc0 = k.ramStats!.allocatedPages
        #expect(mm.handleFault(a, write: true) == 0)
        #expect(entryPfn(AnonFaultTests.pte(mm, a)) == p0 && entryWrite(AnonFaultTests.pte(mm, a)))
        #expect(pfnToPage(k.ref, p0).isAnonExclusive, "SetPageAnonExclusive on reuse")
        #expect(k.ramStats!.allocatedPages == alloc0)

        let p1 = entryPfn(AnonFaultTests.pte(mm, a + 4096))
        pageBytes(k, p1)[7] = 0x5a
        let held = try mm.getPages(a + 4096, count: 1, flags: [])
        #expect(held.first.map { pageToPfn(k.ref, $0) } == p1)
        let old = pfnToPage(k.ref, p1).folio
        #expect(old.refCount == 2)
        #expect(mm.handleFault(a + 4096, write: true) == 0)
        let n = AnonFaultTests.pte(mm, a + 4096)
        #expect(entryPfn(n) != p1 && entryWrite(n))
        #expect(pageBytes(k, entryPfn(n))[7] == 0x5a, "the copy has the old page's bytes")
        #expect(old.refCount == 1 && old.mapcount == 0, "only the FOLL_GET reference is left")
        #expect(k.ramStats!.allocatedPages == alloc0 + 1 && mm.rssAnonPages == 2)
        mm.put(held)
        #expect(k.ramStats!.allocatedPages == alloc0)
        try mm.munmap(a, 64 * KiB)
        #expect(k.ramStats!.allocatedPages == 0)
        #expect(k.drainReports().isEmpty)
    }

    @Test("wp_page_copy with the allocator exhausted: VM_FAULT_OOM, the zero-page PTE unchanged, no rss")
    func copyOOM() throws {
        let k = try Kernel(physBits: testPhysBits, ramPages: 1024)
        let (mm, a) = try AnonFaultTests.anonMM(k, length: 64 * KiB)
        #expect(mm.handleFault(a, write: false) == 0)
        var hog: [Folio] = []
        while let f = folioAlloc(k.ref, order: 0, zero: false) { hog.append(f) }
        #expect(mm.handleFault(a, write: true) == DAX_VM_FAULT_OOM)
        #expect(entryPfn(AnonFaultTests.pte(mm, a)) == 0 && mm.rssAnonPages == 0)
        for f in hog { folioPut(k.ref, f) }
        #expect(mm.handleFault(a, write: true) == 0)
        #expect(mm.rssAnonPages == 1)
        #expect(k.drainReports().isEmpty)
    }

    @Test("FAULT_FLAG_UNSHARE on the zero page: wp_page_copy maps a new exclusive anon page read-only and clean, keeping soft-dirty; MM_ANONPAGES +1")
    func unshareZeroPage() throws {
        let k = try makeKernel()
        let (mm, a) = try AnonFaultTests.anonMM(k, length: 64 * KiB)
        #expect(mm.handleFault(a, write: false) == 0)
        mm.lockRead()
        let ptep = walk(mm.ref, a).pte!
        setPteAt(mm.ref, a, ptep, pteMksoftDirty(dax_load_u64(ptep)))
        let ret = handleMMFault(mm.ref, a, DAX_FAULT_FLAG_UNSHARE | DAX_FAULT_FLAG_REMOTE)
        mm.unlockRead()
        #expect(ret == 0)
        let e = AnonFaultTests.pte(mm, a)
        #expect(entryPfn(e) != 0 && !entryWrite(e) && !entryDirty(e) && pteSoftDirty(e))
        #expect(pfnToPage(k.ref, entryPfn(e)).isAnonExclusive && mm.rssAnonPages == 1)
        // sanitize_fault_flags: UNSHARE with WRITE is refused.
        mm.lockRead()
        let bad = handleMMFault(mm.ref, a, DAX_FAULT_FLAG_UNSHARE | DAX_FAULT_FLAG_WRITE | DAX_FAULT_FLAG_REMOTE)
        mm.unlockRead()
        #expect(bad == DAX_VM_FAULT_SIGSEGV)
        #expect(k.drainReports().isEmpty)
    }
}
