// The drivers' fault paths through handle_mm_fault: device-dax at 4K and 2M
// alignment, and fs-dax (entry lookup and locking, iomap, association, the
// temporary-reference protocol). 1000 faults per sample, mappings zapped (and
// for fs-dax the layout broken) outside the measurement.

import Benchmark
import CDaxMM
import DAXBase
import DAXCore
import MMCore

let benchmarks: @Sendable () -> Void = {
    Benchmark.defaultConfiguration = .init(
        metrics: [.wallClock, .throughput, .mallocCountTotal],
        scalingFactor: .kilo,
        maxDuration: .seconds(3),
        maxIterations: 100)

    for (name, align) in [("4K", UInt64(4096)), ("2M", UInt64(2 << 20))] {
        Benchmark("device-dax fault, \(name) align (dev_dax_huge_fault)") { benchmark in
            let kernel = try! Kernel(physBits: 42)
            let size = align * 1024
            let dev = try! DevDax(kernel: kernel, ranges: [PhysicalRange(start: 1 << 36, size: size)], align: align)
            try! dev.probe()
            let mm = try! MM(kernel: kernel)
            let base = try! mm.mmap(dev.mmapRequest(length: size))
            benchmark.startMeasurement()
            for i in benchmark.scaledIterations {
                blackHole(mm.handleFault(base + UInt64(i) * align, write: true))
            }
            benchmark.stopMeasurement()
            try! mm.munmap(base, size)
        }
    }

    Benchmark("fs-dax PTE fault on allocated blocks (dax_iomap_pte_fault)") { benchmark in
        let kernel = try! Kernel(physBits: 40)
        let fs = try! DaxFS(kernel: kernel, start: 1 << 32, size: 8 << 20)
        let f = try! fs.create(name: "bench", maxSize: 4 << 20)
        try! f.allocate(pgoff: 0, pages: 1024)
        let mm = try! MM(kernel: kernel)
        // 64 KiB windows: smaller than a PMD, so every fault is a PTE fault.
        var windows: [UInt64] = []
        for w in 0..<63 { windows.append(try! mm.mmap(f.mmapRequest(length: 64 << 10, pgoff: UInt64(w) * 16))) }
        benchmark.startMeasurement()
        for i in benchmark.scaledIterations {
            blackHole(mm.handleFault(windows[(i >> 4) % 63] + UInt64(i & 15) * 4096, write: true))
        }
        benchmark.stopMeasurement()
        for w in windows { try! mm.munmap(w, 64 << 10) }
        try! f.breakLayout()
    }

    Benchmark("fs-dax PMD fault + zap cycle (dax_iomap_pmd_fault)") { benchmark in
        let kernel = try! Kernel(physBits: 40)
        let fs = try! DaxFS(kernel: kernel, start: 1 << 32, size: 8 << 20)
        let f = try! fs.create(name: "bench", maxSize: 2 << 20)
        try! f.allocate(pgoff: 0, pages: 512)
        let mm = try! MM(kernel: kernel)
        let base = try! mm.mmap(f.mmapRequest(length: 2 << 20))
        benchmark.startMeasurement()
        for _ in benchmark.scaledIterations {
            blackHole(mm.handleFault(base, write: true))
            mm.lockRead()
            mm.withUnsafeRecord { zapPageRange($0, base, base + (2 << 20)) }
            mm.unlockRead()
        }
        benchmark.stopMeasurement()
        try! f.breakLayout()
    }
}
