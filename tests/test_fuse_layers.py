"""The FUSE codec's sans-I/O halves stay sans-I/O: ``msbfs.fuse.requests`` (decoding)
and ``msbfs.fuse.replies`` (encoding) import nothing but the standard library and the
kernel ABI at run time, so nothing of the tree (no ``Tree``, no ``TreeOps``, no
syscalls) can creep into them; the session that calls the tree is
``msbfs.fuse.server``. (The tree's value types may be named for type checking only.)"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

FUSE = Path(__file__).resolve().parent.parent / "msbfs" / "fuse"
ALLOWED = {"msbfs.fuse", "msbfs.fuse.abi"}


def _runtime_imports(path: Path) -> set[str]:
    """Modules imported when the file runs: every import statement but those under
    ``if TYPE_CHECKING:``."""
    tree = ast.parse(path.read_text())
    skipped: set[int] = set()
    for node in ast.walk(tree):
        if (isinstance(node, ast.If) and isinstance(node.test, ast.Name)
                and node.test.id == "TYPE_CHECKING"):
            skipped.update(id(n) for b in node.body for n in ast.walk(b))
    names: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


@pytest.mark.parametrize("module", ["requests", "replies"])
def test_codec_halves_import_only_the_stdlib_and_the_abi(module: str) -> None:
    imports = _runtime_imports(FUSE / f"{module}.py")
    ours = {m for m in imports if m.split(".")[0] not in sys.stdlib_module_names}
    assert ours <= ALLOWED, f"msbfs/fuse/{module}.py imports {sorted(ours - ALLOWED)}"


def test_the_session_reads_and_writes_through_them() -> None:
    """The split is real: the session defines no decoder or encoder of its own."""
    from msbfs.fuse import replies, requests, server

    for name in ("_Body", "BadRequest", "_ns", "_unpack_in"):
        assert getattr(server, name) is getattr(requests, name)
    for name in ("_reply", "entry_reply", "attr_reply", "error_reply", "encode_open"):
        assert getattr(server, name) is getattr(replies, name)


def test_loading_the_codec_does_not_load_the_tree() -> None:
    """Nor through the ABI: it names a few of the tree's constants, and the tree package
    loads ``Tree`` (and its C bindings) only when asked for it."""
    import subprocess

    code = ("import sys, msbfs.fuse.requests, msbfs.fuse.replies; "
            "print(sorted(m for m in sys.modules if m.startswith('msbfs.tree.')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert "msbfs.tree.tree" not in out and "msbfs.tree.inodes" not in out, out
