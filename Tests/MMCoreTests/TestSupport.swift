// Helpers shared by the MMCore suites: kernels, pgmaps over 2 MiB-aligned
// physical ranges, a page_free recorder reachable from a C function pointer,
// error classification and plain pthreads for the blocking tests.
//
// Every test builds its own Kernel; nothing here is global mutable state.

import Testing
@testable import MMCore
import CDaxMM
import DAXBase
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

let KiB: UInt64 = 1 << 10
let MiB: UInt64 = 1 << 20
let GiB: UInt64 = 1 << 30

/// A 1 GiB-aligned physical base well inside a 40-bit address space and far
/// from any System RAM the tests declare unless they say so.
let base: UInt64 = 4 * GiB

/// The physical address space of every test kernel (1 TiB).
let testPhysBits = 40

func makeKernel(pageTablePages: Int = 1 << 16) throws -> Kernel {
    try Kernel(physBits: testPhysBits, pageTablePages: pageTablePages)
}

func phys(_ start: UInt64, _ size: UInt64) -> PhysicalRange { PhysicalRange(start: start, size: size) }

func pfnOf(_ addr: UInt64) -> UInt64 { addr >> UInt64(pageShift) }

/// Records page_free calls. The C callback reaches it through the pgmap's
/// `owner` pointer: word 0 counts calls, word 1 holds the last page address,
/// word 2 the last owner pointer seen.
final class FreeLog: @unchecked Sendable {
    let words: UnsafeMutablePointer<Int64>
    init() {
        words = .allocate(capacity: 3)
        words.initialize(repeating: 0, count: 3)
    }
    deinit { words.deallocate() }

    var owner: UnsafeMutableRawPointer { UnsafeMutableRawPointer(words) }
    var calls: Int64 { dax_atomic64_read(words) }
    var lastPage: UnsafeMutablePointer<dax_page>? { UnsafeMutablePointer(bitPattern: Int(dax_atomic64_read(words + 1))) }
    var lastOwner: UnsafeMutableRawPointer? { UnsafeMutableRawPointer(bitPattern: Int(dax_atomic64_read(words + 2))) }

    /// The body of the page_free op.
    static func record(_ page: UnsafeMutablePointer<dax_page>?, _ owner: UnsafeMutableRawPointer?) {
        guard let owner else { return }
        let w = owner.assumingMemoryBound(to: Int64.self)
        dax_atomic64_set(w + 1, Int64(Int(bitPattern: page)))
        dax_atomic64_set(w + 2, Int64(Int(bitPattern: owner)))
        _ = dax_atomic64_add_return(w, 1)
    }
}

/// dev_pagemap_ops with a recording page_free and, optionally, migrate_to_ram.
func recordingOps(pageFree: Bool = true, migrateToRam: Bool = true) -> DevPagemapOps {
    DevPagemapOps(
        pageFree: pageFree ? { page, owner in FreeLog.record(page, owner) } : nil,
        migrateToRam: migrateToRam ? { _ in 0 } : nil)
}

/// A pgmap of `type` with everything memremap_pages requires for it (ops and
/// owner for PRIVATE/COHERENT; for P2PDMA a page_free when `log` is given).
func makePgmap(_ k: Kernel, _ type: MemoryType, ranges: [PhysicalRange], shift: Int = 0,
               log: FreeLog? = nil) -> DevPagemap {
    switch type {
    case .devicePrivate, .deviceCoherent:
        let log = log ?? FreeLog()
        return DevPagemap(kernel: k, type: type, ranges: ranges, vmemmapShift: shift,
                          ops: recordingOps(migrateToRam: type == .devicePrivate), owner: log.owner)
            .keeping(log)
    case .p2pdma where log != nil:
        return DevPagemap(kernel: k, type: type, ranges: ranges, vmemmapShift: shift,
                          ops: recordingOps(migrateToRam: false), owner: log!.owner)
    default:
        return DevPagemap(kernel: k, type: type, ranges: ranges, vmemmapShift: shift)
    }
}

/// makePgmap + memremap_pages over one range.
func mapped(_ k: Kernel, _ type: MemoryType, start: UInt64 = base, size: UInt64 = 2 * MiB, shift: Int = 0,
            log: FreeLog? = nil) throws -> DevPagemap {
    let pg = makePgmap(k, type, ranges: [phys(start, size)], shift: shift, log: log)
    try pg.memremapPages()
    return pg
}

/// Keeps FreeLogs alive exactly as long as the pgmap that points at them.
private let keptLogs = Locked<[ObjectIdentifier: FreeLog]>([:])
extension DevPagemap {
    func keeping(_ log: FreeLog) -> DevPagemap {
        keptLogs.withLock { $0[ObjectIdentifier(self)] = log }
        return self
    }
}

let allTypes: [MemoryType] = [.devicePrivate, .deviceCoherent, .fsDax, .generic, .p2pdma]

// MARK: errors

/// The errno an MMError carries, by the name tests use for it.
enum ErrKind: String { case invalid, noMemory, noDevice, busy, timedOut, errno, bug }

func kind(_ e: MMError) -> ErrKind {
    switch e {
    case .errno(EINVAL, _): return .invalid
    case .errno(ENOMEM, _): return .noMemory
    case .errno(ENXIO, _): return .noDevice
    case .errno(EBUSY, _): return .busy
    case .errno(ETIMEDOUT, _): return .timedOut
    case .errno: return .errno
    case .bug: return .bug
    }
}

func message(_ e: MMError) -> String {
    switch e {
    case .errno(_, let s): return s
    case .bug(let d): return d.description
    }
}

/// Runs `body`, expecting it to throw an MMError of `expected` kind; returns it.
@discardableResult
func expectMMError(_ expected: ErrKind, sourceLocation: SourceLocation = #_sourceLocation,
                   _ body: () throws -> Void) -> MMError? {
    do {
        try body()
        Issue.record("expected MMError.\(expected), nothing was thrown", sourceLocation: sourceLocation)
        return nil
    } catch let error as MMError {
        #expect(kind(error) == expected, "got \(error)", sourceLocation: sourceLocation)
        return error
    } catch {
        Issue.record("expected MMError.\(expected), got \(error)", sourceLocation: sourceLocation)
        return nil
    }
}

// MARK: counters

func stat(_ k: Kernel, _ item: dax_node_stat) -> Int64 { k.stat(item) }
var fileMapped: dax_node_stat { DAX_NR_FILE_MAPPED }
var filePmdMapped: dax_node_stat { DAX_NR_FILE_PMDMAPPED }

/// The futex word wake_up_var bumps for `addr`.
func wakeSeq(_ k: Kernel, _ addr: UnsafeRawPointer) -> UInt32 { dax_load_u32(waitWord(k.ref, addr)) }

// MARK: threads

private final class ThreadBody {
    let body: @Sendable () -> Void
    init(_ b: @escaping @Sendable () -> Void) { body = b }
}

/// A joinable pthread running `body`.
struct TestThread {
    private let tid: pthread_t
    init(_ body: @escaping @Sendable () -> Void) {
        let ctx = Unmanaged.passRetained(ThreadBody(body)).toOpaque()
        var t = pthread_t()
        let rc = pthread_create(&t, nil, { arg in
            Unmanaged<ThreadBody>.fromOpaque(arg!).takeRetainedValue().body()
            return nil
        }, ctx)
        precondition(rc == 0, "pthread_create failed")
        tid = t
    }
    func join() { pthread_join(tid, nil) }
}

/// A mutable box shared between test threads.
final class Shared<T: Sendable>: Sendable {
    private let m: Locked<T>
    init(_ v: T) { m = Locked(v) }
    func withLock<R>(_ f: (inout T) -> R) -> R { m.withLock { f(&$0) } }
    var value: T { m.withLock { $0 } }
}

/// An unchecked-Sendable wrapper for raw pointers handed to test threads.
struct SendablePtr<P>: @unchecked Sendable { let p: P; init(_ p: P) { self.p = p } }
