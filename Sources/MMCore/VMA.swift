// struct vm_area_struct and what hangs off it: the file (for vma_is_dax /
// vma_is_fsdax, and its i_mmap with unmap_mapping_pages/range) and
// vm_operations_struct.
//
// `MappedFile` and `VMOperations` own C records that VMAs point at; an MM
// retains them for as long as any of its VMAs does, so the pointers stay
// valid on the fault path without any reference counting there. Their record
// pointers are package-only; a driver builds both with `DriverFile`.
//
// A `VMARef` is valid while its MM's mmap_lock is held and the VMA is not
// unmapped (munmap, mremap and mprotect may split, move or free it); a
// `VMFaultRef` for the duration of the fault it describes. The functions here
// take them as the rest of the raw-record API does (Kernel.swift).

import CDaxMM

public typealias VMARef = UnsafeMutablePointer<dax_vma>
public typealias VMFaultRef = UnsafeMutablePointer<dax_vm_fault>

/// A file as the mm sees it: inode flags (S_DAX), mode (char device or
/// regular), the address_space handle folios record, the VMAs mapping it
/// (i_mmap) and the driver's data.
public final class MappedFile: @unchecked Sendable {
    // @unchecked: the record is immutable after init except the i_mmap
    // fields, guarded by i_mmap_rwsem.

    /// The C record VMAs point at (vma->vm_file). Allocated in init, freed in
    /// deinit, never reassigned or moved. private_data and private_tag are
    /// set together, only by `DriverFile`; the i_mmap fields change only
    /// under i_mmap_rwsem for write.
    package let ref: UnsafeMutablePointer<dax_file>

    public enum Kind: Sendable { case characterDevice, regularFile }

    /// A file with no driver record (private_data NULL, tag 0).
    /// - Parameters:
    ///   - dax: the inode has S_DAX (its pages are DAX memory).
    ///   - mapping: the address_space identity recorded in folio->mapping
    ///     (any non-zero value unique to the file; 0 picks the record's address).
    public convenience init(kind: Kind, dax: Bool, mapping: UInt64 = 0) {
        self.init(kind: kind, dax: dax, mapping: mapping, privateData: nil, tag: 0)
    }

    /// A driver's file: `privateData` is a record of the type `tag` names.
    init(kind: Kind, dax: Bool, mapping: UInt64 = 0, privateData: UnsafeMutableRawPointer?, tag: UInt64) {
        ref = .allocate(capacity: 1)
        ref.initialize(to: dax_file())
        ref.pointee.i_flags = dax ? DAX_S_DAX : 0
        ref.pointee.i_mode = kind == .characterDevice ? DAX_S_IFCHR : DAX_S_IFREG
        ref.pointee.mapping = mapping != 0 ? mapping : UInt64(UInt(bitPattern: ref))
        ref.pointee.private_data = privateData
        ref.pointee.private_tag = tag
    }

    deinit {
        ref.pointee.i_mmap?.deallocate()
        ref.deallocate()
    }

    public var mapping: UInt64 { ref.pointee.mapping }

    /// The VMAs mapping the file now (i_mmap), in no particular order.
    package var mappers: [VMARef] {
        let sem = dax_file_i_mmap_rwsem(ref)!
        dax_down_read(sem)
        defer { dax_up_read(sem) }
        return (0..<Int(ref.pointee.i_mmap_nr)).map { ref.pointee.i_mmap[$0]! }
    }
}

public typealias FileRef = UnsafeMutablePointer<dax_file>

/// vm_operations_struct with C callbacks.
public final class VMOperations: @unchecked Sendable {
    /// The C record VMAs point at (vma->vm_ops). Allocated in init, freed in
    /// deinit, never reassigned; read-only after init.
    package let ref: UnsafeMutablePointer<dax_vm_operations>
    public init(_ ops: dax_vm_operations) {
        ref = .allocate(capacity: 1)
        ref.initialize(to: ops)
    }
    deinit { ref.deallocate() }
}

// MARK: predicates (include/linux/mm.h, fs.h)

/// vma_is_dax: the VMA maps a DAX inode.
@inline(__always)
public func vmaIsDax(_ vma: VMARef) -> Bool {
    guard let f = vma.pointee.vm_file else { return false }
    return f.pointee.i_flags & DAX_S_DAX != 0
}

/// vma_is_fsdax: a DAX inode that is not a character device (device-dax is).
@inline(__always)
public func vmaIsFsdax(_ vma: VMARef) -> Bool {
    guard let f = vma.pointee.vm_file else { return false }
    return f.pointee.i_flags & DAX_S_DAX != 0 && f.pointee.i_mode & 0o170000 != DAX_S_IFCHR
}

@inline(__always) public func vmaIsAnonymous(_ vma: VMARef) -> Bool { vma.pointee.vm_file == nil }

/// vma_wants_writenotify (the parts that apply): shared and writable with a
/// page_mkwrite or pfn_mkwrite callback needs write faults to be seen.
@inline(__always)
func vmaWantsWritenotify(_ vma: VMARef) -> Bool {
    let f = vma.pointee.vm_flags
    guard f & (DAX_VM_WRITE | DAX_VM_SHARED) == (DAX_VM_WRITE | DAX_VM_SHARED) else { return false }
    guard let ops = vma.pointee.vm_ops else { return false }
    return ops.pointee.page_mkwrite != nil || ops.pointee.pfn_mkwrite != nil
}

/// vma_set_page_prot
@inline(__always)
func vmaSetPageProt(_ vma: VMARef) {
    vma.pointee.vm_page_prot = vmGetPageProt(vma.pointee.vm_flags, writenotify: vmaWantsWritenotify(vma))
}

/// linear_page_index: the file page offset of `addr` in `vma`.
@inline(__always)
public func linearPageIndex(_ vma: VMARef, _ addr: UInt64) -> UInt64 {
    ((addr - vma.pointee.vm_start) >> UInt64(pageShift)) + vma.pointee.vm_pgoff
}

/// vma_pages
@inline(__always) public func vmaPages(_ vma: VMARef) -> UInt64 {
    (vma.pointee.vm_end - vma.pointee.vm_start) >> UInt64(pageShift)
}

// MARK: i_mmap (mm/vma.c, mm/mmap.c and mm/memory.c)

/// i_mmap_lock_write
@inline(__always) func iMmapLockWrite(_ file: FileRef) { dax_down_write(dax_file_i_mmap_rwsem(file)) }
/// i_mmap_unlock_write
@inline(__always) func iMmapUnlockWrite(_ file: FileRef) { dax_up_write(dax_file_i_mmap_rwsem(file)) }

/// __vma_link_file: adds `vma` to its file's i_mmap, with i_mmap_rwsem held
/// for write. The array doubles when full: this runs at mmap, split and
/// mremap time under mmap_lock for write, never from a fault, and a reader
/// (unmap_mapping_pages) cannot be inside the array while the writer holds
/// the lock, so the old array is freed at once.
func vmaLinkFileLocked(_ file: FileRef, _ vma: VMARef) {
    let f = file
    if f.pointee.i_mmap_nr == f.pointee.i_mmap_cap {
        let (n, cap) = grownVMAArray(f.pointee.i_mmap, count: f.pointee.i_mmap_nr, capacity: f.pointee.i_mmap_cap, minimum: 8)
        f.pointee.i_mmap = n
        f.pointee.i_mmap_cap = cap
    }
    f.pointee.i_mmap[Int(f.pointee.i_mmap_nr)] = vma
    f.pointee.i_mmap_nr += 1
}

/// A C array of VMA pointers (a file's i_mmap, an anon_vma's VMAs, an mm's
/// VMAs) that is full, moved into one of twice the capacity (at least
/// `minimum`); the old one is freed. The caller holds the array's lock for
/// write, so no reader is inside it.
func grownVMAArray(_ old: UnsafeMutablePointer<VMARef?>?, count: Int64, capacity: Int64,
                   minimum: Int) -> (UnsafeMutablePointer<VMARef?>, Int64) {
    let cap = max(minimum, Int(capacity) * 2)
    let n = UnsafeMutablePointer<VMARef?>.allocate(capacity: cap)
    if let old {
        n.moveInitialize(from: old, count: Int(count))
        old.deallocate()
    }
    return (n, Int64(cap))
}

/// vma_link_file: a file VMA joins its file's i_mmap (mmap_lock held for write).
func vmaLinkFile(_ vma: VMARef) {
    guard let file = vma.pointee.vm_file else { return }
    iMmapLockWrite(file)
    vmaLinkFileLocked(file, vma)
    iMmapUnlockWrite(file)
}

/// unlink_file_vma: a file VMA leaves its file's i_mmap before it is freed
/// (mmap_lock held for write).
func unlinkFileVMA(_ vma: VMARef) {
    guard let file = vma.pointee.vm_file else { return }
    iMmapLockWrite(file)
    let n = Int(file.pointee.i_mmap_nr)
    for i in 0..<n where file.pointee.i_mmap[i] == vma {
        file.pointee.i_mmap[i] = file.pointee.i_mmap[n - 1]
        file.pointee.i_mmap[n - 1] = nil
        file.pointee.i_mmap_nr -= 1
        break
    }
    iMmapUnlockWrite(file)
}

/// unmap_mapping_pages: zaps every user mapping of file pages
/// [start, start + nr) in every VMA of the file's i_mmap; nr 0 (or a range
/// that wraps) means to the end of the file. `evenCows` false
/// (zap_details.even_cows) leaves the private COW copies (anon pages of
/// private VMAs) mapped: only the file's own pages go. The i_mmap lock is
/// held for read across the walk, so no VMA is unlinked and freed under it;
/// the references dropped by the zap are gone when this returns. Allocates
/// nothing: fs-dax calls it from its fault path.
public func unmapMappingPages(_ file: FileRef, _ start: UInt64, _ nr: UInt64, evenCows: Bool = true) {
    let first = start
    var last = start &+ nr &- 1
    if last < first { last = UInt64.max }
    let sem = dax_file_i_mmap_rwsem(file)!
    dax_down_read(sem)
    defer { dax_up_read(sem) }
    let n = Int(file.pointee.i_mmap_nr)
    for i in 0..<n {
        guard let vma = file.pointee.i_mmap[i] else { continue }
        let vba = vma.pointee.vm_pgoff
        let vea = vba + vmaPages(vma) - 1
        let zba = max(first, vba), zea = min(last, vea)
        guard zba <= zea else { continue }
        let a0 = vma.pointee.vm_start + ((zba - vba) << UInt64(pageShift))
        let a1 = vma.pointee.vm_start + ((zea - vba + 1) << UInt64(pageShift))
        zapPageRangeSingle(vma, a0, a1, evenCows: evenCows)
    }
}

/// unmap_mapping_range: the byte form. `holebegin` is rounded down and
/// `holelen` up to pages; a length of 0 unmaps to the end of the file.
/// `evenCows` asks for the private COW copies too (truncate); false zaps
/// only the file's pages and leaves the anon copies a private mapping made
/// of them (should_zap_folio).
public func unmapMappingRange(_ file: FileRef, holebegin: UInt64, holelen: UInt64, evenCows: Bool) {
    let hba = holebegin >> UInt64(pageShift)
    let hlen = (holelen >> UInt64(pageShift)) + (holelen & UInt64(pageSize - 1) != 0 ? 1 : 0)
    unmapMappingPages(file, hba, hlen, evenCows: evenCows)
}
