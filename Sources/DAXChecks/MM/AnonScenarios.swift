// The mm suite's anonymous-memory scenarios: do_anonymous_page (the zero
// page on a read, a new exclusive folio on a write), do_huge_pmd_anonymous_page
// (the huge zero folio, a PMD THP), the anon half of __split_huge_pmd_locked
// on a partial munmap, the buddy allocator (mm/page_alloc.c: expand's split,
// __free_one_page's merge, exhaustion as VM_FAULT_OOM, the THP fault's
// fallback to PTEs) and folio_lock's sleeping wait. Every step asserts the
// folio's refcount and mapcount, PageAnonExclusive, MM_ANONPAGES,
// NR_ANON_MAPPED / NR_ANON_THPS and the allocator's pages, and ends with the
// port's invariants and no debug report.

import CDaxMM
import DAXBase
import Foundation
import MMCore
import MMTestSupport

#if canImport(Glibc)
import Glibc
#endif

// MARK: the machine

/// A port kernel with ordinary memory and one empty MM, for anonymous
/// mappings.
final class AnonMachine: @unchecked Sendable {
    let kernel: Kernel
    let mm: MM

    init(ramPages: Int? = nil) throws {
        if let ramPages {
            kernel = try Kernel(physBits: 40, ramPages: ramPages)
        } else {
            kernel = try Kernel(physBits: 40)
        }
        mm = try MM(kernel: kernel)
    }

    var k: KernelRef { kernel.ref }

    /// mmap(MAP_PRIVATE|MAP_ANONYMOUS) of `length` bytes, PMD aligned (as
    /// thp_get_unmapped_area places anonymous mappings of 2 MiB or more),
    /// MADV_HUGEPAGE on it when asked.
    func map(_ length: UInt64, hugepage: Bool = false, prot: Prot = [.read, .write]) throws -> UInt64 {
        var req = MMapRequest(length: length)
        req.shared = false
        req.prot = prot
        req.alignment = UInt64(pmdSize)
        let a = try mm.mmap(req)
        if hugepage { try mm.madvise(a, length, .hugepage) }
        return a
    }

    /// The PTE slot for `a` (0 when there is no page table).
    func pte(_ a: UInt64) -> PTEntry {
        mm.lockRead(); defer { mm.unlockRead() }
        return mm.withUnsafeRecord { walk($0, a).pte.map { dax_load_u64($0) } ?? 0 }
    }

    /// The PMD slot for `a`.
    func pmd(_ a: UInt64) -> PTEntry {
        mm.lockRead(); defer { mm.unlockRead() }
        return mm.withUnsafeRecord { walk($0, a).pmd.map { dax_load_u64($0) } ?? 0 }
    }

    /// The folio a present PTE or PMD leaf at `a` maps.
    func folio(at a: UInt64) -> Folio? {
        let p = pmd(a)
        if entryLeaf(p) { return pfnToPage(k, entryPfn(p)).folio }
        let e = pte(a)
        return entryPresent(e) && !entrySpecial(e) ? pfnToPage(k, entryPfn(e)).folio : nil
    }

    var allocated: Int64 { kernel.ramStats?.allocatedPages ?? -1 }
    var anonMapped: Int64 { kernel.stat(DAX_NR_ANON_MAPPED) }
    var anonThps: Int64 { kernel.stat(DAX_NR_ANON_THPS) }

    /// The mm-wide counters one anon step moves.
    func totals() -> AnonTotals {
        AnonTotals(rssAnon: mm.rssAnonPages, rssFile: mm.rssFilePages, anonMapped: anonMapped,
                   anonThps: anonThps, allocated: allocated)
    }
}

/// MM_ANONPAGES, MM_FILEPAGES, NR_ANON_MAPPED, NR_ANON_THPS and the
/// allocator's allocated pages, compared as one value.
struct AnonTotals: Equatable, CustomStringConvertible {
    var rssAnon: Int64
    var rssFile: Int64
    var anonMapped: Int64
    var anonThps: Int64
    var allocated: Int64

    var description: String {
        "MM_ANONPAGES \(rssAnon), MM_FILEPAGES \(rssFile), NR_ANON_MAPPED \(anonMapped), NR_ANON_THPS \(anonThps), allocated pages \(allocated)"
    }

    /// These totals moved by (rss, NR_ANON_MAPPED, NR_ANON_THPS, allocated).
    func plus(rss: Int64 = 0, mapped: Int64 = 0, thps: Int64 = 0, allocated a: Int64 = 0) -> AnonTotals {
        AnonTotals(rssAnon: rssAnon + rss, rssFile: rssFile, anonMapped: anonMapped + mapped,
                   anonThps: anonThps + thps, allocated: allocated + a)
    }
}

/// One anon folio's counters: refcount, mapcount, entire mapcount, and
/// which of its pages are PageAnonExclusive.
struct AnonFolioState: Equatable, CustomStringConvertible {
    var refcount: Int32
    var mapcount: Int32
    var entireMapcount: Int32
    var exclusivePages: Int
    var anon: Bool

    init(_ f: Folio) {
        refcount = f.refCount
        mapcount = f.mapcount
        entireMapcount = f.entireMapcount
        exclusivePages = (0..<f.nrPages).filter { f.page($0).isAnonExclusive }.count
        anon = f.isAnon
    }

    init(refcount: Int32, mapcount: Int32, entireMapcount: Int32 = 0, exclusivePages: Int, anon: Bool = true) {
        self.refcount = refcount
        self.mapcount = mapcount
        self.entireMapcount = entireMapcount
        self.exclusivePages = exclusivePages
        self.anon = anon
    }

    var description: String {
        "refcount \(refcount), mapcount \(mapcount), entire_mapcount \(entireMapcount), PageAnonExclusive pages \(exclusivePages), anon \(anon)"
    }
}

extension TestContext {
    /// The mm-wide totals are `want`.
    @discardableResult
    func expectTotals(_ m: AnonMachine, _ want: AnonTotals, _ what: String) -> Bool {
        let got = m.totals()
        return expect(got == want, "\(what): \(got), expected \(want)")
    }

    /// The folio's counters are `want`.
    @discardableResult
    func expectFolio(_ f: Folio, _ want: AnonFolioState, _ what: String) -> Bool {
        let got = AnonFolioState(f)
        return expect(got == want, "\(what): \(got), expected \(want)")
    }

    /// The port's invariants over the machine's mm (or `mms`) and no debug
    /// report. `complete` says `mms` and `pgmaps` are every MM and pgmap of
    /// the machine's kernel, so the global anon counters (rule 19) are
    /// checked too; pass false while an MM or pgmap is left out.
    @discardableResult
    func expectAnonConsistent(_ m: AnonMachine, mms: [MM]? = nil, pgmaps: [DevPagemap] = [], ledger: RefLedger? = nil,
                              complete: Bool = true, after what: String) -> Bool {
        let v = invariants(mms: mms ?? [m.mm], pgmaps: pgmaps, ledger: ledger, complete: complete)
        let problems = v.map(\.description) + m.kernel.drainReports().map { "debug report:\n\($0)" }
        return expect(problems.isEmpty, "port after \(what): \(problems.joined(separator: "\n"))")
    }
}

// MARK: mm-anon-fault

/// do_anonymous_page: a read maps the zero page (special, read-only, no
/// rss, nothing allocated); a write maps a new exclusive folio (refcount 1,
/// mapcount 1, PageAnonExclusive, MM_ANONPAGES and NR_ANON_MAPPED +1, one
/// page from the allocator, folio->index the linear page index); a second
/// fault on the mapped page changes nothing; MADV_DONTNEED and munmap give
/// the page back to the allocator.
func anonFaultScenario(_ t: TestContext) throws {
    let m = try t.must("a port kernel with ordinary memory") { try AnonMachine() }
    let a = try t.must("mmap 64 KiB MAP_PRIVATE|MAP_ANONYMOUS") { try m.map(64 << 10) }
    let base = m.totals()
    t.expectEqual(base.allocated, 0, "allocated pages of a fresh zone")

    // Read: the zero page.
    t.expectFault(m.mm.handleFault(a, write: false), 0, "read fault on a none PTE")
    let z = m.pte(a)
    t.expect(entryPresent(z) && entrySpecial(z) && !entryWrite(z) && isZeroPfn(entryPfn(z)),
             "do_anonymous_page read: pte_mkspecial(my_zero_pfn), read-only; got \(hex(z))")
    t.expectTotals(m, base, "after the read fault (the zero page is not counted)")
    t.expectFault(m.mm.handleFault(a, write: false), 0, "a second read of the zero page")
    t.expectEqual(m.pte(a), z, "the zero-page PTE after a second read")

    // Write: a new exclusive folio.
    let w = a + 4096
    t.expectFault(m.mm.handleFault(w, write: true), 0, "write fault on a none PTE")
    let e = m.pte(w)
    t.expect(entryPresent(e) && entryWrite(e) && entryDirty(e) && !entrySpecial(e),
             "do_anonymous_page write: mk_pte, pte_mkdirty, pte_mkwrite; got \(hex(e))")
    let folio = try t.require(m.folio(at: w), "a folio behind the written PTE")
    t.expect(!folio.isLarge, "an order-0 folio")
    t.expectFolio(folio, AnonFolioState(refcount: 1, mapcount: 1, exclusivePages: 1),
                  "folio_add_new_anon_rmap(RMAP_EXCLUSIVE)")
    t.expectEqual(folio.index, w >> UInt64(pageShift), "folio->index (linear_page_index of an anon VMA)")
    t.expect(folio.anonVMA != nil && folio.anonVMA == m.mm.findVMA(w).flatMap { vmaAnonVMA($0) },
             "folio->mapping is the VMA's anon_vma")
    t.expectTotals(m, base.plus(rss: 1, mapped: 1, allocated: 1), "after the write fault")
    let data = try t.require(pfnAddress(m.k, entryPfn(e)), "the direct map of the new page")
    t.expect((0..<512).allSatisfy { data.load(fromByteOffset: $0 * 8, as: UInt64.self) == 0 },
             "the new anon page is zeroed (alloc_anon_folio: __GFP_ZERO)")

    // Write again, read again: the same page, no counter moves.
    t.expectFault(m.mm.handleFault(w, write: true), 0, "a second write")
    t.expectFault(m.mm.handleFault(w, write: false), 0, "a read of the written page")
    t.expectEqual(m.pte(w) & ~(PT.accessed | PT.dirty), e & ~(PT.accessed | PT.dirty), "the PTE after refaults")
    t.expectFolio(folio, AnonFolioState(refcount: 1, mapcount: 1, exclusivePages: 1), "after the refaults")
    t.expectTotals(m, base.plus(rss: 1, mapped: 1, allocated: 1), "after the refaults")
    t.expectAnonConsistent(m, after: "the faults")

    // A fault outside any VMA.
    t.expectFault(m.mm.handleFault(a + (64 << 10) + (1 << 30), write: true), DAX_VM_FAULT_SIGSEGV,
                  "a fault with no VMA (lock_mm_and_find_vma)")

    // MADV_DONTNEED: zap_page_range_single frees the page.
    try t.must("madvise(MADV_DONTNEED) of the written page") { try m.mm.madvise(w, 4096, .dontNeed) }
    t.expectEqual(m.pte(w), 0, "the PTE after MADV_DONTNEED")
    t.expectTotals(m, base, "after MADV_DONTNEED: rss, NR_ANON_MAPPED and the page back")
    t.expectFault(m.mm.handleFault(w, write: true), 0, "a write after MADV_DONTNEED")
    t.expectTotals(m, base.plus(rss: 1, mapped: 1, allocated: 1), "a fresh page after MADV_DONTNEED")

    // Many pages, then munmap: every page to the allocator.
    for i in 2..<16 { _ = m.mm.handleFault(a + UInt64(i) * 4096, write: true) }
    t.expectTotals(m, base.plus(rss: 15, mapped: 15, allocated: 15), "15 written pages")
    t.expectAnonConsistent(m, after: "15 written pages")
    try t.must("munmap") { try m.mm.munmap(a, 64 << 10) }
    t.expectTotals(m, base, "after munmap: every folio freed to the allocator (the last folio_put)")
    let sEnd = m.kernel.ramStats!
    t.expectEqual(sEnd.freeBlocks[Int(DAX_MAX_PAGE_ORDER)] << Int64(DAX_MAX_PAGE_ORDER), sEnd.freePages,
                  "after munmap every free page is back in a max-order block (__free_one_page merged them)")
    t.expectAnonConsistent(m, after: "munmap")
}

// MARK: mm-anon-thp

/// do_huge_pmd_anonymous_page and the anon split: with MADV_HUGEPAGE
/// (enabled=madvise) a read maps the huge zero folio (no rss, nothing
/// allocated) and a write a PMD THP (order 9, refcount 1, entire mapcount
/// 1, PageAnonExclusive on the head, MM_ANONPAGES and NR_ANON_MAPPED and
/// NR_ANON_THPS +512); without the advice (or with enabled=never) a write
/// maps a PTE; munmap of one 4K page of the THP splits the PMD
/// (__split_huge_pmd_locked: 511 PTEs left, AnonExclusive on every page,
/// NR_ANON_THPS -512, the folio partially mapped and queued for deferred
/// split), and a full munmap frees the 512 pages.
func anonThpScenario(_ t: TestContext) throws {
    let m = try t.must("a port kernel with ordinary memory") { try AnonMachine() }
    t.expectEqual(m.kernel.transparentHugepage, .always, "transparent_hugepage/enabled default (CONFIG_TRANSPARENT_HUGEPAGE_ALWAYS, Kconfig's and Debian's)")
    t.expect(m.kernel.thpUseZeroPage, "transparent_hugepage/use_zero_page default 1")
    let len = UInt64(4 * pmdSize)
    let a = try t.must("mmap 8 MiB private anonymous, MADV_HUGEPAGE") { try m.map(len, hugepage: true) }
    let base = m.totals()

    // Read: the huge zero folio.
    t.expectFault(m.mm.handleFault(a, write: false), 0, "read fault on a none PMD")
    let hz = m.pmd(a)
    t.expect(entryLeaf(hz) && !entryWrite(hz) && isHugeZeroPfn(m.k, entryPfn(hz)),
             "set_huge_zero_folio: a read-only PMD of the huge zero folio; got \(hex(hz))")
    t.expectTotals(m, base, "after the huge zero read (no rss, nothing allocated)")

    // Write: a PMD THP.
    let h = a + UInt64(pmdSize)
    t.expectFault(m.mm.handleFault(h + 0x1234, write: true), 0, "write fault on a none PMD")
    let pe = m.pmd(h)
    t.expect(entryLeaf(pe) && entryWrite(pe) && entryDirty(pe), "__do_huge_pmd_anonymous_page: a writable dirty PMD; got \(hex(pe))")
    let thp = try t.require(m.folio(at: h), "the THP")
    t.expectEqual(thp.order, pmdOrder, "THP order")
    t.expectEqual(pageToPfn(m.k, thp.head) % UInt64(hpagePmdNr), 0, "the THP's pfn is PMD aligned")
    t.expectFolio(thp, AnonFolioState(refcount: 1, mapcount: 1, entireMapcount: 1, exclusivePages: 1),
                  "folio_add_new_anon_rmap of a PMD-mappable folio (AnonExclusive on the head only)")
    let nr = Int64(hpagePmdNr)
    t.expectTotals(m, base.plus(rss: nr, mapped: nr, thps: nr, allocated: nr), "after the THP write fault")
    t.expectAnonConsistent(m, after: "the THP fault")

    // enabled=never: the same advice maps a PTE.
    m.kernel.transparentHugepage = .never
    let n = a + UInt64(2 * pmdSize)
    t.expectFault(m.mm.handleFault(n, write: true), 0, "write fault with enabled=never")
    t.expect(!entryLeaf(m.pmd(n)) && entryPresent(m.pte(n)), "enabled=never: a PTE, no THP (thp_vma_allowable_order)")
    m.kernel.transparentHugepage = .madvise
    // No MADV_HUGEPAGE under enabled=madvise: a PTE.
    let plain = try t.must("mmap 4 MiB without MADV_HUGEPAGE") { try m.map(UInt64(2 * pmdSize)) }
    t.expectFault(m.mm.handleFault(plain, write: true), 0, "write fault without MADV_HUGEPAGE")
    t.expect(!entryLeaf(m.pmd(plain)) && entryPresent(m.pte(plain)), "enabled=madvise without the advice: a PTE")
    t.expectTotals(m, base.plus(rss: nr + 2, mapped: nr + 2, thps: nr, allocated: nr + 2), "after the two PTE faults")

    // munmap of one 4K page of the THP: the PMD splits.
    let hole = h + 5 * 4096
    try t.must("munmap 4K inside the THP") { try m.mm.munmap(hole, 4096) }
    let pmdAfter = m.pmd(h)
    t.expect(entryPresent(pmdAfter) && !entryLeaf(pmdAfter), "the PMD is a page table after the split")
    t.expectEqual(m.pte(hole), 0, "the munmapped page's PTE")
    t.expectEqual(thp.order, pmdOrder, "the folio is not split (only the mapping)")
    t.expectFolio(thp, AnonFolioState(refcount: Int32(nr - 1), mapcount: Int32(nr - 1), entireMapcount: 0,
                                      exclusivePages: hpagePmdNr),
                  "__split_huge_pmd_locked: folio_add_anon_rmap_ptes(RMAP_EXCLUSIVE) for every page, the munmapped one's reference dropped")
    var ptesOK = 0
    for i in 0..<hpagePmdNr where i != 5 {
        let e = m.pte(h + UInt64(i) * 4096)
        if entryPresent(e) && entryWrite(e) && entryPfn(e) == pageToPfn(m.k, thp.page(i)) { ptesOK += 1 }
    }
    t.expectEqual(ptesOK, hpagePmdNr - 1, "writable PTEs mapping page i of the folio at haddr + i*4K")
    t.expect(thp.isPartiallyMapped, "folio_test_partially_mapped: deferred_split_folio(folio, true) queued it")
    t.expectTotals(m, base.plus(rss: nr + 1, mapped: nr + 1, thps: 0, allocated: nr + 2),
                   "after the split: NR_ANON_THPS -512, one page unmapped")
    t.expectAnonConsistent(m, after: "the partial munmap")

    // Everything back.
    try t.must("munmap the rest") {
        try m.mm.munmap(a, hole - a)
        try m.mm.munmap(hole + 4096, a + len - hole - 4096)
        try m.mm.munmap(plain, UInt64(2 * pmdSize))
    }
    t.expectTotals(m, base, "after munmap of everything: the THP's 512 pages freed")
    t.expectAnonConsistent(m, after: "munmap")
}

// MARK: mm-page-alloc

/// The buddy allocator of mm/page_alloc.c: an order-0 allocation from a
/// pristine zone splits a max-order block into one free block of each
/// lower order (expand); the free merges them back (__free_one_page);
/// PMD-order allocations are aligned; an exhausted zone makes an anon write
/// fault VM_FAULT_OOM with nothing mapped; a THP fault with no free order-9
/// block falls back to a PTE (do_huge_pmd_anonymous_page: VM_FAULT_FALLBACK).
func pageAllocScenario(_ t: TestContext) throws {
    let pages = 2048
    let m = try t.must("a port kernel with 2048 pages of ordinary memory") { try AnonMachine(ramPages: pages) }
    let k = m.k
    let maxOrder = Int(DAX_MAX_PAGE_ORDER)
    let s0 = try t.require(m.kernel.ramStats, "the zone's stats")
    t.expectEqual(s0.totalPages, Int64(pages), "zone pages")
    t.expectEqual(s0.allocatedPages, 0, "allocated pages of a fresh zone")

    // One order-0 page: a max-order block split down.
    let f0 = try t.require(folioAlloc(k, order: 0, zero: true), "an order-0 folio")
    t.expectEqual(f0.refCount, 1, "a new folio's refcount (set_page_refcounted)")
    let s1 = m.kernel.ramStats!
    t.expectEqual(s1.allocatedPages, 1, "allocated after one page")
    t.expect((0..<maxOrder).allSatisfy { s1.freeBlocks[$0] == 1 },
             "expand: one free block of each order below \(maxOrder); got \(s1.freeBlocks)")
    folioPut(k, f0)
    let s2 = m.kernel.ramStats!
    t.expectEqual(s2.allocatedPages, 0, "allocated after the free")
    t.expectEqual(s2.freeBlocks[maxOrder] << Int64(maxOrder), s2.freePages, "__free_one_page merged every free page back into max-order blocks")
    t.expect((0..<maxOrder).allSatisfy { s2.freeBlocks[$0] == 0 }, "no lower-order block left: \(s2.freeBlocks)")

    // PMD-order: aligned, compound.
    let f9 = try t.require(folioAlloc(k, order: pmdOrder, zero: false), "an order-9 folio")
    t.expect(f9.isLarge && f9.order == pmdOrder && pageToPfn(k, f9.head) % UInt64(hpagePmdNr) == 0,
             "an order-9 folio is compound and naturally aligned")
    t.expect(f9.page(1).isTail && f9.page(hpagePmdNr - 1).isTail, "its pages are tails of the head")
    folioPut(k, f9)
    t.expectEqual(m.kernel.ramStats!.allocatedPages, 0, "allocated after the order-9 free")

    // Exhaustion: a write fault is VM_FAULT_OOM.
    let a = try t.must("mmap 8 MiB private anonymous, MADV_HUGEPAGE") { try m.map(UInt64(4 * pmdSize), hugepage: true) }
    var hold: [Folio] = []
    while let f = folioAlloc(k, order: 0, zero: false) { hold.append(f) }
    t.expectEqual(hold.count, pages, "order-0 allocations until the zone is empty")
    let failed0 = m.kernel.ramStats!.failedAllocations
    let before = m.totals()
    t.expectFault(m.mm.handleFault(a + 4096, write: true), DAX_VM_FAULT_OOM,
                  "a write fault with no free page (do_anonymous_page: alloc_anon_folio fails)")
    t.expectEqual(m.pte(a + 4096), 0, "nothing mapped by the OOM fault")
    t.expect(!entryLeaf(m.pmd(a)), "no PMD mapped by the OOM fault")
    t.expectTotals(m, before, "counters after the OOM fault")
    t.expect(m.kernel.ramStats!.failedAllocations > failed0, "the failed allocations are counted")
    t.expectFault(m.mm.handleFault(a + 8192, write: false), 0, "a read still maps the (huge) zero page")

    // Free all but one page of every 512-page block: no order-9 block.
    var kept: [Folio] = []
    for f in hold {
        if pageToPfn(k, f.head) % UInt64(hpagePmdNr) == 0 { kept.append(f) } else { folioPut(k, f) }
    }
    hold = kept
    let s3 = m.kernel.ramStats!
    t.expectEqual(s3.freePages, Int64(pages - kept.count), "free pages with one page held per 2 MiB")
    t.expect((pmdOrder...maxOrder).allSatisfy { s3.freeBlocks[$0] == 0 }, "no free block of order 9 or more: \(s3.freeBlocks)")
    let thps0 = m.anonThps
    let h = a + UInt64(2 * pmdSize)
    t.expectFault(m.mm.handleFault(h, write: true), 0, "a THP-eligible write fault with no order-9 block")
    t.expect(!entryLeaf(m.pmd(h)) && entryPresent(m.pte(h)),
             "the fault fell back to a PTE (VM_FAULT_FALLBACK, then handle_pte_fault)")
    t.expectEqual(m.anonThps, thps0, "NR_ANON_THPS after the fallback")
    t.expectEqual(m.folio(at: h)?.isLarge, false, "the fallback maps an order-0 folio")
    t.expectEqual(m.mm.rssAnonPages, 1, "MM_ANONPAGES after the fallback")
    t.expectAnonConsistent(m, after: "the fallback fault")

    for f in hold { folioPut(k, f) }
    try t.must("munmap") { try m.mm.munmap(a, UInt64(4 * pmdSize)) }
    let s4 = m.kernel.ramStats!
    t.expectEqual(s4.allocatedPages, 0, "allocated pages at the end")
    t.expectEqual(s4.freeBlocks[maxOrder], Int64(pages >> maxOrder), "every block (the zone fully grown) merged back at the end")
    t.expectAnonConsistent(m, after: "munmap")
}

// MARK: mm-folio-lock

/// folio_lock (mm/filemap.c): a second locker sleeps on the folio's wait
/// queue until folio_unlock wakes it; folio_trylock fails while held; a
/// bounded lock (folio_lock_killable's fatal-signal return) gives up after
/// its timeout; folio_wait_locked waits without taking the lock;
/// folio_unlock of an unlocked folio is a VM_BUG_ON_FOLIO report.
func folioLockScenario(_ t: TestContext) throws {
    let m = try t.must("a port kernel with ordinary memory") { try AnonMachine() }
    let k = m.k
    let folio = try t.require(folioAlloc(k, order: 0, zero: true), "an order-0 folio")
    t.expect(folioTrylock(folio) && folio.isLocked, "folio_trylock of a free lock")
    t.expect(!folioTrylock(folio), "folio_trylock of a held lock fails")
    let t0 = monotonicNanos()
    t.expect(!folioLock(k, folio, timeoutNanos: 20_000_000), "a bounded folio_lock of a held lock gives up")
    t.expect(monotonicNanos() - t0 >= 15_000_000, "it waited about its timeout first")

    let order = SharedBox<[String]>([])
    let holder = UInt(bitPattern: folio.raw)
    let kernelBox = SharedBox<Kernel?>(m.kernel)
    let waiter = CheckThread {
        let f = Folio(UnsafeMutablePointer<dax_page>(bitPattern: holder)!)
        let kk = kernelBox.value!.ref
        folioLock(kk, f)
        order.value.append("waiter locked")
        folioUnlock(kk, f)
    }
    let flagsWord = UnsafeRawPointer(dax_page_flags(folio.raw)!)
    t.expect(waitUntilSleeping(m.kernel, on: flagsWord, seconds: 5, orUntil: { !order.value.isEmpty }),
             "the second locker sleeps on the folio's wait queue")
    t.expect(order.value.isEmpty, "the waiter does not get the lock while it is held")
    order.value.append("unlock")
    folioUnlock(k, folio)
    t.expect(waiter.join(seconds: 10), "folio_unlock wakes the waiter, which takes and drops the lock")
    t.expectEqual(order.value, ["unlock", "waiter locked"], "order of events")
    t.expect(!folio.isLocked, "the lock is free at the end")

    // folio_wait_locked: returns when the holder unlocks, without locking.
    folioLock(k, folio)
    let woke = AtomicCount()
    let waitOnly = CheckThread {
        let f = Folio(UnsafeMutablePointer<dax_page>(bitPattern: holder)!)
        if folioWaitLocked(kernelBox.value!.ref, f) { woke.add() }
    }
    _ = waitUntilSleeping(m.kernel, on: flagsWord, seconds: 5, orUntil: { woke.value > 0 })
    t.expectEqual(woke.value, 0, "folio_wait_locked sleeps while held")
    folioUnlock(k, folio)
    t.expect(waitOnly.join(seconds: 10) && woke.value == 1, "folio_wait_locked returns after folio_unlock")
    t.expect(!folio.isLocked, "folio_wait_locked does not take the lock")
    kernelBox.value = nil

    // folio_unlock of a free lock: the kernel's VM_BUG_ON_FOLIO.
    folioUnlock(k, folio)
    let reports = m.kernel.drainReports()
    t.expect(reports.count == 1 && "\(reports[0])".contains("folio_test_locked"),
             "folio_unlock of an unlocked folio is reported: \(reports)")
    folioPut(k, folio)
    t.expectEqual(m.allocated, 0, "the folio freed")
    t.expectAnonConsistent(m, after: "the lock scenario")
}
