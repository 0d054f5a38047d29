import SystemPackage
import Testing
@testable import DAXDevice
import DAXBase

/// The embedded device follows device-dax's mmap rules (check_vma,
/// dax_get_unmapped_area): shared only, aligned start and end, aligned address.
@Suite("Emulated device mapping rules")
struct EmulatedDeviceTests {
    @Test(arguments: DaxAlign.allCases)
    func sharedMappingsAreAlignedAndHoldData(align: DaxAlign) throws {
        let a = UInt64(align.bytes)
        let dev = try EmulatedDevice(size: 2 * a, align: align)
        #expect(dev.kind == .emulated)
        #expect(dev.size == 2 * a)
        let m = try dev.map()
        #expect(m.length == 2 * a)
        #expect(m.address % UInt(a) == 0, "address \(m.address) not \(align)-aligned")
        let r = try PatternCheck.run(m, bytes: min(2 * a, 8 << 20))
        #expect(r.alignPages >= 1)
        // A second shared mapping of the second page sees what the first wrote there.
        let first = m.baseAddress.load(fromByteOffset: Int(a), as: UInt64.self)
        let m2 = try dev.map(offset: a, length: a)
        #expect(m2.address % UInt(a) == 0)
        if a <= 8 << 20 {
            #expect(m2.baseAddress.load(as: UInt64.self) == first)
        }
        m2.baseAddress.storeBytes(of: 0xfeed_f00d, as: UInt64.self)
        #expect(m.baseAddress.load(fromByteOffset: Int(a), as: UInt64.self) == 0xfeed_f00d)
    }

    @Test func privateMappingIsRefusedWithEINVAL() throws {
        let dev = try EmulatedDevice(size: 4 << 20, align: .pmd)
        #expect(throws: DeviceError.self) { try dev.map(offset: 0, length: 2 << 20, options: .private) }
        do {
            _ = try dev.map(offset: 0, length: 2 << 20, options: [.private])
        } catch {
            #expect(error.errno == .invalidArgument)
            #expect(error.description.contains("MAP_PRIVATE"))
        }
    }

    static let misaligned: [(UInt64, UInt64)] = [
        (0, 4096),              // length not a multiple of 2M
        (4096, 2 << 20),        // offset not a multiple of 2M
        (0, (2 << 20) + 4096),  // end not aligned
    ]

    @Test(arguments: misaligned)
    func misalignedRequestsAreRefusedWithEINVAL(offset: UInt64, length: UInt64) throws {
        let dev = try EmulatedDevice(size: 8 << 20, align: .pmd)
        do {
            _ = try dev.map(offset: offset, length: length)
            Issue.record("misaligned request accepted")
        } catch {
            guard case .mapFailed(_, _, let e, let why) = error else { Issue.record("\(error)"); return }
            #expect(e == .invalidArgument)
            #expect(why.contains("multiples of the device alignment 2M"))
        }
    }

    @Test func rangesPastTheEndAndZeroLengthAreRefused() throws {
        let dev = try EmulatedDevice(size: 4 << 20, align: .pmd)
        for (off, len) in [(UInt64(2 << 20), UInt64(4 << 20)), (6 << 20, 2 << 20), (0, 0)] {
            #expect(throws: DeviceError.self) { try dev.map(offset: off, length: len) }
        }
    }

    @Test func syncAndPopulateAreAccepted() throws {
        let dev = try EmulatedDevice(size: 2 << 20, align: .pmd)
        let m = try dev.map(offset: 0, length: 2 << 20, options: [.shared, .sync, .populate])
        m.baseAddress.storeBytes(of: 7, as: UInt64.self)
        #expect(m.baseAddress.load(as: UInt64.self) == 7)
    }

    @Test func physicalAddressesFollowTheBase() throws {
        let dev = try EmulatedDevice(size: 4 << 20, align: .pmd, base: 0x1_0000_0000)
        #expect(dev.ranges == [DevDaxRange(pgoff: 0, range: PhysicalRange(start: 0x1_0000_0000, size: 4 << 20))])
        #expect(dev.physicalAddress(ofOffset: 0x1234) == 0x1_0000_1234)
        #expect(dev.physicalAddress(ofOffset: 4 << 20) == nil)
    }

    @Test func constructionErrors() {
        #expect(throws: DeviceError.zeroSize(device: "emulated:size=0,align=2M")) { try EmulatedDevice(size: 0) }
        #expect(throws: DeviceError.self) { try EmulatedDevice(size: 3 << 20, align: .pmd) }
        #expect(throws: DeviceError.self) { try EmulatedDevice(size: 2 << 20, align: .pmd, base: 0x1000) }
    }

    @Test func unmapIsIdempotentAndDevicesAreIndependent() throws {
        let a = try EmulatedDevice(size: 2 << 20, align: .pmd)
        let b = try EmulatedDevice(size: 2 << 20, align: .pmd)
        let ma = try a.map(), mb = try b.map()
        ma.baseAddress.storeBytes(of: 1, as: UInt64.self)
        mb.baseAddress.storeBytes(of: 2, as: UInt64.self)
        #expect(ma.baseAddress.load(as: UInt64.self) == 1)
        ma.unmap()
        ma.unmap()
        #expect(mb.baseAddress.load(as: UInt64.self) == 2)
    }

    /// The scoped accessor lends exactly the mapped range: its bytes are the
    /// device's at `offset` (a second mapping of the same offset sees a store).
    @Test func withUnsafeMutableBytesLendsTheMappedRange() throws {
        let dev = try EmulatedDevice(size: 4 << 20, align: .pmd)
        let whole = try dev.map()
        let upper = try dev.map(offset: 2 << 20, length: 2 << 20)
        let count = upper.withUnsafeMutableBytes { bytes in
            bytes.storeBytes(of: 0xda7a_0001 as UInt64, toByteOffset: 8, as: UInt64.self)
            return bytes.count
        }
        #expect(count == 2 << 20)
        let seen = whole.withUnsafeMutableBytes { $0.load(fromByteOffset: (2 << 20) + 8, as: UInt64.self) }
        #expect(seen == 0xda7a_0001)
    }
}

@Suite("Pattern check")
struct PatternCheckTests {
    /// The check must fail when memory does not hold what was written, and
    /// name the device offset.
    @Test func detectsWrongData() throws {
        let dev = try EmulatedDevice(size: 4 << 20, align: .pmd)
        let m = try dev.map()
        let r = try PatternCheck.run(m)
        #expect(r.bytes == 4 << 20 && r.alignPages == 2)
        try PatternCheck.verify(m)
        // A stale word, as a page mapped at the wrong offset would leave.
        m.baseAddress.storeBytes(of: 0, toByteOffset: (3 << 20) + 8, as: UInt64.self)
        do {
            try PatternCheck.verify(m)
            Issue.record("corruption not detected")
        } catch {
            #expect(error.offset == (3 << 20) + 8)
            #expect(error.found == 0)
            #expect(error.description.contains("0x300008"))
        }
        #expect(PatternCheck.word(offset: 0, seed: 1) != PatternCheck.word(offset: 8, seed: 1))
        #expect(PatternCheck.word(offset: 0, seed: 1) != PatternCheck.word(offset: 4096, seed: 1))
    }
}
