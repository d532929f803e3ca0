/* The host mount's fast path (issue 11): requests on the host's /dev/fuse connection that
 * the C opcode handlers can answer (msb_meta_serve, csrc/fuse_meta.h: the same code that
 * answers a virtqueue's) are answered here and never reach Python; pyfuse3 keeps the
 * mount and answers everything else, unchanged.
 *
 * How, without changing pyfuse3 or libfuse: once pyfuse3 has mounted, Python
 * (msbfs/hostmount_relay.py) moves the connection. The relay keeps it on a dup of its
 * own (dev_fd), and the fd number libfuse reads and writes (its session fd) becomes one
 * end of a SOCK_SEQPACKET socketpair: one message per read and per write, as /dev/fuse
 * behaves. Then
 *   - reader threads read requests from the connection. One C answers is answered with
 *     one write to the connection (the reply goes back on the fd that read the request,
 *     as FUSE requires). Any other is sent whole into the socket, where libfuse reads it
 *     as if from /dev/fuse;
 *   - a forwarder thread writes what libfuse writes into the socket (replies,
 *     notifications) to the connection, unchanged.
 * Until libfuse's INIT reply has passed, every request is forwarded. The forwarder reads
 * that reply on its way (the negotiated protocol), clamps max_write/max_pages when one
 * socket message could not carry a full request (an unprivileged daemon cannot raise its
 * socket buffers), and only then lets C answer. A DESTROY stops C answering before it is
 * forwarded.
 *
 * Which opcodes C may answer is the caller's choice (msb_relay_allow): the host mount's
 * Python adapter keeps per-handle state of its own for some of them.
 *
 * Grace sections (csrc/grace.h): each C answer runs in one, and nothing that can block on
 * another thread's progress (the send to libfuse) ever runs inside one. Python's requests
 * run while holding the inode table and in a section (msb_relay_py_begin/end), as the
 * virtio-fs slow path does: inodes C forgets meanwhile stay open until they end.
 *
 * One reader at a time: of the reader threads, the one holding the turn reads the
 * connection and answers what it read; the others watch it. A single client's requests
 * all land on the same warm thread (two threads in read() take turns, the kernel waking
 * the one that waited longest: 10-20% slower per create on tmpfs). When the reader has
 * been on one request for READER_STALL (a call blocking on a slow disk or a stopped
 * filesystem, a send to a busy libfuse), a watcher takes the turn and reads the next
 * ones: no request waits behind a blocked one. The reader that loses its turn watches
 * once done. A watcher samples every READER_STALL while the reader is busy and sleeps
 * once the connection has been idle a while (woken by the reader's next request).
 *
 * Shutdown: the readers end when the connection ends (unmounted: ENODEV), and say so on
 * `ended_fd` (an eventfd Python waits on: pyfuse3's loop, reading the socket, would never
 * learn it); msb_relay_stop ends every thread in any case (a signal interrupts the reads)
 * and joins them; Python then puts the connection back on libfuse's fd number, so
 * pyfuse3's unmount and close run as they always did. */
#ifndef MSBFS_DEVFUSE_H
#define MSBFS_DEVFUSE_H

#include <stdint.h>

struct msb_meta;
struct msb_inodes;

struct msb_relay_stats {
    uint64_t answered;      /* requests C answered */
    uint64_t forwarded;     /* requests sent to libfuse */
    uint64_t replies;       /* libfuse's writes passed to the connection */
    uint64_t send_errors;   /* a request libfuse could not be given (answered EIO) */
    uint64_t write_errors;  /* a write to the connection refused (other than ENOENT) */
    uint64_t clamped;       /* INIT replies whose max_write was lowered */
    uint64_t forwarded_op[64];   /* forwarded, by opcode (the last: 63 and above) */
    uint64_t reads, writes;      /* READ and WRITE answered in C */
    uint64_t takeovers;          /* reading taken over from a reader busy too long */
};

struct msb_relay;

/* dev_fd: the FUSE connection (the relay owns it from now on and closes it at free);
 * lib_fd: our end of the socketpair (owned too); m: the handlers' configuration (kept
 * by the caller for the relay's lifetime); bufsize: bytes per read (at least libfuse's:
 * the kernel refuses a read that cannot hold max_write); msg_max: the largest message the
 * socket carries; ended_fd: an eventfd written once when the connection ends, or -1.
 * NULL on ENOMEM or bad sizes. */
struct msb_relay *msb_relay_new(int dev_fd, int lib_fd, struct msb_meta *m, uint32_t bufsize,
                                uint32_t msg_max, int ended_fd);
/* Let C answer `opcode` (on: 1) or not (0). Before msb_relay_start. -EINVAL past 63. */
int msb_relay_allow(struct msb_relay *r, uint32_t opcode, int on);
/* READDIRPLUS of a directory whose host size is at most `bytes` is C's (with attributes
 * for every entry, as msb_readdir_serve lists); a larger one's is Python's (the host
 * mount lists it plain). 0 (the default): every READDIRPLUS is Python's. Before start. */
void msb_relay_set_small_dir(struct msb_relay *r, uint64_t bytes);
/* Answer `opcode` ENOSYS in C, as libfuse answers an operation its filesystem has no
 * callback for (the kernel sends FUSE_IOCTL for every isatty() of a file, and pyfuse3
 * offers no ioctl). Not for requests without replies or the session's own. Before
 * start; -EINVAL for those. */
int msb_relay_enosys(struct msb_relay *r, uint32_t opcode);
/* Start `readers` reader threads (1..8: one reads at a time, the others take over from
 * a blocked one) and the forwarder. 0 or -errno. */
int msb_relay_start(struct msb_relay *r, int readers);
/* End every thread (interrupting blocked reads) and join them. The connection stays
 * open; msb_relay_take_dev hands it back. Idempotent. */
void msb_relay_stop(struct msb_relay *r);
/* The connection fd, given up by the relay (after msb_relay_stop; -1 if taken). */
int msb_relay_take_dev(struct msb_relay *r);
void msb_relay_free(struct msb_relay *r);
void msb_relay_stats(struct msb_relay *r, struct msb_relay_stats *out);
/* What libfuse and the kernel agreed (0 until INIT's reply passed). */
uint32_t msb_relay_minor(struct msb_relay *r);
uint64_t msb_relay_init_flags(struct msb_relay *r);
uint32_t msb_relay_max_write(struct msb_relay *r);

/* Around each Python request of the host mount: hold the inode table and enter a grace
 * section (the virtio-fs slow path's msb_fs_slow_begin, without a chain). */
void msb_relay_py_begin(struct msb_inodes *inodes);
void msb_relay_py_end(struct msb_inodes *inodes);

#endif
