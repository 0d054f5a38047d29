// Every case of DAXBench's PortCases.all as a package benchmark. Run:
//
//   cd Benchmarks && swift package benchmark --target PortBenchmarks --scale
//
// One iteration is one batch of the case: its prepare and restore run
// outside startMeasurement/stopMeasurement. Hot-path batches do 1000
// operations (scalingFactor .kilo), so with --scale wallClock and throughput
// are per operation (fault, entry, page); memremap batches are one bind +
// unbind (.one).
//
// Right after each port batch the case's floor batch is timed in the same
// process, and "port/floor x100" records the ratio of the two (x100, per
// iteration); memremap cases record their time against binding 1 GiB
// ("port/1G x100") and the memory resident after the bind, before any fault.
//
// Malloc: the fault, zap and GUP paths must not allocate. Each such batch
// reads the malloc interposer's counters around its run; one allocation
// fails the benchmark (Benchmark.error, listed at the end of the run) and
// makes the benchmark's process exit 1 (an atexit handler), which the
// benchmark tool counts as a failed job: `swift package benchmark` goes on
// with the other benchmarks and exits non-zero. (A Benchmark.error alone
// fails only the baseline check/compare commands.)

import Benchmark
import DAXBase
import DAXBench
import MallocInterposerSwift

#if canImport(Glibc)
import Glibc
#endif

/// Batches that allocated on a path that must not (this process runs one
/// benchmark).
nonisolated(unsafe) var allocatingBatches = 0

/// Operations per hot-path batch: .kilo scales the figures to one.
let batch = 1000

let ratioMetric = BenchmarkMetric.custom("port/floor x100", polarity: .prefersSmaller, useScalingFactor: false)
let relativeMetric = BenchmarkMetric.custom("port/1G x100", polarity: .prefersSmaller, useScalingFactor: false)
let residentMetric = BenchmarkMetric.custom("resident KiB after bind", polarity: .prefersSmaller, useScalingFactor: false)
let speedupMetric = BenchmarkMetric.custom("two/one threads x100", polarity: .prefersLarger, useScalingFactor: false)

/// The paths that must not allocate.
func mustNotAllocate(_ c: BenchCase) -> Bool { [.fault, .zap, .gup].contains(c.group) }

/// Times one run of a batch outside the benchmark's measurement: nanoseconds.
func timed(_ b: Batch) -> UInt64 {
    b.prepare()
    let t0 = monotonicNanos()
    b.run()
    let t1 = monotonicNanos()
    b.restore()
    return t1 - t0
}

func ratioX100(_ a: UInt64, _ b: UInt64) -> Int { Int((Double(a) / Double(max(b, 1)) * 100).rounded()) }

/// Two threads against one (ThreadCases): each iteration times one batch of
/// each (self-timed from the common start barrier) and records the speedup;
/// wallClock is the two-thread batch.
func registerThreads(_ c: BenchCase) {
    let config = Benchmark.Configuration(metrics: [.wallClock, .mallocCountTotal, speedupMetric], scalingFactor: .one,
                                         maxDuration: .seconds(2), maxIterations: 300)
    Benchmark(c.id, configuration: config, closure: { benchmark, inst in
        guard let two = inst.port.timedRun, let oneBatch = inst.floor, let one = oneBatch.timedRun else {
            benchmark.error("\(c.id): not a self-timed pair of batches")
            return
        }
        inst.port.prepare()
        benchmark.startMeasurement()
        let t2 = two()
        benchmark.stopMeasurement()
        inst.port.restore()
        oneBatch.prepare()
        let t1 = one()
        oneBatch.restore()
        // per-fault times: one thread t1 / n, two threads t2 / 2n.
        let speedup = (Double(t1) / Double(oneBatch.ops)) / max(Double(t2) / Double(inst.port.ops), 0.001)
        benchmark.measurement(speedupMetric, Int((speedup * 100).rounded()))
    }, setup: {
        try c.make()
    })
}

func register(_ c: BenchCase) {
    if c.group == .threads { return registerThreads(c) }
    let memremap = c.group == .memremap
    let metrics: [BenchmarkMetric] = [.wallClock, .throughput, .mallocCountTotal]
        + (memremap ? [relativeMetric, residentMetric] : (c.group == .munmap || c.floorTarget != nil ? [ratioMetric] : []))
    let config = Benchmark.Configuration(metrics: metrics, scalingFactor: memremap ? .one : .kilo,
                                         maxDuration: .seconds(2), maxIterations: memremap ? 50 : 300)
    let check = mustNotAllocate(c)
    Benchmark(c.id, configuration: config, closure: { benchmark, inst in
        precondition(memremap || inst.port.ops == batch, "\(c.id): \(inst.port.ops) operations per batch")
        inst.port.prepare()
        benchmark.startMeasurement()
        let m0 = check ? MallocInterposerSwift.getStatistics().mallocCount : 0
        let t0 = monotonicNanos()
        inst.port.run()
        let t1 = monotonicNanos()
        let m1 = check ? MallocInterposerSwift.getStatistics().mallocCount : 0
        benchmark.stopMeasurement()
        inst.port.restore()
        if m1 != m0 {
            allocatingBatches += 1
            benchmark.error("\(c.id): \(m1 - m0) allocations in one batch of a path that must not allocate")
        }
        if let f = inst.floor { benchmark.measurement(ratioMetric, ratioX100(t1 - t0, timed(f))) }
        if let r = inst.reference { benchmark.measurement(relativeMetric, ratioX100(t1 - t0, timed(r.batch))) }
        if let rb = inst.residentBytes { benchmark.measurement(residentMetric, rb >> 10) }
    }, setup: {
        try c.make()
    })
}

let benchmarks: @Sendable () -> Void = {
    atexit { if allocatingBatches > 0 { _exit(1) } }
    // PortCases.all includes ThreadCases (two threads against one).
    for c in PortCases.all(batch: batch) { register(c) }
}
