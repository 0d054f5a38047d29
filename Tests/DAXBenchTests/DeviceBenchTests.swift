// `daxmm bench` on the host: the report's JSON shape, the SVG writer, the
// table, and a quick fault run end to end on the emulated device (the
// kernel's shmem faults, the port's window faults and its bare
// handle_mm_fault, with the port's folio counters back where they were).

import DAXBench
import DAXChecks
import DAXDevice
import Foundation
import Testing

#if canImport(FoundationXML)
import FoundationXML
#endif
#if canImport(Glibc)
import Glibc
#endif

/// The daxmm executable beside this test bundle (.build/<config>/daxmm).
let daxmmBinary: String = URL(fileURLWithPath: CommandLine.arguments[0])
    .deletingLastPathComponent().appendingPathComponent("daxmm").path

/// A report with one row of each side, for the writers.
func sampleReport(commit: String? = nil) -> BenchReport {
    var r = BenchReport(date: "2026-01-01T00:00:00Z", commit: commit, kernelRelease: "6.15.0-test",
                        device: "/dev/dax0.0", deviceKind: "device-dax", backing: "device-dax", align: 2 << 20,
                        alignName: "2M", deviceSize: 512 << 20, optimized: true, timingNote: nil,
                        modes: ["fault", "pin"], quick: true)
    r.rows = [
        BenchRow(id: "fault.kernel.2M.read", section: "fault", group: "fault 2M read", title: "kernel first touch <&>",
                 side: .kernel, per: "fault", p50Ns: 2000, p99Ns: 3000, maxNs: 9000, samples: 100, note: "kernel mapped 2M"),
        BenchRow(id: "fault.window.2M.read", section: "fault", group: "fault 2M read", title: "window end to end",
                 side: .window, per: "fault", p50Ns: 5000, p99Ns: 7000, maxNs: 9000, samples: 100),
        BenchRow(id: "fault.window-port.2M.read", section: "fault", group: "fault 2M read", title: "port in window",
                 side: .port, per: "fault", p50Ns: 90, p99Ns: 120, maxNs: 900, samples: 100),
        BenchRow(id: "fault.port.2M.read", section: "fault", group: "fault 2M read", title: "port bare",
                 side: .port, per: "fault", p50Ns: 80, p99Ns: 100, maxNs: 500, samples: 100),
        BenchRow(id: "fault.floor.2M.read", section: "fault", group: "fault 2M read", title: "floor",
                 side: .floor, per: "fault", p50Ns: 40, p99Ns: 45, maxNs: 60, samples: 100),
        BenchRow(id: "pin.kernel.uring.2M", section: "pin", group: "pin 2M", title: "io_uring",
                 side: .kernel, per: "page", p50Ns: 90, p99Ns: 100, maxNs: 120, samples: 10),
    ]
    r.rows[3].portOverKernel = 0.04
    r.rows[3].portOverFloor = 2
    r.rows[3].target = 0.05; r.rows[3].targetOf = "port/kernel"; r.rows[3].met = true
    r.ratios = [BenchRatio(name: "port fault / kernel fault (2M read)", value: 0.04, target: 0.05),
                BenchRatio(name: "window fault / kernel fault (2M read)", value: 2.5, target: 3),
                BenchRatio(name: "port share of a window fault (2M read)", value: 0.018, target: 0.02)]
    r.kernelFaults = [KernelFaultInfo(access: "read", mappedSize: "2M", mappedBytes: 2 << 20, touches: 100,
                                      touchesWithOneFault: 100, meanFaultsPerTouch: 1)]
    r.fioAbsent = "fio is not in PATH"
    return r
}

@Suite struct BenchReportTests {
    @Test func jsonHasEveryKeyWithNullsForTheAbsent() throws {
        let text = try sampleReport().json()
        let obj = try #require(try JSONSerialization.jsonObject(with: Data(text.utf8)) as? [String: Any])
        for k in ["date", "commit", "kernelRelease", "device", "align", "optimized", "timingNote", "rows", "ratios",
                  "kernelFaults", "countersRestored", "fio", "fioAbsent"] {
            #expect(obj.keys.contains(k), "key \(k) missing")
        }
        #expect(obj["commit"] is NSNull)
        #expect(obj["timingNote"] is NSNull)
        let rows = try #require(obj["rows"] as? [[String: Any]])
        #expect(rows.count == 6)
        #expect(rows[0]["p50Ns"] as? Double == 2000)
        #expect(rows[0]["side"] as? String == "kernel")
        let ratios = try #require(obj["ratios"] as? [[String: Any]])
        #expect(ratios.first?["met"] as? Bool == true)
        // Round trip.
        let back = try BenchReport.decode(text)
        #expect(back.rows == sampleReport().rows)
        #expect(try BenchReport.decode(sampleReport(commit: "abc123").json()).commit == "abc123")
    }

    @Test func svgIsWellFormedWithAxisLegendAndLabels() throws {
        var r = sampleReport(commit: "abc123")
        r.optimized = false
        r.timingNote = "debug build: timings are not meaningful"
        let svg = Plot.svg(r)
        let parser = XMLParser(data: Data(svg.utf8))
        #expect(parser.parse(), "SVG is not well-formed XML: \(String(describing: parser.parserError))")
        #expect(svg.contains("id=\"x-axis\""))
        #expect(svg.contains("id=\"legend\""))
        #expect(svg.contains("time (ns, log scale)"))
        #expect(svg.contains("1 µs"), "a tick at 1 us")
        #expect(svg.contains("kernel (real)") && svg.contains("floor"), "legend names the sides present")
        #expect(svg.contains("kernel first touch &lt;&amp;&gt;"), "labels escaped")
        #expect(svg.contains("/dev/dax0.0") && svg.contains("6.15.0-test") && svg.contains("abc123"), "title")
        #expect(svg.contains("DEBUG BUILD"))
        #expect(svg.components(separatedBy: "<rect").count - 1 >= 6 + 1, "a bar per row")
    }

    @Test func tableHasColumnsRowsRatiosAndVerdicts() {
        let t = sampleReport().table()
        #expect(t.contains("case") && t.contains("p50") && t.contains("p99") && t.contains("max") && t.contains("port/kern")
                && t.contains("port/floor") && t.contains("target"))
        #expect(t.contains("fault.kernel.2M.read"))
        #expect(t.contains("2.00 us"), "p50 of 2000 ns in us")
        #expect(t.contains("met (port/kernel <= 0.050)"))
        #expect(t.contains("the kernel mapped 2M per fault"))
        #expect(t.contains("fio: absent: fio is not in PATH"))
        #expect(t.contains("counters restored: yes"))
        var r = sampleReport()
        r.optimized = false
        r.timingNote = "debug build: timings are not meaningful"
        #expect(r.table().contains("debug build: timings are not meaningful"))
    }

    @Test func formatters() {
        #expect(formatNanos(850) == "850 ns")
        #expect(formatNanos(1234) == "1.23 us")
        #expect(formatNanos(2.5e6) == "2.50 ms")
        #expect(formatRatio(0.0312) == "0.031")
        #expect(formatRatio(2.4) == "2.40x")
        #expect(formatBytes(64 << 20) == "64M")
        #expect(formatBytes(1 << 30) == "1G")
    }

    @Test func fioJSONParsed() throws {
        let text = """
            note: something first
            {"jobs": [{"jobname": "randread-4k", "read": {"iops": 1000.5, "bw": 4002,
              "clat_ns": {"max": 90000, "percentile": {"50.000000": 1200, "99.000000": 5000}}}}]}
            """
        let f = try #require(parseFio(text, job: "randread-4k", rw: "randread", blockSize: 4096))
        #expect(f.iops == 1000.5)
        #expect(abs(f.bandwidthMiBps - 4002.0 / 1024) < 1e-9)
        #expect(f.clatP50Ns == 1200 && f.clatP99Ns == 5000 && f.clatMaxNs == 90000)
        #expect(parseFio("no json", job: "x", rw: "read", blockSize: 4096) == nil)
    }
}

@Suite(.serialized) struct BenchRunTests {
    /// handle_mm_fault (port) against the kernel's shmem first touch on
    /// the emulated device: every figure positive, the port's share of a
    /// window fault a fraction, the kernel's touches one fault each, and the
    /// port's folio counters and rss restored (the invariants hold).
    @Test func quickFaultRunOnTheEmulatedDevice() throws {
        let dev = try EmulatedDevice(size: 64 << 20, align: .pmd)
        var o = DeviceBenchOptions()
        o.pin = false
        o.fio = false
        o.quick = true
        let r = try runDeviceBench(device: dev, options: o)
        #expect(r.backing == "shmem")
        #expect(r.rows.count == 12, "6 rows per access: \(r.rows.map(\.id))")
        for row in r.rows {
            #expect(row.p50Ns > 0 && row.p99Ns >= row.p50Ns && row.maxNs >= row.p99Ns && row.samples > 0, "\(row.id)")
        }
        let shares = r.ratios.filter { $0.name.hasPrefix("port share of a window fault") }
        #expect(shares.count == 2)
        for s in shares { #expect(s.value > 0 && s.value <= 1, "\(s.name) = \(s.value)") }
        #expect(r.ratios.filter { $0.name.hasPrefix("port fault / kernel fault") }.allSatisfy { $0.value > 0 })
        #expect(r.kernelFaults.count == 2)
        for k in r.kernelFaults {
            #expect(k.touches > 0 && k.touchesWithOneFault > 0)
            #expect(k.mappedBytes == 4096 || k.mappedBytes == 2 << 20, "shmem maps 4K or a THP: \(k.mappedSize)")
        }
        #expect(r.invariantViolations.isEmpty, "\(r.invariantViolations)")
        #expect(r.countersRestored)
    }

    /// The CLI: the same run through the binary, with --json and --plot.
    @Test func cliFaultQuickJSONAndPlot() throws {
        try #require(access(daxmmBinary, X_OK) == 0, "no \(daxmmBinary): build the daxmm product first")
        let svg = "/tmp/daxmm-bench-test-\(getpid()).svg"
        defer { unlink(svg) }
        let r = try Command.run([daxmmBinary, "bench", "fault", "--device", "emulated:size=64M,align=2M", "--quick",
                                 "--json", "--plot", svg], timeout: 120)
        #expect(r.status == 0, "\(r.stderr)")
        let rep = try BenchReport.decode(r.stdout)
        #expect(rep.modes == ["fault"])
        #expect(rep.rows.allSatisfy { $0.p50Ns > 0 })
        #expect(rep.optimized == (rep.timingNote == nil), "the timing note is there exactly in a debug build")
        let text = try String(contentsOfFile: svg, encoding: .utf8)
        #expect(XMLParser(data: Data(text.utf8)).parse())
    }

    /// Bad input: one line on stderr, exit status 1, nothing run.
    @Test func cliErrorsAreOneLine() throws {
        try #require(access(daxmmBinary, X_OK) == 0, "no \(daxmmBinary): build the daxmm product first")
        let cases: [([String], String)] = [
            (["bench", "faults", "--device", "emulated:size=64M"], "unknown bench mode"),
            (["bench", "fault", "--device", "/dev/dax97.3", "--quick"], "dax97.3"),
            (["bench", "fault", "--device", "emulated:size=64M", "--plot", "/nonexistent-dir/x.svg"], "--plot"),
            (["bench", "fault", "--device", "emulated:size=64M", "--plot", "/tmp/x.png"], ".svg"),
        ]
        for (args, word) in cases {
            let r = try Command.run([daxmmBinary] + args, timeout: 60)
            #expect(r.status == 1, "\(args): status \(r.status)")
            let lines = r.stderr.split(separator: "\n")
            #expect(lines.count == 1 && r.stderr.contains(word), "\(args): \(r.stderr)")
            #expect(r.stdout.isEmpty, "\(args): \(r.stdout)")
        }
        // A failed run leaves no plot file behind.
        let svg = "/tmp/daxmm-bench-test-\(getpid())-fail.svg"
        let r = try Command.run([daxmmBinary, "bench", "fault", "--device", "/dev/dax97.3", "--plot", svg], timeout: 60)
        #expect(r.status == 1)
        #expect(access(svg, F_OK) != 0, "\(svg) left behind by a failed run")
    }
}
