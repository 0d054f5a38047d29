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
    private let vmemmapBytes: Int
    private let ptPoolBytes: Int
    /// pgmap_array and the iomem "System RAM" resources.
    let registry = Registry()

    /// - Parameters:
    ///   - physBits: physical address space covered; the vmemmap reserves
    ///     2^(physBits-12) x 64 bytes of address space, populated per section
    ///     only when memremap_pages covers it.
    ///   - pageTablePages: size of the preallocated page-table page pool
    ///     (address space only until used).
    public init(physBits: Int = 44, pageTablePages: Int = 1 << 16) throws(MMError) {
        precondition(physBits >= 30 && physBits <= 46, "physBits out of range")
        self.physBits = physBits
        let maxPfn = UInt64(1) << UInt64(physBits - pageShift)
        vmemmapBytes = Int(maxPfn) * MemoryLayout<dax_page>.stride
        ptPoolBytes = pageTablePages * pageSize

        let k = KernelRef.allocate(capacity: 1)
        k.initialize(to: dax_kernel())
        ref = k

        guard let vm = mmap(nil, vmemmapBytes, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0),
              vm != MAP_FAILED else {
            k.deallocate()
            throw .errno(ENOMEM, "cannot reserve \(vmemmapBytes >> 20) MiB of address space for the vmemmap")
        }
        guard let pool = mmap(nil, ptPoolBytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0),
              pool != MAP_FAILED else {
            munmap(vm, vmemmapBytes)
            k.deallocate()
            throw .errno(ENOMEM, "cannot reserve the page-table pool")
        }
        let nrSections = Int(maxPfn) / pagesPerSection
        k.pointee.vmemmap = vm.assumingMemoryBound(to: dax_page.self)
        k.pointee.max_pfn = maxPfn
        k.pointee.nr_sections = UInt64(nrSections)
        k.pointee.section_present = UnsafeMutablePointer<UInt8>.allocate(capacity: nrSections)
        k.pointee.section_present.initialize(repeating: 0, count: nrSections)
        k.pointee.pt_pool = pool.assumingMemoryBound(to: UInt8.self)
        k.pointee.pt_pool_pages = UInt64(pageTablePages)
        k.pointee.pt_locks = UnsafeMutablePointer<UInt32>.allocate(capacity: pageTablePages)
        k.pointee.pt_locks.initialize(repeating: 0, count: pageTablePages)
        // The shared zero page: pfn 0, a reserved RAM page with a permanent
        // reference; never part of a pgmap (its 2 MiB are System RAM).
        try populateSections(startPfn: 0, endPfn: 1)
        let zero = k.pointee.vmemmap!
        zero.pointee.refcount = 1
        zero.pointee.mapcount = -1
        zero.pointee.flags = 1 << UInt64(DAX_PG_reserved.rawValue)
        registry.addSystemRAM(0...UInt64(pmdSize - 1))
    }

    deinit {
        munmap(ref.pointee.vmemmap, vmemmapBytes)
        munmap(ref.pointee.pt_pool, ptPoolBytes)
        ref.pointee.section_present.deallocate()
        ref.pointee.pt_locks.deallocate()
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
        dax_atomic64_read(dax_kernel_stats(ref) + Int(item.rawValue))
    }

    /// Page-table pages in use.
    public var pageTablesInUse: Int64 { dax_atomic64_read(dax_kernel_pt_in_use(ref)) }

    // MARK: sparse sections

    /// pfn_valid: the pfn has a populated struct page.
    public func pfnValid(_ pfn: UInt64) -> Bool { MMCore.pfnValid(ref, pfn) }

    /// sparse_add_section: makes the records of every section in [startPfn,
    /// endPfn) accessible. Idempotent; reference-counting sections is left to
    /// the caller (memremap_pages refuses overlapping pgmaps).
    func populateSections(startPfn: UInt64, endPfn: UInt64) throws(MMError) {
        guard endPfn <= maxPfn, startPfn < endPfn else {
            throw .errno(EINVAL, "pfn range [\(hex(startPfn)), \(hex(endPfn))) outside the vmemmap (max pfn \(hex(maxPfn)))")
        }
        dax_spin_lock(dax_kernel_section_lock(ref))
        defer { dax_spin_unlock(dax_kernel_section_lock(ref)) }
        let first = Int(startPfn) / pagesPerSection
        let last = Int(endPfn - 1) / pagesPerSection
        for s in first...last where ref.pointee.section_present[s] == 0 {
            let addr = UnsafeMutableRawPointer(ref.pointee.vmemmap + s * pagesPerSection)
            let len = pagesPerSection * MemoryLayout<dax_page>.stride
            if mprotect(addr, len, PROT_READ | PROT_WRITE) != 0 {
                throw .errno(ENOMEM, "cannot populate vmemmap section \(s)")
            }
            ref.pointee.section_present[s] = 1
        }
    }

    /// sparse_remove_section: drops the records (and their memory) of every
    /// section entirely inside [startPfn, endPfn).
    func depopulateSections(startPfn: UInt64, endPfn: UInt64) {
        dax_spin_lock(dax_kernel_section_lock(ref))
        defer { dax_spin_unlock(dax_kernel_section_lock(ref)) }
        let first = (Int(startPfn) + pagesPerSection - 1) / pagesPerSection
        let end = Int(endPfn) / pagesPerSection
        guard first < end else { return }
        // Section 0 holds the zero page and stays.
        for s in max(first, 1)..<max(end, 1) where ref.pointee.section_present[s] != 0 {
            let addr = UnsafeMutableRawPointer(ref.pointee.vmemmap + s * pagesPerSection)
            let len = pagesPerSection * MemoryLayout<dax_page>.stride
            madvise(addr, len, MADV_DONTNEED)
            mprotect(addr, len, PROT_NONE)
            ref.pointee.section_present[s] = 0
        }
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

/// pfn_valid on a raw kernel reference (safe to call from the hot path).
@inline(__always)
public func pfnValid(_ k: KernelRef, _ pfn: UInt64) -> Bool {
    guard pfn < k.pointee.max_pfn else { return false }
    return k.pointee.section_present[Int(pfn) / pagesPerSection] != 0
}

/// pfn_to_page. Precondition: pfnValid(k, pfn) (asserted in debug builds).
@inline(__always)
public func pfnToPage(_ k: KernelRef, _ pfn: UInt64) -> Page {
    assert(pfnValid(k, pfn), "pfn_to_page: the pfn's section has no struct pages")
    return Page(k.pointee.vmemmap + Int(pfn))
}

/// page_to_pfn. Precondition: `page` is a record of this kernel's vmemmap in
/// a populated section (asserted in debug builds).
@inline(__always)
public func pageToPfn(_ k: KernelRef, _ page: Page) -> UInt64 {
    let pfn = page.raw - k.pointee.vmemmap
    assert(pfn >= 0 && pfnValid(k, UInt64(pfn)), "page_to_pfn: the page is not a populated vmemmap record")
    return UInt64(pfn)
}

/// mod_node_page_state.
@inline(__always)
func modNodeStat(_ k: KernelRef, _ item: dax_node_stat, _ delta: Int64) {
    dax_atomic64_add(dax_kernel_stats(k) + Int(item.rawValue), delta)
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
