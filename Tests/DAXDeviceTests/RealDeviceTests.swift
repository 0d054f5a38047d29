import Foundation
import SystemPackage
import Testing
@testable import DAXDevice
import DAXBase

/// Tests on real device-dax. Outside the project's VM they are cancelled with
/// a one-line reason; inside it (DAXMM_IN_VM=1) a missing device is a failure.
enum RealDevices {
    static var inVM: Bool { ProcessInfo.processInfo.environment["DAXMM_IN_VM"] == "1" }

    /// The enabled devdax devices, or cancels/fails the test when there are none.
    static func require() throws -> [DaxDeviceInfo] {
        let devs = try DaxDiscovery.devices().filter { $0.enabled && $0.size > 0 && $0.mode == "devdax" }
        if devs.isEmpty {
            if inVM {
                Issue.record("inside the VM but libdaxctl finds no enabled device-dax device")
                throw CancellationError()
            }
            try Test.cancel("no /dev/dax device on this host; runs inside `daxmm vm run` (scripts/test.sh does)")
        }
        return devs
    }

    /// Aligns the VM was asked to create ("4K,2M,1G"), from DAXMM_VM_EXPECT_ALIGNS.
    static var expectedAligns: [UInt64] {
        (ProcessInfo.processInfo.environment["DAXMM_VM_EXPECT_ALIGNS"] ?? "")
            .split(separator: ",").compactMap { try? parseSize(String($0)) }
    }
}

/// Runs a program and returns (status, stdout, stderr).
func runProgram(_ argv: [String], environment: [String: String]? = nil) throws -> (Int32, String, String) {
    let p = Process()
    p.executableURL = URL(fileURLWithPath: argv[0].hasPrefix("/") ? argv[0] : "/usr/bin/env")
    p.arguments = argv[0].hasPrefix("/") ? Array(argv.dropFirst()) : argv
    if let environment { p.environment = environment }
    let out = Pipe(), err = Pipe()
    p.standardOutput = out
    p.standardError = err
    try p.run()
    let o = out.fileHandleForReading.readDataToEndOfFile()
    let e = err.fileHandleForReading.readDataToEndOfFile()
    p.waitUntilExit()
    return (p.terminationStatus, String(decoding: o, as: UTF8.self), String(decoding: e, as: UTF8.self))
}

/// The daxmm executable beside this test bundle (.build/<config>/daxmm).
var daxmmExecutable: String {
    let bundleDir = URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent()
    return bundleDir.appendingPathComponent("daxmm").path
}

/// Parses JSON text; daxctl prints nothing when there are no regions.
func parseJSON(_ text: String) throws -> NSObject {
    let trimmed = text.trimmingCharacters(in: .whitespacesAndNewlines)
    if trimmed.isEmpty { return NSArray() }
    return try JSONSerialization.jsonObject(with: Data(trimmed.utf8)) as! NSObject
}

/// Every real-device suite runs inside this one, one test at a time: some
/// tests disable and re-enable a device, which must not race the others.
@Suite("Real device-dax", .serialized)
struct RealDeviceTests {

@Suite("Real device-dax: discovery")
struct RealDiscoveryTests {
    /// `daxmm list --json` reports exactly what `daxctl list -R -D` reports,
    /// with -M and -i as well.
    @Test(arguments: [[], ["-M"], ["-i"], ["-M", "-i"]])
    func listJSONMatchesDaxctl(flags: [String]) throws {
        _ = try RealDevices.require()
        let (drc, dout, derr) = try runProgram(["daxctl", "list", "-R", "-D"] + flags)
        #expect(drc == 0, "daxctl failed: \(derr)")
        let (mrc, mout, merr) = try runProgram([daxmmExecutable, "list", "--json"] + flags)
        #expect(mrc == 0, "daxmm failed: \(merr)")
        let theirs = try parseJSON(dout), ours = try parseJSON(mout)
        #expect(ours == theirs, "daxmm:\n\(mout)\ndaxctl:\n\(dout)")
        // The library view matches too (no process in between).
        let lib = DaxctlList.regionsJSON(try DaxDiscovery.scan(),
                                         options: ListOptions(mappings: flags.contains("-M"), idle: flags.contains("-i")))
        #expect(try parseJSON(lib.rendered()) == theirs)
    }

    @Test func requestedNamespacesArePresent() throws {
        let devs = try RealDevices.require()
        let aligns = Set(devs.map(\.align))
        for a in RealDevices.expectedAligns {
            #expect(aligns.contains(a), "no device with align \(formatSize(a)) in \(devs.map { "\($0.devname):\(formatSize($0.align))" })")
        }
        for d in devs {
            #expect(d.resource != 0)
            #expect(!d.mappings.isEmpty)
            #expect(d.mappings.reduce(0) { $0 + $1.size } == d.size)
            #expect(DaxAlign(bytes: Int(d.align)) != nil)
        }
    }

    /// A multi-node topology (DAXMM_VM_EXPECT_NODES, set by the NUMA boot):
    /// every expected node has a device and libnuma sees the nodes.
    @Test func targetNodesMatchTopology() throws {
        let devs = try RealDevices.require()
        let expected = (ProcessInfo.processInfo.environment["DAXMM_VM_EXPECT_NODES"] ?? "")
            .split(separator: ",").compactMap { Int($0) }
        let nodes = Set(devs.compactMap(\.targetNode))
        for n in expected { #expect(nodes.contains(n), "no device on node \(n): \(devs.map { "\($0.devname)@\(String(describing: $0.targetNode))" })") }
        if !expected.isEmpty {
            let numa = try #require(NUMA.nodes())
            #expect(numa.count >= expected.count)
            for n in numa where expected.contains(n.id) { #expect(n.distances[n.id] == 10) }
        }
    }

    @Test func defaultDeviceIsReal() throws {
        let devs = try RealDevices.require()
        let spec = try DeviceSpec.defaultSpec()
        #expect(spec == .real(path: devs[0].path))
        let (rc, _, err) = try runProgram([daxmmExecutable, "check", "--bytes", "4M"])
        #expect(rc == 0, "\(err)")
        #expect(err.contains("using device /dev/\(devs[0].devname) (device-dax"))
    }
}

@Suite("Real device-dax: mappings")
struct RealMappingTests {
    /// Each device maps MAP_SHARED at its alignment, holds a pattern, and the
    /// kernel's pagemap confirms the physical address the port computes.
    @Test func mapsAlignedHoldsDataAndPFNsMatch() throws {
        for info in try RealDevices.require() {
            let dev = try DaxCharDevice(path: info.path)
            #expect(dev.size == info.size)
            #expect(UInt64(dev.align.bytes) == info.align)
            let a = UInt64(dev.align.bytes)
            let len = min(dev.size / a * a, max(a, 8 << 20))
            let m = try dev.map(offset: 0, length: len)
            #expect(m.address % UInt(a) == 0, "\(info.devname): address not aligned")
            let r = try PatternCheck.run(m, bytes: min(len, 8 << 20))
            #expect(r.bytes > 0)
            // /proc/self/pagemap has no PUD handler: its walk splits (for DAX:
            // unmaps) a 1 GiB mapping and reports it absent, so only 4K and
            // 2M devices can be checked this way.
            for off in dev.align == .pud ? [] : [UInt64(0), len / 2, len - 4096] {
                let pfn = try pagemapPFN(m.baseAddress + Int(off))
                #expect(pfn == dev.physicalAddress(ofOffset: off)! >> 12, "\(info.devname) offset \(hex(off))")
            }
            // A second mapping sees the same data (shared memory, not a copy).
            let m2 = try dev.map(offset: 0, length: a)
            try PatternCheck.verify(m2, bytes: min(a, 8 << 20))
        }
    }

    /// MAP_PRIVATE and misaligned requests fail with the kernel's errno, and
    /// the emulated device refuses the same requests with the same errno.
    @Test func kernelAndEmulatedDeviceRefuseAlike() throws {
        for info in try RealDevices.require() {
            let dev = try DaxCharDevice(path: info.path)
            let emu = try EmulatedDevice(size: UInt64(dev.align.bytes) * 2, align: dev.align)
            let a = UInt64(dev.align.bytes)
            // Read-only: a private writable mapping is charged against the
            // commit limit first, and a 1 GiB one fails there with ENOMEM in a
            // small guest before device-dax's check_vma runs.
            var cases: [(UInt64, UInt64, MapOptions)] = [(0, a, [.private, .readOnly])]
            // A length that is not a multiple of the alignment can never give an
            // aligned vm_end. (A misaligned offset is not compared: the kernel
            // then takes any free address, and check_vma passes whenever that
            // address happens to be aligned; the emulated device always refuses.)
            if dev.align != .pte { cases += [(0, 4096, .shared)] }
            for (off, len, opts) in cases {
                let kernel = mapErrno(dev, off, len, opts)
                let port = mapErrno(emu, off, len, opts)
                #expect(kernel == .invalidArgument, "\(info.devname) \(opts) [\(off), +\(len)): kernel gave \(String(describing: kernel))")
                #expect(port == kernel, "\(info.devname) \(opts): emulated \(String(describing: port)) vs kernel \(String(describing: kernel))")
            }
            // MAP_SYNC is supported on device-dax.
            #expect(mapErrno(dev, 0, a, [.shared, .sync]) == nil)
        }
    }

    @Test func fsdaxBlockDeviceIsNotDeviceDax() throws {
        _ = try RealDevices.require()
        let pmem = (try? FileManager.default.contentsOfDirectory(atPath: "/dev"))?.filter { $0.hasPrefix("pmem") } ?? []
        guard let blk = pmem.first else {
            if RealDevices.inVM && ProcessInfo.processInfo.environment["DAXMM_VM_EXPECT_FSDAX"] == "1" {
                Issue.record("expected an fsdax /dev/pmem* namespace")
            }
            return
        }
        do {
            _ = try DaxCharDevice(path: "/dev/" + blk)
            Issue.record("/dev/\(blk) accepted as device-dax")
        } catch {
            guard case .notDeviceDax(_, let why) = error else { Issue.record("\(error)"); return }
            #expect(why.contains("block device"))
        }
    }
}

@Suite("Real device-dax: bad states")
struct RealDeviceStateTests {
    /// A disabled device is named as disabled, with how to enable it; the
    /// device is re-enabled afterwards.
    @Test func disabledDeviceIsReported() throws {
        let devs = try RealDevices.require()
        let victim = devs.last!
        let (rc, _, err) = try runProgram(["daxctl", "disable-device", victim.devname])
        #expect(rc == 0, "daxctl disable-device: \(err)")
        defer { _ = try? runProgram(["daxctl", "enable-device", victim.devname]) }
        do {
            _ = try DaxCharDevice(path: victim.path)
            Issue.record("disabled \(victim.devname) was opened")
        } catch {
            guard case .disabled(let d, let why) = error else { Issue.record("wrong error: \(error)"); return }
            #expect(d == victim.path)
            #expect(why.contains("daxctl enable-device \(victim.devname)"))
        }
        let (crc, _, cerr) = try runProgram([daxmmExecutable, "check", "--device", victim.path])
        #expect(crc == 1)
        #expect(cerr.contains("\(victim.path): device is disabled"))
        #expect(cerr.split(separator: "\n").count == 1, "one line: \(cerr)")
        // Enabled again, it works.
        let (erc, _, eerr) = try runProgram(["daxctl", "enable-device", victim.devname])
        #expect(erc == 0, "\(eerr)")
        _ = try DaxCharDevice(path: victim.path)
    }

    /// Without permission on the node: one line, exit 1.
    @Test func permissionDeniedForAnUnprivilegedUser() throws {
        let devs = try RealDevices.require()
        let (rc, _, err) = try runProgram(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                                           daxmmExecutable, "check", "--device", devs[0].path])
        #expect(rc == 1)
        #expect(err.contains("\(devs[0].path): permission denied"), "\(err)")
    }

    @Test func missingNodeOfAnExistingRegion() throws {
        let devs = try RealDevices.require()
        let missing = "/dev/dax\(devs[0].regionID).99"
        #expect(throws: DeviceError.noSuchDevice(path: missing)) { try DaxCharDevice(path: missing) }
    }
}

}

func mapErrno(_ dev: any DaxDevice, _ off: UInt64, _ len: UInt64, _ opts: MapOptions) -> Errno? {
    do {
        let m = try dev.map(offset: off, length: len, options: opts)
        m.unmap()
        return nil
    } catch {
        return error.errno
    }
}

/// The pfn /proc/self/pagemap reports for a touched address (root only).
func pagemapPFN(_ p: UnsafeMutableRawPointer) throws -> UInt64 {
    let fd = try FileDescriptor.open("/proc/self/pagemap", .readOnly)
    defer { try? fd.close() }
    var entry: UInt64 = 0
    let off = Int64(UInt(bitPattern: p) / 4096 * 8)
    _ = try withUnsafeMutableBytes(of: &entry) { try fd.read(fromAbsoluteOffset: off, into: $0) }
    #expect(entry >> 63 == 1, "page not present in pagemap")
    return entry & ((1 << 55) - 1)
}
