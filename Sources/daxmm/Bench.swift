import ArgumentParser
import DAXBench

#if canImport(Glibc)
import Glibc
#endif

struct Bench: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "bench",
        abstract: "Fault and pin costs of the port (as ratios to their floors) and of the real kernel.")

    @Argument(help: "What to measure: port.")
    var what: String = "port"

    @Option(name: .long, help: "Only cases whose id contains this.")
    var filter: String?

    @Flag(name: .long, help: "Fewer samples per case.")
    var quick = false

    func run() throws {
        if !BuildInfo.optimized { note("debug build: timings are not meaningful") }
        let cases = PortCases.all.filter { c in filter.map { c.id.contains($0) } ?? true }
        print("case                                          port p50    floor p50   ratio")
        for c in cases {
            let inst = try c.make()
            let r = measure(c, inst, sampling: quick ? .quick : Sampling())
            let ratio = r.ratio.map { fmt($0, 2) } ?? "-"
            print(c.id.padding(44), fmt(r.port.p50, 1).leftPad(8), "ns", fmt(r.floor?.p50 ?? 0, 1).leftPad(8), "ns ", ratio)
        }
    }
}

func fmt(_ v: Double, _ digits: Int) -> String {
    var m = 1.0
    for _ in 0..<digits { m *= 10 }
    let r = (v * m).rounded() / m
    var s = String(r)
    if let dot = s.firstIndex(of: ".") {
        let frac = s[s.index(after: dot)...].count
        if frac < digits { s += String(repeating: "0", count: digits - frac) }
    }
    return s
}

extension String {
    func padding(_ n: Int) -> String { count >= n ? self : self + String(repeating: " ", count: n - count) }
    func leftPad(_ n: Int) -> String { count >= n ? self : String(repeating: " ", count: n - count) + self }
}
