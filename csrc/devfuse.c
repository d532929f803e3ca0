/* The host mount's fast path: see devfuse.h. */
#define _GNU_SOURCE
#include "devfuse.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/fuse.h>
#include <pthread.h>
#include <limits.h>
#include <linux/futex.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "fuse_datapath.h"
#include "fuse_meta.h"
#include "fuse_readdir.h"
#include "grace.h"
#include "handles.h"
#include "inodes.h"
#include "virtq.h"

#define MAX_READERS 8
/* How long the reader may be on one request before a watcher takes over (devfuse.h). */
#define READER_STALL_NS (1000 * 1000)
/* Idle samples (all READER_STALL apart) before a watcher sleeps until woken. */
#define WATCH_IDLE_SAMPLES 50
#define PAGE 4096u
/* Room for a WRITE's headers beside its data in one socket message. */
#define WRITE_HEADERS PAGE

struct msb_relay {
    int dev_fd, lib_fd, ended_fd;
    struct msb_meta *meta;
    uint32_t bufsize, msg_max;
    uint64_t allow;              /* opcodes C may answer (bit per opcode < 64) */
    uint64_t small_dir;          /* READDIRPLUS of a directory up to this size: C's */
    uint64_t enosys;             /* opcodes libfuse answers ENOSYS (no callback) */
    int ready;                   /* INIT's reply passed and no DESTROY since */
    int stopping;
    int ended_said;
    uint64_t init_unique;        /* 0: no INIT seen yet (the kernel's uniques start at 2) */
    uint32_t minor, max_write;
    uint64_t init_flags;
    int nreaders, started;
    int next_reader;                     /* which io[] the next reader thread counts into */
    int turn;                            /* the reader thread that reads (devfuse.h) */
    uint64_t seq;                        /* requests read so far, by any reader */
    uint64_t busy;                       /* seq of the reader's request << 1 | on it now */
    uint32_t parked;                     /* 1: a watcher sleeps until the next request */
    struct msb_fs_stats io[MAX_READERS]; /* READ/WRITE answered, one writer each */
    pthread_t readers[MAX_READERS], forwarder;
    int joined[MAX_READERS];
    struct msb_relay_stats stats;
};

static void count(uint64_t *c)
{
    __atomic_fetch_add(c, 1, __ATOMIC_RELAXED);
}

/* The signal that interrupts a reader blocked in read() (msb_relay_stop). Its handler
 * does nothing: the point is the EINTR. */
static int stop_signal(void)
{
    return SIGRTMIN + 6;
}

static void on_stop_signal(int sig)
{
    (void)sig;
}

/* Only stop_signal reaches a relay thread (others: 0): Python's signals are for Python's
 * thread, and a stray EINTR must not end a read. */
static void mask_signals(int allow_stop)
{
    sigset_t s;
    sigfillset(&s);
    if (allow_stop)
        sigdelset(&s, stop_signal());
    pthread_sigmask(SIG_SETMASK, &s, NULL);
}

static void say_ended(struct msb_relay *r)
{
    if (__atomic_exchange_n(&r->ended_said, 1, __ATOMIC_ACQ_REL) || r->ended_fd < 0)
        return;
    uint64_t one = 1;
    ssize_t w = write(r->ended_fd, &one, sizeof one);
    (void)w;
}

/* One reply straight to the connection. ENOENT: the request was interrupted and its
 * reply is no longer wanted, which is no error. */
static void write_dev(struct msb_relay *r, const void *buf, size_t len)
{
    ssize_t w;
    do
        w = write(r->dev_fd, buf, len);
    while (w < 0 && errno == EINTR);
    if (w < 0 && errno != ENOENT)
        count(&r->stats.write_errors);
}

static void reply_errno(struct msb_relay *r, uint64_t unique, int err)
{
    struct fuse_out_header oh = { .len = sizeof oh, .error = -err, .unique = unique };
    write_dev(r, &oh, sizeof oh);
}

/* A reader's msb_vq: not a ring; msb_vq_push lands here with the reply the handler
 * wrote into the chain's writable iovec (len 0: no reply, FORGET). */
struct sink {
    struct msb_relay *r;
    const void *reply;
    struct msb_fs_stats *io;   /* this reader's READ/WRITE counts (r->io[i]) */
};

static int sink_push(void *arg, uint16_t head, uint32_t len)
{
    (void)head;
    struct sink *s = arg;
    if (len)
        write_dev(s->r, s->reply, len);
    return 0;
}

static int has_reply(uint32_t opcode)
{
    return opcode != FUSE_FORGET && opcode != FUSE_BATCH_FORGET && opcode != FUSE_INTERRUPT;
}

/* The opcodes that leave set-id bits to the filesystem when libfuse negotiated
 * HANDLE_KILLPRIV(_V2) (OPEN, CREATE, WRITE, SETATTR): the host mount's adapter applies
 * that rule (msbfs/hostmount.py HostOps._killing_ctx), so they are Python's then. Without it the kernel clears the bits
 * itself (a SETATTR of the mode before the write), except for an open's O_TRUNC, which
 * it sends as part of the OPEN (ATOMIC_O_TRUNC): a caller without CAP_FSETID (not root)
 * truncating on open is Python's. */
static int python_rule(const struct msb_relay *r, const uint8_t *buf, size_t n,
                       const struct fuse_in_header *ih)
{
    uint32_t op = ih->opcode;
    if (op != FUSE_OPEN && op != FUSE_CREATE && op != FUSE_WRITE && op != FUSE_READ
        && op != FUSE_SETATTR)
        return 0;
    if (__atomic_load_n(&r->init_flags, __ATOMIC_ACQUIRE)
        & (FUSE_HANDLE_KILLPRIV | FUSE_HANDLE_KILLPRIV_V2))
        return op != FUSE_READ;
    /* Set-id bits the policy hides from the kernel (nosuid: mode_mask) are bits it never
     * clears itself: HostOps clears them, by the opener's rights (Tree._kill_suidgid). So
     * every WRITE is Python's then, and so is an open for writing by a caller other than
     * root (HostOps keeps its opener for those writes). */
    int hidden = (r->meta->mode_mask & (S_ISUID | S_ISGID)) != (S_ISUID | S_ISGID);
    if (hidden && op == FUSE_WRITE)
        return 1;
    if ((op == FUSE_OPEN || op == FUSE_CREATE) && ih->uid != 0) {
        uint32_t flags;
        if (n < sizeof *ih + sizeof flags)
            return 1;
        memcpy(&flags, buf + sizeof *ih, sizeof flags);  /* open_in and create_in: first */
        if (hidden && (flags & O_ACCMODE) != O_RDONLY)
            return 1;
        return (flags & O_TRUNC) != 0;
    }
    return 0;
}

static int serve_meta(struct msb_relay *r, struct msb_vq *vq, struct msb_chain *c,
                      uint8_t *buf, size_t n, uint8_t *out, const struct fuse_in_header *ih);
static int serve_io(struct msb_relay *r, struct msb_vq *vq, struct msb_chain *c,
                    uint8_t *buf, size_t n, uint8_t *out, const struct fuse_in_header *ih);
static int serve_listing_plain(struct msb_relay *r, struct msb_vq *vq, struct msb_chain *c,
                               uint8_t *buf, size_t n, uint8_t *out,
                               const struct fuse_in_header *ih);

/* Which listing HostOps.readdir gives the handle's directory: 1 with attributes (at
 * most small_dir bytes on the host, what a walk lists and then stats name by name),
 * 0 plain records (a larger one: ls looks nothing up), -1 Python's (no such handle). */
static int listed_with_attributes(const struct msb_relay *r, const uint8_t *buf, size_t n,
                                  const struct fuse_in_header *ih)
{
    struct fuse_read_in ri;
    struct stat st;
    if (n != sizeof *ih + sizeof ri || !r->meta->table || !r->small_dir)
        return -1;
    memcpy(&ri, buf + sizeof *ih, sizeof ri);
    int fd = msb_fs_table_get(r->meta->table, ri.fh, MSB_FS_DIR);
    if (fd < 0 || fstat(fd, &st) < 0)
        return -1;
    return (uint64_t)st.st_size <= r->small_dir;
}

/* 1 when C answered the request in buf[0..n). */
static int answer(struct msb_relay *r, struct msb_vq *vq, struct msb_chain *c, uint8_t *buf,
                  size_t n, uint8_t *out, const struct fuse_in_header *ih)
{
    if (!__atomic_load_n(&r->ready, __ATOMIC_ACQUIRE))
        return 0;
    if (ih->opcode >= 64 || !(r->allow & (1ull << ih->opcode)))
        return 0;
    if (ih->len != n || ih->total_extlen != 0)
        return 0;
    if (r->enosys & (1ull << ih->opcode)) {
        reply_errno(r, ih->unique, ENOSYS);   /* what libfuse answers: no callback */
        return 1;
    }
    /* One section for the decision and the answer: the handle fds they look up stay
     * valid until it ends (a RELEASE on another reader closes them after a grace). */
    msb_grace_enter();
    int done = 0;
    if (python_rule(r, buf, n, ih))
        done = 0;
    else if (ih->opcode == FUSE_READ || ih->opcode == FUSE_WRITE)
        done = serve_io(r, vq, c, buf, n, out, ih);
    else if (ih->opcode == FUSE_READDIRPLUS) {
        int attrs = listed_with_attributes(r, buf, n, ih);
        done = attrs == 1 ? serve_meta(r, vq, c, buf, n, out, ih)
               : attrs == 0 ? serve_listing_plain(r, vq, c, buf, n, out, ih) : 0;
    } else
        done = serve_meta(r, vq, c, buf, n, out, ih);
    msb_grace_exit();
    return done;
}

/* The request as a one-buffer-each-way chain for the handlers (csrc/virtq.h msb_chain). */
static void as_chain(const struct msb_relay *r, struct msb_chain *c, uint8_t *buf, size_t n,
                     uint8_t *out)
{
    c->head = 0;
    c->nout = 1;
    c->nin = 1;
    c->out_len = (uint32_t)n;
    c->in_len = r->bufsize;
    c->iov[0] = (struct iovec){ buf, n };
    c->iov[1] = (struct iovec){ out, r->bufsize };
}

static int serve_meta(struct msb_relay *r, struct msb_vq *vq, struct msb_chain *c,
                      uint8_t *buf, size_t n, uint8_t *out, const struct fuse_in_header *ih)
{
    as_chain(r, c, buf, n, out);
    return msb_meta_serve(r->meta, vq, c, ih) != 0;
}

/* READ and WRITE of a handle the table lets C use, by the virtio-fs data path's own
 * rules and I/O (csrc/fuse_datapath.h msb_fs_serve_io): the tree's data_fd permissions
 * (a quota keeps writes in Python), set-id bits a write must clear. */
static int serve_io(struct msb_relay *r, struct msb_vq *vq, struct msb_chain *c,
                    uint8_t *buf, size_t n, uint8_t *out, const struct fuse_in_header *ih)
{
    if (!r->meta->table)
        return 0;
    as_chain(r, c, buf, n, out);
    const struct sink *s = vq->sink_arg;
    return msb_fs_serve_io(r->meta->table, vq, c, ih, s->io) != 0;
}

static int serve_listing_plain(struct msb_relay *r, struct msb_vq *vq, struct msb_chain *c,
                               uint8_t *buf, size_t n, uint8_t *out,
                               const struct fuse_in_header *ih)
{
    if (!__atomic_load_n(&r->meta->ready, __ATOMIC_ACQUIRE)
        || !__atomic_load_n(&r->meta->enabled, __ATOMIC_RELAXED))
        return 0;
    as_chain(r, c, buf, n, out);
    return msb_readdir_serve_plain(r->meta, vq, c, ih) != 0;
}

static void forward(struct msb_relay *r, const uint8_t *buf, size_t n,
                    const struct fuse_in_header *ih)
{
    if (ih->opcode == FUSE_INIT)
        __atomic_store_n(&r->init_unique, ih->unique, __ATOMIC_RELEASE);
    if (ih->opcode == FUSE_DESTROY) {
        /* The session ends: the tree forgets everything after this. */
        __atomic_store_n(&r->ready, 0, __ATOMIC_RELEASE);
        msb_meta_set_ready(r->meta, 0);
    }
    ssize_t s;
    do
        s = send(r->lib_fd, buf, n, MSG_NOSIGNAL);
    while (s < 0 && errno == EINTR && !__atomic_load_n(&r->stopping, __ATOMIC_RELAXED));
    if (s == (ssize_t)n) {
        count(&r->stats.forwarded);
        count(&r->stats.forwarded_op[ih->opcode < 63 ? ih->opcode : 63]);
        return;
    }
    /* libfuse is gone (or the message is too big for the socket): never leave the
     * caller waiting for a reply nobody will send. */
    count(&r->stats.send_errors);
    if (has_reply(ih->opcode))
        reply_errno(r, ih->unique, EIO);
}

static long futex(uint32_t *word, int op, uint32_t val, const struct timespec *timeout)
{
    return syscall(SYS_futex, word, op, val, timeout, NULL, 0);
}

/* The reader read a request: busy with it from now on (a watcher measures how long).
 * A watcher sleeping through an idle spell is woken to watch again. */
static uint64_t reader_busy(struct msb_relay *r)
{
    uint64_t seq = __atomic_add_fetch(&r->seq, 1, __ATOMIC_RELAXED);
    uint64_t mine = seq << 1 | 1;
    __atomic_store_n(&r->busy, mine, __ATOMIC_SEQ_CST);
    if (__atomic_load_n(&r->parked, __ATOMIC_SEQ_CST)) {
        __atomic_store_n(&r->parked, 0, __ATOMIC_SEQ_CST);
        futex(&r->parked, FUTEX_WAKE_PRIVATE, INT_MAX, NULL);
    }
    return seq;
}

/* Done with it; unless a watcher took the turn meanwhile (then the word is its own). */
static void reader_done(struct msb_relay *r, uint64_t seq)
{
    uint64_t mine = seq << 1 | 1;
    __atomic_compare_exchange_n(&r->busy, &mine, seq << 1, 0, __ATOMIC_SEQ_CST,
                                __ATOMIC_RELAXED);
}

/* A thread without the turn: 1 once it took the turn from a reader that stayed on one
 * request a whole READER_STALL, 0 when the relay stops. */
static int watch(struct msb_relay *r, int me)
{
    const struct timespec stall = { 0, READER_STALL_NS };
    uint64_t last = 0;
    int idle = 0;
    while (!__atomic_load_n(&r->stopping, __ATOMIC_ACQUIRE)) {
        int holder = __atomic_load_n(&r->turn, __ATOMIC_SEQ_CST);
        if (holder == me)
            return 1;
        uint64_t now = __atomic_load_n(&r->busy, __ATOMIC_SEQ_CST);
        if ((now & 1) && now == last) {
            /* The same request since the last sample: the reader is stuck in it. */
            if (__atomic_compare_exchange_n(&r->turn, &holder, me, 0, __ATOMIC_SEQ_CST,
                                            __ATOMIC_SEQ_CST)) {
                count(&r->stats.takeovers);
                return 1;
            }
            continue;
        }
        last = now;
        idle = now & 1 ? 0 : idle + 1;
        if (idle >= WATCH_IDLE_SAMPLES) {
            /* Idle a while: sleep until the reader's next request (reader_busy wakes us).
             * Parked first, then the check: a request the reader took meanwhile is seen
             * here or sees us parked (both sequentially consistent). */
            idle = 0;
            __atomic_store_n(&r->parked, 1, __ATOMIC_SEQ_CST);
            if (!(__atomic_load_n(&r->busy, __ATOMIC_SEQ_CST) & 1))
                futex(&r->parked, FUTEX_WAIT_PRIVATE, 1, NULL);  /* EINTR: stop */
            continue;
        }
        nanosleep(&stall, NULL);  /* the stop signal interrupts it */
    }
    return 0;
}

static void *reader_main(void *arg)
{
    struct msb_relay *r = arg;
    mask_signals(1);
    uint8_t *buf = malloc(r->bufsize);
    uint8_t *out = malloc(r->bufsize);
    struct msb_chain *c = malloc(sizeof *c);
    if (!buf || !out || !c) {
        say_ended(r);
        goto done;
    }
    int me = __atomic_fetch_add(&r->next_reader, 1, __ATOMIC_RELAXED);
    struct sink s = { .r = r, .reply = out, .io = &r->io[me] };
    struct msb_vq vq;
    msb_vq_init(&vq);
    vq.sink = sink_push;
    vq.sink_arg = &s;
    while (!__atomic_load_n(&r->stopping, __ATOMIC_ACQUIRE)) {
        if (__atomic_load_n(&r->turn, __ATOMIC_SEQ_CST) != me && !watch(r, me))
            break;
        ssize_t n = read(r->dev_fd, buf, r->bufsize);
        if (n < 0) {
            if (errno == EINTR || errno == EAGAIN || errno == ENOENT)
                continue;
            /* ENODEV: unmounted. Anything else leaves the connection unusable too. */
            say_ended(r);
            break;
        }
        if ((size_t)n < sizeof(struct fuse_in_header))
            continue;  /* the kernel never sends one; nothing to answer */
        uint64_t seq = reader_busy(r);
        struct fuse_in_header ih;
        memcpy(&ih, buf, sizeof ih);
        if (answer(r, &vq, c, buf, (size_t)n, out, &ih))
            count(&r->stats.answered);
        else
            forward(r, buf, (size_t)n, &ih);
        reader_done(r, seq);
    }
done:
    free(c);
    free(out);
    free(buf);
    return NULL;
}

/* libfuse's INIT reply, on its way to the kernel: note what was agreed, lower max_write
 * (and max_pages) when one socket message could not carry such a WRITE, then let C
 * answer from the next request on. */
static void saw_init_reply(struct msb_relay *r, uint8_t *buf, size_t n)
{
    struct fuse_out_header oh;
    memcpy(&oh, buf, sizeof oh);
    if (oh.error != 0 || n < sizeof oh + offsetof(struct fuse_init_out, max_readahead))
        return;  /* refused or not understood: C stays out */
    struct fuse_init_out io;
    memset(&io, 0, sizeof io);
    size_t have = n - sizeof oh < sizeof io ? n - sizeof oh : sizeof io;
    memcpy(&io, buf + sizeof oh, have);
    uint64_t flags = io.flags;
    if (flags & FUSE_INIT_EXT)
        flags |= (uint64_t)io.flags2 << 32;
    uint32_t limit = (r->msg_max - WRITE_HEADERS) & ~(PAGE - 1);
    if (have >= offsetof(struct fuse_init_out, time_gran) && io.max_write > limit) {
        io.max_write = limit;
        if ((flags & FUSE_MAX_PAGES) && have >= offsetof(struct fuse_init_out, map_alignment)
            && io.max_pages > limit / PAGE)
            io.max_pages = (uint16_t)(limit / PAGE);
        memcpy(buf + sizeof oh, &io, have);
        count(&r->stats.clamped);
    }
    __atomic_store_n(&r->init_flags, flags, __ATOMIC_RELEASE);
    __atomic_store_n(&r->max_write, io.max_write, __ATOMIC_RELEASE);
    __atomic_store_n(&r->minor, io.minor, __ATOMIC_RELEASE);
    msb_meta_set_ready(r->meta, 1);
    __atomic_store_n(&r->ready, 1, __ATOMIC_RELEASE);
}

static void *forwarder_main(void *arg)
{
    struct msb_relay *r = arg;
    mask_signals(0);
    uint8_t *buf = malloc(r->bufsize);
    if (!buf)
        return NULL;
    for (;;) {
        ssize_t n = recv(r->lib_fd, buf, r->bufsize, MSG_TRUNC);
        if (n == 0)
            break;  /* libfuse's end is closed */
        if (n < 0) {
            if (errno == EINTR)
                continue;
            break;
        }
        if ((size_t)n < sizeof(struct fuse_out_header))
            continue;
        struct fuse_out_header oh;
        memcpy(&oh, buf, sizeof oh);
        if ((size_t)n > r->bufsize) {
            /* A reply larger than any request allows: the kernel gets an error instead. */
            count(&r->stats.write_errors);
            if (oh.unique)
                reply_errno(r, oh.unique, EIO);
            continue;
        }
        uint64_t init = __atomic_load_n(&r->init_unique, __ATOMIC_ACQUIRE);
        if (init && oh.unique == init && !__atomic_load_n(&r->ready, __ATOMIC_ACQUIRE))
            saw_init_reply(r, buf, (size_t)n);
        write_dev(r, buf, (size_t)n);
        count(&r->stats.replies);
    }
    free(buf);
    return NULL;
}

struct msb_relay *msb_relay_new(int dev_fd, int lib_fd, struct msb_meta *m, uint32_t bufsize,
                                uint32_t msg_max, int ended_fd)
{
    if (!m || bufsize < 2 * PAGE || msg_max < 2 * WRITE_HEADERS)
        return NULL;
    struct msb_relay *r = calloc(1, sizeof *r);
    if (!r)
        return NULL;
    r->dev_fd = dev_fd;
    r->lib_fd = lib_fd;
    r->ended_fd = ended_fd;
    r->meta = m;
    r->bufsize = bufsize;
    r->msg_max = msg_max;
    return r;
}

int msb_relay_allow(struct msb_relay *r, uint32_t opcode, int on)
{
    if (opcode >= 64)
        return -EINVAL;
    if (on)
        r->allow |= 1ull << opcode;
    else
        r->allow &= ~(1ull << opcode);
    return 0;
}

int msb_relay_enosys(struct msb_relay *r, uint32_t opcode)
{
    if (opcode >= 64 || opcode == FUSE_INIT || opcode == FUSE_DESTROY
        || opcode == FUSE_FORGET || opcode == FUSE_BATCH_FORGET || opcode == FUSE_INTERRUPT)
        return -EINVAL;
    r->enosys |= 1ull << opcode;
    r->allow |= 1ull << opcode;
    return 0;
}

void msb_relay_set_small_dir(struct msb_relay *r, uint64_t bytes)
{
    r->small_dir = bytes;
}

int msb_relay_start(struct msb_relay *r, int readers)
{
    if (r->started || readers < 1 || readers > MAX_READERS)
        return -EINVAL;
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_stop_signal;  /* no SA_RESTART: the read must end */
    sigemptyset(&sa.sa_mask);
    if (sigaction(stop_signal(), &sa, NULL) < 0)
        return -errno;
    /* The threads start with every signal blocked, then each sets its own mask. */
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    int err = pthread_create(&r->forwarder, NULL, forwarder_main, r);
    for (int i = 0; !err && i < readers; i++) {
        err = pthread_create(&r->readers[i], NULL, reader_main, r);
        if (!err)
            r->nreaders = i + 1;
    }
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    r->started = 1;
    if (err) {
        msb_relay_stop(r);
        return -err;
    }
    return 0;
}

void msb_relay_stop(struct msb_relay *r)
{
    if (!r->started)
        return;
    r->started = 0;
    __atomic_store_n(&r->ready, 0, __ATOMIC_RELEASE);
    __atomic_store_n(&r->stopping, 1, __ATOMIC_RELEASE);
    shutdown(r->lib_fd, SHUT_RDWR);  /* the forwarder's recv returns 0 */
    int left = r->nreaders;
    while (left > 0) {
        for (int i = 0; i < r->nreaders; i++) {
            if (r->joined[i])
                continue;
            pthread_kill(r->readers[i], stop_signal());
            struct timespec until;
            clock_gettime(CLOCK_REALTIME, &until);
            until.tv_nsec += 10 * 1000 * 1000;
            if (until.tv_nsec >= 1000000000L) {
                until.tv_sec++;
                until.tv_nsec -= 1000000000L;
            }
            if (pthread_timedjoin_np(r->readers[i], NULL, &until) == 0) {
                r->joined[i] = 1;
                left--;
            }
        }
    }
    pthread_join(r->forwarder, NULL);
}

int msb_relay_take_dev(struct msb_relay *r)
{
    int fd = r->dev_fd;
    r->dev_fd = -1;
    return fd;
}

void msb_relay_free(struct msb_relay *r)
{
    if (!r)
        return;
    msb_relay_stop(r);
    if (r->dev_fd >= 0)
        close(r->dev_fd);
    if (r->lib_fd >= 0)
        close(r->lib_fd);
    free(r);
}

void msb_relay_stats(struct msb_relay *r, struct msb_relay_stats *out)
{
    out->answered = __atomic_load_n(&r->stats.answered, __ATOMIC_RELAXED);
    out->forwarded = __atomic_load_n(&r->stats.forwarded, __ATOMIC_RELAXED);
    out->replies = __atomic_load_n(&r->stats.replies, __ATOMIC_RELAXED);
    out->send_errors = __atomic_load_n(&r->stats.send_errors, __ATOMIC_RELAXED);
    out->write_errors = __atomic_load_n(&r->stats.write_errors, __ATOMIC_RELAXED);
    out->clamped = __atomic_load_n(&r->stats.clamped, __ATOMIC_RELAXED);
    out->takeovers = __atomic_load_n(&r->stats.takeovers, __ATOMIC_RELAXED);
    for (int i = 0; i < 64; i++)
        out->forwarded_op[i] = __atomic_load_n(&r->stats.forwarded_op[i], __ATOMIC_RELAXED);
    out->reads = out->writes = 0;
    for (int i = 0; i < MAX_READERS; i++) {
        out->reads += __atomic_load_n(&r->io[i].reads, __ATOMIC_RELAXED);
        out->writes += __atomic_load_n(&r->io[i].writes, __ATOMIC_RELAXED);
    }
}

uint32_t msb_relay_minor(struct msb_relay *r)
{
    return __atomic_load_n(&r->minor, __ATOMIC_ACQUIRE);
}

uint64_t msb_relay_init_flags(struct msb_relay *r)
{
    return __atomic_load_n(&r->init_flags, __ATOMIC_ACQUIRE);
}

uint32_t msb_relay_max_write(struct msb_relay *r)
{
    return __atomic_load_n(&r->max_write, __ATOMIC_ACQUIRE);
}

void msb_relay_py_begin(struct msb_inodes *inodes)
{
    if (inodes)
        msb_inodes_hold(inodes);
    msb_grace_enter();
}

void msb_relay_py_end(struct msb_inodes *inodes)
{
    msb_grace_exit();
    if (inodes)
        msb_inodes_unhold(inodes);
}
