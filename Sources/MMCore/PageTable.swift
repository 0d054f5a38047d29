// arch/x86/include/asm/pgtable*.h and the generic page-table helpers: 4-level
// tables of 512 eight-byte entries with the x86-64 bit layout, allocated from
// the kernel's preallocated pool, and split page-table locks.
//
// Non-leaf entries hold the next table's address in the pfn field (the port's
// tables live in its own address space, so their virtual address stands in
// for the kernel's physical one). Leaf PMD/PUD entries have PSE set.
//
// Preconditions for every function taking table or entry pointers: they point
// into a table from this kernel's pool, and the caller holds what the kernel
// would hold (mmap_lock for walks that allocate; the ptlock to change an
// entry).

import CDaxMM

public typealias PTEntry = UInt64
public typealias EntryPtr = UnsafeMutablePointer<UInt64>

/// x86-64 page-table entry bits.
public enum PT {
    public static let present: UInt64 = 1 << 0
    public static let rw: UInt64 = 1 << 1
    public static let user: UInt64 = 1 << 2
    public static let accessed: UInt64 = 1 << 5   // "young"
    public static let dirty: UInt64 = 1 << 6
    public static let pse: UInt64 = 1 << 7        // huge leaf at PMD/PUD level
    public static let special: UInt64 = 1 << 9    // _PAGE_SPECIAL (software bit 1)
    public static let nx: UInt64 = 1 << 63
    public static let pfnMask: UInt64 = 0x000F_FFFF_FFFF_F000
    /// _PAGE_TABLE: what a non-leaf entry carries.
    public static let table: UInt64 = present | rw | user | accessed
    public static let entriesPerTable = 512
}

// MARK: entry predicates and constructors (pte_*, pmd_*, pud_*)

@inline(__always) public func entryNone(_ e: PTEntry) -> Bool { e == 0 }
@inline(__always) public func entryPresent(_ e: PTEntry) -> Bool { e & PT.present != 0 }
@inline(__always) public func entryWrite(_ e: PTEntry) -> Bool { e & PT.rw != 0 }
@inline(__always) public func entryYoung(_ e: PTEntry) -> Bool { e & PT.accessed != 0 }
@inline(__always) public func entryDirty(_ e: PTEntry) -> Bool { e & PT.dirty != 0 }
@inline(__always) public func entrySpecial(_ e: PTEntry) -> Bool { e & PT.special != 0 }
/// pmd_leaf / pud_leaf (pmd_trans_huge for a present entry)
@inline(__always) public func entryLeaf(_ e: PTEntry) -> Bool { e & (PT.present | PT.pse) == (PT.present | PT.pse) }
@inline(__always) public func entryPfn(_ e: PTEntry) -> UInt64 { (e & PT.pfnMask) >> UInt64(pageShift) }
@inline(__always) public func entryMkwrite(_ e: PTEntry) -> PTEntry { e | PT.rw }
@inline(__always) public func entryMkyoung(_ e: PTEntry) -> PTEntry { e | PT.accessed }
@inline(__always) public func entryMkdirty(_ e: PTEntry) -> PTEntry { e | PT.dirty }
@inline(__always) public func entryWrprotect(_ e: PTEntry) -> PTEntry { e & ~PT.rw }
/// maybe_mkwrite: writable if the VMA has VM_WRITE.
@inline(__always) public func maybeMkwrite(_ e: PTEntry, _ vma: VMARef) -> PTEntry {
    vma.pointee.vm_flags & DAX_VM_WRITE != 0 ? entryMkwrite(e) : e
}
/// maybe_pmd_mkwrite
@inline(__always) public func maybePmdMkwrite(_ e: PTEntry, _ vma: VMARef) -> PTEntry { maybeMkwrite(e, vma) }
/// maybe_pud_mkwrite
@inline(__always) public func maybePudMkwrite(_ e: PTEntry, _ vma: VMARef) -> PTEntry { maybeMkwrite(e, vma) }
/// pfn_pte / pfn_pmd / pfn_pud: a leaf for `pfn` with `prot` bits.
@inline(__always) public func pfnEntry(_ pfn: UInt64, _ prot: UInt64) -> PTEntry {
    ((pfn << UInt64(pageShift)) & PT.pfnMask) | prot
}
/// pmd_mkhuge / pud_mkhuge
@inline(__always) public func entryMkhuge(_ e: PTEntry) -> PTEntry { e | PT.pse }
@inline(__always) public func entryMkspecial(_ e: PTEntry) -> PTEntry { e | PT.special }
/// The next-level table a non-leaf entry points at. Precondition: `e` is a
/// present table entry, not a huge leaf (asserted in debug builds).
@inline(__always) public func entryTable(_ e: PTEntry) -> EntryPtr {
    assert(entryPresent(e) && !entryLeaf(e), "entryTable of an entry that is not a present table entry")
    return EntryPtr(bitPattern: UInt(e & PT.pfnMask))!
}

/// The lowest-level protection bits a VMA's new entries start from.
/// (vm_get_page_prot with x86-64's protection_map: PROT_WRITE alone reads
/// too; no access at all is PAGE_NONE, which the port keeps present
/// without _PAGE_USER.)
@inline(__always) public func vmGetPageProt(_ vmFlags: UInt64, writenotify: Bool) -> UInt64 {
    if vmFlags & (DAX_VM_READ | DAX_VM_WRITE | DAX_VM_EXEC) == 0 { return PT.present | PT.nx }
    var prot = PT.present | PT.user
    if vmFlags & DAX_VM_WRITE != 0 && vmFlags & DAX_VM_SHARED != 0 && !writenotify { prot |= PT.rw }
    if vmFlags & DAX_VM_EXEC == 0 { prot |= PT.nx }
    return prot
}

// MARK: indices

@inline(__always) func pgdIndex(_ a: UInt64) -> Int { Int((a >> 39) & 511) }
@inline(__always) func pudIndex(_ a: UInt64) -> Int { Int((a >> 30) & 511) }
@inline(__always) func pmdIndex(_ a: UInt64) -> Int { Int((a >> 21) & 511) }
@inline(__always) func pteIndex(_ a: UInt64) -> Int { Int((a >> 12) & 511) }

/// The address of the start of the table holding `entry`.
@inline(__always) func tableOf(_ entry: EntryPtr) -> UnsafeMutableRawPointer {
    UnsafeMutableRawPointer(bitPattern: UInt(bitPattern: entry) & ~UInt(pageSize - 1))!
}

// MARK: the page-table page pool (pte_alloc_one / pte_free)

/// Allocates a zeroed table. Lock-free; nil when the pool is exhausted.
@inline(__always)
func ptAllocTable(_ k: KernelRef) -> EntryPtr? {
    // Free list first (tagged head: table address | 12-bit ABA tag).
    var head = dax_load_u64(dax_kernel_pt_free(k))
    while head & ~UInt64(pageSize - 1) != 0 {
        let table = EntryPtr(bitPattern: UInt(head & ~UInt64(pageSize - 1)))!
        let next = dax_load_u64(table)   // pool memory: always mapped
        let tag = (head &+ 1) & UInt64(pageSize - 1)
        if dax_cmpxchg_u64(dax_kernel_pt_free(k), &head, (next & ~UInt64(pageSize - 1)) | tag) {
            dax_store_u64(table, 0)
            dax_atomic64_add(dax_kernel_pt_in_use(k), 1)
            modNodeStat(k, DAX_NR_PAGETABLE, 1)
            return table
        }
    }
    let idx = dax_atomic64_add_return(dax_kernel_pt_next(k), 1) - 1
    guard UInt64(idx) < k.pointee.pt_pool_pages else { return nil }
    dax_atomic64_add(dax_kernel_pt_in_use(k), 1)
    modNodeStat(k, DAX_NR_PAGETABLE, 1)
    return UnsafeMutableRawPointer(k.pointee.pt_pool + Int(idx) * pageSize).assumingMemoryBound(to: UInt64.self)
}

/// Returns a table (which must hold no entries) to the pool.
@inline(__always)
func ptFreeTable(_ k: KernelRef, _ table: EntryPtr) {
    UnsafeMutableRawPointer(table).initializeMemory(as: UInt8.self, repeating: 0, count: pageSize)
    var head = dax_load_u64(dax_kernel_pt_free(k))
    repeat {
        dax_store_u64(table, head & ~UInt64(pageSize - 1))
    } while !dax_cmpxchg_u64(dax_kernel_pt_free(k), &head,
                             UInt64(UInt(bitPattern: table)) | (head & UInt64(pageSize - 1)))
    dax_atomic64_add(dax_kernel_pt_in_use(k), -1)
    modNodeStat(k, DAX_NR_PAGETABLE, -1)
}

/// The split ptlock of the table page holding `entry` (ptlock_ptr).
/// Precondition: `entry` lies in this kernel's page-table pool (asserted in
/// debug builds).
@inline(__always)
func ptlockOf(_ k: KernelRef, tableContaining entry: EntryPtr) -> UnsafeMutablePointer<UInt32> {
    let off = UnsafeMutableRawPointer(entry) - UnsafeMutableRawPointer(k.pointee.pt_pool)
    assert(off >= 0 && UInt64(off / pageSize) < k.pointee.pt_pool_pages, "ptlock_ptr: entry outside the page-table pool")
    return k.pointee.pt_locks + off / pageSize * ptlockStride
}

/// UInt32 words between two table pages' split ptlocks: one cache line each,
/// as the kernel's ptlock sits in the table page's own struct ptdesc (two
/// threads faulting under different tables bounce no line).
let ptlockStride = 16

/// pte_lockptr: the lock of the PTE table a PMD entry points at.
@inline(__always)
public func pteLockptr(_ k: KernelRef, _ pmdEntry: PTEntry) -> UnsafeMutablePointer<UInt32> {
    ptlockOf(k, tableContaining: entryTable(pmdEntry))
}

/// pmd_lockptr: split PMD lock, the ptlock of the PMD table page.
@inline(__always)
public func pmdLockptr(_ k: KernelRef, _ pmd: EntryPtr) -> UnsafeMutablePointer<UInt32> {
    ptlockOf(k, tableContaining: pmd)
}

/// pud_lockptr: mm->page_table_lock.
@inline(__always)
public func pudLockptr(_ mm: MMRef) -> UnsafeMutablePointer<UInt32> {
    dax_mm_page_table_lock(mm)
}

// MARK: walking (pgd_offset, pud_offset, ...) and allocation (__pud_alloc, ...)

public typealias MMRef = UnsafeMutablePointer<dax_mm>

@inline(__always) public func pgdOffset(_ mm: MMRef, _ addr: UInt64) -> EntryPtr {
    mm.pointee.pgd + pgdIndex(addr)
}
@inline(__always) public func pudOffset(_ pgd: EntryPtr, _ addr: UInt64) -> EntryPtr {
    entryTable(dax_load_u64(pgd)) + pudIndex(addr)
}
@inline(__always) public func pmdOffset(_ pud: EntryPtr, _ addr: UInt64) -> EntryPtr {
    entryTable(dax_load_u64(pud)) + pmdIndex(addr)
}
@inline(__always) public func pteOffset(_ pmd: EntryPtr, _ addr: UInt64) -> EntryPtr {
    entryTable(dax_load_u64(pmd)) + pteIndex(addr)
}

/// The table level a populate fills: the entry is a PGD, PUD or PMD entry.
enum TableLevel { case pgd, pud, pmd }

/// __pud_alloc / __pmd_alloc / __pte_alloc: populates `entry` with a new
/// table unless someone else did first (under `lock`). False when the pool
/// is exhausted (-ENOMEM).
@inline(__always)
func populateTable(_ mm: MMRef, _ entry: EntryPtr, lock: UnsafeMutablePointer<UInt32>, level: TableLevel) -> Bool {
    let k = mm.pointee.kernel!
    guard let table = ptAllocTable(k) else { return false }
    dax_spin_lock(lock)
    if entryNone(dax_load_u64(entry)) {
        switch level {
        case .pgd: pgdPopulate(mm, entry, table)
        case .pud: pudPopulate(mm, entry, table)
        case .pmd: pmdPopulate(mm, entry, table)
        }
        dax_atomic64_add(dax_mm_pgtables_bytes(mm), Int64(pageSize))
        dax_spin_unlock(lock)
    } else {
        dax_spin_unlock(lock)
        ptFreeTable(k, table)   // lost the race: someone populated it
    }
    return true
}

/// pud_alloc(mm, pgd_offset(mm, addr), addr): the PUD entry for addr,
/// allocating the PUD table if needed. nil on -ENOMEM.
///
/// Each entry is read once after it is populated: a racing fault may turn an
/// empty entry into a huge leaf (and a racing zap turn the leaf back into an
/// empty entry), so a second read could see something else.
@inline(__always)
public func pudAlloc(_ mm: MMRef, _ addr: UInt64) -> EntryPtr? {
    let pgd = pgdOffset(mm, addr)
    if entryNone(dax_load_u64(pgd)) && !populateTable(mm, pgd, lock: pudLockptr(mm), level: .pgd) { return nil }
    let e = dax_load_u64(pgd)
    guard entryPresent(e) else { return nil }
    return entryTable(e) + pudIndex(addr)
}

/// pmd_alloc: the PMD entry under `pud`, allocating the PMD table. nil on
/// -ENOMEM; the caller must not call it on a huge PUD.
@inline(__always)
public func pmdAlloc(_ mm: MMRef, _ pud: EntryPtr, _ addr: UInt64) -> EntryPtr? {
    if entryNone(dax_load_u64(pud)) && !populateTable(mm, pud, lock: pudLockptr(mm), level: .pud) { return nil }
    let e = dax_load_u64(pud)
    guard entryPresent(e), !entryLeaf(e) else { return nil }
    return entryTable(e) + pmdIndex(addr)
}

/// pte_alloc + pte_offset_map: the PTE entry under `pmd`, allocating the PTE
/// table. nil on -ENOMEM or when the PMD became huge.
@inline(__always)
public func pteAlloc(_ mm: MMRef, _ pmd: EntryPtr, _ addr: UInt64) -> EntryPtr? {
    let k = mm.pointee.kernel!
    if entryNone(dax_load_u64(pmd)) && !populateTable(mm, pmd, lock: pmdLockptr(k, pmd), level: .pmd) { return nil }
    let e = dax_load_u64(pmd)
    guard entryPresent(e), !entryLeaf(e) else { return nil }
    return entryTable(e) + pteIndex(addr)
}

/// Lookup without allocation: the entry pointers down to the deepest present
/// level for `addr`.
public struct PageWalk {
    public var pud: EntryPtr?
    public var pmd: EntryPtr?
    public var pte: EntryPtr?
}

@inline(__always)
public func walk(_ mm: MMRef, _ addr: UInt64) -> PageWalk {
    var w = PageWalk()
    let pgde = dax_load_u64(pgdOffset(mm, addr))
    guard entryPresent(pgde) else { return w }
    let pud = entryTable(pgde) + pudIndex(addr)
    w.pud = pud
    let pude = dax_load_u64(pud)
    guard entryPresent(pude), !entryLeaf(pude) else { return w }
    let pmd = entryTable(pude) + pmdIndex(addr)
    w.pmd = pmd
    let pmde = dax_load_u64(pmd)
    guard entryPresent(pmde), !entryLeaf(pmde) else { return w }
    w.pte = entryTable(pmde) + pteIndex(addr)
    return w
}

// MARK: rss (add_mm_counter)
// mm->rss_stat is a percpu_counter per item: the port keeps one per thread
// slot (dax_pcpu_counters), added to without a lock prefix and summed by
// get_mm_counter (the exact percpu_counter_sum, not the approximate read).

@inline(__always)
public func addMMCounter(_ mm: MMRef, _ counter: dax_mm_counter, _ delta: Int64, slot: Int32 = dax_this_slot()) {
    dax_pcpu_counter_add_slot(dax_mm_rss(mm), slot, Int32(counter.rawValue), delta)
}

@inline(__always)
public func getMMCounter(_ mm: MMRef, _ counter: dax_mm_counter) -> Int64 {
    dax_pcpu_counter_sum(dax_mm_rss(mm), Int32(counter.rawValue))
}
