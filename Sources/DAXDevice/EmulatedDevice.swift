// The embedded emulated device: memfd-backed memory with a synthetic physical
// base, behaving like a device-dax instance for mapping purposes.
//
// It mirrors device-dax's mmap rules (check_vma in drivers/dax/device.c):
// shared mappings only, start and end aligned to the device alignment, and
// addresses chosen aligned to it (dax_get_unmapped_area). It is the default
// device when no real one exists; tests that claim a real device never use it.

import CDaxSys
import DAXBase
import SystemPackage

#if canImport(Glibc)
import Glibc
#endif

public final class EmulatedDevice: DaxDevice {
    /// 256 GiB: 1 GiB aligned and above where a small guest's RAM ends.
    public static let defaultPhysicalBase: UInt64 = 0x40_0000_0000
    public static let defaultSize: UInt64 = 1 << 30
    public static let defaultAlign: DaxAlign = .pmd

    public let name: String
    public var kind: DeviceKind { .emulated }
    public let size: UInt64
    public let align: DaxAlign
    public let ranges: [DevDaxRange]
    public let targetNode: Int?
    private let fd: Int32
    public var mappingFileDescriptor: Int32 { fd }

    /// - Parameters:
    ///   - size: bytes; non-zero and a multiple of `align`.
    ///   - base: synthetic physical start; a multiple of `align`.
    public init(size: UInt64 = EmulatedDevice.defaultSize, align: DaxAlign = EmulatedDevice.defaultAlign,
                base: UInt64 = EmulatedDevice.defaultPhysicalBase, node: Int? = nil) throws(DeviceError) {
        let spec = "emulated:size=\(formatSize(size)),align=\(align)"
        name = spec
        guard size > 0 else { throw .zeroSize(device: spec) }
        guard size % UInt64(align.bytes) == 0 else {
            throw .badSpec(spec: spec, reason: "size \(formatSize(size)) is not a multiple of the alignment \(align)")
        }
        guard base % UInt64(align.bytes) == 0 else {
            throw .badSpec(spec: spec, reason: "physical base \(hex(base)) is not aligned to \(align)")
        }
        guard base <= UInt64(1) << 52 - size else {
            throw .badSpec(spec: spec, reason: "physical range does not fit in 52 address bits")
        }
        self.size = size
        self.align = align
        self.targetNode = node
        self.ranges = [DevDaxRange(pgoff: 0, range: PhysicalRange(start: base, size: size))]
        switch Sys.memfdCreate("daxmm-emulated") {
        case .success(let f): fd = f
        case .failure(let e): throw .openFailed(path: spec, errno: e)
        }
        if case .failure(let e) = Sys.ftruncate(fd, Int(size)) {
            Sys.close(fd)
            throw .openFailed(path: spec, errno: e)
        }
    }

    deinit { Sys.close(fd) }

    public func map(offset: UInt64, length: UInt64?, options: MapOptions) throws(DeviceError) -> DeviceMapping {
        let len = try validateRange(offset: offset, length: length, options: options)
        let req = describeRequest(offset: offset, length: len, options: options)
        // check_vma: shared only.
        if options.contains(.private) || !options.contains(.shared) && !options.contains(.sync) {
            throw .mapFailed(device: name, request: req, errno: .invalidArgument,
                             reason: "device-dax allows only shared mappings (MAP_PRIVATE refused)")
        }
        // check_vma: vm_start and vm_end aligned. The address is chosen aligned
        // to the offset modulo align (as dax_get_unmapped_area does), so both
        // hold exactly when offset and length are multiples of align. (For a
        // misaligned offset the kernel gives up on aligning and takes any free
        // address, so it accepts such a request when that address happens to
        // be aligned; the emulated device refuses it every time.)
        let a = UInt64(align.bytes)
        if offset % a != 0 || len % a != 0 {
            throw .mapFailed(device: name, request: req, errno: .invalidArgument,
                             reason: "offset and length must be multiples of the device alignment \(align)")
        }
        let prot = options.contains(.readOnly) ? PROT_READ : (PROT_READ | PROT_WRITE)
        // Reserve len + align of address space, then place the memfd at the
        // first aligned address inside it and return the slack.
        let reserveLen = Int(len + a)
        let reserve: UnsafeMutableRawPointer
        switch Sys.mmap(nil, reserveLen, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0) {
        case .success(let p): reserve = p
        case .failure(let e):
            throw .mapFailed(device: name, request: req, errno: e, reason: "cannot reserve address space")
        }
        let raw = UInt(bitPattern: reserve)
        let aligned = (raw + UInt(a) - 1) & ~(UInt(a) - 1)
        var flags = MAP_SHARED | MAP_FIXED
        if options.contains(.populate) { flags |= MAP_POPULATE }
        let target = UnsafeMutableRawPointer(bitPattern: aligned)!
        switch Sys.mmap(target, Int(len), prot, flags, fd, Int(offset)) {
        case .success: break
        case .failure(let e):
            _ = Sys.munmap(reserve, reserveLen)
            throw .mapFailed(device: name, request: req, errno: e, reason: "mmap of the backing memfd failed")
        }
        let head = Int(aligned - raw)
        if head > 0 { _ = Sys.munmap(reserve, head) }
        let tail = reserveLen - head - Int(len)
        if tail > 0 { _ = Sys.munmap(target + Int(len), tail) }
        if align != .pte { _ = Sys.madvise(target, Int(len), MADV_HUGEPAGE) }
        return DeviceMapping(device: self, offset: offset, length: len, options: options,
                             base: target, unmapAddress: target, unmapLength: Int(len))
    }
}
