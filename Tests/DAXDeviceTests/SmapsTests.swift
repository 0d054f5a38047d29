import CDaxSys
import Testing
@testable import DAXDevice

#if canImport(Glibc)
import Glibc
#endif

/// /proc/self/smaps (fs/proc/task_mmu.c show_smap, show_smap_vma_flags).
@Suite("Kernel probes: smaps")
struct SmapsTests {
    static let sample = """
        7f0000000000-7f0040000000 rw-s 00000000 00:06 123                        /dev/dax0.0
        Size:            1048576 kB
        KernelPageSize:  1048576 kB
        MMUPageSize:     1048576 kB
        Rss:                   0 kB
        FilePmdMapped:         0 kB
        THPeligible:    0
        VmFlags: rd wr sh mr mw me ms hg dd
        7ffd00000000-7ffd00021000 rw-p 00000000 00:00 0                          [stack]
        Size:                132 kB
        KernelPageSize:        4 kB
        MMUPageSize:           4 kB
        Rss:                  16 kB
        AnonHugePages:         0 kB
        VmFlags: rd wr mr mw me gd ac
        """

    @Test func parsesRecordsSizesAndFlags() throws {
        let all = SmapsEntry.parse(Self.sample)
        #expect(all.count == 2)
        let dax = try #require(all.first)
        #expect(dax.start == 0x7f00_0000_0000 && dax.end == 0x7f00_4000_0000)
        #expect(dax.permissions == "rw-s")
        #expect(dax.pathname == "/dev/dax0.0")
        #expect(dax.size == 1 << 30 && dax.kernelPageSize == 1 << 30 && dax.mmuPageSize == 1 << 30)
        #expect(dax.rss == 0 && dax.filePmdMapped == 0 && dax.anonHugePages == nil)
        #expect(dax.hasFlag("hg") && dax.hasFlag("dd") && dax.hasFlag("sh") && !dax.hasFlag("gd"))
        #expect(dax.other["THPeligible"] == 0)
        let stack = all[1]
        #expect(stack.pathname == "[stack]" && stack.rss == 16 * 1024 && stack.kernelPageSize == 4096)
        #expect(stack.filePmdMapped == nil && stack.anonHugePages == 0)
        #expect(stack.vmFlags == ["rd", "wr", "mr", "mw", "me", "gd", "ac"])
    }

    /// vma_kernel_pagesize is PAGE_SIZE for anonymous memory; madvise flags
    /// show as VmFlags (MADV_DONTDUMP: VM_DONTDUMP "dd", MADV_HUGEPAGE:
    /// VM_HUGEPAGE "hg").
    @Test func anonymousMappingHasFourKilobytePagesAndItsMadviseFlags() throws {
        let m = try ProbeMapping(anonymous: 8 * 4096)
        #expect(madvise(m.base, m.length, MADV_DONTDUMP) == 0)
        let e = try #require(try SmapsEntry.containing(address: m.pageAddress(3)))
        #expect(e.range.contains(m.address) && e.range.contains(m.pageAddress(7)))
        #expect(e.kernelPageSize == 4096 && e.mmuPageSize == 4096)
        #expect(e.permissions == "rw-p")
        #expect(e.hasFlag("dd") && e.hasFlag("nh") && !e.hasFlag("hg") && !e.hasFlag("sh"), "\(e.vmFlags)")

        #expect(madvise(m.base, m.length, MADV_HUGEPAGE) == 0)
        let h = try #require(try SmapsEntry.containing(address: m.address))
        #expect(h.hasFlag("hg") && !h.hasFlag("nh"), "\(h.vmFlags)")
    }

    /// A memfd mapping is its own VMA (no merging across files): Size is the
    /// mapping, Rss the two touched pages, "sh" for MAP_SHARED.
    @Test func sharedMemfdMappingCountsItsTouchedPages() throws {
        let fd = try ProbeMemfd(size: 4 * 4096)
        let m = try fd.mapShared(4 * 4096)
        dax_touch_write(m.page(0))
        dax_touch_write(m.page(2))
        let e = try #require(try SmapsEntry.containing(address: m.pageAddress(1)))
        #expect(e.start == m.address && e.end == m.pageAddress(4))
        #expect(e.size == 4 * 4096)
        #expect(e.rss == 2 * 4096)
        #expect(e.permissions == "rw-s" && e.hasFlag("sh"))
        #expect(e.pathname.contains("memfd:daxmm-probe"), "\(e.pathname)")
    }

    @Test func noRecordForAnUnmappedAddress() throws {
        let m = try ProbeMapping(anonymous: 4096)
        let a = m.address
        m.unmap()
        #expect(try SmapsEntry.containing(address: a) == nil)
    }
}
