// Differential check of MAP_PRIVATE fs-dax copy-on-write: a file on an
// ext4 -o dax mount mapped MAP_PRIVATE in the kernel, and the port's file
// over an emulated device (Binding in fs-dax mode) in a private window.
//
// The kernel is observed through /proc/self/pagemap (present, pfn, bit 56
// "exclusively mapped", bit 61 "file page"), /proc/iomem (the "Persistent
// Memory" resources the pfn is in or not), /proc/kpageflags (ANON) and
// /proc/self/smaps (Rss, Anonymous) of the mapping; the port through the
// window's translation (the pfn inside the device or inside the port's
// ordinary memory, kernel.ramRange), its folio (anon, mapcount) and its
// MM_FILEPAGES / MM_ANONPAGES. Both sides: a read fault maps the file's
// page read-only; the write that follows replaces it with an anon page
// (do_wp_page -> wp_page_copy); a write fault on a page never read copies
// too (do_cow_fault -> dax_fault_cow_page); the file's bytes never change
// and the mapping sees what it wrote.

import DAXBase
import DAXCore
import DAXDevice
import DAXRuntime
import Foundation
import MMCore

#if canImport(Glibc)
import Glibc
#endif

/// What one side shows for one page of its private mapping.
struct PrivatePageView: Equatable, CustomStringConvertible {
    var present: Bool
    /// The pfn is in the pmem (kernel) / the device (port).
    var inPmem: Bool
    var anon: Bool
    /// pagemap bit 56 / the port's mapcount == 1.
    var exclusive: Bool
    /// pagemap bit 61 / the port's folio is not anon.
    var file: Bool
    var description: String {
        "present \(present), in pmem \(inPmem), anon \(anon), exclusive \(exclusive), file \(file)"
    }
}

/// The physical ranges /proc/iomem names "Persistent Memory" (needs root
/// to show the addresses).
func persistentMemoryRanges() -> [ClosedRange<UInt64>] {
    readProcText("/proc/iomem").map(persistentMemoryRanges(iomem:)) ?? []
}

/// The "Persistent Memory" ranges of /proc/iomem's text (any nesting
/// level; a range shown as 0-0 to an unprivileged reader is left out).
func persistentMemoryRanges(iomem text: String) -> [ClosedRange<UInt64>] {
    var out: [ClosedRange<UInt64>] = []
    for line in text.split(separator: "\n") where line.contains("Persistent Memory") {
        let parts = line.split(separator: ":", maxSplits: 1)
        let bounds = parts[0].trimmingCharacters(in: .whitespaces).split(separator: "-")
        guard bounds.count == 2, let lo = UInt64(bounds[0], radix: 16), let hi = UInt64(bounds[1], radix: 16), hi > lo else { continue }
        out.append(lo...hi)
    }
    return out
}

enum DiffPrivateCow {
    static let pages = 16
    static let length = pages * 4096

    static func pattern(_ i: Int) -> UInt64 { 0x7072_6976_0000 + UInt64(i) }

    /// diff-fsdax-private-cow.
    static func run(_ t: TestContext) throws {
        try DAXRuntime.installFaultGuards()
        try t.require(Pagemap.pfnsVisible(), "pagemap shows pfns (CAP_SYS_ADMIN)")
        let pmem = persistentMemoryRanges()
        try t.require(!pmem.isEmpty, "/proc/iomem names no Persistent Memory range")
        t.log("Persistent Memory: " + pmem.map { "\(hex($0.lowerBound))-\(hex($0.upperBound))" }.joined(separator: ", "))
        let post = t.environment.kernel.hasZoneDeviceRefcountSeries

        // The kernel: a hole-free file on ext4 -o dax, mapped MAP_PRIVATE.
        let mount = try DaxMount.make(t, fs: .ext4, mkfs: DaxFilesystem.ext4.mkfsDaxSh)
        let path = "\(mount.path)/private-cow"
        let fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0o600)
        try t.require(fd >= 0, "open \(path): \(lastErrno())")
        t.atCleanup("close \(path)") { close(fd) }
        var buf = [UInt8](repeating: 0, count: length)
        for i in 0..<pages {
            buf.withUnsafeMutableBytes { $0.storeBytes(of: pattern(i), toByteOffset: i * 4096, as: UInt64.self) }
        }
        try t.require(buf.withUnsafeBytes { pwriteAll(fd, $0.baseAddress!, length, 0) } == length, "pwrite \(path): \(lastErrno())")
        t.log("\(path): S_DAX \(LibC.isDax(path).map { "\($0)" } ?? "unknown")")
        guard let raw = mmap(nil, length, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 0), raw != MAP_FAILED else {
            throw CheckAbort(message: "mmap \(path) MAP_PRIVATE: \(lastErrno())")
        }
        t.atCleanup("munmap \(path)") { munmap(raw, length) }
        let kbase = UInt64(UInt(bitPattern: raw))

        func kernelView(_ page: Int) throws -> PrivatePageView {
            let e = try t.must("pagemap") { try Pagemap.entry(at: UInt(kbase) + UInt(page * 4096)) }
            let flags = e.pfn.flatMap { KPageFlags.of(pfn: $0) }
            t.log("kernel page \(page): pagemap \(e), kpageflags \(flags.map(\.description) ?? "none")")
            let inPmem = e.pfn.map { pfn in pmem.contains { $0.contains(pfn << 12) } } ?? false
            return PrivatePageView(present: e.present, inPmem: inPmem, anon: flags?.isAnon ?? false,
                                   exclusive: e.exclusive, file: e.fileOrSharedAnon)
        }
        func kernelSmaps() throws -> (rss: Int, anon: Int) {
            let s = try t.require(try t.must("smaps") { try SmapsEntry.containing(address: UInt(kbase)) }, "no smaps entry for the mapping")
            return (s.rss / 1024, (s.other["Anonymous"] ?? 0) / 1024)
        }
        func fileWord(_ page: Int) -> UInt64 {
            var v: UInt64 = 0
            _ = pread(fd, &v, 8, off_t(page * 4096))
            return v
        }

        // The port: its file over an emulated device, a private window.
        let dev = try t.must("emulated device") { try EmulatedDevice(size: 16 << 20, align: .pte) }
        let b = try t.must("fs-dax binding") { try Binding(device: dev, mode: .fsdax, fileSize: UInt64(length)) }
        t.track(b)
        let file = try t.require(b.file, "the fs-dax binding has no file")
        try t.must("fallocate the port's file") { try file.allocate(pgoff: 0, pages: UInt64(pages)) }
        do {
            let sw = try t.must("a shared window to write the port's file") { try b.openWindow(length: UInt64(length)) }
            for i in 0..<pages {
                try t.require(guardedAccess(sw.address(UInt64(i * 4096)), write: true, value: pattern(i)).ok, "writing the port's file page \(i)")
            }
            sw.closeWindow()
        }
        let pw = try t.must("the port's private window") { try b.openPrivateWindow(length: UInt64(length)) }
        t.atCleanup("close the private window") { pw.closeWindow() }
        let devRange = dev.ranges[0].range
        let ram = try t.require(b.kernel.ramRange, "the port's kernel has no ordinary memory")

        func portView(_ page: Int) throws -> PrivatePageView {
            guard let tr = pw.translation(UInt64(page * 4096)) else {
                return PrivatePageView(present: false, inPmem: false, anon: false, exclusive: false, file: false)
            }
            let phys = tr.pfn << UInt64(pageShift)
            let folio = pfnToPage(b.kernel.withUnsafeRecord { $0 }, tr.pfn).folio
            t.log("port page \(page): \(tr), in the device \(devRange.contains(phys)), in ordinary memory \(ram.contains(phys)), anon \(folio.isAnon), mapcount \(folio.mapcount)")
            return PrivatePageView(present: true, inPmem: devRange.contains(phys), anon: folio.isAnon,
                                   exclusive: folio.mapcount == 1, file: !folio.isAnon)
        }
        func portRss() -> (rss: Int, anon: Int) {
            (Int(b.mm.rssFilePages + b.mm.rssAnonPages) * 4, Int(b.mm.rssAnonPages) * 4)
        }
        func portFileWord(_ page: Int) throws -> UInt64 {
            let sw = try t.must("a shared window to read the port's file") { try b.openWindow(length: UInt64(length)) }
            defer { sw.closeWindow() }
            return guardedAccess(sw.address(UInt64(page * 4096)), write: false).value
        }

        // 1. A read fault of page 1.
        let kr = UnsafeRawPointer(bitPattern: UInt(kbase) + 4096)!.load(as: UInt64.self)
        let pr = guardedAccess(pw.address(4096), write: false)
        t.compare("page 1 read through the private mapping", port: pr.ok ? pr.value : 0, kernel: kr)
        t.expectEqual(kr, pattern(1), "the kernel reads the file's bytes")
        let k1 = try kernelView(1), p1 = try portView(1)
        t.compare("read fault: present", port: p1.present, kernel: k1.present)
        t.compare("read fault: the pfn is the file's pmem page", port: p1.inPmem, kernel: k1.inPmem)
        t.compare("read fault: not anon", port: p1.anon, kernel: k1.anon)
        let ks1 = try kernelSmaps(), ps1 = portRss()
        t.compare("read fault: smaps Anonymous (kB) / MM_ANONPAGES", port: ps1.anon, kernel: ks1.anon)
        t.expect(b.mm.rssFilePages == 1, "the port counts the file page in MM_FILEPAGES: \(b.mm.rssFilePages)")
        if post {
            t.compare("read fault: pagemap file bit / the port's file folio", port: p1.file, kernel: k1.file)
            t.compare("read fault: exclusively mapped (pagemap bit 56 / mapcount 1)", port: p1.exclusive, kernel: k1.exclusive)
            t.compare("read fault: smaps Rss (kB) / MM_FILEPAGES + MM_ANONPAGES", port: ps1.rss, kernel: ks1.rss)
        } else {
            // Before the series the fs-dax PTE is devmap/special:
            // vm_normal_page finds no page, so pagemap has neither the file
            // nor the exclusive bit and smaps does not count it in Rss.
            t.log("kernel \(t.environment.kernel) read fault: file \(k1.file), exclusive \(k1.exclusive), Rss \(ks1.rss) kB; port: file \(p1.file), exclusive \(p1.exclusive), Rss \(ps1.rss) kB")
            t.expect(!k1.file && !k1.exclusive && ks1.rss == 0,
                     "the pre-series kernel: no file bit, no exclusive bit, Rss 0 for the DAX PTE (got file \(k1.file), exclusive \(k1.exclusive), Rss \(ks1.rss))")
            t.expectFailure("kernel \(t.environment.kernel) predates the ZONE_DEVICE refcount series: an fs-dax PTE is devmap, so vm_normal_page finds no page and pagemap shows neither the file nor the exclusive bit and smaps no Rss for the private read; the port follows the series (a file folio mapped once, MM_FILEPAGES 1)")
        }

        // 2. The write to page 1: a copy.
        let kw: UInt64 = 0x636f_7079_0001
        UnsafeMutableRawPointer(bitPattern: UInt(kbase) + 4096)!.storeBytes(of: kw, as: UInt64.self)
        let pwr = guardedAccess(pw.address(4096), write: true, value: kw)
        t.expect(pwr.ok, "the port's write to page 1: \(pwr)")
        let k2 = try kernelView(1), p2 = try portView(1)
        t.compare("write after read: present", port: p2.present, kernel: k2.present)
        t.compare("write after read: the pfn is in pmem", port: p2.inPmem, kernel: k2.inPmem)
        t.compare("write after read: anon", port: p2.anon, kernel: k2.anon)
        t.compare("write after read: exclusively mapped", port: p2.exclusive, kernel: k2.exclusive)
        t.compare("write after read: pagemap file bit", port: p2.file, kernel: k2.file)
        t.expect(p2.present && !p2.inPmem && p2.anon, "the port's copy is an anon page of its ordinary memory: \(p2)")
        let ks2 = try kernelSmaps(), ps2 = portRss()
        t.compare("write after read: smaps Rss (kB)", port: ps2.rss, kernel: ks2.rss)
        t.compare("write after read: smaps Anonymous (kB)", port: ps2.anon, kernel: ks2.anon)
        t.compare("the mapping sees the written word",
                  port: guardedAccess(pw.address(4096), write: false).value,
                  kernel: UnsafeRawPointer(bitPattern: UInt(kbase) + 4096)!.load(as: UInt64.self))
        t.compare("the file's page 1 keeps its bytes (pread / a shared window)", port: try portFileWord(1), kernel: fileWord(1))
        t.expectEqual(fileWord(1), pattern(1), "the kernel's file keeps its bytes")

        // 3. A write fault on page 3, never read.
        let kw3: UInt64 = 0x636f_7079_0003
        UnsafeMutableRawPointer(bitPattern: UInt(kbase) + 3 * 4096)!.storeBytes(of: kw3, as: UInt64.self)
        t.expect(guardedAccess(pw.address(3 * 4096), write: true, value: kw3).ok, "the port's write to page 3")
        let k3 = try kernelView(3), p3 = try portView(3)
        t.compare("write fault on a never-read page: present", port: p3.present, kernel: k3.present)
        t.compare("write fault on a never-read page: the pfn is in pmem", port: p3.inPmem, kernel: k3.inPmem)
        t.compare("write fault on a never-read page: anon", port: p3.anon, kernel: k3.anon)
        t.compare("write fault on a never-read page: exclusively mapped", port: p3.exclusive, kernel: k3.exclusive)
        let ks3 = try kernelSmaps(), ps3 = portRss()
        t.compare("after both writes: smaps Rss (kB)", port: ps3.rss, kernel: ks3.rss)
        t.compare("after both writes: smaps Anonymous (kB)", port: ps3.anon, kernel: ks3.anon)
        t.compare("the file's page 3 keeps its bytes", port: try portFileWord(3), kernel: fileWord(3))
        t.compare("the mapping's page 3 word", port: guardedAccess(pw.address(3 * 4096), write: false).value,
                  kernel: UnsafeRawPointer(bitPattern: UInt(kbase) + 3 * 4096)!.load(as: UInt64.self))
        // The port's invariants over the binding (its only MM and pgmap, so
        // the global anon counters too) after the copies.
        t.expectCowConsistent(b.kernel, mms: [b.mm], pgmaps: b.pgmap.map { [$0] } ?? [], after: "the private copy-on-write")
    }
}
