/* The floors of CDaxBench.h. The target is built at -O2 in every
 * configuration (Package.swift) and no floor is inlined into its caller: a
 * floor costs the same from a debug and a release build. */
#include "CDaxBench.h"
#include <time.h>

#define FLOOR __attribute__((noinline))

/* Slot i of a cycle of n, without a division in the loop (a div costs as
 * much as an atomic): callers keep the index and wrap it. */
static inline uint64_t wrap(uint64_t i, uint64_t n)
{
	return i + 1 == n ? 0 : i + 1;
}

static inline struct dax_page *folio_of(const struct dax_floor *f, uint64_t j)
{
	return f->pages + j * f->stride;
}

static inline uint64_t entry_of(const struct dax_floor *f, uint64_t j)
{
	return f->entry_bits | ((f->first_pfn + j * f->stride) << DAX_PAGE_SHIFT);
}

FLOOR void dax_floor_fault(const struct dax_floor *f, uint64_t n)
{
	for (uint64_t i = 0, j = 0, e = 0; i < n; i++, j = wrap(j, f->nr_folios), e = wrap(e, f->nr_entries)) {
		struct dax_page *p = folio_of(f, j);
		if (f->mmap_lock)
			dax_down_read(f->mmap_lock);
		dax_spin_lock(f->ptl);
		dax_atomic_add(&p->refcount, 1);
		if (f->large) {
			/* folio_add_file_rmap_pmd/pud: _entire_mapcount, _large_mapcount */
			(void)dax_atomic_add_return(&p[1].entire_mapcount, 1);
			dax_atomic_add(&p[1].large_mapcount, 1);
		} else {
			(void)dax_atomic_add_return(&p->mapcount, 1);
		}
		__atomic_store_n(&f->entries[e], entry_of(f, j), __ATOMIC_RELAXED);
		dax_spin_unlock(f->ptl);
		if (f->mmap_lock)
			dax_up_read(f->mmap_lock);
	}
}

FLOOR void dax_floor_unfault(const struct dax_floor *f, uint64_t n)
{
	for (uint64_t i = 0, j = 0, e = 0; i < n; i++, j = wrap(j, f->nr_folios), e = wrap(e, f->nr_entries)) {
		struct dax_page *p = folio_of(f, j);
		dax_atomic_add(&p->refcount, -1);
		if (f->large) {
			dax_atomic_add(&p[1].entire_mapcount, -1);
			dax_atomic_add(&p[1].large_mapcount, -1);
		} else {
			dax_atomic_add(&p->mapcount, -1);
		}
		f->entries[e] = 0;
	}
}

FLOOR void dax_floor_mkwrite(const struct dax_floor *f, uint64_t n)
{
	for (uint64_t i = 0, k = 0; i < n; i++, k = wrap(k, f->nr_entries)) {
		uint64_t *e = &f->entries[k];
		if (f->mmap_lock)
			dax_down_read(f->mmap_lock);
		dax_spin_lock(f->ptl);
		uint64_t v = __atomic_load_n(e, __ATOMIC_RELAXED);
		__atomic_store_n(e, v | 0x42 /* _PAGE_RW | _PAGE_DIRTY */, __ATOMIC_RELAXED);
		dax_spin_unlock(f->ptl);
		if (f->mmap_lock)
			dax_up_read(f->mmap_lock);
	}
}

FLOOR void dax_floor_zap(const struct dax_floor *f, uint64_t n)
{
	for (uint64_t i = 0, j = 0, e = 0; i < n; i++, j = wrap(j, f->nr_folios), e = wrap(e, f->nr_entries)) {
		struct dax_page *p = folio_of(f, j);
		dax_spin_lock(f->ptl);
		uint64_t old = dax_xchg_u64(&f->entries[e], 0);
		if (f->large) {
			(void)dax_atomic_add_return(&p[1].entire_mapcount, -1);
			dax_atomic_add(&p[1].large_mapcount, -1);
		} else {
			(void)dax_atomic_add_return(&p->mapcount, -1);
		}
		dax_spin_unlock(f->ptl);
		/* folio_put after the flush */
		(void)dax_atomic_sub_return(&p->refcount, 1);
		dax_bench_sink(old);
	}
}

/* The folios [0, npages) of pages[0] covers, and how many pages of each. */
static inline uint64_t folios_covering(const struct dax_floor *f, uint64_t npages)
{
	uint64_t per = (uint64_t)f->pages_per_folio;
	return (npages + per - 1) / per;
}

FLOOR void dax_floor_pin(const struct dax_floor *f, uint64_t npages, bool get)
{
	uint64_t per = (uint64_t)f->pages_per_folio;
	uint64_t nf = folios_covering(f, npages);
	struct dax_page **out = npages <= f->out_capacity ? f->out : NULL;
	for (uint64_t i = 0, j = 0; i < nf; i++, j = wrap(j, f->nr_folios)) {
		struct dax_page *p = folio_of(f, j);
		int32_t refs = (int32_t)(npages - i * per < per ? npages - i * per : per);
		if (out)
			for (int32_t k = 0; k < refs; k++)
				*out++ = p + k;
		if (get || f->large)
			dax_atomic_add(&p->refcount, refs);   /* large pin: _pincount too, below */
		else
			dax_atomic_add(&p->refcount, DAX_GUP_PIN_COUNTING_BIAS);
		if (f->large && !get)
			dax_atomic_add(&p[1].pincount, refs);
	}
}

FLOOR void dax_floor_unpin(const struct dax_floor *f, uint64_t npages, bool get)
{
	uint64_t per = (uint64_t)f->pages_per_folio;
	uint64_t nf = folios_covering(f, npages);
	struct dax_page *const *in = npages <= f->out_capacity ? f->out : NULL;
	uintptr_t seen = 0;
	for (uint64_t i = 0, j = 0; i < nf; i++, j = wrap(j, f->nr_folios)) {
		struct dax_page *p = folio_of(f, j);
		int32_t refs = (int32_t)(npages - i * per < per ? npages - i * per : per);
		if (in)
			for (int32_t k = 0; k < refs; k++)
				seen ^= (uintptr_t)*in++;
		if (get || f->large)
			dax_atomic_add(&p->refcount, -refs);
		else
			dax_atomic_add(&p->refcount, -DAX_GUP_PIN_COUNTING_BIAS);
		if (f->large && !get)
			dax_atomic_add(&p[1].pincount, -refs);
	}
	dax_bench_sink(seen);
}

int64_t dax_bench_now_ns(void)
{
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return (int64_t)t.tv_sec * 1000000000 + t.tv_nsec;
}

void dax_bench_sink(uint64_t v)
{
	__asm__ volatile("" : : "r"(v) : "memory");
}
