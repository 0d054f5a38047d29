// ndctl device-dax-fio.sh: fio's dev-dax engine (memcpy to and from a
// MAP_SHARED mapping of the device) writes with crc32c verify headers, then
// a second job reads and verifies; no job may die of a signal.

import DAXBase
import DAXDevice
import Foundation

#if canImport(Glibc)
import Glibc
#endif

enum FioCheck {
    /// The I/O each phase does: ndctl runs 5 s per phase; 32 MiB takes well
    /// under a second even under TCG.
    static let ioBytes: UInt64 = 32 << 20

    /// What one fio job reported.
    struct Job: Equatable {
        var name: String
        var error: Int
        var readBytes: UInt64
        var writeBytes: UInt64
    }

    /// The jobs of fio's JSON output (the first '{' on: fio may print notes
    /// before it).
    static func parseJobs(_ output: String) -> [Job]? {
        guard let start = output.firstIndex(of: "{"),
              let v = try? JSONSerialization.jsonObject(with: Data(output[start...].utf8)) as? [String: Any],
              let jobs = v["jobs"] as? [[String: Any]] else { return nil }
        return jobs.map { j in
            func bytes(_ dir: String) -> UInt64 {
                ((j[dir] as? [String: Any])?["io_bytes"] as? NSNumber)?.uint64Value ?? 0
            }
            return Job(name: j["jobname"] as? String ?? "?", error: (j["error"] as? NSNumber)?.intValue ?? -1,
                       readBytes: bytes("read"), writeBytes: bytes("write"))
        }
    }

    /// fio's arguments: the dev-dax engine on `path`, a region of `size`
    /// (the engine maps all of it, so it is a multiple of the device
    /// alignment), a write job then, after a stonewall, a read job, each
    /// doing `ioBytes` with crc32c verification.
    static func arguments(path: String, size: UInt64) -> [String] {
        ["fio", "--output-format=json", "--ioengine=dev-dax", "--direct=0", "--filename=\(path)",
         "--verify=crc32c", "--verify_state_save=0", "--bs=2m", "--size=\(size)", "--io_size=\(ioBytes)",
         "--name=write", "--rw=write",
         "--name=read", "--stonewall", "--rw=read"]
    }

    static func run(_ t: TestContext, _ align: DaxAlign) throws {
        let help = try Command.run(["fio", "--enghelp"], timeout: 60)
        try t.require(help.stdout.contains("dev-dax"), "this fio has no dev-dax engine (`fio --enghelp`)")
        let dev = try DevdaxKit.device(t, align)
        let a = max(dev.align, 4096)
        let size = min((ioBytes + a - 1) / a * a, dev.size / a * a)
        try t.require(size >= ioBytes, "\(dev.devname) is \(formatSize(dev.size)), smaller than \(formatSize(ioBytes))")
        let r = try t.command(arguments(path: dev.path, size: size), timeout: 120)
        let all = r.stdout + r.stderr
        t.expect(!all.split(separator: "\n").contains { $0.contains("fio") && $0.contains("got signal") },
                 "fio reported a job killed by a signal")
        t.expectEqual(r.status, 0, "fio exit status")
        let jobs = try t.require(parseJobs(r.stdout), "no JSON from fio")
        t.expectEqual(jobs.map(\.name), ["write", "read"], "fio jobs")
        for j in jobs {
            t.expectEqual(j.error, 0, "fio job \(j.name) error (a verify failure is EILSEQ)")
        }
        if let w = jobs.first(where: { $0.name == "write" }) { t.expectEqual(w.writeBytes, ioBytes, "bytes the write job wrote") }
        if let rd = jobs.first(where: { $0.name == "read" }) { t.expectEqual(rd.readBytes, ioBytes, "bytes the read job read and verified") }
    }
}
