// A file system made on the fsdax namespace's block device (/dev/pmemX) and
// mounted with -o dax under the test's own mount point, as ndctl's dax.sh
// and mmap.sh do: mkfs, mount -o dax, fallocate, run, umount. The umount is a
// cleanup, so it happens whatever the body did.

import DAXBase
import Foundation

#if canImport(Glibc)
import Glibc
#endif

/// A file system type the fs-dax checks make.
enum DaxFilesystem: String, CaseIterable, Sendable {
    case ext4, xfs

    /// mkfs for the PMD and gup checks (dax.sh): ext4 with 4 KiB blocks
    /// (a smaller block size refuses -o dax, and mke2fs picks 1 KiB for a
    /// file system under 512 MiB); xfs with a 2 MiB stripe unit so that
    /// large allocations start 2 MiB aligned, two allocation groups and no
    /// reflink (dax.sh: -d su=2m,sw=1,agcount=2 -m reflink=0).
    func mkfsDaxSh(_ device: String) -> [String] {
        switch self {
        case .ext4: ["mkfs.ext4", "-q", "-F", "-b", "4096", device]
        case .xfs: ["mkfs.xfs", "-q", "-f", "-d", "su=2m,sw=1,agcount=2", "-m", "reflink=0", device]
        }
    }

    /// mkfs for the mmap variants (mmap.sh: mkfs.ext4; mkfs.xfs -f -m
    /// reflink=0). ext4 keeps -b 4096 for the reason above.
    func mkfsMmapSh(_ device: String) -> [String] {
        switch self {
        case .ext4: ["mkfs.ext4", "-q", "-F", "-b", "4096", device]
        case .xfs: ["mkfs.xfs", "-q", "-f", "-m", "reflink=0", device]
        }
    }
}

/// The mounted file system; unmounted by the cleanup `make` registers.
final class DaxMount {
    let fs: DaxFilesystem
    let device: String
    let path: String
    private(set) var options: String
    private(set) var mounted = false
    private unowned let t: TestContext

    private init(t: TestContext, fs: DaxFilesystem, device: String, path: String, options: String) {
        self.t = t
        self.fs = fs
        self.device = device
        self.path = path
        self.options = options
    }

    /// The fsdax namespace's block device: the first /dev/pmemX, not mounted
    /// anywhere.
    static func pmemDevice(_ t: TestContext) throws -> String {
        let dev = try t.require(t.environment.pmemBlockDevices().first, "no /dev/pmemX (fsdax namespace)")
        let mounts = (try? String(contentsOfFile: "/proc/self/mounts", encoding: .utf8)) ?? ""
        let busy = mounts.split(separator: "\n").contains { $0.split(separator: " ").first.map(String.init) == dev }
        try t.require(!busy, "\(dev) is mounted already: it is not free for the test")
        if let ns = try? FileManager.default.destinationOfSymbolicLink(atPath: "/sys/block/\(dev.dropFirst(5))/device") {
            t.log("\(dev): \(ns.split(separator: "/").last.map(String.init) ?? ns)")
        }
        return dev
    }

    /// Loads the file system's module when the kernel does not list it yet
    /// (the guest's ext4 and xfs are modules); a kernel without it is a
    /// declared skip naming the probe.
    static func ensureKernelKnows(_ t: TestContext, _ fs: DaxFilesystem) throws {
        if t.environment.kernelFilesystems().contains(fs.rawValue) { return }
        try t.command(["modprobe", fs.rawValue])
        if !t.environment.kernelFilesystems().contains(fs.rawValue) {
            try t.unsupported("the kernel has no \(fs.rawValue): not in /proc/filesystems, and modprobe \(fs.rawValue) did not add it")
        }
    }

    /// mkfs (`mkfs`, the argv for the device) and mount with `options`
    /// under the test's mount point tagged `tag`; the unmount is registered
    /// as a cleanup. Checks that the mount took the dax option.
    static func make(_ t: TestContext, fs: DaxFilesystem, mkfs: (String) -> [String], tag: String? = nil,
                     options: String = "dax") throws -> DaxMount {
        try ensureKernelKnows(t, fs)
        guard t.environment.which("mkfs.\(fs.rawValue)") != nil else {
            throw CheckAbort(message: "mkfs.\(fs.rawValue) not found (scripts/setup.sh installs \(fs == .xfs ? "xfsprogs" : "e2fsprogs"))")
        }
        let dev = try pmemDevice(t)
        let mp = try t.mountPoint(tag ?? fs.rawValue)
        let m = DaxMount(t: t, fs: fs, device: dev, path: mp, options: options)
        let t0 = monotonicNanos()
        try t.mustRun(mkfs(dev))
        t.atCleanup("umount \(mp)") { [m] in try m.unmount() }
        try m.mount(options: options)
        t.log(String(format: "mkfs.%@ and mount -o %@: %.2fs", fs.rawValue, options, Double(monotonicNanos() - t0) / 1e9))
        return m
    }

    /// mount -t FS -o OPTIONS DEVICE PATH.
    func mount(options: String) throws {
        precondition(!mounted)
        try t.mustRun(["mount", "-t", fs.rawValue, "-o", options, device, path])
        mounted = true
        self.options = options
        let line = Self.mountLine(path) ?? "(not in /proc/self/mounts)"
        t.log("mounted: \(line)")
        // A mount asked for dax must show it (a kernel or device without
        // DAX support would mount without it and every check after would
        // run on the page cache).
        if options.split(separator: ",").contains(where: { $0 == "dax" || $0 == "dax=always" }) {
            let opts = line.split(separator: " ").dropFirst(3).first.map(String.init) ?? ""
            try t.require(opts.split(separator: ",").contains { $0 == "dax" || $0 == "dax=always" },
                          "\(path) mounted without dax: \(line)")
        }
    }

    /// umount; nothing when not mounted.
    func unmount() throws {
        guard mounted else { return }
        let r = try Command.run(["umount", path], timeout: 120)
        if !r.succeeded { throw CommandError(result: r) }
        mounted = false
    }

    /// Unmounts and mounts again with other options (the same file system).
    func remount(options: String) throws {
        try unmount()
        try mount(options: options)
    }

    /// A path under the mount.
    func file(_ name: String) -> String { "\(path)/\(name)" }

    /// fallocate -l BYTES (the program ndctl's scripts call).
    func fallocate(_ name: String, bytes: UInt64) throws -> String {
        let p = file(name)
        try t.mustRun(["fallocate", "-l", String(bytes), p])
        return p
    }

    /// The /proc/self/mounts line of `path`.
    static func mountLine(_ path: String) -> String? {
        let text = (try? String(contentsOfFile: "/proc/self/mounts", encoding: .utf8)) ?? ""
        return text.split(separator: "\n").map(String.init).last { $0.split(separator: " ").dropFirst().first.map(String.init) == path }
    }
}
