// include/linux/mmu_notifier.h, mm/mmu_notifier.c: secondary MMUs (devices
// that mirror a process's page tables) subscribe to an address space and
// hear every invalidation of a range before the page tables change
// (invalidate_range_start) and after (invalidate_range_end), with the
// reason (the event) and, for ranges a driver started itself, its owner
// cookie, so the driver can ignore its own invalidations (the seed's
// make_device_exclusive discussion; hmm_range_fault users filter on
// range->owner the same way).
//
// The subscriptions are C records in the mm (dax_mm.notifiers): raising a
// range is a load of a mask and a branch when nobody subscribed, and
// otherwise calls C function pointers; no allocation, no Swift object, so
// the fault and zap paths raise them from a signal handler.
//
// Where the core raises which event (each call site names it):
//   UNMAP            munmap (unmap_vmas), mremap's move of the old range
//                    (move_page_tables)
//   CLEAR            zap_page_range_single (zapPageRange, unmap_mapping_range
//                    per VMA), __split_huge_pmd / __split_huge_pud, the COW
//                    copy (wp_page_copy), the restore of a device-exclusive
//                    entry on a CPU fault (owner NULL)
//   PROTECTION_VMA   mprotect (change_protection, once per change_pud_range)
//   PROTECTION_PAGE  fork's write-protection of the parent (copy_page_range)
//   EXCLUSIVE        make_device_exclusive, with the caller's owner
//   (release)        exit_mmap calls ->release first and unhooks every
//                    subscriber (mmu_notifier_release): its UNMAP reaches none

import CDaxMM

public typealias MMUNotifierRangeRef = UnsafeMutablePointer<dax_mmu_notifier_range>

/// enum mmu_notifier_event
public enum MMUNotifierEvent: UInt32, Sendable, CaseIterable, CustomStringConvertible {
    case unmap = 0, clear, protectionVMA, protectionPage, softDirty, release, migrate, exclusive
    public var description: String {
        switch self {
        case .unmap: return "MMU_NOTIFY_UNMAP"
        case .clear: return "MMU_NOTIFY_CLEAR"
        case .protectionVMA: return "MMU_NOTIFY_PROTECTION_VMA"
        case .protectionPage: return "MMU_NOTIFY_PROTECTION_PAGE"
        case .softDirty: return "MMU_NOTIFY_SOFT_DIRTY"
        case .release: return "MMU_NOTIFY_RELEASE"
        case .migrate: return "MMU_NOTIFY_MIGRATE"
        case .exclusive: return "MMU_NOTIFY_EXCLUSIVE"
        }
    }
}

/// mmu_notifier_range_init: a blockable range of `mm` with `event`.
@inline(__always)
public func mmuNotifierRangeInit(_ event: MMUNotifierEvent, _ mm: MMRef, _ start: UInt64, _ end: UInt64,
                                 flags: UInt32 = DAX_MMU_NOTIFIER_RANGE_BLOCKABLE) -> dax_mmu_notifier_range {
    dax_mmu_notifier_range(mm: mm, start: start, end: end, flags: flags, event: event.rawValue, owner: nil)
}

/// mmu_notifier_range_init_owner: the same, naming who caused it.
@inline(__always)
public func mmuNotifierRangeInitOwner(_ event: MMUNotifierEvent, _ mm: MMRef, _ start: UInt64, _ end: UInt64,
                                      owner: UnsafeMutableRawPointer?,
                                      flags: UInt32 = DAX_MMU_NOTIFIER_RANGE_BLOCKABLE) -> dax_mmu_notifier_range {
    dax_mmu_notifier_range(mm: mm, start: start, end: end, flags: flags, event: event.rawValue, owner: owner)
}

/// mm_has_notifiers
@inline(__always)
public func mmHasNotifiers(_ mm: MMRef) -> Bool {
    dax_load_u32(dax_mm_notifier_mask(mm)) != 0
}

/// mmu_notifier_invalidate_range_start: every subscriber's
/// invalidate_range_start, in slot order. A blockable range cannot fail
/// (a subscriber's error is ignored, as the kernel WARNs and goes on);
/// for a non-blockable one the first -EAGAIN is returned.
@inline(__always) @discardableResult
public func mmuNotifierInvalidateRangeStart(_ range: MMUNotifierRangeRef) -> Int32 {
    let mm = range.pointee.mm!
    guard _slowPath(mmHasNotifiers(mm)) else { return 0 }
    return notifierCallStart(mm, range)
}

/// mmu_notifier_invalidate_range_end
@inline(__always)
public func mmuNotifierInvalidateRangeEnd(_ range: MMUNotifierRangeRef) {
    let mm = range.pointee.mm!
    guard _slowPath(mmHasNotifiers(mm)) else { return }
    notifierCallEnd(mm, range)
}

@inline(never)
func notifierCallStart(_ mm: MMRef, _ range: MMUNotifierRangeRef) -> Int32 {
    let users = dax_mm_notifier_users(mm)
    _ = dax_atomic64_add_return(users, 1)
    defer { _ = dax_atomic64_add_return(users, -1) }
    let mask = dax_load_u32(dax_mm_notifier_mask(mm))
    let subs = dax_mm_notifiers(mm)!
    var ret: Int32 = 0
    for i in 0..<Int(DAX_MMU_NOTIFIERS) where mask & (1 << UInt32(i)) != 0 {
        guard let ops = subs[i].ops, let start = ops.pointee.invalidate_range_start else { continue }
        let r = start(subs[i].ctx, range)
        if r != 0 && range.pointee.flags & DAX_MMU_NOTIFIER_RANGE_BLOCKABLE == 0 && ret == 0 { ret = r }
    }
    return ret
}

@inline(never)
func notifierCallEnd(_ mm: MMRef, _ range: MMUNotifierRangeRef) {
    let users = dax_mm_notifier_users(mm)
    _ = dax_atomic64_add_return(users, 1)
    defer { _ = dax_atomic64_add_return(users, -1) }
    let mask = dax_load_u32(dax_mm_notifier_mask(mm))
    let subs = dax_mm_notifiers(mm)!
    for i in 0..<Int(DAX_MMU_NOTIFIERS) where mask & (1 << UInt32(i)) != 0 {
        guard let ops = subs[i].ops, let end = ops.pointee.invalidate_range_end else { continue }
        end(subs[i].ctx, range)
    }
}

/// Raises [start, end) with `event` around `body` (the start/end pair every
/// call site makes). Inlined: no closure context reaches the hot path.
@inline(__always)
func withMMUNotifierRange<R>(_ event: MMUNotifierEvent, _ mm: MMRef, _ start: UInt64, _ end: UInt64,
                             owner: UnsafeMutableRawPointer? = nil, _ body: () -> R) -> R {
    var range = mmuNotifierRangeInitOwner(event, mm, start, end, owner: owner)
    return withUnsafeMutablePointer(to: &range) { r in
        mmuNotifierInvalidateRangeStart(r)
        let v = body()
        mmuNotifierInvalidateRangeEnd(r)
        return v
    }
}

/// __mmu_notifier_release (mn_hlist_release): exit_mmap tells every
/// subscriber the address space is going (->release) before it unmaps
/// anything, and unhooks each one after its ->release (hlist_del_init_rcu),
/// so the unmap that follows reaches none of them; a later unregister of
/// such a subscription only waits. Returns when no callback is running.
func mmuNotifierRelease(_ mm: MMRef) {
    guard mmHasNotifiers(mm) else { return }
    let mask = dax_load_u32(dax_mm_notifier_mask(mm))
    let subs = dax_mm_notifiers(mm)!
    for i in 0..<Int(DAX_MMU_NOTIFIERS) where mask & (1 << UInt32(i)) != 0 {
        if let ops = subs[i].ops, let release = ops.pointee.release { release(subs[i].ctx, mm) }
    }
    dax_store_u32(dax_mm_notifier_mask(mm), 0)
    waitNotifierUsers(mm)
}

/// synchronize_srcu for the subscriptions: waits for every caller that
/// saw the old mask to leave its callbacks.
func waitNotifierUsers(_ mm: MMRef) {
    var spins = 0
    while dax_atomic64_add_return(dax_mm_notifier_users(mm), 0) != 0 {
        spins += 1
        if spins < 64 { dax_cpu_relax() } else { sched_yield() }
    }
}

/// A subscription: what register returned, for unregister.
public struct MMUNotifierHandle: Hashable, Sendable {
    public let slot: Int
}

extension MM {
    /// mmu_notifier_register: subscribes `ops` (with `context` passed to
    /// every call) to this address space, taking mmap_lock for write as the
    /// kernel does. Throws ENOSPC when DAX_MMU_NOTIFIERS are registered.
    /// Preconditions: `ops` and `context` stay valid until unregistered (or
    /// this MM is gone); the callbacks follow dax_mmu_notifier_ops' rules.
    public func registerMMUNotifier(_ ops: UnsafePointer<dax_mmu_notifier_ops>,
                                    context: UnsafeMutableRawPointer?) throws(MMError) -> MMUNotifierHandle {
        lockWrite()
        defer { unlockWrite() }
        let mask = dax_load_u32(dax_mm_notifier_mask(ref))
        guard let slot = (0..<Int(DAX_MMU_NOTIFIERS)).first(where: { mask & (1 << UInt32($0)) == 0 }) else {
            throw .errno(ENOSPC, "mmu_notifier_register: all \(DAX_MMU_NOTIFIERS) subscriptions in use")
        }
        let subs = dax_mm_notifiers(ref)!
        subs[slot].ops = ops
        subs[slot].ctx = context
        dax_store_u32(dax_mm_notifier_mask(ref), mask | (1 << UInt32(slot)))
        return MMUNotifierHandle(slot: slot)
    }

    /// mmu_notifier_unregister: ->release is called (the address space is
    /// still alive: the subscriber must stop using it), the subscription
    /// goes, and when this returns no callback of it is still running (the
    /// synchronize_srcu of the kernel: zaps from unmap_mapping_range run
    /// without mmap_lock, so the remover waits for callers to drain). A
    /// subscription exit_mmap already released is gone: nothing is called.
    public func unregisterMMUNotifier(_ handle: MMUNotifierHandle) {
        lockWrite()
        defer { unlockWrite() }
        let bit = UInt32(1) << UInt32(handle.slot)
        let mask = dax_load_u32(dax_mm_notifier_mask(ref))
        guard mask & bit != 0 else { return }
        let subs = dax_mm_notifiers(ref)!
        if let ops = subs[handle.slot].ops, let release = ops.pointee.release { release(subs[handle.slot].ctx, ref) }
        dax_store_u32(dax_mm_notifier_mask(ref), mask & ~bit)
        waitNotifierUsers(ref)
        subs[handle.slot] = dax_mmu_subscription()
    }

    /// How many subscriptions this address space has.
    public var mmuNotifierCount: Int { dax_load_u32(dax_mm_notifier_mask(ref)).nonzeroBitCount }
}

#if canImport(Glibc)
import Glibc
#endif
