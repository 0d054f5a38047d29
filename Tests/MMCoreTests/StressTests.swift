import CDaxMM
import DAXBase
import Dispatch
import Foundation
import Testing
@testable import MMCore
import MMTestChecks
import MMTestSupport

/// Two threads fault, pin, unpin and zap on disjoint and on overlapping
/// ranges of one MM. Afterwards every reference is accounted for.
/// Run under ThreadSanitizer with:
///   swift test --sanitize=thread --filter StressTests
@Suite("Stress: two threads")
struct StressTests {
    static var iterations: Int { Int(ProcessInfo.processInfo.environment["DAXMM_STRESS_ITERATIONS"] ?? "") ?? 20_000 }

    @Test("faults and pins from two threads", arguments: [
        (0, false), (0, true), (9, false), (9, true),
    ] as [(Int, Bool)])
    func twoThreads(order: Int, overlapping: Bool) throws {
        let folioBytes = UInt64(4096) << UInt64(order)
        let nrFolios: UInt64 = order == 0 ? 256 : 8
        let length = folioBytes * nrFolios
        let (rig, base) = try vmaFixture(order: order, bytes: max(folioBytes * nrFolios, 2 << 20), phys: 0x4_0000_0000,
                                         length: length)
        let (kernel, pgmap, mm) = (rig.kernel, rig.pgmap, rig.mm)
        let k = kernel.ref
        let iterations = Self.iterations
        let failures = Locked<[String]>([])

        DispatchQueue.concurrentPerform(iterations: 2) { t in
            var rng = SplitMix64(seed: UInt64(t + 1) * 7919 + UInt64(order))
            let pages = PageArray.allocate(capacity: 8)
            defer { pages.deallocate() }
            // Disjoint: each thread owns half. Overlapping: both use all of it.
            let half = length / 2
            let lo = overlapping ? base : base + UInt64(t) * half
            let span = overlapping ? length : half
            for i in 0..<iterations {
                let off = UInt64.random(in: 0..<(span / 4096), using: &rng) * 4096
                let addr = lo + off
                switch Int.random(in: 0..<10, using: &rng) {
                case 0..<5:
                    let ret = mm.handleFault(addr, write: Bool.random(using: &rng))
                    if ret & DAX_VM_FAULT_ERROR != 0 {
                        failures.withLock { $0.append("thread \(t) iter \(i): fault \(hex(addr)) -> \(ret)") }
                    }
                case 5..<8:
                    let n = Int.random(in: 1...min(8, Int((lo + span - addr) / 4096)), using: &rng)
                    let got = Bool.random(using: &rng) ? pinUserPagesFast(mm.ref, addr, n, [.write], pages)
                                                       : pinUserPages(mm.ref, addr, n, [.write], pages)
                    if got != n {
                        failures.withLock { $0.append("thread \(t) iter \(i): pin \(n) -> \(got)") }
                    }
                    if got > 0 { unpinUserPages(kernel.ref, pages, got) }
                default:
                    let start = roundDown(addr, folioBytes)
                    mm.lockRead()
                    zapPageRange(mm.ref, start, start + folioBytes)
                    mm.unlockRead()
                }
            }
        }
        let f = failures.withLock { $0 }
        #expect(f.isEmpty, "\(f.prefix(5).joined(separator: "\n"))")
        rig.check([:])
        try mm.munmap(base, length)
        var pfn = pgmap.ranges[0].startPfn
        while pfn < pgmap.ranges[0].endPfn {
            #expect(pfnToPage(k, pfn).folio.refCount == 1)
            #expect(pfnToPage(k, pfn).folio.mapcount == 0)
            pfn += UInt64(1 << order)
        }
        #expect(mm.rssFilePages == 0)
        #expect(kernel.stat(DAX_NR_FOLL_PIN_ACQUIRED) == kernel.stat(DAX_NR_FOLL_PIN_RELEASED))
    }
}

import Synchronization
