// diff-kill-dax: the namespace of a device-dax device reconfigured (raw
// mode) under a live port window and a live kernel mapping. The kernel's
// kill_dev_dax zaps every mapping of the device and later faults fail
// check_vma (dax_alive false): SIGBUS. The port sees its host extents go
// (SIGBUS from the device), does what kill_dev_dax does (DevDax.remove:
// dax_alive false, synchronize dax_srcu, unmap_mapping_range,
// memunmap_pages) and delivers SIGBUS for its window from then on. Both
// sides are compared at an extent that was mapped and one that never was.

import DAXBase
import DAXDevice
import DAXRuntime
import MMCore

#if canImport(Glibc)
import Glibc
#endif

enum DiffKillDax {
    static func run(_ t: TestContext) throws {
        try t.installGuards()
        // The 2M device when there is one (its namespace is small), else any.
        let align = presentAligns(t, among: [.pmd, .pte, .pud]).first
        let dev = try t.openDevDax(try t.require(align, "no device-dax device"))
        let a = UInt64(dev.align.bytes)
        try t.require(dev.size >= 2 * a, "\(dev.name) is smaller than two extents")
        let ns = try t.require(DevDaxNamespace.of(devname: dev.info.devname, align: a),
                               "no namespace found for \(dev.info.devname) in sysfs")
        t.log("\(dev.name) is \(ns.name), align \(formatSize(a))")
        let restore = t.namespaceRestore(ns)

        let b = try t.bindPort(dev)
        let w = try t.portWindow(b, length: 2 * a)
        let km = try t.kernelMapping(dev, offset: 0, length: 2 * a)
        let mapped: UInt64 = 8, unmapped = a + 8
        try t.require(guardedAccess(w.address(mapped), write: true, value: 0x4B49_4C4C).ok, "touching the port's window")
        try t.require(guardedAccess(km.at(mapped), write: false).ok, "touching the kernel's mapping")
        t.expectEqual(b.mm.rssFilePages, Int64(a) / Int64(pageSize), "the port's rss with one extent mapped")

        try t.reconfigureToRaw(restore)

        // The kernel: both addresses SIGBUS.
        let kMapped = guardedAccess(km.at(mapped), write: false)
        let kUnmapped = guardedAccess(km.at(unmapped), write: false)
        // The port before it hears of it: the host extent under its mapped
        // entry is gone (SIGBUS from the device); a new fault maps nothing
        // the host can still map (ENXIO from the mirror: SIGBUS).
        let pMappedFirst = guardedAccess(w.address(mapped), write: false)
        t.compare("access to the mapped extent once the device is gone (port: its host extent)",
                  port: accessOutcome(pMappedFirst), kernel: accessOutcome(kMapped))
        let reports = w.takeReports()
        let heard = reports.contains { $0.kind == .hostSigbus || ($0.kind == .mirrorFailed && $0.code == ENXIO) }
        for r in reports { t.log("window report: \(r)") }
        t.expect(heard, "the window reported the device going away (SIGBUS from the device or ENXIO from the mirror)")

        // kill_dev_dax in the port.
        try t.must("kill_dev_dax in the port") { try b.deviceGone() }
        t.expectEqual(b.mm.rssFilePages, 0, "the port's rss after kill_dev_dax (unmap_mapping_range)")
        t.expect(b.devdax?.pgmap == nil, "the port's pgmap is gone after kill_dev_dax (memunmap_pages)")
        let pMapped = guardedAccess(w.address(mapped), write: false)
        let pUnmapped = guardedAccess(w.address(unmapped), write: true, value: 1)
        t.compare("access to the extent that was mapped, after kill_dev_dax", port: accessOutcome(pMapped), kernel: accessOutcome(kMapped))
        t.compare("access to an extent never mapped, after kill_dev_dax", port: accessOutcome(pUnmapped), kernel: accessOutcome(kUnmapped))
        let after = w.takeReports()
        for r in after { t.log("window report: \(r)") }
        t.expect(after.contains { $0.kind == .portSigbus }, "the port's own fault returned VM_FAULT_SIGBUS (check_vma: dax_alive false)")
        t.expect(throws: { _ = try b.openWindow(length: a) }, "a new window on the gone device is refused")
    }
}

extension TestContext {
    /// `body` throws, else a failure naming `what`.
    func expect(throws body: () throws -> Void, _ what: String) {
        var threw = false
        do { try body() } catch { threw = true; log("\(what): \(error)") }
        expect(threw, what)
    }
}
