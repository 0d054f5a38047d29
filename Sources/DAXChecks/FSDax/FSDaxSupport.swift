// What the fs-dax checks need from the C library and the kernel that Swift's
// Glibc import does not give: the GNU-only calls (mremap with MREMAP_FIXED,
// fallocate, statx) looked up at run time, the ioctl and mmap constants,
// FS_IOC_FIEMAP, and mappings placed at an address aligned to the PMD size.

import CDaxSys
import DAXBase
import DAXDevice

#if canImport(Glibc)
import Glibc
#endif

/// Constants of linux/mman.h, linux/falloc.h, asm-generic/siginfo.h and
/// linux/stat.h that Swift's Glibc import hides (GNU-only or too new).
enum FSDaxConst {
    static let pmdSize = 2 << 20
    static let pageSize = 4096
    /// MREMAP_MAYMOVE | MREMAP_FIXED
    static let mremapMayMove: Int32 = 1
    static let mremapFixed: Int32 = 2
    static let madvHWPoison: Int32 = 100
    static let madvSoftOffline: Int32 = 101
    static let busMCEErrAR: Int32 = 4
    static let busMCEErrAO: Int32 = 5
    static let fallocKeepSize: Int32 = 0x01
    static let fallocPunchHole: Int32 = 0x02
    static let fallocInsertRange: Int32 = 0x20
    /// STATX_BASIC_STATS and STATX_ATTR_DAX (5.8+).
    static let statxBasicStats: UInt32 = 0x7ff
    static var statxAttrDax: UInt64 { dax_statx_attr_dax() }
    static var mapSharedValidate: Int32 { dax_map_shared_validate() }
    static var mapSync: Int32 { dax_map_sync() }
    static var oDirect: Int32 { dax_o_direct() }
    /// FS_IOC_FIEMAP: _IOWR('f', 11, struct fiemap), struct fiemap being 32 bytes.
    static let fsIocFiemap: UInt = 0xC020_660B
}

/// The GNU calls Swift cannot import (variadic or behind _GNU_SOURCE),
/// resolved from the C library by name.
enum LibC {
    private typealias MremapFn = @convention(c) (UnsafeMutableRawPointer?, Int, Int, Int32,
                                                 UnsafeMutableRawPointer?) -> UnsafeMutableRawPointer?
    private typealias FallocateFn = @convention(c) (Int32, Int32, Int, Int) -> Int32
    private typealias StatxFn = @convention(c) (Int32, UnsafePointer<CChar>, Int32, UInt32,
                                                UnsafeMutableRawPointer) -> Int32

    private static func symbol<T>(_ name: String, as: T.Type) -> T? {
        // RTLD_DEFAULT is the null handle in glibc.
        guard let p = dlsym(UnsafeMutableRawPointer(bitPattern: 0), name) else { return nil }
        return unsafeBitCast(p, to: T.self)
    }

    /// mremap(old, oldSize, newSize, MREMAP_MAYMOVE|MREMAP_FIXED, new). glibc
    /// declares mremap variadic; on x86-64 the fifth argument travels in a
    /// register either way.
    static func mremapFixed(_ old: UnsafeMutableRawPointer, _ oldSize: Int, _ newSize: Int,
                            to new: UnsafeMutableRawPointer) -> (UnsafeMutableRawPointer?, Int32) {
        guard let f = symbol("mremap", as: MremapFn.self) else { return (nil, ENOSYS) }
        let r = f(old, oldSize, newSize, FSDaxConst.mremapMayMove | FSDaxConst.mremapFixed, new)
        if r == MAP_FAILED { return (nil, errno) }
        return (r, 0)
    }

    /// fallocate(2): 0 or the errno.
    static func fallocate(_ fd: Int32, mode: Int32, offset: Int, length: Int) -> Int32 {
        guard let f = symbol("fallocate", as: FallocateFn.self) else { return ENOSYS }
        return f(fd, mode, offset, length) == 0 ? 0 : errno
    }

    /// STATX_ATTR_DAX of `path`: the kernel's S_DAX (the file is accessed
    /// through DAX), or nil when statx cannot say (pre-5.8, no statx).
    static func isDax(_ path: String) -> Bool? {
        guard let f = symbol("statx", as: StatxFn.self) else { return nil }
        // struct statx is 256 bytes; stx_attributes at 8, stx_attributes_mask at 56.
        let buf = UnsafeMutableRawPointer.allocate(byteCount: 256, alignment: 8)
        defer { buf.deallocate() }
        buf.initializeMemory(as: UInt8.self, repeating: 0, count: 256)
        guard f(AT_FDCWD, path, 0, FSDaxConst.statxBasicStats, buf) == 0 else { return nil }
        let attrs = buf.load(fromByteOffset: 8, as: UInt64.self)
        let mask = buf.load(fromByteOffset: 56, as: UInt64.self)
        guard mask & FSDaxConst.statxAttrDax != 0 else { return nil }
        return attrs & FSDaxConst.statxAttrDax != 0
    }
}

/// One extent FS_IOC_FIEMAP reports: byte offsets in the file (logical)
/// and on the block device (physical).
struct FileExtent: CustomStringConvertible {
    var logical: UInt64
    var physical: UInt64
    var length: UInt64
    var flags: UInt32

    var description: String {
        "logical \(hex(logical)) physical \(hex(physical)) length \(hex(length)) flags \(hex(UInt64(flags)))"
    }

    /// The first file offset in this extent, at or after `from`, that is
    /// 2 MiB aligned in the file and on the device with `bytes` of the
    /// extent after it: where a mapping at a 2 MiB-aligned address can take
    /// PMD faults (dax_iomap_pmd_fault falls back unless the file offset,
    /// the address and the block are all PMD aligned).
    func pmdAlignedOffset(bytes: UInt64) -> UInt64? {
        let pmd = UInt64(FSDaxConst.pmdSize)
        guard logical % pmd == physical % pmd else { return nil }
        let first = (logical + pmd - 1) / pmd * pmd
        return first + bytes <= logical + length ? first : nil
    }
}

enum Fiemap {
    /// FS_IOC_FIEMAP over the whole file (FIEMAP_FLAG_SYNC unset): up to
    /// `maxExtents` extents, or the errno.
    static func extents(fd: Int32, maxExtents: Int = 64) -> Result<[FileExtent], KernelCallError> {
        let header = 32, entry = 56
        let size = header + entry * maxExtents
        let buf = UnsafeMutableRawPointer.allocate(byteCount: size, alignment: 8)
        defer { buf.deallocate() }
        buf.initializeMemory(as: UInt8.self, repeating: 0, count: size)
        buf.storeBytes(of: 0, toByteOffset: 0, as: UInt64.self)               // fm_start
        buf.storeBytes(of: UInt64.max, toByteOffset: 8, as: UInt64.self)      // fm_length
        buf.storeBytes(of: UInt32(maxExtents), toByteOffset: 24, as: UInt32.self)  // fm_extent_count
        if ioctl(fd, FSDaxConst.fsIocFiemap, buf) != 0 {
            return .failure(KernelCallError(call: "ioctl(FS_IOC_FIEMAP)", errno: .init(rawValue: errno)))
        }
        let n = Int(buf.load(fromByteOffset: 20, as: UInt32.self))             // fm_mapped_extents
        return .success((0..<min(n, maxExtents)).map { i in
            let e = header + i * entry
            return FileExtent(logical: buf.load(fromByteOffset: e, as: UInt64.self),
                              physical: buf.load(fromByteOffset: e + 8, as: UInt64.self),
                              length: buf.load(fromByteOffset: e + 16, as: UInt64.self),
                              flags: buf.load(fromByteOffset: e + 40, as: UInt32.self))
        })
    }
}

/// A host mapping placed at an address aligned to `align`: a PROT_NONE
/// reservation of `length + align` bytes, the mapping put over its aligned
/// part with MAP_FIXED, the rest given back.
final class AlignedMapping {
    let address: UnsafeMutableRawPointer
    let length: Int
    private var live = true

    var base: UInt64 { UInt64(UInt(bitPattern: address)) }

    private init(address: UnsafeMutableRawPointer, length: Int) {
        self.address = address
        self.length = length
    }

    /// An address range of `length` bytes aligned to `align`, reserved
    /// PROT_NONE (nothing maps there until a MAP_FIXED mapping replaces it).
    static func reserve(length: Int, align: Int = FSDaxConst.pmdSize) -> Result<AlignedMapping, Errnum> {
        guard let raw = mmap(nil, length + align, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0),
              raw != MAP_FAILED else { return .failure(Errnum(errno)) }
        let start = UInt(bitPattern: raw)
        let aligned = (start + UInt(align) - 1) & ~UInt(align - 1)
        if aligned > start { munmap(raw, Int(aligned - start)) }
        let tail = start + UInt(length + align) - (aligned + UInt(length))
        if tail > 0 { munmap(UnsafeMutableRawPointer(bitPattern: aligned + UInt(length)), Int(tail)) }
        return .success(AlignedMapping(address: UnsafeMutableRawPointer(bitPattern: aligned)!, length: length))
    }

    /// mmap(fd, offset) of `length` bytes at an address aligned to `align`.
    static func map(fd: Int32, length: Int, prot: Int32, flags: Int32, offset: UInt64,
                    align: Int = FSDaxConst.pmdSize) -> Result<AlignedMapping, Errnum> {
        switch reserve(length: length, align: align) {
        case .failure(let e): return .failure(e)
        case .success(let r):
            guard let p = mmap(r.address, length, prot, flags | MAP_FIXED, fd, off_t(offset)), p != MAP_FAILED else {
                let e = errno
                r.unmap()
                return .failure(Errnum(e))
            }
            return .success(r)
        }
    }

    /// The address of byte `offset`.
    func at(_ offset: Int) -> UnsafeMutableRawPointer { address + offset }
    func addr(_ offset: Int) -> UInt64 { base + UInt64(offset) }

    func unmap() {
        guard live else { return }
        live = false
        munmap(address, length)
    }

    deinit { unmap() }
}

/// An errno as an Error, printed by name.
struct Errnum: Error, CustomStringConvertible {
    let code: Int32
    init(_ code: Int32) { self.code = code }
    var description: String { errnoName(code) }
}

/// The errno of the last failed call, by name.
func lastErrno() -> String { errnoName(errno) }

/// pread/pwrite of a whole buffer at `offset`: the bytes moved or -errno.
func preadAll(_ fd: Int32, _ buf: UnsafeMutableRawPointer, _ count: Int, _ offset: UInt64) -> Int {
    var done = 0
    while done < count {
        let n = pread(fd, buf + done, count - done, off_t(offset) + off_t(done))
        if n < 0 { if errno == EINTR { continue }; return -Int(errno) }
        if n == 0 { break }
        done += n
    }
    return done
}

func pwriteAll(_ fd: Int32, _ buf: UnsafeRawPointer, _ count: Int, _ offset: UInt64) -> Int {
    var done = 0
    while done < count {
        let n = pwrite(fd, buf + done, count - done, off_t(offset) + off_t(done))
        if n < 0 { if errno == EINTR { continue }; return -Int(errno) }
        if n == 0 { break }
        done += n
    }
    return done
}
