// mm/mprotect.c, the zap side of mm/memory.c and mm/huge_memory.c, and
// munmap (mm/vma.c) at each level, on device-dax.

import CDaxMM
import DAXBase
import DAXCore
import MMCore
import MMTestSupport

/// A device of two folios of `align`, mapped once and faulted for write in
/// both: the starting point of the per-level scenarios. Returns the machine,
/// the address and folio 0's counters before the faults.
private func twoFolios(_ t: TestContext, align: UInt64) throws -> (DevDaxMachine, UInt64, Counters) {
    let m = try t.must("dev_dax_probe of a \(sizeName(align))-aligned device of two folios") {
        try DevDaxMachine(align: align, size: max(2 * align, UInt64(pmdSize)))
    }
    let idle = m.counters(m.folio(0))
    let a = try t.must("dax_mmap \(sizeName(2 * align))") { try m.map(2 * align) }
    t.expectFault(m.mm.handleFault(a, write: true), DAX_VM_FAULT_NOPAGE, "\(sizeName(align)): write fault of folio 0")
    t.expectFault(m.mm.handleFault(a + align, write: true), DAX_VM_FAULT_NOPAGE, "\(sizeName(align)): write fault of folio 1")
    return (m, a, idle)
}

/// The counters of a folio mapped `entries` times.
private func mappedCounters(_ idle: Counters, align: UInt64, entries: Int32, totalPages: Int64, rules: KernelRules) -> Counters {
    idle.with {
        $0.refcount += entries * rules.refsPerEntry
        $0.mapcount += entries * rules.mapcountPerEntry
        if align > 4096 { $0.entireMapcount += entries * rules.mapcountPerEntry }
        $0.rss = totalPages
        $0.fileMapped = totalPages
        if align == UInt64(pmdSize) { $0.filePmdMapped = totalPages }
    }
}

/// mprotect over PTE, PMD and PUD mappings of device-dax (change_protection:
/// change_pte_range, change_huge_pmd, change_huge_pud; mprotect_fixup):
///  - PROT_READ write-protects each entry at its level; references,
///    mapcounts and rss do not move; a write fault is SIGSEGV (access_error)
///    and a FOLL_WRITE pin -EFAULT (check_vma_flags), a read works;
///  - PROT_NONE keeps the entries present but not user-accessible
///    (pte_protnone-style): still no counter moves; a read fault is SIGSEGV
///    and GUP -EFAULT;
///  - back to PROT_READ|PROT_WRITE the entries stay read-only until a write
///    fault upgrades them in place (no counter moves);
///  - mprotect of half the VMA splits it at the alignment; a range off the
///    alignment is refused by dev_dax_may_split (-EINVAL) with the VMA and
///    the entries unchanged.
func mprotectLevelsScenario(_ t: TestContext, rules: KernelRules = .kernel) throws {
    for align in [UInt64(4096), UInt64(pmdSize), UInt64(pudSize)] {
        let name = sizeName(align)
        let (m, a, idle0) = try twoFolios(t, align: align)
        let f0 = m.folio(0), f1 = m.folio(align)
        let nr = Int64(align >> UInt64(pageShift))
        let c0 = m.counters(f0), c1 = m.counters(f1)
        t.expectCounters(c0, mappedCounters(idle0, align: align, entries: 1, totalPages: 2 * nr, rules: rules), "\(name): folio 0 mapped")
        let lvl = level(of: align)
        func entries() -> [Leaf?] { [leaf(m.mm, a), leaf(m.mm, a + align)] }
        let pages = PageArray.allocate(capacity: 1)
        defer { pages.deallocate() }

        try t.must("\(name): mprotect PROT_READ") { try m.mm.mprotect(a, 2 * align, [.read]) }
        t.expect(entries().allSatisfy { $0?.level == lvl && $0?.writable == false && $0?.user == true },
                 "\(name): PROT_READ write-protects both \(levelName(lvl))s: \(entries())")
        t.expectCounters(m.counters(f0), c0, "\(name): folio 0 after PROT_READ")
        t.expectCounters(m.counters(f1), c1, "\(name): folio 1 after PROT_READ")
        t.expectFault(m.mm.handleFault(a, write: true), DAX_VM_FAULT_SIGSEGV, "\(name): write fault on PROT_READ (access_error)")
        t.expectFault(m.mm.handleFault(a + align, write: false), 0, "\(name): read fault on PROT_READ (the entry is there)")
        let wpin = m.mm.withUnsafeRecord { pinUserPages($0, a, 1, [.write], pages) }
        t.expectEqual(wpin, Int(-EFAULT), "\(name): FOLL_WRITE pin on PROT_READ (check_vma_flags)")

        try t.must("\(name): mprotect PROT_NONE") { try m.mm.mprotect(a, 2 * align, []) }
        t.expect(entries().allSatisfy { $0?.level == lvl && $0?.user == false && $0?.writable == false },
                 "\(name): PROT_NONE entries stay present without _PAGE_USER: \(entries())")
        t.expectCounters(m.counters(f0), c0, "\(name): folio 0 after PROT_NONE")
        t.expectFault(m.mm.handleFault(a, write: false), DAX_VM_FAULT_SIGSEGV, "\(name): read fault on PROT_NONE")
        let rpin = m.mm.withUnsafeRecord { getUserPages($0, a, 1, [], pages) }
        t.expectEqual(rpin, Int(-EFAULT), "\(name): get_user_pages on PROT_NONE (check_vma_flags)")
        t.expectPortConsistent(m.kernel, mms: [m.mm], pgmaps: m.pgmaps, after: "\(name) PROT_NONE")

        try t.must("\(name): mprotect PROT_READ|PROT_WRITE") { try m.mm.mprotect(a, 2 * align, [.read, .write]) }
        // change_protection's pte_modify with PAGE_SHARED: device-dax wants no
        // write notification, so both entries are readable and writable at
        // once; a write then only dirties.
        t.expect(entries().allSatisfy { $0?.user == true && $0?.writable == true },
                 "\(name): after PROT_READ|PROT_WRITE the entries are readable and writable (pte_modify): \(entries())")
        t.expect(m.mm.handleFault(a, write: true) & DAX_VM_FAULT_ERROR == 0, "\(name): write fault on folio 0's entry")
        t.expect(leaf(m.mm, a)?.writable == true && leaf(m.mm, a)?.dirty == true, "\(name): folio 0's entry writable and dirty")
        t.expectCounters(m.counters(f0), c0, "\(name): folio 0 after the write")

        // Half, then off the alignment.
        try t.must("\(name): mprotect the first half PROT_READ") { try m.mm.mprotect(a, align, [.read]) }
        t.expectEqual(m.mm.vmaList().count, 2, "\(name): the VMA split at the alignment")
        t.expect(leaf(m.mm, a)?.writable == false && m.mm.findVMA(a + align).map { $0.pointee.vm_flags & DAX_VM_WRITE != 0 } == true,
                 "\(name): only the first half lost write")
        if align > 4096 {
            t.expectErrno("\(name): mprotect of 4K inside the \(levelName(lvl)) (dev_dax_may_split)", rules.maySplitErrno) {
                try m.mm.mprotect(a + align + 4096, 4096, [.read])
            }
            t.expectEqual(m.mm.vmaList().count, 2, "\(name): the refused mprotect split nothing")
            t.expect(leaf(m.mm, a + align)?.level == lvl, "\(name): the refused mprotect left folio 1's \(levelName(lvl))")
        }
        t.expectCounters(m.counters(f0), c0, "\(name): folio 0 at the end")
        t.expectCounters(m.counters(f1), c1, "\(name): folio 1 at the end")
        t.expectPortConsistent(m.kernel, mms: [m.mm], pgmaps: m.pgmaps, after: "\(name) mprotect")
    }
}

/// Zap at each level (zap_pte_range, zap_huge_pmd, zap_huge_pud; the
/// references go after the TLB flush, tlb_remove_page_size):
///  - zapping exactly one entry's range drops that folio's reference,
///    mapcount and rss and leaves the other folio alone; the refault maps it
///    again;
///  - zapping 4K inside a PMD or PUD splits it (__split_huge_pmd_locked /
///    __split_huge_pud_locked), which for DAX unmaps the whole entry: the
///    folio loses its one mapping, no PTE appears;
///  - unmap_mapping_range over the device file (as kill_dev_dax does) zaps
///    every mapping of the file: rss 0, every folio idle.
func zapLevelsScenario(_ t: TestContext, rules: KernelRules = .kernel) throws {
    for align in [UInt64(4096), UInt64(pmdSize), UInt64(pudSize)] {
        let name = sizeName(align)
        let (m, a, idle0) = try twoFolios(t, align: align)
        let f0 = m.folio(0), f1 = m.folio(align)
        let nr = Int64(align >> UInt64(pageShift))
        let c0 = m.counters(f0)
        t.expectCounters(c0, mappedCounters(idle0, align: align, entries: 1, totalPages: 2 * nr, rules: rules), "\(name): folio 0 mapped")
        let lvl = level(of: align)

        zap(m.mm, a, align)
        t.expect(leaf(m.mm, a) == nil && leaf(m.mm, a + align)?.level == lvl, "\(name): zap of folio 0's range cleared its \(levelName(lvl)) only")
        t.expectCounters(m.counters(f0), idle0.with { $0.rss = nr; $0.fileMapped = nr; if lvl == .pmd { $0.filePmdMapped = nr } },
                         "\(name): folio 0 after its zap")
        t.expectEqual(f1.refCount, rules.devdaxIdleRefcount + rules.refsPerEntry, "\(name): folio 1 untouched")
        t.expectPortConsistent(m.kernel, mms: [m.mm], pgmaps: m.pgmaps, after: "\(name) zap of one entry")
        t.expectFault(m.mm.handleFault(a, write: false), DAX_VM_FAULT_NOPAGE, "\(name): refault of folio 0")
        t.expectCounters(m.counters(f0), c0, "\(name): folio 0 after the refault")

        if align > 4096 {
            zap(m.mm, a + 4096, 4096)
            t.expect(leaf(m.mm, a) == nil && leaf(m.mm, a + 2 * 4096) == nil,
                     "\(name): zapping 4K inside the \(levelName(lvl)) unmapped the whole entry (split_huge_\(lvl == .pmd ? "pmd" : "pud") for DAX)")
            t.expectCounters(m.counters(f0), idle0.with { $0.rss = nr; $0.fileMapped = nr; if lvl == .pmd { $0.filePmdMapped = nr } },
                             "\(name): folio 0 after the split")
            t.expectPortConsistent(m.kernel, mms: [m.mm], pgmaps: m.pgmaps, after: "\(name) split")
            t.expectFault(m.mm.handleFault(a + 4096, write: true), DAX_VM_FAULT_NOPAGE, "\(name): refault at the alignment's size after the split")
            t.expectEqual(leaf(m.mm, a + 4096)?.level, lvl, "\(name): the refault maps a whole \(levelName(lvl)) again")
        }

        unmapMappingRange(m.dev.file.ref, holebegin: 0, holelen: 0, evenCows: true)
        t.expect(leaf(m.mm, a) == nil && leaf(m.mm, a + align) == nil, "\(name): unmap_mapping_range zapped every entry of the file")
        t.expectCounters(m.counters(f0), idle0.with { $0.rss = 0; $0.fileMapped = 0; $0.filePmdMapped = 0 }, "\(name): folio 0 after unmap_mapping_range")
        t.expectEqual(f1.refCount, rules.devdaxIdleRefcount, "\(name): folio 1 idle after unmap_mapping_range")
        t.expectPortConsistent(m.kernel, mms: [m.mm], pgmaps: m.pgmaps, after: "\(name) unmap_mapping_range")
    }
}

/// munmap of a partially populated range (do_vmi_munmap: split at the
/// edges, zap, free the page tables nothing else needs):
///  - 4K device, a 1 MiB VMA with every fourth page faulted: munmap of the
///    middle 512 KiB drops exactly the 32 faulted pages in it (their folios
///    back to refcount 1), keeps the 32 outside, and leaves two VMAs, the
///    upper one at the right pgoff;
///  - 2M device, a 16 MiB VMA with folios 0, 2, 5 and 7 faulted: munmap of
///    [4M, 12M) drops folios 2 and 5 only; a munmap off the alignment is
///    refused by dev_dax_may_split with nothing changed; a range reaching
///    past the last VMA is unmapped up to it;
///  - fs-dax, a PMD-mapped file range losing its first 16K: the split
///    unmaps the PMD, and the VMA now beginning inside a PMD faults at PTE
///    level there (dax_iomap_pmd_fault falls back) while the next PMD maps
///    whole.
func munmapPartialScenario(_ t: TestContext, rules: KernelRules = .kernel) throws {
    do {
        let m = try t.must("dev_dax_probe of a 4K-aligned device of 2 MiB") { try DevDaxMachine(align: 4096, size: 2 << 20) }
        let a = try t.must("dax_mmap 1 MiB") { try m.map(1 << 20) }
        for i in stride(from: 0, to: 256, by: 4) {
            t.expectFault(m.mm.handleFault(a + UInt64(i) * 4096, write: i % 8 == 0), DAX_VM_FAULT_NOPAGE, "4K: fault of page \(i)")
        }
        t.expectEqual(m.mm.rssFilePages, 64, "4K: MM_FILEPAGES before")
        try t.must("4K: munmap [256K, 768K)") { try m.mm.munmap(a + (256 << 10), 512 << 10) }
        let vmas = m.mm.vmaList().map { ($0.pointee.vm_start, $0.pointee.vm_end, $0.pointee.vm_pgoff) }
        t.expect(vmas.count == 2 && vmas[0] == (a, a + (256 << 10), 0) && vmas[1] == (a + (768 << 10), a + (1 << 20), 192),
                 "4K: two VMAs left, the upper one at pgoff 192: \(vmas)")
        t.expectEqual(m.mm.rssFilePages, 32, "4K: MM_FILEPAGES after (the 32 faulted pages outside the hole)")
        t.expectEqual(m.kernel.stat(DAX_NR_FILE_MAPPED), 32, "4K: NR_FILE_MAPPED after")
        var wrong: [String] = []
        for i in stride(from: 0, to: 256, by: 4) {
            let inHole = i >= 64 && i < 192
            let want = rules.devdaxIdleRefcount + (inHole ? 0 : rules.refsPerEntry)
            let f = m.folio(UInt64(i) * 4096)
            if f.refCount != want || f.mapcount != (inHole ? 0 : 1) { wrong.append("page \(i): refcount \(f.refCount) mapcount \(f.mapcount)") }
            if !inHole && leaf(m.mm, a + UInt64(i) * 4096)?.pfn != m.basePfn + UInt64(i) { wrong.append("page \(i) not mapped") }
        }
        t.expect(wrong.isEmpty, "4K: every faulted page outside the hole still mapped, every one inside idle: \(wrong.prefix(4))")
        t.expectFault(m.mm.handleFault(a + (512 << 10), write: false), DAX_VM_FAULT_SIGSEGV, "4K: fault in the hole (no VMA)")
        t.expectPortConsistent(m.kernel, mms: [m.mm], pgmaps: m.pgmaps, after: "4K partial munmap")
    }

    let m = try t.must("dev_dax_probe of a 2M-aligned device of 16 MiB") { try DevDaxMachine(align: UInt64(pmdSize), size: 16 << 20) }
    let mb: UInt64 = 1 << 20
    let a = try t.must("dax_mmap 16 MiB") { try m.map(16 * mb) }
    for i in [0, 2, 5, 7] as [UInt64] {
        t.expectFault(m.mm.handleFault(a + i * 2 * mb + 4096, write: true), DAX_VM_FAULT_NOPAGE, "2M: fault of folio \(i)")
    }
    let before = m.mm.rssFilePages
    t.expectEqual(before, 4 * 512, "2M: MM_FILEPAGES before")
    t.expectErrno("2M: munmap of 4K off the alignment (dev_dax_may_split)", rules.maySplitErrno) {
        try m.mm.munmap(a + 4 * mb + 4096, 4096)
    }
    t.expect(m.mm.vmaList().count == 1 && m.mm.rssFilePages == before, "2M: the refused munmap changed nothing")
    try t.must("2M: munmap [4M, 12M)") { try m.mm.munmap(a + 4 * mb, 8 * mb) }
    t.expectEqual(m.mm.rssFilePages, 2 * 512, "2M: MM_FILEPAGES after (folios 0 and 7)")
    t.expectEqual(m.kernel.stat(DAX_NR_FILE_PMDMAPPED), 2 * 512, "2M: NR_FILE_PMDMAPPED after")
    let refs = (0..<8).map { m.folio(UInt64($0) * 2 * mb).refCount }
    let one = rules.devdaxIdleRefcount, two = one + rules.refsPerEntry
    t.expectEqual(refs, [two, one, one, one, one, one, one, two], "2M: folio refcounts after")
    let vmas = m.mm.vmaList().map { ($0.pointee.vm_start, $0.pointee.vm_end, $0.pointee.vm_pgoff) }
    t.expect(vmas.count == 2 && vmas[1] == (a + 12 * mb, a + 16 * mb, 3072), "2M: two VMAs, the upper one at pgoff 3072: \(vmas)")
    t.expectPortConsistent(m.kernel, mms: [m.mm], pgmaps: m.pgmaps, after: "2M partial munmap")
    try t.must("2M: munmap [12M, 20M), past the last VMA") { try m.mm.munmap(a + 12 * mb, 8 * mb) }
    t.expect(m.mm.rssFilePages == 512 && m.folio(14 * mb).refCount == one, "2M: folio 7 unmapped by the munmap past the end")
    try t.must("2M: munmap the rest") { try m.mm.munmap(a, 4 * mb) }
    t.expect(m.mm.vmaList().isEmpty && m.mm.rssFilePages == 0, "2M: nothing mapped")
    t.expectPortConsistent(m.kernel, mms: [m.mm], pgmaps: m.pgmaps, after: "2M munmap of everything")

    // fs-dax: munmap of the first 16K of a PMD-mapped file range. The split
    // at 16K unmaps the PMD (__split_huge_pmd_locked); the VMA now begins
    // inside a PMD, so dax_iomap_pmd_fault falls back there and the PTE
    // fault maps the page of the PMD entry's folio; the next PMD still maps
    // whole.
    let fm = try t.must("an extent store on 16 MiB of fs-dax memory") { try FSDaxMachine() }
    let f = try t.must("create \"m\"") { try fm.fs.create(name: "m", maxSize: 4 * mb) }
    try t.must("fallocate two 2M extents") { try f.allocate(pgoff: 0, pages: 1024) }
    let fa = try t.must("mmap 4 MiB of the file") { try fm.mm.mmap(f.mmapRequest(length: 4 * mb)) }
    t.expect(fm.mm.handleFault(fa + 5 * 4096, write: false) & DAX_VM_FAULT_ERROR == 0, "fs-dax: PMD fault of the first extent")
    let big = try t.require(f.folio(at: 0), "fs-dax: no block at page 0")
    t.expect(leaf(fm.mm, fa)?.level == .pmd && big.refCount == 1 && big.mapcount == 1, "fs-dax: one PMD, refcount 1")
    try t.must("fs-dax: munmap the first 16K") { try fm.mm.munmap(fa, 4 * 4096) }
    t.expect(leaf(fm.mm, fa + 5 * 4096) == nil && big.refCount == rules.fsdaxIdleRefcount && big.mapcount == 0 && fm.mm.rssFilePages == 0,
             "fs-dax: the split unmapped the whole PMD: refcount \(big.refCount), mapcount \(big.mapcount)")
    t.expectFault(callFault(fm.mm, fa + 5 * 4096, order: pmdOrder, write: false), DAX_VM_FAULT_FALLBACK,
                  "fs-dax: PMD fault where the PMD starts below vm_start (dax_iomap_pmd_fault)")
    t.expect(fm.mm.handleFault(fa + 5 * 4096, write: false) & DAX_VM_FAULT_ERROR == 0, "fs-dax: the fault at 20K")
    let l = leaf(fm.mm, fa + 5 * 4096)
    t.expect(l?.level == .pte && l?.pfn == fm.kernel.withUnsafeRecord { pageToPfn($0, big.page(5)) },
             "fs-dax: a PTE of page 5 of the PMD entry's folio (\(String(describing: l)))")
    t.expect(big.order == pmdOrder && big.refCount == rules.fsdaxIdleRefcount + rules.refsPerEntry && big.mapcount == 1 && big.entireMapcount == 0,
             "fs-dax: one PTE mapping of the order-9 folio: refcount \(big.refCount), mapcount \(big.mapcount)")
    t.expect(fm.mm.handleFault(fa + 2 * mb + 4096, write: true) & DAX_VM_FAULT_ERROR == 0 && leaf(fm.mm, fa + 2 * mb)?.level == .pmd,
             "fs-dax: the second extent still maps as one PMD")
    t.expectEqual(fm.mm.rssFilePages, 1 + 512, "fs-dax: MM_FILEPAGES")
    t.expectPortConsistent(fm.kernel, mms: [fm.mm], pgmaps: fm.pgmaps, after: "fs-dax partial munmap")
    try t.must("fs-dax: munmap the rest") { try fm.mm.munmap(fa + 4 * 4096, 4 * mb - 4 * 4096) }
    t.expectPortConsistent(fm.kernel, mms: [fm.mm], pgmaps: fm.pgmaps, after: "fs-dax munmap of everything")
}
