// fs/dax.c fault side: grab_mapping_entry, dax_insert_entry,
// dax_fault_iter with the temporary-reference protocol, the PTE and PMD
// fault handlers, MAP_SYNC (VM_FAULT_NEEDDSYNC and dax_insert_pfn_mkwrite),
// and dax_break_layout(_final).

import CDaxMM
import MMCore

/// What the filesystem's iomap_begin answers for a fault (struct iomap).
public struct DaxIomap {
    public enum Kind: UInt8 { case hole, mapped, unwritten }
    public var kind: Kind
    /// First device block (4 KiB) of the extent when mapped.
    public var block: UInt64
    /// Length of the extent from the requested position, in pages.
    public var pages: UInt64
    /// IOMAP_F_NEW (blocks allocated by this call).
    public var new: Bool
    /// IOMAP_F_SHARED (reflinked, or a CoW replacement: the entry is swapped).
    public var shared: Bool
    /// IOMAP_F_DIRTY (metadata not yet durable: a MAP_SYNC fault must sync first).
    public var dirty: Bool
    public var error: Int32
}

/// The filesystem side of a DAX file, for the fault path: C callbacks.
package struct DaxInodeCore {
    public var mapping: DaxMappingRef
    /// i_size in pages.
    public var sizePages: UInt64
    /// First pfn of the device the file's blocks live on.
    public var basePfn: UInt64
    /// iomap_begin(inode, pgoff, pages, write, out: DaxIomap*) for this file.
    public var iomapBegin: @convention(c) (UnsafeMutableRawPointer?, UInt64, UInt64, Bool, UnsafeMutableRawPointer?) -> Void
    public var fsPrivate: UnsafeMutableRawPointer?
    /// fsync of metadata for MAP_SYNC (dax_finish_sync_fault's vfs_fsync_range).
    public var sync: @convention(c) (UnsafeMutableRawPointer?) -> Void
}

package typealias DaxInodeRef = UnsafeMutablePointer<DaxInodeCore>

extension DaxInodeCore: DriverState {
    /// The tag of fs-dax inode records ("fsdax").
    @inline(__always) package static var driverTag: DriverTag { DriverTag(0x66_7364_6178) }
}

/// The inode record behind `vma`, nil unless the VMA maps an fs-dax file (a
/// tag compare).
@inline(__always)
func daxInode(_ vma: VMARef) -> DaxInodeRef? {
    DaxInodeCore.state(of: vma)
}

@inline(__always)
func callIomapBegin(_ inode: DaxInodeRef, _ index: UInt64, _ pages: UInt64, _ write: Bool) -> DaxIomap {
    var map = DaxIomap(kind: .hole, block: 0, pages: 0, new: false, shared: false, dirty: false, error: 0)
    withUnsafeMutablePointer(to: &map) { inode.pointee.iomapBegin(inode.pointee.fsPrivate, index, pages, write, UnsafeMutableRawPointer($0)) }
    return map
}

@inline(__always)
func legacyPreSeries(_ k: KernelRef) -> Bool { k.pointee.mode & DAX_MODE_LEGACY_PRE_SERIES.rawValue != 0 }

/// grab_mapping_entry: the locked entry for `index` at `order` (returned
/// unlocked, the slot holds the locked form), or a VM_FAULT code.
@inline(__always)
func grabMappingEntry(_ m: DaxMappingRef, _ index: UInt64, order: Int)
    -> (entry: UInt64, slot: UnsafeMutablePointer<UInt64>?, fault: UInt32)
{
    let k = m.pointee.kernel
    dax_spin_lock(&m.pointee.lock)
    while true {
        switch getNextUnlockedEntry(m, index, order: order) {
        case .conflict:
            dax_spin_unlock(&m.pointee.lock)
            return (0, nil, DAX_VM_FAULT_FALLBACK)
        case .entry(let e, let slot):
            if order == 0 && DaxEntry.isPMD(e) && (DaxEntry.isZero(e) || DaxEntry.isEmpty(e)) {
                // Downgrade: drop the PMD zero/empty entry and continue as empty.
                daxLockEntry(slot, e)
                dax_spin_unlock(&m.pointee.lock)
                if DaxEntry.isZero(e) {
                    unmapMappingPages(m, index & ~UInt64(hpagePmdNr - 1), UInt64(hpagePmdNr))
                }
                dax_spin_lock(&m.pointee.lock)
                daxDisassociateEntry(k, e)
                daxStoreEntry(m, slot, old: e, new: 0)
                m.pointee.nrpages -= Int64(hpagePmdNr)
                wakeUpVar(k, UnsafeRawPointer(slot))
                continue
            }
            daxLockEntry(slot, e)
            dax_spin_unlock(&m.pointee.lock)
            return (e, slot, 0)
        case .none:
            let at = order > 0 ? index & ~UInt64(hpagePmdNr - 1) : index
            let slot = m.pointee.slots + Int(at)
            let e = DaxEntry.empty | (order > 0 ? DaxEntry.pmd : 0)
            daxStoreEntry(m, slot, old: 0, new: e | DaxEntry.locked)
            m.pointee.nrpages += Int64(1) << Int64(order)
            dax_spin_unlock(&m.pointee.lock)
            return (e, slot, 0)
        }
    }
}

/// Unlocks an entry taken by grab (the slot may hold a replacement).
@inline(__always)
func unlockSlot(_ m: DaxMappingRef, _ slot: UnsafeMutablePointer<UInt64>) {
    daxUnlockEntry(m, slot, dax_load_u64(slot))
}

/// dax_insert_entry: returns the entry now in the slot.
@inline(__always)
func daxInsertEntry(_ m: DaxMappingRef, _ vmf: VMFaultRef, _ slot: UnsafeMutablePointer<UInt64>,
                    _ entry: UInt64, _ newEntry: UInt64, write: Bool, shared: Bool, sync: Bool) -> UInt64 {
    let k = m.pointee.kernel
    let index = vmf.pointee.pgoff
    let dirty = write && !sync
    // __mark_inode_dirty(I_DIRTY_PAGES): nothing to do when already set.
    if dirty && dax_load_u32(&m.pointee.dirtyPages) == 0 { dax_store_u32(&m.pointee.dirtyPages, 1) }
    var e = entry
    if shared || (DaxEntry.isZero(entry) && !DaxEntry.isZero(newEntry)) {
        if DaxEntry.isPMD(entry) {
            unmapMappingPages(m, index & ~UInt64(hpagePmdNr - 1), UInt64(hpagePmdNr))
        } else if entry != 0 && !DaxEntry.isEmpty(entry) {
            unmapMappingPages(m, index, 1)
        }
    }
    if shared || DaxEntry.isZero(entry) || DaxEntry.isEmpty(entry) {
        dax_spin_lock(&m.pointee.lock)
        daxDisassociateEntry(k, entry)
        daxAssociateEntry(m, newEntry, vmf.pointee.vma, vmf.pointee.address, shared: shared)
        let old = dax_load_u64(slot)
        if old != entry | DaxEntry.locked {
            vmReport(k, pfnToPage(k, 0), rule: "WARN_ON_ONCE(old != xa_mk_value(xa_to_value(entry) | DAX_LOCKED))",
                     function: "dax_insert_entry")
        }
        daxStoreEntry(m, slot, old: old, new: newEntry | DaxEntry.locked)
        dax_spin_unlock(&m.pointee.lock)
        e = newEntry
    }
    let mi = slot - m.pointee.slots
    if dirty { m.pointee.marks[mi] |= DaxMark.dirty }
    if write && shared { m.pointee.marks[mi] |= DaxMark.towrite }
    return e
}

/// The temporary-reference protocol around an insert (fs/dax.c:
/// dax_fault_iter, dax_insert_pfn_mkwrite): an idle fs-dax folio goes 0 -> 1
/// with folio_ref_inc (no zero check), the insert takes the mapping's own
/// reference, and the temporary one is put. Only the seed-bug
/// scenario (DAX_MODE_LEGACY_PRE_SERIES) skips it, to reproduce the RFC's
/// folio_get on a free folio.
@inline(__always)
func insertWithTemporaryRef(_ vmf: VMFaultRef, _ k: KernelRef, pfn: UInt64, pmd: Bool, write: Bool) -> UInt32 {
    let page = pfnToPage(k, pfn)
    let folio = page.folio
    let temp = !legacyPreSeries(k)
    if temp { folio.refInc() }
    let ret = pmd ? vmfInsertFolioPmd(vmf, folio, write: write) : vmfInsertPageMkwrite(vmf, page, write: write)
    if temp { folioPut(k, folio) }
    return ret
}

/// dax_fault_iter
@inline(__always)
func daxFaultIter(_ inode: DaxInodeRef, _ vmf: VMFaultRef, _ iomap: DaxIomap, _ slot: UnsafeMutablePointer<UInt64>,
                  _ entry: UInt64, pmd: Bool) -> UInt32 {
    let m = inode.pointee.mapping
    let k = m.pointee.kernel
    let vma = vmf.pointee.vma!
    let write = vmf.pointee.flags & DAX_FAULT_FLAG_WRITE != 0
    if !pmd, let cow = vmf.pointee.cow_page {
        return daxFaultCowPage(inode, vmf, iomap, Page(cow))
    }
    if !write && (iomap.kind == .hole || iomap.kind == .unwritten) {
        if pmd { return DAX_VM_FAULT_FALLBACK }   // no huge zero folio in the port
        // dax_load_hole: the zero entry and the shared zero page.
        _ = daxInsertEntry(m, vmf, slot, entry, DaxEntry.make(pfn: 0, flags: DaxEntry.zeroPage),
                           write: false, shared: false, sync: false)
        return vmfInsertPageMkwrite(vmf, pfnToPage(k, 0), write: false)
    }
    guard iomap.kind == .mapped else { return pmd ? DAX_VM_FAULT_FALLBACK : DAX_VM_FAULT_SIGBUS }
    let pfn = inode.pointee.basePfn + iomap.block
    let sync = write && vma.pointee.vm_flags & DAX_VM_SYNC != 0 && iomap.dirty
    let newEntry = DaxEntry.make(pfn: pfn, flags: pmd ? DaxEntry.pmd : 0)
    let e = daxInsertEntry(m, vmf, slot, entry, newEntry, write: write, shared: iomap.shared, sync: sync)
    if sync {
        vmf.pointee.pfn = pfn
        return DAX_VM_FAULT_NEEDDSYNC
    }
    // A PTE fault inside a real PMD entry maps its page of the PMD folio.
    var mapPfn = pfn
    if !pmd && DaxEntry.isPMD(e) {
        mapPfn = DaxEntry.pfn(e) + (vmf.pointee.pgoff & UInt64(hpagePmdNr - 1))
    }
    return insertWithTemporaryRef(vmf, k, pfn: mapPfn, pmd: pmd, write: write)
}

/// dax_fault_cow_page: a write fault on a private mapping (do_cow_fault
/// handed over vmf->cow_page): the file block's bytes are copied into the
/// cow page (copy_cow_page_dax, through the direct map of the pmem pfn; a
/// device the port has no bytes for leaves it cleared), a hole or an
/// unwritten extent clears it; finish_fault maps it as an exclusive anon
/// page. No DAX entry is inserted: the file is not written. Returns
/// VM_FAULT_DONE_COW once mapped, else finish_fault's answer.
@inline(__always)
func daxFaultCowPage(_ inode: DaxInodeRef, _ vmf: VMFaultRef, _ iomap: DaxIomap, _ cow: Page) -> UInt32 {
    let k = inode.pointee.mapping.pointee.kernel
    switch iomap.kind {
    case .hole, .unwritten:
        clearUserHighpage(k, cow)
    case .mapped:
        let pfn = inode.pointee.basePfn + iomap.block
        if !copyUserHighpage(k, dst: cow, src: pfnToPage(k, pfn)) { clearUserHighpage(k, cow) }
    }
    let ret = finishFault(vmf)
    return ret == 0 ? DAX_VM_FAULT_DONE_COW : ret
}

/// dax_iomap_pte_fault
@inline(__always)
public func daxIomapPteFault(_ vmf: VMFaultRef) -> UInt32 {
    let vma = vmf.pointee.vma!
    guard let inode = daxInode(vma) else { return DAX_VM_FAULT_SIGBUS }
    let m = inode.pointee.mapping
    let index = vmf.pointee.pgoff
    if index >= inode.pointee.sizePages { return DAX_VM_FAULT_SIGBUS }
    let (entry, slotOpt, code) = grabMappingEntry(m, index, order: 0)
    if code != 0 { return code }
    let slot = slotOpt!
    defer { unlockSlot(m, slot) }
    if let pmd = vmf.pointee.pmd, entryLeaf(dax_load_u64(pmd)) { return DAX_VM_FAULT_NOPAGE }
    // IOMAP_WRITE only for a write that goes to the file: a private
    // write fault (vmf->cow_page) reads the block and copies it.
    let write = vmf.pointee.flags & DAX_FAULT_FLAG_WRITE != 0 && vmf.pointee.cow_page == nil
    var iomap = callIomapBegin(inode, index, 1, write)
    if iomap.error != 0 { return daxFaultReturn(iomap.error) }
    if iomap.kind == .mapped && iomap.pages < 1 { return daxFaultReturn(-EIO) }   // the kernel WARNs: fs corruption
    iomap.pages = 1
    var ret = daxFaultIter(inode, vmf, iomap, slot, entry, pmd: false)
    // A new block makes the fault major unless the result is a plain SIGBUS.
    if ret != DAX_VM_FAULT_SIGBUS && iomap.new { ret |= DAX_VM_FAULT_MAJOR }
    return ret
}

/// dax_fault_return: 0 is NOPAGE, an error goes through vmf_error (-ENOMEM
/// is VM_FAULT_OOM, -EHWPOISON VM_FAULT_HWPOISON, anything else
/// VM_FAULT_SIGBUS).
@inline(__always)
func daxFaultReturn(_ error: Int32) -> UInt32 {
    error == 0 ? DAX_VM_FAULT_NOPAGE : vmfErrorCode(error)
}

/// dax_iomap_pmd_fault
@inline(__always)
public func daxIomapPmdFault(_ vmf: VMFaultRef) -> UInt32 {
    let vma = vmf.pointee.vma!
    guard let inode = daxInode(vma) else { return DAX_VM_FAULT_SIGBUS }
    let m = inode.pointee.mapping
    let pmdAddr = vmf.pointee.address & ~UInt64(pmdSize - 1)
    let write = vmf.pointee.flags & DAX_FAULT_FLAG_WRITE != 0
    // Colour: the file offset and the address must agree within a PMD.
    if (linearPageIndex(vma, vmf.pointee.address) & UInt64(hpagePmdNr - 1))
        != ((vmf.pointee.address >> UInt64(pageShift)) & UInt64(hpagePmdNr - 1)) { return DAX_VM_FAULT_FALLBACK }
    if write && vma.pointee.vm_flags & DAX_VM_SHARED == 0 { return DAX_VM_FAULT_FALLBACK }
    if pmdAddr < vma.pointee.vm_start || pmdAddr + UInt64(pmdSize) > vma.pointee.vm_end { return DAX_VM_FAULT_FALLBACK }
    // Only now is the PMD's start inside the VMA (a VMA may begin inside a
    // PMD, after a partial munmap), so its file offset can be computed.
    let pgoffOfAddr = linearPageIndex(vma, pmdAddr)
    if vmf.pointee.pgoff >= inode.pointee.sizePages { return DAX_VM_FAULT_SIGBUS }
    if pgoffOfAddr + UInt64(hpagePmdNr) > inode.pointee.sizePages { return DAX_VM_FAULT_FALLBACK }
    let (entry, slotOpt, code) = grabMappingEntry(m, pgoffOfAddr, order: pmdOrder)
    if code != 0 { return code }
    let slot = slotOpt!
    defer { unlockSlot(m, slot) }
    // A PTE table is already there: retry at PTE level.
    if let pmd = vmf.pointee.pmd, entryPresent(dax_load_u64(pmd)), !entryLeaf(dax_load_u64(pmd)) { return 0 }
    let iomap = callIomapBegin(inode, pgoffOfAddr, UInt64(hpagePmdNr), write)
    // The PMD path ignores iomap_iter's error (no vmf_error here): the fault
    // falls back and the PTE fault maps the error.
    if iomap.error != 0 { return DAX_VM_FAULT_FALLBACK }
    if iomap.kind == .mapped && iomap.pages < UInt64(hpagePmdNr) { return DAX_VM_FAULT_FALLBACK }
    // The PMD path works on the PMD's first page offset; the fault walk may
    // go on to the PTE level with this vmf, so the original comes back.
    let pgoff = vmf.pointee.pgoff
    vmf.pointee.pgoff = pgoffOfAddr
    defer { vmf.pointee.pgoff = pgoff }
    return daxFaultIter(inode, vmf, iomap, slot, entry, pmd: true)
}

/// dax_insert_pfn_mkwrite: after a MAP_SYNC fault's fsync, map the pfn
/// writable under the entry lock, with the temporary-reference protocol.
public func daxInsertPfnMkwrite(_ vmf: VMFaultRef, pfn: UInt64, order: Int) -> UInt32 {
    guard let inode = daxInode(vmf.pointee.vma) else { return DAX_VM_FAULT_SIGBUS }
    let m = inode.pointee.mapping
    let k = m.pointee.kernel
    let index = order > 0 ? vmf.pointee.pgoff & ~UInt64(hpagePmdNr - 1) : vmf.pointee.pgoff
    dax_spin_lock(&m.pointee.lock)
    guard case .entry(let e, let slot) = getNextUnlockedEntry(m, index, order: order),
          !(order == 0 && DaxEntry.isPMD(e)) else {
        dax_spin_unlock(&m.pointee.lock)
        return DAX_VM_FAULT_NOPAGE
    }
    m.pointee.marks[slot - m.pointee.slots] |= DaxMark.dirty
    daxLockEntry(slot, e)
    dax_spin_unlock(&m.pointee.lock)
    let ret: UInt32
    switch order {
    case 0: ret = insertWithTemporaryRef(vmf, k, pfn: pfn, pmd: false, write: true)
    case pmdOrder: ret = insertWithTemporaryRef(vmf, k, pfn: pfn, pmd: true, write: true)
    default: ret = DAX_VM_FAULT_FALLBACK
    }
    daxUnlockEntry(m, slot, e)
    return ret
}

/// The filesystem's huge_fault (ext4_dax_huge_fault): under the shared
/// invalidate lock, dax_iomap_fault, and for VM_FAULT_NEEDDSYNC the fsync and
/// dax_finish_sync_fault.
@inline(__always)
func fsDaxHugeFault(_ vmf: VMFaultRef, _ order: UInt32) -> UInt32 {
    guard let inode = daxInode(vmf.pointee.vma) else { return DAX_VM_FAULT_SIGBUS }
    let m = inode.pointee.mapping
    dax_down_read(&m.pointee.invalidateLock)
    defer { dax_up_read(&m.pointee.invalidateLock) }
    var ret: UInt32
    switch Int(order) {
    case 0: ret = daxIomapPteFault(vmf)
    case pmdOrder: ret = daxIomapPmdFault(vmf)
    default: return DAX_VM_FAULT_FALLBACK   // no PUD faults for fs-dax
    }
    if ret & DAX_VM_FAULT_NEEDDSYNC != 0 {
        inode.pointee.sync(inode.pointee.fsPrivate)
        ret = daxInsertPfnMkwrite(vmf, pfn: vmf.pointee.pfn, order: Int(order))
    }
    return ret
}

let fsDaxFaultFn: @convention(c) (VMFaultRef?) -> UInt32 = { vmf in fsDaxHugeFault(vmf!, 0) }
let fsDaxHugeFaultFn: @convention(c) (VMFaultRef?, UInt32) -> UInt32 = { vmf, order in fsDaxHugeFault(vmf!, order) }
/// ext4_dax_fault as page_mkwrite/pfn_mkwrite: a write fault at PTE level.
let fsDaxMkwriteFn: @convention(c) (VMFaultRef?) -> UInt32 = { vmf in
    vmf!.pointee.flags |= DAX_FAULT_FLAG_WRITE
    return fsDaxHugeFault(vmf!, 0)
}
// MARK: breaking layouts (fs/dax.c: dax_break_layout, dax_break_layout_final)

/// dax_page_is_idle
@inline(__always) public func daxPageIsIdle(_ page: Page?) -> Bool { page.map { $0.folio.refCount == 0 } ?? false }

public enum BreakLayoutResult: Equatable, Sendable {
    case done
    /// A busy page remained after the timeout (or at once, without waiting).
    case busy(pfn: UInt64, refcount: Int32, pincount: Int32)
}

/// dax_break_layout: until no page in [start, end] is busy, unmap and wait
/// (woken by free_zone_device_folio), then delete the entries. `wait:
/// false` is the NOWAIT case (-ERESTARTSYS in the kernel). The kernel waits
/// until a signal; the port waits at most `timeoutNanos` per busy page.
///
/// Takes the invalidate lock exclusive, dropping it while it sleeps (the
/// kernel's wait callback does the same), so faults cannot remap the range
/// between the last busy scan and the deletion.
package func daxBreakLayout(_ m: DaxMappingRef, start: UInt64, end: UInt64, wait: Bool = true,
                           timeoutNanos: Int64 = -1) -> BreakLayoutResult {
    dax_down_write(&m.pointee.invalidateLock)
    defer { dax_up_write(&m.pointee.invalidateLock) }
    return daxBreakLayoutLocked(m, start: start, end: end, wait: wait, timeoutNanos: timeoutNanos)
}

/// dax_break_layout with the invalidate lock held exclusive by the caller
/// (held again on return, whatever the result).
package func daxBreakLayoutLocked(_ m: DaxMappingRef, start: UInt64, end: UInt64, wait: Bool = true,
                                 timeoutNanos: Int64 = -1) -> BreakLayoutResult {
    let k = m.pointee.kernel
    while let page = daxLayoutBusyPageRange(m, start, end) {
        let folio = page.folio
        if !wait {
            return .busy(pfn: pageToPfn(k, page), refcount: folio.refCount, pincount: folio.pincount)
        }
        dax_up_write(&m.pointee.invalidateLock)
        let idle = waitVarEvent(k, UnsafeRawPointer(page.raw), timeoutNanos: timeoutNanos) { daxPageIsIdle(page) }
        dax_down_write(&m.pointee.invalidateLock)
        if !idle {
            return .busy(pfn: pageToPfn(k, page), refcount: folio.refCount, pincount: folio.pincount)
        }
    }
    daxDeleteMappingRange(m, start, end)
    return .done
}

/// dax_break_layout_final: the whole file, uninterruptible, then delete.
package func daxBreakLayoutFinal(_ m: DaxMappingRef, timeoutNanos: Int64 = -1) -> BreakLayoutResult {
    daxBreakLayout(m, start: 0, end: UInt64.max, wait: true, timeoutNanos: timeoutNanos)
}
