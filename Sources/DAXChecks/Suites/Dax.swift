import DAXDevice

/// Real device-dax, as ndctl's `dax` suite checks it (device-dax.c,
/// dax-pmd.c's test_dax_directio/remap/poison, multi-dax.sh,
/// sub-section.sh, daxctl-devices.sh, device-dax-fio.sh). Devices are
/// picked by alignment through discovery; tests that change namespaces or
/// kmem state put them back at cleanup. The bodies are in DAXChecks/Dax.
enum DaxSuite {
    static let aligns: [DaxAlign] = [.pte, .pmd, .pud]

    static let tests: [CheckTest] =
        aligns.map { a in
            CheckTest("devdax-map-private-\(DevdaxKit.suffix(a))", suite: .dax, gates: [.root, .devdaxAlign(a)],
                      anchor: "ndctl: device-dax",
                      "mmap(MAP_PRIVATE) of a \(a) device-dax device is refused (EINVAL) and MAP_SHARED of 2*align "
                      + "(the device size if smaller) maps and is coherent with a second shared mapping") { t in
                try MappingChecks.mapPrivate(t, a)
            }
        }
        + [
            CheckTest("devdax-fsdax-pattern", suite: .dax, gates: [.root, .pmemBlockDevice, .program("ndctl")],
                      anchor: "ndctl: device-dax", timeout: 240,
                      "a salted pattern written through an fsdax namespace's /dev/pmemX reads back through the same "
                      + "namespace reconfigured to devdax, at 2M and 4K (1G only on a namespace of 2G or more); ndctl's "
                      + "60 us/4K verify-time bound is recorded, not asserted (TCG cannot meet it)") { t in
                try ReconfigureChecks.fsdaxPattern(t)
            },
        ]
        + aligns.map { a in
            CheckTest("devdax-odirect-\(DevdaxKit.suffix(a))", suite: .dax, gates: [.root, .devdaxAlign(a), .pmemBlockDevice],
                      anchor: "ndctl: device-dax (test_dax_directio)",
                      "the five test_dax_directio cases on a \(a) device-dax MAP_SHARED mapping: O_DIRECT (on /dev/pmemX) "
                      + "from an unfaulted and into a read-only page, from a pre-faulted page, fork of a pre-faulted mapping, "
                      + "read-only to read-write upgrade, into an unfaulted page; each transfer pins (nr_foll_pin_acquired)") { t in
                try DirectIOChecks.run(t, a)
            }
        }
        + aligns.map { a in
            CheckTest("devdax-mremap-\(DevdaxKit.suffix(a))", suite: .dax, gates: [.root, .devdaxAlign(a), .minKernel(5, 8)],
                      anchor: "ndctl: device-dax (test_dax_remap)",
                      "mremap of 4K out of a \(a) device-dax mapping: refused, or moved with SIGBUS on access only for "
                      + "align > 4K, otherwise the moved page keeps its data") { t in
                try MappingChecks.mremap(t, a)
            }
        }
        + [
            CheckTest("devdax-map-sync", suite: .dax, gates: [.root, .devdax],
                      anchor: "ndctl: device-dax (test_dax_poison, test_dax_soft_offline)",
                      "MAP_SHARED_VALIDATE|MAP_SYNC is accepted on device-dax (refused on a memfd), with MAP_POPULATE the "
                      + "mapping is usable, MADV_SOFT_OFFLINE and soft_offline_page are refused; every alignment present") { t in
                try MappingChecks.mapSync(t)
            },
            CheckTest("devdax-reconfigure-sigbus", suite: .dax, gates: [.root, .devdax, .program("ndctl")],
                      anchor: "ndctl: device-dax", timeout: 120,
                      "a live MAP_SHARED device-dax mapping whose namespace is reconfigured to raw raises SIGBUS on a "
                      + "pre-faulted and on an unfaulted page; the namespace is put back") { t in
                try ReconfigureChecks.reconfigureSIGBUS(t)
            },
            CheckTest("devdax-multi-dax", suite: .dax, gates: [.root, .program("ndctl"), .minKernel(4, 13)],
                      anchor: "ndctl: multi-dax.sh", timeout: 120,
                      "two 16M 4K-aligned devdax namespaces made in one region's free space both map and keep their own "
                      + "pattern; both destroyed; no Call Trace in the kernel log") { t in
                try NamespaceChecks.multiDax(t)
            },
            CheckTest("devdax-sub-section", suite: .dax, gates: [.root, .program("ndctl"), .program("mkfs.ext4"), .minKernel(5, 3)],
                      anchor: "ndctl: sub-section.sh", timeout: 180,
                      "up to 4 (ndctl: 10) 16M fsdax namespaces, as the largest free extent allows: mkfs.ext4 -b 4096, "
                      + "mount -o dax, umount, then disable, enable, destroy; no Call Trace in the kernel log") { t in
                try NamespaceChecks.subSection(t)
            },
            CheckTest("devdax-kmem", suite: .dax, gates: [.root, .devdax, .program("daxctl")],
                      anchor: "ndctl: daxctl-devices.sh", timeout: 180,
                      "a device-dax device holding whole memory blocks: reconfigure-device -N -m system-ram, online-memory, "
                      + "offline-memory, reconfigure-device -f -m devdax, mode checked with daxctl list after each step") { t in
                try KmemCheck.run(t)
            },
        ]
        + aligns.map { a in
            CheckTest("devdax-fio-\(DevdaxKit.suffix(a))", suite: .dax, gates: [.root, .devdaxAlign(a), .program("fio")],
                      anchor: "ndctl: device-dax-fio.sh", timeout: 120,
                      "fio --ioengine=dev-dax on a \(a) device: 32M written with crc32c verify then read and verified "
                      + "(ndctl: 5 s per phase); no job killed by a signal") { t in
                try FioCheck.run(t, a)
            }
        }
        + [
            CheckTest("devdax-bench-fault", suite: .dax, gates: [.root, .devdax], anchor: "ndctl: device-dax (verify_data timed pass)", timeout: 150,
                      "daxmm bench fault --quick --json on each device-dax alignment present: the kernel's first touch "
                      + "costs one fault that maps the whole extent (PTE, PMD, PUD), the port's window and bare faults "
                      + "are measured on the same device, the ratios are present and the port's counters are restored") { t in
                try BenchCheck.run(t)
            },
            CheckTest("devdax-hwpoison", suite: .dax, gates: [.root, .devdax],
                      anchor: "ndctl: device-dax (test_dax_poison)",
                      "MADV_HWPOISON of a page in the last 2M of a 2M (or 1G) device-dax MAP_SYNC|MAP_POPULATE mapping "
                      + "delivers SIGBUS with BUS_MCEERR_AR") { t in
                try PoisonCheck.run(t)
            },
        ]
}
