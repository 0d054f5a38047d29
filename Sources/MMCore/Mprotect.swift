// mm/mprotect.c: change_protection (change_pud_range -> change_pmd_range ->
// change_pte_range, with change_huge_pmd / change_huge_pud) for the port's
// entries, and mprotect (do_mprotect_pkey, mprotect_fixup) on MM.

import CDaxMM
import DAXBase

/// change_protection: applies the VMA's new protection to the entries of
/// [start, end) in `vma`: each present entry becomes pte_modify(entry, the
/// new vm_page_prot) (pfn, accessed, dirty, special, soft-dirty, uffd-wp
/// and the huge bit kept; present, user, RW and NX from the new
/// protection: a shared mapping without write notification gets RW back at
/// once, one with it (fs-dax's pfn_mkwrite) and a private one do not), then,
/// with MM_CP_TRY_CHANGE_WRITABLE (vma_wants_manual_pte_write_upgrade: a
/// writable private VMA, or a shared one that wants write notification),
/// an entry that can_change_pte_writable allows (an exclusive anon page; a
/// dirty shared entry) is made writable without waiting for its write
/// fault; PUD leaves get pte_modify only (change_huge_pud). PROT_NONE
/// entries stay mapped like the kernel's pte_protnone ones (present without
/// _PAGE_USER): references, mapcounts and rss do not change, and the VMA's
/// missing VM_READ keeps faults and GUP out. The entries that changed are
/// flushed once at the end (the mmu_gather of mprotect_fixup). Non-present
/// entries: a writable migration entry becomes a readable one (exclusive
/// for an anon folio), a writable device-private entry a readable one;
/// device-exclusive entries keep their bits (their writability is
/// recomputed when a CPU fault restores them). One
/// MMU_NOTIFY_PROTECTION_VMA range covers the change, from the first
/// populated PUD on (change_pud_range). The caller holds mmap_lock for
/// write.
func changeProtection(_ mm: MMRef, _ vma: VMARef, _ start: UInt64, _ end: UInt64) {
    var first = start
    while first < end && walk(mm, first).pud.map({ entryNone(dax_load_u64($0)) }) ?? true {
        first = roundDown(first, UInt64(pudSize)) + UInt64(pudSize)
    }
    guard first < end else { return }
    withMMUNotifierRange(.protectionVMA, mm, first, end) {
        changeProtectionRange(mm, vma, first, end)
    }
}

/// pte_modify / pmd_modify / pud_modify: `old`'s _PAGE_CHG_MASK bits
/// (_HPAGE_CHG_MASK for a huge leaf) with the rest from `newprot`.
@inline(__always)
func pteModify(_ old: PTEntry, _ newprot: UInt64, huge: Bool) -> PTEntry {
    let chg = PT.pfnMask | PT.special | PT.accessed | PT.dirty | PT.softDirty | PT.uffdWp | (huge ? PT.pse : 0)
    return (old & chg) | (newprot & ~chg)
}

/// vma_wants_manual_pte_write_upgrade: whether mprotect tries to make
/// entries writable one by one (MM_CP_TRY_CHANGE_WRITABLE).
@inline(__always)
func vmaWantsManualPteWriteUpgrade(_ vma: VMARef) -> Bool {
    let f = vma.pointee.vm_flags
    if f & DAX_VM_SHARED != 0 { return vmaWantsWritenotify(vma) }
    return f & DAX_VM_WRITE != 0
}

/// can_change_pmd_writable: a private PMD of an exclusive anon THP, or a
/// dirty shared one.
@inline(__always)
func canChangePmdWritable(_ k: KernelRef, _ vma: VMARef, _ pmd: PTEntry) -> Bool {
    guard vma.pointee.vm_flags & DAX_VM_WRITE != 0, pmd & PT.user != 0, !pteUffdWp(pmd) else { return false }
    if vma.pointee.vm_flags & DAX_VM_SHARED == 0 {
        let pfn = entryPfn(pmd)
        guard pfnValid(k, pfn), !isHugeZeroPfn(k, pfn) else { return false }
        let head = pfnToPage(k, pfn)
        return head.folio.isAnon && head.isAnonExclusive
    }
    return entryDirty(pmd)
}

private func changeProtectionRange(_ mm: MMRef, _ vma: VMARef, _ start: UInt64, _ end: UInt64) {
    let k = mm.pointee.kernel!
    let newprot = vma.pointee.vm_page_prot
    let tryWritable = vmaWantsManualPteWriteUpgrade(vma)
    var tlb = TLBGather()
    var a = start
    while a < end {
        let w = walk(mm, a)
        if let pud = w.pud, entryLeaf(dax_load_u64(pud)) {
            // change_huge_pud: the kernel invalidates the entry first
            // (pudp_invalidate) against hardware A/D updates; the port's
            // entries change only under the lock, so one set_pud_at does.
            let haddr = roundDown(a, UInt64(pudSize))
            dax_spin_lock(pudLockptr(mm))
            let old = dax_load_u64(pud)
            let new = pteModify(old, newprot, huge: true)
            if entryLeaf(old) && new != old {
                setPudAt(mm, haddr, pud, new)
                tlb.adjust(haddr, UInt64(pudSize), DAX_PGTABLE_LEVEL_PUD)
            }
            dax_spin_unlock(pudLockptr(mm))
            a = haddr + UInt64(pudSize)
            continue
        }
        if let pmd = w.pmd, entryLeaf(dax_load_u64(pmd)) {
            // change_huge_pmd (pmdp_invalidate_ad + set_pmd_at in the kernel)
            let haddr = roundDown(a, UInt64(pmdSize))
            let l = pmdLockptr(k, pmd)
            dax_spin_lock(l)
            let old = dax_load_u64(pmd)
            var new = pteModify(old, newprot, huge: true)
            if tryWritable && !entryWrite(new) && canChangePmdWritable(k, vma, new) { new = entryMkwrite(new) }
            if entryLeaf(old) && new != old {
                setPmdAt(mm, haddr, pmd, new)
                tlb.adjust(haddr, UInt64(pmdSize), DAX_PGTABLE_LEVEL_PMD)
            }
            dax_spin_unlock(l)
            a = haddr + UInt64(pmdSize)
            continue
        }
        if let pte = w.pte, let pmd = w.pmd {
            // change_pte_range
            let l = pteLockptr(k, dax_load_u64(pmd))
            dax_spin_lock(l)
            let old = ptepModifyProtStart(vma, a, pte)
            if entryPresent(old) {
                var new = pteModify(old, newprot, huge: false)
                if tryWritable && !entryWrite(new) && canChangePteWritable(k, vma, a, new) { new = entryMkwrite(new) }
                if new != old {
                    ptepModifyProtCommit(vma, a, pte, old, new)
                    tlb.adjust(a, UInt64(pageSize), DAX_PGTABLE_LEVEL_PTE)   // pte_needs_flush
                }
            } else if isSwapPte(old) {
                let new = changeSwapPte(k, old)
                if new != old { setPteAt(mm, a, pte, new) }
            }
            dax_spin_unlock(l)
        }
        a += UInt64(pageSize)
    }
    tlb.flush(vma)
}

extension MM {
    /// mprotect: splits at the edges (may_split), updates flags and page
    /// protections (change_protection: pte_modify with the new
    /// vm_page_prot, then MM_CP_TRY_CHANGE_WRITABLE).
    public func mprotect(_ start: UInt64, _ length: UInt64, _ prot: Prot) throws(MMError) {
        lockWrite()
        defer { unlockWrite() }
        guard start % UInt64(pageSize) == 0 else { throw .errno(EINVAL, "mprotect: \(hex(start)) not page aligned") }
        let end = start + roundUp(length, UInt64(pageSize))
        guard end > start else { return }
        // Every page of the range must be mapped (-ENOMEM otherwise).
        var cursor = start
        for v in vmaList() where v.pointee.vm_end > start && v.pointee.vm_start < end {
            if v.pointee.vm_start > cursor { break }
            cursor = v.pointee.vm_end
        }
        guard cursor >= end else { throw .errno(ENOMEM, "mprotect: [\(hex(start)), \(hex(end))) is not fully mapped") }
        for v in vmaList() where v.pointee.vm_end > start && v.pointee.vm_start < end {
            if prot.contains(.write) && v.pointee.vm_flags & DAX_VM_MAYWRITE == 0 {
                throw .errno(EACCES, "mprotect: PROT_WRITE on a VMA without VM_MAYWRITE")
            }
        }
        try splitEdges(start, end)
        for v in vmaList() where v.pointee.vm_start >= start && v.pointee.vm_end <= end {
            var f = v.pointee.vm_flags & ~(DAX_VM_READ | DAX_VM_WRITE | DAX_VM_EXEC)
            if prot.contains(.read) { f |= DAX_VM_READ }
            if prot.contains(.write) { f |= DAX_VM_WRITE }
            if prot.contains(.exec) { f |= DAX_VM_EXEC }
            let oldFlags = v.pointee.vm_flags
            v.pointee.vm_flags = f
            vmaSetPageProt(v)
            // mprotect_fixup: any change of the flags walks the range with
            // the new vm_page_prot.
            if f != oldFlags {
                changeProtection(ref, v, v.pointee.vm_start, v.pointee.vm_end)
            }
        }
    }
}

/// change_pte_range's non-present case: the entry a swap PTE becomes.
@inline(__always)
func changeSwapPte(_ k: KernelRef, _ old: PTEntry) -> PTEntry {
    let entry = pteToSwpEntry(old)
    if isWritableMigrationEntry(entry) {
        // "A protection check is difficult so just be safe and disable write."
        let anon = pfnSwapEntryFolio(k, entry)?.isAnon ?? false
        let pfn = entry.offset
        var new = swpEntryToPte(anon ? makeReadableExclusiveMigrationEntry(pfn) : makeReadableMigrationEntry(pfn))
        if pteSwpSoftDirty(old) { new = pteSwpMksoftDirty(new) }
        if pteSwpUffdWp(old) { new = pteSwpMkuffdWp(new) }
        return new
    }
    if isWritableDevicePrivateEntry(entry) {
        // Soft-dirty is not kept (copy_nonpresent_pte explains why); uffd-wp is.
        var new = swpEntryToPte(makeReadableDevicePrivateEntry(entry.offset))
        if pteSwpUffdWp(old) { new = pteSwpMkuffdWp(new) }
        return new
    }
    return old
}
