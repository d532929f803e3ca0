/* See handles.h. */
#define _GNU_SOURCE
#include "handles.h"
#include "grace.h"
#include "inodes.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>

static uint32_t slot_of(uint64_t fh, uint32_t cap)
{
    /* fh values are small counters; mix them so neighbours do not cluster. */
    fh ^= fh >> 33;
    fh *= 0xff51afd7ed558ccdULL;
    fh ^= fh >> 33;
    return (uint32_t)fh & (cap - 1);
}

struct msb_fs_table *msb_handles_new(struct msb_inodes *inodes, uint64_t max_handles)
{
    struct msb_fs_table *t = calloc(1, sizeof(*t));
    if (!t)
        return NULL;
    t->cap = 64;
    t->slow_write_mode_bits = 0xFFFFFFFFu; /* until Python sets the policy's mask: all slow */
    t->next_fh = 1;
    t->max_handles = max_handles;
    t->inodes = inodes;
    t->slots = calloc(t->cap, sizeof(*t->slots));
    if (!t->slots || pthread_rwlock_init(&t->lock, NULL) != 0) {
        free(t->slots);
        free(t);
        return NULL;
    }
    return t;
}

struct msb_fs_table *msb_fs_table_new(void)
{
    return msb_handles_new(NULL, MSB_HANDLES_NONE);
}

void msb_fs_table_free(struct msb_fs_table *t)
{
    if (t) {
        pthread_rwlock_destroy(&t->lock);
        free(t->slots);
        free(t);
    }
}

void msb_fs_table_clear(struct msb_fs_table *t)
{
    pthread_rwlock_wrlock(&t->lock);
    memset(t->slots, 0, t->cap * sizeof(*t->slots));
    t->count = t->tombs = 0;
    pthread_rwlock_unlock(&t->lock);
}

static struct msb_fs_slot *find(const struct msb_fs_table *t, uint64_t fh)
{
    uint32_t i = slot_of(fh, t->cap);
    for (uint32_t n = 0; n < t->cap; n++, i = (i + 1) & (t->cap - 1)) {
        struct msb_fs_slot *s = &t->slots[i];
        if (s->used == 0)
            return NULL;
        if (s->used == 1 && s->fh == fh)
            return s;
    }
    return NULL;
}

static int grow(struct msb_fs_table *t)
{
    uint32_t ncap = t->count * 4 >= t->cap ? t->cap * 2 : t->cap; /* else only purge tombs */
    struct msb_fs_slot *ns = calloc(ncap, sizeof(*ns));
    if (!ns)
        return -ENOMEM;
    for (uint32_t i = 0; i < t->cap; i++) {
        struct msb_fs_slot *s = &t->slots[i];
        if (s->used != 1)
            continue;
        uint32_t j = slot_of(s->fh, ncap);
        while (ns[j].used)
            j = (j + 1) & (ncap - 1);
        ns[j] = *s;
    }
    free(t->slots);
    t->slots = ns;
    t->cap = ncap;
    t->tombs = 0;
    return 0;
}

/* A live slot for `fh`, new (fields cleared, fd -1) or the one already there. */
static struct msb_fs_slot *slot_for(struct msb_fs_table *t, uint64_t fh)
{
    struct msb_fs_slot *s = find(t, fh);
    if (s)
        return s;
    if ((t->count + t->tombs + 1) * 2 > t->cap && grow(t) < 0)
        return NULL;
    uint32_t i = slot_of(fh, t->cap);
    while (t->slots[i].used == 1)
        i = (i + 1) & (t->cap - 1);
    s = &t->slots[i];
    if (s->used == 2)
        t->tombs--;
    *s = (struct msb_fs_slot){ .fh = fh, .fd = -1, .used = 1 };
    t->count++;
    return s;
}

static void drop_slot(struct msb_fs_table *t, struct msb_fs_slot *s)
{
    s->used = 2;
    s->fd = -1;
    t->count--;
    t->tombs++;
}

int msb_fs_table_set(struct msb_fs_table *t, uint64_t fh, int fd, int dirs)
{
    pthread_rwlock_wrlock(&t->lock);
    struct msb_fs_slot *s = slot_for(t, fh);
    if (s) {
        s->fd = fd;
        s->perms |= (uint8_t)dirs;
    }
    pthread_rwlock_unlock(&t->lock);
    return s ? 0 : -ENOMEM;
}

int msb_fs_table_del(struct msb_fs_table *t, uint64_t fh)
{
    pthread_rwlock_wrlock(&t->lock);
    struct msb_fs_slot *s = find(t, fh);
    if (s)
        drop_slot(t, s);
    pthread_rwlock_unlock(&t->lock);
    return s != NULL;
}

int msb_fs_table_get(const struct msb_fs_table *t, uint64_t fh, int dir)
{
    /* the lock is not part of the table's value: a const lookup may still take it */
    pthread_rwlock_t *lock = (pthread_rwlock_t *)&t->lock;
    pthread_rwlock_rdlock(lock);
    const struct msb_fs_slot *s = find(t, fh);
    int fd = s && dir && (s->perms & dir) == dir ? s->fd : -1;
    pthread_rwlock_unlock(lock);
    return fd;
}

/* ---- handles ---------------------------------------------------------------------- */

/* The client's handle budget (issue 9, point 7): past it, its next open is EMFILE (it
 * is the client's fd table that is full, in effect) and the daemon keeps its fds. */
static int full(const struct msb_fs_table *t)
{
    return t->max_handles != MSB_HANDLES_NONE && t->count >= t->max_handles;
}

int msb_handles_check_room(struct msb_fs_table *t)
{
    pthread_rwlock_rdlock(&t->lock);
    int r = full(t) ? -EMFILE : 0;
    pthread_rwlock_unlock(&t->lock);
    return r;
}

static int perms_of(const struct msb_fs_table *t, uint32_t flags, int dir)
{
    if (dir)
        return MSB_FS_DIR;
    uint32_t acc = flags & O_ACCMODE;   /* 3 (ioctl only) neither reads nor writes */
    return (acc == O_RDONLY || acc == O_RDWR ? MSB_FS_READ : 0)
        | (acc == O_WRONLY || acc == O_RDWR ? t->write_perm : 0);
}

int64_t msb_handles_add(struct msb_fs_table *t, int fd, uint32_t flags, uint64_t nodeid,
                        uint32_t traits, int dir, int enforce)
{
    int perms = perms_of(t, flags, dir);
    pthread_rwlock_wrlock(&t->lock);
    if (enforce && full(t)) {
        pthread_rwlock_unlock(&t->lock);
        return -EMFILE;
    }
    uint64_t fh = t->next_fh;
    struct msb_fs_slot *s = slot_for(t, fh);
    if (s) {
        t->next_fh++;
        *s = (struct msb_fs_slot){ .fh = fh, .nodeid = nodeid, .fd = fd, .flags = flags,
                                   .traits = traits, .used = 1, .perms = (uint8_t)perms };
        /* Counted before the slot can be seen: fh numbers are predictable, and a
         * RELEASE of this one on another queue must never take the count away first
         * (it stops at 0, and this +1 would then outlive the handle, pinning the
         * inode). The inode table's lock is only ever taken inside this one, never the
         * other way round. An inode forgotten meanwhile is -EBADF: removal then counts
         * this table's handles on it instead. */
        if (!(perms & MSB_FS_DIR) && t->inodes)
            msb_inodes_nopen_add(t->inodes, nodeid, 1);
    }
    pthread_rwlock_unlock(&t->lock);
    return s ? (int64_t)fh : -ENOMEM;
}

static void copy_out(const struct msb_fs_slot *s, struct msb_handle *out)
{
    *out = (struct msb_handle){ .nodeid = s->nodeid, .fd = s->fd, .flags = s->flags,
                                .traits = s->traits, .perms = s->perms,
                                .pystate = s->pystate };
}

int msb_handles_get(struct msb_fs_table *t, uint64_t fh, struct msb_handle *out)
{
    pthread_rwlock_rdlock(&t->lock);
    const struct msb_fs_slot *s = find(t, fh);
    if (s)
        copy_out(s, out);
    pthread_rwlock_unlock(&t->lock);
    return s ? 0 : -EBADF;
}

int64_t msb_handles_file(struct msb_fs_table *t, uint64_t fh)
{
    pthread_rwlock_rdlock(&t->lock);
    const struct msb_fs_slot *s = find(t, fh);
    int64_t r = s && !(s->perms & MSB_FS_DIR)
        ? (int64_t)(s->flags & 0x7fffffffu) << 32 | (uint32_t)s->fd : -EBADF;
    pthread_rwlock_unlock(&t->lock);
    return r;
}

int msb_handles_mark_python(struct msb_fs_table *t, uint64_t fh)
{
    pthread_rwlock_wrlock(&t->lock);
    struct msb_fs_slot *s = find(t, fh);
    if (s)
        s->pystate = 1;
    pthread_rwlock_unlock(&t->lock);
    return s ? 0 : -EBADF;
}

static int kind_is(const struct msb_fs_slot *s, int dir)
{
    return (s->perms & MSB_FS_DIR) == (dir & MSB_FS_DIR);
}

/* File handles on `nodeid` still in the table (under the lock). */
static int64_t files_on(const struct msb_fs_table *t, uint64_t nodeid)
{
    int64_t n = 0;
    for (uint32_t i = 0; i < t->cap; i++) {
        const struct msb_fs_slot *s = &t->slots[i];
        n += s->used == 1 && !(s->perms & MSB_FS_DIR) && s->nodeid == nodeid;
    }
    return n;
}

/* After a slot left the table: the open count of its inode, and what is left. */
static int64_t uncount(struct msb_fs_table *t, const struct msb_handle *h)
{
    if (h->perms & MSB_FS_DIR || !t->inodes)
        return 0;
    int64_t left = msb_inodes_nopen_add(t->inodes, h->nodeid, -1);
    if (left >= 0)
        return left;
    /* The client forgot the inode while the file was open: only this table knows. */
    pthread_rwlock_rdlock(&t->lock);
    left = files_on(t, h->nodeid);
    pthread_rwlock_unlock(&t->lock);
    return left;
}

int64_t msb_handles_remove(struct msb_fs_table *t, uint64_t fh, int dir, struct msb_handle *out)
{
    pthread_rwlock_wrlock(&t->lock);
    struct msb_fs_slot *s = find(t, fh);
    if (!s || !kind_is(s, dir)) {
        pthread_rwlock_unlock(&t->lock);
        return -EBADF;
    }
    copy_out(s, out);
    drop_slot(t, s);
    pthread_rwlock_unlock(&t->lock);
    return uncount(t, out);
}

int msb_handles_release(struct msb_fs_table *t, uint64_t fh, int dir)
{
    struct msb_handle h;
    pthread_rwlock_wrlock(&t->lock);
    struct msb_fs_slot *s = find(t, fh);
    if (!s || !kind_is(s, dir) || s->pystate) {
        pthread_rwlock_unlock(&t->lock);
        return 0;
    }
    copy_out(s, &h);
    drop_slot(t, s);
    pthread_rwlock_unlock(&t->lock);
    uncount(t, &h);
    msb_grace_defer_close(h.fd);
    return 1;
}

int msb_handles_close_all(struct msb_fs_table *t)
{
    /* All under the write lock: the inode table's lock is only ever taken after this
     * one, and a deferred close takes no lock a reader holds (grace.h). */
    pthread_rwlock_wrlock(&t->lock);
    int n = (int)t->count;
    for (uint32_t i = 0; i < t->cap; i++) {
        struct msb_fs_slot *s = &t->slots[i];
        if (s->used != 1)
            continue;
        if (!(s->perms & MSB_FS_DIR) && t->inodes)
            msb_inodes_nopen_add(t->inodes, s->nodeid, -1);
        msb_grace_defer_close(s->fd);
    }
    memset(t->slots, 0, t->cap * sizeof(*t->slots));
    t->count = t->tombs = 0;
    pthread_rwlock_unlock(&t->lock);
    return n;
}
