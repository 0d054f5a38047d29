import CDaxSys
import Testing
@testable import DAXDevice

#if canImport(Glibc)
import Glibc
#endif

/// getrusage's fault counts (mm/memory.c mm_account_fault: one count per
/// handled fault, whatever size it mapped).
@Suite("Kernel probes: fault counter")
struct FaultCounterTests {
    /// A first write to each of 16 untouched anonymous pages (no THP) is one
    /// fault each; touching them again maps nothing and costs none.
    @Test func firstTouchFaultsAndASecondTouchDoesNot() throws {
        let m = try ProbeMapping(anonymous: 16 * 4096)
        let first = FaultCounter.touch(m.base, length: m.length, stride: 4096, write: true)
        #expect((16...18).contains(first.minor), "one fault per page, not \(first)")
        #expect(first.major == 0)
        let again = FaultCounter.touch(m.base, length: m.length, stride: 4096, write: true)
        #expect(again.total == 0, "\(again)")
        let reads = FaultCounter.touch(m.base, length: m.length, stride: 4096)
        #expect(reads.total == 0, "\(reads)")
    }

    /// A read maps the shared zero page (do_anonymous_page), so a later write
    /// faults again (do_wp_page): 16 + 16 faults, then none.
    @Test func readThenWriteFaultsTwicePerAnonymousPage() throws {
        let m = try ProbeMapping(anonymous: 16 * 4096)
        let reads = FaultCounter.touch(m.base, length: m.length, stride: 4096)
        #expect(reads.minor >= 16, "\(reads)")
        let writes = FaultCounter.touch(m.base, length: m.length, stride: 4096, write: true)
        #expect(writes.minor >= 16, "\(writes)")
        #expect(FaultCounter.touch(m.base, length: m.length, stride: 4096, write: true).total == 0)
    }

    /// The process count includes the thread's.
    @Test func processCountsIncludeTheThreadsFaults() throws {
        let m = try ProbeMapping(anonymous: 8 * 4096)
        let p0 = FaultCounter.read(.process)
        let t = FaultCounter.touch(m.base, length: m.length, stride: 4096, write: true)
        let p = FaultCounter.read(.process) - p0
        #expect(t.minor >= 8)
        #expect(p.minor >= t.minor, "process \(p), thread \(t)")
        let (value, cost) = FaultCounter.measure { 42 }
        #expect(value == 42 && cost.major == 0)
    }
}
