#define _GNU_SOURCE
#include "tree.h"

#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

int msb_renameat2(int olddirfd, const char *oldpath, int newdirfd, const char *newpath,
                  unsigned int flags)
{
    long r = syscall(SYS_renameat2, olddirfd, oldpath, newdirfd, newpath, flags);
    return r < 0 ? -errno : 0;
}

int msb_fallocate(int fd, int mode, int64_t offset, int64_t len)
{
    long r = syscall(SYS_fallocate, fd, mode, (off_t)offset, (off_t)len);
    return r < 0 ? -errno : 0;
}

long msb_getdents64(int fd, void *buf, size_t size)
{
    long r = syscall(SYS_getdents64, fd, buf, size);
    return r < 0 ? -errno : r;
}

/* uid/gid of -1 mean "leave unchanged", as for chown(2). */
int msb_fchownat(int dirfd, const char *path, int64_t uid, int64_t gid, int flags)
{
    long r = syscall(SYS_fchownat, dirfd, path, (uid_t)uid, (gid_t)gid, flags);
    return r < 0 ? -errno : 0;
}

/* The nsec fields may be UTIME_NOW or UTIME_OMIT. */
int msb_utimensat(int dirfd, const char *path, int64_t atime_sec, int64_t atime_nsec,
                  int64_t mtime_sec, int64_t mtime_nsec, int flags)
{
    struct timespec ts[2] = {
        { .tv_sec = atime_sec, .tv_nsec = atime_nsec },
        { .tv_sec = mtime_sec, .tv_nsec = mtime_nsec },
    };
    long r = syscall(SYS_utimensat, dirfd, path, ts, flags);
    return r < 0 ? -errno : 0;
}

/* The raw syscall: glibc's faccessat emulates AT_EACCESS with the process's ids when
 * faccessat2 is missing, which would ignore our per-thread fsuid. */
int msb_faccessat2(int dirfd, const char *path, int mode, int flags)
{
    long r = syscall(SYS_faccessat2, dirfd, path, mode, flags);
    return r < 0 ? -errno : 0;
}

int msb_syncfs(int fd)
{
    long r = syscall(SYS_syncfs, fd);
    return r < 0 ? -errno : 0;
}

int msb_switch_creds(uint32_t uid, uint32_t gid, size_t ngroups, const uint32_t *groups)
{
    /* CAP_SETUID/CAP_SETGID are not among the capabilities a non-zero fsuid drops, so
     * the order only matters for clarity: group identity first, then the uid. */
    /* setfsuid/setfsgid report no error: they return the previous id whether or not
     * they changed it (a daemon whose CAP_SETUID/CAP_SETGID were dropped, --modcaps).
     * An unchecked failure would run the caller's request as the daemon, so each is
     * read back (an invalid id, -1, changes nothing and returns the current one). */
    syscall(SYS_setfsgid, gid);
    if ((uint32_t)syscall(SYS_setfsgid, (uint32_t)-1) != gid)
        return -EPERM;
    if (ngroups != (size_t)-1 && syscall(SYS_setgroups, ngroups, groups) < 0)
        return -errno;   /* -1: the groups are already right, skip the cred copy */
    syscall(SYS_setfsuid, uid);
    if ((uint32_t)syscall(SYS_setfsuid, (uint32_t)-1) != uid)
        return -EPERM;
    return 0;
}

/* buf holds a struct file_handle of bufsize bytes; on success its handle_bytes field
 * says how much of it the handle uses (8 + handle_bytes in all). */
int msb_name_to_handle_at(int dirfd, const char *path, void *buf, uint32_t bufsize,
                          int *mount_id, int flags)
{
    struct file_handle *fh = buf;
    if (bufsize < sizeof *fh)
        return -EINVAL;
    fh->handle_bytes = bufsize - sizeof *fh;
    long r = syscall(SYS_name_to_handle_at, dirfd, path, fh, mount_id, flags);
    return r < 0 ? -errno : 0;
}

int msb_open_by_handle_at(int mount_fd, const void *handle, int flags)
{
    long r = syscall(SYS_open_by_handle_at, mount_fd, handle, flags);
    return r < 0 ? -errno : (int)r;
}
