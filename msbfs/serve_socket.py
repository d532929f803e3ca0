"""The vhost-user socket ``msbfs serve`` listens on (``--socket-path``) or adopts
(``--fd``), made before any sandbox: afterwards the daemon holds it as an fd only."""

from __future__ import annotations

import grp
import os
import socket
import stat

from msbfs.errors import ServeError
from msbfs.serve_options import ServeOptions


def open_socket(o: ServeOptions) -> socket.socket:
    """The listening (or already connected) vhost-user socket, made before any sandbox."""
    if o.fd is not None:
        try:
            s = socket.socket(fileno=o.fd)
        except OSError as e:
            raise ServeError(f"--fd={o.fd} is not a socket: {e.strerror}") from None
        if s.family != socket.AF_UNIX:
            raise ServeError(f"--fd={o.fd} is not a Unix socket")
        return s
    assert o.socket_path is not None
    path = o.socket_path
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        pass
    else:
        if not stat.S_ISSOCK(st.st_mode):
            raise ServeError(f"{path} exists and is not a socket")
        os.unlink(path)  # a stale socket of an earlier daemon, as virtiofsd does
    # Bind under a temporary name and rename once listening: whoever sees the socket
    # file can connect at once (a readiness signal for scripts and tests).
    tmp = f"{path}.{os.getpid()}.tmp"
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o077)
    try:
        s.bind(tmp)
        if o.socket_group:
            try:
                gid = grp.getgrnam(o.socket_group).gr_gid
            except KeyError:
                raise ServeError(f"no group {o.socket_group!r}") from None
            os.chown(tmp, -1, gid)
            os.chmod(tmp, 0o660)
        s.listen(1)
        os.rename(tmp, path)
    except OSError as e:
        s.close()
        raise ServeError(f"cannot listen on {path}: {e.strerror}") from None
    except BaseException:
        s.close()
        raise
    finally:
        os.umask(old)
        if os.path.lexists(tmp):
            os.unlink(tmp)
    return s


def is_listening(s: socket.socket) -> bool:
    return bool(s.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN))
