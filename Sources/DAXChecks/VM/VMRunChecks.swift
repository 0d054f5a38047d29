// The vm suite's host side: scripts/vm/vmrun as a user meets it. Bad input
// is refused before anything boots (one line, exit 125, and the emulator is
// never started: these runs use a stand-in for QEMU that records being
// started); a namespace the guest cannot make stops the guest before the
// command; a good run returns the command's status, output and files.

import Foundation

#if canImport(Glibc)
import Glibc
#endif

enum VMRunChecks {
    /// vmrun's exit status for its own or the guest setup's failures.
    static let setupFailed: Int32 = 125

    static let tests: [CheckTest] = [
        CheckTest("vm-vmrun-bad-align", suite: .vm, gates: [.vmHost], anchor: "new", timeout: 120,
                  "an --namespace ALIGN ndctl would refuse (not 4K/2M/1G for devdax/fsdax, any for raw) is refused before booting") { t in
            let vm = try VMRunProbe(t)
            try vm.refused("3M devdax", ["--namespace", "devdax:3M:512M"], mentions: ["devdax:3M:512M", "4K, 2M or 1G"])
            try vm.refused("64K fsdax", ["--namespace", "fsdax:64K:512M"], mentions: ["fsdax:64K:512M", "4K, 2M or 1G"])
            try vm.refused("align on raw", ["--namespace", "raw:2M:512M"], mentions: ["raw:2M:512M", "no ALIGN"])
            try vm.refused("align on sector", ["--namespace", "sector:4K:512M"], mentions: ["sector:4K:512M", "no ALIGN"])
        },
        CheckTest("vm-vmrun-bad-size", suite: .vm, gates: [.vmHost], anchor: "new", timeout: 120,
                  "a SIZE ndctl would refuse (not a multiple of 16M or of ALIGN, 1G-aligned under 2G, not a size) is refused before booting") { t in
            let vm = try VMRunProbe(t)
            try vm.refused("100M", ["--namespace", "devdax:2M:100M"], mentions: ["devdax:2M:100M", "multiple of 16M"])
            try vm.refused("zero", ["--namespace", "fsdax::0"], mentions: ["fsdax::0", "multiple of 16M"])
            try vm.refused("1G align in 1G", ["--namespace", "devdax:1G:1G"], mentions: ["devdax:1G:1G", ">= 2G"])
            try vm.refused("not a size", ["--namespace", "devdax:2M:512Q"], mentions: ["devdax:2M:512Q", "MODE:ALIGN:SIZE"])
            try vm.refused("--mem", ["--mem", "lots"], mentions: ["--mem", "bad size 'lots'"])
            try vm.refused("--hmem", ["--hmem", "3M"], mentions: ["--hmem", "multiple of 2M"])
        },
        CheckTest("vm-vmrun-bad-mode", suite: .vm, gates: [.vmHost], anchor: "new", timeout: 120,
                  "an --namespace MODE other than devdax, fsdax, raw or sector is refused before booting") { t in
            let vm = try VMRunProbe(t)
            for spec in ["pmem:2M:512M", "DEVDAX:2M:512M", "devdax"] {
                try vm.refused(spec, ["--namespace", spec], mentions: [spec, "devdax, fsdax, raw or sector"])
            }
        },
        CheckTest("vm-vmrun-unknown-option", suite: .vm, gates: [.vmHost], anchor: "new", timeout: 120,
                  "an unknown option, an option without its value or a bad value is refused before booting") { t in
            let vm = try VMRunProbe(t)
            try vm.refused("misspelt", ["--namespaces", "devdax:2M:512M"], mentions: ["unknown option --namespaces"])
            try vm.refused("no value", ["--kernel"], mentions: ["--kernel needs a value"], command: [])
            try vm.refused("bad value", ["--tcg-thread", "many"], mentions: ["--tcg-thread", "'many'"])
            try vm.refused("bad kernel", ["--kernel", "5.4"], mentions: ["'5.4' is not sid, 6.12 or a directory"])
        },
        CheckTest("vm-vmrun-missing-command", suite: .vm, gates: [.vmHost], anchor: "new", timeout: 120,
                  "no command (nothing, or nothing after --, or a command without --) is refused before booting") { t in
            let vm = try VMRunProbe(t)
            try vm.refused("nothing", ["--namespace", "devdax:2M:512M"], mentions: ["no command"], command: [])
            try vm.refused("nothing after --", ["--namespace", "devdax:2M:512M", "--"], mentions: ["no command"], command: [])
            try vm.refused("no --", ["--namespace", "devdax:2M:512M", "true"], mentions: ["'true'", "after --"], command: [])
        },
        CheckTest("vm-vmrun-namespace-unmakeable", suite: .vm, gates: [.vmHost], anchor: "new", timeout: 400,
                  "a namespace the guest cannot make (bigger than the DIMM's room) stops the guest before the command: exit 125, the command never runs") { t in
            let vm = try VMRunProbe(t)
            let dir = try vm.workdir()
            let marker = dir + "/command-ran"
            // 256M fits the 512M DIMM; 1G more does not. (Aimed at the DIMM,
            // so that nothing but the room in its region can refuse it.)
            let r = try vm.boot(["--pmem", "nfit:512M", "--namespace", "devdax:2M:256M", "--namespace", "devdax:2M:1G@nmem0",
                                 "--workdir", dir],
                                command: ["sh", "-c", "touch command-ran; echo command-ran"])
            t.expectEqual(r.status, setupFailed, "vmrun's exit status")
            t.expect(access(marker, F_OK) != 0, "the command ran: \(marker) exists")
            t.expect(!r.stdout.contains("command-ran"), "the command ran: its output came back")
            t.expect(r.stderr.contains("devdax:2M:1G@nmem0") && r.stderr.contains("256M free"),
                     "the guest names the spec it could not make and why")
            t.expect(r.stderr.contains("the command was not run"), "vmrun says the command was not run")
        },
        CheckTest("vm-vmrun-runs-command", suite: .vm, gates: [.vmHost], anchor: "new", timeout: 400,
                  "a good run: the namespace exists, the command runs as root in the work directory shared at the same path, its stdout, stderr and exit status come back") { t in
            let vm = try VMRunProbe(t)
            let dir = try vm.workdir()
            let marker = dir + "/command-ran"
            let script = """
                printf '%s\\n' "$(pwd -P)" "$DAXMM_IN_VM" "$DAXMM_VM_WORKDIR" "$(id -u)" >command-ran
                ls /dev/dax*; echo to-stderr >&2; exit 7
                """
            let r = try vm.boot(["--pmem", "nfit:512M", "--namespace", "devdax:2M:256M", "--workdir", dir],
                                command: ["sh", "-c", script])
            t.expectEqual(r.status, 7, "vmrun's exit status (the command's)")
            let lines = ((try? String(contentsOfFile: marker, encoding: .utf8)) ?? "").split(separator: "\n").map(String.init)
            t.expectEqual(lines, [dir, "1", dir, "0"],
                          "what the command wrote into the share (its directory, DAXMM_IN_VM, DAXMM_VM_WORKDIR, uid)")
            t.expect(r.stdout.contains("/dev/dax"), "the namespace's /dev/dax device exists in the guest")
            t.expect(!r.stdout.contains("to-stderr"), "stderr kept apart from stdout")
            t.expect(r.stderr.contains("to-stderr"), "the command's stderr came back")
        },
    ]
}

/// Runs vmrun with a stand-in emulator (for the refusals) or for real (the
/// boots), and owns their temporary directories.
struct VMRunProbe {
    let t: TestContext
    let vmrun: String
    /// A directory with the stand-in emulator, which records its arguments
    /// in `started` and fails.
    let fakeDir: String
    var started: String { fakeDir + "/started" }

    init(_ t: TestContext) throws {
        self.t = t
        vmrun = try t.require(ProjectFiles.vmrun(), "no scripts/vm/vmrun")
        fakeDir = try VMRunProbe.makeTempDir("daxmm-vmrun")
        let dir = fakeDir
        t.atCleanup("remove \(dir)") { try FileManager.default.removeItem(atPath: dir) }
        let qemu = fakeDir + "/qemu-system-x86_64"
        try "#!/bin/sh\necho \"$@\" >\"$(dirname \"$0\")/started\"\nexit 1\n".write(toFile: qemu, atomically: true, encoding: .utf8)
        chmod(qemu, 0o755)
    }

    static func makeTempDir(_ stem: String) throws -> String {
        let base = ProcessInfo.processInfo.environment["TMPDIR"] ?? "/var/tmp"
        var template = Array("\(base)/\(stem).XXXXXX".utf8CString)
        guard let p = mkdtemp(&template) else {
            throw CheckAbort(message: "mkdtemp in \(base): \(String(cString: strerror(errno)))")
        }
        // The physical path: vmrun shares a directory under that name.
        return realPath(String(cString: p))
    }

    static func realPath(_ p: String) -> String {
        guard let r = realpath(p, nil) else { return p }
        defer { free(r) }
        return String(cString: r)
    }

    /// A fresh work directory for a boot, removed after the test.
    func workdir() throws -> String {
        let dir = try VMRunProbe.makeTempDir("daxmm-vmrun-work")
        t.atCleanup("remove \(dir)") { try FileManager.default.removeItem(atPath: dir) }
        return dir
    }

    /// `vmrun ARGS -- COMMAND` with the stand-in emulator must exit 125
    /// with exactly one line on stderr naming every string of `mentions`,
    /// print nothing on stdout, never start the emulator, and answer fast.
    func refused(_ what: String, _ args: [String], mentions: [String], command: [String] = ["--", "true"]) throws {
        unlink(started)
        let argv = [vmrun] + args + command
        t.log("$ DAXMM_QEMU=\(fakeDir)/qemu-system-x86_64 \(argv.joined(separator: " "))")
        let t0 = Date()
        let r = try Command.run(argv, environment: ["DAXMM_QEMU": fakeDir + "/qemu-system-x86_64"], timeout: 60)
        let seconds = Date().timeIntervalSince(t0)
        if !r.stderr.isEmpty { t.log(r.stderr.hasSuffix("\n") ? String(r.stderr.dropLast()) : r.stderr) }
        t.log("(exit \(r.status), \(String(format: "%.2f", seconds)) s)")
        t.expectEqual(r.status, VMRunChecks.setupFailed, "\(what): vmrun's exit status")
        let lines = r.stderr.split(separator: "\n")
        t.expect(lines.count == 1 && lines[0].hasPrefix("vmrun: "),
                 "\(what): expected one 'vmrun: ...' line on stderr, got \(lines.count): \(r.stderr)")
        for m in mentions {
            t.expect(r.stderr.contains(m), "\(what): the message does not name '\(m)': \(r.stderr)")
        }
        t.expect(r.stdout.isEmpty, "\(what): output on stdout: \(r.stdout)")
        t.expect(access(started, F_OK) != 0, "\(what): the emulator was started")
        t.expect(seconds < 10, "\(what): took \(seconds) s to refuse (it should not have prepared a guest)")
    }

    /// A real boot: `vmrun ARGS --timeout 300 -- COMMAND`.
    func boot(_ args: [String], command: [String]) throws -> CommandResult {
        let argv = [vmrun] + args + ["--timeout", "300", "--"] + command
        t.log("$ \(argv.joined(separator: " "))")
        let t0 = Date()
        let r = try Command.run(argv, timeout: 360)
        if !r.stdout.isEmpty { t.log("stdout: " + r.stdout) }
        if !r.stderr.isEmpty { t.log("stderr: " + r.stderr) }
        t.log("(exit \(r.status), \(String(format: "%.1f", Date().timeIntervalSince(t0))) s)")
        return r
    }
}
