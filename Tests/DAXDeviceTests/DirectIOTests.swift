import Foundation
import SystemPackage
import Testing
@testable import DAXDevice

#if canImport(Glibc)
import Glibc
#endif

/// O_DIRECT transfers: the block layer pins the user buffer for the I/O
/// (iov_iter_extract_pages, FOLL_PIN), after the alignment checks of the
/// direct-I/O path, which this type makes up front.
@Suite("Kernel probes: O_DIRECT")
struct DirectIOTests {
    static func pattern(_ i: Int) -> UInt8 { UInt8(truncatingIfNeeded: i &* 7 &+ i >> 12 &+ 3) }

    @Test func readsTheScratchFileIntoAnAlignedBuffer() throws {
        let file = try ScratchFile.create(bytes: 64 << 10, fill: Self.pattern)
        #expect(file.size == 64 << 10)
        let dio = try DirectIO(path: file.path)
        #expect(dio.logicalBlockSize == 512 && !dio.isBlockDevice)
        let buf = UnsafeMutableRawBufferPointer.allocate(byteCount: 8192, alignment: 4096)
        defer { buf.deallocate() }
        buf.initializeMemory(as: UInt8.self, repeating: 0xee)
        #expect(try dio.read(into: buf, at: 8192) == 8192)
        #expect((0..<8192).allSatisfy { buf[$0] == Self.pattern(8192 + $0) })
        // At the end of the file the read is short.
        #expect(try dio.read(into: buf, at: UInt64(60 << 10)) == 4096)
        #expect((0..<4096).allSatisfy { buf[$0] == Self.pattern((60 << 10) + $0) })
    }

    @Test func writesGoToTheFile() throws {
        let file = try ScratchFile.create(bytes: 16 << 10)
        let dio = try DirectIO(path: file.path, writable: true)
        let buf = UnsafeMutableRawBufferPointer.allocate(byteCount: 4096, alignment: 4096)
        defer { buf.deallocate() }
        for i in 0..<4096 { buf[i] = UInt8(truncatingIfNeeded: i ^ 0x5a) }
        #expect(try dio.write(UnsafeRawBufferPointer(buf), at: 4096) == 4096)
        buf.initializeMemory(as: UInt8.self, repeating: 0)
        #expect(try DirectIO(path: file.path).read(into: buf, at: 4096) == 4096)
        #expect((0..<4096).allSatisfy { buf[$0] == UInt8(truncatingIfNeeded: $0 ^ 0x5a) })
    }

    /// A buffer, offset or length off the logical block size is refused
    /// before the call, naming what is misaligned.
    @Test func misalignedTransfersAreRefusedUpFront() throws {
        let file = try ScratchFile.create(bytes: 16 << 10)
        let dio = try DirectIO(path: file.path)
        let buf = UnsafeMutableRawBufferPointer.allocate(byteCount: 8192, alignment: 4096)
        defer { buf.deallocate() }
        let shifted = UnsafeMutableRawBufferPointer(rebasing: buf[1..<4097])
        let cases: [(UnsafeMutableRawBufferPointer, UInt64, String)] = [
            (shifted, 0, "buffer address"),
            (UnsafeMutableRawBufferPointer(rebasing: buf[0..<4096]), 100, "file offset"),
            (UnsafeMutableRawBufferPointer(rebasing: buf[0..<1000]), 0, "length"),
        ]
        for (b, off, what) in cases {
            let e = #expect(throws: DirectIOError.self) { try dio.read(into: b, at: off) }
            guard case .misaligned(let path, let w, _, let bs)? = e else {
                Issue.record("\(what): \(String(describing: e))")
                continue
            }
            #expect(path == file.path && w == what && bs == 512)
            #expect(e?.errno == .invalidArgument)
            #expect(e?.description.contains("multiples of the logical block size 512: the \(what)") == true,
                    "\(String(describing: e))")
        }
    }

    /// Directories that cannot hold the file are skipped; when none can, the
    /// last failure is the error.
    @Test func scratchFileSkipsUnusableDirectories() throws {
        let file = try ScratchFile.create(bytes: 4096, in: ["/nonexistent-daxmm-dir", "/tmp"])
        #expect(file.path.hasPrefix("/tmp/daxmm-dio-"))
        let e = #expect(throws: DirectIOError.self) {
            try ScratchFile.create(bytes: 4096, in: ["/nonexistent-daxmm-dir"])
        }
        #expect(e?.errno == .noSuchFileOrDirectory, "\(String(describing: e))")
        let path = file.path
        _ = consume file
        #expect(access(path, F_OK) != 0, "the scratch file is removed with its object")
    }

    /// A block device's alignment is its queue's logical_block_size (4096 for
    /// zram, for one), read through the device node's name.
    @Test func blockDevicesUseTheirQueuesLogicalBlockSize() throws {
        let names = (try? FileManager.default.contentsOfDirectory(atPath: "/sys/class/block")) ?? []
        var checked = 0
        for name in names where access("/dev/\(name)", F_OK) == 0 {
            guard let text = try? String(contentsOfProcFile: "/sys/class/block/\(name)/queue/logical_block_size"),
                  let expected = Int(text.trimmingSpaces()) else { continue }
            #expect(DirectIO.logicalBlockSize(ofBlockDevice: "/dev/\(name)") == expected, "\(name)")
            checked += 1
        }
        #expect(DirectIO.logicalBlockSize(ofBlockDevice: "/dev/nonexistent-daxmm-disk") == nil)
        if checked == 0 { try Test.cancel("no block device with a /dev node on this host") }
    }

    @Test func aMissingFileIsACallError() {
        let e = #expect(throws: DirectIOError.self) { try DirectIO(path: "/nonexistent-daxmm-file") }
        #expect(e?.errno == .noSuchFileOrDirectory)
    }
}
