// Anonymous and private windows: CPU faults on anonymous memory served by
// the port's do_anonymous_page / do_huge_pmd_anonymous_page, with the
// pages coming from the port's page allocator and mapped on the host from
// its memfd; the zero pages map the zero file.

import CDaxMM
import DAXBase
import DAXCore
import DAXDevice
import DAXRuntime
import MMCore
import Testing

#if canImport(Glibc)
import Glibc
#endif

@Suite("Anonymous windows")
struct AnonWindowTests {
    @Test("an anonymous window: a read maps the zero page, a write a new anon page of the port's memory (MM_ANONPAGES 1); the data stays in the page; munmap frees it")
    func anonymousPtes() throws {
        let dev = try EmulatedDevice(size: 8 << 20, align: .pte)
        let b = try Binding(device: dev, mode: .devdax)
        let w = try b.openAnonymousWindow(length: 1 << 20)
        let r = guardedAccess(w.address(0x2000), write: false)
        #expect(r.ok && r.value == 0, "\(r)")
        #expect(b.mirrorStats.zeroMaps == [1, 0, 0])
        #expect(b.mm.rssAnonPages == 0)
        #expect(guardedAccess(w.address(0x3008), write: true, value: 0x5eed).ok)
        #expect(b.mirrorStats.ramMaps == [1, 0, 0])
        #expect(b.mm.rssAnonPages == 1 && b.kernel.ramStats!.allocatedPages == 1)
        #expect(w.pointer.load(fromByteOffset: 0x3008, as: UInt64.self) == 0x5eed)
        let t = try #require(w.translation(0x3000))
        let pfn = t.pfn
        let bytes = try #require(pfnAddress(b.kernel.withUnsafeRecord { $0 }, pfn))
        #expect(bytes.load(fromByteOffset: 8, as: UInt64.self) == 0x5eed, "the port's page holds the bytes the CPU wrote")
        #expect(b.checkInvariants().isEmpty, "\(b.checkInvariants())")
        w.closeWindow()
        #expect(b.mm.rssAnonPages == 0 && b.kernel.ramStats!.allocatedPages == 0)
        #expect(w.takeReports().isEmpty)
    }

    @Test("an anonymous window with MADV_HUGEPAGE: a read maps the huge zero folio, a write a PMD THP from the port's memory")
    func anonymousThp() throws {
        let dev = try EmulatedDevice(size: 8 << 20, align: .pte)
        let b = try Binding(device: dev, mode: .devdax)
        let w = try b.openAnonymousWindow(length: 8 << 20, hugepage: true)
        #expect(guardedAccess(w.address(0x10), write: false).ok)
        #expect(b.mirrorStats.zeroMaps == [0, 1, 0])
        #expect(guardedAccess(w.address(UInt64(pmdSize) + 0x10), write: true, value: 7).ok)
        #expect(b.mirrorStats.ramMaps == [0, 1, 0])
        #expect(b.mm.rssAnonPages == Int64(hpagePmdNr))
        #expect(w.pointer.load(fromByteOffset: pmdSize + 0x10, as: UInt64.self) == 7)
        #expect(b.kernel.stat(DAX_NR_ANON_THPS) == Int64(hpagePmdNr))
        #expect(b.checkInvariants().isEmpty, "\(b.checkInvariants())")
        w.closeWindow()
        #expect(b.kernel.ramStats!.allocatedPages == 0)
    }
}
