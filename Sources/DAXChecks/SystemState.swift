import Foundation

#if canImport(Glibc)
import Glibc
#endif

/// The state tests may change and must leave as they found it: the
/// namespaces (mode, alignment), device-dax devices handed to kmem, and
/// mounts under `SystemState.mountRoot`. The runner snapshots it before the
/// first test and, after each test, puts back whatever differs (so order
/// does not matter and a killed test leaves nothing behind); a test that
/// passed but left a difference is failed for it.
public struct SystemState: Equatable, Sendable, CustomStringConvertible {
    public struct Namespace: Equatable, Sendable {
        public var dev: String
        public var mode: String
        public var size: UInt64
        public var align: UInt64?

        public init(dev: String, mode: String, size: UInt64, align: UInt64?) {
            self.dev = dev
            self.mode = mode
            self.size = size
            self.align = align
        }
    }

    /// Where tests mount file systems: everything under it is unmounted
    /// between tests.
    public static let mountRoot = "/run/daxmm-test"

    public var namespaces: [Namespace]
    /// Device-dax devices in system-ram mode (kmem).
    public var systemRam: [String]
    public var mounts: [String]

    public var description: String {
        let ns = namespaces.map { "\($0.dev) \($0.mode)\($0.align.map { " align=\($0)" } ?? "") size=\($0.size)" }
        return (ns + systemRam.map { "\($0) system-ram" } + mounts.map { "mounted \($0)" }).joined(separator: "; ")
    }

    /// The current state, read from sysfs (a file read per attribute: the
    /// runner takes it after every test, and ndctl/daxctl cost seconds per
    /// call under emulation). A namespace's mode is its claim: a dax device
    /// is devdax, a pfn device fsdax, a btt sector, none raw; its alignment
    /// is the claiming device's.
    public static func capture(sysfs: String = "/sys") -> SystemState {
        var namespaces: [Namespace] = []
        let nd = "\(sysfs)/bus/nd/devices"
        let names = (try? FileManager.default.contentsOfDirectory(atPath: nd)) ?? []
        for dev in names where dev.hasPrefix("namespace") {
            guard let size = readNumber("\(nd)/\(dev)/size"), size > 0 else { continue }
            let holder = readLine("\(nd)/\(dev)/holder") ?? ""
            let mode: String
            if holder.hasPrefix("dax") { mode = "devdax" }
            else if holder.hasPrefix("pfn") { mode = "fsdax" }
            else if holder.hasPrefix("btt") { mode = "sector" }
            else { mode = "raw" }
            let align = holder.isEmpty ? nil : readNumber("\(nd)/\(holder)/align")
            namespaces.append(Namespace(dev: dev, mode: mode, size: size, align: align))
        }
        var ram: [String] = []
        let dax = "\(sysfs)/bus/dax/devices"
        for dev in (try? FileManager.default.contentsOfDirectory(atPath: dax)) ?? [] {
            if let driver = try? FileManager.default.destinationOfSymbolicLink(atPath: "\(dax)/\(dev)/driver"),
               driver.hasSuffix("/kmem") { ram.append(dev) }
        }
        return SystemState(namespaces: namespaces.sorted { $0.dev < $1.dev }, systemRam: ram.sorted(),
                           mounts: mountsUnderRoot())
    }

    static func readLine(_ path: String) -> String? {
        guard let t = try? String(contentsOfFile: path, encoding: .utf8) else { return nil }
        return t.trimmingCharacters(in: .whitespacesAndNewlines)
    }

    static func readNumber(_ path: String) -> UInt64? {
        guard let t = readLine(path) else { return nil }
        return t.hasPrefix("0x") ? UInt64(t.dropFirst(2), radix: 16) : UInt64(t)
    }

    /// Mount points under `mountRoot`, deepest first.
    public static func mountsUnderRoot() -> [String] {
        guard let text = try? String(contentsOfFile: "/proc/self/mounts", encoding: .utf8) else { return [] }
        return text.split(separator: "\n").compactMap { line -> String? in
            let f = line.split(separator: " ")
            guard f.count > 1 else { return nil }
            let mp = String(f[1])
            return mp.hasPrefix(mountRoot + "/") || mp == mountRoot ? mp : nil
        }.sorted { $0.count > $1.count }
    }

    /// Puts back `baseline` where this state differs. Returns what it did,
    /// one line per action, and the actions that failed.
    public func restore(to baseline: SystemState) -> (done: [String], failed: [String]) {
        var done: [String] = [], failed: [String] = []
        func act(_ what: String, _ argv: [String]) {
            let r = try? Command.run(argv, timeout: 120)
            if let r, r.succeeded { done.append(what) } else {
                failed.append("\(what): \(r?.description ?? "could not run \(argv[0])")")
            }
        }
        for m in mounts {
            act("unmounted \(m)", ["umount", m])
        }
        for dev in systemRam where !baseline.systemRam.contains(dev) {
            act("\(dev) back to devdax", ["daxctl", "reconfigure-device", "-f", "-m", "devdax", dev])
        }
        let now = Dictionary(namespaces.map { ($0.dev, $0) }, uniquingKeysWith: { a, _ in a })
        for ns in baseline.namespaces {
            guard let cur = now[ns.dev] else {
                failed.append("\(ns.dev) (\(ns.mode)) is gone and cannot be re-created under its name")
                continue
            }
            if cur.mode != ns.mode || (ns.align != nil && cur.align != ns.align) || cur.size != ns.size {
                var argv = ["ndctl", "create-namespace", "-f", "-e", ns.dev, "-m", ns.mode]
                if let a = ns.align, ns.mode == "devdax" || ns.mode == "fsdax" { argv += ["-a", String(a)] }
                act("\(ns.dev) back to \(ns.mode)", argv)
            }
        }
        let known = Set(baseline.namespaces.map(\.dev))
        for ns in namespaces where !known.contains(ns.dev) && ns.size > 0 {
            act("destroyed \(ns.dev)", ["ndctl", "destroy-namespace", "-f", ns.dev])
        }
        return (done, failed)
    }

    /// The objects of ndctl/daxctl JSON: an object or an array of them.
    static func jsonObjects(_ text: String) -> [[String: Any]] {
        let t = text.trimmingCharacters(in: .whitespacesAndNewlines)
        guard !t.isEmpty, let v = try? JSONSerialization.jsonObject(with: Data(t.utf8)) else { return [] }
        if let a = v as? [[String: Any]] { return a }
        if let o = v as? [String: Any] { return [o] }
        return []
    }
}

extension TestContext {
    /// A fresh directory under `SystemState.mountRoot` for a mount; the
    /// runner unmounts whatever is left there after the test.
    public func mountPoint(_ tag: String) throws -> String {
        let dir = "\(SystemState.mountRoot)/\(name)-\(tag)"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        return dir
    }
}
