/* See fuse_names.h. Each request is copied out of guest memory once (a hostile driver
 * may rewrite its buffers while we parse: what we check is what we use). */
#define _GNU_SOURCE
#include "fuse_names.h"
#include "fuse_meta.h"
#include "fuse_reply.h"
#include "lookup.h"
#include "sys.h"
#include "tree.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/fuse.h>
#include <stdio.h>
#include <sys/xattr.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* A body we parse: the name, its NUL, and whatever trails it (ignored, as the Python
 * codec ignores it). Longer bodies go to Python. */
#define NAME_BODY_MAX 512
#define ID_MAX 0xfffffffeu           /* Identities.of: larger is not an id (EINVAL) */

struct msb_names *msb_meta_names(struct msb_meta *m)
{
    return &m->names;
}

void msb_names_stats(struct msb_meta *m, struct msb_names_stats *out)
{
    const struct msb_names_stats *s = &m->names.stats;
    *out = (struct msb_names_stats){
        __atomic_load_n(&s->unlinks, __ATOMIC_RELAXED),
        __atomic_load_n(&s->rmdirs, __ATOMIC_RELAXED),
        __atomic_load_n(&s->accesses, __ATOMIC_RELAXED),
        __atomic_load_n(&s->access_ns, __ATOMIC_RELAXED),
        __atomic_load_n(&s->mkdirs, __ATOMIC_RELAXED),
    };
}

/* Tree.unlink / Tree.rmdir without a quota: the parent's view (EBADF for an unknown id:
 * Python's), the name's checks (anything not plain: Python's), the policy's mutation
 * errno, then unlinkat's errno, whatever it is (os.unlink/os.rmdir raise it and the
 * codec replies it; EINTR is retried as Python retries it). */
int msb_names_remove(struct msb_meta *m, struct msb_vq *vq, struct msb_chain *c,
                     const struct fuse_in_header *ih, int dir)
{
    struct msb_names *n = &m->names;
    char body[NAME_BODY_MAX + 1];
    size_t blen = c->out_len - sizeof *ih;
    if (!n->remove || blen == 0 || blen > NAME_BODY_MAX
        || c->in_len < sizeof(struct fuse_out_header))
        return 0;
    msb_iov_copy_from(c->iov, c->nout, sizeof *ih, body, blen);
    const char *nul = memchr(body, '\0', blen);
    if (!nul || !msb_plain_name(body, (size_t)(nul - body)))
        return 0;
    struct msb_inode_info parent;
    if (msb_inodes_get(m->inodes, ih->nodeid, &parent) < 0 || parent.dev != m->root_dev)
        return 0;
    int err = n->mutation_errno;
    if (!err) {
        int pfd = msb_inodes_fd(m->inodes, ih->nodeid);
        if (pfd < 0)
            return 0;   /* re-opening it failed: the tree says how */
        msb_inodes_removing(m->inodes, ih->nodeid, pfd, body, (size_t)(nul - body));
        int r;
        do
            r = unlinkat(pfd, body, dir ? AT_REMOVEDIR : 0);
        while (r < 0 && errno == EINTR);
        err = r < 0 ? errno : 0;
    }
    count(dir ? &n->stats.rmdirs : &n->stats.unlinks, 1);
    return reply_error(vq, c, ih->unique, err);
}

/* Tree.access: the node's view (kind), the mask's range, the policy's errno, then
 * faccessat2 as the caller (Identities.of: no switch for a daemon that is not root, nor
 * for uid 0 with gid 0). The fd is taken before switching: it must be one the table
 * holds open, since re-opening an evicted one needs the daemon's own capabilities (the
 * tree re-opens it after switching: Python's, to answer the same). */
int msb_names_access(struct msb_meta *m, struct msb_vq *vq, struct msb_chain *c,
                     const struct fuse_in_header *ih)
{
    struct msb_names *n = &m->names;
    struct fuse_access_in ai;
    if (!n->access || c->out_len < sizeof *ih + sizeof ai
        || c->in_len < sizeof(struct fuse_out_header))
        return 0;
    msb_iov_copy_from(c->iov, c->nout, sizeof *ih, &ai, sizeof ai);
    if (ai.mask > 7)
        return 0;   /* EINVAL, Python's */
    uint64_t t0 = now_ns();
    struct msb_inode_info info;
    if (msb_inodes_get(m->inodes, ih->nodeid, &info) < 0)
        return 0;
    int err = n->access_errno[((info.kind >> 12) & 15) * 8 + ai.mask];
    if (!err) {
        int as_caller = n->creds != MSB_NAMES_CREDS_OWN && (ih->uid != 0 || ih->gid != 0);
        if (as_caller && (n->creds != MSB_NAMES_CREDS_SWITCH || ih->uid > ID_MAX
                          || ih->gid > ID_MAX))
            return 0;
        int fd = msb_inodes_fd(m->inodes, ih->nodeid);
        if (fd < 0)
            return 0;
        if (as_caller && msb_switch_creds(ih->uid, ih->gid, (size_t)-1, NULL) < 0) {
            /* not switched (capabilities dropped): Python raises it as the tree does */
            msb_switch_creds(n->own_uid, n->own_gid, (size_t)-1, NULL);
            return 0;
        }
        err = -msb_faccessat2(fd, "", (int)ai.mask, AT_EACCESS | AT_EMPTY_PATH);
        if (as_caller)
            msb_switch_creds(n->own_uid, n->own_gid, (size_t)-1, NULL);
    }
    count(&n->stats.accesses, 1);
    count(&n->stats.access_ns, now_ns() - t0);
    return reply_error(vq, c, ih->unique, err);
}

/* ---- creating ----------------------------------------------------------------------- */
int msb_new_mode(const struct msb_names *n, uint32_t mode, uint32_t umask, uint32_t bits,
                 uint32_t *want)
{
    if (umask > 07777)
        return -1;
    *want = mode & bits & ~umask & n->stored_mask;
    return 0;
}

int msb_new_acl_parent(const struct msb_names *n, int pfd)
{
    if (!n->acl_check)
        return 0;
    char path[40];
    snprintf(path, sizeof path, "/proc/self/fd/%d", pfd);
    if (getxattr(path, "system.posix_acl_default", NULL, 0) >= 0)
        return 1;
    return errno != ENODATA && errno != EOPNOTSUPP;
}

int msb_new_lookup(struct msb_meta *m, int pfd, const char *name, struct stat *st,
                   struct msb_inode_info *info)
{
    int fd = msb_openat2(pfd, name, m->lookup_flags, 0, m->resolve);
    if (fd < 0)
        return fd;
    if (fstat(fd, st) < 0) {
        int err = -errno;
        close(fd);
        return err;
    }
    /* Made in a parent on the root's device, so on it, unless the host mounted something
     * over the name meanwhile: the tree would tag that inode's number (Tree._ino), which
     * C does not know. The host raced the op: EIO, the one answer the tree would not
     * give (it would describe the mount's root). */
    if ((uint64_t)st->st_dev != m->root_dev) {
        close(fd);
        return -EIO;
    }
    return msb_inodes_add(m->inodes, fd, st->st_dev, st->st_ino, st->st_mode, 0, info);
}

const char *msb_new_body(struct msb_meta *m, const struct msb_chain *c,
                         const struct fuse_in_header *ih, void *args, size_t args_len,
                         char *body)
{
    size_t blen = c->out_len - sizeof *ih;
    if (blen <= args_len || blen > MSB_NEW_BODY_MAX)
        return NULL;
    msb_iov_copy_from(c->iov, c->nout, sizeof *ih, body, blen);
    memcpy(args, body, args_len);
    const char *name = body + args_len;
    const char *nul = memchr(name, '\0', blen - args_len);
    if (!nul || !msb_plain_name(name, (size_t)(nul - name)))
        return NULL;
    struct msb_inode_info parent;
    if (msb_inodes_get(m->inodes, ih->nodeid, &parent) < 0 || parent.dev != m->root_dev)
        return NULL;
    return name;
}

int msb_new_owner_mode(const struct msb_names *n, int fd, int opath, struct stat *st,
                       uint32_t want, uint32_t uid, uint32_t gid, int pfd)
{
    uint32_t target = ((st->st_mode & 07777) | (want & 0777 & n->daemon_umask)) & n->stored_mask;
    int changed = 0;
    if (n->creds != MSB_NAMES_CREDS_OWN) {   /* Identities.enabled: the daemon is root */
        int64_t cu = uid == st->st_uid ? -1 : (int64_t)uid, cg = -1;
        if (gid != st->st_gid) {             /* the parent is stat'd only then, as there */
            struct stat ps;
            if (fstat(pfd, &ps) < 0)
                return -errno;
            if (!(ps.st_mode & S_ISGID))
                cg = gid;
        }
        if (cu != -1 || cg != -1) {
            int r = msb_fchownat(fd, "", cu, cg, AT_EMPTY_PATH);
            if (r < 0)
                return r;
            changed = 1;
        }
    }
    if (changed && fstat(fd, st) < 0)
        return -errno;
    if (!S_ISLNK(st->st_mode) && (st->st_mode & 07777) != target) {
        char path[32];
        snprintf(path, sizeof path, "/proc/self/fd/%d", fd);   /* our own fd, never a name */
        if ((opath ? chmod(path, target) : fchmod(fd, target)) < 0 || fstat(fd, st) < 0)
            return -errno;
    }
    return 0;
}

/* Tree.mkdir without a quota (nor a parent's default ACL). Everything that may send the request back
 * to Python is decided before mkdirat; after it, the reply is C's. */
int msb_names_mkdir(struct msb_meta *m, struct msb_vq *vq, struct msb_chain *c,
                    const struct fuse_in_header *ih)
{
    struct msb_names *n = &m->names;
    struct fuse_mkdir_in mi;
    char body[MSB_NEW_BODY_MAX + 1];
    if (!n->mkdir || c->in_len < sizeof(struct fuse_out_header) + sizeof(struct fuse_entry_out))
        return 0;
    const char *name = msb_new_body(m, c, ih, &mi, sizeof mi, body);
    if (!name)
        return 0;
    if (n->mutation_errno) {
        count(&n->stats.mkdirs, 1);
        return reply_error(vq, c, ih->unique, n->mutation_errno);
    }
    uint32_t want;
    if (msb_new_mode(n, mi.mode, mi.umask, 01777, &want) < 0 || ih->uid > ID_MAX
        || ih->gid > ID_MAX || msb_inodes_check_room(m->inodes) < 0)
        return 0;   /* EINVAL, EINVAL, ENFILE: Python's */
    int pfd = msb_inodes_fd(m->inodes, ih->nodeid);
    if (pfd < 0 || msb_new_acl_parent(n, pfd))
        return 0;
    int r;
    do
        r = mkdirat(pfd, name, want);
    while (r < 0 && errno == EINTR);
    count(&n->stats.mkdirs, 1);
    if (r < 0)
        return reply_error(vq, c, ih->unique, errno);
    return msb_new_reply(m, vq, c, ih, pfd, name, want);
}

int msb_new_reply(struct msb_meta *m, struct msb_vq *vq, struct msb_chain *c,
                  const struct fuse_in_header *ih, int pfd, const char *name, uint32_t want)
{
    struct stat st;
    struct msb_inode_info info;
    /* Held as the tree's requests are (msb_fs_slow_begin): a FORGET of the new node id
     * on another queue (a guest guessing it) does not drop it before we are done. */
    msb_inodes_hold(m->inodes);
    int err = msb_new_lookup(m, pfd, name, &st, &info);
    if (!err) {
        /* the table's fd of the node, as Inode.fd gives it (ESTALE: forgotten since) */
        int fd = msb_inodes_fd(m->inodes, info.nodeid);
        err = fd == -EBADF ? -ESTALE : fd < 0 ? fd
              : msb_new_owner_mode(&m->names, fd, 1, &st, want, ih->uid, ih->gid, pfd);
    }
    msb_inodes_unhold(m->inodes);
    if (err)
        return reply_error(vq, c, ih->unique, -err);
    return reply_entry(m, vq, c, ih->unique, info.nodeid, info.submount, &st);
}
