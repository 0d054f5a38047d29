// mm/huge_memory.c: vmf_insert_folio_pmd / vmf_insert_folio_pud, the
// 6.15-as-merged special-entry mode, and the pfn-only huge inserts.

import CDaxMM
import Testing
@testable import MMCore
import MMTestChecks
import MMTestSupport

/// PMD or PUD: what differs between the two levels.
struct HugeLevel: Sendable, CustomStringConvertible {
    var order: Int
    var isPud: Bool { order == pudOrder }
    var size: UInt64 { UInt64(4096) << UInt64(order) }
    var nr: Int64 { Int64(1) << Int64(order) }
    /// Bytes of the pgmap: two folios.
    var bytes: UInt64 { size * 2 }
    var description: String { isPud ? "PUD" : "PMD" }

    static let pmd = HugeLevel(order: pmdOrder)
    static let pud = HugeLevel(order: pudOrder)

    func insert(_ vmf: VMFaultRef, _ folio: Folio, write: Bool) -> UInt32 {
        isPud ? vmfInsertFolioPud(vmf, folio, write: write) : vmfInsertFolioPmd(vmf, folio, write: write)
    }

    /// The leaf entry value mapping addr at this level.
    func entry(_ mm: MM, _ addr: UInt64) -> PTEntry { isPud ? VMAKit.pud(mm, addr) : VMAKit.pmd(mm, addr) }
}

@Suite("PMD/PUD folio inserts (mm/huge_memory.c)")
struct InsertHugeTests {
    /// A rig of the level's order with a VMA over both folios whose
    /// vm_page_prot is read-only (write notification).
    static func rig(_ level: HugeLevel, type: MemoryType = .generic) throws -> (FaultRig, UInt64) {
        let (rig, addr) = try vmaFixture(type: type, order: level.order, bytes: level.bytes, length: level.bytes, ops: .writenotify)
        #expect(addr % level.size == 0)
        return (rig, addr)
    }

    @Test("vmf_insert_folio_pmd with a folio that is not PMD_ORDER: SIGBUS and a WARN, nothing mapped", arguments: [0, 18])
    func pmdInsertWrongOrder(order: Int) throws {
        let (rig, addr) = try vmaFixture(order: order, bytes: max(UInt64(4096) << UInt64(order), 4 << 20), length: 4 << 20, alignment: 2 << 20)
        let f = rig.folio(pgoff: 0)
        let before = VMAKit.counters(rig, f)
        let r = VMAKit.read(rig.mm) {
            VMAKit.withVMF(rig.mm.findVMA(addr)!, addr, write: true) { vmfInsertFolioPmd($0, f, write: true) }
        }
        #expect(r == DAX_VM_FAULT_SIGBUS)
        let reports = rig.kernel.drainReports()
        #expect(reports.count == 1)
        #expect(reports.first?.function == "vmf_insert_folio_pmd")
        #expect(reports.first?.rule.contains("PMD_ORDER") == true)
        #expect(VMAKit.counters(rig, f) == before)
        #expect(!entryPresent(VMAKit.pmd(rig.mm, addr)))
        rig.check()
    }

    @Test("vmf_insert_folio_pud with a folio that is not PUD_ORDER: SIGBUS and a WARN, nothing mapped", arguments: [0, 9])
    func pudInsertWrongOrder(order: Int) throws {
        let (rig, addr) = try vmaFixture(order: order, bytes: 4 << 20, length: 4 << 20, alignment: 1 << 30)
        let f = rig.folio(pgoff: 0)
        let before = VMAKit.counters(rig, f)
        let r = VMAKit.read(rig.mm) {
            VMAKit.withVMF(rig.mm.findVMA(addr)!, addr, write: true) { vmfInsertFolioPud($0, f, write: true) }
        }
        #expect(r == DAX_VM_FAULT_SIGBUS)
        let reports = rig.kernel.drainReports()
        #expect(reports.count == 1)
        #expect(reports.first?.function == "vmf_insert_folio_pud")
        #expect(reports.first?.rule.contains("PUD_ORDER") == true)
        #expect(VMAKit.counters(rig, f) == before)
        #expect(!entryPresent(VMAKit.pud(rig.mm, addr)))
        rig.check()
    }

    @Test("huge insert on an empty entry: +1 ref, entire mapcount 1, rss += folio pages, NR_FILE_MAPPED += pages, NR_FILE_PMDMAPPED only for PMDs; normal PSE entry",
          arguments: [HugeLevel.pmd, HugeLevel.pud])
    func hugeInsertEmpty(level: HugeLevel) throws {
        let (rig, addr) = try Self.rig(level)
        let f = rig.folio(pgoff: 0)
        let before = VMAKit.counters(rig, f)
        let r = VMAKit.read(rig.mm) {
            VMAKit.withVMF(rig.mm.findVMA(addr)!, addr + 5 * 4096) { level.insert($0, f, write: false) }
        }
        #expect(r == DAX_VM_FAULT_NOPAGE)
        var after = before
        after.ref += 1; after.mapcount += 1; after.entire += 1; after.rss += level.nr; after.fileMapped += level.nr
        if !level.isPud { after.pmdMapped += level.nr }
        #expect(VMAKit.counters(rig, f) == after)
        let e = level.entry(rig.mm, addr)
        #expect(entryLeaf(e) && e & PT.pse != 0)
        #expect(!entrySpecial(e))
        #expect(entryPfn(e) == rig.pgmap.ranges[0].startPfn)
        #expect(!entryYoung(e) && !entryDirty(e) && !entryWrite(e))
        rig.check()
        try rig.mm.munmap(addr, level.bytes)
        #expect(VMAKit.counters(rig, f) == before)
        rig.check()
    }

    @Test("huge insert with write on an empty entry: young, dirty, writable", arguments: [HugeLevel.pmd, HugeLevel.pud])
    func hugeInsertEmptyWrite(level: HugeLevel) throws {
        let (rig, addr) = try Self.rig(level)
        let f = rig.folio(pgoff: UInt64(level.nr))
        let r = VMAKit.read(rig.mm) {
            VMAKit.withVMF(rig.mm.findVMA(addr)!, addr + level.size, write: true) { level.insert($0, f, write: true) }
        }
        #expect(r == DAX_VM_FAULT_NOPAGE)
        let e = level.entry(rig.mm, addr + level.size)
        #expect(entryYoung(e) && entryDirty(e) && entryWrite(e) && !entrySpecial(e))
        #expect(f.refCount == 2 && f.entireMapcount == 1)
        rig.check()
    }

    @Test("existing huge entry: write + same pfn upgrades (young, dirty, writable) with no counter change; no write changes nothing",
          arguments: [HugeLevel.pmd, HugeLevel.pud])
    func hugeInsertExistingSamePfn(level: HugeLevel) throws {
        let (rig, addr) = try Self.rig(level)
        let f = rig.folio(pgoff: 0)
        VMAKit.read(rig.mm) {
            let vma = rig.mm.findVMA(addr)!
            #expect(VMAKit.withVMF(vma, addr) { level.insert($0, f, write: false) } == DAX_VM_FAULT_NOPAGE)
        }
        let e0 = level.entry(rig.mm, addr)
        let before = VMAKit.counters(rig, f)
        VMAKit.read(rig.mm) {
            let vma = rig.mm.findVMA(addr)!
            #expect(VMAKit.withVMF(vma, addr + 4096) { level.insert($0, f, write: false) } == DAX_VM_FAULT_NOPAGE)
        }
        #expect(level.entry(rig.mm, addr) == e0)
        #expect(VMAKit.counters(rig, f) == before)
        VMAKit.read(rig.mm) {
            let vma = rig.mm.findVMA(addr)!
            #expect(VMAKit.withVMF(vma, addr, write: true) { level.insert($0, f, write: true) } == DAX_VM_FAULT_NOPAGE)
        }
        let e = level.entry(rig.mm, addr)
        #expect(entryYoung(e) && entryDirty(e) && entryWrite(e))
        #expect(entryPfn(e) == entryPfn(e0) && !entrySpecial(e))
        #expect(VMAKit.counters(rig, f) == before)
        #expect(rig.kernel.drainReports().isEmpty)
        rig.check()
    }

    @Test("existing huge entry, write + different pfn: a WARN and no change to the entry or either folio",
          arguments: [HugeLevel.pmd, HugeLevel.pud])
    func hugeInsertExistingOtherPfn(level: HugeLevel) throws {
        let (rig, addr) = try Self.rig(level)
        let f = rig.folio(pgoff: 0), g = rig.folio(pgoff: UInt64(level.nr))
        VMAKit.read(rig.mm) {
            let vma = rig.mm.findVMA(addr)!
            #expect(VMAKit.withVMF(vma, addr) { level.insert($0, f, write: false) } == DAX_VM_FAULT_NOPAGE)
        }
        let e0 = level.entry(rig.mm, addr)
        let bf = VMAKit.counters(rig, f), bg = VMAKit.counters(rig, g)
        VMAKit.read(rig.mm) {
            let vma = rig.mm.findVMA(addr)!
            #expect(VMAKit.withVMF(vma, addr, write: true) { level.insert($0, g, write: true) } == DAX_VM_FAULT_NOPAGE)
        }
        let reports = rig.kernel.drainReports()
        #expect(reports.count == 1)
        #expect(reports.first?.function == (level.isPud ? "insert_pud" : "insert_pmd"))
        #expect(level.entry(rig.mm, addr) == e0)
        #expect(VMAKit.counters(rig, f) == bf)
        #expect(VMAKit.counters(rig, g) == bg)
        // Without write the mismatch is not even looked at.
        VMAKit.read(rig.mm) {
            let vma = rig.mm.findVMA(addr)!
            #expect(VMAKit.withVMF(vma, addr) { level.insert($0, g, write: false) } == DAX_VM_FAULT_NOPAGE)
        }
        #expect(rig.kernel.drainReports().isEmpty)
        #expect(level.entry(rig.mm, addr) == e0)
        rig.check()
    }

    @Test("huge insert with the address outside the VMA is SIGBUS", arguments: [HugeLevel.pmd, HugeLevel.pud])
    func hugeInsertOutsideVma(level: HugeLevel) throws {
        let (rig, addr) = try Self.rig(level)
        let f = rig.folio(pgoff: 0)
        let before = VMAKit.counters(rig, f)
        VMAKit.read(rig.mm) {
            let vma = rig.mm.findVMA(addr)!
            let r = VMAKit.withVMF(vma, vma.pointee.vm_end, write: true) { level.insert($0, f, write: true) }
            #expect(r == DAX_VM_FAULT_SIGBUS)
        }
        #expect(VMAKit.counters(rig, f) == before)
        rig.check()
    }

    @Test("huge insert of an idle (refcount 0) folio is refused: the seed's folio_get BUG becomes a report and SIGBUS")
    func hugeInsertIdleFolio() throws {
        let (rig, addr) = try Self.rig(.pmd, type: .fsDax)
        let f = rig.folio(pgoff: 0)
        #expect(f.refCount == 0)
        let before = VMAKit.counters(rig, f)
        let r = VMAKit.read(rig.mm) {
            VMAKit.withVMF(rig.mm.findVMA(addr)!, addr, write: true) { vmfInsertFolioPmd($0, f, write: true) }
        }
        #expect(r == DAX_VM_FAULT_SIGBUS)
        let reports = rig.kernel.drainReports()
        #expect(reports.map(\.function) == ["folio_get"])
        #expect(VMAKit.counters(rig, f) == before)
        #expect(!entryPresent(VMAKit.pmd(rig.mm, addr)))
        rig.check()
    }

    @Test("PTE-mapped pages of a PMD-order folio beside its PMD mapping: one ref per entry; NR_FILE_MAPPED counts each page once")
    func pteAndPmdMappingsOfOneFolio() throws {
        let (rig, pmdVA) = try vmaFixture(order: pmdOrder, bytes: 4 << 20, length: 2 << 20)
        let pteVA = try rig.linkVMA(length: 2 << 20)
        let f = rig.folio(pgoff: 0)
        let before = VMAKit.counters(rig, f)
        VMAKit.read(rig.mm) {
            let vma = rig.mm.findVMA(pteVA)!
            #expect(insertPage(vma, pteVA + 3 * 4096, f.page(3), vma.pointee.vm_page_prot, mkwrite: false) == 0)
            #expect(insertPage(vma, pteVA + 4 * 4096, f.page(4), vma.pointee.vm_page_prot, mkwrite: false) == 0)
        }
        var c = VMAKit.counters(rig, f)
        #expect(c.ref == before.ref + 2 && c.mapcount == 2 && c.entire == 0)
        #expect(c.fileMapped == before.fileMapped + 2 && c.pmdMapped == before.pmdMapped && c.rss == 2)
        #expect(f.page(3).pageMapcount == 1 && f.page(5).pageMapcount == 0)
        rig.check()
        #expect(rig.mm.handleFault(pmdVA, write: false) & DAX_VM_FAULT_ERROR == 0)
        c = VMAKit.counters(rig, f)
        #expect(c.ref == before.ref + 3 && c.mapcount == 3 && c.entire == 1)
        #expect(c.fileMapped == before.fileMapped + 512, "pages already PTE-mapped are not counted again")
        #expect(c.pmdMapped == before.pmdMapped + 512)
        #expect(c.rss == 2 + 512)
        rig.check()
        try rig.mm.munmap(pmdVA, 2 << 20)
        c = VMAKit.counters(rig, f)
        #expect(c.ref == before.ref + 2 && c.entire == 0 && c.fileMapped == before.fileMapped + 2 && c.pmdMapped == before.pmdMapped)
        rig.check()
        try rig.mm.munmap(pteVA, 2 << 20)
        #expect(VMAKit.counters(rig, f) == before)
        rig.check()
    }

    // MARK: 6.15 as merged

    @Test("6.15-as-merged mode: the huge entry is special but ref/mapcount/rss are taken; GUP-fast refuses it (gup_fast_pmd_leaf/pud_leaf) and falls back to follow_huge_pmd/pud, which pin it; zap drops the ref",
          arguments: [HugeLevel.pmd, HugeLevel.pud])
    func specialHugeEntriesMode(level: HugeLevel) throws {
        let rig = try FaultRig(order: level.order, bytes: level.bytes)
        rig.kernel.mode = DAX_MODE_SPECIAL_HUGE_ENTRIES.rawValue
        let addr = try rig.linkVMA(length: level.bytes)
        let f = rig.folio(pgoff: 0)
        let before = VMAKit.counters(rig, f)
        #expect(rig.mm.handleFault(addr, write: true) & DAX_VM_FAULT_ERROR == 0)
        let e = level.entry(rig.mm, addr)
        #expect(entryLeaf(e) && entrySpecial(e))
        var after = before
        after.ref += 1; after.mapcount += 1; after.entire += 1; after.rss += level.nr; after.fileMapped += level.nr
        if !level.isPud { after.pmdMapped += level.nr }
        #expect(VMAKit.counters(rig, f) == after)
        rig.check()

        // GUP-fast stops at the special leaf (pmd_special/pud_special) and
        // takes nothing; follow_huge_pmd/follow_huge_pud do not look at the
        // special bit, so the slow path, and the fast entry points through
        // their fallback, pin and get the folio.
        let pages = VMAKit.pages(4)
        defer { pages.deallocate() }
        #expect(gupFast(rig.mm.ref, addr, 4, [.pin, .write], pages) == 0)
        #expect(VMAKit.counters(rig, f) == after)
        for fast in [false, true] {
            let n = fast ? pinUserPagesFast(rig.mm.ref, addr, 4, [.write], pages) : pinUserPages(rig.mm.ref, addr, 4, [.write], pages)
            #expect(n == 4, "pin, fast \(fast)")
            #expect(pages[0] == f.head.raw && pages[3] == f.page(3).raw)
            #expect(f.pincount == 4 && f.refCount == after.ref + 4)
            unpinUserPages(rig.kernel.ref, pages, 4)
            let g = fast ? getUserPagesFast(rig.mm.ref, addr, 1, [], pages) : getUserPages(rig.mm.ref, addr, 1, [], pages)
            #expect(g == 1, "get, fast \(fast)")
            #expect(f.refCount == after.ref + 1)
            putUserPages(rig.kernel.ref, pages, 1)
        }
        after.pinAcquired += 8; after.pinReleased += 8
        #expect(VMAKit.counters(rig, f) == after)
        rig.check()

        try rig.mm.munmap(addr, level.bytes)
        var idle = before
        idle.pinAcquired += 8; idle.pinReleased += 8
        #expect(VMAKit.counters(rig, f) == idle)
        #expect(f.refCount == 1, "back to the GENERIC idle count")
        rig.check()
    }

    // MARK: pfn-only huge inserts (vmf_insert_pfn_pmd, vmf_insert_pfn_pud)

    @Test("vmf_insert_pfn_pmd: special huge entry with no accounting on a MIXEDMAP VMA; SIGBUS without exactly one of PFNMAP/MIXEDMAP")
    func pfnHugePmd() throws {
        // An idle fs-dax folio: its pfn has a struct page that must not move.
        let rig = try FaultRig(type: .fsDax, order: pmdOrder, bytes: 4 << 20)
        var req = MMapRequest(length: 2 << 20)
        req.alignment = 2 << 20
        req.extraFlags = DAX_VM_MIXEDMAP
        let addr = try rig.mm.mmap(req)
        req.extraFlags = 0
        let plain = try rig.mm.mmap(req)
        req.extraFlags = DAX_VM_MIXEDMAP | DAX_VM_PFNMAP
        let both = try rig.mm.mmap(req)
        let f = rig.folio(pgoff: 0)
        let pfn = rig.pgmap.ranges[0].startPfn
        let before = VMAKit.counters(rig, f)
        VMAKit.read(rig.mm) {
            #expect(VMAKit.withVMF(rig.mm.findVMA(plain)!, plain) { vmfInsertPfnHuge($0, pfn: pfn, write: false, pud: false) } == DAX_VM_FAULT_SIGBUS)
            #expect(VMAKit.withVMF(rig.mm.findVMA(both)!, both) { vmfInsertPfnHuge($0, pfn: pfn, write: false, pud: false) } == DAX_VM_FAULT_SIGBUS)
            #expect(VMAKit.withVMF(rig.mm.findVMA(addr)!, addr + 4096, write: true) { vmfInsertPfnHuge($0, pfn: pfn, write: true, pud: false) } == DAX_VM_FAULT_NOPAGE)
        }
        let e = VMAKit.pmd(rig.mm, addr)
        #expect(entryLeaf(e) && entrySpecial(e) && entryPfn(e) == pfn)
        #expect(entryWrite(e) && entryDirty(e) && entryYoung(e))
        #expect(!entryPresent(VMAKit.pmd(rig.mm, plain)) && !entryPresent(VMAKit.pmd(rig.mm, both)))
        #expect(VMAKit.counters(rig, f) == before)
        #expect(f.refCount == 0)
        rig.check()
        try rig.mm.munmap(addr, 2 << 20)
        #expect(VMAKit.counters(rig, f) == before)
        rig.check()
    }

    @Test("vmf_insert_pfn_pud: special huge entry, no rss; an existing entry with another pfn is left alone")
    func pfnHugePud() throws {
        let rig = try FaultRig(order: 0, bytes: 2 << 20)
        var req = MMapRequest(length: 1 << 30)
        req.alignment = 1 << 30
        req.extraFlags = DAX_VM_PFNMAP
        let addr = try rig.mm.mmap(req)
        let pfn: UInt64 = 0x200000   // 8 GiB, 1 GiB aligned, no struct page
        #expect(!rig.kernel.pfnValid(pfn))
        let rss = rig.mm.rssFilePages, fm = rig.kernel.stat(DAX_NR_FILE_MAPPED)
        VMAKit.read(rig.mm) {
            let vma = rig.mm.findVMA(addr)!
            #expect(VMAKit.withVMF(vma, addr) { vmfInsertPfnHuge($0, pfn: pfn, write: false, pud: true) } == DAX_VM_FAULT_NOPAGE)
            // A misaligned pfn cannot be a PUD.
            #expect(VMAKit.withVMF(vma, addr) { vmfInsertPfnHuge($0, pfn: pfn + 512, write: false, pud: true) } == DAX_VM_FAULT_SIGBUS)
        }
        let e0 = VMAKit.pud(rig.mm, addr)
        #expect(entryLeaf(e0) && entrySpecial(e0) && entryPfn(e0) == pfn && !entryDirty(e0))
        VMAKit.read(rig.mm) {
            let vma = rig.mm.findVMA(addr)!
            #expect(VMAKit.withVMF(vma, addr, write: true) { vmfInsertPfnHuge($0, pfn: pfn + 262144, write: true, pud: true) } == DAX_VM_FAULT_NOPAGE)
        }
        #expect(VMAKit.pud(rig.mm, addr) == e0)
        #expect(rig.mm.rssFilePages == rss && rig.kernel.stat(DAX_NR_FILE_MAPPED) == fm)
        _ = rig.kernel.drainReports()
        rig.check()
        try rig.mm.munmap(addr, 1 << 30)
        #expect(rig.mm.rssFilePages == rss)
        rig.check()
    }
}
