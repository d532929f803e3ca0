"""Glue of the C GETXATTR/LISTXATTR path (csrc/fuse_xattr.h) to a device: the tree's
xattr name rule, compiled for a few hot client names into the answers C looks up.

Why these names: every write() asks for ``security.capability`` first (the kernel's
file_remove_privs), and ACL-aware tools ask for the two POSIX ACL names and SELinux
tools for ``security.selinux`` on every file; almost all of them are answered ENODATA
(or EOPNOTSUPP) without a value ever existing.

One definition, two consumers: nothing here states a rule. ``compile_hot`` runs the
tree's own name rule (``Tree.c_xattr_name``: ``Tree._xattr_name``, behind it the
policy's ``XattrRule`` and the xattr map) for each hot name and writes down what it
answered, the host's name or the errno. The rule may depend on the caller (a map that
sends a name to ``trusted.*``: root reads it, anyone else gets ENODATA); a name whose
answer differs between any of ``CALLERS`` is left out, so C answers no caller of it.
"""

from __future__ import annotations

import errno
from typing import Any

from msbfs._native import ffi, lib
from msbfs.tree.tree import Tree

#: The client names C may answer GETXATTR for (at most MSB_XATTR_HOT).
HOT_NAMES = (b"security.capability", b"system.posix_acl_access",
             b"system.posix_acl_default", b"security.selinux")
#: The uids each answer is asked for: root, ordinary users, nobody, the ids that are not
#: ids. Equal answers for all of them: the rule does not look at the caller for that name.
CALLERS = (0, 1, 1000, 65534, 0x7FFFFFFF, 0xFFFFFFFE, 0xFFFFFFFF)


def _answer(tree: Tree, name: bytes, uid: int) -> bytes | int:
    """The host's name for a GETXATTR of ``name`` by ``uid``, or the errno refusing it."""
    try:
        return tree.c_xattr_name(name, uid)
    except OSError as e:
        return e.errno or errno.EIO


def compile_hot(tree: Tree) -> dict[bytes, bytes | int]:
    """Each hot name's answer, for the names whose answer is the same for every caller
    and which C can hold (a host name without NUL, an errno above 0)."""
    out: dict[bytes, bytes | int] = {}
    for name in HOT_NAMES:
        answers = {_answer(tree, name, uid) for uid in CALLERS}
        if len(answers) != 1:
            continue  # the caller decides: Python's
        (a,) = answers
        if isinstance(a, bytes) and (b"\0" in a or len(a) > lib.MSB_XATTR_HOST_MAX):
            continue
        out[name] = a
    return out


def write_xattr_rules(x: Any, tree: Tree) -> None:
    """``x`` (``struct msb_xattr``, zeroed: everything Python's) configured for ``tree``."""
    if not tree.xattr:
        x.off = 1  # FuseSession._xattrs_off: ENOSYS for every xattr request
        return
    hot = compile_hot(tree)
    assert len(hot) <= lib.MSB_XATTR_HOT and all(
        len(n) <= lib.MSB_XATTR_CLIENT_MAX for n in hot)
    for slot, (name, answer) in zip(x.hot, hot.items(), strict=False):
        slot.client = name
        if isinstance(answer, int):
            slot.err = answer
        else:
            slot.host = answer
        slot.client_len = len(name)
    x.get = 1 if hot else 0
    x.list = 1  # only empty host lists, which no rule can change


def xattr_statistics(m: Any) -> dict[str, int]:
    """What csrc/fuse_xattr.c answered."""
    s = ffi.new("struct msb_xattr_stats *")
    lib.msb_xattr_stats(m, s)
    return {k: int(getattr(s, k)) for k in ("getxattrs", "getxattr_ns", "listxattrs", "enosys")}
