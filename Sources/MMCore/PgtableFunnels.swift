// include/linux/pgtable.h and arch/x86/include/asm/pgtable.h, tlbflush.h:
// the primitives every page-table write goes through. Leaf entries (PTEs,
// PMD and PUD leaves) are written only by set_pte_at / set_pmd_at /
// set_pud_at, the *_get_and_clear, *_set_access_flags and
// ptep_modify_prot_* helpers; table entries only by pgd/pud/pmd_populate
// and pgd/pud/pmd_clear; TLB flushes are flush_tlb_range and its PMD/PUD
// forms.
//
// Behind the leaf funnels sits the MM's arch hook (struct dax_arch_ops in
// dax_mm.h): with none installed a funnel is the store plus one load and a
// predicted branch; with one installed the store becomes an exchange and the
// hook hears the address, level, old and new entry of every change, and
// every flushed range. Table entries map nothing and are not reported.
//
// Preconditions: as for PageTable.swift (the caller holds the lock that
// protects the entry); the hook's own rules are in dax_mm.h.

import CDaxMM
#if canImport(Glibc)
import Glibc
#endif

// MARK: the arch hook

/// The hook's slow path for a leaf entry write: exchanges the entry, reports
/// the change, returns the old entry. `arch_users` keeps the hook alive for a
/// remover that runs concurrently (MM.setArchHook waits for it to drain).
@inline(never)
func archSetEntry(_ mm: MMRef, _ addr: UInt64, _ ptep: EntryPtr, _ entry: PTEntry,
                  _ level: dax_pgtable_level) -> PTEntry {
    let users = dax_mm_arch_users(mm)
    _ = dax_atomic64_add_return(users, 1)
    let old = dax_xchg_u64(ptep, entry)
    if old != entry, let ops = dax_mm_arch_ops(mm), let setEntry = ops.pointee.set_entry {
        setEntry(mm.pointee.arch_ctx, mm, addr, level, old, entry)
    }
    _ = dax_atomic64_add_return(users, -1)
    return old
}

/// The hook's slow path for a flush.
@inline(never)
func archFlushTlbRange(_ mm: MMRef, _ start: UInt64, _ end: UInt64, _ level: dax_pgtable_level) {
    let users = dax_mm_arch_users(mm)
    _ = dax_atomic64_add_return(users, 1)
    if let ops = dax_mm_arch_ops(mm), let flush = ops.pointee.flush_tlb_range {
        flush(mm.pointee.arch_ctx, mm, start, end, level)
    }
    _ = dax_atomic64_add_return(users, -1)
}

/// The single store behind every leaf funnel: one load and one branch more
/// than the bare store when no hook is installed.
@inline(__always)
func setLeafEntry(_ mm: MMRef, _ addr: UInt64, _ ptep: EntryPtr, _ entry: PTEntry, _ level: dax_pgtable_level) {
    if _slowPath(dax_mm_arch_ops(mm) != nil) {
        _ = archSetEntry(mm, addr, ptep, entry, level)
    } else {
        dax_store_u64(ptep, entry)
    }
}

/// The single clear behind every *_get_and_clear funnel.
@inline(__always)
func getAndClearLeafEntry(_ mm: MMRef, _ addr: UInt64, _ ptep: EntryPtr, _ level: dax_pgtable_level) -> PTEntry {
    if _slowPath(dax_mm_arch_ops(mm) != nil) {
        return archSetEntry(mm, addr, ptep, 0, level)
    }
    return dax_xchg_u64(ptep, 0)
}

// MARK: PTE

/// set_pte_at
@inline(__always)
public func setPteAt(_ mm: MMRef, _ addr: UInt64, _ ptep: EntryPtr, _ pte: PTEntry) {
    setLeafEntry(mm, addr, ptep, pte, DAX_PGTABLE_LEVEL_PTE)
}

/// ptep_get_and_clear
@inline(__always)
public func ptepGetAndClear(_ mm: MMRef, _ addr: UInt64, _ ptep: EntryPtr) -> PTEntry {
    getAndClearLeafEntry(mm, addr, ptep, DAX_PGTABLE_LEVEL_PTE)
}

/// ptep_set_access_flags: stores the young/dirty/write upgrade of a present
/// entry. The port has no hardware setting accessed/dirty bits, so it writes
/// for read faults too (x86 writes only for `dirty`) and flushes nothing (x86
/// needs no flush for an upgrade).
@inline(__always)
public func ptepSetAccessFlags(_ vma: VMARef, _ addr: UInt64, _ ptep: EntryPtr, _ entry: PTEntry) {
    setLeafEntry(vma.pointee.vm_mm, addr, ptep, entry, DAX_PGTABLE_LEVEL_PTE)
}

/// ptep_modify_prot_start: the entry whose protection is about to change.
/// The kernel clears it so hardware cannot set accessed/dirty meanwhile; the
/// port's entries change only under the PTE lock the caller holds, so it is
/// read and left in place, and ptep_modify_prot_commit makes one change.
@inline(__always)
public func ptepModifyProtStart(_ vma: VMARef, _ addr: UInt64, _ ptep: EntryPtr) -> PTEntry {
    dax_load_u64(ptep)
}

/// ptep_modify_prot_commit
@inline(__always)
public func ptepModifyProtCommit(_ vma: VMARef, _ addr: UInt64, _ ptep: EntryPtr, _ oldPte: PTEntry, _ pte: PTEntry) {
    setLeafEntry(vma.pointee.vm_mm, addr, ptep, pte, DAX_PGTABLE_LEVEL_PTE)
}

// MARK: PMD

/// set_pmd_at
@inline(__always)
public func setPmdAt(_ mm: MMRef, _ addr: UInt64, _ pmdp: EntryPtr, _ pmd: PTEntry) {
    setLeafEntry(mm, addr, pmdp, pmd, DAX_PGTABLE_LEVEL_PMD)
}

/// pmdp_huge_get_and_clear
@inline(__always)
public func pmdpHugeGetAndClear(_ mm: MMRef, _ addr: UInt64, _ pmdp: EntryPtr) -> PTEntry {
    getAndClearLeafEntry(mm, addr, pmdp, DAX_PGTABLE_LEVEL_PMD)
}

/// pmdp_huge_clear_flush
@inline(__always)
public func pmdpHugeClearFlush(_ vma: VMARef, _ addr: UInt64, _ pmdp: EntryPtr) -> PTEntry {
    let pmd = pmdpHugeGetAndClear(vma.pointee.vm_mm, addr, pmdp)
    if !entryNone(pmd) { flushPmdTlbRange(vma, addr, addr + UInt64(pmdSize)) }
    return pmd
}

/// pmdp_set_access_flags (as ptep_set_access_flags)
@inline(__always)
public func pmdpSetAccessFlags(_ vma: VMARef, _ addr: UInt64, _ pmdp: EntryPtr, _ entry: PTEntry) {
    setLeafEntry(vma.pointee.vm_mm, addr, pmdp, entry, DAX_PGTABLE_LEVEL_PMD)
}

// MARK: PUD

/// set_pud_at
@inline(__always)
public func setPudAt(_ mm: MMRef, _ addr: UInt64, _ pudp: EntryPtr, _ pud: PTEntry) {
    setLeafEntry(mm, addr, pudp, pud, DAX_PGTABLE_LEVEL_PUD)
}

/// pudp_huge_get_and_clear
@inline(__always)
public func pudpHugeGetAndClear(_ mm: MMRef, _ addr: UInt64, _ pudp: EntryPtr) -> PTEntry {
    getAndClearLeafEntry(mm, addr, pudp, DAX_PGTABLE_LEVEL_PUD)
}

/// pudp_huge_clear_flush
@inline(__always)
public func pudpHugeClearFlush(_ vma: VMARef, _ addr: UInt64, _ pudp: EntryPtr) -> PTEntry {
    let pud = pudpHugeGetAndClear(vma.pointee.vm_mm, addr, pudp)
    if !entryNone(pud) { flushPudTlbRange(vma, addr, addr + UInt64(pudSize)) }
    return pud
}

/// pudp_set_access_flags (as ptep_set_access_flags)
@inline(__always)
public func pudpSetAccessFlags(_ vma: VMARef, _ addr: UInt64, _ pudp: EntryPtr, _ entry: PTEntry) {
    setLeafEntry(vma.pointee.vm_mm, addr, pudp, entry, DAX_PGTABLE_LEVEL_PUD)
}

// MARK: table entries (not reported: they map nothing)

/// pgd_populate (p4d_populate: the port's four levels fold the P4D)
@inline(__always)
func pgdPopulate(_ mm: MMRef, _ pgd: EntryPtr, _ pudTable: EntryPtr) {
    dax_store_u64(pgd, UInt64(UInt(bitPattern: pudTable)) | PT.table)
}

/// pud_populate
@inline(__always)
func pudPopulate(_ mm: MMRef, _ pud: EntryPtr, _ pmdTable: EntryPtr) {
    dax_store_u64(pud, UInt64(UInt(bitPattern: pmdTable)) | PT.table)
}

/// pmd_populate
@inline(__always)
func pmdPopulate(_ mm: MMRef, _ pmd: EntryPtr, _ pteTable: EntryPtr) {
    dax_store_u64(pmd, UInt64(UInt(bitPattern: pteTable)) | PT.table)
}

/// pgd_clear (p4d_clear)
@inline(__always)
func pgdClear(_ pgd: EntryPtr) { dax_store_u64(pgd, 0) }

/// pud_clear
@inline(__always)
func pudClear(_ pud: EntryPtr) { dax_store_u64(pud, 0) }

/// pmd_clear
@inline(__always)
func pmdClear(_ pmd: EntryPtr) { dax_store_u64(pmd, 0) }

// MARK: TLB flushes

/// flush_tlb_range, with the stride of the entries flushed: the arch hook's
/// flush; nothing else (the port has no TLB).
@inline(__always)
func flushTlbRange(_ vma: VMARef, _ start: UInt64, _ end: UInt64, level: dax_pgtable_level) {
    let mm = vma.pointee.vm_mm!
    if _slowPath(dax_mm_arch_ops(mm) != nil) { archFlushTlbRange(mm, start, end, level) }
}

/// flush_tlb_range
@inline(__always)
public func flushTlbRange(_ vma: VMARef, _ start: UInt64, _ end: UInt64) {
    flushTlbRange(vma, start, end, level: DAX_PGTABLE_LEVEL_PTE)
}

/// flush_pmd_tlb_range
@inline(__always)
public func flushPmdTlbRange(_ vma: VMARef, _ start: UInt64, _ end: UInt64) {
    flushTlbRange(vma, start, end, level: DAX_PGTABLE_LEVEL_PMD)
}

/// flush_pud_tlb_range
@inline(__always)
public func flushPudTlbRange(_ vma: VMARef, _ start: UInt64, _ end: UInt64) {
    flushTlbRange(vma, start, end, level: DAX_PGTABLE_LEVEL_PUD)
}

/// The range part of struct mmu_gather: the span of the entries changed
/// since the last flush and the smallest level among them (tlb->start,
/// tlb->end, tlb->cleared_*), on the stack.
struct TLBGather {
    var start: UInt64 = .max
    var end: UInt64 = 0
    var level: dax_pgtable_level = DAX_PGTABLE_LEVEL_PUD

    /// __tlb_adjust_range (and tlb->cleared_ptes/pmds/puds)
    @inline(__always)
    mutating func adjust(_ addr: UInt64, _ size: UInt64, _ l: dax_pgtable_level) {
        start = min(start, addr)
        end = max(end, addr + size)
        if l.rawValue < level.rawValue { level = l }
    }

    /// tlb_flush_mmu_tlbonly: flushes the gathered range, if any, and starts
    /// a new one.
    @inline(__always)
    mutating func flush(_ vma: VMARef) {
        guard end != 0 else { return }
        flushTlbRange(vma, start, end, level: level)
        self = TLBGather()
    }
}

// MARK: installing a hook

extension MM {
    /// Installs `ops` (with `context` passed to every call) as this address
    /// space's arch hook, replacing any other; nil removes it. Takes
    /// mmap_lock for write. When it returns, no call of the previous hook is
    /// still running (zaps from unmap_mapping_range run without mmap_lock:
    /// the remover waits for them), so its context may be freed; and every
    /// entry change that starts after it returns reaches the new hook (an
    /// unmap_mapping_range walk that began before, under a file's i_mmap
    /// lock, has finished).
    ///
    /// Preconditions: `ops` and `context` stay valid while installed (the
    /// exit_mmap zaps of deinit report too: remove the hook first or keep
    /// them alive longer than the MM); the callbacks are async-signal-safe
    /// and never call back into this MM (they may run under a page-table
    /// spinlock, from a fault in a signal handler); the caller holds no lock
    /// of this MM and is not itself inside a hook call.
    public func setArchHook(_ ops: UnsafePointer<dax_arch_ops>?, context: UnsafeMutableRawPointer?) {
        lockWrite()
        defer { unlockWrite() }
        dax_mm_set_arch_ops(ref, nil)
        // Callers that saw the old hook have raised arch_users first. A hook
        // call may make system calls (a mirror does): yield, do not spin.
        var spins = 0
        while dax_atomic64_add_return(dax_mm_arch_users(ref), 0) != 0 {
            spins += 1
            if spins < 64 { dax_cpu_relax() } else { sched_yield() }
        }
        ref.pointee.arch_ctx = context
        if let ops { dax_mm_set_arch_ops(ref, ops) }
        // The only writers that run without mmap_lock are unmap_mapping_range
        // walks, each under its file's i_mmap lock for read. Taking every
        // mapped file's lock once waits out a walk that read "no hook" before
        // the store above; later walks see the hook. (mmap_lock for write
        // keeps the VMA list still meanwhile.)
        for vma in vmaList() {
            if let file = vma.pointee.vm_file {
                iMmapLockWrite(file)
                iMmapUnlockWrite(file)
            }
        }
    }

    /// Removes the arch hook (setArchHook(nil)); later changes are not
    /// reported.
    public func removeArchHook() { setArchHook(nil, context: nil) }

    /// Whether an arch hook is installed.
    public var hasArchHook: Bool { dax_mm_arch_ops(ref) != nil }
}
