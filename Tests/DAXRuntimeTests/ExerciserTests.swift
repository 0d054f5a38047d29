// The exerciser on the emulated device: a run checks what it claims (faults
// served, data, invariants, pins), and bad input is one clear error.

import DAXBase
import DAXDevice
import DAXRuntime
import Testing

#if canImport(Glibc)
import Glibc
#endif

@Suite("daxmm exercise engine")
struct ExerciserTests {
    @Test("devdax 2M, two threads, O_DIRECT pins: every check passes and the counts add up", arguments: [AccessPattern.random, .sequential, .strided])
    func devdaxRun(pattern: AccessPattern) throws {
        let dev = try EmulatedDevice(size: 64 << 20, align: .pmd)
        var o = ExerciseOptions()
        o.windowSize = 32 << 20
        o.pattern = pattern
        o.threads = 2
        o.ops = 20_000
        o.pins = .odirect
        let r = try Exerciser(device: dev, options: o).run()
        #expect(r.ok, "\(r.failures) \(r.invariantViolations) \(r.checks.filter { $0.status == .fail })")
        #expect(r.ops == 20_000)
        #expect(r.reads + r.writes == r.ops)
        #expect(r.windowFaults >= 16)
        #expect(r.extentsMapped[1] >= 16)
        #expect(r.extentsMapped[0] == 0 && r.extentsMapped[2] == 0)
        #expect(r.wordsVerified > 0 && r.mismatches == 0)
        #expect(r.checks.contains { $0.name == "pin-odirect-read" && $0.status == .pass })
        #expect(r.checks.contains { $0.name == "data-independent-mapping" && $0.status == .pass })
    }

    @Test("fs-dax mode: the port refuses FOLL_LONGTERM as the kernel does on fs-dax",
          .enabled(if: uringUnavailableReason() == nil, "io_uring is not available here"))
    func fsdaxLongterm() throws {
        let dev = try EmulatedDevice(size: 32 << 20, align: .pte)
        var o = ExerciseOptions()
        o.mode = .fsdax
        o.windowSize = 8 << 20
        o.ops = 5000
        o.pins = .uring
        let r = try Exerciser(device: dev, options: o).run()
        #expect(r.checks.contains { $0.name == "pin-longterm-fsdax-port" && $0.status == .pass })
        #expect(r.ok, "\(r.failures) \(r.invariantViolations)")
    }

    @Test("bad input: each a RuntimeError.invalid naming the cause")
    func badInput() throws {
        let dev = try EmulatedDevice(size: 16 << 20, align: .pmd)
        func refused(_ f: (inout ExerciseOptions) -> Void, _ word: String) {
            var o = ExerciseOptions()
            f(&o)
            do {
                _ = try Exerciser(device: dev, options: o)
                Issue.record("accepted: \(word)")
            } catch {
                if case .invalid(let m) = error { #expect(m.contains(word), "\(m)") } else { Issue.record("\(error)") }
            }
        }
        refused({ $0.windowSize = 32 << 20 }, "larger than the device")
        refused({ $0.windowSize = 3 << 20 }, "not a multiple")
        refused({ $0.windowOffset = 4096 }, "not aligned")
        refused({ $0.threads = 0 }, "threads")
        refused({ $0.writeRatio = 1.5 }, "write ratio")
        refused({ $0.ops = 0 }, "op count")
        refused({ $0.mode = .fsdax; $0.windowSize = 2 << 20 }, "4K alignment")
    }
}
