"""The namespace sandbox's supervisor, as a program of its own (``msbfs/confine.py``).

``msbfs serve --sandbox=namespace`` forks its serving child into a new pid namespace;
the parent stays outside, for the daemon's whole life, to forward stop signals, wait,
remove the socket path (which only the host's view reaches) and exit with the child's
status. Kept as the forked copy of the daemon it held every module the daemon had
loaded (~32 MiB resident, as much again as the serving process). So the parent execs
this file instead, with ``python -S -I``: no site, no msbfs, standard library only
(~9 MiB). It must stay importable without the package.

    python -S -I supervisor.py CHILD_PID [--remove PATH] [--syslog]

The stop signals arrive blocked (the parent blocks them before exec, so none is lost
while this interpreter starts) and are unblocked once their handlers are in place.
Exit status: the child's, or 128+N when signal N killed it.
"""

import os
import signal
import sys

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


def report(msg: str, use_syslog: bool) -> None:
    if use_syslog:
        import syslog

        syslog.openlog("msbfs", syslog.LOG_PID, syslog.LOG_DAEMON)
        syslog.syslog(syslog.LOG_ERR, msg)
    else:
        sys.stderr.write(f"msbfs serve: {msg}\n")
        sys.stderr.flush()


def supervise(child: int, remove: str | None, use_syslog: bool) -> int:
    def forward(signum: int, frame: object) -> None:
        try:
            os.kill(child, signum)
        except ProcessLookupError:
            pass

    for sig in STOP_SIGNALS:
        signal.signal(sig, forward)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
    while True:
        try:
            _, status = os.waitpid(child, 0)
            break
        except ChildProcessError:
            status = 0  # not ours (a wrong pid): nothing to wait for
            break
    code = os.waitstatus_to_exitcode(status)
    if code < 0:
        name = signal.Signals(-code).name
        why = " (a system call outside the seccomp allowlist: see the kernel log)" \
            if -code == signal.SIGSYS else ""
        report(f"serving process killed by {name}{why}", use_syslog)
        code = 128 - code
    if remove:
        try:
            os.unlink(remove)
        except OSError:
            pass
    return code


def main(argv: list[str]) -> int:
    child = int(argv[0])
    remove = argv[argv.index("--remove") + 1] if "--remove" in argv else None
    return supervise(child, remove, "--syslog" in argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
