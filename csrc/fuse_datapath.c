/* See fuse_datapath.h. The rule here: serve only what is unambiguous, hand back the rest. */
#define _GNU_SOURCE
#include "fuse_datapath.h"
#include "fuse_meta.h"
#include "grace.h"

#include <errno.h>
#include <poll.h>
#include <linux/fuse.h>
#include <pthread.h>
#include <signal.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>

/* The handle table is csrc/handles.c. */

/* ---- serving ------------------------------------------------------------------------- */

/* The part of iov[0..n) that starts `off` bytes in and is `len` bytes long, as iovecs in
 * out[]. Returns the count, or -1 when the list is shorter than off+len. */
static int iov_slice(const struct iovec *iov, int n, size_t off, size_t len, struct iovec *out)
{
    int k = 0;
    for (int i = 0; i < n && len > 0; i++) {
        size_t l = iov[i].iov_len;
        if (off >= l) {
            off -= l;
            continue;
        }
        size_t take = l - off < len ? l - off : len;
        out[k].iov_base = (uint8_t *)iov[i].iov_base + off;
        out[k].iov_len = take;
        k++;
        len -= take;
        off = 0;
    }
    return len ? -1 : k;
}

/* Scratch iovecs for one request (chains are at most MSB_MAX_CHAIN long). */
static __thread struct iovec scratch[MSB_MAX_CHAIN];

static void reply_header(struct msb_chain *c, uint32_t len, int32_t error, uint64_t unique)
{
    struct fuse_out_header oh = { .len = len, .error = error, .unique = unique };
    msb_iov_copy_to(c->iov + c->nout, c->nin, 0, &oh, sizeof(oh));
}

/* A fast request, checked and resolved, ready to run (here or on a helper thread). */
struct fast_io {
    struct msb_chain *c;
    uint64_t unique, offset;
    uint32_t size;
    int fd;
    uint8_t write;
    /* results */
    ssize_t n;       /* bytes moved, or -errno */
    uint32_t used;   /* the used length to push */
};

/* Is chain c a READ/WRITE we serve here? Fills *io and returns 1, else 0 (Python's).
 * Everything is checked here; running it cannot fail in a way Python should see. */
/* Copy chain c's request header out of guest memory once (a hostile driver may rewrite
 * it meanwhile: what is checked here is what every fast path uses). 1 when it is whole,
 * its length is the chain's and it carries no extensions; 0: Python's. */
static int read_in_header(const struct msb_chain *c, struct fuse_in_header *ih)
{
    if (c->out_len < sizeof(*ih))
        return 0;
    if (msb_iov_copy_from(c->iov, c->nout, 0, ih, sizeof(*ih)) != sizeof(*ih))
        return 0;
    return ih->len == c->out_len && ih->total_extlen == 0;
}

static int classify(struct msb_fs_table *t, struct msb_chain *c,
                    const struct fuse_in_header *ihp, struct fast_io *io)
{
    const struct fuse_in_header ih = *ihp;
    const size_t hl = sizeof(ih);
    if (c->in_len < sizeof(struct fuse_out_header))
        return 0;

    if (ih.opcode == FUSE_READ) {
        struct fuse_read_in ri;
        if (c->out_len != hl + sizeof(ri))
            return 0;
        msb_iov_copy_from(c->iov, c->nout, hl, &ri, sizeof(ri));
        if (ri.offset > (uint64_t)INT64_MAX)
            return 0;
        /* The reply must fit the writable part; otherwise Python answers (it clamps). */
        if ((uint64_t)ri.size + sizeof(struct fuse_out_header) > c->in_len)
            return 0;
        int fd = msb_fs_table_get(t, ri.fh, MSB_FS_READ);
        if (fd < 0)
            return 0;
        if (iov_slice(c->iov + c->nout, c->nin, sizeof(struct fuse_out_header), ri.size, scratch) < 0)
            return 0;
        *io = (struct fast_io){ .c = c, .unique = ih.unique, .offset = ri.offset,
                                .size = ri.size, .fd = fd, .write = 0 };
        return 1;
    }

    if (ih.opcode == FUSE_WRITE) {
        struct fuse_write_in wi;
        const size_t pre = hl + sizeof(wi);
        const size_t olen = sizeof(struct fuse_out_header) + sizeof(struct fuse_write_out);
        if (c->out_len < pre || c->in_len < olen)
            return 0;
        msb_iov_copy_from(c->iov, c->nout, hl, &wi, sizeof(wi));
        if ((uint64_t)wi.size != c->out_len - pre || wi.offset > (uint64_t)INT64_MAX)
            return 0;
        int fd = msb_fs_table_get(t, wi.fh, MSB_FS_WRITE);
        if (fd < 0)
            return 0;
        if (wi.write_flags & FUSE_WRITE_KILL_SUIDGID) {
            /* Clearing set-id bits is the policy's rule, applied by the tree: a file
             * with any of the policy's bits goes there (t->slow_write_mode_bits). */
            struct stat sb;
            if (fstat(fd, &sb) < 0 || (sb.st_mode & t->slow_write_mode_bits))
                return 0;
        }
        if (iov_slice(c->iov, c->nout, pre, wi.size, scratch) < 0)
            return 0;
        *io = (struct fast_io){ .c = c, .unique = ih.unique, .offset = wi.offset,
                                .size = wi.size, .fd = fd, .write = 1 };
        return 1;
    }
    return 0;
}

/* Do the I/O of a classified request and write its reply into the chain (any thread:
 * it touches only its own chain's guest buffers and a thread-local scratch). */
static void run_io(struct fast_io *io)
{
    struct msb_chain *c = io->c;
    const uint32_t oh = sizeof(struct fuse_out_header);
    ssize_t n;
    if (!io->write) {
        int k = iov_slice(c->iov + c->nout, c->nin, oh, io->size, scratch);
        n = io->size ? preadv(io->fd, scratch, k, (off_t)io->offset) : 0;
    } else {
        const size_t pre = sizeof(struct fuse_in_header) + sizeof(struct fuse_write_in);
        int k = iov_slice(c->iov, c->nout, pre, io->size, scratch);
        n = io->size ? pwritev(io->fd, scratch, k, (off_t)io->offset) : 0;
    }
    if (n < 0) {
        io->n = -errno;
        reply_header(c, oh, (int32_t)io->n, io->unique);
        io->used = oh;
        return;
    }
    io->n = n;
    if (!io->write) {
        io->used = oh + (uint32_t)n;
        reply_header(c, io->used, 0, io->unique);
    } else {
        struct fuse_write_out wo = { .size = (uint32_t)n };
        io->used = oh + sizeof(wo);
        reply_header(c, io->used, 0, io->unique);
        msb_iov_copy_to(c->iov + c->nout, c->nin, oh, &wo, sizeof(wo));
    }
}

static void count_io(const struct fast_io *io, struct msb_fs_stats *st)
{
    if (io->n < 0) {
        st->errors++;
    } else if (io->write) {
        st->writes++;
        st->write_bytes += (uint64_t)io->n;
    } else {
        st->reads++;
        st->read_bytes += (uint64_t)io->n;
    }
}

int msb_fs_serve_io(struct msb_fs_table *t, struct msb_vq *vq, struct msb_chain *c,
                    const struct fuse_in_header *ih, struct msb_fs_stats *st)
{
    struct fast_io io;
    if (!classify(t, c, ih, &io))
        return 0;
    run_io(&io);
    count_io(&io, st);
    int r = msb_vq_push(vq, c->head, io.used);
    return r < 0 ? r : 1;
}

/* ---- big reads on two CPUs -------------------------------------------------------------
 * A 1 MiB READ is a 1 MiB memcpy in the kernel (~150 us). Run one at a time they leave
 * the host's other CPUs idle while the driver waits for the round; virtiofsd runs them
 * on its thread pool. So big reads are collected (up to PAR_MAX), then run
 * by this thread and PAR_WORKERS helpers at once, and pushed here, in order, once all
 * are done: the ring itself is only ever touched by the caller's thread. Helpers only
 * do preadv into chains already checked, on fds the table held at collection (the
 * caller's grace section, open until the flush, keeps a deleted entry's fd from being
 * closed meanwhile). Not writes: writes to one file take its inode
 * lock in the kernel, so a second writer only spins (measured: 1 MiB WRITE daemon CPU
 * 160 -> 370 us/op, no faster). */
#define PAR_MIN (64u << 10)
#define PAR_MAX 32

static int par_want = 1;  /* helpers to start (msb_fs_set_helpers: --thread-pool-size) */

static pthread_mutex_t par_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t par_go = PTHREAD_COND_INITIALIZER, par_done = PTHREAD_COND_INITIALIZER;
static struct fast_io *par_jobs;
static int par_n, par_busy, par_workers;
static unsigned par_gen;
static int par_next;  /* next job to take (atomic) */

static void par_run_jobs(void)
{
    int i;
    while ((i = __atomic_fetch_add(&par_next, 1, __ATOMIC_ACQ_REL)) < par_n)
        run_io(&par_jobs[i]);
}

static void *par_worker(void *arg)
{
    unsigned seen = 0;
    pthread_setname_np(pthread_self(), "msbfs-io");
    pthread_mutex_lock(&par_mu);
    for (;;) {
        while (par_gen == seen)
            pthread_cond_wait(&par_go, &par_mu);
        seen = par_gen;
        pthread_mutex_unlock(&par_mu);
        par_run_jobs();
        pthread_mutex_lock(&par_mu);
        if (--par_busy == 0)
            pthread_cond_signal(&par_done);
    }
    return NULL;
}

static int par_tried;

/* A forked child has no helpers (only the forking thread survives): start afresh. */
static void par_after_fork_child(void)
{
    par_tried = 0;
    par_workers = 0;
    par_busy = 0;
    pthread_mutex_init(&par_mu, NULL);
    pthread_cond_init(&par_go, NULL);
    pthread_cond_init(&par_done, NULL);
}

static void par_start_workers(void)
{
    if (par_tried)
        return;
    par_tried = 1;
    pthread_atfork(NULL, NULL, par_after_fork_child);
    for (int i = 0; i < par_want; i++) {
        pthread_t th;
        pthread_attr_t at;
        pthread_attr_init(&at);
        pthread_attr_setdetachstate(&at, PTHREAD_CREATE_DETACHED);
        pthread_attr_setstacksize(&at, 256 << 10);
        /* No signals for helpers: the daemon's handlers run on its main thread. */
        sigset_t all, old;
        sigfillset(&all);
        pthread_sigmask(SIG_SETMASK, &all, &old);
        int r = pthread_create(&th, &at, par_worker, NULL);
        pthread_sigmask(SIG_SETMASK, &old, NULL);
        pthread_attr_destroy(&at);
        if (r != 0)
            break;  /* fewer helpers (or none): the caller runs what is left */
        pthread_mutex_lock(&par_mu);
        par_workers++;
        pthread_mutex_unlock(&par_mu);
    }
}

/* Run jobs[0..n) on this thread and the helpers; returns when all are done. */
static void par_run(struct fast_io *jobs, int n)
{
    if (n == 1 || (par_start_workers(), par_workers == 0)) {
        for (int i = 0; i < n; i++)
            run_io(&jobs[i]);
        return;
    }
    pthread_mutex_lock(&par_mu);
    par_jobs = jobs;
    par_n = n;
    __atomic_store_n(&par_next, 0, __ATOMIC_RELEASE);
    par_busy = par_workers;
    par_gen++;
    pthread_cond_broadcast(&par_go);
    pthread_mutex_unlock(&par_mu);
    par_run_jobs();
    pthread_mutex_lock(&par_mu);
    while (par_busy > 0)
        pthread_cond_wait(&par_done, &par_mu);
    pthread_mutex_unlock(&par_mu);
}

/* One round's collection of big requests: their chains are copied out of the caller's
 * buffer (which the next pop reuses). Single caller at a time (the serving thread). */
static struct msb_chain par_chains[PAR_MAX];
static struct fast_io par_batch[PAR_MAX];

static int par_flush(struct msb_vq *vq, int n, struct msb_fs_stats *st)
{
    if (n == 0)
        return 0;
    par_run(par_batch, n);
    int err = 0;
    for (int i = 0; i < n; i++) {
        count_io(&par_batch[i], st);
        if (!err) {
            int r = msb_vq_push(vq, par_batch[i].c->head, par_batch[i].used);
            if (r < 0)
                err = r;
        }
    }
    return err;
}

static int serve_round(struct msb_vq *vq, struct msb_fs_table *t, struct msb_chain *slow,
                       int max_slow, int budget, struct msb_fs_stats *st, int *drained,
                       int par_ok)
{
    int nslow = 0, nbig = 0;
    *drained = 0;
    while (nslow < max_slow && budget-- > 0) {
        struct msb_chain *c = &slow[nslow];
        int r = msb_vq_pop(vq, c, 1);
        if (r < 0)
            return r;
        if (r == 0) {
            /* Only an empty pop re-arms the driver's kick (EVENT_IDX avail_event). */
            *drained = 1;
            break;
        }
        struct fast_io io;
        struct fuse_in_header ih;
        int whole = read_in_header(c, &ih);
        if (!whole || !classify(t, c, &ih, &io)) {
            /* LOOKUP/GETATTR/FORGET: csrc/fuse_meta.c answers what it can. */
            struct msb_meta *meta = __atomic_load_n(&t->meta, __ATOMIC_ACQUIRE);
            if (whole && meta && (r = msb_meta_serve(meta, vq, c, &ih)) != 0) {
                if (r < 0)
                    return r;
                continue;
            }
            st->slow++;
            nslow++;
            continue;
        }
        if (par_ok && !io.write && io.size >= PAR_MIN) {
            struct msb_chain *keep = &par_chains[nbig];
            memcpy(keep, c, offsetof(struct msb_chain, iov) + (size_t)(c->nout + c->nin) * sizeof(struct iovec));
            io.c = keep;
            par_batch[nbig++] = io;
            if (nbig == PAR_MAX) {
                r = par_flush(vq, nbig, st);
                nbig = 0;
                if (r < 0)
                    return r;
            }
            continue;
        }
        run_io(&io);
        count_io(&io, st);
        /* Pushed at once, signalled by the caller once per round: measured through the
         * frontend, a signal per reply costs the driver a wake-up per reply and halves
         * 4 KiB throughput on a busy 2-CPU host. Signalling mid-round once the driver's
         * used_event is passed (msb_vq_notify after every 1 or 8 replies) was measured
         * again with the C request loop (tools.bench.virtiofs_frontend, 3 runs each,
         * lockstep and --c-batch 1 refill): 4 KiB READ msbfs 629-1647 MiB/s (every
         * reply) and 845-2055 (every 8th) against 1839-2735 signalled once a round,
         * LOOKUP+GETATTR and GETATTR on 4 queues likewise lower, the client's CPU per
         * op up 2-7x; the driver wakes for replies it cannot use yet. */
        r = msb_vq_push(vq, c->head, io.used);
        if (r < 0)
            return r;
    }
    int r = par_flush(vq, nbig, st);
    return r < 0 ? r : nslow;
}

int msb_fs_set_helpers(int n)
{
    if (n < 0 || n > 64)
        return -EINVAL;
    if (__atomic_load_n(&par_tried, __ATOMIC_ACQUIRE))
        return -EBUSY;
    par_want = n;
    return 0;
}

/* The collection arrays and helpers are the process's (kept so, not per thread: the
 * helpers exist for the host's idle CPUs, and with several queues busy there are
 * none): a second thread serving another queue at the same moment serves its big
 * requests inline instead of waiting. */
static pthread_mutex_t serve_mu = PTHREAD_MUTEX_INITIALIZER;
static int serving_now, serving_peak;

int msb_fs_serve(struct msb_vq *vq, struct msb_fs_table *t, struct msb_chain *slow,
                 int max_slow, int budget, struct msb_fs_stats *st, int *drained)
{
    int now = __atomic_add_fetch(&serving_now, 1, __ATOMIC_RELAXED);
    int peak = __atomic_load_n(&serving_peak, __ATOMIC_RELAXED);
    while (now > peak && !__atomic_compare_exchange_n(&serving_peak, &peak, now, 0,
                                                      __ATOMIC_RELAXED, __ATOMIC_RELAXED))
        ;
    /* One section for the round: the fds classify() looks up are used until the
     * round's big reads are flushed (grace.h; the table's deleters synchronize). */
    msb_grace_enter();
    int par_ok = pthread_mutex_trylock(&serve_mu) == 0;
    int r = serve_round(vq, t, slow, max_slow, budget, st, drained, par_ok);
    if (par_ok)
        pthread_mutex_unlock(&serve_mu);
    msb_grace_exit();
    __atomic_sub_fetch(&serving_now, 1, __ATOMIC_RELAXED);
    return r;
}

void msb_fs_concurrency(int *now, int *peak)
{
    *now = __atomic_load_n(&serving_now, __ATOMIC_RELAXED);
    *peak = __atomic_load_n(&serving_peak, __ATOMIC_RELAXED);
}

void msb_fs_concurrency_reset(void)
{
    __atomic_store_n(&serving_peak, 0, __ATOMIC_RELAXED);
}

int msb_fs_wait_kick(int kick_fd, int wake_fd)
{
    struct pollfd p[2] = { { .fd = kick_fd, .events = POLLIN }, { .fd = wake_fd, .events = POLLIN } };
    for (;;) {
        int n = poll(p, 2, -1);  /* negative fds are ignored by poll */
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return -errno;
        }
        int got = 0;
        uint64_t v;
        if (p[0].revents) {
            ssize_t k = read(kick_fd, &v, sizeof(v));
            if (k == 0)
                return -EPIPE;
            if (k > 0)
                got |= 1;
            else if (errno != EAGAIN && errno != EINTR)
                return -errno;
        }
        if (p[1].revents && read(wake_fd, &v, sizeof(v)) > 0)
            got |= 2;
        if (got)
            return got;
    }
}

/* Is the serving thread's wake eventfd set? Consumes it (as msb_fs_wait_kick would).
 * Only called between rounds that left chains available, i.e. under a burst of more
 * than a budget's worth: one poll per 256 chains at most. */
static int woken_now(int wake_fd)
{
    if (wake_fd < 0)
        return 0;
    struct pollfd p = { .fd = wake_fd, .events = POLLIN };
    uint64_t v;
    return poll(&p, 1, 0) > 0 && read(wake_fd, &v, sizeof(v)) > 0;
}

int msb_fs_serve_loop(struct msb_vq *vq, struct msb_fs_table *t, struct msb_chain *slow,
                      int max_slow, int budget, struct msb_fs_stats *st, int kick_fd,
                      int wake_fd, int *drained, int *why)
{
    for (;;) {
        /* Each round is its own grace section (msb_fs_serve): none is held while
         * waiting, so a synchronize never waits for an idle queue. */
        int n = msb_fs_serve(vq, t, slow, max_slow, budget, st, drained);
        if (n < 0) {
            *why = MSB_LOOP_BROKEN;
            return n;
        }
        if (n > 0) {
            /* The round's fast replies are signalled with the slow ones (the caller's
             * msb_vq_notify), as when Python ran every round. */
            *why = MSB_LOOP_SLOW;
            return n;
        }
        int r = msb_vq_notify(vq);
        if (r < 0) {
            *why = MSB_LOOP_NOTIFY_FAILED;
            return r;
        }
        if (!*drained) {
            if (woken_now(wake_fd)) {
                *why = MSB_LOOP_WOKEN;
                return 0;
            }
            continue;  /* popped until empty is what re-arms the kick (EVENT_IDX) */
        }
        /* Straight to sleep: spinning 20 or 60 us on avail->idx first (to skip the wake-up
         * of the next kick) measured no better on any row, READDIRPLUS's one request in
         * flight included (msbfs 119,700-166,100 entries/s spinning 20 us, 89,700-175,300
         * spinning 60, 164,600-170,000 without; 3 runs each), and it burns a CPU of the
         * two the driver needs too. */
        int got = msb_fs_wait_kick(kick_fd, wake_fd);
        if (got < 0) {
            *why = MSB_LOOP_WAIT_FAILED;
            return got;
        }
        if (got & 2) {
            /* A stop, or a deferred reply to push: Python's. A kick that came with it
             * is served by the next call's first round. */
            *why = MSB_LOOP_WOKEN;  /* *drained stays 1: nothing popped was left */
            return 0;
        }
    }
}

/* ---- the slow path's transport -------------------------------------------------------- */

uint32_t msb_fs_gather(const struct msb_chain *c, void *buf, uint32_t cap)
{
    msb_iov_copy_from(c->iov, c->nout, 0, buf, c->out_len < cap ? c->out_len : cap);
    return c->out_len;
}

int64_t msb_fs_answer(struct msb_vq *vq, const struct msb_chain *c, const void *reply, uint32_t len)
{
    if (len > c->in_len)
        return -EMSGSIZE;
    msb_iov_copy_to(c->iov + c->nout, c->nin, 0, reply, len);
    int r = msb_vq_push(vq, c->head, len);
    return r < 0 ? r : (int64_t)len;
}

/* The slow path's per-chain crossings, fused (see the header): the same steps in the
 * same order as the separate calls, two GIL releases per request instead of five. */
uint32_t msb_fs_slow_begin(struct msb_inodes *inodes, const struct msb_chain *c,
                           void *buf, uint32_t cap)
{
    if (inodes)
        msb_inodes_hold(inodes);
    msb_grace_enter();
    return msb_fs_gather(c, buf, cap);
}

void msb_fs_slow_end(struct msb_inodes *inodes)
{
    msb_grace_exit();
    if (inodes)
        msb_inodes_unhold(inodes);
}

int64_t msb_fs_slow_end_answer(struct msb_inodes *inodes, struct msb_vq *vq,
                               const struct msb_chain *c, const void *reply, uint32_t len)
{
    msb_fs_slow_end(inodes);
    return msb_fs_answer(vq, c, reply, len);
}
