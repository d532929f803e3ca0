#define _GNU_SOURCE
#include "sys.h"

#include <errno.h>
#include <linux/openat2.h>
#include <sys/syscall.h>
#include <unistd.h>

/* Returns an fd, or -errno (never touches the errno of the caller's thread
 * in a way Python would have to read back). */
int msb_openat2(int dirfd, const char *path, uint64_t flags, uint64_t mode, uint64_t resolve)
{
    struct open_how how = { .flags = flags, .mode = mode, .resolve = resolve };
    long r = syscall(SYS_openat2, dirfd, path, &how, sizeof how);
    return r < 0 ? -errno : (int)r;
}

int msb_setfsuid(uint32_t uid)
{
    return (int)syscall(SYS_setfsuid, uid);
}

int msb_setfsgid(uint32_t gid)
{
    return (int)syscall(SYS_setfsgid, gid);
}

int msb_setgroups(size_t n, const uint32_t *groups)
{
    long r = syscall(SYS_setgroups, n, groups);
    return r < 0 ? -errno : 0;
}

int msb_getgroups(size_t n, uint32_t *groups)
{
    long r = syscall(SYS_getgroups, n, groups);
    return r < 0 ? -errno : (int)r;
}
