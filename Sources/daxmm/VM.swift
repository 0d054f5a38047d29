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
            throw failure("cannot find vmrun: not in PREFIX/share/daxmm/vm beside this executable nor in a source tree's scripts/vm (set DAXMM_HOME to the daxmm source tree)")
        }
        let args = arguments.map { $0 == "--help-vm" ? "--help" : $0 }
        var argv: [UnsafeMutablePointer<CChar>?] = ([script] + args).map { strdup($0) }
        argv.append(nil)
        execv(script, &argv)
        throw failure("cannot run \(script): \(String(cString: strerror(errno)))")
    }

    /// vmrun, looked for in this order: $DAXMM_HOME/scripts/vm (a source tree
    /// named explicitly); PREFIX/share/daxmm/vm beside an installed executable
    /// (PREFIX/bin/daxmm, as `make install` lays it out); scripts/vm in a
    /// directory above the executable (a source tree's .build/<conf>/daxmm);
    /// scripts/vm in the current directory.
    static func locate() -> String? {
        var candidates: [String] = []
        if let home = getenv("DAXMM_HOME") { candidates.append(String(cString: home) + "/scripts/vm/vmrun") }
        var buf = [CChar](repeating: 0, count: 4096)
        let n = readlink("/proc/self/exe", &buf, buf.count - 1)
        if n > 0 {
            var dir = String(decoding: buf[0..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self)
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
}
