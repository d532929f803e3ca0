/* The inode table (csrc/inodes.h says what it holds and why).
 *
 * ONE place closes inode fds: inode_fd_retire(). Forget to zero, eviction, clear and
 * close all go through it, because another thread may still be using an fd it got
 * from msb_inodes_fd (the request queues run concurrently); a deferred close after a
 * grace period belongs there and nowhere else. (A fresh fd msb_inodes_add does not
 * keep was never in the table, so no other thread can hold it: closed directly.)
 *
 * Layout: each inode is one malloc'd node on two chained hash indexes (node id; dev+ino)
 * and, while it has an fd the cache may close, on the CLOCK ring (a circular list whose
 * head is where the hand points: popitem(last=False) of the Python OrderedDict).
 */
#define _GNU_SOURCE
#include "inodes.h"
#include "grace.h"
#include "sys.h"

#include <errno.h>
#include <fcntl.h>
#include <malloc.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#define ROOT_ID 1
#define NAME_MAX_LEN 255
#define HANDLE_MAX 128                       /* MAX_HANDLE_SZ */
#define REOPEN_FLAGS (O_PATH | O_NOFOLLOW | O_CLOEXEC)

struct inode_handle {                        /* struct file_handle, sized to its bytes */
    uint32_t handle_bytes;
    int32_t handle_type;
    unsigned char f_handle[];
};

/* Where a node added without an fd (msb_inodes_add_named) is found again: a plain name
 * beneath a parent node. */
struct inode_name {
    uint64_t parent;
    int64_t btime;                           /* birth time (ns): tells a reused number */
    uint16_t len;
    char name[];                             /* NUL-terminated */
};

/* One per inode a client holds: a walk of 100,000 files is 100,000 of these (issue 11:
 * 100,000 cached inodes <= 64 MiB), so the layout is packed to 88 bytes, the largest
 * request glibc serves from a 96-byte chunk (89..104 bytes take 112, 105..120 take 128,
 * where it was). Hence the 32-bit open count (handles of ours: bounded far below), the
 * 16-bit kind (S_IFMT bits), one byte of flags, and no link of its own for t->doomed:
 * a doomed node is off the CLOCK ring (it is about to go), so `next` chains it there. */
struct inode {
    uint64_t nodeid, dev, ino, nlookup;
    union {
        struct inode_handle *handle;         /* once the fd had to be closed */
        struct inode_name *name;             /* named: not opened yet */
    };
    struct inode *id_next, *key_next;        /* hash chains */
    struct inode *prev, *next;               /* CLOCK ring; `next` alone: t->doomed */
    uint32_t nopen;
    int fd;                                  /* O_PATH|O_NOFOLLOW, or -1: evicted */
    int mount_id;
    uint16_t kind;
    uint8_t submount : 1, pinned : 1, used : 1, in_ring : 1;
    uint8_t keyed : 1;                       /* on the (dev, ino) index (see stale()) */
    uint8_t doomed : 1;                      /* on t->doomed: at 0 during a hold */
    uint8_t named : 1;                       /* fd -1 and `name` set: never opened */
};
_Static_assert(sizeof(struct inode) <= 88, "struct inode grew past a 96-byte malloc chunk");

struct mount_fd {
    int mount_id, fd;
};

struct msb_inodes {
    pthread_mutex_t lock;
    struct inode **by_id, **by_key;
    size_t nbuckets;                         /* power of two, both indexes */
    uint64_t count, next_id, nfds, evictions, reopens;
    uint64_t max_fds, fd_cap, max_inodes;    /* max_fds 0: no cache */
    struct inode *root;
    struct inode ring;                       /* sentinel of the CLOCK ring */
    uint64_t ring_len;
    struct mount_fd *mounts;                 /* mount id -> readable fd on that mount */
    size_t nmounts;
    uint64_t holds;                          /* msb_inodes_hold: drops wait for 0 */
    struct inode *doomed;                    /* forgotten to 0 while held */
    uint64_t peak, trims;                    /* trim_due() */
    uint64_t nnamed, opens;                  /* named nodes; named nodes opened since */
    uint64_t open_flags, open_resolve;       /* msb_inodes_set_open; 0: no named adds */
};

/* The one place an inode fd is closed (see the top of this file). Request queues run
 * on their own threads, each request inside a grace section (csrc/grace.h): the close
 * waits (without blocking here: this runs under the table's lock) until every section
 * that may have looked the fd up has ended, so no thread's openat/fstat through it
 * lands on a file a new open reused the number for. */
static void inode_fd_retire(struct msb_inodes *t, int fd)
{
    (void)t;
    msb_grace_defer_close(fd);
}

/* ---- hash indexes ----------------------------------------------------------------- */
static size_t hash64(uint64_t x)
{
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdULL;
    x ^= x >> 33;
    x *= 0xc4ceb9fe1a85ec53ULL;
    x ^= x >> 33;
    return (size_t)x;
}

static size_t id_slot(const struct msb_inodes *t, uint64_t nodeid)
{
    return hash64(nodeid) & (t->nbuckets - 1);
}

static size_t key_slot(const struct msb_inodes *t, uint64_t dev, uint64_t ino)
{
    return hash64(ino ^ hash64(dev)) & (t->nbuckets - 1);
}

static struct inode *by_id(const struct msb_inodes *t, uint64_t nodeid)
{
    struct inode *n = t->by_id[id_slot(t, nodeid)];
    while (n && n->nodeid != nodeid)
        n = n->id_next;
    return n;
}

static struct inode *by_key(const struct msb_inodes *t, uint64_t dev, uint64_t ino)
{
    struct inode *n = t->by_key[key_slot(t, dev, ino)];
    while (n && (n->ino != ino || n->dev != dev))
        n = n->key_next;
    return n;
}

static void link_node(struct msb_inodes *t, struct inode *n)
{
    size_t i = id_slot(t, n->nodeid), k = key_slot(t, n->dev, n->ino);
    n->id_next = t->by_id[i];
    t->by_id[i] = n;
    n->key_next = t->by_key[k];
    t->by_key[k] = n;
    n->keyed = 1;
}

static void unlink_key(struct msb_inodes *t, struct inode *n)
{
    if (!n->keyed)
        return;
    struct inode **p = &t->by_key[key_slot(t, n->dev, n->ino)];
    while (*p != n)
        p = &(*p)->key_next;
    *p = n->key_next;
    n->keyed = 0;
}

static void unlink_node(struct msb_inodes *t, struct inode *n)
{
    struct inode **p = &t->by_id[id_slot(t, n->nodeid)];
    while (*p != n)
        p = &(*p)->id_next;
    *p = n->id_next;
    unlink_key(t, n);
}

/* Both indexes re-made with nb buckets; on ENOMEM keep the old ones (longer chains,
 * still correct). */
static void resize(struct msb_inodes *t, size_t nb)
{
    size_t old = t->nbuckets;
    struct inode **ids = calloc(nb, sizeof *ids), **keys = calloc(nb, sizeof *keys);
    if (!ids || !keys) {
        free(ids);
        free(keys);
        return;
    }
    struct inode **old_ids = t->by_id;
    free(t->by_key);
    t->by_id = ids;
    t->by_key = keys;
    t->nbuckets = nb;
    for (size_t i = 0; i < old; i++) {
        struct inode *n = old_ids[i];
        while (n) {
            struct inode *next = n->id_next;
            int keyed = n->keyed;
            link_node(t, n);
            if (!keyed)
                unlink_key(t, n);   /* a dead one stays off the (dev, ino) index */
            n = next;
        }
    }
    free(old_ids);
}

#define MIN_BUCKETS 1024

/* Double both indexes when the load passes 1. */
static void maybe_grow(struct msb_inodes *t)
{
    if (t->count >= t->nbuckets)
        resize(t, t->nbuckets * 2);
}

/* Give the memory of forgotten nodes back to the system once the table has shrunk to
 * half of what it held, by TRIM_MIN nodes at least: free() returns only the top of a
 * heap, and a walk's nodes, forgotten in another order than they were made (and by
 * other queue threads' arenas), leave free holes glibc keeps resident (100,000
 * forgotten inodes kept ~14 MiB). The indexes shrink back to the load they were grown
 * for. 1: the caller runs malloc_trim once it dropped the lock (it walks every arena:
 * a few ms for tens of MiB, at most once per halving). Lock held. */
#define TRIM_MIN 8192
static int trim_due(struct msb_inodes *t)
{
    if (t->count > t->peak)
        t->peak = t->count;
    if (t->peak - t->count < TRIM_MIN || t->count > t->peak / 2)
        return 0;
    t->peak = t->count;
    t->trims++;
    size_t nb = t->nbuckets;
    while (nb > MIN_BUCKETS && t->count < nb / 2)
        nb /= 2;
    if (nb != t->nbuckets)
        resize(t, nb);
    return 1;
}

void msb_malloc_trim(void)
{
    malloc_trim(0);
}

/* ---- the CLOCK ring --------------------------------------------------------------- */
static void ring_push(struct msb_inodes *t, struct inode *n)   /* at the tail */
{
    n->prev = t->ring.prev;
    n->next = &t->ring;
    t->ring.prev->next = n;
    t->ring.prev = n;
    n->in_ring = 1;
    t->ring_len++;
}

static void ring_remove(struct msb_inodes *t, struct inode *n)
{
    if (!n->in_ring)
        return;
    n->prev->next = n->next;
    n->next->prev = n->prev;
    n->prev = n->next = NULL;
    n->in_ring = 0;
    t->ring_len--;
}

static int handle_of(int fd, struct inode_handle **out, int *mount_id)
{
    union {
        struct inode_handle h;
        unsigned char buf[sizeof(struct inode_handle) + HANDLE_MAX];
    } u;
    u.h.handle_bytes = HANDLE_MAX;
    if (syscall(SYS_name_to_handle_at, fd, "", &u.h, mount_id, AT_EMPTY_PATH) < 0)
        return -errno;
    if (u.h.handle_bytes > HANDLE_MAX)
        return -EOVERFLOW;
    size_t size = sizeof u.h + u.h.handle_bytes;
    struct inode_handle *h = malloc(size);
    if (!h)
        return -ENOMEM;
    memcpy(h, &u, size);
    *out = h;
    return 0;
}

static int mount_fd_of(const struct msb_inodes *t, int mount_id)
{
    for (size_t i = 0; i < t->nmounts; i++)
        if (t->mounts[i].mount_id == mount_id)
            return t->mounts[i].fd;
    return -1;
}

static int add_mount(struct msb_inodes *t, int mount_id, int fd)
{
    struct mount_fd *m = realloc(t->mounts, (t->nmounts + 1) * sizeof *m);
    if (!m)
        return -ENOMEM;
    t->mounts = m;
    m[t->nmounts++] = (struct mount_fd){mount_id, fd};
    return 0;
}

static int reopen_proc(int fd, int flags)
{
    char path[32];
    snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
    int r = open(path, flags | O_CLOEXEC);
    return r < 0 ? -errno : r;
}

/* A readable fd on the inode's mount, made from the inode itself when it is a
 * directory or regular file (opening anything else could block or touch a device). */
static int add_mount_fd(struct msb_inodes *t, struct inode *n)
{
    int flags;
    if (n->kind == S_IFDIR)
        flags = O_RDONLY | O_DIRECTORY;
    else if (n->kind == S_IFREG)
        flags = O_RDONLY | O_NONBLOCK | O_NOCTTY;
    else
        return -EINVAL;
    int fd = reopen_proc(n->fd, flags);
    if (fd < 0)
        return fd;
    if (add_mount(t, n->mount_id, fd) < 0) {
        close(fd);   /* a mount fd, never an inode fd */
        return -ENOMEM;
    }
    return 0;
}

/* Close one inode fd (or pin one that cannot be closed); 0: none can go. */
static int evict_one(struct msb_inodes *t, const struct inode *keep)
{
    /* CLOCK: an inode used since the hand last passed gets a second chance, so the hot
     * path only sets a flag instead of reordering a list on every access. One pass at
     * most: an inode whose fd an operation fetched (flag set) survives the eviction a
     * later step of the same operation may cause, so an fd number in hand is never
     * closed under it. Open files are passed over: their inode must outlive an unlink
     * on the host. */
    struct inode *victim = NULL;
    for (uint64_t i = 0, len = t->ring_len; i < len; i++) {
        struct inode *n = t->ring.next;
        ring_remove(t, n);
        if (!n->used && !n->nopen && n != keep) {
            victim = n;
            break;
        }
        n->used = 0;
        ring_push(t, n);
    }
    if (!victim)
        return 0;   /* everything is in use: go over the limit rather than strand one */
    if (!victim->handle) {
        struct stat st;
        if (fstat(victim->fd, &st) < 0 || st.st_nlink == 0
                || handle_of(victim->fd, &victim->handle, &victim->mount_id) < 0) {
            victim->pinned = 1;   /* keeps its fd, out of the cache */
            return 1;
        }
    }
    if (mount_fd_of(t, victim->mount_id) < 0 && add_mount_fd(t, victim) < 0) {
        victim->pinned = 1;       /* no way back to that mount yet: keep the fd */
        return 1;
    }
    int fd = victim->fd;
    victim->fd = -1;
    t->nfds--;
    t->evictions++;
    inode_fd_retire(t, fd);
    return 1;
}

/* n just got an fd: into the cache, evicting others past max_fds. A doomed node stays
 * off the ring (its `next` is t->doomed's link): msb_inodes_unhold puts it back if it
 * was looked up again meanwhile. */
static void opened(struct msb_inodes *t, struct inode *n)
{
    if (!t->max_fds || n->nodeid == ROOT_ID || n->pinned || n->doomed)
        return;
    ring_push(t, n);
    n->used = 1;
    while (t->ring_len > t->max_fds)
        if (!evict_one(t, n))
            break;
}

static int reopen(struct msb_inodes *t, struct inode *n)
{
    if (!n->handle)
        return -ESTALE;
    int mount_fd = mount_fd_of(t, n->mount_id);
    if (mount_fd < 0)
        return -ESTALE;
    long fd = syscall(SYS_open_by_handle_at, mount_fd, n->handle, REOPEN_FLAGS);
    if (fd < 0)
        return -errno;
    n->fd = (int)fd;
    t->nfds++;
    t->reopens++;
    opened(t, n);
    return n->fd;
}

/* An evicted inode's (dev, ino) may name another object by now: the file was deleted on
 * the host after its fd was closed, and the filesystem handed its number to a new file
 * (ext4 does at once). Its handle then says ESTALE. Such a node leaves the (dev, ino)
 * index, so the new object gets a node of its own: found there, the new name would get
 * the dead node's id, whose every use is ESTALE, for as long as the client holds it.
 * The id stays the client's until forgotten. 1: stale. Lock held. */
static int stale(struct msb_inodes *t, struct inode *n)
{
    if (n->fd >= 0 || n->named || reopen(t, n) != -ESTALE)
        return 0;
    unlink_key(t, n);
    return 1;
}

/* Can this process re-open the root from its handle? Seeds the root's mount fd. */
static int probe_handles(struct msb_inodes *t, int root_fd)
{
    struct inode_handle *h = NULL;
    int mount_id;
    if (handle_of(root_fd, &h, &mount_id) < 0)
        return 0;
    int mount_fd = reopen_proc(root_fd, O_RDONLY | O_DIRECTORY);
    int ok = 0;
    if (mount_fd >= 0) {
        long fd = syscall(SYS_open_by_handle_at, mount_fd, h, REOPEN_FLAGS);
        if (fd >= 0) {
            close((int)fd);
            ok = add_mount(t, mount_id, mount_fd) == 0;
        }
        if (!ok)
            close(mount_fd);
    }
    free(h);
    return ok;
}

static void fill(const struct inode *n, struct msb_inode_info *out)
{
    if (!out)
        return;
    *out = (struct msb_inode_info){
        .nodeid = n->nodeid, .dev = n->dev, .ino = n->ino, .nlookup = n->nlookup,
        .nopen = n->nopen, .kind = n->kind, .fd = n->fd, .submount = n->submount,
        .pinned = n->pinned, .named = n->named,
    };
}

static struct inode *new_node(uint64_t nodeid, int fd, uint64_t dev, uint64_t ino,
                              uint32_t mode, int submount)
{
    struct inode *n = calloc(1, sizeof *n);
    if (!n)
        return NULL;
    n->nodeid = nodeid;
    n->fd = fd;
    n->dev = dev;
    n->ino = ino;
    n->kind = mode & S_IFMT;
    n->submount = submount != 0;
    n->mount_id = -1;
    return n;
}

static void free_node(struct inode *n)
{
    free(n->handle);
    free(n);
}

/* ---- the API ---------------------------------------------------------------------- */
struct msb_inodes *msb_inodes_new(int root_fd, uint64_t dev, uint64_t ino, uint32_t mode,
                                  uint64_t max_fds, uint64_t fd_cap, uint64_t max_inodes)
{
    struct msb_inodes *t = calloc(1, sizeof *t);
    if (!t)
        return NULL;
    t->nbuckets = MIN_BUCKETS;
    t->by_id = calloc(t->nbuckets, sizeof *t->by_id);
    t->by_key = calloc(t->nbuckets, sizeof *t->by_key);
    t->root = new_node(ROOT_ID, root_fd, dev, ino, mode, 0);
    if (!t->by_id || !t->by_key || !t->root) {
        free(t->by_id);
        free(t->by_key);
        free(t->root);
        free(t);
        return NULL;
    }
    pthread_mutex_init(&t->lock, NULL);
    t->root->nlookup = 1;   /* the root is never forgotten */
    link_node(t, t->root);
    t->count = 1;
    t->next_id = ROOT_ID + 1;
    t->nfds = 1;
    t->fd_cap = fd_cap;
    t->max_inodes = max_inodes;
    t->ring.prev = t->ring.next = &t->ring;
    /* No way back from a closed fd without handles (no CAP_DAC_READ_SEARCH, or none on
     * this filesystem): every inode keeps its fd, as without a cache. */
    t->max_fds = max_fds && probe_handles(t, root_fd) ? max_fds : 0;
    return t;
}

static void clear_locked(struct msb_inodes *t)
{
    for (size_t i = 0; i < t->nbuckets; i++) {
        struct inode *n = t->by_id[i];
        while (n) {
            struct inode *next = n->id_next;
            if (n != t->root) {
                if (n->fd >= 0)
                    inode_fd_retire(t, n->fd);
                free_node(n);
            }
            n = next;
        }
        t->by_id[i] = t->by_key[i] = NULL;
    }
    t->ring.prev = t->ring.next = &t->ring;
    t->ring_len = 0;
    t->doomed = NULL;   /* every node on it was just freed */
    t->nnamed = 0;
    link_node(t, t->root);
    t->root->nlookup = 1;
    t->count = 1;
    t->nfds = t->root->fd >= 0 ? 1 : 0;
}

void msb_inodes_clear(struct msb_inodes *t)
{
    pthread_mutex_lock(&t->lock);
    clear_locked(t);
    int due = trim_due(t);
    pthread_mutex_unlock(&t->lock);
    if (due)
        msb_malloc_trim();
}

void msb_inodes_close(struct msb_inodes *t)
{
    pthread_mutex_lock(&t->lock);
    clear_locked(t);
    for (size_t i = 0; i < t->nmounts; i++)
        close(t->mounts[i].fd);   /* mount fds are the table's own, never handed out */
    t->nmounts = 0;
    if (t->root->fd >= 0)
        inode_fd_retire(t, t->root->fd);
    t->root->fd = -1;
    t->nfds = 0;
    pthread_mutex_unlock(&t->lock);
}

void msb_inodes_free(struct msb_inodes *t)
{
    if (!t)
        return;
    msb_inodes_close(t);
    pthread_mutex_destroy(&t->lock);
    free_node(t->root);
    free(t->by_id);
    free(t->by_key);
    free(t->mounts);
    free(t);
}

void msb_inodes_stats(struct msb_inodes *t, struct msb_inodes_stats *out)
{
    pthread_mutex_lock(&t->lock);
    *out = (struct msb_inodes_stats){t->count, t->nfds, t->evictions, t->reopens,
                                     t->max_fds, t->trims, t->nnamed, t->opens};
    pthread_mutex_unlock(&t->lock);
}

/* -ENFILE if one more inode fd would pass fd_cap (after trying to evict one). Lock held. */
static int fd_room(struct msb_inodes *t)
{
    if (t->fd_cap != MSB_INODES_NONE && t->nfds >= t->fd_cap) {
        if (t->max_fds)
            evict_one(t, t->root);
        if (t->nfds >= t->fd_cap)
            return -ENFILE;   /* the client holds too many inode fds */
    }
    return 0;
}

static int inode_room(const struct msb_inodes *t)
{
    if (t->max_inodes != MSB_INODES_NONE && t->count >= t->max_inodes)
        return -ENFILE;   /* the client holds too many inodes */
    return 0;
}

int msb_inodes_check_room(struct msb_inodes *t)
{
    pthread_mutex_lock(&t->lock);
    int r = inode_room(t);
    if (!r)
        r = fd_room(t);
    pthread_mutex_unlock(&t->lock);
    return r;
}

int msb_inodes_get(struct msb_inodes *t, uint64_t nodeid, struct msb_inode_info *out)
{
    pthread_mutex_lock(&t->lock);
    struct inode *n = by_id(t, nodeid);
    if (n)
        fill(n, out);
    pthread_mutex_unlock(&t->lock);
    return n ? 0 : -EBADF;
}

int msb_inodes_find(struct msb_inodes *t, uint64_t dev, uint64_t ino, int ref,
                    struct msb_inode_info *out)
{
    pthread_mutex_lock(&t->lock);
    struct inode *n = by_key(t, dev, ino);
    if (n && (n->named || stale(t, n)))
        n = NULL;   /* a named node: found only by name or by an fd, which check its birth */
    if (n) {
        if (ref)
            n->nlookup++;
        fill(n, out);
    }
    pthread_mutex_unlock(&t->lock);
    return n ? 0 : -ENOENT;
}

/* A node new_node made with the table's next id: on both indexes, counted. Lock held. */
static void insert(struct msb_inodes *t, struct inode *n)
{
    t->next_id++;
    maybe_grow(t);
    link_node(t, n);
    if (++t->count > t->peak)
        t->peak = t->count;
}

/* ---- dropping ---------------------------------------------------------------------- */
/* A node whose count fell to zero goes on t->doomed (off the CLOCK ring: never evicted,
 * its fd kept) until reap() drops it, at once when no Python request holds the table,
 * else at the last msb_inodes_unhold; a node looked up again meanwhile stays. */
static void doom(struct msb_inodes *t, struct inode *n)
{
    if (n->doomed)
        return;
    ring_remove(t, n);
    n->doomed = 1;
    n->next = t->doomed;
    t->doomed = n;
}

static void drop_locked(struct msb_inodes *t, struct inode *n);

/* Drop the doomed nodes nobody looked up again, one at a time from the head: dropping
 * a named node may doom its parent (unpin_parent), which is pushed there and reaped in
 * the same loop (a list taken whole could hold the parent, freed under the walk). */
static void reap(struct msb_inodes *t)
{
    while (t->doomed && !t->holds) {
        struct inode *n = t->doomed;
        t->doomed = n->next;
        n->doomed = 0;
        n->next = NULL;
        if (n->nlookup == 0)
            drop_locked(t, n);
        else if (n->fd >= 0)
            opened(t, n);   /* looked up again: back into the cache */
    }
}

/* A named node pins its parent with one lookup of its own (a client that forgets a
 * directory before the names it holds beneath it, as a hostile one may, would strand
 * them: the name is opened beneath the parent's fd). The root needs no pin. Lock held. */
static int pin_parent(struct msb_inodes *t, uint64_t parent)
{
    if (parent == ROOT_ID)
        return 0;
    struct inode *p = by_id(t, parent);
    if (!p)
        return -ESTALE;
    p->nlookup++;
    return 0;
}

/* n (named) no longer needs its parent: its pin goes, dooming the parent at zero
 * (the caller reaps). A parent whose count a client took away already is left alone. */
static void unpin_parent(struct msb_inodes *t, const struct inode *n)
{
    uint64_t parent = n->name->parent;
    struct inode *p = parent == ROOT_ID ? NULL : by_id(t, parent);
    if (p && p->nlookup && --p->nlookup == 0)
        doom(t, p);
}

/* 1 if fd's object was born when named node n's was (the same file, not a new one the
 * number was given to since). Lock held: a statx of an fd, only when an fd's inode is
 * found as a named node. */
static int same_birth(const struct inode *n, int fd)
{
    struct stat st;
    int64_t born;
    return msb_statx_at(fd, "", AT_EMPTY_PATH, &st, &born) == 0 && born == n->name->btime;
}

/* n (evicted, or named) gets fd, which is the table's from now on. A named node's
 * parent is unpinned, maybe doomed: the public function reaps before it returns (never
 * here, under a caller still using its node). Lock held. */
static void install_fd(struct msb_inodes *t, struct inode *n, int fd)
{
    if (n->named) {
        unpin_parent(t, n);
        free(n->name);
        n->name = NULL;
        n->named = 0;
        t->nnamed--;
        t->opens++;
    }
    n->fd = fd;
    t->nfds++;
    opened(t, n);
}

int msb_inodes_add(struct msb_inodes *t, int fd, uint64_t dev, uint64_t ino,
                   uint32_t mode, int submount, struct msb_inode_info *out)
{
    int r = 0;
    pthread_mutex_lock(&t->lock);
    struct inode *n = by_key(t, dev, ino);
    if (n && stale(t, n))
        n = NULL;
    if (n && n->named && (n->kind != (mode & S_IFMT) || !same_birth(n, fd))) {
        unlink_key(t, n);   /* a reused number: see msb_inodes_add_named */
        n = NULL;
    }
    if (!n) {
        n = new_node(t->next_id, fd, dev, ino, mode, submount);
        if (!n) {
            r = -ENOMEM;
            goto out;
        }
        insert(t, n);
        t->nfds++;
        fd = -1;
        opened(t, n);
    } else if (n->fd < 0) {
        install_fd(t, n, fd);
        fd = -1;
    }
    n->nlookup++;
    fill(n, out);
    reap(t);   /* a named node's parent, if that was its last lookup */
out:
    pthread_mutex_unlock(&t->lock);
    if (fd >= 0)
        close(fd);   /* never in the table: no other thread can hold it */
    return r;
}

int msb_inodes_ref(struct msb_inodes *t, uint64_t nodeid)
{
    pthread_mutex_lock(&t->lock);
    struct inode *n = by_id(t, nodeid);
    if (n)
        n->nlookup++;
    pthread_mutex_unlock(&t->lock);
    return n ? 0 : -EBADF;
}

static void drop_locked(struct msb_inodes *t, struct inode *n)
{
    if (n->named) {
        t->nnamed--;
        unpin_parent(t, n);   /* may doom it: reap() goes on with it */
    }
    unlink_node(t, n);
    ring_remove(t, n);
    t->count--;
    if (n->fd >= 0) {
        t->nfds--;
        inode_fd_retire(t, n->fd);
    }
    free_node(n);
}

void msb_inodes_forget(struct msb_inodes *t, uint64_t nodeid, uint64_t nlookup)
{
    if (nodeid == ROOT_ID)
        return;
    int due = 0;
    pthread_mutex_lock(&t->lock);
    struct inode *n = by_id(t, nodeid);
    if (n && n->nlookup) {
        /* The client decides nlookup: more than it holds takes them all. */
        n->nlookup = nlookup >= n->nlookup ? 0 : n->nlookup - nlookup;
        if (n->nlookup == 0) {
            doom(t, n);
            if (!t->holds) {
                reap(t);
                due = trim_due(t);
            }
        }
    }
    pthread_mutex_unlock(&t->lock);
    if (due)
        msb_malloc_trim();
}

void msb_inodes_hold(struct msb_inodes *t)
{
    pthread_mutex_lock(&t->lock);
    t->holds++;
    pthread_mutex_unlock(&t->lock);
}

void msb_inodes_unhold(struct msb_inodes *t)
{
    int due = 0;
    pthread_mutex_lock(&t->lock);
    if (t->holds && --t->holds == 0) {
        reap(t);
        due = trim_due(t);
    }
    pthread_mutex_unlock(&t->lock);
    if (due)
        msb_malloc_trim();
}

/* The fd of n (re-opened if evicted), marked used; -errno. Lock held; n not named. */
static int fd_locked(struct msb_inodes *t, struct inode *n)
{
    if (n->fd < 0)
        return n->named ? -ESTALE : reopen(t, n);
    n->used = 1;
    return n->fd;
}

/* ---- named nodes ------------------------------------------------------------------ */
void msb_inodes_set_open(struct msb_inodes *t, uint64_t flags, uint64_t resolve)
{
    pthread_mutex_lock(&t->lock);
    t->open_flags = flags;
    t->open_resolve = resolve;
    pthread_mutex_unlock(&t->lock);
}

int msb_plain_name(const char *name, size_t len)
{
    if (len == 0 || len > NAME_MAX_LEN || memchr(name, '/', len) || memchr(name, '\0', len))
        return 0;
    return !(name[0] == '.' && (len == 1 || (len == 2 && name[1] == '.')));
}

static struct inode_name *name_new(uint64_t parent, const char *name, size_t len,
                                   int64_t btime)
{
    struct inode_name *nm = malloc(sizeof *nm + len + 1);
    if (nm) {
        nm->parent = parent;
        nm->btime = btime;
        nm->len = (uint16_t)len;
        memcpy(nm->name, name, len);
        nm->name[len] = '\0';
    }
    return nm;
}

/* n (named) is found as `name` beneath `parent` from now on, which it pins instead of
 * the old one (the caller reaps). Out of memory, or no such parent: the old name stays
 * (ESTALE at worst). Lock held. */
static void rename_named(struct msb_inodes *t, struct inode *n, uint64_t parent,
                         const char *name, size_t len)
{
    const struct inode_name *old = n->name;
    if (old->parent == parent && old->len == len && !memcmp(old->name, name, len))
        return;
    struct inode_name *nm = name_new(parent, name, len, old->btime);
    if (!nm || pin_parent(t, parent) < 0) {
        free(nm);
        return;
    }
    unpin_parent(t, n);
    free(n->name);
    n->name = nm;
}

int msb_inodes_add_named(struct msb_inodes *t, uint64_t parent, const char *name, size_t len,
                         uint64_t dev, uint64_t ino, uint32_t mode, int64_t btime,
                         struct msb_inode_info *out)
{
    if (!msb_plain_name(name, len))
        return -EINVAL;
    int r = 0;
    pthread_mutex_lock(&t->lock);
    struct inode *n = by_key(t, dev, ino);
    if (n && stale(t, n))
        n = NULL;
    if (n && (n->kind != (mode & S_IFMT) || (n->named && n->name->btime != btime))) {
        /* The number names another object (another kind, another birth): the one the
         * node stood for is gone. Only a named node, which holds nothing, lets the
         * number be reused; it leaves the (dev, ino) index as a stale evicted one does,
         * and answers ESTALE (its open checks the birth time) until forgotten. */
        unlink_key(t, n);
        n = NULL;
    }
    if (n) {
        /* Where the client just found it: the name it was added under may be gone
         * (renamed, here or on the host). */
        if (n->named)
            rename_named(t, n, parent, name, len);
    } else if (!t->open_flags) {
        r = -ENOTSUP;   /* no msb_inodes_set_open: the caller opens it */
        goto out;
    } else if ((r = inode_room(t)) < 0) {
        goto out;
    } else {
        struct inode_name *nm = name_new(parent, name, len, btime);
        n = nm ? new_node(t->next_id, -1, dev, ino, mode, 0) : NULL;
        if (!n || (r = pin_parent(t, parent)) < 0) {
            free(nm);
            free(n);
            r = r < 0 ? r : -ENOMEM;   /* the parent forgotten since it was read */
            goto out;
        }
        n->named = 1;
        n->name = nm;
        insert(t, n);
        t->nnamed++;
        r = 1;
    }
    n->nlookup++;
    fill(n, out);
    reap(t);   /* an old parent unpinned */
out:
    pthread_mutex_unlock(&t->lock);
    return r;
}

/* Open the named node n: its name beneath its parent's fd, as the tree opens a name
 * (the flags of msb_inodes_set_open), and keep the fd only if it is the inode the node
 * was added for (dev, ino, kind, birth): the name may hold another object by now, and the one
 * opened is the truth. -ESTALE otherwise (the client looks the name up again: the
 * kernel retries a path walk that met ESTALE with LOOKUP_REVAL). Lock held on entry
 * and on return; dropped for the two syscalls, so n may be gone on return (the caller
 * finds it again by id). */
static int open_named(struct msb_inodes *t, struct inode *n)
{
    const uint64_t nodeid = n->nodeid, dev = n->dev, ino = n->ino;
    const uint32_t kind = n->kind;
    const int64_t btime = n->name->btime;
    char name[NAME_MAX_LEN + 1];
    memcpy(name, n->name->name, (size_t)n->name->len + 1);
    struct inode *p = by_id(t, n->name->parent);
    if (!p || p->named)
        return -ESTALE;   /* forgotten by a client that ignored the pin (or never opened) */
    int r = fd_room(t);
    if (r < 0)
        return r;
    int pfd = fd_locked(t, p);
    if (pfd < 0)
        return pfd;
    const uint64_t flags = t->open_flags, resolve = t->open_resolve;
    t->nfds++;   /* the fd about to be opened, counted while the lock is dropped: threads
                  * opening at once cannot pass fd_cap together */
    /* pfd stays ours while the lock is dropped: closes wait for this section. */
    msb_grace_enter();
    pthread_mutex_unlock(&t->lock);
    int fd = msb_openat2(pfd, name, flags, 0, resolve);
    struct stat st;
    int64_t born;
    if (fd < 0)
        r = fd == -ENOENT || fd == -EXDEV ? -ESTALE : fd;
    else if ((r = msb_statx_at(fd, "", AT_EMPTY_PATH, &st, &born)) < 0)
        ;
    else if ((uint64_t)st.st_dev != dev || (uint64_t)st.st_ino != ino
             || (st.st_mode & S_IFMT) != kind || born != btime)
        r = -ESTALE;
    pthread_mutex_lock(&t->lock);
    msb_grace_exit();
    t->nfds--;   /* the reservation: install_fd counts the fd it keeps */
    n = by_id(t, nodeid);
    if (r < 0 || !n || !n->named) {
        if (fd >= 0)
            close(fd);   /* never in the table: no other thread can hold it */
        return r;        /* gone or opened meanwhile: the caller finds which */
    }
    install_fd(t, n, fd);
    reap(t);
    return 0;
}

/* The named node of the object `name` (plain) beneath pfd holds now (the same birth),
 * or NULL. Lock held on return either way. No statx while the table has no named
 * nodes. */
static struct inode *named_at(struct msb_inodes *t, int pfd, const char *name, size_t len)
{
    pthread_mutex_lock(&t->lock);
    if (!t->nnamed || !msb_plain_name(name, len))
        return NULL;
    pthread_mutex_unlock(&t->lock);
    struct stat st;
    int64_t btime;
    int r = msb_statx_at(pfd, name, AT_SYMLINK_NOFOLLOW, &st, &btime);
    pthread_mutex_lock(&t->lock);
    if (r < 0)
        return NULL;
    struct inode *n = by_key(t, st.st_dev, st.st_ino);
    if (n && n->named && n->name->btime == btime && n->kind == (st.st_mode & S_IFMT))
        return n;
    return NULL;
}

void msb_inodes_moved(struct msb_inodes *t, uint64_t parent, int pfd, const char *name,
                      size_t len)
{
    struct inode *n = named_at(t, pfd, name, len);
    if (n)
        rename_named(t, n, parent, name, len);
    reap(t);
    pthread_mutex_unlock(&t->lock);
}

void msb_inodes_removing(struct msb_inodes *t, uint64_t parent, int pfd, const char *name,
                         size_t len)
{
    struct inode *n = named_at(t, pfd, name, len);
    if (n) {
        rename_named(t, n, parent, name, len);
        open_named(t, n);   /* failing: ESTALE later, as for any name gone */
    }
    reap(t);
    pthread_mutex_unlock(&t->lock);
}

/* by_id, with a named node opened: the node (NULL: not in the table) and its fd. */
static struct inode *opened_by_id(struct msb_inodes *t, uint64_t nodeid, int *fd)
{
    struct inode *n = by_id(t, nodeid);
    if (n && n->named) {
        int r = open_named(t, n);
        n = by_id(t, nodeid);
        if (r < 0 && (!n || n->named)) {   /* not opened by another thread meanwhile */
            *fd = n ? r : -EBADF;
            return n;
        }
    }
    *fd = n ? fd_locked(t, n) : -EBADF;   /* unknown, or forgotten */
    return n;
}

int msb_inodes_fd(struct msb_inodes *t, uint64_t nodeid)
{
    int fd;
    pthread_mutex_lock(&t->lock);
    opened_by_id(t, nodeid, &fd);
    pthread_mutex_unlock(&t->lock);
    return fd;
}

int64_t msb_inodes_nopen_add(struct msb_inodes *t, uint64_t nodeid, int delta)
{
    int64_t r;
    pthread_mutex_lock(&t->lock);
    struct inode *n = by_id(t, nodeid);
    if (!n) {
        r = -EBADF;
    } else {
        /* Handles of ours: the handle table's bound keeps this far below 2^32. */
        int64_t v = (int64_t)n->nopen + delta;
        n->nopen = v < 0 ? 0 : v > UINT32_MAX ? UINT32_MAX : (uint32_t)v;
        r = (int64_t)n->nopen;
    }
    pthread_mutex_unlock(&t->lock);
    return r;
}

int64_t msb_inodes_traits(struct msb_inodes *t, uint64_t nodeid)
{
    int64_t r = -EBADF;
    pthread_mutex_lock(&t->lock);
    struct inode *n = by_id(t, nodeid);
    if (n)
        r = n->kind | (n->submount ? MSB_INODE_SUBMOUNT : 0);
    pthread_mutex_unlock(&t->lock);
    return r;
}

int64_t msb_inodes_find_id(struct msb_inodes *t, uint64_t dev, uint64_t ino, int ref)
{
    struct msb_inode_info info;
    int r = msb_inodes_find(t, dev, ino, ref, &info);
    return r < 0 ? r : (int64_t)(info.nodeid << 1 | info.submount);
}

int64_t msb_inodes_add_id(struct msb_inodes *t, int fd, uint64_t dev, uint64_t ino,
                          uint32_t mode, int submount)
{
    struct msb_inode_info info;
    int r = msb_inodes_add(t, fd, dev, ino, mode, submount, &info);
    return r < 0 ? r : (int64_t)(info.nodeid << 1 | info.submount);
}

int64_t msb_inodes_fd_traits(struct msb_inodes *t, uint64_t nodeid)
{
    int fd;
    pthread_mutex_lock(&t->lock);
    struct inode *n = opened_by_id(t, nodeid, &fd);
    int64_t r = fd < 0 ? fd
                : (int64_t)fd << MSB_INODE_FD_SHIFT | n->kind | (n->submount ? MSB_INODE_SUBMOUNT : 0);
    pthread_mutex_unlock(&t->lock);
    return r;
}
