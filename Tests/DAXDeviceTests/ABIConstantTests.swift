import CDaxSys
import Testing

/// Constants CDaxSys spells out because the importer cannot see them.
@Suite("CDaxSys ABI constants")
struct ABIConstantTests {
    @Test func mapSyncConstantsMatchTheKernelABI() {
        #expect(dax_map_sync() == 0x80000)
        #expect(dax_map_shared_validate() == 3)
    }
}
