// A driver's file: the file->private_data record, the vm_operations_struct
// and the f_op->mmap request, built once for every driver (device-dax, the
// fs-dax file store, the linear test driver).
//
// The fault path reaches a driver's record through vma->vm_file->private_data,
// an untyped pointer. Every record is stamped with its driver's tag
// (`dax_file.private_tag`, next to the pointer), and a driver reads the
// record only through `DriverState.state(of:)`, which compares the tag with
// its own first. A callback of one driver reached with another driver's VMA
// (a crafted MMapRequest, a bug) therefore sees nil and refuses with the
// kernel's code (-EINVAL, VM_FAULT_SIGBUS) instead of reading the wrong
// record. The check is one integer compare: no allocation, no Swift object,
// safe in a signal handler. The lookups are inlinable, so each driver's fault
// path gets them specialised to its record type.

import CDaxMM
import DAXBase

/// The tag of a driver's private_data layout: a magic number, as
/// include/uapi/linux/magic.h gives one to each file system. Unique per
/// record type and never 0 (a file with no driver record has tag 0).
public struct DriverTag: Equatable, Hashable, Sendable {
    public let rawValue: UInt64
    @inline(__always) public init(_ rawValue: UInt64) { self.rawValue = rawValue }
}

/// The C-layout record a driver keeps in file->private_data.
public protocol DriverState {
    /// This record type's tag. A computed constant (no lazy global), so the
    /// fault path can compare it.
    static var driverTag: DriverTag { get }
}

extension DriverState {
    /// The record of `file` if it carries this driver's tag; nil for a file of
    /// another driver or of none. Precondition: `file` is nil or a live
    /// `dax_file` (a VMA's vm_file while the VMA exists).
    @inlinable @inline(__always)
    public static func state(ofFile file: UnsafeMutablePointer<dax_file>?) -> UnsafeMutablePointer<Self>? {
        guard let file, file.pointee.private_tag == driverTag.rawValue,
              let pd = file.pointee.private_data else { return nil }
        return pd.assumingMemoryBound(to: Self.self)
    }

    /// The record behind `vma`'s file, if this driver's (see `state(ofFile:)`).
    /// Precondition: `vma` is a live VMA (mmap_lock held, or inside one of
    /// its vm_operations callbacks).
    @inlinable @inline(__always)
    public static func state(of vma: VMARef) -> UnsafeMutablePointer<Self>? {
        state(ofFile: vma.pointee.vm_file)
    }
}

/// Which record type owns each tag: two record types may not share one.
private let driverTags = Locked<[UInt64: ObjectIdentifier]>([:])

/// A driver's file: owns the tagged private_data record, the MappedFile that
/// carries it and the vm_operations, and builds the driver's mmap requests.
///
/// Lifetime: every VMA made from `mmapRequest` retains the file, the
/// operations and the request's owner (the driver object that owns this
/// one), so the record outlives every mapping of the file, as a kernel
/// module stays loaded while its files are mapped.
public final class DriverFile<State: DriverState>: @unchecked Sendable {
    // @unchecked: `state` is shared with the driver's C callbacks; its
    // synchronisation is the driver's (atomics, its own locks).

    /// The record, allocated and initialised in init, deinitialised and freed
    /// in deinit, never moved: `file`'s private_data points at it for this
    /// object's whole life.
    package let state: UnsafeMutablePointer<State>
    /// The file VMAs of this driver point at (private_data = `state`,
    /// private_tag = `State.driverTag`).
    public let file: MappedFile
    /// The driver's vm_operations_struct.
    public let ops: VMOperations

    /// - Parameters:
    ///   - kind: a character device (device-dax) or a regular file (fs-dax).
    ///   - dax: the inode has S_DAX.
    ///   - state: the record's initial value; fields that need `file.mapping`
    ///     are set by the driver afterwards through `state`.
    ///   - ops: the callbacks, C function pointers that find the record with
    ///     `State.state(of:)`.
    public init(kind: MappedFile.Kind, dax: Bool = true, state initial: State, ops: dax_vm_operations) {
        let tag = State.driverTag.rawValue
        precondition(tag != 0, "driver tag 0 is reserved for files without a driver record")
        let type = ObjectIdentifier(State.self)
        driverTags.withLock { tags in
            if let owner = tags[tag] {
                precondition(owner == type, "driver tag \(hex(UInt64(tag))) used by two record types")
            } else {
                tags[tag] = type
            }
        }
        state = .allocate(capacity: 1)
        state.initialize(to: initial)
        file = MappedFile(kind: kind, dax: dax, privateData: UnsafeMutableRawPointer(state), tag: tag)
        self.ops = VMOperations(ops)
    }

    deinit {
        // No VMA can still reach the record (each retains the owner, which
        // owns this object); clear the tag anyway so a stale file reads as
        // driverless instead of reaching freed memory.
        file.ref.pointee.private_tag = 0
        file.ref.pointee.private_data = nil
        state.deinitialize(count: 1)
        state.deallocate()
    }

    /// f_op->mmap's part of do_mmap: a request for `length` bytes of the file
    /// from page `pgoff`, placed at a multiple of `alignment` (the driver's
    /// get_unmapped_area), with the driver's extra VM_* flags and its mmap
    /// handler (a negative errno refuses the mapping).
    ///
    /// `owner` is the driver object whose memory the record points into
    /// (device ranges, the file's entries and blocks): every VMA of the
    /// request keeps it alive, as vma->vm_file pins the inode and its module.
    public func mmapRequest(owner: AnyObject, length: UInt64, pgoff: UInt64 = 0, prot: Prot = [.read, .write],
                            shared: Bool = true, alignment: UInt64, fixedAddress: UInt64? = nil,
                            extraFlags: UInt64 = 0,
                            mmapHook: (@Sendable (VMARef) -> Int32)? = nil) -> MMapRequest {
        var req = MMapRequest(length: length)
        req.owner = owner
        req.prot = prot
        req.shared = shared
        req.file = file
        req.ops = ops
        req.pgoff = pgoff
        req.alignment = alignment
        req.fixedAddress = fixedAddress
        req.extraFlags = extraFlags
        req.mmapHook = mmapHook
        return req
    }
}
