// mm/memory.c: PTE inserts (validate_page_before_insert, insert_page,
// vm_insert_page, vmf_insert_page_mkwrite) and the pfn-only contrast.

import CDaxMM
import Testing
@testable import MMCore
import MMTestChecks
import MMTestSupport

@Suite("PTE inserts (mm/memory.c)")
struct InsertPteTests {
    /// A GENERIC order-0 rig with a 64 KiB VMA whose vm_page_prot is
    /// read-only (write notification), so the write bit of a new entry comes
    /// only from the insert.
    static func wpRig(type: MemoryType = .generic) throws -> (FaultRig, UInt64) {
        try vmaFixture(type: type, length: 64 << 10, ops: .writenotify)
    }

    @Test("validate_page_before_insert: a refcount-0 (idle FS_DAX) folio is -EINVAL and nothing is mapped")
    func validateRefusesIdleFolio() throws {
        let (rig, addr) = try vmaFixture(type: .fsDax, length: 64 << 10)
        let f = rig.folio(pgoff: 3)
        #expect(f.refCount == 0)
        let before = VMAKit.counters(rig, f)
        VMAKit.read(rig.mm) {
            let vma = rig.mm.findVMA(addr)!
            #expect(validatePageBeforeInsert(rig.kernel.ref, vma, f.head) == -EINVAL)
            #expect(insertPage(vma, addr, f.head, vma.pointee.vm_page_prot, mkwrite: false) == -EINVAL)
            #expect(insertPage(vma, addr, f.head, vma.pointee.vm_page_prot, mkwrite: true) == -EINVAL)
            let r = VMAKit.withVMF(vma, addr, write: true) { vmfInsertPageMkwrite($0, f.head, write: true) }
            #expect(r == DAX_VM_FAULT_SIGBUS)
            #expect(VMAKit.pte(rig.mm, addr) == 0)
        }
        #expect(VMAKit.counters(rig, f) == before)
        #expect(f.refCount == 0)
        rig.check()

        // The fs/dax protocol: raised 0 -> 1 the same folio is accepted and
        // the PTE keeps its own reference after the temporary one is put.
        f.refInc()
        VMAKit.read(rig.mm) {
            let vma = rig.mm.findVMA(addr)!
            #expect(validatePageBeforeInsert(rig.kernel.ref, vma, f.head) == 0)
            #expect(insertPage(vma, addr, f.head, vma.pointee.vm_page_prot, mkwrite: false) == 0)
        }
        folioPut(rig.kernel.ref, f)
        #expect(f.refCount == 1 && f.mapcount == 1)
        rig.check()
    }

    @Test("insert_page on an empty PTE: +1 ref, +1 mapcount, rss +1, NR_FILE_MAPPED +1; normal entry; no young/dirty/write without mkwrite")
    func insertPageEmptyPteWithoutMkwrite() throws {
        let (rig, addr) = try Self.wpRig()
        let f = rig.folio(pgoff: 5)
        let before = VMAKit.counters(rig, f)
        VMAKit.read(rig.mm) {
            let vma = rig.mm.findVMA(addr)!
            #expect(vma.pointee.vm_page_prot & PT.rw == 0)
            #expect(insertPage(vma, addr, f.head, vma.pointee.vm_page_prot, mkwrite: false) == 0)
        }
        var after = before
        after.ref += 1; after.mapcount += 1; after.rss += 1; after.fileMapped += 1
        #expect(VMAKit.counters(rig, f) == after)
        let e = VMAKit.pte(rig.mm, addr)
        #expect(entryPresent(e))
        #expect(!entrySpecial(e))
        #expect(entryPfn(e) == rig.pgmap.ranges[0].startPfn + 5)
        #expect(!entryYoung(e) && !entryDirty(e) && !entryWrite(e))
        VMAKit.read(rig.mm) {
            let vma = rig.mm.findVMA(addr)!
            #expect(vmNormalPage(rig.kernel.ref, vma, e) == f.head)
        }
        rig.check()
        try rig.mm.munmap(addr, 64 << 10)
        #expect(VMAKit.counters(rig, f) == before)
        rig.check()
    }

    @Test("vmf_insert_page_mkwrite(write) on an empty PTE: young, dirty and writable (VM_WRITE), same accounting",
          arguments: [true, false])
    func mkwriteInsertEmptyPte(vmWrite: Bool) throws {
        let (rig, addr) = try vmaFixture(length: 64 << 10, prot: vmWrite ? [.read, .write] : [.read], ops: .writenotify)
        let f = rig.folio(pgoff: 1)
        let before = VMAKit.counters(rig, f)
        let r = VMAKit.read(rig.mm) {
            VMAKit.withVMF(rig.mm.findVMA(addr)!, addr + 4096, write: true) { vmfInsertPageMkwrite($0, f.head, write: true) }
        }
        #expect(r == DAX_VM_FAULT_NOPAGE)
        var after = before
        after.ref += 1; after.mapcount += 1; after.rss += 1; after.fileMapped += 1
        #expect(VMAKit.counters(rig, f) == after)
        let e = VMAKit.pte(rig.mm, addr + 4096)
        #expect(entryPresent(e) && !entrySpecial(e))
        #expect(entryYoung(e) && entryDirty(e))
        #expect(entryWrite(e) == vmWrite)
        rig.check()
    }

    @Test("existing PTE without mkwrite: insert_page is -EBUSY, vmf_insert_page_mkwrite is NOPAGE, nothing changes")
    func existingPteWithoutMkwriteIsBusy() throws {
        let (rig, addr) = try Self.wpRig()
        let f = rig.folio(pgoff: 0), g = rig.folio(pgoff: 7)
        VMAKit.read(rig.mm) {
            let vma = rig.mm.findVMA(addr)!
            #expect(insertPage(vma, addr, f.head, vma.pointee.vm_page_prot, mkwrite: false) == 0)
        }
        let e0 = VMAKit.pte(rig.mm, addr)
        let bf = VMAKit.counters(rig, f), bg = VMAKit.counters(rig, g)
        VMAKit.read(rig.mm) {
            let vma = rig.mm.findVMA(addr)!
            // Same page and another page: both busy.
            #expect(insertPage(vma, addr, f.head, vma.pointee.vm_page_prot, mkwrite: false) == -EBUSY)
            #expect(insertPage(vma, addr, g.head, vma.pointee.vm_page_prot, mkwrite: false) == -EBUSY)
            #expect(VMAKit.withVMF(vma, addr) { vmfInsertPageMkwrite($0, f.head, write: false) } == DAX_VM_FAULT_NOPAGE)
            #expect(VMAKit.withVMF(vma, addr) { vmfInsertPageMkwrite($0, g.head, write: false) } == DAX_VM_FAULT_NOPAGE)
        }
        #expect(VMAKit.pte(rig.mm, addr) == e0)
        #expect(VMAKit.counters(rig, f) == bf)
        #expect(VMAKit.counters(rig, g) == bg)
        rig.check()
    }

    @Test("existing PTE, mkwrite, same pfn: upgraded in place (write + young, not dirty), no counter change")
    func mkwriteSamePfnUpgradesInPlace() throws {
        let (rig, addr) = try Self.wpRig()
        let f = rig.folio(pgoff: 2)
        VMAKit.read(rig.mm) {
            let vma = rig.mm.findVMA(addr)!
            #expect(insertPage(vma, addr, f.head, vma.pointee.vm_page_prot, mkwrite: false) == 0)
            #expect(insertPage(vma, addr + 4096, f.head, vma.pointee.vm_page_prot, mkwrite: false) == 0)
        }
        let e0 = VMAKit.pte(rig.mm, addr)
        #expect(!entryWrite(e0) && !entryYoung(e0) && !entryDirty(e0))
        let before = VMAKit.counters(rig, f)
        VMAKit.read(rig.mm) {
            let vma = rig.mm.findVMA(addr)!
            #expect(insertPage(vma, addr, f.head, vma.pointee.vm_page_prot, mkwrite: true) == 0)
            #expect(VMAKit.withVMF(vma, addr + 4096, write: true) { vmfInsertPageMkwrite($0, f.head, write: true) } == DAX_VM_FAULT_NOPAGE)
        }
        for a in [addr, addr + 4096] {
            let e = VMAKit.pte(rig.mm, a)
            #expect(entryWrite(e) && entryYoung(e))
            #expect(!entryDirty(e), "the upgrade path sets young and write, not dirty")
            #expect(entryPfn(e) == entryPfn(e0) && !entrySpecial(e))
        }
        #expect(VMAKit.counters(rig, f) == before)
        rig.check()
    }

    @Test("existing PTE, mkwrite, same pfn on a VMA without VM_WRITE: young but still read-only")
    func mkwriteUpgradeHonoursVmWrite() throws {
        let (rig, addr) = try vmaFixture(length: 64 << 10, prot: [.read])
        let f = rig.folio(pgoff: 0)
        VMAKit.read(rig.mm) {
            let vma = rig.mm.findVMA(addr)!
            #expect(insertPage(vma, addr, f.head, vma.pointee.vm_page_prot, mkwrite: false) == 0)
            let before = VMAKit.counters(rig, f)
            #expect(insertPage(vma, addr, f.head, vma.pointee.vm_page_prot, mkwrite: true) == 0)
            #expect(VMAKit.counters(rig, f) == before)
        }
        let e = VMAKit.pte(rig.mm, addr)
        #expect(entryYoung(e) && !entryWrite(e))
        rig.check()
    }

    @Test("existing PTE, mkwrite, different pfn: insert_page -EFAULT with a WARN, vmf variant SIGBUS; nothing changes")
    func mkwriteDifferentPfnIsFault() throws {
        let (rig, addr) = try Self.wpRig()
        let f = rig.folio(pgoff: 0), g = rig.folio(pgoff: 9)
        VMAKit.read(rig.mm) {
            let vma = rig.mm.findVMA(addr)!
            #expect(insertPage(vma, addr, f.head, vma.pointee.vm_page_prot, mkwrite: false) == 0)
        }
        rig.check()
        let e0 = VMAKit.pte(rig.mm, addr)
        let bf = VMAKit.counters(rig, f), bg = VMAKit.counters(rig, g)
        VMAKit.read(rig.mm) {
            let vma = rig.mm.findVMA(addr)!
            #expect(insertPage(vma, addr, g.head, vma.pointee.vm_page_prot, mkwrite: true) == -EFAULT)
        }
        var reports = rig.kernel.drainReports()
        #expect(reports.count == 1)
        #expect(reports.first?.function == "insert_page_into_pte_locked")
        #expect(reports.first?.pfn == rig.pgmap.ranges[0].startPfn + 9)
        let r = VMAKit.read(rig.mm) {
            VMAKit.withVMF(rig.mm.findVMA(addr)!, addr, write: true) { vmfInsertPageMkwrite($0, g.head, write: true) }
        }
        #expect(r == DAX_VM_FAULT_SIGBUS)
        reports = rig.kernel.drainReports()
        #expect(reports.count == 1 && reports.first?.function == "insert_page_into_pte_locked")
        #expect(VMAKit.pte(rig.mm, addr) == e0)
        #expect(VMAKit.counters(rig, f) == bf)
        #expect(VMAKit.counters(rig, g) == bg)
        rig.check()
    }

    @Test("existing zero-page PTE, mkwrite, another page: -EFAULT without a WARN")
    func mkwriteOverZeroPfnIsFaultWithoutWarn() throws {
        // A COW mapping may map the zero page.
        let (rig, addr) = try vmaFixture(length: 64 << 10, shared: false)
        let zero = pfnToPage(rig.kernel.ref, 0)
        let f = rig.folio(pgoff: 0)
        let bf = VMAKit.counters(rig, f)
        VMAKit.read(rig.mm) {
            let vma = rig.mm.findVMA(addr)!
            #expect(insertPage(vma, addr, zero, vma.pointee.vm_page_prot, mkwrite: false) == 0)
            #expect(insertPage(vma, addr, f.head, vma.pointee.vm_page_prot, mkwrite: true) == -EFAULT)
        }
        #expect(rig.kernel.drainReports().isEmpty)
        #expect(entryPfn(VMAKit.pte(rig.mm, addr)) == 0)
        #expect(VMAKit.counters(rig, f) == bf)
        rig.check()
    }

    @Test("vmf_insert_page_mkwrite outside [vm_start, vm_end) is SIGBUS and maps nothing")
    func vmfInsertOutsideVmaIsSigbus() throws {
        let (rig, addr) = try vmaFixture(length: 64 << 10)
        let f = rig.folio(pgoff: 0)
        let before = VMAKit.counters(rig, f)
        let tables = rig.kernel.pageTablesInUse
        VMAKit.read(rig.mm) {
            let vma = rig.mm.findVMA(addr)!
            for a in [vma.pointee.vm_end, vma.pointee.vm_start - 4096] {
                #expect(VMAKit.withVMF(vma, a, write: true) { vmfInsertPageMkwrite($0, f.head, write: true) } == DAX_VM_FAULT_SIGBUS)
                #expect(VMAKit.withVMF(vma, a) { vmfInsertPageMkwrite($0, f.head, write: false) } == DAX_VM_FAULT_SIGBUS)
            }
        }
        #expect(VMAKit.counters(rig, f) == before)
        #expect(rig.kernel.pageTablesInUse == tables)
        rig.check()
    }

    @Test("vm_insert_page: -EFAULT outside the VMA; inside it sets VM_MIXEDMAP and maps without mkwrite")
    func vmInsertPageRules() throws {
        let (rig, addr) = try Self.wpRig()
        let f = rig.folio(pgoff: 4)
        let before = VMAKit.counters(rig, f)
        VMAKit.write(rig.mm) {
            let vma = rig.mm.findVMA(addr)!
            #expect(vma.pointee.vm_flags & DAX_VM_MIXEDMAP == 0)
            #expect(vmInsertPage(vma, vma.pointee.vm_end, f.head) == -EFAULT)
            #expect(vmInsertPage(vma, vma.pointee.vm_start - 4096, f.head) == -EFAULT)
            #expect(VMAKit.counters(rig, f) == before)
            #expect(vmInsertPage(vma, addr, f.head) == 0)
            #expect(vma.pointee.vm_flags & DAX_VM_MIXEDMAP != 0)
            // Never mkwrite: a second call on the same PTE is busy.
            #expect(vmInsertPage(vma, addr, f.head) == -EBUSY)
        }
        var after = before
        after.ref += 1; after.mapcount += 1; after.rss += 1; after.fileMapped += 1
        #expect(VMAKit.counters(rig, f) == after)
        let e = VMAKit.pte(rig.mm, addr)
        #expect(!entrySpecial(e) && !entryWrite(e) && !entryDirty(e))
        rig.check()
    }

    @Test("vm_insert_page on a VM_PFNMAP VMA is refused (kernel BUG, port -EINVAL) without setting VM_MIXEDMAP")
    func vmInsertPageRefusesPfnmap() throws {
        let (rig, addr) = try vmaFixture(length: 64 << 10, extraFlags: DAX_VM_PFNMAP)
        let f = rig.folio(pgoff: 0)
        let before = VMAKit.counters(rig, f)
        VMAKit.write(rig.mm) {
            let vma = rig.mm.findVMA(addr)!
            #expect(vmInsertPage(vma, addr, f.head) == -EINVAL)
            #expect(vma.pointee.vm_flags & DAX_VM_MIXEDMAP == 0)
        }
        #expect(VMAKit.counters(rig, f) == before)
        #expect(VMAKit.pte(rig.mm, addr) == 0)
        rig.check()
    }

    @Test("zero page on a shared writable VMA without pfn_mkwrite: -EINVAL (vm_mixed_zeropage_allowed)")
    func zeroPageRefusedOnSharedWritable() throws {
        let (rig, addr) = try vmaFixture(length: 64 << 10)
        let zero = pfnToPage(rig.kernel.ref, 0)
        let zr = zero.folio.refCount
        VMAKit.read(rig.mm) {
            let vma = rig.mm.findVMA(addr)!
            #expect(validatePageBeforeInsert(rig.kernel.ref, vma, zero) == -EINVAL)
            #expect(insertPage(vma, addr, zero, vma.pointee.vm_page_prot, mkwrite: false) == -EINVAL)
            #expect(VMAKit.withVMF(vma, addr) { vmfInsertPageMkwrite($0, zero, write: false) } == DAX_VM_FAULT_SIGBUS)
        }
        #expect(VMAKit.pte(rig.mm, addr) == 0)
        #expect(zero.folio.refCount == zr)
        #expect(rig.mm.rssFilePages == 0)
        rig.check()
    }

    @Test("zero page is allowed on COW, never-writable and (pfn_mkwrite + fsdax) VMAs")
    func zeroPageAllowedCases() throws {
        let rig = try FaultRig(type: .fsDax, order: 0, bytes: 2 << 20)
        let zero = pfnToPage(rig.kernel.ref, 0)
        // COW
        let a1 = try rig.linkVMA(length: 64 << 10, shared: false)
        // pfn_mkwrite on an fs-dax (regular DAX file) VMA
        let a2 = try rig.linkVMA(length: 64 << 10, ops: .writenotify)
        // shared, VM_WRITE and VM_MAYWRITE cleared
        let a3 = try rig.linkVMA(length: 64 << 10, prot: [.read])
        // shared writable without pfn_mkwrite: the refused case
        let a4 = try rig.linkVMA(length: 64 << 10)
        VMAKit.write(rig.mm) {
            let v3 = rig.mm.findVMA(a3)!
            v3.pointee.vm_flags &= ~DAX_VM_MAYWRITE
            #expect(validatePageBeforeInsert(rig.kernel.ref, rig.mm.findVMA(a1)!, zero) == 0)
            #expect(validatePageBeforeInsert(rig.kernel.ref, rig.mm.findVMA(a2)!, zero) == 0)
            #expect(validatePageBeforeInsert(rig.kernel.ref, v3, zero) == 0)
            #expect(validatePageBeforeInsert(rig.kernel.ref, rig.mm.findVMA(a4)!, zero) == -EINVAL)
        }
        rig.check()
    }

    @Test("zero page insert: special, read-only PTE; no refcount, mapcount, rss or NR_FILE_MAPPED change")
    func zeroPageInsertIsSpecial() throws {
        let (rig, addr) = try vmaFixture(length: 64 << 10, shared: false)
        let zero = pfnToPage(rig.kernel.ref, 0)
        let before = VMAKit.counters(rig, zero.folio)
        VMAKit.read(rig.mm) {
            let vma = rig.mm.findVMA(addr)!
            #expect(insertPage(vma, addr, zero, vma.pointee.vm_page_prot, mkwrite: false) == 0)
            #expect(vmNormalPage(rig.kernel.ref, vma, VMAKit.pte(rig.mm, addr)) == nil)
        }
        let e = VMAKit.pte(rig.mm, addr)
        #expect(entryPresent(e) && entrySpecial(e) && !entryWrite(e))
        #expect(entryPfn(e) == 0)
        #expect(VMAKit.counters(rig, zero.folio) == before)
        rig.check()
        try rig.mm.munmap(addr, 64 << 10)
        #expect(VMAKit.counters(rig, zero.folio) == before)
        rig.check()
    }

    @Test("zero page insert with mkwrite on a writable COW VMA stays read-only and clean (mkwrite bits are for real folios only)")
    func zeroPageMkwriteStaysReadOnly() throws {
        let (rig, addr) = try vmaFixture(length: 64 << 10, shared: false)
        let zero = pfnToPage(rig.kernel.ref, 0)
        let before = VMAKit.counters(rig, zero.folio)
        let r = VMAKit.read(rig.mm) {
            VMAKit.withVMF(rig.mm.findVMA(addr)!, addr, write: true) { vmfInsertPageMkwrite($0, zero, write: true) }
        }
        #expect(r == DAX_VM_FAULT_NOPAGE)
        let e = VMAKit.pte(rig.mm, addr)
        #expect(entrySpecial(e))
        #expect(VMAKit.counters(rig, zero.folio) == before)
        #expect(!entryWrite(e), "the shared zero page must never be mapped writable")
        #expect(!entryDirty(e))
        rig.check()
    }

    // MARK: pfn-only contrast (mm/memory.c: insert_pfn, vmf_insert_pfn)

    @Test("vmf_insert_pfn: special PTE with no refcount, mapcount, rss or NR_FILE_MAPPED change; SIGBUS without PFNMAP/MIXEDMAP")
    func insertPfnIsSpecialAndUnaccounted() throws {
        let rig = try FaultRig(order: 0, bytes: 2 << 20)
        var req = MMapRequest(length: 64 << 10)
        req.extraFlags = DAX_VM_MIXEDMAP
        let addr = try rig.mm.mmap(req)
        let plain = try rig.mm.mmap(MMapRequest(length: 64 << 10))
        let f = rig.folio(pgoff: 3)
        let pfn = rig.pgmap.ranges[0].startPfn + 3
        let before = VMAKit.counters(rig, f)
        VMAKit.read(rig.mm) {
            let vma = rig.mm.findVMA(addr)!
            #expect(vmfInsertPfn(vma, addr, pfn) == DAX_VM_FAULT_NOPAGE)
            #expect(vmfInsertPfn(vma, vma.pointee.vm_end, pfn) == DAX_VM_FAULT_SIGBUS)
            #expect(vmfInsertPfn(rig.mm.findVMA(plain)!, plain, pfn) == DAX_VM_FAULT_SIGBUS)
            #expect(vmNormalPage(rig.kernel.ref, vma, VMAKit.pte(rig.mm, addr)) == nil)
        }
        let e = VMAKit.pte(rig.mm, addr)
        #expect(entryPresent(e) && entrySpecial(e) && entryPfn(e) == pfn)
        #expect(VMAKit.pte(rig.mm, plain) == 0)
        #expect(VMAKit.counters(rig, f) == before)
        rig.check()
        try rig.mm.munmap(addr, 64 << 10)
        #expect(VMAKit.counters(rig, f) == before)
        rig.check()
    }

    @Test("insert_pfn over an existing PTE with mkwrite and another pfn: skipped silently (NOPAGE), unlike insert_page's -EFAULT")
    func insertPfnMismatchSkipsSilently() throws {
        let rig = try FaultRig(order: 0, bytes: 2 << 20)
        var req = MMapRequest(length: 64 << 10)
        req.extraFlags = DAX_VM_MIXEDMAP
        let addr = try rig.mm.mmap(req)
        let base = rig.pgmap.ranges[0].startPfn
        let f = rig.folio(pgoff: 0), g = rig.folio(pgoff: 1)
        VMAKit.read(rig.mm) {
            let vma = rig.mm.findVMA(addr)!
            #expect(vmfInsertPfn(vma, addr, base) == DAX_VM_FAULT_NOPAGE)
        }
        let e0 = VMAKit.pte(rig.mm, addr)
        let bf = VMAKit.counters(rig, f), bg = VMAKit.counters(rig, g)
        VMAKit.read(rig.mm) {
            let vma = rig.mm.findVMA(addr)!
            #expect(insertPfn(vma, addr, base + 1, vma.pointee.vm_page_prot, mkwrite: true) == DAX_VM_FAULT_NOPAGE)
            #expect(insertPfn(vma, addr, base + 1, vma.pointee.vm_page_prot, mkwrite: false) == DAX_VM_FAULT_NOPAGE)
            #expect(vmfInsertPfn(vma, addr, base + 1) == DAX_VM_FAULT_NOPAGE)
        }
        #expect(VMAKit.pte(rig.mm, addr) == e0)
        #expect(VMAKit.counters(rig, f) == bf && VMAKit.counters(rig, g) == bg)
        // The kernel WARNs on the mismatch with mkwrite (not for the zero pfn);
        // the mkwrite=false and vmf_insert_pfn calls never look at the pfn.
        let reports = rig.kernel.drainReports()
        #expect(reports.count == 1)
        rig.check()
    }
}
