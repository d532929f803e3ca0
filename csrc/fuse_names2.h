/* C answers for RENAME, RENAME2, READLINK, SYMLINK and LINK on the virtio-fs path (and
 * the host mount's relay: the same msb_meta_serve), dispatched from msb_meta_serve
 * (csrc/fuse_meta.c) with its rule: answer only what is unambiguous, hand everything
 * else back to Python untouched (it checks everything and replies the right errno),
 * count nothing before the decision to answer.
 *
 * RENAME/RENAME2 (Tree.rename, msbfs/tree/tree.py) on a tree without a quota (the
 * replaced file's charge is Python's): two plain names (as UNLINK's: ".", "..", "",
 * "a/b", > 255 bytes are Python's), flags within NOREPLACE|EXCHANGE|WHITEOUT (others:
 * the tree's EINVAL, Python's), both parents in the inode table on the root's device;
 * then the policy's mutation errno (readonly), else renameat2's own errno, run as the
 * daemon as the tree runs it (no credential switch: the client kernel checked its
 * caller). The inode table needs no change: it keys inodes by (dev, ino) and node ids
 * by counter, never by name (a renamed inode keeps its node id and its O_PATH fd, which
 * follows it); the tree's rename touches no table either.
 *
 * READLINK (Tree.readlink): a node in the table; not a symlink: the tree's EINVAL;
 * readlinkat(fd, "") of its O_PATH fd into the reply, or ENAMETOOLONG when the reply
 * room cannot hold the target (msbfs/fuse/server.py _readlink).
 *
 * SYMLINK (Tree.symlink) without a quota: a plain new name beneath a parent in the
 * table, the mutation errno, a target below PATH_MAX (longer: Python's ENAMETOOLONG),
 * ids that are ids and room in the table (else Python's), symlinkat as the daemon,
 * then fuse_names.h's creation rules (msb_new_lookup, msb_new_owner_mode: the caller as
 * owner; a symlink's mode is never changed, so nosuid's stored mode and the umask are
 * moot). Once symlinkat succeeded the reply is C's, as MKDIR's.
 *
 * LINK (Tree.link) without a quota (the parent's growth is charged): the old node in
 * the table on the root's device, the new parent and name as SYMLINK's, the mutation
 * errno, then linkat of the old node's own fd (/proc/self/fd/N, AT_SYMLINK_FOLLOW: the
 * inode the fd holds, never a name), one more lookup counted, the entry of the old node.
 *
 * One definition of each rule: the mutation errno is Policy.c_decisions' (written once
 * into struct msb_names by msbfs/fastmeta.py); msbfs/fastnames2.py only says which of
 * these opcodes a tree lets C answer. All zero (calloc) means "everything to Python". */
#ifndef MSBFS_FUSE_NAMES2_H
#define MSBFS_FUSE_NAMES2_H

#include <stdint.h>

struct fuse_in_header;
struct msb_meta;
struct msb_vq;
struct msb_chain;

struct msb_names2_stats {
    uint64_t renames, readlinks, symlinks, links;
};

struct msb_names2 {
    int rename;     /* RENAME/RENAME2 answered here (no quota) */
    int readlink;   /* READLINK answered here */
    int symlink;    /* SYMLINK answered here (no quota) */
    int link;       /* LINK answered here (no quota) */
    struct msb_names2_stats stats;
};

/* msb_meta_serve's contract: 1 answered and pushed; 0 Python's; < 0 the push's -errno.
 * `rename2`: the body is fuse_rename2_in's (flags), else fuse_rename_in's. */
int msb_names2_rename(struct msb_meta *m, struct msb_vq *vq, struct msb_chain *c,
                      const struct fuse_in_header *ih, int rename2);
int msb_names2_readlink(struct msb_meta *m, struct msb_vq *vq, struct msb_chain *c,
                        const struct fuse_in_header *ih);
int msb_names2_symlink(struct msb_meta *m, struct msb_vq *vq, struct msb_chain *c,
                       const struct fuse_in_header *ih);
int msb_names2_link(struct msb_meta *m, struct msb_vq *vq, struct msb_chain *c,
                    const struct fuse_in_header *ih);

/* For Python (msbfs/fastnames2.py): the switches inside m (written before m->enabled),
 * and what was answered. */
struct msb_names2 *msb_meta_names2(struct msb_meta *m);
void msb_names2_stats(struct msb_meta *m, struct msb_names2_stats *out);

#endif
