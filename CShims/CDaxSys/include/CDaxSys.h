/*
 * CDaxSys: the system side of daxmm (devices, the runtime, the CLI).
 *
 * Only what Swift cannot express or import lives here:
 *   - the system headers of libdaxctl, libndctl, libnuma and liburing;
 *   - getters for flags and ioctl numbers the importer cannot see;
 *   - a few out-of-line wrappers for calls Swift's Glibc import hides.
 *
 * The mm port's records are in CDaxMM, which links nothing.
 *
 * Include order matters (see the notes beside each include): glibc headers and
 * the kernel's <linux/io_uring.h> must come before <liburing.h>.
 */
#ifndef CDAXSYS_H
#define CDAXSYS_H

/* Linux only, as swift-nio's CNIOLinux: elsewhere the module is empty. */
#ifdef __linux__

/* glibc first: liburing.h defines _XOPEN_SOURCE/_GNU_SOURCE, which would change
 * glibc's fd_set member names and clash with the SwiftGlibc module. */
#include <stdint.h>
#include <stddef.h>
#include <stdbool.h>
#include <errno.h>
#include <sys/types.h>
#include <sys/select.h>
#include <sys/mman.h>
#include <sys/ioctl.h>
#include <signal.h>
#include <unistd.h>
#include <fcntl.h>
/* The kernel's io_uring definitions before liburing's bundled copy: both use
 * the same include guard, so liburing then reuses the kernel's structs and the
 * module agrees with swift-system's CSystem, which includes the kernel header. */
#include <linux/io_uring.h>
#include <liburing.h>

#include <daxctl/libdaxctl.h>
#include <ndctl/libndctl.h>
#include <numa.h>

#define CDAX_SYS_INLINE static inline __attribute__((__always_inline__))

/* ------------------------------------------------------------------------ */
/* Constants the importer cannot see or that older headers lack              */
/* ------------------------------------------------------------------------ */

/* mmap flags for synchronous DAX faults (MAP_SYNC needs MAP_SHARED_VALIDATE). */
CDAX_SYS_INLINE int dax_map_shared_validate(void) { return 0x03; }
CDAX_SYS_INLINE int dax_map_sync(void) { return 0x80000; }

/* statx: STATX_ATTR_DAX (linux/stat.h, 5.8+). */
CDAX_SYS_INLINE uint64_t dax_statx_attr_dax(void) { return 0x00200000ull; }

/* FS_IOC_GETFLAGS / FS_IOC_FSGETXATTR and the per-inode DAX flag. */
CDAX_SYS_INLINE unsigned long dax_fs_ioc_getflags(void) { return (unsigned long)_IOR('f', 1, long); }
CDAX_SYS_INLINE unsigned long dax_fs_ioc_fsgetxattr(void) { return (unsigned long)_IOR('X', 31, char[28]); }
CDAX_SYS_INLINE uint32_t dax_fs_xflag_dax(void) { return 0x00008000u; }

/* memfd_create flags (glibc 2.36 has them, but older headers may not). */
CDAX_SYS_INLINE unsigned int dax_mfd_cloexec(void) { return 0x0001u; }

/* open(2) O_DIRECT (x86-64 value; glibc defines it only under _GNU_SOURCE). */
CDAX_SYS_INLINE int dax_o_direct(void) { return 040000; }

/* getrusage(2) RUSAGE_THREAD (Linux, _GNU_SOURCE only). */
CDAX_SYS_INLINE int dax_rusage_thread(void) { return 1; }

/* Out-of-line wrappers (shim.c). */
int dax_memfd_create(const char *name, unsigned int flags);
/* mremap(2) with MREMAP_MAYMOVE|MREMAP_FIXED to new_address (mremap is
 * variadic, which Swift cannot call). Returns the new address or MAP_FAILED
 * with errno set. */
void *dax_mremap_fixed(void *old_address, size_t old_size, size_t new_size, void *new_address);
/* errno as an int, readable from Swift without going through Glibc's macro. */
int dax_errno(void);
/* stat(2), major/minor and sched_getcpu, which Swift's Glibc import hides or
 * confuses with the struct of the same name. */
struct stat;
int dax_stat(const char *path, struct stat *st);
unsigned int dax_dev_major(dev_t dev);
unsigned int dax_dev_minor(dev_t dev);
int dax_sched_getcpu(void);
/* mremap(2) (glibc declares it variadic, under _GNU_SOURCE only): the new
 * address, or MAP_FAILED with errno set. `new_address` is read only with
 * MREMAP_FIXED. */
void *dax_mremap(void *old_address, size_t old_size, size_t new_size, int flags, void *new_address);
CDAX_SYS_INLINE int dax_mremap_flag_maymove(void) { return 1; }
CDAX_SYS_INLINE int dax_mremap_flag_fixed(void) { return 2; }
/* One access the compiler cannot drop or merge, for fault probes: a read of
 * the byte at p, and a write that leaves it unchanged (one locked add of 0,
 * so the first touch is a write fault, not a read fault and then a write
 * fault). Out of line on purpose. */
uint8_t dax_touch_read(const void *p);
void dax_touch_write(void *p);

#endif /* __linux__ */
#endif /* CDAXSYS_H */
