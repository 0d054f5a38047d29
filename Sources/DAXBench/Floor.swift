// The Swift side of CDaxBench's floors: a floor owns its entry table and its
// page-table lock word, and borrows the port rig's folio records and
// mmap_lock (so both sides touch the same counters through the same lock
// functions).

import CDaxBench
import CDaxMM
import MMCore

public final class Floor {
    /// The level a floor's entries stand for.
    public enum Level: Int, Sendable { case pte = 0, pmd = 9, pud = 18 }

    private var record: dax_floor
    private let entries: UnsafeMutablePointer<UInt64>
    private let ptl: UnsafeMutablePointer<UInt32>
    /// Kept alive while the floor borrows its records.
    private let owner: AnyObject?

    /// - Parameters:
    ///   - firstPfn: the pfn of the first folio's head (its record must be
    ///     initialised: the rig has faulted or touched it).
    ///   - folios: how many distinct folios the batch cycles over.
    ///   - stride: pfns between successive folio heads.
    ///   - order: the folios' order (0: small).
    ///   - entries: slots of the floor's own entry table.
    ///   - mmapLock: the port MM's mmap_lock, or nil for paths that do not take it.
    public init(kernel: Kernel, firstPfn: UInt64, folios: Int, stride: UInt64, order: Int,
                entries: Int, mmapLock: UnsafeMutablePointer<dax_rwsem>?, owner: AnyObject? = nil) {
        self.entries = .allocate(capacity: max(entries, 1))
        self.entries.initialize(repeating: 0, count: max(entries, 1))
        ptl = .allocate(capacity: 16)   // its own cache line
        ptl.initialize(repeating: 0, count: 16)
        self.owner = owner
        let first = kernel.withUnsafeRecord { pfnToPage($0, firstPfn) }
        record = dax_floor()
        record.mmap_lock = mmapLock
        record.ptl = ptl
        record.entries = self.entries
        record.nr_entries = UInt64(max(entries, 1))
        record.pages = first.raw
        record.nr_folios = UInt64(max(folios, 1))
        record.stride = stride
        record.first_pfn = firstPfn
        record.entry_bits = 0x1 | 0x4 | 0x20   // present, user, accessed
        record.large = order > 0 ? 1 : 0
        record.pages_per_folio = Int32(1 << order)
    }

    /// The page array a pin fills (grown outside the timed part).
    private var output: UnsafeMutablePointer<UnsafeMutablePointer<dax_page>?>?

    deinit {
        entries.deallocate()
        ptl.deallocate()
        output?.deallocate()
    }

    /// Gives pins of up to `pages` pages an array to fill, as
    /// pin_user_pages fills its caller's. Not on a timed path.
    public func reservePageArray(_ pages: Int) {
        guard UInt64(pages) > record.out_capacity else { return }
        output?.deallocate()
        let a = UnsafeMutablePointer<UnsafeMutablePointer<dax_page>?>.allocate(capacity: pages)
        a.initialize(repeating: nil, count: pages)
        output = a
        record.out = a
        record.out_capacity = UInt64(pages)
    }

    public func fault(_ n: Int) { withUnsafePointer(to: &record) { dax_floor_fault($0, UInt64(n)) } }
    public func unfault(_ n: Int) { withUnsafePointer(to: &record) { dax_floor_unfault($0, UInt64(n)) } }
    public func mkwrite(_ n: Int) { withUnsafePointer(to: &record) { dax_floor_mkwrite($0, UInt64(n)) } }
    public func zap(_ n: Int) { withUnsafePointer(to: &record) { dax_floor_zap($0, UInt64(n)) } }
    public func pin(pages: Int, get: Bool = false) {
        withUnsafePointer(to: &record) { dax_floor_pin($0, UInt64(pages), get) }
    }
    public func unpin(pages: Int, get: Bool = false) {
        withUnsafePointer(to: &record) { dax_floor_unpin($0, UInt64(pages), get) }
    }

    // Batches of the floor, for an Instance.

    /// `n` faults per batch, undone after each.
    public func faultBatch(_ n: Int) -> Batch {
        Batch(ops: n, run: { self.fault(n) }, restore: { self.unfault(n) })
    }

    /// `n` write upgrades per batch over entries a fault installed.
    public func mkwriteBatch(_ n: Int) -> Batch {
        Batch(ops: n, prepare: { self.fault(n) }, run: { self.mkwrite(n) }, restore: { self.unfault(n) })
    }

    /// `n` zaps per batch of entries installed before it.
    public func zapBatch(_ n: Int) -> Batch {
        Batch(ops: n, prepare: { self.fault(n) }, run: { self.zap(n) })
    }

    /// One pin (or get) of `pages` pages per batch, counted per page.
    public func pinBatch(pages: Int, get: Bool = false) -> Batch {
        reservePageArray(pages)
        return Batch(ops: pages, run: { self.pin(pages: pages, get: get) }, restore: { self.unpin(pages: pages, get: get) })
    }

    /// The release of a pin (or get) of `pages` pages per batch, counted per
    /// page: the same atomics as `pinBatch`, reversed.
    public func unpinBatch(pages: Int, get: Bool = false) -> Batch {
        reservePageArray(pages)
        return Batch(ops: pages, prepare: { self.pin(pages: pages, get: get) }, run: { self.unpin(pages: pages, get: get) })
    }
}
