/* See fuse_readdir.h. The request is copied out of guest memory once (a hostile driver
 * may rewrite its buffers while we parse: what we check is what we use). */
#define _GNU_SOURCE
#include "fuse_readdir.h"
#include "fuse_datapath.h"
#include "fuse_meta.h"
#include "fuse_reply.h"
#include "handles.h"
#include "lookup.h"
#include "tree.h"

#include <errno.h>
#include <linux/fuse.h>
#include <pthread.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

/* msbfs/fuse/server.py MAX_WRITE: the most a READDIR reply carries, whatever the room. */
#define READDIR_MAX (256u * 4096u)
/* The batches kept: slots picked by fh, each one getdents64 batch of one handle. A
 * guest reads a directory in 4 KiB replies, ~25 entries each, each asking from the last
 * cookie: without a kept batch every request sought and re-read the directory (35% of
 * what it read thrown away, 11% of the daemon's time), as DirHandle found for Python. */
#define BATCH_SLOTS 16
#define BATCH_BYTES 16384u

/* ---- the directory stream lock --------------------------------------------------- */
/* Striped by fd: one fd is one stream (a handle's own open), so one stripe always
 * covers it; two streams sharing a stripe only wait for each other. */
#define STRIPES 64
static pthread_mutex_t stripes[STRIPES] = { [0 ... STRIPES - 1] = PTHREAD_MUTEX_INITIALIZER };

static pthread_mutex_t *stream_lock(int fd)
{
    return &stripes[(unsigned)fd % STRIPES];
}

static long seek_read(int fd, int64_t offset, void *buf, uint32_t cap)
{
    if (lseek(fd, (off_t)offset, SEEK_SET) < 0)
        return -errno;
    return msb_getdents64(fd, buf, cap);
}

long msb_dir_read(int fd, int64_t offset, void *buf, uint32_t cap)
{
    pthread_mutex_t *l = stream_lock(fd);
    pthread_mutex_lock(l);
    long n = seek_read(fd, offset, buf, cap);
    pthread_mutex_unlock(l);
    return n;
}

/* ---- serving ----------------------------------------------------------------------- */
struct linux_dirent64_head {   /* <dirent.h> has no struct for the raw syscall */
    uint64_t d_ino;
    int64_t d_off;
    uint16_t d_reclen;
    uint8_t d_type;
    char d_name[];
};

/* One handle's last batch: the records read from cookie `base`, and where the last
 * request stopped (the record at `next`, which follows cookie `next_cookie`), so the
 * request that resumes there starts without a search. fh 0 is no handle (the table
 * counts from 1): an empty slot. fh numbers are never reused in one handle table, and a
 * cache belongs to one msb_meta, attached to one table: a slot never answers for a
 * handle it was not filled for. */
struct batch {
    pthread_mutex_t lock;
    uint64_t fh;
    int64_t base, next_cookie;
    uint32_t len, next;
    char *buf;   /* BATCH_BYTES, allocated at first use */
};

struct msb_dircache {
    struct batch slot[BATCH_SLOTS];
};

struct msb_dircache *msb_dircache_new(void)
{
    struct msb_dircache *dc = calloc(1, sizeof *dc);
    if (dc)
        for (int i = 0; i < BATCH_SLOTS; i++)
            pthread_mutex_init(&dc->slot[i].lock, NULL);
    return dc;
}

void msb_dircache_free(struct msb_dircache *dc)
{
    if (!dc)
        return;
    for (int i = 0; i < BATCH_SLOTS; i++) {
        pthread_mutex_destroy(&dc->slot[i].lock);
        free(dc->slot[i].buf);
    }
    free(dc);
}

/* Read the batch after cookie `from` into b, for handle fh: bytes, or -errno. */
static long read_batch(struct batch *b, uint64_t fh, int fd, int64_t from)
{
    long n = msb_dir_read(fd, from, b->buf, BATCH_BYTES);
    b->fh = n < 0 ? 0 : fh;
    b->base = b->next_cookie = from;
    b->len = n < 0 ? 0 : (uint32_t)n;
    b->next = 0;
    return n;
}

/* Where the records after cookie `offset` start in b's batch, if it holds them. */
static int locate(const struct batch *b, int64_t offset, uint32_t *pos)
{
    if (offset == b->next_cookie && b->next <= b->len) {
        *pos = b->next;
        return 1;
    }
    if (offset == b->base) {
        *pos = 0;
        return 1;
    }
    for (uint32_t p = 0; p < b->len;) {
        const struct linux_dirent64_head *de = (const void *)(b->buf + p);
        if (de->d_reclen == 0)
            return 0;
        p += de->d_reclen;
        if (de->d_off == offset) {
            *pos = p;
            return 1;
        }
    }
    return 0;
}

/* What one request needs to know about its directory, decided before anything else. */
struct listing {
    int fd;
    uint64_t nodeid;
    int is_root;
    uint64_t root_ino;   /* the ino the root's ".." shows (Tree.readdir: never the host's) */
};

/* "." or "..": no attributes but ino and type (node id 0: the guest makes no dentry). */
static void dot_entry(struct fuse_entry_out *e, uint64_t ino, uint8_t type)
{
    memset(e, 0, sizeof *e);
    e->attr.ino = ino;
    e->attr.mode = (uint32_t)type << 12;
}

enum entry_result { ENTRY_OK, ENTRY_SKIP, ENTRY_UNDECIDED };

/* The entry of a plain name, looked up exactly as LOOKUP (one more lookup counted; a
 * name new to the table is added by name, not opened: csrc/inodes.h). */
static enum entry_result lookup_entry(struct msb_meta *m, const struct msb_lookup_cfg *cfg,
                                      const struct listing *d, const char *name, size_t len,
                                      struct fuse_entry_out *e)
{
    struct stat st;
    struct msb_inode_info info;
    int added;
    int r = msb_lookup(m->inodes, cfg, d->nodeid, name, len, &st, &info, &added);
    if (r == -ENOENT)
        return ENTRY_SKIP;   /* vanished since the listing: Python skips it too */
    if (r < 0)
        return ENTRY_UNDECIDED;
    fill_entry(m, e, info.nodeid, info.submount, &st);
    return ENTRY_OK;
}

/* The records from cookie `offset` into the reply (after its header), whole records
 * while they fit in `size`, from b's batch when it holds them (offset 0 always reads
 * afresh: rewinddir), else from a batch read now. *used: bytes written; *nrec: records.
 * 1: done (the reply is what was written), 0: hand the request back (nothing counted).
 * Runs under b's lock. */
static int fill(struct msb_meta *m, const struct listing *d, struct batch *b, uint64_t fh,
                struct msb_chain *c, int plus, int plain, int64_t offset, uint32_t size,
                uint32_t *used, uint32_t *nrec)
{
    struct msb_lookup_cfg cfg = { .root_dev = m->root_dev, .flags = m->lookup_flags,
                                  .resolve = m->resolve };
    struct {
        struct fuse_entry_out e;
        struct fuse_dirent d;
        char name[256 + 8];
    } rec;
    _Static_assert(offsetof(__typeof__(rec), name) == FUSE_NAME_OFFSET_DIRENTPLUS
                   && offsetof(__typeof__(rec), name) - offsetof(__typeof__(rec), d) == FUSE_NAME_OFFSET,
                   "fuse_direntplus: entry_out, dirent, name");
    uint64_t counted = 0;
    *used = *nrec = 0;
    uint32_t pos;
    if (!b->buf && !(b->buf = malloc(BATCH_BYTES)))
        return 0;
    if (offset == 0 || b->fh != fh || !locate(b, offset, &pos)) {
        if (read_batch(b, fh, d->fd, offset) < 0)
            return 0;   /* Python answers the errno (if it still occurs) */
        pos = 0;
    }
    int64_t prev = offset;   /* the cookie the record at pos follows */
    int done = 1;
    for (;;) {
        if (pos >= b->len) {
            if (b->len == 0)
                break;   /* the end of the directory */
            long n = read_batch(b, fh, d->fd, prev);
            if (n < 0)
                return counted ? 1 : 0;
            pos = 0;
            continue;
        }
        const struct linux_dirent64_head *de = (const void *)(b->buf + pos);
        size_t len = de->d_reclen ? strnlen(de->d_name, 256) : 0;
        if (len == 0 || len > 255) {   /* never from Linux: not ours to judge */
            done = counted ? 1 : 0;
            break;
        }
        uint32_t need = (uint32_t)FUSE_DIRENT_ALIGN(
            (plus ? FUSE_NAME_OFFSET_DIRENTPLUS : FUSE_NAME_OFFSET) + len);
        if (need > size - *used)
            break;   /* checked before the lookup: nothing counted for it */
        uint64_t ino = de->d_ino;
        int dot = de->d_name[0] == '.' && (len == 1 || (len == 2 && de->d_name[1] == '.'));
        if (d->is_root && len == 2 && dot)
            ino = d->root_ino;
        if (plus) {
            if (dot || plain) {
                dot_entry(&rec.e, ino, de->d_type);
            } else {
                enum entry_result r = lookup_entry(m, &cfg, d, de->d_name, len, &rec.e);
                if (r == ENTRY_UNDECIDED) {
                    done = counted ? 1 : 0;
                    break;
                }
                if (r == ENTRY_SKIP) {
                    prev = de->d_off;
                    pos += de->d_reclen;
                    continue;
                }
                counted++;
            }
        }
        rec.d = (struct fuse_dirent){ .ino = ino, .off = (uint64_t)de->d_off,
                                      .namelen = (uint32_t)len, .type = de->d_type };
        memcpy(rec.name, de->d_name, len);
        memset(rec.name + len, 0, 8);   /* the padding the codec writes */
        const char *start = plus ? (const char *)&rec.e : (const char *)&rec.d;
        msb_iov_copy_to(c->iov + c->nout, c->nin, sizeof(struct fuse_out_header) + *used,
                        start, need);
        *used += need;
        ++*nrec;
        prev = de->d_off;
        pos += de->d_reclen;
    }
    b->next = pos;   /* the next request most likely resumes here */
    b->next_cookie = prev;
    return done;
}

static int serve(struct msb_meta *m, struct msb_vq *vq, struct msb_chain *c,
                 const struct fuse_in_header *ih, int plain)
{
    struct fuse_read_in ri;
    const uint32_t oh = sizeof(struct fuse_out_header);
    if (c->out_len != sizeof *ih + sizeof ri || c->in_len < oh || !m->table || !m->dircache)
        return 0;
    msb_iov_copy_from(c->iov, c->nout, sizeof *ih, &ri, sizeof ri);
    if (ri.offset > (uint64_t)INT64_MAX)
        return 0;   /* the tree's EINVAL */
    uint64_t t0 = now_ns();
    /* A directory handle (not unknown, released, or a file's) of the request's node: the
     * tree lists the handle's directory but looks names up in the request's node. */
    struct msb_handle h;
    if (msb_handles_get(m->table, ri.fh, &h) < 0 || !(h.perms & MSB_FS_DIR)
        || h.nodeid != ih->nodeid)
        return 0;
    /* On the root's device (the tree tags another device's st_ino); the root's ".."
     * shows the root's own ino. */
    struct msb_inode_info node;
    if (msb_inodes_get(m->inodes, ih->nodeid, &node) < 0 || node.dev != m->root_dev)
        return 0;
    struct listing d = { .fd = h.fd, .nodeid = ih->nodeid,
                         .is_root = ih->nodeid == FUSE_ROOT_ID, .root_ino = node.ino };
    uint32_t size = c->in_len - oh;
    size = ri.size < size ? ri.size : size;
    size = size < READDIR_MAX ? size : READDIR_MAX;
    uint32_t used, nrec;
    /* One request at a time per slot: the batch and the fd's reads are used whole. */
    struct batch *b = &m->dircache->slot[(ri.fh * 0x9e3779b97f4a7c15ull) >> 60];
    _Static_assert(BATCH_SLOTS == 16, "the slot is the fh hash's top 4 bits");
    pthread_mutex_lock(&b->lock);
    int ok = fill(m, &d, b, ri.fh, c, ih->opcode == FUSE_READDIRPLUS, plain,
                  (int64_t)ri.offset, size, &used, &nrec);
    pthread_mutex_unlock(&b->lock);
    if (!ok)
        return 0;
    struct fuse_out_header out = { .len = oh + used, .error = 0, .unique = ih->unique };
    msb_iov_copy_to(c->iov + c->nout, c->nin, 0, &out, sizeof out);
    int r = msb_vq_push(vq, c->head, oh + used);
    count(&m->stats.readdirs, 1);
    count(&m->stats.readdir_entries, nrec);
    count(&m->stats.readdir_ns, now_ns() - t0);
    return r < 0 ? r : 1;
}

int msb_readdir_serve(struct msb_meta *m, struct msb_vq *vq, struct msb_chain *c,
                      const struct fuse_in_header *ih)
{
    return serve(m, vq, c, ih, 0);
}

int msb_readdir_serve_plain(struct msb_meta *m, struct msb_vq *vq, struct msb_chain *c,
                            const struct fuse_in_header *ih)
{
    return ih->opcode == FUSE_READDIRPLUS ? serve(m, vq, c, ih, 1) : 0;
}
