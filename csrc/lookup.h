/* One lookup of a plain name beneath a directory of the inode table, for both fronts
 * (issue 11): the virtio-fs C path (csrc/fuse_meta.c serve_lookup) and the Python tree
 * (msbfs/tree/tree.py Tree.lookup, which the host mount's LOOKUP and READDIRPLUS call).
 *
 * Warm: fstatat(AT_SYMLINK_NOFOLLOW) of the one component finds an inode the table
 * holds (dev, ino) and counts one lookup under the table's lock: no fd opened. Cold:
 * room in the table, openat2 with the tree's flags and resolve rules, fstat of what was
 * opened (the object we hold is the truth, whatever raced), added.
 *
 * It decides only what is unambiguous and hands back everything else untouched, so the
 * caller's own code (Python) redoes it from scratch and sees the state it would have
 * seen: a name that is not plain (empty, > 255 bytes, '/', NUL, ".", ".."), a parent
 * not in the table or on another device than the root's, any errno but fstatat's ENOENT,
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

/* 1: name is one plain component (not empty, <= 255 bytes, no '/' or NUL, not "." or
 * ".."): a name the lookup, and any op on a name beneath a directory fd, may use as is. */
int msb_plain_name(const char *name, size_t len);
/* 0: *st and *info (one more lookup counted; *added 1 if the inode is new to the
 * table); -ENOENT: no such name; MSB_LOOKUP_UNDECIDED: the caller's. */
int msb_lookup(struct msb_inodes *t, const struct msb_lookup_cfg *cfg, uint64_t parent,
               const char *name, size_t len, struct stat *st, struct msb_inode_info *info,
               int *added);
/* The same lookup in the other order, for a name a directory listing just returned
 * (csrc/fuse_readdir.c, READDIRPLUS): when the inode the listing names (`ino`, its
 * d_ino) is not in the table, the name is most likely new to it, and the warm fstatat
 * would only miss: msb_lookup's cold half runs at once (open, fstat, add: the object
 * opened is the truth, as there). *streak (0 at a listing's start) says the name before
 * was new to the table: then the table is not even asked (a listing the guest forgot is
 * new from end to end; the probe is a cache miss per name). `pfd`: the fd of a parent
 * msb_lookup accepts (in the table, on the root's device), `name` plain and
 * NUL-terminated. 0 as msb_lookup's; MSB_LOOKUP_UNDECIDED (nothing counted): call
 * msb_lookup, which decides from scratch. */
int msb_lookup_listed(struct msb_inodes *t, const struct msb_lookup_cfg *cfg, int pfd,
                      const char *name, uint64_t ino, int *streak, struct stat *st,
                      struct msb_inode_info *info);
/* msb_lookup for the Python tree in one crossing: nodeid << 1 | submount, with the
 * attributes in *out, or -ENOENT, or MSB_LOOKUP_UNDECIDED. */
int64_t msb_lookup_attr(struct msb_inodes *t, const struct msb_lookup_cfg *cfg,
                        uint64_t parent, const char *name, size_t len,
                        struct msb_lookup_stat *out);

#endif
