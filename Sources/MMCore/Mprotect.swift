// mm/mprotect.c: change_protection (change_pud_range -> change_pmd_range ->
// change_pte_range, with change_huge_pmd / change_huge_pud) for the port's
// entries, and mprotect (do_mprotect_pkey, mprotect_fixup) on MM.

import CDaxMM
import DAXBase

/// change_protection: applies the VMA's new protection to the present
/// entries of [start, end) in `vma` (the kernel's pte_modify with the new
/// vm_page_prot): `clear` bits go (_PAGE_RW when write access goes, and
/// _PAGE_USER too for PROT_NONE), `set` bits come (_PAGE_USER when read
/// access comes back). _PAGE_RW is never set here: a shared DAX mapping
/// wants write notification, so write access returns through the write
/// fault's mkwrite path, as in the kernel. PROT_NONE entries stay mapped
/// like the kernel's pte_protnone ones: references, mapcounts and rss do
/// not change, and the VMA's missing VM_READ keeps faults and GUP out. The
/// entries that changed are flushed once at the end (the mmu_gather of
/// mprotect_fixup). Non-present entries: a writable migration entry
/// becomes a readable one (exclusive for an anon folio), a writable
/// device-private entry a readable one; device-exclusive entries keep
/// their bits (their writability is recomputed when a CPU fault restores
/// them). One MMU_NOTIFY_PROTECTION_VMA range covers the change, from the
/// first populated PUD on (change_pud_range). The caller holds mmap_lock
/// for write.
func changeProtection(_ mm: MMRef, _ vma: VMARef, _ start: UInt64, _ end: UInt64, clear: UInt64, set: UInt64) {
    var first = start
    while first < end && walk(mm, first).pud.map({ entryNone(dax_load_u64($0)) }) ?? true {
        first = roundDown(first, UInt64(pudSize)) + UInt64(pudSize)
    }
    guard first < end else { return }
    withMMUNotifierRange(.protectionVMA, mm, first, end) {
        changeProtectionRange(mm, vma, first, end, clear: clear, set: set)
    }
}

private func changeProtectionRange(_ mm: MMRef, _ vma: VMARef, _ start: UInt64, _ end: UInt64,
                                   clear: UInt64, set: UInt64) {
    let k = mm.pointee.kernel!
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
            let new = (old & ~clear) | set
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
            let new = (old & ~clear) | set
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
                let new = (old & ~clear) | set
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
    /// protections; removing write access write-protects present entries.
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
            let losingWrite = v.pointee.vm_flags & DAX_VM_WRITE != 0 && f & DAX_VM_WRITE == 0
            let regainingRead = v.pointee.vm_flags & DAX_VM_READ == 0 && f & DAX_VM_READ != 0
            v.pointee.vm_flags = f
            vmaSetPageProt(v)
            var clear: UInt64 = losingWrite ? PT.rw : 0
            if !prot.contains(.read) { clear |= PT.rw | PT.user }
            let set: UInt64 = regainingRead ? PT.user : 0
            // mprotect_fixup: any change of the flags walks the range
            // (non-present entries are rewritten whatever the new bits).
            if f != oldFlags {
                changeProtection(ref, v, v.pointee.vm_start, v.pointee.vm_end, clear: clear, set: set)
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
