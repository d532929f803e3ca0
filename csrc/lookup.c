/* See lookup.h. */
#define _GNU_SOURCE
#include "lookup.h"
#include "sys.h"

#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* The cold half: a name new to the table, opened exactly as the tree opens it; the
 * object held is the truth whatever raced (msb_inodes_add counts one lookup of an inode
 * the table has after all, and closes our fd). */
static int lookup_open(struct msb_inodes *t, const struct msb_lookup_cfg *cfg, int pfd,
                       const char *name, struct stat *st, struct msb_inode_info *info)
{
    if (msb_inodes_check_room(t) < 0)
        return MSB_LOOKUP_UNDECIDED;
    int fd = msb_openat2(pfd, name, cfg->flags, 0, cfg->resolve);
    if (fd < 0)
        return MSB_LOOKUP_UNDECIDED;
    if (fstat(fd, st) < 0 || (uint64_t)st->st_dev != cfg->root_dev) {
        close(fd);   /* ours alone, never in the table */
        return MSB_LOOKUP_UNDECIDED;
    }
    if (msb_inodes_add(t, fd, st->st_dev, st->st_ino, st->st_mode, 0, info) < 0)
        return MSB_LOOKUP_UNDECIDED;
    return 0;
}

int msb_lookup(struct msb_inodes *t, const struct msb_lookup_cfg *cfg, uint64_t parent,
               const char *name, size_t len, struct stat *st, struct msb_inode_info *info,
               int *added)
{
    *added = 0;
    if (!msb_plain_name(name, len))
        return MSB_LOOKUP_UNDECIDED;
    struct msb_inode_info p;
    if (msb_inodes_get(t, parent, &p) < 0 || p.dev != cfg->root_dev)
        return MSB_LOOKUP_UNDECIDED;
    int pfd = msb_inodes_fd(t, parent);
    if (pfd < 0)
        return MSB_LOOKUP_UNDECIDED;
    /* name is NUL-terminated right after len bytes: both callers hand a C string */
    int64_t btime;
    int r = msb_statx_at(pfd, name, AT_SYMLINK_NOFOLLOW, st, &btime);
    if (r < 0)
        return r == -ENOENT ? -ENOENT : MSB_LOOKUP_UNDECIDED;
    if ((uint64_t)st->st_dev != cfg->root_dev)
        return MSB_LOOKUP_UNDECIDED;   /* another filesystem: the tree tags its st_ino */
    /* Known, or new and named (opened at its first use: csrc/inodes.h), where the
     * filesystem keeps birth times (a reused number is told by them). A directory is
     * opened now, as before: its fd follows it wherever the host moves it, and a
     * client's cwd in it is never looked up again (a named one, renamed on the host,
     * would say ESTALE to `ls .` for good); it is also the parent every name beneath
     * it is opened through. */
    r = btime == MSB_NO_BTIME || S_ISDIR(st->st_mode) ? -ENOTSUP
        : msb_inodes_add_named(t, parent, name, len, st->st_dev, st->st_ino, st->st_mode,
                               btime, info);
    if (r >= 0) {
        *added = r;
        return 0;
    }
    if (r != -ENOTSUP)
        return MSB_LOOKUP_UNDECIDED;   /* a bound, or no memory: the tree's own answer */
    if (msb_inodes_find(t, st->st_dev, st->st_ino, 1, info) == 0)
        return 0;
    r = lookup_open(t, cfg, pfd, name, st, info);
    *added = r == 0;
    return r;
}

static int64_t ns(struct timespec ts)
{
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

int64_t msb_lookup_attr(struct msb_inodes *t, const struct msb_lookup_cfg *cfg,
                        uint64_t parent, const char *name, size_t len,
                        struct msb_lookup_stat *out)
{
    struct stat st;
    struct msb_inode_info info;
    int added;
    int r = msb_lookup(t, cfg, parent, name, len, &st, &info, &added);
    if (r < 0)
        return r;
    *out = (struct msb_lookup_stat){
        .st_dev = st.st_dev, .st_ino = st.st_ino, .st_nlink = st.st_nlink,
        .st_rdev = st.st_rdev, .st_size = st.st_size, .st_blocks = st.st_blocks,
        .st_blksize = st.st_blksize, .st_atime_ns = ns(st.st_atim),
        .st_mtime_ns = ns(st.st_mtim), .st_ctime_ns = ns(st.st_ctim),
        .st_mode = st.st_mode, .st_uid = st.st_uid, .st_gid = st.st_gid,
    };
    return (int64_t)(info.nodeid << 1 | info.submount);
}
