// Places where the port once answered differently from the kernel source it
// ports (mm/memory.c, mm/vma.c, mm/gup.c, mm/huge_memory.c, mm/memremap.c).
// Each test names the kernel function and the rule, and fails on the old
// answer.

import CDaxMM
import Testing
@testable import MMCore
import MMTestSupport

@Suite("Kernel parity: mm")
struct MMKernelParityTests {

    // MARK: i_mmap

    @Test("vma_link_file / unlink_file_vma: mmap, __split_vma, mremap and munmap keep the file's i_mmap; unmap_mapping_pages with nr 0 zaps to the end of the file")
    func iMmapFollowsVMAs() throws {
        let rig = try FaultRig(order: 0, bytes: 4 << 20)
        let file = rig.map.file
        let a = try rig.mm.mmap(rig.map.request(length: 16 * 4096))
        #expect(file.mappers == [rig.mm.findVMA(a)!])
        for i in 0..<16 { #expect(rig.mm.handleFault(a + UInt64(i) * 4096, write: false) == DAX_VM_FAULT_NOPAGE) }
        #expect(rig.mm.rssFilePages == 16)
        // Punch out pages 4..<8: the VMA splits in two, both halves linked.
        try rig.mm.munmap(a + 4 * 4096, 4 * 4096)
        #expect(file.mappers.count == 2)
        #expect(Set(file.mappers) == Set(rig.mm.vmaList()))
        #expect(rig.mm.rssFilePages == 12)
        // Move the upper half: the new VMA replaces the old one in i_mmap.
        let moved = try rig.mm.mremap(a + 8 * 4096, oldLength: 8 * 4096, newLength: 16 * 4096, mayMove: true)
        #expect(file.mappers.count == 2)
        #expect(Set(file.mappers) == Set(rig.mm.vmaList()))
        #expect(rig.mm.rssFilePages == 12, "moved entries keep their mappings")
        // start 10, nr 0: file pages 10 and up, in every VMA (the moved one maps 8..<24).
        VMAKit.read(rig.mm) { unmapMappingPages(file.ref, 10, 0) }
        #expect(rig.mm.rssFilePages == 4 + 2)
        #expect(rig.folio(pgoff: 9).mapcount == 1 && rig.folio(pgoff: 10).mapcount == 0)
        // unmap_mapping_range: holebegin rounds down and holelen up, each on
        // its own, so [4097, +4097) is pages [1, 3).
        VMAKit.read(rig.mm) { unmapMappingRange(file.ref, holebegin: 4096 + 1, holelen: 4096 + 1, evenCows: false) }
        #expect(rig.folio(pgoff: 1).mapcount == 0 && rig.folio(pgoff: 2).mapcount == 0)
        #expect(rig.folio(pgoff: 0).mapcount == 1 && rig.folio(pgoff: 3).mapcount == 1)
        #expect(rig.mm.rssFilePages == 2 + 2)
        try rig.mm.munmap(a, 4 * 4096)
        try rig.mm.munmap(moved, 16 * 4096)
        #expect(file.mappers.isEmpty)
        rig.check()
    }
}
