"""The SQLite database of volume records: ``$MSB_HOME/msbfs.db``.

WAL mode so readers never block the writer, a busy timeout so several ``msbfs``
processes can write at once, and a schema versioned with ``PRAGMA user_version``:
``MIGRATIONS[i]`` takes a database from version ``i`` to ``i + 1``. Later issues append
to ``MIGRATIONS``; they never edit an entry that has shipped.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from msbfs.errors import MsbfsError

if TYPE_CHECKING:
    import sqlite3

#: Volume quotas and disk sizes are recorded in mebibytes (``quota_mib``, ``size_mib``).
MIB = 1024 * 1024

#: How long a writer waits for another process's write transaction (milliseconds).
BUSY_TIMEOUT_MS = 30_000

MIGRATIONS: list[str] = [
    # 0 -> 1: volumes and their labels.
    """
    CREATE TABLE volumes (
        name           TEXT PRIMARY KEY,
        kind           TEXT NOT NULL CHECK (kind IN ('dir', 'disk')),
        quota_mib      INTEGER,
        capacity_bytes INTEGER,
        disk_format    TEXT,
        disk_fstype    TEXT,
        image_path     TEXT,
        created_at     TEXT NOT NULL
    );
    CREATE TABLE volume_labels (
        volume TEXT NOT NULL REFERENCES volumes(name) ON DELETE CASCADE,
        key    TEXT NOT NULL,
        value  TEXT NOT NULL,
        PRIMARY KEY (volume, key)
    );
    """,
    # 1 -> 2: an inode quota beside the byte quota (NULL: derived from quota_mib).
    """
    ALTER TABLE volumes ADD COLUMN quota_inodes INTEGER;
    """,
]

SCHEMA_VERSION = len(MIGRATIONS)


def msb_home() -> Path:
    """``$MSB_HOME``, defaulting to ``~/.microsandbox``. Read on every call so tests (and
    callers) can point it elsewhere at run time."""
    return Path(os.environ.get("MSB_HOME") or Path.home() / ".microsandbox")


def db_path() -> Path:
    return msb_home() / "msbfs.db"


def connect() -> sqlite3.Connection:
    """Open (creating and migrating as needed) the database. The connection is in
    autocommit mode: writers use ``transaction()``."""
    # Imported here: MIB and msb_home are wanted by processes that never open the
    # database (``msbfs serve`` of a host path: sqlite3 and datetime are ~450 KiB of
    # its resident memory), and this is where every use of the store begins.
    import sqlite3

    home = msb_home()
    home.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(db_path(), timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None)
    try:
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA foreign_keys = ON")
        _migrate(conn)
    except BaseException:
        conn.close()
        raise
    return conn


def _migrate(conn: sqlite3.Connection) -> None:
    (version,) = conn.execute("PRAGMA user_version").fetchone()
    if version == SCHEMA_VERSION:
        return
    # IMMEDIATE: two processes migrating at once serialise here, and the second sees
    # the version the first wrote.
    with transaction(conn):
        (version,) = conn.execute("PRAGMA user_version").fetchone()
        if version > SCHEMA_VERSION:
            raise MsbfsError(
                f"{db_path()} has schema version {version}, newer than this msbfs "
                f"understands ({SCHEMA_VERSION}); upgrade msbfs")
        for step in MIGRATIONS[version:]:
            for statement in step.split(";"):
                if statement.strip():
                    conn.execute(statement)
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")


@contextlib.contextmanager
def transaction(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """A write transaction, taken at once (``BEGIN IMMEDIATE``) so that a
    read-then-write never fails half way with SQLITE_BUSY; rolled back on any error."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


@contextlib.contextmanager
def opened() -> Iterator[sqlite3.Connection]:
    conn = connect()
    try:
        yield conn
    finally:
        conn.close()
