/* See fuse_meta.h. Each request is copied out of guest memory once (a hostile driver
 * may rewrite its buffers while we parse: what we check is what we use). */
#define _GNU_SOURCE
#include "fuse_meta.h"
#include "fuse_datapath.h"
#include "fuse_readdir.h"
#include "fuse_setattr.h"
#include "lookup.h"
#include "sys.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/fuse.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <time.h>
#include <unistd.h>

#include "fuse_reply.h"

#define NAME_MAX_ 255
/* A LOOKUP body we parse: the name, its NUL, and whatever trails it (ignored, as the
 * Python codec ignores it). Longer bodies go to Python. */
#define LOOKUP_BODY_MAX 512

struct msb_meta *msb_meta_new(struct msb_inodes *inodes)
{
    struct msb_meta *m = calloc(1, sizeof *m);
    if (m) {
        m->inodes = inodes;
        m->squash_uid = m->squash_gid = -1;
        m->mode_mask = 0xffffffffu;
        if (!(m->dircache = msb_dircache_new())) {
            free(m);
            return NULL;
        }
    }
    return m;
}

void msb_meta_free(struct msb_meta *m)
{
    if (m)
        msb_dircache_free(m->dircache);
    free(m);
}

void msb_meta_set_ready(struct msb_meta *m, int ready)
{
    __atomic_store_n(&m->ready, ready, __ATOMIC_RELEASE);
}

void msb_meta_attach(struct msb_fs_table *t, struct msb_meta *m)
{
    if (m)
        m->table = t;
    __atomic_store_n(&t->meta, m, __ATOMIC_RELEASE);
}

void msb_meta_stats(struct msb_meta *m, struct msb_meta_stats *out)
{
    struct msb_meta_stats *s = &m->stats;
    *out = (struct msb_meta_stats){
        __atomic_load_n(&s->lookups, __ATOMIC_RELAXED),
        __atomic_load_n(&s->lookup_ns, __ATOMIC_RELAXED),
        __atomic_load_n(&s->lookups_new, __ATOMIC_RELAXED),
        __atomic_load_n(&s->getattrs, __ATOMIC_RELAXED),
        __atomic_load_n(&s->getattr_ns, __ATOMIC_RELAXED),
        __atomic_load_n(&s->forgets, __ATOMIC_RELAXED),
        __atomic_load_n(&s->handed, __ATOMIC_RELAXED),
        __atomic_load_n(&s->statfs, __ATOMIC_RELAXED),
        __atomic_load_n(&s->flushes, __ATOMIC_RELAXED),
        __atomic_load_n(&s->readdirs, __ATOMIC_RELAXED),
        __atomic_load_n(&s->readdir_entries, __ATOMIC_RELAXED),
        __atomic_load_n(&s->readdir_ns, __ATOMIC_RELAXED),
    };
}

/* ---- the opcodes ------------------------------------------------------------------- */
static int serve_getattr(struct msb_meta *m, struct msb_vq *vq, struct msb_chain *c,
                         const struct fuse_in_header *ih)
{
    struct fuse_getattr_in gi;
    /* The codec reads 16 bytes and ignores any more; the reply must fit. */
    if (c->out_len < sizeof *ih + sizeof gi || c->in_len < MSB_ATTR_REPLY_LEN)
        return 0;
    msb_iov_copy_from(c->iov, c->nout, sizeof *ih, &gi, sizeof gi);
    if (gi.getattr_flags & FUSE_GETATTR_FH)
        return 0;   /* the handle's fd, not the inode's: the tree knows handles */
    uint64_t t0 = now_ns();
    int64_t ft = msb_inodes_fd_traits(m->inodes, ih->nodeid);
    if (ft < 0)
        return 0;
    struct stat st;
    if (fstat((int)(ft >> MSB_INODE_FD_SHIFT), &st) < 0 || st.st_dev != m->root_dev)
        return 0;
    int ret = reply_attr(m, vq, c, ih->unique, (ft & MSB_INODE_SUBMOUNT) != 0, &st);
    count(&m->stats.getattrs, 1);
    count(&m->stats.getattr_ns, now_ns() - t0);
    return ret;
}

static int serve_statfs(struct msb_meta *m, struct msb_vq *vq, struct msb_chain *c,
                        const struct fuse_in_header *ih)
{
    struct {
        struct fuse_out_header oh;
        struct fuse_statfs_out s;
    } r;
    _Static_assert(sizeof r == 16 + 80, "fuse_out_header + fuse_statfs_out");
    /* A quota changes the figures (Tree.statfs): that tree keeps STATFS. */
    if (!m->statfs || c->in_len < sizeof r)
        return 0;
    int fd = msb_inodes_fd(m->inodes, ih->nodeid);
    struct statvfs v;
    if (fd < 0 || fstatvfs(fd, &v) < 0)
        return 0;
    if (v.f_bsize > UINT32_MAX || v.f_namemax > UINT32_MAX || v.f_frsize > UINT32_MAX)
        return 0;   /* the codec's struct would not take them */
    memset(&r, 0, sizeof r);
    r.oh = (struct fuse_out_header){ .len = sizeof r, .error = 0, .unique = ih->unique };
    r.s.st = (struct fuse_kstatfs){
        .blocks = v.f_blocks, .bfree = v.f_bfree, .bavail = v.f_bavail, .files = v.f_files,
        .ffree = v.f_ffree, .bsize = (uint32_t)v.f_bsize, .namelen = (uint32_t)v.f_namemax,
        .frsize = (uint32_t)v.f_frsize,
    };
    count(&m->stats.statfs, 1);
    return push_reply(vq, c, &r, sizeof r);
}

/* The lookup itself is csrc/lookup.c's, the one the Python tree calls too. */
static int serve_lookup(struct msb_meta *m, struct msb_vq *vq, struct msb_chain *c,
                        const struct fuse_in_header *ih)
{
    char body[LOOKUP_BODY_MAX + 1];
    size_t blen = c->out_len - sizeof *ih;
    if (blen == 0 || blen > LOOKUP_BODY_MAX || c->in_len < 16 + sizeof(struct fuse_entry_out))
        return 0;
    msb_iov_copy_from(c->iov, c->nout, sizeof *ih, body, blen);
    const char *nul = memchr(body, '\0', blen);
    if (!nul)
        return 0;
    uint64_t t0 = now_ns();
    const struct msb_lookup_cfg cfg = { m->root_dev, m->lookup_flags, m->resolve };
    struct stat st;
    struct msb_inode_info info;
    int added;
    int r = msb_lookup(m->inodes, &cfg, ih->nodeid, body, (size_t)(nul - body), &st, &info,
                       &added);
    if (r == -ENOENT) {
        count(&m->stats.lookups, 1);
        return reply_error(vq, c, ih->unique, ENOENT);
    }
    if (r < 0)
        return 0;
    if (added)
        count(&m->stats.lookups_new, 1);
    int ret = reply_entry(m, vq, c, ih->unique, info.nodeid, info.submount, &st);
    count(&m->stats.lookups, 1);
    count(&m->stats.lookup_ns, now_ns() - t0);
    return ret;
}

static int serve_forget(struct msb_meta *m, struct msb_vq *vq, struct msb_chain *c,
                        const struct fuse_in_header *ih)
{
    struct fuse_forget_in fi;
    if (c->out_len < sizeof *ih + sizeof fi)
        return 0;   /* the codec answers a short one */
    msb_iov_copy_from(c->iov, c->nout, sizeof *ih, &fi, sizeof fi);
    msb_inodes_forget(m->inodes, ih->nodeid, fi.nlookup);
    count(&m->stats.forgets, 1);
    int r = msb_vq_push(vq, c->head, 0);   /* no reply: the buffer back, empty */
    return r < 0 ? r : 1;
}

static int serve_batch_forget(struct msb_meta *m, struct msb_vq *vq, struct msb_chain *c,
                              const struct fuse_in_header *ih)
{
    struct fuse_batch_forget_in bi;
    size_t pre = sizeof *ih + sizeof bi;
    if (c->out_len < pre)
        return 0;
    msb_iov_copy_from(c->iov, c->nout, sizeof *ih, &bi, sizeof bi);
    if ((uint64_t)bi.count * sizeof(struct fuse_forget_one) > c->out_len - pre)
        return 0;   /* count exceeds the message: the codec answers it */
    for (uint32_t i = 0; i < bi.count; i++) {
        struct fuse_forget_one one;
        msb_iov_copy_from(c->iov, c->nout, pre + (size_t)i * sizeof one, &one, sizeof one);
        msb_inodes_forget(m->inodes, one.nodeid, one.nlookup);
    }
    count(&m->stats.forgets, bi.count);
    int r = msb_vq_push(vq, c->head, 0);
    return r < 0 ? r : 1;
}

/* Tree.flush: the owner's record locks dropped (none exist: lock_descs 0), then
 * close(dup(fd)) gives the host filesystem its flush. The fd is the handle's own, read
 * from the C handle table inside the caller's grace section (a RELEASE on another queue
 * closes it only after a grace period). A handle not in the table (not a file handle,
 * or a write-only one the tree must see: quota) and a failed dup go to Python, which
 * answers them as before; close's own error is the reply, as os.close raises it. */
static int serve_flush(struct msb_meta *m, struct msb_vq *vq, struct msb_chain *c,
                       const struct fuse_in_header *ih)
{
    struct fuse_flush_in fi;
    if (c->out_len < sizeof *ih + sizeof fi || c->in_len < sizeof(struct fuse_out_header))
        return 0;
    if (__atomic_load_n(&m->lock_descs, __ATOMIC_ACQUIRE) != 0 || !m->table)
        return 0;
    msb_iov_copy_from(c->iov, c->nout, sizeof *ih, &fi, sizeof fi);
    int fd = msb_fs_table_get(m->table, fi.fh, MSB_FS_READ);
    if (fd < 0)
        fd = msb_fs_table_get(m->table, fi.fh, MSB_FS_WRITE);
    if (fd < 0)
        return 0;
    int dup_fd = fcntl(fd, F_DUPFD_CLOEXEC, 0);
    if (dup_fd < 0)
        return 0;
    int err = close(dup_fd) < 0 ? errno : 0;
    count(&m->stats.flushes, 1);
    return reply_error(vq, c, ih->unique, err);
}

int msb_meta_serve(struct msb_meta *m, struct msb_vq *vq, struct msb_chain *c,
                   const struct fuse_in_header *hdr)
{
    if (!__atomic_load_n(&m->ready, __ATOMIC_ACQUIRE) || !__atomic_load_n(&m->enabled, __ATOMIC_RELAXED))
        return 0;
    const struct fuse_in_header ih = *hdr;
    int r = 0;
    switch (ih.opcode) {
    case FUSE_GETATTR:
        r = serve_getattr(m, vq, c, &ih);
        break;
    case FUSE_LOOKUP:
        r = serve_lookup(m, vq, c, &ih);
        break;
    case FUSE_STATFS:
        r = serve_statfs(m, vq, c, &ih);
        break;
    case FUSE_FORGET:
        r = serve_forget(m, vq, c, &ih);
        break;
    case FUSE_BATCH_FORGET:
        r = serve_batch_forget(m, vq, c, &ih);
        break;
    case FUSE_FLUSH:
        r = serve_flush(m, vq, c, &ih);
        break;
    case FUSE_GETXATTR:
    case FUSE_LISTXATTR:
        r = msb_xattr_serve(m, vq, c, &ih);
        break;
    case FUSE_UNLINK:
    case FUSE_RMDIR:
        r = msb_names_remove(m, vq, c, &ih, ih.opcode == FUSE_RMDIR);
        break;
    case FUSE_ACCESS:
        r = msb_names_access(m, vq, c, &ih);
        break;
    case FUSE_MKDIR:
        r = msb_names_mkdir(m, vq, c, &ih);
        break;
    case FUSE_RENAME:
    case FUSE_RENAME2:
        r = msb_names2_rename(m, vq, c, &ih, ih.opcode == FUSE_RENAME2);
        break;
    case FUSE_READLINK:
        r = msb_names2_readlink(m, vq, c, &ih);
        break;
    case FUSE_SYMLINK:
        r = msb_names2_symlink(m, vq, c, &ih);
        break;
    case FUSE_LINK:
        r = msb_names2_link(m, vq, c, &ih);
        break;
    case FUSE_OPEN:
        r = msb_handles_open(m, vq, c, &ih);
        break;
    case FUSE_OPENDIR:
        r = msb_handles_opendir(m, vq, c, &ih);
        break;
    case FUSE_CREATE:
        r = msb_handles_create(m, vq, c, &ih);
        break;
    case FUSE_RELEASE:
    case FUSE_RELEASEDIR:
        r = msb_handles_serve_release(m, vq, c, &ih, ih.opcode == FUSE_RELEASEDIR);
        break;
    case FUSE_READDIR:
    case FUSE_READDIRPLUS:
        r = msb_readdir_serve(m, vq, c, &ih);
        break;
    case FUSE_SETATTR:
        r = msb_setattr_serve(m, vq, c, &ih);
        break;
    default:
        return 0;
    }
    if (r == 0)
        count(&m->stats.handed, 1);
    return r;
}
