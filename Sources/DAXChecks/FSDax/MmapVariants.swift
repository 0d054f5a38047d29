// ndctl's mmap.sh + mmap.c on a real -o dax mount: the same file mapped 18
// ways (9 MAP_SHARED, 9 MAP_PRIVATE), each with mmap.c's options: -R
// read-only open and PROT_READ, -M mlock/munlock around every iteration (-S:
// not on the first), -A mlockall/munlockall around every iteration, -p
// MAP_POPULATE, -r a read pass, -w a write pass, three iterations. mmap.c
// writes and reads every word and only needs the calls to succeed; here every
// pass also checks the data: a read sees what the file (or this mapping's own
// writes) holds, a MAP_SHARED write reaches the file (read(2) after munmap),
// and a MAP_PRIVATE write does not (copy on write of a DAX file page).
//
// Scaled down from ndctl: a 1 GiB file there, 8 MiB here (four PMD extents;
// the word-by-word passes of a 1 GiB file take minutes under emulation).
// The three iterations are kept.

import DAXBase
import DAXRuntime
import Foundation

#if canImport(Glibc)
import Glibc
#endif

/// One mmap.c command line.
struct MmapVariant: CustomStringConvertible {
    let flags: String
    var readOnly: Bool { flags.contains("R") }
    var mlock: Bool { flags.contains("M") }
    var skipFirstMlock: Bool { flags.contains("S") }
    var mlockall: Bool { flags.contains("A") }
    var populate: Bool { flags.contains("p") }
    var shared: Bool { flags.contains("s") }
    var read: Bool { flags.contains("r") }
    var write: Bool { flags.contains("w") }
    var description: String { "mmap \(flags)" }

    /// mmap.sh's order: 9 MAP_SHARED, then 9 MAP_PRIVATE.
    static let all: [MmapVariant] = [
        "-Mrwps", "-Arwps", "-RMrps", "-rwps", "-Rrps", "-Mrws", "-RMrs", "-rws", "-Rrs",
        "-Mrwp", "-RMrp", "-rwp", "-Rrp", "-Mrw", "-RMr", "-MSr", "-rw", "-Rr",
    ].map { MmapVariant(flags: $0) }
}

enum FSDaxMmap {
    static let fileBytes = 8 << 20
    static let iterations = 3
    static let page = FSDaxConst.pageSize

    /// The word every word of file page `page` holds after variant `seed`
    /// wrote it (0 for the fallocated file).
    static func pattern(_ seed: UInt64, _ page: Int) -> UInt64 {
        seed == 0 ? 0 : seed ^ (UInt64(page) &* 0x9E37_79B9_7F4A_7C15)
    }

    static func run(_ t: TestContext, fs: DaxFilesystem) throws {
        try DAXRuntime.installFaultGuards()
        let m = try DaxMount.make(t, fs: fs, mkfs: fs.mkfsMmapSh)
        let path = try m.fallocate("image", bytes: UInt64(fileBytes))
        if let dax = LibC.isDax(path) { try t.require(dax, "statx says \(path) is not DAX on a -o dax mount") }
        // What the file holds: every word of page p is pattern(fileSeed, p).
        var fileSeed: UInt64 = 0
        let t0 = monotonicNanos()
        for (k, v) in MmapVariant.all.enumerated() {
            let seed = (UInt64(k + 1) << 56) | (fs == .ext4 ? 0x00e4_0000_0000 : 0x0058_0000_0000) | 0x5eed
            let v0 = monotonicNanos()
            let problems = runVariant(t, v, path: path, fileSeed: fileSeed, writeSeed: seed)
            if v.shared && v.write && problems.isEmpty { fileSeed = seed }
            t.log(String(format: "%@: %.2fs", v.description, Double(monotonicNanos() - v0) / 1e9))
            t.expect(problems.isEmpty, "\(v) on \(fs): \(problems.joined(separator: "; "))")
            if v.shared && v.write && !problems.isEmpty {
                // The file's content is unknown now; read it as the next model.
                fileSeed = (try? readSeed(path)) ?? fileSeed
            }
        }
        t.log(String(format: "18 variants over %d MiB x %d iterations on %@: %.2fs", fileBytes >> 20, iterations, fs.rawValue,
                      Double(monotonicNanos() - t0) / 1e9))
    }

    /// One mmap.c run; the problems found (empty: it passed).
    static func runVariant(_ t: TestContext, _ v: MmapVariant, path: String, fileSeed: UInt64, writeSeed: UInt64) -> [String] {
        var problems: [String] = []
        let fd = open(path, v.readOnly ? O_RDONLY : O_RDWR)
        guard fd >= 0 else { return ["open: \(lastErrno())"] }
        defer { close(fd) }
        var st = stat()
        guard fstat(fd, &st) == 0 else { return ["fstat: \(lastErrno())"] }
        let size = Int(st.st_size)
        guard size == fileBytes else { return ["the file is \(size) bytes, not \(fileBytes)"] }
        let prot = v.readOnly ? PROT_READ : PROT_READ | PROT_WRITE
        let flags = (v.shared ? MAP_SHARED : MAP_PRIVATE) | (v.populate ? MAP_POPULATE : 0)
        // mmap.c's hint: an address 2 MiB aligned (posix_memalign, free), no MAP_FIXED.
        var hint: UnsafeMutableRawPointer?
        if case .success(let r) = AlignedMapping.reserve(length: size) {
            hint = r.address
            r.unmap()
        }
        guard let p = mmap(hint, size, prot, flags, fd, 0), p != MAP_FAILED else { return ["mmap: \(lastErrno())"] }
        var mapped = true
        defer { if mapped { munmap(p, size) } }
        let base = UInt64(UInt(bitPattern: p))
        t.log("\(v): mapped at \(hex(base)) (\(base % UInt64(FSDaxConst.pmdSize) == 0 ? "" : "NOT ")2 MiB aligned)")
        var skip = v.skipFirstMlock
        var seen = fileSeed
        for i in 0..<iterations {
            if v.mlock && !skip {
                if Glibc.mlock(p, size) != 0 { problems.append("iteration \(i + 1): mlock: \(lastErrno())"); break }
            } else if v.mlockall {
                if Glibc.mlockall(MCL_CURRENT | MCL_FUTURE) != 0 { problems.append("iteration \(i + 1): mlockall: \(lastErrno())"); break }
            }
            if v.write {
                if let bad = pass(base, size, seed: writeSeed, write: true) {
                    problems.append("iteration \(i + 1): write: \(bad)")
                    break
                }
                seen = writeSeed
            }
            if v.read, let bad = pass(base, size, seed: seen, write: false) {
                problems.append("iteration \(i + 1): read: \(bad)")
                break
            }
            if v.mlock && !skip {
                if Glibc.munlock(p, size) != 0 { problems.append("iteration \(i + 1): munlock: \(lastErrno())"); break }
            } else if v.mlockall {
                if Glibc.munlockall() != 0 { problems.append("iteration \(i + 1): munlockall: \(lastErrno())"); break }
            }
            skip = false
        }
        if v.mlockall { Glibc.munlockall() }
        if v.write {
            // What the file holds now, through read(2): this variant's data
            // for MAP_SHARED, the previous data for MAP_PRIVATE.
            munmap(p, size)
            mapped = false
            let want = v.shared ? writeSeed : fileSeed
            if let bad = checkFile(fd, size, seed: want) {
                problems.append(v.shared ? "read(2) after munmap: the shared writes did not reach the file: \(bad)"
                                         : "read(2) after munmap: the private writes reached the file: \(bad)")
            }
        }
        return problems
    }

    /// One word-by-word pass over the mapping (C loops, guarded: a signal is
    /// reported, not fatal): write pattern(seed, page) into every word, or
    /// check every word holds it. Nil when it went through.
    static func pass(_ base: UInt64, _ size: Int, seed: UInt64, write: Bool) -> String? {
        var mismatched = 0, firstBad = -1
        for pg in 0..<(size / page) {
            let r = guardedFill(base + UInt64(pg * page), bytes: UInt64(page), write: write, value: pattern(seed, pg))
            if !r.ok { return "\(r)" }
            if !write && r.value != 0 {
                mismatched += Int(r.value)
                if firstBad < 0 { firstBad = pg }
            }
        }
        if mismatched > 0 {
            let got = guardedAccess(base + UInt64(firstBad * page), write: false).value
            return "\(mismatched) words differ, first in page \(firstBad): \(hex(got)), expected \(hex(pattern(seed, firstBad)))"
        }
        return nil
    }

    /// read(2) of the whole file, every page checked against pattern(seed).
    static func checkFile(_ fd: Int32, _ size: Int, seed: UInt64) -> String? {
        let buf = UnsafeMutableRawPointer.allocate(byteCount: size, alignment: 4096)
        defer { buf.deallocate() }
        let n = preadAll(fd, buf, size, 0)
        guard n == size else { return n < 0 ? "pread: \(errnoName(Int32(-n)))" : "pread: \(n) of \(size) bytes" }
        var bad = 0, first = -1
        for pg in 0..<(size / page) {
            let template = [UInt64](repeating: pattern(seed, pg), count: page / 8)
            let same = template.withUnsafeBytes { memcmp(buf + pg * page, $0.baseAddress!, page) == 0 }
            if !same { bad += 1; if first < 0 { first = pg } }
        }
        guard bad > 0 else { return nil }
        let got = buf.load(fromByteOffset: first * page, as: UInt64.self)
        return "\(bad) pages differ, first page \(first) starts with \(hex(got)), expected \(hex(pattern(seed, first)))"
    }

    /// The seed of the file's first page (its first word at page 0 is the seed).
    static func readSeed(_ path: String) throws -> UInt64 {
        let fd = open(path, O_RDONLY)
        guard fd >= 0 else { return 0 }
        defer { close(fd) }
        var w: UInt64 = 0
        _ = pread(fd, &w, 8, 0)
        return w
    }
}
