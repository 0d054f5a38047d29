/* Out-of-line helpers for CDaxSys.h. */
#define _GNU_SOURCE
#include "CDaxSys.h"
#ifdef __linux__
#include <sys/syscall.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sched.h>
#include <sys/resource.h>

_Static_assert(MAP_SHARED_VALIDATE == 0x03, "MAP_SHARED_VALIDATE value");
_Static_assert(MAP_SYNC == 0x80000, "MAP_SYNC value");
_Static_assert(O_DIRECT == 040000, "O_DIRECT value");
_Static_assert(RUSAGE_THREAD == 1, "RUSAGE_THREAD value");
_Static_assert(MREMAP_MAYMOVE == 1 && MREMAP_FIXED == 2, "MREMAP_* values");

int dax_memfd_create(const char *name, unsigned int flags)
{
	return (int)syscall(SYS_memfd_create, name, flags);
}

void *dax_mremap_fixed(void *old_address, size_t old_size, size_t new_size, void *new_address)
{
	return mremap(old_address, old_size, new_size, MREMAP_MAYMOVE | MREMAP_FIXED, new_address);
}

int dax_errno(void)
{
	return errno;
}

int dax_stat(const char *path, struct stat *st) { return stat(path, st); }
unsigned int dax_dev_major(dev_t dev) { return major(dev); }
unsigned int dax_dev_minor(dev_t dev) { return minor(dev); }
int dax_sched_getcpu(void) { return sched_getcpu(); }

void *dax_mremap(void *old_address, size_t old_size, size_t new_size, int flags, void *new_address)
{
	return mremap(old_address, old_size, new_size, flags, new_address);
}

uint8_t dax_touch_read(const void *p) { return *(const volatile uint8_t *)p; }
void dax_touch_write(void *p)
{
#if defined(__x86_64__)
	__asm__ volatile("lock; addb $0, %0" : "+m"(*(volatile uint8_t *)p) : : "memory");
#else
	__atomic_fetch_add((uint8_t *)p, 0, __ATOMIC_SEQ_CST);
#endif
}
#endif /* __linux__ */
