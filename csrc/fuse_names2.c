/* See fuse_names2.h. Each request is copied out of guest memory once (a hostile driver
 * may rewrite its buffers while we parse: what we check is what we use). */
#define _GNU_SOURCE
#include "fuse_names2.h"
#include "fuse_meta.h"
#include "fuse_reply.h"
#include "lookup.h"
#include "sys.h"
#include "tree.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/fuse.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#ifndef RENAME_NOREPLACE
#define RENAME_NOREPLACE (1 << 0)
#endif
#ifndef RENAME_EXCHANGE
#define RENAME_EXCHANGE (1 << 1)
#endif
#ifndef RENAME_WHITEOUT
#define RENAME_WHITEOUT (1 << 2)
#endif

#define NAME_MAX_ 255
#define PATH_MAX_ 4096               /* Tree.symlink: a target of PATH_MAX or more is refused */
#define ID_MAX 0xfffffffeu           /* Identities.of: larger is not an id (Python's EINVAL) */
/* The longest body parsed: a SYMLINK's name, its NUL, a target below PATH_MAX and its
 * NUL. Longer bodies (only trailing bytes could make one) go to Python. */
#define BODY_MAX (NAME_MAX_ + 1 + PATH_MAX_)

struct msb_names2 *msb_meta_names2(struct msb_meta *m)
{
    return &m->names2;
}

void msb_names2_stats(struct msb_meta *m, struct msb_names2_stats *out)
{
    const struct msb_names2_stats *s = &m->names2.stats;
    *out = (struct msb_names2_stats){
        __atomic_load_n(&s->renames, __ATOMIC_RELAXED),
        __atomic_load_n(&s->readlinks, __ATOMIC_RELAXED),
        __atomic_load_n(&s->symlinks, __ATOMIC_RELAXED),
        __atomic_load_n(&s->links, __ATOMIC_RELAXED),
    };
}

/* The codec's reading of a body of two strings after `args_len` bytes of arguments
 * (RENAME: old, new; SYMLINK: name, target): copied once into body[BODY_MAX + 1],
 * both NUL-terminated within it (bytes after the second NUL are ignored, as the codec
 * ignores them). 0 and the two strings' offsets and lengths, or -1: Python's. */
static int two_strings(const struct msb_chain *c, void *args, size_t args_len, char *body,
                       size_t *first_len, const char **second, size_t *second_len)
{
    size_t blen = c->out_len - sizeof(struct fuse_in_header);
    if (blen <= args_len || blen > BODY_MAX)
        return -1;
    msb_iov_copy_from(c->iov, c->nout, sizeof(struct fuse_in_header), body, blen);
    memcpy(args, body, args_len);
    const char *a = body + args_len, *end = body + blen;
    const char *nul = memchr(a, '\0', (size_t)(end - a));
    if (!nul)
        return -1;
    const char *b = nul + 1;
    const char *nul2 = memchr(b, '\0', (size_t)(end - b));
    if (!nul2)
        return -1;
    *first_len = (size_t)(nul - a);
    *second = b;
    *second_len = (size_t)(nul2 - b);
    return 0;
}

/* A parent C may use: in the table, on the root's device (the others are Python's). */
static int parent_ok(struct msb_meta *m, uint64_t nodeid)
{
    struct msb_inode_info info;
    return msb_inodes_get(m->inodes, nodeid, &info) == 0 && info.dev == m->root_dev;
}

/* Tree.rename without a quota. */
int msb_names2_rename(struct msb_meta *m, struct msb_vq *vq, struct msb_chain *c,
                      const struct fuse_in_header *ih, int rename2)
{
    struct msb_names2 *n = &m->names2;
    struct fuse_rename2_in ri = { 0 };
    char body[BODY_MAX + 1];
    size_t old_len, new_len;
    const char *newname;
    if (!n->rename || c->in_len < sizeof(struct fuse_out_header))
        return 0;
    size_t args_len = rename2 ? sizeof(struct fuse_rename2_in) : sizeof(struct fuse_rename_in);
    if (two_strings(c, &ri, args_len, body, &old_len, &newname, &new_len) < 0)
        return 0;
    const char *oldname = body + args_len;
    if (ri.flags & ~(uint32_t)(RENAME_NOREPLACE | RENAME_EXCHANGE | RENAME_WHITEOUT))
        return 0;   /* the tree's EINVAL */
    if (!msb_plain_name(oldname, old_len) || !msb_plain_name(newname, new_len)
        || !parent_ok(m, ih->nodeid) || !parent_ok(m, ri.newdir))
        return 0;
    int err = m->names.mutation_errno;
    if (!err) {
        int pfd = msb_inodes_fd(m->inodes, ih->nodeid);
        int npfd = pfd < 0 ? pfd : msb_inodes_fd(m->inodes, ri.newdir);
        if (npfd < 0)
            return 0;   /* re-opening one failed: the tree says how */
        if (!(ri.flags & RENAME_EXCHANGE))   /* what newname holds may lose its last name */
            msb_inodes_removing(m->inodes, ri.newdir, npfd, newname, new_len);
        int r;
        do
            r = msb_renameat2(pfd, oldname, npfd, newname, ri.flags);
        while (r == -EINTR);
        err = -r;
        if (!r) {   /* a named node of what moved follows it (csrc/inodes.h) */
            msb_inodes_moved(m->inodes, ri.newdir, npfd, newname, new_len);
            if (ri.flags & RENAME_EXCHANGE)
                msb_inodes_moved(m->inodes, ih->nodeid, pfd, oldname, old_len);
        }
    }
    count(&n->stats.renames, 1);
    return reply_error(vq, c, ih->unique, err);
}

/* Tree.readlink, and the codec's room rule (server.py _readlink). */
int msb_names2_readlink(struct msb_meta *m, struct msb_vq *vq, struct msb_chain *c,
                        const struct fuse_in_header *ih)
{
    struct msb_names2 *n = &m->names2;
    struct {
        struct fuse_out_header oh;
        char target[PATH_MAX_];
    } r;
    if (!n->readlink || c->in_len < sizeof r.oh)
        return 0;
    struct msb_inode_info info;
    if (msb_inodes_get(m->inodes, ih->nodeid, &info) < 0)
        return 0;
    if (info.kind != S_IFLNK) {
        count(&n->stats.readlinks, 1);
        return reply_error(vq, c, ih->unique, EINVAL);
    }
    int fd = msb_inodes_fd(m->inodes, ih->nodeid);
    if (fd < 0)
        return 0;
    ssize_t len = readlinkat(fd, "", r.target, sizeof r.target);
    if (len < 0 || (size_t)len == sizeof r.target)
        return 0;   /* an error, or a target that may not have fitted: Python's */
    count(&n->stats.readlinks, 1);
    if ((size_t)len > c->in_len - sizeof r.oh)
        return reply_error(vq, c, ih->unique, ENAMETOOLONG);
    uint32_t total = (uint32_t)(sizeof r.oh + (size_t)len);
    r.oh = (struct fuse_out_header){ .len = total, .error = 0, .unique = ih->unique };
    return push_reply(vq, c, &r, total);
}

/* Tree.symlink without a quota. Everything that may send the request back to Python
 * is decided before symlinkat; after it, the reply is C's. */
int msb_names2_symlink(struct msb_meta *m, struct msb_vq *vq, struct msb_chain *c,
                       const struct fuse_in_header *ih)
{
    struct msb_names2 *n = &m->names2;
    const struct msb_names *rules = &m->names;
    char body[BODY_MAX + 1];
    char none;
    size_t name_len, target_len;
    const char *target;
    if (!n->symlink || c->in_len < sizeof(struct fuse_out_header) + sizeof(struct fuse_entry_out))
        return 0;
    if (two_strings(c, &none, 0, body, &name_len, &target, &target_len) < 0
        || !msb_plain_name(body, name_len) || !parent_ok(m, ih->nodeid))
        return 0;
    const char *name = body;
    if (rules->mutation_errno) {
        count(&n->stats.symlinks, 1);
        return reply_error(vq, c, ih->unique, rules->mutation_errno);
    }
    if (target_len >= PATH_MAX_ || ih->uid > ID_MAX || ih->gid > ID_MAX
        || msb_inodes_check_room(m->inodes) < 0)
        return 0;   /* ENAMETOOLONG, EINVAL, EINVAL, ENFILE: Python's */
    int pfd = msb_inodes_fd(m->inodes, ih->nodeid);
    if (pfd < 0)
        return 0;
    int r;
    do
        r = symlinkat(target, pfd, name);
    while (r < 0 && errno == EINTR);
    count(&n->stats.symlinks, 1);
    if (r < 0)
        return reply_error(vq, c, ih->unique, errno);
    /* the mode asked for is moot: a symlink's is never changed */
    return msb_new_reply(m, vq, c, ih, pfd, name, 0777);
}

/* Tree.link without a quota. */
int msb_names2_link(struct msb_meta *m, struct msb_vq *vq, struct msb_chain *c,
                    const struct fuse_in_header *ih)
{
    struct msb_names2 *n = &m->names2;
    struct fuse_link_in li;
    char body[MSB_NEW_BODY_MAX + 1];
    if (!n->link || c->in_len < sizeof(struct fuse_out_header) + sizeof(struct fuse_entry_out))
        return 0;
    const char *name = msb_new_body(m, c, ih, &li, sizeof li, body);
    struct msb_inode_info old;
    /* The old node on the root's device: the entry shows its st_ino untagged. */
    if (!name || msb_inodes_get(m->inodes, li.oldnodeid, &old) < 0 || old.dev != m->root_dev)
        return 0;
    if (m->names.mutation_errno) {
        count(&n->stats.links, 1);
        return reply_error(vq, c, ih->unique, m->names.mutation_errno);
    }
    /* Held from here to the count of the new lookup, as the tree's requests are: a
     * FORGET on another queue cannot drop the old node in between. */
    msb_inodes_hold(m->inodes);
    int fd = msb_inodes_fd(m->inodes, li.oldnodeid);
    int npfd = fd < 0 ? fd : msb_inodes_fd(m->inodes, ih->nodeid);
    if (npfd < 0) {
        msb_inodes_unhold(m->inodes);
        return 0;
    }
    char path[32];
    snprintf(path, sizeof path, "/proc/self/fd/%d", fd);   /* our own fd, never a name */
    int r;
    do
        r = linkat(AT_FDCWD, path, npfd, name, AT_SYMLINK_FOLLOW);
    while (r < 0 && errno == EINTR);
    int err = r < 0 ? errno : 0;
    struct stat st;
    if (!err && fstat(fd, &st) < 0)
        err = errno;
    if (!err)
        err = -msb_inodes_ref(m->inodes, li.oldnodeid);
    msb_inodes_unhold(m->inodes);
    count(&n->stats.links, 1);
    if (err)
        return reply_error(vq, c, ih->unique, err);
    return reply_entry(m, vq, c, ih->unique, li.oldnodeid, old.submount, &st);
}
