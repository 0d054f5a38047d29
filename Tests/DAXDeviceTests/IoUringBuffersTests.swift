import CDaxSys
import SystemPackage
import Testing
@testable import DAXDevice

#if canImport(Glibc)
import Glibc
#endif

let ioUringUnavailable = IoUringBuffers.available()

/// io_uring buffer registration: the kernel's long-term pin
/// (io_uring/rsrc.c io_sqe_buffer_register -> io_pin_pages ->
/// pin_user_pages_fast(FOLL_WRITE | FOLL_LONGTERM)).
@Suite("Kernel probes: io_uring registered buffers",
       .enabled(if: ioUringUnavailable == nil, "io_uring unavailable: \(ioUringUnavailable ?? "")"))
struct IoUringBuffersTests {
    /// The FOLL_WRITE pin faults untouched anonymous pages in writable
    /// (faultin_page), so they are present in pagemap once registered, and
    /// stay so after the pins are dropped.
    @Test func registeringAnonymousMemoryPinsAndFaultsItIn() throws {
        let a = try ProbeMapping(anonymous: 4 * 4096)
        let b = try ProbeMapping(anonymous: 4096)
        #expect(try Pagemap.entries(at: a.address, count: 4).allSatisfy { !$0.present })
        let ring = try IoUringBuffers()
        try ring.register([.init(a.base, length: a.length), .init(b.base, length: b.length)])
        #expect(ring.registered.count == 2)
        let pinned = try Pagemap.entries(at: a.address, count: 4)
        #expect(pinned.allSatisfy { $0.present && $0.exclusive }, "\(pinned)")
        #expect(try Pagemap.entry(at: b.address).present)
        try ring.unregister()
        #expect(ring.registered.isEmpty)
        ring.close()
    }

    /// io_sqe_buffers_unregister with nothing registered: ENXIO; a second
    /// registration while buffers are registered: EBUSY.
    @Test func unregisterWithoutBuffersAndDoubleRegisterAreRefused() throws {
        let m = try ProbeMapping(anonymous: 4096)
        let ring = try IoUringBuffers()
        let none = #expect(throws: KernelCallError.self) { try ring.unregister() }
        #expect(none?.errno == .noSuchAddressOrDevice && none?.errnoName == "ENXIO")
        try ring.register([.init(m.base, length: m.length)])
        let busy = #expect(throws: KernelCallError.self) { try ring.register([.init(m.base, length: m.length)]) }
        #expect(busy?.errno == .resourceBusy, "\(String(describing: busy))")
        #expect(ring.registered.count == 1)
    }

    /// An unmapped range has no VMA (__get_user_pages: -EFAULT); io_pin_pages
    /// passes it through. The range is mapped and unmapped at 16 TiB, far
    /// below where mmap places memory top-down, so no test running alongside
    /// maps it again meanwhile.
    @Test func unmappedRangeIsRefusedWithEFAULT() throws {
        let hint = UnsafeMutableRawPointer(bitPattern: UInt(1) << 44)
        let m = try ProbeMapping(length: 2 * 4096, prot: PROT_READ | PROT_WRITE,
                                 flags: MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, fd: -1, at: hint)
        let gone = IoUringBuffers.Buffer(m.base, length: m.length)
        m.unmap()
        let ring = try IoUringBuffers()
        let e = #expect(throws: KernelCallError.self) { try ring.register([gone]) }
        #expect(e?.errno == .badAddress && e?.errnoName == "EFAULT", "\(String(describing: e))")
        #expect(e?.call == "io_uring_register_buffers")
        #expect(ring.registered.isEmpty)
    }

    /// The pin is FOLL_WRITE: check_vma_flags refuses a VMA without VM_WRITE
    /// (PROT_NONE or read-only) with -EFAULT.
    @Test(arguments: [PROT_NONE, PROT_READ])
    func unwritableRangeIsRefusedWithEFAULT(prot: Int32) throws {
        let m = try ProbeMapping(anonymous: 2 * 4096, prot: prot)
        let ring = try IoUringBuffers()
        let e = #expect(throws: KernelCallError.self) { try ring.register([.init(m.base, length: m.length)]) }
        #expect(e?.errno == .badAddress, "prot \(prot): \(String(describing: e))")
    }
}

/// What each errno is said to mean, without a ring.
@Suite("Kernel probes: io_uring error vocabulary")
struct IoUringErrorTests {
    @Test func errnosAreNamedWithTheirCause() {
        let fsdax = IoUringBuffers.error("io_uring_register_buffers", EOPNOTSUPP)
        #expect(fsdax.errno == .notSupported && fsdax.errnoName == "EOPNOTSUPP")
        #expect(fsdax.description.contains("EOPNOTSUPP") && fsdax.description.contains("fs-dax"))
        let disabled = IoUringBuffers.error("io_uring_queue_init", EPERM)
        #expect(disabled.description.contains("io_uring_disabled"))
        let nosys = IoUringBuffers.error("io_uring_queue_init", ENOSYS)
        #expect(nosys.errnoName == "ENOSYS" && nosys.description.contains("CONFIG_IO_URING"))
        let fault = IoUringBuffers.error("io_uring_register_buffers", EFAULT)
        #expect(fault.description.contains("PROT_NONE"))
    }

    /// available() agrees with setting up a ring.
    @Test func availableAgreesWithQueueInit() {
        let ring = try? IoUringBuffers()
        #expect((ring == nil) == (IoUringBuffers.available() != nil))
        if let setting = IoUringBuffers.disabledSetting(), setting == 2 {
            #expect(IoUringBuffers.available()?.contains("EPERM") == true)
        }
    }
}
