/* One lookup of a plain name beneath a directory of the inode table, for both fronts
 * (issue 11): the virtio-fs C path (csrc/fuse_meta.c serve_lookup) and the Python tree
 * (msbfs/tree/tree.py Tree.lookup, which the host mount's LOOKUP and READDIRPLUS call).
 *
 * One statx(AT_SYMLINK_NOFOLLOW) of the one component, then msb_inodes_add_named:
 * an inode the table holds counts one more lookup, a new one is added by name (no fd:
 * csrc/inodes.h, named nodes). A directory, or a file on a filesystem without birth
 * times, is opened as before: found by (dev, ino), else openat2 with the tree's flags
 * and resolve rules and fstat of what was opened (the object held is the truth,
 * whatever raced), added.
 *
 * It decides only what is unambiguous and hands back everything else untouched, so the
 * caller's own code (Python) redoes it from scratch and sees the state it would have
 * seen: a name that is not plain (empty, > 255 bytes, '/', NUL, ".", ".."), a parent
 * not in the table or on another device than the root's, any errno but statx's ENOENT,
 * an inode on another device (the tree tags its st_ino, submount rules), a bound
 * reached. Nothing is counted or added before the decision to answer.
 *
 * Threads: any number at once (the table's lock). Returns 0 / -errno, never errno. */
#ifndef MSBFS_LOOKUP_H
#define MSBFS_LOOKUP_H

#include <stddef.h>
#include <stdint.h>
#include "inodes.h"

struct stat;

/* "Not decided here": the caller's slow path answers (never an errno). */
#define MSB_LOOKUP_UNDECIDED (-0x10000)

/* The tree's rules a lookup follows (Tree.c_metadata: msbfs/tree/tree.py). */
struct msb_lookup_cfg {
    uint64_t root_dev;
    uint64_t flags, resolve;   /* the tree's openat2 of a new name */
};

/* The attributes Tree._attr reads, under os.stat_result's names, so the Python
 * attribute rule reads this struct as it reads a stat (one definition of the rule). */
struct msb_lookup_stat {
    uint64_t st_dev, st_ino, st_nlink, st_rdev;
    int64_t st_size, st_blocks, st_blksize;
    int64_t st_atime_ns, st_mtime_ns, st_ctime_ns;
    uint32_t st_mode, st_uid, st_gid;
};

/* msb_plain_name (csrc/inodes.h): the names this lookup decides. */
/* 0: *st and *info (one more lookup counted; *added 1 if the inode is new to the
 * table); -ENOENT: no such name; MSB_LOOKUP_UNDECIDED: the caller's. */
int msb_lookup(struct msb_inodes *t, const struct msb_lookup_cfg *cfg, uint64_t parent,
               const char *name, size_t len, struct stat *st, struct msb_inode_info *info,
               int *added);
/* msb_lookup for the Python tree in one crossing: nodeid << 1 | submount, with the
 * attributes in *out, or -ENOENT, or MSB_LOOKUP_UNDECIDED. */
int64_t msb_lookup_attr(struct msb_inodes *t, const struct msb_lookup_cfg *cfg,
                        uint64_t parent, const char *name, size_t len,
                        struct msb_lookup_stat *out);

#endif
