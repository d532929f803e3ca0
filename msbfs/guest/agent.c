/* msb-agent: the guest side of the command channel, run by /init as PID 1.
 *
 * It owns one virtio-serial port and runs one command at a time on the host's request,
 * streaming the command's stdout and stderr back and then its exit status. It never
 * sleeps: it waits on the port, on the command's pipes and on a SIGCHLD signalfd, and on
 * inotify for the port's device node to appear (ports are added asynchronously by the
 * virtio console driver, possibly after init starts).
 *
 * Frame (both directions): u8 type, u32 little-endian payload length, payload.
 *   host -> guest  'R' run:  NUL-terminated strings: uid, gid, cwd, env count N,
 *                            N "K=V" entries, then argv (at least one)
 *                  'Q' quit: sync and power off
 *   guest -> host  'H' hello (agent ready)  'S' started (payload: pid as text)
 *                  'O' stdout bytes  'E' stderr bytes
 *                  'X' exit: text "exit N" or "signal N"
 * Built statically by tools/guest/build.py; the host side is msbfs/launcher/agent.py.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/inotify.h>
#include <sys/mount.h>
#include <sys/reboot.h>
#include <sys/signalfd.h>
#include <sys/wait.h>
#include <unistd.h>

#define MAX_FRAME (1u << 20)
#define MAX_ARGS 4096

static int port = -1;

static void die_poweroff(const char *why)
{
    fprintf(stderr, "msb-agent: %s: %s\n", why, strerror(errno));
    sync();
    reboot(RB_AUTOBOOT); /* QEMU runs with -no-reboot: this ends the VM */
    _exit(1);
}

static void write_all(int fd, const void *buf, size_t len)
{
    const char *p = buf;
    while (len) {
        ssize_t n = write(fd, p, len);
        if (n < 0) {
            if (errno == EINTR || errno == EAGAIN)
                continue;
            die_poweroff("write to port");
        }
        p += n;
        len -= (size_t)n;
    }
}

static void send_frame(char type, const void *data, uint32_t len)
{
    unsigned char hdr[5] = {(unsigned char)type, len & 0xff, (len >> 8) & 0xff,
                            (len >> 16) & 0xff, (len >> 24) & 0xff};
    write_all(port, hdr, sizeof hdr);
    if (len)
        write_all(port, data, len);
}

/* Returns 0 on EOF before any byte, 1 when len bytes were read. */
static int read_exact(int fd, void *buf, size_t len)
{
    char *p = buf;
    size_t got = 0;
    while (got < len) {
        ssize_t n = read(fd, p + got, len - got);
        if (n < 0) {
            if (errno == EINTR || errno == EAGAIN)
                continue;
            die_poweroff("read from port");
        }
        if (n == 0) {
            if (got == 0)
                return 0;
            errno = EPROTO;
            die_poweroff("short frame");
        }
        got += (size_t)n;
    }
    return 1;
}

/* Wait for the device node without sleeping: inotify on /dev, then retry the open. */
static int open_port(const char *path)
{
    int in = inotify_init1(IN_CLOEXEC);
    if (in < 0)
        die_poweroff("inotify_init1");
    if (inotify_add_watch(in, "/dev", IN_CREATE | IN_ATTRIB) < 0)
        die_poweroff("inotify_add_watch /dev");
    for (;;) {
        int fd = open(path, O_RDWR | O_CLOEXEC | O_NOCTTY);
        if (fd >= 0) {
            close(in);
            return fd;
        }
        if (errno != ENOENT && errno != ENXIO)
            die_poweroff(path);
        char ev[4096];
        if (read(in, ev, sizeof ev) < 0 && errno != EINTR)
            die_poweroff("inotify read");
    }
}

/* Unmount every filesystem, last mounted first, so ext4 disks are left clean (no journal
 * to replay) before the VM ends; virtiofs mounts send their final FORGETs and DESTROY. */
static void unmount_all(void)
{
    static char buf[65536];
    char *points[512];
    int n = 0;
    int fd = open("/proc/mounts", O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return;
    ssize_t len = 0, r;
    while (len < (ssize_t)sizeof buf - 1 && (r = read(fd, buf + len, sizeof buf - 1 - len)) > 0)
        len += r;
    close(fd);
    buf[len] = 0;
    for (char *line = buf; line && *line && n < 512;) {
        char *next = strchr(line, '\n');
        if (next)
            *next++ = 0;
        char *sp = strchr(line, ' ');
        if (sp) {
            char *point = sp + 1;
            char *end = strchr(point, ' ');
            if (end)
                *end = 0;
            points[n++] = point;
        }
        line = next;
    }
    while (n-- > 0) {
        const char *p = points[n];
        if (strcmp(p, "/") && strcmp(p, "/proc") && strcmp(p, "/sys") && strcmp(p, "/dev"))
            umount2(p, 0);
    }
}

static void forward(int *fd, char type)
{
    char buf[65536];
    ssize_t n = read(*fd, buf, sizeof buf);
    if (n > 0) {
        send_frame(type, buf, (uint32_t)n);
    } else if (n == 0 || (errno != EINTR && errno != EAGAIN)) {
        close(*fd);
        *fd = -1;
    }
}

static void run(char *payload, uint32_t len, int sfd)
{
    char *field[MAX_ARGS + 8];
    size_t nf = 0;
    for (uint32_t i = 0; i < len && nf < MAX_ARGS + 8;) {
        field[nf++] = payload + i;
        char *end = memchr(payload + i, 0, len - i);
        if (!end)
            break; /* unterminated last field: counted below as malformed */
        i = (uint32_t)(end - payload) + 1;
    }
    long nenv = nf >= 4 ? strtol(field[3], NULL, 10) : -1;
    if (nf < 5 || payload[len - 1] != 0 || nenv < 0 || (size_t)nenv + 5 > nf) {
        const char msg[] = "msb-agent: malformed run request\n";
        send_frame('E', msg, sizeof msg - 1);
        send_frame('X', "exit 125", 8);
        return;
    }
    uid_t uid = (uid_t)strtoul(field[0], NULL, 10);
    gid_t gid = (gid_t)strtoul(field[1], NULL, 10);
    char **envp = &field[4];
    /* argv and envp need NULL terminators; field[] has room for them. */
    char *args[MAX_ARGS + 1];
    size_t nargs = 0;
    for (size_t i = 4 + (size_t)nenv; i < nf && nargs < MAX_ARGS; i++)
        args[nargs++] = field[i];
    args[nargs] = NULL;
    char *env[MAX_ARGS + 8];
    for (long i = 0; i < nenv; i++)
        env[i] = envp[i];
    env[nenv] = NULL;

    int out[2], err[2];
    if (pipe2(out, O_CLOEXEC) < 0 || pipe2(err, O_CLOEXEC) < 0)
        die_poweroff("pipe2");
    pid_t pid = fork();
    if (pid < 0)
        die_poweroff("fork");
    if (pid == 0) {
        sigset_t none;
        sigemptyset(&none);
        sigprocmask(SIG_SETMASK, &none, NULL);
        int devnull = open("/dev/null", O_RDONLY);
        dup2(devnull, 0);
        dup2(out[1], 1);
        dup2(err[1], 2);
        setsid();
        if (field[2][0] && chdir(field[2]) < 0) {
            dprintf(2, "msb-agent: cannot chdir to %s: %s\n", field[2], strerror(errno));
            _exit(126);
        }
        if (gid && (setgroups(0, NULL) < 0 || setgid(gid) < 0)) {
            dprintf(2, "msb-agent: setgid %u: %s\n", gid, strerror(errno));
            _exit(126);
        }
        if (uid && setuid(uid) < 0) {
            dprintf(2, "msb-agent: setuid %u: %s\n", uid, strerror(errno));
            _exit(126);
        }
        execvpe(args[0], args, env);
        dprintf(2, "msb-agent: cannot run %s: %s\n", args[0], strerror(errno));
        _exit(errno == ENOENT ? 127 : 126);
    }
    close(out[1]);
    close(err[1]);
    char started[32];
    int sl = snprintf(started, sizeof started, "%d", (int)pid);
    send_frame('S', started, (uint32_t)sl);

    int ofd = out[0], efd = err[0];
    int status = 0, done = 0;
    while (ofd >= 0 || efd >= 0 || !done) {
        struct pollfd p[3] = {{ofd, POLLIN, 0}, {efd, POLLIN, 0}, {sfd, POLLIN, 0}};
        /* Once the command has exited, only drain what its pipes already hold, so a
         * background process that keeps them open cannot hang the agent. */
        if (poll(p, 3, done ? 0 : -1) < 0) {
            if (errno == EINTR)
                continue;
            die_poweroff("poll");
        }
        int progressed = 0;
        if (ofd >= 0 && p[0].revents) {
            forward(&ofd, 'O');
            progressed = 1;
        }
        if (efd >= 0 && p[1].revents) {
            forward(&efd, 'E');
            progressed = 1;
        }
        if (p[2].revents) {
            struct signalfd_siginfo si;
            while (read(sfd, &si, sizeof si) > 0) {
            }
        }
        /* PID 1 reaps every orphan; ours ends the wait. */
        int st;
        pid_t w;
        while ((w = waitpid(-1, &st, WNOHANG)) > 0) {
            if (w == pid) {
                status = st;
                done = 1;
            }
        }
        if (done && !progressed) {
            if (ofd >= 0)
                close(ofd);
            if (efd >= 0)
                close(efd);
            break;
        }
    }
    char x[32];
    int xl = WIFEXITED(status) ? snprintf(x, sizeof x, "exit %d", WEXITSTATUS(status))
                               : snprintf(x, sizeof x, "signal %d", WTERMSIG(status));
    send_frame('X', x, (uint32_t)xl);
}

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: msb-agent PORT-DEVICE\n");
        return 2;
    }
    port = open_port(argv[1]);
    sigset_t chld;
    sigemptyset(&chld);
    sigaddset(&chld, SIGCHLD);
    sigprocmask(SIG_BLOCK, &chld, NULL);
    int sfd = signalfd(-1, &chld, SFD_CLOEXEC | SFD_NONBLOCK);
    if (sfd < 0)
        die_poweroff("signalfd");
    send_frame('H', "msb-agent 1", 11);
    static char payload[MAX_FRAME + 1];
    for (;;) {
        unsigned char hdr[5];
        if (!read_exact(port, hdr, sizeof hdr)) {
            errno = 0;
            die_poweroff("host closed the channel");
        }
        uint32_t len = hdr[1] | hdr[2] << 8 | hdr[3] << 16 | (uint32_t)hdr[4] << 24;
        if (len > MAX_FRAME) {
            errno = EMSGSIZE;
            die_poweroff("frame too large");
        }
        if (len)
            read_exact(port, payload, len);
        payload[len] = 0;
        switch (hdr[0]) {
        case 'R':
            run(payload, len, sfd);
            break;
        case 'Q':
            sync();
            unmount_all();
            sync();
            reboot(RB_AUTOBOOT);
            _exit(0);
        default: {
            const char msg[] = "msb-agent: unknown frame\n";
            send_frame('E', msg, sizeof msg - 1);
            send_frame('X', "exit 125", 8);
        }
        }
    }
}
