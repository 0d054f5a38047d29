// fs-dax mode: the port's extent store over the device's memory, its file
// mapped in a window. Holes read from the real zero page, writes allocate
// device blocks, and truncate, hole punch and dax_break_layout through the
// port unmap the host extents.

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

@Suite("fs-dax windows over the emulated device")
struct FSDaxWindowTests {
    @Test("a read of a hole maps the shared zero page read-only; a write then maps the allocated block")
    func holeThenWrite() throws {
        let dev = try EmulatedDevice(size: 32 << 20, align: .pte)
        let b = try Binding(device: dev, mode: .fsdax, fileSize: 8 << 20)
        let file = try #require(b.file)
        let w = try b.openWindow(length: 8 << 20)
        let rd = guardedAccess(w.address(4096 * 5), write: false)
        #expect(rd.ok && rd.value == 0)
        let t0 = try #require(w.translation(4096 * 5))
        #expect(t0.pfn == 0 && !t0.writable)
        #expect(b.mirrorStats.zeroMaps == [1, 0, 0])
        #expect(file.block(at: 5) == nil)
        #expect(guardedAccess(w.address(4096 * 5 + 16), write: true, value: 0xabc).ok)
        let block = try #require(file.block(at: 5))
        let t1 = try #require(w.translation(4096 * 5))
        #expect(t1.pfn == (dev.ranges[0].range.start >> 12) + block)
        #expect(t1.writable)
        #expect(try deviceWord(dev, offset: block * 4096 + 16) == 0xabc)
        #expect(b.checkInvariants().isEmpty, "\(b.checkInvariants())")
    }

    @Test("write faults on an allocated 2 MiB-aligned extent map a PMD")
    func pmdExtent() throws {
        let dev = try EmulatedDevice(size: 64 << 20, align: .pte)
        let b = try Binding(device: dev, mode: .fsdax, fileSize: 16 << 20)
        let file = try #require(b.file)
        try file.allocate(pgoff: 0, pages: 4096)
        let w = try b.openWindow(length: 16 << 20)
        #expect(guardedAccess(w.address((2 << 20) + 64), write: true, value: 42).ok)
        let t = try #require(w.translation((2 << 20) + 64))
        #expect(t.level == .pmd)
        #expect(b.mirrorStats.maps[1] == 1)
        let block = try #require(file.block(at: 512))
        #expect(try deviceWord(dev, offset: block * 4096 + 64) == 42)
        #expect(b.checkInvariants().isEmpty, "\(b.checkInvariants())")
    }

    @Test("truncate through the port unmaps the host extent; an access past EOF is SIGBUS")
    func truncateUnmaps() throws {
        let dev = try EmulatedDevice(size: 32 << 20, align: .pte)
        let b = try Binding(device: dev, mode: .fsdax, fileSize: 8 << 20)
        let file = try #require(b.file)
        let w = try b.openWindow(length: 8 << 20)
        for i in 0..<8 as Range<UInt64> { #expect(guardedAccess(w.address(i << 20), write: true, value: i).ok) }
        let mapped = b.mirrorStats.maps
        #expect(mapped.reduce(0, +) >= 4)
        try file.truncate(to: 4 << 20)
        // Every extent past the new size went back to PROT_NONE: 4 PTEs, or
        // 2 PMDs when the write faults mapped whole 2 MiB extents.
        let un = b.mirrorStats.unmaps
        #expect(un[0] * 4096 + un[1] * (2 << 20) >= 4 << 20, "\(un) after maps \(mapped)")
        #expect(w.translation(6 << 20) == nil)
        let r = guardedAccess(w.address(6 << 20), write: false)
        #expect(r.signal == SIGBUS)
        #expect(w.takeReports().map(\.kind) == [.portSigbus])
        #expect(guardedAccess(w.address(1 << 20), write: false).value == 1)
        #expect(b.checkInvariants().isEmpty, "\(b.checkInvariants())")
    }

    @Test("hole punch through the port: the extent is unmapped and reads back zero from the zero page")
    func punchHole() throws {
        let dev = try EmulatedDevice(size: 32 << 20, align: .pte)
        let b = try Binding(device: dev, mode: .fsdax, fileSize: 4 << 20)
        let file = try #require(b.file)
        let w = try b.openWindow(length: 4 << 20)
        #expect(guardedAccess(w.address(3 * 4096), write: true, value: 7).ok)
        try file.punchHole(pgoff: 3, pages: 1)
        #expect(w.translation(3 * 4096) == nil)
        let r = guardedAccess(w.address(3 * 4096), write: false)
        #expect(r.ok && r.value == 0)
        #expect(w.translation(3 * 4096)?.pfn == 0)
        #expect(b.checkInvariants().isEmpty, "\(b.checkInvariants())")
    }

    @Test("dax_break_layout through the port unmaps every host extent of the range, faults map them again")
    func breakLayout() throws {
        let dev = try EmulatedDevice(size: 32 << 20, align: .pte)
        let b = try Binding(device: dev, mode: .fsdax, fileSize: 4 << 20)
        let file = try #require(b.file)
        let w = try b.openWindow(length: 4 << 20)
        for i in 0..<4 as Range<UInt64> { #expect(guardedAccess(w.address(i * 4096), write: true, value: 100 + i).ok) }
        try file.breakLayout(start: 0, end: 3)
        for i in 0..<4 as Range<UInt64> { #expect(w.translation(i * 4096) == nil) }
        #expect(b.mm.rssFilePages == 0)
        for i in 0..<4 as Range<UInt64> { #expect(guardedAccess(w.address(i * 4096), write: false).value == 100 + i) }
        #expect(b.checkInvariants().isEmpty, "\(b.checkInvariants())")
    }

    @Test("fs-dax mode refuses a 2M-aligned real device and a file larger than the device")
    func badFsdax() throws {
        let dev = try EmulatedDevice(size: 32 << 20, align: .pte)
        #expect(throws: RuntimeError.self) { try Binding(device: dev, mode: .fsdax, fileSize: 64 << 20) }
        #expect(throws: RuntimeError.self) { try Binding(device: dev, mode: .fsdax, fileSize: 4097) }
    }
}
