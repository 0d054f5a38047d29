// Two threads faulting at once: each on PMDs of its own VMA, the two VMAs
// in different 1 GiB regions (different PMD tables, so no split page-table
// lock is shared), against one thread doing the same alone. What the two
// share is what the port shares on this path: the mm (mmap_lock, rss), the
// kernel record (node stats) and the device (dax_srcu). The kernel takes
// per-VMA locks and per-CPU counters here, so two CPUs should nearly double
// the throughput of one.
//
// The "floor" batch of these cases is the one-thread reference and the
// target is a minimum speedup (BenchCase.minSpeedup): throughput of two /
// throughput of one = floor p50 / port p50 (per-fault times).

import CDaxMM
import CDaxBench
import DAXBase
import DAXCore
import MMCore

#if canImport(Glibc)
import Glibc
#endif

/// Two VMAs of one device-dax mapping 1 GiB apart in one MM, and a helper
/// thread that faults the second while the calling thread faults the first.
public final class TwoThreadRig: @unchecked Sendable {
    // @unchecked: the helper thread reads the immutable fields and the
    // control block, whose words are accessed only with atomics.
    public let kernel: Kernel
    public let dev: DevDax
    public let mm: MM
    public let bases: [UInt64]
    public let span: UInt64
    public let align: UInt64
    /// Control words: 0 gen (bumped to start a batch), 1 arrived (start
    /// barrier), 2 done (gen of the helper's last finished batch), 3 quit.
    private let ctl: UnsafeMutablePointer<UInt32>
    private var helper = pthread_t()
    private var gen: UInt32 = 0
    private var faultsPerThread = 0

    /// `folios` PMD folios per VMA (at most 512: one VMA within 1 GiB).
    public init(folios: Int, phys: UInt64 = 1 << 36) throws {
        precondition(folios > 0 && folios <= 512)
        align = UInt64(pmdSize)
        span = align * UInt64(folios)
        let length = 2 * span
        kernel = try Kernel(physBits: max(30, 64 - (phys + length - 1).leadingZeroBitCount))
        dev = try DevDax(kernel: kernel, ranges: [PhysicalRange(start: phys, size: length)], align: align)
        try dev.probe()
        mm = try MM(kernel: kernel)
        let a = try mm.mmap(dev.mmapRequest(length: span))
        let gib = UInt64(1) << 30
        let b = (a + span + gib - 1) / gib * gib + gib   // a 1 GiB region of its own
        let bAddr = try mm.mmap(dev.mmapRequest(length: span, pgoff: span >> 12, fixedAddress: b))
        bases = [a, bAddr]
        ctl = .allocate(capacity: 64)
        ctl.initialize(repeating: 0, count: 64)
        faultsPerThread = folios
        // Both VMAs' tables exist and every folio's records are initialised.
        for base in bases { faultRange(base, folios) }
        zapAll()
        startHelper()
    }

    @inline(never)
    func faultRange(_ base: UInt64, _ n: Int) {
        let a = align
        for i in 0..<n { _ = mm.handleFault(base + UInt64(i) * a, write: false) }
    }

    public func zapAll() {
        mm.lockRead()
        for base in bases { mm.withUnsafeRecord { zapPageRange($0, base, base + span) } }
        mm.unlockRead()
    }

    private func startHelper() {
        let me = Unmanaged.passRetained(self).toOpaque()
        let rc = pthread_create(&helper, nil, { p in
            let rig = Unmanaged<TwoThreadRig>.fromOpaque(p!).takeRetainedValue()
            rig.helperLoop()
            return nil
        }, me)
        precondition(rc == 0, "pthread_create")
    }

    private func helperLoop() {
        var last: UInt32 = 0
        while true {
            let g = dax_load_u32(ctl)
            if dax_load_u32(ctl + 3) != 0 { return }
            if g == last {
                _ = dax_futex_wait(ctl, last, 1_000_000)
                continue
            }
            last = g
            _ = dax_inc_u32(ctl + 1)
            while dax_load_u32(ctl + 1) < 2 { dax_cpu_relax() }
            faultRange(bases[1], faultsPerThread)
            dax_store_u32(ctl + 2, g)
        }
    }

    /// One thread: faults on the first VMA; nanoseconds.
    public func runOne() -> Int64 {
        let t0 = dax_bench_now_ns()
        faultRange(bases[0], faultsPerThread)
        return dax_bench_now_ns() - t0
    }

    /// Two threads, each on its VMA: nanoseconds from the common start
    /// barrier to the last finish.
    public func runTwo() -> Int64 {
        gen &+= 1
        dax_store_u32(ctl + 1, 0)
        dax_store_u32(ctl, gen)
        dax_futex_wake(ctl, 1)
        _ = dax_inc_u32(ctl + 1)
        while dax_load_u32(ctl + 1) < 2 { dax_cpu_relax() }
        let t0 = dax_bench_now_ns()
        faultRange(bases[0], faultsPerThread)
        while dax_load_u32(ctl + 2) != gen { dax_cpu_relax() }
        return dax_bench_now_ns() - t0
    }

    /// Stops the helper thread (the rig is unusable after).
    public func stop() {
        dax_store_u32(ctl + 3, 1)
        dax_store_u32(ctl, gen &+ 1)
        dax_futex_wake(ctl, 1)
        pthread_join(helper, nil)
    }

    deinit {
        ctl.deallocate()
        for base in bases { try? mm.munmap(base, span) }
    }
}

public enum ThreadCases {
    /// Two threads on disjoint PMDs: at least this times one thread's throughput.
    public static let twoThreadSpeedup = 1.8

    /// PMD faults per thread per batch.
    public static let faultsPerThread = 512

    /// First PMD read faults, two threads each in its own VMA vs one thread.
    public static var pmdTwoThreads: BenchCase {
        var c = BenchCase(id: "threads.fault.devdax.PMD.read.2v1",
                          title: "PMD fault, device-dax, read: two threads on disjoint PMDs (own VMA, 1 GiB apart) vs one",
                          group: .threads) {
            let n = faultsPerThread
            let rig = try TwoThreadRig(folios: n)
            return Instance(port: Batch(ops: 2 * n, timedRun: { rig.runTwo() }, restore: { rig.zapAll() }),
                            floor: Batch(ops: n, timedRun: { rig.runOne() }, restore: { rig.zapAll() }),
                            unit: "fault", finish: { rig.stop() })
        }
        c.minSpeedup = twoThreadSpeedup
        return c
    }

    public static var all: [BenchCase] { [pmdTwoThreads] }
}
