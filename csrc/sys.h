/* Raw system calls glibc either lacks (openat2) or wraps process-wide (set*id).
 *
 * setfsuid/setfsgid/setgroups are issued with syscall(2) on purpose: glibc's
 * wrappers for setgroups (and setuid & co.) broadcast the change to every thread of
 * the process through a signal (the NPTL "setxid" dance), which would change the
 * credentials of every concurrent request. The raw syscalls change only the calling
 * thread, which is what a per-request switch to the caller's identity needs. */
#ifndef MSBFS_SYS_H
#define MSBFS_SYS_H

#include <stdint.h>
#include <sys/types.h>

int msb_openat2(int dirfd, const char *path, uint64_t flags, uint64_t mode, uint64_t resolve);
int msb_setfsuid(uint32_t uid);   /* returns the previous fsuid */
int msb_setfsgid(uint32_t gid);   /* returns the previous fsgid */
int msb_setgroups(size_t n, const uint32_t *groups); /* 0 or -errno */
int msb_getgroups(size_t n, uint32_t *groups);       /* count or -errno */
/* statx(2) of name beneath dirfd (flags: AT_*), as fstatat's struct stat, and the
 * birth time in ns (MSB_NO_BTIME when the filesystem keeps none). 0 or -errno. One
 * syscall, as fstatat: the inode table tells a reused inode number by the birth. */
#define MSB_NO_BTIME INT64_MIN
struct stat;
int msb_statx_at(int dirfd, const char *name, int flags, struct stat *st, int64_t *btime);

#endif
