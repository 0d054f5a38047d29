// mm/mremap.c: move_page_tables (move_ptes, move_huge_pmd, move_huge_pud)
// and mremap (shrink, grow in place, move) on MM.

import CDaxMM
import DAXBase

/// move_page_tables: moves the entries of [old, old+len) in `src` to
/// [new, ...) in `dstVMA`, inside one MMU_NOTIFY_UNMAP range over the old
/// addresses. References and rmap travel with the entries (an anon folio's
/// index is its VMA's pgoff-relative page, which the move keeps). Huge
/// entries move whole when both addresses are aligned to their size;
/// otherwise they are split (a DAX entry is unmapped and refaults, an anon
/// THP becomes PTEs that move). Non-present entries (device-exclusive,
/// device-private, migration) move as they are (move_ptes), soft-dirty set
/// on every moved entry (move_soft_dirty_pte). The old addresses of the
/// present entries moved are flushed once at the end. The caller holds
/// mmap_lock for write.
func movePageTables(_ mm: MMRef, _ src: VMARef, _ old: UInt64, _ dstVMA: VMARef, _ new: UInt64, _ len: UInt64) {
    withMMUNotifierRange(.unmap, mm, old, old + len) {
        movePageTablesLocked(mm, src, old, dstVMA, new, len)
    }
}

private func movePageTablesLocked(_ mm: MMRef, _ src: VMARef, _ old: UInt64, _ dstVMA: VMARef, _ new: UInt64, _ len: UInt64) {
    let k = mm.pointee.kernel!
    var tlb = TLBGather()
    var off: UInt64 = 0
    while off < len {
        let oa = old + off, na = new + off
        let w = walk(mm, oa)
        if let pud = w.pud, entryLeaf(dax_load_u64(pud)) {
            if oa % UInt64(pudSize) == 0, na % UInt64(pudSize) == 0, len - off >= UInt64(pudSize),
               let npud = pudAlloc(mm, na), destinationEmpty(k, npud, dax_load_u64(pud), "move_huge_pud",
                                                             "WARN_ON_ONCE(!pud_none(*new_pud))") {
                // move_huge_pud
                dax_spin_lock(pudLockptr(mm))
                let e = pudpHugeGetAndClear(mm, oa, pud)
                setPudAt(mm, na, npud, e)
                dax_spin_unlock(pudLockptr(mm))
                if !entryNone(e) { tlb.adjust(oa, UInt64(pudSize), DAX_PGTABLE_LEVEL_PUD) }
                off += UInt64(pudSize)
            } else {
                splitHugePud(k, src, pud, oa)
            }
            continue
        }
        if let pmd = w.pmd, entryLeaf(dax_load_u64(pmd)) {
            if oa % UInt64(pmdSize) == 0, na % UInt64(pmdSize) == 0, len - off >= UInt64(pmdSize),
               let npud = pudAlloc(mm, na), let npmd = pmdAlloc(mm, npud, na),
               destinationEmpty(k, npmd, dax_load_u64(pmd), "move_huge_pmd", "WARN_ON_ONCE(!pmd_none(*new_pmd))") {
                // move_huge_pmd
                let l1 = pmdLockptr(k, pmd), l2 = pmdLockptr(k, npmd)
                dax_spin_lock(l1)
                if l2 != l1 { dax_spin_lock(l2) }
                let e = pmdpHugeGetAndClear(mm, oa, pmd)
                // pmd_move_must_withdraw: an anon PMD's deposited table
                // follows it to the new PMD table.
                if l2 != l1 && vmaIsAnonymous(src), let t = pgtableTransHugeWithdraw(k, pmd) {
                    pgtableTransHugeDeposit(k, npmd, t)
                }
                setPmdAt(mm, na, npmd, entryNone(e) ? e : moveSoftDirtyPte(e))   // move_soft_dirty_pmd
                if l2 != l1 { dax_spin_unlock(l2) }
                dax_spin_unlock(l1)
                if !entryNone(e) { tlb.adjust(oa, UInt64(pmdSize), DAX_PGTABLE_LEVEL_PMD) }
                off += UInt64(pmdSize)
            } else {
                splitHugePmd(k, src, pmd, oa)
            }
            continue
        }
        if let pte = w.pte, let pmd = w.pmd, !entryNone(dax_load_u64(pte)) {
            if let npud = pudAlloc(mm, na), let npmd = pmdAlloc(mm, npud, na), let npte = pteAlloc(mm, npmd, na) {
                // move_ptes: the old table's lock, then the new one nested.
                let ol = pteLockptr(k, dax_load_u64(pmd)), nl = pteLockptr(k, dax_load_u64(npmd))
                dax_spin_lock(ol)
                if nl != ol { dax_spin_lock(nl) }
                let e = ptepGetAndClear(mm, oa, pte)
                if !entryNone(e) { setPteAt(mm, na, npte, moveSoftDirtyPte(e)) }
                if nl != ol { dax_spin_unlock(nl) }
                dax_spin_unlock(ol)
                if entryPresent(e) { tlb.adjust(oa, UInt64(pageSize), DAX_PGTABLE_LEVEL_PTE) }
            }
        }
        off += UInt64(pageSize)
    }
    tlb.flush(src)
}

/// move_soft_dirty_pte: a moved entry is soft-dirty (the move is a write to
/// the new address as far as soft-dirty tracking knows), present or not.
@inline(__always)
func moveSoftDirtyPte(_ e: PTEntry) -> PTEntry {
    entryPresent(e) ? pteMksoftDirty(e) : pteSwpMksoftDirty(e)
}

/// move_huge_pmd / move_huge_pud refuse a destination that is not empty
/// (WARN, and move_page_tables splits the entry instead): a table left
/// there would be overwritten and leak.
@inline(__always)
private func destinationEmpty(_ k: KernelRef, _ dst: EntryPtr, _ moving: PTEntry,
                              _ function: StaticString, _ rule: StaticString) -> Bool {
    if entryNone(dax_load_u64(dst)) { return true }
    if pfnValid(k, entryPfn(moving)) { vmReport(k, pfnToPage(k, entryPfn(moving)), rule: rule, function: function) }
    return false
}

extension MM {
    /// mremap: shrink in place, grow in place when the space above is free,
    /// or (mayMove) move the VMA, carrying page-table entries with it. Moved
    /// entries keep their references and rmap; a huge entry whose old and new
    /// addresses are not equally aligned is split (unmapped) and refaults.
    @discardableResult
    public func mremap(_ old: UInt64, oldLength: UInt64, newLength: UInt64, mayMove: Bool) throws(MMError) -> UInt64 {
        lockWrite()
        defer { unlockWrite() }
        guard old % UInt64(pageSize) == 0 else { throw .errno(EINVAL, "mremap: \(hex(old)) not page aligned") }
        let oldLen = roundUp(oldLength, UInt64(pageSize)), newLen = roundUp(newLength, UInt64(pageSize))
        guard newLen > 0, oldLen > 0 else { throw .errno(EINVAL, "mremap: zero length") }
        guard let vma = findVMA(old), vma.pointee.vm_start <= old, old + oldLen <= vma.pointee.vm_end else {
            throw .errno(EFAULT, "mremap: [\(hex(old)), +\(hex(oldLen))) is not inside one VMA")
        }
        if newLen <= oldLen {
            if newLen < oldLen { try munmapLocked(old + newLen, oldLen - newLen) }
            return old
        }
        if vma.pointee.vm_flags & (DAX_VM_DONTEXPAND | DAX_VM_PFNMAP) != 0 {
            throw .errno(EFAULT, "mremap: VMA cannot be expanded (VM_DONTEXPAND/VM_PFNMAP)")
        }
        // Grow in place when old+oldLen is the VMA's end and the space is free.
        if old + oldLen == vma.pointee.vm_end {
            let next = vmaList().first { $0.pointee.vm_start >= vma.pointee.vm_end }
            if (next.map { $0.pointee.vm_start >= old + newLen } ?? true) && old + newLen <= MM.mmapBase {
                if let file = vma.pointee.vm_file { iMmapLockWrite(file) }
                vma.pointee.vm_end = old + newLen
                if let file = vma.pointee.vm_file { iMmapUnlockWrite(file) }
                return old
            }
        }
        guard mayMove else { throw .errno(ENOMEM, "mremap: cannot grow in place and MREMAP_MAYMOVE not given") }
        // Move: isolate the old range as one VMA, map a new one, move entries.
        try splitEdges(old, old + oldLen)
        guard let src = findVMA(old), src.pointee.vm_start == old else {
            throw .errno(EFAULT, "mremap: source VMA vanished")
        }
        let align = src.pointee.vm_ops?.pointee.pagesize.map { UInt64($0(src)) } ?? UInt64(pageSize)
        guard let dst = getUnmappedArea(newLen, alignment: max(align, UInt64(pageSize))) else {
            throw .errno(ENOMEM, "mremap: no room for \(hex(newLen))")
        }
        let new = VMARef.allocate(capacity: 1)
        new.initialize(to: src.pointee)
        new.pointee.vm_start = dst
        new.pointee.vm_end = dst + newLen
        cloneAnonChains(from: src, to: new)
        insertVMA(new, retain: retained[src] ?? [])
        // take_rmap_locks: an unmap_mapping_range walk of the file must not
        // visit the new VMA before the entries arrive and the old one after
        // they left (the i_mmap array has no order to rely on).
        if let file = src.pointee.vm_file { iMmapLockWrite(file) }
        movePageTables(ref, src, old, new, dst, oldLen)
        if let file = src.pointee.vm_file { iMmapUnlockWrite(file) }
        removeVMAs([src])
        freePgtables(ref, old, old + oldLen)
        return dst
    }
}
