// A minimal "driver" for exercising MMCore without a device: a file whose
// page offset N maps pfn base+N of one pgmap, faulting at the pgmap's folio
// order. Faults at another order fall back (larger) or fail (smaller), like
// device-dax; zero-based (FS_DAX) folios are taken 0 -> 1 for the insert
// and put afterwards (the fs/dax temporary-reference protocol).
//
// Tests, the property tests and the benchmarks share it; FaultRig builds the
// usual machine around it. The real drivers (device-dax, fs-dax) live in
// DAXCore.

import CDaxMM
import MMCore

/// What the fault handlers read from the file's private_data.
package struct LinearMapState: DriverState {
    package var kernel: KernelRef
    package var basePfn: UInt64
    package var nrPages: UInt64
    package var order: UInt32
    package var zeroBased: Bool
    package var faults: Int64 = 0

    /// The tag of linear-mapping records ("linear").
    @inline(__always) package static var driverTag: DriverTag { DriverTag(0x6c_696e_6561_72) }
}

/// Owns the state and the ops; keep it alive while VMAs use it (the MM
/// retains the file and ops, the caller retains this object).
public final class LinearMapping: @unchecked Sendable {
    public let pgmap: DevPagemap
    /// The file, its vm_operations and the tagged state record.
    let driver: DriverFile<LinearMapState>

    /// The record the fault handlers read, owned by `driver`.
    package var state: UnsafeMutablePointer<LinearMapState> { driver.state }
    public var file: MappedFile { driver.file }
    public var ops: VMOperations { driver.ops }

    public init(pgmap: DevPagemap, dax: Bool = true, characterDevice: Bool = true) {
        self.pgmap = pgmap
        let r = pgmap.ranges[0]
        var o = dax_vm_operations()
        o.fault = linearFaultFn
        o.huge_fault = linearHugeFaultFn
        o.may_split = linearMaySplitFn
        o.pagesize = linearPagesizeFn
        driver = DriverFile(kind: characterDevice ? .characterDevice : .regularFile, dax: dax,
                            state: LinearMapState(
                                kernel: pgmap.kernel.ref, basePfn: r.startPfn, nrPages: r.endPfn - r.startPfn,
                                order: UInt32(pgmap.vmemmapShift), zeroBased: pgmap.type.idleRefcount == 0),
                            ops: o)
    }

    /// Faults the handler has served (inserted or not).
    public var faults: Int64 { dax_atomic64_read(&state.pointee.faults) }

    /// Bytes one fault maps.
    public var faultSize: UInt64 { UInt64(4096) << UInt64(pgmap.vmemmapShift) }

    /// An mmap request for `length` bytes of the file from `pgoff`.
    public func request(length: UInt64, pgoff: UInt64 = 0, prot: Prot = [.read, .write]) -> MMapRequest {
        driver.mmapRequest(owner: self, length: length, pgoff: pgoff, prot: prot, alignment: faultSize, extraFlags: DAX_VM_HUGEPAGE)
    }

    /// The ops with a pfn_mkwrite callback: a VMA using them wants write
    /// notification, so vm_page_prot is read-only and write access shows in
    /// the entry bits only when the insert sets it.
    public func writenotifyOps() -> VMOperations {
        var o = ops.ref.pointee
        o.pfn_mkwrite = linearPfnMkwriteFn
        return VMOperations(o)
    }

    /// The ops without may_split: any split is allowed.
    public func noMaySplitOps() -> VMOperations {
        var o = ops.ref.pointee
        o.may_split = nil
        return VMOperations(o)
    }
}

/// The fault handler: one folio of the map's order per fault. Another
/// driver's VMA is refused (SIGBUS).
func linearHugeFault(_ vmf: VMFaultRef, _ order: UInt32) -> UInt32 {
    let vma = vmf.pointee.vma!
    guard let st = linearState(vma) else { return DAX_VM_FAULT_SIGBUS }
    if order > st.pointee.order { return DAX_VM_FAULT_FALLBACK }
    if order < st.pointee.order { return DAX_VM_FAULT_SIGBUS }
    let nr = UInt64(1) << UInt64(order)
    let size = nr << 12
    let addr = vmf.pointee.address & ~(size - 1)
    if addr < vma.pointee.vm_start || addr + size > vma.pointee.vm_end { return DAX_VM_FAULT_FALLBACK }
    let pgoff = linearPageIndex(vma, addr)
    if pgoff % nr != 0 || pgoff + nr > st.pointee.nrPages { return DAX_VM_FAULT_SIGBUS }
    let k = st.pointee.kernel
    let page = pfnToPage(k, st.pointee.basePfn + pgoff)
    let folio = page.folio
    let write = vmf.pointee.flags & DAX_FAULT_FLAG_WRITE != 0
    // fs/dax: an idle zero-based folio is raised 0 -> 1 around the insert.
    let temp = st.pointee.zeroBased
    if temp { folio.refInc() }
    let ret: UInt32
    switch order {
    case 0: ret = vmfInsertPageMkwrite(vmf, page, write: write)
    case UInt32(pmdOrder): ret = vmfInsertFolioPmd(vmf, folio, write: write)
    case UInt32(pudOrder): ret = vmfInsertFolioPud(vmf, folio, write: write)
    default: ret = DAX_VM_FAULT_SIGBUS
    }
    if temp { folioPut(k, folio) }
    dax_atomic64_add(&st.pointee.faults, 1)
    return ret
}

@inline(__always)
func linearState(_ vma: VMARef) -> UnsafeMutablePointer<LinearMapState>? {
    LinearMapState.state(of: vma)
}

let linearFaultFn: @convention(c) (VMFaultRef?) -> UInt32 = { vmf in linearHugeFault(vmf!, 0) }
let linearHugeFaultFn: @convention(c) (VMFaultRef?, UInt32) -> UInt32 = { vmf, order in linearHugeFault(vmf!, order) }
/// may_split: only at a fault-size boundary (as device-dax's dev_dax_may_split).
let linearMaySplitFn: @convention(c) (VMARef?, UInt64) -> Int32 = { vma, addr in
    guard let st = linearState(vma!) else { return -EINVAL }
    let size = UInt64(4096) << UInt64(st.pointee.order)
    return addr % size == 0 ? 0 : -EINVAL
}
/// pfn_mkwrite that always agrees.
let linearPfnMkwriteFn: @convention(c) (VMFaultRef?) -> UInt32 = { _ in 0 }
let linearPagesizeFn: @convention(c) (VMARef?) -> UInt64 = { vma in
    guard let st = linearState(vma!) else { return UInt64(pageSize) }
    return UInt64(4096) << UInt64(st.pointee.order)
}
