import CDaxMM
import DAXBase
import Testing
@testable import DAXCore
@testable import MMCore

/// The extent store's iomap_begin (ext4_iomap_begin / xfs_bmapi_read: one
/// extent per call) against a per-block reference model: the run records
/// (`DaxFileCore.runs`) and the per-chunk share counts must give, after any
/// sequence of allocate / punch / truncate / reflink / CoW, the answers a
/// block-by-block scan of the map gives.
@Suite("extent store: iomap_begin from extent runs")
struct ExtentRunTests {
    /// What a block-by-block scan answers for a read request over the
    /// aligned PMD window at `index` (the rule the iomap callback had before
    /// the run records): all holes -> hole; one contiguous, 2 MiB-aligned
    /// extent -> mapped 512 (shared if any block has a share count > 1);
    /// anything else -> mapped, 1 page (the PMD fault falls back).
    static func modelPmd(_ f: DaxFile, _ index: UInt64, write: Bool) -> (DaxIomap.Kind, UInt64, UInt64, Bool) {
        let n = UInt64(hpagePmdNr)
        let refs = f.fs.core.pointee.refs
        var holes: UInt64 = 0, shared = false, contiguous = true
        let first = f.block(at: index)
        for i in 0..<n {
            guard let b = f.block(at: index + i) else { holes += 1; continue }
            if refs[Int(b)] > 1 { shared = true }
            if first == nil || b != first! + i { contiguous = false }
        }
        if holes == n { return (.hole, 0, n, false) }
        if holes == 0 && contiguous && first! % n == 0 && !(shared && write) { return (.mapped, first!, n, shared) }
        return (.mapped, 0, 1, false)
    }

    /// The run starting at each page, recomputed from the block map.
    static func modelRuns(_ f: DaxFile) -> [UInt64] {
        var runs = [UInt64](repeating: 0, count: Int(f.maxPages))
        var i = Int(f.maxPages)
        while i > 0 {
            i -= 1
            let next = UInt64(i + 1)
            if next % UInt64(hpagePmdNr) == 0 || next >= f.maxPages { runs[i] = 1; continue }
            let a = f.block(at: UInt64(i)), b = f.block(at: next)
            let cont = a == nil ? b == nil : b == a! + 1
            runs[i] = cont ? runs[i + 1] + 1 : 1
        }
        return runs
    }

    static func iomap(_ f: DaxFile, _ index: UInt64, _ pages: UInt64, write: Bool) -> DaxIomap {
        var map = DaxIomap(kind: .hole, block: 0, pages: 0, new: false, shared: false, dirty: false, error: 0)
        withUnsafeMutablePointer(to: &map) {
            extentIomapBegin(UnsafeMutableRawPointer(f.fileCore), index, pages, write, UnsafeMutableRawPointer($0))
        }
        return map
    }

    /// Every run record, every window's PMD read answer (and its write answer
    /// where that does not allocate) and every chunk's share count agree with
    /// the per-block model. Returns the first disagreement.
    static func disagreement(_ fs: DaxFS, _ files: [DaxFile]) -> String? {
        for f in files {
            let runs = modelRuns(f)
            for i in 0..<f.maxPages where f.run(at: i) != runs[Int(i)] {
                return "\(f.name): run at \(i) is \(f.run(at: i)), per-block \(runs[Int(i)])"
            }
            var w: UInt64 = 0
            while w + UInt64(hpagePmdNr) <= f.maxPages {
                for write in [false, true] {
                    let want = modelPmd(f, w, write: write)
                    if write && want.0 == .hole { continue }   // would allocate
                    let got = iomap(f, w, UInt64(hpagePmdNr), write: write)
                    let g = (got.kind, got.kind == .mapped && got.pages > 1 ? got.block : 0, got.pages, got.shared)
                    if g != want || got.error != 0 || got.new {
                        return "\(f.name): PMD window \(w) write \(write): \(g), per-block \(want)"
                    }
                }
                w += UInt64(hpagePmdNr)
            }
        }
        let core = fs.core.pointee
        let chunks = Int((core.nblocks + UInt64(hpagePmdNr) - 1) / UInt64(hpagePmdNr))
        for c in 0..<chunks {
            var n: UInt32 = 0
            for b in (c * hpagePmdNr)..<min((c + 1) * hpagePmdNr, Int(core.nblocks)) where core.refs[b] > 1 { n += 1 }
            if core.sharedInChunk[c] != n { return "chunk \(c): \(core.sharedInChunk[c]) shared blocks recorded, \(n) counted" }
        }
        return nil
    }

    @Test("iomap_begin: punching one page of a PMD extent makes the window fall back; re-allocating the freed block re-forms the extent")
    func punchAndRefill() throws {
        let kernel = try Kernel(physBits: 40)
        let fs = try DaxFS(kernel: kernel, start: 0x8000_0000, size: 4 << 20)
        let f = try fs.create(name: "a", maxSize: 4 << 20)
        try f.allocate(pgoff: 0, pages: 1024)
        #expect(f.run(at: 0) == 512 && f.run(at: 512) == 512)
        #expect(Self.iomap(f, 0, 512, write: false).pages == 512)
        let free0 = fs.freeBlocks
        try f.punchHole(pgoff: 300, pages: 1)
        #expect(fs.freeBlocks == free0 + 1)
        #expect(f.run(at: 0) == 300 && f.run(at: 300) == 1 && f.run(at: 301) == 211)
        let m = Self.iomap(f, 0, 512, write: false)
        #expect(m.kind == .mapped && m.pages == 1, "a hole inside the extent: shorter than a PMD")
        // A PTE write on the hole: first fit hands back block 300.
        let p = Self.iomap(f, 300, 1, write: true)
        #expect(p.kind == .mapped && p.new && p.block == 300)
        #expect(f.run(at: 0) == 512)
        let again = Self.iomap(f, 0, 512, write: false)
        #expect(again.kind == .mapped && again.pages == 512 && again.block == 0)
        #expect(Self.disagreement(fs, [f]) == nil)
    }

    @Test("iomap_begin: a reflinked PMD extent is IOMAP_F_SHARED for reads and falls back for writes; the shared count drops with the copy")
    func sharedChunk() throws {
        let kernel = try Kernel(physBits: 40)
        let fs = try DaxFS(kernel: kernel, start: 0x8000_0000, size: 4 << 20)
        let a = try fs.create(name: "a", maxSize: 2 << 20)
        let b = try fs.create(name: "b", maxSize: 2 << 20)
        try a.allocate(pgoff: 0, pages: 512)
        #expect(fs.core.pointee.sharedInChunk[0] == 0)
        try b.reflink(from: a, srcPgoff: 0, dstPgoff: 0, pages: 512)
        #expect(fs.core.pointee.sharedInChunk[0] == 512)
        let r = Self.iomap(a, 0, 512, write: false)
        #expect(r.kind == .mapped && r.pages == 512 && r.shared)
        let w = Self.iomap(b, 0, 512, write: true)
        #expect(w.kind == .mapped && w.pages == 1, "a write to a shared PMD extent falls back to PTE CoW")
        // One PTE CoW in b: that block is private again in a.
        let c = Self.iomap(b, 7, 1, write: true)
        #expect(c.new && c.shared && c.block >= 512)
        #expect(fs.core.pointee.sharedInChunk[0] == 511)
        #expect(b.run(at: 0) == 7 && b.run(at: 7) == 1 && b.run(at: 8) == 504)
        try b.truncate(to: 0)
        #expect(fs.core.pointee.sharedInChunk[0] == 0)
        #expect(Self.iomap(a, 0, 512, write: true).pages == 512, "private again: writable as a PMD")
        #expect(Self.disagreement(fs, [a, b]) == nil)
    }

    @Test("iomap_begin over extent runs equals the per-block scan across seeded allocate/punch/truncate/reflink/CoW sequences",
          arguments: [1, 2, 3] as [UInt64])
    func matchesPerBlockModel(seed: UInt64) throws {
        var rng = SplitMix64(seed: seed &* 0x9E37_79B9)
        let kernel = try Kernel(physBits: 40)
        let fs = try DaxFS(kernel: kernel, start: 0x8000_0000, size: 24 << 20)
        // Not a multiple of 512 pages: the last window is partial.
        let f = try fs.create(name: "f", maxSize: (4 * 512 + 100) << 12)
        let g = try fs.create(name: "g", maxSize: 4 * 512 << 12)
        let files = [f, g]
        func pick(_ n: UInt64) -> UInt64 { rng.next() % n }
        for step in 0..<250 {
            let x = files[Int(pick(2))]
            let y = x === f ? g : f
            let what: String
            switch pick(9) {
            case 0, 1:
                let win = pick(x.maxPages / 512) * 512
                what = "allocate window \(win)"
                try? x.allocate(pgoff: win, pages: 512)
            case 2:
                let off = pick(x.maxPages), n = 1 + pick(min(600, x.maxPages - off))
                what = "allocate \(off)+\(n)"
                try? x.allocate(pgoff: off, pages: n)
            case 3:
                let off = pick(x.maxPages), n = 1 + pick(min(40, x.maxPages - off))
                what = "punch \(off)+\(n)"
                try x.punchHole(pgoff: off, pages: n)
            case 4:
                let to = pick(x.maxPages + 1) << 12
                what = "truncate \(to >> 12)"
                try x.truncate(to: to)
            case 5:
                let aligned = pick(2) == 0
                let n = aligned ? UInt64(512) : 1 + pick(300)
                let src = aligned ? pick(y.maxPages / 512) * 512 : pick(y.maxPages - n + 1)
                let dst = aligned ? pick(x.maxPages / 512) * 512 : pick(x.maxPages - n + 1)
                what = "reflink \(y.name)[\(src)+\(n)] -> \(x.name)[\(dst)]"
                try x.reflink(from: y, srcPgoff: src, dstPgoff: dst, pages: n)
            case 6:
                let i = pick(x.maxPages)
                what = "PTE write iomap \(i)"
                let before = x.block(at: i)
                let wasShared = before.map { fs.core.pointee.refs[Int($0)] > 1 } ?? false
                let m = Self.iomap(x, i, 1, write: true)
                if m.error == 0 {
                    #expect(m.kind == .mapped && x.block(at: i) == m.block, "step \(step): \(what)")
                    #expect(m.new == (before == nil || wasShared), "step \(step): \(what)")
                }
            case 7:
                let win = pick(x.maxPages / 512) * 512
                what = "PMD write iomap \(win)"
                let want = Self.modelPmd(x, win, write: true)
                let m = Self.iomap(x, win, 512, write: true)
                if want.0 == .hole {
                    if m.error == 0 {
                        #expect(m.kind == .mapped && m.new && m.pages == 512 && m.block % 512 == 0, "step \(step): \(what)")
                        #expect(x.run(at: win) == 512 && x.block(at: win) == m.block, "step \(step): \(what)")
                    } else {
                        #expect(m.error == -ENOSPC && x.run(at: win) == 512 && x.block(at: win) == nil, "step \(step): \(what)")
                    }
                } else {
                    #expect((m.kind, m.pages > 1 ? m.block : 0, m.pages, m.shared) == want, "step \(step): \(what)")
                }
            default:
                let i = pick(x.maxPages)
                what = "read \(i)"
                let m = Self.iomap(x, i, 1, write: false)
                #expect(m.kind == (x.block(at: i) == nil ? .hole : .mapped), "step \(step): \(what)")
            }
            if let d = Self.disagreement(fs, files) {
                Issue.record("seed \(seed) step \(step) after \(what): \(d)")
                return
            }
        }
        // Everything freed: every block back, no shared chunk left.
        try f.truncate(to: 0)
        try g.truncate(to: 0)
        #expect(fs.freeBlocks == Int64(fs.core.pointee.nblocks))
        #expect(Self.disagreement(fs, files) == nil)
    }
}
