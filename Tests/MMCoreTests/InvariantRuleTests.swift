// The invariant checker (MMCore/Invariants.swift) catches what it claims
// to: each case breaks one rule on purpose (a counter, a flag, an entry),
// expects a report that names the rule and the folio, then repairs the
// damage and expects a clean check again.

import Testing
@testable import MMCore
import CDaxMM
import DAXBase

@Suite("invariant checker: anon folios, non-present entries, free pages, counters")
struct InvariantRuleTests {
    static func violations(_ mms: [MM], ledger: RefLedger = [:], complete: Bool = true) -> [InvariantViolation] {
        invariants(mms: mms, pgmaps: [], ledger: ledger, complete: complete)
    }

    /// Expects a violation of `rule` whose dump names `pfn`'s folio (when
    /// given) and whose text contains `text`.
    static func expectRule(_ v: [InvariantViolation], _ rule: Int, head: UInt64? = nil, _ text: String,
                           sourceLocation: SourceLocation = #_sourceLocation) {
        let hit = v.first { $0.rule == rule && $0.description.contains(text) && (head == nil || $0.dump?.headPfn == head) }
        #expect(hit != nil, "no invariant \(rule) (\(text)) among:\n\(v.map(\.description).joined(separator: "\n"))",
                sourceLocation: sourceLocation)
        #expect(hit?.description.hasPrefix("invariant \(rule) violated") ?? false, sourceLocation: sourceLocation)
    }

    @Test("rule 14: MM_ANONPAGES off by one from what the entries map (a device-exclusive entry counts) is reported; rules 1 and 9: a device-exclusive entry holds one reference and one mapcount, an extra of either is reported on its folio")
    func rssAndMappingOfEntries() throws {
        let k = try makeKernel()
        let (mm, a) = try NonPresentEntryTests.anon(k, written: [0])
        mm.releaseDeviceExclusive(try mm.makeDeviceExclusive(a, owner: nil))
        let folio = pfnSwapEntryFolio(k.ref, pteToSwpEntry(EntryKit.pte(mm, a)))!
        let head = pageToPfn(k.ref, folio.head)
        #expect(Self.violations([mm]).isEmpty)

        addMMCounter(mm.ref, DAX_MM_ANONPAGES, 1)
        Self.expectRule(Self.violations([mm]), 14, "MM_ANONPAGES 2 but its entries map 1")
        addMMCounter(mm.ref, DAX_MM_ANONPAGES, -1)

        folio.refInc()
        Self.expectRule(Self.violations([mm]), 1, head: head, "refcount 2 != base 0 + entries 1")
        #expect(Self.violations([mm], ledger: [head: 1]).isEmpty, "the ledger accounts for a held reference")
        folioPut(k.ref, folio)

        dax_atomic_add(dax_page_mapcount(folio.raw), 1)
        Self.expectRule(Self.violations([mm]), 9, head: head, "folio_mapcount 2 != present and device entries 1")
        dax_atomic_add(dax_page_mapcount(folio.raw), -1)
        #expect(Self.violations([mm]).isEmpty)
        try mm.munmap(a, 64 * KiB)
        #expect(Self.violations([mm]).isEmpty && k.drainReports().isEmpty)
    }

    /// Maps `page` (of an anon folio) read-only at `b` of `mm2` with the
    /// accounting of a shared mapping (rmap without RMAP_EXCLUSIVE, a
    /// reference, MM_ANONPAGES), the way fork would have.
    static func mapAgain(_ mm2: MM, _ b: UInt64, _ page: Page) {
        let k = mm2.kernel.ref
        mm2.lockRead(); defer { mm2.unlockRead() }
        EntryKit.withPTE(mm2, b) { vma, ptep in
            let folio = page.folio
            folio.refInc()
            folioAddAnonRmapPte(k, folio, page, vma, b, [])
            addMMCounter(mm2.ref, DAX_MM_ANONPAGES, 1)
            setPteAt(mm2.ref, b, ptep, pfnEntry(pageToPfn(k, page), vma.pointee.vm_page_prot) & ~PT.rw)
        }
    }

    @Test("rule 16: a PageAnonExclusive page mapped by a second entry is reported, so is a maybe-DMA-pinned anon page mapped by two MMs; rule 17: a second mapping at an address rmap_walk does not look at is reported")
    func anonExclusiveAndPins() throws {
        let k = try makeKernel()
        let (mm, a) = try NonPresentEntryTests.anon(k, written: [0])
        let page = pfnToPage(k.ref, entryPfn(EntryKit.pte(mm, a)))
        let head = pageToPfn(k.ref, page)
        try NonPresentEntryTests.nonePTE(mm, a + 4096)
        Self.mapAgain(mm, a + 4096, page)
        var v = Self.violations([mm])
        Self.expectRule(v, 16, head: head, "PageAnonExclusive page mapped by 2 entries")
        Self.expectRule(v, 17, head: head, "mapped at \(hex(a + 4096))")
        try mm.madvise(a + 4096, 4096, .dontNeed)
        #expect(Self.violations([mm]).isEmpty)

        // Pinned and mapped by two MMs (the flag cleared as fork's
        // folio_try_dup_anon_rmap would have, had the pin not refused it).
        let pages = PageArray.allocate(capacity: 1)
        defer { pages.deallocate() }
        #expect(pinUserPages(mm.ref, a, 1, [.write], pages) == 1)
        let pin = Int64(DAX_GUP_PIN_COUNTING_BIAS)
        #expect(Self.violations([mm], ledger: [head: pin]).isEmpty)
        page.clear(DAX_PG_anon_exclusive)
        let (mm2, b) = try AnonFaultTests.anonMM(k, length: 64 * KiB)
        try NonPresentEntryTests.nonePTE(mm2, b)
        Self.mapAgain(mm2, b, page)
        v = Self.violations([mm, mm2], ledger: [head: pin])
        Self.expectRule(v, 16, head: head, "maybe-DMA-pinned anon page mapped by 2 MMs")
        try mm2.madvise(b, 4096, .dontNeed)
        unpinUserPage(k.ref, page)
        page.set(DAX_PG_anon_exclusive)
        #expect(Self.violations([mm, mm2]).isEmpty)
        try mm.munmap(a, 64 * KiB)
        #expect(k.drainReports().isEmpty)
    }

    @Test("rule 17: an anon folio whose index no longer matches its PTE's address (vma_address) is reported for the entry, device-exclusive entries included")
    func rmapReachability() throws {
        let k = try makeKernel()
        let (mm, a) = try NonPresentEntryTests.anon(k, written: [0, 1])
        mm.releaseDeviceExclusive(try mm.makeDeviceExclusive(a + 4096, owner: nil))
        let f0 = EntryKit.folio(mm, a)
        let f1 = pfnSwapEntryFolio(k.ref, pteToSwpEntry(EntryKit.pte(mm, a + 4096)))!
        #expect(Self.violations([mm]).isEmpty)
        for f in [f0, f1] {
            f.index += 1
            Self.expectRule(Self.violations([mm]), 17, head: pageToPfn(k.ref, f.head), "vma_address says")
            f.index -= 1
        }
        #expect(Self.violations([mm]).isEmpty)
        try mm.munmap(a, 64 * KiB)
    }

    @Test("rule 18: a page of a free buddy block with a refcount or a mapping is reported; rule 20: a device-exclusive entry naming a pfn without a struct page, or a page that is not anon, is reported")
    func freePagesAndPfnEntries() throws {
        let k = try makeKernel()
        let (mm, a) = try NonPresentEntryTests.anon(k, written: [0])
        let z = k.ref.pointee.ram!
        let freePfn = z.pointee.grown_pfn - 1
        let fp = pfnToPage(k.ref, freePfn)
        #expect(fp.refcountRaw == 0 && !fp.folio.isAnon)
        #expect(Self.violations([mm]).isEmpty)
        dax_atomic_set(dax_page_refcount(fp.raw), 1)
        Self.expectRule(Self.violations([mm]), 18, head: freePfn, "free page refcount 1")
        dax_atomic_set(dax_page_refcount(fp.raw), 0)
        fp.raw.pointee.mapping = 0x1000
        Self.expectRule(Self.violations([mm]), 18, "free page has a mapping")
        fp.raw.pointee.mapping = 0
        #expect(Self.violations([mm]).isEmpty)

        try NonPresentEntryTests.nonePTE(mm, a + 4096)
        EntryKit.setPTE(mm, a + 4096, swpEntryToPte(makeDeviceExclusiveEntry(1 << 24)))
        Self.expectRule(Self.violations([mm]), 20, "with no struct page")
        EntryKit.setPTE(mm, a + 4096, swpEntryToPte(makeDeviceExclusiveEntry(freePfn)))
        Self.expectRule(Self.violations([mm]), 20, head: freePfn, "not anon")
        EntryKit.setPTE(mm, a + 4096, 0)
        #expect(Self.violations([mm]).isEmpty)
        try mm.munmap(a, 64 * KiB)
        #expect(k.drainReports().isEmpty)
    }

    @Test("rule 19: NR_ANON_MAPPED and NR_ANON_THPS must equal what the anon folios' mapcounts say, checked only when the check covers the whole kernel (complete)")
    func globalCounters() throws {
        let k = try makeKernel()
        let (mm, a) = try AnonFaultTests.anonMM(k, length: 4 * MiB, hugepage: true)
        #expect(mm.handleFault(a, write: true) == 0)
        #expect(mm.handleFault(a + UInt64(pmdSize) + 8192, write: true) == 0)
        #expect(k.stat(DAX_NR_ANON_MAPPED) == Int64(2 * hpagePmdNr) && k.stat(DAX_NR_ANON_THPS) == Int64(2 * hpagePmdNr))
        #expect(Self.violations([mm]).isEmpty)
        modNodeStat(k.ref, DAX_NR_ANON_MAPPED, 1)
        Self.expectRule(Self.violations([mm]), 19, "NR_ANON_MAPPED 1025 but the anon folios' mapcounts map 1024")
        #expect(Self.violations([mm], complete: false).isEmpty, "a partial view cannot judge a global counter")
        modNodeStat(k.ref, DAX_NR_ANON_MAPPED, -1)
        modNodeStat(k.ref, DAX_NR_ANON_THPS, -Int64(hpagePmdNr))
        Self.expectRule(Self.violations([mm]), 19, "NR_ANON_THPS 512")
        modNodeStat(k.ref, DAX_NR_ANON_THPS, Int64(hpagePmdNr))
        // A partial munmap splits one THP: the counters follow.
        try mm.munmap(a + 4096, 4096)
        #expect(k.stat(DAX_NR_ANON_MAPPED) == Int64(2 * hpagePmdNr - 1) && k.stat(DAX_NR_ANON_THPS) == Int64(hpagePmdNr))
        #expect(Self.violations([mm]).isEmpty)
        try mm.munmap(a, 4 * MiB)
        #expect(Self.violations([mm]).isEmpty && k.drainReports().isEmpty)
    }
}
