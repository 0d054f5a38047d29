import ArgumentParser
import DAXBase
import DAXDevice

struct List: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "List device-dax regions and devices (libdaxctl).",
        discussion: "With --json, prints what `daxctl list -R -D` prints (-M and -i as in daxctl).")

    @Flag(name: .long, help: "JSON in the shape of `daxctl list -R -D`.")
    var json = false

    @Flag(name: [.customShort("M"), .long], help: "Include each device's physical mappings.")
    var mappings = false

    @Flag(name: [.customShort("i"), .long], help: "Include idle (size 0) devices.")
    var idle = false

    @Flag(name: .long, help: "Also print the NUMA nodes (libnuma).")
    var numa = false

    func run() throws {
        let regions: [DaxRegionInfo]
        do { regions = try DaxDiscovery.scan() } catch { throw failure(error.description) }
        let options = ListOptions(mappings: mappings, idle: idle)
        let shown = regions.map { r in
            var r = r
            r.devices = r.devices.filter { idle || $0.size != 0 }
            return r
        }
        let deviceCount = shown.reduce(0) { $0 + $1.devices.count }
        if json {
            print(DaxctlList.regionsJSON(regions, options: options).rendered())
        } else {
            printTable(shown)
        }
        if numa { printNUMA() }
        if deviceCount == 0 {
            note("no device-dax devices found (libdaxctl saw \(regions.count) region\(regions.count == 1 ? "" : "s")); commands use the embedded emulated device unless --device names one (`daxmm vm run` boots a guest with real ones)")
        }
    }

    func printTable(_ regions: [DaxRegionInfo]) {
        var rows: [[String]] = [["DEVICE", "REGION", "SIZE", "ALIGN", "PHYS START", "NODE", "MODE", "STATE", "RANGES"]]
        for r in regions {
            for d in r.devices {
                rows.append([
                    "/dev/\(d.devname)", "region\(r.id)", formatSize(d.size),
                    d.align > 0 ? formatSize(d.align) : "-",
                    d.resource != 0 ? hex(d.resource) : "-",
                    d.targetNode.map(String.init) ?? "-",
                    d.mode, d.enabled ? "enabled" : "disabled",
                    String(max(d.mappings.count, 1)),
                ])
                if mappings {
                    for m in d.mappings {
                        rows.append(["", "  range", formatSize(m.size), "", hex(m.start), "", "", "",
                                     "pgoff \(hex(m.pageOffset))"])
                    }
                }
            }
        }
        if rows.count > 1 { printRows(rows) }
        for r in regions {
            print("region\(r.id): size \(r.size.map(formatSize) ?? "?"), available \(formatSize(r.availableSize)), align \(r.align.map(formatSize) ?? "?"), \(r.path)")
        }
    }

    func printNUMA() {
        guard let nodes = NUMA.nodes() else {
            print("NUMA: not available (numa_available() < 0)")
            return
        }
        var rows: [[String]] = [["NODE", "MEMORY", "FREE", "DISTANCES"]]
        for n in nodes {
            rows.append(["node\(n.id)", formatSize(UInt64(max(n.size, 0))), formatSize(UInt64(max(n.free, 0))),
                         n.distances.map(String.init).joined(separator: " ")])
        }
        printRows(rows)
    }
}

/// Prints rows as left-aligned columns.
func printRows(_ rows: [[String]]) {
    let widths = (0..<(rows.first?.count ?? 0)).map { c in rows.map { $0[c].count }.max() ?? 0 }
    for row in rows {
        var line = ""
        for (c, cell) in row.enumerated() {
            line += cell + String(repeating: " ", count: widths[c] - cell.count + (c == row.count - 1 ? 0 : 2))
        }
        while line.last == " " { line.removeLast() }
        print(line)
    }
}
