import ArgumentParser
import DAXBase
import DAXDevice
import DAXRuntime
import Foundation

#if canImport(Glibc)
import Glibc
#endif

extension BindMode: ExpressibleByArgument {}
extension AccessPattern: ExpressibleByArgument {}
extension PinMode: ExpressibleByArgument {}

struct Exercise: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Run the port over a device: CPU faults served by the port, pins, invariants, cross-checks.",
        discussion: """
            A window of the device (devdax mode) or of a file of the port's extent store laid over the \
            device (fsdax mode) is reserved; every first touch of an extent is a CPU fault that the \
            port's handle_mm_fault serves, and the extent it inserts is mapped from the real device at \
            the same address. Threads touch the window in the chosen pattern; pins are made for real \
            (io_uring buffer registration, O_DIRECT) and mirrored in the port; the port's invariants, \
            the cross-checks against the kernel (/proc/self/pagemap pfns, extent sizes, mapcounts) and \
            every written word (through a second mapping) are checked. Exit status 1 on any failure.
            """)

    @OptionGroup var deviceOptions: DeviceOptions

    @Option(help: "devdax (drivers/dax/device.c) or fsdax (fs/dax.c over the port's extent store).")
    var mode: BindMode = .devdax

    @Option(help: ArgumentHelp("Window size (e.g. 256M, 2G); default: the device (fsdax: the file), at most 1G.", valueName: "size"))
    var window: String?

    @Option(help: ArgumentHelp("Device (or file) offset of the window.", valueName: "offset"))
    var offset: String = "0"

    @Option(help: "Access pattern: sequential, random or strided (one page per extent, then the next extent).")
    var pattern: AccessPattern = .random

    @Option(help: "Threads touching the window.")
    var threads: Int = 2

    @Option(name: .customLong("write-ratio"), help: "Fraction of accesses that write, 0 to 1.")
    var writeRatio: Double = 0.5

    @Option(help: "Pins: none, uring (io_uring buffer registration, FOLL_LONGTERM) or odirect (O_DIRECT, FOLL_PIN).")
    var pins: PinMode = .none

    @Option(help: "Accesses in all (default: four per page of the window, at most 1,000,000).")
    var ops: Int?

    @Option(help: "Stop after this many seconds.")
    var duration: Double?

    @Option(help: "Seed of the access sequence and of the values written.")
    var seed: UInt64 = 1

    @Option(name: .customLong("direct-io"), help: ArgumentHelp("O_DIRECT target for --pins odirect: a file or block device that is overwritten (default: a scratch file in /var/tmp).", valueName: "path"))
    var directIO: String?

    @Option(name: .customLong("fsdax-file"), help: ArgumentHelp("A file on a real -o dax mount: with --mode fsdax --pins uring, the kernel's own refusal of FOLL_LONGTERM is checked on it.", valueName: "path"))
    var fsdaxFile: String?

    @Flag(help: "Print the result as JSON.")
    var json = false

    func run() throws {
        let dev = try deviceOptions.open()
        var o = ExerciseOptions()
        o.mode = mode
        do {
            if let w = window { o.windowSize = try parseSize(w) }
            o.windowOffset = try parseSize(offset)
        } catch {
            throw failure("\(error)")
        }
        o.pattern = pattern
        o.threads = threads
        o.writeRatio = writeRatio
        o.pins = pins
        o.ops = ops
        o.duration = duration
        o.seed = seed
        o.directIOPath = directIO
        o.fsdaxFile = fsdaxFile
        o.progress = !json && isatty(2) != 0
        let ex: Exerciser
        do { ex = try Exerciser(device: dev, options: o) } catch {
            throw failure(error.description)
        }
        let r = ex.run()
        if json {
            let enc = JSONEncoder()
            enc.outputFormatting = [.prettyPrinted, .sortedKeys]
            let data = try enc.encode(r)
            print(String(decoding: data, as: UTF8.self))
        } else {
            printReport(r)
        }
        fflush(nil)
        if !r.ok { throw ExitCode(1) }
    }
}

private func ns(_ x: Double) -> String {
    x >= 1e6 ? String(format: "%.2f ms", x / 1e6) : x >= 1e3 ? String(format: "%.2f us", x / 1e3) : String(format: "%.0f ns", x)
}

func printReport(_ r: ExerciseResult) {
    let levels = ["4K", "2M", "1G"]
    func byLevel(_ a: [Int64]) -> String { zip(levels, a).map { "\($0) \($1)" }.joined(separator: ", ") }
    print("exercise: \(r.device), \(r.mode) mode, kernel \(r.kernelRelease)\(r.optimized ? "" : " (debug build: timings are not meaningful)")")
    print("  window        \(hex(r.windowBase)) +\(formatSize(r.windowSize)), device align \(formatSize(r.align))")
    print("  accesses      \(r.ops) (\(r.reads) reads, \(r.writes) writes), \(r.threads) thread(s), \(r.pattern), seed \(r.seed), \(String(format: "%.2f", r.seconds)) s")
    print("  faults        \(r.windowFaults) served by the port; extents mapped: \(byLevel(r.extentsMapped)); zero page: \(byLevel(r.zeroPageMaps)); write upgrades: \(byLevel(r.writeUpgrades)); unmapped: \(byLevel(r.extentsUnmapped))")
    if r.windowFaults > 0 {
        print("  per fault     port handle_mm_fault \(ns(r.portNanosPerFault)) + host mmap \(ns(r.hostMapNanosPerFault)), handler \(ns(r.handlerNanosPerFault)); end to end (SIGSEGV -> port -> host mapping -> retry) p50 \(ns(r.faultingAccessNanos.p50)), p99 \(ns(r.faultingAccessNanos.p99)), max \(ns(r.faultingAccessNanos.max)) over \(r.faultingAccessNanos.count)")
        let share = r.faultingAccessNanos.mean > 0 ? r.portNanosPerFault / r.faultingAccessNanos.mean * 100 : 0
        print("                port's share of a window fault \(String(format: "%.1f", share))% (of the mean \(ns(r.faultingAccessNanos.mean))); an access without a fault p50 \(ns(r.plainAccessNanos.p50))")
    }
    print("  data          \(r.wordsVerified) written word(s) verified through a second mapping, \(r.mismatches) mismatch(es)")
    for c in r.checks { print("  \(c.status.rawValue.uppercased().padding(toLength: 5, withPad: " ", startingAt: 0)) \(c.name): \(c.detail)") }
    print("  invariants    \(r.invariantViolations.isEmpty ? "hold after every phase" : "\(r.invariantViolations.count) violation(s)")")
    for v in r.invariantViolations { print("    \(v)") }
    for rep in r.reports { print("  report        \(rep)") }
    for f in r.failures { print("  FAIL          \(f)") }
    print(r.ok ? "exercise: OK" : "exercise: FAILED")
}
