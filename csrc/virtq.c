/* Split virtqueue walking and used-ring updates; see virtq.h for the contract.
 *
 * Memory ordering (virtio 1.x 2.7.13 / 2.7.7): the driver writes ring entries, then
 * avail->idx; we load avail->idx, then an acquire fence, then the entries. We write
 * used elements, a release fence, then used->idx. Between publishing used->idx and
 * reading used_event (and between publishing avail_event and re-reading avail->idx)
 * a full fence is needed, or a notification can be lost on both sides at once.
 *
 * Every descriptor is read ONCE into a local copy: the guest can rewrite the table
 * while we walk it, so a field is never checked in one read and used from another.
 */
#define _GNU_SOURCE
#include "virtq.h"

#include <errno.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <unistd.h>

#define DESC_F_NEXT 1
#define DESC_F_WRITE 2
#define DESC_F_INDIRECT 4
#define AVAIL_F_NO_INTERRUPT 1

static inline uint16_t load16(const uint16_t *p)
{
    return __atomic_load_n(p, __ATOMIC_RELAXED);
}

static inline void store16(uint16_t *p, uint16_t v)
{
    __atomic_store_n(p, v, __ATOMIC_RELAXED);
}

static const struct msb_memreg *find(const struct msb_memtable *mem, uint64_t addr,
                                     int by_uaddr)
{
    uint32_t n = mem->n < MSB_MAX_MEMREGS ? mem->n : MSB_MAX_MEMREGS;
    for (uint32_t i = 0; i < n; i++) {
        const struct msb_memreg *r = &mem->regs[i];
        uint64_t start = by_uaddr ? r->uaddr : r->gpa;
        if (addr >= start && addr - start < r->size)
            return r;
    }
    return NULL;
}

static void *translate(const struct msb_memtable *mem, uint64_t addr, uint64_t len,
                       int by_uaddr)
{
    if (!mem)
        return NULL;
    const struct msb_memreg *r = find(mem, addr, by_uaddr);
    if (!r)
        return NULL;
    uint64_t off = addr - (by_uaddr ? r->uaddr : r->gpa);
    /* off < size holds; written so that nothing can wrap */
    if (len > r->size - off)
        return NULL;
    return r->host + off;
}

void *msb_gpa_to_host(const struct msb_memtable *mem, uint64_t gpa, uint64_t len)
{
    return translate(mem, gpa, len, 0);
}

void *msb_uva_to_host(const struct msb_memtable *mem, uint64_t uaddr, uint64_t len)
{
    return translate(mem, uaddr, len, 1);
}

void msb_vq_init(struct msb_vq *vq)
{
    memset(vq, 0, sizeof *vq);
    vq->call_fd = -1;
    vq->err_fd = -1;
}

static int map_rings(struct msb_vq *vq, const struct msb_memtable *mem, uint16_t num,
                     uint64_t desc_uaddr, uint64_t avail_uaddr, uint64_t used_uaddr)
{
    vq->desc = NULL;
    vq->avail = NULL;
    vq->used = NULL;
    if (num == 0 || num > MSB_MAX_QUEUE || (num & (num - 1)))
        return -EINVAL;
    /* alignment from virtio 1.x 2.7: desc 16, avail 2, used 4 */
    if ((desc_uaddr & 15) || (avail_uaddr & 1) || (used_uaddr & 3))
        return -EINVAL;
    void *d = msb_uva_to_host(mem, desc_uaddr, 16ull * num);
    void *a = msb_uva_to_host(mem, avail_uaddr, 6ull + 2ull * num);
    void *u = msb_uva_to_host(mem, used_uaddr, 6ull + 8ull * num);
    if (!d || !a || !u)
        return -EINVAL;
    vq->mem = mem;
    vq->num = num;
    vq->desc = d;
    vq->avail = a;
    vq->used = u;
    return 0;
}

int msb_vq_setup(struct msb_vq *vq, const struct msb_memtable *mem, uint16_t num,
                 uint64_t desc_uaddr, uint64_t avail_uaddr, uint64_t used_uaddr)
{
    int r = map_rings(vq, mem, num, desc_uaddr, avail_uaddr, used_uaddr);
    if (r < 0)
        return r;
    vq->used_idx = load16(&vq->used->idx);
    vq->signalled_used_valid = 0;
    vq->broken = 0;
    return 0;
}

int msb_vq_remap(struct msb_vq *vq, const struct msb_memtable *mem,
                 uint64_t desc_uaddr, uint64_t avail_uaddr, uint64_t used_uaddr)
{
    return map_rings(vq, mem, vq->num, desc_uaddr, avail_uaddr, used_uaddr);
}

static int mark_broken(struct msb_vq *vq, int err)
{
    if (!vq->broken) {
        vq->broken = 1;
        if (vq->err_fd >= 0)
            (void)eventfd_write(vq->err_fd, 1);
    }
    return err;
}

static inline int ready(const struct msb_vq *vq)
{
    return vq->desc && vq->avail && vq->used && vq->mem;
}

int msb_vq_pending(const struct msb_vq *vq)
{
    if (!ready(vq) || vq->broken)
        return 0;
    uint16_t n = (uint16_t)(load16(&vq->avail->idx) - vq->last_avail_idx);
    return n > vq->num ? 0 : n;
}

/* Append guest buffer [addr, addr+len) to the chain's iovecs, one iovec per region it
 * covers (adjacent regions are legal; gaps are not). */
static int add_buffer(const struct msb_memtable *mem, struct msb_chain *c, int *niov,
                      uint64_t addr, uint32_t len)
{
    if (len == 0) {
        /* nothing to transfer, but the address must still be guest memory */
        return msb_gpa_to_host(mem, addr, 0) ? 0 : -EINVAL;
    }
    uint64_t left = len;
    while (left) {
        const struct msb_memreg *r = find(mem, addr, 0);
        if (!r)
            return -EINVAL;
        uint64_t off = addr - r->gpa;
        uint64_t here = r->size - off < left ? r->size - off : left;
        if (*niov >= MSB_MAX_CHAIN)
            return -E2BIG;
        c->iov[*niov].iov_base = r->host + off;
        c->iov[*niov].iov_len = here;
        (*niov)++;
        left -= here;
        if (left && addr + here < addr)
            return -EINVAL;  /* would wrap past 2^64 */
        addr += here;
    }
    return 0;
}

static int walk_chain(const struct msb_vq *vq, uint16_t head, struct msb_chain *c)
{
    const struct msb_memtable *mem = vq->mem;
    /* bytes, not typed: an indirect table may sit at any guest address (alignment) */
    const uint8_t *table = (const uint8_t *)vq->desc;
    uint32_t table_n = vq->num;
    uint32_t idx = head;
    uint32_t seen = 0;          /* descriptors walked in the current table */
    uint32_t total = 0;         /* descriptors in the whole chain */
    int in_indirect = 0;
    int have_in = 0;
    int niov = 0;
    uint64_t out_len = 0, in_len = 0;
    uint16_t nout = 0;

    c->head = head;
    for (;;) {
        if (idx >= table_n)
            return -EINVAL;
        /* seen bounds the walk of one table: more steps than entries means a loop */
        if (++seen > table_n)
            return -ELOOP;
        if (++total > vq->num)
            return -E2BIG;
        struct msb_vring_desc d;
        memcpy(&d, table + (size_t)idx * sizeof d, sizeof d);
        __atomic_signal_fence(__ATOMIC_SEQ_CST);  /* keep the copy a single read */

        if (d.flags & DESC_F_INDIRECT) {
            if (!vq->indirect || in_indirect || (d.flags & DESC_F_NEXT))
                return -EINVAL;
            if (d.len == 0 || d.len % sizeof(struct msb_vring_desc))
                return -EINVAL;
            uint32_t n = d.len / sizeof(struct msb_vring_desc);
            if (n > vq->num)
                return -E2BIG;
            const void *t = msb_gpa_to_host(mem, d.addr, d.len);
            if (!t)
                return -EINVAL;
            table = t;
            table_n = n;
            idx = 0;
            seen = 0;
            total--;  /* the indirect descriptor itself carries no buffer */
            in_indirect = 1;
            continue;
        }
        if (!(d.flags & DESC_F_WRITE) && have_in)
            return -EINVAL;  /* readable after writable */
        int r = add_buffer(mem, c, &niov, d.addr, d.len);
        if (r < 0)
            return r;
        if (d.flags & DESC_F_WRITE) {
            have_in = 1;
            in_len += d.len;
        } else {
            nout = (uint16_t)niov;
            out_len += d.len;
        }
        if (out_len > UINT32_MAX || in_len > UINT32_MAX)
            return -EINVAL;
        if (!(d.flags & DESC_F_NEXT))
            break;
        idx = d.next;
    }
    c->nout = nout;
    c->nin = (uint16_t)(niov - nout);
    c->out_len = (uint32_t)out_len;
    c->in_len = (uint32_t)in_len;
    return 0;
}

int msb_vq_pop(struct msb_vq *vq, struct msb_chain *out, int max)
{
    if (vq->broken)
        return -EIO;
    if (!ready(vq))
        return 0;
    int n = 0;
    uint16_t *avail_event = (uint16_t *)&vq->used->ring[vq->num];
    while (n < max) {
        uint16_t avail_idx = load16(&vq->avail->idx);
        uint16_t pending = (uint16_t)(avail_idx - vq->last_avail_idx);
        if (pending > vq->num)
            return mark_broken(vq, -EINVAL);
        if (pending == 0) {
            if (!vq->event_idx)
                break;
            /* Ask for a kick at the next addition, then look again: the driver may
             * have added a buffer after our load but before seeing avail_event. */
            store16(avail_event, vq->last_avail_idx);
            __atomic_thread_fence(__ATOMIC_SEQ_CST);
            if (load16(&vq->avail->idx) == vq->last_avail_idx)
                break;
            continue;
        }
        __atomic_thread_fence(__ATOMIC_ACQUIRE);
        while (pending && n < max) {
            uint16_t head = load16(&vq->avail->ring[vq->last_avail_idx % vq->num]);
            if (head >= vq->num)
                return mark_broken(vq, -EINVAL);
            int r = walk_chain(vq, head, &out[n]);
            if (r < 0)
                return mark_broken(vq, r);
            vq->last_avail_idx++;
            pending--;
            n++;
        }
    }
    if (vq->event_idx && n)
        store16(avail_event, vq->last_avail_idx);
    vq->popped += (uint64_t)n;
    return n;
}

int msb_vq_push_many(struct msb_vq *vq, const uint16_t *heads, const uint32_t *lens, int n)
{
    if (vq->broken)
        return -EIO;
    if (!ready(vq) || n < 0 || n > vq->num)
        return -EINVAL;
    for (int i = 0; i < n; i++) {
        if (heads[i] >= vq->num)
            return -EINVAL;  /* a device bug, not the guest's: the queue stays usable */
    }
    uint16_t idx = vq->used_idx;
    for (int i = 0; i < n; i++, idx++) {
        struct msb_vring_used_elem *e = &vq->used->ring[idx % vq->num];
        e->id = heads[i];
        e->len = lens[i];
    }
    __atomic_thread_fence(__ATOMIC_RELEASE);
    store16(&vq->used->idx, idx);
    vq->used_idx = idx;
    vq->pushed += (uint64_t)n;
    return 0;
}

int msb_vq_push(struct msb_vq *vq, uint16_t head, uint32_t len)
{
    if (vq->sink)
        return vq->sink(vq->sink_arg, head, len);
    return msb_vq_push_many(vq, &head, &len, 1);
}

int msb_vq_need_call(struct msb_vq *vq)
{
    if (!ready(vq))
        return 0;
    /* used->idx is published; now read what the driver asked for */
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
    uint16_t old = vq->signalled_used, new = vq->used_idx;
    int valid = vq->signalled_used_valid;
    if (valid && old == new)
        return 0;  /* nothing used since the last signal */
    int need;
    if (vq->event_idx) {
        uint16_t used_event = load16(&vq->avail->ring[vq->num]);
        /* vring_need_event(): did new pass used_event since old? */
        need = !valid || (uint16_t)(new - used_event - 1) < (uint16_t)(new - old);
    } else {
        need = !(load16(&vq->avail->flags) & AVAIL_F_NO_INTERRUPT);
    }
    vq->signalled_used = new;
    vq->signalled_used_valid = 1;
    return need;
}

int msb_vq_notify(struct msb_vq *vq)
{
    if (!msb_vq_need_call(vq)) {
        vq->suppressed_calls++;
        return 0;
    }
    if (vq->call_fd < 0)
        return 0;
    if (eventfd_write(vq->call_fd, 1) < 0)
        return -errno;
    vq->calls++;
    return 1;
}

void msb_mb(void)
{
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
}

/* Copy len bytes between buf and the iovec list from byte `off` of the list on, in the
 * direction `to_iov` says; returns the bytes copied (short when the list ends first). */
static inline size_t iov_copy(const struct iovec *iov, int n, size_t off, uint8_t *buf,
                              size_t len, int to_iov)
{
    size_t done = 0;
    for (int i = 0; i < n && done < len; i++) {
        if (off >= iov[i].iov_len) {
            off -= iov[i].iov_len;
            continue;
        }
        size_t k = iov[i].iov_len - off;
        if (k > len - done)
            k = len - done;
        uint8_t *at = (uint8_t *)iov[i].iov_base + off;
        if (to_iov)
            memcpy(at, buf + done, k);
        else
            memcpy(buf + done, at, k);
        done += k;
        off = 0;
    }
    return done;
}

size_t msb_iov_copy_from(const struct iovec *iov, int n, size_t off, void *dst, size_t len)
{
    return iov_copy(iov, n, off, dst, len, 0);
}

size_t msb_iov_copy_to(const struct iovec *iov, int n, size_t off, const void *src, size_t len)
{
    /* src is only read: the cast serves the shared walk */
    return iov_copy(iov, n, off, (uint8_t *)src, len, 1);
}

static uint64_t page_size(void)
{
    return (uint64_t)sysconf(_SC_PAGESIZE);
}

void *msb_map_guarded(int fd, uint64_t size, uint64_t offset, uint64_t guard)
{
    uint64_t ps = page_size();
    uint64_t skew = offset % ps;
    guard = (guard + ps - 1) / ps * ps;
    if (size == 0 || size > UINT64_MAX / 2 || guard > UINT64_MAX / 4) {
        errno = EINVAL;
        return NULL;
    }
    uint64_t span = (skew + size + ps - 1) / ps * ps;
    uint8_t *base = mmap(NULL, span + 2 * guard, PROT_NONE,
                         MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (base == MAP_FAILED)
        return NULL;
    void *m = mmap(base + guard, span, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_FIXED, fd,
                   (off_t)(offset - skew));
    if (m == MAP_FAILED) {
        int e = errno;
        munmap(base, span + 2 * guard);
        errno = e;
        return NULL;
    }
    return base + guard + skew;
}

int msb_unmap_guarded(void *host, uint64_t size, uint64_t offset, uint64_t guard)
{
    uint64_t ps = page_size();
    uint64_t skew = offset % ps;
    guard = (guard + ps - 1) / ps * ps;
    uint64_t span = (skew + size + ps - 1) / ps * ps;
    uint8_t *base = (uint8_t *)host - skew - guard;
    return munmap(base, span + 2 * guard) < 0 ? -errno : 0;
}
