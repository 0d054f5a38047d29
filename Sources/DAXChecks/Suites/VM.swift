/// The vm suite: the project's QEMU harness (scripts/vm) on the host, and
/// what it promises inside the guest; plus the dax suite's test that needs
/// the harness's soft-reserved memory (devdax-create-multirange).
enum VMSuite {
    static let tests: [CheckTest] = VMRunChecks.tests + GuestChecks.tests + CreateDeviceChecks.tests
}
