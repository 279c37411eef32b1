"""
The agent's JSON-RPC methods, with the original ConPaaS names.

Results keep the original's C{{"return": ...}} shape.  Errors are raised as
L{conpaassql.rpc.errors.RPCError} subclasses and mapped to the wire in one
place (the dispatcher).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import DeferredLock
from twisted.logger import Logger

from conpaassql.agent.db import DATABASE, Database, checkUser
from conpaassql.agent.dump import LoadProgress, loadDump
from conpaassql.agent.mycnf import InvalidOption
from conpaassql.agent.mysqld import ServerControl, ServerError
from conpaassql.rpc.dispatch import Params, method
from conpaassql.rpc.errors import Conflict, InvalidParams, OperationFailed, WrongState

log = Logger()


class AgentAPI:
    """
    @param server: the node's database server control.
    @param agentPort: the port the API listens on, for get_server_state.
    @param stopAgent: called (after the reply is sent) by C{shutdown}.
    """

    def __init__(
        self,
        server: ServerControl,
        reactor: Any,
        *,
        agentPort: Callable[[], int | None] = lambda: None,
        stopAgent: Callable[[], None] = lambda: None,
        name: str | None = None,
    ) -> None:
        self.server = server
        self.reactor = reactor
        self._agentPort = agentPort
        self._stopAgent = stopAgent
        self.name = name or os.uname().nodename
        self._db: Database | None = None
        self._dbArgs: dict[str, Any] | None = None
        self._control = DeferredLock()
        self.load: LoadProgress | None = None
        self.lastLoad: LoadProgress | None = None
        #: The node's replication (L{conpaassql.agent.replication.Replication}), if wired.
        self.replication: Any = None

    # Helpers.

    def closeDatabase(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None
            self._dbArgs = None

    def _database(self) -> Database:
        if self.server.state != "RUNNING":
            raise WrongState(
                f"the database server is {self.server.state}; this call needs it RUNNING "
                "(see get_server_state, or call start_server)",
                {"state": self.server.state},
            )
        args = self.server.connect_args()
        if self._db is None or args != self._dbArgs:
            self.closeDatabase()
            self._db = Database(args)
            self._dbArgs = args
        return self._db

    async def _locked(self, what: str, action: Callable[[], Any]) -> None:
        if self._control.locked:
            raise Conflict(f"another start/stop/configuration change is in progress ({what} "
                           "refused); try again shortly")
        await self._control.acquire()
        try:
            await action()
        except ServerError as e:
            raise OperationFailed(f"{what} failed: {e}", {"state": self.server.state}) from None
        finally:
            self._control.release()

    # Server state and control.

    @method()
    async def get_server_state(self, params: Params) -> dict[str, Any]:
        """The agent's and its server's state, version, ports and uptime."""
        server = self.server
        started = server.started_at
        state: dict[str, Any] = {
            "id": self.name,
            "name": self.name,
            "state": server.state,
            "isRunningMySQL": server.state == "RUNNING",
            "port": self._agentPort(),
            "mysqld_port": server.port,
            "version": server.version,
            "flavor": server.flavor,
            "pid": server.pid,
            "uptime": int(time.time() - started) if started and server.state == "RUNNING" else 0,
            "restarts": getattr(server, "restarts", 0),
            "role": self.replication.role if self.replication is not None else None,
            "error": server.last_error,
        }
        if self.replication is not None:
            state["replication"] = await self.replication.status()
        if self.load is not None:
            state["load"] = self.load.toDict()
        elif self.lastLoad is not None:
            state["last_load"] = self.lastLoad.toDict()
        return {"return": state}

    @method(aliases=("start_server",))
    async def create_server(self, params: Params) -> dict[str, Any]:
        """Start the database server (creating its instance on first start)."""
        if self.server.state == "RUNNING":
            return {"return": "OK", "state": "RUNNING"}
        await self._locked("start_server", self.server.start)
        return {"return": "OK", "state": self.server.state}

    @method()
    async def stop_server(self, params: Params) -> dict[str, Any]:
        """Stop the database server."""
        self._refuseDuringLoad("stop_server")
        if self.server.state == "STOPPED":
            return {"return": "OK", "state": "STOPPED"}
        self.closeDatabase()
        await self._locked("stop_server", self.server.stop)
        return {"return": "OK", "state": self.server.state}

    @method()
    async def restart_server(self, params: Params) -> dict[str, Any]:
        """Restart the database server."""
        self._refuseDuringLoad("restart_server")
        self.closeDatabase()
        await self._locked("restart_server", self.server.restart)
        return {"return": "OK", "state": self.server.state}

    @method(params=("id_param", "value"))
    async def set_server_configuration(self, params: Params) -> dict[str, Any]:
        """
        Set one whitelisted my.cnf option (port, bind-address, datadir,
        max_connections, ...) and restart the server.
        """
        key = params.str("id_param", maxLength=64)
        value = params.str("value", maxLength=4096, allowNumber=True, allowEmpty=True)
        self._refuseDuringLoad("set_server_configuration")

        async def change() -> None:
            self.closeDatabase()
            try:
                await self.server.set_options({key: value})
            except InvalidOption as e:
                raise InvalidParams(str(e), "value" if getattr(e, "key", None) else "id_param",
                                    {"param": "value", "option": key}) from None

        await self._locked("set_server_configuration", change)
        return {"return": "OK", "state": self.server.state, "option": key}

    # Users.

    @method(params=("username", "password", "host", "databases", "privileges", "grant_option"))
    async def configure_user(self, params: Params) -> dict[str, Any]:
        """
        Create a user, or change its password; grant it privileges on the
        given databases (none by default; C{"*"} for all).
        """
        username = params.str("username", maxLength=80)
        password = params.str("password", maxLength=256)
        # The server keeps account host names in lowercase (and compares
        # them as bytes): 'NULL' is created as 'null'.
        host = params.str("host", "%", maxLength=255).lower()
        databases = params.strList("databases", [], pattern=rf"\*|{DATABASE}",
                                   what="a database name")
        privileges = [p.upper() for p in params.strList(
            "privileges", ["ALL PRIVILEGES"], pattern=r"[A-Za-z ]{1,32}", what="a privilege")]
        if "ALL" in privileges:
            privileges[privileges.index("ALL")] = "ALL PRIVILEGES"
        grantOption = params.bool("grant_option", False)
        checkUser(username, host)
        await self._refuseOnSlave("configure_user")
        result = await self._database().configureUser(
            username, password, host, databases, privileges, grantOption
        )
        return {"return": "OK", "username": username, "host": host, **result}

    @method(params=("username", "host"))
    async def delete_user(self, params: Params) -> dict[str, Any]:
        """Delete a user (at one host, or at every host)."""
        username = params.str("username", maxLength=80)
        host = params.str("host", None, maxLength=255)
        if host is not None:
            host = host.lower()  # as the server keeps it (see configure_user)
        checkUser(username, host or "%")
        await self._refuseOnSlave("delete_user")
        hosts = await self._database().deleteUser(username, host)
        return {"return": "OK", "username": username, "hosts": hosts}

    @method()
    async def get_all_users(self, params: Params) -> dict[str, Any]:
        """The server's accounts as C{{"username", "location"}} objects."""
        return {"return": await self._database().listUsers()}

    # Data.

    def _refuseDuringLoad(self, what: str) -> None:
        if self.replication is not None and self.replication.busy:
            raise Conflict(f"a replication set-up is in progress; {what} must wait until it ends")
        if self.load is not None:
            raise Conflict(
                f"a dump is being loaded ({self.load.loaded} of {self.load.total} bytes); "
                f"{what} must wait until it ends"
            )

    async def _refuseOnSlave(self, what: str) -> None:
        """A write on a slave would make it diverge from its master."""
        if self.replication is not None and await self.replication.slaveStatus() is not None:
            raise WrongState(
                f"this node is a replication slave; {what} must be sent to its master "
                "(writes reach the slaves by replication)"
            )

    @method(params=("database",), aliases=("send_mysqldump",), upload=True)
    async def create_with_MySQLdump(self, params: Params) -> dict[str, Any]:
        """
        Load an SQL dump (multipart file field C{mysqldump}) through the
        server's client; progress shows in get_server_state.
        """
        upload = params.upload("mysqldump")
        database = params.str("database", None, pattern=DATABASE, what="a database name")
        self._database()  # the server must be RUNNING
        self._refuseDuringLoad("another load")
        await self._refuseOnSlave("create_with_MySQLdump")
        if not self.server.client_binary:
            raise OperationFailed("no mariadb/mysql client program on this node")
        argv = [
            self.server.client_binary,
            f"--defaults-file={self.server.client_defaults_file}",
            "--batch",
            "--max-allowed-packet=1G",
            "--default-character-set=utf8mb4",
        ]
        if database is not None:
            argv.append(database)
        env = self.server.child_environment()
        progress = LoadProgress(total=upload.size)
        self.load = progress
        started = time.monotonic()
        log.info("loading a dump of {size} bytes", size=upload.size)
        try:
            await loadDump(self.reactor, argv, env, upload.chunks(), progress)
        except OperationFailed as e:
            log.warn("dump load failed: {message}", message=e.message)
            raise
        finally:
            self.load = None
            self.lastLoad = progress
        elapsed = time.monotonic() - started
        log.info("loaded a dump of {size} bytes in {elapsed:.1f} s", size=upload.size,
                 elapsed=elapsed)
        return {"return": "OK", "bytes": upload.size, "seconds": round(elapsed, 3)}

    # Metrics.

    @method()
    async def get_performance(self, params: Params) -> dict[str, Any]:
        """Counters from SHOW GLOBAL STATUS, with the time they were read."""
        status = await self._database().globalStatus()
        return {"return": {"timestamp": time.time(), "status": status}}

    # The agent itself.

    @method()
    async def shutdown(self, params: Params) -> dict[str, Any]:
        """Stop the database server and the agent."""
        self._refuseDuringLoad("shutdown")
        self.reactor.callLater(0.2, self._stopAgent)
        return {"return": "OK", "state": "STOPPING"}
