// mm/madvise.c (the advice the port models) and the transparent hugepage
// switches of /sys/kernel/mm/transparent_hugepage.

import CDaxMM
import DAXBase

/// /sys/kernel/mm/transparent_hugepage/enabled
public enum THPMode: Sendable, Equatable {
    case always, madvise, never
}

extension Kernel {
    /// transparent_hugepage/enabled: which anonymous VMAs may fault a PMD
    /// THP. `.always` by default, as CONFIG_TRANSPARENT_HUGEPAGE_ALWAYS
    /// (Kconfig's default, and Debian's kernels') sets it: every anon VMA
    /// without MADV_NOHUGEPAGE, where a whole aligned PMD fits.
    public var transparentHugepage: THPMode {
        get {
            switch ref.pointee.thp_enabled {
            case DAX_THP_ALWAYS.rawValue: return .always
            case DAX_THP_NEVER.rawValue: return .never
            default: return .madvise
            }
        }
        set {
            switch newValue {
            case .always: ref.pointee.thp_enabled = DAX_THP_ALWAYS.rawValue
            case .madvise: ref.pointee.thp_enabled = DAX_THP_MADVISE.rawValue
            case .never: ref.pointee.thp_enabled = DAX_THP_NEVER.rawValue
            }
        }
    }

    /// transparent_hugepage/use_zero_page: a read fault of a THP-eligible
    /// range maps the huge zero folio (on by default).
    public var thpUseZeroPage: Bool {
        get { ref.pointee.thp_use_zero_page != 0 }
        set { ref.pointee.thp_use_zero_page = newValue ? 1 : 0 }
    }
}

/// MADV_* advice.
public enum MadviseAdvice: Sendable, Equatable {
    /// MADV_DONTNEED: zap the range (zap_page_range_single: MMU_NOTIFY_CLEAR).
    case dontNeed
    /// MADV_HUGEPAGE / MADV_NOHUGEPAGE: VM_HUGEPAGE / VM_NOHUGEPAGE on the
    /// VMAs of the range (split at its edges).
    case hugepage, noHugepage
}

extension MM {
    /// madvise(2) for the advice the port models. The range must be page
    /// aligned and mapped (-EINVAL, -ENOMEM as the kernel returns).
    public func madvise(_ start: UInt64, _ length: UInt64, _ advice: MadviseAdvice) throws(MMError) {
        guard start % UInt64(pageSize) == 0 else { throw .errno(EINVAL, "madvise: \(hex(start)) not page aligned") }
        let end = start + roundUp(length, UInt64(pageSize))
        guard end > start else { return }
        switch advice {
        case .dontNeed:
            // madvise_dontneed_free: mmap_lock for read.
            lockRead()
            defer { unlockRead() }
            try requireMapped(start, end, "madvise")
            if vmaList().contains(where: { $0.pointee.vm_end > start && $0.pointee.vm_start < end
                                           && $0.pointee.vm_flags & (DAX_VM_LOCKED | DAX_VM_PFNMAP) != 0 }) {
                throw .errno(EINVAL, "madvise(MADV_DONTNEED) on a VM_LOCKED or VM_PFNMAP mapping")
            }
            zapPageRange(ref, start, end)
        case .hugepage, .noHugepage:
            lockWrite()
            defer { unlockWrite() }
            try requireMapped(start, end, "madvise")
            try splitEdges(start, end)
            for v in vmaList() where v.pointee.vm_start >= start && v.pointee.vm_end <= end {
                if advice == .hugepage {
                    v.pointee.vm_flags = (v.pointee.vm_flags & ~DAX_VM_NOHUGEPAGE) | DAX_VM_HUGEPAGE
                } else {
                    v.pointee.vm_flags = (v.pointee.vm_flags & ~DAX_VM_HUGEPAGE) | DAX_VM_NOHUGEPAGE
                }
            }
        }
    }

    /// -ENOMEM unless every page of [start, end) is inside a VMA.
    func requireMapped(_ start: UInt64, _ end: UInt64, _ what: String) throws(MMError) {
        var cursor = start
        for v in vmaList() where v.pointee.vm_end > start && v.pointee.vm_start < end {
            if v.pointee.vm_start > cursor { break }
            cursor = v.pointee.vm_end
        }
        guard cursor >= end else { throw .errno(ENOMEM, "\(what): [\(hex(start)), \(hex(end))) is not fully mapped") }
    }
}
