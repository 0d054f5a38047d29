import CDaxMM
import DAXBase
import Testing
@testable import DAXCore
@testable import MMCore

/// One errno vocabulary: MMError and FSError carry the kernel's errno, and
/// every description names it with the package's one errnoName.
@Suite("errno vocabulary")
struct ErrorVocabularyTests {
    @Test("errnoName names an errno and a kernel return (-errno) alike")
    func namesBothSigns() {
        #expect(errnoName(EINVAL) == "EINVAL" && errnoName(-EINVAL) == "EINVAL")
        #expect(errnoName(-ENOSPC) == "ENOSPC" && errnoName(-EREMOTEIO) == "EREMOTEIO")
        #expect(errnoName(-EACCES) == "EACCES" && errnoName(ENODEV) == "ENODEV")
        #expect(errnoName(4095) == "errno 4095")
    }

    @Test("memremap_pages' -ENOMEM (conflicting pgmap) and -EINVAL (mapped twice) surface as MMError.errno")
    func mmErrorCarriesTheErrno() throws {
        let k = try Kernel(physBits: 40)
        let a = DevPagemap(kernel: k, type: .fsDax, ranges: [PhysicalRange(start: 1 << 32, size: 2 << 20)])
        try a.memremapPages()
        let b = DevPagemap(kernel: k, type: .fsDax, ranges: [PhysicalRange(start: 1 << 32, size: 2 << 20)])
        do {
            try b.memremapPages()
            Issue.record("a conflicting pgmap was mapped")
        } catch {
            #expect(error.code == ENOMEM)
            #expect(error.description.hasPrefix("ENOMEM: "))
        }
        do {
            try a.memremapPages()
            Issue.record("a pgmap was mapped twice")
        } catch {
            guard case .errno(EINVAL, _) = error else { Issue.record("\(error)"); return }
            #expect(error.code == EINVAL && error.description.hasPrefix("EINVAL: "))
        }
        try a.memunmapPages()
    }

    @Test("the file store's errors carry ENOSPC (iomap_begin's -ENOSPC), EINVAL and EIO")
    func fsErrorCarriesTheErrno() throws {
        let k = try Kernel(physBits: 40)
        let fs = try DaxFS(kernel: k, start: 0x8000_0000, size: 4 << 20)
        let f = try fs.create(name: "big", maxSize: 8 << 20)
        let free = fs.freeBlocks
        do {
            try f.allocate(pgoff: 0, pages: 2048)
            Issue.record("allocated more blocks than the device has")
        } catch {
            #expect(error.code == ENOSPC)
            #expect(error == .errno(ENOSPC, "big: no free blocks"))
            #expect(error.description == "ENOSPC: big: no free blocks")
        }
        #expect(fs.freeBlocks < free)
        #expect(throws: FSError.errno(EINVAL, "maxSize must be a positive multiple of 4K")) {
            try fs.create(name: "odd", maxSize: 100)
        }
        try f.truncate(to: 0)
        try fs.unmount()
        do {
            _ = try fs.create(name: "late", maxSize: 4096)
            Issue.record("created a file on an unmounted file system")
        } catch {
            #expect(error.code == EIO && error.description.hasPrefix("EIO: "))
        }
        #expect(FSError.busy(file: "x", pfn: 1, refcount: 2, pincount: 1).code == EBUSY)
    }
}
