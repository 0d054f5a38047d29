/*
 * Managed windows: the SIGSEGV handler that serves CPU faults from the port,
 * the arch hook that mirrors the port's leaf entries onto host mappings of
 * the device, guarded accesses, and the report ring. See CDaxWindow.h for
 * the signal-safety contract; every function reachable from the handler
 * keeps it (no allocation, no stdio, no lock but the port's).
 */
#define _GNU_SOURCE
#include "CDaxWindow.h"
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <setjmp.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <time.h>
#include <ucontext.h>
#include <unistd.h>

/* ------------------------------------------------------------------ */
/* State                                                               */
/* ------------------------------------------------------------------ */

static struct dax_window windows[DAX_WIN_MAX_WINDOWS];
static struct sigaction prev_segv, prev_bus;
static dax_window_fault_fn port_fault;
static int installed;

static struct dax_win_report ring[DAX_WIN_RING];
static uint64_t ring_head;      /* next sequence number to write (from 1) */
static uint64_t ring_tail;      /* next sequence number to read */
static int64_t ring_lost;

struct thread_state {
	sigjmp_buf guard;
	volatile int guarded;
	uint64_t last_addr;
	uint32_t repeats;
	void *altstack;
	uint64_t faults;        /* window faults this thread took */
};
static __thread struct thread_state ts;

static inline int64_t now_ns(void)
{
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return (int64_t)t.tv_sec * 1000000000 + t.tv_nsec;
}

/* ------------------------------------------------------------------ */
/* Reports                                                             */
/* ------------------------------------------------------------------ */

void dax_window_report(int32_t kind, int32_t err, int32_t sig, int32_t level, uint64_t addr, uint64_t value)
{
	uint64_t seq = __atomic_add_fetch(&ring_head, 1, __ATOMIC_ACQ_REL);
	struct dax_win_report *r = &ring[seq % DAX_WIN_RING];
	__atomic_store_n(&r->seq, 0, __ATOMIC_RELEASE);
	r->kind = kind;
	r->err = err;
	r->sig = sig;
	r->level = level;
	r->addr = addr;
	r->value = value;
	r->tid = dax_current_tid();
	__atomic_store_n(&r->seq, seq, __ATOMIC_RELEASE);
}

bool dax_window_next_report(struct dax_win_report *out)
{
	for (;;) {
		uint64_t head = __atomic_load_n(&ring_head, __ATOMIC_ACQUIRE);
		uint64_t next = ring_tail + 1;
		if (next > head)
			return false;
		if (head - next >= DAX_WIN_RING) {
			/* Overwritten before being read. */
			uint64_t skip = head - next - DAX_WIN_RING + 1;
			__atomic_add_fetch(&ring_lost, (int64_t)skip, __ATOMIC_RELAXED);
			ring_tail += skip;
			continue;
		}
		struct dax_win_report *r = &ring[next % DAX_WIN_RING];
		/* Wait for a writer that reserved the slot to finish filling it. */
		for (int i = 0; __atomic_load_n(&r->seq, __ATOMIC_ACQUIRE) != next; i++) {
			if (i > 1000000)
				return false;
			dax_cpu_relax();
		}
		*out = *r;
		ring_tail = next;
		return true;
	}
}

int64_t dax_window_reports_lost(void)
{
	return __atomic_load_n(&ring_lost, __ATOMIC_RELAXED);
}

static size_t put_str(char *b, size_t n, const char *s)
{
	while (*s)
		b[n++] = *s++;
	return n;
}

static size_t put_hex(char *b, size_t n, uint64_t v)
{
	static const char d[] = "0123456789abcdef";
	char t[16];
	int i = 0;
	b[n++] = '0';
	b[n++] = 'x';
	do {
		t[i++] = d[v & 15];
		v >>= 4;
	} while (v);
	while (i)
		b[n++] = t[--i];
	return n;
}

void dax_window_say(const char *msg, uint64_t addr)
{
	char b[256];
	size_t n = put_str(b, 0, "daxmm: window: ");
	size_t m = strlen(msg);
	if (m > 180)
		m = 180;
	memcpy(b + n, msg, m);
	n += m;
	n = put_str(b, n, " at ");
	n = put_hex(b, n, addr);
	b[n++] = '\n';
	ssize_t rc = write(2, b, n);
	(void)rc;
}

/* ------------------------------------------------------------------ */
/* Windows                                                             */
/* ------------------------------------------------------------------ */

struct dax_window *dax_window_find(uint64_t addr)
{
	for (int i = 0; i < DAX_WIN_MAX_WINDOWS; i++) {
		struct dax_window *w = &windows[i];
		uint64_t len = __atomic_load_n(&w->len, __ATOMIC_ACQUIRE);
		if (len && addr >= w->base && addr - w->base < len)
			return w;
	}
	return NULL;
}

struct dax_window *dax_window_publish(uint64_t base, uint64_t len, struct dax_mm *mm,
				      struct dax_host_mirror *mirror)
{
	static uint32_t lock;
	dax_spin_lock(&lock);
	struct dax_window *slot = NULL;
	for (int i = 0; i < DAX_WIN_MAX_WINDOWS && !slot; i++)
		if (__atomic_load_n(&windows[i].len, __ATOMIC_ACQUIRE) == 0 && windows[i].mm == NULL)
			slot = &windows[i];
	if (slot) {
		memset(slot, 0, sizeof(*slot));
		slot->base = base;
		slot->mm = mm;
		slot->mirror = mirror;
		__atomic_store_n(&slot->len, len, __ATOMIC_RELEASE);
	}
	dax_spin_unlock(&lock);
	return slot;
}

void dax_window_unpublish(struct dax_window *w)
{
	__atomic_store_n(&w->len, 0, __ATOMIC_RELEASE);
	__atomic_store_n(&w->mm, NULL, __ATOMIC_RELEASE);
}

int dax_window_thread_init(void)
{
	if (ts.altstack)
		return 0;
	size_t size = 64 * 1024;
	void *p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (p == MAP_FAILED)
		return -errno;
	stack_t ss = { .ss_sp = p, .ss_size = size, .ss_flags = 0 };
	if (sigaltstack(&ss, NULL) != 0) {
		int e = errno;
		munmap(p, size);
		return -e;
	}
	ts.altstack = p;
	return 0;
}

/* ------------------------------------------------------------------ */
/* Chaining and delivery                                               */
/* ------------------------------------------------------------------ */

/* Passes a fault that is not the window's to whoever had the signal before
 * (the Swift runtime's backtracer, an application handler, or SIG_DFL). */
static void chain(int sig, siginfo_t *info, void *uc)
{
	struct sigaction *p = sig == SIGBUS ? &prev_bus : &prev_segv;
	if (p->sa_flags & SA_SIGINFO) {
		if (p->sa_sigaction) {
			p->sa_sigaction(sig, info, uc);
			return;
		}
	} else if (p->sa_handler != SIG_DFL && p->sa_handler != SIG_IGN) {
		p->sa_handler(sig);
		return;
	}
	/* SIG_DFL or SIG_IGN: restore the default. A kernel-generated fault
	 * re-executes and dies with its own siginfo; a sent one is re-raised. */
	struct sigaction dfl;
	memset(&dfl, 0, sizeof(dfl));
	dfl.sa_handler = SIG_DFL;
	sigaction(sig, &dfl, NULL);
	if (info->si_code <= 0 || sig == SIGBUS)
		raise(sig);
}

/* Delivers `sig` for a window access the port refused, as the kernel would
 * deliver it to the task: to the thread's guard if one is armed, else to the
 * previous handler with a siginfo describing the access. */
static void deliver(int sig, int code, uint64_t addr, siginfo_t *orig, void *uc)
{
	if (ts.guarded) {
		ts.guarded = 0;
		siglongjmp(ts.guard, (sig << 16) | (code & 0xffff));
	}
	siginfo_t info = *orig;
	info.si_signo = sig;
	info.si_code = code;
	info.si_addr = (void *)addr;
	if (sig == SIGSEGV) {
		chain(sig, &info, uc);
		return;
	}
	/* SIGBUS: raised from a SIGSEGV handler, so chain to the SIGBUS
	 * disposition directly. */
	chain(SIGBUS, &info, uc);
}

/* ------------------------------------------------------------------ */
/* The handler                                                         */
/* ------------------------------------------------------------------ */

/* The x86 page-fault error code of the interrupted access (REG_ERR). */
static inline uint64_t fault_error_code(void *uc)
{
	ucontext_t *u = uc;
	return (uint64_t)u->uc_mcontext.gregs[REG_ERR];
}

static void serve(struct dax_window *w, siginfo_t *info, void *uc)
{
	int64_t t0 = now_ns();
	uint64_t addr = (uint64_t)info->si_addr;
	bool write = fault_error_code(uc) & 2;
	ts.faults++;
	struct dax_mm *mm = __atomic_load_n(&w->mm, __ATOMIC_ACQUIRE);
	__atomic_add_fetch(&w->faults, 1, __ATOMIC_RELAXED);
	if (write)
		__atomic_add_fetch(&w->write_faults, 1, __ATOMIC_RELAXED);

	/* The same address again, with nothing changed: refuse rather than
	 * loop forever (a mirror that did not take, or a port that says done
	 * without mapping). */
	if (ts.last_addr == (addr & ~4095ull)) {
		if (++ts.repeats >= DAX_WIN_REPEAT_LIMIT) {
			ts.repeats = 0;
			__atomic_add_fetch(&w->refused, 1, __ATOMIC_RELAXED);
			dax_window_report(DAX_WIN_REPORT_REPEAT, 0, SIGSEGV, -1, addr, DAX_WIN_REPEAT_LIMIT);
			dax_window_say("the same page faulted repeatedly; giving up", addr);
			deliver(SIGSEGV, SEGV_ACCERR, addr, info, uc);
			return;
		}
	} else {
		ts.last_addr = addr & ~4095ull;
		ts.repeats = 0;
	}

	if (!mm || !port_fault) {
		deliver(SIGSEGV, SEGV_MAPERR, addr, info, uc);
		return;
	}
	struct dax_rwsem *lock = &mm->mmap_lock;
	if (dax_rwsem_write_owner(lock) == dax_current_tid()) {
		/* do_user_addr_fault would deadlock on mmap_read_lock here. */
		__atomic_add_fetch(&w->refused, 1, __ATOMIC_RELAXED);
		dax_window_report(DAX_WIN_REPORT_LOCK_HELD, EDEADLK, SIGSEGV, -1, addr, 0);
		dax_window_say("fault while this thread holds the port's mmap_lock for write; refused", addr);
		deliver(SIGSEGV, SEGV_ACCERR, addr, info, uc);
		return;
	}
	uint32_t flags = DAX_FAULT_FLAG_USER | DAX_FAULT_FLAG_ALLOW_RETRY | (write ? DAX_FAULT_FLAG_WRITE : 0);
	struct dax_host_mirror *mirror = w->mirror;
	uint32_t tid = dax_current_tid();
	uint32_t ret;
	int tries = 0;
	int64_t p0 = now_ns();
	do {
		dax_down_read(lock);
		ret = port_fault(mm, addr, flags);
		dax_up_read(lock);
	} while ((ret & DAX_VM_FAULT_RETRY) && ++tries < 16);
	__atomic_add_fetch(&w->port_nanos, now_ns() - p0, __ATOMIC_RELAXED);

	int mirror_err = 0;
	if (mirror && __atomic_load_n(&mirror->last_error_tid, __ATOMIC_ACQUIRE) == tid) {
		mirror_err = mirror->last_error;
		__atomic_store_n(&mirror->last_error_tid, 0, __ATOMIC_RELEASE);
	}
	if (ret & DAX_VM_FAULT_ERROR) {
		int sig = (ret & DAX_VM_FAULT_SIGSEGV) ? SIGSEGV : SIGBUS;
		int kind = (ret & DAX_VM_FAULT_SIGSEGV) ? DAX_WIN_REPORT_PORT_SIGSEGV
			 : (ret & DAX_VM_FAULT_SIGBUS) ? DAX_WIN_REPORT_PORT_SIGBUS : DAX_WIN_REPORT_PORT_OTHER;
		__atomic_add_fetch(sig == SIGSEGV ? &w->sigsegv : &w->sigbus, 1, __ATOMIC_RELAXED);
		dax_window_report(kind, (int32_t)ret, sig, -1, addr, write);
		__atomic_add_fetch(&w->handler_nanos, now_ns() - t0, __ATOMIC_RELAXED);
		int code = sig == SIGSEGV ? ((ret & DAX_VM_FAULT_SIGSEGV) && info->si_code == SEGV_ACCERR
					      ? SEGV_ACCERR : SEGV_MAPERR)
					  : BUS_ADRERR;
		if (ret & DAX_VM_FAULT_HWPOISON) {
			sig = SIGBUS;
			code = BUS_MCEERR_AR;
		}
		ts.last_addr = 0;
		deliver(sig, code, addr, info, uc);
		return;
	}
	if (mirror_err) {
		/* The port changed its tables but the host refused the mapping:
		 * retrying would fault forever. */
		__atomic_add_fetch(&w->refused, 1, __ATOMIC_RELAXED);
		dax_window_say("the host refused to map the extent the port inserted", addr);
		ts.last_addr = 0;
		deliver(mirror_err == ENXIO ? SIGBUS : SIGSEGV, mirror_err == ENXIO ? BUS_ADRERR : SEGV_ACCERR,
			addr, info, uc);
		return;
	}
	__atomic_add_fetch(&w->handler_nanos, now_ns() - t0, __ATOMIC_RELAXED);
}

static void on_signal(int sig, siginfo_t *info, void *uc)
{
	int saved = errno;
	uint64_t addr = (uint64_t)info->si_addr;
	struct dax_window *w = info->si_code > 0 ? dax_window_find(addr) : NULL;
	if (w && sig == SIGSEGV) {
		serve(w, info, uc);
	} else if (w && sig == SIGBUS) {
		/* The device failed under an extent that was mapped: the memory
		 * went away (namespace disabled or reconfigured). */
		__atomic_add_fetch(&w->sigbus, 1, __ATOMIC_RELAXED);
		dax_window_report(DAX_WIN_REPORT_HOST_SIGBUS, 0, SIGBUS, -1, addr, (uint64_t)info->si_code);
		if (ts.guarded) {
			ts.guarded = 0;
			siglongjmp(ts.guard, (SIGBUS << 16) | (info->si_code & 0xffff));
		}
		dax_window_say("SIGBUS from the device under a mapped extent", addr);
		chain(sig, info, uc);
	} else if (ts.guarded && info->si_code > 0) {
		/* A guarded access outside every window (an unmapped address). */
		ts.guarded = 0;
		siglongjmp(ts.guard, (sig << 16) | (info->si_code & 0xffff));
	} else {
		chain(sig, info, uc);
	}
	errno = saved;
}

int dax_window_install(dax_window_fault_fn fault)
{
	static uint32_t lock;
	dax_spin_lock(&lock);
	port_fault = fault;
	int rc = 0;
	if (!installed) {
		struct sigaction sa;
		memset(&sa, 0, sizeof(sa));
		sa.sa_sigaction = on_signal;
		sa.sa_flags = SA_SIGINFO | SA_ONSTACK;
		sigemptyset(&sa.sa_mask);
		if (sigaction(SIGSEGV, &sa, &prev_segv) != 0 || sigaction(SIGBUS, &sa, &prev_bus) != 0)
			rc = -errno;
		else
			installed = 1;
	}
	dax_spin_unlock(&lock);
	return rc;
}

/* ------------------------------------------------------------------ */
/* The arch hook: mirror leaf entries onto the host                    */
/* ------------------------------------------------------------------ */

#define E_PRESENT (1ull << 0)
#define E_RW (1ull << 1)
#define E_PFN 0x000ffffffffff000ull

static const uint64_t level_size[3] = { 1ull << 12, 1ull << 21, 1ull << 30 };

static void mirror_fail(struct dax_host_mirror *m, int err, int level, uint64_t addr, uint64_t entry)
{
	__atomic_add_fetch(&m->stats.errors, 1, __ATOMIC_RELAXED);
	m->last_error = err;
	__atomic_store_n(&m->last_error_tid, dax_current_tid(), __ATOMIC_RELEASE);
	dax_window_report(DAX_WIN_REPORT_MIRROR_FAILED, err, 0, level, addr, entry);
}

static bool file_offset(struct dax_host_mirror *m, uint64_t phys, uint64_t size, uint64_t *off)
{
	for (uint32_t i = 0; i < m->nr_range; i++) {
		struct dax_host_range *r = &m->ranges[i];
		if (phys >= r->phys_start && phys + size <= r->phys_end) {
			*off = r->file_offset + (phys - r->phys_start);
			return true;
		}
	}
	return false;
}

static void mirror_apply(struct dax_host_mirror *m, int lv, uint64_t size, void *p, uint64_t addr,
			 bool was, bool is, uint64_t old, uint64_t new);

static void mirror_set_entry(void *ctx, struct dax_mm *mm, uint64_t addr, enum dax_pgtable_level level,
			     uint64_t old, uint64_t new)
{
	(void)mm;
	struct dax_host_mirror *m = ctx;
	int lv = (int)level;
	uint64_t size = level_size[lv];
	void *p = (void *)addr;
	bool was = old & E_PRESENT, is = new & E_PRESENT;
	int saved = errno;
	int64_t t0 = now_ns();
	mirror_apply(m, lv, size, p, addr, was, is, old, new);
	__atomic_add_fetch(&m->stats.nanos, now_ns() - t0, __ATOMIC_RELAXED);
	errno = saved;
}

static void mirror_apply(struct dax_host_mirror *m, int lv, uint64_t size, void *p, uint64_t addr,
			 bool was, bool is, uint64_t old, uint64_t new)
{

	if (is) {
		int prot = PROT_READ | ((new & E_RW) ? PROT_WRITE : 0);
		uint64_t pfn = (new & E_PFN) >> 12;
		if (was && (old & E_PFN) == (new & E_PFN)) {
			/* Same extent: only the permission may have changed
			 * (mkwrite, wrprotect); young/dirty need nothing. */
			if ((old & E_RW) != (new & E_RW)) {
				if (mprotect(p, size, prot) != 0)
					mirror_fail(m, errno, lv, addr, new);
				else
					__atomic_add_fetch(&m->stats.protects[lv], 1, __ATOMIC_RELAXED);
			}
			return;
		}
		void *q;
		uint64_t phys = pfn << 12;
		bool huge_zero = m->huge_zero_phys != 0 && phys >= m->huge_zero_phys &&
				 phys + size <= m->huge_zero_phys + m->zero_size;
		if (pfn == 0 || huge_zero) {
			/* The shared zero page: read-only, never the device. */
			if (m->zero_fd < 0 || size > m->zero_size) {
				mirror_fail(m, EINVAL, lv, addr, new);
					return;
			}
			q = mmap(p, size, PROT_READ, MAP_SHARED | MAP_FIXED, m->zero_fd, 0);
			if (q == MAP_FAILED)
				mirror_fail(m, errno, lv, addr, new);
			else
				__atomic_add_fetch(&m->stats.zero_maps[lv], 1, __ATOMIC_RELAXED);
			return;
		}
		uint64_t off;
		if (m->ram_fd >= 0 && phys >= m->ram_phys_start && phys + size <= m->ram_phys_end) {
			/* An anon or copy-on-write page of the port's ordinary memory. */
			q = mmap(p, size, prot, MAP_SHARED | MAP_FIXED, m->ram_fd, (off_t)(phys - m->ram_phys_start));
			if (q == MAP_FAILED)
				mirror_fail(m, errno, lv, addr, new);
			else
				__atomic_add_fetch(&m->stats.ram_maps[lv], 1, __ATOMIC_RELAXED);
			return;
		}
		if (!file_offset(m, pfn << 12, size, &off)) {
			dax_window_report(DAX_WIN_REPORT_BAD_ENTRY, ERANGE, 0, lv, addr, new);
			mirror_fail(m, ERANGE, lv, addr, new);
			return;
		}
		q = mmap(p, size, prot, MAP_SHARED | MAP_FIXED, m->fd, (off_t)off);
		if (q == MAP_FAILED)
			mirror_fail(m, errno, lv, addr, new);
		else
			__atomic_add_fetch(&m->stats.maps[lv], 1, __ATOMIC_RELAXED);
	} else if (was) {
		/* Cleared (zap, PROT_NONE, split): back to the reservation. */
		void *q = mmap(p, size, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_FIXED, -1, 0);
		if (q == MAP_FAILED)
			mirror_fail(m, errno, lv, addr, old);
		else
			__atomic_add_fetch(&m->stats.unmaps[lv], 1, __ATOMIC_RELAXED);
	}
}

static void mirror_flush(void *ctx, struct dax_mm *mm, uint64_t start, uint64_t end, enum dax_pgtable_level level)
{
	(void)mm; (void)start; (void)end; (void)level;
	struct dax_host_mirror *m = ctx;
	/* The host's munmap/mmap already shot down its own TLB entries. */
	__atomic_add_fetch(&m->stats.flushes, 1, __ATOMIC_RELAXED);
}

const struct dax_arch_ops dax_mirror_ops = {
	.set_entry = mirror_set_entry,
	.flush_tlb_range = mirror_flush,
};

const struct dax_arch_ops *dax_mirror_ops_ptr(void)
{
	return &dax_mirror_ops;
}

/* ------------------------------------------------------------------ */
/* Guarded access                                                      */
/* ------------------------------------------------------------------ */

/* After a jump out of the handler: the signal being handled (SIGSEGV even
 * when SIGBUS was delivered for it) is still blocked, since the jump skipped
 * the handler's return. Unblock both. */
static void unblock(int sig)
{
	(void)sig;
	sigset_t s;
	sigemptyset(&s);
	sigaddset(&s, SIGSEGV);
	sigaddset(&s, SIGBUS);
	pthread_sigmask(SIG_UNBLOCK, &s, NULL);
}

void dax_guarded_fill(volatile uint64_t *p, uint64_t bytes, bool write, uint64_t value,
		      struct dax_access_result *out)
{
	out->sig = 0;
	out->code = 0;
	out->addr = 0;
	out->value = 0;
	int r = sigsetjmp(ts.guard, 0);
	if (r) {
		/* Arrived from the handler: the signal is still blocked (the
		 * jump skipped its return). */
		out->sig = r >> 16;
		out->code = r & 0xffff;
		unblock(out->sig);
		return;
	}
	ts.guarded = 1;
	uint64_t bad = 0;
	for (uint64_t i = 0; i < bytes / 8; i++) {
		out->addr = (uint64_t)(p + i);
		if (write)
			p[i] = value;
		else if (p[i] != value)
			bad++;
	}
	ts.guarded = 0;
	out->addr = 0;
	out->value = bad;
}

void dax_guarded_access(volatile uint64_t *p, bool write, uint64_t value, struct dax_access_result *out)
{
	out->sig = 0;
	out->code = 0;
	out->addr = (uint64_t)p;
	out->value = 0;
	int r = sigsetjmp(ts.guard, 0);
	if (r) {
		out->sig = r >> 16;
		out->code = r & 0xffff;
		unblock(out->sig);
		return;
	}
	ts.guarded = 1;
	if (write)
		*p = value;
	else
		out->value = *p;
	ts.guarded = 0;
}

/* ------------------------------------------------------------------ */
/* Helpers                                                             */
/* ------------------------------------------------------------------ */

uint64_t dax_window_thread_faults(void)
{
	return ts.faults;
}

int64_t dax_window_stat(const int64_t *p)
{
	return __atomic_load_n(p, __ATOMIC_RELAXED);
}

int dax_window_memfd(const char *name, uint64_t size)
{
	int fd = memfd_create(name, MFD_CLOEXEC);
	if (fd < 0)
		return -errno;
	if (ftruncate(fd, (off_t)size) != 0) {
		int e = errno;
		close(fd);
		return -e;
	}
	return fd;
}
