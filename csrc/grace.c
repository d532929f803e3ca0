/* See grace.h. The scheme is userspace RCU's "memb" flavour, reduced to what we need:
 * a global period counter `gp` (odd numbers only, so 0 means "outside"), one word per
 * registered thread holding the period it entered its section in, and a synchronize
 * that advances `gp` and waits until no other thread's word holds an older period.
 *
 * Ordering: a reader stores its word, then a full fence, then reads the tables; a
 * writer removes the entry, then (inside synchronize) a full fence, then reads every
 * word. Either the reader's store is seen by the writer's scan (the writer waits for
 * it) or the reader's table read comes after the removal (it never sees the fd). */
#define _GNU_SOURCE
#include "grace.h"

#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

struct grace_rec {
    uint64_t word;            /* 0 outside; else the period the section began in */
    struct grace_rec *next;   /* registry list; records are reused, never freed */
    int in_use;               /* owned by a live thread */
};

static pthread_mutex_t reg_mu = PTHREAD_MUTEX_INITIALIZER;  /* registry and synchronize */
static struct grace_rec *reg_head;
static uint64_t gp = 1;
static pthread_key_t rec_key;
static pthread_once_t key_once = PTHREAD_ONCE_INIT;

static __thread struct grace_rec *my_rec;
static __thread unsigned my_depth;

int msb_grace_reclaim(void);

static void rec_release(void *p)
{
    /* thread exit: its section (if any) is over and the record is free for reuse */
    struct grace_rec *r = p;
    __atomic_store_n(&r->word, 0, __ATOMIC_RELEASE);
    pthread_mutex_lock(&reg_mu);
    r->in_use = 0;
    pthread_mutex_unlock(&reg_mu);
}

/* A forked child has only the forking thread: the others' sections are gone with them
 * (a word left set would make every later synchronize in the child wait forever). */
static void after_fork_child(void)
{
    pthread_mutex_init(&reg_mu, NULL);
    for (struct grace_rec *r = reg_head; r; r = r->next)
        if (r != my_rec) {
            r->word = 0;
            r->in_use = 0;
        }
}

static void make_key(void)
{
    pthread_key_create(&rec_key, rec_release);
    pthread_atfork(NULL, NULL, after_fork_child);
}

static struct grace_rec *my_record(void)
{
    if (my_rec)
        return my_rec;
    pthread_once(&key_once, make_key);
    pthread_mutex_lock(&reg_mu);
    struct grace_rec *r;
    for (r = reg_head; r; r = r->next)
        if (!r->in_use)
            break;
    if (!r) {
        r = calloc(1, sizeof(*r));
        if (!r) {
            pthread_mutex_unlock(&reg_mu);
            abort(); /* cannot protect this thread's reads: failing safe */
        }
        r->next = reg_head;
        __atomic_store_n(&reg_head, r, __ATOMIC_RELEASE);
    }
    r->in_use = 1;
    r->word = 0;
    pthread_mutex_unlock(&reg_mu);
    pthread_setspecific(rec_key, r);
    my_rec = r;
    return r;
}

void msb_grace_enter(void)
{
    if (my_depth++)
        return;
    struct grace_rec *r = my_record();
    __atomic_store_n(&r->word, __atomic_load_n(&gp, __ATOMIC_ACQUIRE), __ATOMIC_RELAXED);
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
}

/* ---- deferred closes ------------------------------------------------------------------ */
struct deferred_fd { int fd; uint64_t after; };
static pthread_mutex_t defer_mu = PTHREAD_MUTEX_INITIALIZER;
static struct deferred_fd *deferred;
static size_t ndeferred, cap_deferred;
static int pending_count;  /* ndeferred, readable without the mutex */

/* The oldest period any thread's open section began in (UINT64_MAX: none). Lock-free:
 * records are only ever prepended and never freed. */
static uint64_t oldest_section(void)
{
    uint64_t oldest = UINT64_MAX;
    for (struct grace_rec *r = __atomic_load_n(&reg_head, __ATOMIC_ACQUIRE); r; r = r->next) {
        uint64_t w = __atomic_load_n(&r->word, __ATOMIC_ACQUIRE);
        if (w && w < oldest)
            oldest = w;
    }
    return oldest;
}

int msb_grace_reclaim(void)
{
    if (!__atomic_load_n(&pending_count, __ATOMIC_ACQUIRE))
        return 0;
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
    uint64_t oldest = oldest_section();
    pthread_mutex_lock(&defer_mu);
    size_t keep = 0;
    for (size_t i = 0; i < ndeferred; i++) {
        /* A section that began at or after `after` started after the removal: it can
         * not have looked the fd up. */
        if (deferred[i].after <= oldest)
            close(deferred[i].fd);
        else
            deferred[keep++] = deferred[i];
    }
    ndeferred = keep;
    __atomic_store_n(&pending_count, (int)keep, __ATOMIC_RELEASE);
    pthread_mutex_unlock(&defer_mu);
    return (int)keep;
}

void msb_grace_defer_close(int fd)
{
    if (fd < 0)
        return;
    /* A new period: sections entered from now on began after the removal. */
    uint64_t after = __atomic_add_fetch(&gp, 2, __ATOMIC_SEQ_CST);
    pthread_mutex_lock(&defer_mu);
    if (ndeferred == cap_deferred) {
        size_t ncap = cap_deferred ? cap_deferred * 2 : 64;
        struct deferred_fd *n = realloc(deferred, ncap * sizeof(*n));
        if (!n) {
            /* No memory to remember it: the one safe thing left is to wait. */
            pthread_mutex_unlock(&defer_mu);
            if (!my_depth) {
                msb_grace_close(fd);
                return;
            }
            abort();
        }
        deferred = n;
        cap_deferred = ncap;
    }
    deferred[ndeferred++] = (struct deferred_fd){ fd, after };
    __atomic_store_n(&pending_count, (int)ndeferred, __ATOMIC_RELEASE);
    pthread_mutex_unlock(&defer_mu);
    /* At once when no older section is open (the usual case). Inside a section of our
     * own nothing deferred now can go before it ends, and its exit reclaims: a scan per
     * call made a BATCH_FORGET of n inodes (one section) cost n^2/2 steps. */
    if (!my_depth)
        msb_grace_reclaim();
}

void msb_grace_exit(void)
{
    if (my_depth == 0 || --my_depth)
        return;
    __atomic_store_n(&my_rec->word, 0, __ATOMIC_RELEASE);
    if (__atomic_load_n(&pending_count, __ATOMIC_RELAXED))
        msb_grace_reclaim();
}

int msb_grace_inside(void)
{
    return my_depth > 0;
}

int msb_grace_synchronize(void)
{
    __atomic_thread_fence(__ATOMIC_SEQ_CST);  /* the removals before the scan */
    pthread_mutex_lock(&reg_mu);
    uint64_t now = __atomic_add_fetch(&gp, 2, __ATOMIC_SEQ_CST);
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
    int waited = 0;
    for (struct grace_rec *r = reg_head; r; r = r->next) {
        if (r == my_rec)
            continue; /* never wait for ourselves (grace.h) */
        int counted = 0;
        for (;;) {
            uint64_t w = __atomic_load_n(&r->word, __ATOMIC_ACQUIRE);
            if (w == 0 || w >= now)
                break;
            if (!counted) {
                counted = 1;
                waited++;
            }
            /* A section is one request or one round of them: short. Sleep rather than
             * spin: on a 2-CPU host the reader may need this CPU to finish. The mutex
             * stays held: registering threads wait, readers never take it. */
            struct timespec ts = { 0, 20000 };
            nanosleep(&ts, NULL);
        }
    }
    pthread_mutex_unlock(&reg_mu);
    msb_grace_reclaim();
    return waited;
}

int msb_grace_close(int fd)
{
    msb_grace_synchronize();
    return close(fd) < 0 ? -errno : 0;
}
