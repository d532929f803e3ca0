/* Standalone test of csrc/inodes.c, built by tests/test_inodes_c.py with
 * -fsanitize=address,undefined and run against a real directory (argv[1], empty).
 * Eviction needs open_by_handle_at (CAP_DAC_READ_SEARCH): without it those checks are
 * skipped and say so.
 */
#define _GNU_SOURCE
#include "inodes.c"
#include "grace.c"   /* inode_fd_retire's deferred close: at once here (no sections) */
#include "sys.c"     /* msb_openat2: a named node's open */

#include <stdio.h>
#include <stdlib.h>

#include "ctest.h"

static const char *dir;
static int dir_fd;

static int fd_is_open(int fd)
{
    return fcntl(fd, F_GETFD) >= 0;
}

static void make_file(const char *name)
{
    int fd = openat(dir_fd, name, O_CREAT | O_WRONLY | O_CLOEXEC, 0644);
    CHECK(fd >= 0);
    close(fd);
}

/* What the tree does for a lookup of a new name: an O_PATH fd, its fstat, add. */
static int add_name(struct msb_inodes *t, const char *name, struct msb_inode_info *out)
{
    int fd = openat(dir_fd, name, O_PATH | O_NOFOLLOW | O_CLOEXEC);
    CHECK(fd >= 0);
    struct stat st;
    CHECK(fstat(fd, &st) == 0);
    return msb_inodes_add(t, fd, st.st_dev, st.st_ino, st.st_mode, 0, out);
}

static struct msb_inodes *new_table(uint64_t max_fds, uint64_t fd_cap, uint64_t max_inodes)
{
    int root = open(dir, O_PATH | O_DIRECTORY | O_CLOEXEC);
    CHECK(root >= 0);
    struct stat st;
    CHECK(fstat(root, &st) == 0);
    struct msb_inodes *t = msb_inodes_new(root, st.st_dev, st.st_ino, st.st_mode,
                                          max_fds, fd_cap, max_inodes);
    CHECK(t != NULL);
    return t;
}

static void test_add_find_forget(void)
{
    struct msb_inodes *t = new_table(0, MSB_INODES_NONE, MSB_INODES_NONE);
    struct msb_inode_info a, b, r;
    make_file("a");
    CHECK(linkat(dir_fd, "a", dir_fd, "b", 0) == 0);
    CHECK(msb_inodes_get(t, 1, &r) == 0 && r.nlookup == 1 && r.kind == S_IFDIR);
    CHECK(add_name(t, "a", &a) == 0);
    CHECK(a.nodeid == 2 && a.nlookup == 1 && a.kind == S_IFREG && a.fd >= 0);
    /* Two names of one file: one node id, the second fd closed at once. */
    CHECK(add_name(t, "b", &b) == 0);
    CHECK(b.nodeid == a.nodeid && b.nlookup == 2 && b.fd == a.fd);
    CHECK(msb_inodes_find(t, a.dev, a.ino, 1, &r) == 0 && r.nlookup == 3);
    CHECK(msb_inodes_find(t, a.dev, a.ino + 12345, 1, &r) == -ENOENT);
    CHECK(msb_inodes_ref(t, a.nodeid) == 0);
    struct msb_inodes_stats s;
    msb_inodes_stats(t, &s);
    CHECK(s.inodes == 2 && s.nfds == 2);
    /* Forget down to zero closes the fd and the id is gone for good. */
    msb_inodes_forget(t, a.nodeid, 3);
    CHECK(fd_is_open(a.fd));
    msb_inodes_forget(t, a.nodeid, 1);
    CHECK(!fd_is_open(a.fd));
    CHECK(msb_inodes_get(t, a.nodeid, &r) == -EBADF);
    CHECK(msb_inodes_fd(t, a.nodeid) == -EBADF);
    CHECK(add_name(t, "a", &r) == 0 && r.nodeid == 3);   /* never reused */
    msb_inodes_stats(t, &s);
    CHECK(s.inodes == 2 && s.nfds == 2);
    /* Growing past the first index size keeps every inode findable. */
    char name[32];
    for (int i = 0; i < 3000; i++) {
        snprintf(name, sizeof name, "g%d", i);
        make_file(name);
        CHECK(add_name(t, name, &r) == 0 && r.nodeid == (uint64_t)4 + i);
    }
    for (uint64_t id = 4; id < 3004; id++)
        CHECK(msb_inodes_get(t, id, &r) == 0 && r.nodeid == id && r.fd >= 0);
    /* DESTROY: all but the root go, their fds closed, the root's count back to 1. */
    msb_inodes_ref(t, 1);
    int some_fd = r.fd;
    msb_inodes_clear(t);
    CHECK(!fd_is_open(some_fd));
    msb_inodes_stats(t, &s);
    CHECK(s.inodes == 1 && s.nfds == 1);
    CHECK(msb_inodes_get(t, 1, &r) == 0 && r.nlookup == 1 && fd_is_open(r.fd));
    for (int i = 0; i < 3000; i++) {
        snprintf(name, sizeof name, "g%d", i);
        unlinkat(dir_fd, name, 0);
    }
    unlinkat(dir_fd, "a", 0);
    unlinkat(dir_fd, "b", 0);
    msb_inodes_free(t);
}

static void test_hostile_counts(void)
{
    struct msb_inodes *t = new_table(0, MSB_INODES_NONE, MSB_INODES_NONE);
    struct msb_inode_info a, r;
    make_file("h");
    CHECK(add_name(t, "h", &a) == 0);
    /* Unknown ids, zero, the root and 2^64-1: ignored, nothing else moves. */
    msb_inodes_forget(t, 0, 1);
    msb_inodes_forget(t, UINT64_MAX, UINT64_MAX);
    msb_inodes_forget(t, 999, 5);
    msb_inodes_forget(t, 1, UINT64_MAX);
    CHECK(msb_inodes_get(t, 1, &r) == 0 && r.nlookup == 1);
    CHECK(msb_inodes_get(t, a.nodeid, &r) == 0 && r.nlookup == 1);
    CHECK(msb_inodes_ref(t, 0) == -EBADF && msb_inodes_ref(t, UINT64_MAX) == -EBADF);
    CHECK(msb_inodes_get(t, 0, &r) == -EBADF && msb_inodes_get(t, UINT64_MAX, &r) == -EBADF);
    CHECK(msb_inodes_fd(t, UINT64_MAX) == -EBADF);
    CHECK(msb_inodes_fd_traits(t, UINT64_MAX) == -EBADF);
    CHECK(msb_inodes_fd_traits(t, a.nodeid) == ((int64_t)a.fd << MSB_INODE_FD_SHIFT | S_IFREG));
    CHECK(msb_inodes_nopen_add(t, UINT64_MAX, 1) == -EBADF);
    /* nopen never goes below zero whatever the caller does. */
    CHECK(msb_inodes_nopen_add(t, a.nodeid, -1) == 0);
    CHECK(msb_inodes_nopen_add(t, a.nodeid, 1) == 1);
    /* More than held (and 2^64-1) takes them all, no wrap-around. */
    msb_inodes_ref(t, a.nodeid);
    msb_inodes_forget(t, a.nodeid, UINT64_MAX);
    CHECK(msb_inodes_get(t, a.nodeid, &r) == -EBADF);
    CHECK(!fd_is_open(a.fd));
    unlinkat(dir_fd, "h", 0);
    msb_inodes_free(t);
}

/* msb_inodes_hold: a forget to zero while held keeps the inode (fd open, id valid,
 * found by key) until the last unhold, which drops it unless it was looked up again;
 * a clear while held (DESTROY in the middle of a request) leaves nothing dangling. */
static void test_hold(void)
{
    struct msb_inodes *t = new_table(0, MSB_INODES_NONE, MSB_INODES_NONE);
    struct msb_inode_info a, b, r;
    make_file("ha");
    make_file("hb");
    CHECK(add_name(t, "ha", &a) == 0 && add_name(t, "hb", &b) == 0);
    msb_inodes_hold(t);
    msb_inodes_hold(t);   /* nested */
    msb_inodes_forget(t, a.nodeid, UINT64_MAX);
    msb_inodes_forget(t, a.nodeid, UINT64_MAX);   /* again: no double entry */
    msb_inodes_forget(t, b.nodeid, 1);
    CHECK(msb_inodes_get(t, a.nodeid, &r) == 0 && r.nlookup == 0 && fd_is_open(a.fd));
    CHECK(msb_inodes_fd(t, a.nodeid) == a.fd);
    CHECK(msb_inodes_find(t, b.dev, b.ino, 1, &r) == 0 && r.nodeid == b.nodeid);  /* back */
    msb_inodes_unhold(t);
    CHECK(msb_inodes_get(t, a.nodeid, &r) == 0);   /* still one hold */
    msb_inodes_unhold(t);
    CHECK(msb_inodes_get(t, a.nodeid, &r) == -EBADF && !fd_is_open(a.fd));
    CHECK(msb_inodes_get(t, b.nodeid, &r) == 0 && r.nlookup == 1 && fd_is_open(b.fd));
    msb_inodes_unhold(t);   /* unbalanced: ignored */
    msb_inodes_hold(t);
    msb_inodes_forget(t, b.nodeid, 1);
    msb_inodes_clear(t);    /* frees the doomed one too */
    msb_inodes_unhold(t);
    CHECK(msb_inodes_get(t, b.nodeid, &r) == -EBADF && !fd_is_open(b.fd));
    unlinkat(dir_fd, "ha", 0);
    unlinkat(dir_fd, "hb", 0);
    msb_inodes_free(t);
}

/* A table with an fd cache of max_fds, or NULL (said, as skipped) where this kernel or
 * these privileges give no open_by_handle_at to come back by. */
static struct msb_inodes *cached_table(uint64_t max_fds, const char *test)
{
    struct msb_inodes *t = new_table(max_fds, MSB_INODES_NONE, MSB_INODES_NONE);
    struct msb_inodes_stats s;
    msb_inodes_stats(t, &s);
    if (s.max_fds)
        return t;
    printf("%s: skipped (no open_by_handle_at here)\n", test);
    msb_inodes_free(t);
    return NULL;
}

/* The same with the fd cache on: a doomed node leaves the CLOCK ring (its `next` chains
 * t->doomed), so neither an eviction nor its own re-open meanwhile touches that list;
 * looked up again, the last unhold puts it back in the ring, to be evicted like any
 * other. (Run under ASan: a node on both lists corrupts one, or leaks.) */
static void test_hold_cached(void)
{
    struct msb_inodes *t = cached_table(2, "hold with a cache");
    if (!t)
        return;
    struct msb_inodes_stats s;
    enum { N = 10 };   /* c0..c2 doomed, c3..c9 cycled through a cache of 2 */
    struct msb_inode_info in[N], r;
    char name[16];
    for (int i = 0; i < N; i++) {
        snprintf(name, sizeof name, "c%d", i);
        make_file(name);
        if (i < 4)
            CHECK(add_name(t, name, &in[i]) == 0);
    }
    CHECK(msb_inodes_get(t, in[0].nodeid, &r) == 0 && r.fd == -1);   /* evicted */
    msb_inodes_hold(t);
    for (int i = 0; i < 3; i++)
        msb_inodes_forget(t, in[i].nodeid, 1);
    /* A doomed, evicted node re-opened while held: into no ring. */
    int fd0 = msb_inodes_fd(t, in[0].nodeid);
    CHECK(fd0 >= 0);
    int held_fd[3];
    for (int i = 0; i < 3; i++) {
        CHECK(msb_inodes_get(t, in[i].nodeid, &r) == 0 && r.nlookup == 0);
        held_fd[i] = r.fd;
    }
    /* Many inodes through the cache meanwhile: its evictions pass the doomed ones by. */
    for (int i = 4; i < N; i++) {
        snprintf(name, sizeof name, "c%d", i);
        CHECK(add_name(t, name, &in[i]) == 0);
    }
    msb_inodes_stats(t, &s);
    uint64_t evictions = s.evictions;
    for (int round = 0; round < 3; round++)
        for (int i = 3; i < N; i++)
            CHECK(msb_inodes_fd(t, in[i].nodeid) >= 0);
    msb_inodes_stats(t, &s);
    CHECK(s.evictions > evictions + N);
    for (int i = 0; i < 3; i++)
        CHECK(msb_inodes_get(t, in[i].nodeid, &r) == 0 && r.fd == held_fd[i]);
    CHECK(msb_inodes_find(t, in[1].dev, in[1].ino, 1, &r) == 0);   /* 1 looked up again */
    msb_inodes_unhold(t);
    CHECK(msb_inodes_get(t, in[0].nodeid, &r) == -EBADF && !fd_is_open(fd0));
    CHECK(msb_inodes_get(t, in[2].nodeid, &r) == -EBADF);
    CHECK(msb_inodes_get(t, in[1].nodeid, &r) == 0 && r.fd >= 0 && r.nlookup == 1);
    /* Back in the cache: using the others evicts it, and it comes back by handle. */
    for (int round = 0; round < 3; round++)
        for (int i = 3; i < N; i++)
            CHECK(msb_inodes_fd(t, in[i].nodeid) >= 0);
    CHECK(msb_inodes_get(t, in[1].nodeid, &r) == 0 && r.fd == -1);
    CHECK(msb_inodes_fd(t, in[1].nodeid) >= 0);
    msb_inodes_stats(t, &s);
    CHECK(s.inodes == 1 + 1 + (N - 3) && s.nfds <= 1 + 2 + 1);   /* root, cache, one over */
    msb_inodes_free(t);
    for (int i = 0; i < N; i++) {
        snprintf(name, sizeof name, "c%d", i);
        unlinkat(dir_fd, name, 0);
    }
}

static void test_bounds(void)
{
    struct msb_inodes *t = new_table(0, MSB_INODES_NONE, 3);
    struct msb_inode_info r;
    make_file("b0");
    make_file("b1");
    make_file("b2");
    CHECK(msb_inodes_check_room(t) == 0);
    CHECK(add_name(t, "b0", &r) == 0);
    CHECK(msb_inodes_check_room(t) == 0);
    CHECK(add_name(t, "b1", &r) == 0);
    CHECK(msb_inodes_check_room(t) == -ENFILE);   /* 3 held, the root included */
    msb_inodes_forget(t, r.nodeid, 1);
    CHECK(msb_inodes_check_room(t) == 0);
    msb_inodes_free(t);
    /* fd_cap without a cache: nothing can be evicted, so the bound holds. */
    t = new_table(0, 2, MSB_INODES_NONE);
    CHECK(msb_inodes_check_room(t) == 0);
    CHECK(add_name(t, "b2", &r) == 0);
    CHECK(msb_inodes_check_room(t) == -ENFILE);
    msb_inodes_free(t);
    unlinkat(dir_fd, "b0", 0);
    unlinkat(dir_fd, "b1", 0);
    unlinkat(dir_fd, "b2", 0);
}

static void test_eviction(void)
{
    struct msb_inodes *t = cached_table(4, "eviction");
    if (!t)
        return;
    struct msb_inodes_stats s;
    struct msb_inode_info info[12], r;
    char name[16];
    for (int i = 0; i < 12; i++) {
        snprintf(name, sizeof name, "e%d", i);
        make_file(name);
        CHECK(add_name(t, name, &info[i]) == 0);
    }
    msb_inodes_stats(t, &s);
    CHECK(s.inodes == 13 && s.nfds == 4 + 1 && s.evictions == 8);
    CHECK(msb_inodes_get(t, info[0].nodeid, &r) == 0 && r.fd == -1);
    /* Touching an evicted inode re-opens the same file from its handle. */
    int fd = msb_inodes_fd(t, info[0].nodeid);
    CHECK(fd >= 0);
    struct stat st;
    CHECK(fstat(fd, &st) == 0 && st.st_ino == info[0].ino);
    msb_inodes_stats(t, &s);
    CHECK(s.reopens == 1 && s.nfds == 5);
    /* The inode just touched survives the eviction its own reopen caused. */
    CHECK(msb_inodes_get(t, info[0].nodeid, &r) == 0 && r.fd == fd);
    /* An open file is never evicted; an unlinked one is pinned, never evicted. */
    CHECK(msb_inodes_nopen_add(t, info[1].nodeid, 1) == 1);
    int fd1 = msb_inodes_fd(t, info[1].nodeid);
    CHECK(fd1 >= 0);
    CHECK(unlinkat(dir_fd, "e11", 0) == 0);
    for (int round = 0; round < 3; round++)
        for (int i = 2; i < 11; i++)
            CHECK(msb_inodes_fd(t, info[i].nodeid) >= 0);
    CHECK(msb_inodes_get(t, info[1].nodeid, &r) == 0 && r.fd == fd1);
    CHECK(msb_inodes_get(t, info[11].nodeid, &r) == 0);
    CHECK(r.fd == -1 || r.pinned);   /* evicted before the unlink, or pinned after */
    /* Adding a name of an evicted inode hands it the fresh fd instead of re-opening. */
    CHECK(msb_inodes_get(t, info[3].nodeid, &r) == 0);
    if (r.fd == -1) {
        CHECK(add_name(t, "e3", &r) == 0 && r.fd >= 0 && r.nodeid == info[3].nodeid);
        CHECK(r.nlookup == 2);
    }
    /* fd_cap with a cache: check_room evicts one instead of failing. */
    msb_inodes_free(t);
    t = new_table(2, 3, MSB_INODES_NONE);
    CHECK(add_name(t, "e0", &r) == 0 && add_name(t, "e1", &r) == 0);
    msb_inodes_stats(t, &s);
    CHECK(s.nfds == 3);
    /* Both were just used: the hand's pass gives each its second chance and fails... */
    CHECK(msb_inodes_check_room(t) == -ENFILE);
    /* ...and the next one evicts instead of failing. */
    CHECK(msb_inodes_check_room(t) == 0);
    msb_inodes_stats(t, &s);
    CHECK(s.nfds == 2 && s.evictions == 1);
    msb_inodes_free(t);
    for (int i = 0; i < 11; i++) {
        snprintf(name, sizeof name, "e%d", i);
        unlinkat(dir_fd, name, 0);
    }
}

/* What csrc/lookup.c does for a name: fstatat, then add it by name (no fd opened). */
static int add_named_at(struct msb_inodes *t, int at, uint64_t parent, const char *name,
                        struct msb_inode_info *out)
{
    struct stat st;
    int64_t btime;
    CHECK(msb_statx_at(at, name, AT_SYMLINK_NOFOLLOW, &st, &btime) == 0);
    return msb_inodes_add_named(t, parent, name, strlen(name), st.st_dev, st.st_ino,
                                st.st_mode, btime, out);
}

static int add_by_name(struct msb_inodes *t, uint64_t parent, const char *name,
                       struct msb_inode_info *out)
{
    return add_named_at(t, dir_fd, parent, name, out);
}

static void test_named(void)
{
    struct msb_inodes *t = new_table(0, MSB_INODES_NONE, MSB_INODES_NONE);
    struct msb_inode_info a, r;
    struct msb_inodes_stats s;
    int64_t born;
    make_file("n1");
    /* Until the tree says how it opens a name, the caller opens it. */
    CHECK(add_by_name(t, 1, "n1", &a) == -ENOTSUP);
    msb_inodes_set_open(t, O_PATH | O_NOFOLLOW | O_CLOEXEC, RESOLVE_BENEATH);
    CHECK(msb_inodes_add_named(t, 1, "a/b", 3, 1, 2, S_IFREG, 0, &r) == -EINVAL);
    CHECK(msb_inodes_add_named(t, 1, "", 0, 1, 2, S_IFREG, 0, &r) == -EINVAL);
    CHECK(msb_inodes_add_named(t, 1, "..", 2, 1, 2, S_IFDIR, 0, &r) == -EINVAL);
    CHECK(add_by_name(t, 1, "n1", &a) == 1);
    CHECK(a.named && a.fd == -1 && a.nlookup == 1 && a.kind == S_IFREG);
    msb_inodes_stats(t, &s);
    CHECK(s.inodes == 2 && s.nfds == 1 && s.named == 1 && s.opens == 0);
    /* Found again by (dev, ino), through a second name: the same node, one more lookup. */
    CHECK(linkat(dir_fd, "n1", dir_fd, "n1b", 0) == 0);
    CHECK(add_by_name(t, 1, "n1b", &r) == 0 && r.nodeid == a.nodeid && r.nlookup == 2);
    /* The first use opens it, from where it was last found (n1 is gone now). */
    CHECK(unlinkat(dir_fd, "n1", 0) == 0);
    int fd = msb_inodes_fd(t, a.nodeid);
    CHECK(fd >= 0);
    CHECK(msb_inodes_get(t, a.nodeid, &r) == 0 && !r.named && r.fd == fd);
    CHECK(msb_inodes_fd(t, a.nodeid) == fd);
    msb_inodes_stats(t, &s);
    CHECK(s.named == 0 && s.opens == 1 && s.nfds == 2);
    msb_inodes_forget(t, a.nodeid, 2);
    CHECK(msb_inodes_get(t, a.nodeid, &r) == -EBADF && !fd_is_open(fd));

    /* The name holds another object by the first use: ESTALE, nothing opened or kept;
     * found again under a name that is it, the node opens from there. */
    make_file("n2");
    CHECK(add_by_name(t, 1, "n2", &a) == 1);
    CHECK(renameat(dir_fd, "n2", dir_fd, "n2moved") == 0);
    make_file("n2");   /* another inode at the old name */
    CHECK(msb_inodes_fd(t, a.nodeid) == -ESTALE);
    CHECK(msb_inodes_fd_traits(t, a.nodeid) == -ESTALE);
    msb_inodes_stats(t, &s);
    CHECK(s.named == 1 && s.nfds == 1);
    CHECK(add_by_name(t, 1, "n2moved", &r) == 0 && r.nodeid == a.nodeid && r.named);
    CHECK(msb_inodes_fd(t, a.nodeid) >= 0);
    /* A directory's name now a symlink's: ESTALE (the open checks number and kind). */
    CHECK(mkdirat(dir_fd, "n3", 0755) == 0);
    struct msb_inode_info d;
    CHECK(add_by_name(t, 1, "n3", &d) == 1 && d.kind == S_IFDIR);
    CHECK(unlinkat(dir_fd, "n3", AT_REMOVEDIR) == 0);
    CHECK(symlinkat("n2moved", dir_fd, "n3") == 0);
    CHECK(msb_inodes_fd(t, d.nodeid) == -ESTALE);
    /* A node that says another kind than its number now has is not joined: a new node. */
    struct stat st;
    CHECK(fstatat(dir_fd, "n3", &st, AT_SYMLINK_NOFOLLOW) == 0);
    CHECK(msb_inodes_add_named(t, 1, "n3", 2, d.dev, d.ino, st.st_mode, 0, &r) == 1);
    CHECK(r.nodeid != d.nodeid && r.kind == S_IFLNK);
    msb_inodes_forget(t, r.nodeid, 1);
    /* A named node beneath a named parent: the parent opens first (its own name). */
    CHECK(unlinkat(dir_fd, "n3", 0) == 0);
    CHECK(mkdirat(dir_fd, "n4", 0755) == 0);
    int sub = openat(dir_fd, "n4", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    CHECK(sub >= 0);
    int f = openat(sub, "x", O_CREAT | O_WRONLY | O_CLOEXEC, 0644);
    CHECK(f >= 0);
    close(f);
    struct msb_inode_info dir4, x;
    CHECK(add_by_name(t, 1, "n4", &dir4) == 1 && dir4.named);
    CHECK(add_named_at(t, sub, dir4.nodeid, "x", &x) == 1);
    CHECK(msb_inodes_fd(t, x.nodeid) == -ESTALE);   /* its parent was never opened */
    CHECK(msb_inodes_fd(t, dir4.nodeid) >= 0);
    CHECK(msb_inodes_fd(t, x.nodeid) >= 0);
    /* A named node pins its parent: forgotten by the client, the parent stays while
     * the child is named (x, opened, pins nothing), goes with the child's forget. */
    msb_inodes_forget(t, x.nodeid, 1);
    CHECK(unlinkat(sub, "x", 0) == 0);
    f = openat(sub, "y", O_CREAT | O_WRONLY | O_CLOEXEC, 0644);
    CHECK(f >= 0);
    close(f);
    CHECK(add_named_at(t, sub, dir4.nodeid, "y", &r) == 1);
    CHECK(msb_inodes_get(t, dir4.nodeid, &d) == 0 && d.nlookup == 2);
    msb_inodes_forget(t, dir4.nodeid, 1);
    CHECK(msb_inodes_get(t, dir4.nodeid, &d) == 0 && d.nlookup == 1);
    msb_inodes_forget(t, r.nodeid, 1);
    CHECK(msb_inodes_get(t, r.nodeid, &d) == -EBADF);
    CHECK(msb_inodes_get(t, dir4.nodeid, &d) == -EBADF);   /* with its last pin */
    /* ...held while Python runs: both go at the unhold, the child first. */
    CHECK(add_by_name(t, 1, "n4", &dir4) == 1 && msb_inodes_fd(t, dir4.nodeid) >= 0);
    CHECK(add_named_at(t, sub, dir4.nodeid, "y", &r) == 1);
    msb_inodes_hold(t);
    msb_inodes_forget(t, dir4.nodeid, 1);
    msb_inodes_forget(t, r.nodeid, 1);
    CHECK(msb_inodes_get(t, dir4.nodeid, &d) == 0 && msb_inodes_get(t, r.nodeid, &d) == 0);
    msb_inodes_unhold(t);
    CHECK(msb_inodes_get(t, r.nodeid, &d) == -EBADF && msb_inodes_get(t, dir4.nodeid, &d) == -EBADF);
    /* A client taking away more than it holds: the parent goes, the child is ESTALE,
     * nothing else (node ids are never reused). */
    CHECK(add_by_name(t, 1, "n4", &dir4) == 1 && msb_inodes_fd(t, dir4.nodeid) >= 0);
    CHECK(add_named_at(t, sub, dir4.nodeid, "y", &r) == 1);
    msb_inodes_forget(t, dir4.nodeid, UINT64_MAX);
    CHECK(msb_inodes_fd(t, r.nodeid) == -ESTALE);
    msb_inodes_forget(t, r.nodeid, 1);
    CHECK(unlinkat(sub, "y", 0) == 0);
    close(sub);
    CHECK(unlinkat(dir_fd, "n4", AT_REMOVEDIR) == 0);
    /* Renamed through us: the named node follows (no ESTALE at its first use). */
    make_file("n7");
    CHECK(add_by_name(t, 1, "n7", &r) == 1);
    CHECK(renameat(dir_fd, "n7", dir_fd, "n7moved") == 0);
    msb_inodes_moved(t, 1, dir_fd, "n7moved", 7);
    CHECK(msb_inodes_fd(t, r.nodeid) >= 0);
    msb_inodes_forget(t, r.nodeid, 1);
    /* ...but never to another object that happens to be there. */
    CHECK(add_by_name(t, 1, "n7moved", &r) == 1);
    make_file("n7other");
    CHECK(renameat(dir_fd, "n7moved", dir_fd, "n7gone") == 0);
    msb_inodes_moved(t, 1, dir_fd, "n7other", 7);
    CHECK(msb_inodes_fd(t, r.nodeid) == -ESTALE);
    msb_inodes_moved(t, 1, dir_fd, "n7gone", 6);
    CHECK(msb_inodes_fd(t, r.nodeid) >= 0);
    msb_inodes_forget(t, r.nodeid, 1);
    /* Unnamed through us: opened first, so its node still reaches it (nlink 0). */
    make_file("n8");
    CHECK(add_by_name(t, 1, "n8", &r) == 1);
    msb_inodes_removing(t, 1, dir_fd, "n8", 2);
    CHECK(unlinkat(dir_fd, "n8", 0) == 0);
    fd = msb_inodes_fd(t, r.nodeid);
    CHECK(fd >= 0 && fstat(fd, &st) == 0 && st.st_nlink == 0);
    msb_inodes_forget(t, r.nodeid, 1);
    /* A reused number (faked: the same dev, ino and kind, another birth): the named
     * node is not joined, by name or by fd, and its own open says ESTALE. */
    make_file("n6");
    CHECK(msb_statx_at(dir_fd, "n6", AT_SYMLINK_NOFOLLOW, &st, &born) == 0);
    struct msb_inode_info old, fresh;
    CHECK(msb_inodes_add_named(t, 1, "n6", 2, st.st_dev, st.st_ino, st.st_mode, born - 1,
                               &old) == 1);
    CHECK(add_by_name(t, 1, "n6", &fresh) == 1 && fresh.nodeid != old.nodeid);
    CHECK(msb_inodes_fd(t, old.nodeid) == -ESTALE);
    CHECK(msb_inodes_fd(t, fresh.nodeid) >= 0);
    msb_inodes_forget(t, fresh.nodeid, 1);
    CHECK(msb_inodes_add_named(t, 1, "n6", 2, st.st_dev, st.st_ino, st.st_mode, born - 1,
                               &old) == 1);
    CHECK(add_name(t, "n6", &fresh) == 0 && fresh.nodeid != old.nodeid && fresh.fd >= 0);
    msb_inodes_forget(t, fresh.nodeid, 1);
    /* The same birth, by fd: the named node gets the fd (one node per file). Not found
     * by (dev, ino) alone while named (nothing there tells a reused number). */
    CHECK(add_by_name(t, 1, "n6", &r) == 1);
    CHECK(msb_inodes_find(t, r.dev, r.ino, 0, &fresh) == -ENOENT);
    CHECK(add_name(t, "n6", &fresh) == 0 && fresh.nodeid == r.nodeid && fresh.nlookup == 2);
    CHECK(!fresh.named && fresh.fd >= 0);
    CHECK(msb_inodes_find(t, r.dev, r.ino, 0, &fresh) == 0 && fresh.nodeid == r.nodeid);
    /* Forgotten while named, cleared while named: the names are freed (ASan's leak check). */
    make_file("n5");
    CHECK(add_by_name(t, 1, "n5", &r) == 1);
    msb_inodes_forget(t, r.nodeid, 1);
    CHECK(add_by_name(t, 1, "n5", &r) == 1);
    msb_inodes_clear(t);
    msb_inodes_stats(t, &s);
    CHECK(s.named == 0 && s.inodes == 1);
    msb_inodes_free(t);

    /* Bounds: a named node counts against max_inodes; its open against fd_cap. */
    t = new_table(0, 2, 2);
    msb_inodes_set_open(t, O_PATH | O_NOFOLLOW | O_CLOEXEC, RESOLVE_BENEATH);
    CHECK(add_by_name(t, 1, "n5", &a) == 1);
    CHECK(add_by_name(t, 1, "n2", &r) == -ENFILE);
    CHECK(msb_inodes_fd(t, a.nodeid) >= 0);   /* fds: root + this one = fd_cap */
    msb_inodes_free(t);
    t = new_table(0, 1, 3);
    msb_inodes_set_open(t, O_PATH | O_NOFOLLOW | O_CLOEXEC, RESOLVE_BENEATH);
    CHECK(add_by_name(t, 1, "n5", &a) == 1);
    CHECK(msb_inodes_fd(t, a.nodeid) == -ENFILE);   /* the root holds the one fd */
    CHECK(msb_inodes_get(t, a.nodeid, &r) == 0 && r.named);
    msb_inodes_free(t);
    unlinkat(dir_fd, "n1b", 0);
    unlinkat(dir_fd, "n2", 0);
    unlinkat(dir_fd, "n2moved", 0);
    unlinkat(dir_fd, "n5", 0);
    unlinkat(dir_fd, "n6", 0);
    unlinkat(dir_fd, "n7gone", 0);
    unlinkat(dir_fd, "n7other", 0);
}

/* Threads opening the same named nodes at once: each node keeps one fd, every thread
 * gets that one, the others' opens are closed (the fd count at exit says so). */
#define RACE_NODES 64
#define RACE_THREADS 4
static struct msb_inodes *race_table;
static uint64_t race_ids[RACE_NODES];
static int race_fds[RACE_THREADS][RACE_NODES];

static void *race_open(void *arg)
{
    int k = (int)(intptr_t)arg;
    for (int i = 0; i < RACE_NODES; i++)
        race_fds[k][i] = msb_inodes_fd(race_table, race_ids[(i + k * 7) % RACE_NODES]);
    return NULL;
}

static void test_named_race(void)
{
    struct msb_inodes *t = race_table = new_table(0, MSB_INODES_NONE, MSB_INODES_NONE);
    msb_inodes_set_open(t, O_PATH | O_NOFOLLOW | O_CLOEXEC, RESOLVE_BENEATH);
    char name[16];
    struct msb_inode_info r;
    for (int i = 0; i < RACE_NODES; i++) {
        snprintf(name, sizeof name, "r%d", i);
        make_file(name);
        CHECK(add_by_name(t, 1, name, &r) == 1);
        race_ids[i] = r.nodeid;
    }
    pthread_t th[RACE_THREADS];
    for (int k = 0; k < RACE_THREADS; k++)
        CHECK(pthread_create(&th[k], NULL, race_open, (void *)(intptr_t)k) == 0);
    for (int k = 0; k < RACE_THREADS; k++)
        pthread_join(th[k], NULL);
    struct msb_inodes_stats s;
    msb_inodes_stats(t, &s);
    CHECK(s.named == 0 && s.opens == RACE_NODES && s.nfds == RACE_NODES + 1);
    for (int i = 0; i < RACE_NODES; i++) {
        int fd = msb_inodes_fd(t, race_ids[i]);
        for (int k = 0; k < RACE_THREADS; k++)
            CHECK(race_fds[k][(i - k * 7 % RACE_NODES + RACE_NODES) % RACE_NODES] == fd);
    }
    msb_inodes_free(t);
    /* The same opens against fd_cap: threads opening at once never pass it together
     * (each open counts its fd while the table lock is dropped). */
    for (int round = 0; round < 20; round++) {
        t = race_table = new_table(0, 10, MSB_INODES_NONE);
        msb_inodes_set_open(t, O_PATH | O_NOFOLLOW | O_CLOEXEC, RESOLVE_BENEATH);
        for (int i = 0; i < RACE_NODES; i++) {
            snprintf(name, sizeof name, "r%d", i);
            CHECK(add_by_name(t, 1, name, &r) == 1);
            race_ids[i] = r.nodeid;
        }
        for (int k = 0; k < RACE_THREADS; k++)
            CHECK(pthread_create(&th[k], NULL, race_open, (void *)(intptr_t)k) == 0);
        for (int k = 0; k < RACE_THREADS; k++)
            pthread_join(th[k], NULL);
        msb_inodes_stats(t, &s);
        CHECK(s.nfds == 10);
        msb_inodes_free(t);
    }
    for (int i = 0; i < RACE_NODES; i++) {
        snprintf(name, sizeof name, "r%d", i);
        unlinkat(dir_fd, name, 0);
    }
}

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: %s EMPTY_DIR\n", argv[0]);
        return 2;
    }
    dir = argv[1];
    dir_fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dir_fd < 0) {
        perror(dir);
        return 2;
    }
    int fds_before = 0;
    for (int fd = 0; fd < 1024; fd++)
        fds_before += fd_is_open(fd);
    test_add_find_forget();
    test_hostile_counts();
    test_hold();
    test_hold_cached();
    test_bounds();
    test_eviction();
    test_named();
    test_named_race();
    int fds_after = 0;
    for (int fd = 0; fd < 1024; fd++)
        fds_after += fd_is_open(fd);
    CHECK(fds_after == fds_before);   /* every table closed all it held */
    if (failures) {
        fprintf(stderr, "%d failure(s)\n", failures);
        return 1;
    }
    printf("all passed\n");
    return 0;
}
