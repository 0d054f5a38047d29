// Pins made for real and mirrored in the port on the same range at the same
// time: io_uring buffer registration (the kernel pins FOLL_LONGTERM) and
// O_DIRECT transfers (the kernel pins the user buffer FOLL_PIN for the I/O).
// The port's pin of the same range must move each folio's refcount and
// pincount exactly as the kernel's rules say (try_grab_folio: a large folio
// gains `refs` references and `refs` pins; a small one GUP_PIN_COUNTING_BIAS
// per pin), and FOLL_LONGTERM on fs-dax is refused (check_vma_flags:
// vma_is_fsdax -> -EOPNOTSUPP), as the kernel refuses it on a real fs-dax file.

import CDaxMM
import DAXBase
import DAXCore
import DAXDevice
import MMCore

#if canImport(Glibc)
import Glibc
#endif

/// Why io_uring buffer registration cannot be used here, or nil.
public func uringUnavailableReason() -> String? { IoUringBuffers.available() }

/// A folio's reference count and pin count.
public struct FolioCounters: Equatable, Sendable, CustomStringConvertible {
    public var ref: Int32, pins: Int32
    public init(ref: Int32, pins: Int32) { self.ref = ref; self.pins = pins }
    public var description: String { "refcount \(ref), pincount \(pins)" }
}

/// The port's pin of a window range, held while the kernel pins the same
/// range, against the counters try_grab_folio predicts.
public struct PortPin: Sendable {
    /// Pages pinned.
    public var pages: Int
    /// The distinct folios behind them, and how many of those are large.
    public var folios: Int
    public var largeFolios: Int
    /// Each folio's counters: before the pin, as try_grab_folio(FOLL_PIN)
    /// predicts them while pinned, as they were while pinned, after unpin.
    public var before: [FolioCounters]
    public var predicted: [FolioCounters]
    public var held: [FolioCounters]
    public var after: [FolioCounters]
    /// The port's invariant violations while the pins were held (the pins'
    /// references in the ledger).
    public var invariantsWhileHeld: [String]

    /// What breaks the rule: counters while pinned other than predicted,
    /// counters after unpin other than before. Empty when both hold.
    public var problems: [String] {
        var out: [String] = []
        if held != predicted {
            let i = held.indices.first { held[$0] != predicted[$0] } ?? 0
            out.append("folio \(i): \(held[i]) while pinned, the kernel's rule gives \(predicted[i])")
        }
        if after != before {
            let i = after.indices.first { after[$0] != before[$0] } ?? 0
            out.append("folio \(i): \(after[i]) after unpin, \(before[i]) before")
        }
        return out
    }
}

/// The distinct folios behind `pages`, in order of first appearance.
private func distinctFolios(_ pages: [Page]) -> [Folio] {
    var seen = Set<UInt>()
    var out: [Folio] = []
    for p in pages where seen.insert(UInt(bitPattern: p.folio.raw)).inserted { out.append(p.folio) }
    return out
}

private func counters(_ folios: [Folio]) -> [FolioCounters] {
    folios.map { FolioCounters(ref: $0.refCount, pins: $0.pincount) }
}

/// The counters try_grab_folio(FOLL_PIN) predicts once `pages` are pinned:
/// a large folio gains one reference and one pin per page, a small one
/// GUP_PIN_COUNTING_BIAS references per pin.
private func predictedCounters(_ folios: [Folio], _ before: [FolioCounters], _ pages: [Page]) -> [FolioCounters] {
    var perFolio: [UInt: Int32] = [:]
    for p in pages { perFolio[UInt(bitPattern: p.folio.raw), default: 0] += 1 }
    return zip(folios, before).map { f, c in
        let k = perFolio[UInt(bitPattern: f.raw)] ?? 0
        return f.isLarge ? FolioCounters(ref: c.ref + k, pins: c.pins + k)
                         : FolioCounters(ref: c.ref + k * Int32(DAX_GUP_PIN_COUNTING_BIAS), pins: c.pins)
    }
}

extension Window {
    /// pin_user_pages of [offset, offset + length) of the window in the
    /// port with `flags`; `during` runs while the pins are held (the
    /// kernel's own pin of the same range), then unpin_user_pages (dirtying
    /// for FOLL_WRITE). The range must be faulted in: the port's GUP does
    /// not raise the window's SIGSEGV. Returns the port's pin (or its
    /// refusal) and what `during` returned, which runs either way.
    public func pinInPort<R>(offset: UInt64, length: UInt64, flags: GupFlags,
                             during: () -> R) -> (port: Result<PortPin, MMError>, during: R) {
        let n = Int(length / UInt64(pageSize))
        let k = mm.kernel
        // The folios and their counters before, from the port's
        // translations (no reference taken).
        var pagesBefore: [Page] = []
        for i in 0..<n {
            guard let t = translation(offset + UInt64(i * pageSize)),
                  let pg = k.withUnsafeRecord({ r in pfnValid(r, t.pfn) ? pfnToPage(r, t.pfn) : nil }) else { continue }
            pagesBefore.append(pg)
        }
        let folios = distinctFolios(pagesBefore)
        let before = counters(folios)
        let pages: [Page]
        do {
            pages = try mm.pinPages(address(offset), count: n, flags: flags)
        } catch {
            return (.failure(error), during())
        }
        let predicted = predictedCounters(folios, before, pages)
        let held = counters(folios)
        var ledger: RefLedger = [:]
        k.withUnsafeRecord { r in
            for p in pages {
                let f = p.folio
                ledger[pageToPfn(r, f.head), default: 0] += f.isLarge ? 1 : Int64(DAX_GUP_PIN_COUNTING_BIAS)
            }
        }
        let broken = binding?.checkInvariants(ledger: ledger) ?? []
        let kernelSide = during()
        mm.unpin(pages, dirty: flags.contains(.write))
        let pin = PortPin(pages: pages.count, folios: folios.count, largeFolios: folios.filter(\.isLarge).count,
                          before: before, predicted: predicted, held: held, after: counters(folios),
                          invariantsWhileHeld: broken)
        return (.success(pin), kernelSide)
    }
}

extension Exerciser {
    /// The bytes of the window the pin phase covers: the first extents, at
    /// most 8 MiB (at least one extent).
    var pinRange: (offset: UInt64, length: UInt64) {
        let len = Swift.min(window!.length, Swift.max(binding.align, 8 << 20))
        return (0, len)
    }

    func runPins(_ w: Window) {
        guard options.pins != .none else { return }
        let (off, len) = pinRange
        // Fault the range in through the window (writing the run's values,
        // so the final data check still holds): GUP in the kernel does not
        // raise SIGSEGV on the reservation, it fails with EFAULT.
        if let bad = touchForPin(w, off, len) {
            result.checks.append(CheckResult("pin-prefault", .fail, "\(bad)"))
            return
        }
        switch options.pins {
        case .uring: pinUring(w, off, len)
        case .odirect: pinDirect(w, off, len)
        case .none: break
        }
    }

    private func touchForPin(_ w: Window, _ off: UInt64, _ len: UInt64) -> String? {
        var page = off / UInt64(pageSize)
        while page < (off + len) / UInt64(pageSize) {
            let o = wordOffset(seed: options.seed, page: page)
            let r = guardedAccess(w.address(o), write: true, value: exerciseValue(seed: options.seed, offset: w.offset + o))
            if !r.ok { return "touching window offset \(hex(o)) before pinning raised \(r)" }
            markWritten(page)
            page += 1
        }
        return nil
    }

    /// The port's pin of the range with `flags`, checked against the
    /// kernel's rules while `during` runs; unpinned after.
    private func portPin(_ name: String, _ w: Window, _ off: UInt64, _ len: UInt64, _ flags: GupFlags,
                         during: () -> CheckResult?) -> (port: CheckResult, kernel: CheckResult?) {
        let (port, kernelSide) = w.pinInPort(offset: off, length: len, flags: flags, during: during)
        switch port {
        case .failure(let error):
            return (CheckResult(name, .fail, "the port refused: \(error)"), kernelSide)
        case .success(let pin):
            for v in pin.invariantsWhileHeld { result.invariantViolations.append("with \(name) pins held: \(v)") }
            let problems = pin.problems
            let detail = problems.isEmpty
                ? "\(pin.pages) page(s) in \(pin.folios) folio(s) (\(pin.largeFolios) large): counters as try_grab_folio predicts, restored by unpin"
                : problems.joined(separator: "; ")
            return (CheckResult(name, problems.isEmpty ? .pass : .fail, detail), kernelSide)
        }
    }

    // MARK: io_uring (FOLL_LONGTERM)

    private func pinUring(_ w: Window, _ off: UInt64, _ len: UInt64) {
        let flags: GupFlags = [.write, .longterm]
        if binding.mode == .fsdax {
            // The port must refuse, as check_vma_flags refuses an fs-dax VMA.
            do {
                let pages = try w.mm.pinPages(w.address(off), count: Int(len) / pageSize, flags: flags)
                w.mm.unpin(pages)
                result.checks.append(CheckResult("pin-longterm-fsdax-port", .fail,
                    "the port pinned \(pages.count) page(s) of an fs-dax file FOLL_LONGTERM; the kernel refuses (-EOPNOTSUPP)"))
            } catch {
                let ok = { if case .errno(let e, _) = error { return e == EOPNOTSUPP }; return false }()
                result.checks.append(CheckResult("pin-longterm-fsdax-port", ok ? .pass : .fail,
                    ok ? "the port refuses FOLL_LONGTERM on fs-dax: \(error)" : "refused with the wrong error: \(error) (want EOPNOTSUPP)"))
            }
            result.checks.append(kernelLongtermOnFsdax())
            return
        }
        let (port, kernel) = portPin("pin-longterm-uring", w, off, len, flags) {
            do {
                let ring = try IoUringBuffers(entries: 4)
                defer { ring.close() }
                try ring.register([.init(address: UInt(w.address(off)), length: Int(len))])
                try ring.unregister()
                return CheckResult("pin-longterm-uring-kernel", .pass,
                    "io_uring registered and unregistered \(formatSize(len)) of the window (FOLL_LONGTERM on \(binding.device.kind == .emulated ? "shmem" : "device-dax"))")
            } catch {
                return CheckResult("pin-longterm-uring-kernel", .fail, "io_uring buffer registration: \(error)")
            }
        }
        result.checks.append(port)
        if let kernel { result.checks.append(kernel) }
    }

    /// The kernel's side of FOLL_LONGTERM on fs-dax: io_uring registration of
    /// a mapping of a file on a real `-o dax` mount.
    private func kernelLongtermOnFsdax() -> CheckResult {
        let name = "pin-longterm-fsdax-kernel"
        guard let path = options.fsdaxFile else {
            return CheckResult(name, .skip, "no file on a -o dax mount given (--fsdax-file): the kernel's refusal was not checked")
        }
        let fd = open(path, O_RDWR | O_CREAT, 0o600)
        guard fd >= 0 else { return CheckResult(name, .fail, "open \(path): \(errnoName(errno))") }
        defer { close(fd) }
        let len = 2 << 20
        guard ftruncate(fd, off_t(len)) == 0 else { return CheckResult(name, .fail, "ftruncate \(path): \(errnoName(errno))") }
        guard let p = mmap(nil, len, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0), p != MAP_FAILED else {
            return CheckResult(name, .fail, "mmap \(path): \(errnoName(errno))")
        }
        defer { munmap(p, len) }
        p.storeBytes(of: 1, as: UInt8.self)
        do {
            let ring = try IoUringBuffers(entries: 4)
            defer { ring.close() }
            do {
                try ring.register([.init(p, length: len)])
                try? ring.unregister()
                return CheckResult(name, .fail, "the kernel registered a FOLL_LONGTERM buffer over \(path): is it on a -o dax mount?")
            } catch {
                let ok = error.errno.rawValue == EOPNOTSUPP
                return CheckResult(name, ok ? .pass : .fail,
                    ok ? "the kernel refuses too: \(error)" : "the kernel refused with \(error.errnoName), the port with EOPNOTSUPP")
            }
        } catch {
            return CheckResult(name, .skip, "io_uring unavailable: \(error)")
        }
    }

    // MARK: O_DIRECT (FOLL_PIN)

    private func pinDirect(_ w: Window, _ off: UInt64, _ len: UInt64) {
        // One file per run: runs in the same process (threads of a test
        // runner) must not truncate each other's file.
        let target = options.directIOPath
            ?? "\(options.scratchDirectory)/daxmm-odirect-\(getpid())-\(UInt64.random(in: 0...UInt64.max))"
        let scratch = options.directIOPath == nil
        let n = Int(len)
        // What the read brings in: the run's value in each page's word.
        let src = UnsafeMutableRawPointer.allocate(byteCount: n, alignment: 4096)
        defer { src.deallocate() }
        src.initializeMemory(as: UInt8.self, repeating: 0, count: n)
        for page in 0..<(n / pageSize) {
            let o = wordOffset(seed: options.seed, page: UInt64(page) + off / UInt64(pageSize)) - off
            src.storeBytes(of: exerciseValue(seed: options.seed, offset: w.offset + off + o), toByteOffset: Int(o), as: UInt64.self)
        }
        if scratch {
            let fd = open(target, O_RDWR | O_CREAT | O_TRUNC, 0o600)
            guard fd >= 0 else {
                result.checks.append(CheckResult("pin-odirect", .fail, "cannot create \(target): \(errnoName(errno))"))
                return
            }
            let wrote = pwrite(fd, src, n, 0)
            fsync(fd)
            close(fd)
            guard wrote == n else {
                result.checks.append(CheckResult("pin-odirect", .fail, "cannot write \(target): \(errnoName(errno))"))
                return
            }
        }
        defer { if scratch { unlink(target) } }
        let dio: DirectIO
        do { dio = try DirectIO(path: target, writable: true) } catch {
            result.checks.append(CheckResult("pin-odirect", .fail, "O_DIRECT open of \(target): \(error)"))
            return
        }
        if !scratch {
            // A block device: put the data there first, through O_DIRECT too.
            do { _ = try dio.write(UnsafeRawBufferPointer(start: src, count: n), at: 0) } catch {
                result.checks.append(CheckResult("pin-odirect", .fail, "O_DIRECT write to \(target): \(error)"))
                return
            }
        }
        // Read into the window (the kernel pins FOLL_PIN|FOLL_WRITE), the
        // port pinning the same range meanwhile.
        let (port, kernel) = portPin("pin-odirect-read", w, off, len, [.write]) {
            do {
                let got = try dio.read(into: UnsafeMutableRawBufferPointer(start: w.pointer + Int(off), count: n), at: 0)
                guard got == n else { return CheckResult("pin-odirect-read-kernel", .fail, "short read: \(got) of \(n)") }
                let same = memcmp(w.pointer + Int(off), src, n) == 0
                return CheckResult("pin-odirect-read-kernel", same ? .pass : .fail,
                    same ? "O_DIRECT read of \(formatSize(len)) from \(target) into the window" : "the data read differs from \(target)")
            } catch {
                return CheckResult("pin-odirect-read-kernel", .fail, "O_DIRECT read: \(error)")
            }
        }
        result.checks.append(port)
        if let kernel { result.checks.append(kernel) }
        // Write from the window (the kernel pins FOLL_PIN, no write).
        let (port2, kernel2) = portPin("pin-odirect-write", w, off, len, []) {
            do {
                let put = try dio.write(UnsafeRawBufferPointer(start: w.pointer + Int(off), count: n), at: 0)
                return CheckResult("pin-odirect-write-kernel", put == n ? .pass : .fail,
                                   put == n ? "O_DIRECT write of \(formatSize(len)) from the window to \(target)" : "short write: \(put) of \(n)")
            } catch {
                return CheckResult("pin-odirect-write-kernel", .fail, "O_DIRECT write: \(error)")
            }
        }
        result.checks.append(port2)
        if let kernel2 { result.checks.append(kernel2) }
    }
}
