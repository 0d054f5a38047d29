import CDaxMM
import DAXBase
import Testing
@testable import DAXCore
@testable import MMCore
import MMTestSupport

/// Device-dax, an fs-dax file and the linear test driver on one kernel.
struct MixedRig {
    let kernel: Kernel
    let dev: DevDax
    let fs: DaxFS
    let file: DaxFile
    let mm: MM

    init() throws {
        kernel = try Kernel(physBits: 40)
        dev = try DevDax(kernel: kernel, ranges: [PhysicalRange(start: 1 << 38, size: 4 << 20)], align: 2 << 20)
        try dev.probe()
        fs = try DaxFS(kernel: kernel, start: 0x8000_0000, size: 16 << 20)
        file = try fs.create(name: "f", maxSize: 4 << 20)
        try file.allocate(pgoff: 0, pages: 1024)
        mm = try MM(kernel: kernel)
    }

    /// Calls `vma`'s vm_ops->huge_fault(order) (order 0: ->fault) the way the
    /// fault walk would.
    func callFault(_ addr: UInt64, order: Int, write: Bool = true) -> UInt32 {
        MMTestSupport.callFault(mm, addr, order: order, write: write)
    }

    /// What a refused callback must leave untouched.
    struct Counters: Equatable {
        var fileMapped: Int64, pmdMapped: Int64, rss: Int64, nrpages: Int64
        var devRef: Int32, devMapcount: Int32, devMapping: UInt64
        var fsRef: Int32, fsMapping: UInt64
        var devAlive: UInt32, devAlign: UInt64, devFileMapping: UInt64
    }

    func counters() -> Counters {
        let devFolio = pfnToPage(kernel.ref, dev.ranges[0].range.startPfn).folio
        let fsFolio = file.folio(at: 0)!
        return Counters(fileMapped: kernel.stat(DAX_NR_FILE_MAPPED), pmdMapped: kernel.stat(DAX_NR_FILE_PMDMAPPED),
                        rss: mm.rssFilePages, nrpages: file.nrpages,
                        devRef: devFolio.refCount, devMapcount: devFolio.mapcount, devMapping: devFolio.mapping,
                        fsRef: fsFolio.refCount, fsMapping: fsFolio.mapping,
                        devAlive: dax_load_u32(devDaxAlive(dev.state)), devAlign: dev.state.pointee.align,
                        devFileMapping: dev.state.pointee.mapping)
    }
}

/// A driver reads file->private_data only after comparing the file's tag
/// with its own (DriverFile / DriverState.state(of:)): another driver's VMA is
/// refused with the kernel's code, never read as the wrong record.
@Suite("driver tags on file->private_data")
struct DriverTagTests {
    @Test("check_vma and dev_dax_huge_fault refuse an fs-dax file's VMA (-EINVAL, VM_FAULT_SIGBUS)")
    func deviceDaxCallbacksOnFsDaxVma() throws {
        let rig = try MixedRig()
        var req = rig.file.mmapRequest(length: 2 << 20)
        req.ops = rig.dev.ops
        let addr = try rig.mm.mmap(req)
        let before = rig.counters()
        #expect(before.fsRef == 0 && before.fsMapping == 0 && before.devRef == 1 && before.nrpages == 0)
        rig.mm.lockRead()
        let vma = try #require(vmaLookup(rig.mm.ref, addr))
        #expect(vmaIsFsdax(vma))
        #expect(checkVma(vma) == -EINVAL)
        #expect(vma.pointee.vm_ops.pointee.pagesize(vma) == UInt64(pageSize), "dev_dax_pagesize: not a device-dax VMA")
        #expect(vma.pointee.vm_ops.pointee.may_split(vma, addr + (2 << 20)) == -EINVAL)
        rig.mm.unlockRead()
        #expect(rig.callFault(addr, order: 0) == DAX_VM_FAULT_SIGBUS)
        #expect(rig.callFault(addr, order: pmdOrder) == DAX_VM_FAULT_SIGBUS)
        #expect(rig.mm.handleFault(addr, write: true) == DAX_VM_FAULT_SIGBUS)
        #expect(rig.counters() == before)
        try rig.mm.munmap(addr, 2 << 20)
        #expect(rig.counters() == before)
        #expect(rig.kernel.drainReports().isEmpty)
    }

    @Test("dax_iomap_pte_fault / dax_iomap_pmd_fault refuse a device-dax VMA (VM_FAULT_SIGBUS); mapping and unmapping it leave the device record alone")
    func fsDaxCallbacksOnDeviceDaxVma() throws {
        let rig = try MixedRig()
        let before = rig.counters()
        var req = rig.dev.mmapRequest(length: 2 << 20)
        req.ops = rig.file.ops
        let addr = try rig.mm.mmap(req)
        #expect(rig.counters() == before)
        #expect(rig.callFault(addr, order: 0) == DAX_VM_FAULT_SIGBUS)
        #expect(rig.callFault(addr, order: pmdOrder) == DAX_VM_FAULT_SIGBUS)
        #expect(rig.mm.handleFault(addr + 4096, write: false) == DAX_VM_FAULT_SIGBUS)
        #expect(rig.mm.handleFault(addr, write: true) == DAX_VM_FAULT_SIGBUS)
        #expect(rig.counters() == before)
        try rig.mm.munmap(addr, 2 << 20)
        #expect(rig.counters() == before)
        // The device still works through its own operations.
        let ok = try rig.mm.mmap(rig.dev.mmapRequest(length: 2 << 20))
        #expect(rig.mm.handleFault(ok, write: true) == DAX_VM_FAULT_NOPAGE)
        #expect(rig.counters().devMapcount == before.devMapcount + 1)
        #expect(rig.kernel.drainReports().isEmpty)
    }

    @Test("the linear driver's huge_fault refuses a device-dax VMA; check_vma refuses the linear driver's and a driverless file's VMA")
    func linearAndDriverlessFiles() throws {
        let rig = try MixedRig()
        let linear = LinearMapping(pgmap: rig.dev.pgmap!)
        let before = rig.counters()
        var req = rig.dev.mmapRequest(length: 2 << 20)
        req.ops = linear.ops
        let addr = try rig.mm.mmap(req)
        #expect(rig.mm.handleFault(addr, write: true) == DAX_VM_FAULT_SIGBUS)
        #expect(linear.faults == 0, "refused before the handler counted a fault")
        #expect(rig.counters() == before)

        var lreq = linear.request(length: 2 << 20)
        lreq.ops = rig.dev.ops
        let laddr = try rig.mm.mmap(lreq)
        var plain = MMapRequest(length: 2 << 20)
        plain.file = MappedFile(kind: .characterDevice, dax: true)
        plain.ops = rig.dev.ops
        plain.alignment = 2 << 20
        let paddr = try rig.mm.mmap(plain)
        rig.mm.lockRead()
        #expect(checkVma(vmaLookup(rig.mm.ref, laddr)!) == -EINVAL)
        #expect(checkVma(vmaLookup(rig.mm.ref, paddr)!) == -EINVAL)
        rig.mm.unlockRead()
        #expect(rig.mm.handleFault(laddr, write: true) == DAX_VM_FAULT_SIGBUS)
        #expect(rig.mm.handleFault(paddr, write: true) == DAX_VM_FAULT_SIGBUS)
        #expect(rig.counters() == before)
        #expect(rig.kernel.drainReports().isEmpty)
    }

    @Test("a mapping keeps its driver alive (vm_file pins the inode): faults after the last user reference still reach a live record")
    func mappingKeepsDriverAlive() throws {
        let kernel = try Kernel(physBits: 40)
        let mm = try MM(kernel: kernel)
        weak var weakDev: DevDax?
        weak var weakFile: DaxFile?
        var fsKeep: DaxFS?
        let (daddr, faddr) = try { () throws -> (UInt64, UInt64) in
            let dev = try DevDax(kernel: kernel, ranges: [PhysicalRange(start: 1 << 38, size: 4 << 20)], align: 2 << 20)
            try dev.probe()
            let fs = try DaxFS(kernel: kernel, start: 0x8000_0000, size: 16 << 20)
            let file = try fs.create(name: "f", maxSize: 4 << 20)
            try file.allocate(pgoff: 0, pages: 1024)
            weakDev = dev
            weakFile = file
            fsKeep = fs
            return (try mm.mmap(dev.mmapRequest(length: 2 << 20)), try mm.mmap(file.mmapRequest(length: 2 << 20)))
        }()
        // The caller dropped the device; the fs keeps its file listed, so
        // only the device shows the mapping's own reference.
        #expect(weakDev != nil, "the device-dax VMA retains its driver")
        #expect(mm.handleFault(daddr, write: true) == DAX_VM_FAULT_NOPAGE)
        #expect(mm.handleFault(faddr, write: true) == DAX_VM_FAULT_NOPAGE)
        #expect(mm.rssFilePages == 1024)
        try mm.munmap(daddr, 2 << 20)
        #expect(weakDev == nil, "the last VMA gone, the driver goes")
        try mm.munmap(faddr, 2 << 20)
        #expect(weakFile != nil && fsKeep != nil)
        #expect(kernel.drainReports().isEmpty)
    }
}
