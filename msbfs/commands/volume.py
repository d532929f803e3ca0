"""``msbfs volume``: create, list, inspect, remove named volumes and read/write their files.

Human output by default; ``--json`` on every command that reports something.
"""

from __future__ import annotations

import argparse
import base64
import json
import stat
import sys
from typing import Any, NoReturn

from msbfs import volumes
from msbfs.volumes import VolumeHandle


def _label(text: str) -> tuple[str, str]:
    key, eq, value = text.partition("=")
    if not eq or not key:
        raise argparse.ArgumentTypeError(f"label {text!r} must be KEY=VALUE")
    return key, value


def _mib(text: str) -> int:
    if not text.isdigit() or int(text) <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive whole number of MiB")
    return int(text)


def human_bytes(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{int(size)} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


def _print_json(data: Any) -> None:
    print(json.dumps(data, indent=2, sort_keys=True))


def _limit(h: VolumeHandle) -> str:
    if h.kind == "disk" and h.capacity_bytes is not None:
        return f"size {human_bytes(h.capacity_bytes)}"
    if h.quota_mib is not None:
        return f"quota {h.quota_mib} MiB"
    return "-"


def _labels_text(labels: dict[str, str]) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(labels.items())) or "-"


def cmd_create(args: argparse.Namespace) -> int:
    vol = volumes.create_volume(args.name, kind=args.kind, size_mib=args.size,
                                quota_mib=args.quota, labels=dict(args.label),
                                quota_inodes=args.quota_inodes)
    if args.json:
        _print_json(volumes.get_volume(vol.name).to_dict())
    else:
        print(vol.name)
    return 0


def cmd_ls(args: argparse.Namespace) -> int:
    handles = volumes.list_volumes()
    if args.json:
        _print_json([h.to_dict() for h in handles])
        return 0
    rows = [("NAME", "KIND", "USED", "LIMIT", "CREATED", "LABELS")]
    for h in handles:
        created = h.created_at.strftime("%Y-%m-%d %H:%M:%S") if h.created_at else "-"
        rows.append((h.name, h.kind, human_bytes(h.used_bytes), _limit(h), created,
                     _labels_text(h.labels)))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=False)) + "  " + r[-1])
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    d = volumes.get_volume(args.name).to_dict()
    if args.json:
        _print_json(d)
        return 0
    d["used"] = human_bytes(d.pop("used_bytes"))
    d["labels"] = _labels_text(d["labels"])
    for key in ("name", "kind", "path", "image_path", "used", "quota_mib", "capacity_bytes",
                "disk_format", "disk_fstype", "labels", "created_at", "in_use"):
        value = d[key]
        print(f"{key + ':':<16}{'-' if value is None else value}")
    return 0


def cmd_rm(args: argparse.Namespace) -> int:
    volumes.remove_volume(args.name)
    return 0


def cmd_label(args: argparse.Namespace) -> int:
    h = volumes.update_labels(args.name, dict(args.labels))
    if args.json:
        _print_json(h.labels)
    else:
        print(_labels_text(h.labels))
    return 0


def cmd_read(args: argparse.Namespace) -> int:
    data = volumes.get_volume(args.name).fs().read(args.path)
    if args.json:
        try:
            text: str | None = data.decode()
        except UnicodeDecodeError:
            text = None
        _print_json({"volume": args.name, "path": args.path, "size": len(data),
                     "text": text, "base64": base64.b64encode(data).decode()})
        return 0
    sys.stdout.buffer.write(data)
    sys.stdout.buffer.flush()
    return 0


def cmd_write(args: argparse.Namespace) -> int:
    data = sys.stdin.buffer.read()
    volumes.get_volume(args.name).fs().write(args.path, data)
    return 0


def _type_char(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "dir"
    if stat.S_ISLNK(mode):
        return "symlink"
    if stat.S_ISREG(mode):
        return "file"
    return "other"


def cmd_list_dir(args: argparse.Namespace) -> int:
    with volumes.get_volume(args.name).fs() as fs:
        base = args.path.rstrip("/") or "."
        entries = []
        for name in fs.listdir(base):
            st = fs.stat(f"{base}/{name}", follow_symlinks=False)
            entries.append({"name": name, "type": _type_char(st.st_mode), "size": st.st_size,
                            "mode": oct(stat.S_IMODE(st.st_mode))})
    if args.json:
        _print_json(entries)
    else:
        for e in entries:
            print(e["name"] + ("/" if e["type"] == "dir" else ""))
    return 0


class _OneLineErrors(argparse.ArgumentParser):
    """Usage errors as one line (``msbfs volume create: error: ...``), like every other
    msbfs failure, instead of argparse's usage block."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    vol = subparsers.add_parser("volume", help="manage named volumes",
                                description="Manage named volumes under $MSB_HOME/volumes.")
    vol.error = _OneLineErrors.error.__get__(vol)  # type: ignore[method-assign]
    sub = vol.add_subparsers(dest="volume_command", metavar="SUBCOMMAND", required=True,
                             parser_class=_OneLineErrors)

    def add(name: str, func: Any, help: str, *, json_flag: bool = True) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=help)
        p.set_defaults(func=func)
        if json_flag:
            p.add_argument("--json", action="store_true", help="print JSON")
        return p

    p = add("create", cmd_create, "create a named volume")
    p.add_argument("name")
    p.add_argument("--kind", choices=("dir", "disk"), default="dir")
    p.add_argument("--size", type=_mib, metavar="MIB", help="capacity of a disk volume")
    p.add_argument("--quota", type=_mib, metavar="MIB", help="quota of a dir volume")
    p.add_argument("--quota-inodes", type=_mib, metavar="N",
                   help="inode limit of a dir volume (default: one per 4 KiB of quota)")
    p.add_argument("--label", type=_label, action="append", default=[], metavar="K=V",
                   help="a label (repeatable; later keys overwrite)")

    add("ls", cmd_ls, "list volumes")

    p = add("inspect", cmd_inspect, "show one volume")
    p.add_argument("name")

    p = add("rm", cmd_rm, "remove a volume and its data (refused while in use)",
            json_flag=False)
    p.add_argument("name")

    p = add("label", cmd_label, "add or overwrite labels of a volume")
    p.add_argument("name")
    p.add_argument("labels", type=_label, nargs="+", metavar="K=V")

    p = add("read", cmd_read, "write a file's bytes to stdout (--json: text and base64)")
    p.add_argument("name")
    p.add_argument("path")

    p = add("write", cmd_write, "write stdin to a file (created or truncated)",
            json_flag=False)
    p.add_argument("name")
    p.add_argument("path")

    p = add("list-dir", cmd_list_dir, "list a directory of a volume")
    p.add_argument("name")
    p.add_argument("path", nargs="?", default=".")

