/* C answers for OPEN, OPENDIR, RELEASE and RELEASEDIR on the virtio-fs path (issue 11),
 * dispatched from msb_meta_serve (csrc/fuse_meta.c) with its rule: answer only what is
 * unambiguous, hand everything else back to Python untouched (it checks everything and
 * replies the right errno), count and change nothing before the decision to answer.
 * Handles go into and out of the one handle table (csrc/handles.h) the tree uses.
 *
 * OPEN (Tree.open, msbfs/tree/tree.py): a regular file or a directory in the inode
 * table. The policy's open rules (Policy.check_open: readonly, noexec, ...) are looked
 * up: Python ran check_open itself over every combination of the flag bits in
 * `table_mask`, per kind, and wrote the errnos here (msbfs/fastopen.py); a flag bit
 * whose presence could change that answer (`python_mask`) sends the OPEN to Python. An
 * errno there is the reply. Else the tree's re-open, exactly: flags as
 * FuseSession._open_flags and Tree._reopen_flags leave them ((flags & pass_mask) |
 * add_flags), read-write in place of write-only for a regular file under writeback
 * (Tree._writeback_flags) with the fall-back to the caller's flags when the daemon may
 * not read (Tree._open_either), through /proc/self/fd/<the inode's O_PATH fd>. Handed
 * back: other kinds (FIFOs, devices, symlinks), a directory opened for writing (EISDIR
 * is the tree's), O_TRUNC on a tree with a quota (charged), FUSE_OPEN_KILL_SUIDGID (the
 * tree clears set-id bits as the caller), a full handle table (EMFILE), a failed open,
 * room for the reply too small. The reply carries the tree's FOPEN flags, and a regular
 * file on the root's device `root_file_flags` too.
 *
 * OPENDIR (Tree.opendir): a directory in the inode table, re-opened with the tree's
 * flags (opendir_flags); anything else is Python's.
 *
 * RELEASE (Tree.release): a file handle Python keeps no state for, only while the tree
 * holds no record-lock description at all (as FLUSH: nothing of the owner's to drop), no
 * FUSE_RELEASE_FLOCK_UNLOCK, no quota (the last close of an unlinked file is charged).
 * Out of the table, the inode's open count -1, the fd closed after a grace period
 * (msb_grace_defer_close: the caller is inside its round's section). RELEASEDIR
 * likewise for a directory handle Python keeps no state for. An unknown fh, or one of
 * the other kind, is Python's (EBADF).
 *
 * CREATE (Tree.create) of a new regular file, where MKDIR is C's too (the creation
 * rules: no quota, no POSIX ACLs, a stored mode C applies; csrc/fuse_names.h): a plain
 * name beneath a parent on the root's device, the policy's mutation errno, the
 * creation mode (msb_new_mode), openat(O_CREAT | O_EXCL) with the re-open's flags as
 * OPEN computes them plus O_CREAT | O_NOFOLLOW and the caller's O_EXCL (read-write
 * under writeback: creating needs no read permission), the caller as owner
 * (msb_new_owner_mode), the node's O_PATH fd by name if it is still that file, else
 * through /proc/self/fd (Tree._path_fd_of), then the inode and the handle. A name that
 * exists is Python's (it opens what is there by the tree's rules), unless the caller
 * asked O_EXCL: EEXIST. Once the file is made the reply is C's, whatever happens next,
 * as it is the tree's.
 *
 * All zero (calloc) means "everything to Python". */
#ifndef MSBFS_FUSE_HANDLES_H
#define MSBFS_FUSE_HANDLES_H

#include <stdint.h>

struct fuse_in_header;
struct msb_meta;
struct msb_vq;
struct msb_chain;

#define MSB_OPEN_TABLE_BITS 8   /* at most this many bits in table_mask */

struct msb_open_stats {
    uint64_t opens, opendirs, releases, releasedirs, open_errors, creates;
};

struct msb_open {
    int open;                 /* OPEN/OPENDIR answered here */
    int release;              /* RELEASE answered here (no quota) */
    int trunc;                /* O_TRUNC opens answered here (no quota) */
    uint32_t table_mask;      /* the flag bits check_open's answers are indexed by */
    uint32_t python_mask;     /* flag bits that send an OPEN to Python */
    /* Policy.check_open's errno (0: allowed) at the table_mask bits of the flags,
     * gathered low to high: [0] a regular file's, [1] a directory's */
    uint8_t open_errno[2][1 << MSB_OPEN_TABLE_BITS];
    uint32_t pass_mask, add_flags;   /* the re-open's flags: (flags & pass) | add */
    int writeback;            /* a regular file's write-only open is read-write */
    uint32_t file_open_flags, dir_open_flags;   /* FOPEN_* of the replies */
    /* FOPEN_* added for a regular file on the root's device (msb_meta.root_dev): the
     * host mount's FOPEN_NOFLUSH where FLUSH does nothing (Tree.flush_is_nothing) */
    uint32_t root_file_flags;
    uint32_t opendir_flags;   /* Tree.opendir's re-open */
    struct msb_open_stats stats;
};

/* The opcodes (msb_meta_serve's contract): 1 answered and pushed; 0 Python's; < 0 the
 * push's -errno. `dir`: OPENDIR / RELEASEDIR. */
int msb_handles_open(struct msb_meta *m, struct msb_vq *vq, struct msb_chain *c,
                     const struct fuse_in_header *ih);
int msb_handles_opendir(struct msb_meta *m, struct msb_vq *vq, struct msb_chain *c,
                        const struct fuse_in_header *ih);
int msb_handles_create(struct msb_meta *m, struct msb_vq *vq, struct msb_chain *c,
                       const struct fuse_in_header *ih);
int msb_handles_serve_release(struct msb_meta *m, struct msb_vq *vq, struct msb_chain *c,
                              const struct fuse_in_header *ih, int dir);

/* For Python (msbfs/fastopen.py): the rules to write, and what was answered. */
struct msb_open *msb_meta_open(struct msb_meta *m);
void msb_open_stats(struct msb_meta *m, struct msb_open_stats *out);

#endif
