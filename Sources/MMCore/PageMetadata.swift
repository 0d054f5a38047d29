// include/linux/mm.h, page-flags.h, page_ref.h: views over struct dax_page.
//
// `Page` and `Folio` hold one pointer into the vmemmap. They are valid while
// the pgmap that populated the record is live (memremap_pages ..
// memunmap_pages); like struct page pointers in the kernel, nothing checks
// that at run time. Every accessor is inlined.
//
// The pointer itself (`raw`) and the pgmap pointer are visible inside the
// package only: code outside reads and changes a page through the accessors
// below, which keep the record's rules (atomic fields through the C
// accessors, -1 biased mapcounts, tails pointing at their head).

import CDaxMM

/// A struct page.
public struct Page: Hashable, @unchecked Sendable {
    /// The record in the vmemmap. Never nil; valid while its pgmap is live.
    @usableFromInline package let raw: UnsafeMutablePointer<dax_page>
    /// A page from a record pointer the port handed out (a `PageArray` slot
    /// filled by GUP). Precondition: `raw` points at a record of a live
    /// kernel's vmemmap.
    @inline(__always) public init(_ raw: UnsafeMutablePointer<dax_page>) { self.raw = raw }

    @inline(__always) public func advanced(by n: Int) -> Page { Page(raw + n) }

    // MARK: flags
    @inline(__always) public var flags: UInt64 { dax_load_u64(dax_page_flags(raw)) }
    @inline(__always) public func test(_ bit: dax_page_flag_bits) -> Bool { dax_test_bit(Int32(bit.rawValue), dax_page_flags(raw)) }
    @inline(__always) public func set(_ bit: dax_page_flag_bits) { dax_set_bit(Int32(bit.rawValue), dax_page_flags(raw)) }
    @inline(__always) public func clear(_ bit: dax_page_flag_bits) { dax_clear_bit(Int32(bit.rawValue), dax_page_flags(raw)) }

    @inline(__always) public var isHead: Bool { test(DAX_PG_head) }
    /// PageTail: compound_head has bit 0 set.
    @inline(__always) public var isTail: Bool { dax_load_u64(dax_page_compound_head(raw)) & DAX_COMPOUND_TAIL != 0 }
    @inline(__always) public var isReserved: Bool { test(DAX_PG_reserved) }
    /// PageAnonExclusive: this page of an anon folio is mapped by exactly
    /// one process that may write it without copying.
    @inline(__always) public var isAnonExclusive: Bool { test(DAX_PG_anon_exclusive) }
    @inline(__always) public var isZoneDevice: Bool { test(DAX_PG_zone_device) }

    /// compound_head(page).
    @inline(__always) public var compoundHead: Page {
        let h = dax_load_u64(dax_page_compound_head(raw))
        if h & DAX_COMPOUND_TAIL != 0 {
            return Page(UnsafeMutablePointer(bitPattern: UInt(h & ~DAX_COMPOUND_TAIL))!)
        }
        return self
    }

    /// page_folio(page).
    @inline(__always) public var folio: Folio { Folio(compoundHead.raw) }

    /// The page's own _refcount (tails must read 0).
    @inline(__always) public var refcountRaw: Int32 { dax_atomic_read(dax_page_refcount(raw)) }
    /// page_mapcount-ish: this page's _mapcount + 1.
    @inline(__always) public var pageMapcount: Int32 { dax_atomic_read(dax_page_mapcount(raw)) + 1 }

    /// page_pgmap(page): the folio's pgmap.
    @inline(__always) package var pgmap: UnsafeMutablePointer<dax_pgmap>? { folio.pgmap }

    /// Offset of this page inside its folio.
    @inline(__always) public var folioPageIndex: Int { raw - compoundHead.raw }
}

/// A struct folio: always the head page's record (asserted in debug builds).
public struct Folio: Hashable, @unchecked Sendable {
    /// The head page's record. Never nil; valid while its pgmap is live.
    @usableFromInline package let raw: UnsafeMutablePointer<dax_page>
    /// Precondition: `raw` is a head (or order-0) page record of a live
    /// kernel's vmemmap (asserted in debug builds). Outside the package a
    /// folio comes from `Page.folio`.
    @inline(__always) @usableFromInline package init(_ raw: UnsafeMutablePointer<dax_page>) {
        assert(dax_load_u64(dax_page_compound_head(raw)) & DAX_COMPOUND_TAIL == 0,
               "a folio is its head page's record, not a tail's")
        self.raw = raw
    }

    @inline(__always) public var head: Page { Page(raw) }
    /// folio_page(folio, n). Precondition: 0 <= n < nrPages.
    @inline(__always) public func page(_ n: Int) -> Page {
        assert(n >= 0 && n < nrPages, "folio_page: page index outside the folio")
        return Page(raw + n)
    }
    /// page[1] of a large folio (its order, mapcounts and pincount).
    @inline(__always) var second: UnsafeMutablePointer<dax_page> {
        assert(isLarge, "page[1] of a small folio belongs to another folio")
        return raw + 1
    }

    @inline(__always) public var isLarge: Bool { head.isHead }
    /// folio_order
    @inline(__always) public var order: Int {
        isLarge ? Int(dax_load_u64(dax_page_flags(second)) & DAX_PAGE_ORDER_MASK) : 0
    }
    /// folio_nr_pages
    @inline(__always) public var nrPages: Int { 1 << order }

    // MARK: refcount (page_ref.h)

    /// folio_ref_count
    @inline(__always) public var refCount: Int32 { dax_atomic_read(dax_page_refcount(raw)) }
    /// folio_set_count
    @inline(__always) public func setCount(_ v: Int32) { dax_atomic_set(dax_page_refcount(raw), v) }
    /// folio_ref_inc: no check (fs/dax takes idle folios 0 -> 1 with it).
    @inline(__always) public func refInc() { dax_atomic_add(dax_page_refcount(raw), 1) }
    /// folio_ref_add
    @inline(__always) public func refAdd(_ n: Int32) { dax_atomic_add(dax_page_refcount(raw), n) }
    /// folio_ref_sub_return
    @inline(__always) public func refSubReturn(_ n: Int32) -> Int32 { dax_atomic_sub_return(dax_page_refcount(raw), n) }
    /// folio_ref_try_add: add unless the count is 0.
    @inline(__always) public func refTryAdd(_ n: Int32) -> Bool { dax_atomic_add_unless(dax_page_refcount(raw), n, 0) }

    // MARK: mapcounts (all stored -1 biased)

    /// folio_mapcount: PTE/PMD/PUD entries mapping any part of the folio.
    @inline(__always) public var mapcount: Int32 {
        isLarge ? dax_atomic_read(dax_page_large_mapcount(second)) + 1 : dax_atomic_read(dax_page_mapcount(raw)) + 1
    }
    /// folio_entire_mapcount
    @inline(__always) public var entireMapcount: Int32 {
        isLarge ? dax_atomic_read(dax_page_entire_mapcount(second)) + 1 : 0
    }
    /// folio->_nr_pages_mapped
    @inline(__always) public var nrPagesMapped: Int32 { isLarge ? dax_atomic_read(dax_page_nr_pages_mapped(second)) : 0 }
    @inline(__always) public var isMapped: Bool { mapcount > 0 }

    // MARK: pins

    /// folio_has_pincount: every large folio on 64-bit.
    @inline(__always) public var hasPincount: Bool { isLarge }
    /// folio->_pincount (large folios only).
    @inline(__always) public var pincount: Int32 { isLarge ? dax_atomic_read(dax_page_pincount(second)) : 0 }
    /// folio_maybe_dma_pinned
    @inline(__always) public var maybeDmaPinned: Bool {
        if hasPincount { return pincount > 0 }
        return UInt32(bitPattern: refCount) >= UInt32(DAX_GUP_PIN_COUNTING_BIAS)
    }

    // MARK: pgmap, mapping

    @inline(__always) package var pgmap: UnsafeMutablePointer<dax_pgmap>? {
        UnsafeMutablePointer(bitPattern: UInt(raw.pointee.pgmap))
    }
    @inline(__always) public var isZoneDevice: Bool { head.isZoneDevice }
    /// folio_is_fsdax
    @inline(__always) public var isFsdax: Bool { pgmap?.pointee.type == Int32(DAX_MEMORY_DEVICE_FS_DAX.rawValue) }
    @inline(__always) public var mapping: UInt64 {
        get { raw.pointee.mapping }
        nonmutating set { raw.pointee.mapping = newValue }
    }
    /// index, or the fs-dax share count (a union in the kernel).
    @inline(__always) public var index: UInt64 {
        get { raw.pointee.index }
        nonmutating set { raw.pointee.index = newValue }
    }
    @inline(__always) public var share: UInt64 {
        get { raw.pointee.index }
        nonmutating set { raw.pointee.index = newValue }
    }
    /// folio_test_anon: folio->mapping carries PAGE_MAPPING_ANON.
    @inline(__always) public var isAnon: Bool { raw.pointee.mapping & DAX_PAGE_MAPPING_ANON != 0 }
    /// folio_anon_vma: the anon_vma an anon folio's mapping names (nil for
    /// a file folio).
    @inline(__always) public var anonVMA: AnonVMARef? {
        let m = raw.pointee.mapping
        guard m & DAX_PAGE_MAPPING_ANON != 0 else { return nil }
        return AnonVMARef(bitPattern: UInt(m & ~DAX_PAGE_MAPPING_ANON))
    }
    /// folio_test_partially_mapped (page[1]'s flag; false for a small folio)
    @inline(__always) public var isPartiallyMapped: Bool {
        isLarge && dax_test_bit(Int32(DAX_PG_partially_mapped.rawValue), dax_page_flags(second))
    }
    /// folio_test_locked
    @inline(__always) public var isLocked: Bool { head.test(DAX_PG_locked) }
    /// folio_test_dirty / set
    @inline(__always) public var isDirty: Bool { head.test(DAX_PG_dirty) }
    @inline(__always) public func markDirty() { head.set(DAX_PG_dirty) }
    @inline(__always) public func markAccessed() { head.set(DAX_PG_referenced) }
}

// MARK: compound pages (mm/page_alloc.c, mm/internal.h)

/// prep_compound_head: the page[1] fields of a new large folio.
@inline(__always)
func prepCompoundHead(_ head: Page, order: Int) {
    let p1 = head.raw + 1
    let f = dax_load_u64(dax_page_flags(p1)) & ~DAX_PAGE_ORDER_MASK
    dax_store_u64(dax_page_flags(p1), f | UInt64(order))
    dax_atomic_set(dax_page_large_mapcount(p1), -1)
    dax_atomic_set(dax_page_entire_mapcount(p1), -1)
    dax_atomic_set(dax_page_nr_pages_mapped(p1), 0)
    dax_atomic_set(dax_page_pincount(p1), 0)
}

/// prep_compound_tail: point a tail at its head.
@inline(__always)
func prepCompoundTail(_ head: Page, _ tail: Page) {
    dax_store_u64(dax_page_compound_head(tail.raw), UInt64(UInt(bitPattern: head.raw)) | DAX_COMPOUND_TAIL)
}

/// prep_compound_page: make head..head+2^order one folio.
public func prepCompoundPage(_ head: Page, order: Int) {
    head.set(DAX_PG_head)
    for i in 1..<(1 << order) { prepCompoundTail(head, head.advanced(by: i)) }
    prepCompoundHead(head, order: order)
}

/// folio_reset_order + clear_compound_head on every page: back to order-0
/// pages (fs/dax dax_folio_reset_order does this plus pgmap/mapping resets).
public func resetCompound(_ folio: Folio) {
    let n = folio.nrPages
    if folio.isLarge {
        let p1 = folio.raw + 1
        dax_store_u64(dax_page_flags(p1), dax_load_u64(dax_page_flags(p1)) & ~DAX_PAGE_ORDER_MASK)
        p1.pointee.large_mapcount = 0
        p1.pointee.entire_mapcount = 0
        p1.pointee.nr_pages_mapped = 0
        p1.pointee.pincount = 0
    }
    for i in 0..<n {
        // The order is already gone: address the pages from the head.
        let p = folio.head.advanced(by: i)
        p.clear(DAX_PG_head)
        dax_store_u64(dax_page_compound_head(p.raw), 0)
    }
}
