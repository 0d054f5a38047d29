// Rules of the anon core that cut across functions: writable anon mappings
// are exclusive (invariant 21), an anon PMD deposits its PTE table so its
// split never allocates (pgtable_trans_huge_deposit), a VMA of huge zero
// PMDs has its anon_vma and fork copies them (vmf_anon_prepare,
// vma_needs_copy), fork copies maybe-pinned pages only in an mm that took a
// FOLL_PIN (MMF_HAS_PINNED), and MADV_DONTNEED keeps guard markers that
// munmap drops (ZAP_FLAG_DROP_MARKER).

import Testing
@testable import MMCore
import CDaxMM
import DAXBase

@Suite("anon core rules: exclusivity of writable mappings, deposited tables, fork's pinned rule, markers")
struct AnonRulesTests {
    @Test("invariant 21: a writable PTE of an anon page that is not PageAnonExclusive is reported naming the folio; the same for a writable THP PMD whose head is not exclusive")
    func writableImpliesExclusive() throws {
        let k = try makeKernel()
        let (mm, a) = try NonPresentEntryTests.anon(k, written: [0])
        #expect(invariants(mms: [mm], pgmaps: [], complete: true).isEmpty)
        let page = pfnToPage(k.ref, entryPfn(EntryKit.pte(mm, a)))
        page.clear(DAX_PG_anon_exclusive)
        let v = invariants(mms: [mm], pgmaps: [])
        #expect(v.contains { $0.rule == 21 && $0.dump?.pfn == pageToPfn(k.ref, page) }, "\(v)")
        page.set(DAX_PG_anon_exclusive)
        #expect(invariants(mms: [mm], pgmaps: []).isEmpty)

        let (mm2, b) = try AnonFaultTests.anonMM(k, length: 2 * MiB, hugepage: true)
        #expect(mm2.handleFault(b, write: true) == 0)
        let head = pfnToPage(k.ref, entryPfn(AnonFaultTests.pmd(mm2, b))).folio.head
        head.clear(DAX_PG_anon_exclusive)
        #expect(invariants(mms: [mm2], pgmaps: []).contains { $0.rule == 21 })
        head.set(DAX_PG_anon_exclusive)
        #expect(invariants(mms: [mm, mm2], pgmaps: [], complete: true).isEmpty && k.drainReports().isEmpty)
    }

    @Test("pgtable_trans_huge_deposit: an anon THP fault takes its PTE table then (pgtables_bytes +8K: the PMD's table and the deposit), so a partial munmap splits it with the page-table pool exhausted; zap gives the deposit back")
    func depositedTableSplits() throws {
        let k = try Kernel(physBits: testPhysBits, pageTablePages: 8)
        let (mm, a) = try AnonFaultTests.anonMM(k, length: 2 * MiB, hugepage: true)
        let bytes0 = mm.withUnsafeRecord { dax_atomic64_read(dax_mm_pgtables_bytes($0)) }
        #expect(mm.handleFault(a, write: true) == 0)
        let folio = pfnToPage(k.ref, entryPfn(AnonFaultTests.pmd(mm, a))).folio
        let bytes1 = mm.withUnsafeRecord { dax_atomic64_read(dax_mm_pgtables_bytes($0)) }
        #expect(bytes1 >= bytes0 + Int64(pageSize), "the deposited table is counted (mm_inc_nr_ptes)")
        // Exhaust the pool: every table left goes to a holder.
        var held: [EntryPtr] = []
        while let t = ptAllocTable(k.ref) { held.append(t) }
        try mm.munmap(a + 4096, 4096)
        #expect(entryPresent(AnonFaultTests.pmd(mm, a)) && !entryLeaf(AnonFaultTests.pmd(mm, a)), "split to PTEs with no table free")
        #expect(folio.mapcount == Int32(hpagePmdNr - 1) && mm.rssAnonPages == Int64(hpagePmdNr - 1))
        #expect(k.drainReports().isEmpty)
        for t in held { ptFreeTable(k.ref, t) }
        let inUse = k.pageTablesInUse
        let (mm2, b) = try AnonFaultTests.anonMM(k, length: 2 * MiB, hugepage: true)
        #expect(mm2.handleFault(b, write: true) == 0)
        try mm2.munmap(b, 2 * MiB)
        #expect(k.pageTablesInUse <= inUse + 4, "zap_deposited_table returned the deposit")
        #expect(invariants(mms: [mm, mm2], pgmaps: [], complete: true).isEmpty)
    }

    @Test("vmf_anon_prepare runs before the huge zero PMD: a VMA that only read faulted has its anon_vma, and fork copies its huge zero PMDs (vma_needs_copy, copy_huge_pmd)")
    func hugeZeroOnlyFork() throws {
        let k = try makeKernel()
        let (mm, a) = try AnonFaultTests.anonMM(k, length: 2 * MiB, hugepage: true)
        #expect(mm.handleFault(a, write: false) == 0)
        let vma = mm.withUnsafeRecord { vmaLookup($0, a)! }
        #expect(vmaAnonVMA(vma) != nil)
        let child = try mm.fork()
        let c = child.withUnsafeRecord { walk($0, a).pmd.map { dax_load_u64($0) } ?? 0 }
        #expect(entryLeaf(c) && isHugeZeroPfn(k.ref, entryPfn(c)) && !entryWrite(c), "the child maps the huge zero PMD too")
        #expect(child.rssAnonPages == 0 && mm.rssAnonPages == 0)
        #expect(invariants(mms: [mm, child], pgmaps: [], complete: true).isEmpty)
    }

    @Test("folio_needs_cow_for_dma: 1024 FOLL_GET references look like a pin, but fork copies the page only when the mm took a FOLL_PIN (MMF_HAS_PINNED); without it the page is shared")
    func hasPinnedFlag() throws {
        let k = try makeKernel()
        let (mm, a) = try NonPresentEntryTests.anon(k, written: [0])
        let page = pfnToPage(k.ref, entryPfn(EntryKit.pte(mm, a)))
        let folio = page.folio
        folio.refAdd(Int32(DAX_GUP_PIN_COUNTING_BIAS))   // GET references, as many as a pin's bias
        #expect(folio.maybeDmaPinned)
        let child = try mm.fork()
        let c = child.withUnsafeRecord { walk($0, a).pte.map { dax_load_u64($0) } ?? 0 }
        #expect(entryPfn(c) == pageToPfn(k.ref, page), "no FOLL_PIN in this mm: the page is shared, not copied")
        #expect(!page.isAnonExclusive && folio.mapcount == 2)
        _ = consume child
        _ = folio.refSubReturn(Int32(DAX_GUP_PIN_COUNTING_BIAS))

        let (mm2, b) = try NonPresentEntryTests.anon(k, written: [0])
        let pins = try mm2.pinPages(b, count: 1, flags: [.write])
        let child2 = try mm2.fork()
        let c2 = child2.withUnsafeRecord { walk($0, b).pte.map { dax_load_u64($0) } ?? 0 }
        #expect(entryPfn(c2) != pageToPfn(k.ref, pins[0]), "a pinned page is copied for the child (copy_present_page)")
        #expect(pins[0].isAnonExclusive)
        mm2.unpin(pins)
        #expect(invariants(mms: [mm, mm2, child2], pgmaps: [], complete: true).isEmpty && k.drainReports().isEmpty)
    }

    @Test("zap_nonpresent_ptes: MADV_DONTNEED keeps a guard marker and drops a poisoned one; munmap (ZAP_FLAG_DROP_MARKER) drops the guard marker too")
    func markers() throws {
        let k = try makeKernel()
        let (mm, a) = try NonPresentEntryTests.anon(k, written: [])
        try NonPresentEntryTests.nonePTE(mm, a)
        try NonPresentEntryTests.nonePTE(mm, a + 4096)
        let guardE = swpEntryToPte(SwapEntry(type: SwapType.pteMarker, offset: PteMarker.guardRegion))
        let poisonE = swpEntryToPte(SwapEntry(type: SwapType.pteMarker, offset: PteMarker.poisoned))
        EntryKit.setPTE(mm, a, guardE)
        EntryKit.setPTE(mm, a + 4096, poisonE)
        #expect(mm.handleFault(a, write: false) == DAX_VM_FAULT_SIGSEGV)
        try mm.madvise(a, 8192, .dontNeed)
        #expect(EntryKit.pte(mm, a) == guardE, "MADV_DONTNEED keeps the guard region")
        #expect(entryNone(EntryKit.pte(mm, a + 4096)), "the poisoned marker goes")
        let empty = swpEntryToPte(SwapEntry(type: SwapType.pteMarker, offset: 0))
        EntryKit.setPTE(mm, a + 4096, empty)
        #expect(mm.handleFault(a + 4096, write: false) == DAX_VM_FAULT_SIGBUS, "an empty marker is a bug: SIGBUS")
        try mm.munmap(a, 64 * KiB)
        #expect(k.drainReports().isEmpty)
    }
}
