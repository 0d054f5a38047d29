// Mapping rules of device-dax (drivers/dax/device.c): check_vma refuses
// private mappings, dev_dax_may_split refuses a split below the device
// alignment, MAP_SYNC is accepted (the file is DAX), and memory-failure
// calls refuse to soft-offline device memory.

import CDaxSys
import DAXBase
import DAXDevice
import DAXRuntime
import Foundation

#if canImport(Glibc)
import Glibc
#endif

enum MappingChecks {
    /// ndctl device-dax: mmap(PROT_READ, MAP_PRIVATE) of the device fails
    /// (check_vma: EINVAL), mmap(MAP_SHARED) of 2*align works and is usable.
    static func mapPrivate(_ t: TestContext, _ align: DaxAlign) throws {
        try DevdaxKit.guards()
        let dev = try DevdaxKit.device(t, align)
        let len = DevdaxKit.mappedLength(dev)
        if len < 2 * align.bytes {
            t.log("\(dev.devname) is \(formatSize(dev.size)): mapping \(formatSize(UInt64(len))) instead of 2*align")
        }
        let ro = try DevdaxKit.open(t, dev.path, O_RDONLY)
        switch DevdaxKit.mmap(length: len, prot: PROT_READ, flags: MAP_PRIVATE, fd: ro) {
        case .success(let p):
            munmap(p, len)
            t.expect(false, "\(dev.path): mmap(MAP_PRIVATE) succeeded; check_vma refuses private mappings")
        case .failure(let e):
            t.log("\(dev.path): mmap(PROT_READ, MAP_PRIVATE, \(formatSize(UInt64(len)))) refused: \(e)")
            t.expectEqual(errnoName(e.errno), errnoName(EINVAL), "errno of MAP_PRIVATE")
        }
        let shared = try DevdaxKit.map(t, "\(dev.path) read-only", length: len, prot: PROT_READ, flags: MAP_SHARED, fd: ro)
        // A second, writable mapping of the same offsets: a word written
        // through it in every align-sized page is read through the first.
        let rw = try DevdaxKit.open(t, dev.path, O_RDWR)
        let writable = try DevdaxKit.map(t, "\(dev.path) read-write", length: len, flags: MAP_SHARED, fd: rw)
        let salt = UInt64.random(in: 1...UInt64.max)
        var faults = 0
        for off in stride(from: 0, to: len, by: align.bytes) {
            let v = DevdaxKit.patternWord(offset: UInt64(off), salt: salt)
            let w = guardedAccess(UInt64(UInt(bitPattern: writable + off)), write: true, value: v)
            let r = guardedAccess(UInt64(UInt(bitPattern: shared + off)), write: false)
            faults += 1
            t.expect(w.ok && r.ok, "\(dev.path) offset \(hex(UInt64(off))): write \(w), read \(r)")
            t.expectEqual(r.value, v, "word at offset \(hex(UInt64(off))) read through the MAP_SHARED read-only mapping")
        }
        t.log("\(faults) align-sized pages written through one MAP_SHARED mapping and read through the other")
    }

    /// ndctl test_dax_remap: mremap of the first 4K of a 2*align MAP_SHARED
    /// mapping onto an anonymous page. A refusal is fine; if it moves,
    /// SIGBUS on access is expected only for align > 4K (the moved piece is
    /// smaller than the device's fault size), and otherwise the page keeps
    /// its data.
    static func mremap(_ t: TestContext, _ align: DaxAlign) throws {
        try DevdaxKit.guards()
        let dev = try DevdaxKit.device(t, align)
        let len = DevdaxKit.mappedLength(dev)
        let fd = try DevdaxKit.open(t, dev.path, O_RDWR)
        let anonLen = 4 * 4096
        let anon = try DevdaxKit.map(t, "anonymous", length: anonLen, flags: MAP_PRIVATE | MAP_ANONYMOUS, fd: -1)
        let addr = try DevdaxKit.map(t, dev.path, length: len, flags: MAP_SHARED, fd: fd)
        memset(anon, 0x61, anonLen)  // 'a'
        // ndctl fills all 2*align with 'i'; a 1G device gets its first 2M
        // filled and one byte per align-sized page touched.
        let filled = min(len, 4 << 20)
        memset(addr, 0x69, filled)   // 'i'
        for off in stride(from: filled, to: len, by: align.bytes) { addr.storeBytes(of: 0x69, toByteOffset: off, as: UInt8.self) }
        let moved = dax_mremap_fixed(addr, 4096, 4096, anon)
        if moved == DevdaxKit.mapFailed {
            let e = errno
            t.log("mremap of 4K out of the \(align) mapping refused: \(errnoName(e)) (that is ok, as in ndctl)")
            // The refusal must leave the original mapping whole.
            let r = guardedAccess(UInt64(UInt(bitPattern: addr)), write: false)
            t.expect(r.ok && r.value == 0x6969_6969_6969_6969, "\(dev.path) after a refused mremap: \(r), value \(hex(r.value))")
            return
        }
        try t.require(moved == anon, "mremap returned \(String(describing: moved)), not the MREMAP_FIXED target \(anon)")
        t.log("mremap of 4K out of the \(align) mapping moved it to \(anon)")
        let r = guardedAccess(UInt64(UInt(bitPattern: anon)), write: false)
        if r.signal == SIGBUS {
            t.log("SIGBUS reading the moved page: \(r)")
            t.expect(align.bytes > 4096, "SIGBUS after mremap of a 4K-aligned device-dax mapping (expected only for align > 4K): \(r)")
            return
        }
        t.expect(r.ok, "reading the moved page: \(r)")
        t.expectEqual(hex(r.value), hex(0x6969_6969_6969_6969), "the moved page's first word (data intact)")
        let w = guardedAccess(UInt64(UInt(bitPattern: anon)), write: true, value: 0xAA)
        let back = guardedAccess(UInt64(UInt(bitPattern: anon)), write: false)
        t.expect(w.ok && back.ok && back.value == 0xAA, "write then read of the moved page: \(w), \(back), value \(hex(back.value))")
    }

    /// MAP_SHARED_VALIDATE|MAP_SYNC is accepted on device-dax (and refused,
    /// EOPNOTSUPP, on a memfd: the flag is validated); with MAP_POPULATE the
    /// mapping is usable; MADV_SOFT_OFFLINE is refused, and so is a write of
    /// the device's address to /sys/devices/system/memory/soft_offline_page
    /// (ndctl test_dax_poison, test_dax_soft_offline). Every device-dax
    /// alignment present.
    static func mapSync(_ t: TestContext) throws {
        try DevdaxKit.guards()
        let sync = dax_map_shared_validate() | dax_map_sync()
        // The control: a file that is not DAX refuses MAP_SYNC.
        let memfd = dax_memfd_create("daxmm-map-sync", dax_mfd_cloexec())
        try t.require(memfd >= 0, "memfd_create: \(errnoName(errno))")
        t.atCleanup("close the memfd") { close(memfd) }
        try t.require(ftruncate(memfd, 4096) == 0, "ftruncate(memfd): \(errnoName(errno))")
        switch DevdaxKit.mmap(length: 4096, prot: PROT_READ | PROT_WRITE, flags: sync, fd: memfd) {
        case .success(let p):
            munmap(p, 4096)
            t.expect(false, "MAP_SHARED_VALIDATE|MAP_SYNC accepted on a memfd (not DAX)")
        case .failure(let e):
            t.expectEqual(errnoName(e.errno), errnoName(EOPNOTSUPP), "errno of MAP_SYNC on a memfd")
        }
        var seen: Set<UInt64> = []
        for dev in t.environment.devdaxDevices() where seen.insert(dev.align).inserted {
            let align = Int(max(dev.align, 4096))
            let len = DevdaxKit.mappedLength(dev)
            let fd = try DevdaxKit.open(t, dev.path, O_RDWR)
            let p: UnsafeMutableRawPointer
            switch DevdaxKit.mmap(length: len, prot: PROT_READ | PROT_WRITE, flags: sync | MAP_POPULATE, fd: fd) {
            case .success(let q):
                p = q
                t.atCleanup("munmap \(dev.path)") { munmap(q, len) }
                t.expect(true, "MAP_SYNC accepted")
            case .failure(let e):
                t.expect(false, "\(dev.path): mmap(MAP_SHARED_VALIDATE|MAP_SYNC|MAP_POPULATE) refused: \(e)")
                continue
            }
            let base = UInt64(UInt(bitPattern: p))
            let bytes = UInt64(min(len, 64 << 10))
            let value: UInt64 = 0x6d61_705f_7379_6e63
            let w = guardedFill(base, bytes: bytes, write: true, value: value)
            let r = guardedFill(base, bytes: bytes, write: false, value: value)
            t.expect(w.ok && r.ok && r.value == 0, "\(dev.path) MAP_SYNC mapping: write \(w), read \(r) (\(r.value) words differ)")
            // MADV_SOFT_OFFLINE wants a page-aligned address; ndctl uses the
            // middle of the first align-sized page.
            let target = p + (align >= 2 << 20 ? align / 2 : 0)
            let rc = madvise(target, 4096, 101 /* MADV_SOFT_OFFLINE */)
            let e = errno
            t.log("\(dev.path) (align \(formatSize(UInt64(align)))): madvise(MADV_SOFT_OFFLINE) = \(rc)\(rc != 0 ? " \(errnoName(e))" : "")")
            t.expect(rc != 0, "\(dev.path): MADV_SOFT_OFFLINE succeeded on device-dax memory")
            if let phys = DevdaxKit.physical(dev, offset: 0) {
                let err = DevdaxKit.writeText("/sys/devices/system/memory/soft_offline_page", "\(hex(phys))\n")
                t.log("\(dev.path): write \(hex(phys)) to soft_offline_page: \(err.map(errnoName) ?? "accepted")")
                t.expect(err != nil, "\(dev.path): soft_offline_page accepted the device's address \(hex(phys))")
            }
        }
        t.expect(!seen.isEmpty, "no device-dax device to map")
    }
}
