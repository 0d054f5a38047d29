// struct vm_area_struct and what hangs off it: the file (for vma_is_dax /
// vma_is_fsdax) and vm_operations_struct.
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
/// regular), the address_space handle folios record, and the driver's data.
public final class MappedFile: @unchecked Sendable {
    // @unchecked: the record is immutable after init.

    /// The C record VMAs point at (vma->vm_file). Allocated in init, freed in
    /// deinit, never reassigned or moved; immutable after init. private_data
    /// and private_tag are set together, only by `DriverFile`.
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

    deinit { ref.deallocate() }

    public var mapping: UInt64 { ref.pointee.mapping }
}

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
