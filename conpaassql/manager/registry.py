"""
The manager's registry: the service tag and every node, in SQLite.

All access goes through an C{adbapi.ConnectionPool("sqlite3", ...)} with one
connection (SQLite serialises writers anyway), so no SQL runs on the reactor
thread.  Every write is committed (WAL journal, C{synchronous=FULL}) before
the Deferred of the call that made it fires: a change is durable before the
API call that made it returns.  The file holds the agents' tokens: it is
created with mode 0600 in a 0700 directory.

Operations in flight are recorded as node states: a node PENDING without a
C{vm_id} is being created (or its creation was interrupted by a crash and is
resumed), a node TERMINATING is being ended.
"""

from __future__ import annotations

import os
import secrets
import sqlite3
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol, TypeVar

from twisted.enterprise import adbapi
from twisted.internet.defer import Deferred, maybeDeferred

from conpaassql.iaas.base import vmName

__all__ = ["NodeRecord", "Registry", "SynchronousPool", "openPool"]

_T = TypeVar("_T")

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS nodes (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL DEFAULT '',
    function TEXT NOT NULL,
    state TEXT NOT NULL,
    role TEXT,
    vm_id TEXT,
    ip TEXT,
    agent_port INTEGER,
    mysqld_port INTEGER,
    token TEXT NOT NULL,
    error TEXT,
    created_at REAL NOT NULL,
    state_since REAL NOT NULL,
    unreachable_since REAL
);
CREATE INDEX IF NOT EXISTS nodes_state ON nodes (state);
"""

_COLUMNS = (
    "id", "name", "function", "state", "role", "vm_id", "ip", "agent_port", "mysqld_port",
    "token", "error", "created_at", "state_since", "unreachable_since",
)


@dataclass
class NodeRecord:
    """One node as the registry keeps it (the node's state is its name)."""

    id: int
    name: str
    function: str
    state: str
    role: str | None
    vm_id: str | None
    ip: str | None
    agent_port: int | None
    mysqld_port: int | None
    token: str = field(repr=False)
    error: str | None
    created_at: float
    state_since: float
    unreachable_since: float | None = None


class Pool(Protocol):
    def runInteraction(self, interaction: Callable[..., _T], *args: Any) -> Deferred[_T]: ...
    def close(self) -> None: ...


def _connect(path: str) -> None:
    """Create the database file readable by its owner only, before SQLite opens it."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o600)
    os.close(fd)
    os.chmod(path, 0o600)


def _prepare(connection: sqlite3.Connection) -> None:
    connection.execute("PRAGMA journal_mode=WAL")
    connection.execute("PRAGMA synchronous=FULL")
    connection.execute("PRAGMA busy_timeout=5000")


def openPool(path: str) -> adbapi.ConnectionPool:
    """An adbapi pool of one SQLite connection to C{path} (created 0600)."""
    _connect(path)
    return adbapi.ConnectionPool(
        "sqlite3",
        path,
        check_same_thread=False,
        cp_min=1,
        cp_max=1,
        cp_openfun=_prepare,
        cp_noisy=False,
    )


class _Transaction:
    def __init__(self, connection: sqlite3.Connection) -> None:
        self._cursor = connection.cursor()

    def execute(self, sql: str, args: Sequence[Any] = ()) -> None:
        self._cursor.execute(sql, args)

    def executescript(self, sql: str) -> None:
        self._cursor.executescript(sql)

    def fetchone(self) -> Any:
        return self._cursor.fetchone()

    def fetchall(self) -> list[Any]:
        return self._cursor.fetchall()

    @property
    def lastrowid(self) -> int:
        return int(self._cursor.lastrowid or 0)


class SynchronousPool:
    """
    The same interactions run at once on the calling thread: for unit tests
    on a L{twisted.internet.task.Clock}, where no thread may run.  It commits
    and rolls back as C{adbapi} does.
    """

    def __init__(self, path: str) -> None:
        _connect(path)
        self._path = path
        self._connection: sqlite3.Connection | None = None
        self._closed = False

    def runInteraction(self, interaction: Callable[..., _T], *args: Any) -> Deferred[_T]:
        assert not self._closed, "the pool is closed"

        def run() -> _T:
            if self._connection is None:
                connection = sqlite3.connect(self._path)
                try:
                    _prepare(connection)
                except BaseException:
                    connection.close()
                    raise
                self._connection = connection
            connection = self._connection
            try:
                result = interaction(_Transaction(connection), *args)
            except BaseException:
                connection.rollback()
                raise
            connection.commit()
            return result

        return maybeDeferred(run)

    def close(self) -> None:
        self._closed = True
        if self._connection is not None:
            self._connection.close()
            self._connection = None


def _record(row: Sequence[Any]) -> NodeRecord:
    return NodeRecord(**dict(zip(_COLUMNS, row)))


class Registry:
    """
    @param pool: an L{openPool} pool (or a L{SynchronousPool} in unit tests);
        the registry closes it in L{close}.
    """

    def __init__(self, pool: Pool) -> None:
        self._pool = pool

    @classmethod
    def atPath(cls, path: str) -> Registry:
        return cls(openPool(path))

    async def open(self) -> None:
        """Create the tables if they are not there."""
        await self._pool.runInteraction(lambda txn: txn.executescript(SCHEMA))

    def close(self) -> None:
        self._pool.close()

    async def serviceTag(self) -> str:
        """The service's tag, made (8 random hex digits) and kept on first use."""

        def interaction(txn: Any) -> str:
            txn.execute("SELECT value FROM meta WHERE key = 'service_tag'")
            row = txn.fetchone()
            if row is not None:
                return str(row[0])
            tag = secrets.token_hex(4)
            txn.execute("INSERT INTO meta (key, value) VALUES ('service_tag', ?)", (tag,))
            return tag

        return await self._pool.runInteraction(interaction)

    async def getMeta(self, key: str) -> str | None:
        """The value kept under C{key}, or L{None}."""

        def interaction(txn: Any) -> str | None:
            txn.execute("SELECT value FROM meta WHERE key = ?", (key,))
            row = txn.fetchone()
            return None if row is None else str(row[0])

        return await self._pool.runInteraction(interaction)

    async def metaWithPrefix(self, prefix: str) -> dict[str, str]:
        """Every key starting with C{prefix}, with its value."""

        def interaction(txn: Any) -> dict[str, str]:
            txn.execute("SELECT key, value FROM meta WHERE substr(key, 1, ?) = ?",
                        (len(prefix), prefix))
            return {str(k): str(v) for k, v in txn.fetchall()}

        return await self._pool.runInteraction(interaction)

    async def setMeta(self, key: str, value: str | None) -> None:
        """Keep C{value} under C{key} (L{None}: forget the key), committed."""

        def interaction(txn: Any) -> None:
            if value is None:
                txn.execute("DELETE FROM meta WHERE key = ?", (key,))
            else:
                txn.execute("INSERT INTO meta (key, value) VALUES (?, ?) "
                            "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                            (key, value))

        await self._pool.runInteraction(interaction)

    async def addNodes(
        self, function: str, count: int, serviceTag: str, now: float
    ) -> list[NodeRecord]:
        """
        Record C{count} new PENDING nodes, each with a fresh agent token and
        its VM name, in one transaction.
        """

        def interaction(txn: Any) -> list[NodeRecord]:
            records = []
            for _ in range(count):
                token = secrets.token_urlsafe(32)
                txn.execute(
                    "INSERT INTO nodes (function, state, token, created_at, state_since) "
                    "VALUES (?, 'PENDING', ?, ?, ?)",
                    (function, token, now, now),
                )
                nodeId = txn.lastrowid
                name = vmName(serviceTag, nodeId)
                txn.execute("UPDATE nodes SET name = ? WHERE id = ?", (name, nodeId))
                records.append(NodeRecord(
                    id=nodeId, name=name, function=function, state="PENDING", role=None,
                    vm_id=None, ip=None, agent_port=None, mysqld_port=None, token=token,
                    error=None, created_at=now, state_since=now,
                ))
            return records

        return await self._pool.runInteraction(interaction)

    async def save(self, record: NodeRecord) -> None:
        """Write every field of C{record}."""
        values = asdict(record)
        columns = [c for c in _COLUMNS if c != "id"]

        def interaction(txn: Any) -> None:
            txn.execute(
                "UPDATE nodes SET " + ", ".join(f"{c} = ?" for c in columns) + " WHERE id = ?",
                [values[c] for c in columns] + [record.id],
            )

        await self._pool.runInteraction(interaction)

    async def liveNodes(self) -> list[NodeRecord]:
        """Every node not TERMINATED, by id."""

        def interaction(txn: Any) -> list[NodeRecord]:
            txn.execute(
                f"SELECT {', '.join(_COLUMNS)} FROM nodes WHERE state != 'TERMINATED' "
                "ORDER BY id"
            )
            return [_record(row) for row in txn.fetchall()]

        return await self._pool.runInteraction(interaction)
