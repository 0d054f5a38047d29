// How much memory is resident: the process's (/proc/self/statm), and the
// pages of one kernel's vmemmap that hold struct pages (mincore), for the
// tests and benchmarks of deferred struct-page initialisation.

import CDaxMM
import MMCore

#if canImport(Glibc)
import Glibc
#endif

/// Resident set size of this process in bytes (/proc/self/statm, second
/// field), or nil if it cannot be read.
public func residentBytes() -> Int? {
    let fd = open("/proc/self/statm", O_RDONLY)
    guard fd >= 0 else { return nil }
    defer { close(fd) }
    var buf = [UInt8](repeating: 0, count: 128)
    let n = buf.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count - 1) }
    guard n > 0 else { return nil }
    let fields = String(decoding: buf[0..<n], as: UTF8.self).split(separator: " ")
    guard fields.count > 1, let pages = Int(fields[1]) else { return nil }
    return pages * Int(sysconf(Int32(_SC_PAGESIZE)))
}

extension Kernel {
    /// Pages of the vmemmap backing the struct pages of [startPfn, endPfn)
    /// that are resident (mincore; a section never written has none).
    public func residentVmemmapPages(startPfn: UInt64, endPfn: UInt64) -> Int {
        let stride = MemoryLayout<dax_page>.stride
        let page = Int(sysconf(Int32(_SC_PAGESIZE)))
        let first = (Int(startPfn) * stride) / page * page
        let end = (Int(endPfn) * stride + page - 1) / page * page
        let base = UnsafeMutableRawPointer(ref.pointee.vmemmap)! + first
        let nr = (end - first) / page
        var vec = [UInt8](repeating: 0, count: nr)
        // Absent sections are PROT_NONE but still mapped: mincore reports
        // them not resident.
        let rc = vec.withUnsafeMutableBufferPointer { mincore(base, end - first, $0.baseAddress) }
        precondition(rc == 0, "mincore failed: \(errno)")
        return vec.reduce(0) { $0 + Int($1 & 1) }
    }
}
