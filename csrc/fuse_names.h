/* C answers for UNLINK, RMDIR and ACCESS on the virtio-fs path (issue 11), dispatched
 * from msb_meta_serve (csrc/fuse_meta.c) with fuse_meta.c's rule: answer only what is
 * unambiguous, hand everything else back to Python untouched (it checks everything and
 * replies the right errno), count nothing before the decision to answer.
 *
 * UNLINK/RMDIR (Tree.unlink/rmdir, msbfs/tree/tree.py): a plain name (as LOOKUP's)
 * beneath a parent in the inode table on the root's device; the policy's mutation errno
 * (readonly: EROFS) if it has one, else unlinkat(2)'s own errno, run as the daemon as
 * the tree runs it (the client kernel checked its caller's permissions). A tree with a
 * quota keeps both in Python (the removal is charged): `remove` is 0 there.
 *
 * ACCESS (Tree.access): the policy's errno for (kind, mask) if it has one, else
 * faccessat2(AT_EACCESS | AT_EMPTY_PATH) on the inode's fd as the caller: fsuid, fsgid
 * (and the groups, when the daemon has none of its own: unknown groups mean none) of
 * this thread only, switched and restored around the one syscall as
 * msbfs/tree/creds.py does. Handed back: a mask Python refuses (> 7), ids that are not
 * ids (0xffffffff), a caller to switch to while the daemon has groups of its own, an
 * inode whose fd was evicted (the tree re-opens it after switching).
 *
 * MKDIR (Tree.mkdir) on a tree without a quota or POSIX ACLs: the name and parent as for
 * UNLINK, the mutation errno, the creation mode (the caller's umask; a umask Python
 * refuses, ids that are no ids or a full inode table: Python's, decided before
 * anything is made), mkdirat as the daemon, then the creation rules every creating op
 * shares (msb_new_lookup + msb_new_owner_mode, below): once mkdirat succeeded the
 * reply is C's, whatever happens next, as it is the tree's.
 *
 * One definition of each rule: Python compiles the policy's decisions into numbers by
 * asking the rules themselves (msbfs/tree/policy.py Policy.c_decisions) and writes them
 * here (msbfs/fastmeta.py); nothing here re-states a rule. All zero (calloc) means
 * "everything to Python". */
#ifndef MSBFS_FUSE_NAMES_H
#define MSBFS_FUSE_NAMES_H

#include <stddef.h>
#include <stdint.h>

struct fuse_in_header;
struct msb_meta;
struct msb_vq;
struct msb_chain;

/* How ACCESS runs as its caller (msbfs/tree/creds.py Identities). */
#define MSB_NAMES_CREDS_OWN 0      /* never switched: the daemon is not root */
#define MSB_NAMES_CREDS_SWITCH 1   /* fsuid/fsgid switched, groups kept (the daemon has none) */
#define MSB_NAMES_CREDS_PYTHON 2   /* the daemon has groups: callers to switch to go to Python */

struct msb_names_stats {
    uint64_t unlinks, rmdirs, accesses, access_ns, mkdirs;
};

struct msb_names {
    int remove;                   /* UNLINK/RMDIR answered here (no quota) */
    int access;                   /* ACCESS answered here */
    int mutation_errno;           /* Policy.check_mutation's errno, 0: allowed */
    uint8_t access_errno[16 * 8]; /* Policy.check_access's: [(kind >> 12) * 8 + mask] */
    int creds;                    /* MSB_NAMES_CREDS_* */
    uint32_t own_uid, own_gid;    /* what a switch restores */
    int mkdir;                    /* MKDIR answered here (no quota) */
    int acl_check;                /* POSIX ACLs: a parent's default ACL sends it to Python */
    uint32_t stored_mask;         /* Policy.stored_mode, the AND mask it is (nosuid) */
    uint32_t daemon_umask;        /* the process umask the tree read at start */
    struct msb_names_stats stats;
};

/* The opcodes (msb_meta_serve's contract): 1 answered and pushed; 0 Python's; < 0 the
 * push's -errno. `dir`: RMDIR. */
int msb_names_remove(struct msb_meta *m, struct msb_vq *vq, struct msb_chain *c,
                     const struct fuse_in_header *ih, int dir);
int msb_names_access(struct msb_meta *m, struct msb_vq *vq, struct msb_chain *c,
                     const struct fuse_in_header *ih);
int msb_names_mkdir(struct msb_meta *m, struct msb_vq *vq, struct msb_chain *c,
                    const struct fuse_in_header *ih);

/* The creation rules of the tree (msbfs/tree/tree.py), for every creating op answered
 * in C (MKDIR here; a C CREATE can call the same three after its own open):
 *
 * msb_new_mode: Tree._creation_mode without POSIX ACLs: the mode to ask the host for,
 * `mode & bits` less the caller's umask, as the policy stores it. -1: Python's (a umask
 * above 07777, which the tree refuses: decide it before making anything).
 *
 * msb_new_lookup: Tree._lookup_new: the name a creating syscall just made beneath pfd,
 * opened as the tree opens a new name (m->lookup_flags, m->resolve), fstat'd, counted in
 * the table (one lookup, as the entry reply hands out). 0 and *st, *info, or -errno.
 *
 * msb_new_owner_mode: Tree._finish_new: a node made as the daemon gets what the caller
 * would have got natively: the caller as owner (when the daemon is root), the caller's
 * group unless the parent (pfd) is set-gid, the mode asked for (the bits the daemon's
 * own umask took added back; the policy's stored mode). fd is the node's O_PATH fd
 * (opath) or an open fd of it; *st is its stat, updated. 0 or -errno. */
int msb_new_mode(const struct msb_names *n, uint32_t mode, uint32_t umask, uint32_t bits,
                 uint32_t *want);
/* msb_new_body: a creating op's body (MKDIR, CREATE), copied out of c's guest memory
 * once into body[MSB_NEW_BODY_MAX + 1]: `args_len` bytes of its arguments (into args),
 * then a plain name (as LOOKUP's) and its NUL; the parent, ih->nodeid, in the inode
 * table on the root's device. The name, or NULL: Python's (nothing was done). */
#define MSB_NEW_BODY_MAX 512
const char *msb_new_body(struct msb_meta *m, const struct msb_chain *c,
                         const struct fuse_in_header *ih, void *args, size_t args_len,
                         char *body);
struct stat;
struct msb_inode_info;
/* Tree._creation_mode's question on a tree with POSIX ACLs (acl_check): has the parent
 * a default ACL? Then the new node's mode comes from it, not from the umask: 1, Python's
 * (also when the answer is unsure); 0: the rules above apply. */
int msb_new_acl_parent(const struct msb_names *n, int pfd);
int msb_new_lookup(struct msb_meta *m, int pfd, const char *name, struct stat *st,
                   struct msb_inode_info *info);
int msb_new_owner_mode(const struct msb_names *n, int fd, int opath, struct stat *st,
                       uint32_t want, uint32_t uid, uint32_t gid, int pfd);
/* msb_new_reply: the rest of a creating op once its syscall made `name` beneath pfd
 * (the parent, ih->nodeid): msb_new_lookup and msb_new_owner_mode with the table held
 * (a FORGET of the new node id on another queue waits), then the entry reply, or the
 * errno of either: the reply is C's whatever happens after the syscall (MKDIR,
 * SYMLINK: csrc/fuse_names2.c). msb_meta_serve's return. */
int msb_new_reply(struct msb_meta *m, struct msb_vq *vq, struct msb_chain *c,
                  const struct fuse_in_header *ih, int pfd, const char *name, uint32_t want);

/* For msbfs/fastmeta.py: the configuration inside m (written before m->enabled), and
 * the counters. */
struct msb_names *msb_meta_names(struct msb_meta *m);
void msb_names_stats(struct msb_meta *m, struct msb_names_stats *out);

#endif
