// Places where the port once answered differently from the kernel source it
// ports (drivers/dax/bus.c, drivers/dax/device.c, fs/dax.c). Each test names
// the kernel function and the rule, and fails on the old answer.

import CDaxMM
import DAXBase
import Testing
@testable import DAXCore
@testable import MMCore
import MMTestSupport

@Suite("Kernel parity: drivers/dax and fs/dax")
struct DAXKernelParityTests {

    // MARK: kill_dev_dax

    /// A 2M device with two folios, mapped by two MMs; faulted everywhere.
    @Test("kill_dev_dax: remove() zaps every user mapping (unmap_mapping_range(i_mapping, 0, 0, 1)) before memunmap_pages; folios back to refcount 1, rss 0, later faults SIGBUS (dax_alive false)")
    func removeZapsUserMappings() throws {
        let rig = try DevDaxRig(align: 2 << 20)
        let k = rig.kernel
        let mm2 = try MM(kernel: k)
        let a = try rig.mm.mmap(rig.dev.mmapRequest(length: 4 << 20))
        let b = try mm2.mmap(rig.dev.mmapRequest(length: 2 << 20, pgoff: 512))
        #expect(rig.mm.handleFault(a, write: true) == DAX_VM_FAULT_NOPAGE)
        #expect(rig.mm.handleFault(a + (2 << 20), write: false) == DAX_VM_FAULT_NOPAGE)
        #expect(mm2.handleFault(b, write: true) == DAX_VM_FAULT_NOPAGE)
        let base = rig.dev.ranges[0].range.startPfn
        let f0 = pfnToPage(k.ref, base).folio, f1 = pfnToPage(k.ref, base + 512).folio
        #expect(f0.refCount == 2 && f0.mapcount == 1)
        #expect(f1.refCount == 3 && f1.mapcount == 2)
        #expect(rig.mm.rssFilePages == 1024 && mm2.rssFilePages == 512)
        #expect(k.stat(DAX_NR_FILE_PMDMAPPED) == 1024, "counted once per folio")
        #expect(rig.dev.file.mappers.count == 2)
        // A get_dev_pagemap reference makes memunmap_pages wait (and time
        // out), so the struct pages can still be read after kill_dev_dax.
        let hold = try #require(getDevPagemap(k, pfn: base))
        #expect(throws: MMError.self) { try rig.dev.remove(timeoutNanos: 50_000_000) }
        #expect(f0.refCount == 1 && f0.mapcount == 0, "idle device-dax refcount")
        #expect(f1.refCount == 1 && f1.mapcount == 0)
        #expect(rig.mm.rssFilePages == 0 && mm2.rssFilePages == 0)
        #expect(k.stat(DAX_NR_FILE_PMDMAPPED) == 0 && k.stat(DAX_NR_FILE_MAPPED) == 0)
        #expect(!entryPresent(walk(rig.mm.ref, a).pmd?.pointee ?? 0))
        #expect(!entryPresent(walk(mm2.ref, b).pmd?.pointee ?? 0))
        // check_vma: !dax_alive() -> -ENXIO -> SIGBUS; nothing is mapped again.
        #expect(rig.mm.handleFault(a, write: true) == DAX_VM_FAULT_SIGBUS)
        #expect(mm2.handleFault(b, write: false) == DAX_VM_FAULT_SIGBUS)
        #expect(f0.refCount == 1 && rig.mm.rssFilePages == 0)
        #expect(k.drainReports().isEmpty)
        putDevPagemap(hold)
        try rig.dev.remove()
        #expect(!k.pfnValid(base))
        // The VMAs are still there and unmap cleanly: no entry points at the
        // torn-down pages.
        try rig.mm.munmap(a, 4 << 20)
        try mm2.munmap(b, 2 << 20)
        #expect(invariants(mms: [rig.mm, mm2], pgmaps: []).isEmpty)
        #expect(k.drainReports().isEmpty)
    }

    // MARK: i_mmap grows with the mappings (it once held at most 256 VMAs)

    @Test("kill_dev_dax's unmap_mapping_range reaches all of 300 VMAs mapping one device page (the file's i_mmap grows)")
    func removeReaches300Mappings() throws {
        let rig = try DevDaxRig(align: 4096)
        let k = rig.kernel
        var addrs: [UInt64] = []
        for _ in 0..<300 {
            let a = try rig.mm.mmap(rig.dev.mmapRequest(length: 4096))
            #expect(rig.mm.handleFault(a, write: false) == DAX_VM_FAULT_NOPAGE)
            addrs.append(a)
        }
        let base = rig.dev.ranges[0].range.startPfn
        let f = pfnToPage(k.ref, base).folio
        #expect(rig.dev.file.mappers.count == 300)
        #expect(f.refCount == 301 && f.mapcount == 300 && rig.mm.rssFilePages == 300)
        let hold = try #require(getDevPagemap(k, pfn: base))
        #expect(throws: MMError.self) { try rig.dev.remove(timeoutNanos: 50_000_000) }
        #expect(f.refCount == 1 && f.mapcount == 0 && rig.mm.rssFilePages == 0)
        #expect(k.drainReports().isEmpty)
        putDevPagemap(hold)
        try rig.dev.remove()
        for a in addrs { try rig.mm.munmap(a, 4096) }
        #expect(rig.dev.file.mappers.isEmpty)
    }

    @Test("dax_break_layout's unmap_mapping_pages reaches all of 300 VMAs mapping one fs-dax page (the file's i_mmap grows)")
    func breakLayoutReaches300Mappings() throws {
        let rig = try FSRig(size: 4 << 20)
        let f = try rig.fs.create(name: "many", maxSize: 2 << 20)
        try f.allocate(pgoff: 0, pages: 1)
        var addrs: [UInt64] = []
        for _ in 0..<300 {
            let a = try rig.mm.mmap(f.mmapRequest(length: 4096))
            #expect(rig.mm.handleFault(a, write: false) & DAX_VM_FAULT_ERROR == 0)
            addrs.append(a)
        }
        let folio = try #require(f.folio(at: 0))
        #expect(f.file.mappers.count == 300)
        #expect(folio.refCount == 300 && folio.mapcount == 300 && rig.mm.rssFilePages == 300)
        try f.breakLayout(timeoutNanos: 1_000_000_000)
        #expect(folio.refCount == 0 && folio.mapcount == 0, "every mapping zapped: nothing left busy")
        #expect(rig.mm.rssFilePages == 0)
        #expect(f.nrpages == 0 && f.entry(at: 0) == 0)
        rig.check()
        for a in addrs { try rig.mm.munmap(a, 4096) }
        #expect(f.file.mappers.isEmpty)
        rig.check()
    }

    // MARK: dax_folio_put

    @Test("dax_folio_put: an order-0 folio whose last association goes while a GUP pin holds it (CoW write over a reflinked block) loses its mapping, keeps its index, and nothing WARNs")
    func daxFolioPutOrder0WhilePinned() throws {
        let rig = try FSRig()
        let a = try rig.fs.create(name: "a", maxSize: 2 << 20)
        let b = try rig.fs.create(name: "b", maxSize: 2 << 20)
        try a.allocate(pgoff: 0, pages: 8)
        try b.reflink(from: a, srcPgoff: 0, dstPgoff: 0, pages: 8)
        let mb = try rig.mm.mmap(b.mmapRequest(length: 2 << 20))
        let addr = mb + 5 * 4096
        #expect(rig.mm.handleFault(addr, write: false) & DAX_VM_FAULT_ERROR == 0)
        let old = try #require(b.folio(at: 5))
        #expect(old.mapping == b.file.mapping && old.index == 5 && old.refCount == 1 && !old.isLarge)
        let pages = try rig.mm.pinPages(addr, count: 1, flags: [])
        #expect(old.refCount == 1 + 1024)
        // The write CoWs: b gets its own block, dax_insert_entry unmaps the
        // old page and dax_disassociate_entry -> dax_folio_put drops its only
        // association while the pin still holds it.
        #expect(rig.mm.handleFault(addr, write: true) & DAX_VM_FAULT_ERROR == 0)
        #expect(b.block(at: 5) != a.block(at: 5))
        #expect(old.mapping == 0, "mapping = NULL")
        #expect(old.index == 5, "index left as it was")
        #expect(old.refCount == 1024 && old.mapcount == 0)
        #expect(rig.kernel.drainReports().isEmpty, "no busy WARN on an order-0 folio")
        let nf = try #require(b.folio(at: 5))
        #expect(nf.mapping == b.file.mapping && nf.index == 5 && nf.refCount == 1)
        rig.mm.unpin(pages)
        #expect(old.refCount == 0)
        rig.check()
    }

    // MARK: dax_iomap_pte_fault / dax_iomap_pmd_fault results

    @Test("dax_iomap_pte_fault returns an iomap_begin error through dax_fault_return (vmf_error): -ENOMEM is VM_FAULT_OOM, -EHWPOISON VM_FAULT_HWPOISON, -ENOSPC VM_FAULT_SIGBUS; dax_iomap_pmd_fault falls back on each",
          arguments: [ENOMEM, EHWPOISON, ENOSPC])
    func iomapErrorThroughVmfError(errno: Int32) throws {
        let rig = try FSRig()
        let f = try rig.fs.create(name: "e", maxSize: 4 << 20)
        try f.extend(to: 4 << 20)
        let addr = try rig.mm.mmap(f.mmapRequest(length: 2 << 20))
        // An iomap_begin that fails with the errno fsPrivate points at.
        var err = -errno
        let savedBegin = f.inode.pointee.iomapBegin, savedPrivate = f.inode.pointee.fsPrivate
        f.inode.pointee.iomapBegin = { priv, _, _, _, out in
            out!.assumingMemoryBound(to: DaxIomap.self).pointee.error = priv!.load(as: Int32.self)
        }
        withUnsafeMutablePointer(to: &err) { e in
            f.inode.pointee.fsPrivate = UnsafeMutableRawPointer(e)
            #expect(callFault(rig.mm, addr, order: pmdOrder, write: true) == DAX_VM_FAULT_FALLBACK)
            let expected = errno == ENOMEM ? DAX_VM_FAULT_OOM
                : errno == EHWPOISON ? DAX_VM_FAULT_HWPOISON : DAX_VM_FAULT_SIGBUS
            #expect(callFault(rig.mm, addr, order: 0, write: true) == expected)
            // Through the fault walk: the PMD level falls back, the PTE level
            // gives the mapped error.
            #expect(rig.mm.handleFault(addr + 4096, write: true) == expected)
        }
        f.inode.pointee.iomapBegin = savedBegin
        f.inode.pointee.fsPrivate = savedPrivate
        #expect(rig.mm.rssFilePages == 0)
        #expect(f.block(at: 0) == nil && f.block(at: 1) == nil)
        // With the file system's own iomap_begin the same fault maps.
        #expect(rig.mm.handleFault(addr, write: true) & DAX_VM_FAULT_ERROR == 0)
        rig.check()
    }

    @Test("dax_iomap_pte_fault adds VM_FAULT_MAJOR for a new block only when the result is not VM_FAULT_SIGBUS")
    func majorNotOnSigbus() throws {
        let rig = try FSRig()
        let f = try rig.fs.create(name: "m", maxSize: 2 << 20)
        try f.extend(to: 2 << 20)
        // 64 KiB: the PMD level falls back, the PTE fault allocates.
        let addr = try rig.mm.mmap(f.mmapRequest(length: 64 << 10))
        // A new block whose insert fails: the pre-series path skips the
        // temporary reference, so validate_page_before_insert refuses the
        // idle folio and the fault is a plain SIGBUS, with no MAJOR.
        rig.kernel.mode |= DAX_MODE_LEGACY_PRE_SERIES.rawValue
        #expect(rig.mm.handleFault(addr, write: true) == DAX_VM_FAULT_SIGBUS)
        #expect(f.block(at: 0) != nil, "the block was allocated (IOMAP_F_NEW)")
        rig.kernel.mode &= ~DAX_MODE_LEGACY_PRE_SERIES.rawValue
        // A new block that maps: NOPAGE | MAJOR.
        #expect(rig.mm.handleFault(addr + 4096, write: true) == DAX_VM_FAULT_NOPAGE | DAX_VM_FAULT_MAJOR)
        // The first page's block is no longer new: a minor fault.
        #expect(rig.mm.handleFault(addr, write: true) == DAX_VM_FAULT_NOPAGE)
        rig.check()
    }

    // MARK: dax_get_unmapped_area

    @Test("dax_get_unmapped_area gives the address the file offset's colour modulo the alignment, so a pgoff off a 2M device's alignment gets a misaligned vm_start and check_vma refuses the mmap (-EINVAL); an aligned pgoff maps aligned")
    func unmappedAreaColour() throws {
        let rig = try DevDaxRig(align: 2 << 20, ranges: [PhysicalRange(start: 0x1_0000_0000, size: 8 << 20)])
        #expect(throws: MMError.errno(EINVAL, "mmap refused by the file's mmap handler")) {
            try rig.mm.mmap(rig.dev.mmapRequest(length: 4 << 20, pgoff: 1))
        }
        #expect(rig.mm.vmaList().isEmpty)
        // The address itself, without dax_mmap's check_vma.
        var req = rig.dev.mmapRequest(length: 4 << 20, pgoff: 3)
        req.mmapHook = nil
        let coloured = try rig.mm.mmap(req)
        #expect(coloured % (2 << 20) == 3 * 4096, "vm_start \(hex(coloured)) has the offset's colour")
        try rig.mm.munmap(coloured, 4 << 20)
        let aligned = try rig.mm.mmap(rig.dev.mmapRequest(length: 2 << 20, pgoff: 512))
        #expect(aligned % (2 << 20) == 0)
        #expect(rig.mm.handleFault(aligned, write: true) == DAX_VM_FAULT_NOPAGE)
        #expect(pfnToPage(rig.kernel.ref, (0x1_0000_0000 >> 12) + 512).folio.refCount == 2)
        rig.check()
    }

    // MARK: dax_iomap_pmd_fault in a VMA that begins inside a PMD

    @Test("dax_iomap_pmd_fault in a VMA that begins inside a PMD (after munmap of its first 16K) falls back instead of computing the file offset of an address below vm_start; the PTE fault maps the page")
    func pmdFaultBelowVmStart() throws {
        let rig = try FSRig()
        let f = try rig.fs.create(name: "cut", maxSize: 4 << 20)
        try f.allocate(pgoff: 0, pages: 1024)
        let addr = try rig.mm.mmap(f.mmapRequest(length: 4 << 20))
        try rig.mm.munmap(addr, 4 * 4096)
        #expect(callFault(rig.mm, addr + 5 * 4096, order: pmdOrder, write: false) == DAX_VM_FAULT_FALLBACK)
        #expect(rig.mm.handleFault(addr + 5 * 4096, write: true) & DAX_VM_FAULT_ERROR == 0)
        let pte = try #require(walk(rig.mm.ref, addr + 5 * 4096).pte)
        #expect(entryPresent(pte.pointee))
        #expect(rig.mm.rssFilePages == 1)
        rig.check()
    }
}

