import CDaxMM
import Testing

/// struct dax_page is shared between C and Swift: both must see one layout.
@Suite("struct dax_page layout")
struct DevicePageLayoutTests {
    @Test func swiftSeesTheCLayout() {
        #expect(MemoryLayout<dax_page>.size == 64)
        #expect(MemoryLayout<dax_page>.stride == 64)
        #expect(dax_page_sizeof() == 64)
        #expect(MemoryLayout<dax_page>.offset(of: \.refcount) == dax_page_offsetof_refcount())
        #expect(MemoryLayout<dax_page>.offset(of: \.pincount) == dax_page_offsetof_pincount())
        #expect(MemoryLayout<dax_page>.offset(of: \.mapcount) == 20)
        #expect(MemoryLayout<dax_page>.offset(of: \.large_mapcount) == 48)
    }

    @Test func atomicsDoWhatTheKernelNamesSay() {
        var p = dax_page()
        withUnsafeMutablePointer(to: &p) { pp in
            dax_atomic_set(&pp.pointee.mapcount, -1)
            #expect(dax_atomic_add_return(&pp.pointee.mapcount, 1) == 0)
            // atomic_add_unless(v, 1, 0): refuses at 0 (folio_try_get on a free folio).
            #expect(!dax_atomic_add_unless(&pp.pointee.refcount, 1, 0))
            #expect(dax_atomic_read(&pp.pointee.refcount) == 0)
            dax_atomic_set(&pp.pointee.refcount, 1)
            #expect(dax_atomic_add_unless(&pp.pointee.refcount, 1, 0))
            #expect(dax_atomic_sub_return(&pp.pointee.refcount, 2) == 0)
            var expected: Int32 = 0
            #expect(dax_atomic_cmpxchg(&pp.pointee.pincount, &expected, 5))
            expected = 0
            #expect(!dax_atomic_cmpxchg(&pp.pointee.pincount, &expected, 7))
            #expect(expected == 5)
            dax_set_bit(Int32(DAX_PG_head.rawValue), &pp.pointee.flags)
            #expect(dax_test_bit(Int32(DAX_PG_head.rawValue), &pp.pointee.flags))
            #expect(!dax_test_and_set_bit_lock(Int32(DAX_PG_locked.rawValue), &pp.pointee.flags))
            #expect(dax_test_and_set_bit_lock(Int32(DAX_PG_locked.rawValue), &pp.pointee.flags))
            dax_clear_bit_unlock(Int32(DAX_PG_locked.rawValue), &pp.pointee.flags)
            #expect(pp.pointee.flags == 1 << 6)
        }
    }
}
