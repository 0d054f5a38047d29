// What PortBenchmarks does not cover: what deferred struct-page
// initialisation adds to pfn_to_page on an initialised section (against
// the bare vmemmap offset), and memremap_pages of 1 GiB with eager struct
// pages (the reference the deferred binds of PortBenchmarks' memremap
// cases improve on). The fault, pin and deferred memremap cases are in
// PortBenchmarks.

import Benchmark
import CDaxMM
import DAXBase
import MMCore

/// A pgmap of `folios` folios of `order` and its kernel.
struct Rig {
    let kernel: Kernel
    let pgmap: DevPagemap

    init(order: Int, folios: UInt64) {
        kernel = try! Kernel(physBits: 42)
        let bytes = (UInt64(4096) << UInt64(order)) * folios
        pgmap = DevPagemap(kernel: kernel, type: .generic,
                           ranges: [PhysicalRange(start: 1 << 36, size: max(bytes, 2 << 20))], vmemmapShift: order)
        try! pgmap.memremapPages()
    }
}

/// One memremap_pages + memunmap_pages of `bytes` at 256 GiB per iteration.
func bindUnbind(_ benchmark: Benchmark, kernel: Kernel, bytes: UInt64) {
    let range = PhysicalRange(start: 0x40_0000_0000, size: bytes)
    for _ in benchmark.scaledIterations {
        let pgmap = DevPagemap(kernel: kernel, type: .generic, ranges: [range], vmemmapShift: 9)
        try! pgmap.bindPages()
        try! pgmap.memunmapPages()
    }
}

let benchmarks: @Sendable () -> Void = {
    Benchmark.defaultConfiguration = .init(
        metrics: [.wallClock, .throughput, .mallocCountTotal],
        scalingFactor: .kilo,
        maxDuration: .seconds(3),
        maxIterations: 200)

    let bindConfig = Benchmark.Configuration(metrics: [.wallClock, .throughput, .mallocCountTotal],
                                             scalingFactor: .one, maxDuration: .seconds(3), maxIterations: 200)
    Benchmark("memremap_pages + memunmap_pages, 1 GiB, eager struct pages (reference)", configuration: bindConfig) { benchmark in
        bindUnbind(benchmark, kernel: try! Kernel(deferStructPageInit: false), bytes: 1 << 30)
    }

    // What deferral adds to pfn_to_page on an initialised section (one byte
    // load and a branch), against the bare vmemmap offset it was before.
    Benchmark("memremap: pfn_to_page, initialised section") { benchmark in
        let rig = Rig(order: 0, folios: 1024)
        let first = rig.pgmap.ranges[0].startPfn
        rig.kernel.withUnsafeRecord { k in
            _ = pfnToPage(k, first)
            benchmark.startMeasurement()
            for i in benchmark.scaledIterations { blackHole(pfnToPage(k, first + UInt64(i))) }
            benchmark.stopMeasurement()
        }
    }
    Benchmark("memremap: vmemmap offset alone (pfn_to_page without the section check)") { benchmark in
        let rig = Rig(order: 0, folios: 1024)
        let first = rig.pgmap.ranges[0].startPfn
        rig.kernel.withUnsafeRecord { k in
            benchmark.startMeasurement()
            for i in benchmark.scaledIterations { blackHole(Page(k.pointee.vmemmap + Int(first) + i)) }
            benchmark.stopMeasurement()
        }
    }
}
