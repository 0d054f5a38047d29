// struct mm_struct and the VMA-level parts of mm/mmap.c and mm/vma.c: mmap
// and munmap with the kernel's split rules (mprotect is in Mprotect.swift,
// mremap in Mremap.swift).
//
// The MM object owns a C record (`ref`) that the hot paths use: page tables,
// the sorted VMA array, rss counters and mmap_lock. VMA-changing calls take
// mmap_lock for write; faults and GUP take it for read.

import CDaxMM
import DAXBase
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// PROT_* for mmap/mprotect.
public struct Prot: OptionSet, Sendable {
    public let rawValue: Int
    public init(rawValue: Int) { self.rawValue = rawValue }
    public static let read = Prot(rawValue: 1)
    public static let write = Prot(rawValue: 2)
    public static let exec = Prot(rawValue: 4)
    public static let none: Prot = []
}

/// mmap(2)'s MAP_* flags as x86-64 spells them (include/uapi/asm-generic/
/// mman-common.h, include/uapi/linux/mman.h), and LEGACY_MAP_MASK
/// (include/linux/mman.h): the flags every file accepts.
public enum MapFlag {
    public static let shared: UInt32 = 0x01
    public static let `private`: UInt32 = 0x02
    public static let sharedValidate: UInt32 = 0x03
    /// MAP_TYPE: the bits that say shared, shared-validate or private.
    public static let type: UInt32 = 0x0f
    public static let sync: UInt32 = 0x8_0000
    /// MAP_SHARED | MAP_PRIVATE | MAP_FIXED | MAP_ANONYMOUS | MAP_DENYWRITE |
    /// MAP_EXECUTABLE | MAP_UNINITIALIZED | MAP_GROWSDOWN | MAP_LOCKED |
    /// MAP_NORESERVE | MAP_POPULATE | MAP_NONBLOCK | MAP_STACK | MAP_HUGETLB |
    /// MAP_32BIT | MAP_HUGE_2MB | MAP_HUGE_1GB
    public static let legacyMask: UInt32 = 0x7C07_F973
}

/// What to map.
public struct MMapRequest: @unchecked Sendable {
    public var length: UInt64
    public var prot: Prot = [.read, .write]
    public var shared: Bool = true
    /// MAP_FIXED address (replaces what is there); nil lets get_unmapped_area choose.
    public var fixedAddress: UInt64? = nil
    /// The address chosen is a multiple of this (a DAX driver's
    /// get_unmapped_area aligns to the device alignment).
    public var alignment: UInt64 = UInt64(pageSize)
    /// ... plus this (less than `alignment`): dax_get_unmapped_area places
    /// the start congruent to the file offset modulo the alignment.
    public var alignmentOffset: UInt64 = 0
    /// The MAP_* flags as given to mmap(2), checked as do_mmap checks them
    /// (the MAP_TYPE switch; MAP_SHARED_VALIDATE refuses a flag outside
    /// LEGACY_MAP_MASK and `supportedMapFlags` with -EOPNOTSUPP, MAP_SHARED
    /// drops it). Nil: MAP_SHARED or MAP_PRIVATE as `shared` says.
    public var mapFlags: UInt32? = nil
    /// The file's flags beyond LEGACY_MAP_MASK (f_op's FOP_MMAP_SYNC:
    /// MAP_SYNC).
    public var supportedMapFlags: UInt32 = 0
    public var file: MappedFile? = nil
    public var pgoff: UInt64 = 0
    public var ops: VMOperations? = nil
    /// The driver object behind `file`'s private_data, retained by every VMA
    /// of the mapping (the kernel's vm_file pins the inode and its module).
    public var owner: AnyObject? = nil
    /// Extra VM_* flags to set (VM_HUGEPAGE, VM_MIXEDMAP, VM_PFNMAP, VM_IO, VM_LOCKED, VM_SYNC...).
    public var extraFlags: UInt64 = 0
    /// vma->vm_private_data (unretained; the driver's).
    package var privateData: UnsafeMutableRawPointer? = nil
    /// f_op->mmap: runs on the new VMA before it is inserted; a negative
    /// errno refuses the mapping (nothing is left mapped).
    public var mmapHook: (@Sendable (VMARef) -> Int32)? = nil

    public init(length: UInt64) { self.length = length }
}

public final class MM: @unchecked Sendable {
    // @unchecked: `ref` is shared with hot paths under the kernel's locking
    // rules (mmap_lock, ptlocks, atomics); `retained` is only touched with
    // mmap_lock held for write.
    public let kernel: Kernel
    /// The record: allocated in init, freed in deinit after exit_mmap, never
    /// reassigned. Its VMA array and page tables change only under its
    /// mmap_lock (write), its counters atomically.
    @usableFromInline package let ref: MMRef
    /// Swift objects the VMAs point into (files, ops), per VMA record.
    private(set) var retained: [VMARef: [AnyObject]] = [:]
    /// The anon_vmas each private VMA is chained to (its anon_vma_chain):
    /// its own first, then, after fork, its ancestors'. Changed under
    /// mmap_lock for write.
    private(set) var anonChains: [VMARef: [AnonVMARef]] = [:]
    private static let ids = Atomic<UInt64>(1)

    /// The user address range get_unmapped_area searches (top down).
    public static let mmapBase: UInt64 = 0x7000_0000_0000
    public static let mmapFloor: UInt64 = 0x1000_0000
    /// TASK_SIZE (x86-64, 4-level): the end of user space; MAP_FIXED may go
    /// up to it (the host's own mappings live just below it).
    public static let taskSize: UInt64 = 0x7FFF_FFFF_F000

    public init(kernel: Kernel) throws(MMError) {
        self.kernel = kernel
        ref = .allocate(capacity: 1)
        ref.initialize(to: dax_mm())
        ref.pointee.kernel = kernel.ref
        guard let pgd = ptAllocTable(kernel.ref) else {
            ref.deallocate()
            throw .errno(ENOMEM, "page-table pool exhausted")
        }
        ref.pointee.pgd = pgd
        ref.pointee.vmas_cap = 16
        ref.pointee.vmas = .allocate(capacity: 16)
        ref.pointee.id = MM.ids.add(1, ordering: .relaxed).oldValue
    }

    deinit {
        // exit_mmap: the subscribers hear ->release, then one
        // MMU_NOTIFY_UNMAP range covers the unmap of everything
        // (unmap_vmas), then every table is freed.
        lockWrite()
        mmuNotifierRelease(ref)
        let all = vmaList()
        withMMUNotifierRange(.unmap, ref, 0, MM.taskSize) {
            for v in all {
                zapVMARange(ref, v, v.pointee.vm_start, v.pointee.vm_end)
            }
        }
        removeVMAs(all)
        freePgtables(ref, 0, 1 << 48)
        ptFreeTable(kernel.ref, ref.pointee.pgd)
        unlockWrite()
        ref.pointee.vmas.deallocate()
        ref.deallocate()
    }

    /// Lends the `struct dax_mm` record to `body`, for the hot-path functions
    /// that take an `MMRef` (faults, GUP, zap, walk). The pointer must not
    /// escape `body`; this MM is kept alive until `body` returns. The mm's
    /// locking rules still apply inside `body`.
    @inlinable
    public func withUnsafeRecord<R>(_ body: (MMRef) throws -> R) rethrows -> R {
        try withExtendedLifetime(self) { try body(ref) }
    }

    // MARK: locking (mmap_read_lock, mmap_write_lock)

    public func lockRead() { dax_down_read(dax_mm_mmap_lock(ref)) }
    public func unlockRead() { dax_up_read(dax_mm_mmap_lock(ref)) }
    public func lockWrite() { dax_down_write(dax_mm_mmap_lock(ref)) }
    public func unlockWrite() { dax_up_write(dax_mm_mmap_lock(ref)) }

    // MARK: rss

    /// get_mm_counter(mm, MM_FILEPAGES)
    public var rssFilePages: Int64 { getMMCounter(ref, DAX_MM_FILEPAGES) }
    /// get_mm_counter(mm, MM_ANONPAGES)
    public var rssAnonPages: Int64 { getMMCounter(ref, DAX_MM_ANONPAGES) }
    public func rss(_ c: dax_mm_counter) -> Int64 { getMMCounter(ref, c) }

    // MARK: VMA queries

    /// All VMAs in address order (snapshot; take mmap_lock to keep it valid:
    /// a VMA pointer dies with the munmap/mremap/mprotect that removes it).
    public func vmaList() -> [VMARef] {
        (0..<Int(ref.pointee.nr_vmas)).map { ref.pointee.vmas[$0]! }
    }

    /// find_vma: the first VMA ending above addr (valid as `vmaList`'s).
    public func findVMA(_ addr: UInt64) -> VMARef? { MMCore.findVMA(ref, addr) }

    // MARK: mmap

    /// do_mmap for the cases the port models. Returns the address.
    @discardableResult
    public func mmap(_ req: MMapRequest) throws(MMError) -> UInt64 {
        lockWrite()
        defer { unlockWrite() }
        return try mmapLocked(req)
    }

    func mmapLocked(_ req: MMapRequest) throws(MMError) -> UInt64 {
        guard req.length > 0 else { throw .errno(EINVAL, "mmap: zero length") }
        let len = roundUp(req.length, UInt64(pageSize))
        guard req.alignment >= UInt64(pageSize), req.alignment & (req.alignment - 1) == 0 else {
            throw .errno(EINVAL, "mmap: alignment \(req.alignment) is not a power of two >= 4K")
        }
        var flags: UInt64 = DAX_VM_MAYREAD | DAX_VM_MAYWRITE | DAX_VM_MAYEXEC | req.extraFlags
        if req.prot.contains(.read) { flags |= DAX_VM_READ }
        if req.prot.contains(.write) { flags |= DAX_VM_WRITE }
        if req.prot.contains(.exec) { flags |= DAX_VM_EXEC }
        var shared = req.shared

        let addr: UInt64
        if let fixed = req.fixedAddress {
            guard fixed % UInt64(pageSize) == 0 else { throw .errno(EINVAL, "mmap: MAP_FIXED address \(hex(fixed)) not page aligned") }
            guard fixed >= MM.mmapFloor, fixed + len <= MM.taskSize else {
                throw .errno(ENOMEM, "mmap: [\(hex(fixed)), +\(hex(len))) outside the user range")
            }
            addr = fixed
        } else {
            guard let a = getUnmappedArea(len, alignment: req.alignment, offset: req.alignmentOffset) else {
                throw .errno(ENOMEM, "mmap: no free range of \(hex(len)) aligned to \(hex(req.alignment))")
            }
            addr = a
        }
        if let given = req.mapFlags {
            // calc_vm_flag_bits reads the flags as given.
            if given & MapFlag.sync != 0 { flags |= DAX_VM_SYNC }
            switch given & MapFlag.type {
            case MapFlag.shared, MapFlag.sharedValidate:
                // MAP_SHARED silently drops what is not a legacy flag;
                // MAP_SHARED_VALIDATE refuses what the file does not support.
                let checked = given & MapFlag.type == MapFlag.shared ? given & MapFlag.legacyMask : given
                let unknown = checked & ~(MapFlag.legacyMask | req.supportedMapFlags)
                if unknown != 0 {
                    throw .errno(EOPNOTSUPP, "mmap: MAP_SHARED_VALIDATE with flags \(hex(UInt64(unknown))) the file does not support")
                }
                shared = true
            case MapFlag.private:
                shared = false
            default:
                throw .errno(EINVAL, "mmap: MAP_TYPE \(hex(UInt64(given & MapFlag.type))) is not MAP_SHARED, MAP_SHARED_VALIDATE or MAP_PRIVATE")
            }
        }
        if shared { flags |= DAX_VM_SHARED | DAX_VM_MAYSHARE }
        // A shared anonymous mapping is shmem in the kernel (a file with its
        // own vm_ops); the port does not model shmem: such a VMA maps
        // nothing and its faults SIGBUS.

        let vma = VMARef.allocate(capacity: 1)
        vma.initialize(to: dax_vma())
        vma.pointee.vm_start = addr
        vma.pointee.vm_end = addr + len
        vma.pointee.vm_flags = flags
        // An anonymous VMA's pgoff is its start page (do_mmap), so anon
        // folio->index values stay unique across mremap.
        vma.pointee.vm_pgoff = req.file == nil && !shared ? addr >> UInt64(pageShift) : req.pgoff
        vma.pointee.vm_mm = ref
        vma.pointee.vm_file = req.file?.ref
        vma.pointee.vm_ops = req.ops.map { UnsafePointer($0.ref) }
        vma.pointee.vm_private_data = req.privateData
        if let hook = req.mmapHook {
            let rc = hook(vma)
            if rc < 0 {
                vma.deallocate()
                throw .errno(-rc, "mmap refused by the file's mmap handler")
            }
        }
        vmaSetPageProt(vma)
        // MAP_FIXED replaces what was there.
        if req.fixedAddress != nil {
            do { try munmapLocked(addr, len) } catch {
                vma.deallocate()
                throw error
            }
        }
        if !shared {
            // Private VMAs get anon folios (anon memory, COW copies): the
            // anon_vma is prepared now, published by the first anon fault.
            let av = kernel.anonVMAAlloc()
            vma.pointee.anon_vma_reserve = av
            anonVMAChainLink(av, vma)
            anonChains[vma] = [av]
        }
        insertVMA(vma, retain: [req.file as AnyObject?, req.ops as AnyObject?, req.owner].compactMap { $0 })
        return addr
    }

    /// sys_mmap (arch/x86/kernel/sys_x86_64.c): the byte offset of a
    /// mapping must be page aligned (-EINVAL); the page offset do_mmap takes.
    public static func mmapPageOffset(_ offset: UInt64) throws(MMError) -> UInt64 {
        guard offset % UInt64(pageSize) == 0 else {
            throw .errno(EINVAL, "mmap: offset \(hex(offset)) is not page aligned")
        }
        return offset >> UInt64(pageShift)
    }

    /// get_unmapped_area, top down, the start `offset` past a multiple of
    /// `alignment`.
    func getUnmappedArea(_ len: UInt64, alignment: UInt64, offset: UInt64 = 0) -> UInt64? {
        var ceiling = MM.mmapBase
        let vmas = vmaList()
        var i = vmas.count - 1
        while true {
            let floor = i >= 0 ? vmas[i].pointee.vm_end : MM.mmapFloor
            if ceiling >= len + offset {
                let start = ((ceiling - len - offset) & ~(alignment - 1)) + offset
                if start >= floor && start >= MM.mmapFloor { return start }
            }
            if i < 0 { return nil }
            ceiling = vmas[i].pointee.vm_start
            i -= 1
        }
    }

    // MARK: munmap

    /// do_munmap / do_vmi_munmap: splits VMAs at the edges (asking
    /// may_split first: a refusal fails the whole call with nothing changed),
    /// zaps the range, frees page tables nothing else needs, removes the VMAs.
    public func munmap(_ start: UInt64, _ length: UInt64) throws(MMError) {
        lockWrite()
        defer { unlockWrite() }
        try munmapLocked(start, length)
    }

    func munmapLocked(_ start: UInt64, _ length: UInt64) throws(MMError) {
        guard start % UInt64(pageSize) == 0 else { throw .errno(EINVAL, "munmap: \(hex(start)) not page aligned") }
        guard length > 0 else { throw .errno(EINVAL, "munmap: zero length") }
        let end = start + roundUp(length, UInt64(pageSize))
        try splitEdges(start, end)
        let victims = vmaList().filter { $0.pointee.vm_start >= start && $0.pointee.vm_end <= end }
        // unmap_vmas: one MMU_NOTIFY_UNMAP range over the whole unmap.
        if !victims.isEmpty {
            withMMUNotifierRange(.unmap, ref, start, end) {
                for v in victims { zapVMARange(ref, v, v.pointee.vm_start, v.pointee.vm_end) }
            }
        }
        removeVMAs(victims)
        freePgtables(ref, start, end)
    }

    /// Splits the VMAs straddling `start` and `end` so that [start, end) is
    /// made of whole VMAs. Checks every split first.
    func splitEdges(_ start: UInt64, _ end: UInt64) throws(MMError) {
        var splits: [(VMARef, UInt64)] = []
        for v in vmaList() where v.pointee.vm_start < end && v.pointee.vm_end > start {
            if v.pointee.vm_start < start { splits.append((v, start)) }
            if v.pointee.vm_end > end { splits.append((v, end)) }
        }
        for (v, at) in splits {
            if let mayS = v.pointee.vm_ops?.pointee.may_split {
                let rc = mayS(v, at)
                if rc < 0 { throw .errno(-rc, "split of VMA [\(hex(v.pointee.vm_start)), \(hex(v.pointee.vm_end))) at \(hex(at)) refused by may_split") }
            }
        }
        for (_, at) in splits {
            // The VMA containing `at` may be the upper half of an earlier split.
            guard let v = findVMA(at), v.pointee.vm_start < at else { continue }
            splitVMA(v, at)
        }
    }

    /// __split_vma: [start, at) stays in `vma`, [at, end) moves to a new one.
    /// A huge entry straddling `at` is split first (for DAX that unmaps it).
    func splitVMA(_ vma: VMARef, _ at: UInt64) {
        splitHugeAddress(ref, vma, at)
        let new = VMARef.allocate(capacity: 1)
        new.initialize(to: vma.pointee)
        new.pointee.vm_start = at
        new.pointee.vm_pgoff = vma.pointee.vm_pgoff + ((at - vma.pointee.vm_start) >> UInt64(pageShift))
        // vma_prepare/vma_complete: the file's i_mmap lock covers the new
        // boundary and the new VMA's link, so an unmap_mapping_pages walk sees
        // either the whole VMA or both halves.
        if let file = vma.pointee.vm_file { iMmapLockWrite(file) }
        vma.pointee.vm_end = at
        if let file = vma.pointee.vm_file {
            vmaLinkFileLocked(file, new)
            iMmapUnlockWrite(file)
        }
        cloneAnonChains(from: vma, to: new)
        insertVMA(new, retain: retained[vma] ?? [], linkFile: false)
    }

    /// anon_vma_clone: `new` (a split half or a moved copy of `src`, sharing
    /// its anon_vma) is chained to every anon_vma `src` is.
    func cloneAnonChains(from src: VMARef, to new: VMARef) {
        guard let chain = anonChains[src] else { return }
        for av in chain { anonVMAChainLink(av, new) }
        anonChains[new] = chain
        if let own = vmaAnonVMA(new) { own.pointee.num_active_vmas += 1 }
    }

    /// anon_vma_fork's chaining: `child` (the fork of `parent`) is chained to
    /// every anon_vma of the parent's chain, then gets an anon_vma of its
    /// own whose parent is the parent VMA's, published at once when the
    /// parent had one (the kernel allocates it in anon_vma_fork), else kept
    /// as the reserve its first anon fault publishes.
    func forkAnonChains(parent: VMARef, parentChain: [AnonVMARef], child: VMARef) {
        child.pointee.anon_vma = nil
        child.pointee.anon_vma_reserve = nil
        guard parent.pointee.anon_vma_reserve != nil || vmaAnonVMA(parent) != nil else { return }
        var chain: [AnonVMARef] = []
        let parentAV = vmaAnonVMA(parent)
        if parentAV != nil {
            for av in parentChain {
                anonVMAChainLink(av, child)
                chain.append(av)
            }
        }
        let own = kernel.anonVMAAlloc(parent: parentAV)
        anonVMAChainLink(own, child)
        chain.insert(own, at: 0)
        child.pointee.anon_vma_reserve = own
        if parentAV != nil {
            __atomic_publish_anon_vma(child, own)
            own.pointee.num_active_vmas += 1
        }
        anonChains[child] = chain
    }

    /// The anon_vmas `vma` is chained to (mmap_lock held).
    func anonChain(of vma: VMARef) -> [AnonVMARef] { anonChains[vma] ?? [] }

    // MARK: VMA array maintenance (under mmap_lock for write)

    /// Adds a VMA to the mm and (vma_link_file) to its file's i_mmap, then
    /// calls vm_ops->open.
    func insertVMA(_ vma: VMARef, retain: [AnyObject], linkFile: Bool = true) {
        let m = ref
        if m.pointee.nr_vmas == m.pointee.vmas_cap {
            let (n, cap) = grownVMAArray(m.pointee.vmas, count: m.pointee.nr_vmas, capacity: m.pointee.vmas_cap, minimum: 16)
            m.pointee.vmas = n
            m.pointee.vmas_cap = cap
        }
        var i = Int(m.pointee.nr_vmas)
        while i > 0, m.pointee.vmas[i - 1]!.pointee.vm_start > vma.pointee.vm_start {
            m.pointee.vmas[i] = m.pointee.vmas[i - 1]
            i -= 1
        }
        m.pointee.vmas[i] = vma
        m.pointee.nr_vmas += 1
        if !retain.isEmpty { retained[vma] = retain }
        if linkFile { vmaLinkFile(vma) }
        vma.pointee.vm_ops?.pointee.open?(vma)
    }

    func removeVMAs(_ victims: [VMARef]) {
        guard !victims.isEmpty else { return }
        let set = Set(victims)
        let m = ref
        var j = 0
        for i in 0..<Int(m.pointee.nr_vmas) {
            let v = m.pointee.vmas[i]!
            if set.contains(v) { continue }
            m.pointee.vmas[j] = v
            j += 1
        }
        m.pointee.nr_vmas = Int64(j)
        for v in victims {
            unlinkFileVMA(v)
            // unlink_anon_vmas
            for av in anonChains[v] ?? [] {
                anonVMAChainUnlink(av, v)
                if vmaAnonVMA(v) == av { av.pointee.num_active_vmas -= 1 }
            }
            anonChains[v] = nil
            v.pointee.vm_ops?.pointee.close?(v)
            retained[v] = nil
            v.deallocate()
        }
    }
}

/// find_vma on the raw record (binary search; caller holds mmap_lock).
@inline(__always)
public func findVMA(_ mm: MMRef, _ addr: UInt64) -> VMARef? {
    var lo = 0, hi = Int(mm.pointee.nr_vmas)
    let vmas = mm.pointee.vmas!
    while lo < hi {
        let mid = (lo + hi) >> 1
        if vmas[mid]!.pointee.vm_end > addr { hi = mid } else { lo = mid + 1 }
    }
    return lo < Int(mm.pointee.nr_vmas) ? vmas[lo] : nil
}

/// vma_lookup: the VMA containing addr.
@inline(__always)
public func vmaLookup(_ mm: MMRef, _ addr: UInt64) -> VMARef? {
    guard let v = findVMA(mm, addr), v.pointee.vm_start <= addr else { return nil }
    return v
}

@inline(__always) func roundUp(_ v: UInt64, _ a: UInt64) -> UInt64 { (v + a - 1) & ~(a - 1) }
@inline(__always) func roundDown(_ v: UInt64, _ a: UInt64) -> UInt64 { v & ~(a - 1) }
