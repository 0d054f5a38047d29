// mm/page_alloc.c and include/linux/highmem.h: the page allocator for the
// port's ordinary memory (the one zone of System RAM that anonymous and
// copy-on-write folios come from) and the direct map (page_address /
// kmap_local_page) that lets the port read and write the bytes of a page.
//
// The zone is a buddy allocator (__rmqueue_smallest / expand /
// __free_one_page) over C records: free lists linked through a side array,
// the order of a free block in its head page's record (page->private), the
// buddy page type in its mapcount word. It allocates nothing and takes one
// spinlock (zone->lock), so the fault path may call it from a signal
// handler. Its memory is a memfd mapped once (MAP_NORESERVE): a page is
// resident only once written, and a runtime can map a page of it into a
// window the way it maps a device range.
//
// Public functions here take raw records (KernelRef, Page, Folio); their
// preconditions are in Kernel.swift ("The raw-record API").

import CDaxMM
import DAXBase

#if canImport(Glibc)
import Glibc
#endif

public typealias RAMRef = UnsafeMutablePointer<dax_ram>

/// The pfns of the port's fixed RAM layout: pfn 0 is the zero page, pfns
/// [hugeZeroPfn, hugeZeroPfn + HPAGE_PMD_NR) the huge zero folio, and the
/// allocator's zone starts at `ramStartPfn` (4 MiB).
public let hugeZeroPfn: UInt64 = UInt64(hpagePmdNr)
public let ramStartPfn: UInt64 = UInt64(2 * hpagePmdNr)
/// Pages per max-order block (MAX_ORDER_NR_PAGES): the zone grows by these.
public let maxOrderNrPages = 1 << Int(DAX_MAX_PAGE_ORDER)

// MARK: the zone's lists

/// PGTY_buddy in the mapcount word (DAX_PAGE_TYPE_BUDDY).
public let pageTypeBuddy = Int32(bitPattern: 0xf000_0000)

@inline(__always) func ramLink(_ z: RAMRef, _ pfn: UInt64) -> UnsafeMutablePointer<UInt64> {
    z.pointee.links + Int(pfn - z.pointee.start_pfn) * 2
}

/// PageBuddy: the page heads a free block.
@inline(__always) func pageBuddy(_ page: Page) -> Bool {
    dax_atomic_read(dax_page_mapcount(page.raw)) == pageTypeBuddy
}

/// buddy_order: the order of a free block (page->private).
@inline(__always) func buddyOrder(_ page: Page) -> Int { Int(page.raw.pointee.index) }

/// __add_to_free_list: `pfn` heads a free block of `order` (zone lock held).
@inline(__always)
func addToFreeList(_ k: KernelRef, _ z: RAMRef, _ pfn: UInt64, _ order: Int) {
    let page = Page(k.pointee.vmemmap + Int(pfn))
    page.raw.pointee.index = UInt64(order)                          // set_buddy_order
    dax_atomic_set(dax_page_mapcount(page.raw), pageTypeBuddy) // __SetPageBuddy
    let area = dax_ram_free_area(z) + order
    let head = area.pointee.head
    let l = ramLink(z, pfn)
    l[0] = head
    l[1] = 0
    if head != 0 { ramLink(z, head - 1)[1] = pfn + 1 }
    area.pointee.head = pfn + 1
    area.pointee.nr_free += 1
}

/// __del_page_from_free_list (zone lock held).
@inline(__always)
func delFromFreeList(_ k: KernelRef, _ z: RAMRef, _ pfn: UInt64, _ order: Int) {
    let page = Page(k.pointee.vmemmap + Int(pfn))
    let l = ramLink(z, pfn)
    let next = l[0], prev = l[1]
    if prev != 0 { ramLink(z, prev - 1)[0] = next } else { (dax_ram_free_area(z) + order).pointee.head = next }
    if next != 0 { ramLink(z, next - 1)[1] = prev }
    l[0] = 0
    l[1] = 0
    (dax_ram_free_area(z) + order).pointee.nr_free -= 1
    dax_atomic_set(dax_page_mapcount(page.raw), -1)   // __ClearPageBuddy
    page.raw.pointee.index = 0                        // set_page_private(page, 0)
}

/// Initialises the struct pages of the zone's next max-order block and
/// frees it to the lists (deferred_init_memmap + __free_pages_core). False
/// when the zone is fully grown. Zone lock held.
@inline(__always)
func ramGrow(_ k: KernelRef, _ z: RAMRef) -> Bool {
    let start = z.pointee.grown_pfn
    guard start + UInt64(maxOrderNrPages) <= z.pointee.end_pfn else { return false }
    for i in 0..<maxOrderNrPages {
        // __init_single_page: refcount 0 (free), mapcount -1, no flags.
        k.pointee.vmemmap[Int(start) + i] = dax_page(flags: 0, compound_head: 0, refcount: 0, mapcount: -1,
                                                     pgmap: 0, mapping: 0, index: 0, large_mapcount: 0,
                                                     entire_mapcount: 0, pincount: 0, nr_pages_mapped: 0)
    }
    z.pointee.grown_pfn = start + UInt64(maxOrderNrPages)
    addToFreeList(k, z, start, Int(DAX_MAX_PAGE_ORDER))
    dax_atomic64_add(dax_ram_nr_free(z), Int64(maxOrderNrPages))
    return true
}

/// __rmqueue_smallest + expand: a free block of exactly `order`, split
/// from the smallest larger one. nil: none free and the zone cannot grow.
/// Zone lock held.
@inline(__always)
func rmqueueSmallest(_ k: KernelRef, _ z: RAMRef, _ order: Int) -> UInt64? {
    var current = order
    while current <= Int(DAX_MAX_PAGE_ORDER) {
        let head = (dax_ram_free_area(z) + current).pointee.head
        if head != 0 {
            let pfn = head - 1
            delFromFreeList(k, z, pfn, current)
            // expand: the upper halves go back, one order down each time.
            var high = current
            while high > order {
                high -= 1
                addToFreeList(k, z, pfn + (UInt64(1) << UInt64(high)), high)
            }
            return pfn
        }
        current += 1
        if current > Int(DAX_MAX_PAGE_ORDER) && ramGrow(k, z) { current = order }
    }
    return nil
}

/// __free_one_page: merges the block with its free buddies as far as they
/// go, then lists it. Zone lock held.
@inline(__always)
func freeOnePage(_ k: KernelRef, _ z: RAMRef, _ startPfn: UInt64, _ startOrder: Int) {
    var pfn = startPfn
    var order = startOrder
    let base = z.pointee.start_pfn
    while order < Int(DAX_MAX_PAGE_ORDER) {
        // __find_buddy_pfn, relative to the zone's (max-order aligned) start.
        let buddy = base + ((pfn - base) ^ (UInt64(1) << UInt64(order)))
        guard buddy < z.pointee.grown_pfn else { break }
        let bp = Page(k.pointee.vmemmap + Int(buddy))
        // page_is_buddy: free, and a block of the same order.
        guard pageBuddy(bp), buddyOrder(bp) == order else { break }
        delFromFreeList(k, z, buddy, order)
        pfn = min(pfn, buddy)
        order += 1
    }
    addToFreeList(k, z, pfn, order)
}

// MARK: allocation (folio_alloc, vma_alloc_folio)

/// __GFP_ZERO's clearing of a new block: through the direct map when there
/// is one (a punched hole in the memfd for a block of 2 MiB or more, which
/// also gives the memory back; memset otherwise).
@inline(__always)
func clearBlock(_ z: RAMRef, _ pfn: UInt64, _ order: Int) {
    guard let base = z.pointee.direct_map else { return }
    let off = Int(pfn - z.pointee.start_pfn) << pageShift
    let len = pageSize << order
    if order >= pmdOrder && z.pointee.memfd >= 0
        && dax_punch_hole(z.pointee.memfd, Int64(off), Int64(len)) == 0 {
        return
    }
    memset(base + off, 0, len)
}

/// folio_alloc / vma_alloc_folio(GFP_HIGHUSER_MOVABLE [| __GFP_ZERO], order):
/// a new folio of 2^order pages from the zone with a refcount of 1, a
/// compound folio when order > 0 (prep_compound_page), its pages cleared
/// when `zero`. nil when the zone is exhausted (the fault's VM_FAULT_OOM).
/// Allocation-free and lock-bounded: callable from the fault path.
@inline(__always)
public func folioAlloc(_ k: KernelRef, order: Int, zero: Bool) -> Folio? {
    guard let z = k.pointee.ram, order >= 0, order <= Int(DAX_MAX_PAGE_ORDER) else { return nil }
    dax_spin_lock(dax_ram_lock(z))
    let got = rmqueueSmallest(k, z, order)
    dax_spin_unlock(dax_ram_lock(z))
    guard let pfn = got else {
        dax_atomic64_add(&z.pointee.nr_alloc_failed, 1)
        return nil
    }
    let n = 1 << order
    dax_atomic64_add(dax_ram_nr_free(z), -Int64(n))
    dax_atomic64_add(dax_ram_nr_allocated(z), Int64(n))
    let head = Page(k.pointee.vmemmap + Int(pfn))
    // post_alloc_hook / prep_new_page: clean records, refcount 1.
    for i in 0..<n {
        let p = head.raw + i
        dax_store_u64(dax_page_flags(p), 0)
        dax_store_u64(dax_page_compound_head(p), 0)
        p.pointee.mapping = 0
        p.pointee.index = 0
        dax_atomic_set(dax_page_mapcount(p), -1)
    }
    if order > 0 { prepCompoundPage(head, order: order) }
    if zero { clearBlock(z, pfn, order) }
    let folio = Folio(head.raw)
    folio.setCount(1)
    return folio
}

/// free_unref_folios / __free_pages_ok for a RAM folio whose last reference
/// went: the records are reset (page->mapping and the anon state cleared,
/// the compound pages broken up: free_pages_prepare) and the block goes
/// back to the lists, merged with its buddies. Out of line: every
/// folio_put inlines the test that leads here.
@inline(never)
func freeRAMFolio(_ k: KernelRef, _ folio: Folio) {
    guard let z = k.pointee.ram else { return }
    let order = folio.order
    let n = 1 << order
    let pfn = UInt64(folio.raw - k.pointee.vmemmap)
    if folio.mapcount > 0 || folio.pincount > 0 {
        vmReport(k, folio.head, rule: "bad_page: a freed folio is still mapped or pinned", function: "free_pages_prepare")
    }
    if order > 0 { resetCompound(folio) }
    for i in 0..<n {
        let p = folio.raw + i
        dax_store_u64(dax_page_flags(p), 0)
        p.pointee.mapping = 0
        p.pointee.index = 0
        dax_atomic_set(dax_page_mapcount(p), -1)
        dax_atomic_set(dax_page_refcount(p), 0)
    }
    dax_spin_lock(dax_ram_lock(z))
    freeOnePage(k, z, pfn, order)
    dax_spin_unlock(dax_ram_lock(z))
    dax_atomic64_add(dax_ram_nr_free(z), Int64(n))
    dax_atomic64_add(dax_ram_nr_allocated(z), -Int64(n))
}

/// Whether `pfn` belongs to the allocator's zone (page_zone(page) is the
/// zone of ordinary memory).
@inline(__always)
public func pfnInRAM(_ k: KernelRef, _ pfn: UInt64) -> Bool {
    guard let z = k.pointee.ram else { return false }
    return pfn >= z.pointee.start_pfn && pfn < z.pointee.grown_pfn
}

// MARK: the direct map (page_address, kmap_local_page)

/// page_address / kmap_local_page: the bytes of `pfn`'s page, or nil when
/// the port has no mapping of them (a device range no runtime registered:
/// the model then carries no data, and copies move none).
@inline(__always)
public func pfnAddress(_ k: KernelRef, _ pfn: UInt64) -> UnsafeMutableRawPointer? {
    if let z = k.pointee.ram, pfn >= z.pointee.start_pfn, pfn < z.pointee.end_pfn, let base = z.pointee.direct_map {
        return UnsafeMutableRawPointer(base + (Int(pfn - z.pointee.start_pfn) << pageShift))
    }
    let maps = dax_kernel_direct_map(k)!
    for i in 0..<Int(DAX_DIRECT_MAPS) {
        let m = maps + i
        guard let addr = dax_load_ptr_u8(&m.pointee.addr) else { continue }
        if pfn >= m.pointee.start_pfn && pfn < m.pointee.end_pfn {
            return UnsafeMutableRawPointer(addr + (Int(pfn - m.pointee.start_pfn) << pageShift))
        }
    }
    return nil
}

/// copy_user_highpage / copy_mc_user_highpage: the bytes of `src` into
/// `dst`. The zero pages (small and huge) read as zeroes; a page the port
/// has no bytes for (no direct map) leaves `dst` as allocated (cleared).
/// Returns false when the source had no bytes to copy.
@discardableResult @inline(__always)
public func copyUserHighpage(_ k: KernelRef, dst: Page, src: Page) -> Bool {
    let spfn = pageToPfn(k, src)
    guard let d = pfnAddress(k, pageToPfn(k, dst)) else { return false }
    if isZeroPfn(spfn) || isHugeZeroPfn(k, spfn) {
        memset(d, 0, pageSize)
        return true
    }
    guard let s = pfnAddress(k, spfn) else { return false }
    memcpy(d, s, pageSize)
    return true
}

/// clear_user_highpage
@inline(__always)
public func clearUserHighpage(_ k: KernelRef, _ page: Page) {
    if let d = pfnAddress(k, pageToPfn(k, page)) { memset(d, 0, pageSize) }
}

/// is_huge_zero_pfn: a page of the huge zero folio.
@inline(__always)
public func isHugeZeroPfn(_ k: KernelRef, _ pfn: UInt64) -> Bool {
    let h = k.pointee.huge_zero_pfn
    return h != 0 && pfn >= h && pfn < h + UInt64(hpagePmdNr)
}

// MARK: the safe API

/// The allocator's counters.
public struct RAMStats: Sendable, Equatable {
    /// Pages of the zone (its capacity).
    public var totalPages: Int64
    /// NR_FREE_PAGES: free pages among those the zone has initialised.
    public var freePages: Int64
    /// Pages handed out and not yet freed.
    public var allocatedPages: Int64
    /// Allocations refused since boot.
    public var failedAllocations: Int64
    /// Free blocks per order (the buddy lists, /proc/buddyinfo).
    public var freeBlocks: [Int64]
}

extension Kernel {
    /// The page allocator's zone, or nil when this kernel has no ordinary
    /// memory (`ramPages: 0`).
    public var ramStats: RAMStats? {
        guard let z = ref.pointee.ram else { return nil }
        dax_spin_lock(dax_ram_lock(z))
        defer { dax_spin_unlock(dax_ram_lock(z)) }
        let areas = dax_ram_free_area(z)!
        return RAMStats(totalPages: Int64(z.pointee.end_pfn - z.pointee.start_pfn),
                        freePages: dax_atomic64_read(dax_ram_nr_free(z)),
                        allocatedPages: dax_atomic64_read(dax_ram_nr_allocated(z)),
                        failedAllocations: dax_atomic64_read(&z.pointee.nr_alloc_failed),
                        freeBlocks: (0..<Int(DAX_NR_PAGE_ORDERS)).map { areas[$0].nr_free })
    }

    /// The physical range of the allocator's zone.
    public var ramRange: PhysicalRange? {
        guard let z = ref.pointee.ram else { return nil }
        return PhysicalRange(start: z.pointee.start_pfn << UInt64(pageShift),
                             size: (z.pointee.end_pfn - z.pointee.start_pfn) << UInt64(pageShift))
    }

    /// The zone's memfd and the byte offset of `pfn` in it (for a runtime
    /// that maps anon pages into a window). nil outside the zone.
    public func ramFileOffset(pfn: UInt64) -> (fd: Int32, offset: UInt64)? {
        guard let z = ref.pointee.ram, z.pointee.memfd >= 0,
              pfn >= z.pointee.start_pfn, pfn < z.pointee.end_pfn else { return nil }
        return (z.pointee.memfd, (pfn - z.pointee.start_pfn) << UInt64(pageShift))
    }

    /// Registers `bytes` as the direct map of the physical range `range`
    /// (a device range the caller has mapped), so copies and clears of its
    /// pages reach the memory. The mapping must stay valid until
    /// `unregisterDirectMap(range:)`. Throws ENOSPC when every slot is used.
    public func registerDirectMap(range: PhysicalRange, bytes: UnsafeMutableRawPointer) throws(MMError) {
        let lock = dax_kernel_direct_map_lock(ref)
        dax_spin_lock(lock)
        defer { dax_spin_unlock(lock) }
        let maps = dax_kernel_direct_map(ref)!
        guard let i = (0..<Int(DAX_DIRECT_MAPS)).first(where: { maps[$0].addr == nil }) else {
            throw .errno(ENOSPC, "direct map: all \(DAX_DIRECT_MAPS) slots in use")
        }
        maps[i].start_pfn = range.startPfn
        maps[i].end_pfn = range.endPfn
        dax_store_ptr_u8(&maps[i].addr, bytes.assumingMemoryBound(to: UInt8.self))
    }

    /// Removes the direct map of `range` (no page of it may be copied any more).
    public func unregisterDirectMap(range: PhysicalRange) {
        let lock = dax_kernel_direct_map_lock(ref)
        dax_spin_lock(lock)
        defer { dax_spin_unlock(lock) }
        let maps = dax_kernel_direct_map(ref)!
        for i in 0..<Int(DAX_DIRECT_MAPS) where maps[i].addr != nil && maps[i].start_pfn == range.startPfn {
            dax_store_ptr_u8(&maps[i].addr, nil)
        }
    }

    /// Sets up the zone of `pages` pages (a multiple of the max-order block)
    /// at `ramStartPfn`, backed by a memfd, and the huge zero folio. Called
    /// once from init.
    func setUpRAM(pages: Int) throws(MMError) {
        let k = ref
        // The zero pages: pfn 0 (set up by init) and the huge zero folio.
        try populateSections(startPfn: hugeZeroPfn, endPfn: hugeZeroPfn + UInt64(hpagePmdNr))
        let hz = Page(k.pointee.vmemmap + Int(hugeZeroPfn))
        for i in 0..<hpagePmdNr {
            let p = hz.raw + i
            p.pointee = dax_page()
            p.pointee.mapcount = -1
            p.pointee.flags = 1 << UInt64(DAX_PG_reserved.rawValue)
        }
        prepCompoundPage(hz, order: pmdOrder)
        Folio(hz.raw).setCount(1)   // the huge zero folio's permanent reference
        k.pointee.huge_zero_pfn = hugeZeroPfn
        k.pointee.thp_enabled = DAX_THP_ALWAYS.rawValue   // Kconfig's default, and Debian's
        k.pointee.thp_use_zero_page = 1
        registry.addSystemRAM(0...(ramStartPfn << UInt64(pageShift)) - 1)
        guard pages > 0 else { return }
        let n = (pages + maxOrderNrPages - 1) / maxOrderNrPages * maxOrderNrPages
        let end = ramStartPfn + UInt64(n)
        guard end <= maxPfn else {
            throw .errno(EINVAL, "\(n) pages of ordinary memory do not fit below max pfn \(hex(maxPfn))")
        }
        try populateSections(startPfn: ramStartPfn, endPfn: end)
        let z = RAMRef.allocate(capacity: 1)
        z.initialize(to: dax_ram())
        z.pointee.start_pfn = ramStartPfn
        z.pointee.end_pfn = end
        z.pointee.grown_pfn = ramStartPfn
        z.pointee.memfd = -1
        let linkBytes = n * 2 * MemoryLayout<UInt64>.stride
        guard let links = mmap(nil, linkBytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0),
              links != MAP_FAILED else {
            z.deallocate()
            throw .errno(ENOMEM, "cannot reserve the page allocator's free lists")
        }
        z.pointee.links = links.assumingMemoryBound(to: UInt64.self)
        let bytes = n << pageShift
        let fd = dax_mm_memfd_create("daxmm-ram")
        if fd >= 0, ftruncate(fd, off_t(bytes)) == 0,
           let m = mmap(nil, bytes, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_NORESERVE, fd, 0), m != MAP_FAILED {
            z.pointee.memfd = fd
            z.pointee.direct_map = m.assumingMemoryBound(to: UInt8.self)
        } else if fd >= 0 {
            close(fd)
        }
        registry.addSystemRAM((ramStartPfn << UInt64(pageShift))...((end << UInt64(pageShift)) - 1))
        k.pointee.ram = z
    }

    /// Frees what setUpRAM made.
    func tearDownRAM() {
        guard let z = ref.pointee.ram else { return }
        let n = Int(z.pointee.end_pfn - z.pointee.start_pfn)
        munmap(z.pointee.links, n * 2 * MemoryLayout<UInt64>.stride)
        if let m = z.pointee.direct_map { munmap(m, n << pageShift) }
        if z.pointee.memfd >= 0 { close(z.pointee.memfd) }
        z.deallocate()
        ref.pointee.ram = nil
    }
}
