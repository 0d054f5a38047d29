// The checks every test rig runs after a step: the global invariants of the
// mm (MMCore's `invariants`) and no debug report (VM_BUG_ON/VM_WARN_ON) from
// the kernel. Shared by the MMCore and DAXCore suites.

import MMCore
import MMTestSupport
import Testing

/// A test's machine: the kernel, the MM and the pgmaps `check()` looks at.
public protocol InvariantRig {
    var kernel: Kernel { get }
    var mm: MM { get }
    var pgmaps: [DevPagemap] { get }
}

extension InvariantRig {
    /// Expects the invariants to hold over the rig's MM and pgmaps (rule 1 as
    /// an equality against `ledger` when given) and the kernel to have made
    /// no debug report since the last check.
    public func check(_ ledger: RefLedger? = nil, sourceLocation: SourceLocation = #_sourceLocation) {
        expectInvariants(kernel, mms: [mm], pgmaps: pgmaps, ledger: ledger, sourceLocation: sourceLocation)
    }
}

/// Expects no invariant violation over `mms` and `pgmaps` and no debug report
/// drained from `kernel`; each failure lists every violation or report.
public func expectInvariants(_ kernel: Kernel, mms: [MM], pgmaps: [DevPagemap], ledger: RefLedger? = nil,
                             sourceLocation: SourceLocation = #_sourceLocation) {
    let v = invariants(mms: mms, pgmaps: pgmaps, ledger: ledger)
    #expect(v.isEmpty, "\(v.map(\.description).joined(separator: "\n"))", sourceLocation: sourceLocation)
    let reports = kernel.drainReports()
    #expect(reports.isEmpty, "\(reports.map(\.description).joined(separator: "\n"))", sourceLocation: sourceLocation)
}

/// The check after each step of a random sequence: the invariants against
/// the ledger of references the sequence holds, then no debug report. On the
/// first failure it records one failure naming the seed (to replay), the step
/// and the operation, and returns false: the caller stops the sequence.
public func propertyStepHolds(_ kernel: Kernel, mms: [MM], pgmaps: [DevPagemap], ledger: RefLedger,
                              seed: UInt64, step: Int, after what: String,
                              sourceLocation: SourceLocation = #_sourceLocation) -> Bool {
    let v = invariants(mms: mms, pgmaps: pgmaps, ledger: ledger)
    if !v.isEmpty {
        Issue.record("seed \(seed) step \(step) after \(what):\n\(v.prefix(3).map(\.description).joined(separator: "\n"))",
                     sourceLocation: sourceLocation)
        return false
    }
    let reports = kernel.drainReports()
    if !reports.isEmpty {
        Issue.record("seed \(seed) step \(step) after \(what): unexpected report\n\(reports[0])",
                     sourceLocation: sourceLocation)
        return false
    }
    return true
}

extension FaultRig: InvariantRig {}
