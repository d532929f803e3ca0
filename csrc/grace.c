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

void msb_grace_exit(void)
{
    if (my_depth == 0 || --my_depth)
        return;
    __atomic_store_n(&my_rec->word, 0, __ATOMIC_RELEASE);
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
    return waited;
}

int msb_grace_close(int fd)
{
    msb_grace_synchronize();
    return close(fd) < 0 ? -errno : 0;
}
