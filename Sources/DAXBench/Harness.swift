// The measuring harness shared by `daxmm bench` and the package benchmarks
// under Benchmarks/: a case is a batch of operations the harness times, with
// untimed set-up and restore around it, and (for the port's hot paths) the
// floor of the same batch, measured alternately with it in the same process
// so that the ratio port / floor compares like with like.
//
// Times are recorded per operation in picoseconds in an HdrHistogram
// (three significant digits), so a 512-page pin of one large folio, far
// below a nanosecond per page, still reads as a number.

import CDaxBench
import Histogram

/// What a batch is made of: `ops` operations, run by `run` (timed), with
/// `prepare` before and `restore` after (untimed). `run` must do exactly
/// `ops` operations and `restore` must leave the state `prepare` expects.
public struct Batch {
    public var ops: Int
    public var prepare: () -> Void
    public var run: () -> Void
    public var restore: () -> Void
    /// A batch that times itself (nil: the harness times `run`): runs the
    /// batch and returns the nanoseconds its timed part took (e.g. from a
    /// start barrier of several threads to the last one's finish).
    public var timedRun: (() -> Int64)? = nil

    public init(ops: Int, prepare: @escaping () -> Void = {}, run: @escaping () -> Void,
                restore: @escaping () -> Void = {}) {
        self.ops = ops
        self.prepare = prepare
        self.run = run
        self.restore = restore
    }

    /// A self-timed batch: `timedRun` returns the nanoseconds of its timed part.
    public init(ops: Int, prepare: @escaping () -> Void = {}, timedRun: @escaping () -> Int64,
                restore: @escaping () -> Void = {}) {
        self.init(ops: ops, prepare: prepare, run: { _ = timedRun() }, restore: restore)
        self.timedRun = timedRun
    }
}

/// A measured path, ready to run: the port's batch, its floor (nil where no
/// floor applies), and what to release at the end.
public final class Instance {
    public let port: Batch
    public let floor: Batch?
    /// Work a batch of the port does besides `ops` (e.g. 512 pins of one
    /// page each = 512 operations, or one pin of 512 pages counted per page).
    public let unit: String
    private let finish: () -> Void

    // Optional, for the tests and for cases that report more than a ratio.

    /// The folio and mm counters the batches touch (refcount, mapcounts,
    /// pincount, rss): equal before a batch and after its restore.
    public var counters: (() -> [Int64])?
    /// State the port's `run` must change (read after `prepare` and after
    /// `run`): e.g. present or writable entries, pins held.
    public var effect: (() -> [Int64])?
    /// A second batch of the same kind timed alternately with the port's,
    /// which the port's time is compared with (e.g. binding 1 GiB for a
    /// 1 TiB bind): its case id, the batch, and the most the ratio may be.
    public var reference: (id: String, batch: Batch, target: Double)?
    /// Resident memory the case's set-up added (measured once in `make`),
    /// and the most it may be.
    public var residentBytes: Int?
    public var residentTarget: Int?
    /// Pages of the vmemmap (struct pages) resident for the case's range.
    public var vmemmapPages: Int?

    public init(port: Batch, floor: Batch? = nil, unit: String = "op", finish: @escaping () -> Void = {}) {
        self.port = port
        self.floor = floor
        self.unit = unit
        self.finish = finish
    }

    deinit { finish() }
}

public enum BenchGroup: String, Codable, Sendable, CaseIterable {
    case fault, zap, munmap, gup, memremap, threads, kernel, window
}

/// A benchmark case: a stable id (for baselines and JSON), a title, its
/// group, the target its ratio must meet (nil: reported only), and how to
/// build an instance.
public struct BenchCase: Sendable {
    public let id: String
    public let title: String
    public let group: BenchGroup
    /// The ratio port / floor must be at most this (nil: no target).
    public let floorTarget: Double?
    /// For a case whose "floor" batch is a reference the port batch must
    /// beat (one thread vs two): floor.p50 / port.p50, the port's throughput
    /// over the reference's, must be at least this (nil: no such target).
    public var minSpeedup: Double? = nil
    public let make: @Sendable () throws -> Instance

    public init(id: String, title: String, group: BenchGroup, floorTarget: Double? = nil,
                make: @escaping @Sendable () throws -> Instance) {
        self.id = id
        self.title = title
        self.group = group
        self.floorTarget = floorTarget
        self.make = make
    }
}

/// p50, p99 and max of a histogram of picoseconds, in nanoseconds.
public struct Percentiles: Codable, Sendable, Equatable {
    public var p50: Double
    public var p99: Double
    public var max: Double
    public var samples: Int

    public init(p50: Double, p99: Double, max: Double, samples: Int) {
        self.p50 = p50
        self.p99 = p99
        self.max = max
        self.samples = samples
    }

    public init(_ h: Histogram<UInt64>) {
        p50 = Double(h.valueAtPercentile(50)) / 1000
        p99 = Double(h.valueAtPercentile(99)) / 1000
        max = Double(h.max) / 1000
        samples = Int(h.totalCount)
    }
}

/// One case measured.
public struct CaseResult: Codable, Sendable {
    public var id: String
    public var title: String
    public var group: BenchGroup
    public var unit: String
    public var opsPerBatch: Int
    /// Nanoseconds per operation of the port's batches.
    public var port: Percentiles
    /// Nanoseconds per operation of the floor's batches.
    public var floor: Percentiles?
    /// port.p50 / floor.p50.
    public var ratio: Double?
    public var floorTarget: Double?
    /// Resident bytes the case's set-up added, and its target (e.g.
    /// memremap_pages before any fault).
    public var residentBytes: Int? = nil
    public var residentTarget: Int? = nil
    public var vmemmapPages: Int? = nil
    /// The case this one is timed against (its reference batch), port p50 /
    /// reference p50, and the most that ratio may be.
    public var relativeTo: String? = nil
    public var relativeRatio: Double? = nil
    public var relativeTarget: Double? = nil

    /// Whether the relative and resident targets are met (nil: none set).
    public var extraMet: Bool? {
        var r: Bool? = nil
        if let relativeRatio, let relativeTarget { r = relativeRatio <= relativeTarget }
        if let residentBytes, let residentTarget { r = (r ?? true) && residentBytes <= residentTarget }
        return r
    }
    /// BenchCase.minSpeedup, and the measured floor.p50 / port.p50.
    public var minSpeedup: Double? = nil
    public var speedup: Double? = nil

    public var met: Bool? {
        if let speedup, let minSpeedup { return speedup >= minSpeedup }
        guard let ratio, let floorTarget else { return nil }
        return ratio <= floorTarget
    }
}

/// How long and how often to sample.
public struct Sampling: Sendable {
    /// Batches per side at least, unless `maxSeconds` runs out first.
    public var minSamples: Int
    public var maxSamples: Int
    /// Wall-clock budget per case, both sides together.
    public var maxSeconds: Double

    public init(minSamples: Int = 20, maxSamples: Int = 400, maxSeconds: Double = 1.5) {
        self.minSamples = minSamples
        self.maxSamples = maxSamples
        self.maxSeconds = maxSeconds
    }

    public static let quick = Sampling(minSamples: 5, maxSamples: 40, maxSeconds: 0.3)
}

/// Times one batch: picoseconds per operation.
@inline(never)
func timeBatch(_ b: Batch) -> UInt64 {
    b.prepare()
    let ns: Int64
    if let timed = b.timedRun {
        ns = timed()
    } else {
        let t0 = dax_bench_now_ns()
        b.run()
        ns = dax_bench_now_ns() - t0
    }
    b.restore()
    let ps = UInt64(max(ns, 0)) * 1000 / UInt64(max(b.ops, 1))
    return max(ps, 1)
}

func newHistogram() -> Histogram<UInt64> {
    // 1 ps to 1000 s per operation, three significant digits.
    Histogram<UInt64>(lowestDiscernibleValue: 1, highestTrackableValue: 1_000_000_000_000_000,
                      numberOfSignificantValueDigits: .three)
}

/// Measures an instance: one warm-up batch per side, then port and floor
/// batches alternately until `sampling` says stop.
public func measure(_ c: BenchCase, _ inst: Instance, sampling: Sampling = Sampling()) -> CaseResult {
    var hp = newHistogram(), hf = newHistogram(), hr = newHistogram()
    _ = timeBatch(inst.port)
    if let f = inst.floor { _ = timeBatch(f) }
    if let r = inst.reference { _ = timeBatch(r.batch) }
    let start = dax_bench_now_ns()
    let budget = Int64(sampling.maxSeconds * 1e9)
    var n = 0
    while n < sampling.maxSamples {
        _ = hp.record(timeBatch(inst.port))
        if let f = inst.floor { _ = hf.record(timeBatch(f)) }
        if let r = inst.reference { _ = hr.record(timeBatch(r.batch)) }
        n += 1
        if n >= sampling.minSamples && dax_bench_now_ns() - start > budget { break }
    }
    let port = Percentiles(hp)
    let floor = inst.floor.map { _ in Percentiles(hf) }
    let ratio = floor.map { port.p50 / max($0.p50, 0.001) }
    var result = CaseResult(id: c.id, title: c.title, group: c.group, unit: inst.unit, opsPerBatch: inst.port.ops,
                            port: port, floor: floor, ratio: ratio, floorTarget: c.floorTarget)
    result.residentBytes = inst.residentBytes
    result.residentTarget = inst.residentTarget
    result.vmemmapPages = inst.vmemmapPages
    if let r = inst.reference {
        result.relativeTo = r.id
        result.relativeRatio = port.p50 / max(Percentiles(hr).p50, 0.001)
        result.relativeTarget = r.target
    }
    if let m = c.minSpeedup {
        result.minSpeedup = m
        result.speedup = floor.map { $0.p50 / max(port.p50, 0.001) }
    }
    return result
}
