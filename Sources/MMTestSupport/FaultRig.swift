// The fixture the mm tests start from, in the manner of the kernel's
// tools/testing/vma (alloc_and_link_vma and friends): one call builds
// the machine a test needs, with parameters, and VMAs are linked into its MM
// by range and file offset.

import CDaxMM
import DAXBase
import MMCore

/// One kernel, one pgmap of `type` with folios of `order` over `bytes` at
/// physical `phys`, the linear mapping of that pgmap (a device-dax character
/// device for GENERIC, a regular DAX file otherwise) and an empty MM.
public struct FaultRig {
    public let kernel: Kernel
    public let pgmap: DevPagemap
    public let map: LinearMapping
    public let mm: MM

    public init(type: MemoryType = .generic, order: Int, bytes: UInt64, phys: UInt64 = 0x1_0000_0000) throws {
        kernel = try Kernel(physBits: 40)
        pgmap = DevPagemap(kernel: kernel, type: type, ranges: [PhysicalRange(start: phys, size: bytes)], vmemmapShift: order)
        try pgmap.memremapPages()
        map = LinearMapping(pgmap: pgmap, characterDevice: type == .generic)
        mm = try MM(kernel: kernel)
    }

    public var pgmaps: [DevPagemap] { [pgmap] }

    /// The folio holding file page `pgoff`.
    public func folio(pgoff: UInt64) -> Folio { pfnToPage(kernel.ref, pgmap.ranges[0].startPfn + pgoff).folio }

    /// alloc_and_link_vma: maps `length` bytes of the rig's file from `pgoff`
    /// into the MM (MAP_FIXED at `start` when given) and returns the address.
    /// The request is the linear mapping's (fault-size alignment,
    /// VM_HUGEPAGE) with the changes the parameters name.
    public func linkVMA(length: UInt64, start: UInt64? = nil, pgoff: UInt64 = 0, prot: Prot = [.read, .write],
                        shared: Bool = true, ops: VMAOps = .linear, alignment: UInt64? = nil,
                        extraFlags: UInt64 = 0) throws -> UInt64 {
        var req = map.request(length: length, pgoff: pgoff, prot: prot)
        req.fixedAddress = start
        req.shared = shared
        switch ops {
        case .linear: break
        case .writenotify: req.ops = map.writenotifyOps()
        case .noMaySplit: req.ops = map.noMaySplitOps()
        }
        if let alignment { req.alignment = alignment }
        req.extraFlags |= extraFlags
        return try mm.mmap(req)
    }
}

/// The vm_operations a linked VMA gets.
public enum VMAOps: Sendable {
    /// The linear mapping's own.
    case linear
    /// With a pfn_mkwrite callback: the VMA wants write notification, so
    /// vm_page_prot is read-only and write access in an entry comes only from
    /// the insert.
    case writenotify
    /// Without may_split: any split is allowed.
    case noMaySplit
}

/// The preamble of the VMA-level tests in one call: a FaultRig and one VMA
/// linked into its MM (see `FaultRig.linkVMA`). Returns both.
public func vmaFixture(type: MemoryType = .generic, order: Int = 0, bytes: UInt64 = 2 << 20,
                       phys: UInt64 = 0x1_0000_0000, length: UInt64, start: UInt64? = nil, pgoff: UInt64 = 0,
                       prot: Prot = [.read, .write], shared: Bool = true, ops: VMAOps = .linear,
                       alignment: UInt64? = nil, extraFlags: UInt64 = 0) throws -> (rig: FaultRig, addr: UInt64) {
    let rig = try FaultRig(type: type, order: order, bytes: bytes, phys: phys)
    let addr = try rig.linkVMA(length: length, start: start, pgoff: pgoff, prot: prot, shared: shared, ops: ops,
                               alignment: alignment, extraFlags: extraFlags)
    return (rig, addr)
}

/// Calls the VMA's vm_ops->huge_fault(order) at `addr` (order 0: ->fault)
/// the way the fault walk does (under mmap_lock for read, with a vm_fault for
/// the page-aligned address and its file offset), and returns its VM_FAULT_*
/// bits. For tests that drive one order directly instead of the
/// PUD -> PMD -> PTE fallback.
public func callFault(_ mm: MM, _ addr: UInt64, order: Int, write: Bool = true) -> UInt32 {
    mm.lockRead()
    defer { mm.unlockRead() }
    let vma = vmaLookup(mm.ref, addr)!
    var vmf = dax_vm_fault()
    vmf.vma = vma
    vmf.address = addr & ~UInt64(pageSize - 1)
    vmf.pgoff = linearPageIndex(vma, vmf.address)
    vmf.flags = write ? DAX_FAULT_FLAG_WRITE : 0
    let ops = vma.pointee.vm_ops.pointee
    return withUnsafeMutablePointer(to: &vmf) { order == 0 ? ops.fault($0) : ops.huge_fault($0, UInt32(order)) }
}
