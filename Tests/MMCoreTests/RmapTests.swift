// mm/rmap.c file rmap at PTE, PMD and PUD level: mapcounts, _nr_pages_mapped,
// NR_FILE_MAPPED / NR_FILE_PMDMAPPED and the level/order sanity checks.
// The rmap functions never touch _refcount; their callers pair each add or
// remove with a get or put.

import Testing
@testable import MMCore
import CDaxMM

@Suite("MMCore file rmap (mm/rmap.c)")
struct RmapTests {

    /// Counter snapshot of one folio plus the node stats.
    struct Snap: Equatable, CustomStringConvertible {
        var ref: Int32, map: Int32, entire: Int32, pagesMapped: Int32, fileMapped: Int64, pmdMapped: Int64
        var description: String {
            "ref \(ref) map \(map) entire \(entire) nrPagesMapped \(pagesMapped) NR_FILE_MAPPED \(fileMapped) NR_FILE_PMDMAPPED \(pmdMapped)"
        }
    }
    func snap(_ k: Kernel, _ f: Folio) -> Snap {
        Snap(ref: f.refCount, map: f.mapcount, entire: f.entireMapcount, pagesMapped: f.nrPagesMapped,
             fileMapped: stat(k, fileMapped), pmdMapped: stat(k, filePmdMapped))
    }

    // MARK: small folios

    @Test("small folio: PTE map twice then unmap twice: mapcount 1,2,1,0; NR_FILE_MAPPED only on first map / last unmap (__folio_add_rmap, __folio_remove_rmap)",
          arguments: [MemoryType.fsDax, .generic])
    func smallFolioPte(type: MemoryType) throws {
        let k = try makeKernel()
        let pg = try mapped(k, type, size: 2 * MiB)
        let page = pg.firstPage().advanced(by: 5)
        let f = page.folio
        let ref0 = f.refCount
        #expect(f.mapcount == 0)
        #expect(stat(k, fileMapped) == 0)

        #expect(folioAddFileRmapPte(k.ref, f, page))
        #expect(f.mapcount == 1 && page.pageMapcount == 1)
        #expect(stat(k, fileMapped) == 1)
        #expect(folioAddFileRmapPte(k.ref, f, page))
        #expect(f.mapcount == 2)
        #expect(stat(k, fileMapped) == 1, "a second map of a mapped page is not newly mapped")
        #expect(folioRemoveRmapPte(k.ref, f, page))
        #expect(f.mapcount == 1)
        #expect(stat(k, fileMapped) == 1, "only the last unmap counts")
        #expect(folioRemoveRmapPte(k.ref, f, page))
        #expect(f.mapcount == 0 && page.pageMapcount == 0)
        #expect(stat(k, fileMapped) == 0)
        #expect(f.refCount == ref0, "rmap never changes _refcount")
        #expect(stat(k, filePmdMapped) == 0)
        #expect(k.drainReports().isEmpty)
    }

    @Test("small folios are counted independently in NR_FILE_MAPPED")
    func severalSmallFolios() throws {
        let k = try makeKernel()
        let pg = try mapped(k, .fsDax, size: 2 * MiB)
        for i in 0..<10 { folioAddFileRmapPte(k.ref, pg.firstPage().advanced(by: i).folio, pg.firstPage().advanced(by: i)) }
        #expect(stat(k, fileMapped) == 10)
        for i in 0..<10 { folioRemoveRmapPte(k.ref, pg.firstPage().advanced(by: i).folio, pg.firstPage().advanced(by: i)) }
        #expect(stat(k, fileMapped) == 0)
    }

    @Test("small folio: unmapping an unmapped page reports a negative mapcount")
    func smallFolioUnderflow() throws {
        let k = try makeKernel()
        let pg = try mapped(k, .fsDax, size: 2 * MiB)
        let page = pg.firstPage()
        let before = stat(k, fileMapped)
        folioRemoveRmapPte(k.ref, page.folio, page)
        #expect(stat(k, fileMapped) == before, "an underflow is not an unmap")
        let reports = k.drainReports()
        #expect(reports.count == 1)
        #expect(reports.first?.rule.contains("< 0") == true, "\(reports.first?.rule ?? "")")
        #expect(reports.first?.rule.contains("mapcount") == true)
        #expect(reports.first?.function == "__folio_remove_rmap")
    }

    // MARK: PMD-sized folios

    @Test("2M folio: PMD map -> entire 1, mapcount 1, NR_FILE_MAPPED +512, NR_FILE_PMDMAPPED +512; unmap mirrors (__folio_add_rmap)")
    func pmdMap() throws {
        let k = try makeKernel()
        let pg = try mapped(k, .fsDax, size: 2 * MiB, shift: pmdOrder)
        let f = pg.firstPage().folio
        f.refInc()
        #expect(folioAddFileRmapPmd(k.ref, f, f.head))
        #expect(snap(k, f) == Snap(ref: 1, map: 1, entire: 1, pagesMapped: entirelyMapped, fileMapped: 512, pmdMapped: 512))
        #expect(f.head.pageMapcount == 0, "a PMD map does not touch per-page mapcounts")
        #expect(folioRemoveRmapPmd(k.ref, f, f.head))
        #expect(snap(k, f) == Snap(ref: 1, map: 0, entire: 0, pagesMapped: 0, fileMapped: 0, pmdMapped: 0))
        #expect(k.drainReports().isEmpty)
    }

    @Test("2M folio: two PMD maps count once in the node stats")
    func pmdMapTwice() throws {
        let k = try makeKernel()
        let pg = try mapped(k, .fsDax, size: 2 * MiB, shift: pmdOrder)
        let f = pg.firstPage().folio
        folioAddFileRmapPmd(k.ref, f, f.head)
        folioAddFileRmapPmd(k.ref, f, f.head)
        #expect(snap(k, f) == Snap(ref: 0, map: 2, entire: 2, pagesMapped: entirelyMapped, fileMapped: 512, pmdMapped: 512))
        folioRemoveRmapPmd(k.ref, f, f.head)
        #expect(snap(k, f) == Snap(ref: 0, map: 1, entire: 1, pagesMapped: entirelyMapped, fileMapped: 512, pmdMapped: 512))
        folioRemoveRmapPmd(k.ref, f, f.head)
        #expect(snap(k, f) == Snap(ref: 0, map: 0, entire: 0, pagesMapped: 0, fileMapped: 0, pmdMapped: 0))
    }

    @Test("2M folio: a PTE on top of a PMD -> mapcount 2, NR_FILE_MAPPED unchanged; removals mirror (__folio_add_rmap, __folio_remove_rmap)")
    func pteOnTopOfPmd() throws {
        let k = try makeKernel()
        let pg = try mapped(k, .fsDax, size: 2 * MiB, shift: pmdOrder)
        let f = pg.firstPage().folio
        let p = f.page(100)
        folioAddFileRmapPmd(k.ref, f, f.head)
        #expect(folioAddFileRmapPte(k.ref, f, p))
        #expect(snap(k, f) == Snap(ref: 0, map: 2, entire: 1, pagesMapped: entirelyMapped + 1, fileMapped: 512, pmdMapped: 512))
        #expect(p.pageMapcount == 1)
        #expect(folioRemoveRmapPte(k.ref, f, p))
        #expect(snap(k, f) == Snap(ref: 0, map: 1, entire: 1, pagesMapped: entirelyMapped, fileMapped: 512, pmdMapped: 512))
        #expect(folioRemoveRmapPmd(k.ref, f, f.head))
        #expect(snap(k, f) == Snap(ref: 0, map: 0, entire: 0, pagesMapped: 0, fileMapped: 0, pmdMapped: 0))
        #expect(k.drainReports().isEmpty)
    }

    @Test("2M folio: PMD unmapped before the PTE leaves the PTE-mapped page counted (__folio_remove_rmap)")
    func pmdRemovedFirst() throws {
        let k = try makeKernel()
        let pg = try mapped(k, .fsDax, size: 2 * MiB, shift: pmdOrder)
        let f = pg.firstPage().folio
        let p = f.page(3)
        folioAddFileRmapPmd(k.ref, f, f.head)
        folioAddFileRmapPte(k.ref, f, p)
        folioRemoveRmapPmd(k.ref, f, f.head)
        #expect(snap(k, f) == Snap(ref: 0, map: 1, entire: 0, pagesMapped: 1, fileMapped: 1, pmdMapped: 0))
        folioRemoveRmapPte(k.ref, f, p)
        #expect(snap(k, f) == Snap(ref: 0, map: 0, entire: 0, pagesMapped: 0, fileMapped: 0, pmdMapped: 0))
    }

    @Test("2M folio: PTEs first, then a PMD adds only the pages not yet mapped (__folio_add_rmap)")
    func ptesThenPmd() throws {
        let k = try makeKernel()
        let pg = try mapped(k, .fsDax, size: 2 * MiB, shift: pmdOrder)
        let f = pg.firstPage().folio
        #expect(folioAddFileRmapPtes(k.ref, f, f.page(10), 4))
        #expect(snap(k, f) == Snap(ref: 0, map: 4, entire: 0, pagesMapped: 4, fileMapped: 4, pmdMapped: 0))
        folioAddFileRmapPmd(k.ref, f, f.head)
        #expect(snap(k, f) == Snap(ref: 0, map: 5, entire: 1, pagesMapped: entirelyMapped + 4, fileMapped: 512, pmdMapped: 512))
        folioRemoveRmapPtes(k.ref, f, f.page(10), 4)
        #expect(snap(k, f) == Snap(ref: 0, map: 1, entire: 1, pagesMapped: entirelyMapped, fileMapped: 512, pmdMapped: 512))
        folioRemoveRmapPmd(k.ref, f, f.head)
        #expect(snap(k, f) == Snap(ref: 0, map: 0, entire: 0, pagesMapped: 0, fileMapped: 0, pmdMapped: 0))
    }

    @Test("large folio PTE maps: nrPagesMapped counts distinct pages, mapcount counts entries (include/linux/mm_types.h)")
    func distinctPages() throws {
        let k = try makeKernel()
        let pg = try mapped(k, .generic, size: 2 * MiB, shift: pmdOrder)
        let f = pg.firstPage().folio
        let ref0 = f.refCount
        folioAddFileRmapPte(k.ref, f, f.page(3))
        folioAddFileRmapPte(k.ref, f, f.page(3))
        folioAddFileRmapPte(k.ref, f, f.page(5))
        folioAddFileRmapPtes(k.ref, f, f.page(4), 3)   // 4, 5, 6
        #expect(f.mapcount == 6)
        #expect(f.nrPagesMapped == 4, "pages 3, 4, 5, 6")
        #expect(stat(k, fileMapped) == 4)
        #expect(f.page(3).pageMapcount == 2 && f.page(5).pageMapcount == 2 && f.page(4).pageMapcount == 1)
        #expect(f.entireMapcount == 0)
        folioRemoveRmapPtes(k.ref, f, f.page(4), 3)
        #expect(f.nrPagesMapped == 2)
        #expect(stat(k, fileMapped) == 2)
        folioRemoveRmapPte(k.ref, f, f.page(3))
        #expect(f.nrPagesMapped == 2 && stat(k, fileMapped) == 2)
        folioRemoveRmapPte(k.ref, f, f.page(3))
        folioRemoveRmapPte(k.ref, f, f.page(5))
        #expect(f.mapcount == 0 && f.nrPagesMapped == 0 && stat(k, fileMapped) == 0)
        #expect(f.refCount == ref0)
        #expect(k.drainReports().isEmpty)
    }

    @Test("every page of a large folio PTE-mapped once equals folio_nr_pages mapped")
    func allPagesPteMapped() throws {
        let k = try makeKernel()
        let pg = try mapped(k, .fsDax, size: 2 * MiB, shift: pmdOrder)
        let f = pg.firstPage().folio
        #expect(folioAddFileRmapPtes(k.ref, f, f.head, hpagePmdNr))
        #expect(f.mapcount == Int32(hpagePmdNr) && f.nrPagesMapped == Int32(hpagePmdNr))
        #expect(stat(k, fileMapped) == Int64(hpagePmdNr) && stat(k, filePmdMapped) == 0)
        #expect(folioRemoveRmapPtes(k.ref, f, f.head, hpagePmdNr))
        #expect(f.mapcount == 0 && stat(k, fileMapped) == 0)
    }

    @Test("2M folio: removing a PMD that was never added reports a negative mapcount")
    func pmdUnderflow() throws {
        let k = try makeKernel()
        let pg = try mapped(k, .fsDax, size: 2 * MiB, shift: pmdOrder)
        let f = pg.firstPage().folio
        folioRemoveRmapPmd(k.ref, f, f.head)
        #expect(stat(k, fileMapped) == 0 && stat(k, filePmdMapped) == 0)
        let reports = k.drainReports()
        #expect(reports.count == 1)
        #expect(reports.first?.rule.contains("mapcount") == true && reports.first?.rule.contains("< 0") == true)
    }

    @Test("large folio: removing a PTE that was never added reports a negative mapcount")
    func largePteUnderflow() throws {
        let k = try makeKernel()
        let pg = try mapped(k, .fsDax, size: 2 * MiB, shift: pmdOrder)
        let f = pg.firstPage().folio
        folioRemoveRmapPte(k.ref, f, f.page(9))
        #expect(stat(k, fileMapped) == 0)
        let reports = k.drainReports()
        #expect(!reports.isEmpty)
        #expect(reports.allSatisfy { $0.rule.contains("< 0") && $0.rule.contains("mapcount") })
    }

    // MARK: PUD-sized folios

    @Test("1G folio: PUD map -> entire 1, NR_FILE_MAPPED +262144, NR_FILE_PMDMAPPED unchanged (__folio_add_rmap)")
    func pudMap() throws {
        let k = try makeKernel()
        let pg = try mapped(k, .fsDax, size: 1 * GiB, shift: pudOrder)
        let f = pg.firstPage().folio
        #expect(folioAddFileRmapPud(k.ref, f, f.head))
        #expect(snap(k, f) == Snap(ref: 0, map: 1, entire: 1, pagesMapped: entirelyMapped, fileMapped: Int64(hpagePudNr), pmdMapped: 0))
        #expect(folioAddFileRmapPte(k.ref, f, f.page(hpagePudNr - 1)))
        #expect(snap(k, f) == Snap(ref: 0, map: 2, entire: 1, pagesMapped: entirelyMapped + 1, fileMapped: Int64(hpagePudNr), pmdMapped: 0))
        #expect(folioRemoveRmapPte(k.ref, f, f.page(hpagePudNr - 1)))
        #expect(folioRemoveRmapPud(k.ref, f, f.head))
        #expect(snap(k, f) == Snap(ref: 0, map: 0, entire: 0, pagesMapped: 0, fileMapped: 0, pmdMapped: 0))
        #expect(k.drainReports().isEmpty)
    }

    // MARK: level / order mismatches

    enum Mismatch: String, CaseIterable, Sendable {
        case pmdOnSmall, pmdOnPud, pudOnPmd, pudOnSmall, ptesPastEnd, pteZero, removePmdOnSmall, pageOfOtherFolio
    }

    @Test("an rmap call whose level or page range does not fit the folio is refused with one report (__folio_rmap_sanity_checks)",
          arguments: Mismatch.allCases)
    func mismatch(_ m: Mismatch) throws {
        let k = try makeKernel()
        let small = try mapped(k, .fsDax, start: base, size: 2 * MiB)
        let pmdMap = try mapped(k, .fsDax, start: base + 2 * MiB, size: 4 * MiB, shift: pmdOrder)
        let pudMap = try mapped(k, .fsDax, start: base + 1 * GiB, size: 1 * GiB, shift: pudOrder)
        let sf = small.firstPage().folio, mf = pmdMap.firstPage().folio, lf = pudMap.firstPage().folio
        mf.refInc()
        let folios = [sf, mf, lf]
        let before = folios.map { snap(k, $0) }
        let ok: Bool
        let want: [String]   // the report must name one of these checks
        switch m {
        case .pmdOnSmall:
            ok = folioAddFileRmapPmd(k.ref, sf, sf.head); want = ["HPAGE_PMD_NR", "outside folio"]
        case .pmdOnPud:
            ok = folioAddFileRmapPmd(k.ref, lf, lf.head); want = ["HPAGE_PMD_NR"]
        case .pudOnPmd:
            ok = folioAddFileRmapPud(k.ref, mf, mf.head); want = ["HPAGE_PUD_NR", "outside folio"]
        case .pudOnSmall:
            ok = folioAddFileRmapPud(k.ref, sf, sf.head); want = ["HPAGE_PUD_NR", "outside folio"]
        case .ptesPastEnd:
            ok = folioAddFileRmapPtes(k.ref, mf, mf.page(510), 3); want = ["outside folio"]
        case .pteZero:
            ok = folioAddFileRmapPtes(k.ref, mf, mf.page(1), 0); want = ["nr_pages <= 0"]
        case .removePmdOnSmall:
            ok = folioRemoveRmapPmd(k.ref, sf, sf.head); want = ["HPAGE_PMD_NR", "outside folio"]
        case .pageOfOtherFolio:
            ok = folioAddFileRmapPte(k.ref, mf, mf.head.advanced(by: 512)); want = ["page_folio(page) != folio"]
        }
        #expect(!ok)
        #expect(folios.map { snap(k, $0) } == before, "counters unchanged")
        #expect(pmdMap.firstPage().advanced(by: 512).pageMapcount == 0)
        let reports = k.drainReports()
        #expect(reports.count == 1)
        let rule = reports.first?.rule ?? ""
        #expect(want.contains { rule.contains($0) }, "rule: \(rule)")
        #expect(reports.first?.function == "__folio_rmap_sanity_checks")
    }

    // MARK: concurrency (rmap runs under different PT locks at once)

    /// The stat update follows the mapcount transition non-atomically (as in
    /// the kernel), so NR_FILE_MAPPED may be transiently off; only the final
    /// balance is a rule.
    @Test("concurrent PTE map/unmap of one small folio: first/last detection balances exactly")
    func concurrentSmall() throws {
        let k = try makeKernel()
        let pg = try mapped(k, .fsDax, size: 2 * MiB)
        let page = pg.firstPage().advanced(by: 1)
        let f = page.folio
        let ready = Shared(0)
        let threads = (0..<2).map { _ in
            TestThread {
                ready.withLock { $0 += 1 }
                while ready.value < 2 {}
                for _ in 0..<20_000 {
                    folioAddFileRmapPte(k.ref, f, page)
                    folioRemoveRmapPte(k.ref, f, page)
                }
            }
        }
        threads.forEach { $0.join() }
        #expect(f.mapcount == 0)
        #expect(stat(k, fileMapped) == 0)
        #expect(k.drainReports().isEmpty)
    }

    @Test("concurrent PTE map/unmap of different pages of one large folio balances every counter")
    func concurrentLarge() throws {
        let k = try makeKernel()
        let pg = try mapped(k, .fsDax, size: 2 * MiB, shift: pmdOrder)
        let f = pg.firstPage().folio
        let ready = Shared(0)
        let threads = (0..<2).map { t in
            TestThread {
                ready.withLock { $0 += 1 }
                while ready.value < 2 {}
                for i in 0..<20_000 {
                    let p = f.page(t * 256 + i % 256)
                    folioAddFileRmapPte(k.ref, f, p)
                    folioRemoveRmapPte(k.ref, f, p)
                }
            }
        }
        threads.forEach { $0.join() }
        #expect(f.mapcount == 0 && f.nrPagesMapped == 0 && f.entireMapcount == 0)
        #expect(stat(k, fileMapped) == 0)
        #expect(k.drainReports().isEmpty)
    }
}
