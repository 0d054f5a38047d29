/// Real device-dax checks of the `dax` suite, and the exerciser's runs on
/// the real devices: discovery (daxctl-compatible listing, the namespaces asked for,
/// NUMA nodes, the default device), mappings (alignment, data, pagemap pfns,
/// refusals), bad states, and the port exercised on every alignment with
/// real pins. The code is in Sources/DAXChecks/DaxMigrated.
enum DaxMigratedSuite {
    static let tests: [CheckTest] = [
        // Discovery: these also run on the two-node boot (2M devices only).
        CheckTest("devdax-discovery-list-json", suite: .dax, gates: [.devdax, .program("daxctl")], anchor: "new",
                  "daxmm list --json (and the library) print what daxctl list -R -D prints, with -M, -i and both") { t in
            try MigratedDiscovery.listJSON(t)
        },
        CheckTest("devdax-discovery-namespaces", suite: .dax, gates: [.devdax], anchor: "new",
                  "every alignment asked for (DAXMM_VM_EXPECT_ALIGNS) has a device, the fsdax namespace asked for exists, mappings cover each device") { t in
            try MigratedDiscovery.namespaces(t)
        },
        CheckTest("devdax-discovery-nodes", suite: .dax, gates: [.devdax], anchor: "new",
                  "each expected NUMA node (DAXMM_VM_EXPECT_NODES) has a device and libnuma sees it; target nodes are libnuma's") { t in
            try MigratedDiscovery.nodes(t)
        },
        CheckTest("devdax-discovery-default-device", suite: .dax, gates: [.root, .devdax], anchor: "new",
                  "without --device the first enabled device-dax device is used, and daxmm check names it") { t in
            try MigratedDiscovery.defaultDevice(t)
        },
        // Mappings and bad states.
        CheckTest("devdax-map-pattern-pagemap", suite: .dax, gates: [.root, .devdax], anchor: "ndctl: device-dax (verify_data)",
                  "each device maps MAP_SHARED at its alignment, holds a pattern seen by a second mapping, pagemap's pfns are its physical addresses") { t in
            try MigratedDevice.mapPatternPagemap(t)
        },
        CheckTest("devdax-map-refusals", suite: .dax, gates: [.root, .devdax], anchor: "ndctl: device-dax (MAP_PRIVATE)",
                  "MAP_PRIVATE and a length not a multiple of the alignment: EINVAL from the kernel and from the emulated device; MAP_SYNC accepted") { t in
            try MigratedDevice.refusals(t)
        },
        CheckTest("devdax-fsdax-blockdev-not-devdax", suite: .dax, gates: [.pmemBlockDevice], anchor: "new",
                  "an fsdax namespace's /dev/pmem block device is refused as device-dax, naming a block device") { t in
            try MigratedDevice.fsdaxBlockDevice(t)
        },
        CheckTest("devdax-disabled-device", suite: .dax, gates: [.root, .devdax, .program("daxctl")], anchor: "new",
                  "a disabled device is reported as disabled with the command that enables it; daxmm check says so in one line, exit 1") { t in
            try MigratedDevice.disabled(t)
        },
        CheckTest("devdax-permission-denied", suite: .dax, gates: [.root, .devdax, .program("setpriv")], anchor: "new",
                  "daxmm check as an unprivileged user: one line naming the device and permission denied, exit 1") { t in
            try MigratedDevice.permissionDenied(t)
        },
        CheckTest("devdax-missing-node", suite: .dax, gates: [.devdax], anchor: "new",
                  "a device name of an existing region without a /dev node: no such device") { t in
            try MigratedDevice.missingNode(t)
        },
        // The exerciser.
        CheckTest("devdax-exercise-4k", suite: .dax, gates: [.root, .devdaxAlign(.pte), .ioUring], anchor: "new",
                  "the port serves faults over a 4K device (8M window, 5000 accesses) with io_uring FOLL_LONGTERM pins and the pagemap cross-checks") { t in
            try MigratedExercise.devdax(t, .pte)
        },
        CheckTest("devdax-exercise-2m", suite: .dax, gates: [.root, .devdaxAlign(.pmd), .ioUring], anchor: "new",
                  "the port serves faults over a 2M device (64M window, 10000 accesses) with io_uring FOLL_LONGTERM pins and the pagemap cross-checks") { t in
            try MigratedExercise.devdax(t, .pmd)
        },
        CheckTest("devdax-exercise-1g", suite: .dax, gates: [.root, .devdaxAlign(.pud), .ioUring], anchor: "new",
                  "the port serves faults over a 1G device (1G window, strided) with io_uring FOLL_LONGTERM pins; 0 kernel faults across the PUD") { t in
            try MigratedExercise.devdax(t, .pud)
        },
        CheckTest("devdax-exercise-2m-odirect", suite: .dax, gates: [.root, .devdaxAlign(.pmd), .pmemBlockDevice],
                  anchor: "ndctl: device-dax (test_dax_directio)",
                  "O_DIRECT reads and writes between the pmem block device and a 2M device-dax window: FOLL_PIN counters as try_grab_folio predicts") { t in
            try MigratedExercise.devdaxODirect(t)
        },
        CheckTest("devdax-exercise-fsdax-4k", suite: .dax, gates: [.root, .devdaxAlign(.pte)], anchor: "new",
                  "fs-dax mode: the port's extent store over the 4K device serves faults (PMD extents, holes), data read back through the device") { t in
            try MigratedExercise.fsdax(t, odirect: false)
        },
        CheckTest("devdax-exercise-fsdax-4k-odirect", suite: .dax, gates: [.root, .devdaxAlign(.pte), .pmemBlockDevice], anchor: "new",
                  "fs-dax mode with O_DIRECT pins from the pmem block device") { t in
            try MigratedExercise.fsdax(t, odirect: true)
        },
        CheckTest("devdax-exercise-fsdax-longterm", suite: .dax,
                  gates: [.root, .devdaxAlign(.pte), .ioUring, .pmemBlockDevice, .program("mkfs.ext4")], anchor: "selftest: gup_longterm",
                  "FOLL_LONGTERM on fs-dax: the port refuses with EOPNOTSUPP, the kernel refuses io_uring registration of a file on ext4 -o dax") { t in
            try MigratedExercise.fsdaxLongterm(t)
        },
        CheckTest("devdax-exercise-bad-input", suite: .dax, gates: [.root, .devdaxAlign(.pmd)], anchor: "new",
                  "a window larger than the device or misaligned, 0 threads, fs-dax mode on a 1G device: one line naming the cause, nothing bound") { t in
            try MigratedExercise.badInput(t)
        },
        CheckTest("devdax-exercise-reconfigure", suite: .dax, gates: [.root, .devdaxAlign(.pmd), .program("ndctl")],
                  anchor: "ndctl: device-dax (fault after reset)", timeout: 240,
                  "the namespace reconfigured under a live window: the run ends with the extent that raised SIGBUS, after the port's kill_dev_dax") { t in
            try MigratedExercise.reconfigure(t)
        },
    ]
}
