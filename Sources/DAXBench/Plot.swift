// The report as an SVG a person reads at a glance: one horizontal bar per
// figure (its p50, a whisker to its p99) on a logarithmic time axis,
// grouped per fault level and access, per pin size, per port case and for
// fio; the sides in a legend; device, kernel and date in the title.

import Foundation

public enum Plot {
    static let colors: [BenchSide: String] = [
        .kernel: "#1f77b4", .window: "#ff7f0e", .port: "#2ca02c", .floor: "#8c8c8c", .fio: "#9467bd",
    ]
    static let sideNames: [BenchSide: String] = [
        .kernel: "kernel (real)", .window: "port window (end to end)", .port: "port code", .floor: "floor",
        .fio: "fio dev-dax (clat)",
    ]

    /// Escapes text for XML.
    public static func escape(_ s: String) -> String {
        var o = ""
        for c in s {
            switch c {
            case "&": o += "&amp;"
            case "<": o += "&lt;"
            case ">": o += "&gt;"
            case "\"": o += "&quot;"
            case "'": o += "&apos;"
            default: o.append(c)
            }
        }
        return o
    }

    /// At most `n` characters, an ellipsis in the middle.
    static func shorten(_ s: String, _ n: Int) -> String {
        guard s.count > n else { return s }
        return String(s.prefix(n - 12)) + "…" + String(s.suffix(11))
    }

    static func num(_ x: Double) -> String { String(format: "%.1f", x) }

    /// Tick label of a power of ten of nanoseconds.
    static func tickLabel(_ ns: Double) -> String {
        if ns >= 1e9 { return "\(Int((ns / 1e9).rounded())) s" }
        if ns >= 1e6 { return "\(Int((ns / 1e6).rounded())) ms" }
        if ns >= 1e3 { return "\(Int((ns / 1e3).rounded())) µs" }
        if ns >= 1 { return "\(Int(ns.rounded())) ns" }
        return String(format: "%g ns", ns)
    }

    /// The SVG text.
    public static func svg(_ r: BenchReport) -> String {
        let rows = r.rows.filter { $0.p50Ns > 0 }
        let width = 1100.0
        let labelW = 400.0, plotX = labelW + 10, plotW = width - plotX - 150
        let rowH = 17.0, groupGap = 22.0
        let top = 104.0
        // Groups in first-seen order.
        var groups: [String] = []
        for row in rows where !groups.contains(row.group) { groups.append(row.group) }
        let plotH = Double(rows.count) * rowH + Double(groups.count) * groupGap + 10
        let legendY = top + plotH + 48
        let height = legendY + 40 + Double(r.notes.count + (r.timingNote == nil ? 0 : 1)) * 16 + 10

        let values = rows.flatMap { [$0.p50Ns, $0.p99Ns] }.filter { $0 > 0 }
        let lo = pow(10, floor(log10(values.min() ?? 1)))
        let hi = pow(10, ceil(log10(max(values.max() ?? 10, lo * 10))))
        func x(_ ns: Double) -> Double {
            let v = min(max(ns, lo), hi)
            return plotX + (log10(v) - log10(lo)) / (log10(hi) - log10(lo)) * plotW
        }

        var s = """
            <?xml version="1.0" encoding="UTF-8"?>
            <svg xmlns="http://www.w3.org/2000/svg" width="\(Int(width))" height="\(Int(height))" viewBox="0 0 \(Int(width)) \(Int(height))" font-family="DejaVu Sans, Helvetica, Arial, sans-serif" font-size="12">
            <rect x="0" y="0" width="\(Int(width))" height="\(Int(height))" fill="#ffffff"/>

            """
        let kind = r.deviceKind == r.backing ? r.deviceKind : "\(r.deviceKind), \(r.backing)"
        let title = "daxmm bench: \(r.device) (\(kind), align \(r.alignName))"
        s += "<text x=\"12\" y=\"24\" font-size=\"16\" font-weight=\"bold\">\(escape(title))</text>\n"
        var title2 = "kernel \(r.kernelRelease), \(r.date)"
        if let c = r.commit { title2 += ", commit \(c)" }
        s += "<text x=\"12\" y=\"44\" font-size=\"14\" font-weight=\"bold\">\(escape(title2))</text>\n"
        var sub = "bar: p50 per fault, page, call or I/O; whisker: p99; log scale; ratios are p50 / p50 within this run"
        if !r.optimized { sub += "; DEBUG BUILD: timings are not meaningful" }
        s += "<text x=\"12\" y=\"64\" fill=\"#444\">\(escape(sub))</text>\n"

        // Axis: grid lines and ticks at powers of ten.
        let axisY = top + plotH
        s += "<g class=\"axis\" id=\"x-axis\">\n"
        var t = lo
        while t <= hi * 1.0001 {
            let tx = x(t)
            s += "<line x1=\"\(num(tx))\" y1=\"\(num(top - 6))\" x2=\"\(num(tx))\" y2=\"\(num(axisY))\" stroke=\"#dddddd\"/>\n"
            s += "<text x=\"\(num(tx))\" y=\"\(num(axisY + 16))\" text-anchor=\"middle\">\(escape(tickLabel(t)))</text>\n"
            t *= 10
        }
        s += "<line x1=\"\(num(plotX))\" y1=\"\(num(axisY))\" x2=\"\(num(plotX + plotW))\" y2=\"\(num(axisY))\" stroke=\"#000\"/>\n"
        s += "<line x1=\"\(num(plotX))\" y1=\"\(num(top - 6))\" x2=\"\(num(plotX))\" y2=\"\(num(axisY))\" stroke=\"#000\"/>\n"
        s += "<text x=\"\(num(plotX + plotW / 2))\" y=\"\(num(axisY + 34))\" text-anchor=\"middle\" font-weight=\"bold\">time (ns, log scale)</text>\n"
        s += "</g>\n"

        // Bars.
        var y = top
        for g in groups {
            y += groupGap
            let members = rows.filter { $0.group == g }
            var header = g
            let ratios = members.compactMap { m -> String? in
                if let k = m.portOverKernel, m.side != .kernel { return "\(m.side == .window ? "window" : "port")/kernel \(formatRatio(k))" }
                return nil
            }
            var parts = ratios
            if let e = members.first(where: { $0.id.hasPrefix("fault.window.") }),
               let p = members.first(where: { $0.id.hasPrefix("fault.window-port.") }), e.p50Ns > 0 {
                parts.append(String(format: "port share of a window fault %.1f%%", p.p50Ns / e.p50Ns * 100))
            }
            if !parts.isEmpty { header += ": " + parts.joined(separator: ", ") }
            s += "<text x=\"12\" y=\"\(num(y - 6))\" font-weight=\"bold\">\(escape(header))</text>\n"
            for m in members {
                let color = colors[m.side] ?? "#000"
                let bx = x(m.p50Ns)
                s += "<text x=\"\(num(labelW))\" y=\"\(num(y + rowH * 0.7))\" text-anchor=\"end\">\(escape(shorten(m.title, 60)))</text>\n"
                s += "<rect x=\"\(num(plotX))\" y=\"\(num(y + 2))\" width=\"\(num(max(bx - plotX, 1)))\" height=\"\(num(rowH - 5))\" fill=\"\(color)\"><title>\(escape(m.id)): p50 \(escape(formatNanos(m.p50Ns))), p99 \(escape(formatNanos(m.p99Ns)))</title></rect>\n"
                if m.p99Ns > m.p50Ns {
                    let wx = x(m.p99Ns), wy = y + rowH / 2 - 0.5
                    s += "<line x1=\"\(num(bx))\" y1=\"\(num(wy))\" x2=\"\(num(wx))\" y2=\"\(num(wy))\" stroke=\"\(color)\" stroke-width=\"1.5\"/>\n"
                    s += "<line x1=\"\(num(wx))\" y1=\"\(num(y + 3))\" x2=\"\(num(wx))\" y2=\"\(num(y + rowH - 4))\" stroke=\"\(color)\" stroke-width=\"1.5\"/>\n"
                }
                var label = "\(formatNanos(m.p50Ns))/\(m.per)"
                if let f = m.portOverFloor, m.side == .port { label += " (\(formatRatio(f)) floor)" }
                if let met = m.met, !met { label += " ✗" } else if m.met == true { label += " ✓" }
                let lx = max(x(m.p99Ns), bx) + 6
                s += "<text x=\"\(num(lx))\" y=\"\(num(y + rowH * 0.7))\" fill=\"#222\">\(escape(label))</text>\n"
                y += rowH
            }
        }

        // Legend.
        s += "<g id=\"legend\">\n"
        var lx = 12.0
        s += "<text x=\"\(num(lx))\" y=\"\(num(legendY))\" font-weight=\"bold\">legend:</text>\n"
        lx += 60
        for side in BenchSide.allCases where rows.contains(where: { $0.side == side }) {
            s += "<rect x=\"\(num(lx))\" y=\"\(num(legendY - 10))\" width=\"14\" height=\"12\" fill=\"\(colors[side]!)\"/>\n"
            s += "<text x=\"\(num(lx + 19))\" y=\"\(num(legendY))\">\(escape(sideNames[side]!))</text>\n"
            lx += 34 + Double(sideNames[side]!.count) * 6.6
        }
        s += "<text x=\"\(num(lx))\" y=\"\(num(legendY))\" fill=\"#444\">✓ target met, ✗ missed</text>\n"
        s += "</g>\n"
        var ny = legendY + 22
        if let n = r.timingNote { s += "<text x=\"12\" y=\"\(num(ny))\" fill=\"#b00\">\(escape(n))</text>\n"; ny += 16 }
        for n in r.notes { s += "<text x=\"12\" y=\"\(num(ny))\" fill=\"#444\">\(escape(n))</text>\n"; ny += 16 }
        s += "</svg>\n"
        return s
    }
}
