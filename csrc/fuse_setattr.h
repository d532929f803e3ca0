/* C answers for SETATTR on the virtio-fs path (issue 11): the chmod and utimes a guest
 * sends after every file it unpacks (a fifth of an untar's requests), dispatched from
 * msb_meta_serve (csrc/fuse_meta.c) with its rule: answer only what is unambiguous,
 * hand everything else back to Python untouched (it checks everything and replies the
 * right errno), count and change nothing before the decision to answer.
 *
 * Tree.setattr (msbfs/tree/tree.py), as the daemon (no creds switch, as there), for
 * requests whose changes are FATTR_MODE, FATTR_UID/FATTR_GID and the times (FATTR_ATIME,
 * FATTR_MTIME, FATTR_ATIME_NOW, FATTR_MTIME_NOW), with or without FATTR_FH; bits the
 * tree ignores (FATTR_CTIME, FATTR_LOCKOWNER, unknown ones) are ignored here too.
 * FATTR_SIZE is Python's (a quota's charge, the writable fd it opens), and so is a
 * chown beside FATTR_KILL_SUIDGID (what it kills depends on the caller's group: the
 * kernel sends it with every chown of a non-directory); alone, KILL_SUIDGID does
 * nothing there (nor here). In the tree's order:
 * - the inode (unknown ids, another device than the root's: Python's);
 * - any change: the policy's mutation errno (struct msb_names' mutation_errno, the
 *   one Policy.c_decisions compiled: readonly is EROFS);
 * - FATTR_FH: a file handle of the table, else EBADF (HandleTable.file); one of
 *   another node is no handle of this one (ignored, as the tree ignores it);
 * - FATTR_MODE: `mode & 07777` as Policy.stored_mode stores it (struct msb_names'
 *   stored_mask, only when the policy's rule is that AND mask: `mode` says so); a
 *   symlink is EOPNOTSUPP; fchmod on the handle's fd, else chmod of
 *   /proc/self/fd/<the inode's O_PATH fd>. A mode beyond 0177777 (EINVAL): Python's;
 * - FATTR_UID/FATTR_GID: fchownat(AT_EMPTY_PATH) on the O_PATH fd, -1 for the one
 *   absent; the ids are the host's (a tree with an id map has no C path at all); one
 *   beyond 0xfffffffe (EINVAL): Python's;
 * - the times: utimensat(AT_EMPTY_PATH) on the O_PATH fd with Tree._timespec's
 *   values: NOW wins over a given time, a given time is the kernel's signed tv_sec
 *   plus any u32 nsec carried into it, absent is UTIME_OMIT; a time beyond a 64-bit
 *   tv_sec (EINVAL): Python's, decided before anything is done;
 * - the reply: the inode's fstat, shaped (shape_attr) with the tree's timeout, or the
 *   first failing step's errno.
 *
 * Threads: the handle's fd is looked up inside the serving round's grace section, as
 * FLUSH's (a RELEASE on another queue closes it only after the round). */
#ifndef MSBFS_FUSE_SETATTR_H
#define MSBFS_FUSE_SETATTR_H

#include <stdint.h>

struct fuse_in_header;
struct msb_meta;
struct msb_vq;
struct msb_chain;

struct msb_setattr_stats {
    uint64_t setattrs, setattr_ns, chmods, utimes, chowns;
};

struct msb_setattr {
    int on;      /* SETATTR answered here (times, and no change at all) */
    int mode;    /* FATTR_MODE too: names.stored_mask is Policy.stored_mode's mask */
    struct msb_setattr_stats stats;
};

/* msb_meta_serve's contract: 1 answered and pushed; 0 Python's; < 0 the push's -errno. */
int msb_setattr_serve(struct msb_meta *m, struct msb_vq *vq, struct msb_chain *c,
                      const struct fuse_in_header *ih);

/* For Python (msbfs/fastsetattr.py): the switches inside m (written before m->enabled),
 * and what was answered. */
struct msb_setattr *msb_meta_setattr(struct msb_meta *m);
void msb_setattr_stats(struct msb_meta *m, struct msb_setattr_stats *out);

#endif
