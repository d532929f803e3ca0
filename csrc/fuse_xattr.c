/* See fuse_xattr.h. Each request is copied out of guest memory once (a hostile driver
 * may rewrite its buffers while we parse: what we check is what we use). */
#define _GNU_SOURCE
#include "fuse_xattr.h"
#include "fuse_meta.h"
#include "fuse_reply.h"

#include <errno.h>
#include <linux/fuse.h>
#include <stdio.h>
#include <string.h>
#include <sys/xattr.h>

/* A GETXATTR body we parse: fuse_getxattr_in, a name of at most XATTR_NAME_MAX bytes
 * and its NUL (what trails it is ignored, as the codec ignores it). Longer: Python's. */
#define GET_BODY_MAX (sizeof(struct fuse_getxattr_in) + MSB_XATTR_HOST_MAX + 1)

struct msb_xattr *msb_meta_xattr(struct msb_meta *m)
{
    return &m->xattr;
}

void msb_xattr_stats(struct msb_meta *m, struct msb_xattr_stats *out)
{
    const struct msb_xattr_stats *s = &m->xattr.stats;
    *out = (struct msb_xattr_stats){
        __atomic_load_n(&s->getxattrs, __ATOMIC_RELAXED),
        __atomic_load_n(&s->getxattr_ns, __ATOMIC_RELAXED),
        __atomic_load_n(&s->listxattrs, __ATOMIC_RELAXED),
        __atomic_load_n(&s->enosys, __ATOMIC_RELAXED),
    };
}

/* The node the tree would read through (Tree._inodes.get, Inode.fd): in the table, on
 * the root's device (the tree tags other devices' inode numbers; fuse_meta.c's rule),
 * its fd at hand (re-opening an evicted one failed: the tree says how). -1: Python's. */
static int node_fd(struct msb_meta *m, uint64_t nodeid)
{
    struct msb_inode_info info;
    if (msb_inodes_get(m->inodes, nodeid, &info) < 0 || info.dev != m->root_dev)
        return -1;
    int fd = msb_inodes_fd(m->inodes, nodeid);
    return fd < 0 ? -1 : fd;
}

/* The hot name the body names, or NULL (any other name, or one Python did not table). */
static const struct msb_xattr_hot *hot_name(const struct msb_xattr *x, const char *name,
                                            size_t len)
{
    for (int i = 0; i < MSB_XATTR_HOT; i++) {
        const struct msb_xattr_hot *h = &x->hot[i];
        if (h->client_len && h->client_len == len && memcmp(h->client, name, len) == 0)
            return h;
    }
    return NULL;
}

static int serve_get(struct msb_meta *m, struct msb_vq *vq, struct msb_chain *c,
                     const struct fuse_in_header *ih)
{
    struct msb_xattr *x = &m->xattr;
    char body[GET_BODY_MAX];
    size_t blen = c->out_len - sizeof *ih;
    struct fuse_getxattr_in gi;
    if (!x->get || blen <= sizeof gi || blen > sizeof body)
        return 0;   /* short: the codec's EINVAL; long: not a hot name */
    msb_iov_copy_from(c->iov, c->nout, sizeof *ih, body, blen);
    memcpy(&gi, body, sizeof gi);
    const char *name = body + sizeof gi;
    const char *nul = memchr(name, '\0', blen - sizeof gi);
    if (!nul)
        return 0;   /* unterminated: the codec's EINVAL */
    const struct msb_xattr_hot *h = hot_name(x, name, (size_t)(nul - name));
    if (!h)
        return 0;
    uint64_t t0 = now_ns();
    int fd = node_fd(m, ih->nodeid);
    if (fd < 0)
        return 0;
    struct {
        struct fuse_out_header oh;
        union {
            struct fuse_getxattr_out go;
            char value[MSB_XATTR_VALUE_MAX];
        } u;
    } rep;
    int err = h->err;
    uint32_t len = 0;
    if (!err) {
        char path[32];
        snprintf(path, sizeof path, "/proc/self/fd/%d", fd);   /* our own fd, as _proc */
        ssize_t n = getxattr(path, h->host, rep.u.value, sizeof rep.u.value);
        if (n < 0 && (errno == ERANGE || errno == EINTR))
            return 0;   /* larger than our buffer (Python reads it whole), or retry there */
        if (n < 0) {
            err = errno;
        } else if (gi.size == 0) {
            /* the length alone; the codec builds it whatever the room: Python's if short */
            if (c->in_len < sizeof rep.oh + sizeof rep.u.go)
                return 0;
            rep.u.go = (struct fuse_getxattr_out){ .size = (uint32_t)n };
            len = sizeof rep.u.go;
        } else if ((size_t)n > gi.size || (size_t)n > c->in_len - sizeof rep.oh) {
            err = ERANGE;   /* larger than the size asked for, or than the reply room */
        } else {
            len = (uint32_t)n;
        }
    }
    count(&x->stats.getxattrs, 1);
    count(&x->stats.getxattr_ns, now_ns() - t0);
    if (err)
        return reply_error(vq, c, ih->unique, err);
    rep.oh = (struct fuse_out_header){ .len = sizeof rep.oh + len, .error = 0,
                                       .unique = ih->unique };
    return push_reply(vq, c, &rep, sizeof rep.oh + len);
}

static int serve_list(struct msb_meta *m, struct msb_vq *vq, struct msb_chain *c,
                      const struct fuse_in_header *ih)
{
    struct msb_xattr *x = &m->xattr;
    struct fuse_getxattr_in gi;
    if (!x->list || c->out_len < sizeof *ih + sizeof gi)
        return 0;
    msb_iov_copy_from(c->iov, c->nout, sizeof *ih, &gi, sizeof gi);
    int fd = node_fd(m, ih->nodeid);
    if (fd < 0)
        return 0;
    char path[32];
    snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
    ssize_t n = listxattr(path, NULL, 0);
    if (n > 0 || (n < 0 && errno == EINTR))
        return 0;   /* names to filter through XattrRule.client_name: Python's */
    int err = n < 0 ? errno : 0;
    struct {
        struct fuse_out_header oh;
        struct fuse_getxattr_out go;
    } rep;
    uint32_t len = sizeof rep.oh;
    if (!err && gi.size == 0) {
        if (c->in_len < sizeof rep)
            return 0;
        rep.go = (struct fuse_getxattr_out){ .size = 0 };
        len = sizeof rep;
    }
    count(&x->stats.listxattrs, 1);
    if (err)
        return reply_error(vq, c, ih->unique, err);
    /* an empty list with a size: no bytes (0 fits any size and any room) */
    rep.oh = (struct fuse_out_header){ .len = len, .error = 0, .unique = ih->unique };
    return push_reply(vq, c, &rep, len);
}

/* FuseSession._xattrs_off first: without xattrs the answer is ENOSYS before the body is
 * read (the kernel then stops asking). Room for a header is the codec's floor (less:
 * its EINVAL, Python's). */
int msb_xattr_serve(struct msb_meta *m, struct msb_vq *vq, struct msb_chain *c,
                    const struct fuse_in_header *ih)
{
    struct msb_xattr *x = &m->xattr;
    if (c->in_len < sizeof(struct fuse_out_header))
        return 0;
    if (x->off) {
        count(&x->stats.enosys, 1);
        return reply_error(vq, c, ih->unique, ENOSYS);
    }
    return ih->opcode == FUSE_GETXATTR ? serve_get(m, vq, c, ih) : serve_list(m, vq, c, ih);
}
