// Device-exclusive entries (mm/rmap.c: make_device_exclusive; mm/memory.c:
// do_swap_page's non-swap cases, remove_device_exclusive_entry,
// restore_exclusive_pte, try_restore_exclusive_pte; mm/mprotect.c:
// can_change_pte_writable; mm/pagewalk.c: folio_walk_start), as the kernel
// has them since 6.15 ("mm: fixes for device-exclusive entries (hmm)").
//
// A device that wants exclusive (atomic) access to an anon page asks for
// the PTE mapping it to become a device-exclusive entry: non-present, so
// any CPU access faults, and carrying the pfn. The entry keeps everything a
// present PTE holds (the folio reference, the mapcount, MM_ANONPAGES and
// PageAnonExclusive: "mm/rmap: keep mapcount untouched for device-exclusive
// entries"), so zap, mremap and fork treat it as a mapping of the page. A
// CPU fault on it raises MMU_NOTIFY_CLEAR, so the device drops its access,
// and restores a present PTE. There is one entry type (6.15 dropped the
// readable variant): make_device_exclusive makes the page writable first,
// and the restore recomputes writability (can_change_pte_writable).
//
// The seed's 2021 design walked the rmap of each page GUP returned and ran
// into tail pages of THPs reaching rmap_walk; 6.15 walks the page tables of
// the one address instead (folio_walk_start) after GUP with FOLL_SPLIT_PMD
// made the THP PTE-mapped, so no rmap walk happens at all.

import CDaxMM
import DAXBase

// MARK: folio_walk (mm/pagewalk.c)

/// enum folio_walk_level
public enum FolioWalkLevel: Sendable { case pte, pmd, pud }

/// struct folio_walk: what folio_walk_start found at an address, with the
/// entry's lock held until folioWalkEnd.
public struct FolioWalk {
    public var page: Page
    public var level: FolioWalkLevel
    public var entryp: EntryPtr
    public var entry: PTEntry
    var ptl: UnsafeMutablePointer<UInt32>
}

/// folio_walk_start(fw, vma, addr, 0): the folio a present leaf entry maps
/// at `addr` (normal pages only: vm_normal_page, the zero pages excluded),
/// with the entry's page-table lock held; nil (and no lock) when there is
/// none. The caller holds mmap_lock.
public func folioWalkStart(_ vma: VMARef, _ addr: UInt64) -> (Folio, FolioWalk)? {
    let mm = vma.pointee.vm_mm!
    let k = mm.pointee.kernel!
    let w = walk(mm, addr)
    func leaf(_ entryp: EntryPtr, _ ptl: UnsafeMutablePointer<UInt32>, _ size: UInt64,
              _ level: FolioWalkLevel) -> (Folio, FolioWalk)? {
        dax_spin_lock(ptl)
        let e = dax_load_u64(entryp)
        let pfnBase = entryPfn(e)
        guard level == .pte ? entryPresent(e) : entryLeaf(e),
              !(level == .pte && entrySpecial(e)), !isZeroPfn(pfnBase), !isHugeZeroPfn(k, pfnBase),
              pfnValid(k, pfnBase) else {
            dax_spin_unlock(ptl)
            return nil
        }
        let page = pfnToPage(k, pfnBase + ((addr & (size - 1)) >> UInt64(pageShift)))
        return (page.folio, FolioWalk(page: page, level: level, entryp: entryp, entry: e, ptl: ptl))
    }
    if let pud = w.pud, entryLeaf(dax_load_u64(pud)) {
        return leaf(pud, pudLockptr(mm), UInt64(pudSize), .pud)
    }
    if let pmd = w.pmd, entryLeaf(dax_load_u64(pmd)) {
        return leaf(pmd, pmdLockptr(k, pmd), UInt64(pmdSize), .pmd)
    }
    guard let pte = w.pte, let pmd = w.pmd else { return nil }
    return leaf(pte, pteLockptr(k, dax_load_u64(pmd)), UInt64(pageSize), .pte)
}

/// folio_walk_end: drops the entry's lock.
public func folioWalkEnd(_ fw: FolioWalk) { dax_spin_unlock(fw.ptl) }

// MARK: make_device_exclusive (mm/rmap.c)

/// The outcome of make_device_exclusive: the page now behind a
/// device-exclusive entry and its folio, locked and holding the reference
/// GUP took, which the caller owns (it programs the device, then
/// folioUnlock and folioPut).
public struct DeviceExclusivePage {
    public var page: Page
    public var folio: Folio
}

/// make_device_exclusive(mm, addr, owner, &folio). The caller holds
/// mmap_lock (read suffices). Returns the page, or a negative errno:
///   - GUP's error (get_user_page_vma_remote with FOLL_GET | FOLL_WRITE |
///     FOLL_SPLIT_PMD: faults the page in writable, breaking COW and turning
///     back an existing device-exclusive entry first; a PMD-mapped THP is
///     PTE-mapped, its folio not split);
///   - -EOPNOTSUPP when the folio is not anon (the folio's reference put);
///   - -EINTR when the folio lock was not taken within `lockTimeoutNanos`
///     (folio_lock_killable's fatal signal).
/// Then, inside an MMU_NOTIFY_EXCLUSIVE range carrying `owner` (the
/// caller's own invalidation, which it must ignore to avoid livelock),
/// a second walk checks the same page is still mapped writable by a PTE
/// (else everything is undone and GUP runs again); the PTE is cleared and
/// flushed (its dirty bit goes to the folio) and replaced by a
/// device-exclusive entry for the pfn, soft-dirty kept (the PTE was
/// writable, so uffd-wp cannot be set). rmap, refcount, rss and
/// PageAnonExclusive do not change: the entry keeps the PTE's mapping.
public func makeDeviceExclusive(_ mm: MMRef, _ address: UInt64, owner: UnsafeMutableRawPointer?,
                                lockTimeoutNanos: Int64 = -1) -> Result<DeviceExclusivePage, MMErrno> {
    let k = mm.pointee.kernel!
    let addr = roundDown(address, UInt64(pageSize))
    while true {
        var vmaOut: VMARef? = nil
        let got = getUserPageVmaRemote(mm, addr, [.get, .write, .splitPmd], &vmaOut)
        guard case .success(let page) = got, let vma = vmaOut else {
            if case .failure(let e) = got { return .failure(e) }
            return .failure(MMErrno(EFAULT))
        }
        let folio = page.folio
        guard folio.isAnon else {
            folioPut(k, folio)
            return .failure(MMErrno(EOPNOTSUPP))
        }
        guard folioLock(k, folio, timeoutNanos: lockTimeoutNanos) else {
            folioPut(k, folio)
            return .failure(MMErrno(EINTR))
        }
        var range = mmuNotifierRangeInitOwner(.exclusive, mm, addr, addr + UInt64(pageSize), owner: owner)
        let done: Bool = withUnsafeMutablePointer(to: &range) { r in
            mmuNotifierInvalidateRangeStart(r)
            defer { mmuNotifierInvalidateRangeEnd(r) }
            guard let (fwFolio, fw) = folioWalkStart(vma, addr) else { return false }
            guard fwFolio == folio, fw.page == page, fw.level == .pte, entryWrite(fw.entry) else {
                folioWalkEnd(fw)
                return false
            }
            // ptep_clear_flush: the up-to-date dirty bit, then the entry.
            let old = ptepGetAndClear(mm, addr, fw.entryp)
            flushTlbRange(vma, addr, addr + UInt64(pageSize))
            if entryDirty(old) { folio.markDirty() }
            var swp = swpEntryToPte(makeDeviceExclusiveEntry(pageToPfn(k, page)))
            if pteSoftDirty(old) { swp = pteSwpMksoftDirty(swp) }
            setPteAt(mm, addr, fw.entryp, swp)
            folioWalkEnd(fw)
            return true
        }
        if done { return .success(DeviceExclusivePage(page: page, folio: folio)) }
        folioUnlock(k, folio)
        folioPut(k, folio)
    }
}

// MARK: the CPU fault (mm/memory.c)

/// can_change_pte_writable: a write fault or mprotect may make `pte`
/// writable without a copy: the VMA is writable, the entry is not
/// PROT_NONE or uffd-wp protected, and in a private mapping the page is an
/// exclusive anon page (PageAnonExclusive); in a shared one the entry is
/// already dirty.
@inline(__always)
public func canChangePteWritable(_ k: KernelRef, _ vma: VMARef, _ addr: UInt64, _ pte: PTEntry) -> Bool {
    guard vma.pointee.vm_flags & DAX_VM_WRITE != 0 else { return false }
    if pte & PT.user == 0 { return false }   // pte_protnone
    if pteUffdWp(pte) { return false }
    if vma.pointee.vm_flags & DAX_VM_SHARED == 0 {
        guard let page = vmNormalPage(k, vma, pte) else { return false }
        return page.folio.isAnon && page.isAnonExclusive
    }
    return entryDirty(pte)
}

/// restore_exclusive_pte: a present PTE for `page` in place of the
/// device-exclusive entry `orig` (PTE lock held, folio locked): old (not
/// young), soft-dirty and uffd-wp from the entry's bits, writable (and
/// dirty if the folio is) when can_change_pte_writable allows. Nothing
/// else changes: the entry already held the mapping.
@inline(__always)
func restoreExclusivePte(_ k: KernelRef, _ vma: VMARef, _ folio: Folio, _ page: Page, _ addr: UInt64,
                         _ ptep: EntryPtr, _ orig: PTEntry) {
    if !folio.isLocked {
        vmReport(k, page, rule: "VM_WARN_ON_FOLIO(!folio_test_locked(folio))", function: "restore_exclusive_pte")
    }
    var pte = pfnEntry(pageToPfn(k, page), vma.pointee.vm_page_prot) & ~PT.accessed
    if pteSwpSoftDirty(orig) { pte = pteMksoftDirty(pte) }
    if pteSwpUffdWp(orig) { pte = pteMkuffdWp(pte) }
    if vma.pointee.vm_flags & DAX_VM_WRITE != 0 && canChangePteWritable(k, vma, addr, pte) {
        if folio.isDirty { pte = entryMkdirty(pte) }
        pte = entryMkwrite(pte)
    }
    setPteAt(vma.pointee.vm_mm, addr, ptep, pte)
}

/// try_restore_exclusive_pte (fork): restores the entry if the folio lock
/// is free at once; -EBUSY otherwise (fork then fails with -ENOMEM). PTE
/// lock held.
func tryRestoreExclusivePte(_ k: KernelRef, _ vma: VMARef, _ addr: UInt64, _ ptep: EntryPtr, _ orig: PTEntry) -> Int32 {
    guard let page = pfnSwapEntryToPage(k, pteToSwpEntry(orig)) else { return -EBUSY }
    let folio = page.folio
    guard folioTrylock(folio) else { return -EBUSY }
    restoreExclusivePte(k, vma, folio, page, addr, ptep, orig)
    folioUnlock(k, folio)
    return 0
}

/// remove_device_exclusive_entry: a CPU fault on a device-exclusive entry.
/// A reference keeps the folio (none to take: the entry is already gone,
/// 0); the folio lock is taken (sleeping: the port's faults may sleep);
/// MMU_NOTIFY_CLEAR with no owner tells every device, the one holding the
/// exclusive access included, to drop it; if the PTE is still the entry
/// it is restored. Returns 0 (the access is retried).
@inline(__always)
func removeDeviceExclusiveEntry(_ mm: MMRef, _ vmf: VMFaultRef, _ page: Page) -> UInt32 {
    let k = mm.pointee.kernel!
    let vma = vmf.pointee.vma!
    let folio = page.folio
    guard folio.refTryAdd(1) else { return 0 }   // folio_try_get
    folioLock(k, folio)
    let addr = vmf.pointee.address
    withMMUNotifierRange(.clear, mm, addr, addr + UInt64(pageSize)) {
        guard let pmd = vmf.pointee.pmd, let ptep = vmf.pointee.pte else { return }
        let ptl = pteLockptr(k, dax_load_u64(pmd))
        dax_spin_lock(ptl)
        if dax_load_u64(ptep) == vmf.pointee.orig_pte {
            restoreExclusivePte(k, vma, folio, page, addr, ptep, vmf.pointee.orig_pte)
        }
        dax_spin_unlock(ptl)
    }
    folioUnlock(k, folio)
    folioPut(k, folio)
    return 0
}

/// PTE marker bits (the offset of a SWP_PTE_MARKER entry).
public enum PteMarker {
    public static let uffdWp: UInt64 = 1 << 0       // PTE_MARKER_UFFD_WP
    public static let poisoned: UInt64 = 1 << 1     // PTE_MARKER_POISONED
    public static let guardRegion: UInt64 = 1 << 2  // PTE_MARKER_GUARD
}

/// do_swap_page for the entries the port has (it has no swap device, so
/// every swap PTE is a non_swap_entry):
///   - migration: migration_entry_wait: sleeps until the folio is unlocked
///     (the migration done), then 0 (the access is retried);
///   - device-exclusive: remove_device_exclusive_entry;
///   - device-private: under the PTE lock (the entry must still be there)
///     the page is locked with trylock (busy: 0, retried) and referenced,
///     then the pgmap's migrate_to_ram brings the page back with the page
///     locked (its return is the fault's);
///   - hwpoison: VM_FAULT_HWPOISON;
///   - markers: poisoned VM_FAULT_HWPOISON, guard VM_FAULT_SIGSEGV, an
///     uffd-wp marker alone is a missing page (0 after clearing it: the
///     retry takes the none path);
///   - anything else (a real swap slot): print_bad_pte, VM_FAULT_SIGBUS.
@inline(__always)
func doSwapPage(_ mm: MMRef, _ vmf: VMFaultRef) -> UInt32 {
    let k = mm.pointee.kernel!
    let orig = vmf.pointee.orig_pte
    let entry = pteToSwpEntry(orig)
    if isMigrationEntry(entry) {
        if let folio = pfnSwapEntryFolio(k, entry), folio.refTryAdd(1) {
            _ = folioWaitLocked(k, folio)
            folioPut(k, folio)
        }
        return 0
    }
    if isDeviceExclusiveEntry(entry) {
        guard let page = pfnSwapEntryToPage(k, entry) else { return DAX_VM_FAULT_SIGBUS }
        vmf.pointee.page = page.raw
        return removeDeviceExclusiveEntry(mm, vmf, page)
    }
    if isDevicePrivateEntry(entry) {
        guard let page = pfnSwapEntryToPage(k, entry), let pmd = vmf.pointee.pmd, let ptep = vmf.pointee.pte else {
            return DAX_VM_FAULT_SIGBUS
        }
        vmf.pointee.page = page.raw
        let ptl = pteLockptr(k, dax_load_u64(pmd))
        dax_spin_lock(ptl)
        guard dax_load_u64(ptep) == orig else {
            dax_spin_unlock(ptl)
            return 0
        }
        let folio = page.folio
        // The page lock keeps a concurrent migration off the page; busy:
        // the fault is retried.
        guard folioTrylock(folio) else {
            dax_spin_unlock(ptl)
            return 0
        }
        folio.refInc()   // get_page while the entry pins it
        dax_spin_unlock(ptl)
        var ret = DAX_VM_FAULT_SIGBUS
        if let pgmap = folio.pgmap, let migrate = pgmap.pointee.migrate_to_ram {
            ret = migrate(UnsafeMutableRawPointer(vmf))
        }
        folioUnlock(k, folio)
        folioPut(k, folio)
        return ret
    }
    if isHwpoisonEntry(entry) { return DAX_VM_FAULT_HWPOISON }
    if isPteMarkerEntry(entry) {
        // handle_pte_marker: an empty marker is a bug (SIGBUS).
        if entry.offset == 0 { return DAX_VM_FAULT_SIGBUS }
        if entry.offset & PteMarker.poisoned != 0 { return DAX_VM_FAULT_HWPOISON }
        if entry.offset & PteMarker.guardRegion != 0 { return DAX_VM_FAULT_SIGSEGV }
        if let pmd = vmf.pointee.pmd, let ptep = vmf.pointee.pte {
            let ptl = pteLockptr(k, dax_load_u64(pmd))
            dax_spin_lock(ptl)
            if dax_load_u64(ptep) == orig { _ = ptepGetAndClear(mm, vmf.pointee.address, ptep) }
            dax_spin_unlock(ptl)
        }
        return 0
    }
    if let page = pfnSwapEntryToPage(k, entry) {
        vmReport(k, page, rule: "print_bad_pte: a swap entry with no swap device", function: "do_swap_page")
    }
    return DAX_VM_FAULT_SIGBUS
}

// MARK: the safe API

extension MM {
    /// make_device_exclusive with mmap_lock held for read around it. The
    /// returned folio is locked and referenced: call
    /// `releaseDeviceExclusive` when the device is programmed.
    public func makeDeviceExclusive(_ address: UInt64, owner: UnsafeMutableRawPointer?) throws(MMError) -> DeviceExclusivePage {
        lockRead()
        defer { unlockRead() }
        switch MMCore.makeDeviceExclusive(ref, address, owner: owner) {
        case .success(let p): return p
        case .failure(let e):
            throw .errno(e.code, "make_device_exclusive(\(hex(address))) failed")
        }
    }

    /// folio_unlock + folio_put of a make_device_exclusive result.
    public func releaseDeviceExclusive(_ p: DeviceExclusivePage) {
        folioUnlock(kernel.ref, p.folio)
        folioPut(kernel.ref, p.folio)
    }
}
