// diff-longterm-pin-devdax and diff-odirect-pins: the kernel pins device-dax
// memory for real (io_uring buffer registration: FOLL_LONGTERM; an O_DIRECT
// transfer: FOLL_PIN) while the port pins the same range of its window;
// both must succeed, and the port's folio counters must be what
// try_grab_folio predicts while pinned and what they were after unpin.

import DAXBase
import DAXDevice
import DAXRuntime
import Foundation
import MMCore

#if canImport(Glibc)
import Glibc
#endif

enum DiffPins {
    /// The range pinned: 2 MiB (512 small folios on a 4K device, one
    /// compound folio on a 2M one, 512 pages of one 1 GiB folio).
    static let pinBytes = UInt64(2 << 20)

    /// A window over the first extents of `dev` with [0, pinBytes) written
    /// page by page (the port's GUP does not raise the window's SIGSEGV; the
    /// range must be faulted in first).
    static func prefaulted(_ t: TestContext, _ b: Binding, _ value: (UInt64) -> UInt64) throws -> Window {
        let a = b.align
        let w = try t.portWindow(b, length: max(a, pinBytes))
        var o: UInt64 = 0
        while o < pinBytes {
            let r = guardedAccess(w.address(o), write: true, value: value(o))
            try t.require(r.ok, "prefaulting window offset \(hex(o)): \(r)")
            o += UInt64(pageSize)
        }
        return w
    }

    /// The port's pin against try_grab_folio's prediction.
    static func checkCounters(_ t: TestContext, _ what: String, _ pin: PortPin) {
        t.log("\(what): \(pin.pages) page(s) in \(pin.folios) folio(s) (\(pin.largeFolios) large); before \(pin.before.first.map { "\($0)" } ?? "-"), pinned \(pin.held.first.map { "\($0)" } ?? "-"), predicted \(pin.predicted.first.map { "\($0)" } ?? "-")")
        t.expectEqual(pin.pages, Int(pinBytes) / pageSize, "\(what): pages pinned")
        t.expect(pin.held == pin.predicted, "\(what): counters while pinned \(pin.problems.first ?? "")")
        t.expect(pin.after == pin.before, "\(what): counters after unpin \(pin.problems.last ?? "")")
        t.expect(pin.invariantsWhileHeld.isEmpty, "\(what): port invariants with the pins held: \(pin.invariantsWhileHeld.first ?? "")")
    }

    // MARK: FOLL_LONGTERM

    static func longterm(_ t: TestContext) throws {
        let aligns = try t.guardedDevdaxAligns()
        for align in aligns {
            let dev = try t.openDevDax(align)
            let b = try t.bindPort(dev)
            let w = try prefaulted(t, b) { 0x4C4F_4E47_0000_0000 | $0 }
            // The kernel's own mapping of the same range, not touched: the
            // registration faults it in (GUP), as an application's would.
            let km = try t.kernelMapping(dev, offset: 0, length: max(b.align, pinBytes))
            var plain = "not run"
            let (port, windowRegistration) = w.pinInPort(offset: 0, length: pinBytes, flags: [.write, .longterm]) { () -> String in
                // The window's range (the host maps it from the device) while
                // the port holds its pin, and a plain mapping of the device.
                plain = register(km.address, pinBytes)
                return register(w.base, pinBytes)
            }
            let portOutcome: String
            switch port {
            case .success(let pin):
                portOutcome = "pinned"
                checkCounters(t, "\(align) FOLL_LONGTERM", pin)
            case .failure(let e):
                portOutcome = errnoOutcome(e.code)
                t.log("\(align): the port refused: \(e)")
            }
            t.compare("\(align): FOLL_LONGTERM pin of 2 MiB of the window (port: pin_user_pages; kernel: io_uring registration)",
                      port: portOutcome, kernel: windowRegistration)
            t.compare("\(align): FOLL_LONGTERM pin of 2 MiB of device-dax (kernel: registration of its own mapping)",
                      port: portOutcome, kernel: plain)
        }
    }

    /// io_uring_register_buffers of [address, +length), then unregister:
    /// "pinned" or the errno.
    static func register(_ address: UInt64, _ length: UInt64) -> String {
        do {
            let ring = try IoUringBuffers(entries: 4)
            defer { ring.close() }
            try ring.register([.init(address: UInt(address), length: Int(length))])
            try ring.unregister()
            return "pinned"
        } catch {
            return errnoName(error.errno.rawValue)
        }
    }

    // MARK: FOLL_PIN (O_DIRECT)

    static func odirect(_ t: TestContext) throws {
        let aligns = try t.guardedDevdaxAligns()
        let blk = try t.require(t.environment.pmemBlockDevices().first, "no pmem block device")
        let dio = try t.must("opening \(blk) O_DIRECT") { try DirectIO(path: blk, writable: true) }
        // The last 2 MiB of the block device: the transfers overwrite them.
        let name = (blk as NSString).lastPathComponent
        let sectors = try t.require(
            (try? String(contentsOfFile: "/sys/block/\(name)/size", encoding: .utf8)).flatMap { UInt64($0.trimmingCharacters(in: .whitespacesAndNewlines)) },
            "no size for \(blk)")
        let blkOff = (sectors * 512 - pinBytes) & ~(pinBytes - 1)
        let n = Int(pinBytes)
        let buf = UnsafeMutableRawPointer.allocate(byteCount: n, alignment: 4096)
        defer { buf.deallocate() }
        // Saved first and written back last, whatever happens in between.
        let saved = UnsafeMutableRawPointer.allocate(byteCount: n, alignment: 4096)
        let got = try t.must("saving \(blk)'s last 2 MiB") {
            try dio.read(into: UnsafeMutableRawBufferPointer(start: saved, count: n), at: blkOff)
        }
        try t.require(got == n, "short O_DIRECT read of \(blk)'s last 2 MiB: \(got)")
        t.atCleanup("writing back \(blk)'s last 2 MiB") {
            defer { saved.deallocate() }
            let put = try dio.write(UnsafeRawBufferPointer(start: saved, count: n), at: blkOff)
            if put != n { throw CheckAbort(message: "short write-back to \(blk): \(put)") }
        }
        for align in aligns {
            let dev = try t.openDevDax(align)
            let b = try t.bindPort(dev)
            let w = try prefaulted(t, b) { 0x5052_4546_0000_0000 | $0 }
            // What the read brings in.
            let seed = UInt64(align.bytes)
            for i in 0..<(n / 8) { buf.storeBytes(of: seed &* 0x9E37_79B9 &+ UInt64(i), toByteOffset: i * 8, as: UInt64.self) }
            let put = try t.must("O_DIRECT write of the source to \(blk)") {
                try dio.write(UnsafeRawBufferPointer(start: buf, count: n), at: blkOff)
            }
            try t.require(put == n, "short O_DIRECT write to \(blk): \(put)")

            // O_DIRECT read into the window: the kernel pins it FOLL_PIN |
            // FOLL_WRITE; the port pins it the same way meanwhile.
            let (readPin, readResult) = w.pinInPort(offset: 0, length: pinBytes, flags: [.write]) { () -> String in
                do {
                    let got = try dio.read(into: UnsafeMutableRawBufferPointer(start: w.pointer, count: n), at: blkOff)
                    return got == n ? "transferred" : "short: \(got)"
                } catch let e as DirectIOError { return errnoName(e.errno.rawValue) } catch { return "\(error)" }
            }
            t.compare("\(align): O_DIRECT read into the window (port: pin_user_pages FOLL_PIN|FOLL_WRITE; kernel: the transfer)",
                      port: pinOutcome(readPin), kernel: readResult)
            t.expect(memcmp(w.pointer, buf, n) == 0, "\(align): the window holds what the O_DIRECT read brought")
            if case .success(let pin) = readPin { checkCounters(t, "\(align) FOLL_PIN|FOLL_WRITE (read)", pin) }

            // O_DIRECT write from the window: FOLL_PIN without FOLL_WRITE.
            let fill = seed ^ 0x5752_4954_4500_0000
            for i in 0..<(n / 8) { w.pointer.storeBytes(of: fill &+ UInt64(i), toByteOffset: i * 8, as: UInt64.self) }
            let (writePin, writeResult) = w.pinInPort(offset: 0, length: pinBytes, flags: []) { () -> String in
                do {
                    let put = try dio.write(UnsafeRawBufferPointer(start: w.pointer, count: n), at: blkOff)
                    return put == n ? "transferred" : "short: \(put)"
                } catch let e as DirectIOError { return errnoName(e.errno.rawValue) } catch { return "\(error)" }
            }
            t.compare("\(align): O_DIRECT write from the window (port: pin_user_pages FOLL_PIN; kernel: the transfer)",
                      port: pinOutcome(writePin), kernel: writeResult)
            if case .success(let pin) = writePin { checkCounters(t, "\(align) FOLL_PIN (write)", pin) }
            let back = try t.must("O_DIRECT read back from \(blk)") {
                try dio.read(into: UnsafeMutableRawBufferPointer(start: buf, count: n), at: blkOff)
            }
            t.expect(back == n && memcmp(w.pointer, buf, n) == 0, "\(align): \(blk) holds what the O_DIRECT write took from the window")
        }
    }

    /// The port's side of a transfer: "transferred" when its pin held, as a
    /// kernel transfer does, else the errno.
    static func pinOutcome(_ r: Result<PortPin, MMError>) -> String {
        switch r {
        case .success: return "transferred"
        case .failure(let e): return errnoOutcome(e.code)
        }
    }
}
