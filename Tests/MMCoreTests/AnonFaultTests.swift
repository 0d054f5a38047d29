// Anonymous memory: do_anonymous_page, do_huge_pmd_anonymous_page, the huge
// zero folio, the page allocator's accounting and the anon rmap counters
// (MM_ANONPAGES, NR_ANON_MAPPED, NR_ANON_THPS, PageAnonExclusive).

import Testing
@testable import MMCore
import CDaxMM
import DAXBase

@Suite("anonymous memory: faults, THPs and the page allocator")
struct AnonFaultTests {
    static func anonMM(_ k: Kernel, length: UInt64, hugepage: Bool = false) throws -> (MM, UInt64) {
        let mm = try MM(kernel: k)
        var req = MMapRequest(length: length)
        req.shared = false
        req.alignment = UInt64(pmdSize)
        let a = try mm.mmap(req)
        if hugepage { try mm.madvise(a, length, .hugepage) }
        return (mm, a)
    }

    static func pte(_ mm: MM, _ a: UInt64) -> PTEntry {
        mm.lockRead(); defer { mm.unlockRead() }
        return walk(mm.ref, a).pte.map { dax_load_u64($0) } ?? 0
    }

    static func pmd(_ mm: MM, _ a: UInt64) -> PTEntry {
        mm.lockRead(); defer { mm.unlockRead() }
        return walk(mm.ref, a).pmd.map { dax_load_u64($0) } ?? 0
    }

    @Test("do_anonymous_page: a read maps the zero page (special, read-only, no rss); a write maps a new exclusive anon folio: refcount 1, mapcount 1, MM_ANONPAGES and NR_ANON_MAPPED +1, one page from the allocator")
    func anonymousPteFault() throws {
        let k = try makeKernel()
        let (mm, a) = try Self.anonMM(k, length: 64 * KiB)
        let free0 = k.ramStats!.freePages
        let mapped0 = k.stat(DAX_NR_ANON_MAPPED)
        #expect(mm.handleFault(a, write: false) == 0)
        let z = Self.pte(mm, a)
        #expect(entryPresent(z) && entrySpecial(z) && !entryWrite(z) && entryPfn(z) == 0)
        #expect(mm.rssAnonPages == 0)

        #expect(mm.handleFault(a + 4096, write: true) == 0)
        let e = Self.pte(mm, a + 4096)
        #expect(entryPresent(e) && entryWrite(e) && entryDirty(e) && !entrySpecial(e))
        let page = pfnToPage(k.ref, entryPfn(e))
        let folio = page.folio
        #expect(folio.isAnon && !folio.isLarge && page.isAnonExclusive)
        #expect(folio.refCount == 1 && folio.mapcount == 1)
        #expect(folio.index == (a + 4096) >> 12, "an anon VMA's pgoff is its start page")
        #expect(mm.rssAnonPages == 1 && mm.rssFilePages == 0)
        #expect(k.stat(DAX_NR_ANON_MAPPED) == mapped0 + 1)
        #expect(k.ramStats!.freePages < free0 || k.ramStats!.allocatedPages == 1)
        #expect(k.ramStats!.allocatedPages == 1)

        try mm.munmap(a, 64 * KiB)
        #expect(mm.rssAnonPages == 0 && k.stat(DAX_NR_ANON_MAPPED) == mapped0)
        #expect(k.ramStats!.allocatedPages == 0, "the last put frees the folio to the allocator")
        #expect(k.drainReports().isEmpty)
    }

    @Test("do_huge_pmd_anonymous_page: with MADV_HUGEPAGE a read maps the huge zero folio; a write maps a PMD THP: MM_ANONPAGES and NR_ANON_THPS +512, head PageAnonExclusive, entire mapcount 1")
    func anonymousThpFault() throws {
        let k = try makeKernel()
        let (mm, a) = try Self.anonMM(k, length: 4 * MiB, hugepage: true)
        #expect(mm.handleFault(a, write: false) == 0)
        let z = Self.pmd(mm, a)
        #expect(entryLeaf(z) && !entryWrite(z) && isHugeZeroPfn(k.ref, entryPfn(z)))
        #expect(mm.rssAnonPages == 0)

        let thps0 = k.stat(DAX_NR_ANON_THPS)
        #expect(mm.handleFault(a + UInt64(pmdSize), write: true) == 0)
        let e = Self.pmd(mm, a + UInt64(pmdSize))
        #expect(entryLeaf(e) && entryWrite(e))
        let folio = pfnToPage(k.ref, entryPfn(e)).folio
        #expect(folio.order == pmdOrder && folio.isAnon && folio.head.isAnonExclusive)
        #expect(folio.refCount == 1 && folio.entireMapcount == 1 && folio.mapcount == 1)
        #expect(mm.rssAnonPages == Int64(hpagePmdNr))
        #expect(k.stat(DAX_NR_ANON_THPS) == thps0 + Int64(hpagePmdNr))
        try mm.munmap(a, 4 * MiB)
        #expect(k.stat(DAX_NR_ANON_THPS) == thps0 && mm.rssAnonPages == 0 && k.ramStats!.allocatedPages == 0)
        #expect(k.drainReports().isEmpty)
    }

    @Test("__split_huge_pmd_locked (anon): a partial munmap of a THP remaps it by PTEs: every page PageAnonExclusive, 511 PTEs keep the folio (refcount and mapcount 511), NR_ANON_THPS back to 0, the folio queued for deferred split")
    func anonThpPartialUnmapSplits() throws {
        let k = try makeKernel()
        let (mm, a) = try Self.anonMM(k, length: 2 * MiB, hugepage: true)
        #expect(mm.handleFault(a, write: true) == 0)
        let folio = pfnToPage(k.ref, entryPfn(Self.pmd(mm, a))).folio
        let thps0 = k.stat(DAX_NR_ANON_THPS) - Int64(hpagePmdNr)
        try mm.munmap(a + 4096, 4096)
        #expect(entryPresent(Self.pmd(mm, a)) && !entryLeaf(Self.pmd(mm, a)))
        #expect(Self.pte(mm, a + 4096) == 0)
        #expect(folio.refCount == Int32(hpagePmdNr - 1) && folio.mapcount == Int32(hpagePmdNr - 1))
        #expect(folio.entireMapcount == 0 && folio.isPartiallyMapped)
        #expect((0..<hpagePmdNr).allSatisfy { folio.page($0).isAnonExclusive })
        #expect(mm.rssAnonPages == Int64(hpagePmdNr - 1))
        #expect(k.stat(DAX_NR_ANON_THPS) == thps0)
        #expect(entryWrite(Self.pte(mm, a + 8192)) && entryPfn(Self.pte(mm, a + 8192)) == pageToPfn(k.ref, folio.page(2)))
        try mm.munmap(a, 2 * MiB)
        #expect(k.ramStats!.allocatedPages == 0 && mm.rssAnonPages == 0)
        #expect(k.drainReports().isEmpty)
    }

    @Test("the buddy allocator: order-0 and PMD-order allocations split blocks and frees merge them back; an exhausted zone refuses")
    func buddyAllocator() throws {
        let k = try Kernel(physBits: testPhysBits, ramPages: 2048)
        #expect(k.ramStats!.totalPages == 2048)
        var folios: [Folio] = []
        let f0 = try #require(folioAlloc(k.ref, order: 0, zero: true))
        let f9 = try #require(folioAlloc(k.ref, order: pmdOrder, zero: true))
        #expect(f0.refCount == 1 && f9.order == pmdOrder && f9.refCount == 1)
        #expect(k.ramStats!.allocatedPages == 1 + 512)
        folios = [f0, f9]
        while let f = folioAlloc(k.ref, order: 0, zero: false) { folios.append(f) }
        #expect(k.ramStats!.allocatedPages == 2048 && k.ramStats!.freePages == 0)
        #expect(k.ramStats!.failedAllocations == 1)
        for f in folios { folioPut(k.ref, f) }
        #expect(k.ramStats!.allocatedPages == 0 && k.ramStats!.freePages == 2048)
        #expect(k.ramStats!.freeBlocks[Int(DAX_MAX_PAGE_ORDER)] == 2, "every block merged back to max order")
        #expect(k.drainReports().isEmpty)
    }
}
