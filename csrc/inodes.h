/* The inode table: the one table of node ids the daemon hands out (issue 11). The
 * Python tree (msbfs/tree/inodes.py is a thin wrapper) and the C metadata fast path
 * (csrc/fuse_meta.c) both use it; nothing keeps a second copy.
 *
 * One host inode per node id, reached through an O_PATH fd (opened at its first use when
 * a lookup added it by name: "Named nodes" below), keyed by (st_dev, st_ino)
 * so two names of one file share a node id, counted (nlookup: every entry handed out
 * adds one, FORGET takes them away, at zero the inode is dropped). Node ids are the
 * table's own counter, never reused (generation stays 0).
 *
 * fd cache: past max_fds open inode fds a least recently used one (CLOCK order) is
 * closed and only its file handle (name_to_handle_at) kept; touching the inode again
 * re-opens it with open_by_handle_at (root only). Handles come only from our own fds,
 * never from a client. Inodes that cannot come back that way are pinned: filesystems
 * without handles, files with no name left, kinds whose mount we cannot open.
 *
 * Bounds the client cannot pass (issue 9, point 7): max_inodes entries and fd_cap
 * open inode fds; msb_inodes_check_room says -ENFILE past either.
 *
 * Threads: one mutex guards the whole table, held briefly (a hash probe, a count).
 * An fd handed out by msb_inodes_fd stays usable after the lock is dropped because
 * inode fds are closed in ONE place, inode_fd_retire() in inodes.c (forget to zero,
 * eviction, clear, close); that is where a deferred close after a grace period goes.
 * Every function returns 0 / a value, or -errno; none touches errno for the caller.
 */
#ifndef MSBFS_INODES_H
#define MSBFS_INODES_H

#include <stddef.h>
#include <stdint.h>

#define MSB_INODES_NONE UINT64_MAX   /* "no bound" for max_inodes / fd_cap */

struct msb_inodes;

/* What one inode is, copied out under the lock (a view: fields may change after). */
struct msb_inode_info {
    uint64_t nodeid;
    uint64_t dev;
    uint64_t ino;
    uint64_t nlookup;
    uint64_t nopen;
    uint32_t kind;      /* S_IFMT bits: a file's type never changes */
    int32_t fd;         /* -1: evicted (only its handle kept) */
    uint8_t submount;
    uint8_t pinned;
    uint8_t named;      /* added by name, not opened yet (msb_inodes_add_named) */
};

struct msb_inodes_stats {
    uint64_t inodes;
    uint64_t nfds;
    uint64_t evictions;
    uint64_t reopens;
    uint64_t max_fds;   /* 0: no fd cache (every inode keeps its fd) */
    uint64_t trims;     /* times forgotten nodes' memory went back (inodes.c: trim_due) */
    uint64_t named;     /* nodes added by name and not opened yet */
    uint64_t opens;     /* named nodes opened since the table was made */
};

/* A table whose root (node id 1) is root_fd (O_PATH; the table owns it from now on).
 * max_fds 0: no fd cache; else it is kept only if handles can re-open the root (probe).
 * NULL: out of memory (root_fd is then still the caller's). */
struct msb_inodes *msb_inodes_new(int root_fd, uint64_t dev, uint64_t ino, uint32_t mode,
                                  uint64_t max_fds, uint64_t fd_cap, uint64_t max_inodes);
/* Close everything (root and mount fds too) and free the table. */
void msb_inodes_free(struct msb_inodes *t);
/* FUSE_DESTROY: forget every inode but the root (its nlookup back to 1). */
void msb_inodes_clear(struct msb_inodes *t);
/* The tree is done: clear, then close the root's and the per-mount fds. */
void msb_inodes_close(struct msb_inodes *t);

void msb_inodes_stats(struct msb_inodes *t, struct msb_inodes_stats *out);
/* -ENFILE if one more inode would pass a bound (after trying to evict one fd). */
int msb_inodes_check_room(struct msb_inodes *t);
/* 0 and *out, or -EBADF for a node id not in the table. */
int msb_inodes_get(struct msb_inodes *t, uint64_t nodeid, struct msb_inode_info *out);
/* The inode (dev, ino) names: 0 and *out (with one more lookup counted if ref, under
 * the same lock: a forget in between cannot drop it), or -ENOENT. An evicted inode
 * whose handle says ESTALE (deleted on the host, its number maybe reused) is no longer
 * found by (dev, ino), nor joined by msb_inodes_add: its id answers ESTALE until
 * forgotten. A named node is not found here either (nothing here tells a reused number
 * from it): msb_inodes_add_named and msb_inodes_add find it, checking its kind and
 * birth; a caller that gets -ENOENT opens the name and adds its fd. */
int msb_inodes_find(struct msb_inodes *t, uint64_t dev, uint64_t ino, int ref,
                    struct msb_inode_info *out);
/* Count one lookup of the inode fd (O_PATH) names. Takes fd in every case: kept for a
 * new inode (or one whose fd was evicted), closed when the inode has one. -ENOMEM. */
int msb_inodes_add(struct msb_inodes *t, int fd, uint64_t dev, uint64_t ino,
                   uint32_t mode, int submount, struct msb_inode_info *out);
/* Named nodes: a lookup that found a name (not a directory's: csrc/lookup.c) by statx
 * adds its inode without opening it, keeping where it was found (parent node id, plain
 * name), because most nodes a client looks up or lists are never used through an fd
 * (ls -l, find, stat, a READDIRPLUS of a whole directory). The first msb_inodes_fd
 * opens it beneath the parent's fd with the flags given here and keeps the fd only if
 * it is the (dev, ino, kind, birth time) the node was added for; else -ESTALE (the
 * client's kernel looks the name up again, and a lookup that finds the node under
 * another name moves it there). A listing costs one statx per entry instead of an
 * open, an fstat and a close. Containment is the open's: the same openat2 resolve
 * rules, of one plain name, beneath a parent fd the table holds. A named node pins its
 * parent (one lookup) until it is opened or dropped. Renames and removals through us
 * keep it reachable (msb_inodes_moved, msb_inodes_removing); a host rename of a name
 * nobody used is ESTALE until looked up again. The birth time tells a reused inode
 * number only as finely as the filesystem stamps it: on kernels without fine-grained
 * timestamps (before 6.13) a file deleted and re-made within one clock tick under the
 * same number and kind joins the old node id (both inside the tree, the open checked).
 * Until set, msb_inodes_add_named says -ENOTSUP. */
void msb_inodes_set_open(struct msb_inodes *t, uint64_t flags, uint64_t resolve);
/* 1: name is one plain component (not empty, <= 255 bytes, no '/' or NUL, not "." or
 * ".."): a name the lookup, and any op on a name beneath a directory fd, may use as is
 * (the only names a named node keeps). */
int msb_plain_name(const char *name, size_t len);
/* Count one lookup of inode (dev, ino, mode, born at btime: msb_statx_at) found as
 * `name` (plain: no '/', NUL; 1..255 bytes) beneath node `parent`: 1 and *out if new to
 * the table (named), 0 if it was there (a named one is moved to this name); -ENOTSUP,
 * -ENFILE (max_inodes), -ENOMEM, -EINVAL (not a plain name). The birth time tells a
 * number the filesystem reused from the file a named node stood for (nothing holds
 * that file open): a node of its own, as for an evicted node whose handle is stale. */
int msb_inodes_add_named(struct msb_inodes *t, uint64_t parent, const char *name, size_t len,
                         uint64_t dev, uint64_t ino, uint32_t mode, int64_t btime,
                         struct msb_inode_info *out);
/* A rename made `name` beneath node `parent` (its fd: pfd) hold what it moved there:
 * a named node of that object is found there from now on (a statx, only while the
 * table has named nodes), so the client's next use of the node id it holds opens it
 * without an ESTALE round trip. */
void msb_inodes_moved(struct msb_inodes *t, uint64_t parent, int pfd, const char *name,
                      size_t len);
/* `name` beneath node `parent` (its fd: pfd) is about to lose the object it holds
 * (unlink, rmdir, a rename over it): a named node of that object is opened now, so the
 * client reaches it after it has no name left as it reaches any inode it holds (an
 * O_PATH fd: fstat says nlink 0; a link into a removed directory says ENOENT), never
 * ESTALE. Call it before the removal; nothing (no statx) without named nodes. */
void msb_inodes_removing(struct msb_inodes *t, uint64_t parent, int pfd, const char *name,
                         size_t len);
/* One more lookup of an inode in the table (link, "."); -EBADF if it is not. */
int msb_inodes_ref(struct msb_inodes *t, uint64_t nodeid);
/* Take nlookup lookups away (more than held: all of them); at zero the inode goes (at
 * the last msb_inodes_unhold if held). Unknown ids and the root are ignored (FORGET has
 * no reply). */
void msb_inodes_forget(struct msb_inodes *t, uint64_t nodeid, uint64_t nlookup);
/* A request of the Python tree is running: the tree was written for requests that
 * see no FORGET half-way, but the C path forgets on other queue threads meanwhile. An
 * inode whose count falls to zero while held stays in the table (fd open, id valid,
 * still found by (dev, ino)) until the last unhold, which drops it unless it was
 * looked up again meanwhile. Counted: holds nest. */
void msb_inodes_hold(struct msb_inodes *t);
void msb_inodes_unhold(struct msb_inodes *t);
/* The inode's O_PATH fd, re-opened from its handle if evicted, opened if named; marks
 * it used (CLOCK). -EBADF: not in the table (unknown, or forgotten); -ESTALE: a named
 * node whose name holds another object now (or nothing); other -errno: the open's. */
int msb_inodes_fd(struct msb_inodes *t, uint64_t nodeid);
/* The same answers packed in one integer, for the Python wrapper's hot path (no
 * struct to allocate per call). Node ids stay below 2^62: the counter moves by one. */
#define MSB_INODE_SUBMOUNT 0x10000   /* with the S_IFMT bits of the kind */
#define MSB_INODE_FD_SHIFT 17        /* msb_inodes_fd_traits: the fd above those bits */
/* kind | MSB_INODE_SUBMOUNT, or -EBADF. */
int64_t msb_inodes_traits(struct msb_inodes *t, uint64_t nodeid);
/* msb_inodes_fd's fd << 17 | msb_inodes_traits's bits, or its -errno. */
int64_t msb_inodes_fd_traits(struct msb_inodes *t, uint64_t nodeid);
/* nodeid << 1 | submount, or msb_inodes_find's / msb_inodes_add's -errno. */
int64_t msb_inodes_find_id(struct msb_inodes *t, uint64_t dev, uint64_t ino, int ref);
int64_t msb_inodes_add_id(struct msb_inodes *t, int fd, uint64_t dev, uint64_t ino,
                          uint32_t mode, int submount);
/* malloc_trim(0): free heap memory back to the system, in every arena (the table does
 * it when it has shrunk to half; msbfs serve once its start-up is done). */
void msb_malloc_trim(void);
/* Open file handles of ours on the inode += delta; the new count, or -EBADF. Inodes
 * with open files are never evicted (they must outlive an unlink on the host). */
int64_t msb_inodes_nopen_add(struct msb_inodes *t, uint64_t nodeid, int delta);

#endif
