// Differential checks of anonymous memory: the same scenario on a real
// kernel mapping (mmap MAP_PRIVATE|MAP_ANONYMOUS, madvise, touches, a
// partial munmap) and on the port, every observable compared. The kernel is
// observed through /proc/self/pagemap (present, pfn, bit 56 "exclusively
// mapped"), /proc/kpageflags (ANON, THP, ZERO_PAGE, COMPOUND_HEAD/TAIL),
// /proc/kpagecount and /proc/self/smaps (Rss, AnonHugePages). The port
// follows the kernel's transparent_hugepage settings (enabled,
// use_zero_page) read from sysfs. Anonymous memory exists on every kernel:
// these run on the host (as root: pfns and kpageflags need CAP_SYS_ADMIN)
// as well as in the VM. Where the kernel's answer depends on what it could
// allocate (no free order-9 page for a THP or the huge zero folio), the
// check SKIPs with the reason instead of failing.

import DAXBase
import DAXDevice
import Foundation
import MMCore

#if canImport(Glibc)
import Glibc
#endif

/// /proc/kpageflags bits (include/uapi/linux/kernel-page-flags.h).
struct KPageFlags: Equatable, CustomStringConvertible {
    let raw: UInt64
    static let compoundHead: UInt64 = 1 << 15
    static let compoundTail: UInt64 = 1 << 16
    static let anon: UInt64 = 1 << 12
    static let thp: UInt64 = 1 << 22
    static let zeroPage: UInt64 = 1 << 24

    var isAnon: Bool { raw & Self.anon != 0 }
    var isTHP: Bool { raw & Self.thp != 0 }
    var isZeroPage: Bool { raw & Self.zeroPage != 0 }
    var isHead: Bool { raw & Self.compoundHead != 0 }
    var isTail: Bool { raw & Self.compoundTail != 0 }

    var description: String {
        let names = [(Self.anon, "ANON"), (Self.thp, "THP"), (Self.zeroPage, "ZERO_PAGE"),
                     (Self.compoundHead, "COMPOUND_HEAD"), (Self.compoundTail, "COMPOUND_TAIL")]
        let set = names.filter { raw & $0.0 != 0 }.map(\.1)
        return set.isEmpty ? hex(raw) : set.joined(separator: "|") + " (\(hex(raw)))"
    }

    /// The 8-byte word for `pfn` in /proc/kpageflags or /proc/kpagecount.
    static func word(_ path: String, pfn: UInt64) -> UInt64? {
        let fd = open(path, O_RDONLY)
        guard fd >= 0 else { return nil }
        defer { close(fd) }
        var v: UInt64 = 0
        let n = pread(fd, &v, 8, off_t(pfn * 8))
        return n == 8 ? v : nil
    }

    static func of(pfn: UInt64) -> KPageFlags? { word("/proc/kpageflags", pfn: pfn).map(KPageFlags.init(raw:)) }
    static func count(pfn: UInt64) -> UInt64? { word("/proc/kpagecount", pfn: pfn) }
}

/// The whole text of a procfs or sysfs file (Guest.readFile: read to EOF).
func readProcText(_ path: String) -> String? { Guest.readFile(path) }

/// The kernel's transparent_hugepage switches, from sysfs.
struct KernelTHPSettings: Equatable {
    var enabled: THPMode
    var useZeroPage: Bool

    /// The bracketed word of an "always [madvise] never" line.
    static func selected(_ line: String) -> String? {
        guard let open = line.firstIndex(of: "["), let close = line.firstIndex(of: "]"), open < close else { return nil }
        return String(line[line.index(after: open)..<close])
    }

    static func parse(enabled: String, useZeroPage: String) -> KernelTHPSettings? {
        let mode: THPMode
        switch selected(enabled) {
        case "always": mode = .always
        case "madvise": mode = .madvise
        case "never": mode = .never
        default: return nil
        }
        return KernelTHPSettings(enabled: mode, useZeroPage: useZeroPage.trimmingCharacters(in: .whitespacesAndNewlines) == "1")
    }

    static func read() -> KernelTHPSettings? {
        let dir = "/sys/kernel/mm/transparent_hugepage/"
        guard let e = readProcText(dir + "enabled") else { return nil }
        let z = readProcText(dir + "use_zero_page") ?? "0"
        return parse(enabled: e, useZeroPage: z)
    }
}

/// A real anonymous private mapping, PMD aligned, unmapped at cleanup.
final class KernelAnonMapping: @unchecked Sendable {
    let address: UInt
    private(set) var ranges: [(UInt, Int)]

    init(length: Int) throws {
        let pmd = 2 << 20
        guard let raw = mmap(nil, length + pmd, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0),
              raw != MAP_FAILED else {
            throw NSError(domain: "mmap(MAP_PRIVATE|MAP_ANONYMOUS): \(errnoName(errno))", code: Int(errno))
        }
        let start = UInt(bitPattern: raw)
        let aligned = (start + UInt(pmd) - 1) & ~UInt(pmd - 1)
        if aligned > start { munmap(raw, Int(aligned - start)) }
        let tail = start + UInt(length + pmd) - (aligned + UInt(length))
        if tail > 0 { munmap(UnsafeMutableRawPointer(bitPattern: aligned + UInt(length)), Int(tail)) }
        address = aligned
        ranges = [(aligned, length)]
    }

    func madvise(_ advice: Int32) -> Int32 {
        for (a, l) in ranges where Glibc.madvise(UnsafeMutableRawPointer(bitPattern: a), l, advice) != 0 { return errno }
        return 0
    }

    func read(_ offset: Int) -> UInt8 {
        UnsafeRawPointer(bitPattern: address + UInt(offset))!.load(as: UInt8.self)
    }

    func write(_ offset: Int, _ v: UInt8) {
        UnsafeMutableRawPointer(bitPattern: address + UInt(offset))!.storeBytes(of: v, as: UInt8.self)
    }

    /// munmap of [offset, +length) inside the mapping.
    func unmap(_ offset: Int, _ length: Int) -> Int32 {
        munmap(UnsafeMutableRawPointer(bitPattern: address + UInt(offset)), length) == 0 ? 0 : errno
    }

    func unmapAll(_ length: Int) { munmap(UnsafeMutableRawPointer(bitPattern: address), length) }

    /// pagemap entries of `count` pages from `offset`.
    func pagemap(_ offset: Int, count: Int) throws -> [PagemapEntry] {
        try Pagemap.entries(at: address + UInt(offset), count: count)
    }

    /// AnonHugePages (kB) and Rss (kB) summed over the smaps entries that
    /// overlap [offset, +length).
    func smaps(_ offset: Int, _ length: Int) throws -> (anonHuge: Int, rss: Int) {
        guard let text = readProcText("/proc/self/smaps") else {
            throw NSError(domain: "read /proc/self/smaps: \(errnoName(errno))", code: Int(errno))
        }
        let lo = address + UInt(offset), hi = lo + UInt(length)
        var huge = 0, rss = 0
        for e in SmapsEntry.parse(text) where e.start < hi && e.end > lo {
            huge += e.anonHugePages ?? 0
            rss += e.rss
        }
        return (huge / 1024, rss / 1024)
    }
}

/// The port's side: a kernel with ordinary memory, the kernel's THP
/// settings, and one private anonymous mapping.
private func portAnon(_ t: TestContext, length: UInt64, hugepage: Bool, settings: KernelTHPSettings?) throws -> (AnonMachine, UInt64) {
    let m = try t.must("a port kernel with ordinary memory") { try AnonMachine() }
    if let settings {
        m.kernel.transparentHugepage = settings.enabled
        m.kernel.thpUseZeroPage = settings.useZeroPage
    }
    let a = try t.must("the port's mmap(MAP_PRIVATE|MAP_ANONYMOUS)") { try m.map(length, hugepage: hugepage) }
    if !hugepage { try t.must("the port's MADV_NOHUGEPAGE") { try m.mm.madvise(a, length, .noHugepage) } }
    return (m, a)
}

enum DiffAnon {
    /// diff-anon-zero-page: a read fault maps the zero page on both sides
    /// (pagemap present, kpageflags ZERO_PAGE; the port's special PTE of the
    /// zero pfn), with no rss; a write then maps an anon page mapped once
    /// (pagemap exclusive, kpagecount 1; the port's mapcount 1 and
    /// PageAnonExclusive), Rss 4 kB.
    static func zeroPage(_ t: TestContext) throws {
        try t.require(Pagemap.pfnsVisible(), "pagemap shows pfns (CAP_SYS_ADMIN)")
        let len = 64 << 10
        let km = try t.must("mmap 64 KiB MAP_PRIVATE|MAP_ANONYMOUS") { try KernelAnonMapping(length: len) }
        t.atCleanup("munmap") { km.unmapAll(len) }
        _ = km.madvise(MADV_NOHUGEPAGE)
        let (m, a) = try portAnon(t, length: UInt64(len), hugepage: false, settings: nil)

        _ = km.read(0)
        t.expectEqual(m.mm.handleFault(a, write: false), 0, "the port's read fault")
        let ke = try t.must("pagemap") { try km.pagemap(0, count: 1)[0] }
        let kflags = ke.pfn.flatMap { KPageFlags.of(pfn: $0) }
        t.log("kernel after the read: pagemap \(ke), kpageflags \(kflags.map(\.description) ?? "none")")
        let pz = m.pte(a)
        t.compare("a read fault maps a present page", port: entryPresent(pz), kernel: ke.present)
        t.compare("the page read is the zero page", port: entryPresent(pz) && isZeroPfn(entryPfn(pz)),
                  kernel: kflags?.isZeroPage ?? false)
        t.compare("the zero page is not anon", port: pfnToPage(m.k, entryPfn(pz)).folio.isAnon, kernel: kflags?.isAnon ?? true)
        let krss = try t.must("smaps") { try km.smaps(0, len).rss }
        t.compare("Rss after the read (kB)", port: Int(m.mm.rssAnonPages) * 4, kernel: krss)

        km.write(4096, 1)
        t.expectEqual(m.mm.handleFault(a + 4096, write: true), 0, "the port's write fault")
        let kw = try t.must("pagemap") { try km.pagemap(4096, count: 1)[0] }
        let wflags = kw.pfn.flatMap { KPageFlags.of(pfn: $0) }
        let wcount = kw.pfn.flatMap { KPageFlags.count(pfn: $0) }
        t.log("kernel after the write: pagemap \(kw), kpageflags \(wflags.map(\.description) ?? "none"), kpagecount \(wcount.map(String.init) ?? "none")")
        let pf = try t.require(m.folio(at: a + 4096), "the port's written folio")
        t.compare("the written page is anon", port: pf.isAnon, kernel: wflags?.isAnon ?? false)
        t.compare("the written page is not the zero page", port: isZeroPfn(entryPfn(m.pte(a + 4096))), kernel: wflags?.isZeroPage ?? true)
        t.compare("the written page is exclusively mapped (pagemap bit 56 / mapcount 1)", port: pf.mapcount == 1, kernel: kw.exclusive)
        t.compare("the written page's count (kpagecount / mapcount)", port: UInt64(pf.mapcount), kernel: wcount ?? 0)
        t.compare("the written page is small (no THP, not compound)", port: pf.isLarge,
                  kernel: (wflags?.isTHP ?? false) || (wflags?.isHead ?? false))
        let krss2 = try t.must("smaps") { try km.smaps(0, len).rss }
        t.compare("Rss after the write (kB)", port: Int(m.mm.rssAnonPages) * 4, kernel: krss2)
        t.expectAnonConsistent(m, after: "the zero-page scenario")
    }

    /// The kernel's THP settings, or a skip when THP is off.
    private static func thpSettings(_ t: TestContext) throws -> KernelTHPSettings {
        guard let s = KernelTHPSettings.read() else {
            try t.unsupported("no /sys/kernel/mm/transparent_hugepage/enabled: a kernel without CONFIG_TRANSPARENT_HUGEPAGE")
        }
        if s.enabled == .never { try t.unsupported("transparent_hugepage/enabled is [never]") }
        return s
    }

    /// diff-anon-thp: with MADV_HUGEPAGE, a read of a 2 MiB range maps the
    /// huge zero folio when use_zero_page is 1 (the kernel: 512 present
    /// pages of one compound zero page; the port: a read-only PMD of the
    /// huge zero pfn); a write to another 2 MiB range maps a PMD THP (the
    /// kernel: AnonHugePages 2048 kB, THP|ANON, consecutive pfns; the port:
    /// an order-9 anon folio mapped by a PMD).
    static func thp(_ t: TestContext) throws {
        try t.require(Pagemap.pfnsVisible(), "pagemap shows pfns (CAP_SYS_ADMIN)")
        let settings = try thpSettings(t)
        t.log("kernel THP: enabled \(settings.enabled), use_zero_page \(settings.useZeroPage)")
        let len = 4 << 20
        let km = try t.must("mmap 4 MiB MAP_PRIVATE|MAP_ANONYMOUS") { try KernelAnonMapping(length: len) }
        t.atCleanup("munmap") { km.unmapAll(len) }
        t.expectEqual(km.madvise(MADV_HUGEPAGE), 0, "madvise(MADV_HUGEPAGE)")
        let (m, a) = try portAnon(t, length: UInt64(len), hugepage: true, settings: settings)

        // The write first: whether the kernel had an order-9 page decides the rest.
        km.write(2 << 20, 1)
        t.expectEqual(m.mm.handleFault(a + UInt64(pmdSize), write: true), 0, "the port's write fault")
        let kw = try t.must("pagemap") { try km.pagemap(2 << 20, count: 512) }
        let (huge, _) = try t.must("smaps") { try km.smaps(2 << 20, 2 << 20) }
        guard huge == 2048 else {
            try t.skip("the kernel mapped no THP for the write (AnonHugePages \(huge) kB): no free order-9 page, allocation-dependent")
        }
        let head = try t.require(kw[0].pfn, "the kernel's THP pfn")
        let hflags = KPageFlags.of(pfn: head)
        t.log("kernel THP head: pfn \(hex(head)), kpageflags \(hflags.map(\.description) ?? "none")")
        let pf = try t.require(m.folio(at: a + UInt64(pmdSize)), "the port's THP")
        t.compare("a write maps a PMD THP (AnonHugePages kB)", port: entryLeaf(m.pmd(a + UInt64(pmdSize))) ? 2048 : 0, kernel: huge)
        t.compare("the THP is anon, THP, compound head", port: pf.isAnon && pf.order == pmdOrder && !pf.head.isTail,
                  kernel: (hflags?.isAnon ?? false) && (hflags?.isTHP ?? false) && (hflags?.isHead ?? false))
        t.compare("the 512 pages are consecutive pfns from a 2 MiB aligned head", port: pageToPfn(m.k, pf.head) % 512 == 0,
                  kernel: head % 512 == 0 && kw.enumerated().allSatisfy { $0.element.pfn == head + UInt64($0.offset) })
        t.compare("the THP is exclusively mapped (pagemap bit 56 / mapcount 1)", port: pf.mapcount == 1, kernel: kw[0].exclusive)

        // The read.
        _ = km.read(0)
        t.expectEqual(m.mm.handleFault(a, write: false), 0, "the port's read fault")
        let kr = try t.must("pagemap") { try km.pagemap(0, count: 512) }
        let rflags = kr[0].pfn.flatMap { KPageFlags.of(pfn: $0) }
        t.log("kernel after the read: pagemap \(kr[0]), kpageflags \(rflags.map(\.description) ?? "none")")
        let zp = m.pmd(a)
        let portHugeZero = entryLeaf(zp) && isHugeZeroPfn(m.k, entryPfn(zp))
        let kernelZero = rflags?.isZeroPage ?? false
        t.compare("a read maps a zero page", port: portHugeZero || isZeroPfn(entryPfn(m.pte(a))), kernel: kernelZero)
        if settings.useZeroPage {
            let kernelHugeZero = kernelZero && (rflags?.isHead ?? false || rflags?.isTHP ?? false)
            if !kernelHugeZero {
                try t.skip("use_zero_page is 1 but the kernel mapped a small zero page (the huge zero folio could not be allocated)")
            }
            t.compare("use_zero_page=1: the read maps the huge zero folio", port: portHugeZero, kernel: kernelHugeZero)
            t.compare("the huge zero mapping covers 2 MiB of consecutive pfns",
                      port: portHugeZero,
                      kernel: kr.enumerated().allSatisfy { (i, e) in e.pfn != nil && e.pfn == kr[0].pfn.map { $0 + UInt64(i) } })
        } else {
            t.compare("use_zero_page=0: the read maps the small zero page", port: !entryLeaf(zp) && isZeroPfn(entryPfn(m.pte(a))),
                      kernel: kernelZero && !(rflags?.isTHP ?? false))
        }
        let (hugeAfter, _) = try t.must("smaps") { try km.smaps(0, len) }
        t.compare("AnonHugePages after the read (kB; the huge zero folio is not counted)",
                  port: Int(m.anonThps) * 4, kernel: hugeAfter)
        t.expectAnonConsistent(m, after: "the THP scenario")
    }

    /// diff-anon-thp-split: munmap of one 4K page of a THP: both sides keep
    /// 511 pages mapped, the THP is PTE-mapped (AnonHugePages 0, the folio
    /// still compound: kpageflags THP on its head), every remaining page
    /// exclusively mapped, the pfns unchanged.
    static func thpSplit(_ t: TestContext) throws {
        try t.require(Pagemap.pfnsVisible(), "pagemap shows pfns (CAP_SYS_ADMIN)")
        let settings = try thpSettings(t)
        let len = 2 << 20
        let km = try t.must("mmap 2 MiB MAP_PRIVATE|MAP_ANONYMOUS") { try KernelAnonMapping(length: len) }
        t.atCleanup("munmap") { km.unmapAll(len) }
        t.expectEqual(km.madvise(MADV_HUGEPAGE), 0, "madvise(MADV_HUGEPAGE)")
        let (m, a) = try portAnon(t, length: UInt64(len), hugepage: true, settings: settings)
        km.write(0, 1)
        t.expectEqual(m.mm.handleFault(a, write: true), 0, "the port's write fault")
        let (huge0, _) = try t.must("smaps") { try km.smaps(0, len) }
        guard huge0 == 2048 else {
            try t.skip("the kernel mapped no THP for the write (AnonHugePages \(huge0) kB): no free order-9 page, allocation-dependent")
        }
        let head = try t.require(try km.pagemap(0, count: 1)[0].pfn, "the kernel's THP pfn")
        let pf = try t.require(m.folio(at: a), "the port's THP")
        let hole = 5 * 4096
        t.expectEqual(km.unmap(hole, 4096), 0, "munmap of 4K inside the kernel's THP")
        try t.must("the port's munmap of 4K inside the THP") { try m.mm.munmap(a + UInt64(hole), 4096) }

        let kp = try t.must("pagemap") { try km.pagemap(0, count: 512) }
        let kernelPresent = kp.filter(\.present).count
        var portPresent = 0
        for i in 0..<512 where entryPresent(m.pte(a + UInt64(i) * 4096)) { portPresent += 1 }
        t.compare("pages still mapped", port: portPresent, kernel: kernelPresent)
        let (huge, _) = try t.must("smaps") { try km.smaps(0, len) }
        t.compare("AnonHugePages after the split (kB)", port: entryLeaf(m.pmd(a)) ? 2048 : 0, kernel: huge)
        t.compare("the remaining pages keep their pfns (head + i)",
                  port: (0..<512).filter { $0 != 5 }.allSatisfy { entryPfn(m.pte(a + UInt64($0) * 4096)) == pageToPfn(m.k, pf.page($0)) },
                  kernel: kp.enumerated().filter { $0.offset != 5 }.allSatisfy { $0.element.pfn == head + UInt64($0.offset) })
        t.compare("every remaining page is exclusively mapped (pagemap bit 56 / per-page mapcount 1)",
                  port: (0..<512).filter { $0 != 5 }.allSatisfy { pf.page($0).pageMapcount == 1 },
                  kernel: kp.enumerated().filter { $0.offset != 5 }.allSatisfy { $0.element.exclusive })
        let hflags = KPageFlags.of(pfn: head)
        t.log("kernel THP head after the split: kpageflags \(hflags.map(\.description) ?? "none")")
        if hflags?.isTHP == true {
            t.compare("the folio is still one THP, only PTE-mapped (deferred split)", port: pf.order == pmdOrder && pf.isPartiallyMapped,
                      kernel: hflags?.isHead ?? false)
        } else {
            t.log("the kernel's deferred split already split the folio (shrinker): not compared")
        }
        t.expect((0..<512).filter { $0 != 5 }.allSatisfy { pf.page($0).isAnonExclusive },
                 "the port propagated PageAnonExclusive to every remaining page")
        t.expectAnonConsistent(m, after: "the split scenario")
    }
}
