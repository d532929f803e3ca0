/* The system calls a daemon uses to confine itself (msbfs/confine.py): namespaces,
 * mounts, pivot_root, prctl and raw capset/capget (no libcap: two 32-bit words of
 * _LINUX_CAPABILITY_VERSION_3 are all it takes). Each returns 0 (or a value) on
 * success and -errno on failure, so Python never reads a thread's errno back. */
#ifndef MSBFS_CONFINE_H
#define MSBFS_CONFINE_H

#include <stdint.h>

int msb_unshare(int flags);
int msb_mount(const char *source, const char *target, const char *fstype,
              unsigned long flags, const char *data);
int msb_umount2(const char *target, int flags);
int msb_pivot_root(const char *new_root, const char *put_old);
long msb_prctl(int option, unsigned long a2, unsigned long a3, unsigned long a4,
               unsigned long a5);
/* This thread's capability sets as 64-bit masks (bit N = capability N). */
int msb_capget(uint64_t *effective, uint64_t *permitted, uint64_t *inheritable);
int msb_capset(uint64_t effective, uint64_t permitted, uint64_t inheritable);

#endif
