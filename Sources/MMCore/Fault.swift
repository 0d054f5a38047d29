// mm/memory.c: handle_mm_fault and the walk that tries a PUD, then a PMD,
// then a PTE mapping (create_huge_pud / create_huge_pmd / handle_pte_fault),
// write-protect faults (do_wp_page -> wp_pfn_shared / wp_page_shared) and
// finish_fault for handlers that return a page.
//
// Everything here runs on C records and function pointers: no allocation, no
// Swift object, safe from a signal handler once the caller holds mmap_lock
// for read.

import CDaxMM

/// thp_vma_allowable_order at fault time: DAX VMAs may fault any order their
/// huge_fault handler supports.
@inline(__always)
func vmaAllowsHuge(_ vma: VMARef) -> Bool {
    guard let ops = vma.pointee.vm_ops, ops.pointee.huge_fault != nil else { return false }
    return vmaIsDax(vma) || vma.pointee.vm_flags & DAX_VM_HUGEPAGE != 0
}

/// The faulting thread's per-thread slot (dax_this_slot), as handle_mm_fault
/// recorded it in the vmf, so the per-thread counters and locks of one fault
/// look it up once; a vmf made elsewhere (slot 0) looks it up here.
@inline(__always)
public func vmfSlot(_ vmf: VMFaultRef) -> Int32 {
    let s = vmf.pointee.slot
    return s != 0 ? s &- 1 : dax_this_slot()
}

/// handle_mm_fault with mmap_lock held for read by the caller (as in
/// do_user_addr_fault). Returns VM_FAULT_* bits; 0 means handled. `slot`:
/// the calling thread's dax_this_slot(), if the caller has it.
@inline(__always)
public func handleMMFault(_ mm: MMRef, _ address: UInt64, _ flags: UInt32,
                          slot: Int32 = dax_this_slot()) -> UInt32 {
    guard let vma = vmaLookup(mm, address) else { return DAX_VM_FAULT_SIGSEGV }
    let write = flags & DAX_FAULT_FLAG_WRITE != 0
    let vmFlags = vma.pointee.vm_flags
    // access_error
    if write ? vmFlags & DAX_VM_WRITE == 0 : vmFlags & (DAX_VM_READ | DAX_VM_WRITE | DAX_VM_EXEC) == 0 {
        return DAX_VM_FAULT_SIGSEGV
    }
    var vmf = dax_vm_fault()
    vmf.vma = vma
    vmf.address = roundDown(address, UInt64(pageSize))
    vmf.real_address = address
    vmf.pgoff = linearPageIndex(vma, vmf.address)
    vmf.flags = flags
    vmf.slot = slot &+ 1   // in [1, DAX_NR_SLOTS + 1]
    return withUnsafeMutablePointer(to: &vmf) { handleMMFaultVmf(mm, $0) }
}

/// __handle_mm_fault
@inline(__always)
func handleMMFaultVmf(_ mm: MMRef, _ vmf: VMFaultRef) -> UInt32 {
    let vma = vmf.pointee.vma!
    let k = mm.pointee.kernel!
    let addr = vmf.pointee.address
    let write = vmf.pointee.flags & DAX_FAULT_FLAG_WRITE != 0
    let huge = vmaAllowsHuge(vma)

    guard let pud = pudAlloc(mm, addr) else { return DAX_VM_FAULT_OOM }
    vmf.pointee.pud = pud
    var pude = dax_load_u64(pud)
    if entryNone(pude) && huge {
        // create_huge_pud
        let ret = vma.pointee.vm_ops.pointee.huge_fault(vmf, UInt32(pudOrder))
        if ret & DAX_VM_FAULT_FALLBACK == 0 { return ret }
    } else if entryLeaf(pude) {
        if write && !entryWrite(pude) {
            // wp_huge_pud
            if huge {
                let ret = vma.pointee.vm_ops.pointee.huge_fault(vmf, UInt32(pudOrder))
                if ret & DAX_VM_FAULT_FALLBACK == 0 { return ret }
            }
            splitHugePud(k, vma, pud, addr)
        } else {
            // huge_pud_set_accessed
            let l = pudLockptr(mm)
            dax_spin_lock(l)
            pude = dax_load_u64(pud)
            if entryLeaf(pude) {
                pudpSetAccessFlags(vma, roundDown(addr, UInt64(pudSize)), pud,
                                   write ? entryMkdirty(entryMkyoung(pude)) : entryMkyoung(pude))
            }
            dax_spin_unlock(l)
            return 0
        }
    }

    guard let pmd = pmdAlloc(mm, pud, addr) else {
        // A PUD leaf appeared under us (racing fault): retry the fault.
        return entryLeaf(dax_load_u64(pud)) ? DAX_VM_FAULT_NOPAGE : DAX_VM_FAULT_OOM
    }
    vmf.pointee.pmd = pmd
    var pmde = dax_load_u64(pmd)
    let anon = vmaIsAnonymous(vma)
    let unshare = vmf.pointee.flags & DAX_FAULT_FLAG_UNSHARE != 0
    if entryNone(pmde) && (anon ? thpVmaAllowablePmd(k, vma, addr) : huge) {
        // create_huge_pmd
        let ret = anon ? doHugePmdAnonymousPage(mm, vmf)
                       : vma.pointee.vm_ops.pointee.huge_fault(vmf, UInt32(pmdOrder))
        if ret & DAX_VM_FAULT_FALLBACK == 0 { return ret }
    } else if entryLeaf(pmde) {
        if (write || unshare) && !entryWrite(pmde) {
            // wp_huge_pmd: an anon THP is reused or split by
            // do_huge_pmd_wp_page; a file PMD goes back to its huge_fault
            // only in a shared mapping, and is split (for DAX: unmapped)
            // otherwise, so the PTE fault below copies it.
            vmf.pointee.orig_pmd = pmde
            if anon {
                let ret = doHugePmdWpPage(mm, vmf)
                if ret & DAX_VM_FAULT_FALLBACK == 0 { return ret }
            } else {
                if huge && vma.pointee.vm_flags & (DAX_VM_SHARED | DAX_VM_MAYSHARE) != 0 {
                    let ret = vma.pointee.vm_ops.pointee.huge_fault(vmf, UInt32(pmdOrder))
                    if ret & DAX_VM_FAULT_FALLBACK == 0 { return ret }
                }
                splitHugePmd(k, vma, pmd, addr)
            }
        } else {
            // huge_pmd_set_accessed
            let l = pmdLockptr(k, pmd)
            dax_spin_lock(l)
            pmde = dax_load_u64(pmd)
            if entryLeaf(pmde) {
                pmdpSetAccessFlags(vma, roundDown(addr, UInt64(pmdSize)), pmd,
                                   write ? entryMkdirty(entryMkyoung(pmde)) : entryMkyoung(pmde))
            }
            dax_spin_unlock(l)
            return 0
        }
    }
    return handlePteFault(mm, vmf)
}

/// handle_pte_fault
@inline(__always)
func handlePteFault(_ mm: MMRef, _ vmf: VMFaultRef) -> UInt32 {
    let k = mm.pointee.kernel!
    let addr = vmf.pointee.address
    guard let pmd = vmf.pointee.pmd else { return DAX_VM_FAULT_OOM }
    guard let pte = pteAlloc(mm, pmd, addr) else {
        return entryLeaf(dax_load_u64(pmd)) ? DAX_VM_FAULT_NOPAGE : DAX_VM_FAULT_OOM
    }
    vmf.pointee.pte = pte
    let entry = dax_load_u64(pte)
    vmf.pointee.orig_pte = entry
    if entryNone(entry) {
        // do_pte_missing
        return vmaIsAnonymous(vmf.pointee.vma) ? doAnonymousPage(mm, vmf) : doFault(mm, vmf)
    }
    if !entryPresent(entry) {
        return doSwapPage(mm, vmf)
    }
    let write = vmf.pointee.flags & DAX_FAULT_FLAG_WRITE != 0
    let ptl = pteLockptr(k, dax_load_u64(pmd))
    dax_spin_lock(ptl)
    let cur = dax_load_u64(pte)
    guard cur == entry else {
        dax_spin_unlock(ptl)
        return 0   // changed under us: the access is retried
    }
    if write && !entryWrite(cur) {
        return doWpPage(mm, vmf, ptl)   // drops ptl
    }
    ptepSetAccessFlags(vmf.pointee.vma, addr, pte, write ? entryMkdirty(entryMkyoung(cur)) : entryMkyoung(cur))
    dax_spin_unlock(ptl)
    return 0
}

/// do_anonymous_page: a missing PTE of an anonymous VMA. A read maps the
/// shared zero page (a special, read-only PTE: no reference, no rmap, no
/// rss). A write takes a new zeroed order-0 folio from the page allocator
/// (VM_FAULT_OOM when there is none), maps it young, dirty and writable
/// (maybe_mkwrite), PageAnonExclusive through folio_add_new_anon_rmap with
/// RMAP_EXCLUSIVE, MM_ANONPAGES + 1. A PTE someone filled meanwhile wins:
/// the new folio is put back and the access retried. A shared anonymous VMA
/// would be shmem, which the port does not model: VM_FAULT_SIGBUS.
@inline(__always)
func doAnonymousPage(_ mm: MMRef, _ vmf: VMFaultRef) -> UInt32 {
    let vma = vmf.pointee.vma!
    let k = mm.pointee.kernel!
    if vma.pointee.vm_flags & DAX_VM_SHARED != 0 { return DAX_VM_FAULT_SIGBUS }
    guard let pmd = vmf.pointee.pmd, let pte = vmf.pointee.pte else { return DAX_VM_FAULT_OOM }
    let addr = vmf.pointee.address
    let ptl = pteLockptr(k, dax_load_u64(pmd))
    if vmf.pointee.flags & DAX_FAULT_FLAG_WRITE == 0 {
        let e = entryMkspecial(entryWrprotect(pfnEntry(0, vma.pointee.vm_page_prot))) | PT.accessed
        dax_spin_lock(ptl)
        if entryNone(dax_load_u64(pte)) { setPteAt(mm, addr, pte, e) }
        dax_spin_unlock(ptl)
        return 0
    }
    // vmf_anon_prepare, alloc_anon_folio
    guard anonVMAPrepare(vma) != nil else { return DAX_VM_FAULT_OOM }
    guard let folio = folioAlloc(k, order: 0, zero: true) else { return DAX_VM_FAULT_OOM }
    let slot = vmfSlot(vmf)
    var e = pfnEntry(pageToPfn(k, folio.head), vma.pointee.vm_page_prot) | PT.accessed
    if vma.pointee.vm_flags & DAX_VM_WRITE != 0 { e = entryMkwrite(entryMkdirty(e)) }
    dax_spin_lock(ptl)
    guard entryNone(dax_load_u64(pte)) else {
        dax_spin_unlock(ptl)
        folioPut(k, folio)
        return 0
    }
    addMMCounter(mm, DAX_MM_ANONPAGES, 1, slot: slot)
    folioAddNewAnonRmap(k, folio, vma, addr, .exclusive, slot: slot)
    setPteAt(mm, addr, pte, e)
    dax_spin_unlock(ptl)
    return 0
}

/// do_fault: do_read_fault / do_shared_fault through ->fault. A DAX handler
/// installs the entry itself and returns VM_FAULT_NOPAGE; a handler that
/// returns a referenced page in vmf->page gets it mapped by finish_fault.
@inline(__always)
func doFault(_ mm: MMRef, _ vmf: VMFaultRef) -> UInt32 {
    let vma = vmf.pointee.vma!
    guard let ops = vma.pointee.vm_ops, let fault = ops.pointee.fault else { return DAX_VM_FAULT_SIGBUS }
    if vmf.pointee.flags & DAX_FAULT_FLAG_WRITE != 0 && vma.pointee.vm_flags & DAX_VM_SHARED == 0 {
        // do_cow_fault would copy into an anonymous page: outside the port.
        return DAX_VM_FAULT_SIGBUS
    }
    vmf.pointee.page = nil
    var ret = fault(vmf)
    if ret & (DAX_VM_FAULT_ERROR | DAX_VM_FAULT_NOPAGE | DAX_VM_FAULT_RETRY) != 0 { return ret }
    guard let raw = vmf.pointee.page else { return DAX_VM_FAULT_SIGBUS }
    if vmf.pointee.flags & DAX_FAULT_FLAG_WRITE != 0, let mkwrite = ops.pointee.page_mkwrite {
        let r = mkwrite(vmf)
        if r & DAX_VM_FAULT_ERROR != 0 {
            folioPut(mm.pointee.kernel, Page(raw).folio)
            return r
        }
    }
    ret |= finishFault(mm, vmf, Page(raw))
    return ret
}

/// finish_fault: map the page the handler returned with a reference.
@inline(__always)
func finishFault(_ mm: MMRef, _ vmf: VMFaultRef, _ page: Page) -> UInt32 {
    let vma = vmf.pointee.vma!
    let k = mm.pointee.kernel!
    guard let pmd = vmf.pointee.pmd, let pte = vmf.pointee.pte else { return DAX_VM_FAULT_OOM }
    let ptl = pteLockptr(k, dax_load_u64(pmd))
    dax_spin_lock(ptl)
    if !entryNone(dax_load_u64(pte)) {
        dax_spin_unlock(ptl)
        folioPut(k, page.folio)   // raced: someone mapped it
        return DAX_VM_FAULT_NOPAGE
    }
    var e = pfnEntry(pageToPfn(k, page), vma.pointee.vm_page_prot) | PT.accessed
    if vmf.pointee.flags & DAX_FAULT_FLAG_WRITE != 0 {
        e = maybeMkwrite(entryMkdirty(e), vma)
    }
    folioAddFileRmapPte(k, page.folio, page)
    addMMCounter(mm, DAX_MM_FILEPAGES, 1)
    setPteAt(mm, vmf.pointee.address, pte, e)   // the handler's reference now belongs to the PTE
    dax_spin_unlock(ptl)
    return 0
}

/// do_wp_page for shared mappings (called with the PTE lock held; drops it).
/// FS DAX pages and special entries go through wp_pfn_shared (->pfn_mkwrite),
/// other pages through wp_page_shared (->page_mkwrite).
@inline(__always)
func doWpPage(_ mm: MMRef, _ vmf: VMFaultRef, _ ptl: UnsafeMutablePointer<UInt32>) -> UInt32 {
    let vma = vmf.pointee.vma!
    let k = mm.pointee.kernel!
    let entry = dax_load_u64(vmf.pointee.pte)
    let page = vmNormalPage(k, vma, entry)
    vmf.pointee.page = page?.raw
    guard vma.pointee.vm_flags & (DAX_VM_SHARED | DAX_VM_MAYSHARE) != 0 else {
        dax_spin_unlock(ptl)
        return DAX_VM_FAULT_SIGBUS   // COW into anonymous memory: outside the port
    }
    let ops = vma.pointee.vm_ops
    if page == nil || page!.folio.isFsdax {
        // wp_pfn_shared
        vmf.pointee.page = nil
        if let pfnMkwrite = ops?.pointee.pfn_mkwrite {
            dax_spin_unlock(ptl)
            let ret = pfnMkwrite(vmf)
            if ret & (DAX_VM_FAULT_ERROR | DAX_VM_FAULT_NOPAGE) != 0 { return ret }
            return finishMkwriteFault(mm, vmf, entry)
        }
        wpPageReuse(vmf)
        dax_spin_unlock(ptl)
        return 0
    }
    // wp_page_shared
    if let pageMkwrite = ops?.pointee.page_mkwrite {
        dax_spin_unlock(ptl)
        let ret = pageMkwrite(vmf)
        if ret & (DAX_VM_FAULT_ERROR | DAX_VM_FAULT_NOPAGE) != 0 { return ret }
        return finishMkwriteFault(mm, vmf, entry)
    }
    wpPageReuse(vmf)
    dax_spin_unlock(ptl)
    return 0
}

/// wp_page_reuse: writable, dirty, young in place (PTE lock held).
@inline(__always)
func wpPageReuse(_ vmf: VMFaultRef) {
    let pte = vmf.pointee.pte!
    let vma = vmf.pointee.vma!
    ptepSetAccessFlags(vma, vmf.pointee.address, pte, maybeMkwrite(entryMkdirty(entryMkyoung(dax_load_u64(pte))), vma))
}

/// finish_mkwrite_fault: relock; reuse if the PTE is unchanged.
@inline(__always)
func finishMkwriteFault(_ mm: MMRef, _ vmf: VMFaultRef, _ orig: PTEntry) -> UInt32 {
    let k = mm.pointee.kernel!
    guard let pmd = vmf.pointee.pmd, let pte = vmf.pointee.pte else { return 0 }
    let ptl = pteLockptr(k, dax_load_u64(pmd))
    dax_spin_lock(ptl)
    if dax_load_u64(pte) == orig { wpPageReuse(vmf) }
    dax_spin_unlock(ptl)
    return 0
}

// MARK: the safe entry point

extension MM {
    /// handle_mm_fault taking mmap_lock for read around it, as a user fault
    /// does. Returns the VM_FAULT_* bits.
    public func handleFault(_ address: UInt64, write: Bool) -> UInt32 {
        // lockRead/unlockRead with the thread's slot looked up once for the fault.
        let slot = dax_this_slot()
        let lock = dax_mm_mmap_lock(ref)
        dax_down_read_slot(lock, slot)
        defer { dax_up_read_slot(lock, slot) }
        return handleMMFault(ref, address, (write ? DAX_FAULT_FLAG_WRITE : 0) | DAX_FAULT_FLAG_USER, slot: slot)
    }
}
