import DAXDevice
import Foundation
import Testing
@testable import DAXChecks

/// The host side of the `diff` suite and the real-device `dax` tests: names,
/// gates, the scenarios' arithmetic, and the skips without a device.
@Suite("daxmm test: the diff suite and the real-device dax tests")
struct DiffSuiteTests {
    @Test func namesSuitesAndGates() {
        #expect(DiffSuite.tests.count == 14)
        for t in DiffSuite.tests {
            #expect(t.suite == .diff && t.name.hasPrefix("diff-"), "\(t.name)")
            // Pagemap pfns, kpageflags, ndctl and io_uring as root: every one needs it.
            #expect(t.gates.contains(.root), "\(t.name) does not need root")
        }
        for t in DaxMigratedSuite.tests {
            #expect(t.suite == .dax && t.name.hasPrefix("devdax-"), "\(t.name)")
        }
        let all = CheckRegistry.all().map(\.name)
        for t in DiffSuite.tests + DaxMigratedSuite.tests { #expect(all.contains(t.name), "\(t.name) is not registered") }
    }

    /// diff-fsdax-private-cow's pmem test: the "Persistent Memory"
    /// resources of /proc/iomem, at any level, and nothing when the
    /// addresses are hidden (0-0).
    @Test func persistentMemoryFromIomem() {
        let text = """
        00000000-00000fff : Reserved
        00100000-3ffdffff : System RAM
        100000000-1ffffffff : Persistent Memory
          100000000-11fffffff : namespace0.0
        240000000-27fffffff : Persistent Memory (legacy)
        """
        #expect(persistentMemoryRanges(iomem: text) == [0x1_0000_0000...0x1_ffff_ffff, 0x2_4000_0000...0x2_7fff_ffff])
        #expect(persistentMemoryRanges(iomem: "00000000-00000000 : Persistent Memory\n").isEmpty)
    }

    /// diff-data probes each device's first, second and last extent at
    /// aligned words inside the device, once each.
    static let devices: [(UInt64, UInt64)] = [
        (256 << 20, 4096), (502 << 20, 2 << 20), (1 << 30, 1 << 30), (2 << 30, 1 << 30),
    ]

    @Test(arguments: devices)
    func dataOffsets(size: UInt64, align: UInt64) {
        let offs = DiffData.offsets(size: size, align: align)
        #expect(!offs.isEmpty)
        #expect(offs == offs.sorted() && Set(offs).count == offs.count)
        #expect(offs.allSatisfy { $0 % 8 == 0 && $0 + 8 <= size })
        let extents = Set(offs.map { $0 / align })
        #expect(extents.contains(0) && extents.contains(size / align - 1))
        if size / align > 1 { #expect(extents.contains(1)) }
        // The kernel's words (8 bytes on) never overlap the port's.
        let second = Set(offs.map { ($0 + 0x800) % size })
        #expect(second.isDisjoint(with: offs))
    }

    /// diff-mremap-split: on a huge device the requests split inside an
    /// extent (and, with two extents, one aligned shrink); on a 4K device
    /// only the aligned shrink.
    @Test func mremapCases() {
        let two = DiffMremap.cases(2 << 20, extents: 2)
        #expect(two.count == 3)
        #expect(two.filter { ($0.old + $0.newLength) % (2 << 20) != 0 || $0.old % (2 << 20) != 0 }.count == 2)
        #expect(DiffMremap.cases(1 << 30, extents: 1).count == 2)
        let small = DiffMremap.cases(4096, extents: 2)
        #expect(small.count == 1 && small[0].newLength == 4096)
    }

    /// diff-map-errors: the cases per alignment.
    @Test func mapErrorCases() {
        let small = DiffMapErrors.cases(size: 256 << 20, align: 4096)
        #expect(!small.contains { $0.offset == 4096 }, "a 4K device has no misaligned page offset")
        let huge = DiffMapErrors.cases(size: 502 << 20, align: 2 << 20)
        #expect(huge.contains { $0.offset == 4096 })
        #expect(huge.contains { $0.length > 502 << 20 })
        #expect(huge.filter { $0.readOnly }.count == 1, "only MAP_PRIVATE is read-only")
    }

    /// Without device-dax (the host), every device diff test skips with its
    /// gate; the anonymous-memory ones run against the host kernel (as root)
    /// and pass or skip on the kernel's THP settings, never fail.
    @Test func skipsWithoutADevice() throws {
        guard ((try? FileManager.default.contentsOfDirectory(atPath: "/dev")) ?? []).allSatisfy({ !$0.hasPrefix("dax") }) else { return }
        let (rc, out, _) = try runDaxmmTest(["--suite", "diff"], selftest: false)
        let device = DiffSuite.tests.filter { !$0.name.hasPrefix("diff-anon-") }
        #expect(rc == 0 || rc == 77, "nothing failed: \(out)")
        #expect(!out.contains("FAIL "), "\(out)")
        for t in device {
            #expect(out.split(separator: "\n").contains { $0.contains(" \(t.name) ") && $0.contains("SKIP") }, "\(t.name) did not skip: \(out)")
        }
    }
}
