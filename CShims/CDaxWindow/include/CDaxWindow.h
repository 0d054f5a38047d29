/*
 * CDaxWindow: the "MMU" under the port when it runs over real memory.
 *
 * A managed window is host address space reserved PROT_NONE. A CPU access
 * to it raises SIGSEGV; the handler (dax_window.c) finds the window, takes
 * the port's mmap_lock for read and calls the port's fault entry (a Swift
 * function, DAXRuntime's handle_mm_fault wrapper). Every leaf entry the
 * port changes reaches dax_mirror_set_entry through the MM's arch hook,
 * which maps, re-protects or unmaps the same extent of the real device at
 * the same address. The access then retries and lands on device memory.
 *
 * Signal-safety contract (everything reachable from the handler):
 *   - no allocation: every record here is allocated before a window is
 *     published, the report ring is a fixed array;
 *   - no lock the interrupted thread may hold: the handler takes only the
 *     port's mmap_lock for read (refused, and reported, when the same thread
 *     holds it for write) and the port's page-table spinlocks, which the
 *     port never holds while it touches window memory;
 *   - errno is saved on entry and restored on return;
 *   - system calls only (mmap, mprotect, sigaction, write, clock_gettime).
 * The header does not define _GNU_SOURCE (the Swift importer breaks on it).
 */
#ifndef CDAXWINDOW_H
#define CDAXWINDOW_H

#include "CDaxMM.h"
#include <signal.h>
#include <stdint.h>
#include <stdbool.h>

#define DAX_WIN_MAX_RANGES 16
#define DAX_WIN_MAX_WINDOWS 32
#define DAX_WIN_RING 4096
#define DAX_WIN_REPEAT_LIMIT 64

/* Physical [phys_start, phys_end) is device file offset file_offset on. */
struct dax_host_range {
	uint64_t phys_start;
	uint64_t phys_end;
	uint64_t file_offset;
};

/* Counters indexed by level: 0 = PTE, 1 = PMD, 2 = PUD. */
struct dax_mirror_stats {
	int64_t maps[3];        /* extents mapped from the device */
	int64_t zero_maps[3];   /* extents mapped from the zero page */
	int64_t ram_maps[3];    /* extents mapped from the port's ordinary memory */
	int64_t protects[3];    /* write permission changed in place */
	int64_t unmaps[3];      /* extents returned to PROT_NONE */
	int64_t flushes;
	int64_t errors;
	int64_t nanos;          /* time in host mmap/mprotect calls */
};

/*
 * The host side of one port MM: the device file and how its physical
 * ranges sit in it. Installed as the MM's arch hook context.
 */
struct dax_host_mirror {
	int32_t fd;              /* the device (or the emulated device's memfd) */
	int32_t zero_fd;         /* a file of zeroes: the shared zero page */
	uint64_t zero_size;      /* its size (a PMD) */
	uint32_t nr_range;
	int32_t ram_fd;          /* the port's page allocator memfd (-1: none) */
	struct dax_host_range ranges[DAX_WIN_MAX_RANGES];
	/* The port's ordinary memory [ram_phys_start, ram_phys_end) lives at
	 * offset 0 of ram_fd; the huge zero folio's pfns map the zero file. */
	uint64_t ram_phys_start;
	uint64_t ram_phys_end;
	uint64_t huge_zero_phys;     /* 0: none */
	struct dax_mirror_stats stats;
	/* Set by a failed host call, read by the fault handler after the port
	 * returns (so a fault whose mirror failed is reported, not retried). */
	int32_t last_error;
	uint32_t last_error_tid;
};

/* One window: [base, base + len) of host address space, mapped in the
 * port's `mm` at the same addresses. */
struct dax_window {
	uint64_t base;
	uint64_t len;            /* published last (release); 0 = free slot */
	struct dax_mm *mm;
	struct dax_host_mirror *mirror;
	/* Statistics, atomics. */
	int64_t faults;          /* SIGSEGVs served */
	int64_t write_faults;
	int64_t port_nanos;      /* time inside the port's fault entry */
	int64_t handler_nanos;   /* time inside the handler */
	int64_t refused;         /* faults refused (lock held, repeat, error) */
	int64_t sigbus;          /* VM_FAULT_SIGBUS from the port, or a host SIGBUS */
	int64_t sigsegv;         /* VM_FAULT_SIGSEGV from the port */
};

/* The port's fault entry: handle_mm_fault for `addr` with mmap_lock held
 * for read by the caller; returns VM_FAULT_* bits. */
typedef uint32_t (*dax_window_fault_fn)(struct dax_mm *mm, uint64_t addr, uint32_t flags);

/* Report kinds. */
enum dax_win_report_kind {
	DAX_WIN_REPORT_NONE = 0,
	DAX_WIN_REPORT_PORT_SIGBUS = 1,     /* the port returned VM_FAULT_SIGBUS */
	DAX_WIN_REPORT_PORT_SIGSEGV = 2,    /* the port returned VM_FAULT_SIGSEGV */
	DAX_WIN_REPORT_PORT_OTHER = 3,      /* OOM, HWPOISON, or unknown bits (value) */
	DAX_WIN_REPORT_HOST_SIGBUS = 4,     /* the device failed under a mapped extent */
	DAX_WIN_REPORT_MIRROR_FAILED = 5,   /* mmap/mprotect failed (err = errno) */
	DAX_WIN_REPORT_LOCK_HELD = 6,       /* fault while holding mmap_lock for write */
	DAX_WIN_REPORT_REPEAT = 7,          /* the same address faulted again and again */
	DAX_WIN_REPORT_BAD_ENTRY = 8,       /* an entry whose pfn is outside the device */
};

struct dax_win_report {
	uint64_t seq;            /* written last: 0 while the slot is being filled */
	int32_t kind;
	int32_t err;             /* errno, or VM_FAULT_* bits for PORT_OTHER */
	int32_t sig;
	int32_t level;
	uint64_t addr;
	uint64_t value;          /* entry, pfn or extra detail */
	uint32_t tid;
	uint32_t _pad;
};

/* ---- windows -------------------------------------------------------- */

/* Installs the SIGSEGV and SIGBUS handlers once (SA_SIGINFO|SA_ONSTACK),
 * saving the previous actions for chaining; `fault` is the port's entry.
 * Returns 0 or -errno. */
int dax_window_install(dax_window_fault_fn fault);
/* Publishes a window in a free slot; returns the slot or NULL when full. */
struct dax_window *dax_window_publish(uint64_t base, uint64_t len, struct dax_mm *mm,
				      struct dax_host_mirror *mirror);
/* Unpublishes; faults in it then take the previous handler. */
void dax_window_unpublish(struct dax_window *w);
/* The window holding addr, or NULL. */
struct dax_window *dax_window_find(uint64_t addr);

/* Gives the calling thread an alternate signal stack (64 KiB, mmapped once
 * per thread, kept for the thread's life). Returns 0 or -errno. */
int dax_window_thread_init(void);

/* ---- the arch hook --------------------------------------------------- */

/* struct dax_arch_ops whose context is a struct dax_host_mirror. */
extern const struct dax_arch_ops dax_mirror_ops;
/* Its address, for Swift (which cannot take a stable address of a C global). */
const struct dax_arch_ops *dax_mirror_ops_ptr(void);

/* ---- guarded access -------------------------------------------------- */

struct dax_access_result {
	int32_t sig;             /* 0, or the signal the access raised */
	int32_t code;            /* its si_code */
	uint64_t addr;           /* its si_addr */
	uint64_t value;          /* what a read returned */
};

/* Reads (write == false) or writes the 8-byte word at p. A SIGSEGV or
 * SIGBUS that the kernel or the port would deliver for this access is
 * caught and returned instead of killing the process. */
void dax_guarded_access(volatile uint64_t *p, bool write, uint64_t value, struct dax_access_result *out);
/* Writes `value` into every 8-byte word of [p, p + bytes) (or checks that
 * every word equals it when write is false); stops at the first signal.
 * `out->value` is the number of mismatching words of a read. */
void dax_guarded_fill(volatile uint64_t *p, uint64_t bytes, bool write, uint64_t value,
		      struct dax_access_result *out);

/* ---- reports --------------------------------------------------------- */

/* Copies the next unread report into *out; false when none. Reports that
 * were overwritten before being read are counted in dax_window_reports_lost. */
bool dax_window_next_report(struct dax_win_report *out);
int64_t dax_window_reports_lost(void);
/* Records a report (also usable from normal code). */
void dax_window_report(int32_t kind, int32_t err, int32_t sig, int32_t level, uint64_t addr, uint64_t value);

/* Writes a fixed message to stderr with write(2) (async-signal-safe). */
void dax_window_say(const char *msg, uint64_t addr);

/* ---- helpers for Swift ----------------------------------------------- */
int64_t dax_window_stat(const int64_t *p);
/* A per-page "written" byte shared by worker threads. */
static inline void dax_win_mark(uint8_t *p) { __atomic_store_n(p, 1, __ATOMIC_RELEASE); }
static inline bool dax_win_marked(const uint8_t *p) { return __atomic_load_n(p, __ATOMIC_ACQUIRE) != 0; }
/* Window faults the calling thread has taken (served or not). */
uint64_t dax_window_thread_faults(void);
int dax_window_memfd(const char *name, uint64_t size);

#endif /* CDAXWINDOW_H */
