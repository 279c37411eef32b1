"""
C{twistd conpaassql-agent}: options and the service tree.

L{makeService} only wires services; the state directory, the token and the
database server are set up when the service starts.
"""

from __future__ import annotations

import os
from dataclasses import replace
from typing import Any

from twisted.application import service
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python import usage

from conpaassql.agent.api import AgentAPI
from conpaassql.agent.config import AgentConfig, load_config
from conpaassql.agent.mysqld import ManagedServer, ScriptServer, ServerControl
from conpaassql.agent.replication import Replication
from conpaassql.agent.snapshot import SnapshotResource, SnapshotSource
from conpaassql.rpc.resource import TokenAuth
from conpaassql.rpc.serve import RPCServerService, ServiceOptions, serviceOptions

log = Logger()

DEFAULT_LISTEN = "tcp:60000:interface=127.0.0.1"
DEFAULT_STATE_DIR = "~/.local/state/conpaassql/agent"


class Options(ServiceOptions):
    longdesc = (
        "Runs the conpaassql agent: controls this node's MySQL/MariaDB server and answers "
        "JSON-RPC on one URL.  With no --config it creates and runs its own MariaDB "
        "instance in the state directory."
    )
    optParameters = [
        *serviceOptions(DEFAULT_LISTEN, DEFAULT_STATE_DIR, "agent's state and server",
                        "etc/agent.cnf"),
        ["max-upload", None, str(64 * 1024**3), "Largest upload accepted, in bytes."],
        ["datadir-template", None, None,
         "Managed mode: a template data directory to copy for a new instance instead of "
         "running mariadb-install-db (made by python -m conpaassql.agent.initdb; "
         "overrides [agent] datadir_template)."],
    ]

    def loadConfig(self, path: str | None) -> AgentConfig:
        try:
            self["max-upload"] = int(self["max-upload"])
        except ValueError:
            raise usage.UsageError("--max-upload must be a number of bytes") from None
        config = load_config(path)
        template = self["datadir-template"]
        if template is not None:
            if not os.path.isabs(template):
                raise usage.UsageError("--datadir-template must be an absolute path")
            config = replace(config, server=replace(config.server, datadir_template=template))
        return config


class AgentService(RPCServerService):
    """
    The agent: its database server (a child service) and its HTTP API.
    """

    urlFile = "agent-url"
    what = "agent API"

    def __init__(
        self,
        stateDir: str,
        config: AgentConfig,
        listen: str,
        tokenFile: str,
        *,
        maxUpload: int = 64 * 1024**3,
        reactor: Any = None,
        stopProcess: Any = None,
    ) -> None:
        super().__init__(stateDir, listen, tokenFile, reactor=reactor, stopProcess=stopProcess)
        self.config = config
        self.maxUpload = maxUpload
        self.server: ServerControl | None = None
        self.api: AgentAPI | None = None
        self.replication: Replication | None = None
        self.snapshots: SnapshotSource | None = None

    def startService(self) -> None:
        token, uploads = self.prepareStateDir()
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
            stopAgent=self.stopProcess,
        )
        api = self.api
        self.replication = Replication(
            api._database, server, self.reactor, self.stateDir,
            locked=api._locked, closeDatabase=api.closeDatabase,
        )
        self.replication.setServiceParent(self)
        api.replication = self.replication
        auth = TokenAuth([token], hint=f"token file {self.tokenFile}")
        self.snapshots = SnapshotSource(api._database, server, self.reactor)
        snapshots = SnapshotResource(self.snapshots, auth)
        super().startService()
        self.serve(
            [self.api, self.replication], token,
            children={b"snapshot": snapshots}, maxUpload=self.maxUpload, uploadDir=uploads,
        )

    def stopService(self) -> Deferred[None]:
        if self.api is not None:
            self.api.closeDatabase()
        return super().stopService()


def makeService(options: Options) -> service.IService:
    return AgentService(
        options["state-dir"],
        options["parsed-config"],
        options["listen"],
        options["token-file"],
        maxUpload=options["max-upload"],
    )
