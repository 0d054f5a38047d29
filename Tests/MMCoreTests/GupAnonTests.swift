// GUP on anonymous memory (mm/gup.c, 6.15+): gup_must_unshare (a R/O pin
// of a shared anon page unshares it first), can_follow_write_pte
// (FOLL_FORCE writes into a read-only private mapping after the COW), the
// zero folios in try_grab_folio / gup_put_folio, and GUP-fast's
// gup_fast_folio_allowed and unshare check.

import Testing
@testable import MMCore
import CDaxMM
import DAXBase

@Suite("GUP on anonymous memory")
struct GupAnonTests {
    @Test("gup_must_unshare: a R/O FOLL_PIN of an anon page shared with a child faults with FAULT_FLAG_UNSHARE first: the parent gets an exclusive copy, still read-only, and that copy is pinned; the child keeps the old page. FOLL_GET does not unshare")
    func roPinUnshares() throws {
        let k = try makeKernel()
        let (mm, a) = try AnonFaultTests.anonMM(k, length: 64 * KiB)
        #expect(mm.handleFault(a, write: true) == 0)
        let pfn = entryPfn(AnonFaultTests.pte(mm, a))
        pageBytes(k, pfn)[9] = 0x99
        let c = try mm.fork()
        let old = pfnToPage(k.ref, pfn).folio
        let alloc0 = k.ramStats!.allocatedPages

        let got = try mm.getPages(a, count: 1, flags: [])
        #expect(got.map { pageToPfn(k.ref, $0) } == [pfn], "FOLL_GET takes the shared page as it is")
        mm.put(got)
        #expect(k.ramStats!.allocatedPages == alloc0)

        let acq0 = k.stat(DAX_NR_FOLL_PIN_ACQUIRED)
        for fast in [false, true] {
            let pinned = try mm.pinPages(a, count: 1, flags: [], fast: fast)
            let np = pageToPfn(k.ref, pinned[0])
            let e = AnonFaultTests.pte(mm, a)
            if !fast {
                #expect(np != pfn && entryPfn(e) == np && !entryWrite(e), "unshared, still read-only")
                #expect(pageBytes(k, np)[9] == 0x99)
                #expect(old.refCount == 1 && old.mapcount == 1 && entryPfn(AnonFaultTests.pte(c, a)) == pfn)
                #expect(k.ramStats!.allocatedPages == alloc0 + 1)
            } else {
                #expect(np == entryPfn(e), "GUP-fast pins the page that is now exclusive")
            }
            #expect(pinned[0].isAnonExclusive && pinned[0].folio.maybeDmaPinned)
            mm.unpin(pinned)
        }
        #expect(k.stat(DAX_NR_FOLL_PIN_ACQUIRED) == acq0 + 2)
        #expect(mm.rssAnonPages == 1 && c.rssAnonPages == 1)
        #expect(k.drainReports().isEmpty)
    }

    @Test("GUP-fast and gup_must_unshare: a R/O pin of a shared anon page is refused by gup_fast (falls back to the slow path), counters unchanged after its put")
    func fastRefusesShared() throws {
        let k = try makeKernel()
        let (mm, a) = try AnonFaultTests.anonMM(k, length: 64 * KiB)
        #expect(mm.handleFault(a, write: true) == 0)
        let c = try mm.fork()
        let folio = pfnToPage(k.ref, entryPfn(AnonFaultTests.pte(mm, a))).folio
        let ref0 = folio.refCount
        let pages = PageArray.allocate(capacity: 1)
        defer { pages.deallocate() }
        pages[0] = nil
        #expect(gupFast(mm.ref, a, 1, [.pin], pages) == 0)
        #expect(folio.refCount == ref0 && !folio.maybeDmaPinned)
        #expect(gupFast(mm.ref, a, 1, [.get], pages) == 1, "FOLL_GET needs no unshare")
        folioPut(k.ref, Page(pages[0]!).folio)
        _ = c
        #expect(k.drainReports().isEmpty)
    }

    @Test("gup_fast_folio_allowed: a writable long-term pin of an exclusive anon page is taken by GUP-fast itself")
    func fastLongtermAnon() throws {
        let k = try makeKernel()
        let (mm, a) = try AnonFaultTests.anonMM(k, length: 64 * KiB)
        #expect(mm.handleFault(a, write: true) == 0)
        let folio = pfnToPage(k.ref, entryPfn(AnonFaultTests.pte(mm, a))).folio
        let pages = PageArray.allocate(capacity: 1)
        defer { pages.deallocate() }
        #expect(gupFast(mm.ref, a, 1, [.pin, .longterm, .write], pages) == 1)
        #expect(folio.refCount == 1 + Int32(DAX_GUP_PIN_COUNTING_BIAS))
        unpinUserPages(k.ref, pages, 1)
        #expect(folio.refCount == 1)
        #expect(k.drainReports().isEmpty)
    }

    @Test("can_follow_write_pte: FOLL_WRITE|FOLL_FORCE on a read-only private mapping COWs the zero page into an exclusive anon page that stays read-only (dirty), and follows it without another fault; without FOLL_FORCE it is -EFAULT")
    func forceWrite() throws {
        let k = try makeKernel()
        let mm = try MM(kernel: k)
        var req = MMapRequest(length: 64 * KiB)
        req.shared = false
        req.prot = [.read]
        let a = try mm.mmap(req)
        #expect(mm.handleFault(a, write: false) == 0)
        #expect(entryPfn(AnonFaultTests.pte(mm, a)) == 0)
        #expect(throws: MMError.self) { _ = try mm.getPages(a, count: 1, flags: [.write]) }
        let p = try mm.getPages(a, count: 1, flags: [.write, .force])
        let e = AnonFaultTests.pte(mm, a)
        #expect(entryPfn(e) == pageToPfn(k.ref, p[0]) && entryPfn(e) != 0)
        #expect(!entryWrite(e) && entryDirty(e) && p[0].isAnonExclusive)
        #expect(mm.rssAnonPages == 1)
        let alloc0 = k.ramStats!.allocatedPages
        let q = try mm.getPages(a, count: 1, flags: [.write, .force])
        #expect(q == p && k.ramStats!.allocatedPages == alloc0, "followed without a new copy")
        mm.put(p + q)
        #expect(p[0].folio.refCount == 1)
        #expect(k.drainReports().isEmpty)
    }

    @Test("is_zero_folio is the small zero page only: pins of the huge zero folio count (refcount, pincount, NR_FOLL_PIN_*) and go at unpin; a R/O long-term pin of it in a COW mapping unshares into an anon page")
    func hugeZeroPins() throws {
        let k = try makeKernel()
        let (mm, a) = try AnonFaultTests.anonMM(k, length: 2 * MiB, hugepage: true)
        #expect(mm.handleFault(a, write: false) == 0)
        let hz = pfnToPage(k.ref, entryPfn(AnonFaultTests.pmd(mm, a))).folio
        // is_zero_folio is the small zero page only: pins of the huge zero
        // folio count like pins of any large folio (refcount and _pincount
        // +1 per page, NR_FOLL_PIN_ACQUIRED), and go again at unpin.
        #expect(!isZeroFolio(k.ref, hz) && isHugeZeroPfn(k.ref, pageToPfn(k.ref, hz.head)))
        let ref0 = hz.refCount, pin0 = hz.pincount
        let acq0 = k.stat(DAX_NR_FOLL_PIN_ACQUIRED), rel0 = k.stat(DAX_NR_FOLL_PIN_RELEASED)
        for fast in [false, true] {
            let pinned = try mm.pinPages(a + 4096, count: 4, flags: [], fast: fast)
            #expect(pinned.count == 4 && pinned.allSatisfy { $0.folio == hz })
            #expect(hz.refCount == ref0 + 4 && hz.pincount == pin0 + 4)
            mm.unpin(pinned)
        }
        #expect(hz.refCount == ref0 && hz.pincount == pin0)
        #expect(k.stat(DAX_NR_FOLL_PIN_ACQUIRED) == acq0 + 8 && k.stat(DAX_NR_FOLL_PIN_RELEASED) == rel0 + 8)

        let lt = try mm.pinPages(a + 4096, count: 1, flags: [.longterm])
        #expect(lt[0].folio.isAnon && lt[0].isAnonExclusive)
        #expect(!entryLeaf(AnonFaultTests.pmd(mm, a)), "the huge zero PMD was split for the unshare")
        #expect(entryPfn(AnonFaultTests.pte(mm, a + 4096)) == pageToPfn(k.ref, lt[0]))
        #expect(!entryWrite(AnonFaultTests.pte(mm, a + 4096)) && mm.rssAnonPages == 1)
        mm.unpin(lt)
        #expect(k.drainReports().isEmpty)
    }
}
