// FOLL_LONGTERM on fs-dax, the kernel's gup_longterm selftest on a file of a
// -o dax mount, against the port.
//
// The kernel: io_uring_register_buffers pins the range with
// pin_user_pages_fast(FOLL_WRITE | FOLL_LONGTERM) (io_uring/rsrc.c
// io_pin_pages). GUP-fast pins only what it may: no device-dax/fs-dax folio
// for a long-term pin, no file folio that needs dirty tracking, only
// writable entries for FOLL_WRITE; everything else goes to the slow path,
// whose check_vma_flags (mm/gup.c) refuses FOLL_LONGTERM on a vma_is_fsdax
// VMA with -EOPNOTSUPP before any other check that could apply here. A
// MAP_PRIVATE mapping the selftest has written (memset) holds anonymous
// copies, which GUP-fast pins without looking at the VMA.
//
// The selftest's expectation (tools/testing/selftests/mm/gup_longterm.c,
// the io_uring case): a shared mapping of ext4/xfs must fail, a private one
// must work. io_uring always pins FOLL_WRITE, so a mapping made read-only
// (the selftest's R/O cases mprotect it) fails the write check whatever the
// file system; the selftest's "R/O pinning always works" is for pins
// without FOLL_WRITE, which only its gup_test cases make.
//
// The port: a Binding in fs-dax mode over an emulated device, a port VMA of
// the same flags over the port's file, pre-faulted through the port's
// handle_mm_fault, and the port's pin_user_pages_fast with FOLL_WRITE |
// FOLL_LONGTERM. Both sides are pre-faulted by writes, as the selftest's
// memset does: in a private mapping the port copies on write as the kernel
// does (do_cow_fault -> dax_fault_cow_page), so both hold anonymous copies
// there and the same pin is compared on the same state. A private mapping
// pre-faulted by reads (the file's pages mapped read-only) is compared too.

import CDaxMM
import DAXBase
import DAXCore
import DAXDevice
import DAXRuntime
import MMCore

#if canImport(Glibc)
import Glibc
#endif

/// How a range is pinned long-term.
enum LongtermPin: CustomStringConvertible {
    /// io_uring buffer registration: pin_user_pages_fast(FOLL_WRITE|FOLL_LONGTERM).
    case uring
    /// mm/gup_test.c PIN_LONGTERM_TEST_START: pin_user_pages(_fast) with
    /// FOLL_LONGTERM, and FOLL_WRITE when `write`.
    case gupTest(fast: Bool, write: Bool)

    var write: Bool { if case .gupTest(_, let w) = self { return w }; return true }
    var fast: Bool { if case .gupTest(let f, _) = self { return f }; return true }
    var description: String {
        switch self {
        case .uring: "io_uring registration"
        case .gupTest(let f, let w): "PIN_LONGTERM_TEST \(w ? "R/W" : "R/O")\(f ? " fast" : "")"
        }
    }
}

/// One mapping of the matrix.
struct LongtermCase: CustomStringConvertible {
    var shared: Bool
    /// PROT_READ|PROT_WRITE, else made PROT_READ after the pre-fault.
    var writable: Bool
    var description: String { "\(writable ? "R/W" : "R/O") \(shared ? "MAP_SHARED" : "MAP_PRIVATE")" }
    var tag: String { "\(shared ? "shared" : "private")-\(writable ? "rw" : "ro")" }

    static let all: [LongtermCase] = [true, false].flatMap { s in [true, false].map { LongtermCase(shared: s, writable: $0) } }
}

/// The port's side: its fs-dax file over an emulated device, mapped into the
/// port's address space over a host reservation (the port's page-table
/// entries are mirrored onto the host at the same addresses).
final class PortFsdaxPins {
    let device: EmulatedDevice
    let binding: Binding
    let file: DaxFile

    init(_ t: TestContext, fileBytes: UInt64 = 4 << 20) throws {
        let d = try t.must("emulated device") { try EmulatedDevice(size: 16 << 20, align: .pte) }
        let b = try t.must("fs-dax binding") { try Binding(device: d, mode: .fsdax, fileSize: fileBytes) }
        let f = try t.require(b.file, "the fs-dax binding has no file")
        try t.must("fallocate the port's file") { try f.allocate(pgoff: 0, pages: fileBytes / UInt64(pageSize)) }
        t.track(b)
        device = d
        binding = b
        file = f
    }

    /// Maps `length` bytes of the file with `c`'s flags, pre-faults every
    /// page (writes when `prefaultWrite`), makes it read-only for an R/O
    /// case, pins it with `pin`'s flags and unpins. Nil when the pin
    /// succeeded, else the port's errno. `notes` gets what the port did.
    func pin(_ c: LongtermCase, _ pin: LongtermPin, length: Int, prefaultWrite: Bool, notes: inout [String]) throws -> Int32? {
        let res: AlignedMapping
        switch AlignedMapping.reserve(length: length) {
        case .success(let r): res = r
        case .failure(let e): throw CheckAbort(message: "reserving host address space for the port VMA: \(e)")
        }
        defer { res.unmap() }
        let mm = binding.mm
        var req = file.mmapRequest(length: UInt64(length), pgoff: 0, prot: [.read, .write], shared: c.shared)
        req.fixedAddress = res.base
        let addr: UInt64
        do { addr = try mm.mmap(req) } catch { throw CheckAbort(message: "the port's mmap (\(c)): \(error)") }
        defer { try? mm.munmap(addr, UInt64(length)) }
        for i in stride(from: 0, to: length, by: pageSize) {
            let r = mm.handleFault(addr + UInt64(i), write: prefaultWrite)
            if r & DAX_VM_FAULT_ERROR != 0 {
                notes.append("port \(prefaultWrite ? "write" : "read") fault at +\(hex(UInt64(i))): VM_FAULT \(hex(UInt64(r)))")
                break
            }
        }
        if !c.writable {
            do { try mm.mprotect(addr, UInt64(length), [.read]) } catch { throw CheckAbort(message: "the port's mprotect: \(error)") }
        }
        var flags: GupFlags = [.longterm]
        if pin.write { flags.insert(.write) }
        do {
            let pages = try mm.pinPages(addr, count: length / pageSize, flags: flags, fast: pin.fast)
            mm.unpin(pages)
            notes.append("port pin_user_pages\(pin.fast ? "_fast" : "") pinned \(pages.count) page(s)")
            return pages.count == length / pageSize ? nil : EFAULT
        } catch {
            notes.append("port pin_user_pages\(pin.fast ? "_fast" : ""): \(error)")
            return error.code
        }
    }
}

/// The kernel's side: the same mapping of a file on the dax mount.
enum KernelLongterm {
    /// /sys/kernel/debug/gup_test (CONFIG_GUP_TEST), opened, or nil.
    static func openGupTest() -> Int32? {
        let fd = open("/sys/kernel/debug/gup_test", O_RDWR)
        return fd >= 0 ? fd : nil
    }

    /// PIN_LONGTERM_TEST_START = _IOW('g', 7, struct pin_longterm_test
    /// { u64 addr; u64 size; u32 flags; }) (24 bytes), STOP = _IO('g', 8).
    static let pinStart: UInt = 0x4018_6707
    static let pinStop: UInt = 0x6708

    /// A fresh unlinked file of `length` bytes in `dir` (ftruncate +
    /// fallocate, as the selftest), mapped with `c`'s flags, pre-faulted
    /// (memset 0 when `prefaultWrite`, else a read of every word), made
    /// read-only for an R/O case, pinned with `pin`. Nil when the pin
    /// succeeded (it is dropped again), else the errno.
    static func pin(_ c: LongtermCase, _ pin: LongtermPin, dir: String, length: Int, prefaultWrite: Bool,
                    gupTest: Int32?) throws -> Int32? {
        let path = "\(dir)/gup_longterm-\(c.tag)-\(getpid())"
        let fd = open(path, O_RDWR | O_CREAT | O_EXCL, 0o600)
        guard fd >= 0 else { throw CheckAbort(message: "open \(path): \(lastErrno())") }
        unlink(path)
        defer { close(fd) }
        guard ftruncate(fd, off_t(length)) == 0 else { throw CheckAbort(message: "ftruncate \(path): \(lastErrno())") }
        let fe = LibC.fallocate(fd, mode: 0, offset: 0, length: length)
        guard fe == 0 else { throw CheckAbort(message: "fallocate \(path): \(errnoName(fe))") }
        guard let p = mmap(nil, length, PROT_READ | PROT_WRITE, c.shared ? MAP_SHARED : MAP_PRIVATE, fd, 0),
              p != MAP_FAILED else { throw CheckAbort(message: "mmap \(path) (\(c)): \(lastErrno())") }
        defer { munmap(p, length) }
        let base = UInt64(UInt(bitPattern: p))
        let f = guardedFill(base, bytes: UInt64(length), write: prefaultWrite, value: 0)
        guard f.ok else { throw CheckAbort(message: "pre-fault of \(path) (\(c)): \(f)") }
        if !c.writable && mprotect(p, length, PROT_READ) != 0 {
            throw CheckAbort(message: "mprotect(PROT_READ) of \(path): \(lastErrno())")
        }
        switch pin {
        case .uring:
            do {
                let ring = try IoUringBuffers(entries: 1)
                defer { ring.close() }
                do {
                    try ring.register([.init(p, length: length)])
                    try? ring.unregister()
                    return nil
                } catch {
                    return error.errno.rawValue
                }
            } catch {
                throw CheckAbort(message: "io_uring_queue_init: \(error)")
            }
        case .gupTest(let fast, let write):
            guard let g = gupTest else { throw CheckAbort(message: "no gup_test") }
            var args = [UInt64](repeating: 0, count: 3)
            args[0] = base
            args[1] = UInt64(length)
            args[2] = (write ? 1 : 0) | (fast ? 2 : 0)
            let rc = args.withUnsafeMutableBytes { ioctl(g, pinStart, $0.baseAddress!) }
            if rc != 0 { return errno }
            _ = ioctl(g, pinStop)
            return nil
        }
    }
}

enum FSDaxLongterm {
    /// The selftest's file size (pagesize for files).
    static let length = pageSize

    /// What the selftest states for `pin` on an ext4/xfs file mapped `c`
    /// (should_work), with why.
    static func selftestExpects(_ c: LongtermCase, _ pin: LongtermPin) -> (works: Bool, why: String) {
        switch pin {
        case .uring:
            if c.shared { return (false, "a shared R/W long-term pin of an ext4/xfs file fails (fs_supports_writable_longterm_pinning)") }
            if !c.writable { return (false, "io_uring pins FOLL_WRITE, which a read-only VMA refuses") }
            return (true, "a private mapping's pin works")
        case .gupTest(_, let write):
            let works = !c.shared || !write
            return (works, works ? "R/O pinning or pinning in a private mapping is always expected to work"
                                 : "long-term R/W pinning of a shared ext4/xfs mapping fails")
        }
    }

    static func name(_ e: Int32?) -> String { e.map(errnoName) ?? "pinned" }

    /// The matrix for one file system.
    static func matrix(_ t: TestContext, fs: DaxFilesystem) throws {
        try DAXRuntime.installFaultGuards()
        let m = try DaxMount.make(t, fs: fs, mkfs: fs.mkfsDaxSh)
        let dir = m.path
        let port = try PortFsdaxPins(t)
        let kernel = t.environment.runningRelease
        var pins: [LongtermPin] = [.uring]
        let gup = KernelLongterm.openGupTest()
        if let g = gup {
            t.atCleanup("close gup_test") { close(g) }
            t.log("/sys/kernel/debug/gup_test is present: the PIN_LONGTERM_TEST cases run too")
            pins += [false, true].flatMap { w in [false, true].map { LongtermPin.gupTest(fast: $0, write: w) } }
        } else {
            t.log("/sys/kernel/debug/gup_test is absent (CONFIG_GUP_TEST off, or no debugfs): the selftest's PIN_LONGTERM_TEST cases do not run here; io_uring registration covers the R/W, R/O, shared and private matrix")
        }
        var summary: [String] = []
        for pin in pins {
            for c in LongtermCase.all {
                let what = "\(pin), \(c) of an \(fs) -o dax file"
                // The selftest's run: pre-faulted by memset.
                let k = try KernelLongterm.pin(c, pin, dir: dir, length: length, prefaultWrite: true, gupTest: gup)
                let (works, why) = selftestExpects(c, pin)
                t.log("\(what): kernel \(kernel): \(name(k)); the selftest expects \(works ? "success" : "failure") (\(why))")
                if case .uring = pin {
                    t.expectEqual(k == nil, works, "\(what): the kernel's pin succeeded (\(name(k))), as the selftest states")
                }
                // PIN_LONGTERM_TEST: the selftest does not know DAX (its slow
                // pins of any fs-dax mapping get EOPNOTSUPP from
                // check_vma_flags, which it reports as a failure), so only
                // the comparison with the port below is checked.
                // The port on a VMA of the same flags, pre-faulted the same
                // way (a private one holds anonymous copies on both sides).
                var notes: [String] = []
                let p = try port.pin(c, pin, length: length, prefaultWrite: true, notes: &notes)
                t.log("\(what): port: \(notes.joined(separator: "; "))")
                t.compare("\(what): errno of the long-term pin", port: name(p), kernel: name(k))
                var readState = ""
                if !c.shared {
                    // Private, pre-faulted by reads: the file's pages are
                    // mapped read-only on both sides.
                    var probe: [String] = []
                    let r = try port.pin(c, pin, length: length, prefaultWrite: false, notes: &probe)
                    let kr = try KernelLongterm.pin(c, pin, dir: dir, length: length, prefaultWrite: false, gupTest: gup)
                    t.log("\(what), pre-faulted by reads: kernel \(kernel): \(name(kr)); port: \(probe.joined(separator: "; "))")
                    t.compare("\(what), pre-faulted by reads: errno of the long-term pin", port: name(r), kernel: name(kr))
                    readState = " (read pre-fault: \(name(kr)))"
                }
                summary.append("\(pin) \(c.tag): \(name(k))\(readState)")
            }
        }
        t.log("kernel \(kernel), \(fs) -o dax: " + summary.joined(separator: ", "))
    }

    /// fsdax-longterm-uring: MAP_SHARED fs-dax refused in both, device-dax
    /// pinned in both.
    static func uring(_ t: TestContext) throws {
        try DAXRuntime.installFaultGuards()
        let kernel = t.environment.runningRelease
        let len = 2 << 20
        // fs-dax, the kernel: a MAP_SHARED ext4 -o dax mapping written first.
        let m = try DaxMount.make(t, fs: .ext4, mkfs: DaxFilesystem.ext4.mkfsDaxSh)
        let shared = LongtermCase(shared: true, writable: true)
        let k = try KernelLongterm.pin(shared, .uring, dir: m.path, length: len, prefaultWrite: true, gupTest: nil)
        t.log("io_uring registration of a written MAP_SHARED ext4 -o dax mapping (\(len >> 20) MiB): kernel \(kernel): \(name(k))")
        t.expect(k != nil, "the kernel registered (pinned FOLL_LONGTERM) a MAP_SHARED fs-dax mapping")
        // fs-dax, the port: its file in a window (a shared R/W port VMA),
        // written through the window, pinned with pin_user_pages_fast.
        let port = try PortFsdaxPins(t)
        let w = try t.must("port window") { try port.binding.openWindow(length: UInt64(len)) }
        t.atCleanup("close the port window") { w.closeWindow() }
        let fill = guardedFill(w.address(0), bytes: UInt64(len), write: true, value: 0)
        try t.require(fill.ok, "writing the port window: \(fill)")
        var portErr: Int32?
        do {
            let pages = try w.mm.pinPages(w.address(0), count: len / pageSize, flags: [.write, .longterm], fast: true)
            w.mm.unpin(pages)
        } catch {
            portErr = error.code
            t.log("port: \(error)")
        }
        t.compare("FOLL_WRITE|FOLL_LONGTERM pin of a written MAP_SHARED fs-dax mapping", port: name(portErr), kernel: name(k))

        // device-dax: a plain kernel mapping of the device, and the port's
        // device-dax driver over the same device.
        let all = t.environment.devdaxDevices()
        let info = try t.require(all.first { $0.align == UInt64(2 << 20) } ?? all.min { $0.align < $1.align },
                                 "no enabled device-dax device")
        let dev = try t.must("open /dev/\(info.devname)") { try DaxCharDevice(path: "/dev/\(info.devname)") }
        let align = Int(info.align)
        let pinLen = min(align, len)
        t.log("device-dax: \(info.devname), align \(align >> 10) KiB; pinning \(pinLen >> 10) KiB")
        let km = try t.must("mmap /dev/\(info.devname)") { try dev.map(offset: 0, length: UInt64(align), options: [.shared]) }
        defer { km.unmap() }
        let kf = guardedFill(UInt64(km.address), bytes: UInt64(pinLen), write: true, value: 0x6465_7664_6178)
        try t.require(kf.ok, "writing the device-dax mapping: \(kf)")
        var kdev: Int32?
        do {
            let ring = try IoUringBuffers(entries: 1)
            defer { ring.close() }
            do {
                try ring.register([.init(address: km.address, length: pinLen)])
                try? ring.unregister()
            } catch {
                kdev = error.errno.rawValue
            }
        } catch {
            throw CheckAbort(message: "io_uring_queue_init: \(error)")
        }
        t.log("io_uring registration of a MAP_SHARED /dev/\(info.devname) mapping: kernel \(kernel): \(name(kdev))")
        let b = try t.must("device-dax binding") { try Binding(device: dev, mode: .devdax) }
        t.track(b)
        let dw = try t.must("port window over \(info.devname)") { try b.openWindow(length: UInt64(align)) }
        t.atCleanup("close the device-dax window") { dw.closeWindow() }
        let pf = guardedFill(dw.address(0), bytes: UInt64(pinLen), write: true, value: 0x6465_7664_6178)
        try t.require(pf.ok, "writing the port's device-dax window: \(pf)")
        var pdev: Int32?
        do {
            let pages = try dw.mm.pinPages(dw.address(0), count: pinLen / pageSize, flags: [.write, .longterm], fast: true)
            if pages.count != pinLen / pageSize { pdev = EFAULT }
            dw.mm.unpin(pages)
        } catch {
            pdev = error.code
        }
        t.compare("FOLL_WRITE|FOLL_LONGTERM pin of a MAP_SHARED device-dax mapping", port: name(pdev), kernel: name(kdev))
        t.expect(kdev == nil, "the kernel refused io_uring registration of device-dax: \(name(kdev))")
        t.log("kernel \(kernel): fs-dax \(name(k)), device-dax \(name(kdev))")
    }
}
