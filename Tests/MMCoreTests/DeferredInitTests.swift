// Deferred struct-page initialisation (mm/mm_init.c: memmap_init_zone_device,
// memmap_init_compound, deferred_grow_zone): memremap_pages makes a range's
// vmemmap accessible and initialises nothing; the first pfn_to_page in a
// section initialises that section's deferred pages, widened to whole folios;
// memunmap_pages gives the memory back without touching records never
// initialised. Everything seen through pfn_to_page is what the eager init
// produced.

import Testing
@testable import MMCore
import CDaxMM
import DAXBase
import MMTestSupport

private let TiB: UInt64 = 1 << 40
private let sectionBytes = UInt64(1) << UInt64(sectionShift)
private let pps = UInt64(pagesPerSection)

/// The fields of a struct page as pfn_to_page shows them, with the pointers
/// made relative to their own kernel (so two kernels' pages compare).
private struct PageView: Equatable {
    var flags: UInt64
    var refcount: Int32
    var mapcount: Int32
    var headOffset: Int          // page - compound head, 0 for a head
    var pgmapType: Int32
    var order: Int
    var largeMapcount: Int32
    var entireMapcount: Int32
    var pincount: Int32
    var nrPagesMapped: Int32

    init(_ p: Page) {
        let r = p.raw.pointee
        flags = r.flags
        refcount = r.refcount
        mapcount = r.mapcount
        headOffset = p.folioPageIndex
        pgmapType = p.pgmap?.pointee.type ?? -1
        order = p.folio.order
        largeMapcount = r.large_mapcount
        entireMapcount = r.entire_mapcount
        pincount = r.pincount
        nrPagesMapped = r.nr_pages_mapped
    }
}

// Serialized: the tests measure this process's resident memory around a
// bind, which the other cases of the suite would disturb.
@Suite("deferred struct-page init (memmap_init_zone_device on first pfn_to_page)", .serialized)
struct DeferredInitTests {

    /// memremap_pages / memunmap_pages of a 1 TiB GENERIC range: no struct page
    /// initialised and nothing resident before the first lookup; a lookup
    /// initialises the sections of the looked-up folio only; the folio walks
    /// (invariants, holdersReport) skip deferred sections; memunmap_pages
    /// leaves no section and no resident vmemmap page.
    @Test("memremap_pages of 1 TiB initialises no struct page and adds < 32 MiB resident; pfn_to_page initialises one folio's sections; memunmap_pages returns them",
          arguments: [9, 18])
    func terabyte(shift: Int) throws {
        let k = try Kernel()
        let r = phys(0x40_0000_0000, TiB)
        let pg = DevPagemap(kernel: k, type: .generic, ranges: [r], vmemmapShift: shift)
        let initialised0 = k.initialisedSections
        let rss0 = try #require(residentBytes())
        try pg.bindPages()
        let rss1 = try #require(residentBytes())
        #expect(rss1 - rss0 < 32 << 20, "memremap_pages of 1 TiB made \((rss1 - rss0) >> 20) MiB resident")
        #expect(k.initialisedSections == initialised0)
        #expect(k.deferredSections == 8192)
        #expect(k.residentVmemmapPages(startPfn: r.startPfn, endPfn: r.endPfn) == 0)
        #expect(pg.refCount == 1 + Int64(pg.nrFolios), "the creation references do not wait for the struct pages")

        // The folio walks skip deferred sections instead of initialising them.
        #expect(invariants(mms: [], pgmaps: [pg]).isEmpty)
        #expect(k.initialisedSections == initialised0 && k.deferredSections == 8192)

        // pfn_to_page in three sections: each initialises its folio's sections.
        let folioSections = max(1, (1 << shift) / pagesPerSection)
        for section in [UInt64(0), 100, 8191] {
            let pfn = r.startPfn + section * pps + 5
            #expect(k.sectionState(pfn: pfn) == .deferred)
            let page = pfnToPage(k.ref, pfn)
            #expect(k.sectionState(pfn: pfn) == .present)
            let folio = page.folio
            #expect(folio.pgmap == pg.ref && folio.order == shift && folio.refCount == 1 && folio.mapcount == 0)
            #expect(pageToPfn(k.ref, folio.head) == pfn & ~UInt64((1 << shift) - 1))
        }
        #expect(k.initialisedSections == initialised0 + 3 * folioSections)
        #expect(k.deferredSections == 8192 - 3 * folioSections)
        // Section 1 was not looked up (with 1 GiB folios it is part of folio 0).
        #expect(k.sectionState(pfn: r.startPfn + pps) == (shift == 18 ? .present : .deferred))
        #expect(k.sectionState(pfn: r.startPfn + 50 * pps) == .deferred)
        #expect(invariants(mms: [], pgmaps: [pg]).isEmpty)
        #expect(k.drainReports().isEmpty)

        try pg.memunmapPages(timeoutNanos: 1_000_000_000)
        #expect(k.initialisedSections == initialised0)
        #expect(k.deferredSections == 0)
        // The vmemmap pages the lookups wrote are gone (MADV_DONTNEED): this
        // is the resident memory memunmap_pages returns, counted exactly.
        #expect(k.residentVmemmapPages(startPfn: r.startPfn, endPfn: r.endPfn) == 0,
                "memunmap_pages leaves no initialised record behind")
        for section in [UInt64(0), 100, 8191] { #expect(k.sectionState(pfn: r.startPfn + section * pps) == .absent) }
    }

    /// memmap_init_compound: a 1 GiB folio at a start that is not 1 GiB
    /// aligned spans 9 sections; the folio next to it shares the last one.
    /// One lookup initialises both folios whole (17 sections), and every
    /// page reads as the eager memmap_init_zone_device left it.
    @Test("pfn_to_page initialises whole folios across sections; every page equals the eager init's")
    func wholeFolios() throws {
        let start = base + 64 * MiB
        let lazy = try Kernel(physBits: testPhysBits)
        let eager = try Kernel(physBits: testPhysBits, deferStructPageInit: false)
        let r = phys(start, 2 * GiB)
        let pl = DevPagemap(kernel: lazy, type: .generic, ranges: [r], vmemmapShift: pudOrder)
        let pe = DevPagemap(kernel: eager, type: .generic, ranges: [r], vmemmapShift: pudOrder)
        let l0 = lazy.initialisedSections, e0 = eager.initialisedSections
        try pl.bindPages()
        try pe.bindPages()
        #expect(eager.initialisedSections == e0 + 17 && eager.deferredSections == 0)
        #expect(lazy.initialisedSections == l0 && lazy.deferredSections == 17)

        // The section holding the end of folio 0 and the start of folio 1.
        let middle = r.startPfn + UInt64(hpagePudNr) + 7
        #expect(pfnToPage(lazy.ref, middle).folio.head == pfnToPage(lazy.ref, r.startPfn + UInt64(hpagePudNr)).folio.head)
        #expect(lazy.initialisedSections == l0 + 17 && lazy.deferredSections == 0)
        var pfn = r.startPfn
        var differing = 0
        while pfn < r.endPfn {
            if PageView(pfnToPage(lazy.ref, pfn)) != PageView(pfnToPage(eager.ref, pfn)) { differing += 1 }
            pfn += 1
        }
        #expect(differing == 0)
        #expect(invariants(mms: [], pgmaps: [pl]).isEmpty)
    }

    /// Sub-section pgmaps sharing one section (pagemap_range over 2 MiB
    /// ranges): both deferred, one lookup initialises both ranges' parts; a
    /// range arriving in a section already initialised is initialised at
    /// once (memmap_init_zone_device in memremap_pages).
    @Test("a section shared by two sub-section pgmaps: one lookup initialises both; a third map in the initialised section is initialised at once")
    func sharedSection() throws {
        let k = try makeKernel()
        let a = makePgmap(k, .generic, ranges: [phys(base, 2 * MiB)], shift: pmdOrder)
        let b = makePgmap(k, .fsDax, ranges: [phys(base + 2 * MiB, 2 * MiB)])
        let s0 = k.initialisedSections
        try a.bindPages()
        try b.bindPages()
        #expect(k.initialisedSections == s0 && k.deferredSections == 1)
        let bRecord = k.ref.pointee.vmemmap + Int(pfnOf(base + 2 * MiB) + 3)
        #expect(bRecord.pointee.pgmap == 0, "B's records wait")

        let fa = pfnToPage(k.ref, pfnOf(base)).folio
        #expect(fa.pgmap == a.ref && fa.order == pmdOrder && fa.refCount == 1)
        #expect(k.initialisedSections == s0 + 1 && k.deferredSections == 0)
        // B's part was initialised with A's (read without pfn_to_page).
        #expect(bRecord.pointee.pgmap == UInt64(UInt(bitPattern: b.ref)))
        #expect(bRecord.pointee.refcount == 0 && bRecord.pointee.mapcount == -1)
        #expect(Page(bRecord).isZoneDevice && !Page(bRecord).isTail)

        let c = makePgmap(k, .generic, ranges: [phys(base + 4 * MiB, 2 * MiB)])
        try c.bindPages()
        let cRecord = k.ref.pointee.vmemmap + Int(pfnOf(base + 4 * MiB))
        #expect(cRecord.pointee.pgmap == UInt64(UInt(bitPattern: c.ref)) && cRecord.pointee.refcount == 1)
        #expect(k.initialisedSections == s0 + 1 && k.deferredSections == 0)
        #expect(invariants(mms: [], pgmaps: [a, b, c]).isEmpty)

        // memunmap_pages of C clears C's records; the section stays for A and B.
        try c.memunmapPages(timeoutNanos: 1_000_000_000)
        #expect(cRecord.pointee.pgmap == 0 && cRecord.pointee.refcount == 0)
        #expect(k.sectionState(pfn: pfnOf(base)) == .present)
        #expect(k.drainReports().isEmpty)
    }

    /// memunmap_pages of a pgmap whose shared section is still deferred: its
    /// records were never written and stay so; the other pgmap's first lookup
    /// initialises only its own part.
    @Test("memunmap_pages of a never-initialised pgmap in a shared deferred section writes no record")
    func unmapNeverInitialised() throws {
        let k = try makeKernel()
        let a = makePgmap(k, .generic, ranges: [phys(base, 2 * MiB)])
        let b = makePgmap(k, .generic, ranges: [phys(base + 2 * MiB, 2 * MiB)])
        try a.bindPages()
        try b.bindPages()
        try b.memunmapPages(timeoutNanos: 1_000_000_000)
        #expect(k.sectionState(pfn: pfnOf(base)) == .deferred)
        #expect(k.residentVmemmapPages(startPfn: pfnOf(base), endPfn: pfnOf(base) + pps) == 0)
        #expect(pfnToPage(k.ref, pfnOf(base)).folio.pgmap == a.ref)
        // A's 2 MiB are 512 records: 8 vmemmap pages written, none of B's.
        // (Checked before reading B's record: a read maps the zero page,
        // which mincore counts.)
        #expect(k.residentVmemmapPages(startPfn: pfnOf(base), endPfn: pfnOf(base) + pps) == 8)
        let bRecord = k.ref.pointee.vmemmap + Int(pfnOf(base + 2 * MiB))
        #expect(bRecord.pointee.pgmap == 0 && bRecord.pointee.flags == 0, "B's dropped range is not initialised")
        try a.memunmapPages(timeoutNanos: 1_000_000_000)
        #expect(k.sectionState(pfn: pfnOf(base)) == .absent)
        #expect(k.residentVmemmapPages(startPfn: pfnOf(base), endPfn: pfnOf(base) + pps) == 0)
    }

    /// memunmap_pages' holders report walks the folios of a PRIVATE map
    /// (allocated ones hold the pgmap): deferred sections hold none and are
    /// skipped, so a busy report initialises nothing.
    @Test("memunmap_pages' busy report names the allocated folio and initialises no deferred section")
    func holdersReportSkipsDeferred() throws {
        let k = try makeKernel()
        let pg = try mapped(k, .devicePrivate, size: 1 * GiB)
        let page = pfnToPage(k.ref, pfnOf(base + 512 * MiB))
        #expect(zoneDevicePageInit(k.ref, page))
        let s0 = k.initialisedSections, d0 = k.deferredSections
        #expect(d0 == 6, "8 sections: the first (memremapPages' returned page) and the allocated page's are initialised")
        let e = expectMMError(.busy) { try pg.memunmapPages(timeoutNanos: 1_000_000) }
        #expect(e.map(message)?.contains("pfn \(hex(pfnOf(base + 512 * MiB))) refcount 1") == true)
        #expect(k.initialisedSections == s0 && k.deferredSections == d0)
        folioPut(k.ref, page.folio)
        try pg.memunmapPages(timeoutNanos: 1_000_000_000)
        #expect(k.deferredSections == 0)
    }

    /// Kernel(deferStructPageInit: false): memremap_pages initialises every
    /// struct page (the eager memmap_init_zone_device), populating the run of
    /// sections at once.
    @Test("with deferral off, memremap_pages initialises every section of the range")
    func eagerSwitch() throws {
        let k = try Kernel(physBits: testPhysBits, deferStructPageInit: false)
        let s0 = k.initialisedSections
        let pg = makePgmap(k, .fsDax, ranges: [phys(base, 1 * GiB)])
        try pg.bindPages()
        #expect(k.initialisedSections == s0 + 8 && k.deferredSections == 0)
        #expect(k.residentVmemmapPages(startPfn: pfnOf(base), endPfn: pfnOf(base + GiB)) == Int(GiB >> 12) * 64 / 4096)
        try pg.memunmapPages(timeoutNanos: 1_000_000_000)
        #expect(k.initialisedSections == s0)
        #expect(k.residentVmemmapPages(startPfn: pfnOf(base), endPfn: pfnOf(base + GiB)) == 0)
    }
}
