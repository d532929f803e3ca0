/* The driver side of one split ring: see vdriver.h. */
#include "vdriver.h"

#include <errno.h>
#include <poll.h>
#include <string.h>
#include <unistd.h>

/* The fuse_out_header / fuse_in_header fields the loop touches (linux/fuse.h); vhost/
 * knows no FUSE otherwise, so they are restated here rather than included. */
#define OUT_LEN 0      /* uint32_t len */
#define OUT_ERROR 4    /* int32_t error */
#define OUT_UNIQUE 8   /* uint64_t unique */
#define IN_UNIQUE 8    /* uint64_t unique */
#define OUT_HEADER 16  /* sizeof(struct fuse_out_header) */

static inline uint16_t drv_load16(const uint16_t *p)
{
    return __atomic_load_n(p, __ATOMIC_ACQUIRE);
}

/* The per-run bookkeeping: which chain each head is, the slots ready to post (idle: a
 * new cycle may start; mid: its next step waits) and each slot's next step. With no
 * steps a slot is a chain and every slot is idle between posts. */
struct drv_state {
    int16_t chain_of[MSB_MAX_QUEUE];     /* head -> chain in flight, -1 when not */
    uint16_t idle[MSB_MAX_QUEUE], mid[MSB_MAX_QUEUE];
    uint16_t step[MSB_MAX_QUEUE];
    uint32_t nidle, nmid, nsteps;
};

static void put_hex16(uint8_t *p, uint64_t v)
{
    for (int k = 15; k >= 0; k--, v >>= 4)
        p[k] = "0123456789abcdef"[v & 15];
}

/* Post chain i with a fresh unique. */
static void drv_place(struct msb_vdrv *d, struct drv_state *s, uint32_t i)
{
    uint64_t u = d->next_unique++;
    memcpy(d->requests[i] + IN_UNIQUE, &u, sizeof u);
    d->uniques[i] = u;
    s->chain_of[d->heads[i]] = (int16_t)i;
    d->avail->ring[d->avail_idx % d->num] = d->heads[i];
    d->avail_idx++;
}

/* Publish avail->idx once, and kick if the device asks (vring_need_event on its
 * avail_event). */
static int drv_publish(struct msb_vdrv *d)
{
    uint16_t num = d->num;
    /* the requests and ring entries before the index that publishes them */
    __atomic_store_n(&d->avail->idx, d->avail_idx, __ATOMIC_RELEASE);
    int need = 1;
    if (d->event_idx) {
        /* our avail->idx store before reading the device's avail_event (the device does
         * the mirror image: publish avail_event, then re-read avail->idx) */
        __atomic_thread_fence(__ATOMIC_SEQ_CST);
        uint16_t event = drv_load16((const uint16_t *)&d->used->ring[num]);
        need = (uint16_t)(d->avail_idx - event - 1) < (uint16_t)(d->avail_idx - d->kicked_idx);
    }
    d->kicked_idx = d->avail_idx;
    if (need) {
        uint64_t one = 1;
        if (write(d->kick_fd, &one, sizeof one) != sizeof one)
            return -errno;
        d->kicks++;
    }
    return 0;
}

/* Post every mid-cycle slot's next step and up to `start` new cycles: a new cycle takes
 * the next cycle number, written as 16 hex digits into each of its steps' requests that
 * carry a name (so its CREATE and its UNLINK name the same fresh file). */
static int drv_post(struct msb_vdrv *d, struct drv_state *s, uint32_t start)
{
    while (s->nmid) {
        uint32_t slot = s->mid[--s->nmid];
        drv_place(d, s, slot * s->nsteps + s->step[slot]);
    }
    for (uint32_t k = 0; k < start; k++) {
        uint32_t slot = s->idle[--s->nidle];
        if (d->steps) {
            uint64_t cycle = d->next_cycle++;
            for (uint32_t j = 0; j < s->nsteps; j++)
                if (d->steps[j].name_at)
                    put_hex16(d->requests[slot * s->nsteps + j] + d->steps[j].name_at, cycle);
        }
        drv_place(d, s, slot * s->nsteps);
    }
    return drv_publish(d);
}

/* Is chain i's reply header its post's (unique) and as long as the device said it
 * used? Counted bad if not. */
static int drv_header_ok(struct msb_vdrv *d, uint32_t i, uint32_t used, int32_t *error)
{
    const uint8_t *out = d->replies[i];
    uint32_t len;
    uint64_t unique;
    memcpy(&len, out + OUT_LEN, sizeof len);
    memcpy(error, out + OUT_ERROR, sizeof *error);
    memcpy(&unique, out + OUT_UNIQUE, sizeof unique);
    if (unique != d->uniques[i] || len != used) {
        d->bad++;
        return 0;
    }
    return 1;
}

/* The reply's 4 bytes at check_at are check_value (if asked, and inside the reply). */
static int drv_value_ok(const struct msb_vdrv *d, const uint8_t *out, uint32_t len)
{
    if (!d->check_at)
        return 1;
    uint32_t v;
    if (d->check_at < OUT_HEADER || len < 4 || d->check_at > len - 4)
        return 0;
    memcpy(&v, out + d->check_at, sizeof v);
    return v == d->check_value;
}

/* Read every used element the device published; returns how many, or -EPROTO. A slot
 * whose step was answered as expected goes on to its next step (the carries applied,
 * the log appended); a cycle ends after its last step, or at its first unexpected
 * reply (counted: the steps after it are not posted). `*ended` counts ended cycles. */
static int drv_reap(struct msb_vdrv *d, struct drv_state *s, uint32_t inflight,
                    int32_t expect_error, uint32_t expect_len, uint64_t *ended)
{
    uint16_t used_idx = drv_load16(&d->used->idx);
    if ((uint16_t)(used_idx - d->last_used) > inflight)
        return -EPROTO;
    int n = 0;
    while (d->last_used != used_idx) {
        struct msb_vring_used_elem e = d->used->ring[d->last_used % d->num];
        d->last_used++;
        if (e.id >= d->num || s->chain_of[e.id] < 0)
            return -EPROTO;
        uint32_t i = (uint32_t)s->chain_of[e.id];
        s->chain_of[e.id] = -1;
        uint32_t slot = i / s->nsteps, k = i % s->nsteps;
        if (d->steps) {
            expect_error = d->steps[k].error;
            expect_len = d->steps[k].len;
        }
        const uint8_t *out = d->replies[i];
        int32_t error;
        int ok = 0;
        if (drv_header_ok(d, i, e.len, &error)) {
            if (error != expect_error) {
                d->errors++;
                d->last_error = error;
            } else if (e.len != expect_len || !drv_value_ok(d, out, e.len)) {
                d->bad++;
            } else {
                ok = 1;
            }
        }
        d->completed++;
        n++;
        if (ok && d->steps) {
            for (uint32_t c = 0; c < d->ncarries; c++) {
                const struct msb_vdrv_carry *cy = &d->carries[c];
                if (cy->from_step == k)
                    memcpy(d->requests[slot * s->nsteps + cy->to_step] + cy->request_at,
                           out + cy->reply_at, 8);
            }
            if (d->steps[k].log_at) {
                if (d->nlog < d->log_cap)
                    memcpy(&d->log[d->nlog], out + d->steps[k].log_at, 8);
                d->nlog++;
            }
        }
        if (ok && k + 1 < s->nsteps) {
            s->step[slot] = (uint16_t)(k + 1);
            s->mid[s->nmid++] = (uint16_t)slot;
        } else {
            s->step[slot] = 0;
            s->idle[s->nidle++] = (uint16_t)slot;
            (*ended)++;
        }
    }
    return n;
}

/* Sleep until the device calls (or breaks the queue, or timeout_ms passes). */
static int drv_wait_call(struct msb_vdrv *d, int timeout_ms)
{
    struct pollfd p[2] = {{.fd = d->call_fd, .events = POLLIN},
                          {.fd = d->err_fd, .events = POLLIN}};
    int r;
    do {
        r = poll(p, d->err_fd >= 0 ? 2 : 1, timeout_ms);
    } while (r < 0 && errno == EINTR);
    if (r < 0)
        return -errno;
    if (r == 0)
        return -ETIMEDOUT;
    if (d->err_fd >= 0 && (p[1].revents & POLLIN))
        return -EIO;
    uint64_t v;
    if (read(d->call_fd, &v, sizeof v) < 0 && errno != EAGAIN)
        return -errno;
    d->waits++;
    return 0;
}

/* Nothing used yet: ask for a call at the next used element, then look once more
 * before sleeping (the device may have used it in between). */
static int drv_wait_used(struct msb_vdrv *d, int timeout_ms)
{
    if (d->event_idx)
        __atomic_store_n(&d->avail->ring[d->num], d->last_used, __ATOMIC_RELAXED);
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
    if (drv_load16(&d->used->idx) != d->last_used)
        return 0;
    return drv_wait_call(d, timeout_ms);
}

/* The checks every run shares; the steps' offsets against their expected lengths. */
static int drv_check(const struct msb_vdrv *d)
{
    if (d->num == 0 || d->num > MSB_MAX_QUEUE || d->nchains == 0 || d->nchains > d->num)
        return -EINVAL;
    for (uint32_t i = 0; i < d->nchains; i++)
        if (d->heads[i] >= d->num)
            return -EINVAL;
    if (!d->steps)
        return 0;
    if (d->nsteps == 0 || d->nsteps > d->nchains || d->nchains % d->nsteps)
        return -EINVAL;
    for (uint32_t k = 0; k < d->nsteps; k++)
        if (d->steps[k].log_at && (d->steps[k].log_at < OUT_HEADER
                                   || d->steps[k].log_at + 8 > d->steps[k].len))
            return -EINVAL;
    for (uint32_t c = 0; c < d->ncarries; c++) {
        const struct msb_vdrv_carry *cy = &d->carries[c];
        if (cy->from_step >= cy->to_step || cy->to_step >= d->nsteps
            || cy->reply_at < OUT_HEADER || cy->reply_at + 8 > d->steps[cy->from_step].len
            || cy->request_at < IN_UNIQUE + 8)
            return -EINVAL;
    }
    return 0;
}

int msb_vdrv_run(struct msb_vdrv *d, uint64_t count, uint32_t batch, int32_t expect_error,
                 uint32_t expect_len, int timeout_ms)
{
    d->completed = d->errors = d->bad = d->kicks = d->waits = d->nlog = 0;
    d->last_error = 0;
    int r = drv_check(d);
    if (r < 0)
        return r;
    if (batch == 0)
        return -EINVAL;
    struct drv_state s;
    s.nsteps = d->steps ? d->nsteps : 1;
    uint32_t nslots = d->nchains / s.nsteps;
    if (batch > nslots)
        batch = nslots;
    for (uint32_t h = 0; h < d->num; h++)
        s.chain_of[h] = -1;
    for (uint32_t i = 0; i < nslots; i++) {
        s.idle[i] = (uint16_t)(nslots - 1 - i);
        s.step[i] = 0;
    }
    s.nidle = nslots;
    s.nmid = 0;
    uint64_t started = 0, ended = 0;
    while (ended < count) {
        /* Post once `batch` slots are ready, or every slot that still has work if
         * fewer: in lockstep (batch = all) each set of steps goes out together, as the
         * Python client posts one stage of a batch after the other. */
        uint64_t left = count - started;
        uint32_t start = left < s.nidle ? (uint32_t)left : s.nidle;
        uint32_t inflight = nslots - s.nidle - s.nmid;
        uint64_t could = (uint64_t)inflight + s.nmid + left;
        uint32_t want = could < batch ? (uint32_t)could : batch;
        if (s.nmid + start > 0 && s.nmid + start >= want) {
            r = drv_post(d, &s, start);
            if (r < 0)
                return r;
            started += start;
            inflight = nslots - s.nidle - s.nmid;
        }
        int got = drv_reap(d, &s, inflight, expect_error, expect_len, &ended);
        if (got < 0)
            return got;
        if (got > 0 || ended >= count)
            continue;
        r = drv_wait_used(d, timeout_ms);
        if (r < 0)
            return r;
    }
    return 0;
}

/* ---- a directory listing: one READDIRPLUS at a time, each from the last's end ------- */

/* struct fuse_direntplus: a fuse_entry_out (node id first), then a fuse_dirent (ino,
 * off, namelen, type, name), padded to 8 bytes (FUSE_DIRENT_ALIGN). */
#define ENTRY_OUT 128
#define DIRENT_OFF (ENTRY_OUT + 8)
#define DIRENT_NAMELEN (ENTRY_OUT + 16)
#define DIRENT_NAME (ENTRY_OUT + 24)

int msb_vdrv_listing(struct msb_vdrv *d, uint32_t offset_at, uint32_t room, int timeout_ms)
{
    d->completed = d->errors = d->bad = d->kicks = d->waits = d->nlog = d->entries = 0;
    d->last_error = 0;
    int r = drv_check(d);
    if (r < 0)
        return r;
    if (d->steps || offset_at < IN_UNIQUE + 8 || room < OUT_HEADER)
        return -EINVAL;
    struct drv_state s;
    s.nsteps = 1;
    for (uint32_t h = 0; h < d->num; h++)
        s.chain_of[h] = -1;
    uint64_t offset = 0;
    for (;;) {
        memcpy(d->requests[0] + offset_at, &offset, sizeof offset);
        s.idle[0] = 0;
        s.nidle = 1;
        s.nmid = 0;
        if ((r = drv_post(d, &s, 1)) < 0)
            return r;
        /* The reply's length is the listing's business: read the used element
         * directly (drv_reap checks one expected length) and check it here. */
        while (drv_load16(&d->used->idx) == d->last_used)
            if ((r = drv_wait_used(d, timeout_ms)) < 0)
                return r;
        if ((uint16_t)(drv_load16(&d->used->idx) - d->last_used) != 1)
            return -EPROTO;
        struct msb_vring_used_elem e = d->used->ring[d->last_used % d->num];
        d->last_used++;
        if (e.id != d->heads[0])
            return -EPROTO;
        d->completed++;
        const uint8_t *out = d->replies[0];
        uint32_t len = e.len;
        int32_t error;
        if (!drv_header_ok(d, 0, len, &error))
            return 0;
        if (len < OUT_HEADER || len > room) {
            d->bad++;
            return 0;
        }
        if (error) {
            d->errors++;
            d->last_error = error;
            return 0;
        }
        if (len == OUT_HEADER)
            return 0;   /* the end of the directory */
        uint32_t pos = OUT_HEADER;
        uint64_t from = offset;
        while (pos < len) {
            uint32_t namelen;
            if (len - pos < DIRENT_NAME)
                break;
            memcpy(&namelen, out + pos + DIRENT_NAMELEN, sizeof namelen);
            if (namelen == 0 || namelen > len - pos - DIRENT_NAME)
                break;
            uint64_t node;
            memcpy(&node, out + pos, sizeof node);
            memcpy(&offset, out + pos + DIRENT_OFF, sizeof offset);
            if (node) {   /* "." and ".." carry node id 0: nothing to forget */
                if (d->nlog < d->log_cap)
                    d->log[d->nlog] = node;
                d->nlog++;
            }
            d->entries++;
            pos += (DIRENT_NAME + namelen + 7) & ~7u;
        }
        if (pos != len || offset == from) {
            /* a record cut short, or its padding beyond the reply; or records that end
             * where the request began: asked again, they would come again forever */
            d->bad++;
            return 0;
        }
    }
}
