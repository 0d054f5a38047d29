import DAXBase
import DAXDevice
import Foundation

#if canImport(Glibc)
import Glibc
#endif

/// What the tests run against: the kernel (uname -r or KVER), whether this
/// is the project's VM, the device the user named, and the discovery
/// helpers the gates and bodies share. Discovery is done fresh on each call:
/// tests reconfigure namespaces.
public struct CheckEnvironment: Sendable {
    /// The kernel the gates compare against: KVER when set, else uname -r.
    public var kernel: KernelVersion
    /// uname -r, whatever KVER says.
    public var runningRelease: String
    /// DAXMM_IN_VM=1: the project's guest, built to meet every gate.
    public var inGuest: Bool
    /// `--device`: tests that pick a device-dax device consider only this one.
    public var deviceFilter: String?
    /// The environment variables the run started with.
    public var variables: [String: String]

    public init(variables: [String: String] = ProcessInfo.processInfo.environment, deviceFilter: String? = nil) {
        self.variables = variables
        let release = KernelVersion.unameRelease()
        runningRelease = release
        kernel = KernelVersion.current(environment: variables) ?? KernelVersion(release: "0.0.0")!
        inGuest = variables["DAXMM_IN_VM"] == "1"
        self.deviceFilter = deviceFilter.map { $0.hasPrefix("/dev/") ? String($0.dropFirst(5)) : $0 }
    }

    /// The outcome of a skip here: inside the guest a skip is a failure
    /// unless `declaredBy` says why this guest cannot support the test.
    func skipOutcome(_ reason: String, declaredBy: String?) -> Outcome {
        if inGuest && declaredBy == nil {
            return .fail("skipped inside the project's VM, which must support it: \(reason)")
        }
        if inGuest, let declaredBy, declaredBy != reason { return .skip("\(reason) (\(declaredBy))") }
        return .skip(reason)
    }

    // MARK: - Devices

    /// Enabled device-dax devices (mode devdax, size > 0), the --device
    /// filter applied.
    public func devdaxDevices() -> [DaxDeviceInfo] {
        let all = (try? DaxDiscovery.devices()) ?? []
        return all.filter { d in
            d.enabled && d.size > 0 && d.mode == "devdax" && (deviceFilter == nil || d.devname == deviceFilter)
        }
    }

    /// The first enabled device-dax device with `align`.
    public func devdax(align: DaxAlign) -> DaxDeviceInfo? {
        devdaxDevices().first { $0.align == UInt64(align.bytes) }
    }

    /// /dev/pmemX block devices of fsdax namespaces, by name.
    public func pmemBlockDevices() -> [String] {
        let names = (try? FileManager.default.contentsOfDirectory(atPath: "/sys/block")) ?? []
        return names.filter { $0.hasPrefix("pmem") }.sorted().map { "/dev/" + $0 }
    }

    /// A program's path on PATH, or nil.
    public func which(_ program: String) -> String? {
        let path = variables["PATH"] ?? "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
        for dir in path.split(separator: ":") {
            let p = "\(dir)/\(program)"
            if access(p, X_OK) == 0 { return p }
        }
        for dir in ["/usr/sbin", "/sbin"] where access("\(dir)/\(program)", X_OK) == 0 { return "\(dir)/\(program)" }
        return nil
    }

    /// The file systems the kernel knows (/proc/filesystems).
    public func kernelFilesystems() -> Set<String> {
        guard let text = try? String(contentsOfFile: "/proc/filesystems", encoding: .utf8) else { return [] }
        return Set(text.split(separator: "\n").compactMap { $0.split(separator: "\t").last.map(String.init) })
    }

    /// The kernel has file system `fs`: registered already (/proc/filesystems),
    /// or a module that mount would load (a file system built as a module,
    /// as ext4 and xfs are in Debian's kernels, is listed only once loaded).
    public func kernelHasFilesystem(_ fs: String) -> Bool {
        if kernelFilesystems().contains(fs) { return true }
        let dir = "/lib/modules/\(runningRelease)"
        if let dep = try? String(contentsOfFile: "\(dir)/modules.dep", encoding: .utf8),
           dep.contains("/fs/\(fs)/\(fs).ko") { return true }
        if let builtin = try? String(contentsOfFile: "\(dir)/modules.builtin", encoding: .utf8),
           builtin.contains("/fs/\(fs)/\(fs).ko") { return true }
        return false
    }

    /// Why `gate` is not met here, or nil when it is.
    public func unmet(_ gate: Gate) -> String? {
        switch gate {
        case .root:
            return geteuid() == 0 ? nil : "not running as root"
        case .devdax:
            return devdaxDevices().isEmpty ? "no enabled device-dax device\(filterNote)" : nil
        case .devdaxAlign(let a):
            return devdax(align: a) == nil ? "no enabled device-dax device with align \(a)\(filterNote)" : nil
        case .pmemBlockDevice:
            return pmemBlockDevices().isEmpty ? "no fsdax namespace (/sys/block/pmem*)" : nil
        case .ioUring:
            return IoUringBuffers.available().map { "io_uring unavailable: \($0)" }
        case .daxFilesystem(let fs):
            if !kernelHasFilesystem(fs) { return "the kernel has no \(fs) (not in /proc/filesystems, no module)" }
            if which("mkfs.\(fs)") == nil { return "mkfs.\(fs) not found" }
            return pmemBlockDevices().isEmpty ? "no fsdax namespace to make \(fs) on" : nil
        case .minKernel(let a, let b):
            return kernel.atLeast(a, b) ? nil : "kernel \(kernel) (\(kernelSource))"
        case .zoneDeviceRefcountSeries:
            return kernel.hasZoneDeviceRefcountSeries ? nil : "kernel \(kernel) (\(kernelSource)) predates 6.15"
        case .program(let p):
            return which(p) == nil ? "\(p) not found on PATH" : nil
        case .inGuest:
            return inGuest ? nil : "not inside the project's VM (daxmm vm run sets DAXMM_IN_VM=1)"
        case .vmHost:
            if inGuest { return "inside the project's VM" }
            if ProjectFiles.vmrun() == nil { return "no scripts/vm/vmrun (run from a source tree or an installed daxmm)" }
            return which("qemu-system-x86_64") == nil ? "qemu-system-x86_64 not found (scripts/setup.sh installs it)" : nil
        }
    }

    private var filterNote: String { deviceFilter.map { " (--device \($0))" } ?? "" }
    private var kernelSource: String { variables["KVER"].map { _ in "KVER" } ?? "uname -r" }
}

/// Where the project's own files are: vmrun and the scripts beside it.
public enum ProjectFiles {
    /// vmrun, looked for in this order: $DAXMM_HOME/scripts/vm (a source tree
    /// named explicitly); PREFIX/share/daxmm/vm beside an installed executable
    /// (PREFIX/bin/daxmm, as `make install` lays it out); scripts/vm in a
    /// directory above the executable (a source tree's .build/<conf>/daxmm);
    /// scripts/vm in the current directory.
    public static func vmrun() -> String? {
        var candidates: [String] = []
        if let home = getenv("DAXMM_HOME") { candidates.append(String(cString: home) + "/scripts/vm/vmrun") }
        if let exe = executablePath() {
            var dir = exe
            var ancestors: [String] = []
            for _ in 0..<5 {
                guard let slash = dir.lastIndex(of: "/") else { break }
                dir = String(dir[..<slash])
                ancestors.append(dir)
            }
            if ancestors.count > 1 { candidates.append(ancestors[1] + "/share/daxmm/vm/vmrun") }
            candidates += ancestors.map { $0 + "/scripts/vm/vmrun" }
        }
        if let cwd = getcwd(nil, 0) { candidates.append(String(cString: cwd) + "/scripts/vm/vmrun"); free(cwd) }
        return candidates.first { access($0, X_OK) == 0 }
    }

    /// /proc/self/exe.
    public static func executablePath() -> String? {
        var buf = [CChar](repeating: 0, count: 4096)
        let n = readlink("/proc/self/exe", &buf, buf.count - 1)
        guard n > 0 else { return nil }
        return String(decoding: buf[0..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }
}
