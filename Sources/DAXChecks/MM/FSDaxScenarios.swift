// fs/dax.c through the port and its extent store: layouts broken before
// truncate and hole punch (dax_break_layout, dax_layout_busy_page), and
// zero-page holes upgraded to a real block on write.

import CDaxMM
import DAXBase
import DAXCore
import Foundation
import MMCore
import MMTestSupport

/// Truncate and hole punch break layouts first (the series' patches 2 to 7:
/// dax_layout_busy_page_range unmaps, then reports a page whose refcount is
/// not explained by its mappings; dax_break_layout waits until it is idle,
/// woken by free_zone_device_folio, and only then deletes the entries and
/// lets the file system free the blocks). A file with a PMD-mapped 2M extent
/// and 16 PTE-mapped pages; one page pinned (FOLL_PIN):
///  - dax_layout_busy_page_range names the pinned page's head;
///  - truncate to 2M with a bounded wait is refused (EBUSY naming the pfn,
///    refcount 1024, pincount 0): the whole file is unmapped (ext4 and XFS
///    break the layout of the whole inode, dax_break_layout_inode: the 2M
///    extent below the cut loses its PMD too) but i_size, the entries and
///    the blocks stay;
///  - a truncate that waits sleeps on the page until the unpin's last put
///    wakes it, then completes: size 2M, every entry of the file deleted
///    (dax_break_layout deletes [0, LLONG_MAX] once nothing is busy), the
///    cut's 16 blocks free, the pinned page idle (refcount 0, mapping
///    NULL); the 2M extent below the cut faults its PMD back;
///  - hole punch over a pinned PMD folio likewise waits, then splits the
///    folio back to order 0 on the last disassociation (dax_folio_put) with
///    every page at refcount 0, and frees the 512 blocks.
func fsdaxBreakLayoutScenario(_ t: TestContext, rules: KernelRules = .kernel) throws {
    let m = try t.must("an extent store on 16 MiB of fs-dax memory") { try FSDaxMachine() }
    let k = m.kernel
    let f = try t.must("create \"t\"") { try m.fs.create(name: "t", maxSize: 4 << 20) }
    try t.must("fallocate a 2M extent and 16 pages") {
        try f.allocate(pgoff: 0, pages: UInt64(hpagePmdNr))
        try f.allocate(pgoff: UInt64(hpagePmdNr), pages: 16)
        try f.extend(to: 4 << 20)
    }
    let free0 = m.fs.freeBlocks
    let a = try t.must("mmap 4 MiB") { try m.mm.mmap(f.mmapRequest(length: 4 << 20)) }
    let cut = a + UInt64(pmdSize)
    t.expect(m.mm.handleFault(a, write: true) & DAX_VM_FAULT_ERROR == 0, "PMD write fault on the extent")
    for i in 0..<16 as Range<UInt64> {
        t.expect(m.mm.handleFault(cut + i * 4096, write: true) & DAX_VM_FAULT_ERROR == 0, "PTE write fault on page \(512 + i)")
    }
    let big = try t.require(f.folio(at: 0), "no block at page 0").head.folio
    let victim = try t.require(f.folio(at: 515), "no block at page 515")
    t.expect(big.order == pmdOrder && big.refCount == 1 && victim.refCount == 1, "one reference per mapping")
    t.expectEqual(f.nrpages, 512 + 16, "entries")
    t.expectEqual(m.mm.rssFilePages, 512 + 16, "MM_FILEPAGES")
    let pins = try t.must("pin_user_pages(FOLL_WRITE) on page 515") { try m.mm.pinPages(cut + 3 * 4096, count: 1, flags: [.write]) }
    t.expectEqual(victim.refCount, 1 + rules.pinCountingBias, "page 515 refcount after the pin")
    let victimPfn = k.withUnsafeRecord { pageToPfn($0, victim.head) }

    // dax_layout_busy_page_range finds it (and unmaps the range first).
    let busy = daxLayoutBusyPageRange(f.mapping, 512, 1023)
    t.expect(busy == victim.head, "dax_layout_busy_page_range returns the pinned page (got pfn \(busy.map { p in k.withUnsafeRecord { hex(pageToPfn($0, p)) } } ?? "none"))")
    t.expect(victim.mapcount == 0 && victim.refCount == rules.pinCountingBias, "the busy scan unmapped it: refcount \(victim.refCount), mapcount \(victim.mapcount)")
    t.expectEqual(m.mm.rssFilePages, 512, "MM_FILEPAGES after the busy scan (only the PMD is left)")

    // A bounded truncate: refused, nothing freed.
    do {
        try f.truncate(to: 2 << 20, timeoutNanos: 20_000_000)
        t.expect(false, "truncate returned while page 515 is pinned")
    } catch {
        t.expectEqual(error, FSError.busy(file: "t", pfn: victimPfn, refcount: rules.pinCountingBias, pincount: 0),
                      "truncate's refusal (dax_break_layout: EBUSY naming the busy page)")
    }
    t.expectEqual(f.size, 4 << 20, "i_size after the refused truncate")
    t.expectEqual(f.nrpages, 512 + 16, "entries after the refused truncate (dax_break_layout deletes only when nothing is busy)")
    t.expectEqual(m.fs.freeBlocks, free0, "no block freed by the refused truncate")
    t.expect(big.refCount == 0 && big.mapcount == 0 && leaf(m.mm, a) == nil && m.mm.rssFilePages == 0,
             "the whole file's layout was broken: the extent below the cut lost its PMD too (refcount \(big.refCount), mapcount \(big.mapcount))")
    t.expectPortConsistent(k, mms: [m.mm], pgmaps: m.pgmaps, ledger: [victimPfn: Int64(rules.pinCountingBias)], after: "the refused truncate")

    // A truncate that waits, then the unpin.
    let done = SharedBox<String?>(nil)
    let worker = CheckThread {
        do { try f.truncate(to: 2 << 20, timeoutNanos: 20_000_000_000); done.value = "ok" } catch { done.value = "\(error)" }
    }
    let asleep = waitUntilSleeping(k, on: UnsafeRawPointer(victim.raw), seconds: 10) { done.value != nil }
    t.expect(asleep && done.value == nil, "truncate waits on the pinned page (wait_var_event): \(done.value ?? "still waiting")")
    m.mm.unpin(pins)
    t.expectEqual(victim.refCount, 0, "the unpin's last put left page 515 idle (free_zone_device_folio wakes the waiter)")
    t.expect(worker.join(seconds: 30), "truncate did not finish after the unpin")
    t.expectEqual(done.value, "ok", "truncate after the unpin")
    t.expectEqual(f.size, 2 << 20, "i_size after the truncate")
    t.expectEqual(f.nrpages, 0, "entries after the truncate (dax_break_layout_inode deleted every entry of the file)")
    t.expectEqual(m.fs.freeBlocks, free0 + 16, "the cut range's 16 blocks are free")
    t.expect((512..<528).allSatisfy { f.block(at: UInt64($0)) == nil && f.entry(at: UInt64($0)) == 0 }, "no block or entry past the cut")
    t.expect(victim.refCount == 0 && victim.mapping == 0, "page 515 idle and unassociated: refcount \(victim.refCount), mapping \(hex(victim.mapping))")
    t.expect(big.refCount == 0 && big.mapcount == 0 && m.mm.rssFilePages == 0, "the 2M extent unmapped and idle")
    t.expectFault(m.mm.handleFault(cut, write: false), DAX_VM_FAULT_SIGBUS, "fault past the new EOF")
    t.expectPortConsistent(k, mms: [m.mm], pgmaps: m.pgmaps, after: "the truncate")
    t.expect(m.mm.handleFault(a, write: true) & DAX_VM_FAULT_ERROR == 0, "PMD write fault on the extent again")
    let big2 = try t.require(f.folio(at: 0), "no block at page 0 after the truncate").head.folio
    t.expect(big2.order == pmdOrder && big2.refCount == 1 && big2.mapcount == 1 && m.mm.rssFilePages == 512,
             "the 2M extent mapped by a PMD again: order \(big2.order), refcount \(big2.refCount)")

    // Hole punch over the PMD folio while it is pinned.
    let pmdPins = try t.must("pin_user_pages of 2 pages of the PMD folio") { try m.mm.pinPages(a + 8 * 4096, count: 2, flags: [.write]) }
    t.expect(big2.refCount == 1 + 2 && big2.pincount == 2, "the PMD folio pinned twice: refcount \(big2.refCount), pincount \(big2.pincount)")
    let bigPfn = k.withUnsafeRecord { pageToPfn($0, big2.head) }
    t.expectErrno("hole punch over the pinned PMD folio with a bounded wait", EBUSY) {
        try f.punchHole(pgoff: 0, pages: UInt64(hpagePmdNr), timeoutNanos: 20_000_000)
    }
    t.expect(big2.order == pmdOrder && f.nrpages == 512 && m.fs.freeBlocks == free0 + 16, "nothing punched while pinned")
    t.expect(leaf(m.mm, a) == nil && m.mm.rssFilePages == 0, "but the PMD is unmapped")
    t.expectPortConsistent(k, mms: [m.mm], pgmaps: m.pgmaps, ledger: [bigPfn: 2], after: "the refused hole punch")
    let punched = SharedBox<String?>(nil)
    let puncher = CheckThread {
        do { try f.punchHole(pgoff: 0, pages: UInt64(hpagePmdNr), timeoutNanos: 20_000_000_000); punched.value = "ok" } catch { punched.value = "\(error)" }
    }
    let waiting = waitUntilSleeping(k, on: UnsafeRawPointer(big2.raw), seconds: 10) { punched.value != nil }
    t.expect(waiting && punched.value == nil, "hole punch waits on the pinned folio: \(punched.value ?? "still waiting")")
    m.mm.unpin(pmdPins)
    t.expect(puncher.join(seconds: 30), "hole punch did not finish after the unpin")
    t.expectEqual(punched.value, "ok", "hole punch after the unpin")
    let head = big2.head
    t.expect(!head.isHead && (0..<hpagePmdNr).allSatisfy { head.advanced(by: $0).refcountRaw == 0 && !head.advanced(by: $0).isTail },
             "dax_folio_put split the folio back to 512 idle order-0 pages")
    t.expectEqual(f.nrpages, 0, "no entry left")
    t.expectEqual(m.fs.freeBlocks, free0 + 16 + Int64(hpagePmdNr), "every block free")
    try t.must("munmap") { try m.mm.munmap(a, 4 << 20) }
    t.expectPortConsistent(k, mms: [m.mm], pgmaps: m.pgmaps, after: "the hole punch")
}

/// Zero-page holes (fs/dax.c dax_load_hole) and their upgrade on write:
///  - a read fault on a hole maps the shared zero page with a special,
///    read-only PTE: a zero entry in the file's index, no block, and no
///    refcount, mapcount, rss or NR_FILE_MAPPED change (the zero page's own
///    refcount neither); a PMD-sized read hole falls back to this PTE path
///    (the port has no huge zero folio);
///  - the write fault on it goes wp_pfn_shared -> ->pfn_mkwrite -> the PTE
///    fault with write: a block is allocated (VM_FAULT_MAJOR),
///    dax_insert_entry unmaps the zero PTE and swaps in a real entry
///    associated with the file, and a normal, writable, dirty PTE maps the
///    new block with refcount 1 and mapcount 1 (folio_ref_inc, insert,
///    folio_put);
///  - truncate to 0 frees the block and leaves the folio idle.
func fsdaxZeroPageHoleScenario(_ t: TestContext, rules: KernelRules = .kernel) throws {
    let m = try t.must("an extent store on 16 MiB of fs-dax memory") { try FSDaxMachine() }
    let k = m.kernel
    let f = try t.must("create \"h\"") { try m.fs.create(name: "h", maxSize: 2 << 20) }
    try t.must("i_size 2 MiB, all holes") { try f.extend(to: 2 << 20) }
    let a = try t.must("mmap 2 MiB") { try m.mm.mmap(f.mmapRequest(length: 2 << 20)) }
    let zero = pfnToPage(k.ref, 0).folio
    let zeroRef = zero.refCount
    let free0 = m.fs.freeBlocks
    let stats0 = (k.stat(DAX_NR_FILE_MAPPED), m.mm.rssFilePages)
    let at = a + 7 * 4096

    t.expectFault(callFault(m.mm, a, order: pmdOrder, write: false), DAX_VM_FAULT_FALLBACK, "PMD read fault on a 2M hole (no huge zero folio)")
    t.expectFault(m.mm.handleFault(at, write: false), DAX_VM_FAULT_NOPAGE, "read fault on a hole (dax_load_hole)")
    let z = try t.require(leaf(m.mm, at), "the read fault mapped nothing")
    t.expect(z.level == .pte && z.pfn == 0 && z.special && !z.writable, "a special, read-only PTE of the zero page (entry \(hex(z.entry)))")
    t.expect(DaxEntry.isZero(f.entry(at: 7)), "a zero entry in the index (entry \(hex(f.entry(at: 7))))")
    t.expectEqual(f.block(at: 7), nil, "no block allocated for a read hole")
    t.expectEqual(m.fs.freeBlocks, free0, "free blocks after the read")
    t.expectEqual(zero.refCount, zeroRef, "the zero page's refcount (special entries take none)")
    t.expect(k.stat(DAX_NR_FILE_MAPPED) == stats0.0 && m.mm.rssFilePages == stats0.1, "no rss or NR_FILE_MAPPED for the zero page")
    t.expectPortConsistent(k, mms: [m.mm], pgmaps: m.pgmaps, after: "the hole read")

    let ret = m.mm.handleFault(at, write: true)
    t.expect(ret & DAX_VM_FAULT_ERROR == 0 && ret & DAX_VM_FAULT_MAJOR != 0, "write fault on the zero PTE: \(vmFaultName(ret)) (a new block is a major fault)")
    let page = try t.require(f.folio(at: 7), "no block allocated by the write")
    t.expectEqual(m.fs.freeBlocks, free0 - 1, "one block allocated")
    t.expect(DaxEntry.isReal(f.entry(at: 7)) && DaxEntry.pfn(f.entry(at: 7)) == k.withUnsafeRecord { pageToPfn($0, page.head) },
             "the zero entry replaced by the block's entry (dax_insert_entry)")
    let w = try t.require(leaf(m.mm, at), "nothing mapped after the write")
    t.expect(w.level == .pte && !w.special && w.writable && w.dirty && w.pfn != 0, "a normal, writable, dirty PTE of the block (entry \(hex(w.entry)))")
    t.expectCounters(m.counters(page), Counters(k, page, m.mm).with {
        $0.refcount = rules.fsdaxIdleRefcount + rules.refsPerEntry
        $0.mapcount = rules.mapcountPerEntry
        $0.rss = stats0.1 + 1
        $0.fileMapped = stats0.0 + 1
    }, "the new block after the write upgrade")
    t.expect(page.mapping == f.file.mapping && page.index == 7, "dax_associate_entry: mapping and index of the new block")
    t.expectEqual(zero.refCount, zeroRef, "the zero page's refcount after the upgrade")
    t.expectPortConsistent(k, mms: [m.mm], pgmaps: m.pgmaps, after: "the write upgrade")

    try t.must("truncate to 0") { try f.truncate(to: 0, timeoutNanos: 1_000_000_000) }
    t.expect(page.refCount == 0 && page.mapcount == 0 && m.mm.rssFilePages == 0, "the block's folio is idle after truncate")
    t.expectEqual(m.fs.freeBlocks, free0, "the block is free again")
    t.expectEqual(f.nrpages, 0, "no entry left")
    try t.must("munmap") { try m.mm.munmap(a, 2 << 20) }
    t.expectPortConsistent(k, mms: [m.mm], pgmaps: m.pgmaps, after: "truncate")
}
