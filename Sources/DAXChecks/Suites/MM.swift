import MMCore

/// The port alone: each test drives the ported mm and DAX code (MMCore,
/// DAXCore, DAXRuntime over the emulated device) through a whole scenario,
/// asserts the kernel's counters before and after (folio refcount, mapcount,
/// pincount, rss, node counters, VM_FAULT_* codes, errnos), then lets the
/// port's invariant checker look. The scenarios live in DAXChecks/MM.
enum MMSuite {
    static let tests: [CheckTest] = [
        CheckTest("mm-devdax-fault-pte", suite: .mm, anchor: "ndctl: device-dax", timeout: 60,
                  "4K device-dax: __dev_dax_pte_fault -> vmf_insert_page_mkwrite maps one PTE, +1 refcount/+1 mapcount per mapping (folio_add_file_rmap_ptes); read then write is an in-place mkwrite upgrade; zap and munmap drop back to refcount 1") { t in
            try devdaxFaultScenario(t, align: 4096)
        },
        CheckTest("mm-devdax-fault-pmd", suite: .mm, anchor: "ndctl: device-dax", timeout: 60,
                  "2M device-dax: __dev_dax_pmd_fault -> vmf_insert_folio_pmd maps one PMD, +1 refcount/+1 mapcount per mapping, rss and NR_FILE_PMDMAPPED +512 (folio_add_file_rmap_pmd); read then write upgrades in place (insert_pmd); zap and munmap drop back exactly") { t in
            try devdaxFaultScenario(t, align: UInt64(pmdSize))
        },
        CheckTest("mm-devdax-fault-pud", suite: .mm, anchor: "ndctl: device-dax", timeout: 120,
                  "1G device-dax: __dev_dax_pud_fault -> vmf_insert_folio_pud maps one PUD, +1 refcount/+1 mapcount per mapping, rss +262144 and no NR_FILE_PMDMAPPED (folio_add_file_rmap_pud); read then write upgrades in place (insert_pud); zap and munmap drop back exactly") { t in
            try devdaxFaultScenario(t, align: UInt64(pudSize))
        },
        CheckTest("mm-devdax-check-vma", suite: .mm, anchor: "ndctl: device-dax", timeout: 60,
                  "drivers/dax/device.c refusals: check_vma -EINVAL for MAP_PRIVATE and a misaligned start, length or pgoff; wrong fault orders SIGBUS/FALLBACK; a VMA larger than the device SIGBUSes past the end (dax_pgoff_to_phys); MAP_SYNC accepted with no VM_FAULT_NEEDDSYNC") { t in
            try devdaxCheckVmaScenario(t)
        },
        CheckTest("mm-devdax-mremap-split", suite: .mm, anchor: "ndctl: device-dax (test_dax_remap)", timeout: 60,
                  "mremap of 4K out of a 2M device-dax VMA is refused by dev_dax_may_split (-EINVAL) with no counter moved; an aligned 2M move carries the PMD's reference (move_huge_pmd); a 4K VMA of a 2M device faults SIGBUS (check_vma); on a 4K device the move succeeds") { t in
            try devdaxMremapScenario(t)
        },
        CheckTest("mm-devdax-kill-dax", suite: .mm, anchor: "ndctl: device-dax (revocation under a live mapping)", timeout: 120,
                  "kill_dax under a concurrent fault loop: DevDax.remove waits for fault handlers (synchronize_srcu), unmap_mapping_range zaps, memunmap_pages tears down; no entry left, rss and NR_FILE_MAPPED 0, later faults SIGBUS and mmap -ENXIO") { t in
            try devdaxKillDaxScenario(t)
        },
        CheckTest("mm-gup-devdax-pin", suite: .mm, anchor: "selftest: gup_test (PIN_BASIC_TEST, GUP_BASIC_TEST)", timeout: 60,
                  "get_user_pages/pin_user_pages(_fast), with and without FOLL_LONGTERM, on 4K and 2M device-dax: try_grab_folio adds +1 per FOLL_GET, +GUP_PIN_COUNTING_BIAS per pin of a small folio, +1 ref and +1 _pincount per pin of a large one; unpin_user_pages restores every counter") { t in
            try gupDevdaxPinScenario(t)
        },
        CheckTest("mm-gup-fsdax-longterm", suite: .mm, anchor: "new (seed: the series' \"mm/gup: don't allow FOLL_LONGTERM pinning of FS DAX pages\")", timeout: 60,
                  "FOLL_LONGTERM on an fs-dax VMA is -EOPNOTSUPP (check_vma_flags: vma_is_fsdax; folio_is_longterm_pinnable), slow and fast, PTE or PMD, faulted or not, with no counter moved; a short-term FOLL_PIN works and device-dax takes the long-term pin") { t in
            try gupFsdaxLongtermScenario(t)
        },
        CheckTest("mm-folio-get-refcount-zero", suite: .mm, anchor: "new (seed: dax-ext4.sh VM_BUG_ON_FOLIO in dax_insert_pfn_pmd on a refcount-0 folio)", timeout: 60,
                  "folio_get on a free (refcount 0) fs-dax folio is caught: the pre-series PMD insert reports VM_BUG_ON_FOLIO(folio_ref_count + 127u <= 127u) dump_page-style naming the folio and SIGBUSes; try_grab_folio at 0 is -ENOMEM; the fixed path (folio_ref_inc, insert, folio_put) maps; no normal path takes a reference at 0") { t in
            try folioGetRefcountZeroScenario(t)
        },
        CheckTest("mm-fsdax-break-layout-truncate", suite: .mm, anchor: "new (seed: the series' dax_break_layout patches, layouts broken before truncate)", timeout: 120,
                  "truncate and hole punch break layouts first: dax_layout_busy_page names a pinned page, a bounded truncate is EBUSY with i_size, entries and blocks kept, a waiting one sleeps until the unpin's free_zone_device_folio wakes it, then the entries go and the blocks are freed; a PMD folio splits back to idle order-0 pages") { t in
            try fsdaxBreakLayoutScenario(t)
        },
        CheckTest("mm-fsdax-zero-page-hole", suite: .mm, anchor: "ndctl: dax.sh (dax-ext4/dax-xfs)", timeout: 60,
                  "a read fault on an fs-dax hole maps the zero page (dax_load_hole: special read-only PTE, zero entry, no refcount/rss); the write fault allocates a block (VM_FAULT_MAJOR), dax_insert_entry replaces the zero entry and maps it writable with refcount 1 and mapcount 1") { t in
            try fsdaxZeroPageHoleScenario(t)
        },
        CheckTest("mm-memremap-pages-lifecycle", suite: .mm, anchor: "new (seed: ZONE_DEVICE pages start at refcount 0, reached for fs-dax by the series)", timeout: 60,
                  "memremap_pages/memunmap_pages of GENERIC (shift 9) and FS_DAX pgmaps: percpu_ref = 1 + one per folio; __init_zone_device_page gives ZONE_DEVICE, reserved, the pgmap, refcount 1 (device-dax) or 0 (fs-dax), compound tails at 0; a get_dev_pagemap reference holds memunmap_pages until put") { t in
            try memremapLifecycleScenario(t)
        },
        CheckTest("mm-memremap-deferred-1tib", suite: .mm, anchor: "new", timeout: 120,
                  "deferred memmap_init_zone_device: a 1 TiB emulated device bound in device-dax mode (dev_dax_probe) initialises no struct page (8192 deferred sections, no vmemmap page resident); a CPU write through a window at 512 GiB maps one PMD and initialises one section; kill_dev_dax gives every section back") { t in
            try memremapDeferredTerabyteScenario(t)
        },
        CheckTest("mm-mprotect-levels", suite: .mm, anchor: "new", timeout: 120,
                  "mprotect on device-dax PTE, PMD and PUD mappings (change_pte_range, change_huge_pmd, change_huge_pud): PROT_READ write-protects, PROT_NONE keeps entries present without _PAGE_USER, back to RW a write fault upgrades; no refcount, mapcount or rss moves; a split off the alignment is -EINVAL (dev_dax_may_split)") { t in
            try mprotectLevelsScenario(t)
        },
        CheckTest("mm-zap-levels", suite: .mm, anchor: "new", timeout: 120,
                  "zap at PTE, PMD and PUD (zap_pte_range, zap_huge_pmd, zap_huge_pud) drops exactly one reference, mapcount and the entry's rss; 4K zapped inside a PMD/PUD unmaps the whole DAX entry (__split_huge_pmd_locked); unmap_mapping_range leaves every folio idle") { t in
            try zapLevelsScenario(t)
        },
        CheckTest("mm-munmap-partial", suite: .mm, anchor: "new", timeout: 60,
                  "munmap of a partially populated range (do_vmi_munmap): only the faulted pages inside it lose their reference and rss, the VMA splits with the right pgoff; off the device alignment it is -EINVAL with nothing changed") { t in
            try munmapPartialScenario(t)
        },
        CheckTest("mm-anon-fault", suite: .mm, anchor: "new", timeout: 60,
                  "do_anonymous_page: a read maps the zero page (special, read-only, no rss, nothing allocated); a write maps a new exclusive folio (refcount 1, mapcount 1, PageAnonExclusive, MM_ANONPAGES and NR_ANON_MAPPED +1, one page from the allocator); MADV_DONTNEED and munmap free it to the allocator") { t in
            try anonFaultScenario(t)
        },
        CheckTest("mm-anon-thp", suite: .mm, anchor: "new", timeout: 60,
                  "do_huge_pmd_anonymous_page with MADV_HUGEPAGE: the huge zero folio on a read, a PMD THP on a write (NR_ANON_THPS +512, head PageAnonExclusive); enabled=never or no advice maps PTEs; a 4K munmap splits the PMD (__split_huge_pmd_locked: AnonExclusive on every page, 511 mappings, deferred split flag)") { t in
            try anonThpScenario(t)
        },
        CheckTest("mm-page-alloc", suite: .mm, anchor: "new", timeout: 60,
                  "the buddy allocator (expand's split, __free_one_page's merge, aligned order-9 folios); an exhausted zone makes an anon write fault VM_FAULT_OOM with nothing mapped; a THP fault with no order-9 block falls back to a PTE") { t in
            try pageAllocScenario(t)
        },
        CheckTest("mm-folio-lock", suite: .mm, anchor: "new", timeout: 60,
                  "folio_lock: a second locker sleeps until folio_unlock wakes it, folio_trylock fails while held, a bounded lock times out, folio_wait_locked waits without locking, folio_unlock of a free lock is VM_BUG_ON_FOLIO") { t in
            try folioLockScenario(t)
        },
        CheckTest("mm-nonpresent-entries", suite: .mm, anchor: "new", timeout: 60,
                  "device-exclusive, migration and device-private entries through zap_nonpresent_ptes, change_pte_range, move_ptes, GUP and the CPU fault: which drop the reference, mapcount and MM_ANONPAGES, which are rewritten read-only, soft-dirty on a move, migration_entry_wait") { t in
            try nonpresentEntriesScenario(t)
        },
        CheckTest("mm-mmu-notifier", suite: .mm, anchor: "new", timeout: 60,
                  "a subscribed recorder hears exactly the kernel's ranges: munmap UNMAP, MADV_DONTNEED CLEAR, mprotect PROTECTION_VMA, mremap UNMAP, __split_huge_pmd CLEAR, make_device_exclusive EXCLUSIVE with the owner (filtered by that owner), the restore CLEAR without one, exit_mmap ->release then UNMAP") { t in
            try mmuNotifierScenario(t)
        },
        CheckTest("mm-device-exclusive", suite: .mm, anchor: "new (seed: make_device_exclusive / page_make_device_exclusive_one discussion); selftest: hmm-tests (exclusive_*)", timeout: 60,
                  "make_device_exclusive on a THP: FOLL_SPLIT_PMD PTE-maps it first, the entry carries the subpage's pfn and soft-dirty, a tail page never reaches rmap_walk, reference/mapcount/rss/PageAnonExclusive kept, the CPU fault restores after MMU_NOTIFY_CLEAR (read-only after mprotect), zap drops the reference, non-anon -EOPNOTSUPP; exclusive_cow: fork restores the entry and COW-shares the page") { t in
            try deviceExclusiveScenario(t)
        },
        CheckTest("mm-cow", suite: .mm, anchor: "selftest: cow (mm/cow.c)", timeout: 60,
                  "do_wp_page: a write after a zero-page read copies into a new exclusive anon folio (MM_ANONPAGES +1, MMU_NOTIFY_CLEAR); the huge zero PMD splits then copies one page; an exclusive page is reused in place with no allocation; a page shared after fork is copied by the writer and the other mm keeps its page and bytes") { t in
            try cowScenario(t)
        },
        CheckTest("mm-fork", suite: .mm, anchor: "selftest: cow (mm/cow.c)", timeout: 60,
                  "dup_mmap/copy_page_range: anon pages shared read-only with PageAnonExclusive cleared (refcount/mapcount +1, NR_ANON_MAPPED unchanged, MM_ANONPAGES in both); a pinned page and a pinned THP are copied; a THP is shared whole; shared device-dax/fs-dax VMAs are not copied; a device-exclusive entry is restored first; MMU_NOTIFY_PROTECTION_PAGE on the parent") { t in
            try forkScenario(t)
        },
        CheckTest("mm-gup-unshare", suite: .mm, anchor: "selftest: cow (mm/cow.c)", timeout: 60,
                  "gup_must_unshare: a R/O FOLL_PIN of a shared anon page faults with FAULT_FLAG_UNSHARE so the pinned page is exclusive (GUP-fast refuses, the slow path unshares); FOLL_GET does not; FOLL_FORCE writes through a read-only private mapping; FOLL_WRITE on a read-only shared PTE copies") { t in
            try gupUnshareScenario(t)
        },
        CheckTest("mm-fsdax-private-cow", suite: .mm, anchor: "new", timeout: 60,
                  "fs-dax MAP_PRIVATE: a read maps the file page read-only (MM_FILEPAGES), a write copies it (wp_page_copy: MM_FILEPAGES -1, MM_ANONPAGES +1, the fs-dax folio idle); a write to a never-read page or a hole copies (dax_fault_cow_page, VM_FAULT_DONE_COW); the blocks keep their data; truncate drops COW copies past EOF, hole punch keeps them") { t in
            try fsdaxPrivateCowScenario(t)
        },
        CheckTest("mm-property", suite: .mm, anchor: "new", timeout: PropertyRun.timeout,
                  "seeded random sequences of faults, pins, unpins, zaps, mprotect, munmap, truncate, break_layout and hole punch over device-dax and fs-dax, with the port's invariants after every step (DAXMM_PROPERTY_STEPS steps, DAXMM_PROPERTY_SEED; a failure names seed and step)") { t in
            try mmPropertyScenario(t, run: PropertyRun(variables: t.environment.variables))
        },
    ]
}
