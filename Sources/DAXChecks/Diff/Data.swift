// diff-data: words written through the port's window (its faults map the
// extents the port inserted) read back through the kernel's own mapping of
// the same device, and words the kernel wrote read through the window, at
// the first, second and last extent of every device, at an extent's first
// word, a word inside its second page, its middle and its last word.

import DAXBase
import DAXDevice
import DAXRuntime
import MMCore

#if canImport(Glibc)
import Glibc
#endif

enum DiffData {
    /// Device offsets probed on a device of `size` bytes and alignment `a`.
    static func offsets(size: UInt64, align a: UInt64) -> [UInt64] {
        let extents = size / a
        let picks = Array(Set([0, 1, extents - 1].filter { $0 < extents })).sorted()
        var out: [UInt64] = []
        for e in picks {
            let base = e * a
            for inner in [UInt64(0), 0x1008, a / 2 + 0x10, a - 8] where inner < a {
                out.append(base + inner)
            }
        }
        return Array(Set(out)).sorted()
    }

    static func value(_ seed: UInt64, _ off: UInt64) -> UInt64 {
        (seed &* 0x9E37_79B9_7F4A_7C15) ^ off ^ 0xDA7A_0000_0000_0000
    }

    static func run(_ t: TestContext) throws {
        let aligns = try t.guardedDevdaxAligns()
        for align in aligns {
            let dev = try t.openDevDax(align)
            let a = UInt64(align.bytes)
            let size = dev.size / a * a
            let b = try t.bindPort(dev)
            let w = try t.portWindow(b, length: size)
            let km = try t.kernelMapping(dev, offset: 0, length: size)
            let offs = offsets(size: size, align: a)
            t.log("\(align): \(offs.count) offsets: \(offs.map { hex($0) }.joined(separator: " "))")
            // The port writes, the kernel reads.
            for o in offs {
                let v = value(1, o)
                let p = guardedAccess(w.address(o), write: true, value: v)
                try t.require(p.ok, "\(align): the port's write at device offset \(hex(o)): \(p)")
                let k = guardedAccess(km.at(o), write: false)
                try t.require(k.ok, "\(align): the kernel's read at device offset \(hex(o)): \(k)")
                t.compare("\(align) device offset \(hex(o)): written through the port, read through the kernel", port: hex(v), kernel: hex(k.value))
            }
            // The kernel writes (beside the port's words, and in extents the
            // port has not mapped yet), the port reads.
            let faultsBefore = w.stats.faults
            for o in offs.map({ ($0 + 0x800) % size }) {
                let v = value(2, o)
                let k = guardedAccess(km.at(o), write: true, value: v)
                try t.require(k.ok, "\(align): the kernel's write at device offset \(hex(o)): \(k)")
                let p = guardedAccess(w.address(o), write: false)
                try t.require(p.ok, "\(align): the port's read at device offset \(hex(o)): \(p)")
                t.compare("\(align) device offset \(hex(o)): written through the kernel, read through the port", port: hex(p.value), kernel: hex(v))
            }
            t.log("\(align): \(w.stats.faults) window fault(s), \(w.stats.faults - faultsBefore) in the second pass")
            // The port's first words are still there for the kernel.
            for o in offs {
                let k = guardedAccess(km.at(o), write: false)
                t.compare("\(align) device offset \(hex(o)): the port's word after the kernel's writes", port: hex(value(1, o)), kernel: hex(k.value))
            }
        }
    }
}
