// mm/memremap.c: memremap_pages: argument checks, per-type requirements,
// range conflicts and the undo of earlier ranges when a later one fails.

import Testing
@testable import MMCore
import CDaxMM

@Suite("MMCore memremap_pages validation (mm/memremap.c)")
struct MemremapValidationTests {

    // MARK: nr_range and per-type requirements

    @Test("nr_range == 0 is -EINVAL (memremap_pages)", arguments: allTypes)
    func noRanges(type: MemoryType) throws {
        let k = try makeKernel()
        let pg = makePgmap(k, type, ranges: [])
        let e = expectMMError(.invalid) { try pg.memremapPages() }
        #expect(e.map(message)?.contains("nr_range") == true)
        #expect(pg.refCount == 0)
        #expect(!pg.isLive)
    }

    struct Missing: Sendable, CustomStringConvertible {
        var migrate: Bool, free: Bool, owner: Bool
        var description: String { "migrate_to_ram:\(migrate) page_free:\(free) owner:\(owner)" }
    }

    @Test("PRIVATE without migrate_to_ram, page_free or owner is -EINVAL (memremap_pages)", arguments: [
        Missing(migrate: false, free: true, owner: true),
        Missing(migrate: true, free: false, owner: true),
        Missing(migrate: true, free: true, owner: false),
        Missing(migrate: false, free: false, owner: false),
    ])
    func privateRequirements(m: Missing) throws {
        let k = try makeKernel()
        let log = FreeLog()
        let pg = DevPagemap(kernel: k, type: .devicePrivate, ranges: [phys(base, 2 * MiB)],
                            ops: recordingOps(pageFree: m.free, migrateToRam: m.migrate),
                            owner: m.owner ? log.owner : nil)
        expectMMError(.invalid) { try pg.memremapPages() }
        #expect(!pg.isLive)
        #expect(!k.pfnValid(pfnOf(base)), "a refused pgmap must not populate the vmemmap")
        #expect(getDevPagemap(k, pfn: pfnOf(base)) == nil)
    }

    @Test("PRIVATE with all three requirements maps")
    func privateComplete() throws {
        let k = try makeKernel()
        let pg = try mapped(k, .devicePrivate)
        #expect(pg.isLive)
        #expect(k.pfnValid(pfnOf(base)))
    }

    @Test("COHERENT without page_free or owner is -EINVAL (memremap_pages)", arguments: [(false, true), (true, false), (false, false)])
    func coherentRequirements(free: Bool, owner: Bool) throws {
        let k = try makeKernel()
        let log = FreeLog()
        let pg = DevPagemap(kernel: k, type: .deviceCoherent, ranges: [phys(base, 2 * MiB)],
                            ops: recordingOps(pageFree: free, migrateToRam: false), owner: owner ? log.owner : nil)
        expectMMError(.invalid) { try pg.memremapPages() }
        #expect(!pg.isLive)
        #expect(!k.pfnValid(pfnOf(base)))
    }

    @Test("COHERENT needs no migrate_to_ram")
    func coherentNoMigrate() throws {
        let k = try makeKernel()
        let log = FreeLog()
        let pg = DevPagemap(kernel: k, type: .deviceCoherent, ranges: [phys(base, 2 * MiB)],
                            ops: recordingOps(migrateToRam: false), owner: log.owner)
        try pg.memremapPages()
        #expect(pg.isLive)
    }

    @Test("GENERIC, FS_DAX and P2PDMA need no ops and no owner (memremap_pages)", arguments: [MemoryType.generic, .fsDax, .p2pdma])
    func noRequirements(type: MemoryType) throws {
        let k = try makeKernel()
        let pg = DevPagemap(kernel: k, type: type, ranges: [phys(base, 2 * MiB)])
        let first = try pg.memremapPages()
        #expect(pg.isLive)
        #expect(first == pg.firstPage())
        #expect(pageToPfn(k.ref, first) == pfnOf(base), "memremap_pages returns the start of ranges[0]")
    }

    @Test("vmemmap_shift above the PUD order (or negative) is -EINVAL", arguments: [pudOrder + 1, -1])
    func shiftTooLarge(shift: Int) throws {
        let k = try makeKernel()
        let pg = DevPagemap(kernel: k, type: .fsDax, ranges: [phys(base, 2 * GiB)], vmemmapShift: shift)
        expectMMError(.invalid) { try pg.memremapPages() }
        #expect(!pg.isLive)
    }

    @Test("a range that is not a whole number of folios is -EINVAL")
    func partialFolio() throws {
        let k = try makeKernel()
        let pg = DevPagemap(kernel: k, type: .generic, ranges: [phys(base, 2 * MiB)], vmemmapShift: pudOrder)
        expectMMError(.invalid) { try pg.memremapPages() }
        #expect(!k.pfnValid(pfnOf(base)))
    }

    // MARK: ranges

    @Test("a range overlapping a live pgmap is -ENOMEM and the first pgmap is untouched (pagemap_range)")
    func overlap() throws {
        let k = try makeKernel()
        let a = try mapped(k, .generic, start: base, size: 4 * MiB)
        let aRefs = a.refCount
        let pageInA = a.firstPage().advanced(by: 600)
        let folioBefore = pageInA.folio
        folioBefore.mapping = 0xabc000
        let b = makePgmap(k, .fsDax, ranges: [phys(base + 2 * MiB, 4 * MiB)])
        expectMMError(.noMemory) { try b.memremapPages() }
        #expect(!b.isLive)
        #expect(a.isLive)
        #expect(a.refCount == aRefs)
        // A's records are intact: still GENERIC pages at refcount 1 pointing at A.
        #expect(k.pfnValid(pfnOf(base + 2 * MiB)))
        #expect(pageInA.folio.refCount == 1)
        #expect(pageInA.pgmap == a.ref)
        #expect(pageInA.folio.mapping == 0xabc000)
        #expect(pageInA.isReserved && pageInA.isZoneDevice)
        // pgmap_array still names A for the overlapped pfns.
        let p = try #require(getDevPagemap(k, pfn: pfnOf(base + 3 * MiB)))
        #expect(p == a.ref)
        putDevPagemap(p)
    }

    @Test("an overlap at only the last page of the new range is -ENOMEM")
    func overlapAtEnd() throws {
        let k = try makeKernel()
        let a = try mapped(k, .fsDax, start: base + 2 * MiB, size: 2 * MiB)
        let b = makePgmap(k, .fsDax, ranges: [phys(base, 4 * MiB)])
        expectMMError(.noMemory) { try b.memremapPages() }
        #expect(a.isLive)
        #expect(a.firstPage().pgmap == a.ref)
    }

    @Test("adjacent, non-overlapping pgmaps in one section both map")
    func adjacent() throws {
        let k = try makeKernel()
        let a = try mapped(k, .fsDax, start: base, size: 2 * MiB)
        let b = try mapped(k, .generic, start: base + 2 * MiB, size: 2 * MiB)
        #expect(a.firstPage().pgmap == a.ref)
        #expect(b.firstPage().pgmap == b.ref)
        #expect(a.firstPage().folio.refCount == 0)
        #expect(b.firstPage().folio.refCount == 1)
    }

    @Test("a range intersecting System RAM is -ENXIO (pagemap_range)")
    func systemRAM() throws {
        let k = try makeKernel()
        k.addSystemRAM(start: base + 3 * MiB, size: 4 * KiB)
        let pg = makePgmap(k, .fsDax, ranges: [phys(base, 4 * MiB)])
        expectMMError(.noDevice) { try pg.memremapPages() }
        #expect(!pg.isLive)
        #expect(!k.pfnValid(pfnOf(base)))
        #expect(getDevPagemap(k, pfn: pfnOf(base)) == nil)
        // Right next to the RAM is fine.
        let ok = try mapped(k, .fsDax, start: base + 4 * MiB, size: 2 * MiB)
        #expect(ok.isLive)
    }

    @Test("a range not aligned to 2 MiB is -EINVAL", arguments: [
        (base + 4 * KiB, 2 * MiB),         // start misaligned
        (base, 2 * MiB + 4 * KiB),          // end misaligned
        (base + 1 * MiB, 2 * MiB),          // both
        (base, 1 * MiB),                    // smaller than a sub-section
    ])
    func misaligned(start: UInt64, size: UInt64) throws {
        let k = try makeKernel()
        let pg = makePgmap(k, .generic, ranges: [phys(start, size)])
        expectMMError(.invalid) { try pg.memremapPages() }
        #expect(!pg.isLive)
        #expect(!k.pfnValid(pfnOf(start)))
    }

    @Test("a range beyond physBits is -EINVAL (mhp_range_allowed)", arguments: [
        (UInt64(1) << 40, 2 * MiB),                   // entirely above
        ((UInt64(1) << 40) - 2 * MiB, 4 * MiB),       // straddles the end
    ])
    func beyondPhysBits(start: UInt64, size: UInt64) throws {
        let k = try makeKernel()
        let pg = makePgmap(k, .generic, ranges: [phys(start, size)])
        expectMMError(.invalid) { try pg.memremapPages() }
        #expect(!pg.isLive)
    }

    @Test("the last 2 MiB below physBits can be mapped")
    func lastSubsection() throws {
        let k = try makeKernel()
        let start = (UInt64(1) << 40) - 2 * MiB
        let pg = try mapped(k, .generic, start: start, size: 2 * MiB)
        #expect(k.pfnValid(pfnOf(start) + 511))
        #expect(!k.pfnValid(pfnOf(start) + 512))
    }

    @Test("a failure in range 1 undoes range 0 (memremap_pages)", arguments: ["systemRAM", "overlap", "misaligned"])
    func laterRangeFailureUndoesEarlier(cause: String) throws {
        let k = try makeKernel()
        let r0 = phys(base, 4 * MiB)
        var r1 = phys(base + 1 * GiB, 2 * MiB)
        var blocker: DevPagemap?
        switch cause {
        case "systemRAM": k.addSystemRAM(start: r1.start, size: 2 * MiB)
        case "overlap": blocker = try mapped(k, .generic, start: r1.start, size: 2 * MiB)
        default: r1 = phys(base + 1 * GiB + 4 * KiB, 2 * MiB)
        }
        let pg = makePgmap(k, .fsDax, ranges: [r0, r1])
        #expect(throws: MMError.self) { try pg.memremapPages() }
        #expect(!pg.isLive)
        #expect(pg.refCount == 0, "no creation references survive the undo")
        #expect(!k.pfnValid(r0.startPfn), "range 0's section is depopulated again")
        #expect(getDevPagemap(k, pfn: r0.startPfn) == nil, "range 0 is gone from pgmap_array")
        // A later memremap over range 0 succeeds and owns it.
        let again = try mapped(k, .generic, start: r0.start, size: r0.size)
        #expect(again.firstPage().pgmap == again.ref)
        #expect(again.firstPage().folio.refCount == 1)
        if let blocker { #expect(blocker.isLive && blocker.firstPage().pgmap == blocker.ref) }
    }

    @Test("mapping a pgmap twice is -EINVAL and changes nothing")
    func mapTwice() throws {
        let k = try makeKernel()
        let pg = try mapped(k, .generic, size: 4 * MiB)
        let refs = pg.refCount
        pg.firstPage().folio.setCount(7)
        expectMMError(.invalid) { try pg.memremapPages() }
        #expect(pg.isLive)
        #expect(pg.refCount == refs)
        #expect(pg.firstPage().folio.refCount == 7, "a second memremap must not re-initialise the pages")
        pg.firstPage().folio.setCount(1)
    }

    @Test("memremap after memunmap of the same pgmap is -EINVAL")
    func mapAfterUnmap() throws {
        let k = try makeKernel()
        let pg = try mapped(k, .fsDax)
        try pg.memunmapPages(timeoutNanos: 1_000_000_000)
        expectMMError(.invalid) { try pg.memremapPages() }
        #expect(!k.pfnValid(pfnOf(base)))
    }

    // MARK: check order

    @Test("a conflict with an existing pgmap is found before System RAM (pagemap_range order: -ENOMEM first)")
    func conflictBeforeSystemRAM() throws {
        let k = try makeKernel()
        let a = try mapped(k, .fsDax, start: base, size: 2 * MiB)
        // The iomem resource appears after A was mapped; B now hits both.
        k.addSystemRAM(start: base, size: 2 * MiB)
        let b = makePgmap(k, .generic, ranges: [phys(base, 2 * MiB)])
        expectMMError(.noMemory) { try b.memremapPages() }
        #expect(a.isLive)
    }

    @Test("System RAM is checked before mhp_range_allowed (pagemap_range order: -ENXIO before -EINVAL)")
    func systemRAMBeforeRangeAllowed() throws {
        let k = try makeKernel()
        let top = UInt64(1) << 40
        k.addSystemRAM(start: top - 2 * MiB, size: 2 * MiB)
        let pg = makePgmap(k, .generic, ranges: [phys(top - 2 * MiB, 4 * MiB)])
        expectMMError(.noDevice) { try pg.memremapPages() }
    }
}
