// mm/memory.c: the zero page and vm_normal_page; page and pfn inserts
// (validate_page_before_insert, insert_page_into_pte_locked, get_locked_pte,
// insert_page, vm_insert_page, vmf_insert_page_mkwrite, insert_pfn,
// vmf_insert_pfn); zap (zap_pte_range, zap_pmd_range, unmap_page_range,
// zap_page_range_single) with the split of a huge entry straddling an address
// (split_huge_pmd_address); free_pgtables. handle_mm_fault is in Fault.swift,
// change_protection in Mprotect.swift, move_page_tables in Mremap.swift.
//
// Hot-path rules: pointers only, no allocation, no Swift object; locks are
// the split ptlocks (spinlocks) and mmap_lock (held by the caller).

import CDaxMM

// MARK: the zero page

/// is_zero_pfn: the port's shared zero page is pfn 0, a reserved RAM page.
@inline(__always) public func isZeroPfn(_ pfn: UInt64) -> Bool { pfn == 0 }

// MARK: vm_normal_page

/// vm_normal_page: the page a present PTE maps, or nil for special entries
/// (zero page, pfn-only inserts) and pfns without a struct page.
@inline(__always)
public func vmNormalPage(_ k: KernelRef, _ vma: VMARef, _ entry: PTEntry) -> Page? {
    if entrySpecial(entry) { return nil }
    let pfn = entryPfn(entry)
    if isZeroPfn(pfn) || !pfnValid(k, pfn) { return nil }
    return pfnToPage(k, pfn)
}

// MARK: inserts (mm/memory.c: insert_page, insert_pfn)

/// vm_mixed_zeropage_allowed
@inline(__always)
func vmMixedZeropageAllowed(_ vma: VMARef) -> Bool {
    let f = vma.pointee.vm_flags
    if f & DAX_VM_SHARED == 0 { return true }                   // COW mapping
    if f & (DAX_VM_WRITE | DAX_VM_MAYWRITE) == 0 { return true } // cannot become writable
    if let ops = vma.pointee.vm_ops, ops.pointee.pfn_mkwrite != nil,
       vmaIsFsdax(vma) || f & DAX_VM_IO != 0 { return true }
    return false
}

/// validate_page_before_insert: 0 or -EINVAL.
@inline(__always)
public func validatePageBeforeInsert(_ k: KernelRef, _ vma: VMARef, _ page: Page) -> Int32 {
    let folio = page.folio
    if isZeroPfn(pageToPfn(k, page)) {
        return vmMixedZeropageAllowed(vma) ? 0 : -EINVAL
    }
    // A free folio (refcount 0) cannot be mapped: fs/dax must take it to 1 first.
    if folio.refCount == 0 { return -EINVAL }
    return 0
}

/// insert_page_into_pte_locked: the PTE lock is held.
@inline(__always)
public func insertPageIntoPteLocked(_ k: KernelRef, _ vma: VMARef, _ pte: EntryPtr, _ addr: UInt64,
                                    _ page: Page, _ prot: UInt64, mkwrite: Bool,
                                    slot: Int32 = dax_this_slot()) -> Int32 {
    let old = dax_load_u64(pte)
    let pfn = pageToPfn(k, page)
    if !entryNone(old) {
        guard mkwrite else { return -EBUSY }
        if entryPfn(old) != pfn {
            if !isZeroPfn(entryPfn(old)) {
                vmReport(k, page, rule: "WARN_ON_ONCE(pte_pfn(ptep_get(pte)) != page_to_pfn(page))",
                         function: "insert_page_into_pte_locked")
            }
            return -EFAULT
        }
        // Upgrade in place: young, writable if VM_WRITE; no new reference.
        ptepSetAccessFlags(vma, addr, pte, entryMkyoung(maybeMkwrite(old, vma)))
        return 0
    }
    var e = pfnEntry(pfn, prot)
    if isZeroPfn(pfn) {
        e = entryMkspecial(entryWrprotect(e))
    } else {
        let folio = page.folio
        guard folioGet(k, folio) else { return -EINVAL }
        addMMCounter(vma.pointee.vm_mm, DAX_MM_FILEPAGES, 1, slot: slot)
        folioAddFileRmapPte(k, folio, page, slot: slot)
        // Only a refcounted page becomes young/dirty/writable: the shared zero
        // page stays a read-only special entry.
        if mkwrite { e = maybeMkwrite(entryMkdirty(entryMkyoung(e)), vma) }
    }
    setPteAt(vma.pointee.vm_mm, addr, pte, e)
    return 0
}

/// get_locked_pte: allocates down to the PTE and takes its lock. nil: -ENOMEM
/// (or the PMD is a huge leaf: the caller treats it as busy).
@inline(__always)
func getLockedPte(_ mm: MMRef, _ addr: UInt64) -> (EntryPtr, UnsafeMutablePointer<UInt32>)? {
    guard let pud = pudAlloc(mm, addr), let pmd = pmdAlloc(mm, pud, addr), let pte = pteAlloc(mm, pmd, addr) else {
        return nil
    }
    let ptl = pteLockptr(mm.pointee.kernel, dax_load_u64(pmd))
    dax_spin_lock(ptl)
    return (pte, ptl)
}

/// insert_page
@inline(__always)
public func insertPage(_ vma: VMARef, _ addr: UInt64, _ page: Page, _ prot: UInt64, mkwrite: Bool,
                       slot: Int32 = dax_this_slot()) -> Int32 {
    let mm = vma.pointee.vm_mm!
    let k = mm.pointee.kernel!
    let rc = validatePageBeforeInsert(k, vma, page)
    if rc != 0 { return rc }
    guard let (pte, ptl) = getLockedPte(mm, addr) else { return -ENOMEM }
    let r = insertPageIntoPteLocked(k, vma, pte, addr, page, prot, mkwrite: mkwrite, slot: slot)
    dax_spin_unlock(ptl)
    return r
}

/// vm_insert_page: -EFAULT outside the VMA; sets VM_MIXEDMAP; never mkwrite.
/// (The kernel BUGs on a VM_PFNMAP VMA; the port returns -EINVAL.)
public func vmInsertPage(_ vma: VMARef, _ addr: UInt64, _ page: Page) -> Int32 {
    guard addr >= vma.pointee.vm_start, addr < vma.pointee.vm_end else { return -EFAULT }
    if vma.pointee.vm_flags & DAX_VM_MIXEDMAP == 0 {
        if vma.pointee.vm_flags & DAX_VM_PFNMAP != 0 { return -EINVAL }
        vma.pointee.vm_flags |= DAX_VM_MIXEDMAP
    }
    return insertPage(vma, addr, page, vma.pointee.vm_page_prot, mkwrite: false)
}

/// vmf_insert_page_mkwrite
@inline(__always)
public func vmfInsertPageMkwrite(_ vmf: VMFaultRef, _ page: Page, write: Bool) -> UInt32 {
    let vma = vmf.pointee.vma!
    let addr = vmf.pointee.address
    guard addr >= vma.pointee.vm_start, addr < vma.pointee.vm_end else { return DAX_VM_FAULT_SIGBUS }
    return vmfError(insertPage(vma, addr, page, vma.pointee.vm_page_prot, mkwrite: write, slot: vmfSlot(vmf)))
}

/// vmf_error: -ENOMEM is VM_FAULT_OOM, -EHWPOISON VM_FAULT_HWPOISON, any
/// other error VM_FAULT_SIGBUS.
@inline(__always)
public func vmfErrorCode(_ err: Int32) -> UInt32 {
    switch err {
    case -ENOMEM: return DAX_VM_FAULT_OOM
    case -EHWPOISON: return DAX_VM_FAULT_HWPOISON
    default: return DAX_VM_FAULT_SIGBUS
    }
}

/// The errno -> vm_fault_t mapping of the insert helpers: vmf_error, with 0
/// and -EBUSY ("someone else mapped it") both a success.
@inline(__always)
func vmfError(_ rc: Int32) -> UInt32 {
    rc == 0 || rc == -EBUSY ? DAX_VM_FAULT_NOPAGE : vmfErrorCode(rc)
}

/// insert_pfn: a special PTE with no struct-page accounting (the contrast).
@inline(__always)
public func insertPfn(_ vma: VMARef, _ addr: UInt64, _ pfn: UInt64, _ prot: UInt64, mkwrite: Bool) -> UInt32 {
    let mm = vma.pointee.vm_mm!
    guard let (pte, ptl) = getLockedPte(mm, addr) else { return DAX_VM_FAULT_OOM }
    defer { dax_spin_unlock(ptl) }
    let old = dax_load_u64(pte)
    if !entryNone(old) {
        guard mkwrite else { return DAX_VM_FAULT_NOPAGE }
        if entryPfn(old) != pfn {
            // WARN unless zero pfn, then skip silently (insert_page returns
            // -EFAULT instead).
            let k = mm.pointee.kernel!
            if !isZeroPfn(entryPfn(old)) && pfnValid(k, entryPfn(old)) {
                vmReport(k, pfnToPage(k, entryPfn(old)), rule: "WARN_ON_ONCE(!is_zero_pfn(pte_pfn(entry)))",
                         function: "insert_pfn")
            }
            return DAX_VM_FAULT_NOPAGE
        }
        ptepSetAccessFlags(vma, addr, pte, maybeMkwrite(entryMkdirty(entryMkyoung(old)), vma))
        return DAX_VM_FAULT_NOPAGE
    }
    var e = entryMkspecial(pfnEntry(pfn, prot))
    if mkwrite { e = maybeMkwrite(entryMkdirty(entryMkyoung(e)), vma) }
    setPteAt(mm, addr, pte, e)
    return DAX_VM_FAULT_NOPAGE
}

/// vmf_insert_pfn: VM_PFNMAP or VM_MIXEDMAP only.
public func vmfInsertPfn(_ vma: VMARef, _ addr: UInt64, _ pfn: UInt64) -> UInt32 {
    guard vma.pointee.vm_flags & (DAX_VM_PFNMAP | DAX_VM_MIXEDMAP) != 0 else { return DAX_VM_FAULT_SIGBUS }
    guard addr >= vma.pointee.vm_start, addr < vma.pointee.vm_end else { return DAX_VM_FAULT_SIGBUS }
    return insertPfn(vma, addr, pfn, vma.pointee.vm_page_prot, mkwrite: false)
}

// MARK: zap (mm/memory.c): unmap_page_range -> zap_pud_range -> zap_pmd_range -> zap_pte_range

/// The port's mmu_gather batch: folio references are dropped after the
/// entries are cleared, the ptlock released and the TLB flushed, at most
/// `mmuGatherBatch` at a time, from a stack buffer.
let mmuGatherBatch = 64

/// mm_counter: the rss counter a folio's mappings count in (MM_ANONPAGES
/// for anon folios, MM_FILEPAGES otherwise; the port has no shmem).
@inline(__always)
public func mmCounter(_ folio: Folio) -> dax_mm_counter { folio.isAnon ? DAX_MM_ANONPAGES : DAX_MM_FILEPAGES }

/// should_zap_folio: with zap_details.even_cows false (unmap_mapping_pages
/// for a file's pages only), the anon pages of a private mapping (COW
/// copies) stay; everything else goes.
@inline(__always)
func shouldZapFolio(_ evenCows: Bool, _ folio: Folio) -> Bool { evenCows || !folio.isAnon }

/// zap_pte_range over [addr, end) inside one PTE table. Empty entries are
/// skipped; each batch's cleared range is flushed before its folio puts.
/// Non-present entries (zap_nonpresent_ptes): a device-private or
/// device-exclusive entry holds a mapping and a reference like a present
/// PTE, so it loses its rmap, rss and reference; a migration entry only its
/// rss (the migration holds the rest); hwpoison and marker entries are just
/// cleared. `evenCows` false (zap_details.even_cows) keeps anon folios
/// (should_zap_folio) and hwpoison entries (should_zap_cows).
@inline(__always)
func zapPteRange(_ k: KernelRef, _ vma: VMARef, _ pmd: EntryPtr, _ addr: UInt64, _ end: UInt64,
                 evenCows: Bool = true, dropMarkers: Bool = true) {
    let mm = vma.pointee.vm_mm!
    let pmde = dax_load_u64(pmd)
    guard entryPresent(pmde), !entryLeaf(pmde) else { return }
    let ptl = pteLockptr(k, pmde)
    withUnsafeTemporaryAllocation(of: UnsafeMutablePointer<dax_page>.self, capacity: 64) { batch in
        var a = addr
        while a < end {
            var n = 0
            var rssFile: Int64 = 0, rssAnon: Int64 = 0
            var tlb = TLBGather()
            dax_spin_lock(ptl)
            while a < end && n < mmuGatherBatch {
                let pte = entryTable(pmde) + pteIndex(a)
                let cur = dax_load_u64(pte)
                if entryNone(cur) || !evenCows && !shouldZapEntry(k, vma, cur)
                    || !dropMarkers && isSwapPte(cur) && keepsMarker(vma, cur) {
                    a += UInt64(pageSize)
                    continue
                }
                let e = ptepGetAndClear(mm, a, pte)
                if entryPresent(e) {
                    tlb.adjust(a, UInt64(pageSize), DAX_PGTABLE_LEVEL_PTE)   // tlb_remove_tlb_entry
                    if let page = vmNormalPage(k, vma, e) {
                        let folio = page.folio
                        if entryDirty(e) { folio.markDirty() }
                        if entryYoung(e) { folio.markAccessed() }
                        folioRemoveRmapPte(k, folio, page)
                        if folio.isAnon { rssAnon -= 1 } else { rssFile -= 1 }
                        batch[n] = folio.raw
                        n += 1
                    }
                } else {
                    let entry = pteToSwpEntry(e)
                    if let page = pfnSwapEntryToPage(k, entry), isMigrationEntry(entry) || swapEntryHoldsMapping(entry) {
                        let folio = page.folio
                        if folio.isAnon { rssAnon -= 1 } else { rssFile -= 1 }
                        if swapEntryHoldsMapping(entry) {
                            folioRemoveRmapPte(k, folio, page)
                            batch[n] = folio.raw
                            n += 1
                        }
                    }
                }
                a += UInt64(pageSize)
            }
            dax_spin_unlock(ptl)
            if rssFile != 0 { addMMCounter(mm, DAX_MM_FILEPAGES, rssFile) }
            if rssAnon != 0 { addMMCounter(mm, DAX_MM_ANONPAGES, rssAnon) }
            // tlb_flush_mmu: the references go after the flush.
            tlb.flush(vma)
            for i in 0..<n { folioPut(k, Folio(batch[i])) }
        }
    }
}

/// With zap_details.even_cows false: whether the entry is zapped (the
/// zero page and file pages are; anon folios, present or behind a
/// device-private, device-exclusive or migration entry, and hwpoison
/// entries are not).
@inline(__always)
func shouldZapEntry(_ k: KernelRef, _ vma: VMARef, _ e: PTEntry) -> Bool {
    if entryPresent(e) {
        guard let page = vmNormalPage(k, vma, e) else { return true }
        return shouldZapFolio(false, page.folio)
    }
    let entry = pteToSwpEntry(e)
    if isHwpoisonEntry(entry) { return false }
    if let page = pfnSwapEntryToPage(k, entry), isMigrationEntry(entry) || swapEntryHoldsMapping(entry) {
        return shouldZapFolio(false, page.folio)
    }
    return true
}

/// zap_nonpresent_ptes' marker rules without ZAP_FLAG_DROP_MARKER
/// (madvise(MADV_DONTNEED), unmap_mapping_range): a guard marker stays, an
/// uffd-wp marker stays in a file VMA (an anon VMA drops it); munmap and
/// exit_mmap drop every marker.
@inline(__always)
func keepsMarker(_ vma: VMARef, _ e: PTEntry) -> Bool {
    let entry = pteToSwpEntry(e)
    guard isPteMarkerEntry(entry) else { return false }
    if entry.offset & PteMarker.guardRegion != 0 { return true }
    if entry.offset & PteMarker.uffdWp != 0 { return !vmaIsAnonymous(vma) }
    return false
}

/// zap_pmd_range
@inline(__always)
func zapPmdRange(_ k: KernelRef, _ vma: VMARef, _ pud: EntryPtr, _ addr: UInt64, _ end: UInt64,
                 evenCows: Bool = true, dropMarkers: Bool = true) {
    var a = addr
    while a < end {
        let next = min(roundDown(a, UInt64(pmdSize)) + UInt64(pmdSize), end)
        let pmd = pmdOffset(pud, a)
        let e = dax_load_u64(pmd)
        if entryLeaf(e) {
            if a % UInt64(pmdSize) == 0 && next - a == UInt64(pmdSize) {
                zapHugePmd(k, vma, pmd, a)
                a = next
                continue
            }
            // Part of a huge entry: split it (a DAX entry is unmapped; an
            // anon THP becomes PTEs, whose part in range goes below).
            splitHugePmd(k, vma, pmd, a)
        }
        let e2 = dax_load_u64(pmd)
        if entryPresent(e2) && !entryLeaf(e2) {
            zapPteRange(k, vma, pmd, a, next, evenCows: evenCows, dropMarkers: dropMarkers)
        }
        a = next
    }
}

/// unmap_page_range for [start, end) of `vma`; `evenCows` is
/// zap_details.even_cows (false: anon COW pages stay).
public func zapVMARange(_ mm: MMRef, _ vma: VMARef, _ start: UInt64, _ end: UInt64, evenCows: Bool = true,
                        dropMarkers: Bool = true) {
    let k = mm.pointee.kernel!
    var a = max(start, vma.pointee.vm_start)
    let stop = min(end, vma.pointee.vm_end)
    while a < stop {
        let next = min(roundDown(a, UInt64(pudSize)) + UInt64(pudSize), stop)
        let pgd = pgdOffset(mm, a)
        if entryPresent(dax_load_u64(pgd)) {
            let pud = pudOffset(pgd, a)
            let e = dax_load_u64(pud)
            if entryLeaf(e) {
                if a % UInt64(pudSize) == 0 && next - a == UInt64(pudSize) {
                    zapHugePud(k, vma, pud, a)
                } else {
                    splitHugePud(k, vma, pud, a)
                }
            } else if entryPresent(e) {
                zapPmdRange(k, vma, pud, a, next, evenCows: evenCows, dropMarkers: dropMarkers)
            }
        }
        a = next
    }
}

/// zap_page_range_single / zap_vma_ptes: the caller holds mmap_lock. Each
/// VMA's part is one MMU_NOTIFY_CLEAR range.
public func zapPageRange(_ mm: MMRef, _ start: UInt64, _ end: UInt64) {
    var a = start
    while a < end, let v = findVMA(mm, a), v.pointee.vm_start < end {
        zapPageRangeSingle(v, max(a, v.pointee.vm_start), min(end, v.pointee.vm_end))
        a = v.pointee.vm_end
    }
}

/// zap_page_range_single for one VMA: unmap_page_range inside an
/// MMU_NOTIFY_CLEAR range (`evenCows`: zap_details.even_cows), without
/// ZAP_FLAG_DROP_MARKER (guard markers, and uffd-wp markers of file VMAs,
/// stay).
@inline(__always)
public func zapPageRangeSingle(_ vma: VMARef, _ start: UInt64, _ end: UInt64, evenCows: Bool = true) {
    let mm = vma.pointee.vm_mm!
    withMMUNotifierRange(.clear, mm, start, end) {
        zapVMARange(mm, vma, start, end, evenCows: evenCows, dropMarkers: false)
    }
}

/// Splits (for DAX: unmaps) a huge PUD or PMD entry that straddles `addr`
/// (vma_adjust_trans_huge / split_huge_pmd_address).
func splitHugeAddress(_ mm: MMRef, _ vma: VMARef, _ addr: UInt64) {
    let k = mm.pointee.kernel!
    let w = walk(mm, addr)
    if let pud = w.pud, entryLeaf(dax_load_u64(pud)), addr % UInt64(pudSize) != 0 {
        splitHugePud(k, vma, pud, addr)
        return
    }
    if let pmd = w.pmd, entryLeaf(dax_load_u64(pmd)), addr % UInt64(pmdSize) != 0 {
        splitHugePmd(k, vma, pmd, addr)
    }
}

// MARK: free_pgtables

/// Frees page tables below [start, end) that no VMA needs any more: a table
/// goes when no VMA overlaps the whole range it translates. Holds mmap_lock
/// for write (the kernel's floor/ceiling logic, by direct VMA lookup).
func freePgtables(_ mm: MMRef, _ start: UInt64, _ end: UInt64) {
    let k = mm.pointee.kernel!
    func unused(_ lo: UInt64, _ size: UInt64) -> Bool {
        guard let v = findVMA(mm, lo) else { return true }
        return v.pointee.vm_start >= lo + size
    }
    var a = roundDown(start, UInt64(pudSize) << 9)
    let stop = min(end, 1 << 48)
    while a < stop {
        let pgdSpan = UInt64(pudSize) << 9
        let pgd = pgdOffset(mm, a)
        if entryPresent(dax_load_u64(pgd)) {
            let pudTable = entryTable(dax_load_u64(pgd))
            for i in 0..<PT.entriesPerTable {
                let pa = a + UInt64(i) * UInt64(pudSize)
                guard pa + UInt64(pudSize) > start, pa < end else { continue }
                let pud = pudTable + i
                let pe = dax_load_u64(pud)
                guard entryPresent(pe), !entryLeaf(pe) else { continue }
                let pmdTable = entryTable(pe)
                for j in 0..<PT.entriesPerTable {
                    let ma = pa + UInt64(j) * UInt64(pmdSize)
                    guard ma + UInt64(pmdSize) > start, ma < end else { continue }
                    let pmd = pmdTable + j
                    let me = dax_load_u64(pmd)
                    if entryPresent(me), !entryLeaf(me), unused(ma, UInt64(pmdSize)) {
                        pmdClear(pmd)
                        ptFreeTable(k, entryTable(me))
                        dax_atomic64_add(dax_mm_pgtables_bytes(mm), -Int64(pageSize))
                    }
                }
                if unused(pa, UInt64(pudSize)) && tableEmpty(pmdTable) {
                    pudClear(pud)
                    ptFreeTable(k, pmdTable)
                    dax_atomic64_add(dax_mm_pgtables_bytes(mm), -Int64(pageSize))
                }
            }
            if unused(a, pgdSpan) && tableEmpty(pudTable) {
                pgdClear(pgd)
                ptFreeTable(k, pudTable)
                dax_atomic64_add(dax_mm_pgtables_bytes(mm), -Int64(pageSize))
            }
        }
        a += pgdSpan
    }
}

@inline(__always)
func tableEmpty(_ t: EntryPtr) -> Bool {
    for i in 0..<PT.entriesPerTable where dax_load_u64(t + i) != 0 { return false }
    return true
}
