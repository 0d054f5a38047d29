/* Out-of-line helpers for CDaxSys.h. */
#define _GNU_SOURCE
#include "CDaxSys.h"
#ifdef __linux__
#include <sys/syscall.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sched.h>

_Static_assert(MAP_SHARED_VALIDATE == 0x03, "MAP_SHARED_VALIDATE value");
_Static_assert(MAP_SYNC == 0x80000, "MAP_SYNC value");

int dax_memfd_create(const char *name, unsigned int flags)
{
	return (int)syscall(SYS_memfd_create, name, flags);
}

int dax_errno(void)
{
	return errno;
}

int dax_stat(const char *path, struct stat *st) { return stat(path, st); }
unsigned int dax_dev_major(dev_t dev) { return major(dev); }
unsigned int dax_dev_minor(dev_t dev) { return minor(dev); }
int dax_sched_getcpu(void) { return sched_getcpu(); }
#endif /* __linux__ */
