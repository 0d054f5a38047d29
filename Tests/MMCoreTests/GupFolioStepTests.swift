// mm/gup.c: __get_user_pages steps over a huge leaf in one walk: follow_page_mask
// (follow_huge_pmd / follow_huge_pud) sets ctx.page_mask, page_increm covers the
// rest of the leaf (capped at the pages left), try_grab_folio takes the extra
// page_increm - 1 references, and pages[i + j] are the consecutive pages.

import CDaxMM
import DAXBase
import Testing
@testable import MMCore
import MMTestChecks
import MMTestSupport

@Suite("GUP slow path, one walk per huge leaf (mm/gup.c: __get_user_pages page_increm)")
struct GupFolioStepTests {
    /// A rig of two folios of `order`, both faulted (writable) before the GUP.
    static func faulted(_ order: Int, type: MemoryType = .generic) throws -> (FaultRig, UInt64, UInt64) {
        let size = UInt64(4096) << UInt64(order)
        let (rig, a) = try vmaFixture(type: type, order: order, bytes: 2 * size, length: 2 * size)
        #expect(a % size == 0)
        #expect(rig.mm.handleFault(a, write: true) & DAX_VM_FAULT_ERROR == 0)
        #expect(rig.mm.handleFault(a + size, write: true) & DAX_VM_FAULT_ERROR == 0)
        #expect(entryLeaf(order == pudOrder ? VMAKit.pud(rig.mm, a) : VMAKit.pmd(rig.mm, a)))
        return (rig, a, size)
    }

    static func ledger(_ rig: FaultRig, _ extra: [(Folio, Int64)]) -> RefLedger {
        var l: RefLedger = [:]
        for (f, n) in extra { l[pageToPfn(rig.kernel.ref, f.head), default: 0] += n }
        return l
    }

    /// The pages GUP must return: the page mapped at each address, in order.
    static func expectConsecutive(_ rig: FaultRig, _ pages: PageArray, from pgoff: UInt64, _ n: Int) {
        let first = rig.pgmap.ranges[0].startPfn + pgoff
        var wrong = 0
        for i in 0..<n where pages[i] != pfnToPage(rig.kernel.ref, first + UInt64(i)).raw { wrong += 1 }
        #expect(wrong == 0, "\(wrong) of \(n) pages are not the page at start + i * 4K")
    }

    @Test("pin/get_user_pages of HPAGE_NR + 7 pages from 5 pages into a PMD/PUD folio: pages in order across the folio boundary, refcount/_pincount +pages per folio, NR_FOLL_PIN_ACQUIRED +N; unpin/put restores",
          arguments: [pmdOrder, pudOrder], [true, false])
    func acrossFolioBoundary(order: Int, pin: Bool) throws {
        let (rig, a, size) = try Self.faulted(order)
        let nr = Int(size >> 12)
        let f = rig.folio(pgoff: 0), g = rig.folio(pgoff: UInt64(nr))
        let bf = VMAKit.counters(rig, f), bg = VMAKit.counters(rig, g)
        let n = nr + 7
        let pages = VMAKit.pages(n + 1)
        defer { pages.deallocate() }
        let start = a + 5 * 4096
        let got = pin ? pinUserPages(rig.mm.ref, start, n, [.write], pages) : getUserPages(rig.mm.ref, start, n, [.write], pages)
        #expect(got == n)
        Self.expectConsecutive(rig, pages, from: 5, n)
        #expect(pages[n] == nil, "nothing written past the count")
        let inF = Int32(nr - 5), inG = Int32(12)
        #expect(f.refCount == bf.ref + inF && g.refCount == bg.ref + inG)
        #expect(f.pincount == bf.pincount + (pin ? inF : 0) && g.pincount == bg.pincount + (pin ? inG : 0))
        #expect(f.mapcount == bf.mapcount && f.entireMapcount == bf.entire && rig.mm.rssFilePages == bf.rss)
        #expect(rig.kernel.stat(DAX_NR_FOLL_PIN_ACQUIRED) == bf.pinAcquired + (pin ? Int64(n) : 0))
        rig.check(Self.ledger(rig, [(f, Int64(inF)), (g, Int64(inG))]))
        if pin { unpinUserPages(rig.kernel.ref, pages, n) } else { putUserPages(rig.kernel.ref, pages, n) }
        #expect(VMAKit.counters(rig, f) == VMAKit.Counters(ref: bf.ref, mapcount: bf.mapcount, entire: bf.entire,
                                                           pincount: bf.pincount, rss: bf.rss, fileMapped: bf.fileMapped,
                                                           pmdMapped: bf.pmdMapped, pinAcquired: bf.pinAcquired + (pin ? Int64(n) : 0),
                                                           pinReleased: bf.pinReleased + (pin ? Int64(n) : 0)))
        #expect(g.refCount == bg.ref && g.pincount == bg.pincount)
        rig.check(Self.ledger(rig, []))
    }

    @Test("page_increm is capped at the pages left: a count that ends inside the folio grabs only those pages and writes no entry past them",
          arguments: [pmdOrder, pudOrder], [1, 3, 507])
    func countEndsInsideFolio(order: Int, n: Int) throws {
        let (rig, a, _) = try Self.faulted(order)
        let f = rig.folio(pgoff: 0)
        let before = VMAKit.counters(rig, f)
        let pages = VMAKit.pages(n + 1)
        defer { pages.deallocate() }
        #expect(pinUserPages(rig.mm.ref, a + 5 * 4096, n, [], pages) == n)
        Self.expectConsecutive(rig, pages, from: 5, n)
        #expect(pages[n] == nil)
        #expect(f.refCount == before.ref + Int32(n) && f.pincount == before.pincount + Int32(n))
        #expect(rig.kernel.stat(DAX_NR_FOLL_PIN_ACQUIRED) == before.pinAcquired + Int64(n))
        rig.check(Self.ledger(rig, [(f, Int64(n))]))
        #expect(getUserPages(rig.mm.ref, a + 5 * 4096, n, [], pages) == n)
        #expect(f.refCount == before.ref + 2 * Int32(n) && f.pincount == before.pincount + Int32(n))
        putUserPages(rig.kernel.ref, pages, n)
        #expect(pinUserPages(rig.mm.ref, a + 5 * 4096, n, [], pages) == n)
        unpinUserPages(rig.kernel.ref, pages, n)
        unpinUserPages(rig.kernel.ref, pages, n)
        #expect(f.refCount == before.ref && f.pincount == before.pincount)
        rig.check(Self.ledger(rig, []))
    }

    @Test("unpin_user_pages (gup_folio_next, gup_put_folio) over an array mixing two PMD/PUD folios: runs broken by nil, by an out-of-order page and by the pointer-contiguous step from one folio's last page to the next folio's head put exactly each folio's pages, NR_FOLL_PIN_RELEASED +pages",
          arguments: [pmdOrder, pudOrder])
    func unpinMixedRuns(order: Int) throws {
        let (rig, a, size) = try Self.faulted(order)
        let nr = Int(size >> 12)
        let f = rig.folio(pgoff: 0), g = rig.folio(pgoff: UInt64(nr))
        let bf = VMAKit.counters(rig, f), bg = VMAKit.counters(rig, g)
        // Pin the last 8 pages of f and the first 8 of g: f+nr-8 ..< g+8.
        let pinned = VMAKit.pages(16)
        defer { pinned.deallocate() }
        #expect(pinUserPages(rig.mm.ref, a + UInt64(nr - 8) * 4096, 16, [.write], pinned) == 16)
        #expect(f.pincount == bf.pincount + 8 && g.pincount == bg.pincount + 8)
        // f's last page and g's head are consecutive records of two folios.
        #expect(pinned[8] == pinned[7]! + 1)
        // First call: f-8, f-7, nil, f-6, f-4, f-5 (out of order), f-1, g+0,
        // g+1 (contiguous across the boundary), g+3, g+2: 6 of f, 4 of g.
        let order1: [Int?] = [0, 1, nil, 2, 4, 3, 7, 8, 9, 11, 10]
        // Second call: g+4, f-3, f-2 (f between runs of g), g+5, g+6, g+7:
        // 2 of f, 4 of g. 10 + 6 = 16 pins, each once.
        let order2: [Int?] = [12, 5, 6, 13, nil, 14, 15]
        for (ord, inF, inG) in [(order1, 6, 4), (order2, 2, 4)] {
            let arr = VMAKit.pages(ord.count)
            defer { arr.deallocate() }
            for (i, o) in ord.enumerated() { arr[i] = o.map { pinned[$0]! } }
            let rf = f.refCount, pf = f.pincount, rg = g.refCount, pg = g.pincount
            let rel = rig.kernel.stat(DAX_NR_FOLL_PIN_RELEASED)
            unpinUserPages(rig.kernel.ref, arr, ord.count)
            #expect(f.refCount == rf - Int32(inF) && f.pincount == pf - Int32(inF))
            #expect(g.refCount == rg - Int32(inG) && g.pincount == pg - Int32(inG))
            #expect(rig.kernel.stat(DAX_NR_FOLL_PIN_RELEASED) == rel + Int64(inF + inG))
        }
        #expect(f.refCount == bf.ref && f.pincount == bf.pincount && !f.maybeDmaPinned)
        #expect(g.refCount == bg.ref && g.pincount == bg.pincount && !g.maybeDmaPinned)
        rig.check(Self.ledger(rig, []))
    }

    @Test("the slow path faults an unfaulted PMD range in, then steps per leaf: 1024 pages in one call, one pin per page, pages in order")
    func faultsThenSteps() throws {
        let (rig, a) = try vmaFixture(order: pmdOrder, bytes: 4 << 20, length: 4 << 20)
        let f = rig.folio(pgoff: 0), g = rig.folio(pgoff: 512)
        let acq = rig.kernel.stat(DAX_NR_FOLL_PIN_ACQUIRED)
        let pages = VMAKit.pages(1024)
        defer { pages.deallocate() }
        #expect(pinUserPages(rig.mm.ref, a, 1024, [.write], pages) == 1024)
        Self.expectConsecutive(rig, pages, from: 0, 1024)
        #expect(rig.mm.rssFilePages == 1024 && f.entireMapcount == 1 && g.entireMapcount == 1)
        #expect(f.pincount == 512 && g.pincount == 512)
        #expect(f.refCount == 1 + 1 + 512 && g.refCount == 1 + 1 + 512)
        #expect(rig.kernel.stat(DAX_NR_FOLL_PIN_ACQUIRED) == acq + 1024)
        unpinUserPages(rig.kernel.ref, pages, 1024)
        #expect(f.refCount == 2 && g.refCount == 2 && !f.maybeDmaPinned && !g.maybeDmaPinned)
        rig.check(Self.ledger(rig, []))
    }

    @Test("FOLL_LONGTERM | FOLL_WRITE on PMD/PUD device-dax goes through the slow path (pin_user_pages and pin_user_pages_fast) and pins per folio",
          arguments: [pmdOrder, pudOrder], [false, true])
    func longtermDevdaxSlowPath(order: Int, fast: Bool) throws {
        let (rig, a, size) = try Self.faulted(order)
        let nr = Int(size >> 12)
        let f = rig.folio(pgoff: 0), g = rig.folio(pgoff: UInt64(nr))
        let bf = VMAKit.counters(rig, f), bg = VMAKit.counters(rig, g)
        let n = nr + 7
        let pages = VMAKit.pages(n)
        defer { pages.deallocate() }
        let start = a + 5 * 4096
        let got = fast ? pinUserPagesFast(rig.mm.ref, start, n, [.write, .longterm], pages)
                       : pinUserPages(rig.mm.ref, start, n, [.write, .longterm], pages)
        #expect(got == n)
        Self.expectConsecutive(rig, pages, from: 5, n)
        #expect(f.pincount == bf.pincount + Int32(nr - 5) && g.pincount == bg.pincount + 12)
        #expect(f.refCount == bf.ref + Int32(nr - 5) && g.refCount == bg.ref + 12)
        // GUP-fast grabs the first leaf's pages (try_grab_folio_fast) before
        // gup_fast_folio_allowed refuses the file folio and puts them back.
        let fastTry = fast ? Int64(nr - 5) : 0
        #expect(rig.kernel.stat(DAX_NR_FOLL_PIN_ACQUIRED) == bf.pinAcquired + Int64(n) + fastTry)
        #expect(rig.kernel.stat(DAX_NR_FOLL_PIN_RELEASED) == bf.pinReleased + fastTry)
        unpinUserPages(rig.kernel.ref, pages, n)
        #expect(f.refCount == bf.ref && g.refCount == bg.ref && !f.maybeDmaPinned && !g.maybeDmaPinned)
        rig.check(Self.ledger(rig, []))
    }

    @Test("check_vma_flags: FOLL_LONGTERM on a PMD-mapped fs-dax range is still -EOPNOTSUPP with nothing taken; a short-term pin of it steps per leaf")
    func longtermFsdaxPmdRefused() throws {
        let (rig, a, _) = try Self.faulted(pmdOrder, type: .fsDax)
        let f = rig.folio(pgoff: 0), g = rig.folio(pgoff: 512)
        let bf = VMAKit.counters(rig, f), bg = VMAKit.counters(rig, g)
        let pages = VMAKit.pages(519)
        defer { pages.deallocate() }
        #expect(pinUserPages(rig.mm.ref, a + 5 * 4096, 519, [.longterm], pages) == Int(-EOPNOTSUPP))
        #expect(pinUserPagesFast(rig.mm.ref, a + 5 * 4096, 519, [.longterm], pages) == Int(-EOPNOTSUPP))
        #expect(VMAKit.counters(rig, f) == bf && VMAKit.counters(rig, g) == bg)
        #expect(pages[0] == nil)
        #expect(pinUserPages(rig.mm.ref, a + 5 * 4096, 519, [.write], pages) == 519)
        Self.expectConsecutive(rig, pages, from: 5, 519)
        #expect(f.pincount == 507 && g.pincount == 12)
        #expect(f.refCount == bf.ref + 507 && g.refCount == bg.ref + 12)
        unpinUserPages(rig.kernel.ref, pages, 519)
        #expect(f.refCount == bf.ref && g.refCount == bg.ref)
        rig.check(Self.ledger(rig, []))
    }
}
