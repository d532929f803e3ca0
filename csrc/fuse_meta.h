/* C answers for the hot metadata opcodes on the virtio-fs path (issue 11): GETATTR
 * (without FUSE_GETATTR_FH), LOOKUP of a plain name, FORGET, BATCH_FORGET, STATFS
 * (trees without a quota) and FLUSH (a handle in the C handle table while the tree holds
 * no record-lock description at all), from the one inode table (csrc/inodes.h) the Python tree
 * uses too. Other units answer more through msb_meta_serve's switch: UNLINK, RMDIR,
 * ACCESS and MKDIR (csrc/fuse_names.h), RENAME, RENAME2, READLINK, SYMLINK and LINK
 * (csrc/fuse_names2.h), READDIR and READDIRPLUS (csrc/fuse_readdir.h),
 * OPEN, OPENDIR, RELEASE, RELEASEDIR and CREATE (csrc/fuse_handles.h), GETXATTR and
 * LISTXATTR (csrc/fuse_xattr.h), SETATTR of the mode, owners and times
 * (csrc/fuse_setattr.h), ...
 *
 * The rule is fuse_datapath.c's: answer only what is unambiguous, hand everything
 * else back to Python untouched (it checks everything and replies the right errno).
 * Handed back: a session not initialised, node ids not in the table, names that are
 * not plain (no NUL, '/', ".", "..", 0 or > 255 bytes), request or reply room of any
 * unusual size, extensions, any errno but a LOOKUP's ENOENT, an inode on another
 * device than the root's (the tree tags those st_ino), a bound reached, a
 * malformed FORGET/BATCH_FORGET. Nothing is counted or added before the decision to
 * answer, so Python redoing a request from scratch sees the state it would have seen.
 *
 * Attribute shaping is the policy's one definition (msbfs/tree/policy.py AttrShape):
 * Python writes the tree's shape, timeout and open flags here (msbfs/fastmeta.py),
 * and leaves the path off (enabled 0) when the tree applies a rule C does not know
 * (an id map). Replies are encoded as msbfs/fuse/server.py encodes them, byte for byte.
 *
 * Threads: any number of serving threads at once; the configuration is written
 * before `enabled`/`ready` are set, the flags are read atomically. */
#ifndef MSBFS_FUSE_META_H
#define MSBFS_FUSE_META_H

#include <stdint.h>
#include "fuse_handles.h"
#include "fuse_names.h"
#include "fuse_names2.h"
#include "fuse_setattr.h"
#include "inodes.h"
#include "virtq.h"
#include "fuse_xattr.h"

struct fuse_in_header;   /* <linux/fuse.h> */

struct msb_fs_table;

struct msb_meta_stats {
    uint64_t lookups, lookup_ns, lookups_new, getattrs, getattr_ns, forgets, handed, statfs;
    uint64_t flushes;
    uint64_t readdirs, readdir_entries, readdir_ns;   /* csrc/fuse_readdir.c */
};

struct msb_meta {
    struct msb_inodes *inodes;
    int ready;                 /* the FUSE session is initialised (INIT .. DESTROY) */
    int enabled;               /* the tree's shape is one C applies */
    uint64_t root_dev;
    uint32_t mode_mask;
    int64_t squash_uid, squash_gid;   /* -1: no squash */
    int hide_rdev;
    uint64_t timeout_sec;
    uint32_t timeout_nsec;
    uint64_t lookup_flags, resolve;   /* the tree's openat2 of a new name */
    int statfs;                       /* the tree has no quota: STATFS is the host's */
    struct msb_names names;           /* UNLINK/RMDIR/ACCESS: csrc/fuse_names.h */
    struct msb_names2 names2;         /* RENAME(2)/READLINK/SYMLINK/LINK: csrc/fuse_names2.h */
    struct msb_open open;             /* OPEN/RELEASE(DIR): csrc/fuse_handles.h */
    struct msb_setattr setattr;       /* SETATTR (mode, times): csrc/fuse_setattr.h */
    /* The tree's record-lock descriptions (msbfs/tree/record_locks.py), written by
     * Python under its lock: 0 means a FLUSH has no owner's locks to drop, so C may
     * answer it (close(dup(fd)), as Tree.flush); any other value hands FLUSH back. */
    int lock_descs;
    struct msb_fs_table *table;       /* the handles FLUSH finds its fd in (attach) */
    struct msb_dircache *dircache;    /* READDIR batches kept per handle: fuse_readdir.h */
    struct msb_xattr xattr;           /* GETXATTR/LISTXATTR: csrc/fuse_xattr.h */
    struct msb_meta_stats stats;
};

struct msb_meta *msb_meta_new(struct msb_inodes *inodes);
void msb_meta_free(struct msb_meta *m);
void msb_meta_set_ready(struct msb_meta *m, int ready);
/* Serve metadata of table t's queues with m (NULL: none). */
void msb_meta_attach(struct msb_fs_table *t, struct msb_meta *m);
/* ih: c's request header, already copied out of guest memory and checked by the serve
 * loop (whole, ih->len == c->out_len, no extensions).
 * 1: answered and pushed; 0: Python's; < 0: the push's -errno (the queue broke). */
int msb_meta_serve(struct msb_meta *m, struct msb_vq *vq, struct msb_chain *c,
                   const struct fuse_in_header *ih);
void msb_meta_stats(struct msb_meta *m, struct msb_meta_stats *out);

#endif
