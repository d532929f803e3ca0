/* System calls the sandboxed tree needs that Python's os module lacks or wraps in a
 * way that cannot reach O_PATH fds: renameat2 (RENAME_NOREPLACE/EXCHANGE), fallocate
 * with a mode (punch hole, zero range, keep size), getdents64 (directory cookies the
 * filesystem itself hands out, so readdir can resume at any offset), fchownat and
 * utimensat with AT_EMPTY_PATH (act on an O_PATH fd, including a symlink, without a
 * path string), faccessat2 (AT_EACCESS + AT_EMPTY_PATH) and syncfs.
 *
 * Every function returns its result or -errno, never touching Python's errno. */
#ifndef MSBFS_TREE_H
#define MSBFS_TREE_H

#include <stdint.h>
#include <sys/types.h>

int msb_renameat2(int olddirfd, const char *oldpath, int newdirfd, const char *newpath,
                  unsigned int flags);
int msb_fallocate(int fd, int mode, int64_t offset, int64_t len);
long msb_getdents64(int fd, void *buf, size_t size);
int msb_fchownat(int dirfd, const char *path, int64_t uid, int64_t gid, int flags);
int msb_utimensat(int dirfd, const char *path, int64_t atime_sec, int64_t atime_nsec,
                  int64_t mtime_sec, int64_t mtime_nsec, int flags);
int msb_faccessat2(int dirfd, const char *path, int mode, int flags);
int msb_syncfs(int fd);
/* fsgid, groups, fsuid of this thread in one call (raw syscalls: this thread
 * only); 0 or -errno of setgroups. ngroups == (size_t)-1 leaves the groups alone. */
int msb_switch_creds(uint32_t uid, uint32_t gid, size_t ngroups, const uint32_t *groups);
/* File handles, so the tree can close an inode's O_PATH fd and re-open it later
 * (root only: open_by_handle_at needs CAP_DAC_READ_SEARCH). */
int msb_name_to_handle_at(int dirfd, const char *path, void *buf, uint32_t bufsize,
                          int *mount_id, int flags);
int msb_open_by_handle_at(int mount_fd, const void *handle, int flags);

#endif
