// New namespaces in a region's free space: ndctl multi-dax.sh (two small
// device-dax namespaces side by side) and sub-section.sh (16 MiB fsdax
// namespaces, below the 128 MiB memory section, mounted -o dax). Only
// namespaces the test made are destroyed.

import CDaxSys
import DAXBase
import DAXDevice
import DAXRuntime
import Foundation

#if canImport(Glibc)
import Glibc
#endif

enum NamespaceChecks {
    static let smallSize: UInt64 = 16 << 20

    /// The region with the largest free extent, if it has `need` bytes.
    static func region(_ t: TestContext, need: UInt64) throws -> NdRegion {
        let regions = try Ndctl.regions(t)
        for r in regions {
            t.log("\(r.dev): available \(formatSize(r.availableSize)), largest extent \(formatSize(r.maxAvailableExtent))")
        }
        guard let r = regions.first, r.maxAvailableExtent >= need else {
            try t.skip("no pmem region has \(formatSize(need)) free (largest extent \(formatSize(regions.first?.maxAvailableExtent ?? 0)))")
        }
        return r
    }

    /// ndctl multi-dax.sh: two 16 MiB device-dax namespaces at the page
    /// size in one region's free space; both map, each holds its own
    /// pattern (written to both, then both read back: no aliasing); both
    /// destroyed.
    static func multiDax(_ t: TestContext) throws {
        try DevdaxKit.guards()
        let region = try region(t, need: 2 * smallSize)
        let kernelLog = KernelLog()
        var made: [NdNamespace] = []
        for _ in 0..<2 {
            let r = try t.mustRun(["ndctl", "create-namespace", "-r", region.dev, "-m", "devdax", "-a", "4096",
                                   "-s", String(smallSize), "-n", "daxmm-multi-dax"])
            let ns = try t.require(SystemState.jsonObjects(r.stdout).compactMap(NdNamespace.init(json:)).first,
                                   "create-namespace printed no namespace")
            Ndctl.destroyAtCleanup(t, ns.dev)
            made.append(ns)
            t.log("created \(ns)")
        }
        let devs = try made.map { ns in
            let c = try t.require(ns.chardev, "\(ns.dev) has no device-dax device")
            return try t.require(try DaxDiscovery.device(named: c), "libdaxctl does not list \(c)")
        }
        t.expect(devs[0].devname != devs[1].devname, "both namespaces got \(devs[0].devname)")
        t.expect(devs.allSatisfy { $0.align == 4096 && $0.size > 0 }, "devices: \(devs.map { "\($0.devname) align \($0.align) size \($0.size)" })")
        var maps: [(UnsafeMutableRawPointer, Int, UInt64)] = []
        // Unmapped by hand before the destroy; the cleanup unmaps only what
        // is still mapped (a second munmap could hit a later mapping that
        // reused the address).
        let live = LiveMappings()
        t.atCleanup("munmap the multi-dax mappings") { live.unmapAll() }
        for d in devs {
            let fd = try DevdaxKit.open(t, d.path, O_RDWR)
            let len = Int(d.size / 4096 * 4096)
            let p: UnsafeMutableRawPointer
            switch DevdaxKit.mmap(length: len, prot: PROT_READ | PROT_WRITE, flags: MAP_SHARED, fd: fd) {
            case .success(let q): p = q
            case .failure(let e): throw CheckAbort(message: "\(d.path): \(e)")
            }
            live.ranges.append((p, len))
            let salt = UInt64.random(in: 1...UInt64.max)
            let w = guardedAccess(UInt64(UInt(bitPattern: p)), write: true, value: salt)
            try t.require(w.ok, "\(d.path): first write: \(w)")
            DevdaxKit.fillPattern(p, bytes: len, offset: 0, salt: salt)
            maps.append((p, len, salt))
        }
        for (d, (p, len, salt)) in zip(devs, maps) {
            let bad = DevdaxKit.checkPattern(p, bytes: len, offset: 0, salt: salt)
            t.expect(bad == nil, "\(d.path): offset \(hex(bad?.0 ?? 0)) reads \(hex(bad?.1 ?? 0)) after both devices were written")
        }
        live.unmapAll()
        for ns in made {
            try t.mustRun(["ndctl", "destroy-namespace", "-f", ns.dev])
        }
        let left = try Ndctl.namespaces(t).filter { n in made.contains { $0.dev == n.dev } }
        t.expect(left.isEmpty, "still listed after destroy-namespace: \(left)")
        KernelLog.expectClean(t, kernelLog, "multi-dax")
    }

    /// ndctl sub-section.sh: up to 4 (ndctl: 10) 16 MiB fsdax namespaces,
    /// as many as the largest free extent holds; each gets mkfs.ext4 -b 4096,
    /// mount -o dax (the mount must show dax) and umount; then each is
    /// disabled, enabled and destroyed.
    static func subSection(_ t: TestContext) throws {
        let region = try region(t, need: smallSize)
        let count = Int(min(4, region.maxAvailableExtent / smallSize))
        t.log("making \(count) 16M fsdax namespaces in \(region.dev)")
        let kernelLog = KernelLog()
        let mnt = try t.mountPoint("ext4")
        var made: [NdNamespace] = []
        for _ in 0..<count {
            let r = try t.mustRun(["ndctl", "create-namespace", "-r", region.dev, "-m", "fsdax", "-s", String(smallSize),
                                   "--no-autorecover", "-n", "daxmm-subsection"])
            let ns = try t.require(SystemState.jsonObjects(r.stdout).compactMap(NdNamespace.init(json:)).first,
                                   "create-namespace printed no namespace")
            Ndctl.destroyAtCleanup(t, ns.dev)
            made.append(ns)
            let blk = "/dev/" + (try t.require(ns.blockdev, "\(ns.dev) has no block device"))
            t.log("created \(ns)")
            try t.mustRun(["mkfs.ext4", "-q", "-F", "-b", "4096", blk])
            // Registered after the namespace's destroy: runs before it.
            t.atCleanup("umount \(mnt)") {
                if mountOptions(mnt) != nil { _ = try t.command(["umount", mnt]) }
            }
            try t.mustRun(["mount", "-o", "dax", blk, mnt])
            let opts = mountOptions(mnt)
            let umount = try t.command(["umount", mnt])
            t.expect(opts?.contains { $0 == "dax" || $0 == "dax=always" } == true,
                     "\(blk) on \(mnt): mount options \(opts ?? []) show no dax")
            t.expect(umount.succeeded, "umount \(mnt): \(umount)")
        }
        t.expect(made.count == count, "made \(made.count) of \(count) namespaces")
        for ns in made {
            for verb in ["disable-namespace", "enable-namespace"] {
                let r = try t.command(["ndctl", verb, ns.dev])
                t.expect(r.succeeded, "\(r)")
            }
            try t.mustRun(["ndctl", "destroy-namespace", "-f", ns.dev])
        }
        let left = try Ndctl.namespaces(t).filter { n in made.contains { $0.dev == n.dev } }
        t.expect(left.isEmpty, "still listed after destroy-namespace: \(left)")
        KernelLog.expectClean(t, kernelLog, "sub-section")
    }

    /// The options of the mount at `mountPoint` (/proc/self/mounts).
    static func mountOptions(_ mountPoint: String) -> [String]? {
        guard let text = try? String(contentsOfFile: "/proc/self/mounts", encoding: .utf8) else { return nil }
        for line in text.split(separator: "\n") {
            let f = line.split(separator: " ")
            if f.count > 3, f[1] == mountPoint { return f[3].split(separator: ",").map(String.init) }
        }
        return nil
    }
}

/// Mappings a test unmaps itself, once: `unmapAll` forgets what it unmapped.
final class LiveMappings: @unchecked Sendable {
    // @unchecked: the test's thread only.
    var ranges: [(UnsafeMutableRawPointer, Int)] = []
    func unmapAll() {
        for (p, len) in ranges { munmap(p, len) }
        ranges.removeAll()
    }
}
