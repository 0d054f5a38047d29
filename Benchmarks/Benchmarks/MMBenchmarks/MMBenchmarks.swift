// The port's hot paths: faults through handle_mm_fault at PTE, PMD and PUD
// level, and pin_user_pages_fast. Each sample runs 1000 operations
// (scalingFactor .kilo), so figures are per operation; the malloc counter
// covers only the measured part and must read 0. The memremap_pages +
// memunmap_pages benchmarks run one bind and unbind per iteration (not a hot
// path: they allocate).

import Benchmark
import CDaxMM
import DAXBase
import MMCore
import MMTestSupport

struct Rig {
    let kernel: Kernel
    let pgmap: DevPagemap
    let map: LinearMapping
    let mm: MM
    let base: UInt64
    let length: UInt64

    init(order: Int, folios: UInt64) {
        kernel = try! Kernel(physBits: 42)
        let bytes = (UInt64(4096) << UInt64(order)) * folios
        pgmap = DevPagemap(kernel: kernel, type: .generic,
                           ranges: [PhysicalRange(start: 1 << 36, size: max(bytes, 2 << 20))], vmemmapShift: order)
        try! pgmap.memremapPages()
        map = LinearMapping(pgmap: pgmap)
        mm = try! MM(kernel: kernel)
        length = bytes
        base = try! mm.mmap(map.request(length: bytes))
    }

    func zapAll() {
        mm.lockRead()
        mm.withUnsafeRecord { zapPageRange($0, base, base + length) }
        mm.unlockRead()
    }
}

/// Pins one page per call over 1000 faulted pages of a fresh rig; unpins
/// outside the measurement. Three rounds per sample.
func pinOnePagePerCall(_ benchmark: Benchmark, order: Int, flags: GupFlags) {
    let rig = Rig(order: order, folios: order == 0 ? 1024 : 2)
    var a = rig.base
    while a < rig.base + rig.length { _ = rig.mm.handleFault(a, write: true); a += UInt64(4096) << UInt64(order) }
    let pages = PageArray.allocate(capacity: 1000)
    defer { pages.deallocate() }
    for _ in 0..<3 {
        rig.mm.withUnsafeRecord { mm in
            benchmark.startMeasurement()
            for i in benchmark.scaledIterations {
                blackHole(pinUserPagesFast(mm, rig.base + UInt64(i) * 4096, 1, flags, pages + i))
            }
            benchmark.stopMeasurement()
        }
        rig.kernel.withUnsafeRecord { unpinUserPages($0, pages, 1000) }
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

    Benchmark("fault PTE (4K device, read fault, handle_mm_fault)") { benchmark in
        let rig = Rig(order: 0, folios: 1024)
        for _ in 0..<3 {
            benchmark.startMeasurement()
            for i in benchmark.scaledIterations {
                blackHole(rig.mm.handleFault(rig.base + UInt64(i) * 4096, write: false))
            }
            benchmark.stopMeasurement()
            rig.zapAll()
        }
    }

    Benchmark("fault PMD (2M device, write fault, handle_mm_fault)") { benchmark in
        let rig = Rig(order: 9, folios: 1000)
        benchmark.startMeasurement()
        for i in benchmark.scaledIterations {
            blackHole(rig.mm.handleFault(rig.base + UInt64(i) << 21, write: true))
        }
        benchmark.stopMeasurement()
        rig.zapAll()
    }

    Benchmark("fault PUD + zap (1G device, cycle on one folio)") { benchmark in
        let rig = Rig(order: 18, folios: 1)
        rig.kernel.withUnsafeRecord { k in
            rig.mm.withUnsafeRecord { mm in
                benchmark.startMeasurement()
                for _ in benchmark.scaledIterations {
                    blackHole(rig.mm.handleFault(rig.base, write: true))
                    let w = walk(mm, rig.base)
                    zapHugePud(k, rig.mm.findVMA(rig.base)!, w.pud!, rig.base)
                }
                benchmark.stopMeasurement()
            }
        }
    }

    Benchmark("fault PTE + zap (4K device, cycle on one page)") { benchmark in
        let rig = Rig(order: 0, folios: 1)
        benchmark.startMeasurement()
        for _ in benchmark.scaledIterations {
            blackHole(rig.mm.handleFault(rig.base, write: true))
            rig.zapAll()
        }
        benchmark.stopMeasurement()
    }

    Benchmark("pin_user_pages_fast 1 page per call, FOLL_WRITE (4K device)") { benchmark in
        pinOnePagePerCall(benchmark, order: 0, flags: [.write])
    }

    Benchmark("pin_user_pages_fast 1 page per call, FOLL_WRITE (2M device)") { benchmark in
        pinOnePagePerCall(benchmark, order: 9, flags: [.write])
    }

    // A writable FOLL_LONGTERM pin of a file mapping leaves GUP-fast for the
    // slow path (gup_fast_folio_allowed), as device-dax does in the kernel.
    Benchmark("pin_user_pages_fast 1 page per call, FOLL_WRITE|FOLL_LONGTERM (4K device, slow path)") { benchmark in
        pinOnePagePerCall(benchmark, order: 0, flags: [.write, .longterm])
    }

    // memremap_pages + memunmap_pages of a GENERIC pgmap (what binding and
    // unbinding a device-dax instance costs the mm), vmemmap_shift 9, with
    // struct pages deferred to their first pfn_to_page: binding 1 TiB must
    // cost at most twice binding 1 GiB. One bind + unbind per iteration.
    let bindConfig = Benchmark.Configuration(metrics: [.wallClock, .throughput, .mallocCountTotal],
                                             scalingFactor: .one, maxDuration: .seconds(3), maxIterations: 200)
    for (name, bytes) in [("1 GiB", UInt64(1) << 30), ("64 GiB", UInt64(64) << 30), ("1 TiB", UInt64(1) << 40)] {
        Benchmark("memremap_pages + memunmap_pages, \(name), deferred struct pages", configuration: bindConfig) { benchmark in
            bindUnbind(benchmark, kernel: try! Kernel(), bytes: bytes)
        }
    }
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

    Benchmark("unpin_user_page (4K device)") { benchmark in
        let rig = Rig(order: 0, folios: 1024)
        let pages = PageArray.allocate(capacity: 1000)
        defer { pages.deallocate() }
        for _ in 0..<3 {
            _ = rig.mm.withUnsafeRecord { pinUserPages($0, rig.base, 1000, [.write], pages) }
            rig.kernel.withUnsafeRecord { k in
                benchmark.startMeasurement()
                for i in benchmark.scaledIterations {
                    unpinUserPage(k, Page(pages[i]!))
                }
                benchmark.stopMeasurement()
            }
        }
    }
}
