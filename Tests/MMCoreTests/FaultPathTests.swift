import CDaxMM
import Testing
@testable import MMCore
import MMTestChecks
import MMTestSupport

@Suite("Faults through handle_mm_fault")
struct FaultPathTests {
    @Test("PTE, PMD and PUD faults take one reference and one mapcount per entry", arguments: [0, 9, 18])
    func faultAtEachLevel(order: Int) throws {
        let size = UInt64(4096) << UInt64(order)
        let (rig, addr) = try vmaFixture(order: order, bytes: max(size * 2, 4 << 20), length: size * 2)
        #expect(addr % size == 0)
        let f0 = rig.folio(pgoff: 0)
        #expect(f0.refCount == 1 && f0.mapcount == 0)
        #expect(rig.mm.handleFault(addr + 4096 * 3 % size, write: false) & DAX_VM_FAULT_ERROR == 0)
        #expect(f0.refCount == 2)
        #expect(f0.mapcount == 1)
        #expect(f0.entireMapcount == (order > 0 ? 1 : 0))
        #expect(rig.mm.rssFilePages == Int64(1 << order))
        // A second fault on the same entry changes nothing.
        #expect(rig.mm.handleFault(addr, write: true) & DAX_VM_FAULT_ERROR == 0)
        #expect(f0.refCount == 2 && f0.mapcount == 1)
        rig.check()
        try rig.mm.munmap(addr, size * 2)
        #expect(f0.refCount == 1 && f0.mapcount == 0)
        #expect(rig.mm.rssFilePages == 0)
        rig.check()
    }

    @Test("pin_user_pages_fast on device memory: pincount on large folios, bias on small ones", arguments: [0, 9])
    func pinFast(order: Int) throws {
        let (rig, addr) = try vmaFixture(order: order, bytes: 4 << 20, length: 4 << 20)
        let pages = PageArray.allocate(capacity: 4)
        defer { pages.deallocate() }
        let n = pinUserPagesFast(rig.mm.ref, addr, 4, [.write, .longterm], pages)
        #expect(n == 4)
        let f = rig.folio(pgoff: 0)
        #expect(f.maybeDmaPinned)
        if order == 0 {
            #expect(f.refCount == 1 + 1 + 1024)
        } else {
            #expect(f.pincount == 4)
            #expect(f.refCount == 1 + 1 + 4)
        }
        unpinUserPages(rig.kernel.ref, pages, n)
        #expect(!f.maybeDmaPinned)
        #expect(f.refCount == 2)
        rig.check()
    }

    @Test("FOLL_LONGTERM on fs-dax is -EOPNOTSUPP and changes no counter")
    func longtermFsdax() throws {
        let rig = try FaultRig(type: .fsDax, order: 0, bytes: 2 << 20)
        // vma_is_fsdax: a regular DAX file (a DAX character device is device-dax).
        let fsRig = LinearMapping(pgmap: rig.pgmap, dax: true, characterDevice: false)
        let a2 = try rig.mm.mmap(fsRig.request(length: 2 << 20))
        #expect(rig.mm.handleFault(a2, write: true) & DAX_VM_FAULT_ERROR == 0)
        let f = rig.folio(pgoff: 0)
        #expect(f.refCount == 1)
        let before = (f.refCount, f.mapcount, rig.kernel.stat(DAX_NR_FOLL_PIN_ACQUIRED))
        let pages = PageArray.allocate(capacity: 1)
        defer { pages.deallocate() }
        #expect(pinUserPages(rig.mm.ref, a2, 1, [.write, .longterm], pages) == Int(-EOPNOTSUPP))
        #expect(pinUserPagesFast(rig.mm.ref, a2, 1, [.write, .longterm], pages) == Int(-EOPNOTSUPP))
        #expect((f.refCount, f.mapcount, rig.kernel.stat(DAX_NR_FOLL_PIN_ACQUIRED)) == before)
        rig.check()
    }
}
