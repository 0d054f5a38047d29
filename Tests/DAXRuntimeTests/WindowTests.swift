// CPU faults in managed windows served by the port over the emulated device:
// the host maps exactly the extent the port inserted, data lands in device
// memory, and changes made through the port reach the host mapping.

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

/// Reads the device through an independent MAP_SHARED mapping.
func deviceWord(_ dev: any DaxDevice, offset: UInt64) throws -> UInt64 {
    let a = UInt64(dev.align.bytes)
    let m = try dev.map(offset: offset & ~(a - 1), length: a)
    defer { m.unmap() }
    return m.withUnsafeMutableBytes { $0.load(fromByteOffset: Int(offset & (a - 1)), as: UInt64.self) }
}

@Suite("Managed windows over the emulated device")
struct WindowTests {
    @Test("devdax 2M: a write fault maps one PMD extent on the host, the data reaches the device")
    func pmdWriteFault() throws {
        let dev = try EmulatedDevice(size: 64 << 20, align: .pmd)
        let b = try Binding(device: dev, mode: .devdax)
        let w = try b.openWindow(length: 16 << 20)
        #expect(w.translation(0) == nil)
        #expect(b.mm.rssFilePages == 0)
        let r = guardedAccess(w.address(0x1000), write: true, value: 0xfeed_0001)
        #expect(r.ok, "\(r)")
        let t = try #require(w.translation(0x1000))
        #expect(t.level == .pmd)
        let base = dev.ranges[0].range.start >> 12
        #expect(t.pfn == base + 1)
        #expect(b.mirrorStats.maps == [0, 1, 0])
        #expect(w.stats.faults == 1)
        #expect(b.mm.rssFilePages == 512)
        let f = try #require(b.folio(physical: dev.ranges[0].range.start))
        #expect(f.mapcount == 1)
        #expect(f.refCount == 2)   // one-based device-dax folio + the mapping
        // The other 511 pages of the extent: no further fault.
        #expect(guardedAccess(w.address(0x1F_F000), write: false).ok)
        #expect(w.stats.faults == 1)
        #expect(try deviceWord(dev, offset: 0x1000) == 0xfeed_0001)
        #expect(b.checkInvariants().isEmpty, "\(b.checkInvariants())")
        w.closeWindow()
        #expect(b.mirrorStats.unmaps == [0, 1, 0])
        #expect(f.mapcount == 0)
        #expect(f.refCount == 1)
        #expect(b.checkInvariants().isEmpty)
        #expect(w.takeReports().isEmpty)
    }

    @Test("devdax 4K: PTE extents, data both ways with an independent mapping")
    func pteFaults() throws {
        let dev = try EmulatedDevice(size: 8 << 20, align: .pte)
        let b = try Binding(device: dev, mode: .devdax)
        let w = try b.openWindow(length: 1 << 20, offset: 1 << 20)
        for i in 0..<16 as Range<UInt64> {
            #expect(guardedAccess(w.address(i * 4096 + 8), write: i % 2 == 0, value: 0xa000 + i).ok)
        }
        #expect(b.mirrorStats.maps == [16, 0, 0])
        #expect(w.stats.faults >= 16)
        for i in stride(from: 0, to: 16, by: 2) as StrideTo<UInt64> {
            #expect(try deviceWord(dev, offset: (1 << 20) + i * 4096 + 8) == 0xa000 + i)
        }
        let t = try #require(w.translation(4096 * 3))
        #expect(t.level == .pte)
        #expect(t.pfn == (dev.ranges[0].range.start + (1 << 20)) >> 12 + 3)
        #expect(b.checkInvariants().isEmpty, "\(b.checkInvariants())")
    }

    @Test("devdax 1G: one PUD extent")
    func pudFault() throws {
        let dev = try EmulatedDevice(size: 2 << 30, align: .pud)
        let b = try Binding(device: dev, mode: .devdax)
        let w = try b.openWindow(length: 1 << 30, offset: 1 << 30)
        #expect(guardedAccess(w.address(0x3000_0008), write: true, value: 77).ok)
        let t = try #require(w.translation(0x3000_0008))
        #expect(t.level == .pud)
        #expect(b.mirrorStats.maps == [0, 0, 1])
        #expect(try deviceWord(dev, offset: (1 << 30) + 0x3000_0008) == 77)
        #expect(b.checkInvariants().isEmpty, "\(b.checkInvariants())")
    }

    @Test("munmap through the port: the host extent goes back to PROT_NONE and an access is SIGSEGV")
    func munmapThroughPort() throws {
        let dev = try EmulatedDevice(size: 16 << 20, align: .pmd)
        let b = try Binding(device: dev, mode: .devdax)
        let w = try b.openWindow(length: 8 << 20)
        #expect(guardedAccess(w.address(2 << 20), write: true, value: 5).ok)
        try w.munmap(offset: 2 << 20, length: 2 << 20)
        #expect(b.mirrorStats.unmaps == [0, 1, 0])
        #expect(b.mm.rssFilePages == 0)
        let r = guardedAccess(w.address(2 << 20), write: false)
        #expect(r.signal == SIGSEGV)
        #expect(w.takeReports().map(\.kind) == [.portSigsegv])
        // The rest of the window still faults in.
        #expect(guardedAccess(w.address(4 << 20), write: false).ok)
        #expect(b.checkInvariants().isEmpty)
    }

    @Test("mprotect through the port: read-only refuses a write with SIGSEGV, reads still work")
    func mprotectThroughPort() throws {
        let dev = try EmulatedDevice(size: 16 << 20, align: .pmd)
        let b = try Binding(device: dev, mode: .devdax)
        let w = try b.openWindow(length: 4 << 20)
        #expect(guardedAccess(w.address(0), write: true, value: 9).ok)
        try w.mprotect(offset: 0, length: 4 << 20, [.read])
        let r = guardedAccess(w.address(8), write: true, value: 1)
        #expect(r.signal == SIGSEGV)
        let rd = guardedAccess(w.address(0), write: false)
        #expect(rd.ok && rd.value == 9)
        #expect(b.checkInvariants().isEmpty)
    }

    @Test("a fault while the same thread holds mmap_lock for write is refused and reported, not a deadlock")
    func lockHeldRefused() throws {
        let dev = try EmulatedDevice(size: 16 << 20, align: .pmd)
        let b = try Binding(device: dev, mode: .devdax)
        let w = try b.openWindow(length: 4 << 20)
        b.mm.lockWrite()
        let r = guardedAccess(w.address(0), write: false)
        b.mm.unlockWrite()
        #expect(r.signal == SIGSEGV)
        #expect(w.takeReports().map(\.kind) == [.lockHeld])
        #expect(w.stats.refused == 1)
        #expect(guardedAccess(w.address(0), write: false).ok)
    }

    @Test("kill_dev_dax under a live window: entries zapped, host extents unmapped, later faults SIGBUS")
    func deviceGone() throws {
        let dev = try EmulatedDevice(size: 16 << 20, align: .pmd)
        let b = try Binding(device: dev, mode: .devdax)
        let w = try b.openWindow(length: 8 << 20)
        for i in 0..<4 as Range<UInt64> { #expect(guardedAccess(w.address(i << 21), write: true, value: i).ok) }
        let f = try #require(b.folio(physical: dev.ranges[0].range.start))
        #expect(f.mapcount == 1)
        try b.deviceGone()
        #expect(b.mm.rssFilePages == 0)
        #expect(b.mirrorStats.unmaps == [0, 4, 0])
        #expect(w.translation(0) == nil)
        let r = guardedAccess(w.address(0), write: false)
        #expect(r.signal == SIGBUS)
        #expect(r.code == 2)   // BUS_ADRERR
        #expect(w.takeReports().map(\.kind) == [.portSigbus])
        #expect(throws: RuntimeError.self) { try b.openWindow(length: 2 << 20) }
    }

    @Test("several threads fault the same and disjoint extents at once")
    func threads() throws {
        let dev = try EmulatedDevice(size: 64 << 20, align: .pmd)
        let b = try Binding(device: dev, mode: .devdax)
        let w = try b.openWindow(length: 32 << 20)
        let nthreads = 4
        let base = w.base
        let bad = Locked([Int](repeating: -1, count: nthreads))
        runOnThreads(nthreads) { t in
            var n = 0
            // Every thread writes its own word in every page of every extent.
            for page in 0..<(32 << 20) / 4096 {
                let a = base + UInt64(page) * 4096 + UInt64(t) * 8
                if !guardedAccess(a, write: true, value: UInt64(page << 8 | t)).ok { n += 1 }
            }
            bad.withLock { $0[t] = n }
        }
        #expect(bad.withLock { $0 } == Array(repeating: 0, count: nthreads))
        #expect(b.mirrorStats.maps == [0, 16, 0])
        #expect(b.mirrorStats.errors == 0)
        for page in stride(from: 0, to: (32 << 20) / 4096, by: 97) {
            for t in 0..<nthreads {
                #expect(try deviceWord(dev, offset: UInt64(page) * 4096 + UInt64(t) * 8) == UInt64(page << 8 | t))
            }
        }
        #expect(b.checkInvariants().isEmpty, "\(b.checkInvariants())")
    }

    @Test("bad windows: size 0, misaligned size and offset, past the end")
    func badWindows() throws {
        let dev = try EmulatedDevice(size: 16 << 20, align: .pmd)
        let b = try Binding(device: dev, mode: .devdax)
        for (len, off) in [(UInt64(0), UInt64(0)), (4096, 0), (2 << 20, 4096), (32 << 20, 0), (2 << 20, 16 << 20)] {
            #expect(throws: RuntimeError.self) { try b.openWindow(length: len, offset: off) }
        }
    }
}

