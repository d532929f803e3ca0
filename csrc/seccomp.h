/* A seccomp allowlist built with libseccomp (Debian's libseccomp-dev). Syscalls are
 * given by name so one list serves every architecture: names the running architecture
 * does not have (open, stat... on aarch64) are skipped and counted. */
#ifndef MSBFS_SECCOMP_H
#define MSBFS_SECCOMP_H

#include <stddef.h>

/* What a syscall outside the list gets (msb_seccomp_load's `action`). */
#define MSB_SECCOMP_LOG 1   /* allowed, logged by the kernel (audit type 1326) */
#define MSB_SECCOMP_TRAP 2  /* SIGSYS to the calling thread */
#define MSB_SECCOMP_KILL 3  /* the whole process dies with SIGSYS */

/* Install the filter on every thread of the process (TSYNC). Returns how many names
 * the native architecture lacks (skipped), or -errno. */
int msb_seccomp_load(int action, const char *const *names, size_t n);
/* The native syscall number of a name, or -1 if this architecture has none. */
int msb_seccomp_resolve(const char *name);

#endif
