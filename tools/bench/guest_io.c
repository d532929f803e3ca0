/* guest_io: the I/O loops of the guest benchmark (tools/bench/guest.py), run inside the
 * guest so that what is timed is file system work, not one busybox fork per operation.
 *
 *   guest_io write FILE MIB        sequential 1 MiB writes, then fsync
 *   guest_io read FILE             sequential 1 MiB reads to the end
 *   guest_io randread FILE COUNT   COUNT 4 KiB preads at pseudo-random aligned offsets
 *   guest_io meta DIR COUNT        create COUNT files, stat each, unlink each (a line
 *                                  "create|stat|unlink SECONDS" per phase, then the total)
 *   guest_io par DIR COUNT NPROC   NPROC processes, process i pinned to CPU i and working
 *                                  in DIR/p<i>: all create COUNT files, then all stat
 *                                  them, then all unlink them (phases kept in step; the
 *                                  guest's dentries dropped before stat and unlink; root)
 *
 * Prints the seconds the loop took (CLOCK_MONOTONIC) on stdout; exits non-zero on error.
 * par prints one line per phase, "create|stat|unlink SECONDS", each timed from the moment
 * every process is released into the phase until the last one finishes it, then
 * "cpus C0 C1 ..." (the CPU each process found itself on after its last phase: the
 * pinning held) so the caller can check the processes really ran on NPROC CPUs.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sched.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

static int fail(const char *what)
{
    fprintf(stderr, "guest_io: %s: %s\n", what, strerror(errno));
    return 1;
}

/* One phase of meta's loops over DIR/f0..f<count-1>: 0 create, 1 stat, 2 unlink. */
static int meta_phase(const char *dir, long count, int phase)
{
    char name[4096];
    struct stat st;
    for (long i = 0; i < count; i++) {
        snprintf(name, sizeof name, "%s/f%ld", dir, i);
        if (phase == 0) {
            int fd = open(name, O_WRONLY | O_CREAT | O_EXCL, 0644);
            if (fd < 0)
                return fail(name);
            close(fd);
        } else if ((phase == 1 ? stat(name, &st) : unlink(name)) < 0) {
            return fail(name);
        }
    }
    return 0;
}

static const char *const PHASES[] = {"create", "stat", "unlink"};
#define NPHASES 3
#define MAXPROC 64

/* A worker of par: pinned to `cpu`, waits for a byte on `go` before each phase and
 * answers a byte on `done` after it ('k' done, 'e' failed: the parent stops there). A
 * last go asks for the CPU it ran on (one byte). */
static int par_worker(const char *dir, long count, int cpu, int go, int done)
{
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(cpu, &set);
    /* Not pinned: fail the first phase (the parent waits for an answer to each go). */
    int unpinned = sched_setaffinity(0, sizeof set, &set) < 0 && fail("sched_setaffinity");
    for (int phase = 0; phase < NPHASES; phase++) {
        char c;
        if (read(go, &c, 1) != 1)
            return 1;
        int bad = unpinned || meta_phase(dir, count, phase);
        c = bad ? 'e' : 'k';
        if (write(done, &c, 1) != 1 || bad)
            return 1;
    }
    char c;
    if (read(go, &c, 1) != 1)  /* asked after every 'k' is in: no answer overtakes one */
        return 1;
    unsigned char where = (unsigned char)sched_getcpu();
    return write(done, &where, 1) == 1 ? 0 : 1;
}

/* Forget the guest's dentries and inodes (untimed, before a phase), so that stat and
 * unlink ask the daemon (LOOKUP) instead of finding names the create phase cached for the
 * entry timeout (1 s with cache=auto on both daemons): how much would still be cached
 * depends on how fast the create phase went, which is what is being compared. */
static int drop_dentries(void)
{
    int fd = open("/proc/sys/vm/drop_caches", O_WRONLY);
    if (fd < 0 || write(fd, "2\n", 2) != 2)
        return fail("/proc/sys/vm/drop_caches");
    close(fd);
    return 0;
}

static int par(const char *dir, long count, int nproc)
{
    int go[MAXPROC], done[2];
    pid_t pids[MAXPROC];
    char sub[4096];
    if (nproc < 1 || nproc > MAXPROC)
        return fprintf(stderr, "guest_io: 1..%d processes\n", MAXPROC), 2;
    if (pipe(done) < 0)
        return fail("pipe");
    for (int i = 0; i < nproc; i++) {
        int p[2];
        snprintf(sub, sizeof sub, "%s/p%d", dir, i);
        if (mkdir(sub, 0755) < 0 && errno != EEXIST)
            return fail(sub);
        if (pipe(p) < 0)
            return fail("pipe");
        pids[i] = fork();
        if (pids[i] < 0)
            return fail("fork");
        if (pids[i] == 0) {
            /* Only its own go pipe: a worker holding another's would keep it from
             * seeing end of file when the parent stops early. */
            for (int j = 0; j < i; j++)
                close(go[j]);
            close(p[1]);
            close(done[0]);
            _exit(par_worker(sub, count, i, p[0], done[1]));
        }
        close(p[0]);
        go[i] = p[1];
    }
    close(done[1]);
    int status = 0;
    for (int phase = 0; phase < NPHASES && !status; phase++) {
        if (phase > 0 && drop_dentries())
            return 1;
        double t0 = now();
        for (int i = 0; i < nproc; i++)
            if (write(go[i], "g", 1) != 1)
                return fail("write");
        for (int i = 0; i < nproc; i++) {
            char c;
            if (read(done[0], &c, 1) != 1 || c != 'k')
                status = 1;  /* a worker failed (it said why on stderr) or died */
        }
        if (!status)
            printf("%s %.6f\n", PHASES[phase], now() - t0);
    }
    /* Then each worker's CPU: the order says nothing (one pipe), the set does. */
    if (!status) {
        printf("cpus");
        for (int i = 0; i < nproc; i++)
            if (write(go[i], "g", 1) != 1)
                return fail("write");
        for (int i = 0; i < nproc; i++) {
            unsigned char where;
            if (read(done[0], &where, 1) != 1)
                return fail("read");
            printf(" %u", where);
        }
        printf("\n");
    }
    for (int i = 0; i < nproc; i++)
        close(go[i]);  /* a worker still waiting for a phase ends */
    for (int i = 0; i < nproc; i++) {
        int ws;
        if (waitpid(pids[i], &ws, 0) < 0 || !WIFEXITED(ws) || WEXITSTATUS(ws))
            status = 1;
    }
    return status;
}

int main(int argc, char **argv)
{
    static char buf[1 << 20];
    if (argc < 3)
        return fprintf(stderr, "usage: see the source\n"), 2;
    const char *mode = argv[1], *path = argv[2];
    if (!strcmp(mode, "par") && argc == 5)
        return par(path, atol(argv[3]), atoi(argv[4]));
    double t0 = now();
    if (!strcmp(mode, "write") && argc == 4) {
        long mib = atol(argv[3]);
        memset(buf, 0xa5, sizeof buf);
        int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
        if (fd < 0)
            return fail(path);
        for (long i = 0; i < mib; i++)
            if (write(fd, buf, sizeof buf) != (ssize_t)sizeof buf)
                return fail("write");
        if (fsync(fd) < 0)
            return fail("fsync");
        close(fd);
    } else if (!strcmp(mode, "read") && argc == 3) {
        int fd = open(path, O_RDONLY);
        if (fd < 0)
            return fail(path);
        ssize_t n;
        while ((n = read(fd, buf, sizeof buf)) > 0) {
        }
        if (n < 0)
            return fail("read");
        close(fd);
    } else if (!strcmp(mode, "randread") && argc == 4) {
        long count = atol(argv[3]);
        int fd = open(path, O_RDONLY);
        struct stat st;
        if (fd < 0 || fstat(fd, &st) < 0)
            return fail(path);
        uint64_t blocks = (uint64_t)st.st_size / 4096, x = 88172645463325252ull;
        for (long i = 0; i < count; i++) {
            x ^= x << 13; /* xorshift64: the same offsets for every daemon */
            x ^= x >> 7;
            x ^= x << 17;
            if (pread(fd, buf, 4096, (off_t)(x % blocks) * 4096) != 4096)
                return fail("pread");
        }
        close(fd);
    } else if (!strcmp(mode, "meta") && argc == 4) {
        long count = atol(argv[3]);
        for (int phase = 0; phase < NPHASES; phase++) {
            double p0 = now();
            if (meta_phase(path, count, phase))
                return 1;
            printf("%s %.6f\n", PHASES[phase], now() - p0);
        }
    } else {
        return fprintf(stderr, "guest_io: bad arguments\n"), 2;
    }
    printf("%.6f\n", now() - t0);
    return 0;
}
