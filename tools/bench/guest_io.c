/* guest_io: the I/O loops of the guest benchmark (tools/bench/guest.py), run inside the
 * guest so that what is timed is file system work, not one busybox fork per operation.
 *
 *   guest_io write FILE MIB        sequential 1 MiB writes, then fsync
 *   guest_io read FILE             sequential 1 MiB reads to the end
 *   guest_io randread FILE COUNT   COUNT 4 KiB preads at pseudo-random aligned offsets
 *   guest_io meta DIR COUNT        create COUNT files, stat each, unlink each
 *
 * Prints the seconds the loop took (CLOCK_MONOTONIC) on stdout; exits non-zero on error.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
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

int main(int argc, char **argv)
{
    static char buf[1 << 20];
    if (argc < 3)
        return fprintf(stderr, "usage: see the source\n"), 2;
    const char *mode = argv[1], *path = argv[2];
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
        char name[4096];
        struct stat st;
        for (long i = 0; i < count; i++) {
            snprintf(name, sizeof name, "%s/f%ld", path, i);
            int fd = open(name, O_WRONLY | O_CREAT | O_EXCL, 0644);
            if (fd < 0)
                return fail(name);
            close(fd);
        }
        for (long i = 0; i < count; i++) {
            snprintf(name, sizeof name, "%s/f%ld", path, i);
            if (stat(name, &st) < 0)
                return fail(name);
        }
        for (long i = 0; i < count; i++) {
            snprintf(name, sizeof name, "%s/f%ld", path, i);
            if (unlink(name) < 0)
                return fail(name);
        }
    } else {
        return fprintf(stderr, "guest_io: bad arguments\n"), 2;
    }
    printf("%.6f\n", now() - t0);
    return 0;
}
