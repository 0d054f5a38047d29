// drivers/dax/device.c after the series: a device-dax instance over one or
// more physical ranges, its probe (GENERIC pgmap, vmemmap_shift from the
// alignment), mmap (check_vma, VM_HUGEPAGE, aligned addresses) and fault
// handlers (the PTE/PMD/PUD outcome matrix), dax_pgoff_to_phys and
// dax_set_mapping.
//
// The fault handlers are C function pointers reading a C-layout state
// record, so they run with no Swift object on the path. The record is the
// char device file's private_data, tagged DAXFS_MAGIC by `DriverFile`; a VMA
// of another driver's file is refused (check_vma -EINVAL, VM_FAULT_SIGBUS).
// The handlers run inside the record's dax_srcu read side, so removal
// (kill_dax) waits for every fault that may have seen the device alive.

import CDaxMM
import DAXBase
import MMCore

#if canImport(Glibc)
import Glibc
#endif

/// What the fault handlers read (through the file's private_data).
package struct DevDaxState: DriverState {
    package var kernel: KernelRef
    package var align: UInt64
    package var alive: UInt32
    package var nrRange: Int
    package var ranges: UnsafeMutablePointer<DevDaxRange>
    /// The char device's address_space (folio->mapping of faulted folios).
    package var mapping: UInt64
    /// dax_srcu: the fault handlers run inside its read side (dax_read_lock),
    /// so kill_dax can wait for the ones that saw the device alive.
    package var srcu = dax_srcu()

    /// DAXFS_MAGIC: device-dax inodes live on the dax pseudo file system.
    @inline(__always) package static var driverTag: DriverTag { DriverTag(0x6464_6178) }
}

/// The address of `alive` in the record at `st`, computed without an inout
/// access (`&st.pointee.alive` is one, which the thread sanitizer reports
/// when the fault path reads the word while remove() stores it).
@inline(__always)
package func devDaxAlive(_ st: UnsafeMutablePointer<DevDaxState>) -> UnsafeMutablePointer<UInt32> {
    (UnsafeMutableRawPointer(st) + MemoryLayout<DevDaxState>.offset(of: \.alive)!).assumingMemoryBound(to: UInt32.self)
}

/// The record's dax_srcu, addressed without an inout access (as `alive`).
@inline(__always)
package func devDaxSrcu(_ st: UnsafeMutablePointer<DevDaxState>) -> UnsafeMutablePointer<dax_srcu> {
    (UnsafeMutableRawPointer(st) + MemoryLayout<DevDaxState>.offset(of: \.srcu)!).assumingMemoryBound(to: dax_srcu.self)
}

public final class DevDax: @unchecked Sendable {
    // @unchecked: `state` is read by the fault handlers under the kernel's
    // rules (alive is atomic; the ranges never change after probe).
    public let kernel: Kernel
    public let align: UInt64
    public let ranges: [DevDaxRange]
    /// The char device's file, its vm_operations and the tagged state record.
    let driver: DriverFile<DevDaxState>
    public private(set) var pgmap: DevPagemap?
    /// The dax_srcu side a kill_dax that timed out still waits for (a second
    /// remove() waits for it again instead of flipping back).
    private var killWaitSide: UInt32?

    /// The state record the fault handlers read. Owned by `driver` (freed
    /// with this object); `ranges` inside it is freed in deinit.
    package var state: UnsafeMutablePointer<DevDaxState> { driver.state }
    public var file: MappedFile { driver.file }
    public var ops: VMOperations { driver.ops }

    /// - Parameters:
    ///   - ranges: physical pieces in device order, as `daxctl
    ///     create-device` may produce; each a multiple of `align`.
    ///   - align: 4K, 2M or 1G.
    public init(kernel: Kernel, ranges phys: [PhysicalRange], align: UInt64) throws(MMError) {
        guard [UInt64(4096), UInt64(pmdSize), UInt64(pudSize)].contains(align) else {
            throw .errno(EINVAL, "device-dax align \(align) is not 4K, 2M or 1G")
        }
        guard !phys.isEmpty else { throw .errno(EINVAL, "device-dax needs at least one range") }
        var rs: [DevDaxRange] = []
        var pgoff: UInt64 = 0
        for p in phys {
            guard p.size > 0, p.start % align == 0, p.size % align == 0 else {
                throw .errno(EINVAL, "range [\(p.start), +\(p.size)) is not aligned to \(align)")
            }
            rs.append(DevDaxRange(pgoff: pgoff, range: p))
            pgoff += p.size >> 12
        }
        self.kernel = kernel
        self.align = align
        self.ranges = rs
        let buf = UnsafeMutablePointer<DevDaxRange>.allocate(capacity: rs.count)
        buf.initialize(from: rs, count: rs.count)
        var o = dax_vm_operations()
        o.fault = devDaxFault
        o.huge_fault = devDaxHugeFault
        o.may_split = devDaxMaySplit
        o.pagesize = devDaxPagesize
        driver = DriverFile(kind: .characterDevice,
                            state: DevDaxState(kernel: kernel.ref, align: align, alive: 0, nrRange: rs.count,
                                               ranges: buf, mapping: 0),
                            ops: o)
        driver.state.pointee.mapping = driver.file.mapping
    }

    deinit {
        state.pointee.ranges.deallocate()
    }

    /// Total bytes.
    public var size: UInt64 { ranges.reduce(0) { $0 + $1.range.size } }

    /// dev_dax_probe: a GENERIC pgmap over the ranges with vmemmap_shift =
    /// order of the alignment, then memremap_pages; the device is alive.
    public func probe() throws(MMError) {
        guard pgmap == nil else { throw .errno(EINVAL, "device already probed") }
        let shift = (align >> 12).trailingZeroBitCount
        let p = DevPagemap(kernel: kernel, type: .generic,
                           ranges: ranges.map(\.range), vmemmapShift: shift)
        try p.bindPages()
        pgmap = p
        dax_store_u32(devDaxAlive(state), 1)
    }

    /// Device removal: dev_dax_probe's devm actions run in reverse, so
    /// kill_dev_dax comes before memunmap_pages. kill_dev_dax is kill_dax
    /// (dax_alive() false: check_vma fails, so faults SIGBUS and new mmaps
    /// get -ENXIO; then synchronize_srcu(&dax_srcu): every fault handler that
    /// entered before, and so may have seen the device alive, has returned)
    /// then unmap_mapping_range(inode->i_mapping, 0, 0, 1): every user
    /// mapping of the device is zapped, rss drops and the folios go back to
    /// their idle refcount before the pgmap is torn down. A fault racing
    /// with remove() therefore either maps before the zap (and is zapped) or
    /// sees the device dead.
    ///
    /// The kernel waits for the readers forever; the port waits
    /// `timeoutNanos` and throws ETIMEDOUT naming the device (it stays
    /// dead; call again to keep waiting), and as long again in
    /// memunmap_pages.
    public func remove(timeoutNanos: Int64 = 5_000_000_000) throws(MMError) {
        try killDax(timeoutNanos: timeoutNanos)
        unmapMappingRange(file.ref, holebegin: 0, holelen: 0, evenCows: true)
        try pgmap?.memunmapPages(timeoutNanos: timeoutNanos)
        pgmap = nil
    }

    /// kill_dax: clear dax_alive, then synchronize_srcu(&dax_srcu), bounded.
    private func killDax(timeoutNanos: Int64) throws(MMError) {
        // seq_cst: ordered before the flip and the readers' count loads, as
        // the fault side's alive load is after its count increment.
        dax_store_u32_seq_cst(devDaxAlive(state), 0)
        let srcu = devDaxSrcu(state)
        let side = killWaitSide ?? dax_srcu_flip(srcu)
        let deadline = monotonicNanos() &+ UInt64(max(timeoutNanos, 0))
        while dax_srcu_readers(srcu, side) != 0 {
            if monotonicNanos() >= deadline {
                killWaitSide = side
                throw .errno(ETIMEDOUT, "kill_dax: device-dax \(ranges.map { $0.range.description }.joined(separator: ", ")) "
                             + "still has \(dax_srcu_readers(srcu, side)) fault(s) in flight that started while it was alive")
            }
            usleep(20)
        }
        killWaitSide = nil
    }

    /// dax_mmap: check_vma, then vm_ops and VM_HUGEPAGE; the address from
    /// dax_get_unmapped_area; dax_fops supports MAP_SYNC (FOP_MMAP_SYNC).
    /// `mapFlags`: the MAP_* flags as given to mmap(2), which do_mmap checks
    /// (nil: MAP_SHARED or MAP_PRIVATE as `shared` says).
    public func mmapRequest(length: UInt64, pgoff: UInt64 = 0, prot: Prot = [.read, .write], shared: Bool = true,
                            fixedAddress: UInt64? = nil, mapFlags: UInt32? = nil) -> MMapRequest {
        let placement = unmappedAreaPlacement(length: length, pgoff: pgoff)
        var req = driver.mmapRequest(owner: self, length: length, pgoff: pgoff, prot: prot, shared: shared,
                                     alignment: placement.alignment, fixedAddress: fixedAddress, mmapHook: { vma in
            let rc = checkVma(vma)
            if rc != 0 { return rc }
            vma.pointee.vm_flags |= DAX_VM_HUGEPAGE
            return 0
        })
        req.alignmentOffset = placement.offset
        req.mapFlags = mapFlags
        req.supportedMapFlags = MapFlag.sync
        return req
    }

    /// dax_get_unmapped_area: when the file range holds at least one whole
    /// aligned extent, the start is congruent to the file offset modulo the
    /// alignment (so an aligned offset gets an aligned address and a
    /// misaligned one a misaligned address, which check_vma refuses);
    /// otherwise any page-aligned free range.
    func unmappedAreaPlacement(length: UInt64, pgoff: UInt64) -> (alignment: UInt64, offset: UInt64) {
        let page = UInt64(pageSize)
        let len = (length &+ page &- 1) & ~(page - 1)
        let off = pgoff << UInt64(pageShift)
        let offEnd = off &+ len
        let offAlign = (off &+ align &- 1) & ~(align - 1)
        if offEnd <= offAlign || offEnd - offAlign < align { return (page, 0) }
        if off &+ len &+ align < off { return (page, 0) }
        return (align, off & (align - 1))
    }

    /// dax_pgoff_to_phys
    public func pgoffToPhys(_ pgoff: UInt64, size: UInt64) -> UInt64? {
        devDaxPgoffToPhys(state, pgoff, size)
    }
}

/// The device's state behind `vma`, nil unless the VMA maps a device-dax
/// file (a tag compare).
@inline(__always)
func devDaxState(_ vma: VMARef) -> UnsafeMutablePointer<DevDaxState>? {
    DevDaxState.state(of: vma)
}

/// check_vma: 0 or -errno. A VMA of another driver's file is -EINVAL.
/// Precondition: `vma` is live (mmap_lock held, or inside its callbacks).
@inline(__always)
public func checkVma(_ vma: VMARef) -> Int32 {
    guard let st = devDaxState(vma) else { return -EINVAL }
    return checkVmaState(st, vma)
}

/// check_vma past the file check: `st` is the device state behind `vma`
/// (devDaxState(vma)), which the fault handlers have already looked up.
@inline(__always)
func checkVmaState(_ st: UnsafeMutablePointer<DevDaxState>, _ vma: VMARef) -> Int32 {
    // dax_alive: seq_cst, after the fault's dax_read_lock (see killDax).
    if dax_load_u32_seq_cst(devDaxAlive(st)) == 0 { return -ENXIO }
    if vma.pointee.vm_flags & DAX_VM_MAYSHARE == 0 { return -EINVAL }   // private mapping
    let mask = st.pointee.align &- 1   // align is 4K, 2M or 1G (init)
    if (vma.pointee.vm_start | vma.pointee.vm_end) & mask != 0 { return -EINVAL }
    if !vmaIsDax(vma) { return -EINVAL }
    return 0
}

/// dax_pgoff_to_phys: the first range whose page window holds `pgoff`
/// decides; the whole [phys, phys+size) must fit in it.
@inline(__always)
func devDaxPgoffToPhys(_ st: UnsafeMutablePointer<DevDaxState>, _ pgoff: UInt64, _ size: UInt64) -> UInt64? {
    let ranges = st.pointee.ranges
    let n = st.pointee.nrRange
    // A device has at least one range (init), so a one-range device makes
    // one pass and no loop test before it.
    var i = 0
    repeat {
        let r = ranges[i]
        // pgoff in [r.pgoff, r.pgoff + pages): `rel` wraps past every window
        // when pgoff < r.pgoff (r.pgoff + pages is at most the device's page
        // count, far below 2^64).
        let rel = pgoff &- r.pgoff
        if rel < r.pages {
            let phys = r.range.start &+ (rel &<< 12)   // inside the range: rel < pages
            return phys + size - 1 <= r.range.end ? phys : nil
        }
        i &+= 1
    } while i < n
    return nil
}

/// dax_set_mapping: mapping/index on the covered folios that have none
/// (only the head when the pages are compound).
/// `page` is pfn_to_page(pfn), which the caller maps next. Every fault
/// covers one folio: a PTE fault one page of an order-0 device (align 4K),
/// a PMD or PUD fault the head of a folio of the fault's order (align ==
/// fault size), so the loop of the kernel makes one pass.
@inline(__always)
func devDaxSetMapping(_ st: UnsafeMutablePointer<DevDaxState>, _ vmf: VMFaultRef, _ page: Page, _ faultSize: UInt64) {
    let folio = page.folio
    if folio.mapping != 0 { return }
    folio.mapping = st.pointee.mapping
    folio.index = linearPageIndex(vmf.pointee.vma, vmf.pointee.address & ~(faultSize &- 1))
}

/// __dev_dax_pte_fault
@inline(__always)
func devDaxPteFault(_ st: UnsafeMutablePointer<DevDaxState>, _ vmf: VMFaultRef) -> UInt32 {
    let vma = vmf.pointee.vma!
    if checkVmaState(st, vma) != 0 { return DAX_VM_FAULT_SIGBUS }
    if st.pointee.align > 4096 { return DAX_VM_FAULT_SIGBUS }
    guard let phys = devDaxPgoffToPhys(st, vmf.pointee.pgoff, 4096) else { return DAX_VM_FAULT_SIGBUS }
    let page = pfnToPage(st.pointee.kernel, phys >> 12)
    devDaxSetMapping(st, vmf, page, 4096)
    return vmfInsertPageMkwrite(vmf, page, write: vmf.pointee.flags & DAX_FAULT_FLAG_WRITE != 0)
}

/// __dev_dax_pmd_fault / __dev_dax_pud_fault
@inline(__always)
func devDaxHugeLevelFault(_ st: UnsafeMutablePointer<DevDaxState>, _ vmf: VMFaultRef, faultSize: UInt64) -> UInt32 {
    let vma = vmf.pointee.vma!
    if checkVmaState(st, vma) != 0 { return DAX_VM_FAULT_SIGBUS }
    let align = st.pointee.align
    if align > faultSize && faultSize == UInt64(pmdSize) { return DAX_VM_FAULT_SIGBUS }   // align > PMD_SIZE
    if faultSize < align { return DAX_VM_FAULT_SIGBUS }
    if faultSize > align { return DAX_VM_FAULT_FALLBACK }
    let start = vmf.pointee.address & ~(faultSize - 1)
    if start < vma.pointee.vm_start || start + faultSize > vma.pointee.vm_end { return DAX_VM_FAULT_SIGBUS }
    let pgoff = linearPageIndex(vma, start)
    guard let phys = devDaxPgoffToPhys(st, pgoff, faultSize) else { return DAX_VM_FAULT_SIGBUS }
    let page = pfnToPage(st.pointee.kernel, phys >> 12)
    devDaxSetMapping(st, vmf, page, faultSize)
    let folio = page.folio
    let write = vmf.pointee.flags & DAX_FAULT_FLAG_WRITE != 0
    return faultSize == UInt64(pmdSize) ? vmfInsertFolioPmd(vmf, folio, write: write)
                                        : vmfInsertFolioPud(vmf, folio, write: write)
}

/// dev_dax_huge_fault: dispatch by order, inside dax_read_lock /
/// dax_read_unlock (a fully ordered add on the calling thread's slot of the
/// device's dax_srcu and a release decrement of it: what the fault path pays
/// for remove() waiting for it).
@inline(__always)
func devDaxHugeFaultImpl(_ vmf: VMFaultRef, _ order: UInt32) -> UInt32 {
    guard let st = devDaxState(vmf.pointee.vma) else { return DAX_VM_FAULT_SIGBUS }
    let srcu = devDaxSrcu(st)
    let id = dax_srcu_read_lock_slot(srcu, vmfSlot(vmf))
    defer { dax_srcu_read_unlock(srcu, id) }
    switch Int(order) {
    case 0: return devDaxPteFault(st, vmf)
    case pmdOrder: return devDaxHugeLevelFault(st, vmf, faultSize: UInt64(pmdSize))
    case pudOrder: return devDaxHugeLevelFault(st, vmf, faultSize: UInt64(pudSize))
    default: return DAX_VM_FAULT_SIGBUS
    }
}

let devDaxFault: @convention(c) (VMFaultRef?) -> UInt32 = { vmf in devDaxHugeFaultImpl(vmf!, 0) }
let devDaxHugeFault: @convention(c) (VMFaultRef?, UInt32) -> UInt32 = { vmf, order in devDaxHugeFaultImpl(vmf!, order) }
/// dev_dax_may_split
let devDaxMaySplit: @convention(c) (VMARef?, UInt64) -> Int32 = { vma, addr in
    guard let st = devDaxState(vma!) else { return -EINVAL }
    return addr & (st.pointee.align - 1) != 0 ? -EINVAL : 0
}
/// dev_dax_pagesize (PAGE_SIZE for a VMA that is not device-dax's, as
/// vma_kernel_pagesize without the callback).
let devDaxPagesize: @convention(c) (VMARef?) -> UInt64 = { vma in
    devDaxState(vma!)?.pointee.align ?? UInt64(pageSize)
}
