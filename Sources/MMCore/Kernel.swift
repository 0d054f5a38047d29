// One instance of the ported mm: the vmemmap (struct page array), sparse
// sections, node counters, debug reports and the page-table page pool.
//
// The kernel has one of each; the port can have several (tests run many side
// by side), so every hot-path function reaches them through a `KernelRef`, a
// pointer to the C record `struct dax_kernel`. The `Kernel` class owns that
// record and the memory behind it.
//
// The raw-record API. The owning classes keep their record pointers
// (`Kernel.ref`, `MM.ref`, `DevPagemap.ref`, `MappedFile.ref`,
// `VMOperations.ref`, `Page.raw`) inside the package; outside it a record is
// lent only for the length of a closure (`withUnsafeRecord`). The hot-path
// free functions that take records (`KernelRef`, `MMRef`, `VMARef`,
// `VMFaultRef`, `EntryPtr`, `PageArray`) stay public so a fault or pin can
// run with no Swift object on the path; their common preconditions:
//   - a `KernelRef`/`MMRef` comes from `withUnsafeRecord` and is used only
//     inside that closure (the owning object is kept alive for it);
//   - a `VMARef` is valid while its MM's mmap_lock is held (`lockRead`) and
//     the VMA is not unmapped; `EntryPtr`s from `walk` likewise, and only
//     under the page-table lock the function documents;
//   - a `PageArray` holds `nrPages` slots the caller allocated; the pages in
//     it stay valid while the caller holds the references GUP took;
//   - mm's locking rules apply as in the kernel (mmap_lock for read around
//     faults and GUP, for write around VMA changes).
// None of them allocates, and none builds a String: an error is a negative
// errno or VM_FAULT_* bits, and a failed debug check is a record in the
// report ring (Debug.swift), turned into text only by the safe API.

import CDaxMM
import DAXBase
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

public typealias KernelRef = UnsafeMutablePointer<dax_kernel>

public let pageShift = 12
public let pageSize = 1 << pageShift
public let pmdShift = 21
public let pudShift = 30
public let pmdSize = 1 << pmdShift
public let pudSize = 1 << pudShift
/// HPAGE_PMD_ORDER / HPAGE_PUD_ORDER on x86-64.
public let pmdOrder = pmdShift - pageShift
public let pudOrder = pudShift - pageShift
/// HPAGE_PMD_NR / HPAGE_PUD_NR.
public let hpagePmdNr = 1 << pmdOrder
public let hpagePudNr = 1 << pudOrder
public let sectionShift = 27
public let pagesPerSection = 1 << (sectionShift - pageShift)
/// The largest physical address space a `Kernel` covers (MAX_PHYSMEM_BITS
/// with 5-level paging on x86-64).
public let maxPhysBits = 52
/// The page allocator's default zone: 4 MiB .. 128 MiB (section 0).
public let defaultRAMPages = pagesPerSection - 2 * (1 << 9)

/// A section's state byte (enum dax_section_state).
@usableFromInline let sectionAbsent = UInt8(DAX_SECTION_ABSENT.rawValue)
@usableFromInline let sectionPresent = UInt8(DAX_SECTION_PRESENT.rawValue)
@usableFromInline let sectionPresentDeferred = UInt8(DAX_SECTION_PRESENT_DEFERRED.rawValue)

/// What a sparse section holds.
public enum SectionState: Sendable, Equatable {
    /// No struct pages (pfn_valid is false).
    case absent
    /// Struct pages, initialised.
    case present
    /// Struct pages whose initialisation is deferred to the first
    /// pfn_to_page of a pfn in the section.
    case deferred
}

/// Owner of one `struct dax_kernel` and the memory it points at.
public final class Kernel: @unchecked Sendable {
    // @unchecked: the record is shared with the C-style hot paths by design;
    // every mutable field in it is accessed atomically or under its own lock.

    /// The record. Allocated and initialised in init, freed in deinit, never
    /// reassigned: every pgmap, MM and page-table page of this kernel points
    /// at it, so it must outlive them (they retain this object). Read-only
    /// after init except `mode`, the atomic counters, the locks and the
    /// report ring.
    @usableFromInline package let ref: KernelRef
    /// Physical address bits the vmemmap covers.
    public let physBits: Int
    /// Whether memremap_pages leaves struct pages uninitialised until first
    /// use (DEFERRED_STRUCT_PAGE_INIT for ZONE_DEVICE).
    public let deferStructPageInit: Bool
    private let vmemmapBytes: Int
    private let sectionBytes: Int
    private let ptPoolBytes: Int
    private let ptLockBytes: Int
    /// pgmap_array and the iomem "System RAM" resources.
    let registry = Registry()
    /// Every anon_vma of this kernel (freed with it: AnonRmap.swift).
    let anonVMAs = Locked<[AnonVMARef]>([])

    /// - Parameters:
    ///   - physBits: physical address space covered (30 to 52); the vmemmap
    ///     reserves 2^(physBits-12) x 64 bytes of address space (64 TiB at
    ///     52 bits: half the user address space, so one such kernel per
    ///     process), and the section states one byte per 128 MiB, both
    ///     resident only where used.
    ///   - pageTablePages: size of the preallocated page-table page pool
    ///     (address space only until used).
    ///   - deferStructPageInit: memremap_pages makes the vmemmap of a new
    ///     range accessible but initialises its struct pages only when a
    ///     pfn of their section is first looked up (pfn_to_page). Off:
    ///     every struct page is initialised by memremap_pages.
    ///   - ramPages: pages of ordinary memory for the page allocator (anon
    ///     and copy-on-write folios), rounded up to 4 MiB blocks, at 4 MiB;
    ///     address space only until allocated (PageAlloc.swift). The default
    ///     fills the rest of section 0 (124 MiB), which the zero pages
    ///     already populate. 0: none.
    public init(physBits: Int = 44, pageTablePages: Int = 1 << 16, deferStructPageInit: Bool = true,
                ramPages: Int = defaultRAMPages) throws(MMError) {
        precondition(physBits >= 30 && physBits <= maxPhysBits, "physBits out of range")
        self.physBits = physBits
        self.deferStructPageInit = deferStructPageInit
        let maxPfn = UInt64(1) << UInt64(physBits - pageShift)
        vmemmapBytes = Int(maxPfn) * MemoryLayout<dax_page>.stride
        let nrSections = Int(maxPfn) / pagesPerSection
        sectionBytes = (nrSections + pageSize - 1) & ~(pageSize - 1)
        ptPoolBytes = pageTablePages * pageSize
        ptLockBytes = pageTablePages * ptlockStride * MemoryLayout<UInt32>.stride

        let k = KernelRef.allocate(capacity: 1)
        k.initialize(to: dax_kernel())
        ref = k

        guard let vm = mmap(nil, vmemmapBytes, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0),
              vm != MAP_FAILED else {
            k.deallocate()
            throw .errno(ENOMEM, "cannot reserve \(vmemmapBytes >> 20) MiB of address space for the vmemmap")
        }
        // Zero-filled on first touch: 32 MiB of address space at 52 bits,
        // one page resident per 512 GiB of physical space in use.
        guard let sections = mmap(nil, sectionBytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0),
              sections != MAP_FAILED else {
            munmap(vm, vmemmapBytes)
            k.deallocate()
            throw .errno(ENOMEM, "cannot reserve the section states")
        }
        guard let pool = mmap(nil, ptPoolBytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0),
              pool != MAP_FAILED else {
            munmap(vm, vmemmapBytes)
            munmap(sections, sectionBytes)
            k.deallocate()
            throw .errno(ENOMEM, "cannot reserve the page-table pool")
        }
        k.pointee.vmemmap = vm.assumingMemoryBound(to: dax_page.self)
        k.pointee.max_pfn = maxPfn
        k.pointee.nr_sections = UInt64(nrSections)
        k.pointee.section_present = sections.assumingMemoryBound(to: UInt8.self)
        k.pointee.pt_pool = pool.assumingMemoryBound(to: UInt8.self)
        k.pointee.pt_pool_pages = UInt64(pageTablePages)
        // One cache line per ptlock (ptlockStride), zero-filled on first touch.
        guard let locks = mmap(nil, ptLockBytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0),
              locks != MAP_FAILED else {
            munmap(vm, vmemmapBytes)
            munmap(sections, sectionBytes)
            munmap(pool, ptPoolBytes)
            k.deallocate()
            throw .errno(ENOMEM, "cannot reserve the split ptlocks")
        }
        k.pointee.pt_locks = locks.assumingMemoryBound(to: UInt32.self)
        // The shared zero page: pfn 0, a reserved RAM page with a permanent
        // reference; never part of a pgmap (its 2 MiB are System RAM).
        try populateSections(startPfn: 0, endPfn: 1)
        let zero = k.pointee.vmemmap!
        zero.pointee.refcount = 1
        zero.pointee.mapcount = -1
        zero.pointee.flags = 1 << UInt64(DAX_PG_reserved.rawValue)
        registry.addSystemRAM(0...UInt64(pmdSize - 1))
        do { try setUpRAM(pages: ramPages) } catch {
            tearDownRAM()
            munmap(vm, vmemmapBytes)
            munmap(sections, sectionBytes)
            munmap(pool, ptPoolBytes)
            munmap(locks, ptLockBytes)
            k.deallocate()
            throw error
        }
    }

    deinit {
        tearDownRAM()
        for a in anonVMAs.withLock({ $0 }) { freeAnonVMARecord(a) }
        munmap(ref.pointee.vmemmap, vmemmapBytes)
        munmap(ref.pointee.pt_pool, ptPoolBytes)
        munmap(ref.pointee.section_present, sectionBytes)
        munmap(ref.pointee.pt_locks, ptLockBytes)
        ref.deallocate()
    }

    /// Behaviour switches (DAX_MODE_*).
    public var mode: UInt32 {
        get { ref.pointee.mode }
        set { ref.pointee.mode = newValue }
    }

    public var maxPfn: UInt64 { ref.pointee.max_pfn }

    /// A node counter (NR_FILE_MAPPED, NR_FOLL_PIN_ACQUIRED, ...).
    public func stat(_ item: dax_node_stat) -> Int64 {
        dax_pcpu_counter_sum(dax_kernel_stats(ref), Int32(item.rawValue))
    }

    /// Page-table pages in use.
    public var pageTablesInUse: Int64 { dax_atomic64_read(dax_kernel_pt_in_use(ref)) }

    // MARK: sparse sections

    /// pfn_valid: the pfn has a populated struct page.
    public func pfnValid(_ pfn: UInt64) -> Bool { MMCore.pfnValid(ref, pfn) }

    /// The state of the section holding `pfn` (absent beyond max_pfn).
    public func sectionState(pfn: UInt64) -> SectionState {
        guard pfn < maxPfn else { return .absent }
        switch dax_section_state(ref, pfn >> UInt64(sectionShift - pageShift)) {
        case sectionPresent: return .present
        case sectionPresentDeferred: return .deferred
        default: return .absent
        }
    }

    /// Sections whose struct pages are populated and initialised (section 0,
    /// which holds the zero page, included).
    public var initialisedSections: Int { Int(dax_atomic64_read(dax_kernel_nr_sections_present(ref))) }
    /// Sections whose struct pages are populated but not yet initialised.
    public var deferredSections: Int { Int(dax_atomic64_read(dax_kernel_nr_sections_deferred(ref))) }

    /// sparse_add_section: makes the records of every section in [startPfn,
    /// endPfn) accessible, each contiguous run of absent sections with one
    /// mprotect, and marks them initialised. Idempotent.
    func populateSections(startPfn: UInt64, endPfn: UInt64) throws(MMError) {
        try checkPfnRange(startPfn, endPfn)
        dax_spin_lock(dax_kernel_section_lock(ref))
        defer { dax_spin_unlock(dax_kernel_section_lock(ref)) }
        try populateLocked(firstSection: startPfn >> sectionPfnShift, lastSection: (endPfn - 1) >> sectionPfnShift,
                           state: sectionPresent)
    }

    /// sparse_add_section for a pgmap range, and whether its struct pages can
    /// wait. Under section_lock: the range is deferred (a slot of the
    /// deferred table describes it, returned) unless deferral is off, the
    /// table is full, or one of its sections is already initialised (then
    /// the caller initialises the range now, as memmap_init_zone_device does,
    /// and -1 is returned). Absent sections become present, deferred or
    /// initialised accordingly; a section already deferred for another range
    /// stays so and initialises both ranges' parts when first used.
    func addPgmapSections(startPfn: UInt64, endPfn: UInt64, pgmap: UnsafeMutablePointer<dax_pgmap>,
                          vmemmapShift: Int, idleRefcount: Int32) throws(MMError) -> Int {
        try checkPfnRange(startPfn, endPfn)
        let k = ref
        dax_spin_lock(dax_kernel_section_lock(k))
        defer { dax_spin_unlock(dax_kernel_section_lock(k)) }
        let first = startPfn >> sectionPfnShift, last = (endPfn - 1) >> sectionPfnShift
        var slot = -1
        if deferStructPageInit {
            let table = dax_kernel_deferred(k)!
            slot = (0..<Int(DAX_DEFERRED_RANGES)).first { table[$0].pgmap == nil } ?? -1
            if slot >= 0 && dax_sections_find(k, first, last + 1, sectionPresent, true) <= last { slot = -1 }
        }
        try populateLocked(firstSection: first, lastSection: last,
                           state: slot >= 0 ? sectionPresentDeferred : sectionPresent)
        if slot >= 0 {
            dax_kernel_deferred(k)[slot] = dax_deferred_range(start_pfn: startPfn, end_pfn: endPfn, pgmap: pgmap,
                                                              vmemmap_shift: Int32(vmemmapShift),
                                                              idle_refcount: idleRefcount)
        }
        return slot
    }

    /// Frees the deferred-table slots of `pgmap` (its struct pages will never
    /// be initialised now) and returns the states of `sections` as they are
    /// at that instant, in one critical section: a section still deferred
    /// then never had the pgmap's part initialised.
    func dropDeferredRanges(of pgmap: UnsafeMutablePointer<dax_pgmap>, statesOf sections: [UInt64]) -> [UInt8] {
        let k = ref
        dax_spin_lock(dax_kernel_section_lock(k))
        defer { dax_spin_unlock(dax_kernel_section_lock(k)) }
        let table = dax_kernel_deferred(k)!
        for i in 0..<Int(DAX_DEFERRED_RANGES) where table[i].pgmap == pgmap { table[i] = dax_deferred_range() }
        return sections.map { dax_section_state(k, $0) }
    }

    /// sparse_remove_section: drops the records (and their memory) of the
    /// sections firstSection...lastSection, one PROT_NONE re-reservation
    /// (mmap MAP_FIXED) per contiguous run of present ones. Section 0 (the zero
    /// page) stays.
    func depopulateSections(firstSection: UInt64, lastSection: UInt64) {
        let k = ref
        dax_spin_lock(dax_kernel_section_lock(k))
        defer { dax_spin_unlock(dax_kernel_section_lock(k)) }
        var s = max(firstSection, 1)
        let end = lastSection + 1
        var present: Int64 = 0, deferred: Int64 = 0
        while s < end {
            s = dax_sections_find(k, s, end, sectionAbsent, false)
            guard s < end else { break }
            let runStart = s
            s = dax_sections_find(k, s, end, sectionAbsent, true)
            let p = Int64(dax_sections_count(k, runStart, s, sectionPresent))
            present += p
            deferred += Int64(s - runStart) - p
            dax_sections_fill(k, runStart, s, sectionAbsent)
            // One system call drops the records' memory and the access: a
            // fresh PROT_NONE reservation over the run, as the vmemmap was
            // reserved (madvise(MADV_DONTNEED) + mprotect(PROT_NONE) cost
            // two, each a walk of the run's range).
            let (addr, len) = sectionRun(runStart, s)
            if mmap(addr, len, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_FIXED, -1, 0) == MAP_FAILED {
                madvise(addr, len, MADV_DONTNEED)
                mprotect(addr, len, PROT_NONE)
            }
        }
        dax_atomic64_add(dax_kernel_nr_sections_present(k), -present)
        dax_atomic64_add(dax_kernel_nr_sections_deferred(k), -deferred)
    }

    private var sectionPfnShift: UInt64 { UInt64(sectionShift - pageShift) }

    private func checkPfnRange(_ startPfn: UInt64, _ endPfn: UInt64) throws(MMError) {
        guard endPfn <= maxPfn, startPfn < endPfn else {
            throw .errno(EINVAL, "pfn range [\(hex(startPfn)), \(hex(endPfn))) outside the vmemmap (max pfn \(hex(maxPfn)))")
        }
    }

    /// The vmemmap bytes of sections [first, end).
    private func sectionRun(_ first: UInt64, _ end: UInt64) -> (UnsafeMutableRawPointer, Int) {
        (UnsafeMutableRawPointer(ref.pointee.vmemmap + Int(first) * pagesPerSection),
         Int(end - first) * pagesPerSection * MemoryLayout<dax_page>.stride)
    }

    /// Makes each run of absent sections in first...last accessible and
    /// gives it `state`. Caller holds section_lock. On a failed mprotect the
    /// runs this call populated are taken back.
    private func populateLocked(firstSection first: UInt64, lastSection last: UInt64, state: UInt8) throws(MMError) {
        let k = ref
        var s = first
        let end = last + 1
        var runs: [(UInt64, UInt64)] = []
        while s < end {
            s = dax_sections_find(k, s, end, sectionAbsent, true)
            guard s < end else { break }
            let runStart = s
            s = dax_sections_find(k, s, end, sectionAbsent, false)
            let (addr, len) = sectionRun(runStart, s)
            if mprotect(addr, len, PROT_READ | PROT_WRITE) != 0 {
                let e = errno
                for (a, b) in runs {
                    dax_sections_fill(k, a, b, sectionAbsent)
                    let (ra, rl) = sectionRun(a, b)
                    mprotect(ra, rl, PROT_NONE)
                }
                throw .errno(ENOMEM, "cannot populate vmemmap sections \(runStart)..<\(s): \(errnoName(e))")
            }
            dax_sections_fill(k, runStart, s, state)
            runs.append((runStart, s))
        }
        let n = runs.reduce(Int64(0)) { $0 + Int64($1.1 - $1.0) }
        dax_atomic64_add(state == sectionPresent ? dax_kernel_nr_sections_present(k) : dax_kernel_nr_sections_deferred(k), n)
    }

    // MARK: reports

    /// Debug reports recorded since the last call, oldest first.
    public func drainReports() -> [PageDump] { MMCore.drainReports(ref) }

    // MARK: the record

    /// Lends the `struct dax_kernel` record to `body`, for the hot-path
    /// functions that take a `KernelRef`. The pointer must not escape `body`;
    /// this kernel is kept alive until `body` returns.
    @inlinable
    public func withUnsafeRecord<R>(_ body: (KernelRef) throws -> R) rethrows -> R {
        try withExtendedLifetime(self) { try body(ref) }
    }
}

/// pfn_valid on a raw kernel reference (safe to call from the hot path):
/// the section has struct pages, initialised or deferred.
@inline(__always)
public func pfnValid(_ k: KernelRef, _ pfn: UInt64) -> Bool {
    guard pfn < k.pointee.max_pfn else { return false }
    return dax_section_state(k, pfn >> UInt64(sectionShift - pageShift)) != sectionAbsent
}

/// pfn_to_page. Precondition: pfnValid(k, pfn) (asserted in debug builds).
///
/// Cost over the plain vmemmap offset: the section state's byte load (an
/// acquire, a plain `mov` on x86-64; its array's base sits next to
/// `vmemmap` in the kernel record's first cache line) and a
/// predicted-not-taken branch, about 1 ns (BENCHMARKS.md). Only the first
/// lookup in a deferred section takes the branch and initialises the
/// section's struct pages (`deferredInitSection`).
@inline(__always)
public func pfnToPage(_ k: KernelRef, _ pfn: UInt64) -> Page {
    assert(pfnValid(k, pfn), "pfn_to_page: the pfn's section has no struct pages")
    let section = pfn >> UInt64(sectionShift - pageShift)
    if _slowPath(dax_section_state(k, section) == sectionPresentDeferred) { deferredInitSection(k, section) }
    return Page(k.pointee.vmemmap + Int(pfn))
}

/// deferred_grow_zone, for the ZONE_DEVICE struct pages memremap_pages left
/// uninitialised: initialises every deferred range's part of section
/// `section`, widened to whole folios (a folio's head and tails are set up
/// together, so an order-18 folio takes its 8 or 9 sections at once), then
/// publishes the sections initialised (release store of their state; the
/// hot path's load is an acquire). A second thread on the same section
/// waits on section_lock and finds it initialised.
///
/// Runs on the fault and pin paths, possibly in a SIGSEGV handler: it
/// allocates nothing, touches no Swift object and reads only the kernel
/// record's deferred table (C records). section_lock is a spinlock whose
/// holders never touch device memory, so a window fault cannot interrupt a
/// holder on its own thread.
@usableFromInline @inline(never)
func deferredInitSection(_ k: KernelRef, _ section: UInt64) {
    let lock = dax_kernel_section_lock(k)
    dax_spin_lock(lock)
    defer { dax_spin_unlock(lock) }
    guard dax_section_state(k, section) == sectionPresentDeferred else { return }
    let pps = UInt64(pagesPerSection)
    let table = dax_kernel_deferred(k)!
    let slots = Int(DAX_DEFERRED_RANGES)
    // The whole folios of the deferred ranges that meet [lo, hi).
    @inline(__always) func folios(_ d: UnsafeMutablePointer<dax_deferred_range>, _ lo: UInt64, _ hi: UInt64)
        -> (UInt64, UInt64)? {
        let start = d.pointee.start_pfn, end = d.pointee.end_pfn
        guard d.pointee.pgmap != nil, start < hi, lo < end else { return nil }
        let nr = UInt64(1) << UInt64(d.pointee.vmemmap_shift)
        let a = max(start, lo), b = min(end, hi)
        return (start + (a - start) / nr * nr, start + (b - start + nr - 1) / nr * nr)
    }
    // Widen [lo, hi) (whole sections) until no deferred folio crosses an end.
    var lo = section * pps, hi = lo + pps
    var widened = true
    while widened {
        widened = false
        for i in 0..<slots {
            guard let f = folios(table + i, lo, hi) else { continue }
            let (a, b) = f
            if a < lo { lo = a / pps * pps; widened = true }
            if b > hi { hi = (b + pps - 1) / pps * pps; widened = true }
        }
    }
    for i in 0..<slots {
        guard let f = folios(table + i, lo, hi) else { continue }
        let (a, b) = f
        let d = table[i]
        memmapInitZoneDevice(k, d.pgmap, startPfn: a, endPfn: b, vmemmapShift: Int(d.vmemmap_shift),
                             idleRefcount: d.idle_refcount)
    }
    var n: Int64 = 0
    var s = lo / pps
    while s < hi / pps {
        if dax_section_state(k, s) == sectionPresentDeferred {
            dax_section_set_state(k, s, sectionPresent)
            n += 1
        }
        s += 1
    }
    dax_atomic64_add(dax_kernel_nr_sections_deferred(k), -n)
    dax_atomic64_add(dax_kernel_nr_sections_present(k), n)
}

/// page_to_pfn. Precondition: `page` is a record of this kernel's vmemmap in
/// a populated section (asserted in debug builds).
@inline(__always)
public func pageToPfn(_ k: KernelRef, _ page: Page) -> UInt64 {
    let pfn = page.raw - k.pointee.vmemmap
    assert(pfn >= 0 && pfnValid(k, UInt64(pfn)), "page_to_pfn: the page is not a populated vmemmap record")
    return UInt64(pfn)
}

/// mod_node_page_state: the calling thread's slot of the counter (vmstat's
/// per-cpu diff; readers sum the slots, see Kernel.stat).
@inline(__always)
func modNodeStat(_ k: KernelRef, _ item: dax_node_stat, _ delta: Int64, slot: Int32 = dax_this_slot()) {
    dax_pcpu_counter_add_slot(dax_kernel_stats(k), slot, Int32(item.rawValue), delta)
}

/// The lookups memremap needs: which pgmap covers a pfn (pgmap_array, an
/// xarray in the kernel) and which physical ranges are System RAM (iomem).
final class Registry: Sendable {
    struct Entry: @unchecked Sendable {
        var startPfn: UInt64
        var endPfn: UInt64   // exclusive
        var pgmap: UnsafeMutablePointer<dax_pgmap>
        var owner: ObjectIdentifier
    }
    private struct State: Sendable {
        var pgmaps: [Entry] = []
        var systemRAM: [ClosedRange<UInt64>] = []
    }
    private let state = Locked(State())

    func lookup(pfn: UInt64) -> UnsafeMutablePointer<dax_pgmap>? {
        state.withLock { s in s.pgmaps.first { pfn >= $0.startPfn && pfn < $0.endPfn }?.pgmap }
    }

    /// Adds [start, end) unless it overlaps an existing pgmap range.
    func insert(_ e: Entry) -> Bool {
        state.withLock { s in
            if s.pgmaps.contains(where: { $0.startPfn < e.endPfn && e.startPfn < $0.endPfn }) { return false }
            s.pgmaps.append(e)
            return true
        }
    }

    func remove(owner: ObjectIdentifier) {
        state.withLock { s in s.pgmaps.removeAll { $0.owner == owner } }
    }

    /// True if any other pgmap has pages in [startPfn, endPfn).
    func othersOverlap(startPfn: UInt64, endPfn: UInt64, except owner: ObjectIdentifier) -> Bool {
        state.withLock { s in
            s.pgmaps.contains { $0.owner != owner && $0.startPfn < endPfn && startPfn < $0.endPfn }
        }
    }

    func addSystemRAM(_ r: ClosedRange<UInt64>) { state.withLock { $0.systemRAM.append(r) } }

    func intersectsSystemRAM(_ r: ClosedRange<UInt64>) -> Bool {
        state.withLock { s in s.systemRAM.contains { $0.overlaps(r) } }
    }
}

extension Kernel {
    /// Declares a physical range System RAM (an iomem resource), so that
    /// memremap_pages refuses to cover it (-ENXIO).
    public func addSystemRAM(start: UInt64, size: UInt64) {
        registry.addSystemRAM(start...(start + size - 1))
    }
}
