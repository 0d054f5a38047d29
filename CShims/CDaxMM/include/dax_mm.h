/*
 * dax_mm.h: the C-layout records of the mm port.
 *
 * Everything the fault and pin hot paths touch is a plain C record reached
 * through a pointer: no Swift class, closure or existential sits on those
 * paths, so they can run from a signal handler and never touch ARC.
 *
 *   struct dax_kernel   one "machine": vmemmap, sections, counters, reports
 *   struct dax_pgmap    struct dev_pagemap's hot part
 *   struct dax_mm       struct mm_struct's hot part (page tables, VMAs, rss)
 *   struct dax_vma      struct vm_area_struct
 *   struct dax_vm_fault struct vm_fault
 *
 * Locks are tiny spin/futex locks that allocate nothing.
 */
#ifndef DAX_MM_H
#define DAX_MM_H

#include <stdint.h>
#include <stdbool.h>
#include <stddef.h>
#include <limits.h>
#include <time.h>
#include <linux/futex.h>
#include <sys/syscall.h>
#include <unistd.h>

#define DAX_MM_INLINE static inline __attribute__((__always_inline__))

struct dax_page;

/* ------------------------------------------------------------------ */
/* futex, spinlock, rwsem                                              */
/* ------------------------------------------------------------------ */

/* Wait while *word == val, at most timeout_ns (negative: forever).
 * Returns 0 when woken or the value changed, -ETIMEDOUT on timeout. */
int dax_futex_wait(uint32_t *word, uint32_t val, int64_t timeout_ns);
void dax_futex_wake(uint32_t *word, int nr);

DAX_MM_INLINE uint32_t dax_load_u32(const uint32_t *w) { return __atomic_load_n(w, __ATOMIC_ACQUIRE); }
DAX_MM_INLINE void dax_store_u32(uint32_t *w, uint32_t v) { __atomic_store_n(w, v, __ATOMIC_RELEASE); }
DAX_MM_INLINE uint32_t dax_inc_u32(uint32_t *w) { return __atomic_add_fetch(w, 1, __ATOMIC_SEQ_CST); }
DAX_MM_INLINE void dax_dec_u32(uint32_t *w) { (void)__atomic_sub_fetch(w, 1, __ATOMIC_SEQ_CST); }

DAX_MM_INLINE int64_t dax_atomic64_read(const int64_t *v) { return __atomic_load_n(v, __ATOMIC_RELAXED); }
DAX_MM_INLINE void dax_atomic64_set(int64_t *v, int64_t i) { __atomic_store_n(v, i, __ATOMIC_RELAXED); }
DAX_MM_INLINE void dax_atomic64_add(int64_t *v, int64_t i) { (void)__atomic_fetch_add(v, i, __ATOMIC_RELAXED); }
DAX_MM_INLINE int64_t dax_atomic64_add_return(int64_t *v, int64_t i) { return __atomic_add_fetch(v, i, __ATOMIC_SEQ_CST); }

DAX_MM_INLINE uint64_t dax_load_u64(const uint64_t *p) { return __atomic_load_n(p, __ATOMIC_ACQUIRE); }
DAX_MM_INLINE void dax_store_u64(uint64_t *p, uint64_t v) { __atomic_store_n(p, v, __ATOMIC_RELEASE); }
DAX_MM_INLINE uint64_t dax_xchg_u64(uint64_t *p, uint64_t v) { return __atomic_exchange_n(p, v, __ATOMIC_SEQ_CST); }
DAX_MM_INLINE bool dax_cmpxchg_u64(uint64_t *p, uint64_t *expected, uint64_t desired)
{
	return __atomic_compare_exchange_n(p, expected, desired, false, __ATOMIC_SEQ_CST, __ATOMIC_RELAXED);
}

DAX_MM_INLINE void dax_cpu_relax(void) { __builtin_ia32_pause(); }

/* A spinlock: 0 free, 1 held. Spins, then yields the CPU. */
DAX_MM_INLINE bool dax_spin_trylock(uint32_t *l)
{
	uint32_t z = 0;
	return __atomic_compare_exchange_n(l, &z, 1, false, __ATOMIC_ACQUIRE, __ATOMIC_RELAXED);
}

void dax_spin_lock_slow(uint32_t *l);

DAX_MM_INLINE void dax_spin_lock(uint32_t *l)
{
	if (__builtin_expect(dax_spin_trylock(l), 1))
		return;
	dax_spin_lock_slow(l);
}

DAX_MM_INLINE void dax_spin_unlock(uint32_t *l) { __atomic_store_n(l, 0, __ATOMIC_RELEASE); }

DAX_MM_INLINE bool dax_spin_is_locked(const uint32_t *l) { return __atomic_load_n(l, __ATOMIC_RELAXED) != 0; }

/* Per-thread slots: the port's stand-in for per-CPU data. A "CPU" is a
 * thread: the first DAX_NR_SLOTS threads that touch a per-slot record get a
 * slot of their own, once (an atomic counter, in dax_slot_assign); later
 * threads share the overflow slot DAX_NR_SLOTS, which they update with
 * lock-prefixed atomics. A slot is written by its thread only, with one
 * non-locked read-modify-write instruction (this_cpu_add: a signal handler
 * on the same thread cannot split it), so a writer never bounces another
 * thread's cache line; readers sum every slot, exactly once the writers are
 * quiescent (percpu_counter_sum, the vmstat fold). Slot data never
 * shares a cache line with another slot's. Everything here is async-signal-safe (initial-exec TLS,
 * one atomic on the first use per thread). */
#define DAX_NR_SLOTS 16
#define DAX_SLOT_OVERFLOW DAX_NR_SLOTS
/* A slot record is 128 bytes, its data in the first 64, and a slot array
 * starts 64 bytes after the fields before it: wherever the record holding
 * it starts (Swift's allocations are 16-byte aligned; the importer takes no
 * over-aligned C type), a slot's data shares no cache line with another
 * slot's or with a neighbouring field. */
#define DAX_SLOT_BYTES 128

extern __thread int32_t dax_slot_tls __attribute__((tls_model("initial-exec")));
int32_t dax_slot_assign(void);

/* The calling thread's slot, in [0, DAX_NR_SLOTS] (DAX_SLOT_OVERFLOW shared). */
DAX_MM_INLINE int32_t dax_this_slot(void)
{
	int32_t s = dax_slot_tls;
	if (__builtin_expect(s != 0, 1))
		return s - 1;
	return dax_slot_assign();
}

/* this_cpu_add on slot `slot` of a per-slot int64 (the own slot: a plain
 * add instruction, no lock prefix; the shared overflow slot: an atomic). */
DAX_MM_INLINE void dax_slot_add64(int64_t *v, int32_t slot, int64_t delta)
{
	if (__builtin_expect(slot != DAX_SLOT_OVERFLOW, 1))
		__asm__ volatile("addq %1, %0" : "+m"(*v) : "er"(delta));
	else
		(void)__atomic_fetch_add(v, delta, __ATOMIC_RELAXED);
}

/* A per-slot counter block: the mm's rss counters and the node stats. */
#define DAX_SLOT_COUNTERS 8
struct dax_counter_slot {
	int64_t v[DAX_SLOT_COUNTERS];
	int64_t _pad[DAX_SLOT_BYTES / 8 - DAX_SLOT_COUNTERS];
};

struct dax_pcpu_counters {
	int64_t _lead[8];   /* 64 bytes: slot 0 shares no line with what precedes */
	struct dax_counter_slot slot[DAX_NR_SLOTS + 1];
};

/* add_mm_counter / __mod_node_page_state on slot `slot`, which must be the
 * calling thread's (dax_this_slot(), looked up once by the caller). */
DAX_MM_INLINE void dax_pcpu_counter_add_slot(struct dax_pcpu_counters *c, int32_t slot, int item, int64_t delta)
{
	dax_slot_add64(&c->slot[slot].v[item], slot, delta);
}

/* add_mm_counter / __mod_node_page_state: the caller's slot only. */
DAX_MM_INLINE void dax_pcpu_counter_add(struct dax_pcpu_counters *c, int item, int64_t delta)
{
	dax_pcpu_counter_add_slot(c, dax_this_slot(), item, delta);
}

/* percpu_counter_sum / node_page_state: every slot summed (exact once the
 * writers are quiescent). */
DAX_MM_INLINE int64_t dax_pcpu_counter_sum(struct dax_pcpu_counters *c, int item)
{
	int64_t sum = 0;
	for (int i = 0; i <= DAX_NR_SLOTS; i++)
		sum += __atomic_load_n(&c->slot[i].v[item], __ATOMIC_RELAXED);
	return sum;
}

/* Sets a counter to `value` (slot 0 holds it, the others 0); the writers
 * must be quiescent. */
DAX_MM_INLINE void dax_pcpu_counter_set(struct dax_pcpu_counters *c, int item, int64_t value)
{
	for (int i = 0; i <= DAX_NR_SLOTS; i++)
		__atomic_store_n(&c->slot[i].v[item], i == 0 ? value : 0, __ATOMIC_RELAXED);
}

/* An SRCU-like read side (dax_srcu), per slot as the kernel's SRCU is per
 * CPU: two reader counters per slot; a reader counts itself on the side
 * `idx` names in its own slot when it enters, and the updater flips idx and
 * waits for the sum of the old side over all slots to drain, so it waits
 * only for readers that started before the flip. Entering is one fully
 * ordered add on the reader's own slot (srcu_read_lock's smp_mb() B: the
 * count is visible before the section reads what the updater publishes);
 * leaving is a plain (release) decrement of the same slot, since only the
 * section's accesses must be ordered before it. A reader leaves on the
 * thread (slot) it entered on. Nothing allocates, so a fault handler in a
 * signal handler may use it. The updater must publish its change with a
 * seq_cst store before the flip, and the reader read it with a seq_cst load
 * inside the section. */
struct dax_srcu_slot {
	int64_t readers[2];
	int64_t _pad[DAX_SLOT_BYTES / 8 - 2];
};

struct dax_srcu {
	uint32_t idx;
	uint32_t _pad;
	int64_t _lead[8];   /* slot 0's counts share no line with idx */
	struct dax_srcu_slot slot[DAX_NR_SLOTS + 1];
};

/* The reader's side and slot, packed (side in bit 0, slot above). `slot`
 * must be the calling thread's (dax_this_slot()). */
DAX_MM_INLINE uint32_t dax_srcu_read_lock_slot(struct dax_srcu *s, int32_t slot)
{
	uint32_t i = __atomic_load_n(&s->idx, __ATOMIC_RELAXED) & 1;
	(void)__atomic_fetch_add(&s->slot[slot].readers[i], 1, __ATOMIC_SEQ_CST);
	return i | ((uint32_t)slot << 1);
}

DAX_MM_INLINE uint32_t dax_srcu_read_lock(struct dax_srcu *s)
{
	return dax_srcu_read_lock_slot(s, dax_this_slot());
}

DAX_MM_INLINE void dax_srcu_read_unlock(struct dax_srcu *s, uint32_t token)
{
	int32_t slot = (int32_t)(token >> 1);
	int64_t *v = &s->slot[slot].readers[token & 1];
	if (__builtin_expect(slot != DAX_SLOT_OVERFLOW, 1)) {
		/* release: the section's accesses before the decrement */
		__asm__ volatile("subq $1, %0" : "+m"(*v) : : "memory");
	} else {
		(void)__atomic_fetch_sub(v, 1, __ATOMIC_RELEASE);
	}
}

/* The updater's flip: new readers count on the other side; returns the side
 * the earlier readers are on. */
DAX_MM_INLINE uint32_t dax_srcu_flip(struct dax_srcu *s)
{
	return __atomic_fetch_add(&s->idx, 1, __ATOMIC_SEQ_CST) & 1;
}

/* Readers on side i, summed over the slots. */
DAX_MM_INLINE int64_t dax_srcu_readers(struct dax_srcu *s, uint32_t i)
{
	__atomic_thread_fence(__ATOMIC_SEQ_CST);
	int64_t sum = 0;
	for (int k = 0; k <= DAX_NR_SLOTS; k++)
		sum += __atomic_load_n(&s->slot[k].readers[i & 1], __ATOMIC_ACQUIRE);
	return sum;
}

DAX_MM_INLINE uint32_t dax_load_u32_seq_cst(const uint32_t *w) { return __atomic_load_n(w, __ATOMIC_SEQ_CST); }
DAX_MM_INLINE void dax_store_u32_seq_cst(uint32_t *w, uint32_t v) { __atomic_store_n(w, v, __ATOMIC_SEQ_CST); }

/* A reader/writer semaphore (mmap_lock, i_mmap_rwsem) with per-slot reader
 * counts, like percpu_rw_semaphore: a reader adds 1 to its own slot (a
 * fully ordered add on a cache line no other thread writes) and then checks
 * `writer`; a writer sets `writer` and waits for the sum of the slots to
 * drain, and readers that see it pending back off and wait. Two faulting
 * threads so share no cache line on the read side, which a single count
 * (and the kernel's own rwsem) would bounce between them; the kernel avoids
 * the bounce on this path with per-VMA locks (lock_vma_under_rcu), which the
 * port's VMA array, freed and replaced under mmap_lock for write, cannot
 * offer a lock-free reader without a reclamation scheme.
 *
 * Wake-ups: a sleeper increments `waiters` before it rechecks and sleeps on
 * `seq` with the value it read before its attempt; a release that may
 * unblock someone (a write release, a downgrade, a read release while a
 * writer is pending) bumps `seq` and makes a futex call only if it sees
 * waiters. An uncontended read release is the slot decrement and a load of
 * `writer`: no shared write. Sleeps are capped at 1 ms (a recheck).
 *
 * Fairness: a write release that finds readers waiting (readers_waiting)
 * hands the next turn to them (handoff); writers, including those already
 * waiting, do not take the lock until one of the readers got in, none
 * waits any more, or 2 ms passed.
 *
 * Rules, as the kernel's rwsem: a thread must not take the read lock it
 * already holds (with a writer pending, the inner down_read waits for the
 * writer, which waits for the outer read section: a deadlock); the CPU
 * fault window's handler therefore must not run on a thread that holds
 * mmap_lock. The *_slot variants take the calling thread's own slot
 * (dax_this_slot()) and nothing else: an own-slot update is not
 * lock-prefixed, so another thread's slot would lose counts. */
struct dax_rwsem_slot {
	int64_t readers;
	int64_t _pad[DAX_SLOT_BYTES / 8 - 1];
};

struct dax_rwsem {
	uint32_t writer;  /* 1: a writer holds the lock or waits for readers to drain */
	uint32_t seq;     /* futex word, bumped by the releases above */
	uint32_t waiters; /* sleepers: a release makes a futex call only if > 0 */
	uint32_t owner;   /* thread id of the writer while held for write, else 0 */
	uint32_t readers_waiting; /* readers that found a writer and wait for it */
	uint32_t handoff; /* 1: a write release left the next turn to the waiting
	                   * readers; writers wait until one of them got in */
	int64_t _lead[7]; /* slot 0's count shares no line with `writer` */
	struct dax_rwsem_slot slot[DAX_NR_SLOTS + 1];
};

bool dax_down_read_trylock(struct dax_rwsem *s);
void dax_down_read(struct dax_rwsem *s);
void dax_up_read(struct dax_rwsem *s);
/* dax_down_read / dax_up_read with the calling thread's slot looked up once
 * by the caller (`slot` must be dax_this_slot() of the calling thread). */
void dax_down_read_slot(struct dax_rwsem *s, int32_t slot);
void dax_up_read_slot(struct dax_rwsem *s, int32_t slot);
bool dax_down_write_trylock(struct dax_rwsem *s);
void dax_down_write(struct dax_rwsem *s);
void dax_up_write(struct dax_rwsem *s);
void dax_downgrade_write(struct dax_rwsem *s);
/* memfd_create(name, MFD_CLOEXEC) and fallocate(PUNCH_HOLE|KEEP_SIZE): the
 * page allocator's backing (Glibc's module does not show them to Swift).
 * Both return 0/fd or -errno. */
int dax_mm_memfd_create(const char *name);
int dax_punch_hole(int fd, int64_t offset, int64_t len);
/* The calling thread's id (gettid, cached per thread; async-signal-safe). */
uint32_t dax_current_tid(void);
/* The thread holding `s` for write, or 0 (a racy hint, exact for the
 * calling thread: it tells a thread whether it holds the lock itself). */
static inline uint32_t dax_rwsem_write_owner(struct dax_rwsem *s) { return __atomic_load_n(&s->owner, __ATOMIC_RELAXED); }

/* ------------------------------------------------------------------ */
/* The machine                                                         */
/* ------------------------------------------------------------------ */

/* sparse-vmemmap sections: 128 MiB (SECTION_SIZE_BITS 27 on x86-64). */
#define DAX_SECTION_SHIFT 27
#define DAX_PAGES_PER_SECTION (1ull << (DAX_SECTION_SHIFT - 12))

/* The state byte of a section (section_present[nr]). PRESENT_DEFERRED: the
 * vmemmap is accessible but the struct pages of the deferred ranges in it
 * (struct dax_deferred_range) are not initialised yet; the first
 * pfn_to_page of a pfn in the section initialises them (deferred_grow_zone,
 * on demand). */
enum dax_section_state {
	DAX_SECTION_ABSENT = 0,
	DAX_SECTION_PRESENT = 1,          /* present, struct pages initialised */
	DAX_SECTION_PRESENT_DEFERRED = 2, /* present, initialisation deferred */
};

/* A pgmap range whose struct pages memremap_pages left uninitialised: what
 * the pfn_to_page slow path needs to run memmap_init_zone_device on a part
 * of it, as plain data (it may run from a signal handler). A slot is free
 * while pgmap is NULL. Written and read under section_lock. */
struct dax_deferred_range {
	uint64_t start_pfn;
	uint64_t end_pfn;              /* exclusive */
	struct dax_pgmap *pgmap;       /* page->pgmap of every page */
	int32_t vmemmap_shift;         /* folio order */
	int32_t idle_refcount;         /* 1 for GENERIC, 0 otherwise */
};
#define DAX_DEFERRED_RANGES 64

/* Node counters the port keeps (enum node_stat_item subset). */
enum dax_node_stat {
	DAX_NR_FILE_MAPPED = 0,
	DAX_NR_FILE_PMDMAPPED,
	DAX_NR_FOLL_PIN_ACQUIRED,
	DAX_NR_FOLL_PIN_RELEASED,
	DAX_NR_PAGETABLE,
	DAX_NR_ANON_MAPPED,       /* NR_ANON_MAPPED: anon pages mapped */
	DAX_NR_ANON_THPS,         /* NR_ANON_THPS: anon pages PMD-mapped */
	DAX_NR_STATS,
};

/* A debug report: what dump_page prints, captured without allocating. */
#define DAX_REPORT_RING 64
#define DAX_REPORT_RULE_LEN 96
struct dax_page_report {
	uint64_t seq;              /* 0: slot empty */
	uint64_t pfn;
	uint64_t head_pfn;
	int32_t refcount;
	int32_t mapcount;          /* folio_mapcount */
	int32_t entire_mapcount;   /* +1 applied */
	int32_t pincount;
	int32_t order;
	int32_t pgmap_type;
	uint64_t flags;
	uint64_t mapping;
	uint64_t index;
	char rule[DAX_REPORT_RULE_LEN];
	char function[48];
};

/* Behaviour switches for scenarios that reproduce older kernels. */
enum dax_kernel_mode {
	/* 6.15 as merged: vmf_insert_folio_pmd/pud install *special* entries
	 * (fixed mid-2025; the port defaults to the fix). */
	DAX_MODE_SPECIAL_HUGE_ENTRIES = 1u << 0,
	/* Pre-series fs-dax: the PMD insert path calls folio_get on an idle
	 * (refcount 0) folio. Only the seed-bug scenario sets it. */
	DAX_MODE_LEGACY_PRE_SERIES = 1u << 1,
};

/* The page allocator's zone of ordinary memory (mm/page_alloc.c): a buddy
 * allocator over [start_pfn, end_pfn), orders 0..DAX_MAX_PAGE_ORDER. A free
 * block's head page carries DAX_PAGE_TYPE_BUDDY in its mapcount word and
 * its order in page->index (page->private in the kernel); the free lists
 * are doubly linked through `links` (two pfn+1 words per page: next, prev;
 * 0 ends a list), the kernel's page->lru. The zone grows a max-order block
 * at a time (`grown_pfn`): struct pages are initialised when their block
 * first reaches the free lists (deferred memmap init), so an unused zone
 * costs no resident memory. `lock` is zone->lock, a spinlock taken on the
 * fault path (possibly in a signal handler); no holder touches anything a
 * window fault could be raised on. */
#define DAX_MAX_PAGE_ORDER 10
#define DAX_NR_PAGE_ORDERS (DAX_MAX_PAGE_ORDER + 1)
struct dax_free_area {
	uint64_t head;             /* pfn + 1 of the first free block, 0: empty */
	int64_t nr_free;           /* blocks on this list */
};
struct dax_ram {
	uint32_t lock;             /* zone->lock */
	int32_t memfd;             /* backs `direct_map` (-1: none) */
	uint64_t start_pfn;
	uint64_t end_pfn;          /* exclusive; (end - start) a multiple of the max-order block */
	uint64_t grown_pfn;        /* [start_pfn, grown_pfn) initialised and given to the lists */
	struct dax_free_area free_area[DAX_NR_PAGE_ORDERS];
	uint64_t *links;           /* 2 words per page: next pfn + 1, prev pfn + 1 */
	uint8_t *direct_map;       /* the zone's memory, page_address() of its pfns */
	int64_t nr_free;           /* NR_FREE_PAGES */
	int64_t nr_allocated;      /* pages handed out and not yet freed */
	int64_t nr_alloc_failed;   /* allocations refused (zone exhausted) */
};

/* The direct map of device memory: a runtime that has a device's range
 * mapped registers it here so page_address() (kmap_local_page) finds the
 * bytes of a device pfn, as the kernel's direct map does for pmem. A slot
 * is free while `addr` is NULL; slots are published with a release store of
 * addr and read without a lock. */
#define DAX_DIRECT_MAPS 16
struct dax_direct_map {
	uint64_t start_pfn;
	uint64_t end_pfn;          /* exclusive */
	uint8_t *addr;             /* host address of start_pfn's bytes */
};

struct dax_kernel {
	struct dax_page *vmemmap;      /* record of pfn 0 (reserved, mostly unmapped) */
	uint64_t max_pfn;              /* pfns [0, max_pfn) have a record slot */
	uint8_t *section_present;      /* one byte per section: enum dax_section_state */
	uint64_t nr_sections;
	/* Guards section population, the deferred table and every section's
	 * ABSENT/PRESENT/PRESENT_DEFERRED transitions. Taken by the pfn_to_page
	 * slow path, possibly inside a SIGSEGV handler; no holder ever touches
	 * device memory, so a window fault can never interrupt a holder on its
	 * own thread. */
	uint32_t section_lock;
	uint32_t mode;                 /* dax_kernel_mode bits */
	int64_t nr_sections_present;   /* sections in PRESENT state */
	int64_t nr_sections_deferred;  /* sections in PRESENT_DEFERRED state */
	struct dax_deferred_range deferred[DAX_DEFERRED_RANGES];
	/* node counters (vmstat's per-cpu diffs), item enum dax_node_stat */
	struct dax_pcpu_counters stats;
	/* wake_up_var hash table (bit_wait_table): futex words, and how many
	 * sleep on each (a wake makes a system call only when some do). */
	uint32_t wait_table[256];
	uint32_t wait_sleepers[256];
	/* Debug reports, written by VM_BUG/VM_WARN checks. */
	int64_t report_seq;
	int64_t report_lost;
	struct dax_page_report reports[DAX_REPORT_RING];
	/* Page-table page pool (preallocated; allocation is lock-free). */
	uint8_t *pt_pool;
	uint64_t pt_pool_pages;
	int64_t pt_next;               /* bump index */
	uint64_t pt_free;              /* free-list head: table address, 0 empty; ABA tag in low 12 bits */
	uint32_t *pt_locks;            /* one split ptlock per pool page */
	int64_t pt_in_use;
	/* Ordinary memory (NULL: the kernel has none; every anon allocation
	 * fails with VM_FAULT_OOM). */
	struct dax_ram *ram;
	/* The huge zero folio: a reserved PMD-order folio of zeroes (pfn 0 is
	 * the small zero page). 0: none. */
	uint64_t huge_zero_pfn;
	struct dax_direct_map direct_map[DAX_DIRECT_MAPS];
	uint32_t direct_map_lock;      /* writers only */
	/* /sys/kernel/mm/transparent_hugepage: enabled (enum dax_thp_enabled)
	 * and use_zero_page, for anonymous VMAs. */
	uint32_t thp_enabled;
	uint32_t thp_use_zero_page;
};

enum dax_thp_enabled {
	DAX_THP_MADVISE = 0,   /* VMAs with VM_HUGEPAGE */
	DAX_THP_ALWAYS = 1,    /* every anon VMA without VM_NOHUGEPAGE (the default) */
	DAX_THP_NEVER = 2,
};

/* ------------------------------------------------------------------ */
/* dev_pagemap                                                         */
/* ------------------------------------------------------------------ */

enum dax_memory_type {
	DAX_MEMORY_DEVICE_PRIVATE = 1,
	DAX_MEMORY_DEVICE_COHERENT,
	DAX_MEMORY_DEVICE_FS_DAX,
	DAX_MEMORY_DEVICE_GENERIC,
	DAX_MEMORY_DEVICE_PCI_P2PDMA,
};

struct dax_pgmap;
typedef void (*dax_page_free_fn)(struct dax_page *page, void *owner);
typedef uint32_t (*dax_migrate_to_ram_fn)(void *vmf);

struct dax_pgmap {
	struct dax_kernel *kernel;
	int64_t ref;               /* percpu_ref stand-in: live references */
	uint32_t dead;             /* percpu_ref_kill done */
	uint32_t done;             /* futex word: 1 once ref dropped to 0 after kill */
	int32_t type;              /* enum dax_memory_type */
	int32_t vmemmap_shift;     /* folio order of the pages */
	uint32_t flags;
	int32_t nr_range;
	dax_page_free_fn page_free;
	dax_migrate_to_ram_fn migrate_to_ram;
	void *owner;
	int64_t lookups;           /* get_dev_pagemap refs not yet put (for reports) */
	uint64_t first_pfn;        /* of range 0 */
	uint64_t end_pfn;          /* exclusive end of the last range */
	uint64_t id;               /* for reports */
};

/* percpu_ref_tryget_live */
DAX_MM_INLINE bool dax_pgmap_tryget_live(struct dax_pgmap *p)
{
	if (__atomic_load_n(&p->dead, __ATOMIC_ACQUIRE))
		return false;
	int64_t old = __atomic_load_n(&p->ref, __ATOMIC_RELAXED);
	do {
		if (old <= 0 || __atomic_load_n(&p->dead, __ATOMIC_ACQUIRE))
			return false;
	} while (!__atomic_compare_exchange_n(&p->ref, &old, old + 1, true, __ATOMIC_SEQ_CST, __ATOMIC_RELAXED));
	return true;
}

/* percpu_ref_get_many / put_many; the put that reaches 0 completes `done`. */
DAX_MM_INLINE void dax_pgmap_get_many(struct dax_pgmap *p, int64_t n)
{
	__atomic_fetch_add(&p->ref, n, __ATOMIC_RELAXED);
}

DAX_MM_INLINE void dax_pgmap_put_many(struct dax_pgmap *p, int64_t n)
{
	if (__atomic_sub_fetch(&p->ref, n, __ATOMIC_SEQ_CST) == 0) {
		__atomic_store_n(&p->done, 1, __ATOMIC_RELEASE);
		dax_futex_wake(&p->done, INT_MAX);
	}
}

/* ------------------------------------------------------------------ */
/* Address spaces                                                      */
/* ------------------------------------------------------------------ */

/* vm_flags (the kernel's bit values). */
#define DAX_VM_READ      0x00000001ull
#define DAX_VM_WRITE     0x00000002ull
#define DAX_VM_EXEC      0x00000004ull
#define DAX_VM_SHARED    0x00000008ull
#define DAX_VM_MAYREAD   0x00000010ull
#define DAX_VM_MAYWRITE  0x00000020ull
#define DAX_VM_MAYEXEC   0x00000040ull
#define DAX_VM_MAYSHARE  0x00000080ull
#define DAX_VM_PFNMAP    0x00000400ull
#define DAX_VM_LOCKED    0x00002000ull
#define DAX_VM_IO        0x00004000ull
#define DAX_VM_DONTEXPAND 0x00040000ull
#define DAX_VM_SYNC      0x00800000ull
#define DAX_VM_MIXEDMAP  0x10000000ull
#define DAX_VM_HUGEPAGE  0x20000000ull
#define DAX_VM_NOHUGEPAGE 0x40000000ull

/* The file behind a VMA: what vma_is_dax/vma_is_fsdax look at. */
#define DAX_S_DAX 0x2000u            /* inode->i_flags & S_DAX */
#define DAX_S_IFCHR 0020000u
#define DAX_S_IFREG 0100000u

struct dax_vma;

struct dax_file {
	uint32_t i_flags;           /* S_DAX */
	uint32_t i_mode;            /* S_IFCHR, S_IFREG */
	uint64_t mapping;           /* address_space handle stored in folio->mapping */
	void *private_data;         /* the driver's (unretained) */
	uint64_t private_tag;       /* the driver's tag for private_data's layout
	                             * (never 0); a driver reads private_data only
	                             * after comparing this with its own tag */
	/* address_space->i_mmap: every VMA mapping the file. The mm links and
	 * unlinks VMAs (vma_link_file, unlink_file_vma) under mmap_lock for
	 * write, taking i_mmap_rwsem for write; unmap_mapping_pages walks the
	 * array under it for read. The array grows on link only, never on a
	 * fault, so the walk allocates nothing. */
	struct dax_rwsem i_mmap_rwsem;
	struct dax_vma **i_mmap;
	int64_t i_mmap_nr;
	int64_t i_mmap_cap;
};
struct dax_vm_fault;

/* vm_operations_struct. Every callback is a C function pointer, so no Swift
 * object is touched on the fault path. Return values are VM_FAULT_* bits. */
struct dax_vm_operations {
	uint32_t (*fault)(struct dax_vm_fault *vmf);
	uint32_t (*huge_fault)(struct dax_vm_fault *vmf, uint32_t order);
	uint32_t (*page_mkwrite)(struct dax_vm_fault *vmf);
	uint32_t (*pfn_mkwrite)(struct dax_vm_fault *vmf);
	int32_t (*may_split)(struct dax_vma *vma, uint64_t addr);   /* 0 or -errno */
	uint64_t (*pagesize)(struct dax_vma *vma);
	/* A VMA came into being by mmap, split or move (vm_ops->open is called
	 * for the copies; the port also calls it for the first mapping, after
	 * insertion), and one went away. The file's i_mmap is kept by the mm
	 * itself, not through these. */
	void (*open)(struct dax_vma *vma);
	void (*close)(struct dax_vma *vma);
};

struct dax_mm;

/* struct anon_vma with its anon_vma_chain folded in: the VMAs that may map
 * folios whose folio->mapping names this anon_vma. A VMA is chained to its
 * own anon_vma and, after fork, to every ancestor's (anon_vma_fork), so an
 * rmap walk of a folio visits every VMA that can map it. Changed under
 * `rwsem` for write (with mmap_lock for write), walked under it for read;
 * the array grows at mmap, split, mremap and fork, never on a fault. The
 * record lives as long as its kernel (the kernel's anon_vma is
 * SLAB_TYPESAFE_BY_RCU; the port never reuses one), so folio->mapping of an
 * unmapped folio never points at freed memory. */
struct dax_anon_vma {
	struct dax_rwsem rwsem;        /* anon_vma->root->rwsem */
	struct dax_vma **vmas;
	int64_t nr_vmas;
	int64_t cap;
	struct dax_anon_vma *parent;   /* the anon_vma it was forked from */
	uint64_t id;                   /* for reports */
	int64_t num_children;
	int64_t num_active_vmas;       /* VMAs whose own anon_vma this is */
};

struct dax_vma {
	uint64_t vm_start;
	uint64_t vm_end;
	uint64_t vm_flags;
	uint64_t vm_pgoff;
	uint64_t vm_page_prot;         /* PTE bits a new entry starts from */
	struct dax_mm *vm_mm;
	struct dax_file *vm_file;      /* NULL: anonymous */
	const struct dax_vm_operations *vm_ops;
	void *vm_private_data;
	/* The anon_vma new anon folios of this VMA get (private VMAs; the port
	 * prepares it at mmap instead of at the first anon fault, since a fault
	 * may run in a signal handler and cannot allocate). */
	struct dax_anon_vma *anon_vma;
	/* The anon_vma mmap prepared and chained for this VMA; the first anon
	 * fault publishes it as anon_vma (anon_vma_prepare). NULL for shared
	 * VMAs, which never get anon folios. */
	struct dax_anon_vma *anon_vma_reserve;
};

/* FAULT_FLAG_* */
#define DAX_FAULT_FLAG_WRITE      0x001u
#define DAX_FAULT_FLAG_MKWRITE    0x002u
#define DAX_FAULT_FLAG_ALLOW_RETRY 0x004u
#define DAX_FAULT_FLAG_REMOTE     0x080u
#define DAX_FAULT_FLAG_INSTRUCTION 0x100u
#define DAX_FAULT_FLAG_USER       0x040u
#define DAX_FAULT_FLAG_KILLABLE   0x010u
#define DAX_FAULT_FLAG_TRIED      0x020u
#define DAX_FAULT_FLAG_UNSHARE    0x400u
#define DAX_FAULT_FLAG_ORIG_PTE_VALID 0x800u

/* VM_FAULT_* */
#define DAX_VM_FAULT_OOM          0x000001u
#define DAX_VM_FAULT_SIGBUS       0x000002u
#define DAX_VM_FAULT_MAJOR        0x000004u
#define DAX_VM_FAULT_HWPOISON     0x000010u
#define DAX_VM_FAULT_SIGSEGV      0x000040u
#define DAX_VM_FAULT_NOPAGE       0x000100u
#define DAX_VM_FAULT_LOCKED       0x000200u
#define DAX_VM_FAULT_RETRY        0x000400u
#define DAX_VM_FAULT_FALLBACK     0x000800u
#define DAX_VM_FAULT_DONE_COW     0x001000u
#define DAX_VM_FAULT_NEEDDSYNC    0x002000u
#define DAX_VM_FAULT_COMPLETED    0x004000u
#define DAX_VM_FAULT_ERROR 0x000053u  /* OOM | SIGBUS | SIGSEGV | HWPOISON */

struct dax_vm_fault {
	struct dax_vma *vma;
	uint64_t address;              /* faulting address, page aligned */
	uint64_t real_address;
	uint64_t pgoff;                /* logical page offset in the file */
	uint32_t flags;                /* FAULT_FLAG_* */
	int32_t slot;                  /* the faulting thread's per-thread slot + 1; 0: not looked up (dax_vmf_slot) */
	uint64_t *pud;
	uint64_t *pmd;
	uint64_t *pte;                 /* set while a PTE table is mapped */
	uint64_t orig_pud;
	uint64_t orig_pmd;
	uint64_t orig_pte;
	struct dax_page *page;
	uint64_t pfn;                  /* out: pfn inserted by a DAX handler (for sync) */
	void *driver_data;             /* handler scratch */
	/* do_cow_fault: the anon page a private write fault copies into; a
	 * handler that fills it itself returns VM_FAULT_DONE_COW. */
	struct dax_page *cow_page;
};

/* mm_struct rss counters */
enum dax_mm_counter { DAX_MM_FILEPAGES = 0, DAX_MM_ANONPAGES, DAX_MM_SWAPENTS, DAX_MM_SHMEMPAGES, DAX_NR_MM_COUNTERS };

/* enum pgtable_level: the level of a leaf entry. */
enum dax_pgtable_level {
	DAX_PGTABLE_LEVEL_PTE = 0,
	DAX_PGTABLE_LEVEL_PMD,
	DAX_PGTABLE_LEVEL_PUD,
};

/*
 * The arch hook of an address space: what the architecture's page-table
 * primitives (set_pte_at, ptep_get_and_clear, ..., flush_tlb_range) do
 * besides the store. Every change of a leaf entry (PTE, or PMD/PUD leaf)
 * goes through one funnel; with a hook installed the funnel also calls it,
 * so a runtime can mirror the mapping (mmap/mprotect/munmap of the device
 * range at the address) and mmu notifiers can hang off the same points.
 * Table (non-leaf) entries are not reported: they map nothing.
 *
 * Both callbacks are optional (NULL: not called). They run on the fault,
 * zap and pin paths, possibly from a signal handler, so they must be
 * async-signal-safe, must not allocate through the MM, and must not call
 * back into this MM (no fault, map, unmap or hook change): the caller may
 * hold a page-table spinlock.
 */
struct dax_arch_ops {
	/* A leaf entry changed from old_entry to new_entry (never equal; one of
	 * them may be 0: installed, or cleared). `addr` is the first address
	 * the entry translates (aligned to the level's size). Called after the
	 * store, with the entry's page-table lock held (pte/pmd lock, or
	 * mm->page_table_lock for PUDs). */
	void (*set_entry)(void *ctx, struct dax_mm *mm, uint64_t addr, enum dax_pgtable_level level,
			  uint64_t old_entry, uint64_t new_entry);
	/* flush_tlb_range: translations of [start, end) changed by the entries
	 * reported before may no longer be used. `level` is the smallest level
	 * of the entries flushed (the stride). Called before the references the
	 * old entries held are dropped; no page-table lock need be held. */
	void (*flush_tlb_range)(void *ctx, struct dax_mm *mm, uint64_t start, uint64_t end,
				enum dax_pgtable_level level);
};

/* mmu notifiers (include/linux/mmu_notifier.h): a secondary MMU (a device
 * that mirrors the page tables) hears every invalidation of a range of
 * this address space, with the reason (event) and who caused it (owner),
 * before and after the change. */
enum dax_mmu_notifier_event {
	DAX_MMU_NOTIFY_UNMAP = 0,
	DAX_MMU_NOTIFY_CLEAR,
	DAX_MMU_NOTIFY_PROTECTION_VMA,
	DAX_MMU_NOTIFY_PROTECTION_PAGE,
	DAX_MMU_NOTIFY_SOFT_DIRTY,
	DAX_MMU_NOTIFY_RELEASE,
	DAX_MMU_NOTIFY_MIGRATE,
	DAX_MMU_NOTIFY_EXCLUSIVE,
};
#define DAX_MMU_NOTIFIER_RANGE_BLOCKABLE 1u

struct dax_mmu_notifier_range {
	struct dax_mm *mm;
	uint64_t start;
	uint64_t end;
	uint32_t flags;                /* DAX_MMU_NOTIFIER_RANGE_BLOCKABLE */
	uint32_t event;                /* enum dax_mmu_notifier_event */
	void *owner;                   /* mmu_notifier_range_init_owner's owner, or NULL */
};

/* struct mmu_notifier_ops, the parts the port raises. Every callback is
 * optional. They run on the fault, zap and GUP paths, possibly in a signal
 * handler and possibly with mmap_lock held: they must be async-signal-safe,
 * must not allocate through the MM and must not call back into it.
 * invalidate_range_start returns 0 or, for a non-blockable range only,
 * -EAGAIN. */
struct dax_mmu_notifier_ops {
	void (*release)(void *ctx, struct dax_mm *mm);
	int (*invalidate_range_start)(void *ctx, const struct dax_mmu_notifier_range *range);
	void (*invalidate_range_end)(void *ctx, const struct dax_mmu_notifier_range *range);
};

#define DAX_MMU_NOTIFIERS 8
struct dax_mmu_subscription {
	const struct dax_mmu_notifier_ops *ops;
	void *ctx;
};

struct dax_mm {
	struct dax_kernel *kernel;
	uint64_t *pgd;                 /* top-level table */
	struct dax_rwsem mmap_lock;
	uint32_t page_table_lock;      /* protects PUD-level entries (pud_lock) */
	uint32_t _pad;
	int64_t pgtables_bytes;
	/* VMAs sorted by vm_start; mutated only under mmap_lock for write. */
	struct dax_vma **vmas;
	int64_t nr_vmas;
	int64_t vmas_cap;
	uint64_t id;
	/* The arch hook (NULL: none; entries are plain stores). Read with
	 * dax_mm_arch_ops; changed only by MM.setArchHook, which publishes
	 * arch_ctx before arch and, on removal, waits for arch_users (callers
	 * inside a hook call) to drop to 0. */
	const struct dax_arch_ops *arch;
	void *arch_ctx;
	int64_t arch_users;
	/* mmu notifier subscriptions (mm->notifier_subscriptions): slot i is
	 * live while bit i of notifier_mask is set; a slot is filled before its
	 * bit is published (release) and reused only after the unregister saw
	 * notifier_users drain (callers inside a callback). Changed under
	 * mmap_lock for write. */
	uint32_t notifier_mask;
	/* MMF_HAS_PINNED: a FOLL_PIN was taken in this mm once (fork then
	 * copies maybe-pinned anon pages instead of sharing them). */
	uint32_t has_pinned;
	int64_t notifier_users;
	struct dax_mmu_subscription notifiers[DAX_MMU_NOTIFIERS];
	/* rss counters (mm->rss_stat, percpu counters), item enum dax_mm_counter */
	struct dax_pcpu_counters rss;
};


/* Field addresses for Swift. Taking `&p.pointee.field` in Swift is an inout
 * access the thread sanitizer reports as a race when two threads update the
 * same atomic field; these return the address without one. */
DAX_MM_INLINE uint64_t *dax_page_flags(struct dax_page *p) { return &p->flags; }
DAX_MM_INLINE int32_t *dax_page_refcount(struct dax_page *p) { return &p->refcount; }
DAX_MM_INLINE int32_t *dax_page_mapcount(struct dax_page *p) { return &p->mapcount; }
DAX_MM_INLINE uint64_t *dax_page_compound_head(struct dax_page *p) { return &p->compound_head; }
DAX_MM_INLINE int32_t *dax_page_large_mapcount(struct dax_page *p) { return &p->large_mapcount; }
DAX_MM_INLINE int32_t *dax_page_entire_mapcount(struct dax_page *p) { return &p->entire_mapcount; }
DAX_MM_INLINE int32_t *dax_page_pincount(struct dax_page *p) { return &p->pincount; }
DAX_MM_INLINE int32_t *dax_page_nr_pages_mapped(struct dax_page *p) { return &p->nr_pages_mapped; }
DAX_MM_INLINE uint32_t *dax_kernel_section_lock(struct dax_kernel *p) { return &p->section_lock; }
DAX_MM_INLINE struct dax_deferred_range *dax_kernel_deferred(struct dax_kernel *p) { return &p->deferred[0]; }
DAX_MM_INLINE int64_t *dax_kernel_nr_sections_present(struct dax_kernel *p) { return &p->nr_sections_present; }
DAX_MM_INLINE int64_t *dax_kernel_nr_sections_deferred(struct dax_kernel *p) { return &p->nr_sections_deferred; }
/* A section's state: an acquire load (a plain byte load on x86-64), paired
 * with the release store that publishes an initialised section. */
DAX_MM_INLINE uint8_t dax_section_state(const struct dax_kernel *p, uint64_t nr)
{
	return __atomic_load_n(&p->section_present[nr], __ATOMIC_ACQUIRE);
}
DAX_MM_INLINE void dax_section_set_state(struct dax_kernel *p, uint64_t nr, uint8_t state)
{
	__atomic_store_n(&p->section_present[nr], state, __ATOMIC_RELEASE);
}
/*
 * Word-at-a-time scans and fills of the section state bytes [s, end), for
 * binding and unbinding large ranges (a TiB is 8192 sections; byte by byte
 * the scans cost more than the system calls of a bind). Each word is read
 * with an acquire load and written with a release store of eight states;
 * on x86-64 these are plain moves, and a concurrent reader of one byte
 * (dax_section_state) sees either the old or the new state of that byte,
 * as with the byte-wise stores. Writers hold section_lock.
 */
#define DAX_BYTES_ONES 0x0101010101010101ull
#define DAX_BYTES_LOW7 0x7f7f7f7f7f7f7f7full

/* One bit (the byte's top bit) per byte of x that is zero; exact per byte
 * (no borrow between bytes). */
DAX_MM_INLINE uint64_t dax_zero_bytes(uint64_t x)
{
	return ~(((x & DAX_BYTES_LOW7) + DAX_BYTES_LOW7) | x | DAX_BYTES_LOW7);
}

/* The first section in [s, end) whose state is (eq) or is not (!eq) v; end if none. */
DAX_MM_INLINE uint64_t dax_sections_find(const struct dax_kernel *k, uint64_t s, uint64_t end, uint8_t v, bool eq)
{
	const uint8_t *b = k->section_present;
	uint64_t pat = DAX_BYTES_ONES * v;
	while (s < end && (s & 7)) {
		if ((__atomic_load_n(&b[s], __ATOMIC_ACQUIRE) == v) == eq)
			return s;
		s++;
	}
	while (s + 8 <= end) {
		uint64_t z = dax_zero_bytes(__atomic_load_n((const uint64_t *)(b + s), __ATOMIC_ACQUIRE) ^ pat);
		uint64_t hit = eq ? z : (~z & (DAX_BYTES_ONES << 7));
		if (hit)
			return s + (uint64_t)(__builtin_ctzll(hit) >> 3);
		s += 8;
	}
	while (s < end) {
		if ((__atomic_load_n(&b[s], __ATOMIC_ACQUIRE) == v) == eq)
			return s;
		s++;
	}
	return end;
}

/* How many sections in [s, end) have state v. */
DAX_MM_INLINE uint64_t dax_sections_count(const struct dax_kernel *k, uint64_t s, uint64_t end, uint8_t v)
{
	const uint8_t *b = k->section_present;
	uint64_t pat = DAX_BYTES_ONES * v, n = 0;
	while (s < end && (s & 7))
		n += __atomic_load_n(&b[s++], __ATOMIC_ACQUIRE) == v;
	for (; s + 8 <= end; s += 8)
		n += (uint64_t)__builtin_popcountll(dax_zero_bytes(__atomic_load_n((const uint64_t *)(b + s), __ATOMIC_ACQUIRE) ^ pat));
	while (s < end)
		n += __atomic_load_n(&b[s++], __ATOMIC_ACQUIRE) == v;
	return n;
}

/* Sets the state of sections [s, end) to v (release stores). */
DAX_MM_INLINE void dax_sections_fill(struct dax_kernel *k, uint64_t s, uint64_t end, uint8_t v)
{
	uint8_t *b = k->section_present;
	while (s < end && (s & 7))
		__atomic_store_n(&b[s++], v, __ATOMIC_RELEASE);
	for (; s + 8 <= end; s += 8)
		__atomic_store_n((uint64_t *)(b + s), DAX_BYTES_ONES * v, __ATOMIC_RELEASE);
	while (s < end)
		__atomic_store_n(&b[s++], v, __ATOMIC_RELEASE);
}

DAX_MM_INLINE int64_t *dax_kernel_pt_in_use(struct dax_kernel *p) { return &p->pt_in_use; }
DAX_MM_INLINE uint64_t *dax_kernel_pt_free(struct dax_kernel *p) { return &p->pt_free; }
DAX_MM_INLINE struct dax_pcpu_counters *dax_kernel_stats(struct dax_kernel *p) { return &p->stats; }
DAX_MM_INLINE struct dax_page_report *dax_kernel_reports(struct dax_kernel *p) { return &p->reports[0]; }
DAX_MM_INLINE uint32_t *dax_kernel_wait_table(struct dax_kernel *p) { return &p->wait_table[0]; }
DAX_MM_INLINE uint32_t *dax_kernel_wait_sleepers(struct dax_kernel *p) { return &p->wait_sleepers[0]; }
DAX_MM_INLINE int64_t *dax_kernel_report_seq(struct dax_kernel *p) { return &p->report_seq; }
DAX_MM_INLINE int64_t *dax_kernel_report_lost(struct dax_kernel *p) { return &p->report_lost; }
DAX_MM_INLINE int64_t *dax_kernel_pt_next(struct dax_kernel *p) { return &p->pt_next; }
DAX_MM_INLINE struct dax_rwsem *dax_mm_mmap_lock(struct dax_mm *p) { return &p->mmap_lock; }
DAX_MM_INLINE struct dax_rwsem *dax_file_i_mmap_rwsem(struct dax_file *p) { return &p->i_mmap_rwsem; }
DAX_MM_INLINE int64_t *dax_mm_pgtables_bytes(struct dax_mm *p) { return &p->pgtables_bytes; }
DAX_MM_INLINE struct dax_pcpu_counters *dax_mm_rss(struct dax_mm *p) { return &p->rss; }
DAX_MM_INLINE uint32_t *dax_mm_page_table_lock(struct dax_mm *p) { return &p->page_table_lock; }
DAX_MM_INLINE const struct dax_arch_ops *dax_mm_arch_ops(struct dax_mm *p) { return __atomic_load_n(&p->arch, __ATOMIC_ACQUIRE); }
DAX_MM_INLINE void dax_mm_set_arch_ops(struct dax_mm *p, const struct dax_arch_ops *ops) { __atomic_store_n(&p->arch, ops, __ATOMIC_SEQ_CST); }
DAX_MM_INLINE int64_t *dax_mm_arch_users(struct dax_mm *p) { return &p->arch_users; }
DAX_MM_INLINE uint32_t *dax_mm_notifier_mask(struct dax_mm *p) { return &p->notifier_mask; }
DAX_MM_INLINE uint32_t *dax_mm_has_pinned(struct dax_mm *p) { return &p->has_pinned; }
DAX_MM_INLINE int64_t *dax_mm_notifier_users(struct dax_mm *p) { return &p->notifier_users; }
DAX_MM_INLINE struct dax_mmu_subscription *dax_mm_notifiers(struct dax_mm *p) { return &p->notifiers[0]; }
DAX_MM_INLINE struct dax_rwsem *dax_anon_vma_rwsem(struct dax_anon_vma *p) { return &p->rwsem; }
/* vma->anon_vma as a word, for the acquire load / release store of its
 * publication by anon_vma_prepare. */
DAX_MM_INLINE uint64_t *dax_vma_anon_vma_word(struct dax_vma *v) { return (uint64_t *)(void *)&v->anon_vma; }
DAX_MM_INLINE uint32_t *dax_ram_lock(struct dax_ram *p) { return &p->lock; }
DAX_MM_INLINE struct dax_free_area *dax_ram_free_area(struct dax_ram *p) { return &p->free_area[0]; }
DAX_MM_INLINE int64_t *dax_ram_nr_free(struct dax_ram *p) { return &p->nr_free; }
DAX_MM_INLINE int64_t *dax_ram_nr_allocated(struct dax_ram *p) { return &p->nr_allocated; }
DAX_MM_INLINE struct dax_direct_map *dax_kernel_direct_map(struct dax_kernel *p) { return &p->direct_map[0]; }
DAX_MM_INLINE uint32_t *dax_kernel_direct_map_lock(struct dax_kernel *p) { return &p->direct_map_lock; }
DAX_MM_INLINE uint8_t *dax_load_ptr_u8(uint8_t *const *p) { return __atomic_load_n(p, __ATOMIC_ACQUIRE); }
DAX_MM_INLINE void dax_store_ptr_u8(uint8_t **p, uint8_t *v) { __atomic_store_n(p, v, __ATOMIC_RELEASE); }
DAX_MM_INLINE int64_t *dax_pgmap_ref(struct dax_pgmap *p) { return &p->ref; }
DAX_MM_INLINE int64_t *dax_pgmap_lookups(struct dax_pgmap *p) { return &p->lookups; }
DAX_MM_INLINE uint32_t *dax_pgmap_done(struct dax_pgmap *p) { return &p->done; }
DAX_MM_INLINE uint32_t *dax_pgmap_dead(struct dax_pgmap *p) { return &p->dead; }
DAX_MM_INLINE uint64_t *dax_page_report_seq(struct dax_page_report *p) { return &p->seq; }

#endif /* DAX_MM_H */
