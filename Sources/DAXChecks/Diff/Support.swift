// What the differential tests share: the device of an alignment, the
// port bound to it (tracked, its windows closed at cleanup), the kernel's
// own mappings of the same device (raw mmap of the char device, so the
// kernel's answer is not filtered by DAXDevice's checks), and the outcome of
// an access as one comparable value.

import CDaxSys
import DAXBase
import DAXDevice
import DAXRuntime
import Foundation
import MMCore

#if canImport(Glibc)
import Glibc
#endif

/// A mapping the kernel made of a device: mmap(2) of its char device.
final class KernelMapping: @unchecked Sendable {
    // @unchecked: the address is immutable; unmapping is the test's (one
    // thread).
    let address: UInt64
    let length: UInt64
    private var live = true

    init(address: UInt64, length: UInt64) {
        self.address = address
        self.length = length
    }

    func unmap() {
        guard live else { return }
        live = false
        munmap(UnsafeMutableRawPointer(bitPattern: UInt(address)), Int(length))
    }

    deinit { unmap() }

    /// The address of byte `offset` of the mapping.
    func at(_ offset: UInt64) -> UInt64 { address + offset }
}

/// How an access ended, as the two sides are compared: "ok", or the signal
/// (with its si_code for SIGBUS: BUS_ADRERR is what VM_FAULT_SIGBUS
/// delivers). A SIGSEGV's si_code is not compared: the port's windows are
/// PROT_NONE reservations, so the host reports SEGV_ACCERR where the kernel
/// reports SEGV_MAPERR for a range with no mapping.
func accessOutcome(_ r: AccessResult) -> String {
    switch r.signal {
    case 0: return "ok"
    case SIGBUS: return r.code == BUS_ADRERR ? "SIGBUS (BUS_ADRERR)" : "SIGBUS (si_code \(r.code))"
    case SIGSEGV: return "SIGSEGV"
    default: return "signal \(r.signal)"
    }
}

/// An errno as the two sides are compared ("ok" for success).
func errnoOutcome(_ e: Int32) -> String { e == 0 ? "ok" : errnoName(e) }

/// The alignments in `order` of the enabled device-dax devices present.
func presentAligns(_ t: TestContext, among order: [DaxAlign] = [.pte, .pmd, .pud]) -> [DaxAlign] {
    order.filter { t.environment.devdax(align: $0) != nil }
}

extension TestContext {
    /// The SIGSEGV/SIGBUS guards, so accesses to the kernel's mappings and
    /// the port's windows return their signal.
    func installGuards() throws {
        try must("installing the fault guards") { try installFaultGuards() }
    }

    /// The fault guards installed, and the alignments of the enabled
    /// device-dax devices present (at least one, else the body ends).
    func guardedDevdaxAligns() throws -> [DaxAlign] {
        try installGuards()
        let aligns = presentAligns(self)
        try require(!aligns.isEmpty, "no device-dax device")
        return aligns
    }

    /// Opens the first enabled device-dax device with `align`.
    func openDevDax(_ align: DaxAlign) throws -> DaxCharDevice {
        let info = try require(environment.devdax(align: align), "no enabled device-dax device with align \(align)")
        return try must("opening \(info.path)") { try DaxCharDevice(path: info.path) }
    }

    /// The port bound to `device` in device-dax mode; its invariants are
    /// checked after the body.
    func bindPort(_ device: any DaxDevice) throws -> Binding {
        let b = try must("binding the port to \(device.name)") { try Binding(device: device, mode: .devdax) }
        track(b)
        return b
    }

    /// A port window over [offset, offset + length) of the device, closed at
    /// cleanup.
    func portWindow(_ b: Binding, length: UInt64, offset: UInt64 = 0, pastTheEnd: Bool = false) throws -> Window {
        let w = try must("opening a port window of \(formatSize(length)) at \(hex(offset))") {
            try b.openWindow(length: length, offset: offset, pastTheEnd: pastTheEnd)
        }
        atCleanup("closing the port window") { w.closeWindow() }
        return w
    }

    /// mmap(2) of the device by the kernel: the mapping, or the errno.
    func kernelMap(_ device: any DaxDevice, offset: UInt64, length: UInt64, prot: Int32 = PROT_READ | PROT_WRITE,
                   flags: Int32 = MAP_SHARED) -> Result<KernelMapping, KernelErrno> {
        guard let p = mmap(nil, Int(length), prot, flags, device.mappingFileDescriptor, off_t(offset)),
              p != MAP_FAILED else {
            return .failure(KernelErrno(code: errno))
        }
        let m = KernelMapping(address: UInt64(UInt(bitPattern: p)), length: length)
        atCleanup("unmapping the kernel's mapping") { m.unmap() }
        return .success(m)
    }

    /// mmap(2) of the device by the kernel that must succeed.
    func kernelMapping(_ device: any DaxDevice, offset: UInt64, length: UInt64) throws -> KernelMapping {
        switch kernelMap(device, offset: offset, length: length) {
        case .success(let m): return m
        case .failure(let e):
            throw CheckAbort(message: "the kernel's mmap of \(device.name) [\(hex(offset)), +\(hex(length))): \(errnoName(e.code))")
        }
    }
}

struct KernelErrno: Error {
    var code: Int32
}

/// The namespace behind a device-dax device and how to put it back.
struct DevDaxNamespace {
    /// "namespace0.0"
    var name: String
    var align: UInt64

    /// The nd dax device that is the char device's parent names its
    /// namespace (/sys/bus/dax/devices/daxX.Y -> .../daxX.Y/daxX.Y).
    static func of(devname: String, align: UInt64) -> DevDaxNamespace? {
        let link = "/sys/bus/dax/devices/\(devname)"
        guard let real = realpath(link, nil) else { return nil }
        defer { free(real) }
        let parent = (String(cString: real) as NSString).deletingLastPathComponent
        guard let ns = try? String(contentsOfFile: parent + "/namespace", encoding: .utf8) else { return nil }
        let name = ns.trimmingCharacters(in: .whitespacesAndNewlines)
        return name.isEmpty ? nil : DevDaxNamespace(name: name, align: align)
    }

    var restoreCommand: [String] { ["ndctl", "create-namespace", "-f", "-e", name, "-m", "devdax", "-a", String(align)] }
    var rawCommand: [String] { ["ndctl", "create-namespace", "-f", "-e", name, "-m", "raw"] }
}

/// Whether a namespace must be put back at cleanup (set once it was
/// reconfigured).
final class NamespaceRestore: @unchecked Sendable {
    // @unchecked: the test's thread only.
    let namespace: DevDaxNamespace
    var needed = false
    init(_ ns: DevDaxNamespace) { namespace = ns }
}

extension TestContext {
    /// Registers, before anything that uses the device, the cleanup that
    /// puts `ns` back in devdax mode with its alignment once
    /// `reconfigureToRaw` has run: it then runs after every other cleanup
    /// (windows closed, mappings gone).
    func namespaceRestore(_ ns: DevDaxNamespace) -> NamespaceRestore {
        let r = NamespaceRestore(ns)
        atCleanup("putting \(ns.name) back in devdax mode") {
            guard r.needed else { return }
            let c = try Command.run(ns.restoreCommand, timeout: 120)
            self.log("$ \(ns.restoreCommand.joined(separator: " ")): \(c.succeeded ? "ok" : c.description)")
            if !c.succeeded { throw CommandError(result: c) }
        }
        return r
    }

    /// Reconfigures the namespace to raw mode: its device-dax device goes
    /// away under its users.
    func reconfigureToRaw(_ r: NamespaceRestore) throws {
        r.needed = true
        try mustRun(r.namespace.rawCommand, timeout: 120)
    }
}
