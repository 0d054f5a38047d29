// The mm suite's copy-on-write scenarios (mm/memory.c do_wp_page,
// wp_page_reuse, wp_page_copy, do_cow_fault; mm/huge_memory.c
// do_huge_pmd_wp_page, copy_huge_pmd; kernel/fork.c dup_mmap with
// mm/memory.c copy_page_range; mm/gup.c gup_must_unshare,
// can_follow_write_pte; fs/dax.c dax_fault_cow_page), as the kernel has
// them since 6.15. They mirror what tools/testing/selftests/mm/cow.c
// checks where it applies (a write after fork copies in the writer and the
// other process keeps its bytes; a R/O pin of a shared page unshares
// first; a pinned page is copied at fork), and assert the counters each
// rule moves: refcount, mapcount, PageAnonExclusive, MM_ANONPAGES,
// MM_FILEPAGES, NR_ANON_MAPPED and the allocator's pages, then the port's
// invariants.

import CDaxMM
import DAXBase
import DAXCore
import Foundation
import MMCore
import MMTestSupport

#if canImport(Glibc)
import Glibc
#endif

/// The bytes of `pfn` through the port's direct map.
private func pageBytes(_ k: KernelRef, _ pfn: UInt64) -> UnsafeMutablePointer<UInt8>? {
    pfnAddress(k, pfn)?.assumingMemoryBound(to: UInt8.self)
}

/// Write-protects the present PTE at `addr` (as a fork or an mprotect
/// left it) under mmap_lock and the PTE lock; returns the old PTE.
@discardableResult
private func wrprotectPte(_ mm: MM, _ k: KernelRef, _ addr: UInt64) -> PTEntry {
    mm.lockWrite()
    defer { mm.unlockWrite() }
    return mm.withUnsafeRecord { ref -> PTEntry in
        let w = walk(ref, addr)
        guard let ptep = w.pte, let pmd = w.pmd else { return 0 }
        let ptl = pteLockptr(k, dax_load_u64(pmd))
        dax_spin_lock(ptl)
        defer { dax_spin_unlock(ptl) }
        let old = dax_load_u64(ptep)
        setPteAt(ref, addr, ptep, entryWrprotect(old))
        return old
    }
}

/// The PTE of `addr` in any mm.
private func pteOf(_ mm: MM, _ a: UInt64) -> PTEntry {
    mm.lockRead(); defer { mm.unlockRead() }
    return mm.withUnsafeRecord { walk($0, a).pte.map { dax_load_u64($0) } ?? 0 }
}

private func pmdOf(_ mm: MM, _ a: UInt64) -> PTEntry {
    mm.lockRead(); defer { mm.unlockRead() }
    return mm.withUnsafeRecord { walk($0, a).pmd.map { dax_load_u64($0) } ?? 0 }
}

extension TestContext {
    /// The port's invariants over `mms` and no debug report. `complete`
    /// says `mms` and `pgmaps` are every MM and pgmap of `kernel` (rule 19
    /// checked too), as expectAnonConsistent does for an AnonMachine.
    @discardableResult
    func expectCowConsistent(_ kernel: Kernel, mms: [MM], pgmaps: [DevPagemap], complete: Bool = true,
                             after what: String) -> Bool {
        let v = invariants(mms: mms, pgmaps: pgmaps, ledger: nil, complete: complete)
        let problems = v.map(\.description) + kernel.drainReports().map { "debug report:\n\($0)" }
        return expect(problems.isEmpty, "port after \(what): \(problems.joined(separator: "\n"))")
    }
}

// MARK: mm-cow

/// do_wp_page on private anonymous memory:
///  - the zero page (a read, then a write): wp_page_copy maps a new zeroed
///    exclusive folio, writable and dirty (MM_ANONPAGES and NR_ANON_MAPPED
///    +1, one page from the allocator), MMU_NOTIFY_CLEAR over the page;
///  - the huge zero PMD: do_huge_pmd_wp_page splits it into zero-page PTEs
///    and the PTE fault copies only the written page;
///  - an exclusive page write-protected (PageAnonExclusive): reused in
///    place (wp_page_reuse: same pfn, no allocation, no range);
///  - a page shared with a forked child (cow.c's test_cow_in_parent /
///    child): the writer gets a copy with the old bytes, the other mm keeps
///    its page and its bytes; the last mapper reuses.
func cowScenario(_ t: TestContext) throws {
    let m = try t.must("a port kernel with ordinary memory") { try AnonMachine() }
    let k = m.k
    let rec = NotifierRecorder()
    try t.must("mmu_notifier_register") { try rec.register(m.mm) }
    let a = try t.must("mmap 64 KiB MAP_PRIVATE|MAP_ANONYMOUS") { try m.map(64 << 10) }
    let base = m.totals()

    // The zero page, then a write.
    t.expectFault(m.mm.handleFault(a, write: false), 0, "read fault")
    t.expect(isZeroPfn(entryPfn(m.pte(a))) && entrySpecial(m.pte(a)), "the read mapped the zero page: \(hex(m.pte(a)))")
    _ = rec.take()
    t.expectFault(m.mm.handleFault(a + 0x40, write: true), 0, "write fault on the zero-page PTE")
    let e = m.pte(a)
    t.expect(entryPresent(e) && entryWrite(e) && entryDirty(e) && !entrySpecial(e) && !isZeroPfn(entryPfn(e)),
             "wp_page_copy: maybe_mkwrite(pte_mkdirty) of a new page: \(hex(e))")
    let f0 = try t.require(m.folio(at: a), "the copy's folio")
    t.expectFolio(f0, AnonFolioState(refcount: 1, mapcount: 1, exclusivePages: 1), "folio_add_new_anon_rmap(RMAP_EXCLUSIVE) of the copy")
    t.expectTotals(m, base.plus(rss: 1, mapped: 1, allocated: 1), "a zero-page copy: MM_ANONPAGES +1, NR_ANON_MAPPED +1, one page")
    t.expect(pageBytes(k, entryPfn(e)).map { p in (0..<pageSize).allSatisfy { p[$0] == 0 } } ?? false,
             "the copy of the zero page is zeroed")
    t.expectEvents(rec, [NotifierEvent(.clear, a, a + 4096)], "wp_page_copy's MMU_NOTIFY_CLEAR over the page")
    t.expectAnonConsistent(m, after: "the zero-page copy")

    // The huge zero PMD.
    let h = try t.must("mmap 2 MiB private anonymous, MADV_HUGEPAGE") { try m.map(UInt64(pmdSize), hugepage: true) }
    t.expectFault(m.mm.handleFault(h, write: false), 0, "read fault on a none PMD")
    t.expect(isHugeZeroPfn(k, entryPfn(m.pmd(h))), "the huge zero folio is mapped: \(hex(m.pmd(h)))")
    let beforeHz = m.totals()
    t.expectFault(m.mm.handleFault(h + 2 * 4096, write: true), 0, "write to the huge zero PMD")
    let hp = m.pmd(h)
    t.expect(entryPresent(hp) && !entryLeaf(hp), "do_huge_pmd_wp_page split the huge zero PMD: \(hex(hp))")
    let w2 = m.pte(h + 2 * 4096)
    t.expect(entryWrite(w2) && !isZeroPfn(entryPfn(w2)), "the written page is a new writable page: \(hex(w2))")
    let zeros = (0..<hpagePmdNr).filter { $0 != 2 }.filter {
        let z = m.pte(h + UInt64($0) * 4096)
        return entryPresent(z) && isZeroPfn(entryPfn(z)) && !entryWrite(z)
    }.count
    t.expectEqual(zeros, hpagePmdNr - 1, "the other 511 PTEs map the zero page read-only")
    t.expectTotals(m, beforeHz.plus(rss: 1, mapped: 1, allocated: 1), "the split then copy: one page, NR_ANON_THPS unchanged")
    t.expectAnonConsistent(m, after: "the huge zero split and copy")

    // An exclusive page write-protected: reused.
    let r = a + 4096
    t.expectFault(m.mm.handleFault(r, write: true), 0, "write fault on a none PTE")
    let rf = try t.require(m.folio(at: r), "the folio")
    pageBytes(k, pageToPfn(k, rf.head))?[3] = 0x5a
    wrprotectPte(m.mm, k, r)
    t.expect(!entryWrite(m.pte(r)) && rf.head.isAnonExclusive, "write-protected, still PageAnonExclusive")
    let beforeReuse = m.totals()
    _ = rec.take()
    t.expectFault(m.mm.handleFault(r, write: true), 0, "write to the write-protected exclusive page")
    t.expect(entryWrite(m.pte(r)) && entryPfn(m.pte(r)) == pageToPfn(k, rf.head), "wp_page_reuse: the same page, writable")
    t.expectFolio(rf, AnonFolioState(refcount: 1, mapcount: 1, exclusivePages: 1), "the reused folio")
    t.expectTotals(m, beforeReuse, "reuse allocates nothing and moves no counter")
    t.expectEvents(rec, [], "wp_page_reuse raises no range")
    t.expectEqual(pageBytes(k, pageToPfn(k, rf.head))?[3], 0x5a, "the bytes stay in place")

    // Shared with a child after fork.
    let s = a + 2 * 4096
    t.expectFault(m.mm.handleFault(s, write: true), 0, "write fault")
    let sf = try t.require(m.folio(at: s), "the folio to share")
    let spfn = pageToPfn(k, sf.head)
    pageBytes(k, spfn)?[0] = 0x11
    var child: MM? = try t.must("fork") { try m.mm.fork() }
    do {
    let c = child!
    t.expectFolio(sf, AnonFolioState(refcount: 2, mapcount: 2, exclusivePages: 0), "after fork: shared, not exclusive")
    let beforeChild = m.totals()
    t.expectFault(c.handleFault(s, write: true), 0, "the child's write")
    let ce = pteOf(c, s)
    t.expect(entryWrite(ce) && entryPfn(ce) != spfn, "the child writes into a copy: \(hex(ce))")
    t.expectEqual(pageBytes(k, entryPfn(ce))?[0], 0x11, "the child's copy has the parent's bytes")
    pageBytes(k, entryPfn(ce))?[0] = 0xcc
    t.expectEqual(pageBytes(k, spfn)?[0], 0x11, "the parent keeps its bytes after the child's write")
    t.expectEqual(entryPfn(m.pte(s)), spfn, "the parent keeps its page")
    t.expectFolio(sf, AnonFolioState(refcount: 1, mapcount: 1, exclusivePages: 0), "the old page: the child's mapping dropped")
    t.expectEqual(m.allocated, beforeChild.allocated + 1, "one page allocated for the child's copy")
    t.expectFault(m.mm.handleFault(s, write: true), 0, "the parent's write")
    t.expect(entryPfn(m.pte(s)) == spfn && entryWrite(m.pte(s)) && sf.head.isAnonExclusive,
             "wp_can_reuse_anon_folio: the last mapper reuses and sets PageAnonExclusive")
    t.expectEqual(m.allocated, beforeChild.allocated + 1, "the reuse allocates nothing")
    // The parent writes a page the child still shares: the parent copies.
    let q = a
    let qpfn = entryPfn(m.pte(q))
    t.expectFault(m.mm.handleFault(q, write: true), 0, "the parent's write to a page the child shares")
    t.expect(entryPfn(m.pte(q)) != qpfn && entryPfn(pteOf(c, q)) == qpfn, "the parent copied, the child keeps the page")
    t.expectAnonConsistent(m, mms: [m.mm, c], after: "the writes after fork")
    }
    child = nil
    t.expectEqual(m.mm.rssAnonPages, beforeReuse.rssAnon + 1, "the parent's MM_ANONPAGES after the child's exit")
    t.expectAnonConsistent(m, after: "the child's exit")
    rec.unregister()
    try t.must("munmap") { try m.mm.munmap(a, 64 << 10); try m.mm.munmap(h, UInt64(pmdSize)) }
    t.expectTotals(m, base, "everything freed")
}

// MARK: mm-fork

/// dup_mmap / copy_page_range:
///  - anon pages are shared read-only in both mms with PageAnonExclusive
///    cleared, refcount and mapcount +1, NR_ANON_MAPPED unchanged,
///    MM_ANONPAGES in both, nothing allocated, MMU_NOTIFY_PROTECTION_PAGE
///    over the VMA in the parent;
///  - a pinned page is copied for the child (copy_present_page), so the
///    pin stays on an exclusive page;
///  - a THP is shared whole (copy_huge_pmd); a pinned THP is split and
///    copied page by page;
///  - shared device-dax and fs-dax VMAs are not copied (vma_needs_copy):
///    the child refaults;
///  - a device-exclusive entry is restored first (copy_nonpresent_pte ->
///    try_restore_exclusive_pte), then shared;
///  - the child's exit gives everything back.
func forkScenario(_ t: TestContext) throws {
    let m = try t.must("a port kernel with ordinary memory") { try AnonMachine() }
    let k = m.k
    let len: UInt64 = 64 << 10
    let a = try t.must("mmap 64 KiB MAP_PRIVATE|MAP_ANONYMOUS") { try m.map(len) }
    for i in 0..<4 { _ = m.mm.handleFault(a + UInt64(i) * 4096, write: true) }
    let folios = (0..<4).compactMap { m.folio(at: a + UInt64($0) * 4096) }
    try t.require(folios.count == 4, "four written pages")
    for (i, f) in folios.enumerated() { pageBytes(k, pageToPfn(k, f.head))?[0] = UInt8(0x20 + i) }
    // A pinned page.
    let pinAddr = a + 8 * 4096
    t.expectFault(m.mm.handleFault(pinAddr, write: true), 0, "write fault of the page to pin")
    let pinFolio = try t.require(m.folio(at: pinAddr), "the page to pin")
    pageBytes(k, pageToPfn(k, pinFolio.head))?[1] = 0x77
    let pins = try t.must("pin_user_pages(FOLL_WRITE|FOLL_LONGTERM)") { try m.mm.pinPages(pinAddr, count: 1, flags: [.write, .longterm]) }
    // A device-exclusive entry.
    let dxAddr = a + 10 * 4096
    t.expectFault(m.mm.handleFault(dxAddr, write: true), 0, "write fault of the page to make device-exclusive")
    let dxFolio = try t.require(m.folio(at: dxAddr), "the device-exclusive page")
    let dx = try t.must("make_device_exclusive") { try m.mm.makeDeviceExclusive(dxAddr, owner: UnsafeMutableRawPointer(bitPattern: 0xd00d)) }
    m.mm.releaseDeviceExclusive(dx)
    t.expect(isSwapPte(m.pte(dxAddr)), "a device-exclusive entry before fork")
    // A THP and a pinned THP.
    let th = try t.must("mmap 4 MiB private anonymous, MADV_HUGEPAGE") { try m.map(UInt64(2 * pmdSize), hugepage: true) }
    t.expectFault(m.mm.handleFault(th, write: true), 0, "THP write fault")
    t.expectFault(m.mm.handleFault(th + UInt64(pmdSize), write: true), 0, "second THP write fault")
    let thp = try t.require(m.folio(at: th), "the THP")
    let pthp = try t.require(m.folio(at: th + UInt64(pmdSize)), "the THP to pin")
    try t.require(thp.order == pmdOrder && pthp.order == pmdOrder, "two PMD THPs")
    let thpPins = try t.must("pin one page of the second THP") { try m.mm.pinPages(th + UInt64(pmdSize), count: 1, flags: [.write, .longterm]) }
    // Shared device-dax and fs-dax VMAs in the same mm.
    let dev = try t.must("a 2M device-dax instance") {
        let d = try DevDax(kernel: m.kernel, ranges: [PhysicalRange(start: 0x40_0000_0000, size: 8 << 20)], align: UInt64(pmdSize))
        try d.probe()
        return d
    }
    let da = try t.must("mmap the device-dax device MAP_SHARED") { try m.mm.mmap(dev.mmapRequest(length: UInt64(pmdSize), pgoff: 0, prot: [.read, .write])) }
    t.expectFault(m.mm.handleFault(da, write: true) & ~DAX_VM_FAULT_NOPAGE, 0, "device-dax write fault")
    let fs = try t.must("an extent store on 8 MiB of fs-dax memory") { try DaxFS(kernel: m.kernel, start: 0x2_0000_0000, size: 8 << 20) }
    let file = try t.must("create \"f\"") { try fs.create(name: "f", maxSize: 1 << 20) }
    try t.must("allocate 16 blocks") { try file.allocate(pgoff: 0, pages: 16) }
    let fa = try t.must("mmap the file MAP_SHARED") { try m.mm.mmap(file.mmapRequest(length: 64 << 10)) }
    t.expect(m.mm.handleFault(fa, write: true) & DAX_VM_FAULT_ERROR == 0, "fs-dax write fault")
    let devFolio = try t.require(leaf(m.mm, da).map { pfnToPage(k, $0.pfn).folio }, "the device-dax folio")
    let fileFolio = try t.require(file.folio(at: 0), "the fs-dax folio")
    let devRef = devFolio.refCount, fileRef = fileFolio.refCount
    t.expectAnonConsistent(m, pgmaps: [dev.pgmap!, fs.pgmap], after: "the setup")

    let rec = NotifierRecorder()
    try t.must("mmu_notifier_register on the parent") { try rec.register(m.mm) }
    let before = m.totals()
    let parentRss = m.mm.rssAnonPages
    let pinRef = pinFolio.refCount
    var child: MM? = try t.must("fork") { try m.mm.fork() }
    do {
    let c = child!
    let (events, balanced) = rec.take()
    rec.unregister()
    t.expect(events.contains(NotifierEvent(.protectionPage, a, a + len)) && balanced,
             "copy_page_range: MMU_NOTIFY_PROTECTION_PAGE over the COW VMA in the parent: \(events)")
    t.expect(!events.contains { $0.start == da || $0.start == fa }, "no range for the VMAs not copied: \(events)")

    // Shared anon pages.
    for (i, f) in folios.enumerated() {
        let addr = a + UInt64(i) * 4096
        let pe = m.pte(addr), ce = pteOf(c, addr)
        t.expect(entryPfn(pe) == entryPfn(ce) && !entryWrite(pe) && !entryWrite(ce),
                 "page \(i): the same page read-only in both (wrprotect in the parent): parent \(hex(pe)), child \(hex(ce))")
        t.expectFolio(f, AnonFolioState(refcount: 2, mapcount: 2, exclusivePages: 0),
                      "page \(i): folio_try_dup_anon_rmap_pte (AnonExclusive cleared), folio_get")
    }
    // The pinned page was copied for the child.
    let cpin = pteOf(c, pinAddr)
    t.expect(entryPfn(cpin) != pageToPfn(k, pinFolio.head) && entryWrite(cpin),
             "copy_present_page: the child gets a writable copy of the pinned page: \(hex(cpin))")
    t.expectEqual(pageBytes(k, entryPfn(cpin))?[1], 0x77, "the child's copy of the pinned page has its bytes")
    t.expect(entryWrite(m.pte(pinAddr)) && pinFolio.head.isAnonExclusive && pinFolio.refCount == pinRef && pinFolio.mapcount == 1,
             "the pinned page stays writable and exclusive in the parent, refcount and mapcount unchanged")
    // The device-exclusive entry was restored, then shared.
    let dpe = m.pte(dxAddr), dce = pteOf(c, dxAddr)
    t.expect(entryPresent(dpe) && entryPresent(dce) && entryPfn(dpe) == pageToPfn(k, dxFolio.head) && entryPfn(dce) == entryPfn(dpe),
             "try_restore_exclusive_pte then copy_present_ptes: present in both: parent \(hex(dpe)), child \(hex(dce))")
    t.expectFolio(dxFolio, AnonFolioState(refcount: 2, mapcount: 2, exclusivePages: 0), "the restored page, shared")
    // THPs.
    t.expect(entryLeaf(m.pmd(th)) && entryLeaf(pmdOf(c, th)) && !entryWrite(m.pmd(th)) && !entryWrite(pmdOf(c, th)),
             "copy_huge_pmd: the THP is PMD-mapped read-only in both")
    t.expectFolio(thp, AnonFolioState(refcount: 2, mapcount: 2, entireMapcount: 2, exclusivePages: 0), "the shared THP")
    let pt = th + UInt64(pmdSize)
    t.expect(!entryLeaf(m.pmd(pt)) && entryPresent(m.pmd(pt)), "the pinned THP's PMD is split in the parent")
    let copied = (0..<hpagePmdNr).filter { entryPfn(pteOf(c, pt + UInt64($0) * 4096)) != pageToPfn(k, pthp.page($0)) }.count
    t.expectEqual(copied, hpagePmdNr, "every page of the pinned THP is a copy in the child")
    t.expectEqual(pthp.mapcount, Int32(hpagePmdNr), "the pinned THP: 512 PTE mappings in the parent only")
    // Shared DAX VMAs not copied.
    t.expect(leaf(c, da) == nil && leaf(c, fa) == nil, "vma_needs_copy: shared device-dax and fs-dax VMAs are not copied")
    t.expect(devFolio.refCount == devRef && fileFolio.refCount == fileRef, "the DAX folios' references unchanged")
    // Counters.
    let nr = Int64(hpagePmdNr)
    t.expectEqual(m.mm.rssAnonPages, parentRss, "the parent's MM_ANONPAGES")
    t.expectEqual(c.rssAnonPages, parentRss, "the child's MM_ANONPAGES: every anon page of the parent")
    t.expectEqual(m.anonMapped, before.anonMapped + 1 + nr, "NR_ANON_MAPPED +1 (the pinned page's copy) +512 (the pinned THP's copies), unchanged for the shared pages")
    t.expectEqual(m.allocated, before.allocated + 1 + nr, "pages allocated by fork: the copies only")
    t.expectAnonConsistent(m, mms: [m.mm, c], pgmaps: [dev.pgmap!, fs.pgmap], ledger: nil, after: "fork")

    // The child refaults the DAX VMAs itself.
    t.expectFault(c.handleFault(da, write: false) & ~DAX_VM_FAULT_NOPAGE, 0, "the child's device-dax fault")
    t.expect(leaf(c, da) != nil, "the child maps the device after its own fault")

    // Writes in both, then the child's exit.
    t.expectFault(c.handleFault(a, write: true), 0, "the child writes page 0")
    t.expectFault(m.mm.handleFault(a + 4096, write: true), 0, "the parent writes page 1")
    t.expectEqual(pageBytes(k, entryPfn(pteOf(c, a)))?[0], 0x20, "the child's copy of page 0")
    t.expectEqual(pageBytes(k, entryPfn(m.pte(a + 4096)))?[0], 0x21, "the parent's copy of page 1")
    t.expectAnonConsistent(m, mms: [m.mm, c], pgmaps: [dev.pgmap!, fs.pgmap], ledger: nil, after: "writes after fork")
    }
    child = nil
    t.expectEqual(m.mm.rssAnonPages, parentRss, "the parent's MM_ANONPAGES after the child's exit")
    t.expectEqual(m.allocated, before.allocated, "the child's copies freed, and the old page 1 that only the child still mapped (the parent's copy of it replaces it)")
    t.expectFolio(thp, AnonFolioState(refcount: 1, mapcount: 1, entireMapcount: 1, exclusivePages: 0), "the THP after the child's exit")
    t.expect(devFolio.refCount == devRef, "the device-dax folio's reference back")
    m.mm.unpin(pins)
    m.mm.unpin(thpPins)
    t.expectAnonConsistent(m, pgmaps: [dev.pgmap!, fs.pgmap], after: "the child's exit")
    try t.must("munmap") {
        try m.mm.munmap(a, len)
        try m.mm.munmap(th, UInt64(2 * pmdSize))
        try m.mm.munmap(da, UInt64(pmdSize))
        try m.mm.munmap(fa, 64 << 10)
    }
    t.expectTotals(m, AnonTotals(rssAnon: 0, rssFile: 0, anonMapped: 0, anonThps: 0, allocated: 0), "everything freed")
}

// MARK: mm-gup-unshare

/// GUP on shared anonymous pages (cow.c's test_ro_pin_on_shared and
/// test_ro_fast_pin_on_shared, gup_longterm's R/O cases):
///  - gup_must_unshare: a R/O FOLL_PIN of a page shared with a child faults
///    with FAULT_FLAG_UNSHARE first: the parent's page becomes an exclusive
///    copy, still read-only, and that copy is pinned; the child keeps the
///    old page; FOLL_GET takes the shared page as it is;
///  - GUP-fast refuses the shared page (the slow path unshares), so the
///    pin lands on an exclusive page either way;
///  - can_follow_write_pte: FOLL_WRITE|FOLL_FORCE writes through a
///    read-only private mapping (a COW of the zero page, left read-only),
///    without FOLL_FORCE -EFAULT;
///  - FOLL_WRITE on a read-only PTE of a shared page copies it (do_wp_page).
func gupUnshareScenario(_ t: TestContext) throws {
    let m = try t.must("a port kernel with ordinary memory") { try AnonMachine() }
    let k = m.k
    let a = try t.must("mmap 64 KiB MAP_PRIVATE|MAP_ANONYMOUS") { try m.map(64 << 10) }
    for i in 0..<4 { _ = m.mm.handleFault(a + UInt64(i) * 4096, write: true) }
    let pfns = (0..<4).map { entryPfn(m.pte(a + UInt64($0) * 4096)) }
    for (i, p) in pfns.enumerated() { pageBytes(k, p)?[9] = UInt8(0x90 + i) }
    let c = try t.must("fork") { try m.mm.fork() }
    let alloc0 = m.allocated

    // FOLL_GET: no unshare.
    let got = try t.must("get_user_pages (R/O FOLL_GET)") { try m.mm.getPages(a, count: 1, flags: []) }
    t.expectEqual(got.map { pageToPfn(k, $0) }, [pfns[0]], "FOLL_GET takes the shared page")
    m.mm.put(got)
    t.expectEqual(m.allocated, alloc0, "FOLL_GET allocates nothing")

    // R/O FOLL_PIN, slow and fast.
    let acq0 = m.kernel.stat(DAX_NR_FOLL_PIN_ACQUIRED), rel0 = m.kernel.stat(DAX_NR_FOLL_PIN_RELEASED)
    for (i, fast) in [false, true].enumerated() {
        let addr = a + UInt64(i) * 4096
        let old = pfnToPage(k, pfns[i]).folio
        let what = fast ? "pin_user_pages_fast" : "pin_user_pages"
        let pinned = try t.must("\(what) (R/O FOLL_PIN) of a shared page") { try m.mm.pinPages(addr, count: 1, flags: [], fast: fast) }
        let np = pageToPfn(k, pinned[0])
        let e = m.pte(addr)
        t.expect(np != pfns[i] && entryPfn(e) == np && !entryWrite(e),
                 "\(what): gup_must_unshare -> FAULT_FLAG_UNSHARE: an exclusive copy, still read-only, is pinned: \(hex(e))\(fast ? " (GUP-fast refused the shared page, the slow path unshared)" : "")")
        t.expect(pinned[0].isAnonExclusive && pinned[0].folio.maybeDmaPinned, "\(what): the pinned page is PageAnonExclusive and pinned")
        t.expectEqual(pageBytes(k, np)?[9], UInt8(0x90 + i), "\(what): the copy has the page's bytes")
        t.expect(old.refCount == 1 && old.mapcount == 1 && entryPfn(pteOf(c, addr)) == pfns[i],
                 "\(what): the child keeps the old page (refcount \(old.refCount), mapcount \(old.mapcount))")
        // cow.c: the pinned page sees what the parent writes later (it
        // is the one the parent maps).
        t.expectFault(m.mm.handleFault(addr, write: true), 0, "\(what): the parent's write after the pin")
        t.expectEqual(entryPfn(m.pte(addr)), np, "\(what): the parent's write reuses the pinned exclusive page (no second copy)")
        m.mm.unpin(pinned)
    }
    // GUP-fast grabbed the shared page (try_grab_folio_fast counts it),
    // saw gup_must_unshare and put it back (gup_put_folio), then the slow
    // path pinned the copy: the refusal shows as one acquire and one
    // release more than the two pins.
    t.expectEqual(m.kernel.stat(DAX_NR_FOLL_PIN_ACQUIRED), acq0 + 3, "NR_FOLL_PIN_ACQUIRED: two pins and GUP-fast's refused grab")
    t.expectEqual(m.kernel.stat(DAX_NR_FOLL_PIN_RELEASED), rel0 + 3, "NR_FOLL_PIN_RELEASED: two unpins and GUP-fast's put of the refused grab")
    t.expectEqual(m.allocated, alloc0 + 2, "two copies")

    // FOLL_WRITE on a read-only PTE of a shared page: copies.
    let w = a + 2 * 4096
    let wpin = try t.must("pin_user_pages(FOLL_WRITE) of a shared read-only page") { try m.mm.pinPages(w, count: 1, flags: [.write]) }
    let we = m.pte(w)
    t.expect(entryPfn(we) == pageToPfn(k, wpin[0]) && entryPfn(we) != pfns[2] && entryWrite(we),
             "FOLL_WRITE: faultin_page -> do_wp_page copied, writable: \(hex(we))")
    t.expectEqual(entryPfn(pteOf(c, w)), pfns[2], "the child keeps the page")
    m.mm.unpin(wpin)
    t.expectAnonConsistent(m, mms: [m.mm, c], after: "the unshares")

    // FOLL_FORCE on a read-only private mapping.
    let ro = try t.must("mmap 64 KiB PROT_READ MAP_PRIVATE|MAP_ANONYMOUS") { try m.map(64 << 10, prot: [.read]) }
    t.expectFault(m.mm.handleFault(ro, write: false), 0, "read fault")
    t.expectErrno("get_user_pages(FOLL_WRITE) on a read-only VMA", EFAULT) { _ = try m.mm.getPages(ro, count: 1, flags: [.write]) }
    let forced = try t.must("get_user_pages(FOLL_WRITE|FOLL_FORCE)") { try m.mm.getPages(ro, count: 1, flags: [.write, .force]) }
    let fe = m.pte(ro)
    t.expect(entryPfn(fe) == pageToPfn(k, forced[0]) && !isZeroPfn(entryPfn(fe)) && !entryWrite(fe) && entryDirty(fe),
             "FOLL_FORCE: the zero page COWed into an anon page that stays read-only and dirty: \(hex(fe))")
    t.expect(forced[0].isAnonExclusive, "the forced copy is PageAnonExclusive")
    let alloc1 = m.allocated
    let again = try t.must("get_user_pages(FOLL_WRITE|FOLL_FORCE) again") { try m.mm.getPages(ro, count: 1, flags: [.write, .force]) }
    t.expect(again == forced && m.allocated == alloc1, "can_follow_write_pte follows the exclusive dirty page without another copy")
    m.mm.put(forced + again)
    t.expectAnonConsistent(m, mms: [m.mm, c], after: "FOLL_FORCE")
}

// MARK: mm-fsdax-private-cow

/// MAP_PRIVATE fs-dax:
///  - a read fault maps the file's page read-only (MM_FILEPAGES 1, the
///    fs-dax folio refcount 1, mapcount 1);
///  - the write that follows copies it (do_wp_page -> wp_page_copy):
///    MM_FILEPAGES -1, MM_ANONPAGES +1, NR_FILE_MAPPED -1, NR_ANON_MAPPED
///    +1, the fs-dax folio idle again, the copy has the block's bytes;
///  - a write fault on a page never read: do_cow_fault ->
///    dax_fault_cow_page copies it (VM_FAULT_DONE_COW), no DAX entry;
///  - a write fault on a hole: the copy is zeroed and no block allocated;
///  - the file's blocks keep their data throughout;
///  - truncate drops the COW copies past EOF (truncate_pagecache's
///    unmap_mapping_range with even_cows) and keeps those before it; a
///    hole punch keeps them (truncate_pagecache_range: even_cows 0).
func fsdaxPrivateCowScenario(_ t: TestContext) throws {
    let m = try t.must("an extent store on 16 MiB of fs-dax memory") { try FSDaxMachine() }
    let k = m.kernel.ref
    // The device's bytes in the port's direct map.
    let range = PhysicalRange(start: 0x8000_0000, size: 16 << 20)
    let store = UnsafeMutableRawPointer.allocate(byteCount: 16 << 20, alignment: pageSize)
    memset(store, 0, 16 << 20)
    try t.must("the direct map of the fs-dax memory") { try m.kernel.registerDirectMap(range: range, bytes: store) }
    t.atCleanup("the direct map") {
        m.kernel.unregisterDirectMap(range: range)
        store.deallocate()
    }
    let f = try t.must("create \"p\"") { try m.fs.create(name: "p", maxSize: 4 << 20) }
    try t.must("allocate 16 blocks") { try f.allocate(pgoff: 0, pages: 16) }
    for i in 0..<16 {
        let folio = try t.require(f.folio(at: UInt64(i)), "block \(i)")
        pageBytes(k, pageToPfn(k, folio.head))?[5] = UInt8(0xa0 + i)
    }
    let len: UInt64 = 64 << 10
    let a = try t.must("mmap the file MAP_PRIVATE") { try m.mm.mmap(f.mmapRequest(length: len, shared: false)) }
    let anon0 = m.kernel.stat(DAX_NR_ANON_MAPPED), file0 = m.kernel.stat(DAX_NR_FILE_MAPPED)
    let alloc0 = m.kernel.ramStats?.allocatedPages ?? -1

    // Read, then write.
    let r = a + 4096
    let ff = try t.require(f.folio(at: 1), "the file's folio at page 1")
    let fpfn = pageToPfn(k, ff.head)
    t.expect(m.mm.handleFault(r, write: false) & DAX_VM_FAULT_ERROR == 0, "read fault")
    let re = pteOf(m.mm, r)
    t.expect(entryPresent(re) && entryPfn(re) == fpfn && !entryWrite(re), "a private read maps the file's page read-only: \(hex(re))")
    t.expect(ff.refCount == 1 && ff.mapcount == 1 && m.mm.rssFilePages == 1 && m.mm.rssAnonPages == 0,
             "MM_FILEPAGES 1, the fs-dax folio refcount \(ff.refCount) mapcount \(ff.mapcount)")
    t.expectEqual(m.kernel.stat(DAX_NR_FILE_MAPPED), file0 + 1, "NR_FILE_MAPPED +1")
    t.expectCowConsistent(m.kernel, mms: [m.mm], pgmaps: m.pgmaps, after: "the private read")
    t.expect(m.mm.handleFault(r, write: true) & DAX_VM_FAULT_ERROR == 0, "write fault on the read-only file page")
    let we = pteOf(m.mm, r)
    let copy = pfnToPage(k, entryPfn(we))
    t.expect(entryWrite(we) && entryPfn(we) != fpfn && copy.folio.isAnon && copy.isAnonExclusive,
             "do_wp_page -> wp_page_copy: a writable exclusive anon page: \(hex(we))")
    t.expectEqual(pageBytes(k, entryPfn(we))?[5], 0xa1, "the copy has the block's bytes")
    t.expect(m.mm.rssFilePages == 0 && m.mm.rssAnonPages == 1, "MM_FILEPAGES -1, MM_ANONPAGES +1: \(m.mm.rssFilePages), \(m.mm.rssAnonPages)")
    t.expect(m.kernel.stat(DAX_NR_FILE_MAPPED) == file0 && m.kernel.stat(DAX_NR_ANON_MAPPED) == anon0 + 1, "NR_FILE_MAPPED -1, NR_ANON_MAPPED +1")
    t.expect(ff.refCount == 0 && ff.mapcount == 0, "the fs-dax folio idle again (refcount \(ff.refCount), mapcount \(ff.mapcount))")
    pageBytes(k, entryPfn(we))?[5] = 0x55
    t.expectEqual(pageBytes(k, fpfn)?[5], 0xa1, "the file's block keeps its byte after the private write")

    // A write fault on a page never read.
    let w = a + 3 * 4096
    let wret = m.mm.handleFault(w, write: true)
    t.expect(wret & DAX_VM_FAULT_ERROR == 0 && wret & DAX_VM_FAULT_DONE_COW != 0, "do_cow_fault -> dax_fault_cow_page: \(vmFaultName(wret)) has VM_FAULT_DONE_COW")
    let w3 = pteOf(m.mm, w)
    let f3 = try t.require(f.folio(at: 3), "the file's folio at page 3")
    t.expect(entryWrite(w3) && entryPfn(w3) != pageToPfn(k, f3.head) && pfnToPage(k, entryPfn(w3)).folio.isAnon,
             "the never-read page is a writable anon copy: \(hex(w3))")
    t.expectEqual(pageBytes(k, entryPfn(w3))?[5], 0xa3, "the copy has the block's bytes")
    t.expect(!DaxEntry.isReal(f.entry(at: 3)) && f3.refCount == 0, "no DAX entry and no reference for the copied page")
    t.expectEqual(m.kernel.ramStats?.allocatedPages ?? -1, alloc0 + 2, "two pages allocated for the copies")
    t.expectCowConsistent(m.kernel, mms: [m.mm], pgmaps: m.pgmaps, after: "the private writes")

    // A hole.
    let hfile = try t.must("create \"h\" (all holes)") { try m.fs.create(name: "h", maxSize: 1 << 20) }
    try t.must("i_size 1 MiB") { try hfile.extend(to: 1 << 20) }
    let free0 = m.fs.freeBlocks
    let ha = try t.must("mmap the hole file MAP_PRIVATE") { try m.mm.mmap(hfile.mmapRequest(length: len, shared: false)) }
    let hret = m.mm.handleFault(ha, write: true)
    t.expect(hret & DAX_VM_FAULT_ERROR == 0 && hret & DAX_VM_FAULT_DONE_COW != 0, "a private write to a hole: \(vmFaultName(hret))")
    let he = pteOf(m.mm, ha)
    t.expect(pageBytes(k, entryPfn(he)).map { p in (0..<pageSize).allSatisfy { p[$0] == 0 } } ?? false,
             "dax_fault_cow_page cleared the copy of the hole")
    t.expect(m.fs.freeBlocks == free0 && hfile.block(at: 0) == nil, "no block allocated for a private write")

    // Truncate drops the copies past EOF; hole punch keeps them.
    t.expect(m.mm.handleFault(a + 10 * 4096, write: true) & DAX_VM_FAULT_ERROR == 0, "write fault on page 10")
    t.expectEqual(m.mm.rssAnonPages, 4, "four COW copies")
    try t.must("punch a hole over pages 0..5") { try f.punchHole(pgoff: 0, pages: 6) }
    t.expect(entryPresent(pteOf(m.mm, r)) && entryPresent(pteOf(m.mm, w)), "hole punch keeps the COW copies (even_cows 0)")
    t.expectEqual(pageBytes(k, entryPfn(pteOf(m.mm, r)))?[5], 0x55, "the copy keeps its bytes after the hole punch")
    t.expectEqual(m.mm.rssAnonPages, 4, "MM_ANONPAGES after the hole punch")
    try t.must("truncate to 8 pages") { try f.truncate(to: 8 * 4096) }
    t.expectEqual(pteOf(m.mm, a + 10 * 4096), 0, "truncate drops the copy past the new EOF (even_cows)")
    t.expect(entryPresent(pteOf(m.mm, r)), "and keeps the copies before it")
    t.expectEqual(m.mm.rssAnonPages, 3, "MM_ANONPAGES after the truncate")
    t.expectFault(m.mm.handleFault(a + 10 * 4096, write: false), DAX_VM_FAULT_SIGBUS, "a fault past EOF")
    t.expectEqual(pageBytes(k, pageToPfn(k, try t.require(f.folio(at: 7), "block 7").head))?[5], 0xa7, "block 7 keeps its data")
    t.expectCowConsistent(m.kernel, mms: [m.mm], pgmaps: m.pgmaps, after: "truncate and hole punch")
    try t.must("munmap") { try m.mm.munmap(a, len); try m.mm.munmap(ha, len) }
    t.expect(m.mm.rssAnonPages == 0 && m.mm.rssFilePages == 0, "MM counters after munmap")
    t.expectEqual(m.kernel.ramStats?.allocatedPages ?? -1, alloc0, "every copy freed")
    t.expectCowConsistent(m.kernel, mms: [m.mm], pgmaps: m.pgmaps, after: "munmap")
}
