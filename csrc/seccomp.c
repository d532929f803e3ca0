#define _GNU_SOURCE
#include "seccomp.h"

#include <errno.h>
#include <seccomp.h>
#include <stdint.h>

int msb_seccomp_resolve(const char *name)
{
    int nr = seccomp_syscall_resolve_name_arch(SCMP_ARCH_NATIVE, name);
    return nr == __NR_SCMP_ERROR || nr < 0 ? -1 : nr;
}

int msb_seccomp_load(int action, const char *const *names, size_t n)
{
    uint32_t deflt;
    switch (action) {
    case MSB_SECCOMP_LOG: deflt = SCMP_ACT_LOG; break;
    case MSB_SECCOMP_TRAP: deflt = SCMP_ACT_TRAP; break;
    case MSB_SECCOMP_KILL: deflt = SCMP_ACT_KILL_PROCESS; break;
    default: return -EINVAL;
    }
    scmp_filter_ctx ctx = seccomp_init(deflt);
    if (!ctx)
        return -ENOMEM;
    int skipped = 0, r;
    /* Every thread, not only the caller: a filter on one thread is no filter. */
    r = seccomp_attr_set(ctx, SCMP_FLTATR_CTL_TSYNC, 1);
    for (size_t i = 0; r == 0 && i < n; i++) {
        int nr = msb_seccomp_resolve(names[i]);
        if (nr < 0) {
            skipped++;
            continue;
        }
        r = seccomp_rule_add(ctx, SCMP_ACT_ALLOW, nr, 0);
    }
    if (r == 0)
        r = seccomp_load(ctx);
    seccomp_release(ctx);
    return r < 0 ? r : skipped;  /* libseccomp returns -errno itself */
}
