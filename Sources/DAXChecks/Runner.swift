import DAXBase
import Foundation

#if canImport(Glibc)
import Glibc
#endif

/// Every test `daxmm test` knows, in suite order.
public enum CheckRegistry {
    public static func all(includeSelftest: Bool = false) -> [CheckTest] {
        MMSuite.tests + DaxSuite.tests + DaxMigratedSuite.tests + FSDaxSuite.tests + DiffSuite.tests + VMSuite.tests
            + (includeSelftest ? SelftestSuite.tests : [])
    }

    /// The selftest suite is visible when DAXMM_TEST_SELFTEST=1.
    public static var selftestEnabled: Bool {
        ProcessInfo.processInfo.environment["DAXMM_TEST_SELFTEST"] == "1"
    }

    /// The tests of `suites` (all visible suites when empty) whose names
    /// match one of `patterns` (all when empty; shell globs allowed).
    /// Throws naming a pattern that matched nothing.
    public static func select(suites: [Suite], patterns: [String]) throws(SelectionError) -> [CheckTest] {
        let pool = all(includeSelftest: selftestEnabled || suites.contains(.selftest))
        let inSuites = pool.filter { suites.isEmpty ? ($0.suite != .selftest || selftestEnabled) : suites.contains($0.suite) }
        guard !patterns.isEmpty else { return inSuites }
        for p in patterns where !inSuites.contains(where: { matches($0, p) }) {
            throw SelectionError(pattern: p, suites: suites)
        }
        return inSuites.filter { t in patterns.contains { matches(t, $0) } }
    }

    static func matches(_ t: CheckTest, _ pattern: String) -> Bool {
        fnmatch(pattern, t.name, 0) == 0 || fnmatch(pattern, "\(t.suite)/\(t.name)", 0) == 0
    }
}

public struct SelectionError: Error, CustomStringConvertible {
    public var pattern: String
    public var suites: [Suite]
    public var description: String {
        let within = suites.isEmpty ? "" : " in suite \(suites.map(\.rawValue).joined(separator: ","))"
        return "no test named '\(pattern)'\(within) (daxmm test --list lists them)"
    }
}

/// The totals of a run, as meson's summary block counts them.
public struct RunSummary: Sendable, Equatable {
    public var ok = 0, expectedFail = 0, fail = 0, skipped = 0, timeout = 0

    public init() {}

    public mutating func add(_ o: Outcome) {
        switch o {
        case .ok: ok += 1
        case .expectedFail: expectedFail += 1
        case .fail: fail += 1
        case .skip: skipped += 1
        case .timeout: timeout += 1
        }
    }

    public var passed: Int { ok + expectedFail }
    public var failed: Int { fail + timeout }
    public var total: Int { passed + failed + skipped }

    /// 0 when nothing failed, 1 on any failure, 77 when every test skipped.
    public var exitCode: Int32 {
        if failed > 0 { return 1 }
        if total > 0 && skipped == total { return 77 }
        return 0
    }

    /// The last line of every run.
    public var plainLine: String { "\(passed) passed, \(failed) failed, \(skipped) skipped" }

    public var block: [String] {
        [("Ok:", ok), ("Expected Fail:", expectedFail), ("Fail:", fail), ("Unexpected Pass:", 0),
         ("Skipped:", skipped), ("Timeout:", timeout)].map { k, v in k.padding(toLength: 20, withPad: " ", startingAt: 0) + "\(v)" }
    }
}

/// Runs tests one per child process (`daxmm test --child NAME`): a test that
/// hangs is killed alone (its process group), one that crashes is a FAIL
/// with its signal, and the system state is put back between tests.
public final class Runner {
    public struct Options: Sendable {
        public var tap = false
        /// Overrides every test's own limit when set.
        public var timeout: Double?
        public var defaultTimeout: Double = 300
        public var logPath: String
        public var device: String?
        /// The executable that runs `test --child` (this binary).
        public var executable: String
        public var color: Bool

        public init(logPath: String, executable: String, tap: Bool = false, timeout: Double? = nil,
                    device: String? = nil, color: Bool = false) {
            self.logPath = logPath
            self.executable = executable
            self.tap = tap
            self.timeout = timeout
            self.device = device
            self.color = color
        }
    }

    let options: Options
    let tests: [CheckTest]
    private var log: FileHandle?

    public init(tests: [CheckTest], options: Options) {
        self.tests = tests
        self.options = options
    }

    private func out(_ s: String) {
        var line = s + "\n"
        line.withUTF8 { _ = write(1, $0.baseAddress, $0.count) }
    }

    private func logWrite(_ s: String) {
        log?.write(Data((s + "\n").utf8))
    }

    /// Runs every test and returns the summary (the caller exits with its code).
    public func run() -> RunSummary {
        FileManager.default.createFile(atPath: options.logPath, contents: nil)
        log = FileHandle(forWritingAtPath: options.logPath)
        let env = CheckEnvironment(deviceFilter: options.device)
        logWrite("daxmm test: \(tests.count) tests, kernel \(env.runningRelease)"
                 + (env.variables["KVER"].map { " (KVER=\($0))" } ?? "")
                 + (env.inGuest ? ", inside the project's VM" : "")
                 + (BuildOptimized.value ? "" : ", debug build"))
        let baseline = SystemState.capture()
        logWrite("state: \(baseline)")
        if options.tap {
            out("TAP version 13")
            out("1..\(tests.count)")
        }
        let width = String(tests.count).count
        let nameWidth = tests.map(\.qualifiedName.count).max() ?? 0
        var summary = RunSummary()
        for (i, test) in tests.enumerated() {
            let index = i + 1
            logWrite("")
            logWrite("==================================== \(index)/\(tests.count) ====================================")
            logWrite("test:         \(test.qualifiedName)")
            logWrite("checks:       \(test.summary)")
            logWrite("anchor:       \(test.anchor)")
            logWrite("------------------------------------- output -------------------------------------")
            let t0 = Int64(monotonicNanos())
            var outcome = runChild(test)
            let seconds = Double(Int64(monotonicNanos()) - t0) / 1e9
            // Put back what the test changed; a test that passed but left
            // something behind fails for it.
            let after = SystemState.capture()
            if after != baseline {
                let (done, failed) = after.restore(to: baseline)
                for d in done { logWrite("restored: \(d)") }
                for f in failed { logWrite("RESTORE FAILED: \(f)") }
                if !failed.isEmpty && !outcome.isFailure {
                    outcome = .fail("could not restore the system: \(failed[0])")
                } else if !outcome.isFailure {
                    outcome = .fail("left the system changed (restored: \(done.joined(separator: ", ")))")
                }
            }
            logWrite("-------------------------------------------------------------------------------------")
            logWrite("result:       \(outcome.word)\(outcome.detail.isEmpty ? "" : " " + outcome.detail)")
            logWrite("duration:     \(formatSeconds(seconds))")
            summary.add(outcome)
            if options.tap {
                out(tapLine(index, test, outcome))
            } else {
                let num = String(repeating: " ", count: width - String(index).count) + "\(index)/\(tests.count)"
                let name = test.qualifiedName.padding(toLength: nameWidth, withPad: " ", startingAt: 0)
                let word = colored(outcome).padding(toLength: 12 + (options.color ? 9 : 0), withPad: " ", startingAt: 0)
                let time = formatSeconds(seconds)
                let pad = String(repeating: " ", count: max(0, 8 - time.count))
                out("\(num) \(name)  \(word)\(pad)\(time)   \(outcome.detail)")
            }
        }
        if options.tap {
            out("# Totals: pass:\(summary.ok) fail:\(summary.failed) xfail:\(summary.expectedFail) xpass:0 skip:\(summary.skipped) error:0")
        } else {
            out("")
            for l in summary.block { out(l) }
            out("")
            out("Full log written to \(options.logPath)")
        }
        logWrite("")
        for l in summary.block { logWrite(l) }
        logWrite(summary.plainLine)
        try? log?.close()
        out(summary.plainLine)
        return summary
    }

    private func colored(_ o: Outcome) -> String {
        guard options.color else { return o.word }
        let code: String
        switch o {
        case .ok, .expectedFail: code = "32"
        case .skip: code = "33"
        default: code = "31"
        }
        return "\u{1b}[1;\(code)m\(o.word)\u{1b}[0m"
    }

    private func tapLine(_ n: Int, _ t: CheckTest, _ o: Outcome) -> String {
        let name = t.qualifiedName
        switch o {
        case .ok: return "ok \(n) \(name)"
        case .expectedFail(let m): return "ok \(n) \(name) # XFAIL \(m)"
        case .skip(let m): return "ok \(n) \(name) # SKIP \(m)"
        case .fail(let m): return "# \(m)\nnot ok \(n) \(name)"
        case .timeout: return "# \(o.detail)\nnot ok \(n) \(name) # TIMEOUT \(o.detail)"
        }
    }

    /// Runs `test` in a child process and reads its outcome.
    private func runChild(_ test: CheckTest) -> Outcome {
        let dir = ProcessInfo.processInfo.environment["TMPDIR"] ?? "/tmp"
        let stem = "\(dir)/daxmm-test-\(getpid())-\(test.name)"
        let resultPath = stem + ".result", outputPath = stem + ".out"
        unlink(resultPath)
        defer { unlink(resultPath); unlink(outputPath) }
        var args = ["test", "--child", test.name, "--result", resultPath]
        if test.suite == .selftest { args += ["--suite", "selftest"] }
        if let d = options.device { args += ["--device", d] }
        let limit = options.timeout ?? test.timeout ?? options.defaultTimeout
        let spawned = ChildProcess.spawn(options.executable, args, outputPath: outputPath)
        guard case .success(let pid) = spawned else {
            if case .failure(let e) = spawned { return .fail("cannot start the test process: \(e)") }
            return .fail("cannot start the test process")
        }
        let status = ChildProcess.wait(pid, limit: limit)
        if let output = FileManager.default.contents(atPath: outputPath) { log?.write(output) }
        switch status {
        case .timedOut:
            return .timeout(seconds: limit)
        case .signaled(let sig):
            return .fail("killed by signal \(sig) (\(String(cString: strsignal(sig))))")
        case .exited(let code):
            guard let text = try? String(contentsOfFile: resultPath, encoding: .utf8) else {
                return .fail("the test process exited with status \(code) and no result")
            }
            return ChildResult.parse(text) ?? .fail("unreadable result from the test process: \(text.prefix(80))")
        }
    }
}

/// The child's result file: the outcome word, then its detail.
public enum ChildResult {
    public static func render(_ o: Outcome) -> String {
        switch o {
        case .timeout(let s): "TIMEOUT\n\(s)"
        default: "\(o.word)\n\(o.detail)"
        }
    }

    public static func parse(_ text: String) -> Outcome? {
        guard let nl = text.firstIndex(of: "\n") else { return nil }
        let word = text[..<nl], detail = String(text[text.index(after: nl)...])
        switch word {
        case "OK": return .ok
        case "EXPECTEDFAIL": return .expectedFail(detail)
        case "FAIL": return .fail(detail)
        case "SKIP": return .skip(detail)
        case "TIMEOUT": return .timeout(seconds: Double(detail) ?? 0)
        default: return nil
        }
    }

    /// `daxmm test --child NAME --result FILE`: runs one test here and
    /// writes its outcome.
    public static func runChild(named name: String, resultPath: String, device: String?) -> Int32 {
        guard let test = CheckRegistry.all(includeSelftest: true).first(where: { $0.name == name }) else {
            note("no test named \(name)")
            return 2
        }
        let outcome = test.run(in: CheckEnvironment(deviceFilter: device))
        fflush(nil)
        do {
            try render(outcome).write(toFile: resultPath, atomically: true, encoding: .utf8)
        } catch {
            note("cannot write \(resultPath): \(error)")
            return 1
        }
        return 0
    }

    static func note(_ s: String) {
        var line = "daxmm: " + s + "\n"
        line.withUTF8 { _ = write(2, $0.baseAddress, $0.count) }
    }
}

/// Whether this build was optimised (set by the executable at start).
public enum BuildOptimized {
    nonisolated(unsafe) public static var value = true
}

/// posix_spawn of a test process in its own process group, output to a
/// file, and a wait with a limit that kills the whole group.
enum ChildProcess {
    enum Status { case exited(Int32), signaled(Int32), timedOut }

    static func spawn(_ path: String, _ args: [String], outputPath: String) -> Result<pid_t, Errno> {
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
        posix_spawn_file_actions_addopen(&actions, 1, outputPath, O_WRONLY | O_CREAT | O_TRUNC, 0o644)
        posix_spawn_file_actions_adddup2(&actions, 1, 2)
        var attr = posix_spawnattr_t()
        posix_spawnattr_init(&attr)
        defer { posix_spawnattr_destroy(&attr) }
        posix_spawnattr_setflags(&attr, Int16(POSIX_SPAWN_SETPGROUP | POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF))
        posix_spawnattr_setpgroup(&attr, 0)
        var none = sigset_t(), all = sigset_t()
        sigemptyset(&none)
        sigfillset(&all)
        posix_spawnattr_setsigmask(&attr, &none)
        posix_spawnattr_setsigdefault(&attr, &all)
        var argv: [UnsafeMutablePointer<CChar>?] = ([path] + args).map { strdup($0) }
        argv.append(nil)
        defer { for p in argv { free(p) } }
        var pid: pid_t = 0
        let rc = posix_spawn(&pid, path, &actions, &attr, argv, environ)
        return rc == 0 ? .success(pid) : .failure(Errno(rc))
    }

    static func wait(_ pid: pid_t, limit: Double) -> Status {
        let deadline = Int64(monotonicNanos()) + Int64(limit * 1e9)
        var status: Int32 = 0
        while true {
            let r = waitpid(pid, &status, WNOHANG)
            if r == pid { break }
            if r < 0 && errno != EINTR { return .exited(-1) }
            if Int64(monotonicNanos()) > deadline {
                kill(-pid, SIGKILL)
                kill(pid, SIGKILL)
                while waitpid(pid, &status, 0) < 0 && errno == EINTR {}
                return .timedOut
            }
            usleep(5000)
        }
        // The test's process group may have left children behind (a fork, a
        // helper program): they go with it.
        kill(-pid, SIGKILL)
        if status & 0x7f == 0 { return .exited((status >> 8) & 0xff) }
        return .signaled(status & 0x7f)
    }
}

public struct Errno: Error, CustomStringConvertible {
    public var code: Int32
    init(_ code: Int32) { self.code = code }
    public var description: String { "\(errnoName(code)) (\(String(cString: strerror(code))))" }
}
