// Long-term pins by the real kernel: an io_uring with registered buffers.
// io_uring_register(IORING_REGISTER_BUFFERS) pins every buffer for as long
// as it stays registered (io_uring/rsrc.c io_sqe_buffer_register ->
// io_pin_pages -> pin_user_pages_fast(FOLL_WRITE | FOLL_LONGTERM)), which is
// the kernel's side of the port's FOLL_LONGTERM pins.

import CDaxSys
import SystemPackage

#if canImport(Glibc)
import Glibc
#endif

/// One io_uring whose registered buffers are long-term pins.
///
/// What registering gives (io_pin_pages passes the pin's errno through; a
/// partial pin is unpinned and reported as EFAULT):
///
/// - anonymous memory, memfd/tmpfs and hugetlbfs: pinned;
/// - device-dax (`/dev/daxX.Y`, a character device, so `vma_is_fsdax` is
///   false): pinned, on 6.12 and from 6.15;
/// - **fs-dax files: EOPNOTSUPP**, on 6.12 and on 6.15+. GUP-fast refuses
///   the pin (6.12: devmap entries with FOLL_LONGTERM; 6.15+:
///   try_grab_folio_fast, folio_is_longterm_pinnable is false for fs-dax
///   folios) and the slow path's `check_vma_flags` (mm/gup.c) returns
///   -EOPNOTSUPP for FOLL_LONGTERM on a `vma_is_fsdax` VMA before any write
///   check;
/// - unmapped ranges, PROT_NONE or read-only mappings (the pin is FOLL_WRITE),
///   VM_IO/VM_PFNMAP mappings, shared mappings of files that need dirty
///   tracking (ext4, xfs, ... without DAX): EFAULT;
/// - over RLIMIT_MEMLOCK without CAP_IPC_LOCK (io_buffer_account_pin): ENOMEM;
/// - a length of 0 or over 1 GiB (io_buffer_validate): EFAULT, so a 1 GiB
///   range is the largest one buffer can pin.
public final class IoUringBuffers {
    /// A buffer to register.
    public struct Buffer: Equatable, Sendable {
        public var address: UInt
        public var length: Int
        public init(address: UInt, length: Int) {
            self.address = address
            self.length = length
        }
        public init(_ pointer: UnsafeMutableRawPointer, length: Int) {
            self.init(address: UInt(bitPattern: pointer), length: length)
        }
    }

    private let ring: UnsafeMutablePointer<io_uring>
    private var open = true
    /// The buffers now registered (pinned); empty when none are.
    public private(set) var registered: [Buffer] = []

    /// io_uring_queue_init with `entries` submission entries.
    public init(entries: UInt32 = 1) throws(KernelCallError) {
        // Set up before `ring` is stored: a throw then leaves the object
        // uninitialised, so deinit does not run on a ring that never was.
        let r = UnsafeMutablePointer<io_uring>.allocate(capacity: 1)
        r.initialize(to: io_uring())
        let rc = io_uring_queue_init(entries, r, 0)
        if rc < 0 {
            r.deallocate()
            throw Self.error("io_uring_queue_init", -rc)
        }
        ring = r
    }

    deinit {
        close()
        ring.deallocate()
    }

    /// io_uring_register_buffers: pins every buffer FOLL_WRITE|FOLL_LONGTERM.
    /// All or nothing: on an error none stays pinned. Precondition: no
    /// buffers registered (the kernel would say EBUSY).
    public func register(_ buffers: [Buffer]) throws(KernelCallError) {
        precondition(open, "io_uring used after close()")
        var iovecs = buffers.map { iovec(iov_base: UnsafeMutableRawPointer(bitPattern: $0.address),
                                         iov_len: $0.length) }
        let r = io_uring_register_buffers(ring, &iovecs, UInt32(iovecs.count))
        if r < 0 { throw Self.error("io_uring_register_buffers", -r) }
        registered = buffers
    }

    /// io_uring_unregister_buffers: drops the pins.
    public func unregister() throws(KernelCallError) {
        precondition(open, "io_uring used after close()")
        let r = io_uring_unregister_buffers(ring)
        if r < 0 { throw Self.error("io_uring_unregister_buffers", -r) }
        registered = []
    }

    /// io_uring_queue_exit (idempotent). The kernel drops any registered
    /// buffers when the ring goes.
    public func close() {
        guard open else { return }
        open = false
        io_uring_queue_exit(ring)
        registered = []
    }

    /// /proc/sys/kernel/io_uring_disabled (6.6+): 0 enabled, 1 only for
    /// CAP_SYS_ADMIN or io_uring_group, 2 disabled. Nil where it does not exist.
    public static func disabledSetting() -> Int? {
        guard case .success(let s) = Sys.readSmallFile("/proc/sys/kernel/io_uring_disabled") else { return nil }
        return Int(s.trimmingSpaces())
    }

    /// Nil when an io_uring can be set up here, or why it cannot.
    public static func available() -> String? {
        do {
            let ring = try IoUringBuffers(entries: 1)
            ring.close()
            return nil
        } catch {
            return error.description
        }
    }

    /// The error for `call` returning -`code`, with what it means here.
    static func error(_ call: String, _ code: Int32) -> KernelCallError {
        KernelCallError(call: call, errno: Errno(rawValue: code), reason: reason(call, code))
    }

    static func reason(_ call: String, _ code: Int32) -> String {
        switch code {
        case EPERM:
            let setting = disabledSetting().map { "io_uring_disabled = \($0)" } ?? "io_uring_disabled unreadable"
            return "io_uring is disabled for this process (/proc/sys/kernel/\(setting))"
        case ENOSYS:
            return "the kernel has no io_uring (CONFIG_IO_URING off) or a seccomp filter hides it"
        case EFAULT where call == "io_uring_register_buffers":
            return "a buffer is not fully mapped writable memory that can be pinned (unmapped, PROT_NONE or read-only, VM_IO/VM_PFNMAP, or a shared file mapping that needs dirty tracking), or its length is 0 or over 1 GiB (io_buffer_validate)"
        case EOPNOTSUPP where call == "io_uring_register_buffers":
            return "the kernel refuses a long-term pin of this memory (fs-dax: mm/gup.c check_vma_flags)"
        case ENOMEM:
            return "out of memory, or RLIMIT_MEMLOCK exceeded without CAP_IPC_LOCK"
        case EBUSY:
            return "buffers are already registered on this ring"
        case EINVAL:
            return "no buffers, or more than IORING_MAX_REG_BUFFERS"
        case EOVERFLOW:
            return "a buffer's end overflows the address space"
        case ENXIO:
            return "no buffers are registered"
        default:
            return ""
        }
    }
}
