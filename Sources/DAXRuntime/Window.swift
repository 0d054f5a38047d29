// A managed window: host address space reserved PROT_NONE and mapped in the
// port's MM at the same addresses. The first touch of a page raises SIGSEGV;
// the handler (CDaxWindow) calls the port's handle_mm_fault, whose inserts
// reach the host through the mirror; the access then retries on device
// memory. Changes made through the port (munmap, mprotect, zap, truncate,
// hole punch, dax_break_layout) reach the host the same way.

import CDaxMM
import CDaxWindow
import DAXBase
import DAXCore
import DAXDevice
import MMCore

#if canImport(Glibc)
import Glibc
#endif

public final class Window: @unchecked Sendable {
    // @unchecked: `slot` is the handler's record; after publication only its
    // atomics change. `closed` is guarded by `lock`.
    /// The binding; nil once it is gone (a window closed by the binding's
    /// deinit).
    public private(set) weak var binding: Binding?
    /// The port's address space the window lives in (kept alive for close).
    public let mm: MM
    public let deviceName: String
    /// Reports claimed at close, returned by the next takeReports.
    private let leftover = Locked<[WindowReport]>([])
    /// Host (and port) address of the window's first byte.
    public let base: UInt64
    public let length: UInt64
    /// Device (devdax) or file (fsdax) offset of `base`.
    public let offset: UInt64
    /// The handler's record: owned by CDaxWindow's fixed table, published in
    /// init, unpublished in closeWindow; never freed.
    let slot: UnsafeMutablePointer<dax_window>
    private let reservation: (address: UnsafeMutableRawPointer, length: Int)
    private let lock = Locked(false)

    /// What the window maps.
    public enum Kind: Sendable, Equatable {
        /// MAP_SHARED of the device (devdax) or the file (fsdax).
        case shared
        /// MAP_PRIVATE of the file: copy-on-write into the port's ordinary memory.
        case privateFile
        /// Anonymous private memory of the port, with or without MADV_HUGEPAGE.
        case anonymous, anonymousHuge
    }
    public let kind: Kind

    init(binding b: Binding, length: UInt64, offset: UInt64, pastTheEnd: Bool = false, kind: Kind = .shared) throws(RuntimeError) {
        let anon = kind == .anonymous || kind == .anonymousHuge
        let align = anon ? UInt64(pageSize) : b.align
        let what = b.mode == .devdax ? "device" : "file"
        guard length > 0 else { throw .invalid("\(b.device.name): window size 0") }
        guard length % align == 0 else {
            throw .invalid("\(b.device.name): window size \(formatSize(length)) is not a multiple of the device alignment \(formatSize(align))")
        }
        guard offset % align == 0 else {
            throw .invalid("\(b.device.name): window offset \(hex(offset)) is not aligned to the device alignment \(formatSize(align))")
        }
        guard anon || offset <= b.mappableSize, anon || pastTheEnd || length <= b.mappableSize - offset else {
            throw .invalid("\(b.device.name): a window of \(formatSize(length)) at offset \(hex(offset)) does not fit the \(what) (\(formatSize(b.mappableSize)))")
        }
        self.binding = b
        self.kind = kind
        self.mm = b.mm
        self.deviceName = b.device.name
        self.length = length
        self.offset = offset
        // The window's base is aligned to the largest extent the port may
        // insert here, so a PMD or PUD insert lands on an aligned host range.
        let placement = max(align, length >= UInt64(pudSize) ? UInt64(pudSize) : (length >= UInt64(pmdSize) ? UInt64(pmdSize) : align))
        let reserveLen = Int(length + placement)
        guard let raw = mmap(nil, reserveLen, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0),
              raw != MAP_FAILED else {
            throw .host(call: "mmap", errno: errno, detail: "reserving a \(formatSize(length)) window")
        }
        let start = UInt64(UInt(bitPattern: raw))
        let aligned = (start + placement - 1) & ~(placement - 1)
        // Trim the reservation to [aligned, aligned + length).
        if aligned > start { Glibc.munmap(raw, Int(aligned - start)) }
        let tail = start + UInt64(reserveLen) - (aligned + length)
        if tail > 0 { Glibc.munmap(UnsafeMutableRawPointer(bitPattern: UInt(aligned + length)), Int(tail)) }
        base = aligned
        reservation = (UnsafeMutableRawPointer(bitPattern: UInt(aligned))!, Int(length))

        // The port's VMA at the same address.
        let pgoff = offset >> UInt64(pageShift)
        var req: MMapRequest
        if anon {
            req = MMapRequest(length: length)
            req.shared = false
            req.fixedAddress = aligned
        } else if let d = b.devdax {
            req = d.mmapRequest(length: length, pgoff: pgoff, fixedAddress: aligned)
        } else {
            req = b.file!.mmapRequest(length: length, pgoff: pgoff)
            req.fixedAddress = aligned
        }
        if kind == .privateFile {
            // mmap(MAP_PRIVATE): the request's MAP_* flags say private.
            req.shared = false
            req.mapFlags = MapFlag.private
        }
        let got: UInt64
        do { got = try b.mm.mmap(req) } catch {
            Glibc.munmap(reservation.address, reservation.length)
            throw .port("\(b.device.name): mmap of the window in the port: \(error)")
        }
        if kind == .anonymousHuge {
            do { try b.mm.madvise(aligned, length, .hugepage) } catch {
                try? b.mm.munmap(got, length)
                Glibc.munmap(reservation.address, reservation.length)
                throw .port("madvise(MADV_HUGEPAGE) of the window: \(error)")
            }
        }
        guard got == aligned else {
            try? b.mm.munmap(got, length)
            Glibc.munmap(reservation.address, reservation.length)
            throw .port("\(b.device.name): the port placed the window at \(hex(got)), not \(hex(aligned))")
        }
        guard let s = dax_window_publish(aligned, length, b.mm.withUnsafeRecord { $0 }, b.mirror) else {
            try? b.mm.munmap(aligned, length)
            Glibc.munmap(reservation.address, reservation.length)
            throw .invalid("\(b.device.name): too many windows open (at most \(DAX_WIN_MAX_WINDOWS))")
        }
        slot = s
        // Stale reports about these addresses (an earlier window there) are
        // not this window's.
        _ = takeWindowReports(in: aligned..<(aligned + length))
    }

    deinit { closeWindow() }

    /// Unmaps the window from the port (the mirror returns every host extent
    /// to PROT_NONE), unpublishes it and releases the reservation. Idempotent.
    public func closeWindow() {
        let first = lock.withLock { closed -> Bool in
            if closed { return false }
            closed = true
            return true
        }
        guard first else { return }
        try? mm.munmap(base, length)
        dax_window_unpublish(slot)
        let left = takeWindowReports(in: base..<(base + length)).reports
        leftover.withLock { $0.append(contentsOf: left) }
        Glibc.munmap(reservation.address, reservation.length)
        binding?.forget(self)
    }

    func takeLeftover() -> [WindowReport] { leftover.withLock { l in defer { l = [] }; return l } }

    /// The window's memory. Touching it faults through the port.
    public var pointer: UnsafeMutableRawPointer { reservation.address }

    /// The address of byte `offset` of the window.
    public func address(_ offset: UInt64) -> UInt64 { base + offset }

    // MARK: changes through the port

    /// munmap through the port: the VMA goes, its entries are zapped and the
    /// host extents return to PROT_NONE; later accesses there SIGSEGV.
    public func munmap(offset: UInt64, length: UInt64) throws(RuntimeError) {
        do { try mm.munmap(base + offset, length) } catch {
            throw .port("munmap [\(hex(base + offset)), +\(hex(length))): \(error)")
        }
    }

    /// mprotect through the port.
    public func mprotect(offset: UInt64, length: UInt64, _ prot: Prot) throws(RuntimeError) {
        do { try mm.mprotect(base + offset, length, prot) } catch {
            throw .port("mprotect [\(hex(base + offset)), +\(hex(length))): \(error)")
        }
    }

    /// zap_page_range_single through the port: the entries go, the VMA stays.
    public func zap(offset: UInt64, length: UInt64) {
        mm.lockRead()
        defer { mm.unlockRead() }
        mm.withUnsafeRecord { mm in zapPageRange(mm, base + offset, base + offset + length) }
    }

    // MARK: statistics

    public struct Stats: Sendable, Equatable {
        public var faults: Int64, writeFaults: Int64
        public var portNanos: Int64, handlerNanos: Int64
        public var refused: Int64, sigbus: Int64, sigsegv: Int64
    }

    public var stats: Stats {
        Stats(faults: dax_window_stat(&slot.pointee.faults), writeFaults: dax_window_stat(&slot.pointee.write_faults),
              portNanos: dax_window_stat(&slot.pointee.port_nanos), handlerNanos: dax_window_stat(&slot.pointee.handler_nanos),
              refused: dax_window_stat(&slot.pointee.refused), sigbus: dax_window_stat(&slot.pointee.sigbus),
              sigsegv: dax_window_stat(&slot.pointee.sigsegv))
    }

    // MARK: the port's view of an address

    /// What the port's page table maps at `offset`: the leaf's level, pfn of
    /// the exact 4 KiB page, and whether it is writable; nil when nothing is
    /// mapped (walked under mmap_lock for read).
    public func translation(_ offset: UInt64) -> Translation? {
        mm.lockRead()
        defer { mm.unlockRead() }
        return mm.withUnsafeRecord { mm in portTranslation(mm, base + offset) }
    }
}

public struct Translation: Sendable, Equatable, CustomStringConvertible {
    public enum Level: Int, Sendable { case pte = 0, pmd = 1, pud = 2 }
    public var level: Level
    /// The pfn of the 4 KiB page holding the address.
    public var pfn: UInt64
    public var writable: Bool
    public var extentBytes: UInt64 { [UInt64(pageSize), UInt64(pmdSize), UInt64(pudSize)][level.rawValue] }
    public var description: String {
        "\(["PTE", "PMD", "PUD"][level.rawValue]) pfn \(hex(pfn))\(writable ? " rw" : " ro")"
    }
}

/// follow_page's walk, read-only: the leaf covering `addr`, nil if none.
/// Precondition: mmap_lock held for read.
func portTranslation(_ mm: MMRef, _ addr: UInt64) -> Translation? {
    let pgd = pgdOffset(mm, addr)
    guard entryPresent(dax_load_u64(pgd)) else { return nil }
    let pud = pudOffset(pgd, addr)
    let pude = dax_load_u64(pud)
    guard entryPresent(pude) else { return nil }
    if entryLeaf(pude) {
        let pfn = entryPfn(pude) + (addr & UInt64(pudSize - 1)) >> UInt64(pageShift)
        return Translation(level: .pud, pfn: pfn, writable: entryWrite(pude))
    }
    let pmd = pmdOffset(pud, addr)
    let pmde = dax_load_u64(pmd)
    guard entryPresent(pmde) else { return nil }
    if entryLeaf(pmde) {
        let pfn = entryPfn(pmde) + (addr & UInt64(pmdSize - 1)) >> UInt64(pageShift)
        return Translation(level: .pmd, pfn: pfn, writable: entryWrite(pmde))
    }
    let pte = dax_load_u64(pteOffset(pmd, addr))
    guard entryPresent(pte) else { return nil }
    return Translation(level: .pte, pfn: entryPfn(pte), writable: entryWrite(pte))
}
