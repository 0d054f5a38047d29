// ndctl test_dax_directio on device-dax: O_DIRECT transfers whose user
// buffer is a MAP_SHARED device-dax mapping, so the kernel pins device
// pages (GUP, FOLL_PIN) for the I/O, plus fork of a pre-faulted mapping and
// the read-only to read-write upgrade of a mapped page.
//
// The O_DIRECT file is the fsdax namespace's block device (/dev/pmemX), at
// its last 4K, saved before and written back after. A block device always
// does direct I/O by pinning the user buffer (blkdev direct I/O ->
// bio_iov_iter_get_pages); a file on an ext4 `-o dax` mount would copy
// through dax_iomap_rw without pinning, and the guest's tmpfs accepts
// O_DIRECT (6.6+) but copies through its page cache, so neither would pin
// the device pages the test is about.

import CDaxSys
import DAXBase
import DAXDevice
import DAXRuntime
import Foundation

#if canImport(Glibc)
import Glibc
#endif

enum DirectIOChecks {
    static func run(_ t: TestContext, _ align: DaxAlign) throws {
        try DevdaxKit.guards()
        let dev = try DevdaxKit.device(t, align)
        let blk = try t.require(t.environment.pmemBlockDevices().first, "no /dev/pmemX for the O_DIRECT file")
        let name = String(blk.split(separator: "/").last!)
        let sectors = try t.require(DevdaxKit.readText("/sys/block/\(name)/size").flatMap { UInt64($0) },
                                    "size of \(blk)")
        let off = sectors * 512 - 4096
        let file = try t.must("open \(blk) O_DIRECT") { try DirectIO(path: blk, writable: true) }
        t.log("O_DIRECT file: \(blk) at \(hex(off)) (its last 4K, logical block \(file.logicalBlockSize))")

        // Heap buffers for the file side, 4K-aligned as O_DIRECT wants.
        let saved = UnsafeMutableRawPointer.allocate(byteCount: 4096, alignment: 4096)
        let buf = UnsafeMutableRawPointer.allocate(byteCount: 4096, alignment: 4096)
        defer { saved.deallocate(); buf.deallocate() }
        let n = try t.must("save \(blk)'s last 4K") { try file.read(into: UnsafeMutableRawBufferPointer(start: saved, count: 4096), at: off) }
        try t.require(n == 4096, "short read saving \(blk): \(n)")
        t.atCleanup("put \(blk)'s last 4K back") {
            let w = try file.write(UnsafeRawBufferPointer(start: saved, count: 4096), at: off)
            if w != 4096 { throw SysError(call: "pwrite(\(blk)) restoring 4K: \(w) bytes", errno: EIO) }
        }

        let fd = try DevdaxKit.open(t, dev.path, O_RDWR)
        let len = DevdaxKit.mappedLength(dev)
        if len < 2 * align.bytes { t.log("\(dev.devname) is \(formatSize(dev.size)): each mapping is \(formatSize(UInt64(len))), not 2*align") }

        /// One O_DIRECT transfer with the device-dax buffer: its byte
        /// count, and that the kernel pinned at least one page for it
        /// (vmstat nr_foll_pin_acquired; other pins in the guest can only
        /// add to it).
        func transfer(_ what: String, _ io: () throws -> Int) throws {
            let before = DevdaxKit.vmstat("nr_foll_pin_acquired")
            let got = try t.must(what, io)
            let after = DevdaxKit.vmstat("nr_foll_pin_acquired")
            t.expectEqual(got, 4096, "\(what): bytes transferred")
            if let before, let after {
                t.log("\(what): \(got) bytes, nr_foll_pin_acquired +\(after - before)")
                t.expect(after > before, "\(what): the kernel pinned no page (nr_foll_pin_acquired unchanged)")
            }
        }
        func bytes(_ s: String) -> [UInt8] { Array(s.utf8) + [0] }

        for i in 0..<5 {
            let addr: UnsafeMutableRawPointer
            switch DevdaxKit.mmap(length: len, prot: PROT_READ | PROT_WRITE, flags: MAP_SHARED, fd: fd) {
            case .success(let p): addr = p
            case .failure(let e): throw CheckAbort(message: "case \(i): \(e)")
            }
            defer { munmap(addr, len) }
            let daxBuf = UnsafeMutableRawBufferPointer(start: addr, count: 4096)
            switch i {
            case 0:
                // An O_DIRECT write from an unfaulted address (GUP faults it
                // in for read), then an O_DIRECT read into the same, now
                // read-only mapped, page (GUP must upgrade it for write).
                try transfer("case 0: O_DIRECT write from an unfaulted device-dax address") {
                    try file.write(UnsafeRawBufferPointer(daxBuf), at: off)
                }
                try transfer("case 0: O_DIRECT read into the pre-faulted read-only address") {
                    try file.read(into: daxBuf, at: off)
                }
            case 1:
                // O_DIRECT write from a pre-faulted address, read back into
                // the heap.
                let s = bytes("odirect data")
                s.withUnsafeBytes { addr.copyMemory(from: $0.baseAddress!, byteCount: s.count) }
                try transfer("case 1: O_DIRECT write from a pre-faulted device-dax address") {
                    try file.write(UnsafeRawBufferPointer(daxBuf), at: off)
                }
                memset(buf, 0, 4096)
                let r = try t.must("case 1: O_DIRECT read into the heap") {
                    try file.read(into: UnsafeMutableRawBufferPointer(start: buf, count: 4096), at: off)
                }
                t.expectEqual(r, 4096, "case 1: bytes read back")
                t.expect(memcmp(buf, s, s.count) == 0, "case 1: the file does not hold \"odirect data\" written from the device")
            case 2:
                // fork with a pre-faulted (huge) mapping: the child sees the
                // bytes through the inherited shared mapping. The child only
                // compares two buffers prepared before fork and exits.
                let s = bytes("fork data")
                let expected = UnsafeMutableRawPointer.allocate(byteCount: s.count, alignment: 8)
                defer { expected.deallocate() }
                s.withUnsafeBytes { expected.copyMemory(from: $0.baseAddress!, byteCount: s.count) }
                addr.copyMemory(from: expected, byteCount: s.count)
                let count = s.count
                fflush(nil)
                let pid = fork()
                if pid == 0 {
                    _exit(memcmp(addr, expected, count) == 0 ? 0 : 1)
                }
                try t.require(pid > 0, "case 2: fork: \(errnoName(errno))")
                var status: Int32 = 0
                while waitpid(pid, &status, 0) < 0 && errno == EINTR {}
                let exited = status & 0x7f == 0
                t.expect(exited, "case 2: the child died of signal \(status & 0x7f)")
                t.expectEqual(exited ? (status >> 8) & 0xff : -1, 0,
                              "case 2: the child's exit status (0: it read \"fork data\" through the inherited mapping)")
                t.log("case 2: fork with the mapping pre-faulted: the child \(exited ? "exited \((status >> 8) & 0xff)" : "died")")
            case 3:
                // Read the first word (the fault maps it read-only), then
                // write it back (the write fault upgrades the same entry).
                let a = UInt64(UInt(bitPattern: addr))
                let r = guardedAccess(a, write: false)
                let w = guardedAccess(a, write: true, value: r.value)
                let again = guardedAccess(a, write: false)
                t.expect(r.ok && w.ok && again.ok, "case 3: read \(r), write \(w), read \(again)")
                t.expectEqual(hex(again.value), hex(r.value), "case 3: the word after the read-only to read-write upgrade")
                t.log("case 3: read \(hex(r.value)), wrote it back, read \(hex(again.value))")
            default:
                // O_DIRECT read into an unfaulted address: GUP faults it in
                // for write.
                let s = bytes("O_DIRECT write of unfaulted address\n")
                memset(buf, 0, 4096)
                s.withUnsafeBytes { buf.copyMemory(from: $0.baseAddress!, byteCount: s.count) }
                let w = try t.must("case 4: O_DIRECT write from the heap") {
                    try file.write(UnsafeRawBufferPointer(start: buf, count: 4096), at: off)
                }
                t.expectEqual(w, 4096, "case 4: bytes written from the heap")
                try transfer("case 4: O_DIRECT read into an unfaulted device-dax address") {
                    try file.read(into: daxBuf, at: off)
                }
                t.expect(memcmp(addr, buf, 4096) == 0, "case 4: the device page does not hold what the file held")
            }
        }
    }
}
