// drivers/dax/device.c through the port: faults at the device alignment
// (vmf_insert_page_mkwrite, vmf_insert_folio_pmd, vmf_insert_folio_pud), the
// refusals of check_vma and dev_dax_may_split, what a fault past the end of
// the device returns, MAP_SYNC, mremap of a piece of a huge-aligned VMA, and
// kill_dax under a fault loop.

import CDaxMM
import DAXBase
import DAXCore
import Foundation
import MMCore
import MMTestSupport

#if canImport(Glibc)
import Glibc
#endif

/// The insert and rmap functions a fault of `align` bytes goes through.
private func insertName(_ align: UInt64) -> String {
    switch level(of: align) {
    case .pte: "vmf_insert_page_mkwrite/folio_add_file_rmap_ptes"
    case .pmd: "vmf_insert_folio_pmd/folio_add_file_rmap_pmd"
    case .pud: "vmf_insert_folio_pud/folio_add_file_rmap_pud"
    }
}

/// dev_dax_huge_fault at the device alignment, on one folio mapped twice
/// (a read-only and a read-write VMA of the same device offset):
///  - the read fault maps exactly one entry of the alignment's size (fault
///    size), +1 refcount and +1 mapcount on the folio, rss and
///    NR_FILE_MAPPED += the folio's pages (NR_FILE_PMDMAPPED for a PMD only:
///    __folio_add_rmap sets nr_pmdmapped at PMD level, not PUD), entire
///    mapcount 1 and _nr_pages_mapped ENTIRELY_MAPPED for a huge entry;
///    dax_set_mapping gives the head mapping and index;
///  - after mprotect(PROT_READ|PROT_WRITE) the write fault upgrades the same
///    entry in place (insert_page_into_pte_locked / insert_pmd / insert_pud
///    with mkwrite): only the entry's write bit (and young, dirty for huge
///    entries) changes, no counter;
///  - the second VMA's fault adds one more reference and mapcount, and no
///    NR_FILE_MAPPED (the pages were mapped already);
///  - zap and munmap drop them back exactly to the idle folio (refcount 1:
///    device-dax stays one-based; the mapping is never cleared).
func devdaxFaultScenario(_ t: TestContext, align: UInt64, rules: KernelRules = .kernel) throws {
    let m = try t.must("dev_dax_probe of a \(sizeName(align))-aligned device") {
        try DevDaxMachine(align: align, size: max(align, UInt64(pmdSize)))
    }
    let lvl = level(of: align)
    let huge = lvl != .pte
    let nr = Int64(align >> UInt64(pageShift))
    let folio = m.folio(0)
    let headPfn = m.basePfn
    let idle = m.counters(folio)
    t.expectEqual(folio.refCount, rules.devdaxIdleRefcount, "idle device-dax folio refcount (__init_zone_device_page, MEMORY_DEVICE_GENERIC)")
    t.expectEqual(folio.order, order(of: align), "folio order = vmemmap_shift of the alignment (dev_dax_probe)")
    t.expectEqual(folio.mapcount, 0, "idle folio mapcount")
    t.expectEqual(folio.mapping, 0, "mapping before the first fault")

    let ro = try t.must("dax_mmap PROT_READ") { try m.map(align, prot: [.read]) }
    let rw = try t.must("dax_mmap PROT_READ|PROT_WRITE") { try m.map(align) }
    t.expectEqual(ro % align, 0, "dax_get_unmapped_area: address aligned to the device alignment")
    t.atCleanup("munmap") { try? m.mm.munmap(ro, align); try? m.mm.munmap(rw, align) }

    // The read fault.
    let at = ro + (huge ? 3 * UInt64(pageSize) : 0)
    t.expectFault(m.mm.handleFault(at, write: false), DAX_VM_FAULT_NOPAGE, "read fault at \(hex(at)) (handle_mm_fault)")
    let mapped = idle.with {
        $0.refcount += rules.refsPerEntry
        $0.mapcount += rules.mapcountPerEntry
        if huge { $0.entireMapcount += rules.mapcountPerEntry }
        $0.rss += nr
        $0.fileMapped += nr
        if lvl == .pmd { $0.filePmdMapped += nr }
    }
    t.expectCounters(m.counters(folio), mapped, "after the read fault (\(insertName(align)))")
    let first = try t.require(leaf(m.mm, at), "the read fault left no entry at \(hex(at))")
    t.expectEqual(levelName(first.level), levelName(lvl), "fault size: the entry's level")
    t.expectEqual(first.pfn, headPfn, "the entry maps the folio's head pfn")
    t.expect(!first.writable && !first.special, "read fault on a PROT_READ VMA: a normal read-only entry (entry \(hex(first.entry)))")
    if huge {
        t.expectEqual(folio.nrPagesMapped, entirelyMapped, "_nr_pages_mapped = ENTIRELY_MAPPED (__folio_add_rmap, PAGE_MAPCOUNT)")
    } else {
        t.expectEqual(folio.head.pageMapcount, 1, "page _mapcount + 1")
    }
    t.expectEqual(folio.mapping, m.dev.file.mapping, "dax_set_mapping: folio->mapping is the device's address_space")
    t.expectEqual(folio.index, 0, "dax_set_mapping: folio->index is the pgoff")
    t.expectPortConsistent(m.kernel, mms: [m.mm], pgmaps: m.pgmaps, after: "the read fault")

    // mprotect to read-write: change_protection's pte_modify takes the new
    // vm_page_prot, PAGE_SHARED with _PAGE_RW (device-dax has no
    // page_mkwrite/pfn_mkwrite, so no write notification): the entry is
    // writable at once, still clean.
    try t.must("mprotect PROT_READ|PROT_WRITE") { try m.mm.mprotect(ro, align, [.read, .write]) }
    t.expectCounters(m.counters(folio), mapped, "after mprotect(PROT_READ|PROT_WRITE)")
    t.expect(leaf(m.mm, at)?.writable == true && leaf(m.mm, at)?.dirty == false,
             "mprotect made the entry writable and left it clean (pte_modify with PAGE_SHARED)")
    // The driver's write fault on the present entry (as a racing write
    // fault reaches it): an upgrade in place, no new reference.
    if huge {
        // ->huge_fault -> insert_pmd/insert_pud(write) on the present entry.
        t.expectFault(callFault(m.mm, at, order: lvl == .pmd ? pmdOrder : pudOrder, write: true), DAX_VM_FAULT_NOPAGE,
                      "->huge_fault(write) on the present \(levelName(lvl))")
    } else {
        // ->fault with FAULT_FLAG_WRITE on the present PTE: insert_page_into_pte_locked(mkwrite).
        t.expectFault(callFault(m.mm, ro, order: 0, write: true), DAX_VM_FAULT_NOPAGE, "__dev_dax_pte_fault(write) on the present PTE")
    }
    t.expectCounters(m.counters(folio), mapped, "after the mkwrite upgrade (no new reference)")
    let upgraded = try t.require(leaf(m.mm, at), "the upgrade removed the entry")
    t.expect(upgraded.writable && upgraded.young, "the upgraded entry is writable and young (entry \(hex(upgraded.entry)))")
    t.expectEqual(upgraded.pfn, first.pfn, "same pfn after the upgrade")
    t.expectEqual(levelName(upgraded.level), levelName(lvl), "same level after the upgrade")
    // insert_pmd/insert_pud mark the entry dirty; insert_page_into_pte_locked's upgrade does not.
    t.expectEqual(upgraded.dirty, huge, "dirty bit after the upgrade")
    t.expectEqual(upgraded.entry & ~(PT.rw | PT.dirty | PT.accessed), first.entry & ~(PT.rw | PT.dirty | PT.accessed),
                  "the upgrade changes only the write, dirty and young bits")

    // A second mapping of the same folio.
    t.expectFault(m.mm.handleFault(rw, write: true), DAX_VM_FAULT_NOPAGE, "write fault in the second VMA")
    let twice = mapped.with {
        $0.refcount += rules.refsPerEntry
        $0.mapcount += rules.mapcountPerEntry
        if huge { $0.entireMapcount += rules.mapcountPerEntry }
        $0.rss += nr
    }
    t.expectCounters(m.counters(folio), twice, "after the second mapping")
    let second = try t.require(leaf(m.mm, rw), "the second fault left no entry")
    t.expect(second.writable && second.dirty && second.pfn == headPfn, "a write fault maps writable and dirty (entry \(hex(second.entry)))")
    t.expectPortConsistent(m.kernel, mms: [m.mm], pgmaps: m.pgmaps, after: "two mappings")

    // zap one, munmap the other: back to the idle folio exactly.
    zap(m.mm, ro, align)
    t.expect(leaf(m.mm, at) == nil, "zap_page_range_single cleared the \(levelName(lvl))")
    t.expectCounters(m.counters(folio), mapped, "after zapping the first mapping")
    try t.must("munmap the second VMA") { try m.mm.munmap(rw, align) }
    t.expectCounters(m.counters(folio), idle, "after munmap (every reference and mapcount dropped)")
    t.expectEqual(folio.mapping, m.dev.file.mapping, "device-dax keeps folio->mapping after the last unmap (free_zone_device_folio)")
    t.expectPortConsistent(m.kernel, mms: [m.mm], pgmaps: m.pgmaps, after: "zap and munmap")
    try t.must("munmap the first VMA") { try m.mm.munmap(ro, align) }
    try t.must("remove the device") { try m.dev.remove() }
    t.expect(!m.kernel.pfnValid(headPfn), "memunmap_pages removed the struct pages")
}

/// drivers/dax/device.c refusals on a 2M device of 4 MiB:
///  - check_vma at mmap (dax_mmap): MAP_PRIVATE, a MAP_FIXED start off the
///    alignment, a length that is not a multiple of it, and a pgoff off it
///    (dax_get_unmapped_area gives the address the offset's colour, so
///    vm_start is misaligned): -EINVAL, no VMA, no counter moved;
///  - dev_dax_huge_fault at the wrong order: a PTE fault is SIGBUS
///    (__dev_dax_pte_fault: align > PAGE_SIZE), a PUD fault FALLBACK;
///  - a VMA larger than the device maps (mmap does not look at the size);
///    a fault past the end is SIGBUS (dax_pgoff_to_phys fails), and GUP
///    there -EFAULT, with nothing mapped;
///  - MAP_SYNC is accepted (dax_fops' mmap_supported_flags) and sets
///    VM_SYNC; device-dax has no metadata to sync, so a write fault maps at
///    once: no VM_FAULT_NEEDDSYNC.
func devdaxCheckVmaScenario(_ t: TestContext, rules: KernelRules = .kernel) throws {
    let align = UInt64(pmdSize)
    let m = try t.must("dev_dax_probe of a 2M-aligned device of 4 MiB") { try DevDaxMachine(align: align, size: 4 << 20) }
    let f0 = m.folio(0)
    let idle = m.counters(f0)
    let fixed: UInt64 = 0x5000_0000_0000

    t.expectErrno("MAP_PRIVATE (check_vma: VM_MAYSHARE missing)", rules.checkVmaErrno) {
        _ = try m.mm.mmap(m.dev.mmapRequest(length: align, shared: false))
    }
    t.expectErrno("MAP_FIXED start \(hex(fixed + 4096)) off the 2M alignment (check_vma: vm_start & mask)", rules.checkVmaErrno) {
        _ = try m.mm.mmap(m.dev.mmapRequest(length: align, fixedAddress: fixed + 4096))
    }
    t.expectErrno("length 2M+4K (check_vma: vm_end & mask)", rules.checkVmaErrno) {
        _ = try m.mm.mmap(m.dev.mmapRequest(length: align + 4096))
    }
    t.expectErrno("pgoff 1 on a 2M device (dax_get_unmapped_area colours vm_start with the offset; check_vma)", rules.checkVmaErrno) {
        _ = try m.mm.mmap(m.dev.mmapRequest(length: 2 * align, pgoff: 1))
    }
    t.expect(m.mm.vmaList().isEmpty, "a refused mmap leaves no VMA (\(m.mm.vmaList().count) left)")
    t.expectCounters(m.counters(f0), idle, "after the refused mmaps")

    // Faults at the wrong order.
    let a = try t.must("dax_mmap 2M") { try m.map(align) }
    t.expectFault(callFault(m.mm, a, order: 0, write: true), DAX_VM_FAULT_SIGBUS, "PTE fault on a 2M device (__dev_dax_pte_fault)")
    t.expectFault(callFault(m.mm, a, order: pudOrder, write: true), DAX_VM_FAULT_FALLBACK, "PUD fault on a 2M device (__dev_dax_pud_fault)")
    t.expectCounters(m.counters(f0), idle, "after the refused fault orders")
    try t.must("munmap") { try m.mm.munmap(a, align) }

    // A VMA larger than the device.
    let big = try t.must("dax_mmap of 8 MiB on a 4 MiB device") { try m.map(8 << 20) }
    t.expectFault(m.mm.handleFault(big, write: true), DAX_VM_FAULT_NOPAGE, "fault inside the device")
    let inside = m.counters(f0)
    t.expectCounters(inside, idle.with { $0.refcount += rules.refsPerEntry; $0.mapcount += rules.mapcountPerEntry
                                         $0.entireMapcount += rules.mapcountPerEntry; $0.rss += 512
                                         $0.fileMapped += 512; $0.filePmdMapped += 512 }, "after the fault inside the device")
    for off: UInt64 in [4 << 20, (6 << 20) + 4096] {
        t.expectFault(m.mm.handleFault(big + off, write: false), DAX_VM_FAULT_SIGBUS,
                      "fault at device offset \(hex(off)), past the end (dax_pgoff_to_phys)")
        t.expect(leaf(m.mm, big + off) == nil, "nothing mapped past the end")
    }
    t.expectErrno("pin_user_pages past the end of the device (faultin_page: VM_FAULT_SIGBUS)", EFAULT) {
        _ = try m.mm.pinPages(big + (4 << 20), count: 1, flags: [.write])
    }
    t.expectCounters(m.counters(f0), inside, "after the faults past the end")
    try t.must("munmap the 8 MiB VMA") { try m.mm.munmap(big, 8 << 20) }

    // MAP_SYNC.
    var req = m.dev.mmapRequest(length: align)
    req.extraFlags |= DAX_VM_SYNC
    let sync = try t.must("MAP_SHARED_VALIDATE|MAP_SYNC mmap of device-dax") { try m.mm.mmap(req) }
    let flags = m.mm.findVMA(sync).map { $0.pointee.vm_flags } ?? 0
    t.expect(flags & DAX_VM_SYNC != 0 && flags & DAX_VM_HUGEPAGE != 0, "the VMA has VM_SYNC and VM_HUGEPAGE (flags \(hex(flags)))")
    t.expectFault(m.mm.handleFault(sync, write: true), DAX_VM_FAULT_NOPAGE, "write fault on a MAP_SYNC device-dax VMA (no VM_FAULT_NEEDDSYNC)")
    let e = try t.require(leaf(m.mm, sync), "the MAP_SYNC write fault mapped nothing")
    t.expect(e.level == .pmd && e.writable && e.dirty, "a writable, dirty PMD (entry \(hex(e.entry)))")
    t.expectCounters(m.counters(f0), inside, "after the MAP_SYNC fault (one mapping, as before)")
    try t.must("munmap the MAP_SYNC VMA") { try m.mm.munmap(sync, align) }
    t.expectCounters(m.counters(f0), idle, "after the last munmap")
    t.expectPortConsistent(m.kernel, mms: [m.mm], pgmaps: m.pgmaps, after: "the refusals")
}

/// ndctl's test_dax_remap moves 4K out of a huge-aligned device-dax VMA
/// with mremap and accepts "refused, or SIGBUS on access" for align > 4K,
/// and only success for 4K. The port's prediction, on a 2M device:
///  - mremap that needs a split off the alignment (moving or shrinking to
///    4K) is refused: move_vma / do_vmi_munmap ask ->may_split, and
///    dev_dax_may_split says -EINVAL; nothing moves, no counter changes;
///  - a move of a whole, aligned 2M piece is allowed: move_huge_pmd carries
///    the PMD and its reference to the new address (refcount, mapcount, rss
///    unchanged), and the grown part faults the next folio;
///  - a 4K VMA of the 2M device, as an mremap without that check would have
///    left it, faults SIGBUS (check_vma: vm_start/vm_end off the alignment);
/// and on a 4K device the 4K move succeeds and the moved page is still
/// mapped (its fault returns 0, the same pfn, no new reference).
func devdaxMremapScenario(_ t: TestContext, rules: KernelRules = .kernel) throws {
    let align = UInt64(pmdSize)
    let m = try t.must("dev_dax_probe of a 2M-aligned device of 8 MiB") { try DevDaxMachine(align: align, size: 8 << 20) }
    let a = try t.must("dax_mmap 4 MiB") { try m.map(2 * align) }
    let f0 = m.folio(0), f1 = m.folio(align)
    t.expectFault(m.mm.handleFault(a, write: true), DAX_VM_FAULT_NOPAGE, "fault of folio 0")
    t.expectFault(m.mm.handleFault(a + align, write: true), DAX_VM_FAULT_NOPAGE, "fault of folio 1")
    let c0 = m.counters(f0), c1 = m.counters(f1)

    t.expectErrno("mremap(addr, 4K, 8K, MREMAP_MAYMOVE): split at addr+4K (dev_dax_may_split)", rules.maySplitErrno) {
        _ = try m.mm.mremap(a, oldLength: 4096, newLength: 8192, mayMove: true)
    }
    t.expectErrno("mremap(addr+4K, 4K, 8K, MREMAP_MAYMOVE): split at addr+4K (dev_dax_may_split)", rules.maySplitErrno) {
        _ = try m.mm.mremap(a + 4096, oldLength: 4096, newLength: 8192, mayMove: true)
    }
    t.expectErrno("mremap shrinking 4M to 4K: split at addr+4K (dev_dax_may_split)", rules.maySplitErrno) {
        _ = try m.mm.mremap(a, oldLength: 2 * align, newLength: 4096, mayMove: false)
    }
    let vmas = m.mm.vmaList().map { ($0.pointee.vm_start, $0.pointee.vm_end) }
    t.expect(vmas.count == 1 && vmas[0] == (a, a + 2 * align), "the refused mremaps left the VMA whole (\(vmas))")
    t.expectCounters(m.counters(f0), c0, "folio 0 after the refused mremaps")
    t.expectCounters(m.counters(f1), c1, "folio 1 after the refused mremaps")
    t.expect(leaf(m.mm, a)?.pfn == m.basePfn, "folio 0 still mapped at the old address")

    // The aligned move: [a, a+2M) grows to 4M elsewhere.
    let moved = try t.must("mremap(addr, 2M, 4M, MREMAP_MAYMOVE)") {
        try m.mm.mremap(a, oldLength: align, newLength: 2 * align, mayMove: true)
    }
    t.expect(moved != a && moved % align == 0, "moved to a 2M-aligned address (\(hex(moved)))")
    t.expect(leaf(m.mm, a) == nil, "nothing left at the old address")
    let movedLeaf = leaf(m.mm, moved)
    t.expect(movedLeaf?.level == .pmd && movedLeaf?.pfn == m.basePfn, "move_huge_pmd carried the PMD (\(String(describing: movedLeaf)))")
    t.expectCounters(m.counters(f0), c0, "folio 0 after the move (the entry's reference moved with it)")
    t.expectFault(m.mm.handleFault(moved + align, write: false), DAX_VM_FAULT_NOPAGE, "fault in the grown part (pgoff 512: folio 1)")
    t.expectCounters(m.counters(f1), c1.with { $0.refcount += rules.refsPerEntry; $0.mapcount += rules.mapcountPerEntry
                                               $0.entireMapcount += rules.mapcountPerEntry; $0.rss += 512 },
                     "folio 1 mapped twice")
    t.expectPortConsistent(m.kernel, mms: [m.mm], pgmaps: m.pgmaps, after: "mremap")

    // What an mremap without the may_split check leaves: a 4K VMA of the 2M
    // device (mremap does not call f_op->mmap, so check_vma first runs at
    // the fault).
    var req = m.dev.mmapRequest(length: 4096, pgoff: 1)
    req.mmapHook = nil
    let piece = try t.must("a 4K VMA of the 2M device") { try m.mm.mmap(req) }
    let before = m.counters(f0)
    t.expectFault(m.mm.handleFault(piece, write: true), DAX_VM_FAULT_SIGBUS,
                  "fault on a 4K VMA of a 2M device (check_vma: unaligned vma)")
    t.expectCounters(m.counters(f0), before, "after the SIGBUS")
    t.expect(leaf(m.mm, piece) == nil, "nothing mapped in the 4K VMA")
    for v in m.mm.vmaList() {
        let (s, e) = (v.pointee.vm_start, v.pointee.vm_end)
        try t.must("munmap [\(hex(s)), \(hex(e)))") { try m.mm.munmap(s, e - s) }
    }
    t.expectCounters(m.counters(f0), c0.with { $0.refcount -= rules.refsPerEntry; $0.mapcount -= rules.mapcountPerEntry
                                               $0.entireMapcount -= rules.mapcountPerEntry; $0.rss = 0
                                               $0.fileMapped = 0; $0.filePmdMapped = 0 }, "folio 0 after munmap")
    t.expectPortConsistent(m.kernel, mms: [m.mm], pgmaps: m.pgmaps, after: "munmap")

    // The 4K device: the move succeeds and the page stays mapped.
    let s = try t.must("dev_dax_probe of a 4K-aligned device") { try DevDaxMachine(align: 4096, size: 2 << 20) }
    let b = try t.must("dax_mmap 64K") { try s.map(64 << 10) }
    t.expectFault(s.mm.handleFault(b, write: true), DAX_VM_FAULT_NOPAGE, "fault of page 0")
    let p0 = s.folio(0)
    let cp = s.counters(p0)
    let nb = try t.must("mremap(addr, 4K, 8K, MREMAP_MAYMOVE) on a 4K device") {
        try s.mm.mremap(b, oldLength: 4096, newLength: 8192, mayMove: true)
    }
    t.expect(nb != b, "the 4K piece moved (\(hex(nb)))")
    t.expect(leaf(s.mm, nb)?.pfn == s.basePfn && leaf(s.mm, b) == nil, "move_ptes carried the PTE")
    t.expectFault(s.mm.handleFault(nb, write: true), 0, "access at the moved page: handled, no signal")
    t.expectCounters(s.counters(p0), cp, "page 0 after the move and the access")
    t.expectFault(s.mm.handleFault(nb + 4096, write: false), DAX_VM_FAULT_NOPAGE, "fault in the grown page (pgoff 1)")
    t.expectEqual(s.folio(4096).refCount, rules.devdaxIdleRefcount + rules.refsPerEntry, "page 1 refcount")
    t.expectPortConsistent(s.kernel, mms: [s.mm], pgmaps: s.pgmaps, after: "mremap on the 4K device")
}

/// kill_dax (drivers/dax/super.c) under a fault loop: DevDax.remove() makes
/// dax_alive false, waits (synchronize_srcu) for every fault handler that
/// may have seen the device alive, then unmap_mapping_range zaps every
/// mapping and memunmap_pages tears the pages down. A thread faults one 4K
/// page per section (each first fault of a section initialises its struct
/// pages: a long window inside the handler) while the device is removed;
/// afterwards no entry is left, rss and NR_FILE_MAPPED are 0, a fault is
/// SIGBUS and a new mmap -ENXIO (check_vma: !dax_alive).
func devdaxKillDaxScenario(_ t: TestContext, rounds: Int = 12) throws {
    let k = try t.must("a port kernel") { try Kernel() }
    let sections = 16
    let pps = UInt64(pagesPerSection)
    let sectionBytes = pps << UInt64(pageShift)
    let range = PhysicalRange(start: 0x40_0000_0000, size: UInt64(sections) * sectionBytes)
    var entriesLeft = 0
    for round in 0..<rounds {
        let dev = try t.must("dev_dax_probe, round \(round)") { try DevDax(kernel: k, ranges: [range], align: 4096) }
        try t.must("probe") { try dev.probe() }
        let mm = try t.must("an mm") { try MM(kernel: k) }
        let addr = try t.must("dax_mmap of the device") { try mm.mmap(dev.mmapRequest(length: range.size)) }
        let page = UInt64(round % 7) * UInt64(pageSize)
        let faults = AtomicCount()
        let mappedBeforeKill = AtomicCount()
        let faulter = CheckThread {
            for i in 0..<sections {
                let ret = callFault(mm, addr + UInt64(i) * sectionBytes + page, order: 0, write: i % 2 == 0)
                if ret == DAX_VM_FAULT_NOPAGE { mappedBeforeKill.add() }
                faults.add()
                if ret & DAX_VM_FAULT_SIGBUS != 0 { break }
            }
        }
        let deadline = monotonicNanos() &+ 10_000_000_000
        while faults.value < 1 + round % 3 && monotonicNanos() < deadline { usleep(20) }
        try t.must("DevDax.remove (kill_dax, unmap_mapping_range, memunmap_pages), round \(round)") { try dev.remove() }
        var present = 0
        mm.lockRead()
        mm.withUnsafeRecord { ref in
            for i in 0..<sections {
                if let pte = walk(ref, addr + UInt64(i) * sectionBytes + page).pte, entryPresent(dax_load_u64(pte)) { present += 1 }
            }
        }
        mm.unlockRead()
        entriesLeft += present
        t.expect(present == 0, "round \(round): \(present) entries survived remove()")
        t.expect(mm.rssFilePages == 0 && k.stat(DAX_NR_FILE_MAPPED) == 0,
                 "round \(round): MM_FILEPAGES \(mm.rssFilePages), NR_FILE_MAPPED \(k.stat(DAX_NR_FILE_MAPPED)) after remove()")
        t.expect(faulter.join(seconds: 30), "round \(round): the fault loop did not finish")
        t.expect(mappedBeforeKill.value >= 1, "round \(round): no fault mapped before the kill")
        t.expectFault(callFault(mm, addr + page, order: 0), DAX_VM_FAULT_SIGBUS, "round \(round): fault after kill_dax")
        t.expectErrno("round \(round): mmap after kill_dax (check_vma: !dax_alive)", ENXIO) {
            _ = try mm.mmap(dev.mmapRequest(length: 4096))
        }
        t.expect(!k.pfnValid(range.startPfn), "round \(round): memunmap_pages removed the struct pages")
        try t.must("munmap") { try mm.munmap(addr, range.size) }
        if entriesLeft != 0 { break }
    }
    let reports = k.drainReports()
    t.expect(reports.isEmpty, "debug reports: \(reports.map(\.description).joined(separator: "\n"))")
    t.expectEqual(k.deferredSections, 0, "no deferred section left after the last remove")
}
