#define _GNU_SOURCE
#include "sys.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/openat2.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <time.h>
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

static struct timespec ts_of(struct statx_timestamp t)
{
    return (struct timespec){ .tv_sec = t.tv_sec, .tv_nsec = t.tv_nsec };
}

int msb_statx_at(int dirfd, const char *name, int flags, struct stat *st, int64_t *btime)
{
    struct statx x;
    if (statx(dirfd, name, flags, STATX_BASIC_STATS | STATX_BTIME, &x) < 0)
        return -errno;
    memset(st, 0, sizeof *st);
    st->st_dev = makedev(x.stx_dev_major, x.stx_dev_minor);
    st->st_ino = x.stx_ino;
    st->st_mode = x.stx_mode;
    st->st_nlink = x.stx_nlink;
    st->st_uid = x.stx_uid;
    st->st_gid = x.stx_gid;
    st->st_rdev = makedev(x.stx_rdev_major, x.stx_rdev_minor);
    st->st_size = (off_t)x.stx_size;
    st->st_blksize = (blksize_t)x.stx_blksize;
    st->st_blocks = (blkcnt_t)x.stx_blocks;
    st->st_atim = ts_of(x.stx_atime);
    st->st_mtim = ts_of(x.stx_mtime);
    st->st_ctim = ts_of(x.stx_ctime);
    *btime = x.stx_mask & STATX_BTIME
             ? (int64_t)x.stx_btime.tv_sec * 1000000000 + x.stx_btime.tv_nsec : MSB_NO_BTIME;
    return 0;
}
