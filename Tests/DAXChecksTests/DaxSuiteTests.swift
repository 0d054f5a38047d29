@testable import DAXChecks
@testable import DAXDevice
import Foundation
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// The host-testable parts of the dax suite: what the real-device tests
/// compute from ndctl's, daxctl's and fio's output and from the device
/// ranges, without a device.
@Suite("daxmm test: the dax suite's helpers")
struct DaxSuiteTests {
    @Test func everyAlignmentHasItsTestsAndEveryTestNeedsRoot() {
        let names = Set(DaxSuite.tests.map(\.name))
        for base in ["devdax-map-private", "devdax-odirect", "devdax-mremap", "devdax-fio"] {
            for s in ["4k", "2m", "1g"] { #expect(names.contains("\(base)-\(s)"), "missing \(base)-\(s)") }
        }
        for t in DaxSuite.tests {
            #expect(t.name.hasPrefix("devdax-"), "\(t.name)")
            #expect(t.suite == .dax)
            #expect(t.gates.contains(.root), "\(t.name) runs ndctl/daxctl or opens /dev/dax without a root gate")
            #expect(t.anchor.hasPrefix("ndctl: "), "\(t.name): \(t.anchor)")
        }
    }

    /// dax_kmem_range aligns each range inwards to the memory block size:
    /// the CI layout's ranges (guest /proc/iomem, 128M blocks).
    @Test func wholeMemoryBlocksOfTheCILayout() {
        let m128: UInt64 = 128 << 20
        #expect(DevdaxKit.wholeMemoryBlocks(start: 0x1_2060_0000, end: 0x1_2fff_ffff, blockSize: m128) == 1)  // 4K, 250M
        #expect(DevdaxKit.wholeMemoryBlocks(start: 0x1_00a0_0000, end: 0x1_1fff_ffff, blockSize: m128) == 3)  // 2M, 502M
        #expect(DevdaxKit.wholeMemoryBlocks(start: 0x1_4000_0000, end: 0x1_7fff_ffff, blockSize: m128) == 8)  // 1G
        // A range inside one block, or straddling a boundary without a
        // whole block on either side, holds none.
        #expect(DevdaxKit.wholeMemoryBlocks(start: 0x1_0010_0000, end: 0x1_07ff_ffff, blockSize: m128) == 0)
        #expect(DevdaxKit.wholeMemoryBlocks(start: 0x1_0400_0000, end: 0x1_0bff_ffff, blockSize: m128) == 0)
        // Exactly one block, and the 2G blocks of a large machine.
        #expect(DevdaxKit.wholeMemoryBlocks(start: 0x1_0000_0000, end: 0x1_07ff_ffff, blockSize: m128) == 1)
        #expect(DevdaxKit.wholeMemoryBlocks(start: 0x1_00a0_0000, end: 0x1_1fff_ffff, blockSize: 2 << 30) == 0)
        #expect(DevdaxKit.wholeMemoryBlocks(start: 5, end: 4, blockSize: m128) == 0)
    }

    @Test func namespacesFromNdctlJSON() throws {
        let list = """
        [{"dev":"namespace0.1","mode":"devdax","map":"dev","size":262144000,"uuid":"x","chardev":"dax0.1","align":4096},
         {"dev":"namespace0.3","mode":"fsdax","map":"dev","size":526385152,"uuid":"y","sector_size":512,"align":2097152,"blockdev":"pmem0.3"}]
        """
        let ns = SystemState.jsonObjects(list).compactMap(NdNamespace.init(json:))
        #expect(ns == [NdNamespace(dev: "namespace0.1", mode: "devdax", size: 262_144_000, align: 4096, chardev: "dax0.1"),
                       NdNamespace(dev: "namespace0.3", mode: "fsdax", size: 526_385_152, align: 2 << 20, blockdev: "pmem0.3")])
        // create-namespace nests the device in daxregion.
        let created = """
        {"dev":"namespace0.4","mode":"devdax","map":"dev","size":14680064,"uuid":"z",
         "daxregion":{"id":0,"size":14680064,"align":4096,"devices":[{"chardev":"dax0.4","size":14680064,"mode":"devdax"}]},"align":4096}
        """
        let one = try #require(SystemState.jsonObjects(created).compactMap(NdNamespace.init(json:)).first)
        #expect(one.chardev == "dax0.4" && one.align == 4096 && one.blockdev == nil)
        let region = try #require(NdRegion(json: ["dev": "region0", "size": 4 << 30, "available_size": 805_306_368]))
        #expect(region.maxAvailableExtent == 805_306_368, "without max_available_extent the available size stands in")
    }

    @Test func mappedLengthIsTwiceTheAlignmentOrTheDevice() {
        func dev(_ size: UInt64, _ align: UInt64) -> DaxDeviceInfo {
            DaxDeviceInfo(devname: "dax9.9", id: 9, major: 0, minor: 0, size: size, align: align, resource: 0x1_0000_0000,
                          targetNode: nil, mode: "devdax", enabled: true,
                          mappings: [DaxMappingInfo(pageOffset: 0, start: 0x1_0000_0000, end: 0x1_0000_0000 + size / 2 - 1),
                                     DaxMappingInfo(pageOffset: size / 2 / 4096, start: 0x2_0000_0000, end: 0x2_0000_0000 + size / 2 - 1)],
                          regionID: 9)
        }
        #expect(DevdaxKit.mappedLength(dev(502 << 20, 2 << 20)) == 4 << 20)
        #expect(DevdaxKit.mappedLength(dev(1 << 30, 1 << 30)) == 1 << 30, "CI's 1G device is 1G: the whole device")
        #expect(DevdaxKit.mappedLength(dev(250 << 20, 4096)) == 8192)
        // Device offsets through its two ranges.
        let d = dev(64 << 20, 2 << 20)
        #expect(DevdaxKit.physical(d, offset: 0) == 0x1_0000_0000)
        #expect(DevdaxKit.physical(d, offset: (32 << 20) - 1) == 0x1_0000_0000 + (32 << 20) - 1)
        #expect(DevdaxKit.physical(d, offset: 32 << 20) == 0x2_0000_0000)
        #expect(DevdaxKit.physical(d, offset: 64 << 20) == nil)
    }

    @Test func thePatternCatchesOneWrongWord() {
        let bytes = 64 << 10
        let p = UnsafeMutableRawPointer.allocate(byteCount: bytes, alignment: 4096)
        defer { p.deallocate() }
        DevdaxKit.fillPattern(p, bytes: bytes, offset: 0x20_0000, salt: 42)
        #expect(DevdaxKit.checkPattern(p, bytes: bytes, offset: 0x20_0000, salt: 42) == nil)
        #expect(DevdaxKit.checkPattern(p, bytes: bytes, offset: 0x20_0000, salt: 43) != nil, "another salt")
        #expect(DevdaxKit.checkPattern(p, bytes: bytes, offset: 0x20_1000, salt: 42) != nil, "another offset")
        p.storeBytes(of: 0, toByteOffset: 0x3008, as: UInt64.self)
        #expect(DevdaxKit.checkPattern(p, bytes: bytes, offset: 0x20_0000, salt: 42)?.0 == 0x20_3008)
    }

    /// ndctl's VERIFY_TIME: 60 us per 4K of the alignment rounded up to 2M.
    @Test func ndctlVerifyBound() {
        #expect(ReconfigureChecks.ndctlVerifyBoundMicros(4096) == 30_720)
        #expect(ReconfigureChecks.ndctlVerifyBoundMicros(2 << 20) == 30_720)
        #expect(ReconfigureChecks.ndctlVerifyBoundMicros(1 << 30) == 15_728_640)
    }

    @Test func fioJobsFromItsJSON() throws {
        let out = """
        note: both iodepth >= 1 and synchronous I/O engine are selected, queue depth will be capped at 1
        {"fio version":"fio-3.33","jobs":[
          {"jobname":"write","error":0,"read":{"io_bytes":33554432},"write":{"io_bytes":33554432}},
          {"jobname":"read","error":84,"read":{"io_bytes":2097152},"write":{"io_bytes":0}}]}
        """
        let jobs = try #require(FioCheck.parseJobs(out))
        #expect(jobs == [FioCheck.Job(name: "write", error: 0, readBytes: 32 << 20, writeBytes: 32 << 20),
                         FioCheck.Job(name: "read", error: 84, readBytes: 2 << 20, writeBytes: 0)])
        #expect(FioCheck.parseJobs("fio: no JSON") == nil)
        let argv = FioCheck.arguments(path: "/dev/dax0.2", size: 1 << 30)
        #expect(argv.contains("--size=1073741824") && argv.contains("--io_size=\(FioCheck.ioBytes)"))
        #expect(argv.firstIndex(of: "--stonewall")! > argv.firstIndex(of: "--name=read")!)
    }

    /// The handler for a SIGBUS that arrives as a system call returns records
    /// its siginfo and lets the call's caller go on.
    @Test func aSyscallSIGBUSIsRecorded() {
        let (rc, caught) = SyscallSIGBUS.catching { raise(SIGBUS) }
        #expect(rc == 0)
        #expect(caught.count == 1)
        #expect(caught.code == SI_TKILL, "raise() sends with si_code SI_TKILL")
        let (_, none) = SyscallSIGBUS.catching { 0 }
        #expect(none.count == 0)
    }
}
