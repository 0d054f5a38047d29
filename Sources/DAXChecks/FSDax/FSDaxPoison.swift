// ndctl's test_dax_poison (dax-poison.c) for fs-dax: a PMD-aligned range of a
// file on a -o dax mount, mapped MAP_SHARED_VALIDATE|MAP_SYNC|MAP_POPULATE.
// MADV_SOFT_OFFLINE must fail (soft_offline_page refuses ZONE_DEVICE pages);
// MADV_HWPOISON runs memory_failure on the page (memory_failure_dev_pagemap:
// the file system's notify_failure, else mf_generic_kill_procs), which
// unmaps it and sends the caller SIGBUS with si_code BUS_MCEERR_AR; punching
// the 4 KiB hole and writing it again gives the file a clean block that
// reads back through the same mapping.

import DAXBase
import DAXDevice
import DAXRuntime
import Foundation

#if canImport(Glibc)
import Glibc
#endif

/// Counts the SIGBUS signals that arrive while `record` runs a system call:
/// memory_failure sends BUS_MCEERR_AR to the task that asked (kill_proc:
/// force_sig_mceerr), delivered on the way out of the call, so the handler
/// records it and returns into the caller.
enum SigbusRecorder {
    /// [BUS_MCEERR_AR, BUS_MCEERR_AO, other si_code, the last si_code]
    nonisolated(unsafe) static let counts: UnsafeMutablePointer<Int32> = {
        let p = UnsafeMutablePointer<Int32>.allocate(capacity: 4)
        p.initialize(repeating: 0, count: 4)
        return p
    }()

    struct Outcome: CustomStringConvertible {
        var rc: Int32, err: Int32, ar: Int32, ao: Int32, other: Int32, lastCode: Int32
        var description: String {
            "returned \(rc)\(rc != 0 ? " (\(errnoName(err)))" : ""); SIGBUS BUS_MCEERR_AR \(ar), BUS_MCEERR_AO \(ao), other \(other)"
        }
    }

    /// Runs `call` (a system call returning 0 or -1 with errno) with the
    /// recording handler installed for SIGBUS, then puts the previous one back.
    static func record(_ call: () -> Int32) -> Outcome {
        let c = counts
        c.update(repeating: 0, count: 4)
        var sa = sigaction()
        sa.__sigaction_handler.sa_sigaction = { _, info, _ in
            let c = SigbusRecorder.counts
            let code = info?.pointee.si_code ?? 0
            if code == FSDaxConst.busMCEErrAR { c[0] += 1 } else if code == FSDaxConst.busMCEErrAO { c[1] += 1 } else { c[2] += 1 }
            c[3] = code
        }
        sa.sa_flags = SA_SIGINFO
        sigemptyset(&sa.sa_mask)
        var old = sigaction()
        sigaction(SIGBUS, &sa, &old)
        let rc = call()
        let err = errno
        sigaction(SIGBUS, &old, nil)
        return Outcome(rc: rc, err: err, ar: c[0], ao: c[1], other: c[2], lastCode: c[3])
    }
}

/// A flag a cleanup reads.
final class Flag: @unchecked Sendable { var set = false }

enum FSDaxPoison {
    static func run(_ t: TestContext, fs: DaxFilesystem) throws {
        // CONFIG_MEMORY_FAILURE: the sysctls of mm/memory-failure.c.
        let probe = "/proc/sys/vm/memory_failure_recovery"
        if access(probe, F_OK) != 0 {
            try t.unsupported("the kernel has no memory failure handling (CONFIG_MEMORY_FAILURE): \(probe) is absent")
        }
        try DAXRuntime.installFaultGuards()
        // Registered first, so it runs after the unmount.
        let poisonedAny = Flag()
        try reinitNamespaceAtCleanup(t, try DaxMount.pmemDevice(t), when: poisonedAny)
        let f = try PmdFile.prepare(t, fs: fs)
        let align = FSDaxConst.pmdSize
        let victim = f.offset + UInt64(align / 2)
        // Dirty the block on the device, so the mapping is not the zero page.
        let buf = UnsafeMutableRawPointer.allocate(byteCount: 4096, alignment: 4096)
        defer { buf.deallocate() }
        let before: UInt64 = 0x706f_6973_6f6e_3031, after: UInt64 = 0x706f_6973_6f6e_3032
        fillWords(buf, before)
        try t.require(pwriteAll(f.fd, buf, 4096, victim) == 4096, "pwrite at \(hex(victim)): \(lastErrno())")
        fsync(f.fd)
        let flags = FSDaxConst.mapSharedValidate | MAP_POPULATE | FSDaxConst.mapSync
        let m: AlignedMapping
        switch f.map(flags: flags) {
        case .success(let x): m = x
        case .failure(let e): throw CheckAbort(message: "mmap MAP_SHARED_VALIDATE|MAP_POPULATE|MAP_SYNC of \(f.path) at \(hex(f.offset)): \(e)")
        }
        defer { m.unmap() }
        let page = m.at(align / 2)
        let addr = m.addr(align / 2)
        let pfn = (try? Pagemap.entry(at: UInt(addr)))?.pfn
        t.log("victim: file offset \(hex(victim)), address \(hex(addr)), pfn \(pfn.map(hex) ?? "not visible")")
        let seen = guardedAccess(addr, write: false)
        t.expect(seen.ok && seen.value == before, "read of the written block through the mapping before poisoning: \(seen) value \(hex(seen.value))")

        let soft = madvise(page, 4096, FSDaxConst.madvSoftOffline)
        let softErr = errno
        t.log("madvise(MADV_SOFT_OFFLINE) on fs-dax: \(soft == 0 ? "succeeded" : errnoName(softErr)) on \(t.environment.runningRelease)")
        t.expect(soft != 0, "MADV_SOFT_OFFLINE of an fs-dax page succeeded (dax-poison.c: soft offline must always fail for dax)")

        poisonedAny.set = true
        let hw = SigbusRecorder.record { madvise(page, 4096, FSDaxConst.madvHWPoison) }
        t.log("madvise(MADV_HWPOISON): \(hw) on \(t.environment.runningRelease)")
        t.expect(hw.ar >= 1, "MADV_HWPOISON raised no SIGBUS BUS_MCEERR_AR: \(hw)")
        t.expect(hw.other == 0, "SIGBUS with another si_code (\(hw.lastCode)) after MADV_HWPOISON: \(hw)")
        let poisoned = guardedAccess(addr, write: false)
        t.log("read of the poisoned page through the mapping (not checked; dax-poison.c does not read it): \(poisoned)")

        // Clear it: punch the 4 KiB hole, write the block again.
        let punch = LibC.fallocate(f.fd, mode: FSDaxConst.fallocPunchHole | FSDaxConst.fallocKeepSize,
                                   offset: Int(victim), length: 4096)
        t.expect(punch == 0, "fallocate(PUNCH_HOLE|KEEP_SIZE) of the poisoned 4 KiB: \(errnoName(punch))")
        fillWords(buf, after)
        t.expect(pwriteAll(f.fd, buf, 4096, victim) == 4096, "pwrite of the punched 4 KiB: \(lastErrno())")
        fsync(f.fd)
        let cleared = guardedAccess(addr, write: false)
        t.expect(cleared.ok, "read of the rewritten block through the same mapping after the hole punch: \(cleared)")
        t.expectEqual(hex(cleared.value), hex(after), "value read through the mapping after punch hole + rewrite")
        let npfn = (try? Pagemap.entry(at: UInt(addr)))?.pfn
        t.log("after punch + rewrite: pfn \(npfn.map(hex) ?? "not visible") (was \(pfn.map(hex) ?? "not visible"))")
        let back = UnsafeMutableRawPointer.allocate(byteCount: 4096, alignment: 4096)
        defer { back.deallocate() }
        t.expect(preadAll(f.fd, back, 4096, victim) == 4096 && memcmp(back, buf, 4096) == 0,
                 "read(2) of the rewritten 4 KiB does not return what was written")
    }

    static func fillWords(_ p: UnsafeMutableRawPointer, _ v: UInt64) {
        let w = p.bindMemory(to: UInt64.self, capacity: 512)
        for i in 0..<512 { w[i] = v }
    }

    /// memory_failure leaves PG_hwpoison on the namespace's page (it cannot
    /// be unpoisoned: unpoison_memory wants an online page, and ZONE_DEVICE
    /// pages are not). Reconfiguring the namespace in place with its mode,
    /// alignment and memmap location re-initialises its memmap, as dax.sh's
    /// own create-namespace -f -e steps do, so the namespace is left as found.
    static func reinitNamespaceAtCleanup(_ t: TestContext, _ device: String, when flag: Flag) throws {
        let block = String(device.dropFirst(5))
        let r = try Command.run(["ndctl", "list", "-N"], timeout: 60)
        try t.require(r.succeeded, "\(r)")
        let ns = SystemState.jsonObjects(r.stdout).first { ($0["blockdev"] as? String) == block }
        let found = try t.require(ns, "ndctl list -N shows no namespace with blockdev \(block)")
        let dev = try t.require(found["dev"] as? String, "no dev name for \(block) in ndctl list -N")
        var argv = ["ndctl", "create-namespace", "-f", "-e", dev, "-m", found["mode"] as? String ?? "fsdax"]
        if let a = (found["align"] as? NSNumber)?.uint64Value { argv += ["-a", String(a)] }
        if let map = found["map"] as? String { argv += ["-M", map] }
        t.atCleanup("re-initialise \(dev)") {
            guard flag.set else { return }
            t.log("$ \(argv.joined(separator: " ")) (re-initialises the poisoned memmap)")
            let r = try Command.run(argv, timeout: 120)
            if !r.succeeded { throw CommandError(result: r) }
        }
    }
}
