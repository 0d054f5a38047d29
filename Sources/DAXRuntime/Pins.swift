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

struct FolioCounters: Equatable, CustomStringConvertible {
    var ref: Int32, pins: Int32
    var description: String { "refcount \(ref), pincount \(pins)" }
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

    /// The distinct folios behind [start, start+len) and their counters.
    private func folioCounters(_ pages: [Page]) -> [(Folio, FolioCounters)] {
        var seen = Set<UInt>()
        var out: [(Folio, FolioCounters)] = []
        for p in pages {
            let f = p.folio
            if seen.insert(UInt(bitPattern: f.raw)).inserted {
                out.append((f, FolioCounters(ref: f.refCount, pins: f.pincount)))
            }
        }
        return out
    }

    /// The counters try_grab_folio(FOLL_PIN) predicts after `pages` are
    /// pinned, from the counters before.
    private func predicted(_ before: [(Folio, FolioCounters)], _ pages: [Page]) -> [FolioCounters] {
        var perFolio: [UInt: Int32] = [:]
        for p in pages { perFolio[UInt(bitPattern: p.folio.raw), default: 0] += 1 }
        return before.map { f, c in
            let k = perFolio[UInt(bitPattern: f.raw)] ?? 0
            return f.isLarge ? FolioCounters(ref: c.ref + k, pins: c.pins + k)
                             : FolioCounters(ref: c.ref + k * Int32(DAX_GUP_PIN_COUNTING_BIAS), pins: c.pins)
        }
    }

    /// The port's pin of the range with `flags`, checked against the
    /// kernel's rules while `during` runs; unpinned after.
    private func portPin(_ name: String, _ w: Window, _ off: UInt64, _ len: UInt64, _ flags: GupFlags,
                         during: () -> CheckResult?) -> (port: CheckResult, kernel: CheckResult?) {
        let n = Int(len / UInt64(pageSize))
        // The folios and their counters before, through a FOLL_GET-free walk:
        // the port's translations give the pfns.
        var pagesBefore: [Page] = []
        for i in 0..<n {
            guard let t = w.translation(off + UInt64(i * pageSize)), let pg = binding.kernel.withUnsafeRecord({ k in
                pfnValid(k, t.pfn) ? pfnToPage(k, t.pfn) : nil }) else { continue }
            pagesBefore.append(pg)
        }
        let before = folioCounters(pagesBefore)
        let pages: [Page]
        do {
            pages = try w.mm.pinPages(w.address(off), count: n, flags: flags)
        } catch {
            let k = during()
            return (CheckResult(name, .fail, "the port refused: \(error)"), k)
        }
        pinLedger = ledger(for: pages)
        let want = predicted(before, pages)
        let got = before.map { f, _ in FolioCounters(ref: f.refCount, pins: f.pincount) }
        phaseInvariants("with \(name) pins held")
        let kernelSide = during()
        w.mm.unpin(pages, dirty: flags.contains(.write))
        pinLedger = nil
        let after = before.map { f, _ in FolioCounters(ref: f.refCount, pins: f.pincount) }
        var problems: [String] = []
        if got != want {
            let i = got.indices.first { got[$0] != want[$0] } ?? 0
            problems.append("folio \(i): \(got[i]) while pinned, the kernel's rule gives \(want[i])")
        }
        if after != before.map(\.1) {
            let i = after.indices.first { after[$0] != before[$0].1 } ?? 0
            problems.append("folio \(i): \(after[i]) after unpin, \(before[i].1) before")
        }
        let large = before.filter { $0.0.isLarge }.count
        let detail = problems.isEmpty
            ? "\(pages.count) page(s) in \(before.count) folio(s) (\(large) large): counters as try_grab_folio predicts, restored by unpin"
            : problems.joined(separator: "; ")
        return (CheckResult(name, problems.isEmpty ? .pass : .fail, detail), kernelSide)
    }

    private func ledger(for pages: [Page]) -> RefLedger {
        var l: RefLedger = [:]
        binding.kernel.withUnsafeRecord { k in
            for p in pages {
                let f = p.folio
                let pfn = pageToPfn(k, f.head)
                l[pfn, default: 0] += f.isLarge ? 1 : Int64(DAX_GUP_PIN_COUNTING_BIAS)
            }
        }
        return l
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
        let target = options.directIOPath ?? "\(options.scratchDirectory)/daxmm-odirect-\(getpid())"
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
