// include/linux/mm.h: folio_get / folio_put and the wait-on-variable helpers
// fs-dax uses to wait for a folio to go idle.
//
// Public functions here take raw records (KernelRef, MMRef, VMARef, Page,
// PageArray); their preconditions are in Kernel.swift ("The raw-record API").

import CDaxMM
import DAXBase

/// folio_get: +1 on a folio that already has a reference.
///
/// The kernel's VM_BUG_ON_FOLIO(folio_ref_count + 127u <= 127u) fires on a
/// count of 0 (a free folio: the seed's crash) or near overflow. The port
/// records the report, leaves the count alone and returns false; the caller
/// must fail the operation.
@inline(__always)
public func folioGet(_ k: KernelRef, _ folio: Folio) -> Bool {
    if UInt32(bitPattern: folio.refCount) &+ 127 <= 127 {
        vmReport(k, folio.head, rule: "VM_BUG_ON_FOLIO(((unsigned int) folio_ref_count(folio) + 127u <= 127u))",
                 function: "folio_get")
        return false
    }
    folio.refInc()
    return true
}

/// folio_put: -1; at 0 the folio is freed (for ZONE_DEVICE,
/// free_zone_device_folio).
@inline(__always)
public func folioPut(_ k: KernelRef, _ folio: Folio) {
    folioPutRefs(k, folio, 1)
}

/// folio_put_refs
@inline(__always)
public func folioPutRefs(_ k: KernelRef, _ folio: Folio, _ refs: Int32) {
    let v = folio.refSubReturn(refs)
    if v == 0 {
        folioFree(k, folio)
    } else if v < 0 {
        vmReport(k, folio.head, rule: "VM_BUG_ON_FOLIO(folio_ref_count(folio) < 0) after put", function: "folio_put_refs")
    }
}

/// __folio_put: a ZONE_DEVICE folio goes to free_zone_device_folio, a folio
/// of ordinary memory back to the page allocator.
@inline(__always)
func folioFree(_ k: KernelRef, _ folio: Folio) {
    if folio.isZoneDevice {
        freeZoneDeviceFolio(k, folio)
    } else if pfnInRAM(k, UInt64(folio.raw - k.pointee.vmemmap)) {
        freeRAMFolio(k, folio)
    } else {
        vmReport(k, folio.head, rule: "__folio_put of a page that is neither ZONE_DEVICE nor in the page allocator's zone", function: "__folio_put")
    }
}

// MARK: wait_var_event / wake_up_var

@inline(__always)
func waitBucket(_ addr: UnsafeRawPointer) -> Int {
    var h = UInt(bitPattern: addr) >> 6
    h ^= h >> 8
    return Int(h & 255)
}

/// The futex word of `addr`'s bucket.
@inline(__always)
func waitWord(_ k: KernelRef, _ addr: UnsafeRawPointer) -> UnsafeMutablePointer<UInt32> {
    dax_kernel_wait_table(k) + waitBucket(addr)
}

/// wake_up_var: wakes every waiter hashed to `addr`'s bucket; they recheck.
/// The sequence bump keeps a waiter that is about to sleep from sleeping;
/// the system call happens only when someone already sleeps there.
@inline(__always)
public func wakeUpVar(_ k: KernelRef, _ addr: UnsafeRawPointer) {
    let b = waitBucket(addr)
    let w = dax_kernel_wait_table(k) + b
    _ = dax_inc_u32(w)
    if dax_load_u32(dax_kernel_wait_sleepers(k) + b) != 0 {
        dax_futex_wake(w, Int32.max)
    }
}

/// waitqueue_active(__var_waitqueue(addr)): someone sleeps in waitVarEvent
/// on `addr`'s bucket. Tests use it to know a waiter is really blocked.
public func varWaitqueueActive(_ k: KernelRef, _ addr: UnsafeRawPointer) -> Bool {
    dax_load_u32(dax_kernel_wait_sleepers(k) + waitBucket(addr)) != 0
}

/// wait_var_event_timeout: waits until `condition()` holds, woken by
/// wakeUpVar on `addr`. Returns false if `timeoutNanos` passed first
/// (negative: no limit).
public func waitVarEvent(_ k: KernelRef, _ addr: UnsafeRawPointer, timeoutNanos: Int64,
                         _ condition: () -> Bool) -> Bool {
    let b = waitBucket(addr)
    let w = dax_kernel_wait_table(k) + b
    let sleepers = dax_kernel_wait_sleepers(k) + b
    let deadline = timeoutNanos < 0 ? UInt64.max : monotonicNanos() &+ UInt64(timeoutNanos)
    while true {
        let seq = dax_load_u32(w)
        if condition() { return true }
        let now = monotonicNanos()
        if now >= deadline { return false }
        // Cap each sleep so a wake-up hashed elsewhere cannot strand us.
        let slice = min(deadline - now, 10_000_000)
        _ = dax_inc_u32(sleepers)
        // Recheck after announcing ourselves: a wake that saw no sleeper has
        // bumped the sequence, so the futex wait below returns at once.
        if condition() {
            dax_dec_u32(sleepers)
            return true
        }
        _ = dax_futex_wait(w, seq, Int64(slice))
        dax_dec_u32(sleepers)
    }
}

// MARK: the folio lock (mm/filemap.c: folio_lock, __folio_lock, folio_unlock)

/// folio_trylock: takes PG_locked if it is free.
@inline(__always)
public func folioTrylock(_ folio: Folio) -> Bool {
    !dax_test_and_set_bit_lock(Int32(DAX_PG_locked.rawValue), dax_page_flags(folio.raw))
}

/// folio_lock: takes PG_locked, sleeping until its holder unlocks
/// (__folio_lock's wait on the folio's bit waitqueue, here the wait table
/// bucket of the head's flags word). `timeoutNanos` < 0 waits for ever
/// (TASK_UNINTERRUPTIBLE); otherwise false when it passed first (the
/// fatal-signal return of folio_lock_killable, -EINTR to callers).
@inline(__always) @discardableResult
public func folioLock(_ k: KernelRef, _ folio: Folio, timeoutNanos: Int64 = -1) -> Bool {
    if folioTrylock(folio) { return true }
    return waitVarEvent(k, UnsafeRawPointer(dax_page_flags(folio.raw)), timeoutNanos: timeoutNanos) {
        folioTrylock(folio)
    }
}

/// folio_unlock: releases PG_locked and wakes its waiters (folio_wake_bit);
/// without waiters the wake is a counter bump and a load.
@inline(__always)
public func folioUnlock(_ k: KernelRef, _ folio: Folio) {
    if !folio.isLocked {
        vmReport(k, folio.head, rule: "VM_BUG_ON_FOLIO(!folio_test_locked(folio))", function: "folio_unlock")
        return
    }
    dax_clear_bit_unlock(Int32(DAX_PG_locked.rawValue), dax_page_flags(folio.raw))
    wakeUpVar(k, UnsafeRawPointer(dax_page_flags(folio.raw)))
}

/// folio_wait_locked: waits until nobody holds the folio lock, without
/// taking it (migration_entry_wait's folio_put_wait_locked).
public func folioWaitLocked(_ k: KernelRef, _ folio: Folio, timeoutNanos: Int64 = -1) -> Bool {
    waitVarEvent(k, UnsafeRawPointer(dax_page_flags(folio.raw)), timeoutNanos: timeoutNanos) { !folio.isLocked }
}
