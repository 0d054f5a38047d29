import ArgumentParser
import DAXChecks

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

    /// vmrun: DAXMM_HOME's tree, PREFIX/share/daxmm/vm beside an installed
    /// executable, a source tree above the executable, or the current
    /// directory's (ProjectFiles.vmrun).
    static func locate() -> String? { ProjectFiles.vmrun() }
}
