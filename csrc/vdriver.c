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

static inline uint16_t drv_load16(const uint16_t *p)
{
    return __atomic_load_n(p, __ATOMIC_ACQUIRE);
}

/* Post up to n free chains: rewrite each request's unique, fill the avail ring, publish
 * avail->idx once, and kick if the device asks (vring_need_event on its avail_event). */
static int drv_post(struct msb_vdrv *d, int16_t *chain_of, uint32_t *free_, uint32_t *nfree,
                uint32_t n)
{
    uint16_t num = d->num;
    for (uint32_t k = 0; k < n; k++) {
        uint32_t i = free_[--*nfree];
        uint64_t u = d->next_unique++;
        memcpy(d->requests[i] + IN_UNIQUE, &u, sizeof u);
        d->uniques[i] = u;
        chain_of[d->heads[i]] = (int16_t)i;
        d->avail->ring[d->avail_idx % num] = d->heads[i];
        d->avail_idx++;
    }
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

/* Read every used element the device published; returns how many, or -EPROTO. */
static int drv_reap(struct msb_vdrv *d, int16_t *chain_of, uint32_t *free_, uint32_t *nfree,
                uint32_t inflight, int32_t expect_error, uint32_t expect_len)
{
    uint16_t used_idx = drv_load16(&d->used->idx);
    if ((uint16_t)(used_idx - d->last_used) > inflight)
        return -EPROTO;
    int n = 0;
    while (d->last_used != used_idx) {
        struct msb_vring_used_elem e = d->used->ring[d->last_used % d->num];
        d->last_used++;
        if (e.id >= d->num || chain_of[e.id] < 0)
            return -EPROTO;
        uint32_t i = (uint32_t)chain_of[e.id];
        chain_of[e.id] = -1;
        const uint8_t *out = d->replies[i];
        uint32_t len;
        int32_t error;
        uint64_t unique;
        memcpy(&len, out + OUT_LEN, sizeof len);
        memcpy(&error, out + OUT_ERROR, sizeof error);
        memcpy(&unique, out + OUT_UNIQUE, sizeof unique);
        if (unique != d->uniques[i] || len != e.len) {
            d->bad++;
        } else if (error != expect_error) {
            d->errors++;
            d->last_error = error;
        } else if (e.len != expect_len) {
            d->bad++;
        }
        d->completed++;
        free_[(*nfree)++] = i;
        n++;
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

int msb_vdrv_run(struct msb_vdrv *d, uint64_t count, uint32_t batch, int32_t expect_error,
                 uint32_t expect_len, int timeout_ms)
{
    d->completed = d->errors = d->bad = d->kicks = d->waits = 0;
    d->last_error = 0;
    if (d->num == 0 || d->num > MSB_MAX_QUEUE || d->nchains == 0 || d->nchains > d->num
        || batch == 0)
        return -EINVAL;
    if (batch > d->nchains)
        batch = d->nchains;
    int16_t chain_of[MSB_MAX_QUEUE];     /* head -> chain in flight, -1 when not */
    uint32_t free_[MSB_MAX_QUEUE];       /* chains free to post */
    uint32_t nfree = d->nchains;
    for (uint32_t h = 0; h < d->num; h++)
        chain_of[h] = -1;
    for (uint32_t i = 0; i < d->nchains; i++) {
        if (d->heads[i] >= d->num)
            return -EINVAL;
        free_[i] = d->nchains - 1 - i;
    }
    uint64_t posted = 0;
    uint16_t *used_event = &d->avail->ring[d->num];
    while (d->completed < count) {
        uint64_t left = count - posted;
        uint32_t want = left < batch ? (uint32_t)left : batch;
        if (left && nfree >= want) {
            uint32_t n = left < nfree ? (uint32_t)left : nfree;
            int r = drv_post(d, chain_of, free_, &nfree, n);
            if (r < 0)
                return r;
            posted += n;
        }
        uint32_t inflight = d->nchains - nfree;
        int got = drv_reap(d, chain_of, free_, &nfree, inflight, expect_error, expect_len);
        if (got < 0)
            return got;
        if (got > 0 || d->completed >= count)
            continue;
        /* Nothing used yet: ask for a call at the next used element, then look once
         * more before sleeping (the device may have used it in between). */
        if (d->event_idx)
            __atomic_store_n(used_event, d->last_used, __ATOMIC_RELAXED);
        __atomic_thread_fence(__ATOMIC_SEQ_CST);
        if (drv_load16(&d->used->idx) != d->last_used)
            continue;
        int r = drv_wait_call(d, timeout_ms);
        if (r < 0)
            return r;
    }
    return 0;
}
