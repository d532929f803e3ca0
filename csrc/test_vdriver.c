/* Standalone test of csrc/vdriver.c (the driver side's request loop) against a device
 * thread made of csrc/virtq.c, in one process under ASan/UBSan (tests/test_vhost_cdriver.py
 * builds and runs it): with and without EVENT_IDX, lockstep and refill batches, and a
 * device that misbehaves in each way the loop must count or stop on (an error reply, a
 * reply for another post's unique, a header length that is not the used length, a used
 * element naming a head that is not in flight).
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
enum misbehave { NONE, STALE_UNIQUE, LONG_HEADER, BOGUS_HEAD };

static uint8_t *ram;
static struct msb_memtable mem;

struct device {
    struct msb_vq vq;
    int kick_fd, call_fd, stop_fd;
    enum misbehave bad;      /* applied to every 5th reply */
    uint64_t answered;
    pthread_t thread;
};

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
                uint8_t out[REPLY_LEN] = {0};
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
    if (failures) {
        fprintf(stderr, "%d failures\n", failures);
        return 1;
    }
    printf("test_vdriver: all passed\n");
    return 0;
}
