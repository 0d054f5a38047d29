// ndctl device-dax's namespace round trips: data written through an fsdax
// namespace's block device is what the same namespace shows as device-dax,
// and a device-dax namespace reconfigured under a live mapping leaves that
// mapping with SIGBUS (kill_dev_dax -> unmap_mapping_range; a new fault
// finds the device dead).

import CDaxSys
import DAXBase
import DAXDevice
import DAXRuntime
import Foundation

#if canImport(Glibc)
import Glibc
#endif

enum ReconfigureChecks {
    /// ndctl's verify-time bound, VERIFY_TIME(align): 60 us per 4K of
    /// ALIGN(align, 2M). A bare-metal cache-mode check: recorded, never
    /// asserted here (TCG runs many times slower).
    static func ndctlVerifyBoundMicros(_ align: UInt64) -> UInt64 {
        let twoM: UInt64 = 2 << 20
        return (align + twoM - 1) / twoM * twoM / 4096 * 60
    }

    /// ndctl device-dax: the fsdax namespace, set to fsdax at align A, gets
    /// a salted pattern of 2*A bytes through /dev/pmemX (4K writes, fsync);
    /// reconfigured to devdax at the same A, /dev/daxX.Y reads it back
    /// through MAP_SHARED (after MAP_PRIVATE is refused). For A = 2M and
    /// 4K, and 1G when the namespace is large enough; put back at cleanup.
    static func fsdaxPattern(_ t: TestContext) throws {
        let original = try t.require(try Ndctl.namespaces(t).first { $0.mode == "fsdax" && $0.blockdev != nil },
                                     "no fsdax namespace")
        t.log("namespace: \(original)")
        Ndctl.restoreAtCleanup(t, original)
        var aligns: [UInt64] = [2 << 20, 4096]
        let raw = Ndctl.rawSize(original.dev) ?? original.size
        if raw >= 2 << 30 {
            aligns.append(1 << 30)
        } else {
            t.log("1G: not tried: \(original.dev) is \(formatSize(raw)) raw; a 1G-aligned devdax needs at least 2G "
                  + "(the info block and memmap push the data start to the next 1G boundary, and 2*1G is written)")
        }
        var current = original
        for align in aligns {
            if current.mode != "fsdax" || current.align != align {
                current = try Ndctl.reconfigure(t, original.dev, mode: "fsdax", align: align)
            }
            let blockdev = try t.require(current.blockdev, "\(current.dev) in fsdax mode has no block device")
            let bytes = Int(2 * align)
            let salt = UInt64.random(in: 1...UInt64.max)
            let pmem = "/dev/\(blockdev)"
            let fd = Glibc.open(pmem, O_RDWR)
            try t.require(fd >= 0, "open \(pmem): \(errnoName(errno))")
            let chunk = UnsafeMutableRawPointer.allocate(byteCount: 4096, alignment: 4096)
            var written = 0
            while written < bytes {
                DevdaxKit.fillPattern(chunk, bytes: 4096, offset: UInt64(written), salt: salt)
                let n = write(fd, chunk, 4096)
                if n != 4096 { break }
                written += 4096
            }
            let synced = fsync(fd) == 0
            close(fd)
            chunk.deallocate()
            try t.require(written == bytes && synced, "\(pmem): wrote \(written) of \(bytes) bytes, fsync \(synced ? "ok" : "failed")")

            current = try Ndctl.reconfigure(t, original.dev, mode: "devdax", align: align)
            let chardev = try t.require(current.chardev, "\(current.dev) in devdax mode has no device")
            let path = "/dev/\(chardev)"
            let ro = Glibc.open(path, O_RDONLY)
            try t.require(ro >= 0, "open \(path): \(errnoName(errno))")
            defer { close(ro) }
            switch DevdaxKit.mmap(length: bytes, prot: PROT_READ, flags: MAP_PRIVATE, fd: ro) {
            case .success(let p):
                munmap(p, bytes)
                t.expect(false, "\(path): MAP_PRIVATE succeeded")
            case .failure(let e):
                t.expectEqual(errnoName(e.errno), errnoName(EINVAL), "\(path): errno of MAP_PRIVATE")
            }
            let p: UnsafeMutableRawPointer
            switch DevdaxKit.mmap(length: bytes, prot: PROT_READ, flags: MAP_SHARED, fd: ro) {
            case .success(let q): p = q
            case .failure(let e): throw CheckAbort(message: "\(path): mmap(MAP_SHARED, \(formatSize(UInt64(bytes)))): \(e)")
            }
            defer { munmap(p, bytes) }
            let t0 = monotonicNanos()
            let bad = DevdaxKit.checkPattern(p, bytes: bytes, offset: 0, salt: salt)
            let micros = (monotonicNanos() - t0) / 1000
            t.expect(bad == nil, "\(path) (align \(formatSize(align))): offset \(hex(bad?.0 ?? 0)) reads \(hex(bad?.1 ?? 0)), "
                     + "not the word written through \(pmem)")
            t.log("align \(formatSize(align)): \(formatSize(UInt64(bytes))) verified through \(path) in \(micros) us "
                  + "(ndctl's bare-metal bound \(ndctlVerifyBoundMicros(align)) us: recorded, not asserted)")
        }
    }

    /// ndctl device-dax: a live MAP_SHARED mapping of a device-dax
    /// namespace, the namespace reconfigured to raw: a page faulted before
    /// and a page not yet faulted both raise SIGBUS. The smallest device-dax
    /// namespace; put back at cleanup.
    static func reconfigureSIGBUS(_ t: TestContext) throws {
        try DevdaxKit.guards()
        let dev = try t.require(t.environment.devdaxDevices().min { $0.size < $1.size }, "no device-dax device")
        let ns = try t.require(try Ndctl.namespace(ofChardev: dev.devname, t), "no namespace owns \(dev.devname)")
        t.log("namespace: \(ns)")
        Ndctl.restoreAtCleanup(t, ns)
        let kernelLog = KernelLog()
        let align = Int(max(dev.align, 4096))
        let len = DevdaxKit.mappedLength(dev)
        let fd = try DevdaxKit.open(t, dev.path, O_RDWR)
        // Registered after the restore: unmapped before the namespace is put back.
        let p = try DevdaxKit.map(t, dev.path, length: len, flags: MAP_SHARED, fd: fd)
        let first = UInt64(UInt(bitPattern: p))
        let second = first + UInt64(len > align ? align : len / 2)
        let w = guardedAccess(first, write: true, value: 0xff)
        try t.require(w.ok, "\(dev.path): writing the first page before the reconfiguration: \(w)")
        let raw = try Ndctl.reconfigure(t, ns.dev, mode: "raw")
        t.log("reconfigured: \(raw)")
        t.expect(raw.chardev == nil && raw.mode != "devdax", "\(ns.dev) still devdax after -m raw: \(raw)")
        let unfaulted = guardedAccess(second, write: true, value: 0xff)
        let faulted = guardedAccess(first, write: false)
        t.log("after -m raw: unfaulted page write: \(unfaulted); pre-faulted page read: \(faulted)")
        t.expectEqual(unfaulted.signal, SIGBUS, "signal writing a page not faulted before the reconfiguration")
        t.expectEqual(faulted.signal, SIGBUS, "signal reading the page faulted before the reconfiguration")
        KernelLog.expectClean(t, kernelLog, "the reconfiguration under a live mapping")
    }
}
