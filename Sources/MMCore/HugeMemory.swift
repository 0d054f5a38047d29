// mm/huge_memory.c: PMD and PUD folio inserts, the pfn-only contrast, zap
// and split of huge entries.
//
// The port defaults to the mid-2025 fix ("don't mark refcounted folios
// special in vmf_insert_folio_pmd()/pud()"): a refcounted folio is mapped
// with a normal huge entry. DAX_MODE_SPECIAL_HUGE_ENTRIES reproduces 6.15 as
// merged, where the same references were taken but the entry was special.
// x86-64 needs no deposited page table for PMD mappings, so none is kept.

import CDaxMM

@inline(__always)
func specialHugeMode(_ k: KernelRef) -> Bool { k.pointee.mode & DAX_MODE_SPECIAL_HUGE_ENTRIES.rawValue != 0 }

/// The PMD entry for the fault, allocating tables when the handler was called
/// without the fault walk having done it.
@inline(__always)
func vmfPmd(_ vmf: VMFaultRef) -> EntryPtr? {
    if let p = vmf.pointee.pmd { return p }
    let mm = vmf.pointee.vma.pointee.vm_mm!
    guard let pud = pudAlloc(mm, vmf.pointee.address), let pmd = pmdAlloc(mm, pud, vmf.pointee.address) else { return nil }
    vmf.pointee.pmd = pmd
    return pmd
}

@inline(__always)
func vmfPud(_ vmf: VMFaultRef) -> EntryPtr? {
    if let p = vmf.pointee.pud { return p }
    let mm = vmf.pointee.vma.pointee.vm_mm!
    guard let pud = pudAlloc(mm, vmf.pointee.address) else { return nil }
    vmf.pointee.pud = pud
    return pud
}

/// insert_pmd / insert_pud for a folio, with the entry lock held. Returns 0
/// (inserted) or -EEXIST (an entry was there: at most upgraded in place).
@inline(__always)
func insertHugeFolioLocked(_ k: KernelRef, _ vma: VMARef, _ entry: EntryPtr, _ folio: Folio,
                           write: Bool, level: RmapLevel) -> Int32 {
    let old = dax_load_u64(entry)
    let pfn = pageToPfn(k, folio.head)
    if !entryNone(old) {
        if write {
            if entryPfn(old) != pfn {
                vmReport(k, folio.head, rule: "WARN_ON_ONCE(!is_huge_zero_pmd(*pmd) && pmd_pfn(*pmd) != pfn)",
                         function: level == .pmd ? "insert_pmd" : "insert_pud")
                return -EEXIST
            }
            var e = entryMkdirty(entryMkyoung(old))
            if vma.pointee.vm_flags & DAX_VM_WRITE != 0 { e = entryMkwrite(e) }
            dax_store_u64(entry, e)
        }
        return -EEXIST
    }
    var e = entryMkhuge(pfnEntry(pfn, vma.pointee.vm_page_prot))
    if specialHugeMode(k) { e = entryMkspecial(e) }
    guard folioGet(k, folio) else { return -EINVAL }
    let mm = vma.pointee.vm_mm!
    if level == .pmd {
        folioAddFileRmapPmd(k, folio, folio.head)
        addMMCounter(mm, DAX_MM_FILEPAGES, Int64(hpagePmdNr))
    } else {
        folioAddFileRmapPud(k, folio, folio.head)
        addMMCounter(mm, DAX_MM_FILEPAGES, Int64(hpagePudNr))
    }
    if write {
        e = entryMkdirty(entryMkyoung(e))
        if vma.pointee.vm_flags & DAX_VM_WRITE != 0 { e = entryMkwrite(e) }
    }
    dax_store_u64(entry, e)
    return 0
}

/// vmf_insert_folio_pmd. The order is checked first (WARN, SIGBUS), then
/// insert_pmd checks the address (SIGBUS) and allocates (OOM), the order of
/// "mm/huge_memory: move more common code into insert_pmd()".
@inline(__always)
public func vmfInsertFolioPmd(_ vmf: VMFaultRef, _ folio: Folio, write: Bool) -> UInt32 {
    let vma = vmf.pointee.vma!
    let k = vma.pointee.vm_mm.pointee.kernel!
    let addr = roundDown(vmf.pointee.address, UInt64(pmdSize))
    guard folio.order == pmdOrder else {
        vmReport(k, folio.head, rule: "WARN_ON_ONCE(folio_order(folio) != PMD_ORDER)", function: "vmf_insert_folio_pmd")
        return DAX_VM_FAULT_SIGBUS
    }
    guard addr >= vma.pointee.vm_start, addr < vma.pointee.vm_end else { return DAX_VM_FAULT_SIGBUS }
    guard let pmd = vmfPmd(vmf) else { return DAX_VM_FAULT_OOM }
    let ptl = pmdLockptr(k, pmd)
    dax_spin_lock(ptl)
    let rc = insertHugeFolioLocked(k, vma, pmd, folio, write: write, level: .pmd)
    dax_spin_unlock(ptl)
    // -EEXIST is swallowed; a refused folio_get (the seed's BUG) is SIGBUS.
    return rc == -EINVAL ? DAX_VM_FAULT_SIGBUS : DAX_VM_FAULT_NOPAGE
}

/// vmf_insert_folio_pud. The order is checked first (WARN, SIGBUS), then
/// insert_pud checks the address (SIGBUS), as for the PMD.
@inline(__always)
public func vmfInsertFolioPud(_ vmf: VMFaultRef, _ folio: Folio, write: Bool) -> UInt32 {
    let vma = vmf.pointee.vma!
    let mm = vma.pointee.vm_mm!
    let k = mm.pointee.kernel!
    let addr = roundDown(vmf.pointee.address, UInt64(pudSize))
    guard folio.order == pudOrder else {
        vmReport(k, folio.head, rule: "WARN_ON_ONCE(folio_order(folio) != PUD_ORDER)", function: "vmf_insert_folio_pud")
        return DAX_VM_FAULT_SIGBUS
    }
    guard addr >= vma.pointee.vm_start, addr < vma.pointee.vm_end else { return DAX_VM_FAULT_SIGBUS }
    guard let pud = vmfPud(vmf) else { return DAX_VM_FAULT_OOM }
    let ptl = pudLockptr(mm)
    dax_spin_lock(ptl)
    let rc = insertHugeFolioLocked(k, vma, pud, folio, write: write, level: .pud)
    dax_spin_unlock(ptl)
    return rc == -EINVAL ? DAX_VM_FAULT_SIGBUS : DAX_VM_FAULT_NOPAGE
}

/// vmf_insert_pfn_pmd / vmf_insert_pfn_pud: special entries, no accounting.
/// The kernel BUGs unless the VMA is VM_PFNMAP or VM_MIXEDMAP; the port
/// reports SIGBUS.
public func vmfInsertPfnHuge(_ vmf: VMFaultRef, pfn: UInt64, write: Bool, pud: Bool) -> UInt32 {
    let vma = vmf.pointee.vma!
    let mm = vma.pointee.vm_mm!
    let k = mm.pointee.kernel!
    let f = vma.pointee.vm_flags
    guard f & (DAX_VM_PFNMAP | DAX_VM_MIXEDMAP) != 0,
          f & (DAX_VM_PFNMAP | DAX_VM_MIXEDMAP) != (DAX_VM_PFNMAP | DAX_VM_MIXEDMAP) else { return DAX_VM_FAULT_SIGBUS }
    let size = UInt64(pud ? pudSize : pmdSize)
    let addr = roundDown(vmf.pointee.address, size)
    guard addr >= vma.pointee.vm_start, addr < vma.pointee.vm_end, pfn % (size >> UInt64(pageShift)) == 0 else {
        return DAX_VM_FAULT_SIGBUS
    }
    guard let entry = pud ? vmfPud(vmf) : vmfPmd(vmf) else { return DAX_VM_FAULT_OOM }
    let ptl = pud ? pudLockptr(mm) : pmdLockptr(k, entry)
    dax_spin_lock(ptl)
    defer { dax_spin_unlock(ptl) }
    let old = dax_load_u64(entry)
    if !entryNone(old) {
        if write && entryPfn(old) == pfn {
            var e = entryMkdirty(entryMkyoung(old))
            if f & DAX_VM_WRITE != 0 { e = entryMkwrite(e) }
            dax_store_u64(entry, e)
        }
        return DAX_VM_FAULT_NOPAGE
    }
    var e = entryMkspecial(entryMkhuge(pfnEntry(pfn, vma.pointee.vm_page_prot)))
    if write {
        e = entryMkdirty(entryMkyoung(e))
        if f & DAX_VM_WRITE != 0 { e = entryMkwrite(e) }
    }
    dax_store_u64(entry, e)
    return DAX_VM_FAULT_NOPAGE
}

// MARK: zap and split (§4.4, §4.5)

/// The folio a huge entry maps, or nil when the kernel does no folio work
/// for it (special entry of a non-DAX VMA, the zero pfn, no struct page).
@inline(__always)
func hugeEntryFolio(_ k: KernelRef, _ vma: VMARef, _ e: PTEntry) -> Folio? {
    if entrySpecial(e) && !vmaIsDax(vma) { return nil }
    let pfn = entryPfn(e)
    if isZeroPfn(pfn) || !pfnValid(k, pfn) { return nil }
    return pfnToPage(k, pfn).folio
}

/// Clears a huge entry under its lock and undoes its accounting: rmap, rss,
/// dirty/young into the folio; the reference is dropped after the unlock.
@inline(__always)
func removeHugeEntry(_ k: KernelRef, _ vma: VMARef, _ entry: EntryPtr, _ lock: UnsafeMutablePointer<UInt32>, level: RmapLevel) {
    dax_spin_lock(lock)
    let e = dax_xchg_u64(entry, 0)
    var put: Folio? = nil
    if entryPresent(e), let folio = hugeEntryFolio(k, vma, e) {
        if entryDirty(e) { folio.markDirty() }
        if entryYoung(e) { folio.markAccessed() }
        let mm = vma.pointee.vm_mm!
        if level == .pmd {
            folioRemoveRmapPmd(k, folio, folio.head)
            addMMCounter(mm, DAX_MM_FILEPAGES, -Int64(hpagePmdNr))
        } else {
            folioRemoveRmapPud(k, folio, folio.head)
            addMMCounter(mm, DAX_MM_FILEPAGES, -Int64(hpagePudNr))
        }
        put = folio
    }
    dax_spin_unlock(lock)
    if let put { folioPut(k, put) }   // tlb_remove_page_size: after the flush
}

/// zap_huge_pmd
@inline(__always)
public func zapHugePmd(_ k: KernelRef, _ vma: VMARef, _ pmd: EntryPtr, _ addr: UInt64) {
    removeHugeEntry(k, vma, pmd, pmdLockptr(k, pmd), level: .pmd)
}

/// zap_huge_pud
@inline(__always)
public func zapHugePud(_ k: KernelRef, _ vma: VMARef, _ pud: EntryPtr, _ addr: UInt64) {
    removeHugeEntry(k, vma, pud, pudLockptr(vma.pointee.vm_mm), level: .pud)
}

/// __split_huge_pmd_locked for a file VMA: the mapping is dropped, not
/// converted to PTEs; later faults refault at a smaller size.
public func splitHugePmd(_ k: KernelRef, _ vma: VMARef, _ pmd: EntryPtr, _ addr: UInt64) {
    removeHugeEntry(k, vma, pmd, pmdLockptr(k, pmd), level: .pmd)
}

/// __split_huge_pud_locked: likewise unmaps.
public func splitHugePud(_ k: KernelRef, _ vma: VMARef, _ pud: EntryPtr, _ addr: UInt64) {
    removeHugeEntry(k, vma, pud, pudLockptr(vma.pointee.vm_mm), level: .pud)
}
