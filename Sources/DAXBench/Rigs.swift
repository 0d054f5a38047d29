// The port rigs the cases run on: a port kernel, a driver over synthetic
// physical ranges, an MM and its mappings, with helpers the batches call.
// Everything a batch's `run` calls here works on C records through
// pointers (no allocation); set-up, restore and the probes the tests read
// may allocate.

import CDaxMM
import DAXBase
import DAXCore
import MMCore

/// The leaf entry mapping `addr` (PTE, PMD or PUD), 0 if none.
func leafEntry(_ mm: MMRef, _ addr: UInt64) -> UInt64 {
    let w = walk(mm, addr)
    if let p = w.pte { return dax_load_u64(p) }
    if let p = w.pmd { return dax_load_u64(p) }
    if let p = w.pud { return dax_load_u64(p) }
    return 0
}

/// Present, writable and dirty leaf entries at `n` addresses `step` apart.
func entryState(_ mm: MM, base: UInt64, step: UInt64, n: Int) -> [Int64] {
    var present: Int64 = 0, writable: Int64 = 0, dirty: Int64 = 0
    mm.withUnsafeRecord { r in
        for i in 0..<n {
            let e = leafEntry(r, base + UInt64(i) * step)
            if entryPresent(e) {
                present += 1
                if entryWrite(e) { writable += 1 }
                if e & PT.dirty != 0 { dirty += 1 }
            }
        }
    }
    return [present, writable, dirty]
}

/// The counters of `folios` folios from the head at `firstPfn`, `stride`
/// pfns apart: refcount, _mapcount, and for a large folio page[1]'s
/// _entire_mapcount, _large_mapcount, _pincount, _nr_pages_mapped.
func folioCounters(_ kernel: Kernel, firstPfn: UInt64, folios: Int, stride: UInt64, large: Bool) -> [Int64] {
    var out: [Int64] = []
    kernel.withUnsafeRecord { k in
        for j in 0..<folios {
            let p = pfnToPage(k, firstPfn + UInt64(j) * stride).raw
            out.append(Int64(dax_atomic_read(&p.pointee.refcount)))
            out.append(Int64(dax_atomic_read(&p.pointee.mapcount)))
            if large {
                let q = p + 1
                out.append(Int64(dax_atomic_read(&q.pointee.entire_mapcount)))
                out.append(Int64(dax_atomic_read(&q.pointee.large_mapcount)))
                out.append(Int64(dax_atomic_read(&q.pointee.pincount)))
                out.append(Int64(dax_atomic_read(&q.pointee.nr_pages_mapped)))
            }
        }
    }
    return out
}

/// A device-dax rig: one port kernel, the ported device-dax driver over
/// `folios` folios of `align` (at least 2 MiB of them), and `mappings` shared mappings of all of it,
/// placed back to back from `base` (so fault i at base + i * align maps
/// folio i % folios through mapping i / folios: with one folio and many
/// mappings, each PUD fault maps the same 1 GiB folio once more).
public final class DevDaxRig {
    public let kernel: Kernel
    public let dev: DevDax
    public let mm: MM
    public private(set) var base: UInt64 = 0
    /// Bytes of one mapping (the whole device).
    public let length: UInt64
    public let mappings: Int
    public let align: UInt64
    public let firstPfn: UInt64
    public private(set) var mapped = false

    /// Where several mappings go (MAP_FIXED): 1 GiB aligned, free in a new MM.
    static let fixedBase: UInt64 = 0x2000_0000_0000

    public init(align: UInt64, folios: Int, mappings: Int = 1, phys: UInt64 = 1 << 36) throws {
        // memremap_pages works in 2 MiB sub-sections: a 4K device of any
        // number of folios is rounded up to one.
        let bytes = align * UInt64(folios)
        length = (bytes + UInt64(pmdSize) - 1) / UInt64(pmdSize) * UInt64(pmdSize)
        // The vmemmap covers just the range used (a reservation of 2^46
        // pfns' records, 1 TiB, is more than valgrind's address space).
        kernel = try Kernel(physBits: max(30, 64 - (phys + length - 1).leadingZeroBitCount))
        dev = try DevDax(kernel: kernel, ranges: [PhysicalRange(start: phys, size: length)], align: align)
        try dev.probe()
        mm = try MM(kernel: kernel)
        self.mappings = mappings
        self.align = align
        firstPfn = phys >> 12
        try map()
    }

    /// The span of all mappings.
    public var span: UInt64 { length * UInt64(mappings) }
    public var folios: Int { Int(length / align) }
    public var order: Int { align.trailingZeroBitCount - 12 }

    /// mmap of every mapping (untimed).
    public func map() throws {
        precondition(!mapped)
        if mappings == 1 {
            base = try mm.mmap(dev.mmapRequest(length: length))
        } else {
            base = DevDaxRig.fixedBase
            for m in 0..<mappings {
                _ = try mm.mmap(dev.mmapRequest(length: length, fixedAddress: base + UInt64(m) * length))
            }
        }
        mapped = true
    }

    /// munmap of every mapping at once (the timed part of a munmap case).
    @inline(never)
    public func unmap() {
        try? mm.munmap(base, span)
        mapped = false
    }

    /// Faults every folio once (so its records are initialised), then zaps.
    public func touchAll(write: Bool = false) {
        var a = base
        while a < base + length { _ = mm.handleFault(a, write: write); a += align }
        zapAll()
    }

    public func zapAll() {
        mm.lockRead()
        mm.withUnsafeRecord { zapPageRange($0, base, base + span) }
        mm.unlockRead()
    }

    /// `n` faults at base + i * align.
    @inline(never)
    public func faults(_ n: Int, write: Bool) {
        let a = align, b = base
        for i in 0..<n { _ = mm.handleFault(b + UInt64(i) * a, write: write) }
    }

    /// zap_page_range over the first `n` entries (one call).
    @inline(never)
    public func zap(_ n: Int) {
        mm.lockRead()
        let b = base, e = base + UInt64(n) * align
        mm.withUnsafeRecord { zapPageRange($0, b, e) }
        mm.unlockRead()
    }

    public func floor(order: Int, folios: Int, withMmapLock: Bool = true) -> Floor {
        Floor(kernel: kernel, firstPfn: firstPfn, folios: folios, stride: align >> 12, order: order,
              entries: folios, mmapLock: withMmapLock ? mm.withUnsafeRecord { dax_mm_mmap_lock($0) } : nil,
              owner: self)
    }

    /// The floor of `n` operations cycling over the rig's folios.
    public func floor(ops n: Int, withMmapLock: Bool = true) -> Floor {
        Floor(kernel: kernel, firstPfn: firstPfn, folios: min(folios, n), stride: align >> 12, order: order,
              entries: n, mmapLock: withMmapLock ? mm.withUnsafeRecord { dax_mm_mmap_lock($0) } : nil, owner: self)
    }

    /// Counters of every folio and the mm's file rss.
    public func counters() -> [Int64] {
        folioCounters(kernel, firstPfn: firstPfn, folios: folios, stride: align >> 12, large: order > 0)
            + [mm.rssFilePages]
    }

    /// Present, writable and dirty entries at the first `n` fault addresses.
    public func entries(_ n: Int) -> [Int64] {
        mapped ? entryState(mm, base: base, step: align, n: n) : [0, 0, 0]
    }

    deinit { if mapped { try? mm.munmap(base, span) } }
}

/// An fs-dax rig: a DaxFS over synthetic pmem, one file whose blocks are
/// allocated (in 2 MiB extents from a fresh file system, so block i is
/// device block i), and one shared mapping of `pages` file pages.
///
/// At PTE level the mapping starts at file page 1 at a 2 MiB-aligned
/// address: the PMD fault refuses the mismatched colour (as
/// thp_vma_suitable_order does in the kernel) and every fault is a
/// dax_iomap_pte_fault.
public final class FsDaxRig {
    public let kernel: Kernel
    public let fs: DaxFS
    public let file: DaxFile
    public let mm: MM
    public let base: UInt64
    public let length: UInt64
    /// Bytes one fault maps (4K or 2M).
    public let step: UInt64
    public let pgoff: UInt64
    /// The pfn of the first mapped file page's block.
    public let firstPfn: UInt64

    static let pteBase: UInt64 = 0x2000_0000_0000

    public init(pmd: Bool, faults n: Int, phys: UInt64 = 1 << 34) throws {
        kernel = try Kernel(physBits: 46)
        step = pmd ? UInt64(pmdSize) : UInt64(pageSize)
        pgoff = pmd ? 0 : 1
        length = step * UInt64(n)
        let filePages = (length >> 12) + pgoff
        let fsSize = (filePages + UInt64(hpagePmdNr) - 1) / UInt64(hpagePmdNr) * UInt64(pmdSize)
        fs = try DaxFS(kernel: kernel, start: phys, size: fsSize)
        file = try fs.create(name: "bench", maxSize: fsSize)
        try file.allocate(pgoff: 0, pages: filePages)
        for i in 0..<filePages where file.block(at: i) != i {
            throw MMError.errno(EINVAL, "file page \(i) is not on block \(i)")
        }
        mm = try MM(kernel: kernel)
        var req = file.mmapRequest(length: length, pgoff: pgoff)
        if !pmd { req.fixedAddress = FsDaxRig.pteBase }
        base = try mm.mmap(req)
        firstPfn = fs.basePfn + pgoff
    }

    public var order: Int { step == UInt64(pmdSize) ? pmdOrder : 0 }
    public var faultsPerBatch: Int { Int(length / step) }

    @inline(never)
    public func faults(_ n: Int, write: Bool) {
        let s = step, b = base
        for i in 0..<n { _ = mm.handleFault(b + UInt64(i) * s, write: write) }
    }

    public func zapAll() {
        mm.lockRead()
        mm.withUnsafeRecord { zapPageRange($0, base, base + length) }
        mm.unlockRead()
    }

    /// Faults every page once, then zaps: the file's mapping entries exist
    /// and the folios have their shape (what a re-fault after munmap finds).
    public func touchAll() {
        faults(faultsPerBatch, write: false)
        zapAll()
    }

    public func floor(ops n: Int) -> Floor {
        Floor(kernel: kernel, firstPfn: firstPfn, folios: min(faultsPerBatch, n), stride: step >> 12, order: order,
              entries: n, mmapLock: mm.withUnsafeRecord { dax_mm_mmap_lock($0) }, owner: self)
    }

    public func counters() -> [Int64] {
        folioCounters(kernel, firstPfn: firstPfn, folios: faultsPerBatch, stride: step >> 12, large: order > 0)
            + [mm.rssFilePages]
    }

    public func entries(_ n: Int) -> [Int64] { entryState(mm, base: base, step: step, n: n) }

    deinit { try? mm.munmap(base, length) }
}
