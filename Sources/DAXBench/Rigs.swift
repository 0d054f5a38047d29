// The port rigs the cases run on: a port kernel, a driver over synthetic
// physical ranges, an MM and a mapping, with helpers the batches call.

import CDaxMM
import DAXBase
import DAXCore
import MMCore

/// A device-dax rig: one port kernel, the ported device-dax driver over
/// `folios` folios of `align`, and one shared mapping of all of it.
public final class DevDaxRig {
    public let kernel: Kernel
    public let dev: DevDax
    public let mm: MM
    public let base: UInt64
    public let length: UInt64
    public let align: UInt64
    public let firstPfn: UInt64

    public init(align: UInt64, folios: Int, phys: UInt64 = 1 << 36) throws {
        length = align * UInt64(folios)
        // The vmemmap covers just the range used (a reservation of 2^46
        // pfns' records, 1 TiB, is more than valgrind's address space).
        kernel = try Kernel(physBits: max(30, 64 - (phys + length - 1).leadingZeroBitCount))
        dev = try DevDax(kernel: kernel, ranges: [PhysicalRange(start: phys, size: length)], align: align)
        try dev.probe()
        mm = try MM(kernel: kernel)
        base = try mm.mmap(dev.mmapRequest(length: length))
        self.align = align
        firstPfn = phys >> 12
    }

    /// Faults every folio once (so its records are initialised), then zaps.
    public func touchAll(write: Bool = false) {
        var a = base
        while a < base + length { _ = mm.handleFault(a, write: write); a += align }
        zapAll()
    }

    public func zapAll() {
        mm.lockRead()
        mm.withUnsafeRecord { zapPageRange($0, base, base + length) }
        mm.unlockRead()
    }

    /// `n` faults, one per folio from the first.
    @inline(never)
    public func faults(_ n: Int, write: Bool) {
        let a = align
        for i in 0..<n { _ = mm.handleFault(base + UInt64(i) * a, write: write) }
    }

    public func floor(order: Int, folios: Int, withMmapLock: Bool = true) -> Floor {
        Floor(kernel: kernel, firstPfn: firstPfn, folios: folios, stride: align >> 12, order: order,
              entries: folios, mmapLock: withMmapLock ? mm.withUnsafeRecord { dax_mm_mmap_lock($0) } : nil,
              owner: self)
    }

    deinit { try? mm.munmap(base, length) }
}

