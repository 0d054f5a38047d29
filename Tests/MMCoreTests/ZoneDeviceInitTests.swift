// mm/mm_init.c: memmap_init_zone_device / __init_zone_device_page, the
// compound layout (memmap_init_compound), and the creation references of
// mm/memremap.c: pagemap_range.

import Testing
@testable import MMCore
import CDaxMM
import DAXBase

@Suite("MMCore ZONE_DEVICE page init (mm/mm_init.c)")
struct ZoneDeviceInitTests {

    /// Counts the pages of `pg` that fail `check`, and reports the first.
    func countBad(_ k: Kernel, _ pg: DevPagemap, _ what: String, _ check: (Page) -> Bool,
                  sourceLocation: SourceLocation = #_sourceLocation) {
        var bad = 0
        var firstBad: UInt64?
        for r in pg.ranges {
            for pfn in r.startPfn..<r.endPfn {
                let p = pfnToPage(k.ref, pfn)
                if !check(p) {
                    bad += 1
                    if firstBad == nil { firstBad = pfn }
                }
            }
        }
        #expect(bad == 0, "\(bad) page(s) violate \(what); first at pfn \(firstBad.map(hex) ?? "-")",
                sourceLocation: sourceLocation)
    }

    @Test("every page starts at refcount 1 for GENERIC and 0 for the zero-based types (__init_zone_device_page)", arguments: allTypes)
    func initialRefcount(type: MemoryType) throws {
        let k = try makeKernel()
        let pg = makePgmap(k, type, ranges: [phys(base, 2 * MiB), phys(base + 256 * MiB, 2 * MiB)])
        try pg.memremapPages()
        let want: Int32 = type == .generic ? 1 : 0
        countBad(k, pg, "refcount == \(want)") { $0.refcountRaw == want }
        #expect(type.idleRefcount == want)
    }

    @Test("every page is unmapped (_mapcount -1), PG_reserved, ZONE_DEVICE and points at its pgmap (__init_zone_device_page)", arguments: allTypes)
    func initialFlagsAndPgmap(type: MemoryType) throws {
        let k = try makeKernel()
        let pg = try mapped(k, type, size: 2 * MiB)
        countBad(k, pg, "_mapcount == -1") { $0.raw.pointee.mapcount == -1 && $0.pageMapcount == 0 }
        countBad(k, pg, "PG_reserved") { $0.isReserved }
        countBad(k, pg, "zone_device") { $0.isZoneDevice }
        countBad(k, pg, "pgmap pointer") { $0.pgmap == pg.ref && $0.folio.pgmap == pg.ref }
        countBad(k, pg, "order-0: no PG_head, not a tail") { !$0.isHead && !$0.isTail && $0.folio.nrPages == 1 }
        countBad(k, pg, "no mapping, index 0") { $0.folio.mapping == 0 && $0.folio.index == 0 }
        countBad(k, pg, "not locked") { !$0.test(DAX_PG_locked) }
        let f = pg.firstPage().folio
        #expect(f.mapcount == 0 && f.entireMapcount == 0 && f.pincount == 0 && !f.isMapped)
        #expect(f.isFsdax == (type == .fsDax))
    }

    @Test("init overwrites stale records from an earlier pgmap on the same range")
    func reinitAfterUnmap() throws {
        let k = try makeKernel()
        do {
            let old = try mapped(k, .generic, size: 2 * MiB, shift: pmdOrder)
            old.firstPage().folio.mapping = 0x1234000
            try old.memunmapPages(timeoutNanos: 1_000_000_000)
        }
        let pg = try mapped(k, .fsDax, size: 2 * MiB)
        let p = pg.firstPage()
        #expect(!p.isHead && p.folio.nrPages == 1)
        #expect(p.folio.mapping == 0)
        countBad(k, pg, "refcount 0, not a tail") { $0.refcountRaw == 0 && !$0.isTail }
    }

    // MARK: compound

    func checkCompound(_ k: Kernel, _ pg: DevPagemap, shift: Int, headRef: Int32) {
        let nr = 1 << shift
        var folios = 0
        var badTails = 0
        var badHeads = 0
        for r in pg.ranges {
            var pfn = r.startPfn
            while pfn < r.endPfn {
                let head = pfnToPage(k.ref, pfn)
                let f = head.folio
                folios += 1
                let p1 = head.raw + 1
                let headOK = head.isHead && !head.isTail && f == Folio(head.raw) && f.isLarge
                    && f.order == shift && f.nrPages == nr && head.refcountRaw == headRef
                    && f.refCount == headRef && head.isReserved && head.isZoneDevice && f.pgmap == pg.ref
                    && p1.pointee.entire_mapcount == -1 && p1.pointee.large_mapcount == -1
                    && p1.pointee.pincount == 0 && p1.pointee.nr_pages_mapped == 0
                    && f.entireMapcount == 0 && f.mapcount == 0 && f.pincount == 0 && f.nrPagesMapped == 0
                if !headOK { badHeads += 1 }
                for i in 1..<nr {
                    let t = head.advanced(by: i)
                    let ok = t.isTail && !t.isHead && t.compoundHead == head && t.folio == f
                        && t.refcountRaw == 0 && t.pageMapcount == 0 && t.isReserved && t.isZoneDevice
                        && t.pgmap == pg.ref && t.folioPageIndex == i
                    if !ok { badTails += 1 }
                }
                pfn += UInt64(nr)
            }
        }
        #expect(folios == pg.nrFolios)
        #expect(badHeads == 0, "\(badHeads) head(s) with the wrong compound state")
        #expect(badTails == 0, "\(badTails) tail(s) with the wrong compound state")
    }

    @Test("vmemmap_shift 9 builds 2 MiB folios: PG_head, order, tails at refcount 0 pointing at the head (memmap_init_compound)",
          arguments: allTypes)
    func pmdFolios(type: MemoryType) throws {
        let k = try makeKernel()
        let pg = try mapped(k, type, size: 6 * MiB, shift: pmdOrder)
        #expect(pg.nrFolios == 3)
        checkCompound(k, pg, shift: pmdOrder, headRef: type.idleRefcount)
    }

    @Test("vmemmap_shift 18 builds 1 GiB folios (memmap_init_compound)", arguments: [MemoryType.fsDax, .generic])
    func pudFolios(type: MemoryType) throws {
        let k = try makeKernel()
        let pg = try mapped(k, type, size: 1 * GiB, shift: pudOrder)
        #expect(pg.nrFolios == 1)
        checkCompound(k, pg, shift: pudOrder, headRef: type.idleRefcount)
        let f = pg.firstPage().folio
        #expect(f.nrPages == hpagePudNr)
        // The last tail still names the head.
        #expect(f.page(hpagePudNr - 1).compoundHead == f.head)
        // The page after the folio is outside the pgmap.
        #expect(!k.pfnValid(pfnOf(base + 1 * GiB)) || pfnToPage(k.ref, pfnOf(base + 1 * GiB)).pgmap != pg.ref)
    }

    @Test("the order lives in page[1] and does not leak into the head's flags")
    func orderInPage1() throws {
        let k = try makeKernel()
        let pg = try mapped(k, .fsDax, size: 2 * MiB, shift: pmdOrder)
        let head = pg.firstPage()
        #expect(head.flags & DAX_PAGE_ORDER_MASK == 1 << UInt64(DAX_PG_head.rawValue))
        #expect(head.advanced(by: 1).flags & DAX_PAGE_ORDER_MASK == UInt64(pmdOrder))
        #expect(!head.test(DAX_PG_locked) && !head.test(DAX_PG_dirty))
    }

    // MARK: creation references

    @Test("creation refs: 1 + one per folio for GENERIC/FS_DAX/P2PDMA, 1 for PRIVATE/COHERENT (pagemap_range)",
          arguments: allTypes, [0, pmdOrder])
    func creationRefs(type: MemoryType, shift: Int) throws {
        let k = try makeKernel()
        let pg = makePgmap(k, type, ranges: [phys(base, 4 * MiB), phys(base + 512 * MiB, 2 * MiB)], shift: shift)
        #expect(pg.refCount == 0)
        try pg.memremapPages()
        let folios = (6 * Int(MiB) / pageSize) >> shift
        #expect(pg.nrFolios == folios)
        switch type {
        case .devicePrivate, .deviceCoherent: #expect(pg.refCount == 1)
        default: #expect(pg.refCount == Int64(1 + folios))
        }
    }

    @Test("memunmap drops every creation ref (memunmap_pages)", arguments: allTypes)
    func creationRefsDropped(type: MemoryType) throws {
        let k = try makeKernel()
        let pg = try mapped(k, type, size: 4 * MiB, shift: pmdOrder)
        try pg.memunmapPages(timeoutNanos: 1_000_000_000)
        #expect(pg.refCount == 0)
        #expect(!pg.isLive)
    }
}
