// mm/gup.c: get_user_pages / pin_user_pages (slow, faulting) and their _fast
// variants, try_grab_folio(_fast), the FOLL_LONGTERM checks and unpin.
//
// The page arrays are C-style (struct page **): no allocation on these paths.
//
// Public functions here take raw records (KernelRef, MMRef, VMARef, Page,
// PageArray); their preconditions are in Kernel.swift ("The raw-record API").

import CDaxMM
import DAXBase

/// FOLL_* flags. The names are the kernel's; the values are the port's own.
public struct GupFlags: OptionSet, Sendable {
    public let rawValue: UInt32
    public init(rawValue: UInt32) { self.rawValue = rawValue }
    public static let write = GupFlags(rawValue: 1 << 0)        // FOLL_WRITE
    public static let force = GupFlags(rawValue: 1 << 1)        // FOLL_FORCE
    public static let anon = GupFlags(rawValue: 1 << 2)         // FOLL_ANON
    public static let longterm = GupFlags(rawValue: 1 << 3)     // FOLL_LONGTERM
    public static let pciP2PDMA = GupFlags(rawValue: 1 << 4)    // FOLL_PCI_P2PDMA
    public static let nofault = GupFlags(rawValue: 1 << 5)      // FOLL_NOFAULT
    public static let splitPmd = GupFlags(rawValue: 1 << 6)     // FOLL_SPLIT_PMD
    // Internal flags (callers may not pass them: is_valid_gup_args).
    public static let get = GupFlags(rawValue: 1 << 16)         // FOLL_GET
    public static let pin = GupFlags(rawValue: 1 << 17)         // FOLL_PIN
    public static let fastOnly = GupFlags(rawValue: 1 << 18)    // FOLL_FAST_ONLY
    public static let `internal`: GupFlags = [.get, .pin, .fastOnly]
}

public typealias PageArray = UnsafeMutablePointer<UnsafeMutablePointer<dax_page>?>

// MARK: argument and VMA checks (mm/gup.c: is_valid_gup_args, check_vma_flags; folio_is_longterm_pinnable)

/// is_valid_gup_args: 0, or -EINVAL. `toSet` is FOLL_GET or FOLL_PIN.
@inline(__always)
public func isValidGupArgs(_ pages: PageArray?, _ flags: GupFlags, toSet: GupFlags) -> Int32 {
    if !flags.intersection(.internal).isEmpty { return -EINVAL }
    let f = flags.union(toSet)
    if f.contains(.pin) && f.contains(.get) { return -EINVAL }
    if f.contains(.longterm) && !f.contains(.pin) { return -EINVAL }
    if (f.contains(.get) || f.contains(.pin)) && pages == nil { return -EINVAL }
    if f.contains(.longterm) && f.contains(.pciP2PDMA) { return -EINVAL }
    return 0
}

/// vma_needs_dirty_tracking: a shared mapping whose writes the filesystem
/// must see (a page_mkwrite/pfn_mkwrite callback on a regular file).
@inline(__always)
func vmaNeedsDirtyTracking(_ vma: VMARef) -> Bool {
    guard vma.pointee.vm_flags & DAX_VM_SHARED != 0, let file = vma.pointee.vm_file else { return false }
    if let ops = vma.pointee.vm_ops, ops.pointee.page_mkwrite != nil || ops.pointee.pfn_mkwrite != nil { return true }
    return file.pointee.i_mode & 0o170000 == DAX_S_IFREG && file.pointee.i_flags & DAX_S_DAX == 0
}

/// check_vma_flags
@inline(__always)
public func checkVmaFlags(_ vma: VMARef, _ flags: GupFlags) -> Int32 {
    let vf = vma.pointee.vm_flags
    if vf & (DAX_VM_IO | DAX_VM_PFNMAP) != 0 { return -EFAULT }
    if flags.contains(.anon) && !vmaIsAnonymous(vma) { return -EFAULT }
    if flags.contains(.longterm) && vmaIsFsdax(vma) { return -EOPNOTSUPP }
    if flags.contains(.write) {
        if !vmaIsAnonymous(vma) && flags.contains(.pin) && flags.contains(.longterm) && vmaNeedsDirtyTracking(vma) {
            return -EFAULT   // writable_file_mapping_allowed
        }
        if vf & DAX_VM_WRITE == 0 {
            if !flags.contains(.force) { return -EFAULT }
            if vf & DAX_VM_SHARED != 0 || vf & DAX_VM_MAYWRITE == 0 { return -EFAULT }   // !is_cow_mapping
        }
    } else if vf & DAX_VM_READ == 0 {
        if !flags.contains(.force) || vf & DAX_VM_MAYREAD == 0 { return -EFAULT }
    }
    return 0
}

/// folio_is_longterm_pinnable
@inline(__always)
public func folioIsLongtermPinnable(_ k: KernelRef, _ folio: Folio) -> Bool {
    if isZeroPfn(pageToPfn(k, folio.head)) { return true }
    guard let pgmap = folio.pgmap else { return true }
    switch pgmap.pointee.type {
    case Int32(DAX_MEMORY_DEVICE_COHERENT.rawValue): return false
    case Int32(DAX_MEMORY_DEVICE_FS_DAX.rawValue): return false
    default: return true   // ZONE_DEVICE is not ZONE_MOVABLE
    }
}

// MARK: grabbing references (mm/gup.c: try_grab_folio, try_grab_folio_fast)

@inline(__always) func isP2PDMA(_ folio: Folio) -> Bool {
    folio.pgmap?.pointee.type == Int32(DAX_MEMORY_DEVICE_PCI_P2PDMA.rawValue)
}

/// is_zero_folio: the shared zero page, which GUP never pin-counts (it
/// stays for as long as the kernel runs). The huge zero folio is not one:
/// is_zero_folio tests the small zero page only, so pins of a huge zero
/// PMD count as on any large folio.
@inline(__always)
public func isZeroFolio(_ k: KernelRef, _ folio: Folio) -> Bool {
    isZeroPfn(pageToPfn(k, folio.head))
}

/// gup_must_unshare: a FOLL_PIN without FOLL_WRITE of a page mapped
/// read-only must first unshare it (a FAULT_FLAG_UNSHARE fault) when the
/// page is anon and not PageAnonExclusive, so the pinned page is the one
/// the process keeps; a page that is not anon needs it only for a
/// FOLL_LONGTERM pin in a COW mapping (or with no VMA known: GUP-fast).
/// FOLL_GET never unshares.
@inline(__always)
public func gupMustUnshare(_ vma: VMARef?, _ flags: GupFlags, _ page: Page) -> Bool {
    guard flags.contains(.pin), !flags.contains(.write) else { return false }
    if !page.folio.isAnon {
        guard flags.contains(.longterm) else { return false }
        guard let vma else { return true }
        return isCowMapping(vma.pointee.vm_flags)
    }
    return !page.isAnonExclusive
}

/// can_follow_write_pte / can_follow_write_pmd: a FOLL_WRITE lookup may use
/// a read-only entry only with FOLL_FORCE, in a private mapping that may
/// be written (VM_MAYWRITE) but is not VM_WRITE (a writable one takes the
/// write fault), once the COW fault made the page an exclusive anon page
/// (PageAnonExclusive) and no uffd-wp protection asks for a fault.
@inline(__always)
func canFollowWriteEntry(_ e: PTEntry, _ page: Page?, _ vma: VMARef, _ flags: GupFlags) -> Bool {
    if entryWrite(e) { return true }
    guard flags.contains(.force) else { return false }
    let vf = vma.pointee.vm_flags
    if vf & (DAX_VM_MAYSHARE | DAX_VM_SHARED) != 0 { return false }
    if vf & DAX_VM_MAYWRITE == 0 { return false }
    if vf & DAX_VM_WRITE != 0 { return false }
    guard let page, page.folio.isAnon, page.isAnonExclusive else { return false }
    return !pteUffdWp(e)
}

/// try_grab_folio: the caller holds the PT lock (or a stable reference).
@inline(__always)
public func tryGrabFolio(_ k: KernelRef, _ folio: Folio, _ refs: Int32, _ flags: GupFlags) -> Int32 {
    if folio.refCount <= 0 {
        vmReport(k, folio.head, rule: "WARN_ON_ONCE(folio_ref_count(folio) <= 0)", function: "try_grab_folio")
        return -ENOMEM
    }
    if isP2PDMA(folio) && !flags.contains(.pciP2PDMA) { return -EREMOTEIO }
    if flags.contains(.get) {
        folio.refAdd(refs)
    } else if flags.contains(.pin) {
        if isZeroFolio(k, folio) { return 0 }
        if folio.hasPincount {
            folio.refAdd(refs)
            dax_atomic_add(dax_page_pincount(folio.raw + 1), refs)
        } else {
            folio.refAdd(refs * Int32(DAX_GUP_PIN_COUNTING_BIAS))
        }
        modNodeStat(k, DAX_NR_FOLL_PIN_ACQUIRED, Int64(refs))
    }
    return 0
}

/// try_get_folio: speculative reference that fails on a free (0) folio.
@inline(__always)
func tryGetFolio(_ k: KernelRef, _ page: Page, _ refs: Int32) -> Folio? {
    while true {
        let folio = page.folio
        guard folio.refTryAdd(refs) else { return nil }
        if page.folio == folio { return folio }
        folioPutRefs(k, folio, refs)   // split under us: retry
    }
}

/// try_get_folio for a pin: `refs` on a large folio (whose pins count in
/// _pincount), refs * GUP_PIN_COUNTING_BIAS on a small one. Returns the
/// folio and what was added to its refcount.
@inline(__always)
func tryGetFolioForPin(_ k: KernelRef, _ page: Page, _ refs: Int32) -> (Folio, Int32)? {
    while true {
        let folio = page.folio
        let add = folio.hasPincount ? refs : refs &* Int32(DAX_GUP_PIN_COUNTING_BIAS)
        guard folio.refTryAdd(add) else { return nil }
        if page.folio == folio { return (folio, add) }
        folioPutRefs(k, folio, add)   // split under us: retry
    }
}

/// try_grab_folio_fast: GUP-fast's grab. nil sends the caller to the slow path.
@inline(__always)
public func tryGrabFolioFast(_ k: KernelRef, _ page: Page, _ refs: Int32, _ flags: GupFlags) -> Folio? {
    guard flags.contains(.get) || flags.contains(.pin) else {
        vmReport(k, page, rule: "WARN_ON_ONCE((flags & (FOLL_GET | FOLL_PIN)) == 0)", function: "try_grab_folio_fast")
        return nil
    }
    if isP2PDMA(page.folio) && !flags.contains(.pciP2PDMA) { return nil }
    if flags.contains(.get) { return tryGetFolio(k, page, refs) }
    // is_zero_folio by the page's pfn (the zero page is an order-0 folio):
    // no load of the page's compound head for it.
    if isZeroPfn(pageToPfn(k, page)) { return page.folio }
    // try_get_folio(refs), then folio_ref_add(refs * (GUP_PIN_COUNTING_BIAS
    // - 1)) on a small folio: the port adds the whole refs * BIAS in the one
    // try-add (the same final count and the same refusal of a free folio,
    // one atomic instead of two).
    guard let (folio, added) = tryGetFolioForPin(k, page, refs) else { return nil }
    if flags.contains(.longterm) && !folioIsLongtermPinnable(k, folio) {
        folioPutRefs(k, folio, added)
        return nil
    }
    if folio.hasPincount {
        dax_atomic_add(dax_page_pincount(folio.raw + 1), refs)
    }
    modNodeStat(k, DAX_NR_FOLL_PIN_ACQUIRED, Int64(refs))
    return folio
}

// MARK: release (mm/gup.c: gup_put_folio, unpin_user_pages)

/// gup_put_folio
@inline(__always)
public func gupPutFolio(_ k: KernelRef, _ folio: Folio, _ refs: Int32, _ flags: GupFlags) {
    var r = refs
    if flags.contains(.pin) {
        if isZeroFolio(k, folio) { return }
        modNodeStat(k, DAX_NR_FOLL_PIN_RELEASED, Int64(refs))
        if folio.hasPincount {
            let left = dax_atomic_sub_return(dax_page_pincount(folio.raw + 1), refs)
            if left < 0 { vmReport(k, folio.head, rule: "VM_WARN_ON_FOLIO(folio_pincount < 0)", function: "gup_put_folio") }
        } else {
            r = refs * Int32(DAX_GUP_PIN_COUNTING_BIAS)
        }
    }
    folioPutRefs(k, folio, r)
}

/// unpin_user_page
@inline(__always)
public func unpinUserPage(_ k: KernelRef, _ page: Page) {
    let folio = page.folio
    if !folio.maybeDmaPinned && !isZeroFolio(k, folio) {
        vmReport(k, page, rule: "VM_WARN_ON_FOLIO(!folio_maybe_dma_pinned(folio))", function: "unpin_user_page")
    }
    gupPutFolio(k, folio, 1, .pin)
}

/// unpin_user_pages: skips nil entries, batches runs of the same folio.
public func unpinUserPages(_ k: KernelRef, _ pages: PageArray, _ n: Int) {
    unpinUserPagesDirtyLock(k, pages, n, makeDirty: false)
}

/// unpin_user_pages_dirty_lock
public func unpinUserPagesDirtyLock(_ k: KernelRef, _ pages: PageArray, _ n: Int, makeDirty: Bool) {
    var i = 0
    while i < n {
        guard let raw = pages[i] else { i &+= 1; continue }
        let (folio, run) = gupFolioNext(pages, i, n, raw)
        if makeDirty && !folio.isDirty {
            folio.head.set(DAX_PG_locked)   // folio_lock
            folio.markDirty()
            folio.head.clear(DAX_PG_locked)
        }
        gupPutFolio(k, folio, Int32(truncatingIfNeeded: run), .pin)
        i &+= run
    }
}

/// gup_folio_next: the folio of `pages[i]` (`first`, not nil) and how many
/// entries from `i` on (before `n`, up to the first nil) are pages of it.
/// An entry that is the page after the previous one and still inside a
/// large folio is a page of that folio without reading its record (a folio
/// is its head's 2^order consecutive records, and a folio that holds
/// references cannot be split); any other entry is checked with page_folio,
/// as the kernel checks each one. Precondition (PageArray's): every
/// non-nil entry points at a record of the live vmemmap.
@inline(__always)
func gupFolioNext(_ pages: PageArray, _ i: Int, _ n: Int,
                  _ first: UnsafeMutablePointer<dax_page>) -> (Folio, Int) {
    let folio = Page(first).folio
    var j = i &+ 1
    if folio.isLarge {
        let end = folio.raw + folio.nrPages
        var expect = first + 1
        // Eight entries at once while they are the next eight pages and all
        // inside the folio (a nil entry is 0, never equal to a page).
        let stride = UInt(MemoryLayout<dax_page>.stride)
        let step = SIMD8<UInt>(0, 1, 2, 3, 4, 5, 6, 7) &* stride
        while n &- j >= 8 && end - expect >= 8 {
            let v = UnsafeRawPointer(pages + j).loadUnaligned(as: SIMD8<UInt>.self)
            guard all(v .== SIMD8(repeating: UInt(bitPattern: expect)) &+ step) else { break }
            expect += 8
            j &+= 8
        }
        while j < n, let p = pages[j] {
            if p != expect || p == end {
                guard Page(p).folio == folio else { break }
            }
            expect = p + 1
            j &+= 1
        }
    } else {
        while j < n, let p = pages[j], Page(p).folio == folio { j &+= 1 }
    }
    return (folio, j &- i)
}

/// put_page for FOLL_GET references.
public func putUserPages(_ k: KernelRef, _ pages: PageArray, _ n: Int) {
    for i in 0..<n { if let raw = pages[i] { folioPut(k, Page(raw).folio) } }
}

// MARK: the slow path (__get_user_pages)

/// follow_page_mask for one address, grabbing a reference under the entry's
/// lock. Returns the page, nil (needs a fault), or an error in `err`.
/// `pageMask` is struct follow_page_context's page_mask: 0, or
/// HPAGE_PMD_NR - 1 / HPAGE_PUD_NR - 1 when a huge leaf was followed. `left`
/// (>= 1) is the pages the caller still wants: on a huge leaf the grab
/// covers page_increm = min(1 + (~(addr >> PAGE_SHIFT) & page_mask), left)
/// pages at once (the kernel's try_grab_folio of 1 here and of
/// page_increm - 1 in __get_user_pages, in one: the same references and
/// NR_FOLL_PIN_ACQUIRED, one atomic per count instead of two).
@inline(__always)
func followPageMask(_ mm: MMRef, _ vma: VMARef, _ addr: UInt64, _ flags: GupFlags, _ left: Int,
                    _ pageMask: inout UInt64, _ err: inout Int32) -> Page? {
    let k = mm.pointee.kernel!
    let write = flags.contains(.write)
    pageMask = 0
    // Each level is read once: a racing fault or zap may change an entry
    // between two reads (none -> huge leaf -> none).
    let pgde = dax_load_u64(pgdOffset(mm, addr))
    guard entryPresent(pgde) else { return nil }
    let pud = entryTable(pgde) + pudIndex(addr)
    let pude = dax_load_u64(pud)
    if entryLeaf(pude) {
        return followHuge(k, vma, pud, pudLockptr(mm), addr, UInt64(pudSize), write, flags, left, &pageMask, &err)
    }
    guard entryPresent(pude) else { return nil }
    let pmd = entryTable(pude) + pmdIndex(addr)
    var pmde = dax_load_u64(pmd)
    if entryLeaf(pmde) {
        guard flags.contains(.splitPmd) else {
            return followHuge(k, vma, pmd, pmdLockptr(k, pmd), addr, UInt64(pmdSize), write, flags, left, &pageMask, &err)
        }
        // follow_pmd_mask with FOLL_SPLIT_PMD: the PMD mapping is split (an
        // anon THP becomes PTEs, a DAX entry goes), and an emptied PMD gets
        // a PTE table at once so the fault that follows maps a PTE.
        splitHugePmd(k, vma, pmd, addr)
        guard pteAlloc(mm, pmd, addr) != nil else { err = -ENOMEM; return nil }
        pmde = dax_load_u64(pmd)
    }
    guard entryPresent(pmde), !entryLeaf(pmde) else { return nil }
    let pte = entryTable(pmde) + pteIndex(addr)
    let ptl = pteLockptr(k, pmde)
    dax_spin_lock(ptl)
    defer { dax_spin_unlock(ptl) }
    let e = dax_load_u64(pte)
    guard entryPresent(e) else { return nil }
    let normal = vmNormalPage(k, vma, e)
    // can_follow_write_pte: else fault to break write protection (COW).
    if write && !canFollowWriteEntry(e, normal, vma, flags) { return nil }
    let page: Page
    if let p = normal {
        page = p
    } else if isZeroPfn(entryPfn(e)) {
        page = pfnToPage(k, 0)
    } else {
        // follow_pfn_pte: a proper entry with no page to hand out (special,
        // or no struct page).
        err = -EEXIST
        return nil
    }
    // gup_must_unshare: -EMLINK asks the caller for an unshare fault.
    if !entryWrite(e) && gupMustUnshare(vma, flags, page) {
        err = -EMLINK
        return nil
    }
    let rc = tryGrabFolio(k, page.folio, 1, flags)
    if rc != 0 { err = rc; return nil }
    return page
}

/// follow_huge_pmd / follow_huge_pud: the page of a huge leaf, taken with
/// pmd_page/pfn_to_page whatever the entry's special bit. So in 6.15 as
/// merged (DAX_MODE_SPECIAL_HUGE_ENTRIES), where DAX folios were mapped by
/// special PMDs/PUDs, the slow path still grabs them; only GUP-fast
/// (gup_fast_pmd_leaf/gup_fast_pud_leaf) refuses pmd_special/pud_special and
/// falls back here. A pfn without a struct page is refused with -EFAULT
/// instead of reading a record that does not exist (VM_PFNMAP mappings,
/// where such pfns live, never get here: check_vma_flags turns them away).
/// After the grab (of page_increm pages, see followPageMask),
/// ctx->page_mask = HPAGE_PMD_NR - 1 (HPAGE_PUD_NR - 1).
@inline(__always)
func followHuge(_ k: KernelRef, _ vma: VMARef, _ entry: EntryPtr, _ lock: UnsafeMutablePointer<UInt32>,
                _ addr: UInt64, _ size: UInt64, _ write: Bool, _ flags: GupFlags, _ left: Int,
                _ pageMask: inout UInt64, _ err: inout Int32) -> Page? {
    dax_spin_lock(lock)
    defer { dax_spin_unlock(lock) }
    let e = dax_load_u64(entry)
    guard entryLeaf(e) else { return nil }
    guard pfnValid(k, entryPfn(e)) else {
        if write && !entryWrite(e) { return nil }
        err = -EFAULT
        return nil
    }
    // pmd_page: the checks look at the head page (which carries a
    // PMD-mapped THP's PageAnonExclusive).
    let headPage = pfnToPage(k, entryPfn(e))
    if write && !canFollowWriteEntry(e, headPage, vma, flags) { return nil }
    if !entryWrite(e) && gupMustUnshare(vma, flags, headPage) {
        err = -EMLINK
        return nil
    }
    let pfn = entryPfn(e) + ((addr & (size - 1)) >> UInt64(pageShift))
    guard pfnValid(k, pfn) else { err = -EFAULT; return nil }
    let page = pfnToPage(k, pfn)
    let mask = (size >> UInt64(pageShift)) &- 1
    let increm = min(1 &+ Int(truncatingIfNeeded: ~(addr >> UInt64(pageShift)) & mask), left)
    let rc = tryGrabFolio(k, page.folio, Int32(truncatingIfNeeded: increm), flags)
    if rc != 0 { err = rc; return nil }
    pageMask = mask
    return page
}

/// record_subpages: dst[0..<n] = first, first + 1, ... (the pages of one
/// folio; n >= 1, dst has room for n entries).
@inline(__always)
func recordSubpages(_ dst: PageArray, _ first: UnsafeMutablePointer<dax_page>, _ n: Int) {
    var j = 0
    while j < n {
        dst[j] = first + j
        j &+= 1
    }
}

/// The errno for a failed fault-in (faultin_page / vm_fault_to_errno).
@inline(__always)
func vmFaultToErrno(_ ret: UInt32) -> Int32 {
    if ret & DAX_VM_FAULT_OOM != 0 { return -ENOMEM }
    if ret & DAX_VM_FAULT_HWPOISON != 0 { return -EHWPOISON }
    return -EFAULT
}

/// __get_user_pages with mmap_lock held for read. Returns the number of
/// pages grabbed, or -errno if none was. One walk per huge leaf: after
/// follow_page_mask returns a page of a PMD/PUD leaf (ctx.page_mask set),
/// page_increm covers the rest of the leaf (capped at the pages left),
/// whose references follow_page_mask took with the first page's, and
/// pages[i + j] are filled with the consecutive pages.
func getUserPagesLocked(_ mm: MMRef, _ start: UInt64, _ nrPages: Int, _ flags: GupFlags, _ pages: PageArray?) -> Int {
    var i = 0
    var addr = roundDown(start, UInt64(pageSize))
    var vma: VMARef? = nil
    while i < nrPages {
        if vma == nil || addr >= vma!.pointee.vm_end {
            vma = vmaLookup(mm, addr)
            guard let v = vma else { return i > 0 ? i : Int(-EFAULT) }
            let rc = checkVmaFlags(v, flags)
            if rc != 0 { return i > 0 ? i : Int(rc) }
        }
        var tries = 0
        var pageMask: UInt64 = 0   // ctx.page_mask
        var page: Page? = nil
        while true {
            var err: Int32 = 0
            if let p = followPageMask(mm, vma!, addr, flags, nrPages &- i, &pageMask, &err) {
                page = p
                break
            }
            var unshare = false
            if err == -EMLINK {
                // gup_must_unshare said so: faultin_page with FAULT_FLAG_UNSHARE.
                unshare = true
                err = 0
            }
            if err != 0 {
                // -EEXIST (follow_pfn_pte) fails the call only when pages
                // were asked for; a populate-style walk moves on.
                if err == -EEXIST && pages == nil { break }
                return i > 0 ? i : Int(err)
            }
            if flags.contains(.nofault) || tries >= 3 { return i > 0 ? i : Int(-EFAULT) }
            // faultin_page
            var ff: UInt32 = DAX_FAULT_FLAG_REMOTE
            if flags.contains(.write) { ff |= DAX_FAULT_FLAG_WRITE }
            if unshare { ff |= DAX_FAULT_FLAG_UNSHARE }
            let ret = handleMMFault(mm, addr, ff)
            if ret & DAX_VM_FAULT_ERROR != 0 { return i > 0 ? i : Int(vmFaultToErrno(ret)) }
            tries += 1
        }
        // next_page: page_increm = 1 + (~(start >> PAGE_SHIFT) & ctx.page_mask)
        let increm = min(1 &+ Int(truncatingIfNeeded: ~(addr >> UInt64(pageShift)) & pageMask), nrPages &- i)
        if let pages, let page { recordSubpages(pages + i, page.raw, increm) }
        i &+= increm
        addr &+= UInt64(truncatingIfNeeded: increm) << UInt64(pageShift)
    }
    return i
}

/// __gup_longterm_locked: pin, then make sure every folio may stay pinned.
/// ZONE_DEVICE folios cannot be isolated for migration, so the kernel leaves
/// them pinned (FS DAX never gets here: check_vma_flags refused it); device
/// coherent memory would be migrated, which the port cannot do (-EBUSY).
func gupLongtermLocked(_ mm: MMRef, _ start: UInt64, _ nrPages: Int, _ flags: GupFlags, _ pages: PageArray?) -> Int {
    let rc = getUserPagesLocked(mm, start, nrPages, flags, pages)
    guard flags.contains(.longterm), rc > 0, let pages else { return rc }
    let k = mm.pointee.kernel!
    // collect_longterm_unpinnable_folios: each folio once (a run of pages
    // of one folio is checked at its first page, gup_folio_next).
    var i = 0
    while i < rc {
        guard let raw = pages[i] else { i &+= 1; continue }
        let (folio, run) = gupFolioNext(pages, i, rc, raw)
        if folio.pgmap?.pointee.type == Int32(DAX_MEMORY_DEVICE_COHERENT.rawValue) {
            unpinUserPages(k, pages, rc)
            for j in 0..<rc { pages[j] = nil }
            return Int(-EBUSY)
        }
        i &+= run
    }
    return rc
}

/// get_user_page_vma_remote: one page of `mm` at `addr` with FOLL_GET
/// (`flags` must include .get) and the VMA holding it. The caller holds
/// mmap_lock. The error is GUP's, or -EIO when no page came back.
public func getUserPageVmaRemote(_ mm: MMRef, _ addr: UInt64, _ flags: GupFlags,
                                 _ vma: inout VMARef?) -> Result<Page, MMErrno> {
    var slot: UnsafeMutablePointer<dax_page>? = nil
    let rc = withUnsafeMutablePointer(to: &slot) { pages -> Int in
        let rc0 = isValidGupArgs(pages, flags.subtracting(.get), toSet: .get)
        if rc0 != 0 { return Int(rc0) }
        return gupLongtermLocked(mm, addr, 1, flags.union(.get), pages)
    }
    guard rc == 1, let raw = slot else { return .failure(MMErrno(rc < 0 ? Int32(-rc) : EIO)) }
    guard let v = vmaLookup(mm, addr) else {
        folioPut(mm.pointee.kernel, Page(raw).folio)
        return .failure(MMErrno(EFAULT))
    }
    vma = v
    return .success(Page(raw))
}

/// get_user_pages (takes mmap_lock for read).
public func getUserPages(_ mm: MMRef, _ start: UInt64, _ nrPages: Int, _ flags: GupFlags, _ pages: PageArray?) -> Int {
    let rc = isValidGupArgs(pages, flags, toSet: .get)
    if rc != 0 { return Int(rc) }
    dax_down_read(dax_mm_mmap_lock(mm))
    defer { dax_up_read(dax_mm_mmap_lock(mm)) }
    return gupLongtermLocked(mm, start, nrPages, flags.union(.get), pages)
}

/// pin_user_pages (takes mmap_lock for read).
public func pinUserPages(_ mm: MMRef, _ start: UInt64, _ nrPages: Int, _ flags: GupFlags, _ pages: PageArray?) -> Int {
    let rc = isValidGupArgs(pages, flags, toSet: .pin)
    if rc != 0 { return Int(rc) }
    mmSetHasPinnedFlag(mm)
    dax_down_read(dax_mm_mmap_lock(mm))
    defer { dax_up_read(dax_mm_mmap_lock(mm)) }
    return gupLongtermLocked(mm, start, nrPages, flags.union(.pin), pages)
}

// MARK: GUP-fast

/// gup_fast: lockless walk; stops at the first address it cannot handle.
/// Entries are read once, the folio grabbed speculatively, and the entry
/// re-read: a change means the grab is undone and the slow path decides.
/// (Tables come from a pool that stays mapped, so a racing free is a stale
/// read, never a fault; the kernel gets the same from disabling interrupts.)
@inline(__always)
func gupFast(_ mm: MMRef, _ start: UInt64, _ nrPages: Int, _ flags: GupFlags, _ pages: PageArray) -> Int {
    let k = mm.pointee.kernel!
    let write = flags.contains(.write)
    var i = 0
    while i < nrPages {
        let addr = roundDown(start, UInt64(pageSize)) + UInt64(i) * UInt64(pageSize)
        let pgde = dax_load_u64(pgdOffset(mm, addr))
        guard entryPresent(pgde) else { return i }
        let pudp = entryTable(pgde) + pudIndex(addr)
        let pude = dax_load_u64(pudp)
        guard entryPresent(pude) else { return i }
        var entryp: EntryPtr
        var e: PTEntry
        var size: UInt64
        if entryLeaf(pude) {
            entryp = pudp; e = pude; size = UInt64(pudSize)
        } else {
            let pmdp = entryTable(pude) + pmdIndex(addr)
            let pmde = dax_load_u64(pmdp)
            guard entryPresent(pmde) else { return i }
            if entryLeaf(pmde) {
                entryp = pmdp; e = pmde; size = UInt64(pmdSize)
            } else if pteIndex(addr) < 511 && nrPages - i > 1 {
                // gup_fast_pte_range: the PTEs of this table the request
                // covers, without walking down again for each.
                let n = gupFastPteRange(k, entryTable(pmde) + pteIndex(addr), addr,
                                        min(nrPages - i, 512 - pteIndex(addr)), flags, pages + i)
                i += n
                if n == 0 || pteIndex(addr) + n < 512 && i < nrPages { return i }
                continue
            } else {
                entryp = entryTable(pmde) + pteIndex(addr)
                e = dax_load_u64(entryp)
                size = UInt64(pageSize)
                guard entryPresent(e) else { return i }
            }
        }
        if entrySpecial(e) { return i }
        // pte_access_permitted: PROT_NONE entries (no _PAGE_USER) and
        // write-protected ones for a write go to the slow path.
        if e & PT.user == 0 { return i }
        if write && !entryWrite(e) { return i }
        let pfn = entryPfn(e) + ((addr & (size - 1)) >> UInt64(pageShift))
        guard pfnValid(k, pfn) else { return i }
        // Every page of this entry that the request covers, in one grab.
        let inEntry = Int((size - (addr & (size - 1))) >> UInt64(pageShift))
        let refs = min(inEntry, nrPages - i)
        let page = pfnToPage(k, pfn)
        guard let folio = tryGrabFolioFast(k, page, Int32(refs), flags) else { return i }
        if !gupFastFolioAllowed(folio, flags) || dax_load_u64(entryp) != e
            || !entryWrite(e) && gupMustUnshare(nil, flags, size == UInt64(pageSize) ? page : folio.head) {
            gupPutFolio(k, folio, Int32(refs), flags)
            return i
        }
        recordSubpages(pages + i, page.raw, refs)
        i += refs
    }
    return i
}

/// gup_fast_folio_allowed and gup_must_unshare for GUP-fast's grab: true
/// when the page must go to the slow path.
@inline(never)
func gupFastRefuses(_ folio: Folio, _ page: Page, _ flags: GupFlags) -> Bool {
    !gupFastFolioAllowed(folio, flags) || gupMustUnshare(nil, flags, page)
}

/// gup_fast_folio_allowed: a writable long-term pin (FOLL_PIN |
/// FOLL_LONGTERM | FOLL_WRITE) is allowed here only for an anon folio; a
/// file folio (or one whose mapping is gone) goes to the slow path, which
/// decides whether the file needs dirty tracking. Anything else is allowed.
@inline(__always)
func gupFastFolioAllowed(_ folio: Folio, _ flags: GupFlags) -> Bool {
    guard flags.contains(.pin) && flags.contains(.longterm) && flags.contains(.write) else { return true }
    let mapping = dax_load_u64(&folio.raw.pointee.mapping)
    if mapping == 0 { return false }
    return mapping & DAX_PAGE_MAPPING_ANON != 0
}

/// gup_fast_pte_range over `nr` consecutive PTEs from `ptep` (mapping
/// `addr` on): the same checks gupFast makes of each entry, one small grab
/// per entry. Returns how many pages it pinned (stops at the first refusal).
@inline(__always)
func gupFastPteRange(_ k: KernelRef, _ ptep: EntryPtr, _ addr: UInt64, _ nr: Int, _ flags: GupFlags,
                     _ pages: PageArray) -> Int {
    let write = flags.contains(.write)
    // gup_fast_folio_allowed looks at the folio only for a writable
    // long-term pin; the flags are the same for every entry.
    let checkAllowed = flags.contains(.pin) && flags.contains(.longterm) && write
    for j in 0..<nr {
        let entryp = ptep + j
        let e = dax_load_u64(entryp)
        guard entryPresent(e), !entrySpecial(e), e & PT.user != 0 else { return j }
        if write && !entryWrite(e) { return j }
        let pfn = entryPfn(e)
        guard pfnValid(k, pfn) else { return j }
        let page = pfnToPage(k, pfn)
        guard let folio = tryGrabFolioFast(k, page, 1, flags) else { return j }
        // After the grab, as gup_fast_pte_range: the entry unchanged, then
        // gup_fast_folio_allowed and gup_must_unshare, out of line (only a
        // writable long-term pin or a read-only entry needs them).
        if _slowPath(dax_load_u64(entryp) != e
                     || (checkAllowed || !entryWrite(e)) && gupFastRefuses(folio, page, flags)) {
            gupPutFolio(k, folio, 1, flags)
            return j
        }
        pages[j] = page.raw
    }
    return nr
}

/// internal_get_user_pages_fast: fast part, then the slow path for the rest.
@inline(__always)
func internalGetUserPagesFast(_ mm: MMRef, _ start: UInt64, _ nrPages: Int, _ flags: GupFlags, _ pages: PageArray) -> Int {
    let nr = gupFast(mm, start, nrPages, flags, pages)
    if nr == nrPages || flags.contains(.fastOnly) { return nr }
    dax_down_read(dax_mm_mmap_lock(mm))
    let rest = gupLongtermLocked(mm, start + UInt64(nr) * UInt64(pageSize), nrPages - nr, flags, pages + nr)
    dax_up_read(dax_mm_mmap_lock(mm))
    if rest < 0 { return nr > 0 ? nr : rest }
    return nr + rest
}

/// get_user_pages_fast
@inline(__always)
public func getUserPagesFast(_ mm: MMRef, _ start: UInt64, _ nrPages: Int, _ flags: GupFlags, _ pages: PageArray) -> Int {
    let rc = isValidGupArgs(pages, flags, toSet: .get)
    if rc != 0 { return Int(rc) }
    return internalGetUserPagesFast(mm, start, nrPages, flags.union(.get), pages)
}

/// pin_user_pages_fast
@inline(__always)
public func pinUserPagesFast(_ mm: MMRef, _ start: UInt64, _ nrPages: Int, _ flags: GupFlags, _ pages: PageArray) -> Int {
    let rc = isValidGupArgs(pages, flags, toSet: .pin)
    if rc != 0 { return Int(rc) }
    mmSetHasPinnedFlag(mm)
    return internalGetUserPagesFast(mm, start, nrPages, flags.union(.pin), pages)
}

/// folio_add_pin: one more pin on an already pinned folio.
public func folioAddPin(_ k: KernelRef, _ folio: Folio) {
    if isZeroFolio(k, folio) { return }
    if folio.hasPincount {
        if folio.pincount < 1 { vmReport(k, folio.head, rule: "WARN_ON_ONCE(atomic_read(&folio->_pincount) < 1)", function: "folio_add_pin") }
        folio.refInc()
        dax_atomic_add(dax_page_pincount(folio.raw + 1), 1)
    } else {
        if !folio.maybeDmaPinned { vmReport(k, folio.head, rule: "WARN_ON_ONCE(!folio_maybe_dma_pinned(folio))", function: "folio_add_pin") }
        folio.refAdd(Int32(DAX_GUP_PIN_COUNTING_BIAS))
    }
}

// MARK: the safe API

extension MM {
    /// pin_user_pages (or _fast) returning the pages; throws the kernel's
    /// errno as `MMError.errno`. A short count is returned as is.
    public func pinPages(_ start: UInt64, count: Int, flags: GupFlags, fast: Bool = false) throws(MMError) -> [Page] {
        try grab(start, count: count, flags: flags, fast: fast, pin: true)
    }

    /// get_user_pages (or _fast): FOLL_GET references.
    public func getPages(_ start: UInt64, count: Int, flags: GupFlags, fast: Bool = false) throws(MMError) -> [Page] {
        try grab(start, count: count, flags: flags, fast: fast, pin: false)
    }

    /// unpin_user_pages(_dirty_lock)
    public func unpin(_ pages: [Page], dirty: Bool = false) {
        let arr = PageArray.allocate(capacity: max(pages.count, 1))
        defer { arr.deallocate() }
        for (i, p) in pages.enumerated() { arr[i] = p.raw }
        unpinUserPagesDirtyLock(kernel.ref, arr, pages.count, makeDirty: dirty)
    }

    /// put_page on FOLL_GET references.
    public func put(_ pages: [Page]) {
        for p in pages { folioPut(kernel.ref, p.folio) }
    }

    private func grab(_ start: UInt64, count: Int, flags: GupFlags, fast: Bool, pin: Bool) throws(MMError) -> [Page] {
        guard count > 0 else { return [] }
        let arr = PageArray.allocate(capacity: count)
        defer { arr.deallocate() }
        arr.initialize(repeating: nil, count: count)
        let rc: Int
        switch (pin, fast) {
        case (true, true): rc = pinUserPagesFast(ref, start, count, flags, arr)
        case (true, false): rc = pinUserPages(ref, start, count, flags, arr)
        case (false, true): rc = getUserPagesFast(ref, start, count, flags, arr)
        case (false, false): rc = getUserPages(ref, start, count, flags, arr)
        }
        if rc < 0 {
            throw .errno(Int32(-rc), "\(pin ? "pin" : "get")_user_pages\(fast ? "_fast" : "")(\(hex(start)), \(count)) failed")
        }
        return (0..<rc).map { Page(arr[$0]!) }
    }
}
