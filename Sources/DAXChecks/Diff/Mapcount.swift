// diff-mapcount: a device-dax page mapped once, twice, then once again.
// The kernel's answer is pagemap's PM_MMAP_EXCLUSIVE bit (bit 56), set when
// the folio is mapped once; the port's is the folio's mapcount. After the
// series (6.15+) device-dax inserts add an rmap (vmf_insert_page_mkwrite,
// vmf_insert_folio_pmd), so the two agree at every step. Before it (6.12)
// device-dax PTEs are devmap (vm_normal_page finds no folio) and PMDs add no
// rmap: the kernel reports 0 throughout, which the test states as the
// expected difference while still checking the port's post-series answer.
//
// The two scenarios run one after the other on the same page: the port's
// windows are themselves kernel mappings of the device (the host mirror),
// which would add to the kernel's count if both ran at once. 1 GiB extents
// are left out: pagemap cannot read a PUD mapping without splitting it.

import DAXBase
import DAXDevice
import DAXRuntime
import MMCore

#if canImport(Glibc)
import Glibc
#endif

enum DiffMapcount {
    static let steps = ["one mapping", "a second mapping of the same page", "the second mapping gone"]

    static func run(_ t: TestContext) throws {
        try t.installGuards()
        let post = t.environment.kernel.hasZoneDeviceRefcountSeries
        let aligns = presentAligns(t, among: [.pte, .pmd])
        try t.require(!aligns.isEmpty, "no 4K or 2M device-dax device")
        for align in aligns {
            let dev = try t.openDevDax(align)
            let a = UInt64(align.bytes)
            let off: UInt64 = (dev.size >= 2 * a ? a : 0) + (a > UInt64(pageSize) ? 0x3000 : 0) + 0x40

            // The kernel: two mappings of the page, one after the other.
            let k1 = try t.kernelMapping(dev, offset: off & ~(a - 1), length: a)
            let k2 = try t.kernelMapping(dev, offset: off & ~(a - 1), length: a)
            let o = off & (a - 1)
            var kernel: [Bool] = []
            func exclusive(_ m: KernelMapping, _ what: String) throws -> Bool {
                let e = try t.must("reading pagemap") { try Pagemap.entry(at: UInt(m.at(o))) }
                t.expect(e.present, "\(align) \(what): the kernel reports the page not present (\(e))")
                return e.exclusive
            }
            try t.require(guardedAccess(k1.at(o), write: true, value: 0x6d61_7063).ok, "touching the kernel's first mapping")
            kernel.append(try exclusive(k1, steps[0]))
            try t.require(guardedAccess(k2.at(o), write: false).ok, "touching the kernel's second mapping")
            let first = try exclusive(k1, steps[1] + " (first)")
            let second = try exclusive(k2, steps[1] + " (second)")
            t.expectEqual(first, second, "\(align): the kernel's exclusive bit in the two mappings of one page")
            kernel.append(first)
            k2.unmap()
            kernel.append(try exclusive(k1, steps[2]))
            k1.unmap()

            // The port: two windows over the same device range.
            let b = try t.bindPort(dev)
            let w1 = try t.portWindow(b, length: a, offset: off & ~(a - 1))
            let w2 = try t.portWindow(b, length: a, offset: off & ~(a - 1))
            var port: [Int32] = []
            func mapcount(_ w: Window, _ what: String) throws -> Int32 {
                let tr = try t.require(w.translation(o), "\(align) \(what): the port mapped nothing")
                let f = try t.require(b.folio(physical: tr.pfn << UInt64(pageShift)), "\(align) \(what): no folio at pfn \(hex(tr.pfn))")
                return f.mapcount
            }
            try t.require(guardedAccess(w1.address(o), write: true, value: 0x6d61_7063).ok, "touching the port's first window")
            port.append(try mapcount(w1, steps[0]))
            try t.require(guardedAccess(w2.address(o), write: false).ok, "touching the port's second window")
            let p1 = try mapcount(w1, steps[1]), p2 = try mapcount(w2, steps[1])
            t.expectEqual(p1, p2, "\(align): one folio behind both windows")
            port.append(p1)
            w2.closeWindow()
            port.append(try mapcount(w1, steps[2]))
            w1.closeWindow()

            t.log("\(align) device offset \(hex(off)): port mapcount \(port), kernel exclusive \(kernel) (\(t.environment.kernel))")
            t.expectEqual(port, [1, 2, 1], "\(align): the port's folio mapcount over the three steps")
            for (i, step) in steps.enumerated() {
                if post {
                    t.compare("\(align) \(step): mapped exclusively (port: mapcount \(port[i]) == 1; kernel: pagemap bit 56)",
                              port: port[i] == 1, kernel: kernel[i])
                } else {
                    t.expectEqual(kernel[i], false, "\(align) \(step): the pre-series kernel's exclusive bit")
                }
            }
        }
        if !post {
            t.expectFailure("kernel \(t.environment.kernel) predates the ZONE_DEVICE refcount series: device-dax PTEs are devmap (vm_normal_page finds no folio) and PMD inserts add no rmap, so pagemap's exclusive bit is 0 throughout; the port's mapcount follows the series (1, 2, 1)")
        }
    }
}
