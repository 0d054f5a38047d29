// diff-fault-size-{4k,2m,1g}: one touch of a device-dax extent, served by
// the port (dev_dax_huge_fault through a window) and by the kernel (its own
// mapping of the same device range): the same entry size and the same pfns.

import DAXBase
import DAXDevice
import DAXRuntime
import MMCore

#if canImport(Glibc)
import Glibc
#endif

enum DiffFaultSize {
    static func run(_ t: TestContext, _ align: DaxAlign) throws {
        try t.installGuards()
        let dev = try t.openDevDax(align)
        let a = UInt64(align.bytes)
        // Two extents when the device has them; the touch lands in the second
        // (not device offset 0), on a page that is not the extent's first, so
        // the run the kernel shows must reach back to the extent's start.
        let extents = min(dev.size / a, 2)
        let extentOffset = extents > 1 ? a : 0
        let pageInExtent: UInt64 = a >= UInt64(pmdSize) ? 0x5000 : 0
        let off = extentOffset + pageInExtent + 0x18
        let length = extents * a
        let value: UInt64 = 0xD1FF_5A1E_0000_0000 | off

        // The port: a window over the device range, one write.
        let b = try t.bindPort(dev)
        let w = try t.portWindow(b, length: length)
        let pr = guardedAccess(w.address(off), write: true, value: value)
        try t.require(pr.ok, "the port's fault at device offset \(hex(off)): \(pr)")
        let tr = try t.require(w.translation(off), "the port mapped nothing at device offset \(hex(off))")
        t.expectEqual(w.stats.faults, 1, "window faults for one touch")
        let devicePfn = try t.require(dev.physicalAddress(ofOffset: off), "device offset \(hex(off)) has no physical address") >> 12
        t.log("port: \(tr) for device offset \(hex(off)); device resource gives pfn \(hex(devicePfn))")

        // The kernel: its own mapping of the same range, one read.
        let km = try t.kernelMapping(dev, offset: 0, length: length)
        // Warm up the code and data the measurement itself touches (a text
        // page of the guarded access, read from the shared tree on first
        // use, would count as a fault of this thread).
        let scratch = UnsafeMutablePointer<UInt64>.allocate(capacity: 1)
        defer { scratch.deallocate() }
        scratch.pointee = 0
        _ = guardedAccess(UInt64(UInt(bitPattern: scratch)), write: false)
        _ = FaultCounter.read(.thread)
        let f0 = FaultCounter.read(.thread)
        let kr = guardedAccess(km.at(off), write: false)
        let firstFaults = (FaultCounter.read(.thread) - f0).total
        try t.require(kr.ok, "the kernel's fault at device offset \(hex(off)): \(kr)")
        t.compare("word at device offset \(hex(off)) written through the port, read through the kernel's mapping",
                  port: hex(value), kernel: hex(kr.value))
        // The thread's fault count is a noisy witness (warm-up or not, a
        // fault the thread takes elsewhere in the interval, e.g. on its own
        // stack, adds to it: seen once in a few dozen guest runs on each
        // kernel). It shows the touch faulted, i.e. the kernel's mapping was
        // not populated before; the extent the fault mapped is established
        // exactly below, by pagemap or by the further-fault count.
        t.expect(firstFaults >= 1, "kernel faults for the first touch: got \(firstFaults), expected at least 1")
        if firstFaults != 1 { t.log("note: \(firstFaults) faults counted for the first touch") }

        let extentStart = off & ~(a - 1)
        if align == .pud {
            // pagemap's walk would split (unmap) the PUD: count faults
            // instead. Every 2 MiB of the extent touched after the first
            // touch: 0 faults in the kernel only if one PUD maps it all, 0
            // window faults in the port only if the port inserted a PUD.
            let k0 = FaultCounter.read(.thread)
            var kernelBad: AccessResult? = nil
            var s: UInt64 = 0
            while s < a {
                let x = guardedAccess(km.at(extentStart + s + 8), write: false)
                if !x.ok { kernelBad = x; break }
                s += UInt64(pmdSize)
            }
            let kernelMore = (FaultCounter.read(.thread) - k0).total
            try t.require(kernelBad == nil, "touching the kernel's extent: \(kernelBad!)")
            let p0 = w.stats.faults
            var portBad: AccessResult? = nil
            s = 0
            while s < a {
                let x = guardedAccess(w.address(extentStart + s + 8), write: false)
                if !x.ok { portBad = x; break }
                s += UInt64(pmdSize)
            }
            let portMore = w.stats.faults - p0
            try t.require(portBad == nil, "touching the port's extent: \(portBad!)")
            t.compare("further faults across the 1 GiB extent after the first touch", port: Int(portMore), kernel: kernelMore)
            let kernelExtent: UInt64 = kernelMore == 0 ? a : (kernelMore >= 511 ? UInt64(pageSize) : UInt64(pmdSize))
            t.compare("extent mapped by one fault (bytes)", port: tr.extentBytes, kernel: kernelExtent)
            t.compare("pfn of the touched page (kernel: the device's physical address from its resource)",
                      port: hex(tr.pfn), kernel: hex(devicePfn))
            t.compare("pfn of the extent's first page (kernel: the device's resource)",
                      port: hex(tr.pfn - pageInExtent / UInt64(pageSize)),
                      kernel: hex(try t.require(dev.physicalAddress(ofOffset: extentStart), "no physical address") >> 12))
            return
        }
        let run = try t.must("reading pagemap") { try Pagemap.presentRun(around: UInt(km.at(off)), limit: pmdSize) }
        let e = try t.must("reading pagemap") { try Pagemap.entry(at: UInt(km.at(off))) }
        try t.require(run.pfnsChecked, "pagemap hides pfns from this process (CAP_SYS_ADMIN needed)")
        t.log("kernel: \(run.pages) present page(s) from mapping offset \(hex(UInt64(run.start) - km.address)), first pfn \(run.firstPFN.map { hex($0) } ?? "-"); entry \(e)")
        t.compare("extent mapped by one fault (bytes)", port: tr.extentBytes, kernel: UInt64(run.bytes))
        t.expectEqual(hex(UInt64(run.start) - km.address), hex(extentStart), "the kernel's run starts at the touched offset rounded down to the alignment")
        t.compare("pfn of the touched page", port: hex(tr.pfn), kernel: e.pfn.map { hex($0) } ?? "not present")
        t.compare("pfn of the extent's first page", port: hex(tr.pfn - pageInExtent / UInt64(pageSize)),
                  kernel: run.firstPFN.map { hex($0) } ?? "not present")
        t.expectEqual(tr.pfn, devicePfn, "the port's pfn against the device's resource")
    }
}
