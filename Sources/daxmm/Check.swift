import ArgumentParser
import DAXBase
import DAXDevice
import DAXRuntime

struct Check: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Map a device MAP_SHARED at its alignment, write a pattern, read it back.")

    @OptionGroup var deviceOptions: DeviceOptions

    @Option(name: .long, help: "Bytes to check from --offset (default: 64M or the device, if smaller).")
    var bytes: String?

    @Option(name: .long, help: "Device offset to map from (a multiple of the device alignment).")
    var offset: String = "0"

    func run() throws {
        let dev = try deviceOptions.open()
        try Check.check(dev, offset: parse(offset, "--offset"), bytes: bytes.map { try parse($0, "--bytes") })
    }

    func parse(_ s: String, _ what: String) throws -> UInt64 {
        do { return try parseSize(s) } catch { throw failure("\(what) \(error)") }
    }

    static func check(_ dev: any DaxDevice, offset: UInt64, bytes: UInt64?) throws {
        let avail = offset <= dev.size ? dev.size - offset : 0
        var len = bytes ?? min(avail, 64 << 20)
        let a = UInt64(dev.align.bytes)
        if bytes == nil { len = max(a, len / a * a) }
        let mapping: DeviceMapping
        do { mapping = try dev.map(offset: offset, length: len, options: .shared) }
        catch { throw failure(error.description) }
        defer { mapping.unmap() }
        let r: PatternCheckResult
        do { r = try PatternCheck.run(mapping) } catch { throw failure(error.description) }
        let phys = dev.physicalAddress(ofOffset: offset).map(hex) ?? "?"
        print("check: \(dev.name): mapped \(formatSize(r.bytes)) at \(hex(UInt64(mapping.address))) (phys \(phys), \(r.alignPages) x \(dev.align) pages)")
        let perFault = r.alignPages > 0 ? r.firstTouchNanos / UInt64(r.alignPages) : 0
        let mbps = { (ns: UInt64) in ns == 0 ? 0 : r.bytes * 1000 / ns }
        print("check: first touch \(perFault) ns/page, write \(mbps(r.writeNanos)) MB/s, verify \(mbps(r.verifyNanos)) MB/s: OK\(BuildInfo.timingNote)")
    }
}

struct Run: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "The main job: list the devices, then exercise the chosen (or default) device with the port.")

    @OptionGroup var deviceOptions: DeviceOptions

    func run() throws {
        try List.parse([]).run()
        var args = ["--pins", "uring"]
        if let d = deviceOptions.device { args += ["--device", d] }
        if uringUnavailableReason() != nil { args = args.dropFirst(2).map { $0 } }
        var ex = try Exercise.parse(args)
        try ex.run()
    }
}
