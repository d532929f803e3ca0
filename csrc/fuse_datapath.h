/* The virtio-fs hot path: FUSE_READ and FUSE_WRITE on open handles served in C,
 * straight between a host fd and the guest memory of a descriptor chain
 * (preadv/pwritev on the chain's iovecs: no Python objects, no copies).
 *
 * The handles are the one handle table (csrc/handles.h) the tree opens and releases
 * through: a file handle's fd carries MSB_FS_READ/MSB_FS_WRITE as Tree.data_fd allows.
 * msb_fs_serve pops chains; a request it can answer on its own (well-formed READ/WRITE,
 * fh in the table for that direction, every length consistent) is answered and pushed
 * here; every other chain is handed back to Python untouched, in order, to go through
 * the FUSE codec.
 * So C never has to know an error rule: anything unusual takes the slow path, which
 * checks everything and answers with the right errno.
 *
 * Threads: each queue is served by its own thread (msbfs/virtiofs.py), so several
 * msb_fs_serve calls run at once on one table. A queue (its ring, its chain buffer, its
 * stats) is used by one thread at a time. The table has a reader-writer lock: lookups
 * read-lock it, changes write-lock it. msb_fs_serve holds a grace section
 * (csrc/grace.h) for each round, and a handle's fd is closed only after a grace period
 * once it left the table, so no round still uses the number when a new open reuses it.
 * Big READs (>= 64 KiB) of one round are run on the calling thread and the helper
 * threads ("msbfs-io", msb_fs_set_helpers; one by default) at once, then pushed by the
 * caller; only the caller's thread ever touches the ring. The helpers and their batch
 * arrays are the process's: the thread that finds them free (trylock) uses them, a
 * thread serving another queue at that moment runs its big reads inline. */
#ifndef MSBFS_FUSE_DATAPATH_H
#define MSBFS_FUSE_DATAPATH_H

#include <pthread.h>
#include <stdint.h>
#include "virtq.h"

#include "handles.h"   /* struct msb_fs_table, MSB_FS_READ/WRITE/DIR */

struct fuse_in_header;   /* <linux/fuse.h> */

struct msb_fs_stats {
    uint64_t reads, writes, read_bytes, write_bytes, slow, errors;
};

/* Pop up to `budget` chains from `vq`; serve the fast ones (each pushed as soon as it
 * is answered; the caller signals the driver once, with msb_vq_notify),
 * store the rest in slow[0..n) for Python. Stops early when `max_slow` slow chains are
 * held or the queue is empty. Returns n >= 0, or -errno if the queue broke (a broken
 * queue takes no more pushes, so the slow chains of this call are dropped with it).
 * Counts into `st`. *drained is set to 1 when the queue was found empty (which
 * re-arms the driver's kicks under EVENT_IDX): until then the caller must call again,
 * or the next kick may never come. */
int msb_fs_serve(struct msb_vq *vq, struct msb_fs_table *t, struct msb_chain *slow,
                 int max_slow, int budget, struct msb_fs_stats *st, int *drained);

/* One request already copied out (ih: whole, no extensions, as msb_fs_serve checks),
 * served as msb_fs_serve serves a fast READ/WRITE: classified by the same rules, the
 * I/O run, the reply pushed (vq may be a sink: csrc/devfuse.c, the host mount's relay).
 * 1 answered, 0 not a fast READ/WRITE (nothing done), < 0 the push's -errno. Counts
 * into st (the caller's alone). */
int msb_fs_serve_io(struct msb_fs_table *t, struct msb_vq *vq, struct msb_chain *c,
                    const struct fuse_in_header *ih, struct msb_fs_stats *st);

/* Wait for the ring's kick eventfd or the serving thread's wake eventfd (either -1 to
 * leave it out), without the GIL. Consumes what it reports: 1 kick, 2 wake, 3 both,
 * or -errno (poll failed, or a kick fd at end of file: -EPIPE). */
int msb_fs_wait_kick(int kick_fd, int wake_fd);
/* The serving thread's whole kick cycle in C: rounds (msb_fs_serve), a signal to the
 * driver after each round that held no slow chain (msb_vq_notify), and the wait for the
 * next kick (msb_fs_wait_kick), over and over without returning to Python while only
 * fast chains come. Returns to the caller, with *why saying why:
 * - MSB_LOOP_SLOW: n > 0 slow chains in slow[0..n) (the round's fast replies are pushed
 *   but not yet signalled: the caller signals after answering the slow ones);
 * - MSB_LOOP_WOKEN: 0; the wake eventfd was set (consumed): a stop, or a deferred reply
 *   to push. Checked while waiting, and between rounds that left chains available;
 * - MSB_LOOP_BROKEN / MSB_LOOP_WAIT_FAILED / MSB_LOOP_NOTIFY_FAILED: -errno of the round,
 *   of the wait, or of the signal.
 * *drained is the last round's (1: the ring was found empty, the kick is re-armed).
 * Per kick this saves two GIL round trips and the Python between them. */
enum { MSB_LOOP_SLOW = 1, MSB_LOOP_WOKEN = 2, MSB_LOOP_BROKEN = 3, MSB_LOOP_WAIT_FAILED = 4,
       MSB_LOOP_NOTIFY_FAILED = 5 };
int msb_fs_serve_loop(struct msb_vq *vq, struct msb_fs_table *t, struct msb_chain *slow,
                      int max_slow, int budget, struct msb_fs_stats *st, int kick_fd,
                      int wake_fd, int *drained, int *why);
/* How many msb_fs_serve rounds run right now, and the most ever at once since the last
 * reset (tests prove queues overlap by state, not by timing). */
void msb_fs_concurrency(int *now, int *peak);
void msb_fs_concurrency_reset(void);
/* How many big-read helper threads to start (0: every read inline on the serving
 * thread). Only before the first big read: -EBUSY after (they are started then). */
int msb_fs_set_helpers(int n);

/* Python's slow path, one crossing each way per request. msb_fs_gather copies the
 * chain's readable part into buf (at most cap bytes) and returns its full length
 * (> cap: the caller must not parse it). msb_fs_answer scatters a reply into the
 * writable part and pushes it: the used length, -EMSGSIZE when the reply does not
 * fit (nothing pushed), or the push's -errno. */
uint32_t msb_fs_gather(const struct msb_chain *c, void *buf, uint32_t cap);
int64_t msb_fs_answer(struct msb_vq *vq, const struct msb_chain *c, const void *reply, uint32_t len);

/* The same crossings fused, for a slow request run under the device's slow-path lock:
 * msb_fs_slow_begin holds the inode table (when `inodes` is not NULL: msb_inodes_hold),
 * enters a grace section, then gathers as msb_fs_gather does. msb_fs_slow_end leaves
 * the section, then unholds. msb_fs_slow_end_answer ends them and then answers as
 * msb_fs_answer does (the caller still holds its lock: the reply is pushed before the
 * next slow request of any queue starts, which is no rule, only cheaper than another
 * crossing). Each cffi call releases and retakes the GIL, so this is two round trips
 * per request where the separate calls take six. */
struct msb_inodes;
uint32_t msb_fs_slow_begin(struct msb_inodes *inodes, const struct msb_chain *c,
                           void *buf, uint32_t cap);
void msb_fs_slow_end(struct msb_inodes *inodes);
int64_t msb_fs_slow_end_answer(struct msb_inodes *inodes, struct msb_vq *vq,
                               const struct msb_chain *c, const void *reply, uint32_t len);

#endif
