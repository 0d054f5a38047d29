// The mm suite of `daxmm test`, run in this process: every test must pass
// on the host. And the suite's checks must be able to fail: scenarios run
// against a deliberately wrong kernel rule (KernelRules, the scenarios'
// seam), the port's invariant checker shown a broken counter, and the
// property run given a reference nobody accounts for, each end in FAIL with
// a message naming what is wrong.

import CDaxMM
import DAXBase
@testable import DAXChecks
import MMCore
import Testing

#if canImport(Glibc)
import Glibc
#endif

extension CheckTest: CustomTestStringConvertible {
    public var testDescription: String { name }
}

/// Runs `body` as a one-off mm test in this process.
private func outcome(_ body: @escaping CheckTest.Body) -> Outcome {
    CheckTest("mm-seam", suite: .mm, anchor: "new", "a scenario run through the test seam", body: body).run(in: CheckEnvironment())
}

/// The failure message of `o`, or a note that it did not fail.
private func failure(_ o: Outcome) -> String {
    if case .fail(let m) = o { return m }
    return "not a failure: \(o)"
}

// Serialized: the tests bind terabyte devices and measure resident memory;
// side by side they would disturb each other.
@Suite("daxmm test: the mm suite", .serialized)
struct MMSuiteTests {
    @Test("every mm test passes in process", arguments: MMSuite.tests)
    func passes(_ test: CheckTest) {
        #expect(test.suite == .mm && test.name.hasPrefix("mm-"))
        let o = test.run(in: CheckEnvironment())
        #expect(o == .ok, "\(test.name): \(o)")
    }

    @Test("the mm suite has the scenarios it promises, each naming a kernel function or rule")
    func coverage() {
        let names = Set(MMSuite.tests.map(\.name))
        for n in ["mm-devdax-fault-pte", "mm-devdax-fault-pmd", "mm-devdax-fault-pud", "mm-devdax-check-vma",
                  "mm-devdax-mremap-split", "mm-gup-devdax-pin", "mm-gup-fsdax-longterm", "mm-folio-get-refcount-zero",
                  "mm-fsdax-break-layout-truncate", "mm-fsdax-zero-page-hole", "mm-memremap-pages-lifecycle",
                  "mm-memremap-deferred-1tib", "mm-devdax-kill-dax", "mm-mprotect-levels", "mm-zap-levels",
                  "mm-munmap-partial", "mm-property"] {
            #expect(names.contains(n), "\(n) missing")
        }
        for t in MMSuite.tests {
            #expect(t.summary.contains("_") || t.summary.contains("VM_FAULT") || t.summary.contains("(seed"),
                    "\(t.name): the summary names no kernel function")
            #expect(t.gates.isEmpty, "\(t.name): the port alone needs no gate")
        }
    }

    // MARK: the checks can fail

    /// invariant 1: one reference per entry. Claiming two makes the PMD
    /// fault scenario fail on the folio's refcount.
    @Test("mm-devdax-fault-pmd fails when it expects two references per PMD")
    func wrongRefsPerEntry() {
        let wrong = KernelRules.kernel.with { $0.refsPerEntry = 2 }
        let m = failure(outcome { try devdaxFaultScenario($0, align: UInt64(pmdSize), rules: wrong) })
        #expect(m.contains("after the read fault (vmf_insert_folio_pmd/folio_add_file_rmap_pmd): refcount 2 (expected 3)"), "\(m)")
    }

    /// try_grab_folio: GUP_PIN_COUNTING_BIAS is 1024.
    @Test("mm-gup-devdax-pin fails when it expects a pin bias of 512")
    func wrongPinBias() {
        let wrong = KernelRules.kernel.with { $0.pinCountingBias = 512 }
        let m = failure(outcome { try gupDevdaxPinScenario($0, rules: wrong) })
        #expect(m.contains("4K: after pin_user_pages (try_grab_folio FOLL_PIN: +GUP_PIN_COUNTING_BIAS): refcount 1026 (expected 514)"), "\(m)")
    }

    /// check_vma_flags: FOLL_LONGTERM on fs-dax is -EOPNOTSUPP, not -EFAULT.
    @Test("mm-gup-fsdax-longterm fails when it expects -EFAULT")
    func wrongLongtermErrno() {
        let wrong = KernelRules.kernel.with { $0.longtermFsdaxErrno = EFAULT }
        let m = failure(outcome { try gupFsdaxLongtermScenario($0, rules: wrong) })
        #expect(m.contains("check_vma_flags(FOLL_PIN|FOLL_LONGTERM) on fs-dax: got EOPNOTSUPP, expected EFAULT"), "\(m)")
    }

    /// An fs-dax folio idles at 0 after the series, not at 1.
    @Test("mm-folio-get-refcount-zero fails when it expects fs-dax folios to idle at 1")
    func wrongFsdaxIdle() {
        let wrong = KernelRules.kernel.with { $0.fsdaxIdleRefcount = 1 }
        let m = failure(outcome { try folioGetRefcountZeroScenario($0, rules: wrong) })
        #expect(m.contains("an idle fs-dax page's refcount (__init_zone_device_page, MEMORY_DEVICE_FS_DAX): got 0, expected 1"), "\(m)")
    }

    /// dev_dax_may_split refuses with -EINVAL.
    @Test("mm-devdax-mremap-split fails when it expects may_split to say -ENOMEM")
    func wrongMaySplitErrno() {
        let wrong = KernelRules.kernel.with { $0.maySplitErrno = ENOMEM }
        let m = failure(outcome { try devdaxMremapScenario($0, rules: wrong) })
        #expect(m.contains("(dev_dax_may_split): EINVAL:") && m.contains("expected ENOMEM"), "\(m)")
    }

    /// The invariant checker: a folio with one more reference than its
    /// mapping and the ledger explain is reported under rule 1 with its
    /// dump_page text; a wrong mapcount under rule 9.
    @Test("a broken refcount or mapcount is reported by the invariant checker, dump_page-style")
    func brokenCountersAreReported() {
        let m = failure(outcome { t in
            let m = try DevDaxMachine(align: UInt64(pmdSize), size: 2 << 20)
            let a = try m.map(2 << 20)
            t.expectFault(m.mm.handleFault(a, write: true), DAX_VM_FAULT_NOPAGE, "fault")
            let folio = m.folio(0)
            folio.refInc()   // a reference nobody accounts for
            defer { folio.setCount(2) }
            t.expectPortConsistent(m.kernel, mms: [m.mm], pgmaps: m.pgmaps, after: "a stray reference")
        })
        #expect(m.hasPrefix("port after a stray reference: invariant 1 violated: pgmap"), "\(m)")
        #expect(m.contains("page: refcount:3 mapcount:1 mapping:"), "\(m)")
        #expect(m.contains("head: pfn:0x4000000 order:9 entire_mapcount:1 pincount:0"), "\(m)")
        #expect(m.contains("pgmap:MEMORY_DEVICE_GENERIC"), "\(m)")
        #expect(m.contains("page dumped because: refcount 3 != base 1 + entries 1 + held refs 0 in invariants"), "\(m)")

        let m2 = failure(outcome { t in
            let m = try DevDaxMachine(align: 4096, size: 2 << 20)
            let a = try m.map(64 << 10)
            t.expectFault(m.mm.handleFault(a, write: true), DAX_VM_FAULT_NOPAGE, "fault")
            let page = m.folio(0).head
            dax_atomic_add(dax_page_mapcount(page.raw), 1)   // a mapcount no entry explains
            defer { dax_atomic_add(dax_page_mapcount(page.raw), -1) }
            t.expectPortConsistent(m.kernel, mms: [m.mm], pgmaps: m.pgmaps, after: "a stray mapcount")
        })
        #expect(m2.contains("invariant 9 violated") && m2.contains("page dumped because: folio_mapcount 2 != present entries 1 in invariants"), "\(m2)")
    }

    /// The property run stops at the first step whose invariants fail and
    /// names the seed and the step.
    @Test("mm-property fails at the step that takes a reference nobody accounts for, naming seed and step")
    func propertyNamesSeedAndStep() {
        let m = failure(outcome { try mmPropertyScenario($0, run: PropertyRun(seed: 7, steps: 200, leakAtStep: 40)) })
        #expect(m.hasPrefix("seed 7 step 40 after "), "\(m)")
        #expect(m.contains("(and a reference nobody accounts for)") && m.contains("invariant 1 violated"), "\(m)")
        #expect(outcome { try mmPropertyScenario($0, run: PropertyRun(seed: 7, steps: 200)) } == .ok)
    }

    @Test("mm-property takes its length and seed from DAXMM_PROPERTY_STEPS and DAXMM_PROPERTY_SEED")
    func propertyEnvironment() {
        let r = PropertyRun(variables: ["DAXMM_PROPERTY_STEPS": "1000000", "DAXMM_PROPERTY_SEED": "42"])
        #expect(r.steps == 1_000_000 && r.seed == 42)
        let d = PropertyRun(variables: [:])
        #expect(d.steps == PropertyRun.defaultSteps && d.seed == PropertyRun.defaultSeed)
        #expect(PropertyRun(variables: ["DAXMM_IN_VM": "1"]).steps == PropertyRun.defaultGuestSteps)
    }
}
