import DAXBase
import DAXDevice
import DAXRuntime

#if canImport(Glibc)
import Glibc
#endif

/// The suites of `daxmm test`, as ndctl's meson suites: `mm` is the port
/// alone, `dax` real device-dax, `fsdax` real fs-dax mounts, `diff` the port
/// and the kernel on the same scenario, `vm` the project's QEMU harness.
/// `selftest` holds the runner's own fixtures and is listed only when
/// DAXMM_TEST_SELFTEST=1.
public enum Suite: String, CaseIterable, Sendable, CustomStringConvertible {
    case mm, dax, fsdax, diff, vm, selftest
    public var description: String { rawValue }
    /// The suites a user sees.
    public static var visible: [Suite] { [.mm, .dax, .fsdax, .diff, .vm] }
}

/// How one test ended. A skip names its reason; a fail its message (for a
/// differential test, both sides).
public enum Outcome: Equatable, Sendable, CustomStringConvertible {
    case ok
    /// The test ran and found the behaviour it declares as expected to
    /// differ (a pre-series kernel's answer, stated by the test).
    case expectedFail(String)
    case fail(String)
    case skip(String)
    case timeout(seconds: Double)

    public var word: String {
        switch self {
        case .ok: "OK"
        case .expectedFail: "EXPECTEDFAIL"
        case .fail: "FAIL"
        case .skip: "SKIP"
        case .timeout: "TIMEOUT"
        }
    }

    public var detail: String {
        switch self {
        case .ok: ""
        case .expectedFail(let m), .fail(let m), .skip(let m): m
        case .timeout(let s): "killed after \(formatSeconds(s))"
        }
    }

    public var isFailure: Bool {
        switch self {
        case .fail, .timeout: true
        default: false
        }
    }

    public var description: String { detail.isEmpty ? word : "\(word): \(detail)" }
}

/// A precondition a test needs, as ndctl's gates (check_min_kver,
/// check_prereq, the e820/ACPI.NFIT bus, root). One that is not met skips
/// the test with one line; inside the project's VM, where the guest is built
/// to meet them, an unmet gate is a failure unless `guestCannot` says why
/// that guest cannot meet it.
public enum Gate: Sendable, Hashable, CustomStringConvertible {
    /// Effective uid 0.
    case root
    /// An enabled device-dax device (any alignment).
    case devdax
    /// An enabled device-dax device with this alignment.
    case devdaxAlign(DaxAlign)
    /// A namespace in fsdax mode with a /dev/pmemX block device.
    case pmemBlockDevice
    /// io_uring usable by this process (not disabled by sysctl).
    case ioUring
    /// A file system that mounts with `-o dax` on a pmem block device:
    /// "ext4" or "xfs" (its mkfs present, the kernel knows the type).
    case daxFilesystem(String)
    /// The kernel (uname -r, or KVER) is at least major.minor.
    case minKernel(Int, Int)
    /// The kernel carries the ZONE_DEVICE refcount series (6.15+).
    case zoneDeviceRefcountSeries
    /// A program on PATH.
    case program(String)
    /// Running inside the project's VM (DAXMM_IN_VM=1).
    case inGuest
    /// Running on a host that boots the project's VM (qemu, KVM or TCG, a
    /// source tree with scripts/vm): not inside the guest.
    case vmHost

    public var description: String {
        switch self {
        case .root: "root"
        case .devdax: "a device-dax device"
        case .devdaxAlign(let a): "a device-dax device with align \(a)"
        case .pmemBlockDevice: "an fsdax namespace (/dev/pmemX)"
        case .ioUring: "io_uring"
        case .daxFilesystem(let fs): "\(fs) mountable with -o dax"
        case .minKernel(let a, let b): "kernel \(a).\(b) or later"
        case .zoneDeviceRefcountSeries: "a kernel with the ZONE_DEVICE refcount series (6.15+)"
        case .program(let p): p
        case .inGuest: "the project's VM"
        case .vmHost: "a host that boots the project's VM"
        }
    }

    /// Why the project's guest legitimately cannot meet this gate, or nil
    /// when a guest that fails it is broken.
    public var guestCannot: String? {
        switch self {
        case .vmHost: "the guest cannot boot a nested VM; this runs on the host"
        case .zoneDeviceRefcountSeries: "this guest kernel predates the ZONE_DEVICE refcount series"
        case .minKernel(let a, let b): "this guest kernel predates \(a).\(b)"
        default: nil
        }
    }
}

/// One named test: its suite, gates, what it checks, where the check comes
/// from (an ndctl test, a kernel selftest, or "new") and its body. The body
/// records checks through the context; the outcome is the context's verdict
/// (`TestContext.outcome`), never a bare bool, and a body that checked
/// nothing fails.
public struct CheckTest: Sendable {
    public typealias Body = @Sendable (TestContext) throws -> Void

    public let name: String
    public let suite: Suite
    public let gates: [Gate]
    /// One line: what the test establishes.
    public let summary: String
    /// "ndctl: device-dax", "selftest: gup_longterm", "new", ...
    public let anchor: String
    /// Seconds before the runner kills it (nil: the runner's default).
    public let timeout: Double?
    public let body: Body

    public init(_ name: String, suite: Suite, gates: [Gate] = [], anchor: String, timeout: Double? = nil,
                _ summary: String, body: @escaping Body) {
        self.name = name
        self.suite = suite
        self.gates = gates
        self.summary = summary
        self.anchor = anchor
        self.timeout = timeout
        self.body = body
    }

    /// "daxmm:dax / devdax-map-private"
    public var qualifiedName: String { "daxmm:\(suite) / \(name)" }

    /// Runs the test in this process: gates, body, cleanups, then the
    /// invariants of every binding the body tracked.
    public func run(in environment: CheckEnvironment) -> Outcome {
        for gate in gates {
            if let why = environment.unmet(gate) {
                return environment.skipOutcome("needs \(gate): \(why)", declaredBy: gate.guestCannot)
            }
        }
        let ctx = TestContext(name: name, environment: environment)
        return ctx.execute(body)
    }
}

/// Thrown by `TestContext.skip` and `unsupported`.
struct SkipRequest: Error {
    let reason: String
    let declared: Bool
}

/// Thrown by `TestContext.require` when a check the rest depends on fails.
struct CheckAbort: Error, CustomStringConvertible {
    let message: String
    var description: String { message }
}

/// What a test body works through: checks (each counted), differential
/// comparisons that print both sides, skips, cleanups that run even when the
/// body fails or throws, and the port bindings whose invariants are checked
/// after the body.
public final class TestContext: @unchecked Sendable {
    public let name: String
    public let environment: CheckEnvironment
    public private(set) var checks = 0
    public private(set) var failures: [String] = []
    private var cleanups: [(String, () throws -> Void)] = []
    private var bindings: [Binding] = []
    private var expected: String?

    init(name: String, environment: CheckEnvironment) {
        self.name = name
        self.environment = environment
    }

    /// A line of the test's output (into the log, not the summary).
    public func log(_ message: String) {
        var line = message + "\n"
        fflush(nil)
        line.withUTF8 { _ = write(1, $0.baseAddress, $0.count) }
    }

    /// Records one check. A false one is a failure with `message`; the body
    /// goes on. Returns `ok`.
    @discardableResult
    public func expect(_ ok: Bool, _ message: @autoclosure () -> String) -> Bool {
        checks += 1
        if !ok {
            let m = message()
            failures.append(m)
            log("FAILED CHECK: \(m)")
        }
        return ok
    }

    /// `got == want`, else a failure naming both.
    @discardableResult
    public func expectEqual<T: Equatable>(_ got: T, _ want: T, _ what: String) -> Bool {
        expect(got == want, "\(what): got \(got), expected \(want)")
    }

    /// The differential rule: the port's and the kernel's observable for
    /// the same scenario must agree; a disagreement prints both sides.
    @discardableResult
    public func compare<T: Equatable>(_ what: String, port: T, kernel: T) -> Bool {
        let ok = expect(port == kernel, "\(what): port \(port), kernel \(kernel)")
        if ok { log("agree: \(what) = \(port)") }
        return ok
    }

    /// A check the rest of the body depends on: a false one ends the body
    /// (cleanups still run) with `message`.
    public func require(_ ok: Bool, _ message: @autoclosure () -> String) throws {
        checks += 1
        if !ok { throw CheckAbort(message: message()) }
    }

    /// Unwraps `value`, or ends the body with `message`.
    public func require<T>(_ value: T?, _ message: @autoclosure () -> String) throws -> T {
        checks += 1
        guard let value else { throw CheckAbort(message: message()) }
        return value
    }

    /// Runs `body` (a setup step, not counted as a check); an error it
    /// throws is a failure naming `what`, and the body ends there.
    public func must<T>(_ what: String, _ body: () throws -> T) throws -> T {
        do { return try body() } catch { throw CheckAbort(message: "\(what): \(error)") }
    }

    /// Skips the test. Inside the project's VM this is a failure: the guest
    /// is built to provide what tests need. Use `unsupported` for what a
    /// guest legitimately lacks.
    public func skip(_ reason: String) throws -> Never {
        throw SkipRequest(reason: reason, declared: false)
    }

    /// Skips the test because this system (the guest too) cannot support
    /// it, e.g. a kernel built without CONFIG_MEMORY_FAILURE. A declared
    /// reason: not a failure inside the VM.
    public func unsupported(_ reason: String) throws -> Never {
        throw SkipRequest(reason: reason, declared: true)
    }

    /// The test observed the behaviour `reason` states as expected to
    /// differ on this kernel (e.g. the pre-series 6.12 answer): the outcome
    /// is EXPECTEDFAIL instead of OK, provided every check passed.
    public func expectFailure(_ reason: String) {
        expected = reason
    }

    /// Registers a cleanup; cleanups run last-in first-out after the body,
    /// whether it passed, failed or threw. A cleanup that throws is a
    /// failure of the test.
    public func atCleanup(_ what: String, _ body: @escaping () throws -> Void) {
        cleanups.append((what, body))
    }

    /// A port binding whose invariants are checked after the body (and
    /// whose windows are closed by the cleanups the body registered).
    public func track(_ binding: Binding) {
        bindings.append(binding)
    }

    func execute(_ body: CheckTest.Body) -> Outcome {
        var outcome: Outcome?
        do {
            try body(self)
        } catch let s as SkipRequest {
            outcome = environment.skipOutcome(s.reason, declaredBy: s.declared ? s.reason : nil)
        } catch let a as CheckAbort {
            failures.append(a.message)
            log("FAILED: \(a.message)")
        } catch {
            failures.append("threw \(error)")
            log("FAILED: threw \(error)")
        }
        for binding in bindings {
            let broken = binding.checkInvariants()
            checks += 1
            for b in broken { failures.append("port invariant: \(b)"); log("PORT INVARIANT: \(b)") }
        }
        bindings.removeAll()
        while let (what, cleanup) = cleanups.popLast() {
            do { try cleanup() } catch {
                failures.append("cleanup \(what): \(error)")
                log("CLEANUP FAILED: \(what): \(error)")
            }
        }
        if !failures.isEmpty {
            let more = failures.count > 1 ? " (+\(failures.count - 1) more, see the log)" : ""
            return .fail(failures[0] + more)
        }
        if let outcome { return outcome }
        if checks == 0 { return .fail("the test checked nothing") }
        if let expected { return .expectedFail(expected) }
        return .ok
    }
}

func formatSeconds(_ s: Double) -> String {
    let centis = Int((s * 100).rounded())
    let frac = centis % 100
    return "\(centis / 100).\(frac < 10 ? "0" : "")\(frac)s"
}
