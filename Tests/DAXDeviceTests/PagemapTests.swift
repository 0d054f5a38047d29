import CDaxSys
import Testing
@testable import DAXDevice

#if canImport(Glibc)
import Glibc
#endif

/// /proc/self/pagemap as the real kernel fills it (fs/proc/task_mmu.c
/// pte_to_pagemap_entry, pagemap_pmd_range, pagemap_pte_hole).
@Suite("Kernel probes: pagemap")
struct PagemapTests {
    /// pte_to_pagemap_entry: a page never touched has no PTE (pagemap_pte_hole:
    /// not present); a write fault maps an anonymous folio once, so the entry
    /// is present, not a file page, exclusive, and shows the pfn to root.
    @Test func anonymousPageIsPresentOnlyAfterItsFirstWrite() throws {
        let m = try ProbeMapping(anonymous: 4 * 4096)
        let before = try Pagemap.entries(at: m.address, count: 4)
        #expect(before.allSatisfy { !$0.present && !$0.exclusive && $0.pfn == nil }, "\(before)")

        dax_touch_write(m.page(1))
        let after = try Pagemap.entries(at: m.address, count: 4)
        #expect(after[1].present)
        #expect(!after[1].fileOrSharedAnon)
        #expect(after[1].exclusive, "an anonymous folio mapped once: folio_precise_page_mapcount == 1")
        #expect(!after[1].swapped)
        // The other pages stay unmapped: one fault, one PTE.
        #expect(!after[0].present && !after[2].present && !after[3].present)
        if Privileges.isRoot && Privileges.hasCapSysAdmin {
            #expect(after[1].pfn != nil, "root reads pfns (pagemap_read: CAP_SYS_ADMIN)")
            #expect(Pagemap.pfnsVisible())
        }
        if !Pagemap.pfnsVisible() {
            #expect(after[1].frame == 0, "pfns hidden, yet frame \(after[1].frame)")
        }
    }

    /// pte_to_pagemap_entry sets PM_MMAP_EXCLUSIVE when the small folio is
    /// mapped exactly once (folio_precise_page_mapcount(folio, page) == 1, or
    /// !folio_maybe_mapped_shared: _mapcount <= 0): the kernel's rule on every
    /// 6.x kernel. A one-page memfd keeps the folio small. A second MAP_SHARED
    /// mapping of the page, once touched, clears the bit in both mappings,
    /// even in one process; unmapping it sets it again. PM_FILE is set
    /// throughout: shmem folios are not anonymous.
    @Test func sharedMemfdPageIsExclusiveOnlyWhileMappedOnce() throws {
        let fd = try ProbeMemfd(size: 4096)
        let first = try fd.mapShared(4096)
        dax_touch_write(first.base)
        let once = try Pagemap.entry(at: first.address)
        #expect(once.present && once.fileOrSharedAnon)
        #expect(once.exclusive, "mapcount 1: \(once)")

        let second = try fd.mapShared(4096)
        #expect(!(try Pagemap.entry(at: second.address)).present, "not yet touched")
        #expect((try Pagemap.entry(at: first.address)).exclusive, "an untouched second VMA maps nothing")
        dax_touch_write(second.base)
        let a = try Pagemap.entry(at: first.address)
        let b = try Pagemap.entry(at: second.address)
        #expect(a.present && b.present && a.fileOrSharedAnon && b.fileOrSharedAnon)
        #expect(!a.exclusive && !b.exclusive, "mapcount 2: \(a) \(b)")
        if let pa = a.pfn { #expect(b.pfn == pa, "one page behind both mappings") }

        second.unmap()
        #expect((try Pagemap.entry(at: first.address)).exclusive, "mapcount back to 1")
    }

    /// One write fault maps one 4 KiB page without THP: the run around it is
    /// that page; an untouched page has an empty run.
    @Test func presentRunOfAFourKilobyteFaultIsOnePage() throws {
        let m = try ProbeMapping(anonymous: 64 * 4096)
        let untouched = try Pagemap.presentRun(around: m.pageAddress(10))
        #expect(untouched.pages == 0)
        #expect(untouched.start == m.pageAddress(10))

        dax_touch_write(m.page(20))
        let run = try Pagemap.presentRun(around: m.pageAddress(20) + 123)
        #expect(run.pages == 1, "\(run)")
        #expect(run.start == m.pageAddress(20))
        #expect(run.pfnsChecked == Pagemap.pfnsVisible())
        if run.pfnsChecked { #expect(run.firstPFN != nil) }

        // Without pfns only presence counts, so two adjacent pages run together.
        dax_touch_write(m.page(21))
        let two = try Pagemap.presentRun(around: m.pageAddress(20))
        if !two.pfnsChecked { #expect(two.pages == 2) } else { #expect((1...2).contains(two.pages)) }
    }

    /// pagemap_pmd_range: a PMD leaf makes all 512 entries under it present
    /// with consecutive pfns. smaps' AnonHugePages says whether the fault got
    /// a PMD-mapped THP; pagemap's run must agree with it either way.
    @Test(.enabled(if: thpAvailable, "transparent hugepages are disabled on this kernel"))
    func pmdMappedTHPIsA512PageRun() throws {
        let m = try ProbeMapping(anonymous: 4 << 20, hugepage: true)
        let aligned = (m.address + UInt(2 << 20) - 1) & ~UInt((2 << 20) - 1)
        dax_touch_write(UnsafeMutableRawPointer(bitPattern: aligned + 4096 * 7)!)
        let thp = try #require(try SmapsEntry.containing(address: aligned)).anonHugePages ?? 0
        let run = try Pagemap.presentRun(around: aligned + 4096 * 7)
        if thp >= 2 << 20 {
            #expect(run.pages == 512, "AnonHugePages \(thp) but run \(run)")
            #expect(run.start == aligned)
        } else {
            #expect(run.pages < 512, "no THP (AnonHugePages \(thp)) but run \(run)")
        }
    }
}

/// THP can be asked for with MADV_HUGEPAGE.
let thpAvailable: Bool = {
    var buf = [UInt8](repeating: 0, count: 128)
    let fd = open("/sys/kernel/mm/transparent_hugepage/enabled", O_RDONLY)
    guard fd >= 0 else { return false }
    defer { close(fd) }
    let n = read(fd, &buf, buf.count)
    guard n > 0 else { return false }
    return !String(decoding: buf[0..<n], as: UTF8.self).contains("[never]")
}()
