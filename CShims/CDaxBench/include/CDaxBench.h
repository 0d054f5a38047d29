/*
 * CDaxBench: the floors the port's hot paths are measured against.
 *
 * A floor does a subset of the work the kernel's version of a path also
 * does: the locks, the folio counters and the entry store that no
 * implementation of the path can avoid, on the port's own record types and
 * locks. It leaves out work the kernel's path does as well but that is not
 * in this minimum: the VMA lookup and the page-table walk, device-dax's SRCU
 * read section, the rss and vmstat counters, NR_FOLL_PIN_*. So
 * "port / floor" says how much the port adds on top of that minimum, and a
 * kernel's own path would not read 1.0 either:
 *
 *   fault   mmap_lock for read (the port keeps one; the same lock functions
 *           the port's fault entry uses), the entry's page-table spinlock,
 *           the folio's refcount and mapcount atomics (a large folio's
 *           _entire_mapcount and _large_mapcount in page[1]) and one store
 *           of the entry;
 *   mkwrite mmap_lock for read, the page-table lock, one load and one store
 *           of the entry (no counter moves on an upgrade);
 *   zap     the page-table lock, the entry's get-and-clear (an exchange),
 *           the mapcount and refcount decrements;
 *   pin     one atomic per small folio (GUP_PIN_COUNTING_BIAS); for a large
 *           folio, refcount and _pincount once each by the pages the pin
 *           covers (what try_grab_folio must move), whatever their number;
 *           and, when the caller asked for pages (`out`), one store per page
 *           of its struct page into the array: pin_user_pages returns
 *           every page, so no implementation avoids that store;
 *   get     the same with a reference of 1 per page (FOLL_GET);
 *   unpin   the reverse atomics, and one load per page of the array
 *           (unpin_user_pages finds each folio's run from the pages).
 *
 * The folio records a floor touches are the port rig's own (same addresses,
 * same strides), so both sides see the same caches; every floor has an
 * inverse (untimed) that puts the counters back, so the rig is unchanged.
 * The entries a floor stores go to its own table (`entries`), never to the
 * port's page tables.
 *
 * Compiled at -O2 in every configuration (Package.swift's cSettings):
 * a floor measured from a debug build still means what it says.
 */
#ifndef CDAXBENCH_H
#define CDAXBENCH_H

#include "CDaxMM.h"
#include <stdint.h>
#include <stdbool.h>

/* What one floor batch works on. Fault i touches the folio whose head record
 * is pages + (i % nr_folios) * stride and stores entry slot i % nr_entries. */
struct dax_floor {
	struct dax_rwsem *mmap_lock;   /* NULL: no mmap_lock (zap, pin) */
	uint32_t *ptl;                 /* the page-table lock of the level */
	uint64_t *entries;             /* nr_entries slots, the floor's own */
	uint64_t nr_entries;
	struct dax_page *pages;        /* head record of the first folio */
	uint64_t nr_folios;
	uint64_t stride;               /* records between folio heads */
	uint64_t first_pfn;            /* pfn of pages[0] (for the stored entry) */
	uint64_t entry_bits;           /* protection bits of a stored entry */
	int32_t large;                 /* 1: the folios are large (order > 0) */
	int32_t pages_per_folio;       /* 1 << order */
	struct dax_page **out;         /* a pin's page array (NULL: none) */
	uint64_t out_capacity;         /* pages it holds; a pin of more stores none */
};

/* n faults (timed part). */
void dax_floor_fault(const struct dax_floor *f, uint64_t n);
/* The inverse of dax_floor_fault(f, n): counters back, entries cleared. */
void dax_floor_unfault(const struct dax_floor *f, uint64_t n);
/* n in-place write upgrades of present entries. */
void dax_floor_mkwrite(const struct dax_floor *f, uint64_t n);
/* n zaps of entries a dax_floor_fault(f, n) installed (puts counters back). */
void dax_floor_zap(const struct dax_floor *f, uint64_t n);
/* Pins (or gets, with `get`) npages consecutive pages starting at the first
 * page of pages[0]: one atomic per small folio, refcount and _pincount (get:
 * refcount) once per large folio, one array store per page when `out` is set. */
void dax_floor_pin(const struct dax_floor *f, uint64_t npages, bool get);
/* The inverse of dax_floor_pin(f, npages, get). */
void dax_floor_unpin(const struct dax_floor *f, uint64_t npages, bool get);

/* CLOCK_MONOTONIC in nanoseconds (the vDSO: no system call). */
int64_t dax_bench_now_ns(void);
/* Keeps the compiler from dropping a value. */
void dax_bench_sink(uint64_t v);

#endif /* CDAXBENCH_H */
