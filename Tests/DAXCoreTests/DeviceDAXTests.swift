import CDaxMM
import DAXBase
import Testing
@testable import DAXCore
@testable import MMCore
import MMTestChecks
import MMTestSupport

/// One kernel, a probed device-dax instance of alignment `align` over
/// `ranges`, and an empty MM.
struct DevDaxRig: InvariantRig {
    let kernel: Kernel
    let dev: DevDax
    let mm: MM

    init(align: UInt64, ranges: [PhysicalRange]? = nil) throws {
        kernel = try Kernel(physBits: 40)
        let rs = ranges ?? [PhysicalRange(start: 0x40_0000_0000 % (1 << 40), size: max(align, 4 << 20))]
        dev = try DevDax(kernel: kernel, ranges: rs, align: align)
        try dev.probe()
        mm = try MM(kernel: kernel)
    }

    var pgmaps: [DevPagemap] { [dev.pgmap!] }

    /// Calls the device's huge_fault(order) the way the fault walk would.
    func huge(_ addr: UInt64, order: Int, write: Bool) -> UInt32 { callFault(mm, addr, order: order, write: write) }
}

@Suite("device-dax (drivers/dax/device.c)")
struct DeviceDAXTests {
    static let aligns: [UInt64] = [4096, 2 << 20, 1 << 30]

    /// dev_dax_huge_fault: the outcome matrix, with the counters of a successful insert.
    @Test("fault outcome matrix: align x order", arguments: aligns, [0, 9, 18])
    func outcomeMatrix(align: UInt64, order: Int) throws {
        let rig = try DevDaxRig(align: align)
        let addr = try rig.mm.mmap(rig.dev.mmapRequest(length: align))
        let faultSize = UInt64(4096) << UInt64(order)
        let expected: UInt32
        if faultSize == align { expected = DAX_VM_FAULT_NOPAGE }
        else if faultSize > align { expected = DAX_VM_FAULT_FALLBACK }
        else { expected = DAX_VM_FAULT_SIGBUS }
        let folio = pfnToPage(rig.kernel.ref, rig.dev.ranges[0].range.startPfn).folio
        #expect(folio.refCount == 1 && folio.mapcount == 0 && folio.mapping == 0)
        let ret = rig.huge(addr, order: order, write: true)
        #expect(ret == expected, "align \(align) order \(order): \(ret)")
        if expected == DAX_VM_FAULT_NOPAGE {
            #expect(folio.refCount == 2)
            #expect(folio.mapcount == 1)
            #expect(folio.order == order)
            #expect(rig.mm.rssFilePages == Int64(1 << order))
            // dax_set_mapping: the head carries mapping and index.
            #expect(folio.mapping == rig.dev.file.mapping)
            #expect(folio.index == 0)
        } else {
            #expect(folio.refCount == 1 && folio.mapcount == 0 && rig.mm.rssFilePages == 0)
        }
        rig.check()
    }

    /// Through handle_mm_fault the walk lands on exactly the align-sized entry.
    @Test("handle_mm_fault maps at the device alignment", arguments: aligns)
    func faultWalk(align: UInt64) throws {
        let rig = try DevDaxRig(align: align)
        let addr = try rig.mm.mmap(rig.dev.mmapRequest(length: align))
        #expect(addr % align == 0)
        let inside = addr + (align > 4096 ? 4096 : 0)
        #expect(rig.mm.handleFault(inside, write: false) == DAX_VM_FAULT_NOPAGE)
        let w = walk(rig.mm.ref, inside)
        switch align {
        case 4096:
            #expect(w.pte.map { entryPresent($0.pointee) } == true)
        case 2 << 20:
            #expect(w.pmd.map { entryLeaf($0.pointee) } == true)
        default:
            #expect(w.pud.map { entryLeaf($0.pointee) } == true)
        }
        rig.check()
        try rig.mm.munmap(addr, align)
        #expect(pfnToPage(rig.kernel.ref, rig.dev.ranges[0].range.startPfn).folio.refCount == 1)
        // The mapping stays after unmap (never cleared).
        #expect(pfnToPage(rig.kernel.ref, rig.dev.ranges[0].range.startPfn).folio.mapping == rig.dev.file.mapping)
        rig.check()
    }

    /// check_vma at mmap (dax_mmap).
    @Test("check_vma: private -> EINVAL, misaligned -> EINVAL, dead -> ENXIO")
    func checkVmaRules() throws {
        let rig = try DevDaxRig(align: 2 << 20)
        #expect(throws: MMError.errno(EINVAL, "mmap refused by the file's mmap handler")) {
            try rig.mm.mmap(rig.dev.mmapRequest(length: 2 << 20, shared: false))
        }
        // A fixed, misaligned address (vm_start not 2M aligned).
        #expect(throws: MMError.errno(EINVAL, "mmap refused by the file's mmap handler")) {
            try rig.mm.mmap(rig.dev.mmapRequest(length: 2 << 20, fixedAddress: 0x1000_1000_0000 + 4096))
        }
        // Length not a multiple of the alignment (vm_end misaligned).
        #expect(throws: MMError.self) { try rig.mm.mmap(rig.dev.mmapRequest(length: 4096)) }
        #expect(rig.mm.vmaList().isEmpty)
        let ok = try rig.mm.mmap(rig.dev.mmapRequest(length: 2 << 20))
        #expect(rig.mm.findVMA(ok)!.pointee.vm_flags & DAX_VM_HUGEPAGE != 0)
        #expect(rig.mm.findVMA(ok)!.pointee.vm_flags & DAX_VM_MIXEDMAP == 0)
        // Killed: no new mmap, and faults SIGBUS.
        dax_store_u32(devDaxAlive(rig.dev.state), 0)
        #expect(throws: MMError.errno(ENXIO, "mmap refused by the file's mmap handler")) {
            try rig.mm.mmap(rig.dev.mmapRequest(length: 2 << 20))
        }
        #expect(rig.mm.handleFault(ok, write: true) == DAX_VM_FAULT_SIGBUS)
        dax_store_u32(devDaxAlive(rig.dev.state), 1)
        rig.check()
    }

    /// may_split and pagesize.
    @Test("may_split refuses unaligned splits; pagesize is the alignment")
    func maySplit() throws {
        let rig = try DevDaxRig(align: 2 << 20)
        let addr = try rig.mm.mmap(rig.dev.mmapRequest(length: 4 << 20))
        #expect(rig.mm.handleFault(addr, write: true) == DAX_VM_FAULT_NOPAGE)
        #expect(throws: MMError.self) { try rig.mm.munmap(addr + 4096, 4096) }
        #expect(rig.mm.vmaList().count == 1)
        try rig.mm.munmap(addr + (2 << 20), 2 << 20)
        #expect(rig.mm.vmaList().count == 1)
        let vma = rig.mm.findVMA(addr)!
        #expect(vma.pointee.vm_ops.pointee.pagesize(vma) == 2 << 20)
        rig.check()
    }

    /// dax_pgoff_to_phys: multi-range devices; the first range holding pgoff decides.
    @Test("dax_pgoff_to_phys across ranges")
    func pgoffToPhys() throws {
        let rig = try DevDaxRig(align: 2 << 20, ranges: [PhysicalRange(start: 0x1_0000_0000, size: 4 << 20), PhysicalRange(start: 0x2_0000_0000, size: 2 << 20)])
        #expect(rig.dev.pgoffToPhys(0, size: 4096) == 0x1_0000_0000)
        #expect(rig.dev.pgoffToPhys(1023, size: 4096) == 0x1_0000_0000 + 1023 * 4096)
        #expect(rig.dev.pgoffToPhys(1024, size: 2 << 20) == 0x2_0000_0000)
        // A window crossing the end of range 0 is refused, even though range 1 follows.
        #expect(rig.dev.pgoffToPhys(1023, size: 2 << 20) == nil)
        #expect(rig.dev.pgoffToPhys(1536, size: 4096) == nil)
        // Faults at device offset 4M map range 1's first folio.
        let addr = try rig.mm.mmap(rig.dev.mmapRequest(length: 6 << 20))
        #expect(rig.mm.handleFault(addr + (4 << 20), write: false) == DAX_VM_FAULT_NOPAGE)
        let f = pfnToPage(rig.kernel.ref, 0x2_0000_0000 >> 12).folio
        #expect(f.refCount == 2 && f.mapcount == 1 && f.index == 1024)
        rig.check()
    }

    /// folio_is_longterm_pinnable (include/linux/mm.h): device-dax folios may be
    /// pinned long term.
    @Test("FOLL_LONGTERM pin on device-dax succeeds; folio_maybe_dma_pinned", arguments: [UInt64(4096), 2 << 20])
    func longtermPin(align: UInt64) throws {
        let rig = try DevDaxRig(align: align)
        let addr = try rig.mm.mmap(rig.dev.mmapRequest(length: align))
        let pages = try rig.mm.pinPages(addr, count: 1, flags: [.write, .longterm])
        #expect(pages.count == 1)
        let f = pages[0].folio
        #expect(f.maybeDmaPinned)
        #expect(f.refCount == (align == 4096 ? 1 + 1 + 1024 : 1 + 1 + 1))
        rig.mm.unpin(pages)
        #expect(!f.maybeDmaPinned && f.refCount == 2)
        rig.check()
    }

    @Test("construction errors")
    func constructionErrors() throws {
        let k = try Kernel(physBits: 40)
        #expect(throws: MMError.self) { try DevDax(kernel: k, ranges: [PhysicalRange(start: 0, size: 8192)], align: 8192) }
        #expect(throws: MMError.self) { try DevDax(kernel: k, ranges: [PhysicalRange(start: 4096, size: 2 << 20)], align: 2 << 20) }
        #expect(throws: MMError.self) { try DevDax(kernel: k, ranges: [], align: 4096) }
        let d = try DevDax(kernel: k, ranges: [PhysicalRange(start: 0x1_0000_0000, size: 2 << 20)], align: 4096)
        try d.probe()
        #expect(throws: MMError.self) { try d.probe() }
        #expect(pfnToPage(k.ref, 0x1_0000_0000 >> 12).folio.refCount == 1)
        try d.remove()
        #expect(!k.pfnValid(0x1_0000_0000 >> 12))
    }
}
