// `daxmm exercise`: drive the port over a device through a managed window.
// Threads touch the window in a pattern (sequential, random, strided) with a
// write ratio; every first touch of an extent is a CPU fault the port serves;
// writes put a value derived from the seed and the device offset, reads of
// written words check it. Then pins (io_uring FOLL_LONGTERM, O_DIRECT
// FOLL_PIN) made for real and mirrored in the port, the port's invariants,
// the cross-checks against the real kernel, and a last check of every
// written word through an independent mapping of the device.

import CDaxMM
import CDaxWindow
import DAXBase
import DAXCore
import DAXDevice
import MMCore

#if canImport(Glibc)
import Glibc
#endif

public enum AccessPattern: String, Sendable, CaseIterable, Codable {
    case sequential, random, strided
}

public enum PinMode: String, Sendable, CaseIterable, Codable {
    /// No pins.
    case none
    /// io_uring buffer registration: the kernel pins FOLL_LONGTERM.
    case uring
    /// O_DIRECT reads and writes into the window: the kernel pins FOLL_PIN.
    case odirect
}

public struct ExerciseOptions: Sendable {
    public var mode: BindMode = .devdax
    /// Bytes; nil: the whole device (fs-dax: the file) up to 1 GiB.
    public var windowSize: UInt64? = nil
    public var windowOffset: UInt64 = 0
    public var pattern: AccessPattern = .random
    public var threads: Int = 2
    public var writeRatio: Double = 0.5
    public var pins: PinMode = .none
    /// Accesses in all (nil: four per page of the window, at most 1,000,000).
    public var ops: Int? = nil
    /// Stop after this many seconds (with `ops`, whichever comes first).
    public var duration: Double? = nil
    public var seed: UInt64 = 1
    /// A file on a real `-o dax` mount, for the kernel's side of FOLL_LONGTERM
    /// on fs-dax.
    public var fsdaxFile: String? = nil
    /// The O_DIRECT target: a file or a block device (e.g. /dev/pmem0) that
    /// the pin phase overwrites; nil: a scratch file in `scratchDirectory`.
    public var directIOPath: String? = nil
    /// Where O_DIRECT scratch files go.
    public var scratchDirectory: String = "/var/tmp"
    /// Progress on stderr.
    public var progress: Bool = false
    public init() {}
}

/// One named result line: a cross-check, a pin check, a data check.
public struct CheckResult: Sendable, Codable, CustomStringConvertible {
    public enum Status: String, Sendable, Codable { case pass, fail, skip }
    public var name: String
    public var status: Status
    public var detail: String
    public init(_ name: String, _ status: Status, _ detail: String) {
        self.name = name; self.status = status; self.detail = detail
    }
    public var description: String { "\(status.rawValue.uppercased()) \(name): \(detail)" }
}

public struct Percentiles: Sendable, Codable {
    public var count: Int
    public var mean: Double = 0
    public var p50: Double, p99: Double, max: Double
    init(count: Int, p50: Double, p99: Double, max: Double) { self.count = count; self.p50 = p50; self.p99 = p99; self.max = max }
    static func of(_ xs: [UInt64]) -> Percentiles {
        guard !xs.isEmpty else { return Percentiles(count: 0, p50: 0, p99: 0, max: 0) }
        let s = xs.sorted()
        func at(_ q: Double) -> Double { Double(s[Swift.min(s.count - 1, Int(Double(s.count - 1) * q))]) }
        var p = Percentiles(count: s.count, p50: at(0.5), p99: at(0.99), max: Double(s.last!))
        p.mean = Double(s.reduce(0, &+)) / Double(s.count)
        return p
    }
}

public struct ExerciseResult: Sendable, Codable {
    public var device: String
    public var mode: String
    public var kernelRelease: String
    public var optimized: Bool
    public var align: UInt64
    public var windowBase: UInt64
    public var windowSize: UInt64
    public var threads: Int
    public var pattern: String
    public var writeRatio: Double
    public var seed: UInt64
    public var ops: Int = 0
    public var reads: Int = 0
    public var writes: Int = 0
    public var seconds: Double = 0
    /// Host extents the port's inserts mapped, by level (PTE, PMD, PUD).
    public var extentsMapped: [Int64] = [0, 0, 0]
    public var zeroPageMaps: [Int64] = [0, 0, 0]
    public var writeUpgrades: [Int64] = [0, 0, 0]
    public var extentsUnmapped: [Int64] = [0, 0, 0]
    /// SIGSEGVs served by the port.
    public var windowFaults: Int64 = 0
    /// Mean time inside the port's handle_mm_fault per window fault (ns),
    /// without the host mapping calls its arch hook makes.
    public var portNanosPerFault: Double = 0
    /// Mean time of the host mmap/mprotect calls per window fault (ns).
    public var hostMapNanosPerFault: Double = 0
    /// Mean time inside the handler per window fault (ns).
    public var handlerNanosPerFault: Double = 0
    /// An access that faulted, end to end (SIGSEGV, port, host mapping, retry).
    public var faultingAccessNanos = Percentiles(count: 0, p50: 0, p99: 0, max: 0)
    /// An access that did not fault.
    public var plainAccessNanos = Percentiles(count: 0, p50: 0, p99: 0, max: 0)
    public var wordsVerified: Int = 0
    public var mismatches: Int = 0
    public var checks: [CheckResult] = []
    public var invariantViolations: [String] = []
    public var reports: [String] = []
    public var failures: [String] = []
    public var ok: Bool { failures.isEmpty && invariantViolations.isEmpty && mismatches == 0 && !checks.contains { $0.status == .fail } }
}

/// The value the exerciser writes at a device (or file) byte offset.
@inline(__always)
public func exerciseValue(seed: UInt64, offset: UInt64) -> UInt64 {
    SplitMix64.mix(seed &+ offset &* 0x9E37_79B9) | 1
}

/// The word a page's accesses use: one per page, at an offset that depends on
/// the page (so the data check covers every word position over a run).
@inline(__always)
func wordOffset(seed: UInt64, page: UInt64) -> UInt64 {
    page * UInt64(pageSize) + (SplitMix64.mix(seed ^ page) % UInt64(pageSize / 8)) * 8
}

/// Shared state of the worker threads: C-layout counters and flags touched
/// with atomics, allocated before the threads start.
private final class WorkerShared: @unchecked Sendable {
    // @unchecked: every field is written by one thread (its own slot) or
    // through atomics, and read after the threads are joined.
    let written: UnsafeMutablePointer<UInt8>      // per page: a write landed
    let stop: UnsafeMutablePointer<UInt32>
    let done: UnsafeMutablePointer<Int64>          // ops done, all threads
    let pages: Int
    var perThread: [ThreadOutcome]
    init(pages: Int, threads: Int) {
        self.pages = pages
        written = .allocate(capacity: pages); written.initialize(repeating: 0, count: pages)
        stop = .allocate(capacity: 1); stop.initialize(to: 0)
        done = .allocate(capacity: 1); done.initialize(to: 0)
        perThread = Array(repeating: ThreadOutcome(), count: threads)
    }
    deinit { written.deallocate(); stop.deallocate(); done.deallocate() }
}

struct ThreadOutcome: Sendable {
    var ops = 0, reads = 0, writes = 0, mismatches = 0
    var faulting: [UInt64] = []
    var plain: [UInt64] = []
    var failure: AccessResult? = nil
    var failureOffset: UInt64 = 0
}

public final class Exerciser {
    public let binding: Binding
    public let options: ExerciseOptions
    public private(set) var window: Window?
    public internal(set) var result: ExerciseResult
    /// The workers' shared state (the per-page "written" map), kept for the
    /// later phases.
    private var shared: WorkerShared?

    /// Marks a page of the window as written with the run's value.
    func markWritten(_ page: UInt64) {
        if let s = shared, Int(page) < s.pages { dax_win_mark(s.written + Int(page)) }
    }

    /// Validates the options against the device and binds it. Every bad
    /// input is a `RuntimeError.invalid` with one line naming it.
    public init(device: any DaxDevice, options o: ExerciseOptions) throws(RuntimeError) {
        guard o.threads >= 1 else { throw .invalid("threads must be at least 1 (got \(o.threads))") }
        guard o.threads <= 256 else { throw .invalid("threads must be at most 256 (got \(o.threads))") }
        guard o.writeRatio >= 0, o.writeRatio <= 1 else { throw .invalid("write ratio must be in [0, 1] (got \(o.writeRatio))") }
        if let n = o.ops, n < 1 { throw .invalid("op count must be at least 1 (got \(n))") }
        if let d = o.duration, !(d > 0) { throw .invalid("duration must be positive (got \(d))") }
        let align = UInt64(device.align.bytes)
        if let w = o.windowSize {
            guard w > 0 else { throw .invalid("\(device.name): window size 0") }
            guard w % align == 0 else {
                throw .invalid("\(device.name): window size \(formatSize(w)) is not a multiple of the device alignment \(device.align)")
            }
            let room = device.size > o.windowOffset ? device.size - o.windowOffset : 0
            guard w <= room else {
                throw .invalid("\(device.name): window of \(formatSize(w)) at offset \(hex(o.windowOffset)) is larger than the device (\(formatSize(device.size)))")
            }
        }
        guard o.windowOffset % align == 0 else {
            throw .invalid("\(device.name): window offset \(hex(o.windowOffset)) is not aligned to \(device.align)")
        }
        if o.pins == .uring, let why = uringUnavailableReason() {
            throw .invalid("pin mode uring is not available here: \(why)")
        }
        let size = o.windowSize ?? Swift.min(device.size - o.windowOffset, 1 << 30)
        let b = try Binding(device: device, mode: o.mode, fileSize: o.mode == .fsdax ? o.windowOffset + size : nil)
        binding = b
        options = o
        result = ExerciseResult(device: device.name, mode: o.mode.rawValue, kernelRelease: kernelRelease(),
                                optimized: !_isDebugAssertConfiguration(), align: align, windowBase: 0,
                                windowSize: size, threads: o.threads, pattern: o.pattern.rawValue,
                                writeRatio: o.writeRatio, seed: o.seed)
    }

    /// Runs everything; the result says what passed.
    public func run() -> ExerciseResult {
        do {
            let w = try binding.openWindow(length: result.windowSize, offset: options.windowOffset)
            window = w
            result.windowBase = w.base
        } catch {
            result.failures.append("\(error)")
            return result
        }
        let w = window!
        let t0 = monotonicNanos()
        let shared = runAccesses(w)
        self.shared = shared
        result.seconds = Double(monotonicNanos() - t0) / 1e9
        // Per-fault figures of the access phase (later phases map and unmap
        // too).
        let s0 = w.stats, hostNanos = binding.mirrorStats.nanos
        result.windowFaults = s0.faults
        if s0.faults > 0 {
            result.hostMapNanosPerFault = Double(hostNanos) / Double(s0.faults)
            result.portNanosPerFault = Swift.max(0, Double(s0.portNanos - hostNanos)) / Double(s0.faults)
            result.handlerNanosPerFault = Double(s0.handlerNanos) / Double(s0.faults)
        }
        collectAccesses(shared, w)
        phaseInvariants("after the faults")
        if !binding.isGone && result.failures.isEmpty {
            runPins(w)
            phaseInvariants("after the pins")
            runCrossChecks(w)
            phaseInvariants("after the cross-checks")
            verifyData(w, shared)
        }
        w.closeWindow()
        collectStats(w)
        phaseInvariants("after munmap")
        for r in w.takeReports() { result.reports.append(r.description) }
        if !binding.isGone && result.failures.isEmpty {
            runFreshWindowChecks()
            phaseInvariants("after the fresh-window checks")
            let m = binding.mirrorStats
            if m.errors > 0 { result.failures.append("\(m.errors) host mapping call(s) failed") }
        }
        let lost = takeWindowReports(in: 0..<0).lost
        if lost > 0 { result.failures.append("\(lost) window report(s) were overwritten before being read") }
        return result
    }

    // MARK: accesses

    private func runAccesses(_ w: Window) -> WorkerShared {
        let pages = Int(w.length / UInt64(pageSize))
        let total = options.ops ?? Swift.min(pages * 4, 1_000_000)
        let nthreads = options.threads
        let shared = WorkerShared(pages: pages, threads: nthreads)
        let seed = options.seed
        let base = w.base
        let fileOffset = w.offset
        let writeRatio = options.writeRatio
        let pattern = options.pattern
        let deadline = options.duration.map { monotonicNanos() + UInt64($0 * 1e9) }
        let extentPages = Swift.max(1, Int(binding.align) / pageSize)
        let results = Locked([ThreadOutcome](repeating: ThreadOutcome(), count: nthreads))
        let progress = options.progress
        let progressDone = Locked(false)

        let worker: @Sendable (Int) -> Void = { t in
            var out = ThreadOutcome()
            let share = total / nthreads + (t < total % nthreads ? 1 : 0)
            // Timing samples: at most `cap` of each kind (preallocated, so the
            // loop does not allocate).
            let cap = 1 << 18
            out.faulting.reserveCapacity(Swift.min(share, pages, cap))
            out.plain.reserveCapacity(Swift.min(share, cap))
            var rng = SplitMix64(seed: seed ^ UInt64(t + 1) &* 0xD1B5_4A32_D192_ED03)
            let stride = extentPages + 1
            let startPage = pages * t / nthreads
            for i in 0..<share {
                if i & 255 == 0 {
                    if dax_load_u32(shared.stop) != 0 { break }
                    if let d = deadline, monotonicNanos() >= d { break }
                }
                let page: Int
                switch pattern {
                case .sequential: page = (startPage + i) % pages
                case .random: page = Int(rng.next() % UInt64(pages))
                case .strided: page = (startPage + i * stride) % pages
                }
                let off = wordOffset(seed: seed, page: UInt64(page))
                let value = exerciseValue(seed: seed, offset: fileOffset + off)
                let write = Double(rng.next() >> 11) / Double(1 << 53) < writeRatio
                // Whether a write of this value had landed before the access
                // (read first: a write that lands during a read need not be seen).
                let writtenBefore = dax_win_marked(shared.written + page)
                let f0 = dax_window_thread_faults()
                let a0 = monotonicNanos()
                let r = guardedAccess(base + off, write: write, value: value)
                let ns = monotonicNanos() - a0
                if dax_window_thread_faults() != f0 {
                    if out.faulting.count < cap { out.faulting.append(ns) }
                } else if out.plain.count < cap {
                    out.plain.append(ns)
                }
                guard r.ok else {
                    out.failure = r
                    out.failureOffset = off
                    dax_store_u32(shared.stop, 1)
                    break
                }
                if write {
                    out.writes += 1
                    dax_win_mark(shared.written + page)
                } else {
                    out.reads += 1
                    if writtenBefore && r.value != value { out.mismatches += 1 }
                }
                out.ops += 1
                if i & 63 == 63 { dax_atomic64_add(shared.done, 64) }
            }
            results.withLock { $0[t] = out }
        }
        if progress {
            // The progress line runs on its own thread; workers on theirs.
            let total64 = Int64(total)
            runOnThreads(nthreads + 1) { t in
                if t < nthreads { worker(t); return }
                while !progressDone.withLock({ $0 }) {
                    let d = dax_atomic64_read(shared.done)
                    drawProgress(Double(Swift.min(d, total64)) / Double(Swift.max(total64, 1)))
                    if d >= total64 || dax_load_u32(shared.stop) != 0 { break }
                    usleep(100_000)
                    if results.withLock({ r in r.allSatisfy { $0.ops > 0 || $0.failure != nil } }) { break }
                }
                drawProgress(1, final: true)
            }
        } else {
            runOnThreads(nthreads, worker)
        }
        progressDone.withLock { $0 = true }
        shared.perThread = results.withLock { $0 }
        return shared
    }

    private func collectAccesses(_ shared: WorkerShared, _ w: Window) {
        var faulting: [UInt64] = [], plain: [UInt64] = []
        for o in shared.perThread {
            result.ops += o.ops
            result.reads += o.reads
            result.writes += o.writes
            result.mismatches += o.mismatches
            faulting += o.faulting
            plain += o.plain
        }
        result.faultingAccessNanos = .of(faulting)
        result.plainAccessNanos = .of(plain)
        if result.mismatches > 0 {
            result.failures.append("\(result.mismatches) read(s) through the window did not return the value written")
        }
        guard let bad = shared.perThread.first(where: { $0.failure != nil }) else { return }
        let r = bad.failure!
        let reports = w.takeReports()
        for rep in reports { result.reports.append(rep.description) }
        let extent = bad.failureOffset & ~(binding.align - 1)
        let devGone = reports.contains { $0.kind == .hostSigbus || $0.kind == .mirrorFailed && $0.code == ENXIO }
        var line = "access at window offset \(hex(bad.failureOffset)) (extent \(hex(extent)) of \(formatSize(binding.align)), \(binding.mode == .devdax ? "device" : "file") offset \(hex(w.offset + extent))) raised \(r)"
        if devGone {
            line += ": the device went away under the window"
            do {
                try binding.deviceGone()
                line += "; the port zapped its entries (kill_dev_dax): rss \(binding.mm.rssFilePages) page(s) left"
            } catch {
                line += "; kill_dev_dax in the port failed: \(error)"
            }
        }
        result.failures.append(line)
    }

    private func collectStats(_ w: Window) {
        let m = binding.mirrorStats
        result.extentsMapped = m.maps
        result.zeroPageMaps = m.zeroMaps
        result.writeUpgrades = m.protects
        result.extentsUnmapped = m.unmaps
        if m.errors > 0 { result.failures.append("\(m.errors) host mapping call(s) failed") }
    }

    func phaseInvariants(_ phase: String) {
        for v in binding.checkInvariants() { result.invariantViolations.append("\(phase): \(v)") }
    }

    // MARK: data

    /// Every word written through the window, read through an independent
    /// MAP_SHARED mapping of the device.
    private func verifyData(_ w: Window, _ shared: WorkerShared) {
        var verified = 0, bad = 0
        var firstBad: String? = nil
        let seed = options.seed
        // Map the device range behind the window (devdax: the window's own
        // device range; fs-dax: the whole device, blocks are anywhere).
        let file = binding.file
        let mapOffset: UInt64 = file == nil ? w.offset : 0
        let mapLength: UInt64 = file == nil ? w.length : binding.device.size
        let m: DeviceMapping
        do { m = try binding.device.map(offset: mapOffset, length: mapLength, options: .shared) } catch {
            result.checks.append(CheckResult("data-independent-mapping", .fail, "cannot map the device: \(error)"))
            return
        }
        defer { m.unmap() }
        m.withUnsafeMutableBytes { buf in
            for page in 0..<shared.pages where dax_win_marked(shared.written + page) {
                let off = wordOffset(seed: seed, page: UInt64(page))
                let devOff: UInt64
                if let f = file {
                    guard let blk = f.block(at: (w.offset + off) >> UInt64(pageShift)) else {
                        bad += 1
                        if firstBad == nil { firstBad = "file page \(page) has no block after a write" }
                        continue
                    }
                    devOff = blk * UInt64(pageSize) + (off & UInt64(pageSize - 1))
                } else {
                    devOff = off
                }
                let got = buf.load(fromByteOffset: Int(devOff), as: UInt64.self)
                let want = exerciseValue(seed: seed, offset: w.offset + off)
                verified += 1
                if got != want {
                    bad += 1
                    if firstBad == nil { firstBad = "device offset \(hex(mapOffset + devOff)): \(hex(got)), wrote \(hex(want))" }
                }
            }
        }
        result.wordsVerified = verified
        result.mismatches += bad
        result.checks.append(CheckResult("data-independent-mapping", bad == 0 ? .pass : .fail,
            bad == 0 ? "\(verified) written word(s) read back identically through a second mapping of the device"
                     : "\(bad) of \(verified) word(s) differ; first: \(firstBad ?? "?")"))
    }
}

private func drawProgress(_ fraction: Double, final: Bool = false) {
    let width = 40
    let n = Int(fraction * Double(width))
    let bar = String(repeating: "#", count: n) + String(repeating: ".", count: width - n)
    var line = "\r[\(bar)] \(Int(fraction * 100))%"
    if final { line += "\n" }
    line.withUTF8 { _ = write(2, $0.baseAddress, $0.count) }
}

/// uname -r
public func kernelRelease() -> String {
    var u = utsname()
    uname(&u)
    return withUnsafeBytes(of: &u.release) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
}
