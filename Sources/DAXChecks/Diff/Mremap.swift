// diff-mremap-split: mremap that would split a device-dax mapping inside
// an extent, in the kernel (its own mapping of the device) and in the port
// (a window's VMA): dev_dax_may_split refuses a split that is not aligned to
// the device alignment (move_vma and __split_vma ask it first, so nothing
// changes), and allows an aligned one. Each request's result, then an access
// at the address it concerned, must be the same on both sides.
//
// Moving 4K out of a 4K device (allowed) is not done in the port: the port
// would choose the destination in its own address space and the host mirror
// would map it there, over memory the test does not own.

import CDaxSys
import DAXBase
import DAXDevice
import DAXRuntime
import MMCore

#if canImport(Glibc)
import Glibc
#endif

enum DiffMremap {
    struct Case {
        var name: String
        var old: UInt64, oldLength: UInt64, newLength: UInt64
        var mayMove: Bool
        /// Offsets (from the mapping's start) accessed after the request.
        var probes: [UInt64]
    }

    /// The requests on a mapping of `extents` (1 or 2) extents of `a` bytes.
    static func cases(_ a: UInt64, extents: UInt64) -> [Case] {
        let page = UInt64(pageSize)
        let len = extents * a
        if a == page {
            return [Case(name: "shrink 8K to 4K (one extent)", old: 0, oldLength: len, newLength: a, mayMove: false,
                         probes: [8, a + 8])]
        }
        var cs = [
            Case(name: "move 4K out of the first extent (MREMAP_MAYMOVE, grown to 8K)", old: page, oldLength: page,
                 newLength: 2 * page, mayMove: true, probes: [page + 8]),
            Case(name: "shrink by 4K (split inside the last extent)", old: 0, oldLength: len, newLength: len - page,
                 mayMove: false, probes: [len - page + 8]),
        ]
        if extents > 1 {
            cs.append(Case(name: "shrink by one extent (aligned split)", old: 0, oldLength: len, newLength: a, mayMove: false,
                           probes: [8, a + 8]))
        }
        return cs
    }

    static func run(_ t: TestContext) throws {
        try t.installGuards()
        for align in presentAligns(t) {
            let dev = try t.openDevDax(align)
            let a = UInt64(align.bytes)
            // Two extents where the device has them (a 2G namespace of 1G
            // alignment holds one).
            let extents = min(dev.size / a, 2)
            try t.require(extents >= 1, "\(dev.name) is smaller than one extent")
            let km = try t.kernelMapping(dev, offset: 0, length: extents * a)
            let b = try t.bindPort(dev)
            let w = try t.portWindow(b, length: extents * a)
            let cs = cases(a, extents: extents)
            // Every extent mapped on both sides, with a word at each probe.
            let probes = Set(cs.flatMap(\.probes)).sorted()
            for o in probes {
                let v = 0x4D52_454D_0000_0000 | o
                try t.require(guardedAccess(w.address(o), write: true, value: v).ok, "\(align): touching window offset \(hex(o))")
                try t.require(guardedAccess(km.at(o), write: false).ok, "\(align): touching the kernel's mapping at \(hex(o))")
            }
            for c in cs {
                // The kernel.
                let flags = c.mayMove ? dax_mremap_flag_maymove() : 0
                let old = UnsafeMutableRawPointer(bitPattern: UInt(km.at(c.old)))
                let got = dax_mremap(old, Int(c.oldLength), Int(c.newLength), flags, nil)
                let kernel: Int32
                if got == MAP_FAILED {
                    kernel = errno
                } else {
                    kernel = 0
                    if let got, got != old {
                        let len = Int(c.newLength)
                        t.atCleanup("unmapping the kernel's moved range") { munmap(got, len) }
                    }
                }
                // The port, on the window's VMA.
                var port: Int32 = 0
                do {
                    _ = try b.mm.mremap(w.address(c.old), oldLength: c.oldLength, newLength: c.newLength, mayMove: c.mayMove)
                } catch {
                    port = error.code
                    t.log("\(align) \(c.name): the port: \(error)")
                }
                t.compare("\(align) \(c.name): mremap", port: errnoOutcome(port), kernel: errnoOutcome(kernel))
                for o in c.probes {
                    let k = guardedAccess(km.at(o), write: false)
                    let p = guardedAccess(w.address(o), write: false)
                    t.compare("\(align) \(c.name): read at offset \(hex(o)) after", port: accessOutcome(p), kernel: accessOutcome(k))
                    if k.ok && p.ok {
                        t.compare("\(align) \(c.name): word at offset \(hex(o)) after", port: hex(p.value), kernel: hex(k.value))
                    }
                }
            }
        }
    }
}
