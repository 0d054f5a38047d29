// devdax-create-multirange: ndctl's daxctl-create.sh at small scale, with
// the port in the loop. In a dynamic dax region (soft-reserved memory under
// dax_hmem: vmrun --hmem; or CXL) daxctl creates devices, a hole is made,
// and a device created over it spans several physical ranges
// (drivers/dax/bus.c: dev_dax_resize takes the free gaps first-fit,
// alloc_dev_dax_range gives each range the page offset that follows the
// previous one). The kernel's mappingN (start, end, page_offset) are
// compared with the ranges of the port's DevDax built as DAXRuntime's
// Binding builds it (libdaxctl's mappings), and the port's
// dax_pgoff_to_phys with the pfns the kernel maps (pagemap of an mmap of the
// device) at every range boundary and at sampled offsets. Then the region
// is put back as it was found.
//
// Scaled down from daxctl-create.sh (which fills a 2G+ region, grows
// devices in steps and replays daxctl list -M input): five 16M devices, two
// destroyed, one 48M device over the two holes and the end: 3 ranges.

import DAXBase
import DAXCore
import DAXDevice
import Foundation
import MMCore

#if canImport(Glibc)
import Glibc
#endif

enum CreateDeviceChecks {
    static let tests: [CheckTest] = [
        CheckTest("devdax-create-multirange", suite: .dax, gates: [.root, .program("daxctl")],
                  anchor: "ndctl: daxctl-create.sh", timeout: 300,
                  "daxctl create-device over holes gives a 3-range device: its mappingN equal the port DevDax's ranges, and the port's dax_pgoff_to_phys equals the kernel's pfns at every range boundary and sampled offsets") { t in
            try MultiRange(t).run()
        },
    ]
}

private struct MultiRange {
    let t: TestContext
    init(_ t: TestContext) { self.t = t }

    /// One device's range as the kernel's sysfs shows it.
    struct KernelMapping: Equatable, CustomStringConvertible {
        var start: UInt64, end: UInt64, pageOffset: UInt64
        var size: UInt64 { end - start + 1 }
        var description: String { "[\(hex(start))-\(hex(end))] page_offset \(pageOffset)" }
    }

    static let unit: UInt64 = 16 << 20

    func run() throws {
        let region = try dynamicRegion()
        let id = region.id
        t.log("region \(id) at \(region.path): size \(region.size.map(formatSize) ?? "?"), available \(formatSize(region.availableSize))")
        let unit = max(MultiRange.unit, region.align ?? 0)

        // daxctl-create.sh's setup: the region's first device (the one its
        // driver made) shrunk to 0, so that the whole region is free. Under
        // dax_hmem's region_idle it already is.
        let seed = try t.require(region.devices.min { $0.id < $1.id }, "region \(id) has no device")
        let seedName = seed.devname
        if seed.size > 0 {
            if seed.mode != "devdax" { try t.skip("\(seedName) holds the region in \(seed.mode) mode") }
            // Registered before the disable: a shrink that fails after it
            // must not leave the device disabled. Puts back what differs.
            t.atCleanup("give \(seedName) back its \(formatSize(seed.size))") {
                let now = try? DaxDiscovery.device(named: seedName)
                if now?.size != seed.size {
                    if now?.enabled == true {
                        let d = try Command.run(["daxctl", "disable-device", seedName], timeout: 120)
                        if !d.succeeded { throw CommandError(result: d) }
                    }
                    let r = try Command.run(["daxctl", "reconfigure-device", "-s", String(seed.size), seedName], timeout: 120)
                    if !r.succeeded { throw CommandError(result: r) }
                }
                if seed.enabled, (try? DaxDiscovery.device(named: seedName))?.enabled != true {
                    let e = try Command.run(["daxctl", "enable-device", seedName], timeout: 120)
                    if !e.succeeded { throw CommandError(result: e) }
                }
            }
            if seed.enabled { try daxctl(["disable-device", seedName]) }
            try daxctl(["reconfigure-device", "-s", "0", seedName])
            t.expectEqual(try available(id), region.availableSize + seed.size, "available_size once \(seedName) is shrunk to 0")
        } else {
            t.log("\(seedName) is already of size 0 (an idle region)")
        }
        let free = try available(id)
        let busy = try devicesWithMemory(id)
        if !busy.isEmpty { try t.skip("region \(id) is in use by \(busy.joined(separator: ", ")); the test needs it free") }
        try t.require(free == region.size, "region \(id): \(formatSize(free)) available of \(region.size.map(formatSize) ?? "?")")
        try t.require(free >= 6 * unit, "region \(id) has \(formatSize(free)) free; the test needs \(formatSize(6 * unit))")

        // Five devices of one unit each, one range each, back to back from
        // the region's start.
        var made: [String] = []
        for _ in 0..<5 { made.append(try create(region: id, size: unit)) }
        let first = try mappings(made[0])
        try t.require(first.count == 1, "\(made[0]): \(first.count) ranges, expected 1")
        let base = first[0].start
        for (i, dev) in made.enumerated() {
            let m = try mappings(dev)
            t.expectEqual(m, [KernelMapping(start: base + UInt64(i) * unit, end: base + UInt64(i + 1) * unit - 1, pageOffset: 0)],
                          "\(dev)'s ranges")
        }
        // Holes where the second and fourth were.
        try destroy(made[1])
        try destroy(made[3])
        t.expectEqual(try available(id), free - 3 * unit, "available_size with two holes")

        // Three units: the two holes first (first fit), then past the fifth.
        let multi = try create(region: id, size: 3 * unit)
        let kernel = try mappings(multi)
        t.log("\(multi): " + kernel.map(\.description).joined(separator: ", "))
        let want = [1, 3, 5].enumerated().map { i, slot in
            KernelMapping(start: base + UInt64(slot) * unit, end: base + UInt64(slot + 1) * unit - 1,
                          pageOffset: UInt64(i) * (unit >> 12))
        }
        t.expectEqual(kernel, want, "\(multi)'s ranges (mappingN)")
        try t.require(kernel.count >= 2, "\(multi) has \(kernel.count) range(s); the rest needs several")

        try comparePort(multi, kernel: kernel)

        // Put the region back as it was found.
        for dev in [multi, made[0], made[2], made[4]] { try destroy(dev) }
        t.expectEqual(try available(id), free, "available_size after the devices are destroyed")
        t.expectEqual(try devicesWithMemory(id), [], "devices with memory left in region \(id)")
    }

    /// The port's DevDax over the device's ranges as libdaxctl reports them
    /// (what Binding hands to DevDax), against the kernel.
    func comparePort(_ devname: String, kernel: [KernelMapping]) throws {
        let dev = try t.must("open /dev/\(devname)") { try DaxCharDevice(path: "/dev/" + devname) }
        let lastEnd = try t.require(dev.ranges.map { $0.range.end }.max(), "\(devname) has no ranges")
        let bits = max(32, 64 - lastEnd.leadingZeroBitCount)
        let port = try t.must("the port's kernel") { try Kernel(physBits: bits) }
        let devdax = try t.must("DevDax over \(devname)'s ranges") {
            try DevDax(kernel: port, ranges: dev.ranges.map(\.range), align: UInt64(dev.align.bytes))
        }
        try t.must("dev_dax_probe of the port's device") { try devdax.probe() }
        t.atCleanup("remove the port's device") { try devdax.remove() }

        // mappingN against the port's ranges: start, end and page offset.
        t.compare("number of ranges", port: devdax.ranges.count, kernel: kernel.count)
        for (i, (p, k)) in zip(devdax.ranges, kernel).enumerated() {
            t.compare("range \(i) start", port: hex(p.range.start), kernel: hex(k.start))
            t.compare("range \(i) end", port: hex(p.range.end), kernel: hex(k.end))
            t.compare("range \(i) page_offset", port: p.pgoff, kernel: k.pageOffset)
        }
        t.compare("device size", port: devdax.size, kernel: dev.size)

        // Every range's first and last page, the page at each 2M boundary
        // inside it, and four pages picked at random per range.
        var rng = SplitMix64(seed: 0xda7_c4ea7e)
        var pgoffs: [UInt64] = []
        for r in devdax.ranges {
            pgoffs += [r.pgoff, r.pgoff + r.pages - 1]
            pgoffs += stride(from: r.pgoff + 512, to: r.pgoff + r.pages, by: 512).map { $0 }
            pgoffs += (0..<4).map { _ in r.pgoff + rng.next() % r.pages }
        }
        pgoffs = Array(Set(pgoffs)).sorted()

        let m = try t.must("mmap /dev/\(devname)") { try dev.map(offset: 0, length: dev.size, options: .shared) }
        t.atCleanup("unmap /dev/\(devname)") { m.unmap() }
        var agreed = 0
        for pgoff in pgoffs {
            let addr = m.baseAddress + Int(pgoff << 12)
            _ = addr.load(as: UInt8.self)   // fault it in
            let entry = try t.must("pagemap at pgoff \(pgoff)") { try Pagemap.entry(at: UInt(bitPattern: addr)) }
            let kernelPhys = entry.pfn.map { $0 << 12 }
            let portPhys = devdax.pgoffToPhys(pgoff, size: 4096)
            if portPhys == kernelPhys { agreed += 1; continue }
            t.compare("dax_pgoff_to_phys(pgoff \(pgoff))", port: portPhys.map(hex) ?? "none", kernel: kernelPhys.map(hex) ?? "not mapped")
        }
        t.expectEqual(agreed, pgoffs.count, "pages where the port and the kernel agree")
        t.log("agree at \(agreed) pages (\(devdax.ranges.count) ranges)")

        // The port's rule at the edges: a span may not run past its range's
        // end, and nothing lies past the device.
        for (i, r) in devdax.ranges.enumerated() {
            t.expect(devdax.pgoffToPhys(r.pgoff + r.pages - 1, size: 8192) == nil,
                     "range \(i): an 8K span over its last page was given an address")
        }
        t.expect(devdax.pgoffToPhys(devdax.size >> 12, size: 4096) == nil, "a page past the device was given an address")
    }

    // MARK: - The region

    /// The first dynamic dax region, or the skip that says why there is none.
    func dynamicRegion() throws -> DaxRegionInfo {
        let regions = try t.must("libdaxctl discovery") { try DaxDiscovery.scan() }
        if let r = regions.first(where: { Guest.isDynamic($0) }) { return r }
        let hmem = t.environment.variables["DAXMM_VM_HMEM"]
        let why = "no dynamic dax region (regions: \(regions.map { "\($0.id) \($0.path)" }.joined(separator: ", ")));"
            + " pmem regions are static, daxctl create-device needs soft-reserved memory under dax_hmem or CXL"
        if t.environment.inGuest && hmem == nil {
            try t.unsupported("this guest was booted without vmrun --hmem: \(why)")
        }
        if t.environment.inGuest {
            throw CheckAbort(message: "booted with --hmem (DAXMM_VM_HMEM=\(hmem!)) but \(why)")
        }
        try t.skip(why)
    }

    func available(_ id: Int) throws -> UInt64 {
        let r = try t.require(try DaxDiscovery.scan().first { $0.id == id }, "region \(id) is gone")
        return r.availableSize
    }

    func devicesWithMemory(_ id: Int) throws -> [String] {
        let r = try t.require(try DaxDiscovery.scan().first { $0.id == id }, "region \(id) is gone")
        return r.devices.filter { $0.size > 0 }.map(\.devname)
    }

    /// `daxctl create-device -r ID -s SIZE`; the new device's name, destroyed
    /// at cleanup if the body does not get to it.
    func create(region id: Int, size: UInt64) throws -> String {
        let r = try daxctl(["create-device", "-r", String(id), "-s", String(size)])
        let name = try t.require(SystemState.jsonObjects(r.stdout).first?["chardev"] as? String,
                                 "daxctl create-device printed no chardev: \(r.stdout)")
        t.atCleanup("destroy \(name)") {
            guard access("/sys/bus/dax/devices/\(name)", F_OK) == 0,
                  (try? DaxDiscovery.device(named: name))??.size ?? 0 > 0 else { return }
            _ = try Command.run(["daxctl", "disable-device", name], timeout: 120)
            let d = try Command.run(["daxctl", "destroy-device", name], timeout: 120)
            if !d.succeeded { throw CommandError(result: d) }
        }
        return name
    }

    func destroy(_ name: String) throws {
        try daxctl(["disable-device", name])
        try daxctl(["destroy-device", name])
    }

    @discardableResult
    func daxctl(_ args: [String]) throws -> CommandResult {
        try t.mustRun(["daxctl"] + args, timeout: 120)
    }

    /// mappingN/{start,end,page_offset} of a device, in N order.
    func mappings(_ devname: String) throws -> [KernelMapping] {
        var out: [KernelMapping] = []
        let dir = "/sys/bus/dax/devices/\(devname)"
        while let start = number("\(dir)/mapping\(out.count)/start") {
            let end = try t.require(number("\(dir)/mapping\(out.count)/end"), "\(devname): mapping\(out.count)/end")
            let off = try t.require(number("\(dir)/mapping\(out.count)/page_offset"), "\(devname): mapping\(out.count)/page_offset")
            out.append(KernelMapping(start: start, end: end, pageOffset: off))
        }
        return out
    }

    func readLine(_ path: String) -> String? {
        guard let s = try? String(contentsOfFile: path, encoding: .utf8) else { return nil }
        let v = s.trimmingCharacters(in: .whitespacesAndNewlines)
        return v.isEmpty ? nil : v
    }

    func number(_ path: String) -> UInt64? {
        guard let v = readLine(path) else { return nil }
        return v.hasPrefix("0x") ? UInt64(v.dropFirst(2), radix: 16) : UInt64(v)
    }
}
