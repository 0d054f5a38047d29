// mm/huge_memory.c: PMD and PUD folio inserts, the pfn-only contrast, zap
// and split of huge entries.
//
// The port defaults to the mid-2025 fix ("don't mark refcounted folios
// special in vmf_insert_folio_pmd()/pud()"): a refcounted folio is mapped
// with a normal huge entry. DAX_MODE_SPECIAL_HUGE_ENTRIES reproduces 6.15 as
// merged, where the same references were taken but the entry was special.
// x86-64 needs no deposited page table for PMD mappings, so none is kept.
//
// Public functions here take raw records (KernelRef, MMRef, VMARef, Page,
// PageArray); their preconditions are in Kernel.swift ("The raw-record API").

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

/// insert_pmd / insert_pud for a folio at `addr` (aligned to the level),
/// with the entry lock held. Returns 0 (inserted) or -EEXIST (an entry was
/// there: at most upgraded in place).
@inline(__always)
func insertHugeFolioLocked(_ k: KernelRef, _ vma: VMARef, _ entry: EntryPtr, _ addr: UInt64, _ folio: Folio,
                           write: Bool, level: RmapLevel, slot: Int32 = dax_this_slot()) -> Int32 {
    let old = dax_load_u64(entry)
    let pfn = pageToPfn(k, folio.head)
    if !entryNone(old) {
        if write {
            if entryPfn(old) != pfn {
                // insert_pmd exempts the huge zero PMD; the port has no huge
                // zero folio (PMD read holes fall back to PTEs), so an old
                // PMD with another pfn always warns.
                vmReport(k, folio.head,
                         rule: level == .pmd ? "WARN_ON_ONCE(!is_huge_zero_pmd(*pmd) && pmd_pfn(*pmd) != pfn)"
                                             : "WARN_ON_ONCE(pud_pfn(*pud) != pfn)",
                         function: level == .pmd ? "insert_pmd" : "insert_pud")
                return -EEXIST
            }
            let e = entryMkdirty(entryMkyoung(old))
            if level == .pmd {
                pmdpSetAccessFlags(vma, addr, entry, maybePmdMkwrite(e, vma))
            } else {
                pudpSetAccessFlags(vma, addr, entry, maybePudMkwrite(e, vma))
            }
        }
        return -EEXIST
    }
    var e = entryMkhuge(pfnEntry(pfn, vma.pointee.vm_page_prot))
    if specialHugeMode(k) { e = entryMkspecial(e) }
    guard folioGet(k, folio) else { return -EINVAL }
    let mm = vma.pointee.vm_mm!
    if level == .pmd {
        folioAddFileRmapPmd(k, folio, folio.head, slot: slot)
        addMMCounter(mm, DAX_MM_FILEPAGES, Int64(hpagePmdNr), slot: slot)
        if write { e = maybePmdMkwrite(entryMkdirty(entryMkyoung(e)), vma) }
        setPmdAt(mm, addr, entry, e)
    } else {
        folioAddFileRmapPud(k, folio, folio.head, slot: slot)
        addMMCounter(mm, DAX_MM_FILEPAGES, Int64(hpagePudNr), slot: slot)
        if write { e = maybePudMkwrite(entryMkdirty(entryMkyoung(e)), vma) }
        setPudAt(mm, addr, entry, e)
    }
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
    let rc = insertHugeFolioLocked(k, vma, pmd, addr, folio, write: write, level: .pmd, slot: vmfSlot(vmf))
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
    let rc = insertHugeFolioLocked(k, vma, pud, addr, folio, write: write, level: .pud, slot: vmfSlot(vmf))
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
            let e = entryMkdirty(entryMkyoung(old))
            if pud {
                pudpSetAccessFlags(vma, addr, entry, maybePudMkwrite(e, vma))
            } else {
                pmdpSetAccessFlags(vma, addr, entry, maybePmdMkwrite(e, vma))
            }
        }
        return DAX_VM_FAULT_NOPAGE
    }
    var e = entryMkspecial(entryMkhuge(pfnEntry(pfn, vma.pointee.vm_page_prot)))
    if pud {
        if write { e = maybePudMkwrite(entryMkdirty(entryMkyoung(e)), vma) }
        setPudAt(mm, addr, entry, e)
    } else {
        if write { e = maybePmdMkwrite(entryMkdirty(entryMkyoung(e)), vma) }
        setPmdAt(mm, addr, entry, e)
    }
    return DAX_VM_FAULT_NOPAGE
}

// MARK: zap and split (mm/huge_memory.c: zap_huge_pmd, zap_huge_pud, __split_huge_pmd_locked)

/// The folio a huge entry maps, or nil when the kernel does no folio work
/// for it (special entry of a non-DAX VMA, the zero pfn, no struct page).
@inline(__always)
func hugeEntryFolio(_ k: KernelRef, _ vma: VMARef, _ e: PTEntry) -> Folio? {
    if entrySpecial(e) && !vmaIsDax(vma) { return nil }
    let pfn = entryPfn(e)
    if isZeroPfn(pfn) || isHugeZeroPfn(k, pfn) || !pfnValid(k, pfn) { return nil }
    return pfnToPage(k, pfn).folio
}

/// Clears the huge entry covering `addr` under its lock and undoes its
/// accounting: rmap, rss, dirty/young into the folio; the reference is
/// dropped after the unlock and the TLB flush. A split flushes under the
/// lock (pmdp_huge_clear_flush), a zap after it (the mmu_gather flush before
/// tlb_remove_page_size frees). Nothing happens when the entry is no longer
/// a huge leaf by the time the lock is held (__pmd_trans_huge_lock).
@inline(__always)
func removeHugeEntry(_ k: KernelRef, _ vma: VMARef, _ entry: EntryPtr, _ addr: UInt64,
                     _ lock: UnsafeMutablePointer<UInt32>, level: RmapLevel, split: Bool) {
    let mm = vma.pointee.vm_mm!
    let size = UInt64(level == .pmd ? pmdSize : pudSize)
    let haddr = roundDown(addr, size)
    dax_spin_lock(lock)
    guard entryLeaf(dax_load_u64(entry)) else {
        dax_spin_unlock(lock)
        return
    }
    let e: PTEntry
    switch (level, split) {
    case (.pmd, true): e = pmdpHugeClearFlush(vma, haddr, entry)
    case (.pmd, false): e = pmdpHugeGetAndClear(mm, haddr, entry)
    case (_, true): e = pudpHugeClearFlush(vma, haddr, entry)
    case (_, false): e = pudpHugeGetAndClear(mm, haddr, entry)
    }
    var put: Folio? = nil
    if level == .pmd && !split && vmaIsAnonymous(vma) {
        zapDepositedTable(k, mm, entry)   // zap_deposited_table (anon THP or huge zero PMD)
    }
    if entryPresent(e), let folio = hugeEntryFolio(k, vma, e) {
        if entryDirty(e) { folio.markDirty() }
        if entryYoung(e) { folio.markAccessed() }
        if level == .pmd {
            folioRemoveRmapPmd(k, folio, folio.head)
            addMMCounter(mm, mmCounter(folio), -Int64(hpagePmdNr))
        } else {
            folioRemoveRmapPud(k, folio, folio.head)
            addMMCounter(mm, mmCounter(folio), -Int64(hpagePudNr))
        }
        put = folio
    }
    dax_spin_unlock(lock)
    if !split {
        // tlb_remove_pmd_tlb_entry / tlb_remove_pud_tlb_entry, flushed here.
        if level == .pmd { flushPmdTlbRange(vma, haddr, haddr + size) } else { flushPudTlbRange(vma, haddr, haddr + size) }
    }
    if let put { folioPut(k, put) }   // tlb_remove_page_size: after the flush
}

/// zap_huge_pmd
@inline(__always)
public func zapHugePmd(_ k: KernelRef, _ vma: VMARef, _ pmd: EntryPtr, _ addr: UInt64) {
    removeHugeEntry(k, vma, pmd, addr, pmdLockptr(k, pmd), level: .pmd, split: false)
}

/// zap_huge_pud
@inline(__always)
public func zapHugePud(_ k: KernelRef, _ vma: VMARef, _ pud: EntryPtr, _ addr: UInt64) {
    removeHugeEntry(k, vma, pud, addr, pudLockptr(vma.pointee.vm_mm), level: .pud, split: false)
}

/// __split_huge_pmd: raises MMU_NOTIFY_CLEAR over the PMD's range around
/// __split_huge_pmd_locked. For a file VMA the mapping is dropped, not
/// converted to PTEs (later faults refault at a smaller size); an anon THP
/// is remapped by PTEs (splitHugePmdAnonLocked).
public func splitHugePmd(_ k: KernelRef, _ vma: VMARef, _ pmd: EntryPtr, _ addr: UInt64) {
    let haddr = roundDown(addr, UInt64(pmdSize))
    withMMUNotifierRange(.clear, vma.pointee.vm_mm, haddr, haddr + UInt64(pmdSize)) {
        if vmaIsAnonymousOrPrivateAnonPmd(k, vma, pmd) {
            splitHugePmdAnon(k, vma, pmd, haddr)
        } else {
            removeHugeEntry(k, vma, pmd, addr, pmdLockptr(k, pmd), level: .pmd, split: true)
        }
    }
}

/// __split_huge_pud (MMU_NOTIFY_CLEAR) around __split_huge_pud_locked, which
/// likewise unmaps: the port's PUD leaves are DAX file mappings only.
public func splitHugePud(_ k: KernelRef, _ vma: VMARef, _ pud: EntryPtr, _ addr: UInt64) {
    let haddr = roundDown(addr, UInt64(pudSize))
    withMMUNotifierRange(.clear, vma.pointee.vm_mm, haddr, haddr + UInt64(pudSize)) {
        removeHugeEntry(k, vma, pud, addr, pudLockptr(vma.pointee.vm_mm), level: .pud, split: true)
    }
}

// MARK: deposited page tables (mm/pgtable-generic.c: pgtable_trans_huge_deposit/withdraw)

/// The head of the deposit list of the PMD table holding `pmd`: a word of
/// the table's ptlock slot (the kernel keeps it in the table's struct
/// ptdesc, pmd_huge_pte), guarded by the PMD lock.
@inline(__always)
func depositHead(_ k: KernelRef, _ pmd: EntryPtr) -> UnsafeMutablePointer<UInt64> {
    UnsafeMutableRawPointer(ptlockOf(k, tableContaining: pmd) + 2).assumingMemoryBound(to: UInt64.self)
}

/// pgtable_trans_huge_deposit: an empty PTE table kept for the anon PMD
/// mapping at `pmd`, so splitting it later never needs an allocation (PMD
/// lock held). The table's first word links the list.
@inline(__always)
func pgtableTransHugeDeposit(_ k: KernelRef, _ pmd: EntryPtr, _ table: EntryPtr) {
    let head = depositHead(k, pmd)
    table.pointee = head.pointee
    head.pointee = UInt64(UInt(bitPattern: table))
}

/// pgtable_trans_huge_withdraw: one deposited table of the PMD table
/// holding `pmd`, zeroed (PMD lock held); nil when none is deposited.
@inline(__always)
func pgtableTransHugeWithdraw(_ k: KernelRef, _ pmd: EntryPtr) -> EntryPtr? {
    let head = depositHead(k, pmd)
    guard let table = EntryPtr(bitPattern: UInt(head.pointee)) else { return nil }
    head.pointee = table.pointee
    table.pointee = 0
    return table
}

/// zap_deposited_table: the deposited table of a zapped anon PMD goes back
/// to the pool (mm_dec_nr_ptes). PMD lock held.
@inline(__always)
func zapDepositedTable(_ k: KernelRef, _ mm: MMRef, _ pmd: EntryPtr) {
    guard let table = pgtableTransHugeWithdraw(k, pmd) else { return }
    ptFreeTable(k, table)
    dax_atomic64_add(dax_mm_pgtables_bytes(mm), -Int64(pageSize))
}

// MARK: anon THP split (mm/huge_memory.c: __split_huge_pmd_locked for anon VMAs)

/// Whether __split_huge_pmd_locked takes the anon path: the VMA is
/// anonymous (vma_is_anonymous: no vm_ops), where a PMD maps an anon THP
/// or the huge zero folio.
@inline(__always)
func vmaIsAnonymousOrPrivateAnonPmd(_ k: KernelRef, _ vma: VMARef, _ pmd: EntryPtr) -> Bool {
    vmaIsAnonymous(vma)
}

/// __split_huge_pmd_locked (anon, not freezing) and
/// __split_huge_zero_page_pmd: the PMD mapping of an anon THP becomes
/// HPAGE_PMD_NR PTEs mapping its pages with the PMD's write, young, dirty,
/// soft-dirty and uffd-wp bits; every page inherits the head's
/// PageAnonExclusive (folio_add_anon_rmap_ptes with RMAP_EXCLUSIVE), the
/// PTEs take HPAGE_PMD_NR - 1 more references (the PMD's becomes the first
/// PTE's), the PMD's rmap goes (folio_remove_rmap_pmd: NR_ANON_THPS falls,
/// NR_ANON_MAPPED and MM_ANONPAGES stay). A huge zero PMD becomes 512
/// special PTEs of the small zero page. The PTE table is the one the fault
/// (or fork) deposited for this PMD (pgtable_trans_huge_withdraw), so the
/// split cannot fail. The caller raises the MMU_NOTIFY_CLEAR range
/// (splitHugePmd).
func splitHugePmdAnon(_ k: KernelRef, _ vma: VMARef, _ pmd: EntryPtr, _ haddr: UInt64) {
    let mm = vma.pointee.vm_mm!
    let ptl = pmdLockptr(k, pmd)
    dax_spin_lock(ptl)
    let old = dax_load_u64(pmd)
    guard entryLeaf(old) else {
        dax_spin_unlock(ptl)
        return
    }
    guard let table = pgtableTransHugeWithdraw(k, pmd) else {
        if pfnValid(k, entryPfn(old)) {
            vmReport(k, pfnToPage(k, entryPfn(old)), rule: "pgtable_trans_huge_withdraw: no deposited page table",
                     function: "__split_huge_pmd_locked")
        }
        dax_spin_unlock(ptl)
        return
    }
    let pfn = entryPfn(old)
    // The PMD goes first (pmdp_invalidate + the flush); the new table is
    // filled while nobody can see it, then published (pmd_populate).
    _ = pmdpHugeClearFlush(vma, haddr, pmd)
    if isHugeZeroPfn(k, pfn) {
        let zero = entryMkspecial(entryWrprotect(pfnEntry(0, vma.pointee.vm_page_prot)))
        for i in 0..<hpagePmdNr { setPteAt(mm, haddr + UInt64(i << pageShift), table + i, zero) }
        pmdPopulate(mm, pmd, table)   // counted in pgtables_bytes since its deposit
        dax_spin_unlock(ptl)
        return
    }
    let folio = pfnToPage(k, pfn).folio
    let head = folio.head
    let anonExclusive = head.isAnonExclusive
    folio.refAdd(Int32(hpagePmdNr - 1))
    folioAddAnonRmapPtes(k, folio, head, hpagePmdNr, vma, haddr, anonExclusive ? .exclusive : [])
    var bits = vma.pointee.vm_page_prot & ~PT.rw
    if entryWrite(old) { bits |= PT.rw }
    if entryYoung(old) { bits |= PT.accessed }
    if entryDirty(old) { bits |= PT.dirty; folio.markDirty() }
    if pteSoftDirty(old) { bits |= PT.softDirty }
    if pteUffdWp(old) { bits |= PT.uffdWp }
    for i in 0..<hpagePmdNr {
        setPteAt(mm, haddr + UInt64(i << pageShift), table + i, pfnEntry(pfn + UInt64(i), bits))
    }
    pmdPopulate(mm, pmd, table)   // counted in pgtables_bytes since its deposit
    folioRemoveRmapPmd(k, folio, head)
    dax_spin_unlock(ptl)
}

// MARK: anon THP faults (mm/huge_memory.c)

/// thp_vma_allowable_order(vma, PMD_ORDER) at fault time for an anonymous
/// VMA, with thp_vma_suitable_order: THP enabled for it (always, unless
/// VM_NOHUGEPAGE; madvise, with VM_HUGEPAGE), a private VMA, and the
/// aligned PMD around `addr` inside the VMA.
@inline(__always)
func thpVmaAllowablePmd(_ k: KernelRef, _ vma: VMARef, _ addr: UInt64) -> Bool {
    let f = vma.pointee.vm_flags
    guard f & DAX_VM_SHARED == 0, f & DAX_VM_NOHUGEPAGE == 0 else { return false }
    switch k.pointee.thp_enabled {
    case DAX_THP_ALWAYS.rawValue: break
    case DAX_THP_MADVISE.rawValue: guard f & DAX_VM_HUGEPAGE != 0 else { return false }
    default: return false
    }
    let haddr = roundDown(addr, UInt64(pmdSize))
    return haddr >= vma.pointee.vm_start && haddr + UInt64(pmdSize) <= vma.pointee.vm_end
}

/// do_huge_pmd_anonymous_page. A read, with use_zero_page, maps the huge
/// zero folio (set_huge_zero_folio: a read-only PMD, no rss, no rmap; the
/// port keeps no per-mm reference on it). A write takes a new zeroed
/// PMD-order folio (none free: VM_FAULT_FALLBACK, and the PTE path maps a
/// small page), folio_add_new_anon_rmap with RMAP_EXCLUSIVE (PageAnonExclusive
/// on the head, NR_ANON_MAPPED and NR_ANON_THPS + HPAGE_PMD_NR), a dirty
/// young PMD, writable with VM_WRITE, MM_ANONPAGES + HPAGE_PMD_NR. A PMD
/// filled meanwhile wins.
func doHugePmdAnonymousPage(_ mm: MMRef, _ vmf: VMFaultRef) -> UInt32 {
    let vma = vmf.pointee.vma!
    let k = mm.pointee.kernel!
    guard let pmd = vmf.pointee.pmd else { return DAX_VM_FAULT_FALLBACK }
    let haddr = roundDown(vmf.pointee.address, UInt64(pmdSize))
    let ptl = pmdLockptr(k, pmd)
    // vmf_anon_prepare before either path: a VMA of huge zero PMDs only
    // has its anon_vma too (so fork copies them: vma_needs_copy).
    guard anonVMAPrepare(vma) != nil else { return DAX_VM_FAULT_OOM }
    // pte_alloc_one: the table deposited with the PMD (a later split uses it).
    guard let pgtable = ptAllocTable(k) else { return DAX_VM_FAULT_OOM }
    if vmf.pointee.flags & DAX_FAULT_FLAG_WRITE == 0 && k.pointee.thp_use_zero_page != 0 && k.pointee.huge_zero_pfn != 0 {
        let e = entryMkhuge(entryWrprotect(pfnEntry(k.pointee.huge_zero_pfn, vma.pointee.vm_page_prot))) | PT.accessed
        dax_spin_lock(ptl)
        if entryNone(dax_load_u64(pmd)) {
            pgtableTransHugeDeposit(k, pmd, pgtable)
            dax_atomic64_add(dax_mm_pgtables_bytes(mm), Int64(pageSize))   // mm_inc_nr_ptes
            setPmdAt(mm, haddr, pmd, e)
            dax_spin_unlock(ptl)
        } else {
            dax_spin_unlock(ptl)
            ptFreeTable(k, pgtable)
        }
        return 0
    }
    guard let folio = folioAlloc(k, order: pmdOrder, zero: true) else {
        ptFreeTable(k, pgtable)
        return DAX_VM_FAULT_FALLBACK
    }
    let slot = vmfSlot(vmf)
    var e = entryMkhuge(pfnEntry(pageToPfn(k, folio.head), vma.pointee.vm_page_prot)) | PT.accessed
    e = maybePmdMkwrite(entryMkdirty(e), vma)
    dax_spin_lock(ptl)
    guard entryNone(dax_load_u64(pmd)) else {
        dax_spin_unlock(ptl)
        folioPut(k, folio)
        ptFreeTable(k, pgtable)
        return 0
    }
    pgtableTransHugeDeposit(k, pmd, pgtable)
    dax_atomic64_add(dax_mm_pgtables_bytes(mm), Int64(pageSize))   // mm_inc_nr_ptes
    folioAddNewAnonRmap(k, folio, vma, haddr, .exclusive, slot: slot)
    addMMCounter(mm, DAX_MM_ANONPAGES, Int64(hpagePmdNr), slot: slot)
    setPmdAt(mm, haddr, pmd, e)
    dax_spin_unlock(ptl)
    return 0
}

/// do_huge_pmd_wp_page: a write (or unshare) fault on a read-only anon PMD.
/// The huge zero PMD is split (to zero-page PTEs) and the fault falls back
/// to PTEs. A head that is PageAnonExclusive is reused in place (young,
/// dirty, writable with VM_WRITE); otherwise, if the folio lock is free at
/// once and the PMD's is the only reference, the folio becomes exclusive
/// (folio_move_anon_rmap, SetPageAnonExclusive) and is reused. Anything
/// else splits the PMD and falls back to the PTE fault, which copies.
func doHugePmdWpPage(_ mm: MMRef, _ vmf: VMFaultRef) -> UInt32 {
    let vma = vmf.pointee.vma!
    let k = mm.pointee.kernel!
    guard let pmd = vmf.pointee.pmd else { return DAX_VM_FAULT_FALLBACK }
    let orig = vmf.pointee.orig_pmd
    let haddr = roundDown(vmf.pointee.address, UInt64(pmdSize))
    let unshare = vmf.pointee.flags & DAX_FAULT_FLAG_UNSHARE != 0
    if isHugeZeroPfn(k, entryPfn(orig)) {
        splitHugePmd(k, vma, pmd, haddr)
        return DAX_VM_FAULT_FALLBACK
    }
    let ptl = pmdLockptr(k, pmd)
    dax_spin_lock(ptl)
    guard dax_load_u64(pmd) == orig, pfnValid(k, entryPfn(orig)) else {
        dax_spin_unlock(ptl)
        return 0
    }
    let folio = pfnToPage(k, entryPfn(orig)).folio
    var reuse = folio.head.isAnonExclusive
    if !reuse && folioTrylock(folio) {
        if folio.refCount == 1 {
            folioMoveAnonRmap(folio, vma)
            folio.head.set(DAX_PG_anon_exclusive)
            reuse = true
        }
        folioUnlock(k, folio)
    }
    if reuse {
        if unshare {
            dax_spin_unlock(ptl)
            return 0
        }
        let e = maybePmdMkwrite(entryMkdirty(entryMkyoung(orig)), vma)
        pmdpSetAccessFlags(vma, haddr, pmd, e)
        dax_spin_unlock(ptl)
        return 0
    }
    dax_spin_unlock(ptl)
    splitHugePmd(k, vma, pmd, haddr)
    return DAX_VM_FAULT_FALLBACK
}
