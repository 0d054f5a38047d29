// A small extent-based file store on a DAX device, enough to drive fs/dax
// the way ext4/XFS do: files map 4 KiB blocks of an FS_DAX pgmap, the
// allocator hands out 2 MiB-aligned chunks to 2 MiB-aligned file ranges (so
// PMD faults happen), reflink shares blocks (so the share count of
// fs/dax.c: dax_associate_entry / dax_folio_put is exercised), and truncate,
// hole punch and unmount break layouts first.
//
// The block map, allocator and entry index are C-style records reached from
// the fault handlers through the file's private_data (the fs-dax inode
// record, tagged by `DriverFile`); the classes own them and give the safe API.

import CDaxMM
import DAXBase
import MMCore
import Synchronization

/// The allocator: one bit per block, a share count per block.
package struct DaxFSCore {
    package var lock: UInt32 = 0
    package var nblocks: UInt64
    package var bitmap: UnsafeMutablePointer<UInt64>
    package var refs: UnsafeMutablePointer<UInt32>
    package var freeBlocks: Int64
    /// Per 2 MiB device chunk (512 blocks), how many of its blocks have a
    /// share count above one: a PMD extent is IOMAP_F_SHARED iff its chunk's
    /// count is nonzero, one load instead of 512 (kept by claimBlock,
    /// releaseBlock and shareBlock).
    package var sharedInChunk: UnsafeMutablePointer<UInt32>
    /// Metadata not yet durable (a MAP_SYNC fault must sync first).
    package var metaDirty: UInt32 = 0
    package var syncs: Int64 = 0
}

/// One file's block map: file page -> device block + 1 (0 = hole), and its
/// extents.
///
/// `runs[i]` is the length, counted from file page i up to the end of i's
/// 2 MiB file window, of the run i starts: pages i, i+1, ... that are all
/// holes, or whose blocks are physically consecutive (block(i) + j). Each
/// entry depends only on blocks[i], blocks[i+1] and runs[i+1], so a change
/// of blocks [s, e) rewrites runs [s, e) and walks down from s only while
/// values change (`updateRuns`). It is what an extent tree gives ext4/XFS:
/// iomap_begin of a PMD reads one record (runs[index] == 512: one hole or one
/// extent over the whole window), not 512 blocks.
package struct DaxFileCore {
    package var fs: UnsafeMutablePointer<DaxFSCore>
    package var blocks: UnsafeMutablePointer<UInt64>
    package var runs: UnsafeMutablePointer<UInt16>
    package var maxPages: UInt64
}

/// Errors of the file store. Every case carries the errno ext4/XFS return
/// for it (`code`), one spelling per errno: EBUSY is always `.busy`, with the
/// page that stayed busy; every other errno is `.errno`.
public enum FSError: Error, Equatable, Sendable, CustomStringConvertible {
    /// An errno (positive: ENOSPC, EINVAL, EIO, ...) and what refused.
    case errno(Int32, String)
    /// EBUSY: a layout could not be broken: a page stayed busy.
    case busy(file: String, pfn: UInt64, refcount: Int32, pincount: Int32)

    /// The errno (positive).
    public var code: Int32 {
        switch self {
        case .errno(let e, _): return e
        case .busy: return EBUSY
        }
    }

    public var description: String {
        switch self {
        case .errno(let e, let s): return "\(errnoName(e)): \(s)"
        case .busy(let f, let pfn, let r, let p):
            return "\(errnoName(EBUSY)): \(f): page pfn \(hex(pfn)) still busy (refcount \(r), pincount \(p))"
        }
    }
}

public final class DaxFS: @unchecked Sendable {
    // @unchecked: the allocator record is guarded by its spinlock; `files`
    // by the mutex.
    public let kernel: Kernel
    public let pgmap: DevPagemap
    /// The allocator record the iomap callbacks use: allocated in init,
    /// freed in deinit, never moved; guarded by its spinlock.
    package let core: UnsafeMutablePointer<DaxFSCore>
    public let basePfn: UInt64
    private let files = Locked<[ObjectIdentifier: DaxFile]>([:])
    public private(set) var mounted = true

    /// A file system over [start, start+size) of physical memory, as a pmem
    /// fsdax namespace gives one: an FS_DAX pgmap with order-0 pages.
    public init(kernel: Kernel, start: UInt64, size: UInt64) throws(MMError) {
        self.kernel = kernel
        pgmap = DevPagemap(kernel: kernel, type: .fsDax, ranges: [PhysicalRange(start: start, size: size)])
        try pgmap.memremapPages()
        basePfn = start >> UInt64(pageShift)
        let nblocks = size >> UInt64(pageShift)
        core = .allocate(capacity: 1)
        let words = Int((nblocks + 63) / 64)
        let bm = UnsafeMutablePointer<UInt64>.allocate(capacity: words)
        bm.initialize(repeating: 0, count: words)
        let refs = UnsafeMutablePointer<UInt32>.allocate(capacity: Int(nblocks))
        refs.initialize(repeating: 0, count: Int(nblocks))
        let chunks = Int((nblocks + UInt64(hpagePmdNr) - 1) / UInt64(hpagePmdNr))
        let shared = UnsafeMutablePointer<UInt32>.allocate(capacity: chunks)
        shared.initialize(repeating: 0, count: chunks)
        core.initialize(to: DaxFSCore(nblocks: nblocks, bitmap: bm, refs: refs, freeBlocks: Int64(nblocks),
                                      sharedInChunk: shared))
    }

    deinit {
        core.pointee.bitmap.deallocate()
        core.pointee.refs.deallocate()
        core.pointee.sharedInChunk.deallocate()
        core.deallocate()
    }

    public var freeBlocks: Int64 { dax_atomic64_read(&core.pointee.freeBlocks) }
    public var syncs: Int64 { dax_atomic64_read(&core.pointee.syncs) }

    /// Creates an empty file that may grow to `maxSize` bytes.
    public func create(name: String, maxSize: UInt64) throws(FSError) -> DaxFile {
        guard mounted else { throw .errno(EIO, "file system is unmounted") }
        guard maxSize > 0, maxSize % UInt64(pageSize) == 0 else { throw .errno(EINVAL, "maxSize must be a positive multiple of 4K") }
        let f = DaxFile(fs: self, name: name, maxPages: maxSize >> UInt64(pageShift))
        files.withLock { $0[ObjectIdentifier(f)] = f }
        return f
    }

    /// Unmount: every file's layout is broken with dax_break_layout_final,
    /// which waits until every page is idle (at most `timeoutNanos` per busy
    /// page; the kernel waits forever), then the entries are deleted.
    public func unmount(timeoutNanos: Int64 = 5_000_000_000) throws(FSError) {
        let all = files.withLock { Array($0.values) }
        for f in all {
            if case .busy(let pfn, let r, let p) = daxBreakLayoutFinal(f.mapping, timeoutNanos: timeoutNanos) {
                throw .busy(file: f.name, pfn: pfn, refcount: r, pincount: p)
            }
        }
        mounted = false
    }

    func forget(_ f: DaxFile) { files.withLock { $0[ObjectIdentifier(f)] = nil } }
}

public final class DaxFile: @unchecked Sendable {
    public let fs: DaxFS
    public let name: String
    public let maxPages: UInt64
    /// The address_space record (entries, marks, locks): allocated in init,
    /// freed in deinit, never moved.
    package let mapping: DaxMappingRef
    /// The block map the iomap callbacks read: allocated in init, freed in
    /// deinit, never moved.
    package let fileCore: UnsafeMutablePointer<DaxFileCore>
    /// The file, its vm_operations and the tagged inode record.
    let driver: DriverFile<DaxInodeCore>

    /// The inode record the fault handlers read (the file's private_data),
    /// owned by `driver`; it points at `mapping` and `fileCore`.
    package var inode: DaxInodeRef { driver.state }
    public var file: MappedFile { driver.file }
    public var ops: VMOperations { driver.ops }

    init(fs: DaxFS, name: String, maxPages: UInt64) {
        self.fs = fs
        self.name = name
        self.maxPages = maxPages
        let k = fs.kernel.ref
        let slots = UnsafeMutablePointer<UInt64>.allocate(capacity: Int(maxPages))
        slots.initialize(repeating: 0, count: Int(maxPages))
        let marks = UnsafeMutablePointer<UInt8>.allocate(capacity: Int(maxPages))
        marks.initialize(repeating: 0, count: Int(maxPages))
        let windows = Int((maxPages + UInt64(hpagePmdNr) - 1) / UInt64(hpagePmdNr))
        let small = UnsafeMutablePointer<UInt16>.allocate(capacity: windows)
        small.initialize(repeating: 0, count: windows)
        mapping = .allocate(capacity: 1)
        mapping.initialize(to: DaxMappingCore(kernel: k, slots: slots, marks: marks, smallInWindow: small,
                                              nslots: maxPages, mappingID: 0))
        let blocks = UnsafeMutablePointer<UInt64>.allocate(capacity: Int(maxPages))
        blocks.initialize(repeating: 0, count: Int(maxPages))
        let runs = UnsafeMutablePointer<UInt16>.allocate(capacity: Int(maxPages))
        runs.initialize(repeating: 0, count: Int(maxPages))
        fileCore = .allocate(capacity: 1)
        fileCore.initialize(to: DaxFileCore(fs: fs.core, blocks: blocks, runs: runs, maxPages: maxPages))
        updateRuns(fileCore, 0, maxPages)   // one hole per window
        var o = dax_vm_operations()
        o.fault = fsDaxFaultFn
        o.huge_fault = fsDaxHugeFaultFn
        o.page_mkwrite = fsDaxMkwriteFn
        o.pfn_mkwrite = fsDaxMkwriteFn
        driver = DriverFile(kind: .regularFile,
                            state: DaxInodeCore(mapping: mapping, sizePages: 0, basePfn: fs.basePfn,
                                                iomapBegin: extentIomapBegin, fsPrivate: UnsafeMutableRawPointer(fileCore),
                                                sync: extentSync),
                            ops: o)
        mapping.pointee.mappingID = driver.file.mapping
        mapping.pointee.file = driver.file.ref
    }

    deinit {
        mapping.pointee.slots.deallocate()
        mapping.pointee.marks.deallocate()
        mapping.pointee.smallInWindow.deallocate()
        mapping.deallocate()
        fileCore.pointee.blocks.deallocate()
        fileCore.pointee.runs.deallocate()
        fileCore.deallocate()
    }

    /// i_size in bytes.
    public var size: UInt64 { inode.pointee.sizePages << UInt64(pageShift) }
    /// Page-cache entries (xarray nrpages).
    public var nrpages: Int64 { mapping.pointee.nrpages }
    /// The entry word covering `index` (0 if none), without its lock bit.
    public func entry(at index: UInt64) -> UInt64 { dax_load_u64(entrySlot(mapping, index)) & ~DaxEntry.locked }
    /// The device block of a file page, nil for a hole.
    public func block(at index: UInt64) -> UInt64? {
        let b = fileCore.pointee.blocks[Int(index)]
        return b == 0 ? nil : b - 1
    }
    /// The extent run starting at a file page, in pages up to the end of its
    /// 2 MiB window (see `DaxFileCore.runs`).
    package func run(at index: UInt64) -> UInt64 { UInt64(fileCore.pointee.runs[Int(index)]) }
    /// The folio of a file page's block, if allocated.
    public func folio(at index: UInt64) -> Folio? {
        block(at: index).map { pfnToPage(fs.kernel.ref, fs.basePfn + $0).folio }
    }

    /// Sets i_size (growing only; use truncate to shrink). Blocks stay holes.
    public func extend(to bytes: UInt64) throws(FSError) {
        guard bytes <= maxPages << UInt64(pageShift) else { throw .errno(EINVAL, "size beyond the file's maximum") }
        let pages = (bytes + UInt64(pageSize) - 1) >> UInt64(pageShift)
        if pages > inode.pointee.sizePages { inode.pointee.sizePages = pages }
    }

    /// fallocate: allocate blocks for [pgoff, pgoff+pages) (2 MiB chunks where aligned).
    public func allocate(pgoff: UInt64, pages: UInt64) throws(FSError) {
        try extend(to: (pgoff + pages) << UInt64(pageShift))
        var i = pgoff
        while i < pgoff + pages {
            var map = DaxIomap(kind: .hole, block: 0, pages: 0, new: false, shared: false, dirty: false, error: 0)
            let chunk: UInt64 = i % UInt64(hpagePmdNr) == 0 && pgoff + pages - i >= UInt64(hpagePmdNr) ? UInt64(hpagePmdNr) : 1
            withUnsafeMutablePointer(to: &map) {
                extentIomapBegin(UnsafeMutableRawPointer(fileCore), i, chunk, true, UnsafeMutableRawPointer($0))
            }
            if map.error != 0 { throw .errno(-map.error, "\(name): no free blocks") }
            i += chunk
        }
        extentSync(UnsafeMutableRawPointer(fileCore))
    }

    /// A MAP_SHARED (or MAP_SHARED_VALIDATE|MAP_SYNC) mapping request.
    public func mmapRequest(length: UInt64, pgoff: UInt64 = 0, prot: Prot = [.read, .write], shared: Bool = true,
                            sync: Bool = false) -> MMapRequest {
        driver.mmapRequest(owner: self, length: length, pgoff: pgoff, prot: prot, shared: shared, alignment: UInt64(pmdSize),
                           extraFlags: sync ? DAX_VM_SYNC : 0)
    }

    /// dax_break_layout over file pages [start, end].
    public func breakLayout(start: UInt64 = 0, end: UInt64 = UInt64.max, wait: Bool = true,
                            timeoutNanos: Int64 = 5_000_000_000) throws(FSError) {
        if case .busy(let pfn, let r, let p) = daxBreakLayout(mapping, start: start, end: end, wait: wait,
                                                               timeoutNanos: timeoutNanos) {
            throw .busy(file: name, pfn: pfn, refcount: r, pincount: p)
        }
    }

    /// Truncate to `bytes`: break the layout of the whole file (waiting for
    /// busy pages), then truncate the page cache and free the blocks.
    ///
    /// The whole file, as ext4 (ext4_break_layouts) and XFS
    /// (xfs_break_dax_layouts) do through dax_break_layout_inode: a PMD
    /// entry straddling the cut may have a page outside the cut range mapped
    /// by a PTE (a PTE fault inside a PMD entry maps its subpage), and the
    /// entry's folio must be idle before the entry is dropped.
    public func truncate(to bytes: UInt64, timeoutNanos: Int64 = 5_000_000_000) throws(FSError) {
        let newPages = (bytes + UInt64(pageSize) - 1) >> UInt64(pageShift)
        guard newPages <= inode.pointee.sizePages else { return try extend(to: bytes) }
        // The invalidate lock is held across break, size change and freeing,
        // so no fault can map the range again in between.
        dax_down_write(&mapping.pointee.invalidateLock)
        defer { dax_up_write(&mapping.pointee.invalidateLock) }
        try breakLayoutLocked(start: 0, end: maxPages - 1, timeoutNanos: timeoutNanos)
        inode.pointee.sizePages = newPages
        // truncate_pagecache: unmap_mapping_range with even_cows, so the
        // private COW copies of pages past the new end go too.
        unmapMappingPages(mapping, newPages, 0, evenCows: true)
        truncatePagecache(from: newPages)
        freeBlocks(from: newPages, to: maxPages)
    }

    func breakLayoutLocked(start: UInt64, end: UInt64, timeoutNanos: Int64) throws(FSError) {
        if case .busy(let pfn, let r, let p) = daxBreakLayoutLocked(mapping, start: start, end: end, wait: true,
                                                                     timeoutNanos: timeoutNanos) {
            throw .busy(file: name, pfn: pfn, refcount: r, pincount: p)
        }
    }

    /// Punch a hole: break the layout of the whole file (as ext4_punch_hole
    /// and xfs_file_fallocate do: dax_break_layout_inode; see truncate),
    /// drop the range's entries and blocks.
    public func punchHole(pgoff: UInt64, pages: UInt64, timeoutNanos: Int64 = 5_000_000_000) throws(FSError) {
        guard pages > 0 else { return }
        dax_down_write(&mapping.pointee.invalidateLock)
        defer { dax_up_write(&mapping.pointee.invalidateLock) }
        try breakLayoutLocked(start: 0, end: maxPages - 1, timeoutNanos: timeoutNanos)
        truncatePagecache(from: pgoff, to: pgoff + pages)
        freeBlocks(from: pgoff, to: pgoff + pages)
    }

    /// A file system that forgets to break layouts: truncate_pagecache then
    /// finds entries, WARNs (truncate_folio_batch_exceptionals) and deletes
    /// them. Exists for the test of that rule.
    public func truncateWithoutBreakingLayouts(to bytes: UInt64) {
        let newPages = (bytes + UInt64(pageSize) - 1) >> UInt64(pageShift)
        inode.pointee.sizePages = newPages
        unmapMappingPages(mapping, newPages, maxPages - newPages, evenCows: true)   // truncate_pagecache
        truncatePagecache(from: newPages)
        freeBlocks(from: newPages, to: maxPages)
    }

    /// truncate_pagecache for a DAX mapping: any entry still present is a
    /// bug (WARN once) and is deleted so truncation cannot loop.
    func truncatePagecache(from start: UInt64, to end: UInt64? = nil) {
        let k = fs.kernel.ref
        let stop = end ?? maxPages
        var i = start
        while i < stop {
            let e = entry(at: i)
            if e != 0 {
                let page = DaxEntry.isReal(e) ? pfnToPage(k, DaxEntry.pfn(e)) : pfnToPage(k, 0)
                vmReport(k, page, rule: "WARN_ON_ONCE(dax_mapping(mapping)): DAX entry present at truncate",
                         function: "truncate_folio_batch_exceptionals")
                daxInvalidateEntry(mapping, i, trunc: true)
            }
            i += 1
        }
    }

    func freeBlocks(from start: UInt64, to end: UInt64) {
        let fc = fileCore
        let stop = min(end, maxPages)
        guard start < stop else { return }
        dax_spin_lock(&fc.pointee.fs.pointee.lock)
        for i in start..<stop {
            let b = fc.pointee.blocks[Int(i)]
            guard b != 0 else { continue }
            releaseBlock(fc.pointee.fs, b - 1)
            fc.pointee.blocks[Int(i)] = 0
        }
        updateRuns(fc, start, stop)
        dax_spin_unlock(&fc.pointee.fs.pointee.lock)
    }

    /// reflink: [dst, dst+pages) of this file shares the blocks of
    /// [src, src+pages) of `from`. Layouts of both ranges are broken first
    /// (as xfs_reflink_remap_prep does), so no stale association survives.
    public func reflink(from: DaxFile, srcPgoff: UInt64, dstPgoff: UInt64, pages: UInt64,
                        timeoutNanos: Int64 = 5_000_000_000) throws(FSError) {
        guard srcPgoff + pages <= from.maxPages, dstPgoff + pages <= maxPages else { throw .errno(EINVAL, "range beyond file") }
        try from.breakLayout(start: srcPgoff, end: srcPgoff + pages - 1, timeoutNanos: timeoutNanos)
        try breakLayout(start: dstPgoff, end: dstPgoff + pages - 1, timeoutNanos: timeoutNanos)
        freeBlocks(from: dstPgoff, to: dstPgoff + pages)
        let fsc = fs.core
        dax_spin_lock(&fsc.pointee.lock)
        for i in 0..<pages {
            let b = from.fileCore.pointee.blocks[Int(srcPgoff + i)]
            guard b != 0 else { continue }
            shareBlock(fsc, b - 1)
            fileCore.pointee.blocks[Int(dstPgoff + i)] = b
        }
        updateRuns(fileCore, dstPgoff, dstPgoff + pages)
        dax_spin_unlock(&fsc.pointee.lock)
        try extend(to: (dstPgoff + pages) << UInt64(pageShift))
    }
}

// MARK: allocator and iomap (called from the fault path: no allocation)

@inline(__always)
func blockBusy(_ fs: UnsafeMutablePointer<DaxFSCore>, _ b: UInt64) -> Bool {
    fs.pointee.bitmap[Int(b / 64)] & (1 << (b % 64)) != 0
}

@inline(__always)
func claimBlock(_ fs: UnsafeMutablePointer<DaxFSCore>, _ b: UInt64) {
    fs.pointee.bitmap[Int(b / 64)] |= 1 << (b % 64)
    fs.pointee.refs[Int(b)] = 1
    fs.pointee.freeBlocks -= 1
}

@inline(__always)
func releaseBlock(_ fs: UnsafeMutablePointer<DaxFSCore>, _ b: UInt64) {
    fs.pointee.refs[Int(b)] -= 1
    if fs.pointee.refs[Int(b)] == 1 {
        fs.pointee.sharedInChunk[Int(b / UInt64(hpagePmdNr))] -= 1
    }
    if fs.pointee.refs[Int(b)] == 0 {
        fs.pointee.bitmap[Int(b / 64)] &= ~(1 << (b % 64))
        fs.pointee.freeBlocks += 1
    }
}

/// One more file page maps block `b` (reflink). Lock held.
@inline(__always)
func shareBlock(_ fs: UnsafeMutablePointer<DaxFSCore>, _ b: UInt64) {
    fs.pointee.refs[Int(b)] += 1
    if fs.pointee.refs[Int(b)] == 2 {
        fs.pointee.sharedInChunk[Int(b / UInt64(hpagePmdNr))] += 1
    }
}

/// Allocates `n` contiguous blocks aligned to `n` (n = 1 or 512), first fit.
/// Lock held. Scans the bitmap a word at a time.
func allocBlocks(_ fs: UnsafeMutablePointer<DaxFSCore>, _ n: UInt64) -> UInt64? {
    let nblocks = fs.pointee.nblocks
    let bm = fs.pointee.bitmap
    var found: UInt64? = nil
    if n == 1 {
        var w = 0
        let words = Int((nblocks + 63) / 64)
        while w < words {
            let free = ~bm[w]
            if free != 0 {
                let b = UInt64(w) * 64 + UInt64(free.trailingZeroBitCount)
                if b < nblocks { found = b }
                break
            }
            w += 1
        }
    } else if n % 64 == 0 {
        var start: UInt64 = 0
        scan: while start + n <= nblocks {
            var w = Int(start / 64)
            let end = Int((start + n) / 64)
            while w < end {
                if bm[w] != 0 { start += n; continue scan }
                w += 1
            }
            found = start
            break
        }
    } else {
        var start: UInt64 = 0
        scan: while start + n <= nblocks {
            for j in 0..<n where blockBusy(fs, start + j) { start += n; continue scan }
            found = start
            break
        }
    }
    guard let start = found else { return nil }
    for x in 0..<n { claimBlock(fs, start + x) }
    fs.pointee.metaDirty = 1
    return start
}

/// Whether file page i+1 continues page i's run: both holes, or the next
/// physical block.
@inline(__always)
func runContinues(_ b: UInt64, _ next: UInt64) -> Bool { b == 0 ? next == 0 : next == b + 1 }

/// Rewrites `runs` after blocks [s, e) changed: [s, e) from the top, then
/// below s inside s's window while the value changes. Lock held.
func updateRuns(_ fc: UnsafeMutablePointer<DaxFileCore>, _ s: UInt64, _ e: UInt64) {
    let blocks = fc.pointee.blocks, runs = fc.pointee.runs, maxPages = fc.pointee.maxPages
    let stop = min(e, maxPages)
    guard s < stop else { return }
    let windowMask = UInt64(hpagePmdNr - 1)
    @inline(__always) func length(_ i: UInt64) -> UInt16 {
        let next = i + 1
        if next & windowMask == 0 || next >= maxPages { return 1 }
        return runContinues(blocks[Int(i)], blocks[Int(next)]) ? runs[Int(next)] + 1 : 1
    }
    var i = stop
    while i > s {
        i -= 1
        runs[Int(i)] = length(i)
    }
    let base = s & ~windowMask
    while i > base {
        i -= 1
        let v = length(i)
        if runs[Int(i)] == v { break }
        runs[Int(i)] = v
    }
}

/// iomap_begin of the extent store (ext4_iomap_begin / xfs_direct_write_iomap_begin
/// for a DAX fault): one extent record per request.
let extentIomapBegin: @convention(c) (UnsafeMutableRawPointer?, UInt64, UInt64, Bool, UnsafeMutableRawPointer?) -> Void = {
    priv, index, pages, write, out in
    let fc = priv!.assumingMemoryBound(to: DaxFileCore.self)
    let map = out!.assumingMemoryBound(to: DaxIomap.self)
    let fs = fc.pointee.fs
    dax_spin_lock(&fs.pointee.lock)
    defer { dax_spin_unlock(&fs.pointee.lock) }
    map.pointee = DaxIomap(kind: .hole, block: 0, pages: pages, new: false, shared: false, dirty: false, error: 0)
    let blocks = fc.pointee.blocks
    if pages > 1 {
        // A PMD request: a whole aligned hole, or one contiguous aligned extent.
        if pages != UInt64(hpagePmdNr) || index % pages != 0 || index + pages > fc.pointee.maxPages {
            extentIomapScan(fc, index, pages, write, map)
            return
        }
        let first = blocks[Int(index)]
        guard UInt64(fc.pointee.runs[Int(index)]) == pages else {
            map.pointee.kind = .mapped
            map.pointee.pages = 1   // shorter than a PMD: the caller falls back
            return
        }
        if first == 0 {
            if write { extentAllocateHole(fc, index, pages, map) }
            return
        }
        let start = first - 1
        // Contiguous and aligned: the extent is exactly one device chunk.
        let shared = start % pages == 0 && fs.pointee.sharedInChunk[Int(start / pages)] != 0
        if start % pages == 0 && !(shared && write) {
            map.pointee = DaxIomap(kind: .mapped, block: start, pages: pages, new: false, shared: shared,
                                   dirty: fs.pointee.metaDirty != 0, error: 0)
            return
        }
        map.pointee.kind = .mapped
        map.pointee.pages = 1
        return
    }
    let b = blocks[Int(index)]
    if b == 0 {
        guard write else { return }
        guard let start = allocBlocks(fs, 1) else { map.pointee.error = -ENOSPC; return }
        blocks[Int(index)] = start + 1
        updateRuns(fc, index, index + 1)
        map.pointee = DaxIomap(kind: .mapped, block: start, pages: 1, new: true, shared: false,
                               dirty: fs.pointee.metaDirty != 0, error: 0)
        return
    }
    if fs.pointee.refs[Int(b - 1)] > 1 {
        if write {
            // Copy on write of a reflinked block: a new private block replaces it.
            guard let nb = allocBlocks(fs, 1) else { map.pointee.error = -ENOSPC; return }
            releaseBlock(fs, b - 1)
            blocks[Int(index)] = nb + 1
            updateRuns(fc, index, index + 1)
            map.pointee = DaxIomap(kind: .mapped, block: nb, pages: 1, new: true, shared: true,
                                   dirty: fs.pointee.metaDirty != 0, error: 0)
            return
        }
        map.pointee = DaxIomap(kind: .mapped, block: b - 1, pages: 1, new: false, shared: true,
                               dirty: fs.pointee.metaDirty != 0, error: 0)
        return
    }
    map.pointee = DaxIomap(kind: .mapped, block: b - 1, pages: 1, new: false, shared: false,
                           dirty: fs.pointee.metaDirty != 0, error: 0)
}

/// A write to a hole of `pages` pages: allocate them together and map the
/// new extent (IOMAP_F_NEW), or -ENOSPC. Lock held.
func extentAllocateHole(_ fc: UnsafeMutablePointer<DaxFileCore>, _ index: UInt64, _ pages: UInt64,
                        _ map: UnsafeMutablePointer<DaxIomap>) {
    let fs = fc.pointee.fs
    guard let start = allocBlocks(fs, pages) else { map.pointee.error = -ENOSPC; return }
    let blocks = fc.pointee.blocks
    for i in 0..<pages { blocks[Int(index + i)] = start + i + 1 }
    updateRuns(fc, index, index + pages)
    map.pointee = DaxIomap(kind: .mapped, block: start, pages: pages, new: true, shared: false,
                           dirty: fs.pointee.metaDirty != 0, error: 0)
}

/// A multi-page request that is not one aligned 2 MiB window: block by
/// block (no fault asks for one; kept so any shape gets the same answer).
/// Lock held.
func extentIomapScan(_ fc: UnsafeMutablePointer<DaxFileCore>, _ index: UInt64, _ pages: UInt64, _ write: Bool,
                     _ map: UnsafeMutablePointer<DaxIomap>) {
    let fs = fc.pointee.fs
    let blocks = fc.pointee.blocks
    var holes: UInt64 = 0, shared = false, contiguous = true
    let first = blocks[Int(index)]
    for i in 0..<pages {
        let b = blocks[Int(index + i)]
        if b == 0 { holes += 1; continue }
        if fs.pointee.refs[Int(b - 1)] > 1 { shared = true }
        if first == 0 || b != first + i { contiguous = false }
    }
    if holes == pages {
        if write { extentAllocateHole(fc, index, pages, map) }
        return
    }
    if holes == 0 && contiguous && (first - 1) % pages == 0 && !(shared && write) {
        map.pointee = DaxIomap(kind: .mapped, block: first - 1, pages: pages, new: false, shared: shared,
                               dirty: fs.pointee.metaDirty != 0, error: 0)
        return
    }
    map.pointee.kind = .mapped
    map.pointee.pages = 1   // shorter than a PMD: the caller falls back
}

/// fsync of metadata: makes allocations durable (clears IOMAP_F_DIRTY).
let extentSync: @convention(c) (UnsafeMutableRawPointer?) -> Void = { priv in
    let fc = priv!.assumingMemoryBound(to: DaxFileCore.self)
    let fs = fc.pointee.fs
    dax_spin_lock(&fs.pointee.lock)
    fs.pointee.metaDirty = 0
    fs.pointee.syncs += 1
    dax_spin_unlock(&fs.pointee.lock)
}
