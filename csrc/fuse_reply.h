/* What every opcode of the C metadata path (fuse_meta.c, and the units it dispatches to:
 * fuse_names.c, ...) needs to answer: its counters, the clock of its timings, and the
 * replies, encoded as msbfs/fuse/replies.py encodes them, byte for byte. One copy,
 * included by each unit (static inline: each call is as cheap as it was in one file).
 *
 * Every reply function returns what msb_meta_serve returns: 1 answered and pushed, or
 * the push's -errno (the queue broke). */
#ifndef MSBFS_FUSE_REPLY_H
#define MSBFS_FUSE_REPLY_H

#include <linux/fuse.h>
#include <stdint.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "fuse_meta.h"
#include "virtq.h"

static inline void count(uint64_t *c, uint64_t n)
{
    __atomic_add_fetch(c, n, __ATOMIC_RELAXED);
}

static inline uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* Tree._attr: the policy's shape applied to a host stat (the root's device only). */
static inline void shape_attr(const struct msb_meta *m, const struct stat *st, int submount,
                              struct fuse_attr *a)
{
    *a = (struct fuse_attr){
        .ino = st->st_ino,
        .size = (uint64_t)st->st_size,
        .blocks = (uint64_t)st->st_blocks,
        .atime = (uint64_t)st->st_atim.tv_sec,
        .mtime = (uint64_t)st->st_mtim.tv_sec,
        .ctime = (uint64_t)st->st_ctim.tv_sec,
        .atimensec = (uint32_t)st->st_atim.tv_nsec,
        .mtimensec = (uint32_t)st->st_mtim.tv_nsec,
        .ctimensec = (uint32_t)st->st_ctim.tv_nsec,
        .mode = st->st_mode & m->mode_mask,
        .nlink = (uint32_t)st->st_nlink,
        .uid = m->squash_uid < 0 ? st->st_uid : (uint32_t)m->squash_uid,
        .gid = m->squash_gid < 0 ? st->st_gid : (uint32_t)m->squash_gid,
        /* nodev: a device node stays visible but names no device */
        .rdev = m->hide_rdev && st->st_rdev ? 0 : (uint32_t)st->st_rdev,
        .blksize = (uint32_t)st->st_blksize,
        .flags = submount ? FUSE_ATTR_SUBMOUNT : 0,
    };
}

static inline int push_reply(struct msb_vq *vq, struct msb_chain *c, const void *reply,
                             uint32_t len)
{
    msb_iov_copy_to(c->iov + c->nout, c->nin, 0, reply, len);
    int r = msb_vq_push(vq, c->head, len);
    return r < 0 ? r : 1;
}

static inline int reply_error(struct msb_vq *vq, struct msb_chain *c, uint64_t unique, int err)
{
    struct fuse_out_header oh = { .len = sizeof oh, .error = -err, .unique = unique };
    return push_reply(vq, c, &oh, sizeof oh);
}

/* replies.attr_reply: GETATTR's and SETATTR's reply, the tree's attribute timeout and
 * the shaped attrs. The room it needs: MSB_ATTR_REPLY_LEN. */
#define MSB_ATTR_REPLY_LEN (sizeof(struct fuse_out_header) + sizeof(struct fuse_attr_out))
static inline int reply_attr(const struct msb_meta *m, struct msb_vq *vq, struct msb_chain *c,
                             uint64_t unique, int submount, const struct stat *st)
{
    struct {
        struct fuse_out_header oh;
        struct fuse_attr_out a;
    } r;
    _Static_assert(sizeof r == 16 + 104, "fuse_out_header + fuse_attr_out");
    memset(&r, 0, sizeof r);
    r.oh = (struct fuse_out_header){ .len = sizeof r, .error = 0, .unique = unique };
    r.a.attr_valid = m->timeout_sec;
    r.a.attr_valid_nsec = m->timeout_nsec;
    shape_attr(m, st, submount, &r.a.attr);
    return push_reply(vq, c, &r, sizeof r);
}

/* replies.encode_entry: node id, generation 0, the tree's timeouts, the shaped attrs.
 * The one encoding of an entry for LOOKUP, MKDIR, CREATE and READDIRPLUS records. */
static inline void fill_entry(const struct msb_meta *m, struct fuse_entry_out *e,
                              uint64_t nodeid, int submount, const struct stat *st)
{
    memset(e, 0, sizeof *e);
    e->nodeid = nodeid;
    e->entry_valid = e->attr_valid = m->timeout_sec;
    e->entry_valid_nsec = e->attr_valid_nsec = m->timeout_nsec;
    shape_attr(m, st, submount, &e->attr);
}

static inline int reply_entry(const struct msb_meta *m, struct msb_vq *vq, struct msb_chain *c,
                              uint64_t unique, uint64_t nodeid, int submount,
                              const struct stat *st)
{
    struct {
        struct fuse_out_header oh;
        struct fuse_entry_out e;
    } r;
    _Static_assert(sizeof r == 16 + 128, "fuse_out_header + fuse_entry_out");
    r.oh = (struct fuse_out_header){ .len = sizeof r, .error = 0, .unique = unique };
    fill_entry(m, &r.e, nodeid, submount, st);
    return push_reply(vq, c, &r, sizeof r);
}

#endif
