/// The port and the real kernel on the same scenario over the same real
/// device-dax device: every observable (errno, signal, entry size, pfn, data,
/// mapcount, pin result and counters) compared; a disagreement prints both
/// sides. Each test checks the port's invariants over its bindings after the
/// body. The code is in Sources/DAXChecks/Diff.
enum DiffSuite {
    static let tests: [CheckTest] = [
        CheckTest("diff-fault-size-4k", suite: .diff, gates: [.root, .devdaxAlign(.pte)], anchor: "new",
                  "one touch of a 4K device: the port inserts a PTE, the kernel's own mapping shows 1 present page, same pfn") { t in
            try DiffFaultSize.run(t, .pte)
        },
        CheckTest("diff-fault-size-2m", suite: .diff, gates: [.root, .devdaxAlign(.pmd)], anchor: "new",
                  "one touch of a 2M device: the port inserts a PMD, pagemap shows 512 present pages from the extent start with the port's consecutive pfns") { t in
            try DiffFaultSize.run(t, .pmd)
        },
        CheckTest("diff-fault-size-1g", suite: .diff, gates: [.root, .devdaxAlign(.pud)], anchor: "new",
                  "one touch of a 1G device: the port inserts a PUD, the kernel takes no further fault across the 1 GiB extent, the port's pfn is the device's resource") { t in
            try DiffFaultSize.run(t, .pud)
        },
        CheckTest("diff-mapcount", suite: .diff, gates: [.root, .devdaxAlign(.pmd)], anchor: "new",
                  "a page mapped 1 -> 2 -> 1 times: the port's folio mapcount against pagemap's exclusive bit (6.12: 0 throughout, EXPECTEDFAIL)") { t in
            try DiffMapcount.run(t)
        },
        CheckTest("diff-longterm-pin-devdax", suite: .diff, gates: [.root, .devdax, .ioUring], anchor: "selftest: gup_longterm",
                  "io_uring registration (FOLL_LONGTERM) of device-dax succeeds; the port's pin_user_pages(FOLL_LONGTERM) of the same range succeeds with try_grab_folio's counters") { t in
            try DiffPins.longterm(t)
        },
        CheckTest("diff-map-errors", suite: .diff, gates: [.root, .devdax], anchor: "ndctl: device-dax (MAP_PRIVATE)",
                  "MAP_PRIVATE, misaligned offset and length, past the end, MAP_SYNC, unknown MAP_SHARED_VALIDATE flags: the same mmap errno, and SIGBUS past the end on both sides") { t in
            try DiffMapErrors.run(t)
        },
        CheckTest("diff-mremap-split", suite: .diff, gates: [.root, .devdaxAlign(.pmd)], anchor: "new",
                  "mremap splitting a huge device-dax mapping inside an extent (dev_dax_may_split): refused alike, the mapping intact; an aligned shrink allowed alike") { t in
            try DiffMremap.run(t)
        },
        CheckTest("diff-data", suite: .diff, gates: [.root, .devdax], anchor: "ndctl: device-dax (verify_data)",
                  "words written through the port's window read back through the kernel's mapping and the reverse, in the first, second and last extent of every device") { t in
            try DiffData.run(t)
        },
        CheckTest("diff-kill-dax", suite: .diff, gates: [.root, .devdax, .program("ndctl")], anchor: "ndctl: device-dax (fault after reset)", timeout: 240,
                  "namespace reconfigured under a live port window and a live kernel mapping: SIGBUS in the kernel, kill_dev_dax and SIGBUS in the port") { t in
            try DiffKillDax.run(t)
        },
        CheckTest("diff-odirect-pins", suite: .diff, gates: [.root, .devdax, .pmemBlockDevice], anchor: "ndctl: device-dax (test_dax_directio)",
                  "O_DIRECT read into and write from a device-dax window: the kernel's transfer succeeds, the port's FOLL_PIN counters are try_grab_folio's") { t in
            try DiffPins.odirect(t)
        },
        CheckTest("diff-anon-zero-page", suite: .diff, gates: [.root], anchor: "new",
                  "a read fault of a private anonymous page maps the zero page on both sides (kpageflags ZERO_PAGE / the port's special PTE of the zero pfn, no Rss); a write maps an anon page mapped once (pagemap bit 56, kpagecount 1 / do_anonymous_page's mapcount 1)") { t in
            try DiffAnon.zeroPage(t)
        },
        CheckTest("diff-anon-thp", suite: .diff, gates: [.root], anchor: "new",
                  "with MADV_HUGEPAGE and the kernel's transparent_hugepage settings: a write maps a PMD THP on both sides (AnonHugePages 2048 kB / do_huge_pmd_anonymous_page), a read the huge zero folio when use_zero_page is 1; SKIP when THP is off or no order-9 page was free") { t in
            try DiffAnon.thp(t)
        },
        CheckTest("diff-anon-thp-split", suite: .diff, gates: [.root], anchor: "new",
                  "munmap of one 4K page of a THP: 511 pages stay mapped with their pfns, the THP is PTE-mapped (AnonHugePages 0 / __split_huge_pmd_locked), every remaining page exclusively mapped on both sides") { t in
            try DiffAnon.thpSplit(t)
        },
        CheckTest("diff-fsdax-private-cow", suite: .diff, gates: [.root, .pmemBlockDevice, .program("mkfs.ext4")], anchor: "new", timeout: 180,
                  "MAP_PRIVATE of an fs-dax file (ext4 -o dax / the port's file in a private window): a read maps the file's pmem page, the write that follows and a write to a never-read page map anon copies outside pmem (pagemap, kpageflags ANON, smaps Rss/Anonymous / the translation, MM_FILEPAGES, MM_ANONPAGES), the file keeps its bytes, the mapping sees the new ones") { t in
            try DiffPrivateCow.run(t)
        },
    ]
}
