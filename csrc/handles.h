/* The handle table: the one table of open file and directory handles (the fh numbers a
 * client passes back), issue 11. The Python tree (msbfs/tree/handles.py is a thin
 * wrapper) opens and releases through it on every front; the virtio-fs C paths read it
 * (READ/WRITE in fuse_datapath.c, FLUSH in fuse_meta.c, READDIRPLUS in fuse_readdir.c)
 * and answer OPEN/OPENDIR/RELEASE/RELEASEDIR with it (fuse_handles.c). Nothing keeps a
 * second copy: what a handle is (its fd, its open flags, its node id, file or
 * directory) lives here only.
 *
 * fh numbers are the table's own counter: never reused within a table, so a late
 * request naming a released handle can never reach a newer one.
 *
 * Each slot records what the C paths may do with the fd (perms): MSB_FS_READ and
 * MSB_FS_WRITE for a file handle, as Tree.data_fd allows (a handle whose writes the tree
 * must see, quota or readonly, has no MSB_FS_WRITE even when open for writing), and
 * MSB_FS_DIR for a directory handle (never with the others: a READ or FLUSH looking
 * for a file's fd must not find a directory's). `pystate` marks a handle Python keeps
 * state for (a directory's decoded getdents batch): C never releases such a handle.
 *
 * The inode's open count (msb_inodes_nopen_add) moves with a file handle: added here
 * when the handle is, taken away when it leaves.
 *
 * Threads and fds: a reader-writer lock (lookups read, changes write), held for a hash
 * probe only. The table owns the fds of its handles: a handle leaves the table first,
 * and its fd is closed only after a grace period (csrc/grace.h: msb_grace_defer_close),
 * so a serving thread that looked the fd up inside its section never reads through a
 * number a new open has reused. msb_fs_table_set/del/clear are the raw slot functions
 * the fuzz harness and C tests use: they neither count nor close. */
#ifndef MSBFS_HANDLES_H
#define MSBFS_HANDLES_H

#include <pthread.h>
#include <stdint.h>

#define MSB_FS_READ 1   /* the fd may serve FUSE_READ */
#define MSB_FS_WRITE 2  /* the fd may serve FUSE_WRITE */
#define MSB_FS_DIR 4    /* a directory handle's fd: READDIR(PLUS) (csrc/fuse_readdir.h) */
#define MSB_HANDLES_NONE UINT64_MAX   /* no bound on the number of handles */

struct msb_inodes;
struct msb_meta;

struct msb_fs_slot {
    uint64_t fh;
    uint64_t nodeid;
    int32_t fd;
    uint32_t flags;     /* the open flags the fd really has */
    uint32_t traits;    /* the inode's kind bits | MSB_INODE_SUBMOUNT (csrc/inodes.h) */
    uint8_t used;       /* 0 empty, 1 live, 2 deleted (tombstone) */
    uint8_t perms;      /* MSB_FS_READ|MSB_FS_WRITE (file) or MSB_FS_DIR */
    uint8_t pystate;    /* Python keeps state for it: C never releases it */
};

struct msb_fs_table {
    uint32_t cap;              /* power of two */
    uint32_t count;            /* live entries */
    uint32_t tombs;            /* deleted slots still in probe chains */
    struct msb_fs_slot *slots; /* open addressing, linear probing */
    /* A WRITE asking to clear set-id bits goes to Python when the file has any of these
     * mode bits: the set-id rule is the policy's (msbfs/tree/policy.py sets it). */
    uint32_t slow_write_mode_bits;
    uint64_t next_fh;          /* the next fh handed out */
    uint64_t max_handles;      /* past it, a new handle is EMFILE (MSB_HANDLES_NONE) */
    /* MSB_FS_WRITE when the C data path may write through a writable file handle's fd,
     * 0 when the tree must see every write (Policy.writes_need_tree: quota, readonly) */
    uint8_t write_perm;
    struct msb_inodes *inodes; /* whose open counts move with file handles, or NULL */
    pthread_rwlock_t lock;
    /* Metadata answered in C (csrc/fuse_meta.h), or NULL: set by msb_meta_attach. */
    struct msb_meta *meta;
};

/* One handle, copied out under the lock. */
struct msb_handle {
    uint64_t nodeid;
    int32_t fd;
    uint32_t flags;
    uint32_t traits;
    uint8_t perms;
    uint8_t pystate;
};

/* A table whose file handles count opens on `inodes` (NULL: none). NULL: no memory. */
struct msb_fs_table *msb_handles_new(struct msb_inodes *inodes, uint64_t max_handles);
/* -EMFILE when one more handle would pass max_handles, else 0. */
int msb_handles_check_room(struct msb_fs_table *t);
/* Add a handle of `fd` open with `flags` (the table owns it from now on, but not on
 * failure): the new fh, or -EMFILE (only if `enforce`: else the bound was checked
 * before the open) or -ENOMEM. `dir` MSB_FS_DIR: a directory handle; 0: a file handle,
 * which counts one open of `nodeid` and gets the data path's permissions its access
 * mode allows (MSB_FS_READ unless write-only; write_perm unless read-only): the one
 * place they are decided, whoever opened the file. */
int64_t msb_handles_add(struct msb_fs_table *t, int fd, uint32_t flags, uint64_t nodeid,
                        uint32_t traits, int dir, int enforce);
/* 0 and *out, or -EBADF for an fh not in the table. */
int msb_handles_get(struct msb_fs_table *t, uint64_t fh, struct msb_handle *out);
/* The hot paths' msb_handles_get of a file handle in one integer (no struct to
 * allocate per call): (flags & 0x7fffffff) << 32 | fd, or -EBADF when `fh` is no file
 * handle (open flags never use bit 31). */
int64_t msb_handles_file(struct msb_fs_table *t, uint64_t fh);
/* Take handle `fh` of kind `dir` (0: a file handle, MSB_FS_DIR: a directory's) out of
 * the table, into *out; the caller closes its fd after a grace period. For a file: the
 * open handles left on its inode (when the client forgot the inode meanwhile, the
 * table's own count of file handles on it); 0 for a directory. -EBADF: no such handle
 * of that kind. */
int64_t msb_handles_remove(struct msb_fs_table *t, uint64_t fh, int dir, struct msb_handle *out);
/* C's RELEASE/RELEASEDIR: like msb_handles_remove, and the fd closed after a grace
 * period, but only for a handle of kind `dir` Python keeps no state for. 1 released,
 * 0 not (no such handle of that kind, or Python's: nothing was changed). */
int msb_handles_release(struct msb_fs_table *t, uint64_t fh, int dir);
/* Python keeps state for `fh` from now on. 0 or -EBADF. */
int msb_handles_mark_python(struct msb_fs_table *t, uint64_t fh);
/* Every handle out of the table, its open count taken away and its fd closed after a
 * grace period (DESTROY). How many there were. */
int msb_handles_close_all(struct msb_fs_table *t);

/* Raw slots (fuzz harness, C tests): no counter, no open counts, no closes. */
struct msb_fs_table *msb_fs_table_new(void);
void msb_fs_table_free(struct msb_fs_table *t);
/* Set the fd of `fh` and add perms `dirs` (MSB_FS_READ|MSB_FS_WRITE, or MSB_FS_DIR
 * alone). 0 or -ENOMEM. */
int msb_fs_table_set(struct msb_fs_table *t, uint64_t fh, int fd, int dirs);
/* Forget `fh`. 1 if it was there, else 0. */
int msb_fs_table_del(struct msb_fs_table *t, uint64_t fh);
void msb_fs_table_clear(struct msb_fs_table *t);
/* The fd of `fh` if its perms include `dir` (one of MSB_FS_READ, MSB_FS_WRITE,
 * MSB_FS_DIR), or -1. */
int msb_fs_table_get(const struct msb_fs_table *t, uint64_t fh, int dir);

#endif
