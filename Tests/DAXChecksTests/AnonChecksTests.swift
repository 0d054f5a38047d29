// The helpers of the anonymous-memory checks (the mm suite's anon,
// non-present, notifier and device-exclusive scenarios, and the diff
// suite's anon checks), on the host: the sysfs and kpageflags decoding, and
// that the verdicts they rely on (the invariant checker's rss rule, the
// notifier recorder) fail when the port is wrong.

import CDaxMM
import DAXBase
@testable import DAXChecks
import MMCore
import Testing

private func outcome(_ body: @escaping CheckTest.Body) -> Outcome {
    CheckTest("mm-anon-seam", suite: .mm, anchor: "new", "an anon scenario run through the test seam", body: body).run(in: CheckEnvironment())
}

private func failure(_ o: Outcome) -> String {
    if case .fail(let m) = o { return m }
    return "not a failure: \(o)"
}

@Suite("daxmm test: the anonymous-memory checks' helpers")
struct AnonChecksTests {
    @Test("transparent_hugepage/enabled and use_zero_page parse as the kernel prints them")
    func thpSettingsParse() {
        #expect(KernelTHPSettings.parse(enabled: "always [madvise] never\n", useZeroPage: "1\n")
                == KernelTHPSettings(enabled: .madvise, useZeroPage: true))
        #expect(KernelTHPSettings.parse(enabled: "[always] madvise never", useZeroPage: "0")
                == KernelTHPSettings(enabled: .always, useZeroPage: false))
        #expect(KernelTHPSettings.parse(enabled: "always madvise [never]", useZeroPage: "1")?.enabled == .never)
        #expect(KernelTHPSettings.parse(enabled: "always madvise never", useZeroPage: "1") == nil, "no selection")
        #expect(KernelTHPSettings.selected("a [b] c") == "b")
    }

    @Test("kpageflags bits (include/uapi/linux/kernel-page-flags.h) decode: a THP head, the huge zero page, a tail")
    func kpageflagsDecode() {
        let thpHead = KPageFlags(raw: 0x40040d828)   // ANON|THP|COMPOUND_HEAD, as the host kernel reported
        #expect(thpHead.isAnon && thpHead.isTHP && thpHead.isHead && !thpHead.isTail && !thpHead.isZeroPage)
        let hugeZero = KPageFlags(raw: 0x1408000)    // THP|ZERO_PAGE|COMPOUND_HEAD
        #expect(hugeZero.isZeroPage && hugeZero.isTHP && !hugeZero.isAnon)
        #expect(KPageFlags(raw: 1 << 16).isTail)
        #expect(thpHead.description.hasPrefix("ANON|THP|COMPOUND_HEAD"))
    }

    @Test("invariant 14 (add_mm_counter, mm_counter) finds an MM_ANONPAGES one page off, with a zero page and a device-exclusive entry mapped")
    func rssRuleFails() throws {
        let m = try AnonMachine()
        let a = try m.map(64 << 10)
        #expect(m.mm.handleFault(a, write: true) == 0)
        #expect(m.mm.handleFault(a + 4096, write: true) == 0)
        #expect(m.mm.handleFault(a + 2 * 4096, write: false) == 0)   // the zero page: no rss
        let dx = try m.mm.makeDeviceExclusive(a + 4096, owner: UnsafeMutableRawPointer(bitPattern: 0xd0))
        m.mm.releaseDeviceExclusive(dx)                               // a device-exclusive entry keeps its rss
        #expect(m.mm.rssAnonPages == 2 && m.mm.rss(DAX_MM_FILEPAGES) == 0)
        let clean = invariants(mms: [m.mm], pgmaps: [], complete: true)
        #expect(clean.isEmpty, "\(clean)")
        // MM_ANONPAGES counts a page no entry maps.
        m.mm.withUnsafeRecord { addMMCounter($0, DAX_MM_ANONPAGES, 1) }
        let v = invariants(mms: [m.mm], pgmaps: [], complete: true)
        #expect(v.count == 1 && v.first?.rule == 14, "\(v)")
        #expect(v.first?.detail.contains("MM_ANONPAGES 3 but its entries map 2 anon pages") == true, "\(v)")
        // Put it back so the teardown's zap balances.
        m.mm.withUnsafeRecord { addMMCounter($0, DAX_MM_ANONPAGES, -1) }
        #expect(invariants(mms: [m.mm], pgmaps: [], complete: true).isEmpty)
    }

    @Test("the notifier recorder fails a check that expects a range the kernel does not raise")
    func recorderFails() {
        let msg = failure(outcome { t in
            let m = try AnonMachine()
            let r = NotifierRecorder()
            try r.register(m.mm)
            let a = try m.map(64 << 10)
            _ = m.mm.handleFault(a, write: true)
            try m.mm.madvise(a, 4096, .dontNeed)
            t.expectEvents(r, [NotifierEvent(.unmap, a, a + 4096)], "MADV_DONTNEED")
        })
        #expect(msg.contains("MADV_DONTNEED: heard MMU_NOTIFY_CLEAR [") && msg.contains("expected MMU_NOTIFY_UNMAP"), "\(msg)")
    }

    @Test("the mm and diff suites have the anonymous-memory checks")
    func coverage() {
        let mm = Set(MMSuite.tests.map(\.name)), diff = Set(DiffSuite.tests.map(\.name))
        for n in ["mm-anon-fault", "mm-anon-thp", "mm-page-alloc", "mm-folio-lock", "mm-nonpresent-entries",
                  "mm-mmu-notifier", "mm-device-exclusive"] {
            #expect(mm.contains(n), "\(n) missing")
        }
        for n in ["diff-anon-zero-page", "diff-anon-thp", "diff-anon-thp-split"] { #expect(diff.contains(n), "\(n) missing") }
        let seed = MMSuite.tests.first { $0.name == "mm-device-exclusive" }
        #expect(seed?.anchor.contains("new (seed: make_device_exclusive / page_make_device_exclusive_one discussion)") == true)
    }
}
