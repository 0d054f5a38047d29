// The parts of the fs-dax suite that need no pmem: the tracepoint parser,
// the FIEMAP alignment search, mmap.c's variant table, the selftest's
// expectations, the SIGBUS recorder, and the port's side of the
// gup_longterm matrix (its fs-dax file over an emulated device).

@testable import DAXChecks
import Foundation
import Testing

#if canImport(Glibc)
import Glibc
#endif

@Suite("fsdax suite: host-side pieces")
struct FSDaxHostTests {
    @Test("dax_pmd_fault_done lines (include/trace/events/fs_dax.h TP_printk) parse into pid, inode, address and result")
    func traceLines() throws {
        let line: Substring = "     daxmm-279     [001] ..... 41.118245: dax_pmd_fault_done: dev 259:3 ino 0xc shared WRITE|ALLOW_RETRY|KILLABLE|USER|INTERRUPTIBLE|VMA_LOCK address 0x7f3ebc200000 vm_start 0x7f3ebc200000 vm_end 0x7f3ebc600000 pgoff 0x200 max_pgoff 0x41ad NOPAGE"
        let e = try #require(PmdFaultEvent.parse(line))
        #expect(e.pid == 279 && e.inode == 0xc && e.shared && e.address == 0x7f3e_bc20_0000 && e.pgoff == 0x200)
        #expect(e.result == "NOPAGE" && e.flags.hasPrefix("WRITE|"))
        // A comm with a dash, no fault flags, a fallback.
        let other: Substring = "  kworker-u8-1234 [000] ..... 1.0: dax_pmd_fault_done: dev 259:3 ino 0x1003 private  address 0x1000 vm_start 0x0 vm_end 0x2000 pgoff 0x1 max_pgoff 0x2 FALLBACK"
        let f = try #require(PmdFaultEvent.parse(other))
        #expect(f.pid == 1234 && !f.shared && f.flags == "" && f.address == 0x1000 && f.result == "FALLBACK")
        #expect(PmdFaultEvent.parse("  daxmm-1 [000] ..... 1.0: dax_pmd_fault: dev 259:3 ino 0x1 shared") == nil)
    }

    @Test("an extent is PMD-mappable only where file offset and block are both 2 MiB aligned with 4 MiB after them")
    func extentAlignment() {
        let mb: UInt64 = 1 << 20
        // xfs with su=2m: aligned from the start.
        #expect(FileExtent(logical: 0, physical: 4 * mb, length: 64 * mb, flags: 0).pmdAlignedOffset(bytes: 4 * mb) == 0)
        // ext4's first extent: block misaligned with the offset, never mappable.
        #expect(FileExtent(logical: 0, physical: 0x1fae000, length: 64 * mb, flags: 0).pmdAlignedOffset(bytes: 4 * mb) == nil)
        // The same after FALLOC_FL_INSERT_RANGE of the misalignment.
        #expect(FileExtent(logical: 0x1ae000, physical: 0x1fae000, length: 64 * mb, flags: 0).pmdAlignedOffset(bytes: 4 * mb) == 2 * mb)
        // Aligned but too short.
        #expect(FileExtent(logical: 2 * mb, physical: 6 * mb, length: 3 * mb, flags: 0).pmdAlignedOffset(bytes: 4 * mb) == nil)
    }

    @Test("mmap.sh's 18 variants: 9 MAP_SHARED then 9 MAP_PRIVATE; R never with w; populate, mlock, mlockall as the letters say")
    func mmapVariants() {
        let all = MmapVariant.all
        #expect(all.count == 18)
        #expect(all.prefix(9).allSatisfy(\.shared) && !all.suffix(9).contains(where: \.shared))
        #expect(!all.contains { $0.readOnly && $0.write })
        #expect(all.filter(\.write).count == 9 && all.allSatisfy(\.read))
        let a = all[1]
        #expect(a.flags == "-Arwps" && a.mlockall && a.populate && a.shared && !a.mlock)
        let s = all.first { $0.flags == "-MSr" }!
        #expect(s.mlock && s.skipFirstMlock && !s.shared && !s.write)
    }

    @Test("the mmap variants' page patterns: zero for the fallocated file, distinct per page and per variant")
    func patterns() {
        #expect(FSDaxMmap.pattern(0, 7) == 0)
        let a = (0..<2048).map { FSDaxMmap.pattern(1 << 56 | 0x5eed, $0) }
        #expect(Set(a).count == a.count && !a.contains(0))
        #expect(FSDaxMmap.pattern(1 << 56 | 0x5eed, 3) != FSDaxMmap.pattern(2 << 56 | 0x5eed, 3))
    }

    @Test("gup_longterm's io_uring expectation on ext4/xfs: only the private R/W mapping pins; PIN_LONGTERM R/O pins always work")
    func selftestExpectations() {
        let works = LongtermCase.all.filter { FSDaxLongterm.selftestExpects($0, .uring).works }
        #expect(works.count == 1 && !works[0].shared && works[0].writable)
        for c in LongtermCase.all {
            #expect(FSDaxLongterm.selftestExpects(c, .gupTest(fast: false, write: false)).works)
            #expect(FSDaxLongterm.selftestExpects(c, .gupTest(fast: true, write: true)).works == !c.shared)
        }
    }

    @Test("the SIGBUS recorder counts a signal that arrives during the call by si_code and puts the old handler back")
    func sigbusRecorder() {
        var before = sigaction()
        sigaction(SIGBUS, nil, &before)
        let o = SigbusRecorder.record { raise(SIGBUS) }
        #expect(o.rc == 0 && o.ar == 0 && o.ao == 0 && o.other == 1)
        var after = sigaction()
        sigaction(SIGBUS, nil, &after)
        #expect(unsafeBitCast(after.__sigaction_handler.sa_handler, to: Int.self)
                == unsafeBitCast(before.__sigaction_handler.sa_handler, to: Int.self))
    }

    @Test("the port refuses FOLL_WRITE|FOLL_LONGTERM on every fs-dax mapping of the matrix with EOPNOTSUPP (check_vma_flags), and write-faults a private one (do_cow_fault) whose anon copies GUP-fast pins")
    func portMatrix() throws {
        let t = TestContext(name: "fsdax-host-port-matrix", environment: CheckEnvironment())
        let port = try PortFsdaxPins(t)
        for c in LongtermCase.all {
            var notes: [String] = []
            let e = try port.pin(c, .uring, length: 4096, prefaultWrite: c.shared, notes: &notes)
            #expect(e == EOPNOTSUPP, "\(c): \(notes)")
            // A R/O pin without FOLL_WRITE is refused the same way.
            let ro = try port.pin(c, .gupTest(fast: false, write: false), length: 4096, prefaultWrite: false, notes: &notes)
            #expect(ro == EOPNOTSUPP, "\(c) R/O pin: \(notes)")
        }
        var notes: [String] = []
        let priv = try port.pin(LongtermCase(shared: false, writable: true), .uring, length: 4096, prefaultWrite: true, notes: &notes)
        #expect(!notes.contains { $0.contains("write fault") }, "a private write fault copies the block (do_cow_fault): \(notes)")
        // The written pages are anon COW copies: GUP-fast pins them without
        // check_vma_flags (gup_fast_folio_allowed allows anon folios), as the
        // gup_longterm selftest expects of a private mapping.
        #expect(priv == nil, "\(notes)")
        #expect(port.binding.checkInvariants().isEmpty, "\(port.binding.checkInvariants())")
        #expect(t.failures.isEmpty)
    }
}
