/* The split virtqueue (virtio 1.x, section 2.7) as a vhost-user backend walks it,
 * and the guest memory table every guest address is checked against.
 *
 * Who uses this: vhost/virtqueue.py wraps it for Python devices; other C units
 * (csrc/fuse_datapath.c) include this header and call msb_vq_pop / msb_vq_push on
 * the same `struct msb_vq *` (Python hands it over as `Virtqueue.ring_address`; each
 * extension compiles its own copy of virtq.c: see csrc/build_vhost.py).
 *
 * Contract (the guest is hostile):
 *  - every descriptor address/length is translated through the memtable; a buffer
 *    must lie inside guest memory (it may cross from one region into an adjacent
 *    one: it is then split into one iovec per region), no wrap-around;
 *  - a chain has at most min(num, MSB_MAX_CHAIN) descriptors (loops are caught by
 *    that bound), no indirect inside indirect, INDIRECT+NEXT rejected, an indirect
 *    table is a non-zero multiple of 16 bytes, at most `num` entries, inside memory,
 *    and only accepted when RING_INDIRECT_DESC was negotiated;
 *  - no readable (driver->device) descriptor after a writable one;
 *  - avail->idx moving more than `num` ahead of last_avail_idx, or a head >= num;
 *  - on any violation the queue is marked broken (vq->broken = 1, the error eventfd
 *    is signalled), the call returns -EINVAL/-E2BIG/-ELOOP, and every later
 *    pop/push returns -EIO until the ring is set up again. Nothing outside the
 *    regions is ever read or written.
 *
 * Threading: a msb_vq is used by one thread at a time. The memtable a queue points
 * at must stay mapped while the queue may use it (vhost/memory.py guarantees that).
 */
#ifndef MSBFS_VIRTQ_H
#define MSBFS_VIRTQ_H

#include <stddef.h>
#include <stdint.h>
#include <sys/uio.h>

#define MSB_MAX_MEMREGS 32     /* regions in one table (our GET_MAX_MEM_SLOTS reply) */
#define MSB_MAX_QUEUE 1024     /* largest queue size accepted (QEMU's VIRTQUEUE_MAX_SIZE) */
#define MSB_MAX_CHAIN 1024     /* iovecs in one popped chain */

struct msb_memreg {
    uint64_t gpa;       /* guest-physical start */
    uint64_t size;      /* bytes */
    uint64_t uaddr;     /* the frontend's virtual address of the start (ring addresses use it) */
    uint8_t *host;      /* our mapping of the start */
};

struct msb_memtable {
    uint32_t n;
    struct msb_memreg regs[MSB_MAX_MEMREGS];
};

/* Translate [addr, addr+len) to a local pointer; NULL unless it lies inside ONE region.
 * len 0 is checked like len 1 (the address itself must be inside a region). */
void *msb_gpa_to_host(const struct msb_memtable *mem, uint64_t gpa, uint64_t len);
void *msb_uva_to_host(const struct msb_memtable *mem, uint64_t uaddr, uint64_t len);

/* The ring layout of linux/virtio_ring.h, restated with plain types so this header
 * is includable everywhere (and parsable by cffi). Little-endian host assumed. */
struct msb_vring_desc { uint64_t addr; uint32_t len; uint16_t flags; uint16_t next; };
struct msb_vring_avail { uint16_t flags; uint16_t idx; uint16_t ring[]; /* + used_event */ };
struct msb_vring_used_elem { uint32_t id; uint32_t len; };
struct msb_vring_used { uint16_t flags; uint16_t idx; struct msb_vring_used_elem ring[]; /* + avail_event */ };

struct msb_vq {
    /* set up by the owner (vhost/virtqueue.py) before use */
    const struct msb_memtable *mem;
    struct msb_vring_desc *desc;
    struct msb_vring_avail *avail;
    struct msb_vring_used *used;
    uint16_t num;             /* queue size: power of two, 1..MSB_MAX_QUEUE */
    uint16_t last_avail_idx;  /* next avail slot to pop (SET/GET_VRING_BASE) */
    uint16_t used_idx;        /* our shadow of used->idx */
    uint16_t signalled_used;  /* used_idx at the last call signal */
    uint8_t signalled_used_valid;
    uint8_t event_idx;        /* VIRTIO_RING_F_EVENT_IDX negotiated */
    uint8_t indirect;         /* VIRTIO_RING_F_INDIRECT_DESC negotiated */
    uint8_t broken;           /* set on a guest violation; cleared by msb_vq_setup */
    int call_fd;              /* eventfd to signal used buffers, -1 = none */
    int err_fd;               /* eventfd signalled when the queue breaks, -1 = none */
    /* statistics */
    uint64_t popped, pushed, calls, suppressed_calls;    /* Not a ring at all when set: msb_vq_push hands each reply to sink(sink_arg, head,
     * len) instead (csrc/devfuse.c: the host mount's /dev/fuse requests answered by the
     * same opcode handlers as a virtqueue's). NULL for every real ring. */
    int (*sink)(void *arg, uint16_t head, uint32_t len);
    void *sink_arg;
};

struct msb_chain {                   /* one popped descriptor chain */
    uint16_t head;                   /* id to give back to msb_vq_push */
    uint16_t nout, nin;              /* readable (driver->device) and writable iovecs */
    uint32_t out_len, in_len;        /* total bytes of each part */
    struct iovec iov[MSB_MAX_CHAIN]; /* out iovecs first, then in iovecs */
};

/* Reset a queue to stopped/empty: no rings, fds -1, counters 0. */
void msb_vq_init(struct msb_vq *vq);
/* Point the queue at its rings (frontend virtual addresses, as SET_VRING_ADDR gives them),
 * checking size and alignment against `mem`. Reads used->idx into used_idx and clears
 * broken. 0 or -EINVAL (the queue is then left without rings). */
int msb_vq_setup(struct msb_vq *vq, const struct msb_memtable *mem, uint16_t num,
                 uint64_t desc_uaddr, uint64_t avail_uaddr, uint64_t used_uaddr);
/* Re-translate the rings after the memory table changed (same addresses). 0 or -EINVAL. */
int msb_vq_remap(struct msb_vq *vq, const struct msb_memtable *mem,
                 uint64_t desc_uaddr, uint64_t avail_uaddr, uint64_t used_uaddr);

/* Pop up to `max` available chains into out[0..n). Returns n (0 when empty), or -errno
 * (queue broken; chains popped earlier in this call are abandoned). With EVENT_IDX it
 * publishes avail_event and re-checks avail->idx so no kick is lost. */
int msb_vq_pop(struct msb_vq *vq, struct msb_chain *out, int max);
/* Add used elements and publish used->idx (one release barrier per call). 0 or -errno. */
int msb_vq_push(struct msb_vq *vq, uint16_t head, uint32_t len);
int msb_vq_push_many(struct msb_vq *vq, const uint16_t *heads, const uint32_t *lens, int n);
/* Must the driver be signalled for what was pushed since the last signal? (EVENT_IDX:
 * vring_need_event on used_event; else the NO_INTERRUPT flag.) Records the signal point. */
int msb_vq_need_call(struct msb_vq *vq);
/* Signal call_fd if msb_vq_need_call says so. 1 signalled, 0 not needed, -errno. */
int msb_vq_notify(struct msb_vq *vq);
/* Number of chains the driver has made available and we have not popped (0 if broken). */
int msb_vq_pending(const struct msb_vq *vq);

/* A full memory barrier, for Python code playing the driver (vhost/frontend.py). */
void msb_mb(void);

/* Gather from / scatter into an iovec list starting `off` bytes in. Return bytes copied
 * (short when the list ends first). */
size_t msb_iov_copy_from(const struct iovec *iov, int n, size_t off, void *dst, size_t len);
size_t msb_iov_copy_to(const struct iovec *iov, int n, size_t off, const void *src, size_t len);

/* Map `size` bytes of `fd` from `offset` read-write and shared, with PROT_NONE guard
 * pages of `guard` bytes on both sides (a stray access faults instead of touching a
 * neighbour). Any offset is accepted (the page-aligned part below it is mapped too).
 * Returns the pointer to offset's byte, or NULL with errno set. */
void *msb_map_guarded(int fd, uint64_t size, uint64_t offset, uint64_t guard);
/* Undo msb_map_guarded with the same size/offset/guard. 0 or -errno. */
int msb_unmap_guarded(void *host, uint64_t size, uint64_t offset, uint64_t guard);

#endif
