/* READDIR and READDIRPLUS answered in C on the virtio-fs path (issue 11), under
 * csrc/fuse_meta.h's rule: answer only what is unambiguous, hand everything else back
 * to Python untouched, count nothing before deciding to answer.
 *
 * What C answers: a request whose fh is a directory handle of the handle table
 * (csrc/handles.h: its fd has MSB_FS_DIR) on a directory of the root's device, whose node id is that directory (the tree lists fh's directory but
 * looks READDIRPLUS names up in the request's node: a node id of another directory
 * goes to Python), with a body of exactly fuse_read_in, an offset the tree accepts and
 * room for a reply header. The reply is msbfs/fuse/server.py's `_dirents`, byte for
 * byte: whole records while they fit (size = min(size, room, MAX_WRITE)), the fit
 * checked before the lookup, "." and ".." with node id 0 and only ino and type in the
 * attributes, the root's ".." showing the root's ino, an entry gone since the listing
 * (the lookup's ENOENT) skipped, every other entry looked up exactly as LOOKUP is
 * (csrc/lookup.h msb_lookup: the same function).
 *
 * An entry whose lookup C cannot decide (another device: a mount point; a bound; an
 * errno but ENOENT): if no lookup was counted yet, the whole request goes to Python
 * (which redoes it from scratch); otherwise the reply ends before that entry. A short
 * reply is legal: the guest asks again from the last cookie it got, and that request
 * starts with the undecided entry, so it goes to Python. The listing is then the same
 * entries in the same order with the same lookup counts as Python's, only cut into
 * replies at other places.
 *
 * Like Python's DirHandle, C keeps a handle's last getdents64 batch (msb_dircache, a few
 * slots picked by fh): a request resuming inside it reads no directory at all; offset
 * 0 reads afresh (rewinddir). One request at a time per slot, so one fh read from four
 * queues at once gives each request a listing from its own cookie. A directory stream
 * is shared state (the fd's position): every batch is read from an explicit cookie,
 * lseek and getdents64 as one step under the stream's lock (a mutex striped by fd),
 * which Python's DirHandle takes too (msb_dir_read). The fd
 * itself stays valid for the round: RELEASEDIR takes the handle out of the table first
 * and its fd is closed only after a grace period (csrc/grace.h). */
#ifndef MSBFS_FUSE_READDIR_H
#define MSBFS_FUSE_READDIR_H

#include <stdint.h>

struct msb_meta;
struct msb_vq;
struct msb_chain;
struct fuse_in_header;

/* lseek(fd, offset, SEEK_SET) and one getdents64 into buf, as one step under fd's
 * stream lock: bytes read (0: the end), or -errno. */
long msb_dir_read(int fd, int64_t offset, void *buf, uint32_t cap);

/* The getdents batches kept per directory handle (one set per msb_meta: fh numbers are
 * its table's, never reused). NULL: no memory. */
struct msb_dircache;
struct msb_dircache *msb_dircache_new(void);
void msb_dircache_free(struct msb_dircache *dc);

/* FUSE_READDIR / FUSE_READDIRPLUS for msb_meta_serve (same contract): 1 answered and
 * pushed, 0 Python's, < 0 the push's -errno. */
int msb_readdir_serve(struct msb_meta *m, struct msb_vq *vq, struct msb_chain *c,
                      const struct fuse_in_header *ih);
/* READDIRPLUS answered with plain records only: node id 0 and only ino and type, as "."
 * and ".." always are (the kernel makes no dentry and takes no lookup for them), so no
 * entry is looked up. The host mount lists a large directory so (msbfs/hostmount.py
 * HostOps.readdir; the relay, csrc/devfuse.c). Same contract. */
int msb_readdir_serve_plain(struct msb_meta *m, struct msb_vq *vq, struct msb_chain *c,
                            const struct fuse_in_header *ih);

#endif
