// Edges of the pgmap life cycle: range boundaries against System RAM,
// self-overlapping ranges, sections shared between pgmaps, concurrent
// memremap of one pgmap, and the free paths' WARNs (mm/memremap.c:
// memremap_pages, memunmap_pages, free_zone_device_folio; invariant 2 in
// MMCore/Invariants.swift).

import Testing
@testable import MMCore
import CDaxMM

@Suite("MMCore pgmap life-cycle edges")
struct MemremapEdgeTests {

    @Test("System RAM that only touches the range boundary does not conflict", arguments: ["before", "after"])
    func ramAdjacent(side: String) throws {
        let k = try makeKernel()
        if side == "before" { k.addSystemRAM(start: base - 4 * KiB, size: 4 * KiB) }
        else { k.addSystemRAM(start: base + 2 * MiB, size: 4 * KiB) }
        let pg = try mapped(k, .fsDax, size: 2 * MiB)
        #expect(pg.isLive)
    }

    @Test("System RAM on the first or the last byte of the range is -ENXIO", arguments: [UInt64(0), 2 * MiB - 1])
    func ramOnBoundary(offset: UInt64) throws {
        let k = try makeKernel()
        k.addSystemRAM(start: base + offset, size: 1)
        let pg = makePgmap(k, .fsDax, ranges: [phys(base, 2 * MiB)])
        expectMMError(.noDevice) { try pg.memremapPages() }
    }

    @Test("a zero-size range is -EINVAL")
    func zeroSize() throws {
        let k = try makeKernel()
        let pg = makePgmap(k, .generic, ranges: [phys(base, 0)])
        expectMMError(.invalid) { try pg.memremapPages() }
        #expect(!pg.isLive)
    }

    @Test("two ranges of one pgmap that overlap each other are -ENOMEM and range 0 is undone")
    func selfOverlap() throws {
        let k = try makeKernel()
        let pg = makePgmap(k, .fsDax, ranges: [phys(base, 4 * MiB), phys(base + 2 * MiB, 2 * MiB)])
        expectMMError(.noMemory) { try pg.memremapPages() }
        #expect(!pg.isLive)
        #expect(pg.refCount == 0)
        #expect(!k.pfnValid(pfnOf(base)))
        #expect(getDevPagemap(k, pfn: pfnOf(base)) == nil)
    }

    @Test("memunmap depopulates a section only this pgmap used, even when it shares another section with a live pgmap")
    func sectionGranularity() throws {
        let k = try makeKernel()
        let section = UInt64(1) << UInt64(sectionShift)      // 128 MiB
        let a = try mapped(k, .fsDax, start: base, size: 2 * MiB)
        // B straddles the boundary between A's section and the next one.
        let b = try mapped(k, .generic, start: base + section - 2 * MiB, size: 4 * MiB)
        #expect(k.pfnValid(pfnOf(base + section)))
        try b.memunmapPages(timeoutNanos: 1_000_000_000)
        #expect(k.pfnValid(pfnOf(base)), "A's section stays")
        #expect(a.firstPage().pgmap == a.ref)
        #expect(!k.pfnValid(pfnOf(base + section)), "the section only B used is removed (sparse_remove_section)")
        #expect(getDevPagemap(k, pfn: pfnOf(base + section)) == nil)
    }

    @Test("a range spanning several sections is valid throughout and fully removed by memunmap")
    func multiSection() throws {
        let k = try makeKernel()
        let size = 3 * (UInt64(1) << UInt64(sectionShift)) + 2 * MiB
        let pg = try mapped(k, .fsDax, size: size, shift: pmdOrder)
        let last = pfnOf(base + size) - 1
        #expect(k.pfnValid(last))
        #expect(pfnToPage(k.ref, last).folio == pfnToPage(k.ref, pfnOf(base + size - 2 * MiB)).folio)
        #expect(pfnToPage(k.ref, last).isTail)
        try pg.memunmapPages(timeoutNanos: 1_000_000_000)
        for a in stride(from: base, to: base + size, by: Int(MiB)) { #expect(!k.pfnValid(pfnOf(a))) }
    }

    @Test("memremap of one pgmap from two threads maps it exactly once; the loser gets -EINVAL")
    func concurrentMemremap() throws {
        for round in 1...200 {
            let k = try makeKernel()
            let pg = makePgmap(k, .fsDax, ranges: [phys(base, 2 * MiB)])
            let kinds = Shared<[String]>([])
            let ready = Shared(0)
            let threads = (0..<2).map { _ in
                TestThread {
                    ready.withLock { $0 += 1 }
                    while ready.value < 2 {}
                    do {
                        try pg.memremapPages()
                        kinds.withLock { $0.append("ok") }
                    } catch let e as MMError {
                        kinds.withLock { $0.append(kind(e).rawValue) }
                    } catch {}
                }
            }
            threads.forEach { $0.join() }
            let outcome = kinds.value.sorted()
            let refs = pg.refCount
            let found = getDevPagemap(k, pfn: pfnOf(base))
            putDevPagemap(found)
            #expect(outcome == ["invalid", "ok"], "round \(round): \(outcome)")
            #expect(refs == 1 + 512, "round \(round): creation refs \(refs)")
            #expect(found == pg.ref, "round \(round): pgmap_array lost the live pgmap")
            if outcome != ["invalid", "ok"] || refs != 513 || found != pg.ref { break }
        }
    }

    // MARK: free paths (free_zone_device_folio; invariant 2)

    @Test("free runs exactly on the n -> 0 transition of folio_put_refs (invariant 2)")
    func freeOnlyAtZero() throws {
        let k = try makeKernel()
        let log = FreeLog()
        let pg = try mapped(k, .devicePrivate, size: 2 * MiB, log: log)
        let f = pg.firstPage().folio
        #expect(zoneDevicePageInit(k.ref, f.head))
        f.refAdd(2)                       // 3
        folioPutRefs(k.ref, f, 2)         // 1
        #expect(log.calls == 0 && f.refCount == 1)
        folioPutRefs(k.ref, f, 1)         // 0
        #expect(log.calls == 1 && f.refCount == 0)
        #expect(zoneDevicePageInit(k.ref, f.head))
        f.refAdd(2)
        folioPutRefs(k.ref, f, 3)         // 3 -> 0 in one put
        #expect(log.calls == 2)
        #expect(pg.refCount == 1)
        #expect(k.drainReports().isEmpty)
    }

    @Test("free_zone_device_folio of a folio without a pgmap WARNs and does nothing else (mm/memremap.c)")
    func freeWithoutPgmap() throws {
        let k = try makeKernel()
        let pg = try mapped(k, .generic, size: 2 * MiB)
        let f = pg.firstPage().folio
        f.raw.pointee.pgmap = 0
        f.mapping = 0x7000
        folioPut(k.ref, f)
        #expect(f.refCount == 0, "no GENERIC reset without a pgmap")
        #expect(f.mapping == 0x7000)
        let reports = k.drainReports()
        #expect(reports.count == 1)
        #expect(reports.first?.rule.contains("!pgmap") == true)
        #expect(reports.first?.function == "free_zone_device_folio")
    }

    @Test("the last put of a folio that is not ZONE_DEVICE is reported, not freed as device memory")
    func putNotZoneDevice() throws {
        let k = try makeKernel()
        let pg = try mapped(k, .generic, size: 2 * MiB)
        let f = pg.firstPage().folio
        f.head.clear(DAX_PG_zone_device)
        folioPut(k.ref, f)
        #expect(f.refCount == 0)
        let reports = k.drainReports()
        #expect(reports.count == 1)
        #expect(reports.first?.rule.contains("ZONE_DEVICE") == true)
    }
}
