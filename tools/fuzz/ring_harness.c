/* In-process fuzz harness for csrc/virtq.c + csrc/fuse_datapath.c, built with
 * -fsanitize=address,undefined by tools/fuzz/native.py.
 *
 * Guest memory: two regions of one memfd (gpa 0..1 MiB and 2..3 MiB: a hole between),
 * each mapped with PROT_NONE guard pages (msb_map_guarded). Per input, fuzz_one() reads
 * the input bytes as a recipe: ring flags, a few chains of descriptors (each a FUSE
 * READ/WRITE/other request laid in scratch memory, then damaged: address outside or
 * across regions, zero/huge lengths, loops, next out of range, direction swaps, lying
 * indirect tables, lying FUSE lengths, an fh that is or is not in the handle table),
 * avail idx jumps; then runs msb_fs_serve and answers every slow chain with
 * msb_fs_gather + msb_fs_answer, as msbfs/virtiofs.py does. After a broken ring it is
 * set up again. Nothing here checks results: the sanitizers and the guard pages are the
 * oracle (an access outside the regions, UB, a leak).
 *
 * Linked with virtq.c and fuse_datapath.c as their own units (they share static names),
 * and the metadata path (fuse_meta.c, inodes.c) attached over a small real directory, so
 * LOOKUP/GETATTR/FORGET/BATCH_FORGET/STATFS chains with hostile names, counts and node
 * ids reach it too.
 *
 *   ring_harness SEED COUNT     seeded inputs (xorshift), prints counts, done=1 at the end
 *   (clang -fsanitize=fuzzer: LLVMFuzzerTestOneInput is the libFuzzer entry point)
 */
#define _GNU_SOURCE
#include "fuse_datapath.h"
#include "fuse_meta.h"
#include "inodes.h"
#include "virtq.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/fuse.h>
#include <sys/stat.h>
#include <string.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/xattr.h>
#include <ftw.h>
#include <unistd.h>

#define VRING_DESC_F_NEXT 1
#define VRING_DESC_F_WRITE 2
#define VRING_DESC_F_INDIRECT 4
#define REG (1u << 20)
#define QN 16
#define UVA 0x7f0000000000ull
enum { DESC_OFF = 0, AVAIL_OFF = 0x1000, USED_OFF = 0x2000, SCRATCH = 0x10000 };

static struct msb_memtable mem;
static uint8_t *ram0, *ram1;
static struct msb_vq vq;
static struct msb_fs_table *table;
static struct msb_chain slow[8];
static struct msb_fs_stats st;
static int data_fd;
static struct msb_inodes *inodes;
static struct msb_meta *meta;
static char meta_dir[] = "/tmp/msbfs-ring-harness-XXXXXX";
static int list_fd = -1;   /* a directory handle of meta_dir, fh list_fh */
static int64_t list_fh;
static uint64_t served, broken, inputs, damaged[12], kick_loops;

struct cursor { const uint8_t *p; size_t n, i; };

static uint64_t take(struct cursor *c, int bytes)
{
    uint64_t v = 0;
    for (int k = 0; k < bytes; k++)
        v |= (uint64_t)(c->i < c->n ? c->p[c->i++] : 0) << (8 * k);
    return v;
}

/* "a".."d" again (UNLINK chains remove them), so LOOKUPs keep finding names. */
static void refill_names(void)
{
    for (int i = 0; i < 4; i++) {
        char path[64];
        snprintf(path, sizeof path, "%s/%c", meta_dir, 'a' + i);
        int f = open(path, O_CREAT | O_WRONLY | O_CLOEXEC, 0644);
        if (f >= 0)
            close(f);
    }
    /* READLINK's symlink (RENAME/UNLINK chains move or remove it too) */
    char lpath[64];
    snprintf(lpath, sizeof lpath, "%s/l0", meta_dir);
    if (symlink("a", lpath) < 0 && errno != EEXIST)
        perror(lpath);
    /* GETXATTR's values: "a" small, "b" past fuse_xattr.c's 4 KiB buffer where the
     * filesystem takes it, none on "c" (LISTXATTR's empty list) */
    static char big[6000];
    memset(big, 'v', sizeof big);
    for (int i = 0; i < 2; i++) {
        char path[64];
        snprintf(path, sizeof path, "%s/%c", meta_dir, 'a' + i);
        if (setxattr(path, "user.virtiofs.hot", big, i ? sizeof big : 40, 0) < 0)
            setxattr(path, "user.virtiofs.hot", big, 3000, 0);
    }
}

static void setup(void)
{
    int fd = memfd_create("ring_harness", MFD_CLOEXEC);
    if (fd < 0 || ftruncate(fd, 4 * REG) < 0) { perror("memfd"); exit(2); }
    ram0 = msb_map_guarded(fd, REG, 4096, 65536);
    ram1 = msb_map_guarded(fd, REG, 4096 + 2 * REG, 65536);
    if (!ram0 || !ram1) { perror("map"); exit(2); }
    close(fd);
    mem.n = 2;
    mem.regs[0] = (struct msb_memreg){ 0, REG, UVA, ram0 };
    mem.regs[1] = (struct msb_memreg){ 2 * REG, REG, UVA + 2 * REG, ram1 };
    data_fd = memfd_create("ring_harness_data", MFD_CLOEXEC);
    if (data_fd < 0 || ftruncate(data_fd, 1 << 20) < 0) { perror("data"); exit(2); }
    table = msb_fs_table_new();
    msb_fs_table_set(table, 7, data_fd, MSB_FS_READ | MSB_FS_WRITE);
    msb_fs_table_set(table, 8, data_fd, MSB_FS_READ);
    /* The metadata path over a small real directory: LOOKUP/GETATTR/FORGET/STATFS
     * chains reach csrc/fuse_meta.c and the inode table (fd cache of 2: evictions). */
    if (!mkdtemp(meta_dir)) { perror("mkdtemp"); exit(2); }
    int dir = open(meta_dir, O_PATH | O_DIRECTORY | O_CLOEXEC);
    struct stat sb;
    if (dir < 0 || fstat(dir, &sb) < 0) { perror(meta_dir); exit(2); }
    for (int i = 0; i < 4; i++) {
        char name[2] = { (char)('a' + i), 0 };
        int f = openat(dir, name, O_CREAT | O_WRONLY | O_CLOEXEC, 0644);
        if (f >= 0)
            close(f);
    }
    inodes = msb_inodes_new(dir, sb.st_dev, sb.st_ino, sb.st_mode, 2, 64, 16);
    meta = msb_meta_new(inodes);
    if (!inodes || !meta) abort();
    meta->root_dev = sb.st_dev;
    /* UNLINK/RMDIR/ACCESS (csrc/fuse_names.c): as root, ACCESS switches to the caller
     * the header names (and back); a few (kind, mask) pairs the policy refuses. */
    meta->names.remove = meta->names.access = 1;
    meta->names.creds = geteuid() == 0 ? MSB_NAMES_CREDS_SWITCH : MSB_NAMES_CREDS_OWN;
    meta->names.own_uid = geteuid();
    meta->names.own_gid = getegid();
    meta->names.mkdir = 1;                      /* MKDIR: nosuid's stored mode */
    meta->names.stored_mask = 01777;
    meta->names.daemon_umask = 022;
    meta->setattr.on = meta->setattr.mode = 1;  /* SETATTR: chmod with that mask, times */
    /* RENAME(2)/READLINK/SYMLINK/LINK (csrc/fuse_names2.c) */
    meta->names2.rename = meta->names2.readlink = meta->names2.symlink = meta->names2.link = 1;
    meta->names.access_errno[(S_IFREG >> 12) * 8 + 1] = 13;   /* noexec: X_OK, EACCES */
    meta->names.access_errno[(S_IFDIR >> 12) * 8 + 2] = 30;   /* readonly: W_OK, EROFS */
    meta->mode_mask = ~06000u;
    meta->hide_rdev = 1;
    meta->timeout_sec = 1;
    meta->lookup_flags = O_PATH | O_NOFOLLOW | O_CLOEXEC;
    meta->resolve = 0x08 | 0x02;   /* RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS */
    meta->statfs = 1;
    meta->enabled = 1;
    msb_meta_set_ready(meta, 1);
    msb_meta_attach(table, meta);
    /* An OPENDIR'd handle of the root (node 1, as the tree adds it): READDIR(PLUS)
     * chains reach csrc/fuse_readdir.c (the stream lock, getdents, lookups of "a".."d"). */
    list_fd = open(meta_dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (list_fd < 0) { perror(meta_dir); exit(2); }
    list_fh = msb_handles_add(table, list_fd, O_RDONLY | O_DIRECTORY, 1, S_IFDIR, MSB_FS_DIR, 0);
    if (list_fh < 0) abort();
    /* OPEN/OPENDIR/RELEASE/RELEASEDIR (csrc/fuse_handles.c): the handles above stay
     * (marked Python's, which C never releases); what C opens is bounded by the table
     * and released again by later chains. noexec's EACCES for a regular file's
     * FMODE_EXEC (index bit 2: the mask's bits gathered low to high), readonly's EROFS
     * for a directory's write access. */
    msb_handles_mark_python(table, 7);
    msb_handles_mark_python(table, 8);
    msb_handles_mark_python(table, (uint64_t)list_fh);
    table->max_handles = 24;
    struct msb_open *o = &meta->open;
    o->open = o->release = o->trunc = 1;
    o->table_mask = O_ACCMODE | O_TRUNC | O_APPEND | 0x20;
    o->python_mask = 0x80000000u;
    for (uint32_t i = 0; i < 32; i++) {
        o->open_errno[0][i] = (i & 4) ? 13 : 0;
        o->open_errno[1][i] = (i & 3) ? 30 : 0;
    }
    o->pass_mask = O_ACCMODE | O_APPEND | O_NONBLOCK | O_DSYNC | O_SYNC | O_NOATIME | O_TRUNC;
    o->add_flags = O_CLOEXEC;
    o->file_open_flags = 1;
    o->opendir_flags = O_RDONLY | O_DIRECTORY | O_CLOEXEC;
    /* GETXATTR/LISTXATTR (csrc/fuse_xattr.c): a refused hot name, one passed through,
     * one renamed (values: refill_names) */
    struct msb_xattr *x = &meta->xattr;
    x->get = x->list = 1;
    static const struct { const char *client, *host; int err; } hot[] = {
        { "security.capability", "", 61 }, { "system.posix_acl_access",
        "system.posix_acl_access", 0 }, { "user.hot", "user.virtiofs.hot", 0 } };
    for (int i = 0; i < 3; i++) {
        x->hot[i].client_len = (uint32_t)strlen(hot[i].client);
        memcpy(x->hot[i].client, hot[i].client, x->hot[i].client_len);
        strcpy(x->hot[i].host, hot[i].host);
        x->hot[i].err = hot[i].err;
    }
    refill_names();
}

/* A metadata request's body: a name (sometimes damaged) or forget counts. */
static uint32_t put_meta_body(struct cursor *c, uint32_t opcode, uint8_t *p)
{
    if (opcode == FUSE_LOOKUP || opcode == FUSE_UNLINK || opcode == FUSE_RMDIR) {
        static const char *names[] = { "a", "b", "c", "d", "missing", ".", "..", "a/b" };
        const char *n = names[take(c, 1) % 8];
        uint32_t len = (uint32_t)strlen(n);
        memcpy(p, n, len + 1);
        if (take(c, 1) < 32)
            return len;                          /* no NUL */
        if (take(c, 1) < 16) {
            uint32_t big = 250 + (uint32_t)take(c, 1) % 12;   /* around NAME_MAX */
            memset(p, 'x', big);
            p[big] = 0;
            return big + 1;
        }
        return len + 1;
    }
    if (opcode == FUSE_MKDIR) {   /* mode, umask (sometimes one Python refuses), a name */
        struct fuse_mkdir_in mi = { (uint32_t)take(c, 2),
                                    take(c, 1) < 16 ? (uint32_t)take(c, 4) : 022 };
        static const char *names[] = { "m0", "m1", "a", ".", "a/b" };
        const char *n = names[take(c, 1) % 5];
        uint32_t len = (uint32_t)strlen(n);
        memcpy(p, &mi, sizeof mi);
        memcpy(p + sizeof mi, n, len + 1);
        return (uint32_t)sizeof mi + len + (take(c, 1) < 32 ? 0 : 1);
    }
    if (opcode == FUSE_RENAME || opcode == FUSE_RENAME2 || opcode == FUSE_SYMLINK
        || opcode == FUSE_LINK) {
        /* args (a new parent or old node: any id, now and then none; flags the tree
         * takes, refuses or the kernel refuses), then one or two names: existing, new,
         * "."/"..", "a/b", around NAME_MAX, a target up to past PATH_MAX; sometimes
         * the last NUL missing */
        static const uint32_t flags[] = { 0, 1, 2, 4, 3, 6, 8, 0xffffffffu };
        static const char *names[] = { "a", "b", "c", "d", "r0", "l0", "m0", "missing",
                                       ".", "..", "a/b", "" };
        uint8_t which = (uint8_t)take(c, 1);   /* mostly the root: both parents known */
        uint64_t id = which < 8 ? UINT64_MAX : which < 128 ? 1 : take(c, 1) % 12;
        uint32_t n = 0;
        if (opcode != FUSE_SYMLINK) {
            memcpy(p, &id, 8);
            n = 8;
        }
        if (opcode == FUSE_RENAME2) {
            uint32_t f[2] = { flags[take(c, 1) % 8], 0 };
            memcpy(p + n, f, 8);
            n += 8;
        }
        int strings = opcode == FUSE_LINK ? 1 : 2;
        for (int k = 0; k < strings; k++) {
            uint32_t len;
            uint8_t how = (uint8_t)take(c, 1);
            if (how < 16 || (opcode == FUSE_SYMLINK && k == 1 && how < 40)) {
                len = how < 8 ? 250 + (uint32_t)take(c, 1) % 12 : 4090 + (uint32_t)take(c, 1) % 8;
                memset(p + n, 'x', len);
            } else {
                const char *s = names[take(c, 1) % 12];
                len = (uint32_t)strlen(s);
                memcpy(p + n, s, len);
            }
            p[n + len] = 0;
            n += len + (k == strings - 1 && take(c, 1) < 16 ? 0 : 1);
        }
        return n;
    }
    if (opcode == FUSE_SETATTR) {
        /* any valid bits (now and then only C's: MODE, UID/GID, the times, FH; the ids
         * the harness's own, so its files stay its own), a mode with type
         * bits or beyond them, a handle of a node, of a directory, released or junk,
         * times around a 64-bit tv_sec and nsec past a second; sometimes short */
        static const uint64_t secs[] = { 0, 1, UINT64_MAX, 1ull << 63, (1ull << 63) - 1,
                                         1ull << 33, 16725225600ull };
        uint64_t fhs[] = { 7, 8, (uint64_t)list_fh, table->next_fh - 1, take(c, 8) };
        struct fuse_setattr_in si = {
            .valid = take(c, 1) < 128 ? (uint32_t)take(c, 2) & 0x1f7 : (uint32_t)take(c, 4),
            .fh = fhs[take(c, 1) % 5], .size = take(c, 1) % 8,
            .atime = secs[take(c, 1) % 7], .mtime = secs[take(c, 1) % 7],
            .atimensec = take(c, 1) < 32 ? (uint32_t)take(c, 4) : (uint32_t)take(c, 1),
            .mtimensec = (uint32_t)take(c, 4) % 2000000000u,
            .mode = take(c, 1) < 16 ? (uint32_t)take(c, 4) : ((uint32_t)take(c, 2) | 0700),
            .uid = (uint32_t)geteuid(), .gid = (uint32_t)getegid() };
        memcpy(p, &si, sizeof si);
        return take(c, 1) < 16 ? (uint32_t)take(c, 1) % 96 : (uint32_t)sizeof si;
    }
    if (opcode == FUSE_OPEN || opcode == FUSE_OPENDIR) {
        static const uint32_t flags[] = { O_RDONLY, O_WRONLY, O_RDWR, O_RDWR | O_TRUNC,
                                          O_WRONLY | O_APPEND, O_RDONLY | 0x20, O_ACCMODE,
                                          0x80000000u, 0xffffffffu, O_RDONLY | O_DIRECTORY };
        struct fuse_open_in oi = { flags[take(c, 1) % 10], take(c, 1) < 16 ? 1 : 0 };
        meta->open.writeback = (int)(take(c, 1) & 1);
        memcpy(p, &oi, sizeof oi);
        return take(c, 1) < 16 ? (uint32_t)take(c, 1) % 8 : (uint32_t)sizeof oi;
    }
    if (opcode == FUSE_CREATE) {   /* flags, mode, umask, a name (new, existing, bad) */
        static const uint32_t flags[] = { O_RDWR, O_WRONLY | O_EXCL, O_RDWR | O_TRUNC,
                                          O_WRONLY | O_APPEND, 0xffffffffu };
        struct fuse_create_in ci = { flags[take(c, 1) % 5] | O_CREAT, (uint32_t)take(c, 2),
                                     take(c, 1) < 16 ? (uint32_t)take(c, 4) : 022, 0 };
        static const char *names[] = { "c0", "c1", "a", ".", "a/b" };
        const char *n = names[take(c, 1) % 5];
        uint32_t len = (uint32_t)strlen(n);
        meta->open.writeback = (int)(take(c, 1) & 1);
        memcpy(p, &ci, sizeof ci);
        memcpy(p + sizeof ci, n, len + 1);
        return (uint32_t)sizeof ci + len + (take(c, 1) < 32 ? 0 : 1);
    }
    if (opcode == FUSE_RELEASE || opcode == FUSE_RELEASEDIR) {
        /* mostly one of the last handles made (fh is the table's counter), else junk */
        uint64_t last = table->next_fh - 1;
        struct fuse_release_in ri = {
            .fh = take(c, 1) < 200 ? last - take(c, 1) % 8 : take(c, 8),
            .release_flags = take(c, 1) < 16 ? FUSE_RELEASE_FLOCK_UNLOCK : 0,
            .lock_owner = take(c, 1) };
        meta->lock_descs = take(c, 1) < 16;
        memcpy(p, &ri, sizeof ri);
        return take(c, 1) < 16 ? (uint32_t)take(c, 1) % 24 : (uint32_t)sizeof ri;
    }
    if (opcode == FUSE_BATCH_FORGET) {
        uint32_t count = (uint32_t)take(c, 1) % 6, have = (uint32_t)take(c, 1) % 6;
        memcpy(p, &count, 4);
        memset(p + 4, 0, 4);
        for (uint32_t i = 0; i < have; i++) {
            struct fuse_forget_one one = { take(c, 1) % 12, take(c, 1) < 16 ? UINT64_MAX : take(c, 1) % 3 };
            memcpy(p + 8 + i * sizeof one, &one, sizeof one);
        }
        return 8 + have * (uint32_t)sizeof(struct fuse_forget_one);
    }
    if (opcode == FUSE_GETXATTR || opcode == FUSE_LISTXATTR) {
        /* a size around the values' lengths or huge, a hot name or not, sometimes
         * unterminated or long; now and then xattrs off (ENOSYS) */
        static const uint32_t sizes[] = { 0, 1, 39, 40, 41, 3000, 4096, 6000, 0xffffffffu };
        static const char *names[] = { "security.capability", "system.posix_acl_access",
                                        "user.hot", "user.ho", "user.hott", "" };
        struct fuse_getxattr_in gi = { sizes[take(c, 1) % 9], 0 };
        meta->xattr.off = take(c, 1) < 8;
        memcpy(p, &gi, sizeof gi);
        if (opcode == FUSE_LISTXATTR)
            return take(c, 1) < 16 ? (uint32_t)take(c, 1) % 8 : (uint32_t)sizeof gi;
        const char *n = names[take(c, 1) % 6];
        uint32_t len = (uint32_t)strlen(n);
        memcpy(p + sizeof gi, n, len + 1);
        if (take(c, 1) < 16) {
            len = 250 + (uint32_t)take(c, 1) % 12;   /* around XATTR_NAME_MAX */
            memset(p + sizeof gi, 'x', len);
            p[sizeof gi + len] = 0;
        }
        return (uint32_t)sizeof gi + len + (take(c, 1) < 32 ? 0 : 1);
    }
    uint64_t n = take(c, 1) < 16 ? UINT64_MAX : take(c, 1) % 3;   /* FORGET, STATFS: junk */
    memcpy(p, &n, 8);
    return (uint32_t)take(c, 1) % 9;
}

static void reset_ring(uint8_t flags)
{
    memset(ram0, 0, SCRATCH);
    msb_vq_init(&vq);
    if (msb_vq_setup(&vq, &mem, QN, UVA + DESC_OFF, UVA + AVAIL_OFF, UVA + USED_OFF) < 0)
        abort();
    vq.event_idx = flags & 1;
    vq.indirect = (flags >> 1) & 1;
}

static const uint64_t bad_addrs[] = { REG - 8, REG, 2 * REG - 8, 3 * REG, 3 * REG - 8,
                                      UINT64_MAX - 15, 1ull << 63, 0xffffffffull, 0 };

/* A FUSE request at scratch offset `off` of region 0; returns its length. */
static uint32_t put_request(struct cursor *c, uint32_t off)
{
    uint8_t kind = (uint8_t)take(c, 1) % 6;
    if (kind >= 4) {
        static const uint32_t ops[] = { FUSE_LOOKUP, FUSE_LOOKUP, FUSE_FORGET,
                                        FUSE_BATCH_FORGET, FUSE_STATFS, FUSE_GETATTR,
                                        FUSE_UNLINK, FUSE_RMDIR, FUSE_ACCESS, FUSE_MKDIR,
                                        FUSE_OPEN, FUSE_OPENDIR, FUSE_RELEASE,
                                        FUSE_RELEASEDIR, FUSE_CREATE, FUSE_RELEASE,
                                        FUSE_GETXATTR, FUSE_GETXATTR, FUSE_LISTXATTR,
                                        FUSE_RENAME, FUSE_RENAME2, FUSE_READLINK,
                                        FUSE_SYMLINK, FUSE_LINK };
        uint32_t opcode = ops[take(c, 1) % (sizeof ops / sizeof ops[0])];
        if (opcode == FUSE_UNLINK || opcode == FUSE_RENAME || opcode == FUSE_RENAME2)
            refill_names();
        if ((opcode == FUSE_STATFS || opcode == FUSE_GETATTR) && take(c, 1) & 1)
            opcode = FUSE_SETATTR;   /* csrc/fuse_setattr.c */
        /* the mutation errno of a readonly policy, now and then (UNLINK/RMDIR) */
        meta->names.mutation_errno = take(c, 1) < 32 ? 30 : 0;
        static const uint32_t ids[] = { 0, 1000, 0xffffffffu };
        uint32_t body = opcode == FUSE_GETATTR || opcode == FUSE_READLINK
                        ? (uint32_t)take(c, 1) % 24
                        : put_meta_body(c, opcode, ram0 + off + sizeof(struct fuse_in_header));
        if (opcode == FUSE_GETATTR || opcode == FUSE_READLINK)
            memset(ram0 + off + sizeof(struct fuse_in_header), (int)take(c, 1) & 1, body);
        struct fuse_in_header h = { .len = (uint32_t)(sizeof h + body), .opcode = opcode,
                                    .unique = take(c, 1), .nodeid = take(c, 1) % 12,
                                    .uid = ids[take(c, 1) % 3], .gid = ids[take(c, 1) % 3] };
        if (take(c, 1) < 8)
            h.nodeid = UINT64_MAX;
        memcpy(ram0 + off, &h, sizeof h);
        return (uint32_t)sizeof h + body;
    }
    uint32_t opcode = kind == 0 ? FUSE_READ : kind == 1 ? FUSE_WRITE : kind == 2 ? FUSE_GETATTR
                      : (uint32_t)take(c, 1);
    if (kind == 2 && take(c, 1) < 128)   /* READDIR(PLUS): fuse_read_in as READ's */
        opcode = take(c, 1) & 1 ? FUSE_READDIRPLUS : FUSE_READDIR;
    int listing = opcode == FUSE_READDIR || opcode == FUSE_READDIRPLUS;
    uint32_t body = opcode == FUSE_READ || opcode == FUSE_WRITE || listing
                    ? sizeof(struct fuse_read_in) : 16;
    uint32_t extra = opcode == FUSE_WRITE ? (uint32_t)take(c, 2) % 8192 : 0;
    struct fuse_in_header h = { .len = (uint32_t)(sizeof h + body + extra), .opcode = opcode,
                                .unique = take(c, 1), .nodeid = 1 };
    if (take(c, 1) < 16)
        h.len = (uint32_t)take(c, 4);  /* the header lies */
    memcpy(ram0 + off, &h, sizeof h);
    struct fuse_read_in r = { .fh = take(c, 1) < 220 ? 7 + take(c, 1) % 2 : take(c, 1) % 10, .offset = take(c, 1) < 200 ? take(c, 3)
                              : take(c, 8), .size = (uint32_t)(take(c, 1) < 200 ? take(c, 2)
                              : take(c, 4)) };
    if (opcode == FUSE_WRITE)
        r.size = take(c, 1) < 220 ? extra : (uint32_t)take(c, 4);
    if (listing && take(c, 1) < 200) {   /* mostly the directory handle, from the start */
        r.fh = (uint64_t)list_fh;
        r.offset = take(c, 1) < 128 ? 0 : r.offset;
    }
    memcpy(ram0 + off + sizeof h, &r, sizeof r);
    return (uint32_t)sizeof h + body + extra;
}

static void set_desc(struct msb_vring_desc *d, uint64_t a, uint32_t l, uint16_t f, uint16_t n)
{
    *d = (struct msb_vring_desc){ a, l, f, n };
}

void fuzz_one(const uint8_t *data, size_t size)
{
    struct cursor c = { data, size, 0 };
    inputs++;
    struct msb_vring_desc *desc = (void *)(ram0 + DESC_OFF);
    struct msb_vring_avail *avail = (void *)(ram0 + AVAIL_OFF);
    if (vq.broken || take(&c, 1) < 8)
        reset_ring((uint8_t)take(&c, 1));
    uint32_t scratch = SCRATCH;
    int nchains = 1 + (int)(take(&c, 1) % 4);
    int d = (int)(take(&c, 1) % QN);
    for (int k = 0; k < nchains; k++) {
        uint32_t reqlen = put_request(&c, scratch);
        uint64_t req_gpa = scratch;
        scratch += (reqlen + 15) & ~15u;
        uint32_t outsz = (uint32_t)take(&c, 2) % 16384;
        uint64_t out_gpa = scratch;
        scratch += (outsz + 15) & ~15u;
        /* buffers: request split in 1..3 parts, then 1..2 writable parts */
        uint64_t addr[6]; uint32_t len[6]; uint16_t fl[6]; int nb = 0;
        int parts = 1 + (int)(take(&c, 1) % 3);
        uint32_t done = 0;
        for (int p = 0; p < parts; p++) {
            uint32_t l = p == parts - 1 ? reqlen - done : (reqlen - done) / 2;
            addr[nb] = req_gpa + done; len[nb] = l; fl[nb++] = 0; done += l;
        }
        int wparts = 1 + (int)(take(&c, 1) % 2);
        for (int p = 0; p < wparts; p++) {
            uint32_t l = wparts == 2 && p == 0 ? 16 : outsz;
            addr[nb] = out_gpa + (p ? 16 : 0); len[nb] = l; fl[nb++] = VRING_DESC_F_WRITE;
        }
        int b = (int)(take(&c, 1) % nb);
        int kind = take(&c, 1) < 150 ? -1 : (int)(take(&c, 1) % 12);  /* -1: undamaged */
        if (kind >= 0)
            damaged[kind]++;
        switch (kind) {
        case 0: addr[b] = bad_addrs[take(&c, 1) % 9]; break;
        case 1: len[b] = 0; break;
        case 2: len[b] = (uint32_t)take(&c, 4); break;
        case 3: fl[b] ^= VRING_DESC_F_WRITE; break;
        case 4: addr[b] = REG - 8; len[b] = 64; break;           /* across region 0's end */
        case 5: addr[b] = 2 * REG - 8; len[b] = 64; break;       /* from the hole in */
        case 6: addr[b] = DESC_OFF; fl[b] = VRING_DESC_F_WRITE; break;  /* over the rings */
        default: break;
        }
        int indirect = take(&c, 1) < 64;
        int head = d;
        if (indirect) {
            struct msb_vring_desc *t = (void *)(ram0 + scratch);
            uint64_t t_gpa = scratch;
            scratch += 16 * nb;
            for (int i = 0; i < nb; i++)
                set_desc(&t[i], addr[i], len[i],
                         (uint16_t)(fl[i] | (i < nb - 1 ? VRING_DESC_F_NEXT : 0)
                                    | (kind == 7 && i == 0 ? VRING_DESC_F_INDIRECT : 0)),
                         (uint16_t)(i < nb - 1 ? (kind == 8 ? 0 : i + 1) : 0));
            uint32_t tlen = kind == 9 ? (uint32_t)take(&c, 2) : 16u * (uint32_t)nb;
            set_desc(&desc[d], kind == 10 ? bad_addrs[take(&c, 1) % 9] : t_gpa, tlen,
                     (uint16_t)(VRING_DESC_F_INDIRECT | (kind == 11 ? VRING_DESC_F_NEXT : 0)),
                     (uint16_t)((d + 1) % QN));
            d = (d + 1) % QN;
        } else {
            for (int i = 0; i < nb; i++) {
                int nxt = (d + 1) % QN;
                if (i < nb - 1 && kind == 8)
                    nxt = (int)(take(&c, 1) % (QN + 2));         /* loops, out of range */
                set_desc(&desc[d], addr[i], len[i],
                         (uint16_t)(fl[i] | (i < nb - 1 ? VRING_DESC_F_NEXT : 0)), (uint16_t)nxt);
                d = (d + 1) % QN;
            }
        }
        if (take(&c, 1) < 4)
            head = (int)take(&c, 2);                                 /* head out of range */
        avail->ring[avail->idx % QN] = (uint16_t)head;
        __atomic_thread_fence(__ATOMIC_RELEASE);
        avail->idx++;
        if (scratch > REG - 65536)
            break;
    }
    if (take(&c, 1) < 6)
        avail->idx = (uint16_t)(avail->idx + take(&c, 2));           /* avail idx jumps */
    int drained = 0;
    /* Half the inputs go through the serving thread's C kick cycle instead (its last
     * byte says which): the wake eventfd set before each call makes it return at its
     * first wait, or between rounds, as a stop would. */
    static int wake = -1;
    if (wake < 0)
        wake = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    int use_loop = size > 0 && (data[size - 1] & 1);
    for (int round = 0; round < 8 && !drained; round++) {
        int n, why = 0;
        if (use_loop) {
            eventfd_write(wake, 1);
            n = msb_fs_serve_loop(&vq, table, slow, 8, 64, &st, -1, wake, &drained, &why);
            kick_loops += why == MSB_LOOP_SLOW || why == MSB_LOOP_WOKEN;
            if (why == MSB_LOOP_NOTIFY_FAILED || why == MSB_LOOP_WAIT_FAILED)
                abort();  /* no call fd, no kick fd: neither can fail */
            uint64_t v;
            (void)read(wake, &v, sizeof v);  /* a loop that served slow chains left it */
        } else {
            n = msb_fs_serve(&vq, table, slow, 8, 64, &st, &drained);
        }
        if (n < 0) { broken++; return; }
        for (int i = 0; i < n; i++) {
            static uint8_t buf[1 << 16];
            uint32_t got = msb_fs_gather(&slow[i], buf, sizeof buf);
            struct fuse_out_header oh = { .len = sizeof oh, .error = -22 };
            if (got >= 16) memcpy(&oh.unique, buf + 8, 8);
            if (msb_fs_answer(&vq, &slow[i], &oh, sizeof oh) < 0)
                msb_vq_push(&vq, slow[i].head, 0);
        }
        msb_vq_notify(&vq);
    }
    served++;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (!ram0)
        setup();
    fuzz_one(data, size);
    return 0;
}

#ifndef MSB_LIBFUZZER
static int remove_one(const char *path, const struct stat *sb, int type, struct FTW *ftw)
{
    remove(path);
    return 0;
}

int main(int argc, char **argv)
{
    if (argc != 3) { fprintf(stderr, "usage: %s SEED COUNT\n", argv[0]); return 2; }
    uint64_t s = strtoull(argv[1], NULL, 0) * 2654435761u + 88172645463325252ull;
    long count = strtol(argv[2], NULL, 0);
    setup();
    uint8_t input[256];
    for (long k = 0; k < count; k++) {
        for (size_t i = 0; i < sizeof input; i++) {
            s ^= s << 13; s ^= s >> 7; s ^= s << 17;
            input[i] = (uint8_t)s;
        }
        fuzz_one(input, sizeof input);
    }
    struct msb_meta_stats ms;
    msb_meta_stats(meta, &ms);
    struct msb_names_stats ns;
    msb_names_stats(meta, &ns);
    printf("names_unlinks=%llu names_rmdirs=%llu names_accesses=%llu names_mkdirs=%llu ",
           (unsigned long long)ns.unlinks, (unsigned long long)ns.rmdirs,
           (unsigned long long)ns.accesses, (unsigned long long)ns.mkdirs);
    struct msb_setattr_stats ss;
    msb_setattr_stats(meta, &ss);
    printf("setattrs=%llu chmods=%llu utimes=%llu chowns=%llu ", (unsigned long long)ss.setattrs,
           (unsigned long long)ss.chmods, (unsigned long long)ss.utimes,
           (unsigned long long)ss.chowns);
    struct msb_open_stats os_;
    msb_open_stats(meta, &os_);
    printf("opens=%llu opendirs=%llu releases=%llu releasedirs=%llu creates=%llu ",
           (unsigned long long)os_.opens, (unsigned long long)os_.opendirs,
           (unsigned long long)os_.releases, (unsigned long long)os_.releasedirs,
           (unsigned long long)os_.creates);
    struct msb_xattr_stats xs;
    msb_xattr_stats(meta, &xs);
    struct msb_names2_stats n2;
    msb_names2_stats(meta, &n2);
    printf("renames=%llu readlinks=%llu symlinks=%llu links=%llu ",
           (unsigned long long)n2.renames, (unsigned long long)n2.readlinks,
           (unsigned long long)n2.symlinks, (unsigned long long)n2.links);
    printf("getxattrs=%llu listxattrs=%llu xattr_enosys=%llu ",
           (unsigned long long)xs.getxattrs, (unsigned long long)xs.listxattrs,
           (unsigned long long)xs.enosys);
    msb_meta_attach(table, NULL);
    msb_fs_table_del(table, 7);   /* data_fd: the harness's own */
    msb_fs_table_del(table, 8);
    msb_handles_close_all(table);  /* list_fd and what C opened, after a grace period */
    msb_fs_table_free(table);
    msb_meta_free(meta);
    msb_inodes_free(inodes);
    for (int i = 0; i < 4; i++) {
        char path[64];
        snprintf(path, sizeof path, "%s/%c", meta_dir, 'a' + i);
        unlink(path);
    }
    for (int i = 0; i < 2; i++) {   /* what CREATE chains made */
        char path[64];
        snprintf(path, sizeof path, "%s/c%d", meta_dir, i);
        unlink(path);
    }
    for (int i = 0; i < 2; i++) {   /* what MKDIR chains made */
        char path[64];
        snprintf(path, sizeof path, "%s/m%d", meta_dir, i);
        rmdir(path);
    }
    /* what RENAME, SYMLINK and LINK chains made or moved, wherever it went */
    nftw(meta_dir, remove_one, 16, FTW_DEPTH | FTW_PHYS);
    close(data_fd);
    for (int k = 0; k < 12; k++)
        printf("damage%d=%llu ", k, (unsigned long long)damaged[k]);
    printf("kick_loops=%llu ", (unsigned long long)kick_loops);
    printf("inputs=%llu served=%llu broken=%llu fast_reads=%llu fast_writes=%llu slow=%llu "
           "meta_lookups=%llu meta_getattrs=%llu meta_forgets=%llu meta_statfs=%llu "
           "meta_readdirs=%llu done=1\n",
           (unsigned long long)inputs, (unsigned long long)served,
           (unsigned long long)broken, (unsigned long long)st.reads,
           (unsigned long long)st.writes, (unsigned long long)st.slow,
           (unsigned long long)ms.lookups, (unsigned long long)ms.getattrs,
           (unsigned long long)ms.forgets, (unsigned long long)ms.statfs,
           (unsigned long long)ms.readdirs);
    return 0;
}
#endif
