"""
C{twistd conpaassql-agent}: options and the service tree.

L{makeService} only wires services; the state directory, the token and the
database server are set up when the service starts.
"""

from __future__ import annotations

import os
from typing import Any, cast

from twisted.application import service
from twisted.internet import endpoints
from twisted.internet.defer import Deferred, succeed
from twisted.logger import Logger
from twisted.python import usage

from conpaassql.agent.api import AgentAPI
from conpaassql.agent.config import AgentConfig, ConfigError, load_config
from conpaassql.agent.mysqld import ManagedServer, ScriptServer, ServerControl
from conpaassql.agent.replication import Replication
from conpaassql.agent.snapshot import AgentRoot, SnapshotResource, SnapshotSource
from conpaassql.common.files import read_or_create_token
from conpaassql.rpc.dispatch import Dispatcher, Introspection
from conpaassql.rpc.resource import ConnectionTracker, RPCResource, TokenAuth, makeSite

log = Logger()

DEFAULT_LISTEN = "tcp:60000:interface=127.0.0.1"
DEFAULT_STATE_DIR = "~/.local/state/conpaassql/agent"


class Options(usage.Options):
    synopsis = "[options]"
    longdesc = (
        "Runs the conpaassql agent: controls this node's MySQL/MariaDB server and answers "
        "JSON-RPC on one URL.  With no --config it creates and runs its own MariaDB "
        "instance in the state directory."
    )
    optParameters = [
        ["listen", "l", DEFAULT_LISTEN, "Endpoint to serve the JSON-RPC API on."],
        ["state-dir", "d", DEFAULT_STATE_DIR, "Directory for the agent's state and server."],
        ["config", "c", None, "INI configuration file (see etc/agent.cnf)."],
        ["token-file", "t", None, "API token file (default: STATE_DIR/api-token)."],
        ["max-upload", None, str(64 * 1024**3), "Largest upload accepted, in bytes."],
    ]
    optFlags = [["check-config", None, "Validate the configuration and exit."]]

    def postOptions(self) -> None:
        self["state-dir"] = os.path.abspath(os.path.expanduser(self["state-dir"]))
        if self["token-file"] is None:
            self["token-file"] = os.path.join(self["state-dir"], "api-token")
        try:
            self["max-upload"] = int(self["max-upload"])
        except ValueError:
            raise usage.UsageError("--max-upload must be a number of bytes") from None
        try:
            self["parsed-config"] = load_config(self["config"])
        except ConfigError as e:
            raise usage.UsageError(str(e)) from None
        if self["check-config"]:
            print("configuration OK")
            raise SystemExit(0)


class AgentService(service.MultiService):
    """
    The agent: its database server (a child service) and its HTTP API.
    """

    def __init__(
        self,
        stateDir: str,
        config: AgentConfig,
        listen: str,
        tokenFile: str,
        *,
        maxUpload: int = 64 * 1024**3,
        reactor: Any = None,
        onShutdown: Any = None,
    ) -> None:
        super().__init__()
        if reactor is None:
            from twisted.internet import reactor as _reactor

            reactor = _reactor
        self.reactor = reactor
        self.stateDir = stateDir
        self.config = config
        self.listen = listen
        self.tokenFile = tokenFile
        self.maxUpload = maxUpload
        self.server: ServerControl | None = None
        self.api: AgentAPI | None = None
        self.replication: Replication | None = None
        self.snapshots: SnapshotSource | None = None
        self.port: Any = None
        self.listening: Deferred[Any] = Deferred()
        self._connections: ConnectionTracker | None = None
        self._onShutdown = onShutdown

    def startService(self) -> None:
        os.makedirs(self.stateDir, mode=0o700, exist_ok=True)
        uploads = os.path.join(self.stateDir, "uploads")
        os.makedirs(uploads, mode=0o700, exist_ok=True)
        token = read_or_create_token(self.tokenFile)
        log.info("API token is in {path} (mode 0600)", path=self.tokenFile)
        if self.config.server.mode == "script":
            server: Any = ScriptServer(self.stateDir, self.config, reactor=self.reactor)
        else:
            server = ManagedServer(self.stateDir, self.config, reactor=self.reactor)
        self.server = server
        server.setServiceParent(self)
        self.api = AgentAPI(
            server,
            self.reactor,
            agentPort=lambda: self.port.getHost().port if self.port else None,
            stopAgent=self._stopAgent,
        )
        api = self.api
        self.replication = Replication(
            api._database, server, self.reactor, self.stateDir,
            locked=api._locked, closeDatabase=api.closeDatabase,
        )
        self.replication.setServiceParent(self)
        api.replication = self.replication
        dispatcher = Dispatcher(self.api, self.replication)
        dispatcher.collect(Introspection(dispatcher))
        auth = TokenAuth([token], hint=f"token file {self.tokenFile}")
        self.snapshots = SnapshotSource(api._database, server, self.reactor)
        snapshots = SnapshotResource(self.snapshots, auth)
        site = makeSite(
            cast(Any, AgentRoot(RPCResource(dispatcher, auth), {b"snapshot": snapshots})),
            maxUpload=self.maxUpload,
            uploadDir=uploads,
        )
        self._connections = ConnectionTracker(site)
        super().startService()
        d = endpoints.serverFromString(self.reactor, self.listen).listen(self._connections)
        d.addCallbacks(self._listening, self._listenFailed)

    def _listening(self, port: Any) -> None:
        self.port = port
        host = port.getHost()
        url = f"http://{host.host}:{host.port}/"
        with open(os.path.join(self.stateDir, "agent-url"), "w") as f:
            f.write(url + "\n")
        log.info("agent API listening at {url}", url=url)
        self.listening.callback(port)

    def _listenFailed(self, failure: Any) -> None:
        log.failure("cannot listen on {listen}", failure, listen=self.listen)
        self.listening.errback(failure)
        self._stopAgent()

    def _stopAgent(self) -> None:
        if self._onShutdown is not None:
            self._onShutdown()
        elif self.reactor.running:
            self.reactor.stop()

    def stopService(self) -> Deferred[None]:
        if self.api is not None:
            self.api.closeDatabase()
        d = succeed(None) if self.port is None else self.port.stopListening()
        self.port = None
        connections = self._connections
        if connections is not None:
            d.addCallback(lambda _: connections.closeConnections(self.reactor))
        d.addCallback(lambda _: super(AgentService, self).stopService())
        return d


def makeService(options: Options) -> service.IService:
    return AgentService(
        options["state-dir"],
        options["parsed-config"],
        options["listen"],
        options["token-file"],
        maxUpload=options["max-upload"],
    )
