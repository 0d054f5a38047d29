// /proc/self/pagemap: one 64-bit entry per 4 KiB virtual page of this
// process (Documentation/admin-guide/mm/pagemap.rst; fs/proc/task_mmu.c
// pagemap_read, pte_to_pagemap_entry, pagemap_pmd_range, pagemap_pte_hole).
// What the real kernel reports here is what the port's page tables are
// cross-checked against.

import CDaxSys
import SystemPackage

#if canImport(Glibc)
import Glibc
#endif

/// One pagemap entry (a `pagemap_entry_t`), decoded.
public struct PagemapEntry: Equatable, Sendable, CustomStringConvertible {
    public let raw: UInt64

    public init(raw: UInt64) { self.raw = raw }

    /// Bit 63, PM_PRESENT: a present PTE, or a present PMD leaf covering the page.
    public var present: Bool { raw >> 63 & 1 == 1 }
    /// Bit 62, PM_SWAP: a swap or other non-present entry that names a page.
    public var swapped: Bool { raw >> 62 & 1 == 1 }
    /// Bit 61, PM_FILE: the page is a file page or shared anonymous memory,
    /// i.e. the folio the entry maps is not anonymous. Set only when the
    /// kernel found a folio behind the entry (see `Pagemap`).
    public var fileOrSharedAnon: Bool { raw >> 61 & 1 == 1 }
    /// Bit 56, PM_MMAP_EXCLUSIVE: the page is mapped once. For a small folio
    /// the kernel tests the precise mapcount == 1 (CONFIG_PAGE_MAPCOUNT) or
    /// !folio_maybe_mapped_shared (mapcount <= 1), so two mappings of the same
    /// small folio clear it even inside one process. Zero when no folio was
    /// found behind the entry.
    public var exclusive: Bool { raw >> 56 & 1 == 1 }
    /// Bit 55, PM_SOFT_DIRTY: the PTE is soft-dirty, or the VMA is VM_SOFTDIRTY
    /// (new VMAs are, until soft-dirty is cleared through clear_refs).
    public var softDirty: Bool { raw >> 55 & 1 == 1 }
    /// Bits 0-54, PM_PFRAME_MASK: the page frame number if present, the swap
    /// type and offset if swapped. Zero for a present page unless the reader
    /// has CAP_SYS_ADMIN in the initial user namespace.
    public var frame: UInt64 { raw & (1 << 55 - 1) }
    /// The page frame number of a present page, or nil when the page is not
    /// present or pfns are hidden from this reader.
    public var pfn: UInt64? { present && frame != 0 ? frame : nil }

    public var description: String {
        var bits: [String] = []
        if present { bits.append("present") }
        if swapped { bits.append("swapped") }
        if fileOrSharedAnon { bits.append("file") }
        if exclusive { bits.append("exclusive") }
        if softDirty { bits.append("soft-dirty") }
        let frameText = frame == 0 ? "" : " frame 0x\(String(frame, radix: 16))"
        return "[\(bits.joined(separator: ","))]\(frameText)"
    }
}

/// A run of present pages around an address whose pfns follow one another
/// (`Pagemap.presentRun(around:limit:)`).
public struct PresentRun: Equatable, Sendable {
    /// The first page of the run (the page of the address when it is absent).
    public let start: UInt
    /// Pages in the run; 0 when the page of the address is not present.
    public let pages: Int
    /// The pfn of `start`, when pfns are visible.
    public let firstPFN: UInt64?
    /// Whether pfns were compared. Without CAP_SYS_ADMIN only presence is.
    public let pfnsChecked: Bool

    public var bytes: Int { pages * Pagemap.pageSize }
}

/// Reads /proc/self/pagemap.
///
/// What the kernel reports for device-dax memory (fs/proc/task_mmu.c):
///
/// - **PTE-mapped pages** (4 KiB): `pte_to_pagemap_entry` sets present and
///   the pfn from the PTE, and takes the folio from `vm_normal_page`. On 6.12
///   device-dax PTEs are `pte_devmap` (insert_pfn makes them with
///   pte_mkdevmap, which on x86 also sets the special bit) and
///   `vm_normal_page` returns NULL for them (mm/memory.c, the "legacy
///   ZONE_DEVICE" branch): file and exclusive bits stay 0. From 6.15 the
///   driver inserts the page with `vmf_insert_page_mkwrite` as a normal,
///   mapcounted PTE: file is 1 and exclusive is 1 for a single mapping.
/// - **PMD-mapped pages** (2 MiB): `pagemap_pmd_range` (7.x:
///   `pagemap_pmd_range_thp`) takes the page with `pmd_page` directly, so the
///   file bit is 1 on 6.12 too; the exclusive bit reads the folio's mapcount,
///   which device-dax never raised on 6.12 (vmf_insert_pfn_pmd adds no rmap),
///   so it stays 0 there and is 1 from 6.15 (vmf_insert_folio_pmd adds one).
///   Every 4 KiB entry under the PMD is present with consecutive pfns, which
///   `presentRun(around:limit:)` turns into "512 pages": one PMD fault.
/// - **PUD-mapped ranges** (1 GiB): pagemap has no `pud_entry` callback
///   (`pagemap_ops` has pmd_entry, pte_hole, hugetlb_entry), on 6.12 and on
///   7.x. Because it has a pmd_entry, `walk_pud_range` (mm/pagewalk.c) calls
///   `split_huge_pud` on a PUD leaf before descending, and for DAX that split
///   only clears the PUD (`__split_huge_pud_locked`: pudp_huge_clear_flush;
///   from 6.15 it also drops the rmap and the folio reference); no PMD table
///   is built. The walk then finds `pud_none` and reports the range through
///   `pagemap_pte_hole`: every entry reads not present (soft-dirty only).
///   So reading pagemap over a 1 GiB device-dax mapping **unmaps it** (the
///   next access faults again) and cannot tell a PUD mapping from no mapping.
///   The same walk rule applies to /proc/self/smaps, whose walk also has only
///   a pmd_entry (6.12). For 1 GiB use `FaultCounter` instead: after one
///   touch, touching every 2 MiB sub-range costs 0 further faults only when a
///   PUD maps the whole range; read no pagemap or smaps in between.
public enum Pagemap {
    /// The granule of pagemap: one entry per base page.
    public static let pageSize = 4096
    public static let path = "/proc/self/pagemap"

    /// The entry of the page containing `address`.
    public static func entry(at address: UInt) throws(KernelCallError) -> PagemapEntry {
        try entries(at: address, count: 1)[0]
    }

    /// `count` entries from the page containing `address` on. Entries past
    /// the end of the user address space read as zero.
    public static func entries(at address: UInt, count: Int) throws(KernelCallError) -> [PagemapEntry] {
        precondition(count >= 0)
        if count == 0 { return [] }
        let fd: Int32
        switch Sys.open(path, O_RDONLY) {
        case .success(let f): fd = f
        case .failure(let e):
            throw KernelCallError(call: "open(\(path))", errno: e,
                                  reason: "pagemap needs CONFIG_PROC_PAGE_MONITOR and ptrace read access to this process")
        }
        defer { Sys.close(fd) }
        var raw = [UInt64](repeating: 0, count: count)
        let offset = Int(address / UInt(pageSize)) * MemoryLayout<UInt64>.size
        var done = 0
        let total = count * MemoryLayout<UInt64>.size
        while done < total {
            let n = raw.withUnsafeMutableBytes { buf in
                pread(fd, buf.baseAddress! + done, total - done, off_t(offset + done))
            }
            if n < 0 {
                let e = Sys.currentErrno()
                if e == .interrupted { continue }
                throw KernelCallError(call: "pread(\(path))", errno: e)
            }
            if n == 0 { break }  // past the task's address space
            done += n
        }
        return raw.map(PagemapEntry.init(raw:))
    }

    /// Entries for every page of `range` (byte addresses; rounded out to pages).
    public static func entries(covering range: Range<UInt>) throws(KernelCallError) -> [PagemapEntry] {
        let page = UInt(pageSize)
        let first = range.lowerBound / page * page
        let end = (range.upperBound + page - 1) / page * page
        return try entries(at: first, count: Int((end - first) / page))
    }

    /// Whether this reader sees page frame numbers: writes to a fresh
    /// anonymous page and reads its entry. False without CAP_SYS_ADMIN in the
    /// initial user namespace, or when pagemap cannot be read at all.
    public static func pfnsVisible() -> Bool {
        guard case .success(let p) = Sys.mmap(nil, pageSize, PROT_READ | PROT_WRITE,
                                               MAP_PRIVATE | MAP_ANONYMOUS, -1, 0) else { return false }
        defer { _ = Sys.munmap(p, pageSize) }
        dax_touch_write(p)
        guard let e = try? entry(at: UInt(bitPattern: p)) else { return false }
        return e.pfn != nil
    }

    /// The run of present pages around `address` whose pfns are consecutive
    /// (only presence is compared when pfns are hidden), looking at most
    /// `limit` bytes before and after the address's page.
    ///
    /// This tells a 4 KiB mapping from a 2 MiB one: touch one byte, then a PTE
    /// fault has made 1 page present, a PMD fault 512 (a run starting at the
    /// 2 MiB boundary, when the neighbours are not mapped). It says nothing
    /// useful for 1 GiB: see the type's comment.
    public static func presentRun(around address: UInt, limit: Int = 2 << 20) throws(KernelCallError) -> PresentRun {
        precondition(limit >= 0)
        let page = UInt(pageSize)
        let here = address / page * page
        let span = UInt(limit) / page * page
        let low = here >= span ? here - span : 0
        let count = Int((here - low + span) / page) + 1
        let es = try entries(at: low, count: count)
        let i = Int((here - low) / page)
        let center = es[i]
        guard center.present else {
            return PresentRun(start: here, pages: 0, firstPFN: nil, pfnsChecked: center.pfn != nil)
        }
        let checkPFNs = center.pfn != nil
        /// `b` continues the run one page after `a`.
        func follows(_ a: PagemapEntry, _ b: PagemapEntry) -> Bool {
            guard a.present && b.present else { return false }
            guard checkPFNs else { return true }
            guard let pa = a.pfn, let pb = b.pfn else { return false }
            return pb == pa + 1
        }
        var first = i
        while first > 0 && follows(es[first - 1], es[first]) { first -= 1 }
        var last = i
        while last + 1 < es.count && follows(es[last], es[last + 1]) { last += 1 }
        return PresentRun(start: low + UInt(first) * page, pages: last - first + 1,
                          firstPFN: es[first].pfn, pfnsChecked: checkPFNs)
    }
}
