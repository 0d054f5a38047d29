import CDaxMM
import DAXBase
import Testing
@testable import MMCore

#if canImport(Glibc)
import Glibc
#endif

/// The hot-path accessors' preconditions are assertions in debug builds (free
/// in release): a caller that breaks one stops at once instead of reading or
/// writing another record. Each case runs in a child process that must die of
/// the assertion's trap (SIGILL), not of a stray access (SIGSEGV).
@Suite("Debug assertions on hot-path preconditions",
       .enabled(if: _isDebugAssertConfiguration(), "assertions are compiled out of release builds"))
struct DebugAssertionTests {
    @Test("pfn_to_page of a pfn whose section holds no struct pages stops a debug build")
    func pfnToPageNeedsPopulatedSection() async throws {
        // The same call on a populated pfn is fine.
        let kernel = try Kernel(physBits: 40)
        #expect(pfnValid(kernel.ref, 0) && pfnToPage(kernel.ref, 0).raw == kernel.ref.pointee.vmemmap)
        #expect(!pfnValid(kernel.ref, 1 << 20))
        await #expect(processExitsWith: .signal(SIGILL)) {
            let k = try Kernel(physBits: 40)
            _ = pfnToPage(k.ref, 1 << 20)   // 4 GiB: no pgmap populated it
        }
    }

    @Test("page_to_pfn of a vmemmap slot whose section holds no struct pages stops a debug build")
    func pageToPfnNeedsVmemmapRecord() async throws {
        // The pointer arithmetic alone would return 1 << 20 without a word.
        await #expect(processExitsWith: .signal(SIGILL)) {
            let k = try Kernel(physBits: 40)
            _ = pageToPfn(k.ref, Page(k.ref.pointee.vmemmap + (1 << 20)))
        }
    }

    @Test("folio_page past the folio's last page stops a debug build")
    func folioPageInsideFolio() async throws {
        let kernel = try Kernel(physBits: 40)
        let pgmap = DevPagemap(kernel: kernel, type: .generic, ranges: [PhysicalRange(start: 1 << 32, size: 4 << 20)],
                               vmemmapShift: pmdOrder)
        try pgmap.memremapPages()
        let folio = pgmap.firstPage().folio
        #expect(folio.nrPages == 512 && folio.page(511).raw == folio.raw + 511)
        await #expect(processExitsWith: .signal(SIGILL)) {
            let k = try Kernel(physBits: 40)
            let p = DevPagemap(kernel: k, type: .generic, ranges: [PhysicalRange(start: 1 << 32, size: 4 << 20)],
                               vmemmapShift: pmdOrder)
            try p.memremapPages()
            _ = p.firstPage().folio.page(512)
        }
    }

    @Test("a folio made from a tail page's record stops a debug build")
    func folioIsAHeadRecord() async throws {
        await #expect(processExitsWith: .signal(SIGILL)) {
            let k = try Kernel(physBits: 40)
            let p = DevPagemap(kernel: k, type: .generic, ranges: [PhysicalRange(start: 1 << 32, size: 2 << 20)],
                               vmemmapShift: pmdOrder)
            try p.memremapPages()
            _ = Folio(p.firstPage().advanced(by: 1).raw)
        }
    }

    @Test("entryTable of a huge leaf (pmd_offset under a huge PUD) stops a debug build")
    func entryTableOfLeaf() async throws {
        #expect(entryTable(PT.table | 0x1000) == EntryPtr(bitPattern: 0x1000))
        await #expect(processExitsWith: .signal(SIGILL)) {
            _ = entryTable(entryMkhuge(pfnEntry(0x40000, PT.present | PT.rw)))
        }
    }
}
