// The port's hot paths: faults through handle_mm_fault at PTE, PMD and PUD
// level, and pin_user_pages_fast. Each sample runs 1000 operations
// (scalingFactor .kilo), so figures are per operation; the malloc counter
// covers only the measured part and must read 0.

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
