"""
Replication, the agent's side: what the manager calls to make this node a
master or a slave, to watch it, and to switch roles over.

  - C{set_up_replica_master}: server id, binary log (ROW), GTID, writable;
    a replication account with C{REPLICATION SLAVE} only.  Idempotent.
  - C{set_up_replica_slave}: from explicit binary log coordinates, from a
    GTID position, or seeded: a consistent snapshot pulled from the
    master's agent (L{conpaassql.agent.snapshot}) and loaded while it
    streams, then replication started from exactly the snapshot's GTID.
    The seed runs in the background; its phase and bytes show in
    C{get_server_state}'s C{replication} object.  A failed set-up leaves no
    replication configured (C{RESET SLAVE ALL}) and reports its error.
  - C{get_replication_status}, C{stop_replica}, C{start_replica},
    C{set_read_only}, C{wait_for_gtid}, C{promote}.

Options go to C{my.cnf} through the whitelisted editor
(L{conpaassql.agent.mycnf}); the server is restarted only when an option
that is not dynamic changes (binary log, relay log, log_slave_updates);
the others are also set with C{SET GLOBAL}.  The role (C{master} after
set-up or promotion) is kept in C{replication.json} in the state
directory; a slave is recognised by the server's own replica status.
Passwords are bound parameters or quoted by the server (C{QUOTE()}), and
never logged.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pymysql
from treq.client import HTTPClient
from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.defer import TimeoutError as DeferredTimeoutError
from twisted.internet.task import deferLater
from twisted.logger import Logger
from twisted.web.client import Agent, HTTPConnectionPool

from conpaassql.agent import mycnf
from conpaassql.agent.db import DATABASE, HOST
from conpaassql.agent.replsql import Dialect, checkGtidPos, checkMasterHost, checkReplUser
from conpaassql.agent.snapshot import SeedResult, streamSnapshot
from conpaassql.common.files import write_file_atomic
from conpaassql.rpc.dispatch import Params, method
from conpaassql.rpc.errors import (
    Conflict,
    InvalidParams,
    MySQLError,
    OperationFailed,
    RPCError,
    Timeout,
    WrongState,
)

log = Logger()

MASTER = "master"
SLAVE = "slave"

DEFAULT_REPL_USER = "conpaassql_repl"
DEFAULT_LOG_BIN = "mysql-bin"
DEFAULT_RELAY_LOG = "relay-bin"

_URL = r"https?://[A-Za-z0-9.\-:\[\]]{1,300}(?::[0-9]{1,5})?(?:/[A-Za-z0-9._~\-/]*)?"


def _yes(value: Any) -> bool:
    return str(value or "").lower() == "yes"


def _scrub(message: str, *secrets: str) -> str:
    for secret in secrets:
        if secret:
            message = message.replace(secret, "***")
    return message


def _phase(op: dict[str, Any], name: str) -> None:
    """Move a set-up to its next phase, noting how long the last one took."""
    now = time.time()
    since = op.get("phase_started", op["started"])
    op.setdefault("phase_seconds", {})[op["phase"]] = round(now - since, 3)
    op["phase"] = name
    op["phase_started"] = now


class Replication(Service):
    """
    The node's replication role and the operations on it.

    @param database: returns the node's L{conpaassql.agent.db.Database}
        (raises L{WrongState} unless the server is RUNNING).
    @param server: the node's L{conpaassql.agent.mysqld.ServerControl}.
    @param locked: runs a server operation (restart) under the agent's
        control lock: C{locked(what, action)} (see C{AgentAPI._locked}).
    @param closeDatabase: drops the agent's connection pool before a restart.
    """

    #: Seconds to wait for the replication threads to run after START SLAVE.
    startTimeout = 60.0
    #: Seconds of silence after which a snapshot transfer is abandoned.
    idleTimeout = 300.0
    connectTimeout = 30.0
    #: Seconds the replica status may take in get_server_state.
    statusTimeout = 10.0

    def __init__(
        self,
        database: Callable[[], Any],
        server: Any,
        reactor: Any,
        stateDir: str,
        *,
        locked: Callable[[str, Callable[[], Awaitable[Any]]], Awaitable[None]],
        closeDatabase: Callable[[], None] = lambda: None,
    ) -> None:
        self._database = database
        self.server = server
        self.reactor = reactor
        self.statePath = os.path.join(stateDir, "replication.json")
        self._locked = locked
        self._closeDatabase = closeDatabase
        self.saved: dict[str, Any] = self._load()
        #: The operation in progress (a set-up), or None.
        self.operation: dict[str, Any] | None = None
        #: The last finished set-up, with its error if it failed.
        self.lastOperation: dict[str, Any] | None = None
        self._task: Deferred[None] | None = None
        self._pool: HTTPConnectionPool | None = None
        self.http: Any = None
        #: Test hook for the seed transfer (see L{streamSnapshot}'s C{gate}).
        self.seedGate: Callable[[int], Awaitable[None] | None] | None = None

    # -- service

    def startService(self) -> None:
        super().startService()
        self._pool = HTTPConnectionPool(self.reactor, persistent=False)
        agent: Any = Agent(self.reactor, pool=self._pool, connectTimeout=self.connectTimeout)
        self.http = HTTPClient(agent)

    def stopService(self) -> Deferred[None]:
        super().stopService()
        return Deferred.fromCoroutine(self._stop())

    async def _stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(Exception):  # the seed records its own end
                await self._task
        if self._pool is not None:
            await self._pool.closeCachedConnections()

    # -- state

    def _load(self) -> dict[str, Any]:
        try:
            with open(self.statePath) as f:
                data = json.load(f)
            return data if isinstance(data, dict) else {}
        except (OSError, ValueError):
            return {}

    def _save(self, **values: Any) -> None:
        self.saved = {k: v for k, v in values.items() if v is not None}
        write_file_atomic(self.statePath, json.dumps(self.saved).encode(), mode=0o600)

    @property
    def busy(self) -> bool:
        return self.operation is not None

    def dialect(self) -> Dialect:
        return Dialect.fromVersion(self.server.version, self.server.flavor)

    def _refuseBusy(self, what: str) -> None:
        if self.operation is not None:
            raise Conflict(
                f"a replication set-up is in progress (phase {self.operation['phase']}); "
                f"{what} must wait until it ends",
                {"phase": self.operation["phase"]},
            )

    # -- SQL helpers

    async def _run(self, f: Callable[..., Any], *args: Any) -> Any:
        return await self._database().transact(f, *args)

    async def _query(self, sql: str, args: Any = None) -> list[tuple[Any, ...]]:
        return list(await self._database().query(sql, args))

    async def _exec(self, *statements: str) -> None:
        for sql in statements:
            await self._query(sql)

    async def slaveStatus(self) -> dict[str, Any] | None:
        """The server's replica status, in one shape for both flavors, or None."""
        dialect = self.dialect()

        def run(txn: Any) -> dict[str, Any] | None:
            txn.execute(dialect.replicaStatus())
            row = txn.fetchone()
            if row is None:
                return None
            return dict(zip([d[0] for d in txn.description], row))

        row = await self._run(run)
        if row is None:
            return None

        def get(*keys: str) -> Any:
            for k in keys:
                if k in row:
                    return row[k]
            return None

        ioError = get("Last_IO_Error") or ""
        sqlError = get("Last_SQL_Error") or ""
        return {
            "master_host": get("Master_Host", "Source_Host"),
            "master_port": get("Master_Port", "Source_Port"),
            "io_running": _yes(get("Slave_IO_Running", "Replica_IO_Running")),
            "io_state": get("Slave_IO_Running", "Replica_IO_Running"),
            "sql_running": _yes(get("Slave_SQL_Running", "Replica_SQL_Running")),
            "seconds_behind": get("Seconds_Behind_Master", "Seconds_Behind_Source"),
            "last_io_error": ioError or None,
            "last_sql_error": sqlError or None,
            "last_error": sqlError or ioError or None,
            "master_log_file": get("Master_Log_File", "Source_Log_File"),
            "read_master_log_pos": get("Read_Master_Log_Pos", "Read_Source_Log_Pos"),
            "exec_master_log_pos": get("Exec_Master_Log_Pos", "Exec_Source_Log_Pos"),
            "using_gtid": get("Using_Gtid", "Auto_Position"),
            "gtid_io_pos": get("Gtid_IO_Pos", "Retrieved_Gtid_Set"),
        }

    async def coordinates(self) -> dict[str, Any]:
        """The binary log file and position and the GTID positions."""
        dialect = self.dialect()
        rows = await self._query(dialect.masterStatus())
        binlog, current = (await self._query(dialect.gtidPositions()))[0]
        (serverId, readOnly) = (await self._query("SELECT @@GLOBAL.server_id, @@GLOBAL.read_only"))[0]
        return {
            "master_log_file": rows[0][0] if rows else None,
            "master_log_pos": int(rows[0][1]) if rows else None,
            "gtid_binlog_pos": binlog,
            "gtid_current_pos": current,
            "server_id": int(serverId),
            "read_only": bool(int(readOnly)),
        }

    @property
    def role(self) -> str | None:
        return self.saved.get("role")

    async def status(self) -> dict[str, Any]:
        """The C{replication} object of get_server_state."""
        out: dict[str, Any] = {"role": self.role}
        if self.operation is not None:
            out.update(self._describe(self.operation))
        elif self.lastOperation is not None:
            out["last_setup"] = self._describe(self.lastOperation)
            if self.lastOperation.get("error"):
                out["error"] = self.lastOperation["error"]
                out["phase"] = "failed"
        if self.server.state != "RUNNING":
            return out

        async def read() -> tuple[dict[str, Any] | None, tuple[Any, ...]]:
            slave = await self.slaveStatus()
            return slave, (await self._query(self.dialect().gtidPositions()))[0]

        reading = Deferred.fromCoroutine(read())
        reading.addTimeout(self.statusTimeout, self.reactor)
        try:
            slave, gtid = await reading
        except RPCError as e:
            out["status_error"] = e.message
            return out
        except DeferredTimeoutError:
            out["status_error"] = (f"the server did not answer within {self.statusTimeout:g} s")
            return out
        out["gtid_current_pos"] = gtid[1]
        out["gtid_binlog_pos"] = gtid[0]
        if slave is not None:
            out.update(slave)
            if self.operation is None and "phase" not in out:
                out["phase"] = "replicating" if slave["io_running"] and slave["sql_running"] \
                    else "stopped"
        return out

    def _describe(self, op: dict[str, Any]) -> dict[str, Any]:
        end = op.get("ended") or time.time()
        d = {k: v for k, v in op.items()
             if k not in ("started", "ended", "transfer", "phase_started")}
        if "transfer" in op:
            d["bytes"] = op["transfer"].bytes
        d["seconds"] = round(end - op["started"], 3)
        return d

    # -- configuration

    async def _applyOptions(self, what: str, options: dict[str, str]) -> bool:
        """
        Write C{options} to my.cnf; restart the server if a static one
        changed (or the binary log is off), else set the dynamic ones live.

        @return: whether the server was restarted.
        """
        dialect = self.dialect()
        path = getattr(self.server, "mycnf_path", None)
        if not path:
            raise OperationFailed("no my.cnf is configured for this server; cannot set it up")
        try:
            validated = mycnf.validate_options(options)
        except mycnf.InvalidOption as e:
            raise InvalidParams(str(e)) from None
        try:
            current = mycnf.read_mycnf(path).items("mysqld")
        except FileNotFoundError:
            current = {}
        except OSError as e:
            raise OperationFailed(f"cannot read {path}: {e}") from None
        changed = {k: v for k, v in validated.items() if current.get(mycnf.normalise_key(k)) != v}
        logBin = int((await self._query("SELECT @@GLOBAL.log_bin"))[0][0])
        restart = not logBin or any(
            mycnf.normalise_key(k) in dialect.restartOptions() for k in changed
        )
        if changed or restart:
            async def change() -> None:
                if restart:
                    self._closeDatabase()
                await self.server.set_options(validated, restart=restart)

            await self._locked(what, change)
        if not restart:
            # The names are the dialect's own (never a caller's), the values
            # validated; each is also a bound parameter.
            for name, value in validated.items():
                key = mycnf.normalise_key(name)
                if key in dialect.restartOptions() or key in ("read_only", "super_read_only"):
                    continue
                arg: Any = int(value) if value.isdigit() else value
                await self._query(f"SET GLOBAL {key} = %s", (arg,))
            readOnly = validated.get("read_only") == "ON"
            await self._exec(*dialect.setReadOnly(readOnly))
        return restart

    def _configured(self, name: str, default: str) -> str:
        """A base name set in my.cnf (log_bin, relay_log), or C{default}."""
        path = getattr(self.server, "mycnf_path", None)
        try:
            value = mycnf.read_mycnf(path).get("mysqld", name) if path else None
            return mycnf.validate_option(name, value) if value else default
        except (OSError, mycnf.InvalidOption):
            return default

    def _logBin(self) -> str:
        return self._configured("log_bin", DEFAULT_LOG_BIN)

    def _relayLog(self) -> str:
        return self._configured("relay_log", DEFAULT_RELAY_LOG)

    async def _ensureAccount(self, user: str, host: str, password: str) -> bool:
        """
        Create the replication account (or reset its password) with only
        the replication privilege.

        @return: whether it was created.
        """
        privileges = self.dialect().replicationPrivileges()

        def run(txn: Any) -> bool:
            txn.execute("SELECT COUNT(*) FROM mysql.user WHERE User = %s AND Host = %s",
                        (user, host))
            exists = txn.fetchone()[0] > 0
            if exists:
                txn.execute("ALTER USER %s@%s IDENTIFIED BY %s", (user, host, password))
                txn.execute("REVOKE ALL PRIVILEGES, GRANT OPTION FROM %s@%s", (user, host))
            else:
                txn.execute("CREATE USER %s@%s IDENTIFIED BY %s", (user, host, password))
            txn.execute(f"GRANT {privileges} ON *.* TO %s@%s", (user, host))
            return not exists

        try:
            return bool(await self._run(run))
        except MySQLError as e:
            raise MySQLError(_scrub(e.message, password), e.data) from None

    # -- master

    @method(params=("server_id", "repl_user", "repl_password", "repl_host"))
    async def set_up_replica_master(self, params: Params) -> dict[str, Any]:
        """
        Make this node a replication master: server_id, binary log (ROW),
        GTID, writable, and a replication account with only REPLICATION
        SLAVE.  Answers the coordinates; on a master it changes nothing.
        """
        serverId = params.int("server_id", min=1, max=4294967295)
        user = checkReplUser(params.str("repl_user", DEFAULT_REPL_USER, maxLength=80))
        password = params.str("repl_password", maxLength=self._maxPassword())
        host = params.str("repl_host", "%", pattern=HOST, what="a host or pattern")
        self._refuseBusy("set_up_replica_master")
        self._database()
        self.operation = {"kind": "master", "phase": "configuring", "started": time.time()}
        try:
            if await self.slaveStatus() is not None:
                raise WrongState("this node is a replication slave; call promote to make it "
                                 "the master")
            if self.role == MASTER:
                if self.saved.get("server_id") != serverId:
                    raise Conflict(
                        "this node is already a master with server_id "
                        f"{self.saved.get('server_id')}",
                        {"server_id": self.saved.get("server_id")},
                    )
                coords = await self.coordinates()
                return {"return": {"role": MASTER, "changed": False,
                                   "message": "already the master; nothing changed", **coords}}
            options = self.dialect().masterOptions(serverId, self._logBin())
            restarted = await self._applyOptions("set_up_replica_master", options)
            created = await self._ensureAccount(user, host, password)
            self._save(role=MASTER, server_id=serverId, repl_user=user, repl_host=host)
            coords = await self.coordinates()
        finally:
            self.operation = None
        log.info("this node is now a replication master (server_id {sid}, restarted: {r})",
                 sid=serverId, r=restarted)
        return {"return": {"role": MASTER, "changed": True, "restarted": restarted,
                           "account_created": created, "repl_user": user, **coords}}

    def _maxPassword(self) -> int:
        return 96 if self.dialect().mariadb else 32

    # -- slave

    @method(params=(
        "master_host", "master_port", "master_log_file", "master_log_pos", "master_gtid_pos",
        "slave_server_id", "repl_user", "repl_password", "master_agent_url",
        "master_agent_token", "databases",
    ))
    async def set_up_replica_slave(self, params: Params) -> dict[str, Any]:
        """
        Make this node a slave.  Forms: master_log_file + master_log_pos
        (explicit coordinates), master_gtid_pos (GTID), or master_agent_url +
        master_agent_token (seed a snapshot from the master's agent, in the
        background; follow it in get_server_state).
        """
        host = checkMasterHost(params.str("master_host", maxLength=255))
        port = params.int("master_port", 3306, min=1, max=65535)
        serverId = params.int("slave_server_id", min=1, max=4294967295)
        user = checkReplUser(params.str("repl_user", DEFAULT_REPL_USER, maxLength=80))
        password = params.str("repl_password", maxLength=self._maxPassword())
        seeded = "master_agent_url" in params
        coordinates = "master_log_file" in params or "master_log_pos" in params
        gtid = "master_gtid_pos" in params
        if seeded + coordinates + gtid != 1:
            raise InvalidParams(
                "give exactly one of: master_log_file + master_log_pos, master_gtid_pos, "
                "or master_agent_url + master_agent_token"
            )
        self._refuseBusy("another set-up")
        self._database()
        source = {"master_host": host, "master_port": port}
        if seeded:
            url = params.str("master_agent_url", pattern=_URL, maxLength=400, what="an http URL")
            token = params.str("master_agent_token", maxLength=1024)
            databases = params.strList("databases", None, pattern=DATABASE,
                                       what="a database name")
            self.operation = {"kind": "seed", "phase": "configuring", "bytes": 0,
                              "started": time.time(), **source}
            self._task = Deferred.fromCoroutine(
                self._seed(url, token, databases, host, port, serverId, user, password)
            )
            self._task.addErrback(lambda f: log.failure("replica seed crashed", f))
            return {"return": "OK", "state": "SEEDING", "phase": "configuring"}
        logFile = logPos = startGtid = None
        if coordinates:
            logFile = params.str("master_log_file", maxLength=255)
            logPos = params.int("master_log_pos", min=4)
        else:
            startGtid = checkGtidPos(params.str("master_gtid_pos", maxLength=4096,
                                                allowEmpty=True))
        self.operation = {"kind": "coordinates" if coordinates else "gtid",
                          "phase": "configuring", "started": time.time(), **source}
        try:
            await self._setUpSlave(host, port, serverId, user, password,
                                   logFile=logFile, logPos=logPos, gtid=startGtid)
        finally:
            self.lastOperation, self.operation = self.operation, None
            self.lastOperation["ended"] = time.time()
        return {"return": await self.status()}

    async def _setUpSlave(
        self, host: str, port: int, serverId: int, user: str, password: str, *,
        logFile: str | None = None, logPos: int | None = None, gtid: str | None = None,
        seed: Callable[[], Awaitable[str]] | None = None,
    ) -> None:
        """
        Configure, (seed,) point at the master and start; on any failure
        undo the replica configuration and re-raise.
        """
        op = self.operation
        assert op is not None
        dialect = self.dialect()
        previous = self.saved
        wasReadOnly: bool | None = None
        try:
            wasReadOnly = bool(int((await self._query("SELECT @@GLOBAL.read_only"))[0][0]))
            await self._exec(dialect.stopReplica(), dialect.resetReplica())
            options = dialect.slaveOptions(serverId, self._logBin(), self._relayLog())
            await self._applyOptions("set_up_replica_slave", options)
            if seed is not None:
                await self._exec(dialect.resetBinlog())
                _phase(op, "copying")
                gtid = await seed()
            _phase(op, "starting")
            await self._changeSource(host, port, user, password, logFile, logPos, gtid,
                                     seed is not None)
            await self._exec(dialect.startReplica())
            await self._waitRunning()
        except BaseException as e:
            _phase(op, "failed")
            op["error"] = _scrub(e.message if isinstance(e, RPCError) else str(e), password)
            log.error("replica set-up failed: {error}", error=op["error"])
            await self._undo(previous, wasReadOnly)
            if isinstance(e, RPCError):
                raise type(e)(op["error"], e.data) from None
            raise
        _phase(op, "replicating")
        self._save(role=SLAVE, server_id=serverId, master_host=host, master_port=port,
                   repl_user=user)
        log.info("replicating from {host}:{port} (server_id {sid})", host=host, port=port,
                 sid=serverId)

    async def _undo(self, previous: dict[str, Any], wasReadOnly: bool | None) -> None:
        """
        After a failed set-up: no replica configuration, and writable again
        if it was before; the role is no longer slave.
        """
        dialect = self.dialect()
        try:
            await self._exec(dialect.stopReplica(), dialect.resetReplica())
            if wasReadOnly is False:
                await self._setReadOnly(False)
        except WrongState:
            log.info("the server is not running; replica configuration not reset")
        except Exception:  # noqa: BLE001 - best effort, logged
            log.failure("could not reset the replica configuration after a failed set-up")
        if previous.get("role") == SLAVE:
            self._save()

    async def _setReadOnly(self, value: bool) -> None:
        """Read-only on or off, now and in my.cnf (no restart)."""
        dialect = self.dialect()
        await self._exec(*dialect.setReadOnly(value))
        options = {"read_only": "ON" if value else "OFF"}
        if not dialect.mariadb:
            options["super_read_only"] = options["read_only"]
        await self.server.set_options(options, restart=False)

    async def _changeSource(
        self, host: str, port: int, user: str, password: str,
        logFile: str | None, logPos: int | None, gtid: str | None, seeded: bool,
    ) -> None:
        dialect = self.dialect()

        def run(txn: Any) -> None:
            txn.execute("SELECT @@SESSION.sql_mode")
            mode = str(txn.fetchone()[0])
            if "NO_BACKSLASH_ESCAPES" in mode.split(","):
                kept = ",".join(m for m in mode.split(",") if m != "NO_BACKSLASH_ESCAPES")
                txn.execute("SET SESSION sql_mode = %s", (kept,))
            txn.execute("SELECT QUOTE(%s), QUOTE(%s)", (user, password))
            userLiteral, passwordLiteral = txn.fetchone()
            if gtid is not None:
                for sql in dialect.setGtidStart(seeded):
                    if "gtid_binlog_state" in sql and not gtid:
                        continue
                    txn.execute(sql, (gtid,) if "%s" in sql else None)
            txn.execute(dialect.changeSource(host, port, userLiteral, passwordLiteral,
                                             logFile=logFile, logPos=logPos))

        try:
            await self._run(run)
        except MySQLError as e:
            raise MySQLError(_scrub(e.message, password), e.data) from None
        except pymysql.MySQLError as e:
            raise MySQLError(_scrub(str(e), password)) from None

    async def _waitRunning(self) -> dict[str, Any]:
        deadline = time.monotonic() + self.startTimeout
        delay = 0.02
        while True:
            status = await self.slaveStatus()
            if status is None:
                raise OperationFailed("the replica configuration disappeared")
            if status["io_running"] and status["sql_running"]:
                return status
            if status["last_sql_error"] or (status["last_io_error"] and not status["io_running"]):
                raise OperationFailed(f"replication did not start: {status['last_error']}",
                                      {"io_running": status["io_state"],
                                       "sql_running": status["sql_running"]})
            if time.monotonic() > deadline:
                raise Timeout(f"the replication threads were not running after "
                              f"{self.startTimeout:g} s: {status['io_state']}")
            await deferLater(self.reactor, delay, lambda: None)
            delay = min(delay * 2, 0.5)

    async def _seed(self, url: str, token: str, databases: list[str] | None, host: str,
                    port: int, serverId: int, user: str, password: str) -> None:
        op = self.operation
        assert op is not None
        result = SeedResult()

        async def seed() -> str:
            argv = self._clientArgv()
            op["transfer"] = result
            await streamSnapshot(
                self.reactor, self.http, url, token, argv, self.server.child_environment(),
                result, databases=databases, connectTimeout=self.connectTimeout,
                idleTimeout=self.idleTimeout, gate=self.seedGate,
            )
            op["gtid"] = result.gtid
            assert result.gtid is not None
            return result.gtid

        try:
            with contextlib.suppress(Exception):  # recorded in op["error"] and logged
                await self._setUpSlave(host, port, serverId, user, password, seed=seed)
        finally:
            op["ended"] = time.time()
            self.lastOperation, self.operation = op, None
            self._task = None

    def _clientArgv(self) -> list[str]:
        if not self.server.client_binary:
            raise OperationFailed("no mariadb/mysql client program on this node")
        return [
            self.server.client_binary,
            f"--defaults-file={self.server.client_defaults_file}",
            "--batch",
            "--max-allowed-packet=1G",
            "--default-character-set=utf8mb4",
            "--init-command=SET SESSION sql_log_bin=0",
        ]

    # -- watching and switching

    @method()
    async def get_replication_status(self, params: Params) -> dict[str, Any]:
        """Role, set-up phase and bytes, replica threads, lag, errors, GTID positions."""
        return {"return": await self.status()}

    @method()
    async def stop_replica(self, params: Params) -> dict[str, Any]:
        """Stop the replication threads (the configuration stays)."""
        self._refuseBusy("stop_replica")
        await self._requireSlave()
        await self._exec(self.dialect().stopReplica())
        return {"return": await self.status()}

    @method()
    async def start_replica(self, params: Params) -> dict[str, Any]:
        """Start the replication threads again; answers once they run."""
        self._refuseBusy("start_replica")
        await self._requireSlave()
        await self._exec(self.dialect().startReplica())
        await self._waitRunning()
        return {"return": await self.status()}

    async def _requireSlave(self) -> None:
        self._database()
        if await self.slaveStatus() is None:
            raise WrongState("this node is not a replication slave")

    @method(params=("value",))
    async def set_read_only(self, params: Params) -> dict[str, Any]:
        """Make the server read-only (true) or writable (false), now and after restarts."""
        value = params.bool("value")
        self._refuseBusy("set_read_only")
        self._database()
        await self._setReadOnly(value)
        return {"return": {"read_only": value}}

    @method(params=("gtid_pos", "timeout"))
    async def wait_for_gtid(self, params: Params) -> dict[str, Any]:
        """
        Wait until this server has applied the GTID position (at most
        C{timeout} seconds, default 30); fails with Timeout otherwise.
        """
        gtid = checkGtidPos(params.str("gtid_pos", maxLength=4096, allowEmpty=True), "gtid_pos")
        timeout = params.int("timeout", 30, min=0, max=3600)
        dialect = self.dialect()
        self._database()
        (result,) = (await self._query(dialect.waitForGtid(), (gtid, timeout)))[0]
        if result is None or int(result) != 0:
            raise Timeout(f"GTID position {gtid} not reached within {timeout} s",
                          {"gtid_pos": gtid})
        current = (await self._query(dialect.gtidPositions()))[0][1]
        return {"return": {"reached": True, "gtid_current_pos": current}}

    @method()
    async def promote(self, params: Params) -> dict[str, Any]:
        """
        Make this slave the master: stop and forget replication, make it
        writable, binary log on.  Answers the new master's coordinates.
        """
        self._refuseBusy("promote")
        self._database()
        dialect = self.dialect()
        self.operation = {"kind": "promote", "phase": "configuring", "started": time.time()}
        try:
            wasSlave = await self.slaveStatus() is not None
            if not wasSlave and self.role == MASTER:
                return {"return": {"role": MASTER, "changed": False,
                                   "message": "already the master", **await self.coordinates()}}
            if not wasSlave:
                raise WrongState(
                    "this node is not a replication slave; use set_up_replica_master")
            serverId = int((await self._query("SELECT @@GLOBAL.server_id"))[0][0])
            await self._exec(dialect.stopReplica(), dialect.resetReplica())
            await self._applyOptions("promote", dialect.masterOptions(serverId, self._logBin()))
            self._save(role=MASTER, server_id=serverId,
                       repl_user=self.saved.get("repl_user"))
        finally:
            self.operation = None
        log.info("promoted to replication master (server_id {sid})", sid=serverId)
        return {"return": {"role": MASTER, "changed": True, **await self.coordinates()}}
