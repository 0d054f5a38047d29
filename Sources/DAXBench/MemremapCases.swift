// memremap_pages + memunmap_pages of a GENERIC pgmap (what binding and
// unbinding a device-dax instance costs the mm), vmemmap_shift 9, struct
// pages deferred to their first pfn_to_page. Not a hot path: no floor.
// Each size is timed against binding 1 GiB in the same process (1 TiB at
// most twice as long), and reports the memory resident after the bind,
// before any fault (at most 32 MiB): the process's RSS growth
// (/proc/self/statm) and the vmemmap pages resident for the range.

import CDaxMM
import DAXBase
import MMCore
import MMTestSupport

extension PortCases {
    /// 1 TiB may cost at most this many times 1 GiB.
    public static let memremapRelativeTarget = 2.0
    /// Resident bytes a bind may add before its first fault.
    public static let memremapResidentTarget = 32 << 20

    static var memremaps: [BenchCase] {
        [("1G", UInt64(1) << 30), ("64G", UInt64(64) << 30), ("1T", UInt64(1) << 40)].map { memremap($0.0, bytes: $0.1) }
    }

    /// One bind + unbind of `bytes` at 256 GiB on `kernel`.
    static func bindUnbind(_ kernel: Kernel, bytes: UInt64) -> Batch {
        Batch(ops: 1, run: {
            let pgmap = DevPagemap(kernel: kernel, type: .generic,
                                   ranges: [PhysicalRange(start: 0x40_0000_0000, size: bytes)], vmemmapShift: 9)
            try! pgmap.bindPages()
            try! pgmap.memunmapPages()
        })
    }

    public static func memremap(_ name: String, bytes: UInt64) -> BenchCase {
        BenchCase(id: "memremap.generic.\(name)",
                  title: "memremap_pages + memunmap_pages, GENERIC, \(name), deferred struct pages (pagemap_range -> memmap_init_zone_device deferred; memunmap_pages)",
                  group: .memremap, floorTarget: nil) {
            let kernel = try Kernel()
            // Resident memory of a bind before its first fault.
            let range = PhysicalRange(start: 0x40_0000_0000, size: bytes)
            let pgmap = DevPagemap(kernel: kernel, type: .generic, ranges: [range], vmemmapShift: 9)
            let rss0 = residentBytes() ?? 0
            try pgmap.bindPages()
            let rss1 = residentBytes() ?? 0
            let vmemmap = kernel.residentVmemmapPages(startPfn: range.startPfn, endPfn: range.endPfn)
            try pgmap.memunmapPages()
            let inst = Instance(port: bindUnbind(kernel, bytes: bytes), unit: "bind")
            inst.reference = (id: "memremap.generic.1G", batch: bindUnbind(kernel, bytes: 1 << 30),
                              target: memremapRelativeTarget)
            inst.residentBytes = max(rss1 - rss0, 0)
            inst.residentTarget = memremapResidentTarget
            inst.vmemmapPages = vmemmap
            inst.counters = { [Int64(kernel.initialisedSections), Int64(kernel.deferredSections)] }
            return inst
        }
    }
}
