// include/linux/swapops.h, include/linux/swap.h and the x86-64 swap PTE
// format (arch/x86/include/asm/pgtable_64.h, pgtable_types.h): the
// non-present entries that name a page without mapping it. The port has no
// swap device; what it keeps are the swap-entry-shaped special types the mm
// core uses for pages it tracks elsewhere: device-exclusive entries
// (make_device_exclusive), device-private entries (memory a device owns,
// migrated back on a CPU fault), migration entries (a folio being moved)
// and hwpoison entries. Each carries a pfn in its offset.
//
// PTE layout (x86-64): present clear; the type in bits 59-63; the offset
// inverted in bits 9-58 (so a non-present entry never names valid memory to
// a speculating CPU, the L1TF mitigation); soft-dirty in bit 1
// (_PAGE_SWP_SOFT_DIRTY), uffd-wp in bit 2 (_PAGE_SWP_UFFD_WP) and
// exclusive in bit 3 (_PAGE_SWP_EXCLUSIVE). A zero entry is pte_none; any
// other entry without _PAGE_PRESENT is a swap PTE (the port has no
// PROT_NONE-as-non-present entries: its PROT_NONE keeps _PAGE_PRESENT and
// clears _PAGE_USER).

import CDaxMM

/// Software PTE bits of present entries (x86-64 _PAGE_SOFTW2/3).
extension PT {
    /// _PAGE_UFFD_WP (_PAGE_SOFTW2)
    public static let uffdWp: UInt64 = 1 << 10
    /// _PAGE_SOFT_DIRTY (_PAGE_SOFTW3)
    public static let softDirty: UInt64 = 1 << 11
    /// _PAGE_SWP_SOFT_DIRTY (_PAGE_RW's position in a swap PTE)
    public static let swpSoftDirty: UInt64 = 1 << 1
    /// _PAGE_SWP_UFFD_WP (_PAGE_USER's position)
    public static let swpUffdWp: UInt64 = 1 << 2
    /// _PAGE_SWP_EXCLUSIVE (_PAGE_PWT's position)
    public static let swpExclusive: UInt64 = 1 << 3
}

/// The swap types (include/linux/swap.h): the special ones sit above the
/// MAX_SWAPFILES real swap devices in the 5-bit type field.
public enum SwapType {
    public static let maxSwapfilesShift = 5
    public static let deviceNum = 3        // SWP_DEVICE_NUM
    public static let migrationNum = 3     // SWP_MIGRATION_NUM
    public static let hwpoisonNum = 1      // SWP_HWPOISON_NUM
    public static let pteMarkerNum = 1     // SWP_PTE_MARKER_NUM
    /// MAX_SWAPFILES
    public static let maxSwapfiles = UInt32((1 << maxSwapfilesShift) - deviceNum - migrationNum - hwpoisonNum - pteMarkerNum)
    public static let hwpoison = maxSwapfiles                                  // SWP_HWPOISON
    public static let migrationRead = maxSwapfiles + UInt32(hwpoisonNum)       // SWP_MIGRATION_READ
    public static let migrationReadExclusive = migrationRead + 1               // SWP_MIGRATION_READ_EXCLUSIVE
    public static let migrationWrite = migrationRead + 2                       // SWP_MIGRATION_WRITE
    public static let deviceWrite = migrationRead + UInt32(migrationNum)       // SWP_DEVICE_WRITE
    public static let deviceRead = deviceWrite + 1                             // SWP_DEVICE_READ
    public static let deviceExclusive = deviceWrite + 2                        // SWP_DEVICE_EXCLUSIVE
    public static let pteMarker = deviceWrite + UInt32(deviceNum)              // SWP_PTE_MARKER
}

/// swp_entry_t in its arch-independent form: a type and an offset.
public struct SwapEntry: Equatable, Hashable, Sendable, CustomStringConvertible {
    public var type: UInt32
    public var offset: UInt64
    @inline(__always) public init(type: UInt32, offset: UInt64) {
        self.type = type
        self.offset = offset & SwapEntry.offsetMask
    }

    /// The offset bits a PTE can carry (64 - 5 type bits - 9 flag bits).
    public static let offsetBits = 64 - SwapType.maxSwapfilesShift - 9
    public static let offsetMask: UInt64 = (1 << UInt64(offsetBits)) - 1
    /// SWP_PFN_BITS: a pfn's bits (MAX_PHYSMEM_BITS - PAGE_SHIFT); the
    /// migration entries keep young and dirty just above.
    public static let pfnBits = maxPhysBits - pageShift
    public static let pfnMask: UInt64 = (1 << UInt64(pfnBits)) - 1
    static let migYoungBit = UInt64(1) << UInt64(pfnBits)       // SWP_MIG_YOUNG
    static let migDirtyBit = UInt64(1) << UInt64(pfnBits + 1)   // SWP_MIG_DIRTY

    public var description: String {
        let name: String
        switch type {
        case SwapType.deviceExclusive: name = "device-exclusive"
        case SwapType.deviceWrite: name = "device-private-write"
        case SwapType.deviceRead: name = "device-private-read"
        case SwapType.migrationRead: name = "migration-read"
        case SwapType.migrationReadExclusive: name = "migration-read-exclusive"
        case SwapType.migrationWrite: name = "migration-write"
        case SwapType.hwpoison: name = "hwpoison"
        case SwapType.pteMarker: name = "pte-marker"
        default: name = "swap\(type)"
        }
        return "\(name):\(String(offset, radix: 16))"
    }
}

// MARK: PTE <-> entry (swp_entry_to_pte, pte_to_swp_entry)

/// is_swap_pte: not none and not present.
@inline(__always) public func isSwapPte(_ e: PTEntry) -> Bool { e != 0 && e & PT.present == 0 }

/// swp_entry_to_pte: the x86-64 encoding (__swp_entry), no flag bits.
@inline(__always)
public func swpEntryToPte(_ entry: SwapEntry) -> PTEntry {
    let typeShift = UInt64(64 - SwapType.maxSwapfilesShift)
    let offsetShift = UInt64(9 + SwapType.maxSwapfilesShift)   // SWP_OFFSET_SHIFT
    let inverted = (~entry.offset << offsetShift) >> UInt64(SwapType.maxSwapfilesShift)
    return inverted | (UInt64(entry.type) << typeShift)
}

/// pte_to_swp_entry: the flag bits dropped (pte_swp_clear_flags), then the
/// type and the inverted offset read back.
@inline(__always)
public func pteToSwpEntry(_ e: PTEntry) -> SwapEntry {
    let v = e & ~(PT.swpSoftDirty | PT.swpUffdWp | PT.swpExclusive)
    let type = UInt32(v >> UInt64(64 - SwapType.maxSwapfilesShift))
    let offset = (~v << UInt64(SwapType.maxSwapfilesShift)) >> UInt64(9 + SwapType.maxSwapfilesShift)
    return SwapEntry(type: type, offset: offset)
}

@inline(__always) public func pteSwpSoftDirty(_ e: PTEntry) -> Bool { e & PT.swpSoftDirty != 0 }
@inline(__always) public func pteSwpMksoftDirty(_ e: PTEntry) -> PTEntry { e | PT.swpSoftDirty }
@inline(__always) public func pteSwpUffdWp(_ e: PTEntry) -> Bool { e & PT.swpUffdWp != 0 }
@inline(__always) public func pteSwpMkuffdWp(_ e: PTEntry) -> PTEntry { e | PT.swpUffdWp }
@inline(__always) public func pteSwpExclusive(_ e: PTEntry) -> Bool { e & PT.swpExclusive != 0 }
@inline(__always) public func pteSwpMkexclusive(_ e: PTEntry) -> PTEntry { e | PT.swpExclusive }
@inline(__always) public func pteSoftDirty(_ e: PTEntry) -> Bool { e & PT.softDirty != 0 }
@inline(__always) public func pteMksoftDirty(_ e: PTEntry) -> PTEntry { e | PT.softDirty }
@inline(__always) public func pteUffdWp(_ e: PTEntry) -> Bool { e & PT.uffdWp != 0 }
@inline(__always) public func pteMkuffdWp(_ e: PTEntry) -> PTEntry { e | PT.uffdWp }

// MARK: constructors and predicates (swapops.h)

/// make_device_exclusive_entry (since 6.15 one type: the entry is always
/// writable; the readable variant was removed with "mm: use single
/// SWP_DEVICE_EXCLUSIVE entry type").
@inline(__always) public func makeDeviceExclusiveEntry(_ pfn: UInt64) -> SwapEntry {
    SwapEntry(type: SwapType.deviceExclusive, offset: pfn)
}
/// make_readable_device_private_entry / make_writable_device_private_entry
@inline(__always) public func makeReadableDevicePrivateEntry(_ pfn: UInt64) -> SwapEntry {
    SwapEntry(type: SwapType.deviceRead, offset: pfn)
}
@inline(__always) public func makeWritableDevicePrivateEntry(_ pfn: UInt64) -> SwapEntry {
    SwapEntry(type: SwapType.deviceWrite, offset: pfn)
}
/// make_readable_migration_entry / _readable_exclusive_ / _writable_
@inline(__always) public func makeReadableMigrationEntry(_ pfn: UInt64) -> SwapEntry {
    SwapEntry(type: SwapType.migrationRead, offset: pfn)
}
@inline(__always) public func makeReadableExclusiveMigrationEntry(_ pfn: UInt64) -> SwapEntry {
    SwapEntry(type: SwapType.migrationReadExclusive, offset: pfn)
}
@inline(__always) public func makeWritableMigrationEntry(_ pfn: UInt64) -> SwapEntry {
    SwapEntry(type: SwapType.migrationWrite, offset: pfn)
}
/// make_migration_entry_young / _dirty (migration_entry_supports_ad)
@inline(__always) public func makeMigrationEntryYoung(_ e: SwapEntry) -> SwapEntry {
    SwapEntry(type: e.type, offset: e.offset | SwapEntry.migYoungBit)
}
@inline(__always) public func makeMigrationEntryDirty(_ e: SwapEntry) -> SwapEntry {
    SwapEntry(type: e.type, offset: e.offset | SwapEntry.migDirtyBit)
}
@inline(__always) public func isMigrationEntryYoung(_ e: SwapEntry) -> Bool { e.offset & SwapEntry.migYoungBit != 0 }
@inline(__always) public func isMigrationEntryDirty(_ e: SwapEntry) -> Bool { e.offset & SwapEntry.migDirtyBit != 0 }
/// make_hwpoison_entry
@inline(__always) public func makeHwpoisonEntry(_ pfn: UInt64) -> SwapEntry {
    SwapEntry(type: SwapType.hwpoison, offset: pfn)
}

@inline(__always) public func isDeviceExclusiveEntry(_ e: SwapEntry) -> Bool { e.type == SwapType.deviceExclusive }
@inline(__always) public func isDevicePrivateEntry(_ e: SwapEntry) -> Bool {
    e.type == SwapType.deviceWrite || e.type == SwapType.deviceRead
}
@inline(__always) public func isWritableDevicePrivateEntry(_ e: SwapEntry) -> Bool { e.type == SwapType.deviceWrite }
@inline(__always) public func isMigrationEntry(_ e: SwapEntry) -> Bool {
    e.type >= SwapType.migrationRead && e.type <= SwapType.migrationWrite
}
@inline(__always) public func isWritableMigrationEntry(_ e: SwapEntry) -> Bool { e.type == SwapType.migrationWrite }
@inline(__always) public func isReadableExclusiveMigrationEntry(_ e: SwapEntry) -> Bool {
    e.type == SwapType.migrationReadExclusive
}
@inline(__always) public func isHwpoisonEntry(_ e: SwapEntry) -> Bool { e.type == SwapType.hwpoison }
@inline(__always) public func isPteMarkerEntry(_ e: SwapEntry) -> Bool { e.type == SwapType.pteMarker }
/// non_swap_entry: a special type, not a swap device's slot.
@inline(__always) public func nonSwapEntry(_ e: SwapEntry) -> Bool { e.type >= SwapType.maxSwapfiles }
/// is_pfn_swap_entry: the offset is a pfn (migration, device, hwpoison).
@inline(__always) public func isPfnSwapEntry(_ e: SwapEntry) -> Bool {
    isMigrationEntry(e) || isDevicePrivateEntry(e) || isDeviceExclusiveEntry(e) || isHwpoisonEntry(e)
}
/// swp_offset_pfn
@inline(__always) public func swpOffsetPfn(_ e: SwapEntry) -> UInt64 { e.offset & SwapEntry.pfnMask }

/// pfn_swap_entry_to_page: the page a pfn swap entry names, nil when the
/// pfn has no struct page (never for an entry the port made).
@inline(__always)
public func pfnSwapEntryToPage(_ k: KernelRef, _ e: SwapEntry) -> Page? {
    let pfn = swpOffsetPfn(e)
    guard isPfnSwapEntry(e), pfnValid(k, pfn) else { return nil }
    return pfnToPage(k, pfn)
}

/// pfn_swap_entry_folio
@inline(__always)
public func pfnSwapEntryFolio(_ k: KernelRef, _ e: SwapEntry) -> Folio? { pfnSwapEntryToPage(k, e)?.folio }

/// Whether a non-present entry holds a reference and a mapcount on its
/// folio the way a present PTE does: device-private and (since 6.15,
/// "mm/rmap: keep mapcount untouched for device-exclusive entries")
/// device-exclusive entries do; migration and hwpoison entries do not.
@inline(__always)
public func swapEntryHoldsMapping(_ e: SwapEntry) -> Bool { isDevicePrivateEntry(e) || isDeviceExclusiveEntry(e) }
