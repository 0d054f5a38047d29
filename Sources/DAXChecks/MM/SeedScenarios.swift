// The seed scenario of the series (seed 004, Dan Williams' dax-ext4.sh run of
// the April 2024 RFC): the pre-series PMD insert, dax_insert_pfn_pmd, took
// folio_get on an idle fs-dax folio whose refcount was already 0 (zero-based
// fs-dax pages: refcount 0 means free) and hit
// VM_BUG_ON_FOLIO(((unsigned int) folio_ref_count(folio) + 127u <= 127u)).

import CDaxMM
import DAXBase
import DAXCore
import MMCore
import MMTestSupport

/// The rule folio_get checks (include/linux/mm.h), as the port's report
/// spells it.
let folioGetRule = "VM_BUG_ON_FOLIO(((unsigned int) folio_ref_count(folio) + 127u <= 127u))"

/// folio_get at refcount 0:
///  - the seed's path, reproduced behind DAX_MODE_LEGACY_PRE_SERIES (fs/dax
///    without the temporary reference around the insert): a PMD write fault
///    on an idle 2M extent at file index 0x5800 is caught by folio_get in
///    vmf_insert_folio_pmd: SIGBUS instead of the BUG, and a dump_page-style
///    report naming the folio (refcount:0 mapcount:0, the file's mapping,
///    index:0x5800, head order:9, reserved|head, MEMORY_DEVICE_FS_DAX) and
///    the rule; nothing is mapped and no reference leaks;
///  - folio_get and try_grab_folio called directly on that idle folio are
///    refused and reported the same way (try_grab_folio: -ENOMEM, WARN);
///    validate_page_before_insert refuses a refcount-0 page quietly on the
///    PTE path (SIGBUS, no report: the defence in depth);
///  - what the series fixed: the same fault on the normal path
///    (folio_ref_inc 0 -> 1, insert, folio_put) maps with refcount 1;
///  - the port's normal paths never take a reference at 0: PMD and PTE
///    faults on idle fs-dax folios, the write upgrade, a hole's allocation,
///    a MAP_SYNC fault (dax_insert_pfn_mkwrite), GUP faulting in an idle
///    page, refaults after the last put, truncate and refault, device-dax
///    faults and pins leave no folio_get or try_grab_folio report at all.
func folioGetRefcountZeroScenario(_ t: TestContext, rules: KernelRules = .kernel) throws {
    let m = try t.must("an extent store on 8 MiB of fs-dax memory") { try FSDaxMachine(size: 8 << 20) }
    let k = m.kernel
    let index: UInt64 = 0x5800
    let f = try t.must("create \"image\"") { try m.fs.create(name: "image", maxSize: (index + UInt64(hpagePmdNr)) << UInt64(pageShift)) }
    try t.must("fallocate 2M at index 0x5800") { try f.allocate(pgoff: index, pages: UInt64(hpagePmdNr)) }
    let a = try t.must("mmap 2M at index 0x5800") { try m.mm.mmap(f.mmapRequest(length: UInt64(pmdSize), pgoff: index)) }
    let head = try t.require(f.folio(at: index), "no block at index 0x5800").head
    let headPfn = k.withUnsafeRecord { pageToPfn($0, head) }
    t.expectEqual(head.folio.refCount, rules.fsdaxIdleRefcount, "an idle fs-dax page's refcount (__init_zone_device_page, MEMORY_DEVICE_FS_DAX)")

    // The pre-series PMD insert.
    k.mode |= DAX_MODE_LEGACY_PRE_SERIES.rawValue
    t.expectFault(m.mm.handleFault(a, write: true), DAX_VM_FAULT_SIGBUS,
                  "pre-series PMD fault (dax_iomap_pmd_fault -> vmf_insert_folio_pmd without the temporary reference)")
    let reports = k.drainReports()
    t.expectEqual(reports.count, 1, "reports from the pre-series PMD fault")
    let d = try t.require(reports.first, "folio_get at refcount 0 made no report")
    let folio = head.folio
    t.expectEqual(d.function, "folio_get", "the function that caught it")
    t.expectEqual(d.rule, folioGetRule, "the rule")
    t.expect(d.refcount == 0 && d.mapcount == 0 && d.order == pmdOrder && d.entireMapcount == 0 && d.pincount == 0,
             "the dump's counters: refcount:\(d.refcount) mapcount:\(d.mapcount) order:\(d.order)")
    t.expect(d.pfn == headPfn && d.headPfn == headPfn, "the dump names the folio's head pfn \(hex(headPfn)) (pfn \(hex(d.pfn)))")
    t.expectEqual(d.mapping, f.file.mapping, "the dump's mapping is the file's (dax_associate_entry ran)")
    t.expectEqual(d.index, index, "the dump's index")
    t.expect(d.flagNames.contains("reserved") && d.flagNames.contains("head"), "flags reserved|head (\(d.flagNames))")
    t.expectEqual(d.pgmapTypeName, "MEMORY_DEVICE_FS_DAX", "the dump's pgmap type")
    let text = d.description
    t.expect(text.hasPrefix("page: refcount:0 mapcount:0 mapping:\(hexDigits(f.file.mapping, width: 16)) index:0x5800 pfn:\(hex(headPfn))\n"),
             "dump_page's first line: \(text)")
    t.expect(text.contains("head: pfn:\(hex(headPfn)) order:9 entire_mapcount:0 pincount:0\n"), "dump_page's head line: \(text)")
    t.expect(text.contains("pgmap:MEMORY_DEVICE_FS_DAX\n"), "dump_page's pgmap: \(text)")
    t.expect(text.hasSuffix("page dumped because: \(folioGetRule) in folio_get"), "dump_page's last line: \(text)")
    t.expect(leaf(m.mm, a) == nil && m.mm.rssFilePages == 0, "nothing mapped by the refused insert")
    t.expect(folio.refCount == 0 && folio.mapcount == 0 && folio.order == pmdOrder,
             "no reference leaked: refcount \(folio.refCount), mapcount \(folio.mapcount), order \(folio.order)")

    // folio_get and try_grab_folio themselves on the idle folio.
    let took = k.withUnsafeRecord { folioGet($0, folio) }
    t.expect(!took, "folio_get on a free folio is refused")
    let again = k.drainReports()
    t.expect(again.count == 1 && again.first?.rule == folioGetRule && again.first?.function == "folio_get",
             "folio_get's report: \(again.map(\.description))")
    let grab = k.withUnsafeRecord { tryGrabFolio($0, folio, 1, .pin) }
    t.expectEqual(grab, -ENOMEM, "try_grab_folio(FOLL_PIN) at refcount 0")
    let grabReports = k.drainReports()
    t.expect(grabReports.count == 1 && grabReports.first?.function == "try_grab_folio"
             && grabReports.first?.rule == "WARN_ON_ONCE(folio_ref_count(folio) <= 0)",
             "try_grab_folio's report: \(grabReports.map(\.description))")
    let fast = k.withUnsafeRecord { tryGrabFolioFast($0, folio.head, 1, .pin) }
    t.expect(fast == nil && k.drainReports().isEmpty, "try_grab_folio_fast fails quietly at 0 (folio_ref_try_add)")
    t.expect(folio.refCount == 0 && folio.pincount == 0, "nothing taken: refcount \(folio.refCount), pincount \(folio.pincount)")

    // The PTE path: validate_page_before_insert.
    let p = try t.must("create \"p\"") { try m.fs.create(name: "p", maxSize: 2 << 20) }
    try t.must("fallocate page 3") { try p.allocate(pgoff: 3, pages: 1) }
    let pa = try t.must("mmap \"p\"") { try m.mm.mmap(p.mmapRequest(length: 2 << 20)) }
    t.expectFault(m.mm.handleFault(pa + 3 * 4096, write: false), DAX_VM_FAULT_SIGBUS,
                  "pre-series PTE fault (validate_page_before_insert: refcount 0 is -EINVAL)")
    t.expect(k.drainReports().isEmpty, "the PTE path refuses quietly")
    k.mode &= ~DAX_MODE_LEGACY_PRE_SERIES.rawValue

    // What the series fixed.
    t.expectFault(m.mm.handleFault(a, write: true), DAX_VM_FAULT_NOPAGE, "the same PMD fault on the normal path")
    t.expect(k.drainReports().isEmpty, "no report on the normal path")
    t.expect(folio.refCount == rules.fsdaxIdleRefcount + rules.refsPerEntry && folio.mapcount == rules.mapcountPerEntry
             && folio.entireMapcount == 1 && m.mm.rssFilePages == Int64(hpagePmdNr),
             "after the fixed PMD fault: refcount \(folio.refCount), mapcount \(folio.mapcount), MM_FILEPAGES \(m.mm.rssFilePages)")
    t.expectFault(m.mm.handleFault(pa + 3 * 4096, write: false), DAX_VM_FAULT_NOPAGE, "the same PTE fault on the normal path")
    t.expectPortConsistent(k, mms: [m.mm], pgmaps: m.pgmaps, after: "the fixed faults")
    try t.must("munmap") { try m.mm.munmap(a, UInt64(pmdSize)); try m.mm.munmap(pa, 2 << 20) }

    try normalPathsNeverGetAtZero(t, rules: rules)
}

/// The normal paths that start from idle fs-dax folios (refcount 0) and from
/// device-dax ones (1), each followed by a look at the report ring: a
/// folio_get or try_grab_folio at 0 would be there.
private func normalPathsNeverGetAtZero(_ t: TestContext, rules: KernelRules) throws {
    let m = try t.must("an extent store on 16 MiB of fs-dax memory") { try FSDaxMachine() }
    let k = m.kernel
    let f = try t.must("create \"normal\"") { try m.fs.create(name: "normal", maxSize: 8 << 20) }
    try t.must("fallocate a 2M extent and 4 pages, size 8 MiB") {
        try f.allocate(pgoff: 0, pages: UInt64(hpagePmdNr))
        try f.allocate(pgoff: UInt64(hpagePmdNr), pages: 4)
        try f.extend(to: 8 << 20)
    }
    let dev = try t.must("a 2M device-dax device in the same kernel") {
        try DevDax(kernel: k, ranges: [PhysicalRange(start: 0x1_0000_0000, size: 4 << 20)], align: UInt64(pmdSize))
    }
    try t.must("probe") { try dev.probe() }
    let a = try t.must("mmap 4 MiB of the file") { try m.mm.mmap(f.mmapRequest(length: 4 << 20)) }
    let s = try t.must("mmap 2 MiB at page 1024 with MAP_SYNC") { try m.mm.mmap(f.mmapRequest(length: 2 << 20, pgoff: 1024, sync: true)) }
    let d = try t.must("dax_mmap 4 MiB of the device") { try m.mm.mmap(dev.mmapRequest(length: 4 << 20)) }
    let small = a + UInt64(pmdSize)
    var held: [Page] = []
    var pins: [Page] = []
    var a2: UInt64 = 0

    func fsRef(_ index: UInt64) -> Int32 { f.folio(at: index)?.refCount ?? -1 }
    let steps: [(String, () throws -> Bool)] = [
        ("PMD read fault on an idle 2M extent (folio_ref_inc, vmf_insert_folio_pmd, folio_put)", {
            m.mm.handleFault(a, write: false) & DAX_VM_FAULT_ERROR == 0 && fsRef(0) == 1 }),
        ("write upgrade of that PMD (wp_huge_pmd -> insert_pmd with write)", {
            m.mm.handleFault(a, write: true) & DAX_VM_FAULT_ERROR == 0 && fsRef(0) == 1 && leaf(m.mm, a)?.writable == true }),
        ("PTE read fault on an idle allocated page (vmf_insert_page_mkwrite)", {
            m.mm.handleFault(small, write: false) & DAX_VM_FAULT_ERROR == 0 && fsRef(512) == 1 }),
        ("PTE write fault on a hole (allocation, dax_associate_entry)", {
            m.mm.handleFault(small + 16 * 4096, write: true) == DAX_VM_FAULT_NOPAGE | DAX_VM_FAULT_MAJOR && fsRef(528) == 1 }),
        ("MAP_SYNC write fault on a hole (VM_FAULT_NEEDDSYNC, fsync, dax_insert_pfn_mkwrite)", {
            m.mm.handleFault(s, write: true) & DAX_VM_FAULT_ERROR == 0 && fsRef(1024) == 1 }),
        ("pin_user_pages on an allocated, unfaulted page (faultin_page, then try_grab_folio)", {
            pins = try m.mm.pinPages(small + 4096, count: 1, flags: [.write])
            return fsRef(513) == 1 + rules.pinCountingBias }),
        ("get_user_pages_fast on two mapped pages", {
            held = try m.mm.getPages(small, count: 2, flags: [], fast: true)
            return held.count == 2 && fsRef(512) == 2 }),
        ("unpin and put", {
            m.mm.unpin(pins); m.mm.put(held)
            return fsRef(512) == 1 && fsRef(513) == 1 }),
        ("munmap: every fs-dax folio back to 0 (free_zone_device_folio)", {
            try m.mm.munmap(a, 4 << 20); try m.mm.munmap(s, 2 << 20)
            return [0, 512, 513, 528, 1024].allSatisfy { fsRef($0) == 0 } }),
        ("refault of pages idle at 0", {
            a2 = try m.mm.mmap(f.mmapRequest(length: 4 << 20))
            return m.mm.handleFault(a2, write: true) & DAX_VM_FAULT_ERROR == 0
                && m.mm.handleFault(a2 + UInt64(pmdSize), write: true) & DAX_VM_FAULT_ERROR == 0 && fsRef(0) == 1 && fsRef(512) == 1 }),
        ("truncate to 2M (dax_break_layout, dax_delete_mapping_range), extend, refault", {
            try f.truncate(to: 2 << 20, timeoutNanos: 1_000_000_000)
            try f.extend(to: 8 << 20)
            return m.mm.handleFault(a2 + UInt64(pmdSize) + 4096, write: true) & DAX_VM_FAULT_ERROR == 0 && fsRef(513) == 1 }),
        ("device-dax PMD faults, a pin and its unpin", {
            let ok = m.mm.handleFault(d, write: false) == DAX_VM_FAULT_NOPAGE
                && m.mm.handleFault(d + UInt64(pmdSize), write: true) == DAX_VM_FAULT_NOPAGE
            let p = try m.mm.pinPages(d + 4096, count: 1, flags: [.write, .longterm])
            m.mm.unpin(p)
            return ok && p.count == 1 && p[0].folio.refCount == rules.devdaxIdleRefcount + rules.refsPerEntry }),
    ]
    for (what, step) in steps {
        let ok = try t.must(what) { try step() }
        t.expect(ok, "\(what): unexpected result or counters")
        let r = k.drainReports()
        t.expect(r.isEmpty, "\(what) reported:\n\(r.map(\.description).joined(separator: "\n"))")
    }
    try t.must("munmap") { try m.mm.munmap(a2, 4 << 20); try m.mm.munmap(d, 4 << 20) }
    t.expectPortConsistent(k, mms: [m.mm], pgmaps: m.pgmaps + [dev.pgmap!], after: "the normal paths")
}
