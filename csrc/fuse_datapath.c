/* See fuse_datapath.h. The rule here: serve only what is unambiguous, hand back the rest. */
#define _GNU_SOURCE
#include "fuse_datapath.h"

#include <errno.h>
#include <linux/fuse.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>

/* ---- handle table ------------------------------------------------------------------- */

static uint32_t slot_of(uint64_t fh, uint32_t cap)
{
    /* fh values are small counters; mix them so neighbours do not cluster. */
    fh ^= fh >> 33;
    fh *= 0xff51afd7ed558ccdULL;
    fh ^= fh >> 33;
    return (uint32_t)fh & (cap - 1);
}

struct msb_fs_table *msb_fs_table_new(void)
{
    struct msb_fs_table *t = calloc(1, sizeof(*t));
    if (!t)
        return NULL;
    t->cap = 64;
    t->slots = calloc(t->cap, sizeof(*t->slots));
    if (!t->slots) {
        free(t);
        return NULL;
    }
    return t;
}

void msb_fs_table_free(struct msb_fs_table *t)
{
    if (t) {
        free(t->slots);
        free(t);
    }
}

void msb_fs_table_clear(struct msb_fs_table *t)
{
    memset(t->slots, 0, t->cap * sizeof(*t->slots));
    t->count = t->tombs = 0;
}

/* used: 0 empty, 1 live, 2 deleted (tombstone) */
static struct msb_fs_slot *find(const struct msb_fs_table *t, uint64_t fh)
{
    uint32_t i = slot_of(fh, t->cap);
    for (uint32_t n = 0; n < t->cap; n++, i = (i + 1) & (t->cap - 1)) {
        struct msb_fs_slot *s = &t->slots[i];
        if (s->used == 0)
            return NULL;
        if (s->used == 1 && s->fh == fh)
            return s;
    }
    return NULL;
}

static int grow(struct msb_fs_table *t)
{
    uint32_t ncap = t->count * 4 >= t->cap ? t->cap * 2 : t->cap; /* else only purge tombs */
    struct msb_fs_slot *ns = calloc(ncap, sizeof(*ns));
    if (!ns)
        return -ENOMEM;
    for (uint32_t i = 0; i < t->cap; i++) {
        struct msb_fs_slot *s = &t->slots[i];
        if (s->used != 1)
            continue;
        uint32_t j = slot_of(s->fh, ncap);
        while (ns[j].used)
            j = (j + 1) & (ncap - 1);
        ns[j] = *s;
    }
    free(t->slots);
    t->slots = ns;
    t->cap = ncap;
    t->tombs = 0;
    return 0;
}

int msb_fs_table_set(struct msb_fs_table *t, uint64_t fh, int fd, int dirs)
{
    struct msb_fs_slot *s = find(t, fh);
    if (!s) {
        if ((t->count + t->tombs + 1) * 2 > t->cap) {
            int r = grow(t);
            if (r < 0)
                return r;
        }
        uint32_t i = slot_of(fh, t->cap);
        while (t->slots[i].used == 1)
            i = (i + 1) & (t->cap - 1);
        s = &t->slots[i];
        if (s->used == 2)
            t->tombs--;
        s->used = 1;
        s->fh = fh;
        s->rfd = s->wfd = -1;
        t->count++;
    }
    if (dirs & MSB_FS_READ)
        s->rfd = fd;
    if (dirs & MSB_FS_WRITE)
        s->wfd = fd;
    return 0;
}

int msb_fs_table_del(struct msb_fs_table *t, uint64_t fh)
{
    struct msb_fs_slot *s = find(t, fh);
    if (!s)
        return 0;
    s->used = 2;
    s->rfd = s->wfd = -1;
    t->count--;
    t->tombs++;
    return 1;
}

int msb_fs_table_get(const struct msb_fs_table *t, uint64_t fh, int dir)
{
    const struct msb_fs_slot *s = find(t, fh);
    if (!s)
        return -1;
    return dir == MSB_FS_WRITE ? s->wfd : s->rfd;
}

/* ---- serving ------------------------------------------------------------------------- */

/* The part of iov[0..n) that starts `off` bytes in and is `len` bytes long, as iovecs in
 * out[]. Returns the count, or -1 when the list is shorter than off+len. */
static int iov_slice(const struct iovec *iov, int n, size_t off, size_t len, struct iovec *out)
{
    int k = 0;
    for (int i = 0; i < n && len > 0; i++) {
        size_t l = iov[i].iov_len;
        if (off >= l) {
            off -= l;
            continue;
        }
        size_t take = l - off < len ? l - off : len;
        out[k].iov_base = (uint8_t *)iov[i].iov_base + off;
        out[k].iov_len = take;
        k++;
        len -= take;
        off = 0;
    }
    return len ? -1 : k;
}

/* Scratch iovecs for one request (chains are at most MSB_MAX_CHAIN long). */
static __thread struct iovec scratch[MSB_MAX_CHAIN];

static void reply_header(struct msb_chain *c, uint32_t len, int32_t error, uint64_t unique)
{
    struct fuse_out_header oh = { .len = len, .error = error, .unique = unique };
    msb_iov_copy_to(c->iov + c->nout, c->nin, 0, &oh, sizeof(oh));
}

/* Serve one chain if it is a fast READ/WRITE. Returns the used length (> 0) when it was
 * answered here, 0 when it belongs to Python. */
static uint32_t serve_one(struct msb_fs_table *t, struct msb_chain *c, struct msb_fs_stats *st)
{
    struct fuse_in_header ih;
    const size_t hl = sizeof(ih);
    if (c->out_len < hl || c->in_len < sizeof(struct fuse_out_header))
        return 0;
    if (msb_iov_copy_from(c->iov, c->nout, 0, &ih, hl) != hl)
        return 0;
    if (ih.len != c->out_len || ih.total_extlen != 0)
        return 0;

    if (ih.opcode == FUSE_READ) {
        struct fuse_read_in ri;
        if (c->out_len != hl + sizeof(ri))
            return 0;
        msb_iov_copy_from(c->iov, c->nout, hl, &ri, sizeof(ri));
        if (ri.offset > (uint64_t)INT64_MAX)
            return 0;
        /* The reply must fit the writable part; otherwise Python answers (it clamps). */
        if ((uint64_t)ri.size + sizeof(struct fuse_out_header) > c->in_len)
            return 0;
        int fd = msb_fs_table_get(t, ri.fh, MSB_FS_READ);
        if (fd < 0)
            return 0;
        int k = iov_slice(c->iov + c->nout, c->nin, sizeof(struct fuse_out_header), ri.size, scratch);
        if (k < 0)
            return 0;
        ssize_t n = ri.size ? preadv(fd, scratch, k, (off_t)ri.offset) : 0;
        if (n < 0) {
            st->errors++;
            reply_header(c, sizeof(struct fuse_out_header), -errno, ih.unique);
            return sizeof(struct fuse_out_header);
        }
        st->reads++;
        st->read_bytes += (uint64_t)n;
        uint32_t len = sizeof(struct fuse_out_header) + (uint32_t)n;
        reply_header(c, len, 0, ih.unique);
        return len;
    }

    if (ih.opcode == FUSE_WRITE) {
        struct fuse_write_in wi;
        const size_t pre = hl + sizeof(wi);
        const size_t olen = sizeof(struct fuse_out_header) + sizeof(struct fuse_write_out);
        if (c->out_len < pre || c->in_len < olen)
            return 0;
        msb_iov_copy_from(c->iov, c->nout, hl, &wi, sizeof(wi));
        if ((uint64_t)wi.size != c->out_len - pre || wi.offset > (uint64_t)INT64_MAX)
            return 0;
        int fd = msb_fs_table_get(t, wi.fh, MSB_FS_WRITE);
        if (fd < 0)
            return 0;
        if (wi.write_flags & FUSE_WRITE_KILL_SUIDGID) {
            /* Clearing set-id bits is the tree's rule: only files without them stay here. */
            struct stat sb;
            if (fstat(fd, &sb) < 0 || (sb.st_mode & (S_ISUID | S_ISGID)))
                return 0;
        }
        int k = iov_slice(c->iov, c->nout, pre, wi.size, scratch);
        if (k < 0)
            return 0;
        ssize_t n = wi.size ? pwritev(fd, scratch, k, (off_t)wi.offset) : 0;
        if (n < 0) {
            st->errors++;
            reply_header(c, sizeof(struct fuse_out_header), -errno, ih.unique);
            return sizeof(struct fuse_out_header);
        }
        st->writes++;
        st->write_bytes += (uint64_t)n;
        struct fuse_write_out wo = { .size = (uint32_t)n };
        reply_header(c, olen, 0, ih.unique);
        msb_iov_copy_to(c->iov + c->nout, c->nin, sizeof(struct fuse_out_header), &wo, sizeof(wo));
        return olen;
    }
    return 0;
}

int msb_fs_serve(struct msb_vq *vq, struct msb_fs_table *t, struct msb_chain *slow,
                 int max_slow, int budget, struct msb_fs_stats *st, int *drained)
{
    int nslow = 0;
    *drained = 0;
    while (nslow < max_slow && budget-- > 0) {
        struct msb_chain *c = &slow[nslow];
        int r = msb_vq_pop(vq, c, 1);
        if (r < 0)
            return r;
        if (r == 0) {
            /* Only an empty pop re-arms the driver's kick (EVENT_IDX avail_event). */
            *drained = 1;
            break;
        }
        uint32_t len = serve_one(t, c, st);
        if (len == 0) {
            st->slow++;
            nslow++;
            continue;
        }
        /* Pushed at once, signalled by the caller once per round: measured through the
         * frontend, a signal per reply costs the driver a wake-up per reply and halves
         * 4 KiB throughput on a busy 2-CPU host. */
        r = msb_vq_push(vq, c->head, len);
        if (r < 0)
            return r;
    }
    return nslow;
}

/* ---- the slow path's transport -------------------------------------------------------- */

uint32_t msb_fs_gather(const struct msb_chain *c, void *buf, uint32_t cap)
{
    msb_iov_copy_from(c->iov, c->nout, 0, buf, c->out_len < cap ? c->out_len : cap);
    return c->out_len;
}

int64_t msb_fs_answer(struct msb_vq *vq, const struct msb_chain *c, const void *reply, uint32_t len)
{
    if (len > c->in_len)
        return -EMSGSIZE;
    msb_iov_copy_to(c->iov + c->nout, c->nin, 0, reply, len);
    int r = msb_vq_push(vq, c->head, len);
    return r < 0 ? r : (int64_t)len;
}
