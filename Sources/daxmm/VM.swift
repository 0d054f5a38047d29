import ArgumentParser

#if canImport(Glibc)
import Glibc
#endif

struct VM: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Boot a QEMU guest with emulated persistent memory and real device-dax.",
        subcommands: [VMRun.self])
}

struct VMRun: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "run",
        abstract: "Run a command as root in a guest with device-dax namespaces (scripts/vm/vmrun).",
        discussion: """
            Every argument is passed to scripts/vm/vmrun; see `daxmm vm run --help-vm` for \
            its options (--kernel sid|6.12, --pmem, --namespace MODE:ALIGN:SIZE, --timeout, ...). \
            Example: daxmm vm run --namespace devdax:2M:512M -- daxctl list -D
            """)

    @Argument(parsing: .allUnrecognized, help: "vmrun options, then -- and the command.")
    var arguments: [String] = []

    func run() throws {
        guard let script = VMRun.locate() else {
            throw failure("cannot find scripts/vm/vmrun (set DAXMM_HOME to the daxmm source tree)")
        }
        let args = arguments.map { $0 == "--help-vm" ? "--help" : $0 }
        var argv: [UnsafeMutablePointer<CChar>?] = ([script] + args).map { strdup($0) }
        argv.append(nil)
        execv(script, &argv)
        throw failure("cannot run \(script): \(String(cString: strerror(errno)))")
    }

    /// scripts/vm/vmrun in $DAXMM_HOME, above the executable (.build/<conf>/daxmm),
    /// or in the current directory.
    static func locate() -> String? {
        var roots: [String] = []
        if let home = getenv("DAXMM_HOME") { roots.append(String(cString: home)) }
        var buf = [CChar](repeating: 0, count: 4096)
        let n = readlink("/proc/self/exe", &buf, buf.count - 1)
        if n > 0 {
            var dir = String(decoding: buf[0..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self)
            for _ in 0..<5 {
                guard let slash = dir.lastIndex(of: "/") else { break }
                dir = String(dir[..<slash])
                roots.append(dir)
            }
        }
        if let cwd = getcwd(nil, 0) { roots.append(String(cString: cwd)); free(cwd) }
        for root in roots {
            let candidate = root + "/scripts/vm/vmrun"
            if access(candidate, X_OK) == 0 { return candidate }
        }
        return nil
    }
}
