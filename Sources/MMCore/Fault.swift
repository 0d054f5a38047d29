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
    if flags & DAX_FAULT_FLAG_REMOTE == 0 {
        // access_error (the arch fault handler's; GUP's faultin_page calls
        // handle_mm_fault directly, after check_vma_flags decided)
        if write ? vmFlags & DAX_VM_WRITE == 0 : vmFlags & (DAX_VM_READ | DAX_VM_WRITE | DAX_VM_EXEC) == 0 {
            return DAX_VM_FAULT_SIGSEGV
        }
    } else if !sanitizeFaultFlags(vma, flags) {
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

/// sanitize_fault_flags: FAULT_FLAG_UNSHARE only without FAULT_FLAG_WRITE
/// and only in a COW mapping; a write only where VM_MAYWRITE.
@inline(__always)
func sanitizeFaultFlags(_ vma: VMARef, _ flags: UInt32) -> Bool {
    let f = vma.pointee.vm_flags
    if flags & DAX_FAULT_FLAG_UNSHARE != 0 {
        if flags & DAX_FAULT_FLAG_WRITE != 0 { return false }
        if !isCowMapping(f) { return false }
    }
    if flags & DAX_FAULT_FLAG_WRITE != 0 && f & DAX_VM_MAYWRITE == 0 { return false }
    return true
}

/// is_cow_mapping: private and may become writable.
@inline(__always)
public func isCowMapping(_ vmFlags: UInt64) -> Bool {
    vmFlags & (DAX_VM_SHARED | DAX_VM_MAYWRITE) == DAX_VM_MAYWRITE
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
            // wp_huge_pud: ->huge_fault only in a shared mapping
            if huge && vma.pointee.vm_flags & (DAX_VM_SHARED | DAX_VM_MAYSHARE) != 0 {
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
    let unshare = vmf.pointee.flags & DAX_FAULT_FLAG_UNSHARE != 0
    let ptl = pteLockptr(k, dax_load_u64(pmd))
    dax_spin_lock(ptl)
    let cur = dax_load_u64(pte)
    guard cur == entry else {
        dax_spin_unlock(ptl)
        return 0   // changed under us: the access is retried
    }
    if (write || unshare) && !entryWrite(cur) {
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

/// do_fault: do_read_fault / do_shared_fault through ->fault, and
/// do_cow_fault for a write to a private file mapping. A DAX handler
/// installs the entry itself and returns VM_FAULT_NOPAGE; a handler that
/// returns a referenced page in vmf->page gets it mapped by finish_fault.
@inline(__always)
func doFault(_ mm: MMRef, _ vmf: VMFaultRef) -> UInt32 {
    let vma = vmf.pointee.vma!
    guard let ops = vma.pointee.vm_ops, let fault = ops.pointee.fault else { return DAX_VM_FAULT_SIGBUS }
    vmf.pointee.cow_page = nil
    if vmf.pointee.flags & DAX_FAULT_FLAG_WRITE != 0 && vma.pointee.vm_flags & DAX_VM_SHARED == 0 {
        return doCowFault(mm, vmf, fault)
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

/// do_cow_fault: a write fault on a none PTE of a private file mapping. The
/// VMA's anon_vma is published (vmf_anon_prepare), a new order-0 folio is
/// vmf->cow_page, ->fault runs: a handler that filled and mapped the copy
/// itself (fs-dax: dax_fault_cow_page) returns VM_FAULT_DONE_COW; one that
/// returned the file page in vmf->page has it copied here and the copy
/// mapped by finish_fault (anon, exclusive, MM_ANONPAGES), then the file
/// page's reference put. No memory: VM_FAULT_OOM.
@inline(__always)
func doCowFault(_ mm: MMRef, _ vmf: VMFaultRef,
                _ fault: @convention(c) (VMFaultRef?) -> UInt32) -> UInt32 {
    let vma = vmf.pointee.vma!
    let k = mm.pointee.kernel!
    guard anonVMAPrepare(vma) != nil else { return DAX_VM_FAULT_OOM }
    guard let folio = folioAlloc(k, order: 0, zero: false) else { return DAX_VM_FAULT_OOM }
    vmf.pointee.cow_page = folio.raw
    vmf.pointee.page = nil
    var ret = fault(vmf)
    if ret & (DAX_VM_FAULT_ERROR | DAX_VM_FAULT_NOPAGE | DAX_VM_FAULT_RETRY) != 0 {
        folioPut(k, folio)
        return ret
    }
    if ret & DAX_VM_FAULT_DONE_COW != 0 { return ret }
    guard let raw = vmf.pointee.page else {
        folioPut(k, folio)
        return DAX_VM_FAULT_SIGBUS
    }
    let src = Page(raw)
    if !copyUserHighpage(k, dst: folio.head, src: src) { clearUserHighpage(k, folio.head) }
    ret |= finishFaultLocked(mm, vmf, folio.head, cow: true)
    folioPut(k, src.folio)   // unlock_page + put_page of the file page
    if ret & (DAX_VM_FAULT_ERROR | DAX_VM_FAULT_NOPAGE | DAX_VM_FAULT_RETRY) != 0 { folioPut(k, folio) }
    return ret
}

/// finish_fault: map the page the handler returned with a reference.
@inline(__always)
func finishFault(_ mm: MMRef, _ vmf: VMFaultRef, _ page: Page) -> UInt32 {
    let ret = finishFaultLocked(mm, vmf, page, cow: false)
    if ret == DAX_VM_FAULT_NOPAGE {
        folioPut(mm.pointee.kernel, page.folio)   // raced: someone mapped it
    }
    return ret
}

/// finish_fault for a handler that fills vmf->cow_page itself (fs/dax.c's
/// dax_fault_cow_page): maps the cow page of a write fault on a private
/// mapping as an exclusive anon page. 0 when mapped; VM_FAULT_NOPAGE when
/// the PTE was filled meanwhile (the caller's do_cow_fault puts the page).
@inline(__always)
public func finishFault(_ vmf: VMFaultRef) -> UInt32 {
    let vma = vmf.pointee.vma!
    let mm = vma.pointee.vm_mm!
    let cow = vmf.pointee.flags & DAX_FAULT_FLAG_WRITE != 0 && vma.pointee.vm_flags & DAX_VM_SHARED == 0
    guard let raw = cow ? vmf.pointee.cow_page : vmf.pointee.page else { return DAX_VM_FAULT_SIGBUS }
    guard vmf.pointee.pte != nil || pteForVmf(mm, vmf) else { return DAX_VM_FAULT_OOM }
    return finishFaultLocked(mm, vmf, Page(raw), cow: cow)
}

/// The PTE slot of a vmf a handler got without the fault walk (pte_alloc).
@inline(__always)
func pteForVmf(_ mm: MMRef, _ vmf: VMFaultRef) -> Bool {
    let addr = vmf.pointee.address
    guard let pud = pudAlloc(mm, addr), let pmd = pmdAlloc(mm, pud, addr),
          let pte = pteAlloc(mm, pmd, addr) else { return false }
    vmf.pointee.pmd = pmd
    vmf.pointee.pte = pte
    return true
}

/// finish_fault / set_pte_range for one page: a file page gets the file
/// rmap and MM_FILEPAGES; the cow page of a private write fault
/// (`cow`) folio_add_new_anon_rmap with RMAP_EXCLUSIVE and MM_ANONPAGES.
/// A PTE filled meanwhile: VM_FAULT_NOPAGE, nothing taken (the caller puts).
@inline(__always)
func finishFaultLocked(_ mm: MMRef, _ vmf: VMFaultRef, _ page: Page, cow: Bool) -> UInt32 {
    let vma = vmf.pointee.vma!
    let k = mm.pointee.kernel!
    guard let pmd = vmf.pointee.pmd, let pte = vmf.pointee.pte else { return DAX_VM_FAULT_OOM }
    let slot = vmfSlot(vmf)
    let ptl = pteLockptr(k, dax_load_u64(pmd))
    dax_spin_lock(ptl)
    if !entryNone(dax_load_u64(pte)) {
        dax_spin_unlock(ptl)
        return DAX_VM_FAULT_NOPAGE
    }
    var e = pfnEntry(pageToPfn(k, page), vma.pointee.vm_page_prot) | PT.accessed
    if vmf.pointee.flags & DAX_FAULT_FLAG_WRITE != 0 {
        e = maybeMkwrite(entryMkdirty(e), vma)
    }
    if cow {
        folioAddNewAnonRmap(k, page.folio, vma, vmf.pointee.address, .exclusive, slot: slot)
        addMMCounter(mm, DAX_MM_ANONPAGES, 1, slot: slot)
    } else {
        folioAddFileRmapPte(k, page.folio, page, slot: slot)
        addMMCounter(mm, DAX_MM_FILEPAGES, 1, slot: slot)
    }
    setPteAt(mm, vmf.pointee.address, pte, e)   // the handler's reference now belongs to the PTE
    dax_spin_unlock(ptl)
    return 0
}

/// do_wp_page (called with the PTE lock held; drops it). Shared mappings:
/// FS DAX pages and special entries go through wp_pfn_shared
/// (->pfn_mkwrite), other pages through wp_page_shared (->page_mkwrite).
/// Private mappings: an anon page that is PageAnonExclusive, or that
/// wp_can_reuse_anon_folio finds is only ours, is reused in place
/// (wp_page_reuse; an unshare fault just marks it exclusive); anything else
/// (the zero page, a file page, a shared anon page) is copied by
/// wp_page_copy.
@inline(__always)
func doWpPage(_ mm: MMRef, _ vmf: VMFaultRef, _ ptl: UnsafeMutablePointer<UInt32>) -> UInt32 {
    let vma = vmf.pointee.vma!
    let k = mm.pointee.kernel!
    let unshare = vmf.pointee.flags & DAX_FAULT_FLAG_UNSHARE != 0
    let entry = dax_load_u64(vmf.pointee.pte)
    let page = vmNormalPage(k, vma, entry)
    vmf.pointee.page = page?.raw
    guard vma.pointee.vm_flags & (DAX_VM_SHARED | DAX_VM_MAYSHARE) != 0 else {
        // Private mapping: reuse an exclusive anon page, else copy.
        if let page, page.folio.isAnon,
           page.isAnonExclusive || wpCanReuseAnonFolio(mm, page.folio, vma) {
            if !page.isAnonExclusive { page.set(DAX_PG_anon_exclusive) }
            if !unshare { wpPageReuse(vmf) }
            dax_spin_unlock(ptl)
            return 0
        }
        if let page { page.folio.refInc() }   // folio_get: held across the copy
        dax_spin_unlock(ptl)
        return wpPageCopy(mm, vmf)
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

/// wp_can_reuse_anon_folio: whether a private write may keep an anon folio
/// that is not PageAnonExclusive (PTE lock held). A small folio: its only
/// reference is our mapping's (refcount 1, checked again under the folio
/// lock taken with trylock), then folio_move_anon_rmap to this VMA's
/// anon_vma. A large PTE-mapped folio: __wp_can_reuse_large_anon_folio.
@inline(__always)
func wpCanReuseAnonFolio(_ mm: MMRef, _ folio: Folio, _ vma: VMARef) -> Bool {
    if folio.isLarge { return wpCanReuseLargeAnonFolio(mm, folio, vma) }
    if folio.refCount > 3 { return false }
    if folio.refCount > 1 { return false }   // no swapcache in the port
    guard folioTrylock(folio) else { return false }
    guard folio.refCount == 1 else {
        folioUnlock(mm.pointee.kernel, folio)
        return false
    }
    folioMoveAnonRmap(folio, vma)
    folioUnlock(mm.pointee.kernel, folio)
    return true
}

/// __wp_can_reuse_large_anon_folio: a large anon folio mapped by PTEs is
/// ours alone when every reference is a mapping (folio_large_mapcount ==
/// refcount, more than one page mapped, none by a PMD) and every mapping is
/// in this mm. The kernel answers the last question with the folio's MM-ID
/// tracking (folio_test_anon_maybe_mapped_shared); the port, which keeps no
/// MM IDs, counts the entries of the faulting VMA that map the folio's
/// pages where its index puts them, and reuses only when they are all its
/// mappings. That reads only this mm's page tables (mmap_lock held, so none
/// is freed) and takes no lock: a racing zap in this mm can only make the
/// counts disagree, which copies. A folio also mapped by another VMA of the
/// same mm (after a partial mremap) is copied where the kernel would reuse
/// it: the port errs on the side of the copy.
@inline(__always)
func wpCanReuseLargeAnonFolio(_ mm: MMRef, _ folio: Folio, _ vma: VMARef) -> Bool {
    let large = folio.mapcount
    if large <= 1 { return false }
    if large != folio.refCount { return false }
    if folio.entireMapcount > 0 { return false }
    return anonFolioMappingsInVMA(mm, folio, vma) == large
}

/// The entries of `vma` (present, or device-exclusive/private: they keep
/// the mapping) that map a page of `folio`, looked for where the folio's
/// index places its pages in the VMA. Unlocked reads; see above.
func anonFolioMappingsInVMA(_ mm: MMRef, _ folio: Folio, _ vma: VMARef) -> Int32 {
    let k = mm.pointee.kernel!
    guard let base = vmaAddress(vma, folio.index, folio.nrPages) else { return 0 }
    let first = pageToPfn(k, folio.head)
    let last = first + UInt64(folio.nrPages)
    var n: Int32 = 0
    for j in 0..<folio.nrPages {
        let a = base &+ UInt64(j << pageShift)
        guard a >= vma.pointee.vm_start, a < vma.pointee.vm_end, let pte = walk(mm, a).pte else { continue }
        let e = dax_load_u64(pte)
        let pfn: UInt64
        if entryPresent(e) {
            pfn = entryPfn(e)
        } else if isSwapPte(e) {
            let se = pteToSwpEntry(e)
            guard swapEntryHoldsMapping(se) else { continue }
            pfn = swpOffsetPfn(se)
        } else {
            continue
        }
        if pfn >= first && pfn < last { n += 1 }
    }
    return n
}

/// wp_page_copy: the faulting PTE gets a new exclusive anon page (zeroed
/// for the zero page, else a copy of the old page), under an
/// MMU_NOTIFY_CLEAR range over the page. If the PTE is unchanged: rss (a
/// file page moves from MM_FILEPAGES to MM_ANONPAGES, the zero page adds to
/// MM_ANONPAGES, an anon page changes nothing), the new PTE young and dirty
/// and writable with VM_WRITE (an unshare fault keeps it read-only with the
/// old soft-dirty and uffd-wp bits), ptep_clear_flush then
/// folio_add_new_anon_rmap(RMAP_EXCLUSIVE), the old page's rmap removed
/// (file or anon). After the unlock and range end, the old page loses the
/// mapping's reference and do_wp_page's. No memory: VM_FAULT_OOM.
@inline(__always)
func wpPageCopy(_ mm: MMRef, _ vmf: VMFaultRef) -> UInt32 {
    let vma = vmf.pointee.vma!
    let k = mm.pointee.kernel!
    let unshare = vmf.pointee.flags & DAX_FAULT_FLAG_UNSHARE != 0
    let oldPage = vmf.pointee.page.map { Page($0) }
    let oldFolio = oldPage?.folio
    let orig = vmf.pointee.orig_pte
    let addr = vmf.pointee.address
    guard anonVMAPrepare(vma) != nil else {
        if let oldFolio { folioPut(k, oldFolio) }
        return DAX_VM_FAULT_OOM
    }
    let pfnIsZero = isZeroPfn(entryPfn(orig))
    guard let newFolio = folioAlloc(k, order: 0, zero: pfnIsZero) else {
        if let oldFolio { folioPut(k, oldFolio) }
        return DAX_VM_FAULT_OOM
    }
    if !pfnIsZero {
        // __wp_page_copy_user: the old page's bytes (a pfn without a page,
        // or with no bytes in the port, leaves the new page cleared).
        var copied = false
        if let oldPage { copied = copyUserHighpage(k, dst: newFolio.head, src: oldPage) }
        if !copied { clearUserHighpage(k, newFolio.head) }
    }
    let slot = vmfSlot(vmf)
    var put: Folio? = newFolio
    withMMUNotifierRange(.clear, mm, addr, addr + UInt64(pageSize)) {
        guard let pmd = vmf.pointee.pmd, let pte = vmf.pointee.pte else { return }
        let pmde = dax_load_u64(pmd)
        guard entryPresent(pmde), !entryLeaf(pmde) else { return }
        let ptl = pteLockptr(k, pmde)
        dax_spin_lock(ptl)
        if dax_load_u64(pte) == orig {
            if let oldFolio {
                if !oldFolio.isAnon {
                    addMMCounter(mm, DAX_MM_FILEPAGES, -1, slot: slot)
                    addMMCounter(mm, DAX_MM_ANONPAGES, 1, slot: slot)
                }
            } else {
                addMMCounter(mm, DAX_MM_ANONPAGES, 1, slot: slot)
            }
            var e = entryMkyoung(pfnEntry(pageToPfn(k, newFolio.head), vma.pointee.vm_page_prot))
            if unshare {
                if pteSoftDirty(orig) { e = pteMksoftDirty(e) }
                if pteUffdWp(orig) { e = pteMkuffdWp(e) }
            } else {
                e = maybeMkwrite(entryMkdirty(e), vma)
            }
            _ = ptepGetAndClear(mm, addr, pte)   // ptep_clear_flush
            flushTlbRange(vma, addr, addr + UInt64(pageSize))
            folioAddNewAnonRmap(k, newFolio, vma, addr, .exclusive, slot: slot)
            setPteAt(mm, addr, pte, e)
            if let oldFolio, let oldPage { folioRemoveRmapPte(k, oldFolio, oldPage) }
            put = oldFolio   // the old mapping's reference
        }
        dax_spin_unlock(ptl)
    }
    if let put { folioPut(k, put) }
    if let oldFolio { folioPut(k, oldFolio) }   // do_wp_page's folio_get
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
