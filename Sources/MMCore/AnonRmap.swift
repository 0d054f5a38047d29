// mm/rmap.c, the anonymous half: anon_vma (with anon_vma_chain folded into
// its VMA array), anon_vma_prepare / anon_vma_clone / anon_vma_fork /
// unlink_anon_vmas, the anon rmap API (folio_add_new_anon_rmap,
// folio_add_anon_rmap_ptes/pmd, folio_try_dup_anon_rmap_*,
// folio_try_share_anon_rmap_*), deferred split queueing, and rmap_walk over
// anon and file folios.
//
// The anon_vma records are the kernel's (Kernel.anonVMAs): allocated at mmap,
// split, mremap and fork (never on a fault), never freed while the kernel
// lives, so a folio->mapping read races with nothing freed (the kernel's
// SLAB_TYPESAFE_BY_RCU). Public functions here take raw records; their
// preconditions are in Kernel.swift ("The raw-record API").

import CDaxMM
import DAXBase
import Synchronization

public typealias AnonVMARef = UnsafeMutablePointer<dax_anon_vma>

/// RMAP_EXCLUSIVE: the new mapping is the only one (PageAnonExclusive).
public struct RmapFlags: OptionSet, Sendable {
    public let rawValue: UInt32
    public init(rawValue: UInt32) { self.rawValue = rawValue }
    public static let exclusive = RmapFlags(rawValue: 1 << 0)
}

// MARK: anon_vma records

private let anonVMAIds = Atomic<UInt64>(1)

extension Kernel {
    /// anon_vma_alloc: a new anon_vma with no VMA chained.
    func anonVMAAlloc(parent: AnonVMARef? = nil) -> AnonVMARef {
        let a = AnonVMARef.allocate(capacity: 1)
        a.initialize(to: dax_anon_vma())
        a.pointee.parent = parent
        a.pointee.id = anonVMAIds.add(1, ordering: .relaxed).oldValue
        if let parent { parent.pointee.num_children += 1 }
        anonVMAs.withLock { $0.append(a) }
        return a
    }
}

/// Frees an anon_vma record and its array (Kernel deinit only).
func freeAnonVMARecord(_ a: AnonVMARef) {
    a.pointee.vmas?.deallocate()
    a.deallocate()
}

/// anon_vma_chain_link: `vma` joins the VMAs `av` may be mapped into
/// (anon_vma's rwsem for write; mmap_lock held for write).
func anonVMAChainLink(_ av: AnonVMARef, _ vma: VMARef) {
    let sem = dax_anon_vma_rwsem(av)!
    dax_down_write(sem)
    defer { dax_up_write(sem) }
    for i in 0..<Int(av.pointee.nr_vmas) where av.pointee.vmas[i] == vma { return }
    if av.pointee.nr_vmas == av.pointee.cap {
        let (n, cap) = grownVMAArray(av.pointee.vmas, count: av.pointee.nr_vmas, capacity: av.pointee.cap, minimum: 4)
        av.pointee.vmas = n
        av.pointee.cap = cap
    }
    av.pointee.vmas[Int(av.pointee.nr_vmas)] = vma
    av.pointee.nr_vmas += 1
}

/// The unlink half of unlink_anon_vmas for one anon_vma.
func anonVMAChainUnlink(_ av: AnonVMARef, _ vma: VMARef) {
    let sem = dax_anon_vma_rwsem(av)!
    dax_down_write(sem)
    defer { dax_up_write(sem) }
    let n = Int(av.pointee.nr_vmas)
    for i in 0..<n where av.pointee.vmas[i] == vma {
        av.pointee.vmas[i] = av.pointee.vmas[n - 1]
        av.pointee.vmas[n - 1] = nil
        av.pointee.nr_vmas -= 1
        return
    }
}

/// The VMAs chained to `av` now (a snapshot, for checks and walks that
/// hold no lock of the VMAs).
public func anonVMAMembers(_ av: AnonVMARef) -> [VMARef] {
    let sem = dax_anon_vma_rwsem(av)!
    dax_down_read(sem)
    defer { dax_up_read(sem) }
    return (0..<Int(av.pointee.nr_vmas)).compactMap { av.pointee.vmas[$0] }
}

/// anon_vma_prepare on the fault path: publishes the VMA's anon_vma (the
/// one mmap prepared and chained) under mm->page_table_lock, as the kernel
/// does after allocating it. Returns it (nil: a shared or non-anon VMA that
/// has none, which cannot get anon folios).
@inline(__always)
public func anonVMAPrepare(_ vma: VMARef) -> AnonVMARef? {
    if let av = vmaAnonVMA(vma) { return av }
    guard let reserve = vma.pointee.anon_vma_reserve else { return nil }
    let mm = vma.pointee.vm_mm!
    dax_spin_lock(dax_mm_page_table_lock(mm))
    if vmaAnonVMA(vma) == nil {
        __atomic_publish_anon_vma(vma, reserve)
        reserve.pointee.num_active_vmas += 1
    }
    dax_spin_unlock(dax_mm_page_table_lock(mm))
    return vmaAnonVMA(vma)
}

/// vma->anon_vma (an acquire load: published by anon_vma_prepare).
@inline(__always)
public func vmaAnonVMA(_ vma: VMARef) -> AnonVMARef? {
    UnsafeMutableRawPointer(bitPattern: UInt(dax_load_u64(dax_vma_anon_vma_word(vma)))).map {
        $0.assumingMemoryBound(to: dax_anon_vma.self)
    }
}

@inline(__always)
func __atomic_publish_anon_vma(_ vma: VMARef, _ av: AnonVMARef) {
    dax_store_u64(dax_vma_anon_vma_word(vma), UInt64(UInt(bitPattern: av)))
}

// MARK: the anon rmap API

/// __folio_set_anon: folio->mapping = anon_vma | PAGE_MAPPING_ANON, index =
/// the linear page index of `address` in `vma`.
@inline(__always)
func folioSetAnon(_ folio: Folio, _ vma: VMARef, _ address: UInt64, _ av: AnonVMARef) {
    folio.raw.pointee.index = linearPageIndex(vma, roundDown(address, UInt64(pageSize)))
    dax_store_u64(&folio.raw.pointee.mapping, UInt64(UInt(bitPattern: av)) | DAX_PAGE_MAPPING_ANON)
}

/// folio_add_new_anon_rmap: the first mapping of a new anon folio at
/// `address` (a PTE for a small folio, a PMD for a PMD-sized one): mapping
/// and index set (__folio_set_anon), PG_swapbacked, the mapcounts set to
/// "mapped once", PageAnonExclusive on the page (small folio) or the head
/// (PMD-mapped THP) when `flags` has .exclusive, and NR_ANON_MAPPED (and
/// NR_ANON_THPS for the PMD) raised. Returns false (and reports) when the
/// VMA has no anon_vma or the folio is not a fresh one.
@inline(__always) @discardableResult
public func folioAddNewAnonRmap(_ k: KernelRef, _ folio: Folio, _ vma: VMARef, _ address: UInt64,
                                _ flags: RmapFlags, slot: Int32 = dax_this_slot()) -> Bool {
    guard let av = vmaAnonVMA(vma) else {
        vmReport(k, folio.head, rule: "VM_BUG_ON_VMA(!anon_vma, vma)", function: "folio_add_new_anon_rmap")
        return false
    }
    guard !folio.isMapped, folio.mapping == 0 else {
        vmReport(k, folio.head, rule: "VM_WARN_ON_FOLIO(folio_mapped(folio) || folio->mapping)",
                 function: "folio_add_new_anon_rmap")
        return false
    }
    let exclusive = flags.contains(.exclusive)
    folio.head.set(DAX_PG_swapbacked)
    folioSetAnon(folio, vma, address, av)
    var nr: Int32 = 1, nrPmdmapped: Int32 = 0
    if !folio.isLarge {
        dax_atomic_set(dax_page_mapcount(folio.raw), 0)
        if exclusive { folio.head.set(DAX_PG_anon_exclusive) }
    } else if folio.order == pmdOrder {
        let p1 = folio.raw + 1
        dax_atomic_set(dax_page_entire_mapcount(p1), 0)
        dax_atomic_set(dax_page_large_mapcount(p1), 0)
        dax_atomic_set(dax_page_nr_pages_mapped(p1), entirelyMapped)
        if exclusive { folio.head.set(DAX_PG_anon_exclusive) }
        nr = Int32(folio.nrPages)
        nrPmdmapped = nr
    } else {
        // A new large folio mapped by PTEs (mTHP): every page mapped once.
        let n = folio.nrPages
        for i in 0..<n {
            dax_atomic_set(dax_page_mapcount(folio.raw + i), 0)
            if exclusive { Page(folio.raw + i).set(DAX_PG_anon_exclusive) }
        }
        let p1 = folio.raw + 1
        dax_atomic_set(dax_page_large_mapcount(p1), Int32(n - 1))
        dax_atomic_set(dax_page_nr_pages_mapped(p1), Int32(n))
        nr = Int32(n)
    }
    folioModStat(k, nr, nrPmdmapped, anon: true, slot: slot)
    return true
}

/// __folio_add_anon_rmap: more mappings of an anon folio that already has
/// its anon_vma (a split PMD's PTEs, a restored entry, fork's copies):
/// mapcounts and NR_ANON_MAPPED/NR_ANON_THPS; PageAnonExclusive set on the
/// pages when .exclusive. The folio must be anon and its anon_vma must be
/// one `vma` is chained to (VM_BUG_ON otherwise; the port reports and refuses).
@inline(__always) @discardableResult
func folioAddAnonRmap(_ k: KernelRef, _ folio: Folio, _ page: Page, _ nr: Int, _ vma: VMARef, _ address: UInt64,
                      _ flags: RmapFlags, _ level: RmapLevel, slot: Int32 = dax_this_slot()) -> Bool {
    guard folio.isAnon else {
        vmReport(k, page, rule: "VM_BUG_ON_FOLIO(!folio_test_anon(folio))", function: "__folio_add_anon_rmap")
        return false
    }
    guard folioRmapSanityChecks(k, folio, page, nr, level) else { return false }
    let (n, pmd) = folioAddRmap(k, folio, page, nr, level)
    if flags.contains(.exclusive) {
        if level == .pte {
            for i in 0..<nr { Page(page.raw + i).set(DAX_PG_anon_exclusive) }
        } else {
            page.set(DAX_PG_anon_exclusive)
        }
    }
    folioModStat(k, n, pmd, anon: true, slot: slot)
    return true
}

/// folio_add_anon_rmap_ptes
@inline(__always) @discardableResult
public func folioAddAnonRmapPtes(_ k: KernelRef, _ folio: Folio, _ page: Page, _ nr: Int, _ vma: VMARef,
                                 _ address: UInt64, _ flags: RmapFlags) -> Bool {
    folioAddAnonRmap(k, folio, page, nr, vma, address, flags, .pte)
}

/// folio_add_anon_rmap_pte
@inline(__always) @discardableResult
public func folioAddAnonRmapPte(_ k: KernelRef, _ folio: Folio, _ page: Page, _ vma: VMARef,
                                _ address: UInt64, _ flags: RmapFlags) -> Bool {
    folioAddAnonRmap(k, folio, page, 1, vma, address, flags, .pte)
}

/// folio_add_anon_rmap_pmd
@inline(__always) @discardableResult
public func folioAddAnonRmapPmd(_ k: KernelRef, _ folio: Folio, _ page: Page, _ vma: VMARef,
                                _ address: UInt64, _ flags: RmapFlags) -> Bool {
    folioAddAnonRmap(k, folio, page, hpagePmdNr, vma, address, flags, .pmd)
}

/// folio_try_dup_anon_rmap_ptes/pmd at fork: the child gets a mapping of
/// the same pages. A page that is PageAnonExclusive loses the flag (both
/// processes now map it; the next write of either copies). Fails (-EBUSY)
/// when a page is exclusive and the folio may be pinned
/// (folio_needs_cow_for_dma: the source mm took a FOLL_PIN once,
/// MMF_HAS_PINNED, and folio_maybe_dma_pinned; never for a device-private
/// folio): the child must get a copy instead (copy_present_page), so the
/// pinned page stays exclusive.
@inline(__always)
public func folioTryDupAnonRmap(_ k: KernelRef, _ folio: Folio, _ page: Page, _ nr: Int, _ level: RmapLevel,
                                srcMM: MMRef) -> Int32 {
    var anyExclusive = false
    let n = level == .pte ? nr : 1
    for i in 0..<n where Page(page.raw + i).isAnonExclusive { anyExclusive = true }
    let devicePrivate = folio.pgmap?.pointee.type == Int32(DAX_MEMORY_DEVICE_PRIVATE.rawValue)
    if anyExclusive && !devicePrivate && folioNeedsCowForDma(srcMM, folio) { return -EBUSY }
    for i in 0..<n { Page(page.raw + i).clear(DAX_PG_anon_exclusive) }
    let (nrMapped, pmd) = folioAddRmap(k, folio, page, nr, level)
    folioModStat(k, nrMapped, pmd, anon: true)
    return 0
}

/// folio_needs_cow_for_dma: the mm ever took a FOLL_PIN (MMF_HAS_PINNED)
/// and the folio may be pinned now.
@inline(__always)
public func folioNeedsCowForDma(_ mm: MMRef, _ folio: Folio) -> Bool {
    dax_load_u32(dax_mm_has_pinned(mm)) != 0 && folio.maybeDmaPinned
}

/// mm_set_has_pinned_flag: set once, on the first FOLL_PIN of the mm.
@inline(__always)
func mmSetHasPinnedFlag(_ mm: MMRef) {
    if _slowPath(dax_load_u32(dax_mm_has_pinned(mm)) == 0) { dax_store_u32(dax_mm_has_pinned(mm), 1) }
}

/// folio_try_share_anon_rmap_pte / _pmd: clears PageAnonExclusive before an
/// exclusive mapping is replaced by a non-present one that others may see
/// (migration, GUP-fast's check). -EBUSY when the folio may be pinned.
@inline(__always)
public func folioTryShareAnonRmap(_ k: KernelRef, _ folio: Folio, _ page: Page, _ nr: Int) -> Int32 {
    if folio.maybeDmaPinned { return -EBUSY }
    for i in 0..<nr { Page(page.raw + i).clear(DAX_PG_anon_exclusive) }
    return 0
}

/// folio_move_anon_rmap: an exclusively owned anon folio moves to `vma`'s
/// own anon_vma (so rmap walks stop visiting the ancestors it came from).
@inline(__always)
public func folioMoveAnonRmap(_ folio: Folio, _ vma: VMARef) {
    guard let av = vmaAnonVMA(vma) else { return }
    dax_store_u64(&folio.raw.pointee.mapping, UInt64(UInt(bitPattern: av)) | DAX_PAGE_MAPPING_ANON)
}

/// deferred_split_folio: an anon THP some of whose pages are unmapped is
/// queued for a later split (its unmapped pages cannot be freed before).
/// The port records the queueing (PG_partially_mapped, the kernel's
/// counter) and never runs the shrinker that splits it.
@inline(__always)
func deferredSplitFolio(_ k: KernelRef, _ folio: Folio, partiallyMapped: Bool) {
    guard folio.isLarge, folio.order > 1 else { return }
    if partiallyMapped && !folio.isPartiallyMapped {
        dax_set_bit(Int32(DAX_PG_partially_mapped.rawValue), dax_page_flags(folio.raw + 1))
    }
}

// MARK: rmap_walk

/// What an rmap walk visits: the callback gets each VMA that may map the
/// folio and the address the folio's first page would have in it, and
/// returns false to stop the walk (rmap_one's return).
public typealias RmapOne = (_ vma: VMARef, _ address: UInt64) -> Bool

/// vma_address: where page `pgoff` of a folio sits in `vma`, or nil when it
/// falls outside the VMA.
@inline(__always)
public func vmaAddress(_ vma: VMARef, _ pgoff: UInt64, _ nrPages: Int) -> UInt64? {
    let start = vma.pointee.vm_pgoff
    let end = start + vmaPages(vma)
    // Any page of the folio inside the VMA makes it a candidate.
    guard pgoff < end, pgoff + UInt64(nrPages) > start else { return nil }
    if pgoff >= start { return vma.pointee.vm_start + ((pgoff - start) << UInt64(pageShift)) }
    return vma.pointee.vm_start &- ((start - pgoff) << UInt64(pageShift))
}

/// rmap_walk: every VMA that may map `folio` (rmap_walk_anon through its
/// anon_vma, rmap_walk_file through the file's i_mmap), under the anon_vma
/// or i_mmap lock for read. The walk takes the folio, never a page: the
/// kernel's rmap_walk VM_BUG_ONs a tail page (rmapWalkPage reports it and
/// walks nothing). An anon folio that is not mapped is not walked
/// (folio_lock_anon_vma_read finds no anon_vma for it).
public func rmapWalk(_ k: KernelRef, _ folio: Folio, file: FileRef? = nil, _ rmapOne: RmapOne) {
    if let av = folio.anonVMA {
        guard folio.isMapped else { return }
        let sem = dax_anon_vma_rwsem(av)!
        dax_down_read(sem)
        defer { dax_up_read(sem) }
        for i in 0..<Int(av.pointee.nr_vmas) {
            guard let vma = av.pointee.vmas[i],
                  let addr = vmaAddress(vma, folio.index, folio.nrPages) else { continue }
            if !rmapOne(vma, addr) { return }
        }
        return
    }
    guard let file else { return }
    let sem = dax_file_i_mmap_rwsem(file)!
    dax_down_read(sem)
    defer { dax_up_read(sem) }
    for i in 0..<Int(file.pointee.i_mmap_nr) {
        guard let vma = file.pointee.i_mmap[i],
              let addr = vmaAddress(vma, folio.index, folio.nrPages) else { continue }
        if !rmapOne(vma, addr) { return }
    }
}

/// rmap_walk given a page, as the pre-folio callers did: a tail page is a
/// bug (VM_BUG_ON_PAGE(PageTail(page))): reported, nothing walked, false.
@discardableResult
public func rmapWalkPage(_ k: KernelRef, _ page: Page, file: FileRef? = nil, _ rmapOne: RmapOne) -> Bool {
    if page.isTail {
        vmReport(k, page, rule: "VM_BUG_ON_PAGE(PageTail(page), page)", function: "rmap_walk")
        return false
    }
    rmapWalk(k, page.folio, file: file, rmapOne)
    return true
}
