// fs/dax.c after the series: DAX entries in a file's page-cache index, entry
// locking, association and share counting with on-demand compound folios,
// the PTE/PMD fault paths with the temporary-reference protocol, MAP_SYNC,
// busy-page scans and layout breaking, and entry removal.
//
// The index is a flat array of entry words, one per file page, in a C-style
// record (`DaxMappingCore`), guarded by a spinlock (the i_pages lock); a PMD
// entry lives in the slot of its first index. Entry waiters sleep on the
// kernel's hashed wait table keyed by the slot address, so nothing on the
// fault path allocates.

import CDaxMM
import MMCore

// MARK: entry encoding (fs/dax.c: dax_make_entry, dax_to_pfn)

public enum DaxEntry {
    public static let locked: UInt64 = 1
    public static let pmd: UInt64 = 2
    public static let zeroPage: UInt64 = 4
    public static let empty: UInt64 = 8
    public static let shift: UInt64 = 4

    @inline(__always) public static func make(pfn: UInt64, flags: UInt64) -> UInt64 { (pfn << shift) | flags }
    @inline(__always) public static func pfn(_ e: UInt64) -> UInt64 { e >> shift }
    @inline(__always) public static func isLocked(_ e: UInt64) -> Bool { e & locked != 0 }
    @inline(__always) public static func isPMD(_ e: UInt64) -> Bool { e & pmd != 0 }
    @inline(__always) public static func isZero(_ e: UInt64) -> Bool { e & zeroPage != 0 }
    @inline(__always) public static func isEmpty(_ e: UInt64) -> Bool { e & empty != 0 }
    /// dax_entry_order
    @inline(__always) public static func order(_ e: UInt64) -> Int { isPMD(e) ? pmdOrder : 0 }
    /// A real entry maps device memory (not zero, not empty).
    @inline(__always) public static func isReal(_ e: UInt64) -> Bool { e != 0 && e & (zeroPage | empty) == 0 }
}

/// Marks kept beside the entries (xarray marks).
public enum DaxMark {
    public static let dirty: UInt8 = 1
    public static let towrite: UInt8 = 2
}

/// The address_space of a DAX file, as the fault path sees it.
package struct DaxMappingCore {
    public var kernel: KernelRef
    /// i_pages lock.
    public var lock: UInt32 = 0
    /// The file record whose i_mmap lists the VMAs mapping the file (set
    /// once the file exists).
    public var file: FileRef? = nil
    /// Entry words, one per file page.
    public var slots: UnsafeMutablePointer<UInt64>
    public var marks: UnsafeMutablePointer<UInt8>
    /// Per 2 MiB window of the index, how many order-0 entries it holds
    /// (kept by `daxStoreEntry` under the i_pages lock): a PMD-order lookup
    /// finds a conflict in one load, as xas_find_conflict skips absent
    /// xarray nodes instead of visiting 512 slots.
    public var smallInWindow: UnsafeMutablePointer<UInt16>
    public var nslots: UInt64
    public var nrpages: Int64 = 0
    /// The folio->mapping value of this file.
    public var mappingID: UInt64
    /// I_DIRTY_PAGES
    public var dirtyPages: UInt32 = 0
    /// Tasks in get_unlocked_entry/wait_entry_unlocked that saw an entry
    /// locked and are about to sleep or sleep on it: counted under the
    /// i_pages lock before it is dropped, uncounted under it after the wait.
    /// dax_wake_entry's waitqueue_active: an unlock that reads 0 under the
    /// lock has nobody to wake (every task that saw the entry locked counted
    /// itself in the same critical section order).
    public var entryWaiters: UInt32 = 0
    /// mapping->invalidate_lock: faults take it shared, layout breaking and
    /// truncation exclusive (ext4/XFS hold it across break + delete).
    public var invalidateLock = dax_rwsem()
}

package typealias DaxMappingRef = UnsafeMutablePointer<DaxMappingCore>

// MARK: entry locking (fs/dax.c: get_next_unlocked_entry, dax_lock_entry)

/// The slot holding the entry that covers `index` for a request of `order`,
/// and the entry (0 if none). A PMD entry covers its 512 indices.
@inline(__always)
func entrySlot(_ m: DaxMappingRef, _ index: UInt64) -> UnsafeMutablePointer<UInt64> {
    let base = index & ~UInt64(hpagePmdNr - 1)
    let head = m.pointee.slots + Int(base)
    if base < m.pointee.nslots, DaxEntry.isPMD(dax_load_u64(head)) {
        return head
    }
    return m.pointee.slots + Int(index)
}

/// Whether any order-0 entry lives in the PMD window of `index`.
@inline(__always)
func smallEntriesInWindow(_ m: DaxMappingRef, _ index: UInt64) -> Bool {
    m.pointee.smallInWindow[Int(index / UInt64(hpagePmdNr))] != 0
}

/// Stores `new` in `slot`, which held `old` (either may carry the lock
/// bit), keeping the window's count of order-0 entries. With the i_pages
/// lock held. Every store that adds, removes or changes the order of an
/// entry goes through here.
@inline(__always)
func daxStoreEntry(_ m: DaxMappingRef, _ slot: UnsafeMutablePointer<UInt64>, old: UInt64, new: UInt64) {
    let wasSmall = old != 0 && !DaxEntry.isPMD(old), isSmall = new != 0 && !DaxEntry.isPMD(new)
    if wasSmall != isSmall {
        let w = Int(UInt64(slot - m.pointee.slots) / UInt64(hpagePmdNr))
        if isSmall { m.pointee.smallInWindow[w] += 1 } else { m.pointee.smallInWindow[w] -= 1 }
    }
    dax_store_u64(slot, new)
}

package enum NextEntry {
    case none
    case conflict
    case entry(UInt64, UnsafeMutablePointer<UInt64>)
}

/// get_next_unlocked_entry: with the i_pages lock held on entry and on
/// return; sleeps (dropping it) while the entry is locked.
@inline(__always)
func getNextUnlockedEntry(_ m: DaxMappingRef, _ index: UInt64, order: Int) -> NextEntry {
    let k = m.pointee.kernel
    while true {
        let slot = entrySlot(m, index)
        let e = dax_load_u64(slot)
        if e == 0 {
            if order > 0 && smallEntriesInWindow(m, index) { return .conflict }
            return .none
        }
        if DaxEntry.order(e) < order { return .conflict }
        if !DaxEntry.isLocked(e) { return .entry(e, slot) }
        // wait_entry_unlocked: sleep exclusively, then look again. The
        // waiter is counted before the i_pages lock is dropped, as
        // prepare_to_wait_exclusive queues it under the lock.
        m.pointee.entryWaiters += 1
        dax_spin_unlock(&m.pointee.lock)
        _ = waitVarEvent(k, UnsafeRawPointer(slot), timeoutNanos: -1) { !DaxEntry.isLocked(dax_load_u64(slot)) }
        dax_spin_lock(&m.pointee.lock)
        m.pointee.entryWaiters -= 1
    }
}

/// dax_lock_entry: store the locked form.
@inline(__always)
func daxLockEntry(_ slot: UnsafeMutablePointer<UInt64>, _ e: UInt64) {
    dax_store_u64(slot, e | DaxEntry.locked)
}

/// dax_unlock_entry: store the unlocked entry and wake the next waiter
/// (dax_wake_entry: only if waitqueue_active, read under the i_pages lock
/// here; the kernel reads it after the unlock, its waiters having queued
/// under the lock).
@inline(__always)
func daxUnlockEntry(_ m: DaxMappingRef, _ slot: UnsafeMutablePointer<UInt64>, _ e: UInt64) {
    dax_spin_lock(&m.pointee.lock)
    dax_store_u64(slot, e & ~DaxEntry.locked)
    let waiters = m.pointee.entryWaiters
    dax_spin_unlock(&m.pointee.lock)
    if waiters != 0 { wakeUpVar(m.pointee.kernel, UnsafeRawPointer(slot)) }
}

// MARK: association (fs/dax.c: dax_associate_entry, dax_folio_put)

/// dax_folio_init
@inline(__always)
func daxFolioInit(_ k: KernelRef, _ e: UInt64) -> Folio {
    let page = pfnToPage(k, DaxEntry.pfn(e))
    let folio = page.folio
    if folio.isLarge {
        vmReport(k, page, rule: "WARN_ON_ONCE(folio_test_large(folio)): the last put should have split it",
                 function: "dax_folio_init")
    }
    let order = DaxEntry.order(e)
    if order > 0 {
        prepCompoundPage(folio.head, order: order)
        if folio.refCount != 0 {
            vmReport(k, page, rule: "WARN_ON_ONCE(folio_ref_count(folio))", function: "dax_folio_init")
        }
    }
    return page.folio
}

/// dax_associate_entry
@inline(__always)
func daxAssociateEntry(_ m: DaxMappingRef, _ e: UInt64, _ vma: VMARef, _ address: UInt64, shared: Bool) {
    guard DaxEntry.isReal(e) else { return }
    let k = m.pointee.kernel
    let size = UInt64(pageSize) << UInt64(DaxEntry.order(e))
    let index = linearPageIndex(vma, address & ~(size - 1))
    let folio = pfnToPage(k, DaxEntry.pfn(e)).folio
    if shared && (folio.mapping != 0 || isShared(folio)) {
        if folio.mapping != 0 {
            // dax_folio_make_shared
            folio.mapping = 0
            folio.share = 1
        }
        if folio.share == 0 || folio.order != DaxEntry.order(e) {
            vmReport(k, folio.head, rule: "WARN_ON_ONCE(!folio->share || order mismatch)", function: "dax_associate_entry")
        }
        folio.share += 1
        return
    }
    if folio.mapping != 0 {
        vmReport(k, folio.head, rule: "WARN_ON_ONCE(folio->mapping)", function: "dax_associate_entry")
    }
    let f = daxFolioInit(k, e)
    f.mapping = m.pointee.mappingID
    f.index = index
}

/// dax_folio_is_shared: no mapping and a share count.
@inline(__always)
func isShared(_ folio: Folio) -> Bool { folio.mapping == 0 && folio.share > 0 }

/// dax_folio_put: drop one association; at the last, clear mapping and, for
/// a compound folio, split it back to order-0 pages (each must be idle).
/// Returns the remaining share count.
///
/// An order-0 folio only loses its mapping: no idle check (a GUP pin may
/// still hold it, as when a CoW write replaces a pinned page's entry) and
/// index is left as it was. index is also the share count's slot, so a later
/// shared association of the page counts on from that value, as the
/// kernel's does.
@inline(__always)
func daxFolioPut(_ k: KernelRef, _ folio: Folio) -> UInt64 {
    var ref: UInt64 = 0
    if isShared(folio) {
        folio.share -= 1
        ref = folio.share
    }
    if ref > 0 { return ref }
    folio.mapping = 0
    let order = folio.order
    if order == 0 { return 0 }
    let pgmap = folio.raw.pointee.pgmap
    resetCompound(folio)
    for i in 0..<(1 << order) {
        let p = Page(folio.raw + i)
        p.raw.pointee.pgmap = pgmap
        p.raw.pointee.mapping = 0
        p.raw.pointee.index = 0
        if dax_atomic_read(dax_page_refcount(p.raw)) != 0 {
            vmReport(k, p, rule: "WARN_ON_ONCE(folio_ref_count(page_folio(page))): association dropped while busy",
                     function: "dax_folio_put")
        }
    }
    return 0
}

/// dax_disassociate_entry
@inline(__always)
func daxDisassociateEntry(_ k: KernelRef, _ e: UInt64) {
    guard DaxEntry.isReal(e) else { return }
    _ = daxFolioPut(k, pfnToPage(k, DaxEntry.pfn(e)).folio)
}

// MARK: busy pages (fs/dax.c: dax_busy_page, dax_layout_busy_page_range)

/// dax_busy_page: the head page if refcount - mapcount != 0.
@inline(__always)
public func daxBusyPage(_ k: KernelRef, _ e: UInt64) -> Page? {
    guard DaxEntry.isReal(e) else { return nil }
    let folio = pfnToPage(k, DaxEntry.pfn(e)).folio
    return folio.refCount - folio.mapcount != 0 ? folio.head : nil
}

/// unmap_mapping_pages on the file's address_space: zap every user mapping
/// of file pages [start, start+nr) in every VMA of the file's i_mmap. fs/dax
/// passes even_cows false: private COW copies stay mapped.
@inline(__always)
package func unmapMappingPages(_ m: DaxMappingRef, _ start: UInt64, _ nr: UInt64, evenCows: Bool = false) {
    MMCore.unmapMappingPages(m.pointee.file!, start, nr, evenCows: evenCows)
}

/// dax_layout_busy_page_range: unmap the range, then return the first busy
/// page (head), waiting for locked entries. Does not wait for idleness.
package func daxLayoutBusyPageRange(_ m: DaxMappingRef, _ startIdx: UInt64, _ endIdx: UInt64) -> Page? {
    let k = m.pointee.kernel
    let end = min(endIdx, m.pointee.nslots &- 1)
    guard startIdx <= end else { return nil }
    unmapMappingPages(m, startIdx, end - startIdx + 1)
    dax_spin_lock(&m.pointee.lock)
    defer { dax_spin_unlock(&m.pointee.lock) }
    var i = startIdx
    while i <= end {
        switch getNextUnlockedEntry(m, i, order: 0) {
        case .entry(let e, _):
            if let p = daxBusyPage(k, e) { return p }
            i = DaxEntry.isPMD(e) ? (i & ~UInt64(hpagePmdNr - 1)) + UInt64(hpagePmdNr) : i + 1
        default:
            i += 1
        }
    }
    return nil
}

// MARK: removal (fs/dax.c: dax_delete_mapping_range, __dax_invalidate_entry)

/// dax_delete_mapping_range: remove every entry in the range (no busy check).
package func daxDeleteMappingRange(_ m: DaxMappingRef, _ startIdx: UInt64, _ endIdx: UInt64) {
    let k = m.pointee.kernel
    let end = min(endIdx, m.pointee.nslots &- 1)
    guard startIdx <= end else { return }
    dax_spin_lock(&m.pointee.lock)
    var i = startIdx
    while i <= end {
        let next: UInt64
        switch getNextUnlockedEntry(m, i, order: 0) {
        case .entry(let e, let slot):
            daxDisassociateEntry(k, e)
            daxStoreEntry(m, slot, old: e, new: 0)
            m.pointee.marks[slot - m.pointee.slots] = 0
            m.pointee.nrpages -= Int64(1) << Int64(DaxEntry.order(e))
            wakeUpVar(k, UnsafeRawPointer(slot))
            next = DaxEntry.isPMD(e) ? (i & ~UInt64(hpagePmdNr - 1)) + UInt64(hpagePmdNr) : i + 1
        default:
            next = i + 1
        }
        i = next
    }
    dax_spin_unlock(&m.pointee.lock)
}

/// __dax_invalidate_entry: 1 if removed. Without `trunc`, dirty or
/// to-write entries are kept.
@discardableResult
package func daxInvalidateEntry(_ m: DaxMappingRef, _ index: UInt64, trunc: Bool) -> Int {
    let k = m.pointee.kernel
    dax_spin_lock(&m.pointee.lock)
    defer { dax_spin_unlock(&m.pointee.lock) }
    guard case .entry(let e, let slot) = getNextUnlockedEntry(m, index, order: 0) else { return 0 }
    let marks = m.pointee.marks[slot - m.pointee.slots]
    if !trunc && marks & (DaxMark.dirty | DaxMark.towrite) != 0 {
        wakeUpVar(k, UnsafeRawPointer(slot))
        return 0
    }
    daxDisassociateEntry(k, e)
    daxStoreEntry(m, slot, old: e, new: 0)
    m.pointee.marks[slot - m.pointee.slots] = 0
    m.pointee.nrpages -= Int64(1) << Int64(DaxEntry.order(e))
    wakeUpVar(k, UnsafeRawPointer(slot))
    return 1
}

/// dax_layout_busy_page: the whole file.
package func daxLayoutBusyPage(_ m: DaxMappingRef) -> Page? {
    daxLayoutBusyPageRange(m, 0, UInt64.max)
}
