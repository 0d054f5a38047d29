/*
 * CDaxMM: the C records of the mm port, and nothing else.
 *
 *   - struct dax_page, the per-pfn metadata record (the userspace counterpart
 *     of struct page), with a fixed C layout checked in layout.c;
 *   - static inline atomics on it (Swift cannot import _Atomic fields, so the
 *     fields are plain integers and every access that must be atomic goes
 *     through these helpers, which inline to single lock-prefixed
 *     instructions);
 *   - the mm records (dax_mm.h): machine, dev_pagemap, mm_struct, VMA,
 *     vm_fault, and the futex-backed locks.
 *
 * It links no library: MMCore and DAXCore build on this alone. The system
 * libraries (libdaxctl, libndctl, libnuma, liburing) live in CDaxSys.
 *
 * The records use the x86-64 page-table layout and x86 atomics (pause): the
 * port supports Linux on x86-64 only, and says so at compile time.
 */
#ifndef CDAXMM_H
#define CDAXMM_H

#if !defined(__linux__) || !defined(__x86_64__)
#error "daxmm's mm port supports Linux on x86-64 only"
#endif

#include <stdint.h>
#include <stddef.h>
#include <stdbool.h>
#include <errno.h>

#define CDAX_INLINE static inline __attribute__((__always_inline__))

/* ------------------------------------------------------------------------ */
/* struct dax_page: one record per 4 KiB pfn                                  */
/* ------------------------------------------------------------------------ */

/*
 * Page flag bits (the subset of enum pageflags the port uses). The bit numbers
 * are the port's own; the names are the kernel's.
 */
enum dax_page_flag_bits {
	DAX_PG_locked = 0,
	DAX_PG_referenced = 1,
	DAX_PG_uptodate = 2,
	DAX_PG_dirty = 3,
	DAX_PG_head = 6,
	DAX_PG_reserved = 10,
	DAX_PG_zone_device = 16,   /* stands for page_zonenum() == ZONE_DEVICE */
	/* PG_anon_exclusive (aliased to PG_mappedtodisk in the kernel): per
	 * page, tails included, so it sits above the order byte of page[1]. */
	DAX_PG_anon_exclusive = 17,
	/* PG_partially_mapped, in page[1] of a large anon folio (folio->_flags_1):
	 * queued for deferred split because some of its pages are unmapped. */
	DAX_PG_partially_mapped = 18,
	/* PG_swapbacked: anon folios (backed by swap, not by a file). */
	DAX_PG_swapbacked = 19,
};

/* folio->mapping's low bit for anon folios: the rest is the anon_vma
 * (PAGE_MAPPING_ANON). */
#define DAX_PAGE_MAPPING_ANON 1ull

/* page_type (the union with _mapcount): a free page of the buddy allocator
 * carries PGTY_buddy in the top byte of the mapcount word instead of a
 * -1 biased mapcount. */
#define DAX_PAGE_TYPE_BUDDY ((int32_t)0xf0000000u)

/* In page[1] of a large folio, the low byte of flags holds the folio order,
 * as the kernel keeps it in folio->_flags_1. */
#define DAX_PAGE_ORDER_MASK 0xffull

/* Bit 0 of compound_head marks a tail page; the rest is the head's address. */
#define DAX_COMPOUND_TAIL 1ull

/*
 * The record. 64 bytes, like struct page on x86-64. Fields marked [head] are
 * meaningful on the head page of a folio (or on a small folio), fields marked
 * [page1] on the first tail of a large folio, where the kernel keeps the
 * folio's large-folio counters.
 *
 * Counters are stored exactly as the kernel stores them: mapcounts with a -1
 * bias (-1 means "not mapped"), refcount unbiased.
 */
struct dax_page {
	uint64_t flags;            /*  0: DAX_PG_* bits; [page1] low byte = order  */
	uint64_t compound_head;    /*  8: tails: head address | DAX_COMPOUND_TAIL  */
	int32_t  refcount;         /* 16: _refcount [head]; tails must stay 0     */
	int32_t  mapcount;         /* 20: _mapcount, -1 biased, per page          */
	uint64_t pgmap;            /* 24: dev_pagemap handle [head]               */
	uint64_t mapping;          /* 32: address_space handle [head]             */
	uint64_t index;            /* 40: file pgoff, or fs-dax share count [head] */
	int32_t  large_mapcount;   /* 48: [page1] _large_mapcount, -1 biased      */
	int32_t  entire_mapcount;  /* 52: [page1] _entire_mapcount, -1 biased     */
	int32_t  pincount;         /* 56: [page1] _pincount                        */
	int32_t  nr_pages_mapped;  /* 60: [page1] _nr_pages_mapped                 */
};

#define DAX_PAGE_SIZE_BYTES 64
#define DAX_PAGE_SHIFT 12
#define DAX_GUP_PIN_COUNTING_BIAS 1024

/* Atomic helpers. Relaxed where the kernel uses plain atomic_inc/add (which
 * imply no ordering); value-returning read-modify-writes are fully ordered, as
 * the kernel's atomic_*_return are. */

CDAX_INLINE int32_t dax_atomic_read(const int32_t *v)
{
	return __atomic_load_n(v, __ATOMIC_RELAXED);
}

CDAX_INLINE void dax_atomic_set(int32_t *v, int32_t i)
{
	__atomic_store_n(v, i, __ATOMIC_RELAXED);
}

CDAX_INLINE void dax_atomic_add(int32_t *v, int32_t i)
{
	(void)__atomic_fetch_add(v, i, __ATOMIC_RELAXED);
}

CDAX_INLINE int32_t dax_atomic_add_return(int32_t *v, int32_t i)
{
	return __atomic_add_fetch(v, i, __ATOMIC_SEQ_CST);
}

CDAX_INLINE int32_t dax_atomic_sub_return(int32_t *v, int32_t i)
{
	return __atomic_sub_fetch(v, i, __ATOMIC_SEQ_CST);
}

/* atomic_add_unless(v, a, u): add a unless the value is u; true if added. */
CDAX_INLINE bool dax_atomic_add_unless(int32_t *v, int32_t a, int32_t u)
{
	int32_t old = __atomic_load_n(v, __ATOMIC_RELAXED);
	do {
		if (old == u)
			return false;
	} while (!__atomic_compare_exchange_n(v, &old, old + a, true,
					      __ATOMIC_SEQ_CST, __ATOMIC_RELAXED));
	return true;
}

CDAX_INLINE bool dax_atomic_cmpxchg(int32_t *v, int32_t *expected, int32_t desired)
{
	return __atomic_compare_exchange_n(v, expected, desired, false,
					   __ATOMIC_SEQ_CST, __ATOMIC_RELAXED);
}

CDAX_INLINE void dax_set_bit(int bit, uint64_t *word)
{
	(void)__atomic_fetch_or(word, 1ull << bit, __ATOMIC_RELAXED);
}

CDAX_INLINE void dax_clear_bit(int bit, uint64_t *word)
{
	(void)__atomic_fetch_and(word, ~(1ull << bit), __ATOMIC_RELAXED);
}

CDAX_INLINE bool dax_test_bit(int bit, const uint64_t *word)
{
	return (__atomic_load_n(word, __ATOMIC_RELAXED) >> bit) & 1;
}

/* test_and_set_bit_lock / clear_bit_unlock: acquire/release bit locks. */
CDAX_INLINE bool dax_test_and_set_bit_lock(int bit, uint64_t *word)
{
	return (__atomic_fetch_or(word, 1ull << bit, __ATOMIC_ACQUIRE) >> bit) & 1;
}

CDAX_INLINE void dax_clear_bit_unlock(int bit, uint64_t *word)
{
	(void)__atomic_fetch_and(word, ~(1ull << bit), __ATOMIC_RELEASE);
}

/* The mm port's records (they refer to struct dax_page). */
#include "dax_mm.h"

/* Size and offsets of struct dax_page, for a Swift-side layout check. */
size_t dax_page_sizeof(void);
size_t dax_page_offsetof_refcount(void);
size_t dax_page_offsetof_pincount(void);

#endif /* CDAXMM_H */
