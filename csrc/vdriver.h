/* The driver side of one split ring, in C: a request loop for benchmarks and tests that
 * keeps prepared FUSE request chains in flight on a device (msbfs serve, virtiofsd)
 * without Python per request.
 *
 * Why it exists: the Python driver (vhost/driver.py) spends 8-15 us of CPU per request,
 * several times what the daemons spend answering it, so a Python client measures
 * itself. This loop costs well under a microsecond per request.
 *
 * Who prepares what: Python (vhost/cdriver.py) lays out `nchains` descriptor chains in
 * guest RAM once (request bytes, an indirect table, the writable reply buffer) with the
 * FrontendQueue that owns the ring, then hands their heads and the host addresses of
 * each request's fuse_in_header and reply's fuse_out_header to msb_vdrv_run. The loop
 * only rewrites each request's `unique` before posting it again, so every reply can be
 * matched to the post it answers.
 *
 * Notifications follow vhost/driver.py exactly (the same for every device): with
 * EVENT_IDX a kick only when the device's avail_event asks for one and used_event set
 * to the next used element before sleeping on the call eventfd; without it a kick per
 * batch and calls never suppressed.
 *
 * Threading: one thread per ring; the ring's shadow indexes live in `struct msb_vdrv`
 * and are copied back to the Python queue afterwards. The device is trusted to be a
 * device (this is a client), but a used element naming a head that is not in flight, or
 * used->idx jumping past what is in flight, stops the loop with -EPROTO rather than
 * reading outside the arrays.
 */
#ifndef MSBFS_VDRIVER_H
#define MSBFS_VDRIVER_H

#include <stdint.h>

#include "virtq.h"

/* Chains in steps (a CREATE, then a RELEASE of the handle it returned, then an UNLINK of
 * its name): step k of a cycle is posted once step k-1 was answered as expected. */
struct msb_vdrv_step {
    int32_t error;       /* the reply's expected error field */
    uint32_t len;        /* then its expected used length (header included) */
    uint32_t name_at;    /* 0, or where in the step's request the cycle's number goes as
                            16 hex digits (fresh names per cycle) */
    uint32_t log_at;     /* 0, or the reply offset of 8 bytes (a node id) appended to log */
};

/* 8 bytes of step from_step's reply (at reply_at) copied into the same cycle's request of
 * to_step (at request_at), e.g. CREATE's node id and fh into its RELEASE. */
struct msb_vdrv_carry {
    uint16_t from_step, to_step;
    uint32_t reply_at, request_at;
};

struct msb_vdrv {
    /* the ring (our mappings of guest RAM) and its state, set by the caller */
    struct msb_vring_avail *avail;
    struct msb_vring_used *used;
    uint16_t num;              /* queue size */
    uint16_t avail_idx;        /* shadow of avail->idx (copied back afterwards) */
    uint16_t kicked_idx;       /* avail idx at the last kick */
    uint16_t last_used;        /* next used element to read */
    uint8_t event_idx;         /* VIRTIO_RING_F_EVENT_IDX negotiated */
    int kick_fd, call_fd, err_fd;
    /* the prepared chains, `nchains` <= num of them */
    uint32_t nchains;
    const uint16_t *heads;          /* head descriptor of chain i */
    uint8_t *const *requests;       /* chain i's fuse_in_header (unique rewritten per post) */
    const uint8_t *const *replies;  /* chain i's reply buffer (fuse_out_header first) */
    uint64_t *uniques;              /* [nchains] scratch: the unique chain i was posted with */
    uint64_t next_unique;           /* first unique to post; advanced by the loop */
    /* steps: NULL, or chains are nchains / nsteps slots of nsteps chains each (chain
     * slot * nsteps + k is step k of the slot's cycles); carries between them */
    const struct msb_vdrv_step *steps;
    uint32_t nsteps, ncarries;
    const struct msb_vdrv_carry *carries;
    uint64_t next_cycle;            /* number of the next cycle (its names); advanced */
    uint64_t *log;                  /* [log_cap]: node ids the steps' log_at named */
    uint64_t log_cap;
    /* 0, or a reply offset whose 4 bytes must hold check_value in every reply of the
     * expected error and length (a WRITE's fuse_write_out.size: all it asked written) */
    uint32_t check_at, check_value;
    /* results of the last run */
    uint64_t completed;   /* replies reaped */
    uint64_t errors;      /* replies whose error field was not the expected one */
    uint64_t bad;         /* replies with a wrong unique, out.len != used len, or the
                             expected error but not the expected used length or
                             check_value */
    uint64_t kicks;       /* kick eventfd writes */
    uint64_t waits;       /* sleeps on the call eventfd */
    int32_t last_error;   /* the error field of the last unexpected-error reply */
    uint64_t nlog;        /* node ids logged (beyond log_cap: counted, not kept) */
    uint64_t entries;     /* msb_vdrv_listing: directory records listed */
};

/* Post `count` requests in all through the prepared chains, at most nchains in flight;
 * re-post once at least `batch` chains are free (1: refill after every reap; nchains:
 * the whole set in lockstep, one kick per set) until `count` replies are reaped. Each
 * reply is expected to carry error `expect_error` (0 or a negative errno) and, then,
 * `expect_len` bytes of used length (header included). Counters are reset at the start.
 * With steps, `count` is of cycles, each reply is checked against its step's
 * expectations (expect_* unused), and a cycle ends early at an unexpected reply
 * (counted in errors or bad: its later steps are not posted), so `completed` is
 * count * nsteps when every reply was as expected.
 * Returns 0, -ETIMEDOUT (no call for timeout_ms), -EIO (the device signalled err_fd),
 * -EPROTO (the device used a head not in flight) or -errno of poll/read/write. Call it
 * with the GIL released (cffi does). */
int msb_vdrv_run(struct msb_vdrv *d, uint64_t count, uint32_t batch, int32_t expect_error,
                 uint32_t expect_len, int timeout_ms);

/* One whole directory listing through chain 0 (a READDIRPLUS with a `room`-byte reply
 * buffer), one request in flight as a guest's getdents makes them: posted with offset 0
 * (the 8 bytes at `offset_at` in its request), then again from each reply's last
 * record's offset until a reply with no records. Every record's bounds are checked
 * (a record cut short, a length not the records', or records ending at the offset asked
 * from is bad and ends the listing, as an error reply does); `entries` counts the records, their non-zero node ids go to the
 * log. Returns as msb_vdrv_run. */
int msb_vdrv_listing(struct msb_vdrv *d, uint32_t offset_at, uint32_t room, int timeout_ms);

#endif
