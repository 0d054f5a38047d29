// ndctl daxctl-devices.sh: a device-dax device handed to the kmem driver as
// system RAM without onlining it, its memory onlined and offlined, and the
// device given back to device_dax, with the mode checked by `daxctl list`
// after each step. kmem hot-plugs only whole memory blocks of a range
// (dax_kmem_range aligns it inwards), so the device must contain one.

import CDaxSys
import DAXBase
import DAXDevice
import DAXRuntime
import Foundation

#if canImport(Glibc)
import Glibc
#endif

enum KmemCheck {
    static let memoryRoot = "/sys/devices/system/memory"

    /// daxctl's view of one device: mode, online and total memory blocks.
    struct DaxctlDevice {
        var mode: String
        var online: Int?
        var total: Int?
    }

    static func daxctlDevice(_ t: TestContext, _ name: String) throws -> DaxctlDevice {
        let r = try t.mustRun(["daxctl", "list", "-d", name])
        let o = try t.require(SystemState.jsonObjects(r.stdout).first, "daxctl list -d \(name) printed nothing")
        return DaxctlDevice(mode: o["mode"] as? String ?? "?", online: (o["online_memblocks"] as? NSNumber)?.intValue,
                            total: (o["total_memblocks"] as? NSNumber)?.intValue)
    }

    /// MemTotal of /proc/meminfo, in KiB.
    static func memTotalKiB() -> UInt64? {
        guard let text = try? String(contentsOfFile: "/proc/meminfo", encoding: .utf8) else { return nil }
        for line in text.split(separator: "\n") where line.hasPrefix("MemTotal:") {
            return line.split(separator: " ").dropFirst().first.flatMap { UInt64($0) }
        }
        return nil
    }

    /// Whether this kernel can hot-plug device memory at all: the kmem
    /// driver (a module or built in) and memory hotplug's sysfs.
    static func kernelSupport() -> String? {
        guard access("\(memoryRoot)/block_size_bytes", R_OK) == 0 else {
            return "no \(memoryRoot)/block_size_bytes: kernel built without CONFIG_MEMORY_HOTPLUG"
        }
        if access("/sys/bus/dax/drivers/kmem", F_OK) == 0 { return nil }
        if let r = try? Command.run(["modinfo", "kmem"], timeout: 30), r.succeeded { return nil }
        let builtin = (try? String(contentsOfFile: "/lib/modules/\(KernelVersion.unameRelease())/modules.builtin", encoding: .utf8)) ?? ""
        if builtin.contains("dax/kmem.ko") { return nil }
        return "no kmem driver: /sys/bus/dax/drivers/kmem absent, `modinfo kmem` failed, modules.builtin lacks dax/kmem.ko (CONFIG_DEV_DAX_KMEM unset)"
    }

    static func run(_ t: TestContext) throws {
        if let why = kernelSupport() { try t.unsupported(why) }
        let blockText = try t.require(DevdaxKit.readText("\(memoryRoot)/block_size_bytes"), "memory block size")
        let block = try t.require(UInt64(blockText, radix: 16), "memory block size '\(blockText)'")
        // The device with the fewest whole memory blocks (at least one):
        // the least memory to online and offline.
        var candidates: [(DaxDeviceInfo, Int)] = []
        for d in t.environment.devdaxDevices() {
            let ranges = d.mappings.isEmpty && d.resource != 0
                ? [(d.resource, d.resource + d.size - 1)] : d.mappings.map { ($0.start, $0.end) }
            let blocks = ranges.map { DevdaxKit.wholeMemoryBlocks(start: $0.0, end: $0.1, blockSize: block) }.reduce(0, +)
            t.log("\(d.devname): \(ranges.map { "\(hex($0.0))-\(hex($0.1))" }) holds \(blocks) whole \(formatSize(block)) memory blocks")
            if blocks > 0 { candidates.append((d, blocks)) }
        }
        let (dev, blocks) = try t.require(candidates.min { $0.1 < $1.1 },
                                          "no device-dax range holds a whole \(formatSize(block)) memory block")
        let name = dev.devname
        t.log("using \(name): \(blocks) memory block(s)")

        // -N (do not online) needs the kernel's auto-online policy off.
        let policyPath = "\(memoryRoot)/auto_online_blocks"
        if let policy = DevdaxKit.readText(policyPath) {
            if policy != "offline" {
                t.atCleanup("auto_online_blocks back to \(policy)") {
                    if let e = DevdaxKit.writeText(policyPath, policy) { throw SysError(call: "write \(policyPath)", errno: e) }
                }
                try t.require(DevdaxKit.writeText(policyPath, "offline") == nil, "write offline to \(policyPath)")
            }
        }
        // Whatever happens: memory offline, device back to devdax.
        t.atCleanup("\(name) back to devdax") {
            let cur = try? daxctlDevice(t, name)
            guard cur?.mode == "system-ram" else { return }
            _ = try? t.command(["daxctl", "offline-memory", name])
            let r = try t.command(["daxctl", "reconfigure-device", "-f", "-m", "devdax", name])
            if !r.succeeded { throw CommandError(result: r) }
        }
        let memBefore = memTotalKiB()

        try t.mustRun(["daxctl", "reconfigure-device", "-N", "-m", "system-ram", name])
        var d = try daxctlDevice(t, name)
        t.expectEqual(d.mode, "system-ram", "\(name) mode after reconfigure-device -N -m system-ram")
        t.expectEqual(d.total, blocks, "\(name) total_memblocks")
        t.expectEqual(d.online, 0, "\(name) online_memblocks after -N")

        try t.mustRun(["daxctl", "online-memory", name])
        d = try daxctlDevice(t, name)
        t.expectEqual(d.mode, "system-ram", "\(name) mode after online-memory")
        t.expectEqual(d.online, blocks, "\(name) online_memblocks after online-memory")
        let memOnline = memTotalKiB()
        if let a = memBefore, let b = memOnline {
            t.log("MemTotal \(a) KiB -> \(b) KiB with \(blocks) block(s) online")
            t.expect(b > a && b - a <= UInt64(blocks) * block / 1024,
                     "MemTotal went from \(a) to \(b) KiB onlining \(blocks) x \(formatSize(block))")
        }

        try t.mustRun(["daxctl", "offline-memory", name])
        d = try daxctlDevice(t, name)
        t.expectEqual(d.mode, "system-ram", "\(name) mode after offline-memory")
        t.expectEqual(d.online, 0, "\(name) online_memblocks after offline-memory")
        if let a = memBefore, let c = memTotalKiB() {
            t.expectEqual(c, a, "MemTotal (KiB) after offline-memory")
        }

        try t.mustRun(["daxctl", "reconfigure-device", "-f", "-m", "devdax", name])
        d = try daxctlDevice(t, name)
        t.expectEqual(d.mode, "devdax", "\(name) mode after reconfigure-device -f -m devdax")
        // Back to a device-dax device that maps.
        let back = try t.require(t.environment.devdaxDevices().first { $0.devname == name }, "\(name) is not an enabled device-dax device")
        let fd = try DevdaxKit.open(t, back.path, O_RDWR)
        let len = Int(max(back.align, 4096))
        let p = try DevdaxKit.map(t, back.path, length: len, flags: MAP_SHARED, fd: fd)
        try DevdaxKit.guards()
        let a = UInt64(UInt(bitPattern: p))
        let w = guardedAccess(a, write: true, value: 0x6b6d_656d)
        let r = guardedAccess(a, write: false)
        t.expect(w.ok && r.ok && r.value == 0x6b6d_656d, "\(name) after the round trip: write \(w), read \(r) value \(hex(r.value))")
    }
}
