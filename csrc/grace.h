/* Grace periods for fds other threads may be using (RCU-like, read-mostly).
 *
 * Why: every request queue is served by its own thread. A thread that looked an fd up
 * in a C table (the data path's handle table; the inode table) uses it a moment later
 * (preadv). If another thread removed that entry and closed the fd in between, a new
 * open could get the same number and the read would hit another file: a data leak
 * across files. So a thread serving a request holds a read-side section around it
 * (msb_grace_enter/exit: two stores and a fence, no lock, no shared cache line written
 * by other readers), and whoever removes an fd from a table closes it only after
 * msb_grace_synchronize() returned: every section that was open when it was called has
 * ended by then, so no thread still holds the old number.
 *
 * Rules:
 * - remove the entry from every table first, then msb_grace_synchronize(), then close
 *   (batch: remove many, one synchronize, close all);
 * - msb_grace_synchronize() never waits for the calling thread's own section (a
 *   section is per thread: the caller knows what it is closing and does not use it
 *   afterwards); it waits for other threads' sections, so a section must never wait
 *   for something the closer holds (take locks BEFORE entering a section, and never
 *   block in a section on another thread's progress, except I/O on the fds it holds);
 * - sections nest (counted per thread); only the outermost one counts;
 * - a thread that exits while in a section is treated as having left it.
 *
 * Cost: enter/exit are a thread-local load, one store and one full fence each;
 * synchronize takes a mutex and polls each registered thread's word (sleeping 20 us
 * between polls while one is still inside: sections last a request or a round). */
#ifndef MSBFS_GRACE_H
#define MSBFS_GRACE_H

#include <stdint.h>

void msb_grace_enter(void);
void msb_grace_exit(void);
/* Returns once every other thread's section that was open at the call has ended.
 * Returns the number of threads it had to wait for (for tests and statistics). */
int msb_grace_synchronize(void);
/* 1 when the calling thread is inside a section. */
int msb_grace_inside(void);
/* Remove-then-close in one call: waits a grace period, then closes `fd` (-errno of
 * close, or 0). For callers that have already removed `fd` from every table. */
int msb_grace_close(int fd);
/* Close `fd` once every section that may hold it has ended, without waiting: safe to
 * call under any lock and inside a section (the C inode table's one closer,
 * inode_fd_retire, calls it under its lock). The fd is closed at once when no other
 * thread is in a section older than the call, else by a later section exit,
 * synchronize or reclaim. The caller has removed it from every table already. */
void msb_grace_defer_close(int fd);
/* Close every deferred fd whose grace period has passed (non-blocking); returns how
 * many are still waiting. */
int msb_grace_reclaim(void);

#endif
