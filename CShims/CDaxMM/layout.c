/* Layout guards for struct dax_page, and the accessors a Swift test compares
 * against MemoryLayout. */
#include "CDaxMM.h"

/* struct dax_page is shared between C and Swift and stands for struct page:
 * keep its layout fixed. */
_Static_assert(sizeof(struct dax_page) == DAX_PAGE_SIZE_BYTES, "struct dax_page must be 64 bytes");
_Static_assert(offsetof(struct dax_page, flags) == 0, "flags at 0");
_Static_assert(offsetof(struct dax_page, compound_head) == 8, "compound_head at 8");
_Static_assert(offsetof(struct dax_page, refcount) == 16, "refcount at 16");
_Static_assert(offsetof(struct dax_page, mapcount) == 20, "mapcount at 20");
_Static_assert(offsetof(struct dax_page, pgmap) == 24, "pgmap at 24");
_Static_assert(offsetof(struct dax_page, mapping) == 32, "mapping at 32");
_Static_assert(offsetof(struct dax_page, index) == 40, "index at 40");
_Static_assert(offsetof(struct dax_page, large_mapcount) == 48, "large_mapcount at 48");
_Static_assert(offsetof(struct dax_page, entire_mapcount) == 52, "entire_mapcount at 52");
_Static_assert(offsetof(struct dax_page, pincount) == 56, "pincount at 56");
_Static_assert(offsetof(struct dax_page, nr_pages_mapped) == 60, "nr_pages_mapped at 60");
_Static_assert(DAX_PG_head < 64 && DAX_PG_reserved < 64 && DAX_PG_zone_device < 64, "flag bits fit");
/* Flags a tail page carries (PG_anon_exclusive) or page[1] keeps
 * (PG_partially_mapped) sit above the order byte. */
_Static_assert(DAX_PG_anon_exclusive >= 8 && DAX_PG_partially_mapped >= 8 && DAX_PG_swapbacked < 64, "tail flags above the order byte");
/* The order lives in the low byte of page[1].flags: no flag bit may sit there
 * that page[1] needs. Only DAX_PG_* bits below 8 would collide, and page[1]
 * (a tail) never carries them. */

size_t dax_page_sizeof(void) { return sizeof(struct dax_page); }
size_t dax_page_offsetof_refcount(void) { return offsetof(struct dax_page, refcount); }
size_t dax_page_offsetof_pincount(void) { return offsetof(struct dax_page, pincount); }

/* The per-slot counter blocks hold every item of their enums. */
_Static_assert(DAX_NR_MM_COUNTERS <= DAX_SLOT_COUNTERS, "rss items fit a counter slot");
_Static_assert(DAX_NR_STATS <= DAX_SLOT_COUNTERS, "node stat items fit a counter slot");
_Static_assert(sizeof(struct dax_counter_slot) == DAX_SLOT_BYTES && sizeof(struct dax_srcu_slot) == DAX_SLOT_BYTES
	       && sizeof(struct dax_rwsem_slot) == DAX_SLOT_BYTES && DAX_SLOT_COUNTERS * 8 <= 64,
	       "a slot's data in its first 64 bytes, two cache lines per slot");
