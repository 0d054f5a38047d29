// The exerciser (DAXRuntime's Exerciser, what `daxmm exercise` runs) on
// the real devices, in this process: faults served by the port at each
// alignment with io_uring FOLL_LONGTERM pins, O_DIRECT FOLL_PIN pins from
// the fsdax namespace's block device, fs-dax mode over the 4K device,
// FOLL_LONGTERM on fs-dax refused by the port and by the kernel on a real
// ext4 -o dax file, bad input, and the namespace reconfigured under a live
// window. Each run's result must hold: no failure, no invariant violation,
// no word read back wrong, every named check passed.
//
// Sized for a few seconds of guest time each (a debug build under TCG):
// smaller windows and fewer accesses than a manual `daxmm exercise`.

import DAXBase
import DAXDevice
import DAXRuntime
import Foundation
import MMCore

#if canImport(Glibc)
import Glibc
#endif

enum MigratedExercise {
    /// Runs the exerciser over the device of `align` with `options`; the
    /// checks named in `mustPass` must be among its results and pass.
    @discardableResult
    static func run(_ t: TestContext, _ align: DaxAlign, _ options: ExerciseOptions, mustPass: [String]) throws -> ExerciseResult {
        let dev = try t.openDevDax(align)
        let ex = try t.must("daxmm exercise on \(dev.name)") { try Exerciser(device: dev, options: options) }
        t.track(ex.binding)
        let r = ex.run()
        log(t, r)
        t.expect(r.windowFaults > 0, "the port served no window fault")
        t.expect(r.ops > 0, "no access was made")
        for f in r.failures { t.expect(false, "exercise: \(f)") }
        for v in r.invariantViolations { t.expect(false, "port invariant: \(v)") }
        t.expectEqual(r.mismatches, 0, "words read back wrong")
        for c in r.checks where c.status == .fail { t.expect(false, "\(c.name): \(c.detail)") }
        for name in mustPass {
            let c = r.checks.first { $0.name == name }
            t.expect(c?.status == .pass, "check \(name): \(c.map { "\($0.status.rawValue): \($0.detail)" } ?? "not run")")
        }
        t.expect(r.ok, "the exercise result is not ok")
        return r
    }

    static func log(_ t: TestContext, _ r: ExerciseResult) {
        t.log("exercise: \(r.device), \(r.mode) mode, kernel \(r.kernelRelease), window \(hex(r.windowBase)) +\(formatSize(r.windowSize))")
        t.log("  \(r.ops) accesses (\(r.reads) reads, \(r.writes) writes), \(r.threads) thread(s), \(r.pattern), \(String(format: "%.2f", r.seconds)) s; \(r.windowFaults) window faults; extents mapped 4K/2M/1G \(r.extentsMapped)")
        t.log("  \(r.wordsVerified) written word(s) verified, \(r.mismatches) mismatch(es)")
        for c in r.checks { t.log("  \(c)") }
        for v in r.invariantViolations { t.log("  invariant: \(v)") }
        for rep in r.reports { t.log("  report: \(rep)") }
        for f in r.failures { t.log("  FAIL: \(f)") }
    }

    static func options(window: UInt64, pattern: AccessPattern, threads: Int, ops: Int, pins: PinMode,
                        mode: BindMode = .devdax) -> ExerciseOptions {
        var o = ExerciseOptions()
        o.mode = mode
        o.windowSize = window
        o.pattern = pattern
        o.threads = threads
        o.ops = ops
        o.pins = pins
        return o
    }

    static let devdaxChecks = ["pin-longterm-uring", "pin-longterm-uring-kernel", "data-independent-mapping"]

    static func devdax(_ t: TestContext, _ align: DaxAlign) throws {
        switch align {
        case .pte:
            // Every extent is a host mapping of its own: a small window.
            try run(t, .pte, options(window: 8 << 20, pattern: .random, threads: 2, ops: 5000, pins: .uring),
                    mustPass: devdaxChecks + ["pfn-pagemap", "extent-size", "mapcount-exclusive"])
        case .pmd:
            try run(t, .pmd, options(window: 64 << 20, pattern: .random, threads: 2, ops: 10000, pins: .uring),
                    mustPass: devdaxChecks + ["pfn-pagemap", "extent-size", "mapcount-exclusive"])
        case .pud:
            try run(t, .pud, options(window: 1 << 30, pattern: .strided, threads: 2, ops: 5000, pins: .uring),
                    mustPass: devdaxChecks + ["extent-pud-faults"])
        }
    }

    static func pmemBlockDevice(_ t: TestContext) throws -> String {
        try t.require(t.environment.pmemBlockDevices().first, "no pmem block device")
    }

    static let odirectChecks = ["pin-odirect-read", "pin-odirect-read-kernel", "pin-odirect-write", "pin-odirect-write-kernel",
                                "data-independent-mapping"]

    /// O_DIRECT (FOLL_PIN) between the fsdax namespace's block device and a
    /// 2M device-dax window.
    static func devdaxODirect(_ t: TestContext) throws {
        var o = options(window: 16 << 20, pattern: .sequential, threads: 1, ops: 5000, pins: .odirect)
        o.directIOPath = try pmemBlockDevice(t)
        try run(t, .pmd, o, mustPass: odirectChecks + ["pfn-pagemap", "extent-size"])
    }

    /// fs-dax mode: the port's extent store over the 4K device.
    static func fsdax(_ t: TestContext, odirect: Bool) throws {
        if odirect {
            var o = options(window: 8 << 20, pattern: .sequential, threads: 1, ops: 2000, pins: .odirect, mode: .fsdax)
            o.directIOPath = try pmemBlockDevice(t)
            try run(t, .pte, o, mustPass: odirectChecks)
        } else {
            try run(t, .pte, options(window: 8 << 20, pattern: .random, threads: 2, ops: 5000, pins: .none, mode: .fsdax),
                    mustPass: ["data-independent-mapping", "pfn-pagemap", "extent-size"])
        }
    }

    /// FOLL_LONGTERM on fs-dax: the port refuses (check_vma_flags:
    /// EOPNOTSUPP) and so does the kernel on a file of a real ext4 -o dax
    /// mount of the fsdax namespace. (Not gated on /proc/filesystems: ext4
    /// is a module there until the first mount loads it.)
    static func fsdaxLongterm(_ t: TestContext) throws {
        let blk = try pmemBlockDevice(t)
        let mp = try t.mountPoint("ext4")
        try t.mustRun(["mkfs.ext4", "-q", "-F", "-b", "4096", blk])
        t.atCleanup("unmounting \(mp)") {
            guard NamespaceChecks.mountOptions(mp) != nil else { return }
            let r = try Command.run(["umount", mp], timeout: 60)
            if !r.succeeded { throw CommandError(result: r) }
        }
        try t.mustRun(["mount", "-o", "dax", blk, mp])
        var o = options(window: 8 << 20, pattern: .random, threads: 1, ops: 2000, pins: .uring, mode: .fsdax)
        o.fsdaxFile = mp + "/longterm"
        try run(t, .pte, o, mustPass: ["pin-longterm-fsdax-port", "pin-longterm-fsdax-kernel", "data-independent-mapping"])
    }

    /// Bad input: each a RuntimeError.invalid of one line naming the cause
    /// (and the device where the device is the cause), before any window.
    static func badInput(_ t: TestContext) throws {
        var cases: [(String, DaxAlign, ExerciseOptions, String)] = []
        var o = ExerciseOptions(); o.windowSize = 64 << 30
        cases.append(("window of 64G", .pmd, o, "larger than the device"))
        o = ExerciseOptions(); o.windowSize = 3 << 20
        cases.append(("window of 3M on a 2M device", .pmd, o, "not a multiple of the device alignment"))
        o = ExerciseOptions(); o.threads = 0
        cases.append(("0 threads", .pmd, o, "threads must be at least 1"))
        if t.environment.devdax(align: .pud) != nil {
            o = ExerciseOptions(); o.mode = .fsdax
            cases.append(("fs-dax mode on a 1G device", .pud, o, "needs a device of 4K alignment"))
        }
        for (what, align, opts, says) in cases {
            let dev = try t.openDevDax(align)
            do {
                let ex = try Exerciser(device: dev, options: opts)
                t.track(ex.binding)
                t.expect(false, "\(what): accepted")
            } catch {
                guard case .invalid(let msg) = error else {
                    t.expect(false, "\(what): \(error) is not a bad-input error")
                    continue
                }
                t.log("\(what): \(msg)")
                t.expect(msg.contains(says), "\(what): the message does not say '\(says)': \(msg)")
                t.expect(!msg.contains("\n"), "\(what): the message is more than one line")
                if opts.threads > 0 { t.expect(msg.contains(dev.name), "\(what): the message does not name \(dev.name): \(msg)") }
            }
        }
    }

    /// The namespace reconfigured under a live window: the run ends with the
    /// extent that failed, after the port did what kill_dev_dax does.
    static func reconfigure(_ t: TestContext) throws {
        let dev = try t.openDevDax(.pmd)
        let ns = try t.require(DevDaxNamespace.of(devname: dev.info.devname, align: UInt64(dev.align.bytes)),
                               "no namespace found for \(dev.info.devname) in sysfs")
        let restore = t.namespaceRestore(ns)
        var o = options(window: 64 << 20, pattern: .random, threads: 2, ops: 1_000_000_000, pins: .none)
        o.duration = 60
        let ex = try t.must("daxmm exercise on \(dev.name)") { try Exerciser(device: dev, options: o) }
        t.track(ex.binding)
        let out = Locked<(ExerciseResult?, String?)>((nil, nil))
        let started = monotonicNanos()
        let runner = Unshared(ex)
        runOnThreads(2) { i in
            if i == 0 {
                let r = runner.value.run()
                out.withLock { $0.0 = r }
                return
            }
            // Let the workers fault for a while, then pull the device: at
            // least 3 s, and not before the window has served faults (a
            // loaded guest may take longer to open it).
            let deadline = monotonicNanos() &+ 30_000_000_000
            usleep(3_000_000)
            while (runner.value.window?.stats.faults ?? 0) < 16 && monotonicNanos() < deadline { usleep(50_000) }
            do { try t.reconfigureToRaw(restore) } catch { out.withLock { $0.1 = "\(error)" } }
        }
        let (result, ndctlError) = out.withLock { $0 }
        if let ndctlError { throw CheckAbort(message: "reconfiguring \(ns.name): \(ndctlError)") }
        let r = try t.require(result, "the exerciser returned nothing")
        log(t, r)
        t.log("ran \(String(format: "%.1f", Double(monotonicNanos() - started) / 1e9)) s")
        t.expect(!r.ok, "the run passed although its device went away")
        t.expect(r.windowFaults > 0, "the port served no fault before the device went away")
        let line = r.failures.first { $0.contains("went away") }
        t.expect(line != nil, "no failure says the device went away: \(r.failures)")
        t.expect(line?.contains("raised SIGBUS") ?? false, "the failure does not name the SIGBUS: \(line ?? "-")")
        t.expect(line?.contains("the port zapped its entries (kill_dev_dax): rss 0 page(s) left") ?? false,
                 "the port did not zap everything: \(line ?? "-")")
        t.expect(ex.binding.isGone, "the binding does not know its device is gone")
    }
}

/// A value handed to one other thread while this one waits for it.
private final class Unshared<T>: @unchecked Sendable {
    // @unchecked: used by one thread at a time (the creator waits).
    let value: T
    init(_ value: T) { self.value = value }
}
