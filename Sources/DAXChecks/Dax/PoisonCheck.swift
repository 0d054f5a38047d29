// ndctl test_dax_poison on device-dax: MADV_HWPOISON of a page of a
// MAP_SHARED_VALIDATE|MAP_SYNC|MAP_POPULATE huge mapping runs
// memory_failure on device memory (memory_failure_dev_pagemap ->
// mf_generic_kill_procs), which unmaps the page and sends the caller
// SIGBUS with si_code BUS_MCEERR_AR.

import CDaxSys
import DAXBase
import DAXDevice
import DAXRuntime
import Foundation

#if canImport(Glibc)
import Glibc
#endif

enum PoisonCheck {
    static let madvHWPoison: Int32 = 100      // MADV_HWPOISON
    static let madvSoftOffline: Int32 = 101   // MADV_SOFT_OFFLINE
    static let busMceerrAR: Int32 = 4          // BUS_MCEERR_AR
    static let hwpoisonDir = "/sys/kernel/debug/hwpoison"

    static func run(_ t: TestContext) throws {
        // Both files exist exactly when the kernel has CONFIG_MEMORY_FAILURE
        // (drivers/base/memory.c).
        if access("/sys/devices/system/memory/hard_offline_page", F_OK) != 0 {
            try t.unsupported("no /sys/devices/system/memory/hard_offline_page: kernel built without CONFIG_MEMORY_FAILURE")
        }
        try DevdaxKit.guards()
        let dev = try t.require(t.environment.devdax(align: .pmd) ?? t.environment.devdax(align: .pud),
                                "no device-dax device aligned 2M or 1G (test_dax_poison needs align >= 2M)")
        let align = Int(dev.align)
        let len = DevdaxKit.mappedLength(dev)
        // The last 2*align of the device: the poisoned page is in its last
        // align-sized page, away from what other tests use.
        let offset = UInt64(Int(dev.size) / align * align - len)
        // memory_failure leaves PG_hwpoison on the device page, and
        // unpoison_memory refuses ZONE_DEVICE pages (not online): only a new
        // memmap clears it. Reconfiguring the namespace in place (same mode
        // and alignment) re-initialises it, as the fs-dax poison check does.
        // Registered before the device is opened: it runs after every unmap
        // and close.
        let poisoned = Flag()
        if let ns = try? Ndctl.namespace(ofChardev: dev.devname, t) {
            t.atCleanup("re-initialise \(ns.dev) after MADV_HWPOISON") {
                guard poisoned.set else { return }
                let argv = ["ndctl", "create-namespace", "-f", "-e", ns.dev, "-m", ns.mode] + (ns.align.map { ["-a", String($0)] } ?? [])
                let r = try t.command(argv, timeout: 120)
                if !r.succeeded { throw CommandError(result: r) }
            }
        } else {
            t.log("no namespace found for \(dev.devname) (ndctl list -N): the poisoned page stays PG_hwpoison until reboot")
        }
        let fd = try DevdaxKit.open(t, dev.path, O_RDWR)
        let flags = dax_map_shared_validate() | dax_map_sync() | MAP_POPULATE
        let p = try DevdaxKit.map(t, "\(dev.path) MAP_SYNC", length: len, flags: flags, fd: fd, offset: offset)
        let pageOffset = len - align / 2
        let target = p + pageOffset
        let targetAddr = UInt64(UInt(bitPattern: target))
        let devOffset = offset + UInt64(pageOffset)
        let phys = DevdaxKit.physical(dev, offset: devOffset)
        t.log("\(dev.path) align \(formatSize(UInt64(align))): poisoning device offset \(hex(devOffset))"
              + " (physical \(phys.map(hex) ?? "?")) at \(hex(targetAddr))")
        let marker: UInt64 = 0x706f_6973_6f6e
        let w = guardedAccess(targetAddr, write: true, value: marker)
        try t.require(w.ok, "writing the page before poisoning it: \(w)")
        let runBefore = try freshRun(t, fd: fd, offset: offset, length: len, pageOffset: pageOffset, align: align,
                                     "before MADV_HWPOISON, a fresh mapping")
        if let pfn = runBefore?.pfn, let phys {
            t.expectEqual(hex(pfn), hex(phys >> 12), "pagemap pfn of the page to poison (its physical address from the device's ranges)")
        }

        let soft = madvise(target, 4096, madvSoftOffline)
        let softErr = errno
        t.log("madvise(MADV_SOFT_OFFLINE) = \(soft)\(soft != 0 ? " \(errnoName(softErr))" : "")")
        t.expect(soft != 0, "MADV_SOFT_OFFLINE succeeded on device-dax memory (ndctl: should always fail for dax)")

        let corruptedBefore = hardwareCorruptedKiB()
        let kernelLog = KernelLog()
        poisoned.set = true
        let ((rc, err), caught) = SyscallSIGBUS.catching { () -> (Int32, Int32) in
            let rc = madvise(target, 4096, madvHWPoison)
            return (rc, errno)
        }
        t.log("madvise(MADV_HWPOISON) = \(rc)\(rc != 0 ? " \(errnoName(err))" : ""); \(caught)")
        t.expectEqual(caught.count, 1, "SIGBUS signals delivered by MADV_HWPOISON")
        t.expectEqual(caught.code, busMceerrAR, "si_code of the SIGBUS (BUS_MCEERR_AR = 4)")
        // si_addr and si_addr_lsb name the poisoned unit: the huge page
        // that maps it (add_to_kill takes the address of the device folio's
        // head and dev_pagemap_mapping_shift the mapping's size; 6.12 and
        // 7.x both report the 2M-aligned address with lsb 21).
        let unit = caught.addressLSB >= 12 && caught.addressLSB < 64 ? UInt64(1) << UInt64(caught.addressLSB) : 4096
        let start = UInt64(caught.address)
        t.expect(start <= targetAddr && targetAddr < start + unit,
                 "si_addr \(hex(start)) with si_addr_lsb \(caught.addressLSB) does not cover the poisoned page \(hex(targetAddr))")
        if let log = kernelLog {
            for m in log.newMessages() { t.log("kernel: \(m)") }
        }

        t.log("HardwareCorrupted: \(corruptedBefore.map(String.init) ?? "?") KiB before, \(hardwareCorruptedKiB().map(String.init) ?? "?") KiB after")
        // What the poison leaves behind: the page through the old mapping,
        // then through a fresh one.
        let old = guardedAccess(targetAddr, write: false)
        t.log("after MADV_HWPOISON, reading the page through the same mapping: \(old) value \(hex(old.value))")
        if let pfn = phys.map({ $0 >> 12 }) {
            unpoison(t, pfn: pfn)
        }
        // What later tests see: a fresh mapping faults the page in as
        // before (device-dax's fault path does not look at PG_hwpoison), with
        // its data, at the same fault size.
        let runAfter = try freshRun(t, fd: fd, offset: offset, length: len, pageOffset: pageOffset, align: align,
                                    "after MADV_HWPOISON, a fresh mapping", expect: marker)
        if let a = runBefore, let b = runAfter {
            t.expectEqual(b.pages, a.pages, "pages mapped by one fault at the poisoned page, after vs before")
            t.expectEqual(b.pfn.map(hex), a.pfn.map(hex), "pfn of the poisoned page, after vs before")
        }
    }

    /// Maps [offset, offset+length) afresh, reads the word at `pageOffset`
    /// (one fault; checked against `expect` when given), and returns the
    /// pages that fault made present around it and the page's pfn
    /// (pagemap); nil for a 1G device, whose PUD mapping a pagemap walk
    /// would split.
    static func freshRun(_ t: TestContext, fd: Int32, offset: UInt64, length: Int, pageOffset: Int, align: Int,
                         _ when: String, expect: UInt64? = nil) throws -> (pages: Int, pfn: UInt64?)? {
        let q: UnsafeMutableRawPointer
        switch DevdaxKit.mmap(length: length, prot: PROT_READ | PROT_WRITE, flags: MAP_SHARED, fd: fd, offset: offset) {
        case .success(let p): q = p
        case .failure(let e): throw CheckAbort(message: "\(when): \(e)")
        }
        defer { munmap(q, length) }
        let r = guardedAccess(UInt64(UInt(bitPattern: q + pageOffset)), write: false)
        t.log("\(when): reading the page: \(r) value \(hex(r.value))")
        if let expect {
            t.expect(r.ok && r.value == expect, "\(when): reading the page: \(r), value \(hex(r.value)) (written \(hex(expect)))")
        } else {
            try t.require(r.ok, "\(when): reading the page: \(r)")
        }
        guard align == 2 << 20,
              let run = try? Pagemap.presentRun(around: UInt(bitPattern: q + pageOffset)),
              let e = try? Pagemap.entry(at: UInt(bitPattern: q + pageOffset)) else { return nil }
        t.log("\(when): \(run.pages) present pages around the page, its pfn \(e.pfn.map(hex) ?? "hidden")")
        return (run.pages, e.pfn)
    }

    /// HardwareCorrupted of /proc/meminfo (num_poisoned_pages), in KiB.
    static func hardwareCorruptedKiB() -> UInt64? {
        guard let text = try? String(contentsOfFile: "/proc/meminfo", encoding: .utf8) else { return nil }
        for line in text.split(separator: "\n") where line.hasPrefix("HardwareCorrupted:") {
            return line.split(separator: " ").dropFirst().first.flatMap { UInt64($0) }
        }
        return nil
    }

    /// debugfs hwpoison/unpoison-pfn (module hwpoison_inject, unloaded
    /// again if this loaded it). Logs what the kernel answered.
    static func unpoison(_ t: TestContext, pfn: UInt64) {
        var loaded = false
        if access(hwpoisonDir, F_OK) != 0 {
            let r = try? t.command(["modprobe", "hwpoison_inject"])
            loaded = r?.succeeded == true
            if loaded {
                t.atCleanup("unload hwpoison_inject") { _ = try t.command(["modprobe", "-r", "hwpoison_inject"]) }
            }
        }
        guard access("\(hwpoisonDir)/unpoison-pfn", F_OK) == 0 else {
            t.log("unpoison: no \(hwpoisonDir)/unpoison-pfn (hwpoison_inject \(loaded ? "loaded" : "not loadable"), debugfs?)")
            return
        }
        let e = DevdaxKit.writeText("\(hwpoisonDir)/unpoison-pfn", "\(pfn)\n")
        t.log("unpoison-pfn \(hex(pfn)): \(e.map(errnoName) ?? "accepted")")
    }
}
