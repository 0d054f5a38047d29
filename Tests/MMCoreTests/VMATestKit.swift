// Helpers shared by the Insert*, Zap*, VMA* and Gup* tests. Everything is
// namespaced in `VMAKit` so it cannot collide with other helper files.

import CDaxMM
import Testing
@testable import MMCore
import MMTestSupport

enum VMAKit {
    /// The errno of an MMError.errno thrown by `body`; nil if nothing was
    /// thrown, -1 for another MMError case.
    static func errno(_ body: () throws -> Void) -> Int32? {
        do {
            try body()
            return nil
        } catch {
            if case .errno(let e, _)? = error as? MMError { return e }
            return -1
        }
    }

    /// Runs `body` with a vm_fault for `addr` in `vma`.
    static func withVMF<R>(_ vma: VMARef, _ addr: UInt64, write: Bool = false, _ body: (VMFaultRef) -> R) -> R {
        var vmf = dax_vm_fault()
        vmf.vma = vma
        vmf.address = addr & ~UInt64(pageSize - 1)
        vmf.real_address = addr
        if vmf.address >= vma.pointee.vm_start { vmf.pgoff = linearPageIndex(vma, vmf.address) }
        vmf.flags = write ? DAX_FAULT_FLAG_WRITE : 0
        return withUnsafeMutablePointer(to: &vmf) { body($0) }
    }

    /// Runs `body` under mmap_lock held for read.
    static func read<R>(_ mm: MM, _ body: () throws -> R) rethrows -> R {
        mm.lockRead()
        defer { mm.unlockRead() }
        return try body()
    }

    /// Runs `body` under mmap_lock held for write.
    static func write<R>(_ mm: MM, _ body: () throws -> R) rethrows -> R {
        mm.lockWrite()
        defer { mm.unlockWrite() }
        return try body()
    }

    /// The PTE value mapping addr (0 when there is no PTE table or entry).
    static func pte(_ mm: MM, _ addr: UInt64) -> PTEntry {
        guard let p = walk(mm.ref, addr).pte else { return 0 }
        return p.pointee
    }

    /// The PMD value for addr (0 when there is no PMD table).
    static func pmd(_ mm: MM, _ addr: UInt64) -> PTEntry {
        guard let p = walk(mm.ref, addr).pmd else { return 0 }
        return p.pointee
    }

    /// The PUD value for addr (0 when there is no PUD table).
    static func pud(_ mm: MM, _ addr: UInt64) -> PTEntry {
        guard let p = walk(mm.ref, addr).pud else { return 0 }
        return p.pointee
    }

    /// The counters one folio and the whole system carry, compared before
    /// and after each operation.
    struct Counters: Equatable, CustomStringConvertible {
        var ref: Int32
        var mapcount: Int32
        var entire: Int32
        var pincount: Int32
        var rss: Int64
        var fileMapped: Int64
        var pmdMapped: Int64
        var pinAcquired: Int64
        var pinReleased: Int64

        var description: String {
            "ref \(ref) map \(mapcount) entire \(entire) pin \(pincount) rss \(rss) NR_FILE_MAPPED \(fileMapped) NR_FILE_PMDMAPPED \(pmdMapped) pins +\(pinAcquired)/-\(pinReleased)"
        }
    }

    static func counters(_ kernel: Kernel, _ mm: MM, _ folio: Folio) -> Counters {
        Counters(ref: folio.refCount, mapcount: folio.mapcount, entire: folio.entireMapcount,
                 pincount: folio.pincount, rss: mm.rssFilePages,
                 fileMapped: kernel.stat(DAX_NR_FILE_MAPPED), pmdMapped: kernel.stat(DAX_NR_FILE_PMDMAPPED),
                 pinAcquired: kernel.stat(DAX_NR_FOLL_PIN_ACQUIRED), pinReleased: kernel.stat(DAX_NR_FOLL_PIN_RELEASED))
    }

    static func counters(_ rig: FaultRig, _ folio: Folio) -> Counters { counters(rig.kernel, rig.mm, folio) }

    /// Page-table walk results helpers.
    static func isHugeLeaf(_ e: PTEntry) -> Bool { entryLeaf(e) }

    /// Allocates a zeroed page array.
    static func pages(_ n: Int) -> PageArray {
        let p = PageArray.allocate(capacity: n)
        p.initialize(repeating: nil, count: n)
        return p
    }

    /// Reports drained with the functions that made them.
    static func reportFunctions(_ kernel: Kernel) -> [String] { kernel.drainReports().map(\.function) }
}
