// Real device-dax discovery and the device's own checks: daxctl-compatible
// listing, the namespaces the guest was asked for, NUMA nodes, the default
// device, aligned mappings with data and pfns, the kernel's refusals, bad
// states (a block device, a disabled device, no permission, no node).

import DAXBase
import DAXDevice
import Foundation

#if canImport(Glibc)
import Glibc
#endif

enum MigratedDiscovery {
    /// This executable (the tests run `daxmm list` and `daxmm check` as a user would).
    static func daxmm(_ t: TestContext) throws -> String {
        try t.require(ProjectFiles.executablePath(), "cannot find this executable (/proc/self/exe)")
    }

    /// JSON text as Foundation objects; daxctl prints nothing when there are
    /// no regions.
    static func parseJSON(_ text: String) -> NSObject? {
        let trimmed = text.trimmingCharacters(in: .whitespacesAndNewlines)
        if trimmed.isEmpty { return NSArray() }
        return (try? JSONSerialization.jsonObject(with: Data(trimmed.utf8))) as? NSObject
    }

    static func devices(_ t: TestContext) throws -> [DaxDeviceInfo] {
        let devs = t.environment.devdaxDevices()
        try t.require(!devs.isEmpty, "no enabled device-dax device")
        return devs
    }

    /// The list of "4K,2M,1G" in `variable`, as bytes.
    static func expectedAligns(_ t: TestContext) -> [UInt64] {
        (t.environment.variables["DAXMM_VM_EXPECT_ALIGNS"] ?? "").split(separator: ",").compactMap { try? parseSize(String($0)) }
    }

    /// `daxmm list --json` prints what `daxctl list -R -D` prints, with -M,
    /// -i and both; the library's view (no process between) too.
    static func listJSON(_ t: TestContext) throws {
        _ = try devices(t)
        let exe = try daxmm(t)
        for flags in [[], ["-M"], ["-i"], ["-M", "-i"]] {
            let theirs = try t.command(["daxctl", "list", "-R", "-D"] + flags)
            try t.require(theirs.succeeded, "daxctl list \(flags): \(theirs)")
            let ours = try t.command([exe, "list", "--json"] + flags)
            t.expect(ours.succeeded, "daxmm list --json \(flags): \(ours)")
            let a = try t.require(parseJSON(theirs.stdout), "daxctl printed no JSON")
            let b = parseJSON(ours.stdout)
            t.expect(b == a, "daxmm list --json \(flags.joined(separator: " ")) differs from daxctl list -R -D:\ndaxmm:\n\(ours.stdout)\ndaxctl:\n\(theirs.stdout)")
            let regions = try t.must("libdaxctl scan") { try DaxDiscovery.scan() }
            let lib = DaxctlList.regionsJSON(regions, options: ListOptions(mappings: flags.contains("-M"), idle: flags.contains("-i")))
            t.expect(parseJSON(lib.rendered()) == a, "the library's daxctl-list JSON \(flags) differs from daxctl's:\n\(lib.rendered())")
        }
    }

    /// Every alignment the guest was asked for (DAXMM_VM_EXPECT_ALIGNS) has
    /// a device, an fsdax namespace when asked (DAXMM_VM_EXPECT_FSDAX=1), and
    /// each device has a resource and mappings covering its size.
    static func namespaces(_ t: TestContext) throws {
        let devs = try devices(t)
        let aligns = Set(devs.map(\.align))
        for a in expectedAligns(t) {
            t.expect(aligns.contains(a), "no device with align \(formatSize(a)) in \(devs.map { "\($0.devname):\(formatSize($0.align))" })")
        }
        if t.environment.variables["DAXMM_VM_EXPECT_FSDAX"] == "1" {
            t.expect(!t.environment.pmemBlockDevices().isEmpty, "an fsdax namespace (/dev/pmem*) was asked for and is missing")
        }
        for d in devs {
            t.expect(d.resource != 0, "\(d.devname): resource 0")
            t.expect(!d.mappings.isEmpty, "\(d.devname): no mappings")
            t.expectEqual(d.mappings.reduce(0) { $0 + $1.size }, d.size, "\(d.devname): bytes in its mappings")
            t.expect(DaxAlign(bytes: Int(d.align)) != nil, "\(d.devname): align \(hex(d.align)) is not 4K, 2M or 1G")
        }
    }

    /// DAXMM_VM_EXPECT_NODES (a multi-node boot): every node has a device
    /// and libnuma sees them with distance 10 to themselves; otherwise every
    /// device's target node is one libnuma knows.
    static func nodes(_ t: TestContext) throws {
        let devs = try devices(t)
        let expected = (t.environment.variables["DAXMM_VM_EXPECT_NODES"] ?? "").split(separator: ",").compactMap { Int($0) }
        let nodes = Set(devs.compactMap(\.targetNode))
        t.log("device nodes: \(devs.map { "\($0.devname)@\($0.targetNode.map(String.init) ?? "-")" }.joined(separator: " ")); expected: \(expected)")
        for n in expected {
            t.expect(nodes.contains(n), "no device on node \(n): \(devs.map { "\($0.devname)@\(String(describing: $0.targetNode))" })")
        }
        let numa = NUMA.nodes()
        if !expected.isEmpty {
            let known = try t.require(numa, "libnuma reports no nodes")
            t.expect(known.count >= expected.count, "libnuma sees \(known.count) node(s), \(expected.count) expected")
            for n in known where expected.contains(n.id) {
                t.expectEqual(n.distances.indices.contains(n.id) ? n.distances[n.id] : -1, 10, "node \(n.id)'s distance to itself")
            }
        } else if let known = numa {
            let ids = Set(known.map(\.id))
            for d in devs { if let n = d.targetNode { t.expect(ids.contains(n), "\(d.devname): target node \(n) is not one of libnuma's \(ids.sorted())") } }
            t.expect(!ids.isEmpty, "libnuma reports no node")
        } else {
            t.expect(true, "no expected nodes; libnuma unavailable")
        }
    }

    /// Without --device the first enabled device is the default, and `daxmm
    /// check` says it uses it.
    static func defaultDevice(_ t: TestContext) throws {
        let all = try t.must("libdaxctl discovery") { try DaxDiscovery.devices() }
        let first = try t.require(all.first { $0.enabled && $0.size > 0 && $0.mode == "devdax" }, "no enabled device-dax device")
        let spec = try t.must("the default device") { try DeviceSpec.defaultSpec() }
        t.expectEqual(spec, .real(path: first.path), "the default device")
        let r = try t.command([try daxmm(t), "check", "--bytes", "4M"])
        t.expect(r.succeeded, "daxmm check: \(r)")
        t.expect(r.stderr.contains("using device /dev/\(first.devname) (device-dax"), "daxmm check does not name /dev/\(first.devname): \(r.stderr)")
    }
}

enum MigratedDevice {
    /// Each device maps MAP_SHARED at its alignment, holds a pattern, a
    /// second mapping sees it, and pagemap's pfns are the physical addresses
    /// the port computes from the device's ranges (not for 1G: pagemap's
    /// walk would split the PUD).
    static func mapPatternPagemap(_ t: TestContext) throws {
        for info in try MigratedDiscovery.devices(t) {
            let dev = try t.must("opening \(info.path)") { try DaxCharDevice(path: info.path) }
            t.expectEqual(dev.size, info.size, "\(info.devname): size")
            t.expectEqual(UInt64(dev.align.bytes), info.align, "\(info.devname): align")
            let a = UInt64(dev.align.bytes)
            let len = min(dev.size / a * a, max(a, 8 << 20))
            let m = try t.must("mapping \(info.path)") { try dev.map(offset: 0, length: len) }
            defer { m.unmap() }
            t.expect(m.address % UInt(a) == 0, "\(info.devname): mapping address \(hex(UInt64(m.address))) not aligned to \(dev.align)")
            let r = try t.must("pattern on \(info.path)") { try PatternCheck.run(m, bytes: min(len, 8 << 20)) }
            t.expect(r.bytes > 0, "\(info.devname): pattern covered nothing")
            if dev.align != .pud {
                for off in [UInt64(0), len / 2, len - 4096] {
                    let e = try t.must("reading pagemap") { try Pagemap.entry(at: m.address + UInt(off)) }
                    let want = try t.require(dev.physicalAddress(ofOffset: off), "no physical address for \(hex(off))") >> 12
                    t.expectEqual(e.pfn.map { hex($0) } ?? "not present", hex(want), "\(info.devname) offset \(hex(off)): pagemap pfn")
                }
            }
            let m2 = try t.must("second mapping of \(info.path)") { try dev.map(offset: 0, length: a) }
            defer { m2.unmap() }
            do { try PatternCheck.verify(m2, bytes: min(a, 8 << 20)) } catch {
                t.expect(false, "\(info.devname): a second mapping does not see the pattern: \(error)")
            }
            t.expect(true, "\(info.devname): a second mapping sees the pattern")
        }
    }

    /// MAP_PRIVATE and a length that is not a multiple of the alignment:
    /// the kernel refuses with EINVAL, and the emulated device refuses the
    /// same requests with the same errno; MAP_SYNC is accepted.
    static func refusals(_ t: TestContext) throws {
        for info in try MigratedDiscovery.devices(t) {
            let dev = try t.must("opening \(info.path)") { try DaxCharDevice(path: info.path) }
            let a = UInt64(dev.align.bytes)
            let emu = try t.must("an emulated \(dev.align) device") { try EmulatedDevice(size: a * 2, align: dev.align) }
            // Read-only: a private writable mapping is charged against the
            // commit limit first, and a 1 GiB one can fail there with ENOMEM
            // in a small guest before check_vma runs.
            var cases: [(UInt64, UInt64, MapOptions)] = [(0, a, [.private, .readOnly])]
            if dev.align != .pte { cases.append((0, 4096, .shared)) }
            for (off, len, opts) in cases {
                let kernel = mapErrno(dev, off, len, opts)
                let emulated = mapErrno(emu, off, len, opts)
                t.expectEqual(kernel.map { errnoName($0) } ?? "ok", "EINVAL", "\(info.devname) \(opts) [\(hex(off)), +\(hex(len))): the kernel")
                t.expectEqual(emulated.map { errnoName($0) } ?? "ok", kernel.map { errnoName($0) } ?? "ok",
                              "\(info.devname) \(opts): the emulated device against the kernel")
            }
            t.expect(mapErrno(dev, 0, a, [.shared, .sync]) == nil, "\(info.devname): MAP_SHARED_VALIDATE|MAP_SYNC refused")
        }
    }

    static func mapErrno(_ dev: any DaxDevice, _ off: UInt64, _ len: UInt64, _ opts: MapOptions) -> Int32? {
        do {
            let m = try dev.map(offset: off, length: len, options: opts)
            m.unmap()
            return nil
        } catch {
            return error.errno.rawValue
        }
    }

    /// An fsdax namespace's /dev/pmem block device is refused as device-dax.
    static func fsdaxBlockDevice(_ t: TestContext) throws {
        let blk = try t.require(t.environment.pmemBlockDevices().first, "no pmem block device")
        do {
            _ = try DaxCharDevice(path: blk)
            t.expect(false, "\(blk) accepted as device-dax")
        } catch {
            guard case .notDeviceDax(_, let why) = error else { t.expect(false, "\(blk): wrong error \(error)"); return }
            t.expect(why.contains("block device"), "\(blk): the reason does not say block device: \(why)")
        }
    }

    /// A disabled device is reported as disabled, with the command that
    /// enables it, by the library and in one line by `daxmm check` (exit 1);
    /// enabled again, it opens.
    static func disabled(_ t: TestContext) throws {
        let victim = try MigratedDiscovery.devices(t).last!
        t.atCleanup("enabling \(victim.devname)") {
            guard access(victim.path, F_OK) != 0 else { return }
            let r = try Command.run(["daxctl", "enable-device", victim.devname], timeout: 60)
            if !r.succeeded { throw CommandError(result: r) }
        }
        try t.mustRun(["daxctl", "disable-device", victim.devname])
        do {
            _ = try DaxCharDevice(path: victim.path)
            t.expect(false, "disabled \(victim.devname) was opened")
        } catch {
            if case .disabled(let d, let why) = error {
                t.expectEqual(d, victim.path, "the device named")
                t.expect(why.contains("daxctl enable-device \(victim.devname)"), "the reason does not say how to enable it: \(why)")
            } else {
                t.expect(false, "wrong error for a disabled device: \(error)")
            }
        }
        let r = try t.command([try MigratedDiscovery.daxmm(t), "check", "--device", victim.path])
        t.expectEqual(r.status, 1, "daxmm check on a disabled device: exit status")
        t.expect(r.stderr.contains("\(victim.path): device is disabled"), "daxmm check's message: \(r.stderr)")
        t.expectEqual(r.stderr.split(separator: "\n").count, 1, "lines of daxmm check's message")
        try t.mustRun(["daxctl", "enable-device", victim.devname])
        _ = try t.must("opening \(victim.path) enabled again") { try DaxCharDevice(path: victim.path) }
        t.expect(true, "\(victim.devname) opens once enabled again")
    }

    /// Without permission on the node: one line, exit 1.
    static func permissionDenied(_ t: TestContext) throws {
        let dev = try MigratedDiscovery.devices(t)[0]
        let r = try t.command(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                               try MigratedDiscovery.daxmm(t), "check", "--device", dev.path])
        t.expectEqual(r.status, 1, "daxmm check as nobody: exit status")
        t.expect(r.stderr.contains("\(dev.path): permission denied"), "daxmm check's message: \(r.stderr)")
        t.expectEqual(r.stderr.split(separator: "\n").count, 1, "lines of daxmm check's message")
    }

    /// A device name of an existing region with no node: no such device.
    static func missingNode(_ t: TestContext) throws {
        let dev = try MigratedDiscovery.devices(t)[0]
        let missing = "/dev/dax\(dev.regionID).99"
        do {
            _ = try DaxCharDevice(path: missing)
            t.expect(false, "\(missing) opened")
        } catch {
            t.expectEqual(error, DeviceError.noSuchDevice(path: missing), "the error for \(missing)")
        }
    }
}
