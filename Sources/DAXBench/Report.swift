// What `daxmm bench` reports: rows of figures (the kernel's own faults and
// pins on the device, the port's window faults end to end, the port's bare
// handle_mm_fault and pin_user_pages, their floors, fio), the ratios between
// them measured in the same run, and the run's context. The same report is
// printed as a table, written as JSON and drawn as an SVG (Plot.swift).

import Foundation

/// Which side of the comparison a row measures.
public enum BenchSide: String, Codable, Sendable, CaseIterable {
    /// The real kernel on the device (its first-touch faults, io_uring
    /// registration, O_DIRECT).
    case kernel
    /// The port's CPU-fault window, end to end (SIGSEGV -> handle_mm_fault
    /// -> host mapping -> retry), or the handler's part of it.
    case window
    /// The port's own code (handle_mm_fault, pin_user_pages) with no host
    /// mirroring.
    case port
    /// The unavoidable work of the same path on the port's records.
    case floor
    /// fio's dev-dax engine on the device.
    case fio
}

/// One measured figure: nanoseconds per `per` (a fault, a page, a call, an
/// I/O), p50/p99/max of an HdrHistogram.
public struct BenchRow: Codable, Sendable, Equatable {
    public var id: String
    /// fault, pin, port or fio.
    public var section: String
    /// The group the plot draws together (e.g. "fault 2M read").
    public var group: String
    public var title: String
    public var side: BenchSide
    public var per: String
    public var p50Ns: Double
    public var p99Ns: Double
    public var maxNs: Double
    public var samples: Int
    /// p50 / the kernel's p50 of the same path, where one was measured.
    public var portOverKernel: Double?
    /// p50 / the floor's p50 of the same path.
    public var portOverFloor: Double?
    /// The target the row's ratio must meet, and which ratio it is.
    public var target: Double?
    public var targetOf: String?
    public var met: Bool?
    /// The figure `target` judges (port/floor, time/1 GiB, or the speedup
    /// of two threads): what scripts/bench-check.sh compares with its
    /// baseline. `targetMinimum`: higher is better.
    public var targetValue: Double?
    public var targetMinimum: Bool?
    /// What else a reader needs (fault size the kernel used, IOPS, ...).
    public var note: String?

    public init(id: String, section: String, group: String, title: String, side: BenchSide, per: String,
                p50Ns: Double, p99Ns: Double, maxNs: Double, samples: Int, note: String? = nil) {
        self.id = id; self.section = section; self.group = group; self.title = title; self.side = side
        self.per = per; self.p50Ns = p50Ns; self.p99Ns = p99Ns; self.maxNs = maxNs; self.samples = samples
        self.note = note
    }

    public init(id: String, section: String, group: String, title: String, side: BenchSide, per: String,
                _ p: Percentiles, note: String? = nil) {
        self.init(id: id, section: section, group: group, title: title, side: side, per: per,
                  p50Ns: p.p50, p99Ns: p.p99, maxNs: p.max, samples: p.samples, note: note)
    }
}

/// A ratio of two figures of the run, with its target.
public struct BenchRatio: Codable, Sendable, Equatable {
    public var name: String
    public var value: Double
    /// value <= target is met (value >= target when `atLeast`).
    public var target: Double?
    public var met: Bool?
    /// The target is a minimum (nil or false: a maximum).
    public var atLeast: Bool?
    public init(name: String, value: Double, target: Double?, atLeast: Bool = false) {
        self.name = name
        self.value = value
        self.target = target
        self.atLeast = atLeast ? true : nil
        met = target.map { atLeast ? value >= $0 : value <= $0 }
    }
}

/// What the kernel's first touches of the mapped device did.
public struct KernelFaultInfo: Codable, Sendable, Equatable {
    /// read or write.
    public var access: String
    /// The mapping the kernel used for one touch: "4K", "2M" or "1G"
    /// (established by touching further pages of the extent and counting the
    /// faults they cost: none means the first fault mapped them).
    public var mappedSize: String
    public var mappedBytes: UInt64
    /// Touches timed, and how many of them cost exactly one fault of the
    /// thread (ru_minflt); only touches that faulted are in the figure.
    public var touches: Int
    public var touchesWithOneFault: Int
    public var meanFaultsPerTouch: Double

    public init(access: String, mappedSize: String, mappedBytes: UInt64, touches: Int, touchesWithOneFault: Int,
                meanFaultsPerTouch: Double) {
        self.access = access; self.mappedSize = mappedSize; self.mappedBytes = mappedBytes; self.touches = touches
        self.touchesWithOneFault = touchesWithOneFault; self.meanFaultsPerTouch = meanFaultsPerTouch
    }
}

/// A fio job's figures.
public struct FioFigures: Codable, Sendable, Equatable {
    public var job: String
    public var rw: String
    public var blockSize: UInt64
    public var iops: Double
    public var bandwidthMiBps: Double
    public var clatP50Ns: Double
    public var clatP99Ns: Double
    public var clatMaxNs: Double
}

public struct BenchReport: Codable, Sendable {
    public var date: String
    /// DAXMM_COMMIT, when the caller sets it.
    public var commit: String?
    public var kernelRelease: String
    public var device: String
    /// device-dax or emulated.
    public var deviceKind: String
    /// What the kernel's side runs over: "device-dax" or "shmem" (the
    /// emulated device's memfd).
    public var backing: String
    public var align: UInt64
    public var alignName: String
    public var deviceSize: UInt64
    public var optimized: Bool
    /// Said whenever the build is not optimised.
    public var timingNote: String?
    public var modes: [String]
    public var quick: Bool
    public var kernelFaults: [KernelFaultInfo] = []
    public var rows: [BenchRow] = []
    public var ratios: [BenchRatio] = []
    public var fio: [FioFigures] = []
    /// Why fio figures are absent (nil when they are there or not asked).
    public var fioAbsent: String?
    /// The port's invariants after the run (every folio's refcount,
    /// mapcount and pincount back where the page tables say): empty when
    /// they hold.
    public var invariantViolations: [String] = []
    /// True when every counter the run moved is back: the port's folios
    /// (invariants), the port MMs' rss, nothing registered with io_uring.
    public var countersRestored: Bool = true
    /// Cases that could not run, and why.
    public var absent: [String] = []
    public var notes: [String] = []

    public init(date: String, commit: String?, kernelRelease: String, device: String, deviceKind: String,
                backing: String, align: UInt64, alignName: String, deviceSize: UInt64, optimized: Bool,
                timingNote: String?, modes: [String], quick: Bool) {
        self.date = date; self.commit = commit; self.kernelRelease = kernelRelease; self.device = device
        self.deviceKind = deviceKind; self.backing = backing; self.align = align; self.alignName = alignName
        self.deviceSize = deviceSize; self.optimized = optimized; self.timingNote = timingNote
        self.modes = modes; self.quick = quick
    }

    /// Every key is written, an absent commit, timing note or fio reason as
    /// null (the synthesised encoder would leave them out).
    public func encode(to encoder: any Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(date, forKey: .date)
        try c.encode(commit, forKey: .commit)
        try c.encode(kernelRelease, forKey: .kernelRelease)
        try c.encode(device, forKey: .device)
        try c.encode(deviceKind, forKey: .deviceKind)
        try c.encode(backing, forKey: .backing)
        try c.encode(align, forKey: .align)
        try c.encode(alignName, forKey: .alignName)
        try c.encode(deviceSize, forKey: .deviceSize)
        try c.encode(optimized, forKey: .optimized)
        try c.encode(timingNote, forKey: .timingNote)
        try c.encode(modes, forKey: .modes)
        try c.encode(quick, forKey: .quick)
        try c.encode(kernelFaults, forKey: .kernelFaults)
        try c.encode(rows, forKey: .rows)
        try c.encode(ratios, forKey: .ratios)
        try c.encode(fio, forKey: .fio)
        try c.encode(fioAbsent, forKey: .fioAbsent)
        try c.encode(invariantViolations, forKey: .invariantViolations)
        try c.encode(countersRestored, forKey: .countersRestored)
        try c.encode(absent, forKey: .absent)
        try c.encode(notes, forKey: .notes)
    }

    /// The report as JSON (sorted keys, pretty).
    public func json() throws -> String {
        let enc = JSONEncoder()
        enc.outputFormatting = [.prettyPrinted, .sortedKeys]
        return String(decoding: try enc.encode(self), as: UTF8.self)
    }

    public static func decode(_ text: String) throws -> BenchReport {
        try JSONDecoder().decode(BenchReport.self, from: Data(text.utf8))
    }
}

// MARK: formatting

/// A time in nanoseconds with a unit a person reads: "850 ns", "1.23 us".
public func formatNanos(_ ns: Double) -> String {
    if ns >= 1e9 { return String(format: "%.2f s", ns / 1e9) }
    if ns >= 1e6 { return String(format: "%.2f ms", ns / 1e6) }
    if ns >= 1e3 { return String(format: "%.2f us", ns / 1e3) }
    if ns >= 10 { return String(format: "%.0f ns", ns) }
    return String(format: "%.2f ns", ns)
}

/// A ratio: "0.031", "2.4x" above 1.
public func formatRatio(_ r: Double) -> String {
    r >= 10 ? String(format: "%.0fx", r) : r >= 1 ? String(format: "%.2fx", r) : String(format: "%.3f", r)
}

private func pad(_ s: String, _ n: Int, left: Bool = false) -> String {
    s.count >= n ? s : (left ? String(repeating: " ", count: n - s.count) + s : s + String(repeating: " ", count: n - s.count))
}

extension BenchReport {
    /// The header lines: device, kernel, build.
    public var header: String {
        let kind = deviceKind == backing ? deviceKind : "\(deviceKind), \(backing)"
        var h = "daxmm bench \(modes.joined(separator: "+")): \(device) (\(kind), align \(alignName), \(formatBytes(deviceSize))), kernel \(kernelRelease), \(date)"
        if let c = commit { h += ", commit \(c)" }
        if let n = timingNote { h += "\n" + n }
        return h
    }

    /// The table: case, p50, p99, max, unit, port/kernel, port/floor, target
    /// met; then the ratios, the kernel's fault sizes, fio and notes.
    public func table() -> String {
        var out = header + "\n"
        let idW = max(36, (rows.map(\.id.count).max() ?? 0) + 1)
        let cols = pad("case", idW) + pad("p50", 10, left: true) + pad("p99", 10, left: true) + pad("max", 10, left: true)
            + "  " + pad("unit", 10) + pad("port/kern", 10, left: true) + pad("port/floor", 11, left: true) + "  target"
        var section = ""
        for r in rows {
            if r.section != section {
                section = r.section
                out += "\n" + cols + "\n"
            }
            var line = pad(r.id, idW) + pad(formatNanos(r.p50Ns), 10, left: true) + pad(formatNanos(r.p99Ns), 10, left: true)
                + pad(formatNanos(r.maxNs), 10, left: true) + "  " + pad("per " + r.per, 10)
                + pad(r.portOverKernel.map(formatRatio) ?? "-", 10, left: true)
                + pad(r.portOverFloor.map(formatRatio) ?? "-", 11, left: true)
            if let t = r.target, let m = r.met {
                let of = r.targetOf ?? "ratio"
                // A target named "... >=" is a minimum (two threads against one).
                let rule = of.hasSuffix(">=") ? "\(of) \(formatRatio(t))" : "\(of) <= \(formatRatio(t))"
                line += "  " + (m ? "met" : "MISSED") + " (\(rule))"
            }
            if let n = r.note { line += "  " + n }
            out += line + "\n"
        }
        if !kernelFaults.isEmpty {
            out += "\nkernel first touches (\(backing)):\n"
            for k in kernelFaults {
                out += "  \(k.access): the kernel mapped \(k.mappedSize) per fault; \(k.touchesWithOneFault) of \(k.touches) touches cost exactly one fault (mean \(String(format: "%.2f", k.meanFaultsPerTouch)))\n"
            }
        }
        if !ratios.isEmpty {
            out += "\nratios (p50 over p50, one run):\n"
            let w = ratios.map(\.name.count).max() ?? 0
            for r in ratios {
                var line = "  " + pad(r.name, w) + "  " + pad(formatRatio(r.value), 8, left: true)
                if let t = r.target, let m = r.met {
                    line += "  target \(r.atLeast == true ? ">=" : "<=") \(formatRatio(t)): " + (m ? "met" : "MISSED")
                }
                out += line + "\n"
            }
        }
        if !fio.isEmpty {
            out += "\nfio --ioengine=dev-dax on \(device):\n"
            for f in fio {
                out += "  " + pad(f.job, 22) + " bs \(pad(formatBytes(f.blockSize), 5))  " + pad(String(format: "%.0f IOPS", f.iops), 13, left: true)
                    + pad(String(format: "%.1f MiB/s", f.bandwidthMiBps), 14, left: true)
                    + "  clat p50 \(formatNanos(f.clatP50Ns)), p99 \(formatNanos(f.clatP99Ns)), max \(formatNanos(f.clatMaxNs))\n"
            }
        } else if let why = fioAbsent {
            out += "\nfio: absent: \(why)\n"
        }
        for a in absent { out += "absent: \(a)\n" }
        if !invariantViolations.isEmpty {
            out += "\nport invariants after the run: \(invariantViolations.count) violation(s)\n"
            for v in invariantViolations.prefix(10) { out += "  \(v)\n" }
        }
        out += "counters restored: \(countersRestored ? "yes" : "NO")\n"
        for n in notes { out += "note: \(n)\n" }
        return out
    }
}

/// 4096 -> "4K", 2 MiB -> "2M", 64 MiB -> "64M".
public func formatBytes(_ b: UInt64) -> String {
    if b >= 1 << 30 && b % (1 << 30) == 0 { return "\(b >> 30)G" }
    if b >= 1 << 20 && b % (1 << 20) == 0 { return "\(b >> 20)M" }
    if b >= 1 << 10 && b % (1 << 10) == 0 { return "\(b >> 10)K" }
    return "\(b)"
}
