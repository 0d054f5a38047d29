// The primitives every fault and pin is built from: atomics on struct dax_page
// records. Each iteration does 1M operations over a 64 MiB array of records
// (one record per 4 KiB pfn of 4 GiB), so figures are nanoseconds per op and
// the malloc counter must read 0.

import Benchmark
import CDaxMM

let records = 1 << 20

let benchmarks: @Sendable () -> Void = {
    Benchmark.defaultConfiguration = .init(
        metrics: [.wallClock, .throughput, .mallocCountTotal],
        scalingFactor: .mega,
        maxDuration: .seconds(2),
        maxIterations: 50)

    Benchmark("dax_page refcount inc+dec (folio_get/folio_put)") { benchmark in
        let pages = UnsafeMutablePointer<dax_page>.allocate(capacity: records)
        pages.initialize(repeating: dax_page(), count: records)
        defer { pages.deallocate() }
        benchmark.startMeasurement()
        for i in benchmark.scaledIterations {
            let p = pages + (i & (records - 1))
            dax_atomic_add(&p.pointee.refcount, 1)
            blackHole(dax_atomic_sub_return(&p.pointee.refcount, 1))
        }
        benchmark.stopMeasurement()
    }

    Benchmark("dax_page try-get (atomic_add_unless 0)") { benchmark in
        let pages = UnsafeMutablePointer<dax_page>.allocate(capacity: records)
        pages.initialize(repeating: dax_page(refcount: 1), count: records)
        defer { pages.deallocate() }
        benchmark.startMeasurement()
        for i in benchmark.scaledIterations {
            let p = pages + (i & (records - 1))
            blackHole(dax_atomic_add_unless(&p.pointee.refcount, 1, 0))
        }
        benchmark.stopMeasurement()
    }

    Benchmark("dax_page pin (refcount + pincount)") { benchmark in
        let pages = UnsafeMutablePointer<dax_page>.allocate(capacity: records)
        pages.initialize(repeating: dax_page(refcount: 1), count: records)
        defer { pages.deallocate() }
        benchmark.startMeasurement()
        for i in benchmark.scaledIterations {
            let p = pages + (i & (records - 1))
            dax_atomic_add(&p.pointee.refcount, 1)
            dax_atomic_add(&p.pointee.pincount, 1)
        }
        benchmark.stopMeasurement()
    }
}

extension dax_page {
    init(refcount: Int32) {
        self.init()
        self.refcount = refcount
        self.mapcount = -1
    }
}
