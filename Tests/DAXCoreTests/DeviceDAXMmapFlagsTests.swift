import CDaxMM
import DAXBase
import Testing
@testable import DAXCore
@testable import MMCore
import MMTestChecks
import MMTestSupport

/// do_mmap's MAP_* checks, sys_mmap's offset check and
/// dax_get_unmapped_area's placement, on device-dax.
@Suite("device-dax mmap: MAP_SHARED_VALIDATE, offsets, placement")
struct DeviceDAXMmapFlagsTests {
    /// do_mmap: MAP_SHARED_VALIDATE refuses a flag outside LEGACY_MAP_MASK
    /// and the file's supported flags with -EOPNOTSUPP before f_op->mmap;
    /// MAP_SHARED drops it; dax_fops supports MAP_SYNC; a MAP_TYPE that is
    /// none of the three is -EINVAL.
    @Test("do_mmap: MAP_SHARED_VALIDATE, MAP_SHARED, MAP_SYNC, MAP_TYPE")
    func mapTypeAndValidate() throws {
        let rig = try DevDaxRig(align: 2 << 20)
        let unknown: UInt32 = 0x20_0000
        func errno(_ flags: UInt32) -> Int32 {
            do {
                let a = try rig.mm.mmap(rig.dev.mmapRequest(length: 2 << 20, mapFlags: flags))
                try rig.mm.munmap(a, 2 << 20)
                return 0
            } catch { return error.code }
        }
        #expect(errno(MapFlag.sharedValidate | unknown) == EOPNOTSUPP)
        #expect(errno(MapFlag.shared | unknown) == 0)
        #expect(errno(MapFlag.sharedValidate | MapFlag.sync) == 0)
        #expect(errno(MapFlag.sharedValidate) == 0)
        #expect(errno(MapFlag.private) == EINVAL, "check_vma refuses the private mapping")
        #expect(errno(0x0f) == EINVAL, "MAP_TYPE 0xf")
        #expect(rig.mm.vmaList().isEmpty)
        // A refused MAP_SHARED_VALIDATE leaves nothing behind; an accepted
        // MAP_SYNC mapping carries VM_SYNC.
        let a = try rig.mm.mmap(rig.dev.mmapRequest(length: 2 << 20, mapFlags: MapFlag.sharedValidate | MapFlag.sync))
        #expect(rig.mm.vmaList().count == 1)
        #expect(rig.mm.vmaList()[0].pointee.vm_flags & DAX_VM_SYNC != 0)
        #expect(rig.mm.vmaList()[0].pointee.vm_flags & DAX_VM_MAYSHARE != 0)
        try rig.mm.munmap(a, 2 << 20)
        rig.check()
    }

    /// sys_mmap: a byte offset that is not page aligned is -EINVAL.
    @Test("sys_mmap: offset not page aligned -> EINVAL")
    func byteOffset() throws {
        #expect(throws: MMError.self) { try MM.mmapPageOffset(512) }
        #expect(try MM.mmapPageOffset(0x20_1000) == 0x201)
    }

    /// dax_get_unmapped_area: an offset misaligned to the device alignment
    /// gets an address misaligned the same way (when the range holds a whole
    /// extent), so check_vma refuses the mapping; an aligned offset gets an
    /// aligned address.
    @Test("dax_get_unmapped_area: misaligned offset -> misaligned address -> EINVAL", arguments: [UInt64(2 << 20), 1 << 30])
    func placement(align: UInt64) throws {
        let rig = try DevDaxRig(align: align, ranges: [PhysicalRange(start: 1 << 32, size: 2 * align)])
        let misaligned = rig.dev.unmappedAreaPlacement(length: 2 * align, pgoff: 1)
        #expect(misaligned.alignment == align && misaligned.offset == 4096)
        #expect(throws: MMError.errno(EINVAL, "mmap refused by the file's mmap handler")) {
            try rig.mm.mmap(rig.dev.mmapRequest(length: 2 * align, pgoff: 1))
        }
        // Less than one whole aligned extent past the aligned offset: any
        // page-aligned address (the length alone then fails check_vma).
        let short = rig.dev.unmappedAreaPlacement(length: align, pgoff: 1)
        #expect(short.alignment == 4096 && short.offset == 0)
        let a = try rig.mm.mmap(rig.dev.mmapRequest(length: align, pgoff: align >> 12))
        #expect(a % align == 0)
        #expect(rig.mm.vmaList().count == 1)
        try rig.mm.munmap(a, align)
        rig.check()
    }
}
