/* Futex-backed waiting for the port's locks and wait queues. Nothing here
 * allocates, and every call is async-signal-safe (raw syscalls, atomics). */
#define _GNU_SOURCE
#include "CDaxMM.h"
#include <errno.h>
#include <sched.h>

int dax_futex_wait(uint32_t *word, uint32_t val, int64_t timeout_ns)
{
	struct timespec ts, *tsp = NULL;
	if (timeout_ns >= 0) {
		ts.tv_sec = timeout_ns / 1000000000;
		ts.tv_nsec = timeout_ns % 1000000000;
		tsp = &ts;
	}
	long rc = syscall(SYS_futex, word, FUTEX_WAIT_PRIVATE, val, tsp, NULL, 0);
	if (rc == 0)
		return 0;
	if (errno == ETIMEDOUT)
		return -ETIMEDOUT;
	return 0;   /* EAGAIN (value changed) or EINTR: let the caller recheck */
}

void dax_futex_wake(uint32_t *word, int nr)
{
	syscall(SYS_futex, word, FUTEX_WAKE_PRIVATE, nr, NULL, NULL, 0);
}

void dax_spin_lock_slow(uint32_t *l)
{
	for (unsigned spins = 0;; spins++) {
		while (__atomic_load_n(l, __ATOMIC_RELAXED)) {
			if (spins++ < 128)
				dax_cpu_relax();
			else
				sched_yield();
		}
		if (dax_spin_trylock(l))
			return;
	}
}

__thread int32_t dax_slot_tls __attribute__((tls_model("initial-exec")));
static int32_t dax_slot_next;

/* The first per-slot use on a thread: the next free slot, or the shared
 * overflow slot once they are all taken. Slots are not recycled when a
 * thread exits (an exited thread's counts stay in its slot, where the sums
 * still see them). */
int32_t dax_slot_assign(void)
{
	int32_t n = __atomic_fetch_add(&dax_slot_next, 1, __ATOMIC_RELAXED);
	int32_t s = n < DAX_NR_SLOTS ? n : DAX_SLOT_OVERFLOW;
	dax_slot_tls = s + 1;
	return s;
}

static void rwsem_wait(struct dax_rwsem *s, uint32_t seq)
{
	/* waiters first, then (in the futex call) the recheck of seq: a
	 * release that bumped seq after our read either sees waiters > 0 and
	 * wakes us, or bumped it before the futex call compares it. */
	__atomic_add_fetch(&s->waiters, 1, __ATOMIC_SEQ_CST);
	dax_futex_wait(&s->seq, seq, 1000000);   /* 1 ms cap: recheck */
	__atomic_sub_fetch(&s->waiters, 1, __ATOMIC_SEQ_CST);
}

/* Bump the sequence (so a sleeper that read the old one does not sleep) and
 * wake sleepers, if any. */
static void rwsem_release(struct dax_rwsem *s)
{
	__atomic_add_fetch(&s->seq, 1, __ATOMIC_SEQ_CST);
	if (__atomic_load_n(&s->waiters, __ATOMIC_SEQ_CST))
		dax_futex_wake(&s->seq, INT_MAX);
}

static int64_t rwsem_readers(struct dax_rwsem *s)
{
	int64_t sum = 0;
	for (int i = 0; i <= DAX_NR_SLOTS; i++)
		sum += __atomic_load_n(&s->slot[i].readers, __ATOMIC_SEQ_CST);
	return sum;
}

/* A read release: the slot decrement (fully ordered, before the load of
 * `writer`: either the writer sees the decrement in its sum, or we see it
 * pending and wake it). */
static inline void rwsem_read_release(struct dax_rwsem *s, int32_t slot)
{
	(void)__atomic_sub_fetch(&s->slot[slot].readers, 1, __ATOMIC_SEQ_CST);
	if (__builtin_expect(__atomic_load_n(&s->writer, __ATOMIC_SEQ_CST) != 0, 0))
		rwsem_release(s);
}

static inline bool rwsem_down_read_trylock(struct dax_rwsem *s, int32_t slot)
{
	(void)__atomic_add_fetch(&s->slot[slot].readers, 1, __ATOMIC_SEQ_CST);
	if (__builtin_expect(__atomic_load_n(&s->writer, __ATOMIC_SEQ_CST) == 0, 1))
		return true;
	rwsem_read_release(s, slot);   /* back off; the writer may wait for us */
	return false;
}

bool dax_down_read_trylock(struct dax_rwsem *s)
{
	return rwsem_down_read_trylock(s, dax_this_slot());
}

/* The first reader in after a write release that handed off: writers may
 * go again. */
static void rwsem_reader_entered(struct dax_rwsem *s)
{
	__atomic_sub_fetch(&s->readers_waiting, 1, __ATOMIC_SEQ_CST);
	if (__atomic_load_n(&s->handoff, __ATOMIC_SEQ_CST)) {
		__atomic_store_n(&s->handoff, 0, __ATOMIC_SEQ_CST);
		rwsem_release(s);
	}
}

void dax_down_read_slot(struct dax_rwsem *s, int32_t slot)
{
	if (__builtin_expect(rwsem_down_read_trylock(s, slot), 1))
		return;
	/* A writer holds the lock or waits for readers to drain: count
	 * ourselves as waiting, so that its release hands the next turn to
	 * the readers (a writer re-taking the lock at once would otherwise
	 * starve them: the kernel's rwsem queues them and hands off too). */
	__atomic_add_fetch(&s->readers_waiting, 1, __ATOMIC_SEQ_CST);
	for (unsigned spins = 0;; spins++) {
		if (rwsem_down_read_trylock(s, slot)) {
			rwsem_reader_entered(s);
			return;
		}
		if (spins < 64) {
			dax_cpu_relax();
			continue;
		}
		/* seq after the attempt (whose back-off may have bumped it),
		 * then the recheck: a write release after the load changes seq
		 * and the futex call returns at once. */
		uint32_t seq = __atomic_load_n(&s->seq, __ATOMIC_SEQ_CST);
		if (__atomic_load_n(&s->writer, __ATOMIC_SEQ_CST) != 0)
			rwsem_wait(s, seq);
	}
}

void dax_down_read(struct dax_rwsem *s)
{
	dax_down_read_slot(s, dax_this_slot());
}

void dax_up_read_slot(struct dax_rwsem *s, int32_t slot)
{
	rwsem_read_release(s, slot);
}

void dax_up_read(struct dax_rwsem *s)
{
	rwsem_read_release(s, dax_this_slot());
}

uint32_t dax_current_tid(void)
{
	static __thread uint32_t tid;
	if (!tid)
		tid = (uint32_t)syscall(SYS_gettid);
	return tid;
}

bool dax_down_write_trylock(struct dax_rwsem *s)
{
	uint32_t z = 0;
	if (!__atomic_compare_exchange_n(&s->writer, &z, 1, false, __ATOMIC_SEQ_CST, __ATOMIC_RELAXED))
		return false;
	if (rwsem_readers(s) != 0) {
		__atomic_store_n(&s->writer, 0, __ATOMIC_SEQ_CST);
		rwsem_release(s);   /* readers that backed off meanwhile */
		return false;
	}
	__atomic_store_n(&s->owner, dax_current_tid(), __ATOMIC_RELAXED);
	return true;
}

/* A write release handed the turn to waiting readers (handoff): a writer
 * does not take the lock until one of them got in (it clears handoff and
 * wakes us), no reader waits any more, or 2 ms passed (the readers are
 * taken to be gone). Returns true when the writer may try. */
static bool rwsem_writer_may_go(struct dax_rwsem *s, int64_t *deadline)
{
	if (__builtin_expect(!__atomic_load_n(&s->handoff, __ATOMIC_SEQ_CST), 1))
		return true;
	if (!__atomic_load_n(&s->readers_waiting, __ATOMIC_SEQ_CST)) {
		__atomic_store_n(&s->handoff, 0, __ATOMIC_SEQ_CST);
		return true;
	}
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);   /* vDSO: async-signal-safe */
	int64_t now = (int64_t)t.tv_sec * 1000000000 + t.tv_nsec;
	if (*deadline == 0)
		*deadline = now + 2000000;
	if (now >= *deadline) {
		__atomic_store_n(&s->handoff, 0, __ATOMIC_SEQ_CST);
		return true;
	}
	uint32_t seq = __atomic_load_n(&s->seq, __ATOMIC_SEQ_CST);
	if (__atomic_load_n(&s->handoff, __ATOMIC_SEQ_CST))
		rwsem_wait(s, seq);
	return false;
}

void dax_down_write(struct dax_rwsem *s)
{
	int64_t deadline = 0;
	/* Exclude other writers, then wait for the readers to drain (new
	 * readers see `writer` and back off). */
	for (unsigned spins = 0;; spins++) {
		uint32_t z = 0;
		/* Checked before every attempt, so that a writer already waiting
		 * here when the handoff was made respects it too. */
		if (!rwsem_writer_may_go(s, &deadline))
			continue;
		if (__atomic_compare_exchange_n(&s->writer, &z, 1, false, __ATOMIC_SEQ_CST, __ATOMIC_RELAXED))
			break;
		if (spins < 64) {
			dax_cpu_relax();
			continue;
		}
		uint32_t seq = __atomic_load_n(&s->seq, __ATOMIC_SEQ_CST);
		if (__atomic_load_n(&s->writer, __ATOMIC_SEQ_CST) != 0)
			rwsem_wait(s, seq);
	}
	for (unsigned spins = 0;; spins++) {
		uint32_t seq = __atomic_load_n(&s->seq, __ATOMIC_SEQ_CST);
		if (rwsem_readers(s) == 0)
			break;
		if (spins < 64)
			dax_cpu_relax();
		else
			rwsem_wait(s, seq);
	}
	__atomic_store_n(&s->owner, dax_current_tid(), __ATOMIC_RELAXED);
}

void dax_up_write(struct dax_rwsem *s)
{
	__atomic_store_n(&s->owner, 0, __ATOMIC_RELAXED);
	if (__atomic_load_n(&s->readers_waiting, __ATOMIC_SEQ_CST))
		__atomic_store_n(&s->handoff, 1, __ATOMIC_SEQ_CST);
	__atomic_store_n(&s->writer, 0, __ATOMIC_SEQ_CST);
	rwsem_release(s);
}

void dax_downgrade_write(struct dax_rwsem *s)
{
	__atomic_store_n(&s->owner, 0, __ATOMIC_RELAXED);
	(void)__atomic_add_fetch(&s->slot[dax_this_slot()].readers, 1, __ATOMIC_SEQ_CST);
	__atomic_store_n(&s->writer, 0, __ATOMIC_SEQ_CST);
	rwsem_release(s);
}

int dax_mm_memfd_create(const char *name)
{
	int fd = (int)syscall(SYS_memfd_create, name, 1u /* MFD_CLOEXEC */);
	return fd < 0 ? -errno : fd;
}

int dax_punch_hole(int fd, int64_t offset, int64_t len)
{
	/* FALLOC_FL_KEEP_SIZE | FALLOC_FL_PUNCH_HOLE */
	return syscall(SYS_fallocate, fd, 0x01 | 0x02, (off_t)offset, (off_t)len) == 0 ? 0 : -errno;
}
