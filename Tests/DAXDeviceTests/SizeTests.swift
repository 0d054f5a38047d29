import Testing
@testable import DAXDevice

@Suite("Sizes and alignments")
struct SizeTests {
    @Test(arguments: [
        ("4096", UInt64(4096)), ("0x1000", 4096), ("4K", 4096), ("4k", 4096), ("2M", 2 << 20),
        ("1G", 1 << 30), ("512MiB", 512 << 20), ("1T", 1 << 40), ("0", 0), (" 2M\n", 2 << 20),
    ])
    func parsesSizes(text: String, bytes: UInt64) throws {
        #expect(try parseSize(text) == bytes)
    }

    @Test(arguments: ["", "abc", "2X", "0xZZ", "M", "99999999999999999999", "16777216T"])
    func refusesBadSizes(text: String) {
        #expect(throws: SizeParseError.self) { try parseSize(text) }
    }

    @Test func formatsSizes() {
        #expect(formatSize(4096) == "4K")
        #expect(formatSize(2 << 20) == "2M")
        #expect(formatSize(3 << 30) == "3G")
        #expect(formatSize(526_385_152) == "502M")
        #expect(formatSize(1_500_000_000) == "1.4G")
        #expect(formatSize(100) == "100")
    }

    @Test func alignOrders() {
        #expect(DaxAlign.pte.order == 0)
        #expect(DaxAlign.pmd.order == 9)
        #expect(DaxAlign.pud.order == 18)
        #expect(DaxAlign(bytes: 8192) == nil)
        #expect(DaxAlign.allCases.map(\.description) == ["4K", "2M", "1G"])
    }
}
