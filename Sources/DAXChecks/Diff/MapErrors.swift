// diff-map-errors: the same mmap requests of a device-dax device to the
// kernel (mmap(2) of the char device) and to the port (sys_mmap's offset
// check, do_mmap's MAP_TYPE switch and MAP_SHARED_VALIDATE check, then
// dax_get_unmapped_area and dax_mmap/check_vma): the same errno. Where both
// accept a mapping that reaches past the device, an access past the end
// raises the same signal (the kernel's dax_pgoff_to_phys finds no range:
// VM_FAULT_SIGBUS; the port's window the same).

import CDaxSys
import DAXBase
import DAXDevice
import DAXRuntime
import MMCore

#if canImport(Glibc)
import Glibc
#endif

enum DiffMapErrors {
    /// A flag no file supports (bit 21: not in LEGACY_MAP_MASK, not MAP_SYNC).
    static let unknownFlag: UInt32 = 0x20_0000

    struct Case {
        var name: String
        var offset: UInt64
        var length: UInt64
        var flags: UInt32
        var readOnly = false
    }

    static func cases(size: UInt64, align a: UInt64) -> [Case] {
        let shared = MapFlag.shared
        var cs = [
            Case(name: "MAP_PRIVATE (PROT_READ)", offset: 0, length: a, flags: MapFlag.private, readOnly: true),
            Case(name: "offset 512 (not page aligned)", offset: 512, length: 2 * a, flags: shared),
        ]
        if a > UInt64(pageSize) {
            cs.append(Case(name: "offset 4K (not aligned to \(formatSize(a)))", offset: 4096, length: 2 * a, flags: shared))
        }
        cs += [
            Case(name: "length \(formatSize(a)) + 4K (not a multiple of the alignment)", offset: 0, length: a + 4096, flags: shared),
            Case(name: "length \(formatSize(a)) + 512 bytes", offset: 0, length: a + 512, flags: shared),
            Case(name: "length past the device's end (\(formatSize(size)) + \(formatSize(a)))", offset: 0, length: size + a, flags: shared),
            Case(name: "MAP_SHARED_VALIDATE|MAP_SYNC", offset: 0, length: a, flags: MapFlag.sharedValidate | MapFlag.sync),
            Case(name: "MAP_SHARED_VALIDATE with unknown flag \(hex(UInt64(unknownFlag)))", offset: 0, length: a,
                 flags: MapFlag.sharedValidate | unknownFlag),
            Case(name: "MAP_SHARED with unknown flag \(hex(UInt64(unknownFlag))) (ignored)", offset: 0, length: a,
                 flags: shared | unknownFlag),
        ]
        return cs
    }

    static func run(_ t: TestContext) throws {
        let aligns = try t.guardedDevdaxAligns()
        for align in aligns {
            let dev = try t.openDevDax(align)
            let b = try t.bindPort(dev)
            let devdax = try t.require(b.devdax, "the binding has no device-dax driver")
            let a = UInt64(align.bytes)
            for c in cases(size: dev.size, align: a) {
                // The kernel.
                let prot = c.readOnly ? PROT_READ : PROT_READ | PROT_WRITE
                let kernel: Int32
                var km: KernelMapping? = nil
                switch t.kernelMap(dev, offset: c.offset, length: c.length, prot: prot, flags: Int32(bitPattern: c.flags)) {
                case .success(let m): kernel = 0; km = m
                case .failure(let e): kernel = e.code
                }
                // The port, in its own address space (no fault is taken, so
                // nothing reaches the host).
                var port: Int32 = 0
                do {
                    let pgoff = try MM.mmapPageOffset(c.offset)
                    let req = devdax.mmapRequest(length: c.length, pgoff: pgoff, prot: c.readOnly ? [.read] : [.read, .write],
                                                 mapFlags: c.flags)
                    let addr = try b.mm.mmap(req)
                    try b.mm.munmap(addr, (c.length + UInt64(pageSize) - 1) & ~UInt64(pageSize - 1))
                } catch {
                    port = error.code
                    t.log("\(align) \(c.name): the port: \(error)")
                }
                t.compare("\(align) \(c.name): mmap", port: errnoOutcome(port), kernel: errnoOutcome(kernel))
                guard let km, c.length > dev.size, port == 0 else {
                    km?.unmap()
                    continue
                }
                // Accepted past the end: the last word of the device, then the
                // first word past it, through the kernel's mapping and a port
                // window of the same length.
                let w = try t.portWindow(b, length: (c.length + a - 1) / a * a, pastTheEnd: true)
                for (what, off) in [("the device's last word", dev.size - 8), ("the first word past the end", dev.size)] {
                    let k = guardedAccess(km.at(off), write: false)
                    let p = guardedAccess(w.address(off), write: false)
                    t.compare("\(align) \(c.name): read of \(what) (offset \(hex(off)))", port: accessOutcome(p), kernel: accessOutcome(k))
                }
                w.closeWindow()
                km.unmap()
            }
        }
    }
}
