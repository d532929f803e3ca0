/* See fuse_setattr.h. The request is copied out of guest memory once (a hostile driver
 * may rewrite its buffers while we parse: what we check is what we use). */
#define _GNU_SOURCE
#include "fuse_setattr.h"
#include "fuse_meta.h"
#include "fuse_reply.h"
#include "handles.h"
#include "inodes.h"
#include "tree.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/fuse.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define TIMES (FATTR_ATIME | FATTR_MTIME | FATTR_ATIME_NOW | FATTR_MTIME_NOW)
/* Tree.setattr's changes; those not answered here go to Python whole. */
#define CHANGES (FATTR_MODE | FATTR_UID | FATTR_GID | FATTR_SIZE | TIMES)
#define IDS (FATTR_UID | FATTR_GID)
#define ID_MAX 0xfffffffeu   /* Tree.setattr: _int(uid, 0, 0xFFFFFFFE) */
#define MODE_MAX 0177777u   /* Tree.setattr: _int(mode, 0, 0o7777 | 0o170000) */
#define NSEC 1000000000u

struct msb_setattr *msb_meta_setattr(struct msb_meta *m)
{
    return &m->setattr;
}

void msb_setattr_stats(struct msb_meta *m, struct msb_setattr_stats *out)
{
    const struct msb_setattr_stats *s = &m->setattr.stats;
    *out = (struct msb_setattr_stats){
        __atomic_load_n(&s->setattrs, __ATOMIC_RELAXED),
        __atomic_load_n(&s->setattr_ns, __ATOMIC_RELAXED),
        __atomic_load_n(&s->chmods, __ATOMIC_RELAXED),
        __atomic_load_n(&s->utimes, __ATOMIC_RELAXED),
        __atomic_load_n(&s->chowns, __ATOMIC_RELAXED),
    };
}

/* Tree._timespec: 0 and the timespec utimensat gets, or -1 for a time that is no
 * 64-bit tv_sec (Python's EINVAL). The wire's tv_sec is the kernel's signed time64_t
 * in a u64 (requests._ns); nsec is any u32, carried into the seconds as the tree's
 * divmod of the nanoseconds does. */
static int timespec_of(uint32_t valid, uint32_t bit, uint32_t now_bit, uint64_t wire_sec,
                       uint32_t nsec, int64_t ts[2])
{
    if (valid & now_bit) {
        ts[0] = 0;
        ts[1] = UTIME_NOW;
    } else if (valid & bit) {
        int64_t sec = (int64_t)wire_sec, carry = nsec / NSEC;
        if (sec > INT64_MAX - carry)
            return -1;
        ts[0] = sec + carry;
        ts[1] = nsec % NSEC;
    } else {
        ts[0] = 0;
        ts[1] = UTIME_OMIT;
    }
    return 0;
}

/* The file handle FATTR_FH names: *hfd its fd if it is a handle of `nodeid`, -1 if of
 * another node (the tree ignores such a handle); EBADF when it is no file handle. */
static int handle_of(struct msb_fs_table *t, uint64_t fh, uint64_t nodeid, int *hfd)
{
    struct msb_handle h;
    if (msb_handles_get(t, fh, &h) < 0 || (h.perms & MSB_FS_DIR))
        return EBADF;
    *hfd = h.nodeid == nodeid ? h.fd : -1;
    return 0;
}

static int change_mode(const struct msb_names *n, uint32_t kind, int fd, int hfd, uint32_t mode)
{
    mode &= 07777 & n->stored_mask;
    if (S_ISLNK(kind))
        return EOPNOTSUPP;   /* as fchmodat(AT_SYMLINK_NOFOLLOW) */
    if (hfd >= 0)
        return fchmod(hfd, mode) < 0 ? errno : 0;
    char path[32];
    snprintf(path, sizeof path, "/proc/self/fd/%d", fd);   /* our own fd, never a name */
    return chmod(path, mode) < 0 ? errno : 0;
}

int msb_setattr_serve(struct msb_meta *m, struct msb_vq *vq, struct msb_chain *c,
                      const struct fuse_in_header *ih)
{
    struct msb_setattr *s = &m->setattr;
    const struct msb_names *n = &m->names;
    struct fuse_setattr_in si;
    _Static_assert(sizeof si == 88, "fuse_setattr_in");
    /* The codec reads 88 bytes and ignores any more; the reply must fit. */
    if (!__atomic_load_n(&s->on, __ATOMIC_RELAXED) || c->out_len < sizeof *ih + sizeof si
        || c->in_len < MSB_ATTR_REPLY_LEN)
        return 0;
    msb_iov_copy_from(c->iov, c->nout, sizeof *ih, &si, sizeof si);
    const uint32_t valid = si.valid;
    int64_t at[2], mt[2];
    /* SIZE (a quota's charge, a writable fd to open); a chown of an id that is none
     * (EINVAL). A chown beside KILL_SUIDGID (and no MODE, which makes the tree ignore
     * it: what every guest chown of a file carries) is C's only where nothing is to be
     * killed: see `kill` below. */
    const int kill = (valid & IDS) && (valid & FATTR_KILL_SUIDGID) && !(valid & FATTR_MODE);
    if ((valid & FATTR_SIZE)
        || ((valid & FATTR_UID) && si.uid > ID_MAX) || ((valid & FATTR_GID) && si.gid > ID_MAX)
        || ((valid & FATTR_MODE) && (!s->mode || si.mode > MODE_MAX))
        || timespec_of(valid, FATTR_ATIME, FATTR_ATIME_NOW, si.atime, si.atimensec, at) < 0
        || timespec_of(valid, FATTR_MTIME, FATTR_MTIME_NOW, si.mtime, si.mtimensec, mt) < 0
        || ((valid & FATTR_FH) && !m->table))
        return 0;
    uint64_t t0 = now_ns();
    struct msb_inode_info info;
    if (msb_inodes_get(m->inodes, ih->nodeid, &info) < 0 || info.dev != m->root_dev)
        return 0;
    int fd = msb_inodes_fd(m->inodes, info.nodeid);
    if (fd < 0)
        return 0;   /* re-opening it failed: the tree says how */
    if (kill) {
        /* Tree._kill_suidgid clears policy.killed_setid_bits, which are none unless a
         * regular file has a set-id bit: which ones then depends on the caller's group,
         * the tree's to judge. A chown never adds set-id bits, so none now is none after. */
        struct stat pre;
        if (fstat(fd, &pre) < 0 || (S_ISREG(pre.st_mode) && (pre.st_mode & (S_ISUID | S_ISGID))))
            return 0;
    }
    int hfd = -1;
    int err = valid & CHANGES ? n->mutation_errno : 0;
    if (!err && (valid & FATTR_FH))
        err = handle_of(m->table, si.fh, info.nodeid, &hfd);
    if (!err && (valid & FATTR_MODE)) {
        err = change_mode(n, info.kind, fd, hfd, si.mode);
        count(&s->stats.chmods, 1);
    }
    if (!err && (valid & IDS)) {   /* ids as the host's: the C path has no id map */
        err = -msb_fchownat(fd, "", valid & FATTR_UID ? (int64_t)si.uid : -1,
                            valid & FATTR_GID ? (int64_t)si.gid : -1, AT_EMPTY_PATH);
        count(&s->stats.chowns, 1);
    }
    if (!err && (valid & TIMES)) {
        err = -msb_utimensat(fd, "", at[0], at[1], mt[0], mt[1], AT_EMPTY_PATH);
        count(&s->stats.utimes, 1);
    }
    struct stat st;
    if (!err && fstat(fd, &st) < 0)
        err = errno;
    count(&s->stats.setattrs, 1);
    if (err)
        return reply_error(vq, c, ih->unique, err);
    int ret = reply_attr(m, vq, c, ih->unique, info.submount, &st);
    count(&s->stats.setattr_ns, now_ns() - t0);
    return ret;
}
