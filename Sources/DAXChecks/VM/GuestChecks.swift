// The vm suite's guest side: what vmrun promises the command inside the
// guest (the requested namespaces and soft-reserved memory, the work
// directory shared at the same path, tracefs and debugfs, the nvdimm/dax
// modules, module autoloading) and guest-setup.sh's own behaviour there,
// including refusing an impossible spec before it changes anything.

import DAXBase
import DAXDevice
import Foundation

#if canImport(Glibc)
import Glibc
#endif

enum GuestChecks {
    static let tests: [CheckTest] = [
        CheckTest("vm-guest-namespaces", suite: .vm, gates: [.inGuest, .root], anchor: "new",
                  "the namespaces the boot declares (DAXMM_VM_EXPECT_ALIGNS, DAXMM_VM_EXPECT_FSDAX) exist with their modes and alignments") { t in
            let env = t.environment.variables
            let aligns = (env["DAXMM_VM_EXPECT_ALIGNS"] ?? "").split(separator: ",").map(String.init)
            let fsdax = env["DAXMM_VM_EXPECT_FSDAX"] == "1"
            if aligns.isEmpty && !fsdax {
                try t.unsupported("this boot declares no namespaces (DAXMM_VM_EXPECT_ALIGNS, DAXMM_VM_EXPECT_FSDAX unset)")
            }
            let ns = try Guest.namespaces(t)
            let devices = t.environment.devdaxDevices()
            t.log("namespaces: " + ns.map { "\($0.dev) \($0.mode) align=\($0.align.map(formatSize) ?? "-")" }.joined(separator: ", "))
            for a in aligns {
                let bytes = try t.require(try? parseSize(a), "DAXMM_VM_EXPECT_ALIGNS: bad size '\(a)'")
                t.expect(ns.contains { $0.mode == "devdax" && $0.align == bytes && $0.size > 0 },
                         "no devdax namespace with align \(a) in `ndctl list -N`")
                let dev = devices.first { $0.align == bytes }
                t.expect(dev != nil, "libdaxctl finds no enabled device-dax device with align \(a)")
                if let dev {
                    t.expect(Guest.isCharacterDevice(dev.path), "\(dev.path) is not a character device")
                    t.expectEqual(dev.mappings.reduce(0) { $0 + $1.size }, dev.size, "\(dev.devname): bytes in its mappings")
                }
            }
            if fsdax {
                let pm = ns.filter { $0.mode == "fsdax" }
                t.expect(!pm.isEmpty, "no fsdax namespace in `ndctl list -N`")
                for n in pm {
                    let blk = try t.require(n.blockdev, "\(n.dev): fsdax namespace without a blockdev")
                    t.expect(Guest.isBlockDevice("/dev/" + blk), "/dev/\(blk) is not a block device")
                    t.expect(Guest.daxSupported(blk), "/dev/\(blk) does not support DAX (/sys/block/\(blk)/queue/dax)")
                }
            }
        },
        CheckTest("vm-guest-hmem", suite: .vm, gates: [.inGuest, .root], anchor: "new",
                  "vmrun --hmem: a dynamic dax region of DAXMM_VM_HMEM bytes over soft-reserved memory, idle (all available, seed of size 0), not handed to kmem") { t in
            guard let want = t.environment.variables["DAXMM_VM_HMEM"].flatMap({ UInt64($0) }) else {
                try t.unsupported("this boot has no soft-reserved memory (vmrun without --hmem)")
            }
            let regions = try t.must("libdaxctl discovery") { try DaxDiscovery.scan() }
            let dynamic = regions.filter { Guest.isDynamic($0) }
            t.log("regions: " + regions.map { "\($0.id) \($0.path)" }.joined(separator: ", "))
            let r = try t.require(dynamic.first { $0.path.contains("hmem") }, "no dynamic dax region on hmem")
            t.expectEqual(r.size, want, "region size")
            t.expectEqual(r.availableSize, want, "region available_size (idle)")
            t.expectEqual(r.align, 2 << 20, "region align (dax_hmem's PMD_SIZE)")
            let seed = r.devices.filter { $0.size == 0 }
            t.expectEqual(seed.count, 1, "devices of size 0 (the seed)")
            t.expect(r.devices.allSatisfy { $0.size == 0 }, "devices with memory in an idle region: \(r.devices.map(\.devname))")
            t.expect(r.devices.allSatisfy { $0.mode != "system-ram" }, "a device of the region was handed to kmem")
        },
        CheckTest("vm-guest-workdir", suite: .vm, gates: [.inGuest], anchor: "new",
                  "the work directory is shared read-write at the host's path (DAXMM_VM_WORKDIR): files and shared writable mmaps reach it") { t in
            let dir = try t.require(t.environment.variables["DAXMM_VM_WORKDIR"], "DAXMM_VM_WORKDIR is not set")
            let cwd = FileManager.default.currentDirectoryPath
            t.expectEqual(VMRunProbe.realPath(cwd), dir, "the command's directory")
            let mount = Guest.mounts().filter { $0.point == dir }
            t.expect(mount.contains { $0.type == "9p" }, "no 9p mount at \(dir): \(mount)")
            let path = dir + "/.daxmm-vm-guest-workdir-\(getpid())"
            t.atCleanup("unlink \(path)") { unlink(path) }
            let fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0o644)
            try t.require(fd >= 0, "cannot create \(path): \(String(cString: strerror(errno)))")
            defer { close(fd) }
            let text = Array("written in the guest\n".utf8)
            t.expectEqual(text.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }, text.count, "bytes written")
            // cache=mmap: a shared writable mapping of a share file works
            // and reaches the file.
            try t.require(ftruncate(fd, 4096) == 0, "ftruncate: \(String(cString: strerror(errno)))")
            let p = mmap(nil, 4096, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0)
            try t.require(p != MAP_FAILED, "shared writable mmap of a file in the share: \(String(cString: strerror(errno)))")
            let mark = Array("mmap".utf8)
            mark.withUnsafeBytes { (p! + 100).copyMemory(from: $0.baseAddress!, byteCount: $0.count) }
            t.expectEqual(msync(p, 4096, MS_SYNC), 0, "msync")
            munmap(p, 4096)
            var back = [UInt8](repeating: 0, count: 104)
            t.expectEqual(back.withUnsafeMutableBytes { pread(fd, $0.baseAddress, 104, 0) }, 104, "bytes read back")
            t.expectEqual(Array(back[0..<text.count]), text, "the written text read back")
            t.expectEqual(Array(back[100..<104]), mark, "the bytes stored through the mapping, read back")
        },
        CheckTest("vm-guest-tracefs", suite: .vm, gates: [.inGuest], anchor: "ndctl: dax.sh (dax-ext4/dax-xfs)",
                  "tracefs and debugfs are mounted where ndctl's tests and trace-cmd look, with the fs_dax events") { t in
            let m = Guest.mounts()
            t.expect(m.contains { $0.point == "/sys/kernel/tracing" && $0.type == "tracefs" }, "no tracefs on /sys/kernel/tracing")
            t.expect(m.contains { $0.point == "/sys/kernel/debug" && $0.type == "debugfs" }, "no debugfs on /sys/kernel/debug")
            let events = Guest.readFile("/sys/kernel/tracing/available_events") ?? ""
            t.expect(events.contains("fs_dax:dax_pmd_fault_done"), "fs_dax:dax_pmd_fault_done missing from available_events")
        },
        CheckTest("vm-guest-modules", suite: .vm, gates: [.inGuest], anchor: "new",
                  "the nvdimm/dax modules are loaded (dax_hmem with --hmem) and module autoloading works") { t in
            var want = ["libnvdimm", "nfit", "nd_pmem", "dax_pmem", "device_dax"]
            if t.environment.variables["DAXMM_VM_HMEM"] != nil { want.append("dax_hmem") }
            for m in want {
                t.expect(access("/sys/module/\(m)", F_OK) == 0, "module \(m) is not loaded")
            }
            // The kernel's request_module() helper is set (init turns it off
            // while dax_hmem loads).
            let helper = ((try? String(contentsOfFile: "/proc/sys/kernel/modprobe", encoding: .utf8)) ?? "")
                .trimmingCharacters(in: .whitespacesAndNewlines)
            t.expect(!helper.isEmpty, "module autoloading is off (/proc/sys/kernel/modprobe is empty)")
            t.expect(access(helper, X_OK) == 0 || helper.hasPrefix("/sbin/daxmm-"), "the modprobe helper \(helper) is not executable")
        },
        CheckTest("vm-guest-setup-list", suite: .vm, gates: [.inGuest, .root], anchor: "new",
                  "guest-setup.sh --list names every namespace with its mode (and the hmem region), and changes nothing") { t in
            let script = try t.require(Guest.setupScript(), "no guest-setup.sh")
            let before = try Guest.namespaces(t)
            let r = try t.command(["bash", script, "--list"], timeout: 120)
            t.expectEqual(r.status, 0, "guest-setup.sh --list exit status")
            let lines = r.stderr.split(separator: "\n").map(String.init)
            for n in before where n.size > 0 {
                t.expect(lines.contains { $0.hasPrefix("guest-setup: \(n.dev) \(n.mode) ") }, "\(n.dev) (\(n.mode)) not listed")
            }
            if t.environment.variables["DAXMM_VM_HMEM"] != nil {
                t.expect(lines.contains { $0.range(of: #"^guest-setup: hmem\.[0-9]+: dax region"#, options: .regularExpression) != nil },
                         "the hmem region is not listed")
            }
            t.expect(before.isEmpty == false || lines.contains("guest-setup: no namespaces"), "nothing listed")
            t.expectEqual(try Guest.namespaces(t), before, "namespaces after --list")
        },
        CheckTest("vm-guest-setup-impossible", suite: .vm, gates: [.inGuest, .root], anchor: "new",
                  "guest-setup.sh given a spec it cannot make (no room, an alignment the kernel does not offer) fails non-zero with the reason, before touching the existing namespaces") { t in
            let script = try t.require(Guest.setupScript(), "no guest-setup.sh")
            let before = try Guest.namespaces(t)
            try t.require(!before.isEmpty, "no namespaces to keep")
            // Each list is checked as a whole before anything changes, so a
            // good spec before the bad one must not have been made either.
            let cases: [(String, [String], String)] = [
                ("no room", ["devdax:2M:64G"], "no region has room"),
                ("a good spec, then no room", ["devdax:2M:16M", "devdax:2M:64G"], "no region has room"),
                ("3M alignment", ["devdax:3M:512M"], "offers no devdax alignment 3M"),
                ("no such region", ["devdax:2M:16M@region99"], "there is no region99"),
            ]
            for (what, specs, reason) in cases {
                let r = try t.command(["bash", script] + specs, timeout: 120)
                t.expect(r.status != 0, "\(what): guest-setup.sh exited 0")
                t.expect(r.stderr.contains(reason), "\(what): the message does not say '\(reason)': \(r.stderr)")
                t.expect(!r.stderr.contains("initialising the namespace labels"), "\(what): it went on to initialise the labels")
                t.expectEqual(try Guest.namespaces(t), before, "\(what): namespaces after the refusal")
            }
        },
    ]
}

/// What the guest tests read.
enum Guest {
    struct Namespace: Equatable, CustomStringConvertible {
        var dev: String, mode: String, size: UInt64, align: UInt64?, blockdev: String?, chardev: String?
        var description: String { "\(dev) \(mode) \(size)\(align.map { " align=\($0)" } ?? "")" }
    }

    /// `ndctl list -N`, by name.
    static func namespaces(_ t: TestContext) throws -> [Namespace] {
        let r = try Command.run(["ndctl", "list", "-N"], timeout: 60)
        try t.require(r.succeeded, "ndctl list -N: \(r)")
        return SystemState.jsonObjects(r.stdout).compactMap { o -> Namespace? in
            guard let dev = o["dev"] as? String else { return nil }
            let dax = (o["daxregion"] as? [String: Any])?["devices"] as? [[String: Any]]
            return Namespace(dev: dev, mode: o["mode"] as? String ?? "?", size: (o["size"] as? NSNumber)?.uint64Value ?? 0,
                             align: (o["align"] as? NSNumber)?.uint64Value, blockdev: o["blockdev"] as? String,
                             chardev: o["chardev"] as? String ?? dax?.first?["chardev"] as? String)
        }.sorted { $0.dev < $1.dev }
    }

    struct Mount: CustomStringConvertible {
        var point: String, type: String
        var description: String { "\(point) (\(type))" }
    }

    /// A whole file read to its end (tracefs and procfs files report size 0).
    static func readFile(_ path: String) -> String? {
        let fd = open(path, O_RDONLY)
        guard fd >= 0 else { return nil }
        defer { close(fd) }
        var data = [UInt8]()
        var buf = [UInt8](repeating: 0, count: 65536)
        while true {
            let n = buf.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
            if n < 0 && errno == EINTR { continue }
            if n < 0 { return nil }
            if n == 0 { break }
            data += buf[0..<n]
        }
        return String(decoding: data, as: UTF8.self)
    }

    static func mounts() -> [Mount] {
        let text = readFile("/proc/self/mounts") ?? ""
        return text.split(separator: "\n").compactMap { line in
            let f = line.split(separator: " ")
            guard f.count > 2 else { return nil }
            return Mount(point: unescapeMount(String(f[1])), type: String(f[2]))
        }
    }

    /// /proc/self/mounts writes a space as \040 (and tab, newline, backslash
    /// alike).
    static func unescapeMount(_ s: String) -> String {
        s.replacingOccurrences(of: "\\040", with: " ").replacingOccurrences(of: "\\011", with: "\t")
            .replacingOccurrences(of: "\\012", with: "\n").replacingOccurrences(of: "\\134", with: "\\")
    }

    static func isCharacterDevice(_ path: String) -> Bool {
        var st = stat()
        return stat(path, &st) == 0 && (st.st_mode & S_IFMT) == S_IFCHR
    }

    static func isBlockDevice(_ path: String) -> Bool {
        var st = stat()
        return stat(path, &st) == 0 && (st.st_mode & S_IFMT) == S_IFBLK
    }

    /// /sys/block/X/queue/dax reads 1 for a DAX-capable block device.
    static func daxSupported(_ blk: String) -> Bool {
        ((try? String(contentsOfFile: "/sys/block/\(blk)/queue/dax", encoding: .utf8)) ?? "")
            .trimmingCharacters(in: .whitespacesAndNewlines) == "1"
    }

    /// A region whose devices are made at run time (`daxctl create-device`):
    /// its dax_region has a `create` attribute, which static (pmem) regions
    /// hide.
    static func isDynamic(_ r: DaxRegionInfo) -> Bool {
        access(r.path + "/dax_region/create", F_OK) == 0
    }

    /// The guest-setup.sh the guest ran (vmrun's copy in /run/daxmm), else
    /// the one beside vmrun.
    static func setupScript() -> String? {
        let candidates = ["/run/daxmm/guest-setup.sh"]
            + (ProjectFiles.vmrun().map { [($0 as NSString).deletingLastPathComponent + "/guest-setup.sh"] } ?? [])
        return candidates.first { access($0, R_OK) == 0 }
    }
}
