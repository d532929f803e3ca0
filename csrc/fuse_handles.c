/* See fuse_handles.h. Each request is copied out of guest memory once (a hostile driver
 * may rewrite its buffers while we parse: what we check is what we use). */
#define _GNU_SOURCE
#include "fuse_handles.h"
#include "fuse_meta.h"
#include "fuse_reply.h"
#include "handles.h"
#include "inodes.h"
#include "sys.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/fuse.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

struct msb_open *msb_meta_open(struct msb_meta *m)
{
    return &m->open;
}

void msb_open_stats(struct msb_meta *m, struct msb_open_stats *out)
{
    const struct msb_open_stats *s = &m->open.stats;
    *out = (struct msb_open_stats){
        __atomic_load_n(&s->opens, __ATOMIC_RELAXED),
        __atomic_load_n(&s->opendirs, __ATOMIC_RELAXED),
        __atomic_load_n(&s->releases, __ATOMIC_RELAXED),
        __atomic_load_n(&s->releasedirs, __ATOMIC_RELAXED),
        __atomic_load_n(&s->open_errors, __ATOMIC_RELAXED),
        __atomic_load_n(&s->creates, __ATOMIC_RELAXED),
    };
}

/* The table_mask bits of flags, gathered low to high (the index Python built). */
static uint32_t gather(uint32_t flags, uint32_t mask)
{
    uint32_t idx = 0, out = 1;
    for (uint32_t bit = 1; mask; bit <<= 1) {
        if (!(mask & bit))
            continue;
        if (flags & bit)
            idx |= out;
        out <<= 1;
        mask &= ~bit;
    }
    return idx & ((1u << MSB_OPEN_TABLE_BITS) - 1);
}

static int proc_open(int ifd, uint32_t flags)
{
    char path[32];
    snprintf(path, sizeof path, "/proc/self/fd/%d", ifd);
    return open(path, (int)flags);
}

static int reply_open(struct msb_vq *vq, struct msb_chain *c, uint64_t unique, uint64_t fh,
                      uint32_t open_flags)
{
    struct {
        struct fuse_out_header oh;
        struct fuse_open_out o;
    } r;
    _Static_assert(sizeof r == 16 + 16, "fuse_out_header + fuse_open_out");
    memset(&r, 0, sizeof r);
    r.oh = (struct fuse_out_header){ .len = sizeof r, .error = 0, .unique = unique };
    r.o.fh = fh;
    r.o.open_flags = open_flags;
    return push_reply(vq, c, &r, sizeof r);
}

/* The inode's O_PATH fd and kind bits (msb_inodes_fd_traits), or -1 (Python's). The fd
 * stays valid for the caller's grace section whatever forgets it meanwhile. */
static int64_t inode_of(struct msb_meta *m, uint64_t nodeid)
{
    int64_t ft = msb_inodes_fd_traits(m->inodes, nodeid);
    return ft < 0 ? -1 : ft;
}

/* The FOPEN flags of a file's OPEN reply: the tree's, and root_file_flags for a regular
 * file on the root's device. */
static uint32_t file_flags(struct msb_meta *m, uint64_t nodeid, uint32_t kind)
{
    const struct msb_open *o = &m->open;
    struct msb_inode_info info;
    if (!o->root_file_flags || kind != S_IFREG
        || msb_inodes_get(m->inodes, nodeid, &info) < 0 || info.dev != m->root_dev)
        return o->file_open_flags;
    return o->file_open_flags | o->root_file_flags;
}

int msb_handles_open(struct msb_meta *m, struct msb_vq *vq, struct msb_chain *c,
                     const struct fuse_in_header *ih)
{
    const struct msb_open *o = &m->open;
    struct fuse_open_in oi;
    if (!o->open || !m->table || c->out_len < sizeof *ih + sizeof oi
        || c->in_len < sizeof(struct fuse_out_header) + sizeof(struct fuse_open_out))
        return 0;
    msb_iov_copy_from(c->iov, c->nout, sizeof *ih, &oi, sizeof oi);
    uint32_t flags = oi.flags;
    if ((oi.open_flags & FUSE_OPEN_KILL_SUIDGID) || (flags & o->python_mask))
        return 0;
    int64_t ft = inode_of(m, ih->nodeid);
    if (ft < 0)
        return 0;
    uint32_t kind = (uint32_t)ft & S_IFMT;
    if (kind != S_IFREG && kind != S_IFDIR)
        return 0;   /* FIFOs, devices, symlinks: the tree's own rules */
    int err = o->open_errno[kind == S_IFDIR][gather(flags, o->table_mask)];
    if (err) {
        count(&m->open.stats.open_errors, 1);
        return reply_error(vq, c, ih->unique, err);
    }
    if (kind == S_IFDIR && (flags & O_ACCMODE) != O_RDONLY)
        return 0;   /* EISDIR: the tree's */
    if ((flags & O_TRUNC) && !o->trunc)
        return 0;   /* the quota charges a truncation */
    if (msb_handles_check_room(m->table) < 0)
        return 0;   /* EMFILE: the tree's */
    int ifd = (int)(ft >> MSB_INODE_FD_SHIFT);
    uint32_t oflags = (flags & o->pass_mask) | o->add_flags;
    uint32_t got = oflags;
    int fd = -1;
    if (kind == S_IFREG && o->writeback && (oflags & O_ACCMODE) == O_WRONLY) {
        /* The kernel READs through a write-only handle to fill partial pages; a daemon
         * that may not read the file gets the caller's flags (Tree._open_either). */
        uint32_t wanted = (oflags & ~(uint32_t)O_ACCMODE) | O_RDWR;
        fd = proc_open(ifd, wanted);
        if (fd >= 0)
            got = wanted;
        else if (errno != EACCES && errno != EPERM)
            return 0;
    }
    if (fd < 0 && (fd = proc_open(ifd, oflags)) < 0)
        return 0;   /* the tree answers the same errno, from scratch */
    int64_t fh = msb_handles_add(m->table, fd, got, ih->nodeid,
                                 (uint32_t)ft & ((1u << MSB_INODE_FD_SHIFT) - 1), 0, 0);
    if (fh < 0) {
        close(fd);   /* never in the table */
        return 0;
    }
    count(&m->open.stats.opens, 1);
    return reply_open(vq, c, ih->unique, (uint64_t)fh, file_flags(m, ih->nodeid, kind));
}

int msb_handles_opendir(struct msb_meta *m, struct msb_vq *vq, struct msb_chain *c,
                        const struct fuse_in_header *ih)
{
    const struct msb_open *o = &m->open;
    if (!o->open || !m->table || c->out_len < sizeof *ih + sizeof(struct fuse_open_in)
        || c->in_len < sizeof(struct fuse_out_header) + sizeof(struct fuse_open_out))
        return 0;
    int64_t ft = inode_of(m, ih->nodeid);
    if (ft < 0 || ((uint32_t)ft & S_IFMT) != S_IFDIR)
        return 0;   /* ENOTDIR, EBADF: the tree's */
    if (msb_handles_check_room(m->table) < 0)
        return 0;
    int fd = proc_open((int)(ft >> MSB_INODE_FD_SHIFT), o->opendir_flags);
    if (fd < 0)
        return 0;
    int64_t fh = msb_handles_add(m->table, fd, o->opendir_flags & ~(uint32_t)O_CLOEXEC,
                                 ih->nodeid, (uint32_t)ft & ((1u << MSB_INODE_FD_SHIFT) - 1),
                                 MSB_FS_DIR, 0);
    if (fh < 0) {
        close(fd);
        return 0;
    }
    count(&m->open.stats.opendirs, 1);
    return reply_open(vq, c, ih->unique, (uint64_t)fh, o->dir_open_flags);
}

int msb_handles_serve_release(struct msb_meta *m, struct msb_vq *vq, struct msb_chain *c,
                              const struct fuse_in_header *ih, int dir)
{
    const struct msb_open *o = &m->open;
    struct fuse_release_in ri;
    if (!m->table || !(dir ? o->open : o->release)
        || c->out_len < sizeof *ih + sizeof ri || c->in_len < sizeof(struct fuse_out_header))
        return 0;
    msb_iov_copy_from(c->iov, c->nout, sizeof *ih, &ri, sizeof ri);
    if (!dir) {
        /* Tree.release drops the owner's record locks and the handle's flock: only
         * when there is nothing of either to drop is the release C's. */
        if (__atomic_load_n(&m->lock_descs, __ATOMIC_ACQUIRE) != 0
            || (ri.release_flags & FUSE_RELEASE_FLOCK_UNLOCK))
            return 0;
    }
    if (!msb_handles_release(m->table, ri.fh, dir ? MSB_FS_DIR : 0))
        return 0;
    count(dir ? &m->open.stats.releasedirs : &m->open.stats.releases, 1);
    return reply_error(vq, c, ih->unique, 0);
}

#define ID_MAX 0xfffffffeu   /* Tree._before_new: larger is not an id (EINVAL) */

/* Tree._path_fd_of: an O_PATH fd of the file `fd` has open, by name beneath pfd while
 * the name still leads to it, else through our own fd's /proc link. -errno. */
static int path_fd_of(const struct msb_meta *m, int pfd, const char *name, int fd,
                      const struct stat *st)
{
    int opath = msb_openat2(pfd, name, m->lookup_flags, 0, m->resolve);
    if (opath >= 0) {
        struct stat got;
        if (fstat(opath, &got) == 0 && got.st_ino == st->st_ino && got.st_dev == st->st_dev)
            return opath;
        close(opath);
    }
    opath = proc_open(fd, O_PATH | O_CLOEXEC);
    return opath < 0 ? -errno : opath;
}

static int reply_create(const struct msb_meta *m, struct msb_vq *vq, struct msb_chain *c,
                        uint64_t unique, uint64_t nodeid, const struct stat *st, uint64_t fh,
                        uint32_t open_flags)
{
    struct {
        struct fuse_out_header oh;
        struct fuse_entry_out e;
        struct fuse_open_out o;
    } r;
    _Static_assert(sizeof r == 16 + 128 + 16, "header + fuse_entry_out + fuse_open_out");
    memset(&r, 0, sizeof r);
    r.oh = (struct fuse_out_header){ .len = sizeof r, .error = 0, .unique = unique };
    fill_entry(m, &r.e, nodeid, 0, st);
    r.o.fh = fh;
    r.o.open_flags = open_flags;
    return push_reply(vq, c, &r, sizeof r);
}

int msb_handles_create(struct msb_meta *m, struct msb_vq *vq, struct msb_chain *c,
                       const struct fuse_in_header *ih)
{
    const struct msb_open *o = &m->open;
    const struct msb_names *n = &m->names;
    struct fuse_create_in ci;
    char body[MSB_NEW_BODY_MAX + 1];
    if (!o->open || !n->mkdir || !m->table
        || c->in_len < sizeof(struct fuse_out_header) + sizeof(struct fuse_entry_out)
                       + sizeof(struct fuse_open_out))
        return 0;
    const char *name = msb_new_body(m, c, ih, &ci, sizeof ci, body);
    if (!name)
        return 0;
    if (n->mutation_errno) {
        count(&m->open.stats.creates, 1);
        return reply_error(vq, c, ih->unique, n->mutation_errno);
    }
    uint32_t want;
    if (msb_new_mode(n, ci.mode, ci.umask, 07777, &want) < 0
        || msb_handles_check_room(m->table) < 0 || msb_inodes_check_room(m->inodes) < 0
        || ih->uid > ID_MAX || ih->gid > ID_MAX)
        return 0;   /* EINVAL, EMFILE, ENFILE, EINVAL: Python's */
    int pfd = msb_inodes_fd(m->inodes, ih->nodeid);
    if (pfd < 0 || msb_new_acl_parent(n, pfd))
        return 0;
    uint32_t oflags = (ci.flags & o->pass_mask) | o->add_flags | O_CREAT | O_NOFOLLOW
                      | (ci.flags & O_EXCL);
    if (o->writeback && (oflags & O_ACCMODE) == O_WRONLY)
        oflags = (oflags & ~(uint32_t)O_ACCMODE) | O_RDWR;   /* Tree._writeback_flags */
    int fd;
    do
        fd = openat(pfd, name, (int)(oflags | O_EXCL), want);
    while (fd < 0 && errno == EINTR);
    if (fd < 0) {
        if (errno != EEXIST || !(ci.flags & O_EXCL))
            return 0;   /* what exists is opened by the tree's rules; other errnos too */
        count(&m->open.stats.creates, 1);
        return reply_error(vq, c, ih->unique, EEXIST);
    }
    count(&m->open.stats.creates, 1);
    /* Made: from here the reply is C's. Held as the tree's requests are: a FORGET of
     * the new node id on another queue does not drop it before the handle is added. */
    msb_inodes_hold(m->inodes);
    struct stat st;
    int err = fstat(fd, &st) < 0 ? -errno
              : msb_new_owner_mode(n, fd, 0, &st, want, ih->uid, ih->gid, pfd);
    int opath = err ? err : path_fd_of(m, pfd, name, fd, &st);
    struct msb_inode_info info;
    if (opath < 0)
        err = opath;
    else
        err = msb_inodes_add(m->inodes, opath, st.st_dev, st.st_ino, st.st_mode, 0, &info);
    int64_t fh = err ? err : msb_handles_add(m->table, fd, oflags, info.nodeid,
                                             (uint32_t)st.st_mode & S_IFMT, 0, 0);
    msb_inodes_unhold(m->inodes);
    if (fh < 0) {
        close(fd);   /* never in the handle table */
        return reply_error(vq, c, ih->unique, (int)-fh);
    }
    return reply_create(m, vq, c, ih->unique, info.nodeid, &st, (uint64_t)fh,
                        o->file_open_flags
                        | ((uint64_t)st.st_dev == m->root_dev ? o->root_file_flags : 0));
}
