// ndctl's dax.sh + dax-pmd.c on a real -o dax mount: a fallocated file, an
// extent FS_IOC_FIEMAP shows 2 MiB aligned on the device, mapped at a 2 MiB
// aligned address and file offset, so that dax_iomap_pmd_fault installs PMDs.
// The fault size is read two ways, which must agree: the
// fs_dax:dax_pmd_fault_done tracepoint (NOPAGE: a PMD was installed), and
// /proc/self/pagemap (512 present pages with consecutive pfns from a
// 512-aligned pfn). Then, on the same file and offset, test_dax_remap,
// the five test_dax_directio cases and MAP_SYNC.

import CDaxSys
import DAXBase
import DAXDevice
import DAXRuntime
import Foundation

#if canImport(Glibc)
import Glibc
#endif

/// A file on a -o dax mount with a PMD-mappable range found by FIEMAP.
final class PmdFile {
    let mount: DaxMount
    let path: String
    private(set) var fd: Int32
    let inode: UInt64
    /// A file offset that is 2 MiB aligned, whose block is 2 MiB aligned on
    /// the device, with at least 4 MiB of the same extent after it.
    let offset: UInt64
    let extent: FileExtent

    private init(mount: DaxMount, path: String, fd: Int32, inode: UInt64, offset: UInt64, extent: FileExtent) {
        self.mount = mount
        self.path = path
        self.fd = fd
        self.inode = inode
        self.offset = offset
        self.extent = extent
    }

    /// Closes the file (idempotent); the mount can then be unmounted.
    func close() {
        if fd >= 0 { Glibc.close(fd) }
        fd = -1
    }

    /// dax-pmd's 2 * HPAGE_SIZE: every mapping of the checks is this long.
    static let span = 2 * FSDaxConst.pmdSize
    /// The file: ndctl fallocates 1 GiB; 64 MiB leaves room for an aligned
    /// extent on both file systems and costs nothing more (fallocate only
    /// writes metadata: the extents are unwritten).
    static let fileBytes: UInt64 = 64 << 20

    /// mkfs + mount -o dax + fallocate + FIEMAP: the first extent with a
    /// PMD-aligned 4 MiB range (dax-pmd's test_pmd wants an extent longer
    /// than 2 * HPAGE_SIZE starting 2 MiB aligned on the device).
    static func prepare(_ t: TestContext, fs: DaxFilesystem, tag: String? = nil) throws -> PmdFile {
        let m = try DaxMount.make(t, fs: fs, mkfs: fs.mkfsDaxSh, tag: tag)
        let path = try m.fallocate("image", bytes: fileBytes)
        let fd = open(path, O_RDWR)
        try t.require(fd >= 0, "open \(path): \(lastErrno())")
        var closeEarly: Int32? = fd
        defer { if let fd = closeEarly { Glibc.close(fd) } }
        if let dax = LibC.isDax(path) {
            try t.require(dax, "statx says \(path) is not a DAX file (STATX_ATTR_DAX clear) on a -o dax mount")
        } else {
            t.log("statx cannot tell whether \(path) is DAX (no STATX_ATTR_DAX)")
        }
        var st = stat()
        try t.require(fstat(fd, &st) == 0, "fstat \(path): \(lastErrno())")
        func fiemap() throws -> [FileExtent] {
            switch Fiemap.extents(fd: fd) {
            case .success(let e):
                for (i, x) in e.enumerated() { t.log("fiemap [\(i)]: \(x)") }
                return e
            case .failure(let e): throw CheckAbort(message: e.description)
            }
        }
        var extents = try fiemap()
        func search() -> (UInt64, FileExtent)? {
            extents.lazy.compactMap { e in e.pmdAlignedOffset(bytes: UInt64(span)).map { ($0, e) } }.first
        }
        var found = search()
        let pmd = UInt64(FSDaxConst.pmdSize)
        if found == nil, let e = extents.first(where: { $0.length >= UInt64(span) + pmd }) {
            // The blocks are not 2 MiB aligned with their file offsets (ext4
            // puts a small file system's first data after its metadata, at
            // no particular alignment; ndctl's 1 GiB file on a larger device
            // gets extents in later block groups). FALLOC_FL_INSERT_RANGE
            // shifts every file offset by the misalignment, leaving the
            // blocks where they are, so a 2 MiB file offset meets a 2 MiB
            // aligned block.
            let shift = (e.physical % pmd + pmd - e.logical % pmd) % pmd
            let rc = LibC.fallocate(fd, mode: FSDaxConst.fallocInsertRange, offset: 0, length: Int(shift))
            t.log("\(fs.rawValue) placed the extent at device offset \(hex(e.physical)) for file offset \(hex(e.logical)): FALLOC_FL_INSERT_RANGE of \(hex(shift)) bytes at 0: \(rc == 0 ? "done" : errnoName(rc))")
            if rc == 0 {
                extents = try fiemap()
                found = search()
            }
        }
        let (off, ext) = try t.require(found, "FIEMAP of \(path) shows no extent with a 2 MiB-aligned block and \(span >> 20) MiB after it (\(extents.count) extents)")
        t.log("PMD range: file offset \(hex(off)), device offset \(hex(ext.physical + off - ext.logical)) (extent \(ext))")
        let f = PmdFile(mount: m, path: path, fd: fd, inode: UInt64(st.st_ino), offset: off, extent: ext)
        closeEarly = nil
        t.atCleanup("close \(path)") { [f] in f.close() }
        return f
    }

    /// The device byte offset of file byte `offset + delta`.
    func deviceOffset(_ delta: UInt64 = 0) -> UInt64 { extent.physical + offset + delta - extent.logical }

    /// mmap of `span` bytes at file offset `offset`, at a 2 MiB-aligned address.
    func map(flags: Int32 = MAP_SHARED, prot: Int32 = PROT_READ | PROT_WRITE) -> Result<AlignedMapping, Errnum> {
        AlignedMapping.map(fd: fd, length: Self.span, prot: prot, flags: flags, offset: offset)
    }
}

enum FSDaxPmd {
    static let wordI: UInt64 = 0x6969_6969_6969_6969   // memset(addr, 'i', ...)
    static let wordA: UInt64 = 0x6161_6161_6161_6161   // memset(anon, 'a', ...)

    static func run(_ t: TestContext, fs: DaxFilesystem) throws {
        try DAXRuntime.installFaultGuards()
        let f = try PmdFile.prepare(t, fs: fs)
        let trace = try DaxPmdTrace.start(t, inode: f.inode)
        try pmdFaults(t, f, trace)
        try remap(t, f)
        try directIO(t, f)
        // ndctl's criterion, over every fault so far (mapping, remap, the
        // five O_DIRECT cases): at least 10 dax_pmd_fault_done, and NOPAGE.
        let events = trace.events()
        for e in events { t.log("trace: \(e)") }
        t.expect(events.count >= 10, "dax_pmd_fault_done fired \(events.count) times, dax.sh wants at least 10")
        let notPmd = events.filter { $0.result != "NOPAGE" }
        t.expect(notPmd.isEmpty, "\(notPmd.count) of \(events.count) dax_pmd_fault_done events are not NOPAGE, the first: \(notPmd.first.map(\.description) ?? "")")
        try trace.remove()
        try mapSync(t, f)
    }

    // MARK: PMD faults, two ways

    /// Touches one word in each 2 MiB of a fresh mapping (a write, as
    /// dax-pmd's memset) and reads the fault size from the tracepoint and
    /// from pagemap; each 2 MiB must be a PMD both ways.
    static func pmdFaults(_ t: TestContext, _ f: PmdFile, _ trace: DaxPmdTrace) throws {
        let m: AlignedMapping
        switch f.map() {
        case .success(let x): m = x
        case .failure(let e): throw CheckAbort(message: "mmap \(f.path) at \(hex(f.offset)): \(e)")
        }
        defer { m.unmap() }
        let before = trace.events().count
        for i in 0..<2 {
            let r = guardedAccess(m.addr(i * FSDaxConst.pmdSize), write: true, value: 0xd0d0_0000 + UInt64(i))
            try t.require(r.ok, "write to \(hex(m.addr(i * FSDaxConst.pmdSize))) of the dax mapping: \(r)")
        }
        let events = Array(trace.events().dropFirst(before))
        for e in events { t.log("trace: \(e)") }
        let resource = pmemDataStart(f.mount.device)
        if resource == nil { t.log("no /sys/block/\(f.mount.device.dropFirst(5))/device/resource: the pfns are not matched to FIEMAP's block") }
        for i in 0..<2 {
            let chunk = m.addr(i * FSDaxConst.pmdSize)
            let range = chunk..<(chunk + UInt64(FSDaxConst.pmdSize))
            let mine = events.filter { range.contains($0.address) }
            let byTrace = mine.contains { $0.result == "NOPAGE" }
            let entries = try t.must("pagemap of \(hex(chunk))") {
                try Pagemap.entries(at: UInt(chunk), count: FSDaxConst.pmdSize / FSDaxConst.pageSize)
            }
            let present = entries.filter(\.present).count
            let first = entries[0].pfn
            var consecutive = present == entries.count
            if let p0 = first {
                consecutive = consecutive && entries.indices.allSatisfy { entries[$0].pfn == p0 + UInt64($0) }
            }
            let byPagemap = consecutive && (first.map { $0 % 512 == 0 } ?? true)
            t.log("2 MiB at \(hex(chunk)): trace \(mine.map(\.result)), pagemap \(present) present, first pfn \(first.map(hex) ?? "hidden")")
            t.expect(byTrace, "no NOPAGE dax_pmd_fault_done for the 2 MiB at \(hex(chunk)): \(mine.map(\.description))")
            t.expect(byPagemap, "pagemap does not show a PMD at \(hex(chunk)): \(present) of 512 pages present, first pfn \(first.map(hex) ?? "hidden")\(consecutive ? "" : ", pfns not consecutive")")
            t.expectEqual(byTrace, byPagemap, "the tracepoint and pagemap on the fault size at \(hex(chunk))")
            if let base = resource, let p0 = first {
                let want = (base + f.deviceOffset(UInt64(i * FSDaxConst.pmdSize))) >> 12
                t.expectEqual(hex(p0), hex(want), "pfn of the PMD at \(hex(chunk)) (pmem data start + FIEMAP's device offset)")
            }
        }
        let s = try t.must("smaps of \(hex(m.base))") { try SmapsEntry.containing(address: UInt(m.base)) }
        if let s {
            // smaps_pmd_entry counts no ZONE_DEVICE folio in FilePmdMapped,
            // so that reads 0 for fs-dax on every kernel (logged). Rss is
            // where the kernels differ: from the ZONE_DEVICE refcount series
            // (6.15) the PMD maps a folio (vmf_insert_folio_pmd) that
            // vm_normal_page_pmd returns and smaps counts; before it the PMD
            // is pmd_devmap, for which vm_normal_page_pmd returns NULL, so
            // the two PMDs add nothing to Rss.
            t.log("smaps: Rss \(s.rss >> 10) kB, FilePmdMapped \(s.filePmdMapped.map { "\($0 >> 10) kB" } ?? "absent"), KernelPageSize \(s.kernelPageSize >> 10) kB, VmFlags \(s.vmFlags.joined(separator: " "))")
            let series = t.environment.kernel.hasZoneDeviceRefcountSeries
            t.expectEqual(s.rss, series ? PmdFile.span : 0,
                          "smaps Rss of the two PMDs (\(series ? "counted from 6.15: normal folio PMDs" : "not counted before 6.15: devmap PMDs"))")
        } else {
            t.expect(false, "no smaps record for the mapping at \(hex(m.base))")
        }
    }

    /// The physical address of the first byte of the pmem block device: the
    /// pfn device's `resource` (drivers/nvdimm/pfn_devs.c resource_show: the
    /// namespace start + start_pad + dataoff).
    static func pmemDataStart(_ device: String) -> UInt64? {
        let path = "/sys/block/\(device.dropFirst(5))/device/resource"
        guard let s = try? String(contentsOfFile: path, encoding: .utf8) else { return nil }
        let v = s.trimmingCharacters(in: .whitespacesAndNewlines)
        return v.hasPrefix("0x") ? UInt64(v.dropFirst(2), radix: 16) : UInt64(v)
    }

    // MARK: test_dax_remap (fsdax = true)

    /// mremap of 4 KiB out of a PMD-mapped range to an anonymous page's
    /// address: a refusal is accepted (as dax-pmd), a move must not SIGBUS on
    /// fs-dax, the page keeps the file's data, and a write through the moved
    /// page reaches the file.
    static func remap(_ t: TestContext, _ f: PmdFile) throws {
        let anonLen = 4 * FSDaxConst.pageSize
        guard let anon = mmap(nil, anonLen, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0),
              anon != MAP_FAILED else { throw CheckAbort(message: "mmap anonymous: \(lastErrno())") }
        defer { munmap(anon, anonLen) }
        let m: AlignedMapping
        switch f.map() {
        case .success(let x): m = x
        case .failure(let e): throw CheckAbort(message: "mmap \(f.path) at \(hex(f.offset)): \(e)")
        }
        defer { m.unmap() }
        memset(anon, 0x61, anonLen)
        let fill = guardedFill(m.base, bytes: UInt64(PmdFile.span), write: true, value: wordI)
        try t.require(fill.ok, "memset of the dax mapping: \(fill)")
        let (moved, err) = LibC.mremapFixed(m.address, FSDaxConst.pageSize, FSDaxConst.pageSize, to: anon)
        guard let moved else {
            t.log("mremap of 4 KiB of the PMD mapping failed with \(errnoName(err)): dax-pmd accepts that")
            t.expect(err != 0, "mremap failed without an errno")
            return
        }
        t.expectEqual(UInt(bitPattern: moved), UInt(bitPattern: anon), "address mremap(MREMAP_FIXED) returned")
        t.log("mremap moved 4 KiB of the PMD mapping at \(hex(m.base)) to \(hex(UInt64(UInt(bitPattern: anon))))")
        let addr = UInt64(UInt(bitPattern: anon))
        let old = guardedAccess(addr, write: false)
        t.expect(old.ok, "read of the moved fs-dax page: \(old) (dax-pmd: no SIGBUS allowed for fs-dax)")
        t.expectEqual(hex(old.value), hex(wordI), "the moved page's first word (the file's data)")
        let w = guardedAccess(addr, write: true, value: 0xAA)
        let r = guardedAccess(addr, write: false)
        t.expect(w.ok && r.ok, "write/read 0xAA at the moved page: \(w), \(r)")
        t.expectEqual(r.value, 0xAA, "value read back at the moved page")
        // The file through read(2): 0xAA in its first word, 'i' in the rest
        // of the range (no fault through the split mapping is needed).
        let buf = UnsafeMutableRawPointer.allocate(byteCount: PmdFile.span, alignment: 4096)
        defer { buf.deallocate() }
        let n = preadAll(f.fd, buf, PmdFile.span, f.offset)
        try t.require(n == PmdFile.span, "pread of \(PmdFile.span) bytes at \(hex(f.offset)): \(n < 0 ? errnoName(Int32(-n)) : "\(n) bytes")")
        let words = buf.bindMemory(to: UInt64.self, capacity: PmdFile.span / 8)
        t.expectEqual(hex(words[0]), hex(0xAA), "the file's word at \(hex(f.offset)) after the write through the moved page")
        let bad = (1..<(PmdFile.span / 8)).first { words[$0] != wordI }
        t.expect(bad == nil, "the file's data around the moved page changed: word \(bad ?? 0) is \(hex(bad.map { words[$0] } ?? 0))")
    }

    // MARK: test_dax_directio

    /// dax-pmd's five O_DIRECT cases with the file test_dax_mnt/test_dax_data
    /// on the same dax mount; each maps the PMD range afresh.
    static func directIO(_ t: TestContext, _ f: PmdFile) throws {
        let dir = f.mount.file("test_dax_mnt")
        if mkdir(dir, 0o700) != 0 && errno != EEXIST { throw CheckAbort(message: "mkdir \(dir): \(lastErrno())") }
        let path = "\(dir)/test_dax_data"
        let buf = UnsafeMutableRawPointer.allocate(byteCount: 4096, alignment: 4096)
        defer { buf.deallocate() }
        let names = ["O_DIRECT read of an unfaulted address, then O_DIRECT write of the pre-faulted read-only address",
                     "O_DIRECT of a pre-faulted address", "fork with a pre-faulted pmd",
                     "convert a read-only mapping to read-write", "O_DIRECT write of an unfaulted address"]
        for i in 0..<5 {
            let m: AlignedMapping
            switch f.map() {
            case .success(let x): m = x
            case .failure(let e): throw CheckAbort(message: "mmap \(f.path) at \(hex(f.offset)): \(e)")
            }
            defer { m.unmap() }
            let fd2 = open(path, O_CREAT | O_TRUNC | FSDaxConst.oDirect | O_RDWR, 0o600)
            try t.require(fd2 >= 0, "open \(path) O_DIRECT: \(lastErrno())")
            defer { close(fd2); unlink(path) }
            t.log("directio \(i): \(names[i])")
            var problems: [String] = []
            switch i {
            case 0:
                let w = write(fd2, m.address, 4096)
                if w != 4096 { problems.append("write from the mapping: \(w < 0 ? lastErrno() : "\(w) bytes")") }
                let r = pread(fd2, m.address, 4096, 0)
                if r != 4096 { problems.append("pread into the mapping: \(r < 0 ? lastErrno() : "\(r) bytes")") }
            case 1:
                try writeString(t, m.base, "odirect data")
                let w = pwrite(fd2, m.address, 4096, 0)
                if w != 4096 { problems.append("pwrite from the mapping: \(w < 0 ? lastErrno() : "\(w) bytes")") }
                memset(buf, 0, 4096)
                let r = pread(fd2, buf, 4096, 0)
                if r != 4096 { problems.append("pread: \(r < 0 ? lastErrno() : "\(r) bytes")") }
                let got = String(cString: buf.assumingMemoryBound(to: CChar.self))
                if got != "odirect data" { problems.append("read back '\(got.prefix(32))', wrote 'odirect data'") }
            case 2:
                try writeString(t, m.base, "fork data")
                let want = Array("fork data\0".utf8)
                let pid = fork()
                if pid == 0 {
                    // The child reads the shared mapping (a PMD fault of its own).
                    let same = want.withUnsafeBytes { memcmp(m.address, $0.baseAddress!, $0.count) == 0 }
                    _exit(same ? 0 : 1)
                }
                if pid < 0 {
                    problems.append("fork: \(lastErrno())")
                } else {
                    var status: Int32 = 0
                    while waitpid(pid, &status, 0) < 0 && errno == EINTR {}
                    let exited = status & 0x7f == 0
                    let code = (status >> 8) & 0xff
                    if !exited || code != 0 {
                        problems.append(exited ? "the child read other data than 'fork data'" : "the child died of signal \(status & 0x7f)")
                    }
                }
            case 3:
                let r = guardedAccess(m.base, write: false)
                let w = r.ok ? guardedAccess(m.base, write: true, value: r.value) : r
                if !r.ok || !w.ok { problems.append("read then write of the same word: \(r), \(w)") }
            default:
                memset(buf, 0, 4096)
                let msg = "O_DIRECT write of unfaulted address\n"
                _ = msg.withCString { strcpy(buf.assumingMemoryBound(to: CChar.self), $0) }
                let w = pwrite(fd2, buf, 4096, 0)
                if w != 4096 { problems.append("pwrite: \(w < 0 ? lastErrno() : "\(w) bytes")") }
                let r = pread(fd2, m.address, 4096, 0)
                if r != 4096 { problems.append("pread into the mapping: \(r < 0 ? lastErrno() : "\(r) bytes")") }
                // What landed in the mapping is the image file's data.
                let back = UnsafeMutableRawPointer.allocate(byteCount: 4096, alignment: 4096)
                defer { back.deallocate() }
                if preadAll(f.fd, back, 4096, f.offset) != 4096 || memcmp(back, buf, 4096) != 0 {
                    problems.append("the image file at \(hex(f.offset)) does not hold what O_DIRECT read into its mapping")
                }
            }
            t.expect(problems.isEmpty, "directio case \(i) (\(names[i])): \(problems.joined(separator: "; "))")
        }
    }

    /// Writes a NUL-terminated string at `address` through guarded word stores.
    static func writeString(_ t: TestContext, _ address: UInt64, _ s: String) throws {
        var bytes = Array(s.utf8) + [0]
        while bytes.count % 8 != 0 { bytes.append(0) }
        for i in stride(from: 0, to: bytes.count, by: 8) {
            let word = bytes[i..<(i + 8)].enumerated().reduce(UInt64(0)) { $0 | UInt64($1.element) << (8 * UInt64($1.offset)) }
            let r = guardedAccess(address + UInt64(i), write: true, value: word)
            try t.require(r.ok, "writing '\(s)' into the dax mapping: \(r)")
        }
    }

    // MARK: MAP_SYNC

    /// MAP_SHARED_VALIDATE|MAP_SYNC: accepted on the dax file (VM_SYNC,
    /// "sf" in smaps); refused with EOPNOTSUPP on a tmpfs file (do_mmap:
    /// the file's f_op has no FOP_MMAP_SYNC) and on the same file after the
    /// file system is mounted again with dax=never (the file system's
    /// ->mmap: daxdev_mapping_supported is false for a VM_SYNC VMA of a
    /// non-DAX inode).
    static func mapSync(_ t: TestContext, _ f: PmdFile) throws {
        let syncFlags = FSDaxConst.mapSharedValidate | FSDaxConst.mapSync
        switch AlignedMapping.map(fd: f.fd, length: FSDaxConst.pmdSize, prot: PROT_READ | PROT_WRITE, flags: syncFlags, offset: f.offset) {
        case .failure(let e):
            t.expect(false, "mmap MAP_SHARED_VALIDATE|MAP_SYNC of the dax file: \(e)")
        case .success(let m):
            let flags = (try? SmapsEntry.containing(address: UInt(m.base)))?.vmFlags ?? []
            t.expect(flags.contains("sf"), "the MAP_SYNC mapping has no VM_SYNC ('sf') in smaps VmFlags: \(flags.joined(separator: " "))")
            let w = guardedAccess(m.base + 64, write: true, value: 0x5359_4e43)
            let r = guardedAccess(m.base + 64, write: false)
            t.expect(w.ok && r.ok && r.value == 0x5359_4e43, "write/read through the MAP_SYNC mapping: \(w), \(r) value \(hex(r.value))")
            m.unmap()
        }
        // tmpfs: /dev/shm.
        let shm = "/dev/shm/daxmm-\(t.name)-\(getpid())"
        let sfd = open(shm, O_RDWR | O_CREAT | O_TRUNC, 0o600)
        try t.require(sfd >= 0, "open \(shm): \(lastErrno())")
        defer { close(sfd); unlink(shm) }
        try t.require(ftruncate(sfd, off_t(FSDaxConst.pmdSize)) == 0, "ftruncate \(shm): \(lastErrno())")
        let tmpfsErr = mapErrno(sfd, syncFlags)
        t.log("MAP_SHARED_VALIDATE|MAP_SYNC on tmpfs (\(shm)): \(tmpfsErr.map(errnoName) ?? "accepted") on \(t.environment.runningRelease)")
        t.expectEqual(tmpfsErr.map(errnoName), errnoName(EOPNOTSUPP), "MAP_SYNC of a tmpfs file")
        // The same file system without DAX.
        f.close()
        try f.mount.remount(options: "dax=never")
        let path = f.path
        if let dax = LibC.isDax(path) { t.expect(!dax, "statx still says \(path) is DAX after mount -o dax=never") }
        let fd = open(path, O_RDWR)
        try t.require(fd >= 0, "open \(path): \(lastErrno())")
        defer { close(fd) }
        let fsErr = mapErrno(fd, syncFlags)
        t.log("MAP_SHARED_VALIDATE|MAP_SYNC on \(f.mount.fs.rawValue) -o dax=never: \(fsErr.map(errnoName) ?? "accepted") on \(t.environment.runningRelease)")
        t.expectEqual(fsErr.map(errnoName), errnoName(EOPNOTSUPP), "MAP_SYNC of a \(f.mount.fs.rawValue) file mounted without dax")
        t.expect(mapErrno(fd, MAP_SHARED) == nil, "plain MAP_SHARED of the same file without dax: \(mapErrno(fd, MAP_SHARED).map(errnoName) ?? "")")
    }

    /// mmap(2 MiB, RW, flags) of `fd` at 0: nil when accepted (then unmapped), else the errno.
    static func mapErrno(_ fd: Int32, _ flags: Int32) -> Int32? {
        guard let p = mmap(nil, FSDaxConst.pmdSize, PROT_READ | PROT_WRITE, flags, fd, 0), p != MAP_FAILED else { return errno }
        munmap(p, FSDaxConst.pmdSize)
        return nil
    }
}
