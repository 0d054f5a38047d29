#if canImport(Glibc)
import Glibc
#endif

/// The runner's own fixtures (DAXMM_TEST_SELFTEST=1): one test per way a
/// test can end, so the runner's lines, summary, TAP, exit codes, timeout
/// and crash handling are tested through the real binary.
enum SelftestSuite {
    static let tests: [CheckTest] = [
        CheckTest("selftest-pass", suite: .selftest, anchor: "new", "passes one check") { t in
            t.expect(1 + 1 == 2, "arithmetic")
        },
        CheckTest("selftest-fail", suite: .selftest, anchor: "new", "fails one check and runs its cleanup") { t in
            t.atCleanup("marker") { t.log("cleanup ran") }
            t.compare("answer", port: 41, kernel: 42)
        },
        CheckTest("selftest-vacuous", suite: .selftest, anchor: "new", "checks nothing, which is a failure") { t in
            t.log("did nothing")
        },
        CheckTest("selftest-skip", suite: .selftest, gates: [.program("daxmm-no-such-program")], anchor: "new",
                  "skips on a gate") { t in
            t.expect(true, "unreachable")
        },
        CheckTest("selftest-declared-skip", suite: .selftest, anchor: "new", "skips for a declared reason") { t in
            try t.unsupported("this system cannot do it")
        },
        CheckTest("selftest-xfail", suite: .selftest, anchor: "new", "the expected difference") { t in
            t.expect(true, "ran")
            t.expectFailure("known kernel difference")
        },
        CheckTest("selftest-hang", suite: .selftest, anchor: "new", timeout: 1, "hangs until killed") { t in
            t.expect(true, "started")
            while true { sleep(1) }
        },
        CheckTest("selftest-crash", suite: .selftest, anchor: "new", "dies of SIGSEGV") { t in
            t.expect(true, "started")
            // A real fault (raise() would return once the backtracer's
            // handler has run).
            let p = UnsafeMutablePointer<Int>(bitPattern: 0x10)!
            p.pointee = 1
        },
        CheckTest("selftest-throw", suite: .selftest, anchor: "new", "a setup step fails") { t in
            try t.mustRun(["false"])
            t.expect(true, "unreachable")
        },
    ]
}
