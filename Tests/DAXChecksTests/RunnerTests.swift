import DAXChecks
import Foundation
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// The daxmm executable beside this test bundle (.build/<config>/daxmm).
let daxmmBinary: String = URL(fileURLWithPath: CommandLine.arguments[0])
    .deletingLastPathComponent().appendingPathComponent("daxmm").path

/// `daxmm test ARGS` with the selftest fixtures visible; (status, stdout, log).
func runDaxmmTest(_ args: [String], selftest: Bool = true) throws -> (Int32, String, String) {
    let log = "/tmp/daxmm-runner-test-\(getpid())-\(UInt32.random(in: 0...UInt32.max)).log"
    defer { unlink(log) }
    var env = ["DAXMM_TEST_SELFTEST": selftest ? "1" : "0"]
    env["DAXMM_IN_VM"] = "0"
    let r = try Command.run([daxmmBinary, "test", "--log", log] + args, environment: env, timeout: 120)
    let text = (try? String(contentsOfFile: log, encoding: .utf8)) ?? ""
    return (r.status, r.stdout, text)
}

@Suite("daxmm test: the runner")
struct RunnerTests {
    @Test func everyTestHasAUniqueNameAnAnchorAndASummary() {
        let all = CheckRegistry.all(includeSelftest: true)
        #expect(Set(all.map(\.name)).count == all.count, "duplicate test names")
        for t in all {
            #expect(!t.anchor.isEmpty && !t.summary.isEmpty, "\(t.name) lacks an anchor or a summary")
            #expect(t.name.allSatisfy { $0.isLowercase || $0.isNumber || $0 == "-" }, "\(t.name): lower-case words and dashes")
        }
    }

    @Test func summaryCountsAndExitCodes() {
        var s = RunSummary()
        #expect(s.exitCode == 0)
        s.add(Outcome.skip("x"))
        #expect(s.exitCode == 77, "every test skipped")
        s.add(Outcome.ok)
        s.add(Outcome.expectedFail("old kernel"))
        #expect(s.exitCode == 0)
        #expect(s.plainLine == "2 passed, 0 failed, 1 skipped")
        s.add(Outcome.timeout(seconds: 3))
        #expect(s.exitCode == 1)
        #expect(s.plainLine == "2 passed, 1 failed, 1 skipped")
    }

    @Test func childResultRoundTrips() {
        for o: Outcome in [.ok, .fail("a\nb"), .skip("why"), .expectedFail("6.12"), .timeout(seconds: 2.5)] {
            #expect(ChildResult.parse(ChildResult.render(o)) == o)
        }
        #expect(ChildResult.parse("garbage") == nil)
    }

    /// Every way a test ends, through the real binary: meson lines, the
    /// summary block, the plain last line, exit 1.
    @Test func mesonLinesSummaryAndExitCode() throws {
        let (rc, out, log) = try runDaxmmTest(["--suite", "selftest"])
        #expect(rc == 1)
        let lines = out.split(separator: "\n").map(String.init)
        func line(_ name: String) -> String { lines.first { $0.contains("daxmm:selftest / \(name) ") } ?? "" }
        #expect(line("selftest-pass").contains(" OK "))
        #expect(line("selftest-fail").contains("FAIL") && line("selftest-fail").contains("answer: port 41, kernel 42"))
        #expect(line("selftest-vacuous").contains("FAIL") && line("selftest-vacuous").contains("checked nothing"))
        #expect(line("selftest-skip").contains("SKIP") && line("selftest-skip").contains("not found on PATH"))
        #expect(line("selftest-declared-skip").contains("SKIP"))
        #expect(line("selftest-xfail").contains("EXPECTEDFAIL"))
        #expect(line("selftest-hang").contains("TIMEOUT"))
        #expect(line("selftest-crash").contains("killed by signal 11"))
        #expect(line("selftest-throw").contains("FAIL") && line("selftest-throw").contains("`false` exit 1"))
        #expect(lines.contains { $0.hasPrefix(" 1/9 ") || $0.hasPrefix("1/9 ") })
        #expect(lines.contains("Ok:                 1"))
        #expect(lines.contains("Expected Fail:      1"))
        #expect(lines.contains("Fail:               4"))
        #expect(lines.contains("Skipped:            2"))
        #expect(lines.contains("Timeout:            1"))
        #expect(lines.last == "2 passed, 5 failed, 2 skipped")
        // The log has each test's own output, cleanups included.
        #expect(log.contains("cleanup ran"))
        #expect(log.contains("Program crashed") || log.contains("Signal 11"))
    }

    @Test func tapIsKselftestShaped() throws {
        let (rc, out, _) = try runDaxmmTest(["--tap", "selftest-pass", "selftest-skip", "selftest-xfail", "selftest-fail"])
        #expect(rc == 1)
        let lines = out.split(separator: "\n").map(String.init)
        #expect(lines.prefix(2) == ["TAP version 13", "1..4"])
        #expect(lines.contains("ok 1 daxmm:selftest / selftest-pass"))
        // Tests run in the registry's order, whatever the order of the names.
        #expect(lines.contains("not ok 2 daxmm:selftest / selftest-fail"))
        #expect(lines.contains { $0.hasPrefix("ok 3 daxmm:selftest / selftest-skip # SKIP ") })
        #expect(lines.contains("ok 4 daxmm:selftest / selftest-xfail # XFAIL known kernel difference"))
        #expect(lines.contains("# Totals: pass:1 fail:1 xfail:1 xpass:0 skip:1 error:0"))
        #expect(lines.last == "2 passed, 1 failed, 1 skipped")
    }

    @Test func allSkippedExits77AndAPassExits0() throws {
        let (rc, out, _) = try runDaxmmTest(["selftest-skip", "selftest-declared-skip"])
        #expect(rc == 77)
        #expect(out.hasSuffix("0 passed, 0 failed, 2 skipped\n"))
        let (rc2, _, _) = try runDaxmmTest(["selftest-pass", "selftest-skip"])
        #expect(rc2 == 0)
    }

    /// A timeout kills only that test: the next one still runs.
    @Test func timeoutKillsOnlyThatTest() throws {
        // selftest-hang declares a 1 s limit; the other keeps the default.
        let (rc, out, _) = try runDaxmmTest(["selftest-hang", "selftest-pass"])
        #expect(rc == 1)
        #expect(out.contains("TIMEOUT") && out.contains("killed after 1.00s"))
        #expect(out.hasSuffix("1 passed, 1 failed, 0 skipped\n"))
        // --timeout overrides a test's own limit.
        let (rc2, out2, _) = try runDaxmmTest(["--timeout", "2", "selftest-hang"])
        #expect(rc2 == 1)
        #expect(out2.contains("killed after 2.00s"))
    }

    /// Inside the project's VM an undeclared skip is a failure; a declared
    /// one stays a skip.
    @Test func skipsInsideTheGuestFailUnlessDeclared() throws {
        let log = "/tmp/daxmm-runner-guest-\(getpid()).log"
        defer { unlink(log) }
        let r = try Command.run([daxmmBinary, "test", "--log", log, "selftest-skip", "selftest-declared-skip"],
                                environment: ["DAXMM_TEST_SELFTEST": "1", "DAXMM_IN_VM": "1"], timeout: 60)
        #expect(r.status == 1)
        #expect(r.stdout.contains("skipped inside the project's VM"))
        #expect(r.stdout.hasSuffix("0 passed, 1 failed, 1 skipped\n"))
    }

    @Test func badInputIsOneLineAndNonZero() throws {
        let (rc, _, _) = try runDaxmmTest(["no-such-test"])
        #expect(rc != 0)
        let r = try Command.run([daxmmBinary, "test", "--suite", "nosuch"], timeout: 60)
        #expect(r.status != 0 && r.stderr.contains("unknown suite 'nosuch'"))
        let r2 = try Command.run([daxmmBinary, "test", "--timeout", "-1"], timeout: 60)
        #expect(r2.status != 0 && r2.stderr.contains("--timeout"))
        let r3 = try Command.run([daxmmBinary, "test", "nope"], environment: ["DAXMM_TEST_SELFTEST": "0"], timeout: 60)
        #expect(r3.status == 1 && r3.stderr.contains("no test named 'nope'"))
    }

    @Test func listNamesEveryVisibleTestAndHidesSelftests() throws {
        let r = try Command.run([daxmmBinary, "test", "--list"], environment: ["DAXMM_TEST_SELFTEST": "0"], timeout: 60)
        #expect(r.status == 0)
        #expect(!r.stdout.contains("selftest-"))
        for t in CheckRegistry.all() {
            #expect(r.stdout.contains("\(t.qualifiedName) "), "\(t.name) not listed")
        }
    }
}

/// The state the runner restores between tests, read from a sysfs tree laid
/// out as the nd and dax buses lay it out.
@Suite("daxmm test: the system state")
struct SystemStateTests {
    @Test func modesAlignsAndKmemFromSysfs() throws {
        let root = "/tmp/daxmm-sysfs-\(getpid())"
        defer { try? FileManager.default.removeItem(atPath: root) }
        let nd = "\(root)/bus/nd/devices", dax = "\(root)/bus/dax/devices"
        func put(_ path: String, _ text: String) throws {
            try FileManager.default.createDirectory(atPath: (path as NSString).deletingLastPathComponent,
                                                    withIntermediateDirectories: true)
            try (text + "\n").write(toFile: path, atomically: true, encoding: .utf8)
        }
        try put("\(nd)/namespace0.0/size", "536870912")
        try put("\(nd)/namespace0.0/holder", "dax0.1")
        try put("\(nd)/dax0.1/align", "2097152")
        try put("\(nd)/namespace0.1/size", "268435456")
        try put("\(nd)/namespace0.1/holder", "pfn0.1")
        try put("\(nd)/pfn0.1/align", "0x200000")
        try put("\(nd)/namespace0.2/size", "16777216")
        try put("\(nd)/namespace0.2/holder", "")
        try put("\(nd)/namespace0.3/size", "0")  // an idle seed: not part of the state
        try FileManager.default.createDirectory(atPath: "\(dax)/dax0.0", withIntermediateDirectories: true)
        try FileManager.default.createDirectory(atPath: "\(dax)/dax1.0", withIntermediateDirectories: true)
        try FileManager.default.createSymbolicLink(atPath: "\(dax)/dax0.0/driver", withDestinationPath: "../../../../bus/dax/drivers/kmem")
        try FileManager.default.createSymbolicLink(atPath: "\(dax)/dax1.0/driver", withDestinationPath: "../../../../bus/dax/drivers/device_dax")
        let s = SystemState.capture(sysfs: root)
        #expect(s.namespaces == [
            .init(dev: "namespace0.0", mode: "devdax", size: 536870912, align: 2097152),
            .init(dev: "namespace0.1", mode: "fsdax", size: 268435456, align: 2097152),
            .init(dev: "namespace0.2", mode: "raw", size: 16777216, align: nil),
        ])
        #expect(s.systemRam == ["dax0.0"])
        // A changed mode is a difference the runner puts back.
        try put("\(nd)/namespace0.0/holder", "")
        #expect(SystemState.capture(sysfs: root) != s)
    }
}
