// kernel/fork.c / mm/mmap.c dup_mmap, and the page-table copy of fork in
// mm/memory.c (copy_page_range, copy_pte_range, copy_present_pte,
// copy_present_page, copy_nonpresent_pte, vma_needs_copy) and
// mm/huge_memory.c (copy_huge_pmd).
//
// After a fork both processes map the same anon pages read-only (COW): the
// first write of either copies (do_wp_page -> wp_page_copy), or reuses the
// page once the other mapping is gone. A page that may be pinned is copied
// at fork time instead (copy_present_page), so the pinned page stays the
// parent's.

import CDaxMM
import DAXBase

extension MM {
    /// dup_mmap: a new MM with a copy of every VMA (its file linked, its
    /// retained objects, vm_ops->open, its anon_vma chain through
    /// anon_vma_fork's rules) and, where vma_needs_copy says so, its page
    /// tables (copy_page_range). A copy that fails (a device-exclusive entry
    /// whose folio is locked, no memory) fails the fork with -ENOMEM; the
    /// half-built child is torn down as exit_mmap does.
    public func fork() throws(MMError) -> MM {
        let child = try MM(kernel: kernel)
        lockWrite()
        defer { unlockWrite() }
        child.lockWrite()
        defer { child.unlockWrite() }
        for src in vmaList() {
            let dst = VMARef.allocate(capacity: 1)
            dst.initialize(to: src.pointee)   // vm_area_dup
            dst.pointee.vm_mm = child.ref
            child.forkAnonChains(parent: src, parentChain: anonChain(of: src), child: dst)
            child.insertVMA(dst, retain: retained[src] ?? [])
            if vmaNeedsCopy(dst, src) {
                let rc = copyPageRange(dst, src)
                if rc != 0 {
                    throw .errno(ENOMEM, "fork: copy_page_range of [\(hex(src.pointee.vm_start)), \(hex(src.pointee.vm_end))) failed (\(rc))")
                }
            }
        }
        return child
    }
}

/// vma_needs_copy: page tables are copied at fork only where the faults
/// could not refill them: VM_PFNMAP / VM_MIXEDMAP (VM_COPY_ON_FORK) or a VMA
/// with anon pages (src_vma->anon_vma published). Everything else refaults.
@inline(__always)
func vmaNeedsCopy(_ dst: VMARef, _ src: VMARef) -> Bool {
    if dst.pointee.vm_flags & (DAX_VM_PFNMAP | DAX_VM_MIXEDMAP) != 0 { return true }
    return vmaAnonVMA(src) != nil
}

/// copy_page_range: the child's entries for [vm_start, vm_end) of `src`.
/// A COW mapping is write-protected in the parent as it goes, under one
/// MMU_NOTIFY_PROTECTION_PAGE range over the VMA in the parent's mm. PUD
/// leaves (device-dax only) are not copied: they refault. 0 or -errno.
func copyPageRange(_ dst: VMARef, _ src: VMARef) -> Int32 {
    let srcMM = src.pointee.vm_mm!
    let start = src.pointee.vm_start, end = src.pointee.vm_end
    if isCowMapping(src.pointee.vm_flags) {
        let rc = withMMUNotifierRange(.protectionPage, srcMM, start, end) { copyRanges(dst, src, start, end) }
        // flush_tlb_mm(oldmm): the parent's write-protected entries.
        flushTlbRange(src, start, end)
        return rc
    }
    return copyRanges(dst, src, start, end)
}

/// copy_p4d_range / copy_pud_range / copy_pmd_range over [start, end).
func copyRanges(_ dst: VMARef, _ src: VMARef, _ start: UInt64, _ end: UInt64) -> Int32 {
    let srcMM = src.pointee.vm_mm!
    let dstMM = dst.pointee.vm_mm!
    var a = start
    while a < end {
        let pudEnd = min(roundDown(a, UInt64(pudSize)) + UInt64(pudSize), end)
        let pgde = dax_load_u64(pgdOffset(srcMM, a))
        guard entryPresent(pgde) else { a = pudEnd; continue }
        let srcPud = entryTable(pgde) + pudIndex(a)
        let pude = dax_load_u64(srcPud)
        guard entryPresent(pude), !entryLeaf(pude) else { a = pudEnd; continue }
        while a < pudEnd {
            let next = min(roundDown(a, UInt64(pmdSize)) + UInt64(pmdSize), pudEnd)
            let srcPmd = entryTable(pude) + pmdIndex(a)
            var pmde = dax_load_u64(srcPmd)
            if entryNone(pmde) { a = next; continue }
            guard let dstPud = pudAlloc(dstMM, a), let dstPmd = pmdAlloc(dstMM, dstPud, a) else { return -ENOMEM }
            if entryLeaf(pmde) {
                let rc = copyHugePmd(dst, src, dstPmd, srcPmd, roundDown(a, UInt64(pmdSize)))
                if rc == -ENOMEM { return -ENOMEM }
                if rc == 0 { a = next; continue }
                pmde = dax_load_u64(srcPmd)   // -EAGAIN: split, copy the PTEs
            }
            if entryPresent(pmde) && !entryLeaf(pmde) {
                if copyPteRange(dst, src, dstPmd, srcPmd, a, next) != 0 { return -ENOMEM }
            }
            a = next
        }
    }
    return 0
}

/// copy_huge_pmd: a PMD leaf of an anonymous VMA. File PMDs (DAX) are not
/// copied: they refault in the child. The huge zero PMD is copied (old).
/// An anon THP gets a reference and folio_try_dup_anon_rmap_pmd (the head
/// loses PageAnonExclusive), MM_ANONPAGES + HPAGE_PMD_NR in the child, and
/// both PMDs are write-protected (the child's old). A THP that may be
/// pinned is split in the parent instead (-EAGAIN): its PTEs are copied one
/// by one, each pinned page into a new page. 0, -EAGAIN or -ENOMEM.
func copyHugePmd(_ dst: VMARef, _ src: VMARef, _ dstPmd: EntryPtr, _ srcPmd: EntryPtr, _ haddr: UInt64) -> Int32 {
    guard vmaIsAnonymous(dst) else { return 0 }
    let srcMM = src.pointee.vm_mm!
    let dstMM = dst.pointee.vm_mm!
    let k = srcMM.pointee.kernel!
    // pte_alloc_one: the child's PMD gets its deposited table too.
    guard let pgtable = ptAllocTable(k) else { return -ENOMEM }
    let dstPtl = pmdLockptr(k, dstPmd)
    let srcPtl = pmdLockptr(k, srcPmd)
    dax_spin_lock(dstPtl)
    dax_spin_lock(srcPtl)
    var pmd = dax_load_u64(srcPmd)
    guard entryLeaf(pmd) else {
        dax_spin_unlock(srcPtl)
        dax_spin_unlock(dstPtl)
        ptFreeTable(k, pgtable)
        return -EAGAIN
    }
    if !isHugeZeroPfn(k, entryPfn(pmd)) {
        let folio = pfnToPage(k, entryPfn(pmd)).folio
        folio.refInc()
        if folioTryDupAnonRmap(k, folio, folio.head, hpagePmdNr, .pmd, srcMM: srcMM) != 0 {
            dax_spin_unlock(srcPtl)
            dax_spin_unlock(dstPtl)
            folioPut(k, folio)
            ptFreeTable(k, pgtable)
            splitHugePmd(k, src, srcPmd, haddr)
            return -EAGAIN
        }
        addMMCounter(dstMM, DAX_MM_ANONPAGES, Int64(hpagePmdNr))
    }
    pgtableTransHugeDeposit(k, dstPmd, pgtable)
    dax_atomic64_add(dax_mm_pgtables_bytes(dstMM), Int64(pageSize))   // mm_inc_nr_ptes
    if entryWrite(pmd) {
        setPmdAt(srcMM, haddr, srcPmd, entryWrprotect(pmd))   // pmdp_set_wrprotect
    }
    pmd = entryWrprotect(pmd) & ~PT.uffdWp
    pmd &= ~PT.accessed   // pmd_mkold
    setPmdAt(dstMM, haddr, dstPmd, pmd)
    dax_spin_unlock(srcPtl)
    dax_spin_unlock(dstPtl)
    return 0
}

/// copy_pte_range for [addr, end) inside one PTE table, both PTE locks held
/// (the child's first). Returns 0, or -EBUSY / -ENOMEM (fork fails).
func copyPteRange(_ dst: VMARef, _ src: VMARef, _ dstPmd: EntryPtr, _ srcPmd: EntryPtr,
                  _ addr: UInt64, _ end: UInt64) -> Int32 {
    let srcMM = src.pointee.vm_mm!
    let dstMM = dst.pointee.vm_mm!
    let k = srcMM.pointee.kernel!
    guard pteAlloc(dstMM, dstPmd, addr) != nil else { return -ENOMEM }
    let srcPmde = dax_load_u64(srcPmd)
    let dstPmde = dax_load_u64(dstPmd)
    guard entryPresent(srcPmde), !entryLeaf(srcPmde), entryPresent(dstPmde), !entryLeaf(dstPmde) else { return 0 }
    let dstPtl = pteLockptr(k, dstPmde)
    let srcPtl = pteLockptr(k, srcPmde)
    var rss = (anon: Int64(0), file: Int64(0))
    var ret: Int32 = 0
    dax_spin_lock(dstPtl)
    dax_spin_lock(srcPtl)
    var a = addr
    while a < end {
        let srcPte = entryTable(srcPmde) + pteIndex(a)
        let dstPte = entryTable(dstPmde) + pteIndex(a)
        var e = dax_load_u64(srcPte)
        if entryNone(e) {
            a += UInt64(pageSize)
            continue
        }
        if !entryPresent(e) {
            let r = copyNonpresentPte(dst, src, dstPte, srcPte, a, &rss)
            if r == -EBUSY {
                ret = -EBUSY
                break
            }
            if r == 0 {
                a += UInt64(pageSize)
                continue
            }
            e = dax_load_u64(srcPte)   // -ENOENT: restored, copy it as present
        }
        let r = copyPresentPte(dst, src, dstPte, srcPte, a, e, &rss)
        if r != 0 {
            ret = r
            break
        }
        a += UInt64(pageSize)
    }
    dax_spin_unlock(srcPtl)
    dax_spin_unlock(dstPtl)
    if rss.anon != 0 { addMMCounter(dstMM, DAX_MM_ANONPAGES, rss.anon) }
    if rss.file != 0 { addMMCounter(dstMM, DAX_MM_FILEPAGES, rss.file) }
    return ret
}

/// copy_present_pte: the child maps what the parent maps. An anon page is
/// shared (folio_try_dup_anon_rmap_pte: a reference, a mapcount,
/// PageAnonExclusive cleared); when the folio may be pinned the child gets
/// a copy instead (copy_present_page). A file page gets a reference and a
/// mapcount (folio_dup_file_rmap_pte). The zero page and pfn entries are
/// copied as they are. In a COW mapping a writable entry is write-protected
/// in both; in a shared one the child's is clean; the child's is old and
/// without uffd-wp. 0 or -ENOMEM.
func copyPresentPte(_ dst: VMARef, _ src: VMARef, _ dstPte: EntryPtr, _ srcPte: EntryPtr, _ addr: UInt64,
                    _ pte: PTEntry, _ rss: inout (anon: Int64, file: Int64)) -> Int32 {
    let srcMM = src.pointee.vm_mm!
    let k = srcMM.pointee.kernel!
    if let page = vmNormalPage(k, src, pte) {
        let folio = page.folio
        folio.refInc()   // folio_get
        if folio.isAnon {
            if folioTryDupAnonRmap(k, folio, page, 1, .pte, srcMM: srcMM) != 0 {
                folioPut(k, folio)
                return copyPresentPage(dst, src, dstPte, srcPte, addr, page, &rss)
            }
            rss.anon += 1
        } else {
            folioAddFileRmapPte(k, folio, page)   // folio_dup_file_rmap_pte
            if mmCounter(folio) == DAX_MM_FILEPAGES { rss.file += 1 } else { rss.anon += 1 }
        }
    }
    copyPresentPtes(dst, src, dstPte, srcPte, addr, pte)
    return 0
}

/// __copy_present_ptes for one entry.
@inline(__always)
func copyPresentPtes(_ dst: VMARef, _ src: VMARef, _ dstPte: EntryPtr, _ srcPte: EntryPtr, _ addr: UInt64,
                     _ pte: PTEntry) {
    var e = pte
    if isCowMapping(src.pointee.vm_flags) && entryWrite(e) {
        setPteAt(src.pointee.vm_mm, addr, srcPte, entryWrprotect(e))   // wrprotect_ptes
        e = entryWrprotect(e)
    }
    if src.pointee.vm_flags & DAX_VM_SHARED != 0 { e &= ~PT.dirty }   // pte_mkclean
    e &= ~PT.accessed   // pte_mkold
    e &= ~PT.uffdWp     // the port's VMAs have no uffd-wp
    setPteAt(dst.pointee.vm_mm, addr, dstPte, e)
}

/// copy_present_page: the parent's page may be pinned, so the child gets
/// its own copy now: a new exclusive anon page (folio_add_new_anon_rmap
/// RMAP_EXCLUSIVE, MM_ANONPAGES + 1 in the child), dirty and writable with
/// VM_WRITE. The parent's entry is left as it was (still writable).
/// -ENOMEM when no page is free.
func copyPresentPage(_ dst: VMARef, _ src: VMARef, _ dstPte: EntryPtr, _ srcPte: EntryPtr, _ addr: UInt64,
                     _ page: Page, _ rss: inout (anon: Int64, file: Int64)) -> Int32 {
    let k = src.pointee.vm_mm.pointee.kernel!
    guard let folio = folioAlloc(k, order: 0, zero: false) else { return -ENOMEM }
    if !copyUserHighpage(k, dst: folio.head, src: page) { clearUserHighpage(k, folio.head) }
    folioAddNewAnonRmap(k, folio, dst, addr, .exclusive)
    rss.anon += 1
    let e = maybeMkwrite(entryMkdirty(pfnEntry(pageToPfn(k, folio.head), dst.pointee.vm_page_prot)), dst)
    setPteAt(dst.pointee.vm_mm, addr, dstPte, e)
    return 0
}

/// copy_nonpresent_pte. A migration entry counts in the child's rss and,
/// writable in a COW mapping, becomes readable in the parent too. A
/// device-private entry holds a mapping: a reference, a dup of the anon
/// rmap, rss; writable in a COW mapping, it becomes readable in the parent.
/// A device-exclusive entry is restored in the parent
/// (try_restore_exclusive_pte; -EBUSY when its folio is locked) and
/// -ENOENT asks the caller to copy the now present PTE. Markers: uffd-wp
/// markers are dropped (no uffd-wp VMA), poison and guard kept. Hwpoison
/// entries are copied. The child's entry loses its uffd-wp bit. Returns 0
/// when the entry was copied.
func copyNonpresentPte(_ dst: VMARef, _ src: VMARef, _ dstPte: EntryPtr, _ srcPte: EntryPtr, _ addr: UInt64,
                       _ rss: inout (anon: Int64, file: Int64)) -> Int32 {
    let srcMM = src.pointee.vm_mm!
    let k = srcMM.pointee.kernel!
    let orig = dax_load_u64(srcPte)
    var pte = orig
    let entry = pteToSwpEntry(orig)
    let cow = isCowMapping(src.pointee.vm_flags)
    if isMigrationEntry(entry) {
        if let folio = pfnSwapEntryFolio(k, entry) {
            if mmCounter(folio) == DAX_MM_ANONPAGES { rss.anon += 1 } else { rss.file += 1 }
        }
        if isWritableMigrationEntry(entry) && cow {
            pte = swpEntryToPte(makeReadableMigrationEntry(entry.offset))
            if pteSwpSoftDirty(orig) { pte = pteSwpMksoftDirty(pte) }
            if pteSwpUffdWp(orig) { pte = pteSwpMkuffdWp(pte) }
            setPteAt(srcMM, addr, srcPte, pte)
        }
    } else if isDevicePrivateEntry(entry) {
        if let page = pfnSwapEntryToPage(k, entry) {
            let folio = page.folio
            folio.refInc()
            if folio.isAnon {
                rss.anon += 1
                _ = folioTryDupAnonRmap(k, folio, page, 1, .pte, srcMM: srcMM)   // cannot fail: device-private
            } else {
                rss.file += 1
                folioAddFileRmapPte(k, folio, page)
            }
        }
        if isWritableDevicePrivateEntry(entry) && cow {
            pte = swpEntryToPte(makeReadableDevicePrivateEntry(entry.offset))
            if pteSwpUffdWp(orig) { pte = pteSwpMkuffdWp(pte) }
            setPteAt(srcMM, addr, srcPte, pte)
        }
    } else if isDeviceExclusiveEntry(entry) {
        if tryRestoreExclusivePte(k, src, addr, srcPte, orig) != 0 { return -EBUSY }
        return -ENOENT
    } else if isPteMarkerEntry(entry) {
        let marker = entry.offset & (PteMarker.poisoned | PteMarker.guardRegion)
        if marker != 0 {
            setPteAt(dst.pointee.vm_mm, addr, dstPte, swpEntryToPte(SwapEntry(type: SwapType.pteMarker, offset: marker)))
        }
        return 0
    }
    pte &= ~PT.swpUffdWp   // pte_swp_clear_uffd_wp: no uffd-wp in the child
    setPteAt(dst.pointee.vm_mm, addr, dstPte, pte)
    return 0
}
