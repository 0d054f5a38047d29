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

static void rwsem_wait(struct dax_rwsem *s, uint32_t seq)
{
	__atomic_add_fetch(&s->waiters, 1, __ATOMIC_SEQ_CST);
	dax_futex_wait(&s->seq, seq, 1000000);   /* 1 ms cap: recheck */
	__atomic_sub_fetch(&s->waiters, 1, __ATOMIC_SEQ_CST);
}

/* Bump the sequence (so a sleeper that read the old one does not sleep) and
 * wake sleepers, if any: the uncontended release makes no system call. */
static void rwsem_release(struct dax_rwsem *s)
{
	__atomic_add_fetch(&s->seq, 1, __ATOMIC_SEQ_CST);
	if (__atomic_load_n(&s->waiters, __ATOMIC_SEQ_CST))
		dax_futex_wake(&s->seq, INT_MAX);
}

bool dax_down_read_trylock(struct dax_rwsem *s)
{
	int32_t c = __atomic_load_n(&s->count, __ATOMIC_RELAXED);
	while (c >= 0) {
		if (__atomic_compare_exchange_n(&s->count, &c, c + 1, true, __ATOMIC_ACQUIRE, __ATOMIC_RELAXED))
			return true;
	}
	return false;
}

void dax_down_read(struct dax_rwsem *s)
{
	for (unsigned spins = 0;; spins++) {
		uint32_t seq = __atomic_load_n(&s->seq, __ATOMIC_ACQUIRE);
		if (dax_down_read_trylock(s))
			return;
		if (spins < 64)
			dax_cpu_relax();
		else
			rwsem_wait(s, seq);
	}
}

void dax_up_read(struct dax_rwsem *s)
{
	if (__atomic_sub_fetch(&s->count, 1, __ATOMIC_RELEASE) == 0)
		rwsem_release(s);
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
	int32_t z = 0;
	if (!__atomic_compare_exchange_n(&s->count, &z, -1, false, __ATOMIC_ACQUIRE, __ATOMIC_RELAXED))
		return false;
	__atomic_store_n(&s->owner, dax_current_tid(), __ATOMIC_RELAXED);
	return true;
}

void dax_down_write(struct dax_rwsem *s)
{
	for (unsigned spins = 0;; spins++) {
		uint32_t seq = __atomic_load_n(&s->seq, __ATOMIC_ACQUIRE);
		if (dax_down_write_trylock(s))
			return;
		if (spins < 64)
			dax_cpu_relax();
		else
			rwsem_wait(s, seq);
	}
}

void dax_up_write(struct dax_rwsem *s)
{
	__atomic_store_n(&s->owner, 0, __ATOMIC_RELAXED);
	__atomic_store_n(&s->count, 0, __ATOMIC_RELEASE);
	rwsem_release(s);
}

void dax_downgrade_write(struct dax_rwsem *s)
{
	__atomic_store_n(&s->owner, 0, __ATOMIC_RELAXED);
	__atomic_store_n(&s->count, 1, __ATOMIC_RELEASE);
	rwsem_release(s);
}
