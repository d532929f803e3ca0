/* Standalone test of csrc/vdriver.c (the driver side's request loop) against a device
 * thread made of csrc/virtq.c, in one process under ASan/UBSan (tests/test_vhost_cdriver.py
 * builds and runs it): with and without EVENT_IDX, lockstep and refill batches, and a
 * device that misbehaves in each way the loop must count or stop on (an error reply, a
 * reply for another post's unique, a header length that is not the used length, a used
 * element naming a head that is not in flight). Cycles in steps (carries from a reply
 * into the next step's request, the log, a failed step ending its cycle) and a
 * directory listing (records read to their last offset, malformed ones refused).
 *
 * Guest memory is one region mapped with PROT_NONE guard pages (msb_map_guarded), its
 * guest addresses far from its host addresses so a mix-up of the two faults.
 */
#define _GNU_SOURCE
#include "virtq.c"
#include "vdriver.c"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/eventfd.h>
#include <sys/mman.h>

#include "ctest.h"

#define MEM_SIZE (1u << 20)
#define GPA_BASE 0x100000ull
#define QN 16
#define NCHAINS 12        /* heads 12..15 are never in flight */
#define REQ_LEN 40        /* a fuse_in_header */
#define REPLY_LEN 24      /* header + 8 payload bytes */
#define ENOENT_NODE 2     /* requests for this node id are answered -ENOENT */

enum { DESC_OFF = 0, AVAIL_OFF = 0x1000, USED_OFF = 0x2000, DATA_OFF = 0x10000 };
enum misbehave { NONE, STALE_UNIQUE, LONG_HEADER, BOGUS_HEAD, LISTING, LISTING_LONG_NAME,
                 LISTING_TAIL, LISTING_STUCK };
#define LIST_N 100        /* LISTING: the directory's records */
#define LIST_ROOM 1024    /* the listing chain's reply buffer */

static uint8_t *ram;
static struct msb_memtable mem;

struct device {
    struct msb_vq vq;
    int kick_fd, call_fd, stop_fd;
    enum misbehave bad;      /* applied to every 5th reply; LISTING*: a directory */
    uint64_t answered;
    uint64_t answered_by[QN];  /* per head */
    pthread_t thread;
};

/* A directory of LIST_N records, three a reply from the request's offset (its 8 bytes
 * at 24): struct fuse_direntplus, node id i (0 for the first, as "." has), off i + 1,
 * a name of 1 + i % 7 bytes; LISTING_LONG_NAME gives record 50 a name longer than the
 * reply, LISTING_TAIL adds 8 bytes after the last record of the reply with record 50,
 * LISTING_STUCK answers a request from 51 with record 50 alone (off 51, where it began). */
static uint32_t list_reply(enum misbehave how, const uint8_t *in, uint8_t *out)
{
    uint64_t from;
    memcpy(&from, in + 24, 8);
    uint32_t pos = 16;
    if (how == LISTING_STUCK && from == 51)
        from = 50;
    for (uint64_t i = from; i < from + (how == LISTING_STUCK && from == 50 ? 1 : 3) && i < LIST_N; i++) {
        uint8_t *r = out + pos;
        uint64_t off = i + 1;
        uint32_t namelen = 1 + (uint32_t)(i % 7), type = 8;
        memcpy(r, &i, 8);
        memcpy(r + 136, &off, 8);
        uint32_t claimed = how == LISTING_LONG_NAME && i == 50 ? 400 : namelen;
        memcpy(r + 144, &claimed, 4);
        memcpy(r + 148, &type, 4);
        memset(r + 152, 'a', namelen);
        pos += (152 + namelen + 7) & ~7u;
        if (how == LISTING_TAIL && i == 50)
            pos += 8;
    }
    return pos;
}

static void *device_loop(void *arg)
{
    struct device *dev = arg;
    struct msb_chain *ch = calloc(4, sizeof *ch);
    for (;;) {
        struct pollfd p[2] = {{.fd = dev->kick_fd, .events = POLLIN},
                              {.fd = dev->stop_fd, .events = POLLIN}};
        if (poll(p, 2, -1) < 0)
            break;
        if (p[1].revents)
            break;
        uint64_t v;
        if (read(dev->kick_fd, &v, sizeof v) < 0)
            continue;
        int n;
        while ((n = msb_vq_pop(&dev->vq, ch, 4)) > 0) {
            for (int i = 0; i < n; i++) {
                uint8_t in[REQ_LEN];
                msb_iov_copy_from(ch[i].iov, ch[i].nout, 0, in, sizeof in);
                uint64_t unique, node;
                memcpy(&unique, in + 8, 8);
                memcpy(&node, in + 16, 8);
                int32_t error = node == ENOENT_NODE ? -ENOENT : 0;
                uint32_t len = error ? 16 : REPLY_LEN;
                uint16_t head = ch[i].head;
                int odd = ++dev->answered % 5 == 0;
                if (odd && dev->bad == STALE_UNIQUE)
                    unique--;
                uint32_t hdr_len = len + (odd && dev->bad == LONG_HEADER);
                if (odd && dev->bad == BOGUS_HEAD)
                    head = QN - 1;
                uint8_t out[LIST_ROOM] = {0};
                if (dev->bad >= LISTING) {
                    odd = 0;
                    len = hdr_len = list_reply(dev->bad, in, out);
                }
                dev->answered_by[ch[i].head]++;
                /* the payload: the request's 8 bytes at 24, plus one (what a step
                 * carries on) */
                uint64_t echo;
                memcpy(&echo, in + 24, 8);
                echo++;
                if (dev->bad < LISTING)
                    memcpy(out + 16, &echo, 8);
                memcpy(out, &hdr_len, 4);
                memcpy(out + 4, &error, 4);
                memcpy(out + 8, &unique, 8);
                msb_iov_copy_to(ch[i].iov + ch[i].nout, ch[i].nin, 0, out, len);
                msb_vq_push(&dev->vq, head, len);
            }
            msb_vq_notify(&dev->vq);
        }
    }
    free(ch);
    return NULL;
}

/* The chains, laid out once as vhost/cdriver.py lays them out: head i is an indirect
 * descriptor to a two-entry table (the request, then the reply buffer). */
static uint16_t heads[NCHAINS];
static uint8_t *requests[NCHAINS];
static const uint8_t *replies[NCHAINS];
static uint64_t uniques[NCHAINS];

static void lay_out(int enoent_every)
{
    struct msb_vring_desc *desc = (void *)(ram + DESC_OFF);
    for (int i = 0; i < NCHAINS; i++) {
        uint32_t table = DATA_OFF + 256 * i, req = table + 32, rep = req + 64;
        memset(ram + table, 0, 256);
        uint32_t len = REQ_LEN;
        uint64_t node = enoent_every && i % enoent_every == 0 ? ENOENT_NODE : 1;
        memcpy(ram + req, &len, 4);
        memcpy(ram + req + 16, &node, 8);
        struct msb_vring_desc *t = (void *)(ram + table);
        t[0] = (struct msb_vring_desc){GPA_BASE + req, REQ_LEN, DESC_F_NEXT, 1};
        t[1] = (struct msb_vring_desc){GPA_BASE + rep, 128, DESC_F_WRITE, 0};
        desc[i] = (struct msb_vring_desc){GPA_BASE + table, 32, DESC_F_INDIRECT, 0};
        heads[i] = (uint16_t)i;
        requests[i] = ram + req;
        replies[i] = ram + rep;
    }
}

static void start(struct device *dev, int event_idx, enum misbehave bad)
{
    memset(ram + AVAIL_OFF, 0, DATA_OFF - AVAIL_OFF);   /* fresh rings, same chains */
    msb_vq_init(&dev->vq);
    uint64_t base = (uint64_t)(uintptr_t)ram;
    CHECK(msb_vq_setup(&dev->vq, &mem, QN, base + DESC_OFF, base + AVAIL_OFF,
                       base + USED_OFF) == 0);
    dev->vq.event_idx = (uint8_t)event_idx;
    dev->vq.indirect = 1;
    dev->kick_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    dev->call_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    dev->stop_fd = eventfd(0, EFD_CLOEXEC);
    dev->vq.call_fd = dev->call_fd;
    dev->bad = bad;
    dev->answered = 0;
    memset(dev->answered_by, 0, sizeof dev->answered_by);
    pthread_create(&dev->thread, NULL, device_loop, dev);
}

static void stop(struct device *dev)
{
    uint64_t one = 1;
    if (write(dev->stop_fd, &one, sizeof one) < 0)
        perror("stop");
    pthread_join(dev->thread, NULL);
    close(dev->kick_fd);
    close(dev->call_fd);
    close(dev->stop_fd);
}

static struct msb_vdrv driver(struct device *dev, int event_idx)
{
    return (struct msb_vdrv){
        .avail = (void *)(ram + AVAIL_OFF), .used = (void *)(ram + USED_OFF), .num = QN,
        .event_idx = (uint8_t)event_idx, .kick_fd = dev->kick_fd, .call_fd = dev->call_fd,
        .err_fd = -1, .nchains = NCHAINS, .heads = heads, .requests = requests,
        .replies = replies, .uniques = uniques, .next_unique = 1000,
    };
}

/* Every post answered and checked, whatever the notification scheme and batch size;
 * the ring's indexes wrap (more than 65,536 posts). */
static void test_all_answered(void)
{
    lay_out(0);
    for (int event_idx = 0; event_idx < 2; event_idx++) {
        for (uint32_t batch = 1; batch <= NCHAINS; batch += NCHAINS - 1) {
            struct device dev;
            start(&dev, event_idx, NONE);
            struct msb_vdrv d = driver(&dev, event_idx);
            uint64_t count = 70001;   /* not a multiple of NCHAINS */
            CHECK(msb_vdrv_run(&d, count, batch, 0, REPLY_LEN, 10000) == 0);
            CHECK(d.completed == count && d.errors == 0 && d.bad == 0);
            CHECK(dev.answered == count);
            CHECK(d.next_unique == 1000 + count);
            CHECK(d.avail_idx == (uint16_t)count && d.last_used == (uint16_t)count);
            CHECK(d.kicks >= 1 && d.kicks <= count);
            if (!event_idx)    /* a kick per post, lockstep: one per NCHAINS */
                CHECK(batch == 1 || d.kicks == (count + NCHAINS - 1) / NCHAINS);
            /* a second run continues from the indexes the first left */
            CHECK(msb_vdrv_run(&d, 100, batch, 0, REPLY_LEN, 10000) == 0);
            CHECK(d.completed == 100 && d.bad == 0 && dev.answered == count + 100);
            stop(&dev);
        }
    }
}

static void test_errors_counted(void)
{
    lay_out(3);   /* chains 0, 3, 6, 9: a third of them */
    struct device dev;
    start(&dev, 1, NONE);
    struct msb_vdrv d = driver(&dev, 1);
    CHECK(msb_vdrv_run(&d, 1200, NCHAINS, 0, REPLY_LEN, 10000) == 0);
    CHECK(d.completed == 1200 && d.errors == 400 && d.bad == 0 && d.last_error == -ENOENT);
    /* expecting the error: the successes are the unexpected ones */
    CHECK(msb_vdrv_run(&d, 1200, NCHAINS, -ENOENT, 16, 10000) == 0);
    CHECK(d.completed == 1200 && d.errors == 800 && d.bad == 0 && d.last_error == 0);
    /* a value checked in each expected reply: the payload is 0 + 1 (8 bytes at 24 of
     * the request, plus one); another value, or an offset past the reply, is bad */
    lay_out(0);
    for (int i = 0; i < NCHAINS; i++)
        memset(requests[i] + 24, 0, 8);
    d.check_at = 16;
    d.check_value = 1;
    CHECK(msb_vdrv_run(&d, 120, NCHAINS, 0, REPLY_LEN, 10000) == 0);
    CHECK(d.completed == 120 && d.errors == 0 && d.bad == 0);
    d.check_value = 2;
    CHECK(msb_vdrv_run(&d, 120, NCHAINS, 0, REPLY_LEN, 10000) == 0);
    CHECK(d.completed == 120 && d.bad == 120);
    d.check_at = REPLY_LEN - 3;
    d.check_value = 0;
    CHECK(msb_vdrv_run(&d, 120, NCHAINS, 0, REPLY_LEN, 10000) == 0);
    CHECK(d.bad == 120);
    stop(&dev);
}

static void test_misbehaving_device(void)
{
    lay_out(0);
    for (enum misbehave bad = STALE_UNIQUE; bad <= LONG_HEADER; bad++) {
        struct device dev;
        start(&dev, 1, bad);
        struct msb_vdrv d = driver(&dev, 1);
        CHECK(msb_vdrv_run(&d, 1000, 1, 0, REPLY_LEN, 10000) == 0);
        CHECK(d.completed == 1000 && d.bad == 200 && d.errors == 0);
        stop(&dev);
    }
    struct device dev;
    start(&dev, 1, BOGUS_HEAD);
    struct msb_vdrv d = driver(&dev, 1);
    CHECK(msb_vdrv_run(&d, 1000, 1, 0, REPLY_LEN, 10000) == -EPROTO);
    CHECK(d.completed == 4);
    stop(&dev);
    /* a device that never answers: the loop gives up after its timeout */
    start(&dev, 1, NONE);
    d = driver(&dev, 1);
    d.kick_fd = eventfd(0, EFD_CLOEXEC);   /* kicks nobody hears */
    CHECK(msb_vdrv_run(&d, 10, 1, 0, REPLY_LEN, 50) == -ETIMEDOUT);
    CHECK(d.completed == 0);
    close(d.kick_fd);
    stop(&dev);
    /* arguments the loop refuses */
    d = driver(&dev, 1);
    d.nchains = QN + 1;
    CHECK(msb_vdrv_run(&d, 10, 1, 0, REPLY_LEN, 50) == -EINVAL);
}

/* Cycles of two steps on NCHAINS / 2 slots: step 0's reply (its request's 8 bytes at 24,
 * plus one) carried into step 1's request at 24, step 1's reply logged. */
static const struct msb_vdrv_step two_steps[2] = {{0, REPLY_LEN, 0, 0}, {0, REPLY_LEN, 0, 16}};
static const struct msb_vdrv_carry carry_on = {0, 1, 16, 24};

/* A driver of two_steps on `dev`, logging into log[cap]. */
static struct msb_vdrv stepped(struct device *dev, uint64_t *log, uint64_t cap)
{
    struct msb_vdrv d = driver(dev, dev->vq.event_idx);
    d.steps = two_steps;
    d.nsteps = 2;
    d.carries = &carry_on;
    d.ncarries = 1;
    d.log = log;
    d.log_cap = cap;
    return d;
}

static void test_steps(void)
{
    lay_out(0);
    for (int i = 0; i < NCHAINS; i++)
        memset(requests[i] + 24, 0, 8);
    for (int event_idx = 0; event_idx < 2; event_idx++) {
        struct device dev;
        start(&dev, event_idx, NONE);
        uint64_t log[1000];
        struct msb_vdrv d = stepped(&dev, log, 1000);
        CHECK(msb_vdrv_run(&d, 1000, NCHAINS / 2, 0, 0, 10000) == 0);
        CHECK(d.completed == 2000 && d.errors == 0 && d.bad == 0 && dev.answered == 2000);
        CHECK(d.nlog == 1000);
        int carried = 1;
        for (int i = 0; i < 1000; i++)
            carried &= log[i] == 2;   /* 0 + 1 carried, + 1 */
        CHECK(carried);
        /* lockstep: every set of steps one post, a kick each without EVENT_IDX */
        if (!event_idx)
            CHECK(d.kicks == 2 * ((1000 + NCHAINS / 2 - 1) / (NCHAINS / 2)));
        /* a log too small: counted beyond its room, nothing written past it */
        d.log_cap = 10;
        CHECK(msb_vdrv_run(&d, 100, 1, 0, 0, 10000) == 0);
        CHECK(d.nlog == 100 && d.completed == 200);
        stop(&dev);
    }
    /* a failed step ends its cycle: chains 0, 3, 6, 9 ask for ENOENT_NODE, i.e. step 0
     * of slots 0 and 3 and step 1 of slots 1 and 4 */
    lay_out(3);
    struct device dev;
    start(&dev, 1, NONE);
    uint64_t log[600];
    struct msb_vdrv d = stepped(&dev, log, 600);
    for (uint32_t batch = 1; batch <= NCHAINS / 2; batch += NCHAINS / 2 - 1) {
        memset(dev.answered_by, 0, sizeof dev.answered_by);
        CHECK(msb_vdrv_run(&d, 600, batch, 0, 0, 10000) == 0);
        const uint64_t *by = dev.answered_by;
        CHECK(by[1] == 0 && by[7] == 0);   /* never after a failed step 0 */
        CHECK(by[0] + by[6] + by[2] + by[3] + by[4] + by[5] + by[8] + by[9] + by[10] + by[11] == d.completed);
        CHECK(by[0] + by[6] + by[2] + by[8] + by[4] + by[10] == 600);   /* cycles started */
        CHECK(d.errors == by[0] + by[6] + by[3] + by[9] && d.last_error == -ENOENT);
        CHECK(d.nlog == by[5] + by[11] && d.bad == 0);
    }
    /* offsets outside the expected replies, or a carry backwards, are refused */
    struct msb_vdrv_step far[2] = {{0, REPLY_LEN, 0, REPLY_LEN - 7}, {0, REPLY_LEN, 0, 0}};
    d.steps = far;
    CHECK(msb_vdrv_run(&d, 1, 1, 0, 0, 100) == -EINVAL);
    struct msb_vdrv_carry back = {1, 0, 16, 24};
    d.steps = two_steps;
    d.carries = &back;
    CHECK(msb_vdrv_run(&d, 1, 1, 0, 0, 100) == -EINVAL);
    d.nsteps = 5;   /* NCHAINS is not slots of 5 */
    d.carries = &carry_on;
    CHECK(msb_vdrv_run(&d, 1, 1, 0, 0, 100) == -EINVAL);
    stop(&dev);
}

/* The listing chain: head 0 with a LIST_ROOM reply buffer past the other chains. */
static void lay_out_listing(void)
{
    lay_out(0);
    struct msb_vring_desc *desc = (void *)(ram + DESC_OFF);
    uint32_t table = DATA_OFF + 256 * NCHAINS, req = table + 32, rep = req + 64;
    memset(ram + table, 0, 96 + LIST_ROOM);
    struct msb_vring_desc *t = (void *)(ram + table);
    t[0] = (struct msb_vring_desc){GPA_BASE + req, REQ_LEN, DESC_F_NEXT, 1};
    t[1] = (struct msb_vring_desc){GPA_BASE + rep, LIST_ROOM, DESC_F_WRITE, 0};
    desc[0] = (struct msb_vring_desc){GPA_BASE + table, 32, DESC_F_INDIRECT, 0};
    requests[0] = ram + req;
    replies[0] = ram + rep;
}

static void test_listing(void)
{
    lay_out_listing();
    uint64_t log[LIST_N];
    for (int event_idx = 0; event_idx < 2; event_idx++) {
        struct device dev;
        start(&dev, event_idx, LISTING);
        struct msb_vdrv d = driver(&dev, event_idx);
        d.log = log;
        d.log_cap = LIST_N;
        CHECK(msb_vdrv_listing(&d, 24, LIST_ROOM, 10000) == 0);
        CHECK(d.entries == LIST_N && d.errors == 0 && d.bad == 0);
        CHECK(d.completed == (LIST_N + 2) / 3 + 1);   /* and the empty reply */
        CHECK(d.nlog == LIST_N - 1);                  /* record 0's node id is 0 */
        int ids = 1;
        for (uint64_t i = 1; i < LIST_N; i++)
            ids &= log[i - 1] == i;
        CHECK(ids);
        stop(&dev);
    }
    /* records 48..50 are the 17th reply; the stuck one is the 18th */
    for (enum misbehave how = LISTING_LONG_NAME; how <= LISTING_STUCK; how++) {
        struct device dev;
        start(&dev, 1, how);
        struct msb_vdrv d = driver(&dev, 1);
        d.log = log;
        d.log_cap = LIST_N;
        CHECK(msb_vdrv_listing(&d, 24, LIST_ROOM, 10000) == 0);
        CHECK(d.bad == 1 && d.completed == (how == LISTING_STUCK ? 18u : 17u));
        CHECK(d.entries == 50u + (how - LISTING_LONG_NAME));
        stop(&dev);
    }
    /* an offset inside the unique, or a room smaller than a header: refused */
    struct device dev;
    start(&dev, 1, LISTING);
    struct msb_vdrv d = driver(&dev, 1);
    CHECK(msb_vdrv_listing(&d, 8, LIST_ROOM, 100) == -EINVAL);
    CHECK(msb_vdrv_listing(&d, 24, 8, 100) == -EINVAL);
    stop(&dev);
}

int main(void)
{
    int fd = memfd_create("test_vdriver", MFD_CLOEXEC);
    if (fd < 0 || ftruncate(fd, MEM_SIZE + 4096) < 0) {
        perror("memfd");
        return 2;
    }
    ram = msb_map_guarded(fd, MEM_SIZE, 4096, 65536);
    if (!ram) {
        perror("map");
        return 2;
    }
    close(fd);
    mem.n = 1;
    mem.regs[0] = (struct msb_memreg){GPA_BASE, MEM_SIZE, (uint64_t)(uintptr_t)ram, ram};
    test_all_answered();
    test_errors_counted();
    test_misbehaving_device();
    test_steps();
    test_listing();
    if (failures) {
        fprintf(stderr, "%d failures\n", failures);
        return 1;
    }
    printf("test_vdriver: all passed\n");
    return 0;
}
