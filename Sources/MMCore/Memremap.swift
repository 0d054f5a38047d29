// mm/memremap.c and the ZONE_DEVICE parts of mm/mm_init.c: memremap_pages,
// memunmap_pages, get/put_dev_pagemap, free_zone_device_folio.

import CDaxMM
import DAXBase
import Synchronization

/// enum memory_type
public enum MemoryType: Int32, Sendable, CustomStringConvertible {
    case devicePrivate = 1
    case deviceCoherent = 2
    case fsDax = 3
    case generic = 4
    case p2pdma = 5

    public var description: String { memoryTypeName(rawValue) }

    /// Refcount of an idle page: 1 for GENERIC (device-dax stays one-based),
    /// 0 for the zero-based types.
    public var idleRefcount: Int32 { self == .generic ? 1 : 0 }

    /// Types whose pgmap reference is held per folio from creation on (all
    /// but PRIVATE and COHERENT, which take one per allocated folio).
    var refsPerFolioAtCreation: Bool { self != .devicePrivate && self != .deviceCoherent }
}

/// The callbacks of dev_pagemap_ops the port models. C function pointers, so
/// free_zone_device_folio can call them from the hot path.
public struct DevPagemapOps: Sendable {
    public var pageFree: dax_page_free_fn?
    public var migrateToRam: dax_migrate_to_ram_fn?
    public init(pageFree: dax_page_free_fn? = nil, migrateToRam: dax_migrate_to_ram_fn? = nil) {
        self.pageFree = pageFree; self.migrateToRam = migrateToRam
    }
}

/// struct dev_pagemap. The hot part lives in a C record (`ref`) that every
/// page of the map points at; this object owns it and its life cycle.
public final class DevPagemap: @unchecked Sendable {
    // @unchecked: `ref` is shared with the hot paths; its mutable fields are
    // atomics. `state` is guarded by `lock`.
    public let kernel: Kernel
    /// The record every page of the map points at (page->pgmap). Allocated
    /// in init, freed in deinit (after the pages are torn down), never
    /// reassigned; after init only its atomics (ref, lookups, dead, done)
    /// change.
    @usableFromInline package let ref: UnsafeMutablePointer<dax_pgmap>
    public let type: MemoryType
    public let ranges: [PhysicalRange]
    public let vmemmapShift: Int
    public let ops: DevPagemapOps
    /// The owner cookie PRIVATE/COHERENT require (passed to page_free).
    package let owner: UnsafeMutableRawPointer?

    enum State { case new, mapping, live, dying, unmapping, gone }
    private let state = Locked(State.new)
    /// Per range: whether memremap_pages deferred its struct pages (a slot
    /// of the kernel's deferred table describes it). Written while mapping,
    /// read after (ordered by `state`'s lock).
    private var rangeDeferred: [Bool] = []
    private static let ids = Atomic<UInt64>(1)

    public init(kernel: Kernel, type: MemoryType, ranges: [PhysicalRange], vmemmapShift: Int = 0,
                ops: DevPagemapOps = DevPagemapOps(), owner: UnsafeMutableRawPointer? = nil) {
        self.kernel = kernel
        self.type = type
        self.ranges = ranges
        self.vmemmapShift = vmemmapShift
        self.ops = ops
        self.owner = owner
        ref = .allocate(capacity: 1)
        ref.initialize(to: dax_pgmap())
        ref.pointee.kernel = kernel.ref
        ref.pointee.type = type.rawValue
        ref.pointee.vmemmap_shift = Int32(vmemmapShift)
        ref.pointee.nr_range = Int32(ranges.count)
        ref.pointee.page_free = ops.pageFree
        ref.pointee.migrate_to_ram = ops.migrateToRam
        ref.pointee.owner = owner
        ref.pointee.id = DevPagemap.ids.add(1, ordering: .relaxed).oldValue
        if let f = ranges.first, let l = ranges.last {
            ref.pointee.first_pfn = f.startPfn
            ref.pointee.end_pfn = l.endPfn
        }
    }

    deinit {
        let s = state.withLock { $0 }
        if s == .live || s == .dying || s == .unmapping {
            // Still mapped in the vmemmap: tear down without waiting so no
            // page points at freed memory. Holders are the caller's bug.
            teardown(upTo: ranges.count)
        }
        ref.deallocate()
    }

    /// pgmap_vmemmap_nr
    public var pagesPerFolio: Int { 1 << vmemmapShift }

    /// The number of folios over all ranges.
    public var nrFolios: Int { ranges.reduce(0) { $0 + Int($1.size >> UInt64(pageShift)) >> vmemmapShift } }

    /// Live references (percpu_ref count).
    public var refCount: Int64 { dax_atomic64_read(dax_pgmap_ref(ref)) }
    public var isLive: Bool { state.withLock { $0 == .live } }

    /// The first page of range `i`.
    public func firstPage(range i: Int = 0) -> Page { pfnToPage(kernel.ref, ranges[i].startPfn) }

    /// Page of a pfn inside this map.
    public func page(pfn: UInt64) -> Page? {
        guard ranges.contains(where: { pfn >= $0.startPfn && pfn < $0.endPfn }) else { return nil }
        return pfnToPage(kernel.ref, pfn)
    }

    /// Whether `pfn` (in range `i`) still waits for its struct pages: the
    /// range was deferred and its section has not been initialised. Such a
    /// page is idle by definition (nothing has looked it up).
    package func isDeferred(range i: Int, pfn: UInt64) -> Bool {
        rangeDeferred.count > i && rangeDeferred[i] && kernel.sectionState(pfn: pfn) == .deferred
    }

    /// The first folio head at or after `pfn` (a folio head of range `i`)
    /// whose struct pages are initialised, or the range's end: a walk over
    /// the map's folios skips deferred sections with this (every folio that
    /// meets a deferred section is uninitialised, whole).
    package func nextInitialisedFolio(range i: Int, from pfn: UInt64) -> UInt64 {
        let r = ranges[i]
        let nr = UInt64(pagesPerFolio), pps = UInt64(pagesPerSection)
        var p = pfn
        while p < r.endPfn && isDeferred(range: i, pfn: p) {
            let sectionEnd = (p / pps + 1) * pps
            p = r.startPfn + (sectionEnd - r.startPfn + nr - 1) / nr * nr
        }
        return min(p, r.endPfn)
    }

    // MARK: memremap_pages

    /// memremap_pages(pgmap, nid): validates, registers every range, populates
    /// their struct pages (initialised now, or deferred to their first
    /// lookup when the kernel defers them), and takes the creation
    /// references. Returns the first page of range 0 (the kernel returns its
    /// linear-map address), whose section this initialises. On a failure in
    /// range i, ranges 0..<i are undone.
    @discardableResult
    public func memremapPages(nid: Int = 0) throws(MMError) -> Page {
        try bindPages(nid: nid)
        return firstPage()
    }

    /// memremap_pages as dev_dax_probe calls it: only the error is looked at,
    /// so no struct page is touched (with deferred init, binding a range of
    /// any size initialises none).
    public func bindPages(nid: Int = 0) throws(MMError) {
        let current = state.withLock { s -> State in let c = s; if c == .new { s = .mapping }; return c }
        guard current == .new else { throw .errno(EINVAL, "pgmap \(ref.pointee.id) already mapped (\(current))") }
        var ok = false
        defer { if !ok { state.withLock { $0 = .new } } }
        guard !ranges.isEmpty else { throw .errno(EINVAL, "memremap_pages: nr_range == 0") }
        switch type {
        case .devicePrivate:
            guard ops.migrateToRam != nil, ops.pageFree != nil, owner != nil else {
                throw .errno(EINVAL, "MEMORY_DEVICE_PRIVATE needs migrate_to_ram, page_free and an owner")
            }
        case .deviceCoherent:
            guard ops.pageFree != nil, owner != nil else {
                throw .errno(EINVAL, "MEMORY_DEVICE_COHERENT needs page_free and an owner")
            }
        case .fsDax, .generic, .p2pdma:
            break
        }
        guard vmemmapShift >= 0, vmemmapShift <= pudOrder else {
            throw .errno(EINVAL, "vmemmap_shift \(vmemmapShift) > MAX_FOLIO_ORDER \(pudOrder)")
        }
        // percpu_ref_init: the initial reference, dropped by kill.
        dax_atomic64_set(dax_pgmap_ref(ref), 1)
        ref.pointee.dead = 0
        ref.pointee.done = 0
        rangeDeferred = []

        for (i, r) in ranges.enumerated() {
            do {
                try pagemapRange(r, index: i)
            } catch {
                teardown(upTo: i)
                dax_atomic64_set(dax_pgmap_ref(ref), 0)
                throw error
            }
        }
        ok = true
        state.withLock { $0 = .live }
    }

    /// pagemap_range: one range.
    private func pagemapRange(_ r: PhysicalRange, index: Int) throws(MMError) {
        let k = kernel.ref
        guard r.end > r.start else { throw .errno(EINVAL, "empty range \(r)") }
        // The conflict probe: get_dev_pagemap at the first and the last pfn
        // only, so only a live map there conflicts (WARN, -ENOMEM); a dying
        // one fails percpu_ref_tryget_live and is not seen.
        for pfn in [r.startPfn, r.endPfn - 1] {
            if let other = getDevPagemap(kernel, pfn: pfn) {
                vmReport(k, pfnToPage(k, pfn), rule: "WARN(1, \"Conflicting mapping in same section\")",
                         function: "pagemap_range")
                putDevPagemap(other)
                throw .errno(ENOMEM, "range \(r) conflicts with an existing dev_pagemap")
            }
        }
        if kernel.registry.intersectsSystemRAM(r.start...r.end) {
            throw .errno(ENXIO, "range \(r) intersects System RAM")
        }
        guard r.endPfn <= kernel.maxPfn else {
            throw .errno(EINVAL, "mhp_range_allowed: range \(r) beyond the \(kernel.physBits)-bit physical address space")
        }
        let subsection = UInt64(pmdSize)
        guard r.start % subsection == 0, (r.end + 1) % subsection == 0, r.end > r.start else {
            throw .errno(EINVAL, "range \(r) is not aligned to the 2 MiB sub-section size")
        }
        guard r.size % (UInt64(pageSize) << UInt64(vmemmapShift)) == 0 else {
            throw .errno(EINVAL, "range \(r) is not a whole number of order-\(vmemmapShift) folios")
        }
        // An overlap the probe missed (a dying map, or a live one strictly
        // inside the range) is found by the memory hot-add: its sub-sections
        // are still present, so sparse_add_section fails with -EEXIST. The
        // kernel has already stored the new map over the range in
        // pgmap_array and erases the whole range on that error, the other
        // map's pfns included; the port leaves the other map's registration
        // alone, so get_dev_pagemap keeps finding a map that is still live.
        let entry = Registry.Entry(startPfn: r.startPfn, endPfn: r.endPfn, pgmap: ref, owner: ObjectIdentifier(self))
        guard kernel.registry.insert(entry) else {
            throw .errno(EEXIST, "sparse_add_section: sub-sections of \(r) are already present")
        }
        let slot = try kernel.addPgmapSections(startPfn: r.startPfn, endPfn: r.endPfn, pgmap: ref,
                                               vmemmapShift: vmemmapShift, idleRefcount: type.idleRefcount)
        rangeDeferred.append(slot >= 0)
        if slot < 0 {
            memmapInitZoneDevice(k, ref, startPfn: r.startPfn, endPfn: r.endPfn, vmemmapShift: vmemmapShift,
                                 idleRefcount: type.idleRefcount)
        }
        if type.refsPerFolioAtCreation {
            dax_pgmap_get_many(ref, Int64((r.size >> UInt64(pageShift)) >> UInt64(vmemmapShift)))
        }
    }

    // MARK: memunmap_pages

    /// memunmap_pages: kill the reference, drop the creation references, wait
    /// for every other holder, then tear the ranges down.
    ///
    /// The kernel waits forever; the port waits `timeoutNanos` and then throws
    /// `.busy` naming who still holds references (the pgmap stays dying; call
    /// again to keep waiting).
    public func memunmapPages(timeoutNanos: Int64 = 5_000_000_000) throws(MMError) {
        let s = state.withLock { s -> State in let c = s; if c == .live { s = .dying }; return c }
        switch s {
        case .new, .mapping, .gone, .unmapping: throw .errno(EINVAL, "pgmap \(ref.pointee.id) is not mapped")
        case .live:
            __atomic_store_dead(ref)
            if type.refsPerFolioAtCreation {
                dax_pgmap_put_many(ref, Int64(nrFolios))
            }
            dax_pgmap_put_many(ref, 1)   // the initial reference (percpu_ref_kill)
        case .dying:
            break
        }
        let k = kernel.ref
        let ok = waitVarEvent(k, UnsafeRawPointer(ref), timeoutNanos: timeoutNanos) {
            dax_load_u32(dax_pgmap_done(ref)) != 0
        }
        guard ok else { throw .errno(EBUSY, holdersReport()) }
        let mine = state.withLock { s -> Bool in if s == .dying { s = .unmapping; return true }; return false }
        guard mine else { throw .errno(EINVAL, "pgmap \(ref.pointee.id) is being unmapped by another caller") }
        teardown(upTo: ranges.count)
        state.withLock { $0 = .gone }
    }

    /// Who holds references: lookups through get_dev_pagemap and, for
    /// PRIVATE/COHERENT, allocated folios.
    public func holdersReport() -> String {
        var s = "pgmap \(ref.pointee.id) (\(type)) still has \(refCount) reference(s)"
        let lookups = dax_atomic64_read(dax_pgmap_lookups(ref))
        if lookups > 0 { s += "; \(lookups) get_dev_pagemap lookup(s) not put" }
        if !type.refsPerFolioAtCreation {
            var busy: [String] = []
            for (i, r) in ranges.enumerated() {
                var pfn = nextInitialisedFolio(range: i, from: r.startPfn)
                while pfn < r.endPfn, busy.count < 8 {
                    let f = pfnToPage(kernel.ref, pfn).folio
                    if f.refCount > 0 { busy.append("pfn \(hex(pfn)) refcount \(f.refCount)") }
                    pfn = nextInitialisedFolio(range: i, from: pfn + UInt64(pagesPerFolio))
                }
            }
            if !busy.isEmpty { s += "; allocated folios: " + busy.joined(separator: ", ") }
        }
        return s
    }

    /// Undoes ranges 0..<n: unregisters the map, drops its deferred ranges,
    /// clears its initialised records in sections another pgmap still uses,
    /// and depopulates every other section of the ranges (their memory goes
    /// back with MADV_DONTNEED, so their records need no clearing). Records
    /// never initialised are not touched.
    private func teardown(upTo n: Int) {
        kernel.registry.remove(owner: ObjectIdentifier(self))
        let pps = UInt64(pagesPerSection)
        let done = Array(ranges.prefix(n))
        // Only a range's first and last section can hold another pgmap's
        // pages (pgmaps do not overlap).
        var edges: [UInt64] = []
        for r in done { edges += [r.startPfn / pps, (r.endPfn - 1) / pps] }
        let states = kernel.dropDeferredRanges(of: ref, statesOf: edges)
        for (i, r) in done.enumerated() {
            let first = r.startPfn / pps, last = (r.endPfn - 1) / pps
            var keep: [UInt64: UInt8] = [:]
            for (e, section) in [first, last].enumerated() {
                let s0 = section * pps
                guard kernel.registry.othersOverlap(startPfn: s0, endPfn: s0 + pps, except: ObjectIdentifier(self))
                else { continue }
                keep[section] = states[2 * i + e]
            }
            for (section, st) in keep where st != sectionAbsent {
                let deferred = i < rangeDeferred.count && rangeDeferred[i]
                guard !deferred || st == sectionPresent else { continue }
                let a = max(r.startPfn, section * pps), b = min(r.endPfn, (section + 1) * pps)
                UnsafeMutableRawPointer(kernel.ref.pointee.vmemmap + Int(a))
                    .initializeMemory(as: UInt8.self, repeating: 0, count: Int(b - a) * MemoryLayout<dax_page>.stride)
            }
            let lo = keep[first] != nil ? first + 1 : first
            let hi = keep[last] != nil ? last : last + 1
            if lo < hi { kernel.depopulateSections(firstSection: lo, lastSection: hi - 1) }
        }
    }
}

/// memmap_init_zone_device over the whole folios [startPfn, endPfn) of one
/// pgmap range: __init_zone_device_page on every page and, when the order is
/// above 0, memmap_init_compound per folio. Reaches the records through the
/// vmemmap directly, never pfn_to_page: the deferred-init slow path calls it
/// holding section_lock, and it allocates nothing.
func memmapInitZoneDevice(_ k: KernelRef, _ pgmap: UnsafeMutablePointer<dax_pgmap>, startPfn: UInt64, endPfn: UInt64,
                          vmemmapShift: Int, idleRefcount: Int32) {
    let nr = 1 << vmemmapShift
    var pfn = startPfn
    while pfn < endPfn {
        let head = Page(k.pointee.vmemmap + Int(pfn))
        initZoneDevicePage(head, pgmap, idleRefcount: idleRefcount)
        if nr > 1 {
            // memmap_init_compound
            head.set(DAX_PG_head)
            for i in 1..<nr {
                let tail = head.advanced(by: i)
                initZoneDevicePage(tail, pgmap, idleRefcount: idleRefcount)
                prepCompoundTail(head, tail)
                dax_atomic_set(dax_page_refcount(tail.raw), 0)
                if i == 1 { prepCompoundHead(head, order: vmemmapShift) }
            }
        }
        pfn += UInt64(nr)
    }
}

/// __init_zone_device_page
@inline(__always)
private func initZoneDevicePage(_ page: Page, _ pgmap: UnsafeMutablePointer<dax_pgmap>, idleRefcount: Int32) {
    let p = page.raw
    p.initialize(to: dax_page())
    p.pointee.refcount = 1           // init_page_count
    p.pointee.mapcount = -1          // page_mapcount_reset
    p.pointee.flags = (1 << UInt64(DAX_PG_reserved.rawValue)) | (1 << UInt64(DAX_PG_zone_device.rawValue))
    p.pointee.pgmap = UInt64(UInt(bitPattern: pgmap))
    // Zero-based types start free at 0; GENERIC stays at 1.
    p.pointee.refcount = idleRefcount
}

@inline(__always)
private func __atomic_store_dead(_ p: UnsafeMutablePointer<dax_pgmap>) {
    dax_store_u32(dax_pgmap_dead(p), 1)
}

// MARK: get_dev_pagemap / put_dev_pagemap

/// get_dev_pagemap(pfn, cached): the live pgmap covering `pfn`, with a
/// reference, or nil if none or it is dying. A `cached` pgmap that covers the
/// pfn is returned with no new reference; one that does not is put.
package func getDevPagemap(_ kernel: Kernel, pfn: UInt64, cached: UnsafeMutablePointer<dax_pgmap>? = nil)
    -> UnsafeMutablePointer<dax_pgmap>?
{
    if let c = cached {
        if pfn >= c.pointee.first_pfn && pfn < c.pointee.end_pfn && kernel.registry.lookup(pfn: pfn) == c { return c }
        putDevPagemap(c)
    }
    guard let p = kernel.registry.lookup(pfn: pfn), dax_pgmap_tryget_live(p) else { return nil }
    dax_atomic64_add(dax_pgmap_lookups(p), 1)
    return p
}

/// put_dev_pagemap (NULL-safe).
package func putDevPagemap(_ p: UnsafeMutablePointer<dax_pgmap>?) {
    guard let p else { return }
    dax_atomic64_add(dax_pgmap_lookups(p), -1)
    dax_pgmap_put_many(p, 1)
}

/// zone_device_page_init (6.15): a PRIVATE/COHERENT driver allocates a free
/// page: takes a pgmap reference, sets the refcount to 1 and locks the page.
/// On a dying map percpu_ref_tryget_live fails and the kernel WARNs but goes
/// on: the page is still set to 1 and locked, with no pgmap reference behind
/// it (its free will put one it never took). Returns whether the reference
/// was taken.
@discardableResult
public func zoneDevicePageInit(_ k: KernelRef, _ page: Page) -> Bool {
    let live = page.pgmap.map { dax_pgmap_tryget_live($0) } ?? false
    if !live {
        vmReport(k, page, rule: "WARN_ON_ONCE(!percpu_ref_tryget_live(&pgmap->ref))", function: "zone_device_page_init")
    }
    if page.folio.refCount != 0 {
        vmReport(k, page, rule: "VM_WARN_ON_ONCE(folio_ref_count(folio))", function: "zone_device_page_init")
    }
    page.folio.setCount(1)
    page.set(DAX_PG_locked)
    return live
}

// MARK: free_zone_device_folio

/// free_zone_device_folio: the refcount reached 0.
public func freeZoneDeviceFolio(_ k: KernelRef, _ folio: Folio) {
    guard let pgmap = folio.pgmap else {
        vmReport(k, folio.head, rule: "WARN_ON_ONCE(!pgmap)", function: "free_zone_device_folio")
        return
    }
    let type = pgmap.pointee.type
    // FS DAX clears mapping when the share count drops; device DAX keeps it.
    if type != Int32(DAX_MEMORY_DEVICE_FS_DAX.rawValue) && type != Int32(DAX_MEMORY_DEVICE_GENERIC.rawValue) {
        folio.mapping = 0
    }
    switch type {
    case Int32(DAX_MEMORY_DEVICE_PRIVATE.rawValue), Int32(DAX_MEMORY_DEVICE_COHERENT.rawValue):
        guard let free = pgmap.pointee.page_free else {
            vmReport(k, folio.head, rule: "WARN_ON_ONCE(!pgmap->ops->page_free)", function: "free_zone_device_folio")
            return
        }
        free(folio.raw, pgmap.pointee.owner)
        putDevPagemap(pgmapDroppingLookup: pgmap)
    case Int32(DAX_MEMORY_DEVICE_GENERIC.rawValue):
        // Reset as if the folio had never been freed: device DAX is one-based.
        folio.setCount(1)
    case Int32(DAX_MEMORY_DEVICE_FS_DAX.rawValue):
        wakeUpVar(k, UnsafeRawPointer(folio.raw))
    case Int32(DAX_MEMORY_DEVICE_PCI_P2PDMA.rawValue):
        guard let free = pgmap.pointee.page_free else {
            vmReport(k, folio.head, rule: "WARN_ON_ONCE(!pgmap->ops->page_free)", function: "free_zone_device_folio")
            return
        }
        free(folio.raw, pgmap.pointee.owner)
    default:
        vmReport(k, folio.head, rule: "unknown pgmap type", function: "free_zone_device_folio")
    }
}

/// The per-allocation pgmap reference of PRIVATE/COHERENT folios (taken by
/// zone_device_page_init, not counted as a get_dev_pagemap lookup).
@inline(__always)
func putDevPagemap(pgmapDroppingLookup p: UnsafeMutablePointer<dax_pgmap>) {
    dax_pgmap_put_many(p, 1)
}
