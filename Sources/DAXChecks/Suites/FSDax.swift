/// Real fs-dax: ext4 and xfs made on the fsdax namespace's /dev/pmemX and
/// mounted -o dax under the test's mount point (unmounted at cleanup). Each
/// test makes its own file system; the namespace itself is never
/// reconfigured.
enum FSDaxSuite {
    static let tests: [CheckTest] =
        DaxFilesystem.allCases.map(pmd) + DaxFilesystem.allCases.map(mmap)
        + DaxFilesystem.allCases.map(gupLongterm) + [longtermUring]
        + DaxFilesystem.allCases.map(poison)

    static func pmd(_ fs: DaxFilesystem) -> CheckTest {
        CheckTest("fsdax-pmd-\(fs)", suite: .fsdax, gates: [.root, .pmemBlockDevice, .program("fallocate")],
                  anchor: "ndctl: dax.sh (dax-\(fs).sh) + dax-pmd.c", timeout: 300,
                  "\(fs) -o dax: a FIEMAP-aligned extent takes PMD faults (dax_pmd_fault_done NOPAGE and 512-pfn pagemap runs agree); mremap, the five O_DIRECT cases and MAP_SYNC on the same file") { t in
            try FSDaxPmd.run(t, fs: fs)
        }
    }

    static func mmap(_ fs: DaxFilesystem) -> CheckTest {
        CheckTest("fsdax-mmap-\(fs)", suite: .fsdax, gates: [.root, .pmemBlockDevice, .program("fallocate")],
                  anchor: "ndctl: mmap.sh + mmap.c", timeout: 300,
                  "\(fs) -o dax: mmap.c's 18 variants (shared/private, read-only, mlock, mlockall, MAP_POPULATE, read, write) succeed; shared writes reach the file, private writes do not") { t in
            try FSDaxMmap.run(t, fs: fs)
        }
    }

    static func gupLongterm(_ fs: DaxFilesystem) -> CheckTest {
        CheckTest("fsdax-gup-longterm-\(fs)", suite: .fsdax, gates: [.root, .pmemBlockDevice, .ioUring],
                  anchor: "selftest: gup_longterm", timeout: 300,
                  "\(fs) -o dax: io_uring FOLL_LONGTERM|FOLL_WRITE registration of R/W and R/O, shared and private file mappings: the kernel against the selftest's expectation and the port's pin_user_pages_fast on a port VMA of the same flags") { t in
            try FSDaxLongterm.matrix(t, fs: fs)
        }
    }

    static let longtermUring = CheckTest(
        "fsdax-longterm-uring", suite: .fsdax, gates: [.root, .pmemBlockDevice, .ioUring, .devdax],
        anchor: "selftest: gup_longterm", timeout: 300,
        "io_uring refuses FOLL_LONGTERM on a MAP_SHARED ext4 -o dax mapping as the port's check_vma_flags does; the same registration of a device-dax mapping succeeds in both") { t in
        try FSDaxLongterm.uring(t)
    }

    static func poison(_ fs: DaxFilesystem) -> CheckTest {
        CheckTest("fsdax-poison-\(fs)", suite: .fsdax, gates: [.root, .pmemBlockDevice, .program("fallocate")],
                  anchor: "ndctl: dax.sh (dax-\(fs).sh) + dax-poison.c", timeout: 300,
                  "\(fs) -o dax, MAP_SYNC|MAP_POPULATE PMD mapping: MADV_SOFT_OFFLINE fails, MADV_HWPOISON raises SIGBUS BUS_MCEERR_AR, punching the hole and rewriting the block clears it") { t in
            try FSDaxPoison.run(t, fs: fs)
        }
    }
}
