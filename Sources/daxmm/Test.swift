import ArgumentParser
import DAXChecks
import Foundation

#if canImport(Glibc)
import Glibc
#endif

struct Test: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Run the named tests: the port (mm), real device-dax (dax), fs-dax mounts (fsdax), the port against the kernel (diff), the VM harness (vm).",
        discussion: """
            One line per test as meson prints them (OK, EXPECTEDFAIL, SKIP with its reason, FAIL \
            with its message, TIMEOUT), a summary block, and last the line \
            "N passed, N failed, N skipped". Each test runs in its own process with a time \
            limit; the namespaces, kmem devices and mounts are put back as they were after \
            every test. Exit 0 when nothing failed, 1 on any failure, 77 when every test \
            skipped. Tests that need root, a device of some alignment, io_uring, an -o dax \
            file system or a kernel version skip with the reason when it is missing; inside the \
            project's VM (DAXMM_IN_VM=1) such a skip is a failure unless the test declares why \
            that guest cannot support it. KVER=X.Y.Z sets the kernel version the gates compare with.
            """)

    @Option(name: .long, help: ArgumentHelp("Only these suites (mm, dax, fsdax, diff, vm; repeat or separate with commas).", valueName: "suite"))
    var suite: [String] = []

    @Argument(help: ArgumentHelp("Only these tests (names as --list prints them; shell globs allowed).", valueName: "name"))
    var names: [String] = []

    @Flag(name: .long, help: "List the selected tests with what each checks and its anchor, run nothing.")
    var list = false

    @Flag(name: .long, help: "Print TAP version 13 (as kselftest does) instead of meson-style lines.")
    var tap = false

    @Option(name: .long, help: ArgumentHelp("Time limit per test, in seconds (default: each test's own, else 300).", valueName: "seconds"))
    var timeout: Double?

    @Option(name: .long, help: ArgumentHelp("Write every test's full output here (default: daxmm-testlog.txt in the current directory, else /tmp).", valueName: "file"))
    var log: String?

    @Option(name: .long, help: ArgumentHelp("Use only this device-dax device (/dev/daxX.Y or daxX.Y) where a test picks one.", valueName: "device"))
    var device: String?

    @Option(name: .long, help: .hidden)
    var child: String?

    @Option(name: .long, help: .hidden)
    var result: String?

    func validate() throws {
        if let t = timeout, !(t > 0) { throw ValidationError("--timeout must be a positive number of seconds, not \(t)") }
        for s in suites where Suite(rawValue: s) == nil {
            throw ValidationError("unknown suite '\(s)' (mm, dax, fsdax, diff, vm)")
        }
        if child != nil && result == nil { throw ValidationError("--child needs --result") }
    }

    var suites: [String] { suite.flatMap { $0.split(separator: ",").map(String.init) } }

    func run() throws {
        BuildOptimized.value = BuildInfo.optimized
        if let child, let result {
            throw ExitCode(ChildResult.runChild(named: child, resultPath: result, device: device))
        }
        let selected: [CheckTest]
        do {
            selected = try CheckRegistry.select(suites: suites.compactMap(Suite.init(rawValue:)), patterns: names)
        } catch {
            throw failure(error.description)
        }
        if list {
            let width = selected.map(\.qualifiedName.count).max() ?? 0
            for t in selected {
                print("\(t.qualifiedName.padding(toLength: width, withPad: " ", startingAt: 0))  [\(t.anchor)] \(t.summary)")
            }
            return
        }
        guard let exe = ProjectFiles.executablePath() else { throw failure("cannot find this executable (/proc/self/exe)") }
        let logPath = log ?? Test.defaultLogPath()
        if !BuildInfo.optimized && !tap { note("debug build: the tests' times are not meaningful") }
        let runner = Runner(tests: selected, options: .init(
            logPath: logPath, executable: exe, tap: tap, timeout: timeout, device: device,
            color: !tap && isatty(1) != 0))
        let summary = runner.run()
        throw ExitCode(summary.exitCode)
    }

    static func defaultLogPath() -> String {
        let local = "daxmm-testlog.txt"
        if FileManager.default.createFile(atPath: local, contents: nil) {
            return (FileManager.default.currentDirectoryPath as NSString).appendingPathComponent(local)
        }
        return "/tmp/daxmm-testlog.txt"
    }
}
