#define _GNU_SOURCE
#include "confine.h"

#include <errno.h>
#include <linux/capability.h>
#include <sched.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <unistd.h>

int msb_unshare(int flags)
{
    return unshare(flags) < 0 ? -errno : 0;
}

int msb_mount(const char *source, const char *target, const char *fstype,
              unsigned long flags, const char *data)
{
    return mount(source, target, fstype, flags, data) < 0 ? -errno : 0;
}

int msb_umount2(const char *target, int flags)
{
    return umount2(target, flags) < 0 ? -errno : 0;
}

/* glibc has no wrapper for pivot_root; the number differs per architecture, so it is
 * taken from <sys/syscall.h> here rather than hard-coded in Python. */
int msb_pivot_root(const char *new_root, const char *put_old)
{
    return syscall(SYS_pivot_root, new_root, put_old) < 0 ? -errno : 0;
}

long msb_prctl(int option, unsigned long a2, unsigned long a3, unsigned long a4,
               unsigned long a5)
{
    int r = prctl(option, a2, a3, a4, a5);
    return r < 0 ? -errno : r;
}

int msb_capget(uint64_t *effective, uint64_t *permitted, uint64_t *inheritable)
{
    struct __user_cap_header_struct hdr = { .version = _LINUX_CAPABILITY_VERSION_3 };
    struct __user_cap_data_struct data[2] = { { 0 } };
    if (syscall(SYS_capget, &hdr, data) < 0)
        return -errno;
    *effective = data[0].effective | (uint64_t)data[1].effective << 32;
    *permitted = data[0].permitted | (uint64_t)data[1].permitted << 32;
    *inheritable = data[0].inheritable | (uint64_t)data[1].inheritable << 32;
    return 0;
}

int msb_capset(uint64_t effective, uint64_t permitted, uint64_t inheritable)
{
    struct __user_cap_header_struct hdr = { .version = _LINUX_CAPABILITY_VERSION_3 };
    struct __user_cap_data_struct data[2] = {
        { .effective = (uint32_t)effective, .permitted = (uint32_t)permitted,
          .inheritable = (uint32_t)inheritable },
        { .effective = (uint32_t)(effective >> 32), .permitted = (uint32_t)(permitted >> 32),
          .inheritable = (uint32_t)(inheritable >> 32) },
    };
    return syscall(SYS_capset, &hdr, data) < 0 ? -errno : 0;
}
