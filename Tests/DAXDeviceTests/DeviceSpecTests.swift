import SystemPackage
import Testing
@testable import DAXDevice

@Suite("--device specifications")
struct DeviceSpecTests {
    @Test func realPaths() throws {
        #expect(try DeviceSpec(parsing: "/dev/dax0.0") == .real(path: "/dev/dax0.0"))
        #expect(try DeviceSpec(parsing: "dax1.2") == .real(path: "/dev/dax1.2"))
    }

    @Test func emulatedDefaultsAndKeys() throws {
        #expect(try DeviceSpec(parsing: "emulated")
            == .emulated(size: 1 << 30, align: .pmd, base: EmulatedDevice.defaultPhysicalBase, node: nil))
        #expect(try DeviceSpec(parsing: "emulated:size=4G,align=1G,base=0x80000000000,node=1")
            == .emulated(size: 4 << 30, align: .pud, base: 0x800_0000_0000, node: 1))
        #expect(try DeviceSpec(parsing: "emulated:align=4K,size=8K")
            == .emulated(size: 8192, align: .pte, base: EmulatedDevice.defaultPhysicalBase, node: nil))
        #expect(try DeviceSpec(parsing: "emulated:size=64M").description == "emulated:size=64M,align=2M")
    }

    /// Each bad input gives one line naming the spec and the cause, as EINVAL
    /// (or ENXIO for a zero size), never a crash.
    @Test(arguments: [
        ("emulated:size=0", "size 0"),
        ("emulated:size=3M,align=2M", "not a multiple of align 2M"),
        ("emulated:size=1G,align=8K", "unknown align '8K' (use 4K, 2M or 1G)"),
        ("emulated:align=3", "unknown align"),
        ("emulated:bogus=1", "unknown key 'bogus'"),
        ("emulated:size", "expected key=value"),
        ("emulated:size=", "expected key=value"),
        ("emulated:size=12Q", "unknown unit"),
        ("emulated:node=-1", "node must be a non-negative integer"),
        ("emulated:size=1G,,align=2M", "expected key=value"),
        ("", "empty device name"),
    ])
    func refusesBadSpecs(spec: String, cause: String) {
        do {
            _ = try DeviceSpec(parsing: spec)
            Issue.record("\(spec) was accepted")
        } catch {
            #expect(error.description.contains(cause), "\(error.description)")
            #expect(!error.description.contains("\n"))
        }
    }
}

@Suite("Opening paths that are not device-dax")
struct BadDevicePathTests {
    @Test func missingDevice() {
        #expect(throws: DeviceError.noSuchDevice(path: "/dev/dax97.3")) { try DaxCharDevice(path: "/dev/dax97.3") }
        #expect(throws: DeviceError.noSuchDevice(path: "/dev/dax97.3")) { try DaxCharDevice(path: "dax97.3") }
    }

    @Test func characterDeviceOfAnotherSubsystem() {
        do {
            _ = try DaxCharDevice(path: "/dev/null")
            Issue.record("/dev/null accepted")
        } catch let e {
            guard case .notDeviceDax(let p, let why) = e else { Issue.record("wrong error \(e)"); return }
            #expect(p == "/dev/null")
            #expect(why.contains("1:3") && why.contains("'mem'"))
            #expect(e.errno == .operationNotSupportedByDevice)
        }
    }

    @Test func regularFileAndDirectory() throws {
        let path = "/tmp/daxmm-test-regular-\(getpid())"
        let fd = try FileDescriptor.open(FilePath(path), .writeOnly, options: [.create, .truncate], permissions: .ownerReadWrite)
        try fd.close()
        defer { _ = try? FileDescriptor.open(FilePath(path), .readOnly).close(); unlink(path) }
        #expect(throws: DeviceError.notDeviceDax(path: path, reason: "a regular file")) { try DaxCharDevice(path: path) }
        #expect(throws: DeviceError.notDeviceDax(path: "/tmp", reason: "a directory")) { try DaxCharDevice(path: "/tmp") }
    }

    @Test func messagesAreOneLineNamingTheDevice() {
        let errors: [DeviceError] = [
            .noSuchDevice(path: "/dev/dax1.0"), .permissionDenied(path: "/dev/dax1.0"),
            .disabled(device: "/dev/dax1.0", reason: "no driver bound"), .zeroSize(device: "/dev/dax1.0"),
            .busy(device: "/dev/dax1.0", reason: "bound to kmem"),
            .mapFailed(device: "/dev/dax1.0", request: "[0x0, +0x1000) MAP_PRIVATE", errno: .invalidArgument, reason: "x"),
        ]
        for e in errors {
            #expect(e.description.hasPrefix("/dev/dax1.0: "))
            #expect(!e.description.contains("\n"))
        }
        #expect(DeviceError.mapFailed(device: "d", request: "r", errno: .invalidArgument, reason: "x").description.contains("EINVAL"))
    }
}

#if canImport(Glibc)
import Glibc
#endif
